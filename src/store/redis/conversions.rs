//! Opt-outs by SMS and conversions in Redis.
//!
//! A conversion counts once per `dedup` across the workspace. Its mark `P:conv:{WS}:DEDUP` in the
//! workspace's slot is a small state machine: `0` claimed, `1` counted on the link and the broadcast,
//! `2` its event queued. The request that claims it (`SET NX`) is the new one; every request that finds
//! the mark below `2` completes what is missing, so a retry after a timeout or a crash between slots
//! finishes the work and nothing counts twice: the link's and the broadcast's shares are each applied by
//! a script guarded by its own mark in its own slot (`P:conv:{CODE}:DEDUP`, `P:conv:{WS:B}:DEDUP`).
//!
//! Values are summed exactly in millionths, split in two fields so that no sum can overflow: `cv:CUR`
//! keeps the remainder below 10^15 (exact in Lua's doubles), `cvh:CUR` the count of 10^15s. A click id
//! converts at most `MAX_PER_CLICK` times (distinct names), so one click cannot inflate a campaign.

use std::time::Duration;

use redis::Value;

use super::RedisStore;
use crate::counting;
use crate::model::{Class, Conversion, OptOut, Recorded};
use crate::redis_conn::hash_tag;
use crate::store::StoreError;

/// Conversions one click id may count (distinct names).
const MAX_PER_CLICK: u32 = crate::store::MAX_CONVERSIONS_PER_CLICK;
/// The split of a value sum: `cv:` holds the remainder below this, `cvh:` the multiples.
pub const VALUE_SPLIT: i64 = 1_000_000_000_000_000;

/// A share of a conversion in one slot. KEYS[1] the slot's mark, KEYS[2] the counters hash, KEYS[3] the
/// timeline (broadcast) or the click-id hash (link); ARGV: mark ttl ms, currency, low part, high part,
/// timeline field or click id, mode (`t` timeline, `c` click), the per-click cap.
/// Answers {applied 1/0, click verdict or '', refused 1/0}.
const APPLY: &str = r"#!lua
local class = ''
if ARGV[6] == 'c' and ARGV[5] ~= '' then class = redis.call('HGET', KEYS[3], ARGV[5]) or '' end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, class, 0} end
if ARGV[6] == 'c' and ARGV[5] ~= '' then
  local n = tonumber(redis.call('HGET', KEYS[3], 'n:' .. ARGV[5]) or '0')
  if n >= tonumber(ARGV[7]) then return {0, class, 1} end
  redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[5], 1)
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('HINCRBY', KEYS[2], 'conversions', 1)
local low = tonumber(ARGV[3])
if low ~= 0 then
  local sum = redis.call('HINCRBY', KEYS[2], 'cv:' .. ARGV[2], low)
  if sum >= 1000000000000000 then
    redis.call('HINCRBY', KEYS[2], 'cv:' .. ARGV[2], -1000000000000000)
    redis.call('HINCRBY', KEYS[2], 'cvh:' .. ARGV[2], 1)
  end
end
if tonumber(ARGV[4]) ~= 0 then redis.call('HINCRBY', KEYS[2], 'cvh:' .. ARGV[2], ARGV[4]) end
if ARGV[6] == 't' then redis.call('HINCRBY', KEYS[3], ARGV[5], 1) end
return {1, class, 0}
";

/// The workspace-slot mark: claims it (`0`) if absent; answers its state before (`-1`: absent).
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return tonumber(v) end
redis.call('SET', KEYS[1], '0', 'PX', ARGV[1])
return -1
";

fn ttl_ms(ttl: Duration) -> u64 {
    ttl.as_millis().max(1) as u64
}

async fn set_state(store: &RedisStore, c: &Conversion, state: u8, ttl: Duration) -> Result<(), StoreError> {
    let key = store.keys.conversion(&c.workspace_id, &c.dedup);
    let mut cmd = redis::cmd("SET");
    cmd.arg(&key).arg(state).arg("PX").arg(ttl_ms(ttl));
    store.spread(store.timeout, vec![(hash_tag(&key).to_owned(), cmd)], &[]).await?;
    Ok(())
}

pub(super) async fn record_conversion(
    store: &RedisStore,
    c: &Conversion,
    ttl: Duration,
) -> Result<(Recorded, Option<Class>), StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("unexpected reply to the conversion script: {what}"));
    let mark = store.keys.conversion(&c.workspace_id, &c.dedup);
    let mut claim = redis::cmd("EVAL");
    claim.arg(CLAIM).arg(1).arg(&mark).arg(ttl_ms(ttl));
    let reply = store.spread(store.timeout * 2, vec![(hash_tag(&mark).to_owned(), claim)], &[]).await?;
    let before: i64 = redis::from_redis_value(reply.into_iter().next().ok_or_else(|| bad("none"))?)
        .map_err(|e| bad(&e.to_string()))?;
    if before >= 1 {
        // Counted before; only the click's verdict is still worth reading.
        let class = click_class(store, c).await?;
        return Ok((Recorded::Duplicate { emitted: before >= 2 }, class));
    }
    let micro = c.value.map(counting::micro_units).unwrap_or(Some(0)).unwrap_or(0);
    let (high, low) = (micro.div_euclid(VALUE_SPLIT), micro.rem_euclid(VALUE_SPLIT));
    let mut tagged = Vec::new();
    let mut link = redis::cmd("EVAL");
    link.arg(APPLY)
        .arg(3)
        .arg(store.keys.conversion(&c.code, &c.dedup))
        .arg(store.keys.counters(&c.code))
        .arg(store.keys.click_ids(&c.code))
        .arg(ttl_ms(ttl))
        .arg(&c.currency)
        .arg(low)
        .arg(high)
        .arg(c.click_id.as_deref().unwrap_or(""))
        .arg("c")
        .arg(MAX_PER_CLICK);
    tagged.push((c.code.clone(), link));
    let replies = store.spread(store.timeout * 4, tagged, &[]).await?;
    let (applied, class, refused): (i64, String, i64) =
        redis::from_redis_value(replies.into_iter().next().ok_or_else(|| bad("none"))?)
            .map_err(|e| bad(&e.to_string()))?;
    let class = parse_class(&class);
    if refused == 1 {
        // Over the per-click cap: nothing was counted; the claim is released.
        let mut del = redis::cmd("DEL");
        del.arg(&mark);
        store.spread(store.timeout, vec![(hash_tag(&mark).to_owned(), del)], &[]).await?;
        return Ok((Recorded::Refused, class));
    }
    if let Some(broadcast) = &c.broadcast_id {
        let hash = store.keys.broadcast(&c.workspace_id, broadcast);
        let tag = hash_tag(&hash).to_owned();
        let minute = c.at.timestamp().div_euclid(60) * 60;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(APPLY)
            .arg(3)
            .arg(store.keys.conversion(&tag, &c.dedup))
            .arg(&hash)
            .arg(store.keys.timeline(&c.workspace_id, broadcast))
            .arg(ttl_ms(ttl))
            .arg(&c.currency)
            .arg(low)
            .arg(high)
            .arg(format!("{minute}:c"))
            .arg("t")
            .arg(MAX_PER_CLICK);
        store.spread(store.timeout * 4, vec![(tag, cmd)], &[]).await?;
    }
    set_state(store, c, 1, ttl).await?;
    let _ = applied;
    // `before == 0`: another request claimed it and did not finish; this one completed it.
    Ok((if before == -1 { Recorded::New } else { Recorded::Duplicate { emitted: false } }, class))
}

fn parse_class(raw: &str) -> Option<Class> {
    match raw {
        "human" => Some(Class::Human),
        "bot" => Some(Class::Bot),
        _ => None,
    }
}

async fn click_class(store: &RedisStore, c: &Conversion) -> Result<Option<Class>, StoreError> {
    let Some(click) = &c.click_id else { return Ok(None) };
    let key = store.keys.click_ids(&c.code);
    let mut cmd = redis::cmd("HGET");
    cmd.arg(&key).arg(click);
    let reply = store.spread(store.timeout, vec![(c.code.clone(), cmd)], &[]).await?;
    Ok(match reply.into_iter().next() {
        Some(Value::BulkString(b)) => parse_class(&String::from_utf8_lossy(&b)),
        _ => None,
    })
}

pub(super) async fn conversion_emitted(store: &RedisStore, c: &Conversion, ttl: Duration) -> Result<(), StoreError> {
    set_state(store, c, 2, ttl).await
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

/// Rewrites a pending opt-out as settled, only if that same opt-out is still stored (an opt-in in between
/// must not be undone).
const SETTLE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 0
";

pub(super) async fn settle_opt_out(store: &RedisStore, workspace_id: &str, o: &OptOut) -> Result<(), StoreError> {
    let pending =
        serde_json::to_vec(&OptOut { pending: true, ..o.clone() }).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let settled =
        serde_json::to_vec(&OptOut { pending: false, ..o.clone() }).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let key = store.keys.opt_outs(workspace_id);
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SETTLE).arg(1).arg(&key).arg(&o.recipient).arg(pending).arg(settled);
    store.spread(store.timeout, vec![(hash_tag(&key).to_owned(), cmd)], &[]).await?;
    Ok(())
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
