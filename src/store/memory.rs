//! The embedded store: concurrent maps in this process. Fast, dependency-free, not persisted.
//!
//! `DashMap` shards its locks, and no guard is held across an `.await` (every method is synchronous
//! inside its `async` wrapper).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Invalidation, Store, StoreError};
use crate::model::{ApiKeyRecord, Link, LinkCounters, Workspace};

#[derive(Default)]
pub struct MemoryStore {
    links: DashMap<String, Link>,
    counters: DashMap<String, LinkCounters>,
    /// Links per (workspace, broadcast).
    broadcast_links: DashMap<(String, String), u64>,
    workspaces: DashMap<String, Workspace>,
    keys: DashMap<String, ApiKeyRecord>,
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        match self.workspaces.entry(workspace.id.clone()) {
            Entry::Occupied(_) => Err(StoreError::Corrupt(format!(
                "workspace {} exists",
                workspace.id
            ))),
            Entry::Vacant(slot) => {
                slot.insert(workspace.clone());
                Ok(())
            }
        }
    }

    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        Ok(self.workspaces.get(id).map(|w| w.clone()))
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.keys.insert(key.key_hash.clone(), key.clone());
        Ok(())
    }

    async fn get_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.keys.get(key_hash).map(|k| k.clone()))
    }

    async fn insert_links(&self, links: &[Link]) -> Result<Vec<bool>, StoreError> {
        let mut inserted = Vec::with_capacity(links.len());
        for link in links {
            let fresh = match self.links.entry(link.code.clone()) {
                Entry::Occupied(_) => false,
                Entry::Vacant(slot) => {
                    slot.insert(link.clone());
                    true
                }
            };
            if fresh && let Some(broadcast) = &link.broadcast_id {
                *self
                    .broadcast_links
                    .entry((link.workspace_id.clone(), broadcast.clone()))
                    .or_default() += 1;
            }
            inserted.push(fresh);
        }
        Ok(inserted)
    }

    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        Ok(self.links.get(code).map(|l| l.clone()))
    }

    async fn disable_link(
        &self,
        code: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Link>, StoreError> {
        Ok(self.links.get_mut(code).map(|mut link| {
            link.disabled_at.get_or_insert(at);
            link.clone()
        }))
    }

    async fn link_counters(&self, code: &str) -> Result<LinkCounters, StoreError> {
        Ok(self
            .counters
            .get(code)
            .map(|c| c.clone())
            .unwrap_or_default())
    }

    fn invalidations(&self, _shutdown: CancellationToken) -> Option<mpsc::Receiver<Invalidation>> {
        // One process, one cache: the API invalidates it directly.
        None
    }
}
