//! The Redis store: one multiplexed, self-reconnecting connection (`ConnectionManager`, or the cluster
//! connection) shared by every task, plus one pub/sub connection that carries cache invalidations
//! between instances.
//!
//! - [`keys`]: the key layout, the only place that knows Redis key names;
//! - [`counting`]: a batch of classified hits as commands and scripts, and their replies;
//! - [`stats`]: the counters, timelines, recent clicks and opt-outs read back;
//! - [`conversions`]: conversions (idempotent per slot) and opt-outs by SMS;
//! - [`invalidation`]: the subscription that keeps every instance's cache coherent;
//! - this file: connections, deadlines, links, workspaces, keys, webhook settings and logs.
//!
//! Every command is bounded by the configured timeout: a hung Redis turns into `StoreError::Timeout`,
//! never into a hung request.

mod args;
mod conversions;
mod counting;
mod deliveries;
mod invalidation;
mod keys;
mod stats;

pub use keys::Keys;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use redis::{AsyncCommands, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Invalidation, Store, StoreError};
use crate::model::{
    ApiKeyRecord, Batch, BroadcastStats, Class, ClickTally, Conversion, Delivery, DeliveryLog, Link, LinkKind, LinkRef,
    LinkStats, OptOut, RecentClick, Recorded, WebhookSettings, Workspace,
};
use crate::redis_conn::{Conn, Pool, hash_tag};

/// Links per pipeline round trip in bulk inserts: large enough to amortise the round trip, small
/// enough that one batch never comes near the command timeout.
const INSERT_BATCH: usize = 2_000;
/// Pipelines in flight at once during a bulk insert.
const INSERT_CONCURRENCY: usize = 4;
/// Inserts a link with a bot slot (single node): `SET NX` of its JSON (KEYS[1]) and, if that took,
/// its slot in `P:bslot-of` (KEYS[2]). ARGV: JSON, slot, code. Answers 1 if inserted.
const INSERT_SLOTTED: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX') then \
    redis.call('HSET', KEYS[2], ARGV[3], ARGV[2]) return 1 end return 0";

pub struct RedisStore {
    pool: std::sync::Arc<Pool>,
    keys: Keys,
    timeout: Duration,
    guard_ttl: Duration,
    /// Guards of released batches, deleted by the next counting pipeline.
    released: Mutex<Vec<String>>,
    /// Guard keys of the batches this process counted and has not released yet.
    guards: Mutex<HashMap<String, Vec<String>>>,
    /// A single node has the counting script (loaded by a counting pipeline that succeeded): later
    /// pipelines run it by SHA alone, and a `NOSCRIPT` (a restart) loads it again (`counting`).
    script_loaded: std::sync::atomic::AtomicBool,
}

/// Default lifetime of a guard that is never released: longer than any outage a journal waits out.
pub const DEFAULT_GUARD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Unreleased batches whose guard keys are remembered (the rest are recomputed on release).
const MAX_REMEMBERED_BATCHES: usize = 4096;
/// Guards waiting to be deleted; past this, they are left to expire.
const MAX_PENDING_RELEASES: usize = 1 << 20;

impl RedisStore {
    /// Prepares the connection without connecting: linkhit starts (and serves cached links, `/healthz`)
    /// while Redis is down; `/readyz` tells when it is reachable. Must be called inside a Tokio runtime.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let pool =
            Pool::open(url, timeout).map_err(|e| StoreError::Unavailable(format!("bad LINKHIT_REDIS_URL: {e}")))?;
        Ok(Self {
            pool: std::sync::Arc::new(pool),
            keys: Keys::new(prefix),
            timeout,
            guard_ttl: DEFAULT_GUARD_TTL,
            released: Mutex::new(Vec::new()),
            guards: Mutex::new(HashMap::new()),
            script_loaded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// How long a batch's guards outlive it when it is never released (see `counting`).
    pub fn with_guard_ttl(mut self, ttl: Duration) -> Self {
        self.guard_ttl = ttl;
        self
    }

    fn remember_guards(&self, batch_id: &str, keys: Vec<String>) {
        let mut guards = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        if guards.len() >= MAX_REMEMBERED_BATCHES {
            // Batches never released (their pipeline stopped): their guards expire on their own.
            guards.clear();
        }
        guards.insert(batch_id.to_owned(), keys);
    }

    fn take_released(&self) -> Vec<String> {
        std::mem::take(&mut *self.released.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn requeue_released(&self, keys: Vec<String>) {
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        if released.len() < MAX_PENDING_RELEASES {
            released.extend(keys);
        }
    }

    /// Deletes guards without waiting (a cluster spreads them over slots; failures leave them to expire).
    fn unlink_in_background(&self, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        let tagged: Vec<(String, redis::Cmd)> = keys
            .iter()
            .map(|k| {
                let mut cmd = redis::cmd("UNLINK");
                cmd.arg(k);
                (hash_tag(k).to_owned(), cmd)
            })
            .collect();
        let pool = std::sync::Arc::clone(&self.pool);
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout * 4, pool.spread(tagged, &[])).await;
        });
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
        let slots = self.bot_slots(links.len()).await?;
        let mut tagged = Vec::with_capacity(links.len());
        for (i, link) in links.iter().enumerate() {
            let cmd = match slots {
                Some(first) => {
                    // The link and its slot in one script: both or neither (plain `EVAL`: a script
                    // reloaded and sent again would find its own link and report the code taken).
                    let slot = first + i as u32;
                    let link = Link { bot_slot: Some(slot), ..link.clone() };
                    let json = serde_json::to_vec(&link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(INSERT_SLOTTED).arg(2).arg(self.keys.link(&link.code)).arg(self.keys.bot_slot_of());
                    cmd.arg(json).arg(slot).arg(&link.code);
                    cmd
                }
                None => {
                    let json = serde_json::to_vec(link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(self.keys.link(&link.code)).arg(json).arg("NX");
                    cmd
                }
            };
            tagged.push((link.code.clone(), cmd));
        }
        // A batch carries a few hundred kilobytes: give it more than a single lookup gets.
        let replies = self.spread(self.timeout * 20, tagged, &[]).await?;
        Ok(replies.into_iter().map(|v| matches!(v, Value::Okay | Value::Int(1))).collect())
    }

    /// Reserves `n` consecutive bot slots; the first. `None` on a cluster (the flood's counters there
    /// stay per link, in each link's slot) or once slots run past `u32`.
    async fn bot_slots(&self, n: usize) -> Result<Option<u32>, StoreError> {
        if self.pool.is_cluster() || n == 0 {
            return Ok(None);
        }
        let key = self.keys.bot_slot_next();
        let mut conn = self.conn().await?;
        let last: u64 = self.bounded(self.timeout, async move { conn.incr(key, n as u64).await }).await?;
        Ok(u32::try_from(last).ok().map(|last| last + 1 - n as u32))
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
        // Opt-out links are not engagement: they count apart from the broadcast's `links`.
        let mut per_broadcast: std::collections::HashMap<(&str, &str, &str), i64> = Default::default();
        for (link, fresh) in links.iter().zip(&inserted) {
            if let (true, Some(broadcast)) = (fresh, &link.broadcast_id) {
                let field = if link.kind == LinkKind::OptOut { "opt_out_links" } else { "links" };
                *per_broadcast.entry((&link.workspace_id, broadcast, field)).or_default() += 1;
            }
        }
        let fresh: Vec<&Link> = links.iter().zip(&inserted).filter(|(_, f)| **f).map(|(l, _)| l).collect();
        let index = deliveries::index_commands(self, &fresh);
        if !index.is_empty() {
            self.spread(self.timeout * 20, index, &[]).await?;
        }
        if !per_broadcast.is_empty() {
            let mut tagged = Vec::new();
            for ((workspace, broadcast, field), n) in per_broadcast {
                let key = self.keys.broadcast(workspace, broadcast);
                let mut count = redis::cmd("HINCRBY");
                count.arg(&key).arg(field).arg(n);
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

    async fn find_links(&self, workspace_id: &str, refs: &[LinkRef]) -> Result<Vec<Option<String>>, StoreError> {
        deliveries::find_links(self, workspace_id, refs).await
    }

    async fn broadcast_recipients(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
        search: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<(String, String)>), StoreError> {
        let key = self.keys.recipient_index(workspace_id, broadcast_id);
        let mut conn = self.conn().await?;
        // The console's list: one read of the broadcast's index (a 100,000-recipient broadcast is ~4 MB).
        let all: HashMap<String, String> =
            self.bounded(self.timeout * 10, async move { conn.hgetall(key).await }).await?;
        let mut all: Vec<(String, String)> =
            all.into_iter().filter(|(r, _)| search.is_none_or(|s| r.contains(s))).collect();
        all.sort();
        let total = all.len();
        Ok((total, all.into_iter().skip(offset).take(limit).collect()))
    }

    async fn record_deliveries(&self, deliveries: &[Delivery]) -> Result<Vec<Link>, StoreError> {
        deliveries::record_deliveries(self, deliveries).await
    }

    async fn record_batch(&self, batch: &Batch, recent: usize) -> Result<Vec<ClickTally>, StoreError> {
        counting::record_batch(self, batch, recent).await
    }

    fn release_batch(&self, batch: &Batch) {
        let remembered = self.guards.lock().unwrap_or_else(|p| p.into_inner()).remove(&batch.id);
        let keys = remembered.unwrap_or_else(|| counting::guards(self, batch));
        self.requeue_released(keys);
    }

    async fn link_stats(&self, code: &str) -> Result<LinkStats, StoreError> {
        stats::link_stats(self, code).await
    }

    async fn broadcast_stats(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
    ) -> Result<Option<BroadcastStats>, StoreError> {
        stats::broadcast_stats(self, workspace_id, broadcast_id).await
    }

    async fn list_broadcasts(&self, workspace_id: &str) -> Result<Vec<(String, BroadcastStats)>, StoreError> {
        stats::list_broadcasts(self, workspace_id).await
    }

    async fn broadcast_timeline(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
    ) -> Result<Vec<(i64, u64, u64, u64)>, StoreError> {
        stats::broadcast_timeline(self, workspace_id, broadcast_id).await
    }

    async fn recent_clicks(&self, code: &str, limit: usize) -> Result<Vec<RecentClick>, StoreError> {
        stats::recent_clicks(self, code, limit).await
    }

    async fn opt_outs(&self, workspace_id: &str, limit: usize) -> Result<Vec<OptOut>, StoreError> {
        stats::opt_outs(self, workspace_id, limit).await
    }

    async fn record_opt_out(&self, opt_out: &OptOut, workspace_id: &str) -> Result<bool, StoreError> {
        conversions::record_opt_out(self, opt_out, workspace_id).await
    }

    async fn settle_opt_out(&self, workspace_id: &str, opt_out: &OptOut) -> Result<(), StoreError> {
        conversions::settle_opt_out(self, workspace_id, opt_out).await
    }

    async fn get_opt_out(&self, workspace_id: &str, recipient: &str) -> Result<Option<OptOut>, StoreError> {
        conversions::get_opt_out(self, workspace_id, recipient).await
    }

    async fn delete_opt_out(&self, workspace_id: &str, recipient: &str) -> Result<bool, StoreError> {
        conversions::delete_opt_out(self, workspace_id, recipient).await
    }

    async fn record_conversion(
        &self,
        conversion: &Conversion,
        ttl: Duration,
    ) -> Result<(Recorded, Option<Class>), StoreError> {
        conversions::record_conversion(self, conversion, ttl).await
    }

    async fn conversion_emitted(&self, conversion: &Conversion, ttl: Duration) -> Result<(), StoreError> {
        conversions::conversion_emitted(self, conversion, ttl).await
    }

    fn invalidations(&self, shutdown: CancellationToken) -> Option<mpsc::Receiver<Invalidation>> {
        invalidation::invalidations(self, shutdown)
    }

    async fn get_webhook_settings(
        &self,
        workspace_id: &str,
        sub_account_id: Option<&str>,
    ) -> Result<Option<WebhookSettings>, StoreError> {
        self.get_json(self.keys.webhook_settings(workspace_id, sub_account_id)).await
    }

    async fn put_webhook_settings(
        &self,
        workspace_id: &str,
        sub_account_id: Option<&str>,
        settings: &WebhookSettings,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(settings).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = self.keys.webhook_settings(workspace_id, sub_account_id);
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
}
