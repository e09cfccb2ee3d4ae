//! Stage 6: hand counted human clicks and opt-outs to whoever delivers them (the webhook outbox).
//!
//! Bot hits never reach this stage. Event ids are derived from the batch id and the hit's place in it,
//! so a batch counted again after a crash (the store answers what it answered the first time) yields
//! the same events with the same ids, and a receiver deduplicating by `webhook-id` sees each once.

use std::sync::Mutex;

use crate::model::{Batch, ClickRecord, ClickTally, Conversion, Correction, LinkKind, OptOut};

/// An event worth telling the customer about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A human hit on a redirect link.
    Click { id: String, click: ClickRecord, tally: ClickTally },
    /// A human opted out through an opt-out link.
    OptOut { id: String, click: ClickRecord },
    /// A recipient opted out by SMS (an inbound STOP the platform passed on); `code`: the link of the
    /// message it answered, when known (for the message facts of the payload).
    InboundOptOut { id: String, workspace_id: String, opt_out: OptOut, code: Option<String> },
    /// A conversion attributed to a link (and, through `/track`, to a click).
    Conversion { id: String, conversion: Conversion },
}

impl Event {
    pub fn id(&self) -> &str {
        match self {
            Event::Click { id, .. }
            | Event::OptOut { id, .. }
            | Event::InboundOptOut { id, .. }
            | Event::Conversion { id, .. } => id,
        }
    }

    /// The link the event is about, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Event::Click { click, .. } | Event::OptOut { click, .. } => Some(&click.code),
            Event::InboundOptOut { code, .. } => code.as_deref(),
            Event::Conversion { conversion, .. } => Some(&conversion.code),
        }
    }
}

/// The sink could not take the events; the pipeline keeps the batch (journal) and tries again later.
#[derive(Debug, thiserror::Error)]
#[error("events not accepted: {0}")]
pub struct EmitError(pub String);

/// Receives events after they were counted. The committer awaits `emit`: a batch is finished only when
/// its events are accepted (durably, for the Redis outbox).
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn emit(&self, events: Vec<Event>) -> Result<(), EmitError>;

    /// Withdraws the events of hits whose verdict flipped to bot during the hold window (their events
    /// wait in the outbox until the hold ends). Returns how many were still held; an event already
    /// delivered cannot be withdrawn.
    async fn withdraw(&self, corrections: &[Correction]) -> Result<usize, EmitError> {
        let _ = corrections;
        Ok(0)
    }
}

/// Drops events (capture without webhooks, benchmarks).
pub struct Discard;

#[async_trait::async_trait]
impl EventSink for Discard {
    async fn emit(&self, _events: Vec<Event>) -> Result<(), EmitError> {
        Ok(())
    }
}

/// Keeps events in memory; for tests.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<Event>>);

#[async_trait::async_trait]
impl EventSink for Collect {
    async fn emit(&self, events: Vec<Event>) -> Result<(), EmitError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(events);
        Ok(())
    }

    async fn withdraw(&self, corrections: &[Correction]) -> Result<usize, EmitError> {
        let mut events = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let before = events.len();
        events.retain(|e| !corrections.iter().any(|c| c.event_id == e.id()));
        Ok(before - events.len())
    }
}

/// The namespace of event ids (UUID v5 of `<batch id>/<index>`).
const EVENT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c69_6e6b_6869_7400_8000_0000_0000_0001);

/// The id of the event of hit `index` of batch `batch_id`: the same on every replay of the batch.
pub fn event_id(batch_id: &str, index: usize) -> String {
    uuid::Uuid::new_v5(&EVENT_NAMESPACE, format!("{batch_id}/{index}").as_bytes()).to_string()
}

/// Turns a counted batch into events: human clicks on redirect links, and new opt-outs.
pub fn events(batch: &Batch, tallies: &[ClickTally]) -> Vec<Event> {
    batch
        .clicks
        .iter()
        .zip(tallies)
        .enumerate()
        .filter(|(_, (click, _))| click.is_human())
        .filter_map(|(i, (click, tally))| {
            let id = event_id(&batch.id, i);
            match click.kind {
                LinkKind::Redirect => Some(Event::Click { id, click: click.clone(), tally: *tally }),
                LinkKind::OptOut if tally.opted_out => Some(Event::OptOut { id, click: click.clone() }),
                LinkKind::OptOut => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_per_batch_and_position() {
        assert_eq!(event_id("run-1", 0), event_id("run-1", 0));
        assert_ne!(event_id("run-1", 0), event_id("run-1", 1));
        assert_ne!(event_id("run-1", 0), event_id("run-2", 0));
        assert_eq!(uuid::Uuid::parse_str(&event_id("run-1", 0)).unwrap().get_version_num(), 5);
    }
}
