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
//! | `P:cnt:{CODE}` | hash | `hits`, `human_hits`, `bot_hits` |
//! | `P:bc:{WS:BROADCAST}` | hash | `links` (count of links created in the broadcast) |
//! | `P:ws:{WS}` | string | the workspace as JSON |
//! | `P:key:HASH` | string | an API key record as JSON (HASH = hex SHA-256 of the key) |
//! | `P:invalidate` | pub/sub channel | codes whose cached copies must be dropped |
//!
//! Every command is bounded by the configured timeout: a hung Redis turns into `StoreError::Timeout`,
//! never into a hung request.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Invalidation, Store, StoreError};
use crate::model::{ApiKeyRecord, Link, LinkCounters, Workspace};

/// Links per pipeline round trip in bulk inserts: large enough to amortise the round trip, small
/// enough that one batch never comes near the command timeout.
const INSERT_BATCH: usize = 2_000;
/// Pipelines in flight at once during a bulk insert.
const INSERT_CONCURRENCY: usize = 4;

/// Key names. The only place that knows them.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
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
    pub fn workspace(&self, id: &str) -> String {
        format!("{}:ws:{{{id}}}", self.prefix)
    }
    pub fn api_key(&self, hash: &str) -> String {
        format!("{}:key:{hash}", self.prefix)
    }
    pub fn invalidation_channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
}

pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    timeout: Duration,
}

impl RedisStore {
    /// Prepares the connection without connecting: linkhit starts (and serves cached links, `/healthz`)
    /// while Redis is down; `/readyz` tells when it is reachable.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("bad LINKHIT_REDIS_URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // Per-command deadlines are applied by `bounded`, with longer ones for bulk work.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            client,
            conn,
            keys: Keys::new(prefix),
            timeout,
        })
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

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
    ) -> Result<Option<T>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = self
            .bounded(self.timeout, async move { conn.get(key).await })
            .await?;
        raw.map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .transpose()
    }

    async fn insert_batch(&self, links: &[Link]) -> Result<Vec<bool>, StoreError> {
        let mut pipe = redis::pipe();
        for link in links {
            let json = serde_json::to_vec(link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            pipe.cmd("SET")
                .arg(self.keys.link(&link.code))
                .arg(json)
                .arg("NX");
        }
        let mut conn = self.conn.clone();
        // A batch carries a few hundred kilobytes: give it more than a single lookup gets.
        let replies: Vec<Value> = self
            .bounded(self.timeout * 20, async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        Ok(replies
            .into_iter()
            .map(|v| matches!(v, Value::Okay))
            .collect())
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = self
            .bounded(self.timeout, async move {
                redis::cmd("PING").query_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        let json = serde_json::to_vec(workspace).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = self.keys.workspace(&workspace.id);
        let mut conn = self.conn.clone();
        let created: bool = self
            .bounded(self.timeout, async move { conn.set_nx(key, json).await })
            .await?;
        if created {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!(
                "workspace {} exists",
                workspace.id
            )))
        }
    }

    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        self.get_json(self.keys.workspace(id)).await
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let redis_key = self.keys.api_key(&key.key_hash);
        let mut conn = self.conn.clone();
        self.bounded(self.timeout, async move {
            conn.set::<_, _, ()>(redis_key, json).await
        })
        .await
    }

    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_json(self.keys.api_key(key_hash)).await
    }

    async fn insert_links(&self, links: &[Link]) -> Result<Vec<bool>, StoreError> {
        let batches: Vec<_> = links
            .chunks(INSERT_BATCH)
            .map(|batch| self.insert_batch(batch))
            .collect();
        let results: Vec<Result<Vec<bool>, StoreError>> = futures_util::stream::iter(batches)
            .buffered(INSERT_CONCURRENCY)
            .collect()
            .await;
        let mut inserted = Vec::with_capacity(links.len());
        for batch in results {
            inserted.extend(batch?);
        }
        // Count the new links of each broadcast with one HINCRBY per broadcast, after the links exist.
        let mut per_broadcast: std::collections::HashMap<(&str, &str), i64> = Default::default();
        for (link, fresh) in links.iter().zip(&inserted) {
            if let (true, Some(broadcast)) = (fresh, &link.broadcast_id) {
                *per_broadcast
                    .entry((&link.workspace_id, broadcast))
                    .or_default() += 1;
            }
        }
        if !per_broadcast.is_empty() {
            let mut pipe = redis::pipe();
            for ((workspace, broadcast), n) in per_broadcast {
                pipe.cmd("HINCRBY")
                    .arg(self.keys.broadcast(workspace, broadcast))
                    .arg("links")
                    .arg(n)
                    .ignore();
            }
            let mut conn = self.conn.clone();
            self.bounded(self.timeout, async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await?;
        }
        Ok(inserted)
    }

    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        self.get_json(self.keys.link(code)).await
    }

    async fn disable_link(
        &self,
        code: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Link>, StoreError> {
        let Some(mut link) = self.get_link(code).await? else {
            return Ok(None);
        };
        if link.disabled_at.is_none() {
            // Links are immutable apart from this flag, so a read-modify-write race between two
            // disables only decides which timestamp is kept.
            link.disabled_at = Some(at);
            let json = serde_json::to_vec(&link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let key = self.keys.link(code);
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(key).arg(json).arg("XX").ignore();
            self.bounded(self.timeout, async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await?;
        }
        // Publish even when already disabled: an instance that missed the first message learns now.
        let channel = self.keys.invalidation_channel();
        let code = code.to_owned();
        let mut conn = self.conn.clone();
        self.bounded(self.timeout, async move {
            conn.publish::<_, _, i64>(channel, code).await
        })
        .await?;
        Ok(Some(link))
    }

    async fn link_counters(&self, code: &str) -> Result<LinkCounters, StoreError> {
        let key = self.keys.counters(code);
        let mut conn = self.conn.clone();
        let (hits, human_hits, bot_hits): (Option<u64>, Option<u64>, Option<u64>) = self
            .bounded(self.timeout, async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("hits")
                    .arg("human_hits")
                    .arg("bot_hits")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(LinkCounters {
            hits: hits.unwrap_or(0),
            human_hits: human_hits.unwrap_or(0),
            bot_hits: bot_hits.unwrap_or(0),
        })
    }

    fn invalidations(&self, shutdown: CancellationToken) -> Option<mpsc::Receiver<Invalidation>> {
        let (tx, rx) = mpsc::channel(4096);
        let client = self.client.clone();
        let channel = self.keys.invalidation_channel();
        let timeout = self.timeout;
        tokio::spawn(async move {
            shutdown
                .run_until_cancelled(subscribe_forever(client, channel, timeout, tx))
                .await;
        });
        Some(rx)
    }
}

/// Keeps one subscription to the invalidation channel alive, reconnecting with backoff. After every
/// (re)subscription it sends `Invalidation::All`, since messages published meanwhile are lost.
async fn subscribe_forever(
    client: redis::Client,
    channel: String,
    timeout: Duration,
    tx: mpsc::Sender<Invalidation>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                .await
                .ok()?
                .ok()?;
            tokio::time::timeout(timeout, pubsub.subscribe(&channel))
                .await
                .ok()?
                .ok()?;
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
