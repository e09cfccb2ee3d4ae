//! The webhook outbox: events waiting for delivery, partitioned so that one receiver's trouble delays
//! only its own events, bounded so that no flood can exhaust memory.
//!
//! - **Partitions.** Each workspace has one queue per channel and sub-account (`Job::partition`, e.g.
//!   `click/*`), ordered by due time. Workers find due partitions through an index and take a few jobs
//!   from each, so a partition whose receiver hangs holds only its own jobs (and its endpoint's slots)
//!   while every other partition keeps flowing. On Redis every key of a workspace shares its hash tag
//!   and the index is spread over 16 shards, so delivery spreads over a cluster's slots.
//! - **Due times.** A job is delivered no earlier than `Job::due_at` (the click hold window); a taken job
//!   is leased by pushing its due time past the lease, so a worker that dies leaves it due again
//!   (at least once; receivers deduplicate by `webhook-id`).
//! - **Bounds** ([`Limits`]): a per-link event budget (a burst, then a rate per minute) and a
//!   per-workspace backlog cap; events past them are dead-lettered (`link_budget`, `backlog_full`),
//!   never dropped silently. The dead-letter list of each workspace is capped too: the oldest are evicted
//!   (`linkhit_webhook_dead_letters_evicted_total`).
//! - **Dead letters** can be listed and replayed with their original event ids.
//! - An event pushed twice (a batch replayed after a crash renders the same event ids) is queued once
//!   while the first is still queued.
//!
//! Two implementations: [`MemoryQueue`] (embedded store; not durable) and [`RedisQueue`].
//!
//! Architecture Invariant: only this module knows the Redis key layout of the outbox:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:wh:{WS}:jobs` | hash | event id → job JSON, every queued (or leased) job of the workspace |
//! | `P:wh:{WS}:due:PART` | sorted set | event ids of partition `PART`, scored by due time (unix ms); a leased job's score is its lease expiry |
//! | `P:wh:{WS}:dead` | list | dead letters as JSON, newest first, capped |
//! | `P:wh:{WS}:budget:CODE` | string | `tokens:unix ms` of the link's event budget, expiring once full again |
//! | `P:wh:idx:{idx-N}` | sorted set | `WS<TAB>PART` of partitions with jobs, scored by (about) their next due time; N = 0..15 by workspace |

mod memory;
mod redis;
mod scripts;

pub use memory::MemoryQueue;
pub use redis::RedisQueue;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{DeadLetter, DeadReason, Job};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("outbox unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt outbox entry: {0}")]
    Corrupt(String),
}

/// The outbox's bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Events of one link accepted at once before the rate applies (0: no per-link budget).
    pub link_burst: u32,
    /// Events of one link accepted per minute after the burst.
    pub link_per_minute: u32,
    /// Events a workspace may have queued (all partitions).
    pub max_backlog: usize,
    /// Dead letters kept per workspace.
    pub dead_letters: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { link_burst: 20, link_per_minute: 60, max_backlog: 50_000, dead_letters: 10_000 }
    }
}

/// What became of a pushed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The same event id is already queued.
    Duplicate,
    DeadLettered(DeadReason),
}

/// One partition of one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Partition {
    pub workspace_id: String,
    pub name: String,
}

impl Partition {
    pub fn of(job: &Job) -> Self {
        Self { workspace_id: job.workspace_id.clone(), name: job.partition() }
    }

    /// The channel of the partition (its name starts with the event kind).
    pub fn kind(&self) -> Option<crate::model::EventKind> {
        use crate::model::EventKind;
        [EventKind::Click, EventKind::OptOut, EventKind::Conversion]
            .into_iter()
            .find(|k| self.name.split('/').next() == Some(k.as_str()))
    }

    /// The sub-account of the partition (`None`: the workspace-wide configuration).
    pub fn sub_account(&self) -> Option<&str> {
        self.name.split_once('/').map(|(_, s)| s).filter(|s| *s != "*")
    }
}

/// A job handed to one worker until it acknowledges, reschedules or dead-letters it (or the lease
/// runs out and it is due again).
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: Job,
    pub partition: Partition,
}

/// Depth figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    /// Partitions with a job due now.
    pub due_partitions: u64,
    /// Seconds the most overdue partition has been due.
    pub oldest_due_secs: f64,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Accepts jobs (of any workspaces) within the limits; one outcome per job, in order. Once this
    /// returns `Ok`, queued jobs are as durable as the queue.
    async fn push(&self, jobs: &[Job]) -> Result<Vec<Pushed>, QueueError>;
    /// Removes queued jobs that are no longer wanted (a verdict that flipped during the hold window);
    /// returns how many were still queued. A job already taken is not withdrawn.
    async fn withdraw(&self, workspace_id: &str, jobs: &[(String, String)]) -> Result<usize, QueueError>;
    /// Partitions that have a job due now, up to `max`, most overdue first.
    async fn due(&self, max: usize) -> Result<Vec<Partition>, QueueError>;
    /// Leases up to `max` due jobs of a partition for `lease`.
    async fn take(&self, partition: &Partition, max: usize, lease: Duration) -> Result<Vec<Lease>, QueueError>;
    /// The job is done (delivered or cancelled): forget it.
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError>;
    /// Replaces the leased job by `job` (its next attempt), due at `due`.
    async fn retry(&self, lease: &Lease, job: &Job, due: DateTime<Utc>) -> Result<(), QueueError>;
    /// Moves the leased job to the dead letters. Returns how many old dead letters the cap evicted.
    async fn dead_letter(&self, lease: &Lease, reason: DeadReason) -> Result<u64, QueueError>;
    /// A workspace's dead letters, newest first.
    async fn dead_letters(&self, workspace_id: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// Queues a workspace's dead letters (those dead-lettered at or after `since`) again, with their
    /// original event ids and a fresh attempt count; they leave the list. Returns how many.
    /// `sub_account_id`: only that sub-account's dead letters (`None`: all of the workspace's).
    async fn replay_dead_letters(
        &self,
        workspace_id: &str,
        since: Option<DateTime<Utc>>,
        sub_account_id: Option<&str>,
    ) -> Result<usize, QueueError>;
    /// Events a workspace has queued (all partitions, leased ones included): at most the backlog cap.
    async fn backlog(&self, workspace_id: &str) -> Result<usize, QueueError>;
    async fn stats(&self) -> Result<QueueStats, QueueError>;
    /// Waits until something may have become due, at most `max`.
    async fn wait(&self, max: Duration);
}

/// Counts dead letters the per-workspace cap evicted.
pub(crate) fn count_evicted(n: u64) {
    if n > 0 {
        metrics::counter!("linkhit_webhook_dead_letters_evicted_total").increment(n);
    }
}

/// A per-link token bucket: `tokens` left at `at_ms`. Pure; the Redis script implements the same rule.
pub fn spend_budget(state: Option<(f64, i64)>, now_ms: i64, limits: &Limits) -> (bool, (f64, i64)) {
    let burst = f64::from(limits.link_burst);
    let (tokens, at) = state.unwrap_or((burst, now_ms));
    let refilled = (tokens + (now_ms - at).max(0) as f64 * f64::from(limits.link_per_minute) / 60_000.0).min(burst);
    if refilled >= 1.0 { (true, (refilled - 1.0, now_ms)) } else { (false, (refilled, now_ms)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_budget_is_a_burst_then_a_rate() {
        let limits = Limits { link_burst: 3, link_per_minute: 60, ..Limits::default() };
        let mut state = None;
        let mut taken = Vec::new();
        // Five events at once, then one 500 ms later, one a second after that.
        for now in [0, 0, 0, 0, 0, 500, 1500] {
            let (ok, next) = spend_budget(state, now, &limits);
            taken.push(ok);
            state = Some(next);
        }
        assert_eq!(taken, [true, true, true, false, false, false, true], "three quick taps are three events");
    }
}
