//! Opt-outs by SMS and conversions in Redis.
//!
//! A conversion is counted on its link (the link's slot) and on its broadcast (the broadcast's slot), each
//! by a script that first sets a mark `P:conv:{TAG}:DEDUP` with `SET NX`: a slot that has the mark
//! changes nothing. So a retry after a timeout, two instances racing, or a crash between the two slots
//! never counts twice, and the second slot is completed by the retry. The link's script also reads the
//! verdict of the conversion's click (`P:cid:{CODE}`).

use std::time::Duration;

use redis::Value;

use super::RedisStore;
use crate::counting;
use crate::model::{Class, Conversion, OptOut, Recorded};
use crate::redis_conn::hash_tag;
use crate::store::StoreError;

/// KEYS[1] mark, KEYS[2] counters hash, KEYS[3] timeline or click-id hash (may be empty name);
/// ARGV: mark ttl ms, value field, micro units, timeline field or click id, mode (`t` timeline, `c` click).
/// Answers {new 1/0, mark value or '', click verdict or ''}.
const CONVERT: &str = r"#!lua
local class = ''
if ARGV[5] == 'c' and ARGV[4] ~= '' then class = redis.call('HGET', KEYS[3], ARGV[4]) or '' end
local mark = redis.call('GET', KEYS[1])
if mark then return {0, mark, class} end
redis.call('SET', KEYS[1], '0', 'PX', ARGV[1])
redis.call('HINCRBY', KEYS[2], 'conversions', 1)
if tonumber(ARGV[3]) ~= 0 then redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3]) end
if ARGV[5] == 't' then redis.call('HINCRBY', KEYS[3], ARGV[4], 1) end
return {1, '0', class}
";

pub(super) async fn record_conversion(
    store: &RedisStore,
    c: &Conversion,
    ttl: Duration,
) -> Result<(Recorded, Option<Class>), StoreError> {
    let ttl_ms = ttl.as_millis().max(1) as u64;
    let micro = c.value.map(counting::micro_units).unwrap_or(Some(0)).unwrap_or(0);
    let field = format!("cv:{}", c.currency);
    let mut tagged = Vec::new();
    let mut link = redis::cmd("EVAL");
    link.arg(CONVERT)
        .arg(3)
        .arg(store.keys.conversion(&c.code, &c.dedup))
        .arg(store.keys.counters(&c.code))
        .arg(store.keys.click_ids(&c.code))
        .arg(ttl_ms)
        .arg(&field)
        .arg(micro)
        .arg(c.click_id.as_deref().unwrap_or(""))
        .arg("c");
    tagged.push((c.code.clone(), link));
    if let Some(broadcast) = &c.broadcast_id {
        let hash = store.keys.broadcast(&c.workspace_id, broadcast);
        let tag = hash_tag(&hash).to_owned();
        let minute = c.at.timestamp().div_euclid(60) * 60;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CONVERT)
            .arg(3)
            .arg(store.keys.conversion(&tag, &c.dedup))
            .arg(&hash)
            .arg(store.keys.timeline(&c.workspace_id, broadcast))
            .arg(ttl_ms)
            .arg(&field)
            .arg(micro)
            .arg(format!("{minute}:c"))
            .arg("t");
        tagged.push((tag, cmd));
    }
    let replies = store.spread(store.timeout * 4, tagged, &[]).await?;
    let bad = || StoreError::Corrupt("unexpected reply to the conversion script".into());
    let (new, mark, class): (i64, String, String) =
        redis::from_redis_value(replies.first().cloned().ok_or_else(bad)?).map_err(|_| bad())?;
    let class = match class.as_str() {
        "human" => Some(Class::Human),
        "bot" => Some(Class::Bot),
        _ => None,
    };
    let recorded = if new == 1 { Recorded::New } else { Recorded::Duplicate { emitted: mark == "1" } };
    Ok((recorded, class))
}

pub(super) async fn conversion_emitted(store: &RedisStore, c: &Conversion, ttl: Duration) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(store.keys.conversion(&c.code, &c.dedup)).arg("1").arg("PX").arg(ttl.as_millis().max(1) as u64);
    store.spread(store.timeout, vec![(c.code.clone(), cmd)], &[]).await?;
    Ok(())
}

pub(super) async fn record_opt_out(store: &RedisStore, o: &OptOut, workspace_id: &str) -> Result<bool, StoreError> {
    let json = serde_json::to_vec(o).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let key = store.keys.opt_outs(workspace_id);
    let mut tagged = Vec::new();
    let mut set = redis::cmd("HSETNX");
    set.arg(&key).arg(&o.recipient).arg(json);
    tagged.push((hash_tag(&key).to_owned(), set));
    if let Some(broadcast) = &o.broadcast_id {
        let key = store.keys.broadcast_opt_outs(workspace_id, broadcast);
        let mut add = redis::cmd("SADD");
        add.arg(&key).arg(&o.recipient);
        tagged.push((hash_tag(&key).to_owned(), add));
    }
    let replies = store.spread(store.timeout * 2, tagged, &[]).await?;
    Ok(matches!(replies.first(), Some(Value::Int(1))))
}

pub(super) async fn get_opt_out(
    store: &RedisStore,
    workspace_id: &str,
    recipient: &str,
) -> Result<Option<OptOut>, StoreError> {
    let key = store.keys.opt_outs(workspace_id);
    let mut cmd = redis::cmd("HGET");
    cmd.arg(&key).arg(recipient);
    let replies = store.spread(store.timeout, vec![(hash_tag(&key).to_owned(), cmd)], &[]).await?;
    match replies.into_iter().next() {
        Some(Value::BulkString(bytes)) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        _ => Ok(None),
    }
}

pub(super) async fn delete_opt_out(
    store: &RedisStore,
    workspace_id: &str,
    recipient: &str,
) -> Result<bool, StoreError> {
    let key = store.keys.opt_outs(workspace_id);
    let mut cmd = redis::cmd("HDEL");
    cmd.arg(&key).arg(recipient);
    let replies = store.spread(store.timeout, vec![(hash_tag(&key).to_owned(), cmd)], &[]).await?;
    Ok(matches!(replies.first(), Some(Value::Int(1))))
}
