//! The embedded store: concurrent maps in this process. Fast, dependency-free, not persisted.
//!
//! `DashMap` shards its locks, and no guard is held across an `.await` (every method is synchronous
//! inside its `async` wrapper).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod correct;

use super::{Invalidation, Store, StoreError};
use crate::counting;
use crate::model::{
    ApiKeyRecord, Batch, BroadcastStats, ClickTally, Delivery, DeliveryLog, Link, LinkRef, LinkStats, OptOut,
    RecentClick, WebhookSettings, Workspace,
};
use crate::model::{Class, Conversion, LinkKind, Recorded};
use correct::correct;

pub struct MemoryStore {
    /// Random per process: nothing outlives the process anyway.
    code_key: [u8; 16],
    links: DashMap<String, Link>,
    /// Click counters, behind one lock: they are written by one committer task in batches.
    clicks: Mutex<ClickState>,
    /// Redirect links and opt-out links per (workspace, broadcast).
    broadcast_links: DashMap<(String, String), (u64, u64)>,
    workspaces: DashMap<String, Workspace>,
    keys: DashMap<String, ApiKeyRecord>,
    /// By (workspace, sub-account; `""` for the workspace-wide configuration).
    webhook_settings: DashMap<(String, String), WebhookSettings>,
    /// Per workspace, newest first.
    webhook_logs: DashMap<String, VecDeque<DeliveryLog>>,
    /// (workspace, message id) → code, for delivery reports.
    by_message: DashMap<(String, String), String>,
    /// (workspace, broadcast, recipient) → code.
    by_recipient: DashMap<(String, String, String), String>,
    /// (workspace, broadcast) → recipients with a `delivered` report.
    delivered: DashMap<(String, String), HashSet<String>>,
}

/// Batches counted and not released yet, remembered for idempotency.
const MAX_UNRELEASED_BATCHES: usize = 4096;

/// The maps every counted hit touches: a fast hash with a random per-map seed (SipHash cost ~1k
/// instructions per hit across them; measured in docs/PERFORMANCE.md).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A (workspace, broadcast) key borrowed from a click: finds its broadcast without copying the ids.
#[derive(Hash)]
struct Pair<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(String, String)> for Pair<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl From<&Pair<'_>> for (String, String) {
    fn from(key: &Pair<'_>) -> Self {
        (key.0.to_owned(), key.1.to_owned())
    }
}

/// The broadcast's aggregate, created on first use; copies the ids only then. One lookup.
fn broadcast_agg<'a>(
    broadcasts: &'a mut hashbrown::HashMap<(String, String), BroadcastAgg, foldhash::fast::RandomState>,
    workspace_id: &str,
    broadcast_id: &str,
) -> &'a mut BroadcastAgg {
    broadcasts.entry_ref(&Pair(workspace_id, broadcast_id)).or_default()
}

#[derive(Default)]
struct ClickState {
    /// Tallies of counted, unreleased batches by id.
    applied: Map<String, Vec<ClickTally>>,
    links: Map<Arc<str>, LinkAgg>,
    broadcasts: hashbrown::HashMap<(String, String), BroadcastAgg, foldhash::fast::RandomState>,
    /// Per workspace: opt-outs in arrival order, and the recipients already opted out.
    opt_outs: HashMap<String, (Vec<OptOut>, HashSet<String>)>,
    /// Conversions counted, by what makes them count once: whether their event was queued, and until
    /// when the mark holds (the TTL Redis gives it; expired marks are pruned as the map grows).
    conversions: HashMap<String, (bool, std::time::Instant)>,
    /// Size of `conversions` at which expired marks are pruned next (doubles when little expires).
    prune_at: usize,
    /// Conversions counted per (code, click id), for the per-click cap.
    per_click: HashMap<(String, String), u32>,
}

/// Click ids remembered per link with their verdict (for the conversions-on-bot-hits metric); a link
/// flooded with hits keeps the first ones.
const CLICK_IDS_PER_LINK: usize = 1000;

#[derive(Default)]
struct LinkAgg {
    stats: LinkStats,
    /// Only what the link does not already say (no copy of its code, workspace, broadcast, recipient).
    recent: VecDeque<RecentClick>,
    click_ids: HashMap<Arc<str>, Class>,
}

#[derive(Default)]
struct BroadcastAgg {
    hits: u64,
    human_hits: u64,
    bot_hits: u64,
    /// Human hits per recipient (a correction may take one back; may go below zero when a correction
    /// is counted before the hit it corrects).
    recipients: Map<Arc<str>, i64>,
    /// Recipients with at least one human hit (exact unique clicks).
    unique: u64,
    bot_reasons: std::collections::BTreeMap<String, u64>,
    /// Recipients who opted out through the broadcast.
    opt_outs: HashSet<String>,
    conversions: u64,
    conversion_value: std::collections::BTreeMap<String, rust_decimal::Decimal>,
    /// Unix minute → (human, bot).
    timeline: std::collections::BTreeMap<i64, (u64, u64, u64)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            code_key: rand::random(),
            links: DashMap::new(),
            clicks: Mutex::default(),
            broadcast_links: DashMap::new(),
            workspaces: DashMap::new(),
            keys: DashMap::new(),
            webhook_settings: DashMap::new(),
            webhook_logs: DashMap::new(),
            by_message: DashMap::new(),
            by_recipient: DashMap::new(),
            delivered: DashMap::new(),
        }
    }
}

impl MemoryStore {
    fn click_state(&self) -> std::sync::MutexGuard<'_, ClickState> {
        self.clicks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn code_key(&self) -> Result<[u8; 16], StoreError> {
        Ok(self.code_key)
    }

    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        match self.workspaces.entry(workspace.id.clone()) {
            Entry::Occupied(_) => Err(StoreError::Corrupt(format!("workspace {} exists", workspace.id))),
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
                let mut counts =
                    self.broadcast_links.entry((link.workspace_id.clone(), broadcast.clone())).or_default();
                match link.kind {
                    LinkKind::Redirect => counts.0 += 1,
                    LinkKind::OptOut => counts.1 += 1,
                }
                drop(counts);
                if let Some(recipient) = &link.recipient
                    && link.kind == LinkKind::Redirect
                {
                    self.by_recipient
                        .insert((link.workspace_id.clone(), broadcast.clone(), recipient.clone()), link.code.clone());
                }
            }
            if fresh
                && link.kind == LinkKind::Redirect
                && let Some(message_id) = &link.message_id
            {
                self.by_message.insert((link.workspace_id.clone(), message_id.clone()), link.code.clone());
            }
            inserted.push(fresh);
        }
        Ok(inserted)
    }

    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        Ok(self.links.get(code).map(|l| l.clone()))
    }

    async fn get_links(&self, codes: &[&str]) -> Result<Vec<Option<Link>>, StoreError> {
        Ok(codes.iter().map(|c| self.links.get(*c).map(|l| l.clone())).collect())
    }

    async fn disable_link(&self, code: &str, at: DateTime<Utc>) -> Result<Option<Link>, StoreError> {
        Ok(self.links.get_mut(code).map(|mut link| {
            link.disabled_at.get_or_insert(at);
            link.clone()
        }))
    }

    async fn record_batch(&self, batch: &Batch, recent: usize) -> Result<Vec<ClickTally>, StoreError> {
        let mut state = self.click_state();
        // The same guarantee as Redis: a batch counted before changes nothing and answers as it did.
        if let Some(tallies) = state.applied.get(&batch.id) {
            metrics::counter!("linkhit_batches_deduplicated_total").increment(1);
            return Ok(tallies.clone());
        }
        let clicks = &batch.clicks;
        let mut first_in_broadcast = vec![false; clicks.len()];
        let mut opted_out = vec![false; clicks.len()];
        for (i, click) in clicks.iter().enumerate() {
            let human = click.is_human();
            // The key is the click's shared code: one lookup, and no copy of the text when it is new.
            let agg = state.links.entry(Arc::clone(&click.code)).or_default();
            agg.stats.hits += 1;
            if human {
                agg.stats.human_hits += 1;
                agg.stats.unique_clicks = 1;
                agg.stats.first_click_at = Some(agg.stats.first_click_at.map_or(click.at, |t| t.min(click.at)));
                agg.stats.last_click_at = Some(agg.stats.last_click_at.map_or(click.at, |t| t.max(click.at)));
            } else {
                agg.stats.bot_hits += 1;
            }
            if recent > 0 && !click.folded {
                agg.recent.push_front(click.to_recent());
                agg.recent.truncate(recent);
            }
            if let Some(id) = &click.click_id
                && agg.click_ids.len() < CLICK_IDS_PER_LINK
            {
                agg.click_ids.insert(id.clone(), click.class);
            }
            if let Some(broadcast) = &click.broadcast_id
                && click.kind == LinkKind::Redirect
            {
                let b = broadcast_agg(&mut state.broadcasts, &click.workspace_id, broadcast);
                b.hits += 1;
                let minute = b.timeline.entry(click.at.timestamp().div_euclid(60) * 60).or_default();
                if human {
                    minute.0 += 1;
                } else {
                    minute.1 += 1;
                }
                if human {
                    b.human_hits += 1;
                    if let Some(recipient) = &click.recipient {
                        let count = b.recipients.entry(recipient.clone()).or_default();
                        *count += 1;
                        first_in_broadcast[i] = *count == 1;
                        if *count == 1 {
                            b.unique += 1;
                        }
                    }
                } else {
                    b.bot_hits += 1;
                    match b.bot_reasons.get_mut(&*click.reason) {
                        Some(n) => *n += 1,
                        None => {
                            b.bot_reasons.insert(click.reason.to_string(), 1);
                        }
                    }
                }
            }
            if counting::records_opt_out(click)
                && let Some(recipient) = &click.recipient
            {
                if let Some(broadcast) = &click.broadcast_id {
                    let b = broadcast_agg(&mut state.broadcasts, &click.workspace_id, broadcast);
                    b.opt_outs.insert(recipient.to_string());
                }
                let (list, seen) = state.opt_outs.entry(click.workspace_id.to_string()).or_default();
                if seen.insert(recipient.to_string()) {
                    list.push(counting::opt_out_of(click, recipient));
                    opted_out[i] = true;
                }
            }
        }
        for correction in &batch.corrections {
            correct(&mut state, &correction.click);
        }
        // Only links with a human hit in the batch are tallied (`counting::tallies`).
        let (mut human_after, mut all_after) = (counting::Fast::default(), counting::Fast::default());
        for c in clicks.iter().filter(|c| c.is_human()) {
            let stats = state.links.get(&c.code).map(|a| &a.stats);
            human_after.insert(&*c.code, stats.map_or(0, |s| s.human_hits));
            all_after.insert(&*c.code, stats.map_or(0, |s| s.hits));
        }
        let tallies = counting::tallies(clicks, &human_after, &all_after, &first_in_broadcast, &opted_out);
        if state.applied.len() >= MAX_UNRELEASED_BATCHES {
            // Only batches whose pipeline stopped before releasing them are left here; nothing can
            // count them again in this process's lifetime except a journal replay, which the journal's
            // own done markers cover.
            state.applied.clear();
        }
        state.applied.insert(batch.id.clone(), tallies.clone());
        Ok(tallies)
    }

    fn release_batch(&self, batch: &Batch) {
        self.click_state().applied.remove(&batch.id);
    }

    async fn find_links(&self, workspace_id: &str, refs: &[LinkRef]) -> Result<Vec<Option<String>>, StoreError> {
        let ws = workspace_id.to_owned();
        Ok(refs
            .iter()
            .map(|r| match r {
                LinkRef::MessageId(m) => self.by_message.get(&(ws.clone(), m.clone())).map(|c| c.clone()),
                LinkRef::Recipient { broadcast_id, recipient } => {
                    self.by_recipient.get(&(ws.clone(), broadcast_id.clone(), recipient.clone())).map(|c| c.clone())
                }
            })
            .collect())
    }

    async fn broadcast_recipients(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
        search: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<(String, String)>), StoreError> {
        let mut all: Vec<(String, String)> = self
            .by_recipient
            .iter()
            .filter(|e| e.key().0 == workspace_id && e.key().1 == broadcast_id)
            .filter(|e| search.is_none_or(|s| e.key().2.contains(s)))
            .map(|e| (e.key().2.clone(), e.value().clone()))
            .collect();
        all.sort();
        let total = all.len();
        Ok((total, all.into_iter().skip(offset).take(limit).collect()))
    }

    async fn record_deliveries(&self, deliveries: &[Delivery]) -> Result<Vec<Link>, StoreError> {
        let mut updated = Vec::new();
        for d in deliveries {
            let Some(mut link) = self.links.get_mut(&d.code) else { continue };
            counting::apply_delivery(&mut link, d);
            if d.status == "delivered"
                && let (Some(b), Some(r)) = (&link.broadcast_id, &link.recipient)
            {
                self.delivered.entry((link.workspace_id.clone(), b.clone())).or_default().insert(r.clone());
            }
            updated.push(link.clone());
        }
        Ok(updated)
    }

    async fn link_stats(&self, code: &str) -> Result<LinkStats, StoreError> {
        Ok(self.click_state().links.get(code).map(|a| a.stats.clone()).unwrap_or_default())
    }

    async fn broadcast_stats(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
    ) -> Result<Option<BroadcastStats>, StoreError> {
        let key = (workspace_id.to_owned(), broadcast_id.to_owned());
        let Some((links, opt_out_links)) = self.broadcast_links.get(&key).map(|n| *n) else {
            return Ok(None);
        };
        let state = self.click_state();
        let agg = state.broadcasts.get(&key);
        Ok(Some(BroadcastStats {
            links,
            opt_out_links,
            opt_outs: agg.map_or(0, |b| b.opt_outs.len() as u64),
            conversions: agg.map_or(0, |b| b.conversions),
            conversion_value: agg.map(|b| b.conversion_value.clone()).unwrap_or_default(),
            hits: agg.map_or(0, |b| b.hits),
            human_hits: agg.map_or(0, |b| b.human_hits),
            bot_hits: agg.map_or(0, |b| b.bot_hits),
            unique_clicks: agg.map_or(0, |b| b.unique),
            delivered: self.delivered.get(&key).map_or(0, |d| d.len() as u64),
            bot_reasons: agg.map(|b| b.bot_reasons.clone()).unwrap_or_default(),
        }))
    }

    async fn list_broadcasts(&self, workspace_id: &str) -> Result<Vec<(String, BroadcastStats)>, StoreError> {
        let mut ids: Vec<String> =
            self.broadcast_links.iter().filter(|e| e.key().0 == workspace_id).map(|e| e.key().1.clone()).collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(stats) = self.broadcast_stats(workspace_id, &id).await? {
                out.push((id, stats));
            }
        }
        Ok(out)
    }

    async fn broadcast_timeline(
        &self,
        workspace_id: &str,
        broadcast_id: &str,
    ) -> Result<Vec<(i64, u64, u64, u64)>, StoreError> {
        let state = self.click_state();
        Ok(state
            .broadcasts
            .get(&(workspace_id.to_owned(), broadcast_id.to_owned()))
            .map(|b| b.timeline.iter().map(|(m, (h, bot, c))| (*m, *h, *bot, *c)).collect())
            .unwrap_or_default())
    }

    async fn recent_clicks(&self, code: &str, limit: usize) -> Result<Vec<RecentClick>, StoreError> {
        Ok(self
            .click_state()
            .links
            .get(code)
            .map(|a| a.recent.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn opt_outs(&self, workspace_id: &str, limit: usize) -> Result<Vec<OptOut>, StoreError> {
        Ok(self
            .click_state()
            .opt_outs
            .get(workspace_id)
            .map(|(list, _)| list.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn record_opt_out(&self, opt_out: &OptOut, workspace_id: &str) -> Result<bool, StoreError> {
        let mut state = self.click_state();
        if let Some(broadcast) = &opt_out.broadcast_id {
            let b = broadcast_agg(&mut state.broadcasts, workspace_id, broadcast);
            b.opt_outs.insert(opt_out.recipient.clone());
        }
        let (list, seen) = state.opt_outs.entry(workspace_id.to_owned()).or_default();
        if !seen.insert(opt_out.recipient.clone()) {
            return Ok(false);
        }
        list.push(opt_out.clone());
        Ok(true)
    }

    async fn settle_opt_out(&self, workspace_id: &str, opt_out: &OptOut) -> Result<(), StoreError> {
        if let Some((list, _)) = self.click_state().opt_outs.get_mut(workspace_id)
            && let Some(o) = list.iter_mut().rev().find(|o| o.recipient == opt_out.recipient && o.at == opt_out.at)
        {
            o.pending = false;
        }
        Ok(())
    }

    async fn get_opt_out(&self, workspace_id: &str, recipient: &str) -> Result<Option<OptOut>, StoreError> {
        Ok(self
            .click_state()
            .opt_outs
            .get(workspace_id)
            .and_then(|(list, _)| list.iter().rev().find(|o| o.recipient == recipient).cloned()))
    }

    async fn delete_opt_out(&self, workspace_id: &str, recipient: &str) -> Result<bool, StoreError> {
        let mut state = self.click_state();
        let Some((list, seen)) = state.opt_outs.get_mut(workspace_id) else { return Ok(false) };
        list.retain(|o| o.recipient != recipient);
        Ok(seen.remove(recipient))
    }

    async fn record_conversion(
        &self,
        conversion: &Conversion,
        ttl: std::time::Duration,
    ) -> Result<(Recorded, Option<Class>), StoreError> {
        let mut state = self.click_state();
        let class = conversion.click_id.as_ref().and_then(|id| {
            state.links.get(conversion.code.as_str()).and_then(|a| a.click_ids.get(id.as_str()).copied())
        });
        let now = std::time::Instant::now();
        if let Some(&(emitted, until)) = state.conversions.get(&conversion.dedup)
            && until > now
        {
            return Ok((Recorded::Duplicate { emitted }, class));
        }
        if state.conversions.len() >= state.prune_at.max(100_000) {
            state.conversions.retain(|_, (_, until)| *until > now);
            state.prune_at = state.conversions.len() * 2;
        }
        if let Some(click) = &conversion.click_id {
            let key = (conversion.code.clone(), click.clone());
            let n = state.per_click.get(&key).copied().unwrap_or(0);
            if n >= crate::store::MAX_CONVERSIONS_PER_CLICK {
                return Ok((Recorded::Refused, class));
            }
            if state.per_click.len() >= 1_000_000 {
                state.per_click.clear();
            }
            state.per_click.insert(key, n + 1);
        }
        state.conversions.insert(conversion.dedup.clone(), (false, now + ttl));
        let value = conversion.value.unwrap_or_default();
        let stats = &mut state.links.entry(Arc::from(conversion.code.as_str())).or_default().stats;
        stats.conversions += 1;
        *stats.conversion_value.entry(conversion.currency.clone()).or_default() += value;
        if let Some(broadcast) = &conversion.broadcast_id {
            let b = broadcast_agg(&mut state.broadcasts, &conversion.workspace_id, broadcast);
            b.conversions += 1;
            *b.conversion_value.entry(conversion.currency.clone()).or_default() += value;
            b.timeline.entry(conversion.at.timestamp().div_euclid(60) * 60).or_default().2 += 1;
        }
        Ok((Recorded::New, class))
    }

    async fn conversion_emitted(&self, conversion: &Conversion, _ttl: std::time::Duration) -> Result<(), StoreError> {
        if let Some(mark) = self.click_state().conversions.get_mut(&conversion.dedup) {
            mark.0 = true;
        }
        Ok(())
    }

    async fn get_webhook_settings(
        &self,
        workspace_id: &str,
        sub_account_id: Option<&str>,
    ) -> Result<Option<WebhookSettings>, StoreError> {
        let key = (workspace_id.to_owned(), sub_account_id.unwrap_or_default().to_owned());
        Ok(self.webhook_settings.get(&key).map(|s| s.clone()))
    }

    async fn put_webhook_settings(
        &self,
        workspace_id: &str,
        sub_account_id: Option<&str>,
        settings: &WebhookSettings,
    ) -> Result<(), StoreError> {
        let key = (workspace_id.to_owned(), sub_account_id.unwrap_or_default().to_owned());
        self.webhook_settings.insert(key, settings.clone());
        Ok(())
    }

    async fn append_webhook_logs(
        &self,
        workspace_id: &str,
        entries: &[DeliveryLog],
        cap: usize,
    ) -> Result<(), StoreError> {
        let mut logs = self.webhook_logs.entry(workspace_id.to_owned()).or_default();
        for entry in entries {
            logs.push_front(entry.clone());
        }
        logs.truncate(cap);
        Ok(())
    }

    async fn webhook_logs(&self, workspace_id: &str, limit: usize) -> Result<Vec<DeliveryLog>, StoreError> {
        Ok(self.webhook_logs.get(workspace_id).map(|l| l.iter().take(limit).cloned().collect()).unwrap_or_default())
    }

    fn invalidations(&self, _shutdown: CancellationToken) -> Option<mpsc::Receiver<Invalidation>> {
        // One process, one cache: the API invalidates it directly.
        None
    }
}
