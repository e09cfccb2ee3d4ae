//! The records every layer shares: links and workspaces ([`link`]), classified hits and what counting
//! them told ([`click`]), webhook events, jobs, delivery logs and the stored settings ([`webhook`]).
//!
//! Plain data with serde derives and small pure helpers; the stores persist these records, the stages
//! hand them to each other, the API renders them. Nothing here does I/O.
//!
//! Architecture Invariant: `model` imports nothing else of the crate; every other module may import it.

pub mod click;
pub mod link;
pub mod webhook;

pub use click::*;
pub use link::*;
pub use webhook::*;

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, as RFC 3339 UTC with milliseconds (`2026-11-29T12:00:00.000Z`), the format of every timestamp
/// linkhit writes.
pub fn now_rfc3339() -> String {
    rfc3339(Utc::now())
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// RFC 3339 UTC in whole seconds (`2026-11-29T12:00:00Z`), the format of webhook payloads (the vendors'
/// samples, and the parsers written against them, have no fractions).
pub fn rfc3339_secs(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}
