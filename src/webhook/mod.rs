//! Webhooks: click and opt-out events delivered to each workspace's receiver, signed, retried, logged.
//!
//! The journey continues from `click::emit`: [`outbox::Outbox`] (an `EventSink`) turns counted events
//! into [`Job`]s — deciding whether the workspace wants them and rendering the payload in its
//! [`settings::Format`] — and pushes them to the [`queue`]; [`worker`] pulls jobs, delivers them with
//! [`deliver`] (SSRF-guarded HTTP, Standard Webhooks signature, static or OAuth authorization),
//! schedules retries on the configured schedule and dead-letters after the last one. Every attempt is
//! logged in the store.

pub mod deliver;
pub mod outbox;
pub mod payload;
pub mod queue;
pub mod settings;
pub mod sign;
pub mod ssrf;
pub mod worker;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Click,
    OptOut,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Click => "click",
            EventKind::OptOut => "opt_out",
        }
    }
}

/// One event to deliver. The payload is rendered once, when the event is accepted, so every attempt
/// sends (and signs) the same bytes; `event_id` is the idempotency key and never changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub event_id: String,
    pub workspace_id: String,
    pub kind: EventKind,
    pub payload: String,
    /// Attempts already made.
    #[serde(default)]
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
}

/// One delivery attempt (or a decision not to attempt), as `GET /api/v1/webhooks/logs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryLog {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub url: String,
    pub attempt: u32,
    /// The JSON sent, as text.
    pub payload: String,
    pub response_code: Option<u16>,
    pub response_time_ms: u64,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    /// `delivered`, `retry_scheduled`, `dead_lettered`, `cancelled` or `test`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}
