//! Counting a batch of classified hits in Redis: the grouping comes from `crate::counting`, this file
//! builds the commands and scripts for it and reads their replies.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Value;

use super::RedisStore;
use crate::counting;
use crate::model::{Class, ClickRecord, ClickTally};
use crate::redis_conn::hash_tag;
use crate::store::StoreError;

/// Deadline of one click-counting pipeline. Long on purpose: a retry after a timeout could count a batch
/// twice if Redis executed it late (a hung Redis executes queued commands when it resumes), so the
/// committer waits rather than retries; the capture side spills to the journal meanwhile.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts one link's hits of a batch that holds human hits of it. KEYS: counters hash, recent list.
/// ARGV: human hits, bot hits, earliest and latest human click (unix ms), recent cap, then the recent
/// clicks' JSON oldest first. Returns the link's human hits after the batch.
///
/// A batch with only bot hits of a link needs none of this: it is counted with plain commands
/// (`HINCRBY bot_hits`, `LPUSH`), which cost Redis a fraction of a script call. `hits` is not stored per
/// link: it is `human_hits + bot_hits` (links counted by earlier versions hold it too, always equal).
const LINK_SCRIPT: &str = r"
local after = redis.call('HINCRBY', KEYS[1], 'human_hits', ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], 'bot_hits', ARGV[2]) end
local first = redis.call('HGET', KEYS[1], 'first_click_at')
if (not first) or tonumber(first) > tonumber(ARGV[3]) then redis.call('HSET', KEYS[1], 'first_click_at', ARGV[3]) end
local last = redis.call('HGET', KEYS[1], 'last_click_at')
if (not last) or tonumber(last) < tonumber(ARGV[4]) then redis.call('HSET', KEYS[1], 'last_click_at', ARGV[4]) end
local cap = tonumber(ARGV[5])
if cap > 0 and #ARGV > 5 then
  local n = 0
  for i = 6, #ARGV do n = redis.call('LPUSH', KEYS[2], ARGV[i]) end
  if n > cap then redis.call('LTRIM', KEYS[2], 0, cap - 1) end
end
return after
";

/// Counts one broadcast's hits of a batch. KEYS: counters hash, unique-recipients set, per-minute
/// timeline hash (one hash tag). ARGV: hits, human hits, bot hits, the number R of recipients, the R
/// recipients of human hits in order, then (timeline field, increment) pairs. Returns, per recipient
/// argument, 1 if it was new to the set.
const BROADCAST_SCRIPT: &str = r"
redis.call('HINCRBY', KEYS[1], 'hits', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'human_hits', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'bot_hits', ARGV[3])
local r = tonumber(ARGV[4])
local added = {}
local new = 0
for i = 5, 4 + r do
  local a = redis.call('SADD', KEYS[2], ARGV[i])
  added[#added + 1] = a
  new = new + a
end
if new > 0 then redis.call('HINCRBY', KEYS[1], 'unique_clicks', new) end
for i = 5 + r, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
return added
";

/// SHA1 of the scripts, for `EVALSHA`.
static LINK_SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(LINK_SCRIPT).get_hash().to_owned());
static BROADCAST_SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(BROADCAST_SCRIPT).get_hash().to_owned());

/// Counts a batch (see `Store::record_clicks`).
pub(super) async fn record_clicks(
    store: &RedisStore,
    clicks: &[ClickRecord],
    recent: usize,
) -> Result<Vec<ClickTally>, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let groups = counting::group(clicks);
    let (links, broadcasts) = (&groups.links, &groups.broadcasts);
    // On a single node the scripts are loaded at the head of every pipeline (two cheap commands) and
    // run with `EVALSHA`: safe after a restart or `SCRIPT FLUSH` without retries (a retried pipeline
    // could count twice), and `EVAL` would make Redis hash the script text once per link, which
    // halves throughput. A cluster pipeline is split per slot, so there each call carries its script.
    let cluster = store.pool.is_cluster();
    let script = |sha: &str, text: &str| {
        let mut cmd = if cluster { redis::cmd("EVAL") } else { redis::cmd("EVALSHA") };
        cmd.arg(if cluster { text } else { sha });
        cmd
    };
    let mut tagged: Vec<(String, redis::Cmd)> = Vec::new();
    // What each link's commands answer, in `tagged` order.
    enum LinkReply {
        /// The script: the link's human hits after the batch.
        Script,
        /// `HINCRBY bot_hits`, then `LPUSH` (the list's length) when `true`.
        Bots(bool),
    }
    let mut link_replies = Vec::with_capacity(links.len());
    for (code, members) in links {
        let human: Vec<&ClickRecord> = members.iter().map(|&i| &clicks[i]).filter(|c| c.is_human()).collect();
        let skip = members.len().saturating_sub(recent);
        let newest = members.iter().skip(skip).map(|&i| clicks[i].recent_json());
        if human.is_empty() {
            let mut count = redis::cmd("HINCRBY");
            count.arg(store.keys.counters(code)).arg("bot_hits").arg(members.len());
            tagged.push(((*code).to_owned(), count));
            let listed = recent > 0;
            if listed {
                let mut push = redis::cmd("LPUSH");
                push.arg(store.keys.recent_clicks(code));
                for json in newest {
                    push.arg(json);
                }
                tagged.push(((*code).to_owned(), push));
            }
            link_replies.push(LinkReply::Bots(listed));
            continue;
        }
        let first = human.iter().map(|c| c.at.timestamp_millis()).min().unwrap_or(0);
        let last = human.iter().map(|c| c.at.timestamp_millis()).max().unwrap_or(0);
        let mut cmd = script(&LINK_SHA, LINK_SCRIPT);
        cmd.arg(2)
            .arg(store.keys.counters(code))
            .arg(store.keys.recent_clicks(code))
            .arg(human.len())
            .arg(members.len() - human.len())
            .arg(first)
            .arg(last)
            .arg(recent);
        for json in newest {
            cmd.arg(json);
        }
        tagged.push(((*code).to_owned(), cmd));
        link_replies.push(LinkReply::Script);
    }
    for ((workspace, broadcast), members) in broadcasts {
        let human = members.iter().filter(|&&i| clicks[i].is_human()).count();
        let recipients: Vec<&str> =
            members.iter().filter(|&&i| clicks[i].is_human()).filter_map(|&i| clicks[i].recipient.as_deref()).collect();
        let key = store.keys.broadcast(workspace, broadcast);
        let mut cmd = script(&BROADCAST_SHA, BROADCAST_SCRIPT);
        cmd.arg(3)
            .arg(&key)
            .arg(store.keys.broadcast_uniques(workspace, broadcast))
            .arg(store.keys.timeline(workspace, broadcast))
            .arg(members.len())
            .arg(human)
            .arg(members.len() - human)
            .arg(recipients.len())
            .arg(&recipients);
        for ((minute, class), n) in counting::minute_buckets(members.iter().map(|&i| &clicks[i])) {
            cmd.arg(format!("{minute}:{}", if class == Class::Human { 'h' } else { 'b' })).arg(n);
        }
        tagged.push((hash_tag(&key).to_owned(), cmd));
    }
    for &i in &groups.opt_outs {
        let click = &clicks[i];
        let recipient = click.recipient.as_deref().unwrap_or_default();
        let record = counting::opt_out_of(click, recipient);
        let key = store.keys.opt_outs(&click.workspace_id);
        let mut cmd = redis::cmd("HSETNX");
        cmd.arg(&key).arg(recipient).arg(serde_json::to_vec(&record).map_err(corrupt)?);
        tagged.push((hash_tag(&key).to_owned(), cmd));
    }
    let mut prelude = [redis::cmd("SCRIPT"), redis::cmd("SCRIPT")];
    prelude[0].arg("LOAD").arg(LINK_SCRIPT);
    prelude[1].arg("LOAD").arg(BROADCAST_SCRIPT);
    let replies = store.spread(COMMIT_TIMEOUT, tagged, &prelude).await?;
    let mut replies = replies.into_iter();
    let bad = |what: &str| StoreError::Corrupt(format!("unexpected reply to {what}"));

    let mut human_after: HashMap<&str, u64> = HashMap::new();
    // Lists that grew past the cap, trimmed after this pipeline: most links never get `recent`
    // clicks, so an `LTRIM` with every push would nearly always be wasted work.
    let mut trims: Vec<(String, redis::Cmd)> = Vec::new();
    for ((code, _), reply) in links.iter().zip(&link_replies) {
        match reply {
            LinkReply::Script => {
                let after = as_int(replies.next()).ok_or_else(|| bad("the link script"))?;
                human_after.insert(code, after.max(0) as u64);
            }
            LinkReply::Bots(listed) => {
                as_int(replies.next()).ok_or_else(|| bad("HINCRBY"))?;
                if *listed && as_int(replies.next()).ok_or_else(|| bad("LPUSH"))? > recent as i64 {
                    let mut trim = redis::cmd("LTRIM");
                    trim.arg(store.keys.recent_clicks(code)).arg(0).arg(recent - 1);
                    trims.push(((*code).to_owned(), trim));
                }
            }
        }
    }
    let mut first_in_broadcast = vec![false; clicks.len()];
    for (_, members) in broadcasts {
        let Some(Value::Array(added)) = replies.next() else {
            return Err(bad("the broadcast script"));
        };
        let mut added = added.into_iter();
        for &i in members {
            if clicks[i].is_human() && clicks[i].recipient.is_some() {
                first_in_broadcast[i] = as_int(added.next()) == Some(1);
            }
        }
    }
    let mut opted_out = vec![false; clicks.len()];
    for &i in &groups.opt_outs {
        opted_out[i] = as_int(replies.next()) == Some(1);
    }
    if !trims.is_empty() {
        // Idempotent: a failure here leaves a list a little long until its next push.
        if let Err(err) = store.spread(store.timeout, trims, &[]).await {
            tracing::debug!(error = %err, "trimming recent-click lists failed");
        }
    }
    Ok(counting::tallies(clicks, &human_after, &first_in_broadcast, &opted_out))
}

fn as_int(value: Option<Value>) -> Option<i64> {
    match value? {
        Value::Int(n) => Some(n),
        _ => None,
    }
}
