//! The click pipeline: everything that happens to a hit after the redirect answered.
//!
//! `capture` (on the hot path: a non-blocking `try_send` of a small struct) → `pipeline` (a task that
//! drains the channel in batches) → `classify` (human or bot, with a reason) → count/dedup (the store's
//! `record_clicks`, committed by a second task with retries) → `emit` (human clicks and opt-outs handed to
//! the webhook outbox). When the store is unreachable, batches wait in a bounded queue, then spill to the
//! `journal` on disk, replayed after recovery and at start-up.

pub mod address;
pub mod classify;
pub mod emit;
pub mod journal;
pub mod pipeline;
