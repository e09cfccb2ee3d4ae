//! The Redis store: one multiplexed, self-reconnecting connection (`ConnectionManager`) shared by every
//! task, plus one pub/sub connection that carries cache invalidations between instances.
//!
//! Key layout (all under the configurable prefix `P`, default `lh`). Keys are designed for Redis Cluster:
//! everything about one link shares the hash tag `{code}`, so per-link multi-key operations stay in one
//! slot, while different links spread over the whole cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:link:{CODE}` | string | the link as JSON |
//! | `P:cnt:{CODE}` | hash | `human_hits`, `bot_hits`, `first_click_at`, `last_click_at` (unix ms); hits = human + bot (data from earlier builds also holds an equal `hits` field, ignored) |
//! | `P:clicks:{CODE}` | list | recent clicks as compact JSON (`ClickRecord::recent_json`), newest first, capped (may exceed the cap by one batch until the follow-up `LTRIM`) |
//! | `P:bc:{WS:BROADCAST}` | hash | `links`, `hits`, `human_hits`, `bot_hits`, `unique_clicks` |
//! | `P:bcu:{WS:BROADCAST}` | set | recipients with at least one human hit (exact unique clicks) |
//! | `P:tl:{WS:BROADCAST}` | hash | hits per minute: field `<unix minute>:h` / `<unix minute>:b` |
//! | `P:bcs:{WS}` | set | the workspace's broadcast ids |
//! | `P:optout:{WS}` | hash | recipient → first opt-out as JSON |
//! | `P:whcfg:{WS}` | string | the workspace's webhook settings as JSON (secrets included) |
//! | `P:whlog:{WS}` | list | webhook delivery log entries as JSON, newest first, capped |
//!
//! The webhook outbox (stream, retry set, dead letters) is `webhook::queue`'s business.
//! | `P:ws:{WS}` | string | the workspace as JSON |
//! | `P:key:HASH` | string | an API key record as JSON (HASH = hex SHA-256 of the key) |
//! | `P:codekey` | string | hex key of the codes' check characters, created once (`SET NX`) |
//! | `P:invalidate` | pub/sub channel | codes whose cached copies must be dropped |
//!
//! Every command is bounded by the configured timeout: a hung Redis turns into `StoreError::Timeout`,
//! never into a hung request.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use redis::{AsyncCommands, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Invalidation, Store, StoreError};
use crate::click::{ClickRecord, ClickTally, RecentClick};
use crate::model::{ApiKeyRecord, BroadcastStats, Link, LinkKind, LinkStats, OptOut, Workspace};
use crate::redis_conn::{Conn, Pool, hash_tag};
use crate::webhook::DeliveryLog;
use crate::webhook::settings::WebhookSettings;

/// Links per pipeline round trip in bulk inserts: large enough to amortise the round trip, small
/// enough that one batch never comes near the command timeout.
const INSERT_BATCH: usize = 2_000;
/// Pipelines in flight at once during a bulk insert.
const INSERT_CONCURRENCY: usize = 4;

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

/// Key names. The only place that knows them.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }
    pub fn link(&self, code: &str) -> String {
        format!("{}:link:{{{code}}}", self.prefix)
    }
    pub fn counters(&self, code: &str) -> String {
        format!("{}:cnt:{{{code}}}", self.prefix)
    }
    pub fn broadcast(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bc:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    pub fn broadcast_uniques(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bcu:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    pub fn timeline(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:tl:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    pub fn broadcasts(&self, workspace_id: &str) -> String {
        format!("{}:bcs:{{{workspace_id}}}", self.prefix)
    }
    pub fn recent_clicks(&self, code: &str) -> String {
        format!("{}:clicks:{{{code}}}", self.prefix)
    }
    pub fn webhook_settings(&self, workspace_id: &str) -> String {
        format!("{}:whcfg:{{{workspace_id}}}", self.prefix)
    }
    pub fn webhook_logs(&self, workspace_id: &str) -> String {
        format!("{}:whlog:{{{workspace_id}}}", self.prefix)
    }
    pub fn opt_outs(&self, workspace_id: &str) -> String {
        format!("{}:optout:{{{workspace_id}}}", self.prefix)
    }
    pub fn workspace(&self, id: &str) -> String {
        format!("{}:ws:{{{id}}}", self.prefix)
    }
    pub fn api_key(&self, hash: &str) -> String {
        format!("{}:key:{hash}", self.prefix)
    }
    pub fn code_key(&self) -> String {
        format!("{}:codekey", self.prefix)
    }
    pub fn invalidation_channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
}

pub struct RedisStore {
    /// SHA1 of [`LINK_SCRIPT`] and [`BROADCAST_SCRIPT`], for `EVALSHA`.
    link_script: String,
    broadcast_script: String,
    pool: Pool,
    keys: Keys,
    timeout: Duration,
}

impl RedisStore {
    /// Prepares the connection without connecting: linkhit starts (and serves cached links, `/healthz`)
    /// while Redis is down; `/readyz` tells when it is reachable. Must be called inside a Tokio runtime.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let pool =
            Pool::open(url, timeout).map_err(|e| StoreError::Unavailable(format!("bad LINKHIT_REDIS_URL: {e}")))?;
        Ok(Self {
            link_script: redis::Script::new(LINK_SCRIPT).get_hash().to_owned(),
            broadcast_script: redis::Script::new(BROADCAST_SCRIPT).get_hash().to_owned(),
            pool,
            keys: Keys::new(prefix),
            timeout,
        })
    }

    /// A connection, established within the timeout (the cluster connects on first use).
    async fn conn(&self) -> Result<Conn, StoreError> {
        self.bounded(self.timeout, self.pool.get()).await
    }

    /// Runs tagged commands that may span cluster slots (see [`Pool::spread`]) under a deadline.
    async fn spread(
        &self,
        deadline: Duration,
        tagged: Vec<(String, redis::Cmd)>,
        prelude: &[redis::Cmd],
    ) -> Result<Vec<Value>, StoreError> {
        self.bounded(deadline, self.pool.spread(tagged, prelude)).await
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs one Redis future under a deadline.
    async fn bounded<T>(
        &self,
        deadline: Duration,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: String) -> Result<Option<T>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Option<Vec<u8>> = self.bounded(self.timeout, async move { conn.get(key).await }).await?;
        raw.map(|bytes| serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
    }

    async fn insert_batch(&self, links: &[Link]) -> Result<Vec<bool>, StoreError> {
        let mut tagged = Vec::with_capacity(links.len());
        for link in links {
            let json = serde_json::to_vec(link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.keys.link(&link.code)).arg(json).arg("NX");
            tagged.push((link.code.clone(), cmd));
        }
        // A batch carries a few hundred kilobytes: give it more than a single lookup gets.
        let replies = self.spread(self.timeout * 20, tagged, &[]).await?;
        Ok(replies.into_iter().map(|v| matches!(v, Value::Okay)).collect())
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: String =
            self.bounded(self.timeout, async move { redis::cmd("PING").query_async(&mut conn).await }).await?;
        Ok(())
    }

    async fn code_key(&self) -> Result<[u8; 16], StoreError> {
        let key = self.keys.code_key();
        let fresh = hex::encode(rand::random::<[u8; 16]>());
        let mut conn = self.conn().await?;
        let stored: String = self
            .bounded(self.timeout, async move {
                let _: Option<String> =
                    redis::cmd("SET").arg(&key).arg(&fresh).arg("NX").query_async(&mut conn).await?;
                conn.get(&key).await
            })
            .await?;
        let bytes = hex::decode(stored.trim()).map_err(|e| StoreError::Corrupt(format!("code key: {e}")))?;
        bytes.try_into().map_err(|_| StoreError::Corrupt("code key is not 16 bytes".into()))
    }

    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        let json = serde_json::to_vec(workspace).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = self.keys.workspace(&workspace.id);
        let mut conn = self.conn().await?;
        let created: bool = self.bounded(self.timeout, async move { conn.set_nx(key, json).await }).await?;
        if created { Ok(()) } else { Err(StoreError::Corrupt(format!("workspace {} exists", workspace.id))) }
    }

    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        self.get_json(self.keys.workspace(id)).await
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let redis_key = self.keys.api_key(&key.key_hash);
        let mut conn = self.conn().await?;
        self.bounded(self.timeout, async move { conn.set::<_, _, ()>(redis_key, json).await }).await
    }

    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_json(self.keys.api_key(key_hash)).await
    }

    async fn insert_links(&self, links: &[Link]) -> Result<Vec<bool>, StoreError> {
        let batches: Vec<_> = links.chunks(INSERT_BATCH).map(|batch| self.insert_batch(batch)).collect();
        let results: Vec<Result<Vec<bool>, StoreError>> =
            futures_util::stream::iter(batches).buffered(INSERT_CONCURRENCY).collect().await;
        let mut inserted = Vec::with_capacity(links.len());
        for batch in results {
            inserted.extend(batch?);
        }
        // Count the new links of each broadcast with one HINCRBY per broadcast, after the links exist.
        let mut per_broadcast: std::collections::HashMap<(&str, &str), i64> = Default::default();
        for (link, fresh) in links.iter().zip(&inserted) {
            if let (true, Some(broadcast)) = (fresh, &link.broadcast_id) {
                *per_broadcast.entry((&link.workspace_id, broadcast)).or_default() += 1;
            }
        }
        if !per_broadcast.is_empty() {
            let mut tagged = Vec::new();
            for ((workspace, broadcast), n) in per_broadcast {
                let key = self.keys.broadcast(workspace, broadcast);
                let mut count = redis::cmd("HINCRBY");
                count.arg(&key).arg("links").arg(n);
                tagged.push((hash_tag(&key).to_owned(), count));
                let index = self.keys.broadcasts(workspace);
                let mut register = redis::cmd("SADD");
                register.arg(&index).arg(broadcast);
                tagged.push((hash_tag(&index).to_owned(), register));
            }
            self.spread(self.timeout * 4, tagged, &[]).await?;
        }
        Ok(inserted)
    }

    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        self.get_json(self.keys.link(code)).await
    }

    async fn get_links(&self, codes: &[&str]) -> Result<Vec<Option<Link>>, StoreError> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        // GETs rather than MGET: the keys live in different cluster slots.
        let tagged = codes
            .iter()
            .map(|code| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.keys.link(code));
                ((*code).to_owned(), cmd)
            })
            .collect();
        let raw = self.spread(self.timeout * 20, tagged, &[]).await?;
        raw.into_iter()
            .map(|v| match v {
                Value::Nil => Ok(None),
                Value::BulkString(b) => {
                    serde_json::from_slice(&b).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
                }
                other => Err(StoreError::Corrupt(format!("unexpected reply {other:?}"))),
            })
            .collect()
    }

    async fn disable_link(&self, code: &str, at: DateTime<Utc>) -> Result<Option<Link>, StoreError> {
        let Some(mut link) = self.get_link(code).await? else {
            return Ok(None);
        };
        if link.disabled_at.is_none() {
            // Links are immutable apart from this flag, so a read-modify-write race between two
            // disables only decides which timestamp is kept.
            link.disabled_at = Some(at);
            let json = serde_json::to_vec(&link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let key = self.keys.link(code);
            let mut conn = self.conn().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(key).arg(json).arg("XX").ignore();
            self.bounded(self.timeout, async move { pipe.query_async::<()>(&mut conn).await }).await?;
        }
        // Publish even when already disabled: an instance that missed the first message learns now.
        let channel = self.keys.invalidation_channel();
        let code = code.to_owned();
        let mut conn = self.conn().await?;
        self.bounded(self.timeout, async move { conn.publish::<_, _, i64>(channel, code).await }).await?;
        Ok(Some(link))
    }

    async fn record_clicks(&self, clicks: &[ClickRecord], recent: usize) -> Result<Vec<ClickTally>, StoreError> {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        // Group by link and by broadcast, keeping batch order inside each group.
        let mut links: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut link_index: HashMap<&str, usize> = HashMap::new();
        let mut broadcasts: Vec<((&str, &str), Vec<usize>)> = Vec::new();
        let mut broadcast_index: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, click) in clicks.iter().enumerate() {
            let g = *link_index.entry(&click.code).or_insert_with(|| {
                links.push((&click.code, Vec::new()));
                links.len() - 1
            });
            links[g].1.push(i);
            if let Some(b) = &click.broadcast_id {
                let key = (click.workspace_id.as_str(), b.as_str());
                let g = *broadcast_index.entry(key).or_insert_with(|| {
                    broadcasts.push((key, Vec::new()));
                    broadcasts.len() - 1
                });
                broadcasts[g].1.push(i);
            }
        }
        // On a single node the scripts are loaded at the head of every pipeline (two cheap commands) and
        // run with `EVALSHA`: safe after a restart or `SCRIPT FLUSH` without retries (a retried pipeline
        // could count twice), and `EVAL` would make Redis hash the script text once per link, which
        // halves throughput. A cluster pipeline is split per slot, so there each call carries its script.
        let cluster = self.pool.is_cluster();
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
        for (code, members) in &links {
            let human: Vec<&ClickRecord> = members.iter().map(|&i| &clicks[i]).filter(|c| c.is_human()).collect();
            let skip = members.len().saturating_sub(recent);
            let newest = members.iter().skip(skip).map(|&i| clicks[i].recent_json());
            if human.is_empty() {
                let mut count = redis::cmd("HINCRBY");
                count.arg(self.keys.counters(code)).arg("bot_hits").arg(members.len());
                tagged.push(((*code).to_owned(), count));
                let listed = recent > 0;
                if listed {
                    let mut push = redis::cmd("LPUSH");
                    push.arg(self.keys.recent_clicks(code));
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
            let mut cmd = script(&self.link_script, LINK_SCRIPT);
            cmd.arg(2)
                .arg(self.keys.counters(code))
                .arg(self.keys.recent_clicks(code))
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
        for ((workspace, broadcast), members) in &broadcasts {
            let human = members.iter().filter(|&&i| clicks[i].is_human()).count();
            let recipients: Vec<&str> = members
                .iter()
                .filter(|&&i| clicks[i].is_human())
                .filter_map(|&i| clicks[i].recipient.as_deref())
                .collect();
            let key = self.keys.broadcast(workspace, broadcast);
            let mut cmd = script(&self.broadcast_script, BROADCAST_SCRIPT);
            cmd.arg(3)
                .arg(&key)
                .arg(self.keys.broadcast_uniques(workspace, broadcast))
                .arg(self.keys.timeline(workspace, broadcast))
                .arg(members.len())
                .arg(human)
                .arg(members.len() - human)
                .arg(recipients.len())
                .arg(&recipients);
            for ((minute, class), n) in super::minute_buckets(members.iter().map(|&i| &clicks[i])) {
                cmd.arg(format!("{minute}:{}", if class == crate::click::Class::Human { 'h' } else { 'b' })).arg(n);
            }
            tagged.push((hash_tag(&key).to_owned(), cmd));
        }
        let mut opt_out_clicks = Vec::new();
        for (i, click) in clicks.iter().enumerate() {
            if let (true, LinkKind::OptOut, Some(recipient)) = (click.is_human(), click.kind, &click.recipient) {
                let record = crate::store::memory::opt_out_of(click, recipient);
                let key = self.keys.opt_outs(&click.workspace_id);
                let mut cmd = redis::cmd("HSETNX");
                cmd.arg(&key).arg(recipient).arg(serde_json::to_vec(&record).map_err(corrupt)?);
                tagged.push((hash_tag(&key).to_owned(), cmd));
                opt_out_clicks.push(i);
            }
        }
        let mut prelude = [redis::cmd("SCRIPT"), redis::cmd("SCRIPT")];
        prelude[0].arg("LOAD").arg(LINK_SCRIPT);
        prelude[1].arg("LOAD").arg(BROADCAST_SCRIPT);
        let replies = self.spread(COMMIT_TIMEOUT, tagged, &prelude).await?;
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
                        trim.arg(self.keys.recent_clicks(code)).arg(0).arg(recent - 1);
                        trims.push(((*code).to_owned(), trim));
                    }
                }
            }
        }
        let mut first_in_broadcast = vec![false; clicks.len()];
        for (_, members) in &broadcasts {
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
        for i in opt_out_clicks {
            opted_out[i] = as_int(replies.next()) == Some(1);
        }
        if !trims.is_empty() {
            // Idempotent: a failure here leaves a list a little long until its next push.
            if let Err(err) = self.spread(self.timeout, trims, &[]).await {
                tracing::debug!(error = %err, "trimming recent-click lists failed");
            }
        }
        Ok(super::tallies(clicks, &human_after, &first_in_broadcast, &opted_out))
    }

    async fn link_stats(&self, code: &str) -> Result<LinkStats, StoreError> {
        let key = self.keys.counters(code);
        let mut conn = self.conn().await?;
        type Row = (Option<u64>, Option<u64>, Option<i64>, Option<i64>);
        let (human_hits, bot_hits, first, last): Row = self
            .bounded(self.timeout, async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(&["human_hits", "bot_hits", "first_click_at", "last_click_at"])
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let (human_hits, bot_hits) = (human_hits.unwrap_or(0), bot_hits.unwrap_or(0));
        Ok(LinkStats {
            hits: human_hits + bot_hits,
            human_hits,
            bot_hits,
            unique_clicks: u64::from(human_hits > 0),
            first_click_at: first.and_then(DateTime::from_timestamp_millis),
            last_click_at: last.and_then(DateTime::from_timestamp_millis),
        })
    }

    async fn broadcast_stats(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
    ) -> Result<Option<BroadcastStats>, StoreError> {
        let key = self.keys.broadcast(workspace_id, broadcast_id);
        let mut conn = self.conn().await?;
        let fields: HashMap<String, u64> = self.bounded(self.timeout, async move { conn.hgetall(key).await }).await?;
        if fields.get("links").copied().unwrap_or(0) == 0 {
            return Ok(None);
        }
        let get = |name: &str| fields.get(name).copied().unwrap_or(0);
        Ok(Some(BroadcastStats {
            links: get("links"),
            hits: get("hits"),
            human_hits: get("human_hits"),
            bot_hits: get("bot_hits"),
            unique_clicks: get("unique_clicks"),
        }))
    }

    async fn list_broadcasts(&self, workspace_id: &str) -> Result<Vec<(String, BroadcastStats)>, StoreError> {
        let key = self.keys.broadcasts(workspace_id);
        let mut conn = self.conn().await?;
        let mut ids: Vec<String> = self.bounded(self.timeout, async move { conn.smembers(key).await }).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let tagged = ids
            .iter()
            .map(|id| {
                let key = self.keys.broadcast(workspace_id, id);
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(&key);
                (hash_tag(&key).to_owned(), cmd)
            })
            .collect();
        let rows: Vec<HashMap<String, u64>> = self
            .spread(self.timeout * 4, tagged, &[])
            .await?
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(ids
            .into_iter()
            .zip(rows)
            .map(|(id, f)| {
                let get = |name: &str| f.get(name).copied().unwrap_or(0);
                let stats = BroadcastStats {
                    links: get("links"),
                    hits: get("hits"),
                    human_hits: get("human_hits"),
                    bot_hits: get("bot_hits"),
                    unique_clicks: get("unique_clicks"),
                };
                (id, stats)
            })
            .collect())
    }

    async fn broadcast_timeline(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
    ) -> Result<Vec<(i64, u64, u64)>, StoreError> {
        let key = self.keys.timeline(workspace_id, broadcast_id);
        let mut conn = self.conn().await?;
        let fields: HashMap<String, u64> = self.bounded(self.timeout, async move { conn.hgetall(key).await }).await?;
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

    async fn recent_clicks(&self, code: &str, limit: usize) -> Result<Vec<RecentClick>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.recent_clicks(code);
        let mut conn = self.conn().await?;
        let raw: Vec<Vec<u8>> =
            self.bounded(self.timeout, async move { conn.lrange(key, 0, limit as isize - 1).await }).await?;
        raw.iter().map(|bytes| serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))).collect()
    }

    async fn opt_outs(&self, workspace_id: &str, limit: usize) -> Result<Vec<OptOut>, StoreError> {
        let key = self.keys.opt_outs(workspace_id);
        let mut conn = self.conn().await?;
        let raw: Vec<Vec<u8>> = self.bounded(self.timeout, async move { conn.hvals(key).await }).await?;
        let mut all = raw
            .iter()
            .map(|bytes| serde_json::from_slice::<OptOut>(bytes).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by_key(|o| std::cmp::Reverse(o.at));
        all.truncate(limit);
        Ok(all)
    }

    async fn get_webhook_settings(&self, workspace_id: &str) -> Result<Option<WebhookSettings>, StoreError> {
        self.get_json(self.keys.webhook_settings(workspace_id)).await
    }

    async fn put_webhook_settings(&self, workspace_id: &str, settings: &WebhookSettings) -> Result<(), StoreError> {
        let json = serde_json::to_vec(settings).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = self.keys.webhook_settings(workspace_id);
        let mut conn = self.conn().await?;
        self.bounded(self.timeout, async move { conn.set::<_, _, ()>(key, json).await }).await
    }

    async fn append_webhook_logs(
        &self,
        workspace_id: &str,
        entries: &[DeliveryLog],
        cap: usize,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let key = self.keys.webhook_logs(workspace_id);
        let mut pipe = redis::pipe();
        for entry in entries {
            let json = serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            pipe.cmd("LPUSH").arg(&key).arg(json).ignore();
        }
        pipe.cmd("LTRIM").arg(&key).arg(0).arg(cap.max(1) as i64 - 1).ignore();
        let mut conn = self.conn().await?;
        self.bounded(self.timeout, async move { pipe.query_async::<()>(&mut conn).await }).await
    }

    async fn webhook_logs(&self, workspace_id: &str, limit: usize) -> Result<Vec<DeliveryLog>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.webhook_logs(workspace_id);
        let mut conn = self.conn().await?;
        let raw: Vec<Vec<u8>> =
            self.bounded(self.timeout, async move { conn.lrange(key, 0, limit as isize - 1).await }).await?;
        raw.iter().map(|bytes| serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))).collect()
    }

    fn invalidations(&self, shutdown: CancellationToken) -> Option<mpsc::Receiver<Invalidation>> {
        let (tx, rx) = mpsc::channel(4096);
        let clients = self.pool.pubsub_clients();
        let channel = self.keys.invalidation_channel();
        let timeout = self.timeout;
        tokio::spawn(async move {
            shutdown.run_until_cancelled(subscribe_forever(clients, channel, timeout, tx)).await;
        });
        Some(rx)
    }
}

fn as_int(value: Option<Value>) -> Option<i64> {
    match value? {
        Value::Int(n) => Some(n),
        _ => None,
    }
}

/// Keeps one subscription to the invalidation channel alive, reconnecting with backoff. After every
/// (re)subscription it sends `Invalidation::All`, since messages published meanwhile are lost.
/// With a cluster, it subscribes on one seed node after the other (`PUBLISH` reaches every node).
async fn subscribe_forever(
    clients: Vec<redis::Client>,
    channel: String,
    timeout: Duration,
    tx: mpsc::Sender<Invalidation>,
) {
    let mut backoff = Duration::from_millis(100);
    for client in clients.iter().cycle() {
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub()).await.ok()?.ok()?;
            tokio::time::timeout(timeout, pubsub.subscribe(&channel)).await.ok()?.ok()?;
            Some(pubsub)
        }
        .await;
        match subscribed {
            Some(pubsub) => {
                backoff = Duration::from_millis(100);
                tracing::debug!(%channel, "subscribed to cache invalidations");
                if tx.send(Invalidation::All).await.is_err() {
                    return;
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(code) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if tx.send(Invalidation::Code(code)).await.is_err() {
                        return;
                    }
                }
                tracing::warn!("cache invalidation subscription lost; reconnecting");
            }
            None => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_link_keys_share_a_hash_tag() {
        let keys = Keys::new("lh");
        assert_eq!(keys.link("abcDEF12"), "lh:link:{abcDEF12}");
        assert_eq!(keys.counters("abcDEF12"), "lh:cnt:{abcDEF12}");
        assert_eq!(keys.broadcast("ws_1", "fall"), "lh:bc:{ws_1:fall}");
        assert_eq!(keys.invalidation_channel(), "lh:invalidate");
    }
}
