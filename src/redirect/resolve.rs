//! Stage 1 of a click's journey: resolve a code to a link — from the cache, or on a miss from the store.
//!
//! Architecture Invariant: on a cache hit (fresh or stale) `resolve` returns without awaiting anything;
//! the store is read only on a miss, and a stale hit is revalidated by a spawned task the request never
//! waits for.

use std::sync::Arc;

use crate::click_id::ClickIds;
use crate::code::CodePolicy;
use crate::store::{Invalidation, SharedStore};

use super::cache::{CachedLink, LinkCache, Lookup};

/// The outcome of resolving a code.
#[derive(Debug)]
pub enum Resolved {
    Link(Arc<CachedLink>),
    /// Malformed, unknown, or remembered as unknown.
    NotFound,
    /// A cache miss and the store did not answer in time.
    Unavailable,
}

pub struct Resolver {
    pub cache: LinkCache,
    store: SharedStore,
    codes: CodePolicy,
    /// Issues the click ids of links tracking conversions.
    pub click_ids: ClickIds,
}

impl Resolver {
    pub fn new(cache: LinkCache, store: SharedStore, codes: CodePolicy, click_ids: ClickIds) -> Self {
        Self { cache, store, codes, click_ids }
    }

    pub fn codes(&self) -> &CodePolicy {
        &self.codes
    }

    pub async fn resolve(self: &Arc<Self>, code: &str) -> Resolved {
        if !self.codes.is_valid(code) {
            return Resolved::NotFound;
        }
        match self.cache.lookup(code) {
            Lookup::Fresh(link) => Resolved::Link(link),
            Lookup::Stale(link) => {
                if link.begin_refresh() {
                    let this = Arc::clone(self);
                    let code = code.to_owned();
                    tokio::spawn(async move {
                        // Failure keeps the stale entry serving; the next hit tries again.
                        let _ = this.load(&code).await;
                    });
                }
                Resolved::Link(link)
            }
            Lookup::Missing => Resolved::NotFound,
            Lookup::Unknown => self.load(code).await,
        }
    }

    /// Reads the store and fills the cache (positively or negatively).
    async fn load(&self, code: &str) -> Resolved {
        let generation = self.cache.generation();
        match self.store.get_link(code).await {
            Ok(Some(link)) => Resolved::Link(self.cache.insert_link(&link, generation)),
            Ok(None) => {
                self.cache.insert_missing(code, generation);
                Resolved::NotFound
            }
            Err(err) => {
                metrics::counter!("linkhit_store_errors_total", "op" => "resolve").increment(1);
                tracing::warn!(error = %err, "store lookup failed on a cache miss");
                Resolved::Unavailable
            }
        }
    }

    /// Applies invalidations from other instances until the feed ends.
    pub async fn follow(self: Arc<Self>, mut feed: tokio::sync::mpsc::Receiver<Invalidation>) {
        while let Some(inv) = feed.recv().await {
            match inv {
                Invalidation::Code(code) => self.cache.invalidate(&code),
                Invalidation::All => self.cache.invalidate_all(),
            }
        }
    }
}
