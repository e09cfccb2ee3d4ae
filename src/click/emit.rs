//! Stage 6: hand counted human clicks and opt-outs to whoever delivers them (the webhook outbox).
//!
//! Bot hits never reach this stage.

use std::sync::Mutex;

use crate::model::{ClickRecord, ClickTally};

/// An event worth telling the customer about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A human hit on a redirect link.
    Click { click: ClickRecord, tally: ClickTally },
    /// A human opted out through an opt-out link.
    OptOut { click: ClickRecord },
}

/// Receives events after they were counted. The committer awaits `emit`, so a slow sink slows
/// counting (and capture spills to the journal) rather than losing events.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn emit(&self, events: Vec<Event>);
}

/// Drops events (capture without webhooks, benchmarks).
pub struct Discard;

#[async_trait::async_trait]
impl EventSink for Discard {
    async fn emit(&self, _events: Vec<Event>) {}
}

/// Keeps events in memory; for tests.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<Event>>);

#[async_trait::async_trait]
impl EventSink for Collect {
    async fn emit(&self, events: Vec<Event>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(events);
    }
}

/// Turns a counted batch into events: human clicks on redirect links, and new opt-outs.
pub fn events(clicks: &[ClickRecord], tallies: &[ClickTally]) -> Vec<Event> {
    clicks
        .iter()
        .zip(tallies)
        .filter(|(click, _)| click.is_human())
        .filter_map(|(click, tally)| match click.kind {
            crate::model::LinkKind::Redirect => Some(Event::Click { click: click.clone(), tally: *tally }),
            crate::model::LinkKind::OptOut if tally.opted_out => Some(Event::OptOut { click: click.clone() }),
            crate::model::LinkKind::OptOut => None,
        })
        .collect()
}
