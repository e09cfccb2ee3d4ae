//! Stats reads: link and broadcast counters, timelines, recent clicks, opt-outs.

use std::collections::HashMap;

use chrono::DateTime;
use redis::AsyncCommands;

use super::RedisStore;
use crate::model::{BroadcastStats, LinkStats, OptOut, RecentClick};
use crate::redis_conn::hash_tag;
use crate::store::StoreError;

pub(super) async fn link_stats(store: &RedisStore, code: &str) -> Result<LinkStats, StoreError> {
    let mut hgetall = redis::cmd("HGETALL");
    hgetall.arg(store.keys.counters(code));
    let mut get_bots = redis::cmd("GET");
    get_bots.arg(store.keys.bots(code));
    // The link's bot slot, if it was made on a single node (read on a cluster too: data moved from a
    // single node keeps its slots' counts).
    let mut get_slot = redis::cmd("HGET");
    let slot_of = store.keys.bot_slot_of();
    get_slot.arg(&slot_of).arg(code);
    let tagged =
        vec![(code.to_owned(), hgetall), (code.to_owned(), get_bots), (hash_tag(&slot_of).to_owned(), get_slot)];
    let corrupt = |e: redis::ParsingError| StoreError::Corrupt(e.to_string());
    let [hash, bots, slot]: [redis::Value; 3] = store
        .spread(store.timeout, tagged, &[])
        .await?
        .try_into()
        .map_err(|v: Vec<_>| StoreError::Corrupt(format!("{} replies for 3 commands", v.len())))?;
    let f: HashMap<String, i64> = redis::from_redis_value(hash).map_err(corrupt)?;
    let mut bots: Option<i64> = redis::from_redis_value(bots).map_err(corrupt)?;
    let slot: Option<u32> = redis::from_redis_value(slot).map_err(corrupt)?;
    // A link with a bot slot has its flood's bot hits there too.
    if let Some(slot) = slot {
        let (key, offset) = store.keys.bot_slots(slot);
        let mut get = redis::cmd("BITFIELD");
        get.arg(&key).arg("GET").arg("i64").arg(format!("#{offset}"));
        let replies = store.spread(store.timeout, vec![(hash_tag(&key).to_owned(), get)], &[]).await?;
        let in_slot: Vec<i64> =
            redis::from_redis_value(replies.into_iter().next().unwrap_or(redis::Value::Nil)).map_err(corrupt)?;
        bots = Some(bots.unwrap_or(0).saturating_add(in_slot.first().copied().unwrap_or(0)));
    }
    // Briefly negative while a correction is counted before the hit it corrects: read as 0.
    let get = |name: &str| f.get(name).copied().unwrap_or(0).max(0) as u64;
    // Bot hits are in their own key; earlier builds counted them in the hash: both add up.
    let human_hits = get("human_hits");
    let bot_hits = f.get("bot_hits").copied().unwrap_or(0).saturating_add(bots.unwrap_or(0)).max(0) as u64;
    Ok(LinkStats {
        hits: human_hits + bot_hits,
        human_hits,
        bot_hits,
        unique_clicks: u64::from(human_hits > 0),
        first_click_at: f.get("first_click_at").copied().and_then(DateTime::from_timestamp_millis),
        last_click_at: f.get("last_click_at").copied().and_then(DateTime::from_timestamp_millis),
        conversions: get("conversions"),
        conversion_value: values(&f),
    })
}

/// The conversion values of a counters hash as decimals: `cv:<CURRENCY>` millionths below 10^15 plus
/// `cvh:<CURRENCY>` multiples of 10^15 (see `conversions`).
fn values(fields: &HashMap<String, i64>) -> std::collections::BTreeMap<String, rust_decimal::Decimal> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in fields {
        let (currency, micro) = if let Some(c) = k.strip_prefix("cvh:") {
            (c, i128::from(*v) * i128::from(super::conversions::VALUE_SPLIT))
        } else if let Some(c) = k.strip_prefix("cv:") {
            (c, i128::from(*v))
        } else {
            continue;
        };
        *out.entry(currency.to_owned()).or_insert(0i128) += micro;
    }
    out.into_iter().map(|(c, micro)| (c, rust_decimal::Decimal::from_i128_with_scale(micro, 6).normalize())).collect()
}

pub(super) async fn broadcast_stats(
    store: &RedisStore,
    workspace_id: &str,
    broadcast_id: &str,
) -> Result<Option<BroadcastStats>, StoreError> {
    let mut all = read_broadcasts(store, workspace_id, &[broadcast_id.to_owned()]).await?;
    Ok(all.pop().filter(|s| s.links + s.opt_out_links > 0))
}

pub(super) async fn list_broadcasts(
    store: &RedisStore,
    workspace_id: &str,
) -> Result<Vec<(String, BroadcastStats)>, StoreError> {
    let key = store.keys.broadcasts(workspace_id);
    let mut conn = store.conn().await?;
    let mut ids: Vec<String> = store.bounded(store.timeout, async move { conn.smembers(key).await }).await?;
    ids.sort();
    let stats = read_broadcasts(store, workspace_id, &ids).await?;
    Ok(ids.into_iter().zip(stats).collect())
}

/// The counters and bot reasons of broadcasts, in order (counters may be briefly negative while a
/// correction is counted before the hit it corrects: read as 0).
async fn read_broadcasts(
    store: &RedisStore,
    workspace_id: &str,
    ids: &[String],
) -> Result<Vec<BroadcastStats>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut tagged = Vec::with_capacity(ids.len() * 2);
    for id in ids {
        for key in [store.keys.broadcast(workspace_id, id), store.keys.broadcast_bot_reasons(workspace_id, id)] {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&key);
            tagged.push((hash_tag(&key).to_owned(), cmd));
        }
        for key in [store.keys.broadcast_delivered(workspace_id, id), store.keys.broadcast_opt_outs(workspace_id, id)] {
            let mut card = redis::cmd("SCARD");
            card.arg(&key);
            tagged.push((hash_tag(&key).to_owned(), card));
        }
    }
    let replies = store.spread(store.timeout * 4, tagged, &[]).await?;
    // (counters, bot reasons, delivered recipients, opted-out recipients) per broadcast.
    type Row = (HashMap<String, i64>, HashMap<String, i64>, u64, u64);
    let mut rows: Vec<Row> = Vec::with_capacity(ids.len());
    for row in replies.chunks(4) {
        let parse = |v: &redis::Value| {
            redis::from_redis_value::<HashMap<String, i64>>(v.clone()).map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        let card = |v: &redis::Value| redis::from_redis_value::<u64>(v.clone()).unwrap_or(0);
        rows.push((parse(&row[0])?, parse(&row[1])?, card(&row[2]), card(&row[3])));
    }
    Ok(rows
        .iter()
        .map(|(f, reasons, delivered, opt_outs)| {
            let get = |name: &str| f.get(name).copied().unwrap_or(0).max(0) as u64;
            BroadcastStats {
                links: get("links"),
                hits: get("hits"),
                human_hits: get("human_hits"),
                bot_hits: get("bot_hits"),
                unique_clicks: get("unique_clicks"),
                bot_reasons: reasons.iter().filter(|(_, n)| **n > 0).map(|(r, n)| (r.clone(), *n as u64)).collect(),
                delivered: *delivered,
                opt_outs: *opt_outs,
                opt_out_links: get("opt_out_links"),
                conversions: get("conversions"),
                conversion_value: values(f),
            }
        })
        .collect())
}

pub(super) async fn broadcast_timeline(
    store: &RedisStore,
    workspace_id: &str,
    broadcast_id: &str,
) -> Result<Vec<(i64, u64, u64, u64)>, StoreError> {
    let key = store.keys.timeline(workspace_id, broadcast_id);
    let mut conn = store.conn().await?;
    let fields: HashMap<String, u64> = store.bounded(store.timeout, async move { conn.hgetall(key).await }).await?;
    let mut minutes: std::collections::BTreeMap<i64, (u64, u64, u64)> = Default::default();
    for (field, n) in fields {
        let Some((minute, class)) = field.split_once(':') else { continue };
        let Ok(minute) = minute.parse::<i64>() else { continue };
        let slot = minutes.entry(minute).or_default();
        match class {
            "h" => slot.0 += n,
            "b" => slot.1 += n,
            "c" => slot.2 += n,
            _ => {}
        }
    }
    Ok(minutes.into_iter().map(|(m, (h, b, c))| (m, h, b, c)).collect())
}

pub(super) async fn recent_clicks(
    store: &RedisStore,
    code: &str,
    limit: usize,
) -> Result<Vec<RecentClick>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let key = store.keys.recent_clicks(code);
    let mut conn = store.conn().await?;
    let raw: Vec<Vec<u8>> =
        store.bounded(store.timeout, async move { conn.lrange(key, 0, limit as isize - 1).await }).await?;
    raw.iter().map(|bytes| serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))).collect()
}

pub(super) async fn opt_outs(store: &RedisStore, workspace_id: &str, limit: usize) -> Result<Vec<OptOut>, StoreError> {
    let key = store.keys.opt_outs(workspace_id);
    let mut conn = store.conn().await?;
    let raw: Vec<Vec<u8>> = store.bounded(store.timeout, async move { conn.hvals(key).await }).await?;
    let mut all = raw
        .iter()
        .map(|bytes| serde_json::from_slice::<OptOut>(bytes).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    all.sort_by_key(|o| std::cmp::Reverse(o.at));
    all.truncate(limit);
    Ok(all)
}
