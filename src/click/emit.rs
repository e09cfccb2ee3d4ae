//! Stage 6: hand counted human clicks and opt-outs to whoever delivers them (the webhook outbox).
//!
//! The hand-off is synchronous and must not block: implementations queue and return. Bot hits never
//! reach this stage.

use std::sync::Mutex;

use super::{ClickRecord, ClickTally};

/// An event worth telling the customer about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A human hit on a redirect link.
    Click {
        click: ClickRecord,
        tally: ClickTally,
    },
    /// A human opted out through an opt-out link.
    OptOut { click: ClickRecord },
}

/// Receives events after they were counted.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, events: Vec<Event>);
}

/// Drops events: the sink until webhooks are configured.
pub struct Discard;

impl EventSink for Discard {
    fn emit(&self, _events: Vec<Event>) {}
}

/// Keeps events in memory; for tests and the `fields` preview.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<Event>>);

impl EventSink for Collect {
    fn emit(&self, events: Vec<Event>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(events);
    }
}

/// Turns a counted batch into events: human clicks on redirect links, and new opt-outs.
pub fn events(clicks: &[ClickRecord], tallies: &[ClickTally]) -> Vec<Event> {
    clicks
        .iter()
        .zip(tallies)
        .filter(|(click, _)| click.is_human())
        .filter_map(|(click, tally)| match click.kind {
            crate::model::LinkKind::Redirect => Some(Event::Click {
                click: click.clone(),
                tally: *tally,
            }),
            crate::model::LinkKind::OptOut if tally.opted_out => Some(Event::OptOut {
                click: click.clone(),
            }),
            crate::model::LinkKind::OptOut => None,
        })
        .collect()
}
