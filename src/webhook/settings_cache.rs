//! Webhook settings by workspace, cached for the outbox and the workers: a change made on another
//! instance applies within the TTL, one made on this instance at once (`invalidate`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::model::WebhookSettings;
use crate::store::{SharedStore, StoreError};

/// Webhook settings by workspace, cached briefly: a change made on another instance applies within the
/// TTL, one made on this instance at once (`invalidate`).
pub struct SettingsCache {
    store: SharedStore,
    ttl: Duration,
    /// By (workspace, sub-account or `""`); `None`: that sub-account has no configuration of its own.
    map: DashMap<(String, String), Cached>,
}

/// When it was read, and what: `None` for a sub-account without a configuration of its own.
type Cached = (Instant, Option<Arc<WebhookSettings>>);

impl SettingsCache {
    pub fn new(store: SharedStore, ttl: Duration) -> Self {
        Self { store, ttl, map: DashMap::new() }
    }

    /// The workspace-wide configuration.
    pub async fn get(&self, workspace_id: &str) -> Result<Arc<WebhookSettings>, StoreError> {
        self.get_for(workspace_id, None).await
    }

    /// The configuration that applies to a sub-account's events: its own when it has one, else the
    /// workspace-wide one (the vendors' `"*"`).
    pub async fn get_for(
        &self,
        workspace_id: &str,
        sub_account_id: Option<&str>,
    ) -> Result<Arc<WebhookSettings>, StoreError> {
        if let Some(sub) = sub_account_id
            && let Some(own) = self.lookup(workspace_id, Some(sub)).await?
        {
            return Ok(own);
        }
        Ok(self.lookup(workspace_id, None).await?.unwrap_or_default())
    }

    async fn lookup(&self, workspace_id: &str, sub: Option<&str>) -> Result<Option<Arc<WebhookSettings>>, StoreError> {
        let key = (workspace_id.to_owned(), sub.unwrap_or_default().to_owned());
        if let Some(entry) = self.map.get(&key)
            && entry.0.elapsed() < self.ttl
        {
            return Ok(entry.1.clone());
        }
        let settings = self.store.get_webhook_settings(workspace_id, sub).await?.map(Arc::new);
        if self.map.len() > 100_000 {
            self.map.clear();
        }
        self.map.insert(key, (Instant::now(), settings.clone()));
        Ok(settings)
    }

    pub fn invalidate(&self, workspace_id: &str, sub_account_id: Option<&str>) {
        self.map.remove(&(workspace_id.to_owned(), sub_account_id.unwrap_or_default().to_owned()));
    }
}
