//! The store: where links, workspaces, API keys and counters live. One trait, two implementations.
//!
//! - [`memory::MemoryStore`]: embedded, in-process, the default with no `LINKHIT_REDIS_URL`. Nothing is
//!   persisted; a restart forgets everything (logged loudly at start-up).
//! - [`redis::RedisStore`]: shared by any number of instances; survives linkhit restarts.
//!
//! Architecture Invariant: only `store::redis` knows the Redis key layout; the rest of the program speaks
//! in `Link`, `Workspace`, `ApiKeyRecord`.
//!
//! The trait is object-safe (`async_trait`) because it is called only on cache misses and from the
//! management API; the redirect hot path never calls it on a cache hit.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{
    ApiKeyRecord, Batch, BroadcastStats, Class, ClickTally, Conversion, Delivery, DeliveryLog, Link, LinkRef,
    LinkStats, OptOut, RecentClick, Recorded, WebhookSettings, Workspace,
};

/// Errors of any store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store operation timed out")]
    Timeout,
    #[error("corrupt record in store: {0}")]
    Corrupt(String),
    #[error("could not find a free code after several attempts")]
    CodeSpaceExhausted,
}

/// A change another instance made that this instance's caches must forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// This code changed (disabled): drop it from the cache.
    Code(String),
    /// Messages may have been missed (the subscription was (re)established): revalidate everything.
    All,
}

/// The persistence interface. Implementations must make `insert_links` atomic per link (a code is
/// either free and now taken by this link, or taken and left untouched).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"embedded"` or `"redis"`, for logs and `/readyz`.
    fn name(&self) -> &'static str;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The key of the codes' check characters, shared by every instance: created once, then read.
    async fn code_key(&self) -> Result<[u8; 16], StoreError>;

    /// Creates a workspace; ids are random, so a clash is an error, not an overwrite.
    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError>;
    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError>;

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Inserts each link whose code is free; returns, per link in order, whether it was inserted.
    /// A `false` means the code was taken (by an older link or an earlier one in `links`).
    async fn insert_links(&self, links: &[Link]) -> Result<Vec<bool>, StoreError>;

    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError>;

    /// Several links in one round trip, in order.
    async fn get_links(&self, codes: &[&str]) -> Result<Vec<Option<Link>>, StoreError>;

    /// Marks a link disabled (idempotent: the first `disabled_at` wins) and tells every instance to
    /// forget it. Returns the updated link, or `None` if there is no such code.
    async fn disable_link(&self, code: &str, at: DateTime<Utc>) -> Result<Option<Link>, StoreError>;

    /// Counts a batch of classified hits: per-link and per-broadcast counters, unique recipients, the
    /// capped list of recent clicks per link (`recent` newest kept), and opt-outs (human hits on opt-out
    /// links with a recipient). Returns one tally per click, in order.
    ///
    /// Idempotent by `batch.id`: counting a batch that was counted before changes nothing and returns
    /// the tallies of the first time, until the batch is released (or its guard expires). Atomic per
    /// slot: each part of the store (a Redis Cluster slot; all of it elsewhere) applies its share of the
    /// batch in full or not at all, so a failed call may be repeated safely.
    async fn record_batch(&self, batch: &Batch, recent: usize) -> Result<Vec<ClickTally>, StoreError>;

    /// Forgets what made `batch` idempotent: it is counted and its events are queued, so it will never be
    /// counted again. Never waits; the work may ride on a later call.
    fn release_batch(&self, batch: &Batch);

    /// Counters of a link (zeros if it was never hit).
    async fn link_stats(&self, code: &str) -> Result<LinkStats, StoreError>;

    /// The codes of a workspace's links named by message id or by (broadcast, recipient), in order
    /// (`None`: no such link). The newest link wins when several share a name.
    async fn find_links(&self, workspace_id: &str, refs: &[LinkRef]) -> Result<Vec<Option<String>>, StoreError>;

    /// A page of a broadcast's redirect links that name a recipient, as (recipient, code) ordered by
    /// recipient; `search`: only recipients containing it. Returns the number matching and the page.
    async fn broadcast_recipients(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
        search: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<(String, String)>), StoreError>;

    /// Records delivery reports on their links (status, and when delivered) and counts delivered
    /// recipients per broadcast; tells every instance to reload those links. Returns the updated links.
    async fn record_deliveries(&self, deliveries: &[Delivery]) -> Result<Vec<Link>, StoreError>;

    /// Counters of a broadcast of a workspace; `None` if it has no links.
    async fn broadcast_stats(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
    ) -> Result<Option<BroadcastStats>, StoreError>;

    /// The workspace's broadcasts with their counters, by id.
    async fn list_broadcasts(&self, workspace_id: &str) -> Result<Vec<(String, BroadcastStats)>, StoreError>;

    /// Hits of a broadcast per minute: `(unix minute start in seconds, human, bot, conversions)`, oldest
    /// first.
    async fn broadcast_timeline(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
    ) -> Result<Vec<(i64, u64, u64, u64)>, StoreError>;

    /// The most recent clicks of a link, newest first.
    async fn recent_clicks(&self, code: &str, limit: usize) -> Result<Vec<RecentClick>, StoreError>;

    /// Opt-outs of a workspace, newest first.
    async fn opt_outs(&self, workspace_id: &str, limit: usize) -> Result<Vec<OptOut>, StoreError>;

    /// Records an opt-out that did not come through a link (an inbound STOP). Returns `true` if the
    /// recipient was not opted out before (the event fires), `false` if it was (nothing changes). With a
    /// `broadcast_id`, the recipient counts in that broadcast's `opt_outs` either way.
    async fn record_opt_out(&self, opt_out: &OptOut, workspace_id: &str) -> Result<bool, StoreError>;

    /// Marks an inbound opt-out's event as queued (`pending: false`), if the opt-out is still there.
    async fn settle_opt_out(&self, workspace_id: &str, opt_out: &OptOut) -> Result<(), StoreError>;

    /// The recipient's current opt-out, if any.
    async fn get_opt_out(&self, workspace_id: &str, recipient: &str) -> Result<Option<OptOut>, StoreError>;

    /// Opts the recipient back in: the next opt-out is recorded (and fires) again. Broadcast counts keep
    /// their history. Returns whether there was an opt-out.
    async fn delete_opt_out(&self, workspace_id: &str, recipient: &str) -> Result<bool, StoreError>;

    /// Counts a conversion on its link and broadcast, once per `conversion.dedup` (remembered for `ttl`):
    /// a second call changes nothing and answers `Duplicate`, with whether the event was queued
    /// ([`Store::conversion_emitted`]). Also answers the verdict of its click, when the click id was
    /// counted (`None`: not yet, or not remembered).
    async fn record_conversion(
        &self,
        conversion: &Conversion,
        ttl: std::time::Duration,
    ) -> Result<(Recorded, Option<Class>), StoreError>;

    /// Notes that the conversion's event was queued (a duplicate no longer queues it again).
    async fn conversion_emitted(&self, conversion: &Conversion, ttl: std::time::Duration) -> Result<(), StoreError>;

    /// A workspace's webhook settings, or a sub-account's (`None` if never configured).
    async fn get_webhook_settings(
        &self,
        workspace_id: &str,
        sub_account_id: Option<&str>,
    ) -> Result<Option<WebhookSettings>, StoreError>;
    async fn put_webhook_settings(
        &self,
        workspace_id: &str,
        sub_account_id: Option<&str>,
        settings: &WebhookSettings,
    ) -> Result<(), StoreError>;

    /// Appends delivery log entries (oldest first in `entries`), keeping the newest `cap`.
    async fn append_webhook_logs(
        &self,
        workspace_id: &str,
        entries: &[DeliveryLog],
        cap: usize,
    ) -> Result<(), StoreError>;
    /// Delivery log entries, newest first.
    async fn webhook_logs(&self, workspace_id: &str, limit: usize) -> Result<Vec<DeliveryLog>, StoreError>;

    /// A feed of changes made by other instances, if the store is shared. The feed ends when
    /// `shutdown` is cancelled.
    fn invalidations(&self, shutdown: CancellationToken) -> Option<mpsc::Receiver<Invalidation>>;
}

pub type SharedStore = Arc<dyn Store>;

/// Conversions one click id may count (distinct names): one click cannot inflate a campaign.
pub const MAX_CONVERSIONS_PER_CLICK: u32 = 20;

/// Opens the store the configuration asks for.
pub fn open(config: &crate::config::Config) -> Result<SharedStore, StoreError> {
    match &config.redis_url {
        None => {
            tracing::warn!(
                "using the embedded in-process store: links, counters and webhook queues are NOT persisted \
                 and are lost when this process stops; set LINKHIT_REDIS_URL for durable storage"
            );
            Ok(Arc::new(memory::MemoryStore::default()))
        }
        Some(url) => Ok(Arc::new(
            redis::RedisStore::open(url, &config.redis_prefix, config.redis_timeout)?
                .with_guard_ttl(config.commit_guard_ttl),
        )),
    }
}

/// Inserts `links`, giving every link whose code was taken a fresh code until all are stored.
/// This is what makes codes unique: the store's atomic "insert if free", never the odds.
pub async fn insert_unique(
    store: &dyn Store,
    links: &mut [Link],
    codes: &crate::code::CodePolicy,
) -> Result<(), StoreError> {
    /// With 64^8 codes a single retry is already astronomically rare; eight in a row means the code
    /// space is nearly full (or something is badly wrong) and the caller should hear about it.
    const MAX_ATTEMPTS: usize = 8;
    let mut pending: Vec<usize> = (0..links.len()).collect();
    for attempt in 0..MAX_ATTEMPTS {
        let inserted = if attempt == 0 {
            store.insert_links(links).await?
        } else {
            let retry: Vec<Link> = pending.iter().map(|&i| links[i].clone()).collect();
            store.insert_links(&retry).await?
        };
        pending = pending.into_iter().zip(inserted).filter_map(|(i, fresh)| (!fresh).then_some(i)).collect();
        if pending.is_empty() {
            return Ok(());
        }
        metrics::counter!("linkhit_code_collisions_total").increment(pending.len() as u64);
        for &i in &pending {
            links[i].code = codes.generate();
        }
    }
    Err(StoreError::CodeSpaceExhausted)
}
