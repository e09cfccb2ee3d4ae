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
    map: DashMap<String, (Instant, Arc<WebhookSettings>)>,
}

impl SettingsCache {
    pub fn new(store: SharedStore, ttl: Duration) -> Self {
        Self { store, ttl, map: DashMap::new() }
    }

    pub async fn get(&self, workspace_id: &str) -> Result<Arc<WebhookSettings>, StoreError> {
        if let Some(entry) = self.map.get(workspace_id)
            && entry.0.elapsed() < self.ttl
        {
            return Ok(Arc::clone(&entry.1));
        }
        let settings = Arc::new(self.store.get_webhook_settings(workspace_id).await?.unwrap_or_default());
        if self.map.len() > 100_000 {
            self.map.clear();
        }
        self.map.insert(workspace_id.to_owned(), (Instant::now(), Arc::clone(&settings)));
        Ok(settings)
    }

    pub fn invalidate(&self, workspace_id: &str) {
        self.map.remove(workspace_id);
    }
}
