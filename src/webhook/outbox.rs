//! Stage 7: accept counted events for delivery. Implements `click::emit::EventSink`.
//!
//! For each event: does the workspace want it (channel URL set and enabled; `unique_clicks_only`
//! keeps only the first human hit of a broadcast recipient — links without a broadcast always
//! deliver)? If so, render the payload in the workspace's format under the event's id (derived from its
//! batch, so a replayed batch renders the same ids), and push the job to the queue. Store or queue errors
//! are retried for a few seconds, then `emit` fails: the pipeline keeps the batch unfinished (journaled)
//! and emits it again later. No event is dropped here.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::payload::{self, ConversionFacts, Facts};
use super::queue::{Pushed, Queue};
use super::settings_cache::SettingsCache;
use crate::backoff::Backoff;
use crate::click::emit::{EmitError, Event, EventSink};
use crate::model::Correction;
use crate::model::{EventKind, HitsCount, Job, RecipientFormat};
use crate::model::{Link, rfc3339_secs};
use crate::store::SharedStore;

pub struct Outbox {
    queue: Arc<dyn Queue>,
    /// The click hold window: events are due this long after their hit.
    hold: Duration,
    store: SharedStore,
    settings: Arc<SettingsCache>,
    base_url: String,
    /// Links by code, for the payload facts the click record does not carry.
    links: Mutex<HashMap<String, Arc<Link>>>,
}

impl Outbox {
    pub fn new(
        queue: Arc<dyn Queue>,
        store: SharedStore,
        settings: Arc<SettingsCache>,
        base_url: String,
        hold: Duration,
    ) -> Self {
        Self { queue, hold, store, settings, base_url, links: Mutex::new(HashMap::new()) }
    }

    fn cached_link(&self, code: &str) -> Option<Arc<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).get(code).cloned()
    }

    /// Loads, in one round trip, the links of `events` not cached yet.
    async fn prefetch_links(&self, events: &[Event]) {
        let mut missing: Vec<&str> =
            events.iter().filter_map(Event::code).filter(|code| self.cached_link(code).is_none()).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let Ok(found) = patiently(|| self.store.get_links(&missing)).await else { return };
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.len() + missing.len() > 100_000 {
            links.clear();
        }
        for link in found.into_iter().flatten() {
            links.insert(link.code.clone(), Arc::new(link));
        }
    }

    /// Turns one event into a job, or `None` when the workspace does not want it.
    async fn job(&self, event: &Event) -> Result<Option<Job>, String> {
        let subject = Subject::of(event);
        // The link decides the configuration (its sub-account) and the payload's facts: an event is never
        // rendered without it — a failed read fails the emit, and the batch is emitted again later.
        let link = match subject.code {
            None => None,
            Some(code) => match self.cached_link(code) {
                Some(link) => Some(link),
                None => patiently(|| self.store.get_link(code)).await.map_err(|e| e.to_string())?.map(Arc::new),
            },
        };
        let sub_account = link.as_ref().and_then(|l| l.sub_account_id.clone());
        let settings = patiently(|| self.settings.get_for(subject.workspace_id, sub_account.as_deref()))
            .await
            .map_err(|e| e.to_string())?;
        let Some(url) = settings.url_for(subject.kind).map(str::to_owned) else {
            return Ok(None);
        };
        if let Event::Click { click, tally, .. } = event
            && settings.unique_clicks_only
            && click.broadcast_id.is_some()
            && !tally.first_click
        {
            return Ok(None);
        }
        let event_id = event.id().to_owned();
        let occurred_at = rfc3339_secs(subject.at);
        let code = subject.code.unwrap_or_default();
        let short_url = if code.is_empty() { String::new() } else { format!("{}/{}", self.base_url, code) };
        let recipient = subject.recipient.map(|r| match settings.recipient_format {
            RecipientFormat::E164 => r.to_owned(),
            RecipientFormat::Digits => r.trim_start_matches('+').to_owned(),
        });
        let value =
            subject.conversion.and_then(|c| c.value).and_then(|v| rust_decimal::prelude::ToPrimitive::to_f64(&v));
        let l = link.as_deref();
        let facts = Facts {
            event_id: &event_id,
            occurred_at: &occurred_at,
            code,
            short_url: &short_url,
            target_url: l.and_then(|l| l.target_url.as_deref()),
            broadcast_id: subject.broadcast_id,
            recipient: recipient.as_deref(),
            message_id: subject.message_id.or_else(|| l.and_then(|l| l.message_id.as_deref())),
            sender: subject.sender.or_else(|| l.and_then(|l| l.sender.as_deref())),
            message_ref: l.and_then(|l| l.message_ref.as_deref()),
            user_agent: subject.user_agent,
            ip: subject.ip,
            hits: subject.tally.map_or(0, |t| match settings.hits {
                HitsCount::Human => t.human_hits,
                HitsCount::All => t.hits,
            }),
            first_click: subject.tally.is_some_and(|t| t.first_click),
            workspace_id: subject.workspace_id,
            source: subject.source,
            message_type: l.map_or("SMS", Link::message_type),
            message: l.and_then(|l| l.message.as_deref()),
            subject: l.and_then(|l| l.subject.as_deref()),
            content_urls: l.map_or(&[], |l| l.content_urls.as_slice()),
            conversion: subject.conversion.map(|c| ConversionFacts {
                name: &c.name,
                value,
                currency: &c.currency,
                click_id: c.click_id.as_deref(),
            }),
        };
        let fields = match subject.kind {
            EventKind::Conversion => settings.effective_conversion_fields(),
            _ => settings.effective_click_fields(),
        };
        let body = payload::render(settings.format, &fields, subject.kind, &facts);
        // Click and opt-out-link events wait for the click hold window (a verdict that flips meanwhile
        // withdraws them); an inbound opt-out or a conversion has no verdict to wait for.
        let held = matches!(event, Event::Click { .. } | Event::OptOut { .. }) && !self.hold.is_zero();
        Ok(Some(Job {
            event_id,
            workspace_id: subject.workspace_id.to_owned(),
            kind: subject.kind,
            payload: body.to_string(),
            attempt: 0,
            created_at: chrono::Utc::now(),
            sub_account_id: sub_account.filter(|_| settings.sub_account_id.is_some()),
            // Links without a broadcast (auto-shortened, public) are the ones a flood can target; every
            // link has a budget so a recipient tapping repeatedly is bounded too.
            code: subject.code.map(str::to_owned),
            url,
            due_at: held.then(|| subject.at + chrono::Duration::from_std(self.hold).unwrap_or_default()),
        }))
    }
}

/// The facts of an event, whatever its kind.
struct Subject<'a> {
    kind: EventKind,
    workspace_id: &'a str,
    code: Option<&'a str>,
    at: chrono::DateTime<chrono::Utc>,
    broadcast_id: Option<&'a str>,
    recipient: Option<&'a str>,
    message_id: Option<&'a str>,
    sender: Option<&'a str>,
    user_agent: Option<&'a str>,
    ip: Option<&'a str>,
    tally: Option<&'a crate::model::ClickTally>,
    source: &'a str,
    conversion: Option<&'a crate::model::Conversion>,
}

impl<'a> Subject<'a> {
    fn of(event: &'a Event) -> Self {
        let base = |kind, click: &'a crate::model::ClickRecord| Subject {
            kind,
            workspace_id: &click.workspace_id,
            code: Some(&click.code),
            at: click.at,
            broadcast_id: click.broadcast_id.as_deref(),
            recipient: click.recipient.as_deref(),
            message_id: None,
            sender: None,
            user_agent: click.user_agent.as_deref(),
            ip: click.ip.as_deref(),
            tally: None,
            source: crate::model::OPT_OUT_LINK,
            conversion: None,
        };
        match event {
            Event::Click { click, tally, .. } => Subject { tally: Some(tally), ..base(EventKind::Click, click) },
            Event::OptOut { click, .. } => base(EventKind::OptOut, click),
            Event::InboundOptOut { workspace_id, opt_out, code, .. } => Subject {
                kind: EventKind::OptOut,
                workspace_id,
                code: code.as_deref(),
                at: opt_out.at,
                broadcast_id: opt_out.broadcast_id.as_deref(),
                recipient: Some(&opt_out.recipient),
                message_id: opt_out.message_id.as_deref(),
                sender: opt_out.sender.as_deref(),
                user_agent: None,
                ip: None,
                tally: None,
                source: &opt_out.source,
                conversion: None,
            },
            Event::Conversion { conversion, .. } => Subject {
                kind: EventKind::Conversion,
                workspace_id: &conversion.workspace_id,
                code: Some(&conversion.code),
                at: conversion.at,
                broadcast_id: conversion.broadcast_id.as_deref(),
                recipient: conversion.recipient.as_deref(),
                message_id: None,
                sender: None,
                user_agent: None,
                ip: None,
                tally: None,
                source: "",
                conversion: Some(conversion),
            },
        }
    }
}

#[async_trait]
impl EventSink for Outbox {
    async fn emit(&self, events: Vec<Event>) -> Result<(), EmitError> {
        let mut jobs = Vec::with_capacity(events.len());
        self.prefetch_links(&events).await;
        let mut skipped = 0;
        for event in &events {
            match self.job(event).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => skipped += 1,
                Err(err) => {
                    // The batch stays unfinished and is tried again (from the journal): no event is
                    // dropped because a settings read failed.
                    return Err(EmitError(format!("webhook settings could not be read: {err}")));
                }
            }
        }
        if !jobs.is_empty() {
            let pushed = patiently(|| self.queue.push(&jobs))
                .await
                .map_err(|err| EmitError(format!("the webhook outbox is unreachable: {err}")))?;
            let mut dead: HashMap<(&str, &'static str), u64> = HashMap::new();
            for (job, outcome) in jobs.iter().zip(pushed) {
                let outcome = match outcome {
                    Pushed::Queued => "queued",
                    Pushed::Duplicate => "duplicate",
                    Pushed::DeadLettered(reason) => {
                        *dead.entry((job.workspace_id.as_str(), reason.as_str())).or_default() += 1;
                        metrics::counter!("linkhit_webhook_dead_letters_total", "reason" => reason.as_str())
                            .increment(1);
                        "dead_lettered"
                    }
                };
                metrics::counter!("linkhit_webhook_events_total", "type" => job.kind.as_str(), "outcome" => outcome)
                    .increment(1);
            }
            for ((workspace_id, reason), events) in dead {
                tracing::warn!(
                    workspace_id,
                    reason,
                    events,
                    "webhook events dead-lettered on arrival (replayable with POST /api/v1/webhooks/dead-letters/replay)"
                );
            }
        }
        if skipped > 0 {
            metrics::counter!("linkhit_webhook_events_total", "type" => "any", "outcome" => "skipped")
                .increment(skipped);
        }
        Ok(())
    }

    async fn withdraw(&self, corrections: &[Correction]) -> Result<usize, EmitError> {
        let mut by_workspace: HashMap<&str, Vec<(String, String)>> = HashMap::new();
        for c in corrections {
            let kind = match c.click.kind {
                crate::model::LinkKind::Redirect => EventKind::Click,
                crate::model::LinkKind::OptOut => EventKind::OptOut,
            };
            // A held event was queued in its sub-account's partition when the sub-account had a
            // configuration then, else in the workspace's: try both (a miss withdraws nothing).
            let jobs = by_workspace.entry(&*c.click.workspace_id).or_default();
            jobs.push((c.event_id.clone(), format!("{}/*", kind.as_str())));
            if let Some(sub) = self.cached_link(&c.click.code).and_then(|l| l.sub_account_id.clone()) {
                jobs.push((c.event_id.clone(), format!("{}/{sub}", kind.as_str())));
            }
        }
        let mut withdrawn = 0;
        for (ws, jobs) in by_workspace {
            withdrawn += patiently(|| self.queue.withdraw(ws, &jobs))
                .await
                .map_err(|err| EmitError(format!("the webhook outbox is unreachable: {err}")))?;
        }
        metrics::counter!("linkhit_webhook_events_total", "type" => "any", "outcome" => "withdrawn")
            .increment(withdrawn as u64);
        Ok(withdrawn)
    }
}

/// Retries a fallible operation for about three seconds.
async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    mut op: impl FnMut() -> F,
) -> Result<T, E> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    for _ in 0..5 {
        match op().await {
            Ok(v) => return Ok(v),
            Err(err) => {
                tracing::warn!(error = %err, "webhook outbox: retrying");
                backoff.wait().await;
            }
        }
    }
    op().await
}
