//! The click pipeline: everything that happens to a hit after the redirect answered.
//!
//! `capture` (on the hot path: a non-blocking `try_send` of a small struct) → `pipeline` (a task that
//! drains the channel in batches) → `classify` (human or bot, with a reason) → count/dedup (the store's
//! `record_clicks`, committed by a second task with retries) → `emit` (human clicks and opt-outs handed to
//! the webhook outbox). When the store is unreachable, batches wait in a bounded queue, then spill to the
//! `journal` on disk, replayed after recovery and at start-up.

pub mod capture;
pub mod classify;
pub mod emit;
pub mod journal;
pub mod pipeline;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::LinkKind;
pub use classify::Class;

/// One classified hit: what the store counts, the journal spills and `GET …/clicks` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickRecord {
    pub code: String,
    pub workspace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default)]
    pub kind: LinkKind,
    pub at: DateTime<Utc>,
    pub class: Class,
    pub reason: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Anonymised unless the operator keeps full addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

impl ClickRecord {
    pub fn is_human(&self) -> bool {
        self.class == Class::Human
    }
}

/// What counting one click told us, for the webhook payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClickTally {
    /// The link's human hits including this click (for a bot hit: the human hits so far).
    pub human_hits: u64,
    /// First human hit of its (broadcast, recipient); for links without both, of the link.
    pub first_click: bool,
    /// This click recorded a new opt-out.
    pub opted_out: bool,
}
