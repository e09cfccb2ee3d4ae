//! Stats reads: link and broadcast counters, timelines, recent clicks, opt-outs.

use std::collections::HashMap;

use chrono::DateTime;
use redis::AsyncCommands;

use super::RedisStore;
use crate::model::{BroadcastStats, LinkStats, OptOut, RecentClick};
use crate::redis_conn::hash_tag;
use crate::store::StoreError;

pub(super) async fn link_stats(store: &RedisStore, code: &str) -> Result<LinkStats, StoreError> {
    let key = store.keys.counters(code);
    let mut conn = store.conn().await?;
    type Row = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
    let (human_hits, bot_hits, first, last): Row = store
        .bounded(store.timeout, async move {
            redis::cmd("HMGET")
                .arg(key)
                .arg(&["human_hits", "bot_hits", "first_click_at", "last_click_at"])
                .query_async(&mut conn)
                .await
        })
        .await?;
    // Briefly negative while a correction is counted before the hit it corrects: read as 0.
    let (human_hits, bot_hits) = (human_hits.unwrap_or(0).max(0) as u64, bot_hits.unwrap_or(0).max(0) as u64);
    Ok(LinkStats {
        hits: human_hits + bot_hits,
        human_hits,
        bot_hits,
        unique_clicks: u64::from(human_hits > 0),
        first_click_at: first.and_then(DateTime::from_timestamp_millis),
        last_click_at: last.and_then(DateTime::from_timestamp_millis),
    })
}

pub(super) async fn broadcast_stats(
    store: &RedisStore,
    workspace_id: &str,
    broadcast_id: &str,
) -> Result<Option<BroadcastStats>, StoreError> {
    let mut all = read_broadcasts(store, workspace_id, &[broadcast_id.to_owned()]).await?;
    Ok(all.pop().filter(|s| s.links > 0))
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
        let key = store.keys.broadcast_delivered(workspace_id, id);
        let mut card = redis::cmd("SCARD");
        card.arg(&key);
        tagged.push((hash_tag(&key).to_owned(), card));
    }
    let replies = store.spread(store.timeout * 4, tagged, &[]).await?;
    // (counters, bot reasons, delivered recipients) per broadcast.
    type Row = (HashMap<String, i64>, HashMap<String, i64>, u64);
    let mut rows: Vec<Row> = Vec::with_capacity(ids.len());
    for triple in replies.chunks(3) {
        let parse = |v: &redis::Value| {
            redis::from_redis_value::<HashMap<String, i64>>(v.clone()).map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        let delivered = redis::from_redis_value::<u64>(triple[2].clone()).unwrap_or(0);
        rows.push((parse(&triple[0])?, parse(&triple[1])?, delivered));
    }
    Ok(rows
        .iter()
        .map(|(f, reasons, delivered)| {
            let get = |name: &str| f.get(name).copied().unwrap_or(0).max(0) as u64;
            BroadcastStats {
                links: get("links"),
                hits: get("hits"),
                human_hits: get("human_hits"),
                bot_hits: get("bot_hits"),
                unique_clicks: get("unique_clicks"),
                bot_reasons: reasons.iter().filter(|(_, n)| **n > 0).map(|(r, n)| (r.clone(), *n as u64)).collect(),
                delivered: *delivered,
            }
        })
        .collect())
}

pub(super) async fn broadcast_timeline(
    store: &RedisStore,
    workspace_id: &str,
    broadcast_id: &str,
) -> Result<Vec<(i64, u64, u64)>, StoreError> {
    let key = store.keys.timeline(workspace_id, broadcast_id);
    let mut conn = store.conn().await?;
    let fields: HashMap<String, u64> = store.bounded(store.timeout, async move { conn.hgetall(key).await }).await?;
    let mut minutes: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
    for (field, n) in fields {
        let Some((minute, class)) = field.split_once(':') else { continue };
        let Ok(minute) = minute.parse::<i64>() else { continue };
        let slot = minutes.entry(minute).or_default();
        match class {
            "h" => slot.0 += n,
            "b" => slot.1 += n,
            _ => {}
        }
    }
    Ok(minutes.into_iter().map(|(m, (h, b))| (m, h, b)).collect())
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
