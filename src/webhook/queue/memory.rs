//! The embedded store's outbox: an in-process queue. **Not durable**: jobs queued or waiting for a retry
//! are lost when the process stops.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{Lease, Queue, QueueError, QueueStats};
use crate::model::Job;

/// In-process queue for the embedded store.
#[derive(Default)]
pub struct MemoryQueue {
    state: Mutex<MemoryState>,
    ready: Notify,
}

#[derive(Default)]
struct MemoryState {
    ready: VecDeque<Job>,
    scheduled: BTreeMap<(i64, u64), Job>,
    dead: VecDeque<Job>,
    seq: u64,
}

impl MemoryQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn push(&self, jobs: &[Job]) -> Result<(), QueueError> {
        self.lock().ready.extend(jobs.iter().cloned());
        self.ready.notify_one();
        Ok(())
    }

    async fn pull(&self, max: usize) -> Result<Vec<Lease>, QueueError> {
        for _ in 0..2 {
            {
                let mut state = self.lock();
                if !state.ready.is_empty() {
                    let n = max.min(state.ready.len());
                    return Ok(state.ready.drain(..n).map(|job| Lease { job, receipt: String::new() }).collect());
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), self.ready.notified()).await;
        }
        Ok(Vec::new())
    }

    async fn ack(&self, _lease: &Lease) -> Result<(), QueueError> {
        Ok(())
    }

    async fn retry(&self, _lease: &Lease, job: &Job, due: DateTime<Utc>) -> Result<(), QueueError> {
        let mut state = self.lock();
        state.seq += 1;
        let key = (due.timestamp_millis(), state.seq);
        state.scheduled.insert(key, job.clone());
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease) -> Result<(), QueueError> {
        let mut state = self.lock();
        state.dead.push_front(lease.job.clone());
        state.dead.truncate(10_000);
        Ok(())
    }

    async fn promote(&self) -> Result<usize, QueueError> {
        let now = Utc::now().timestamp_millis();
        let mut state = self.lock();
        let later = state.scheduled.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut state.scheduled, later);
        let n = due.len();
        state.ready.extend(due.into_values());
        drop(state);
        if n > 0 {
            self.ready.notify_one();
        }
        Ok(n)
    }

    async fn reclaim(&self, _max: usize) -> Result<Vec<Lease>, QueueError> {
        Ok(Vec::new())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let state = self.lock();
        let oldest = state.ready.front().map_or(0.0, |j| (Utc::now() - j.created_at).as_seconds_f64().max(0.0));
        Ok(QueueStats {
            ready: state.ready.len() as u64,
            scheduled: state.scheduled.len() as u64,
            oldest_age_secs: oldest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        Job {
            event_id: id.into(),
            workspace_id: "ws".into(),
            kind: crate::model::EventKind::Click,
            payload: "{}".into(),
            attempt: 0,
            created_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn memory_queue_retries_come_back_when_due() {
        let q = MemoryQueue::default();
        q.push(&[job("a"), job("b")]).await.unwrap();
        let leases = q.pull(10).await.unwrap();
        assert_eq!(leases.len(), 2);
        let mut next = leases[0].job.clone();
        next.attempt = 1;
        q.retry(&leases[0], &next, Utc::now() + chrono::Duration::milliseconds(50)).await.unwrap();
        assert_eq!(q.promote().await.unwrap(), 0, "not due yet");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(q.promote().await.unwrap(), 1);
        let again = q.pull(10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].job.event_id.as_str(), again[0].job.attempt), ("a", 1));
        assert_eq!(q.stats().await.unwrap().ready, 0);
    }
}
