//! The webhook outbox: jobs waiting for delivery, leased by workers, rescheduled for retries.
//!
//! Two implementations of [`Queue`]:
//! - [`MemoryQueue`] (embedded store): an in-process queue. **Not durable**: jobs queued or waiting for a
//!   retry are lost when the process stops.
//! - [`RedisQueue`]: a Redis Stream read through a consumer group, plus a sorted set of delayed retries.
//!   A job is acknowledged (`XACK` + `XDEL`) only after the receiver answered 2xx, the job was moved to
//!   the retry set (in the same `MULTI`), or it was dead-lettered; entries a crashed worker held are
//!   reclaimed with `XAUTOCLAIM` once idle for `claim_idle`. Killing linkhit at any moment loses no
//!   accepted job (at least once; the receiver deduplicates by `webhook-id`).
//!
//! Architecture Invariant: only this module knows the Redis key layout of the outbox:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:wh:{q}:stream` | stream | ready jobs, field `job` = JSON; consumer group `linkhit` |
//! | `P:wh:{q}:retry` | sorted set | delayed jobs (JSON) scored by due time, unix ms |
//! | `P:wh:{q}:dead` | list | dead-lettered jobs (JSON), newest first, capped at 10,000 |
//!
//! All three share the hash tag `{q}`, so the `MULTI`s and the promotion script stay in one cluster slot.

mod memory;
mod redis;

pub use memory::MemoryQueue;
pub use redis::RedisQueue;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::Job;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("outbox unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt outbox entry: {0}")]
    Corrupt(String),
    /// The stream's consumer group is gone (the stream was deleted, or Redis restarted empty).
    #[error("the outbox consumer group does not exist")]
    NoGroup,
}

/// A job handed to one worker until it acknowledges or reschedules it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: Job,
    /// Stream entry id (Redis) or empty (memory).
    pub(super) receipt: String,
}

/// Depth figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    pub ready: u64,
    pub scheduled: u64,
    /// Seconds since the oldest ready job was queued.
    pub oldest_age_secs: f64,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Accepts jobs. Once this returns `Ok`, the jobs are as durable as the queue.
    async fn push(&self, jobs: &[Job]) -> Result<(), QueueError>;
    /// Leases up to `max` ready jobs, waiting up to about a second when there are none.
    async fn pull(&self, max: usize) -> Result<Vec<Lease>, QueueError>;
    /// The job is done (delivered or dead-lettered): forget it.
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError>;
    /// Replaces the leased job by `job` (its next attempt), due at `due`.
    async fn retry(&self, lease: &Lease, job: &Job, due: DateTime<Utc>) -> Result<(), QueueError>;
    /// Keeps a dead-lettered job for inspection and acknowledges it.
    async fn dead_letter(&self, lease: &Lease) -> Result<(), QueueError>;
    /// Moves due retries to the ready queue; returns how many.
    async fn promote(&self) -> Result<usize, QueueError>;
    /// Leases jobs that a crashed worker held for too long.
    async fn reclaim(&self, max: usize) -> Result<Vec<Lease>, QueueError>;
    async fn stats(&self) -> Result<QueueStats, QueueError>;
}
