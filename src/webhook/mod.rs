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
pub mod settings_cache;
pub mod sign;
pub mod ssrf;
pub mod worker;
