//! The click pipeline: everything that happens to a hit after the redirect answered.
//!
//! `redirect::capture` (on the hot path: a non-blocking `try_send` of a small struct) → `pipeline` (a
//! task that drains the channel in batches) → `classify` (human or bot, with a reason) → count/dedup
//! (the store's idempotent `record_batch`, by a second task) → `emit` (human clicks and opt-outs handed
//! to the webhook outbox). From the first failed or slow commit until the store answers again, batches
//! go to the `journal` on disk, replayed exactly once after recovery and at start-up.

pub mod address;
pub mod classify;
pub mod emit;
pub mod journal;
pub mod network;
pub mod pipeline;
pub mod sweep;
pub mod verdict;
