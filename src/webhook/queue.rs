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

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::redis_conn::Pool;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::Value;
use tokio::sync::Notify;

use super::Job;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("outbox unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt outbox entry: {0}")]
    Corrupt(String),
}

/// A job handed to one worker until it acknowledges or reschedules it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: Job,
    /// Stream entry id (Redis) or empty (memory).
    receipt: String,
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

const GROUP: &str = "linkhit";

/// Moves due retries into the stream. KEYS: retry set, stream. ARGV: now (ms), max.
const PROMOTE_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', job)
  redis.call('ZREM', KEYS[1], job)
end
return #due
";

/// The Redis Stream outbox.
pub struct RedisQueue {
    conn: Pool,
    /// A second connection for the blocking `XREADGROUP`, so it never holds up other commands.
    blocking: Pool,
    stream: String,
    retry: String,
    dead: String,
    consumer: String,
    claim_idle: Duration,
    claim_cursor: tokio::sync::Mutex<String>,
}

impl RedisQueue {
    /// Connects (lazily) and names this process's consumer. Must be called inside a Tokio runtime.
    pub fn open(url: &str, prefix: &str, consumer: &str, claim_idle: Duration) -> Result<Self, QueueError> {
        let open = || Pool::open(url, Duration::from_secs(2)).map_err(QueueError::Unavailable);
        Ok(Self {
            conn: open()?,
            blocking: open()?,
            stream: format!("{prefix}:wh:{{q}}:stream"),
            retry: format!("{prefix}:wh:{{q}}:retry"),
            dead: format!("{prefix}:wh:{{q}}:dead"),
            consumer: consumer.to_owned(),
            claim_idle,
            claim_cursor: tokio::sync::Mutex::new("0-0".to_owned()),
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        pool: &Pool,
        deadline: Duration,
        pipe: redis::Pipeline,
    ) -> Result<T, QueueError> {
        let work = async {
            let mut conn = pool.get().await?;
            pipe.query_async(&mut conn).await
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(QueueError::Unavailable(e.to_string())),
            Err(_) => Err(QueueError::Unavailable("outbox command timed out".into())),
        }
    }

    /// Appends what ends a lease: acknowledge the entry and delete it from the stream.
    fn release(&self, pipe: &mut redis::Pipeline, lease: &Lease) {
        pipe.cmd("XACK").arg(&self.stream).arg(GROUP).arg(&lease.receipt).ignore();
        pipe.cmd("XDEL").arg(&self.stream).arg(&lease.receipt).ignore();
    }

    /// Creates the consumer group (and the stream) if needed. Idempotent.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await.map_err(|e| QueueError::Unavailable(e.to_string()))?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(QueueError::Unavailable(e.to_string())),
        }
    }

    fn leases(entries: &Value) -> Result<Vec<Lease>, QueueError> {
        let Value::Array(entries) = entries else {
            return Ok(Vec::new());
        };
        let mut leases = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let (Some(id), Some(Value::Array(fields))) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let id: String = redis::from_redis_value(id.clone()).map_err(|e| QueueError::Corrupt(e.to_string()))?;
            let mut job = None;
            for pair in fields.chunks(2) {
                if let [k, v] = pair
                    && redis::from_redis_value::<String>(k.clone()).is_ok_and(|k| k == "job")
                {
                    let raw: Vec<u8> =
                        redis::from_redis_value(v.clone()).map_err(|e| QueueError::Corrupt(e.to_string()))?;
                    job = serde_json::from_slice::<Job>(&raw).ok();
                }
            }
            match job {
                Some(job) => leases.push(Lease { job, receipt: id }),
                None => tracing::error!(entry = %id, "skipping an unreadable outbox entry"),
            }
        }
        Ok(leases)
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn push(&self, jobs: &[Job]) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for job in jobs {
            let json = serde_json::to_vec(job).map_err(|e| QueueError::Corrupt(e.to_string()))?;
            pipe.cmd("XADD").arg(&self.stream).arg("*").arg("job").arg(json).ignore();
        }
        self.run::<()>(&self.conn, Duration::from_secs(5), pipe).await
    }

    async fn pull(&self, max: usize) -> Result<Vec<Lease>, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max.max(1))
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">");
        let reply: Vec<Value> = match self.run(&self.blocking, Duration::from_secs(5), pipe).await {
            Ok(v) => v,
            Err(QueueError::Unavailable(e)) if e.contains("NOGROUP") => {
                // The stream was deleted (or Redis restarted empty): recreate the group.
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        // Reply: [ [stream, [entries…]] ] or [nil] on timeout.
        let Some(Value::Array(streams)) = reply.into_iter().next() else {
            return Ok(Vec::new());
        };
        let mut leases = Vec::new();
        for stream in streams {
            if let Value::Array(parts) = stream
                && let Some(entries) = parts.get(1)
            {
                leases.extend(Self::leases(entries)?);
            }
        }
        Ok(leases)
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.release(&mut pipe, lease);
        self.run::<()>(&self.conn, Duration::from_secs(5), pipe).await
    }

    async fn retry(&self, lease: &Lease, job: &Job, due: DateTime<Utc>) -> Result<(), QueueError> {
        let json = serde_json::to_vec(job).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("ZADD").arg(&self.retry).arg(due.timestamp_millis()).arg(json).ignore();
        self.release(&mut pipe, lease);
        self.run::<()>(&self.conn, Duration::from_secs(5), pipe).await
    }

    async fn dead_letter(&self, lease: &Lease) -> Result<(), QueueError> {
        let json = serde_json::to_vec(&lease.job).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("LPUSH")
            .arg(&self.dead)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(&self.dead)
            .arg(0)
            .arg(9_999)
            .ignore();
        self.release(&mut pipe, lease);
        self.run::<()>(&self.conn, Duration::from_secs(5), pipe).await
    }

    async fn promote(&self) -> Result<usize, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(PROMOTE_SCRIPT)
            .arg(2)
            .arg(&self.retry)
            .arg(&self.stream)
            .arg(Utc::now().timestamp_millis())
            .arg(500);
        let (n,): (usize,) = self.run(&self.conn, Duration::from_secs(5), pipe).await?;
        Ok(n)
    }

    async fn reclaim(&self, max: usize) -> Result<Vec<Lease>, QueueError> {
        let mut cursor = self.claim_cursor.lock().await;
        let mut pipe = redis::pipe();
        pipe.cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(max.max(1));
        let (reply,): (Value,) = self.run(&self.conn, Duration::from_secs(5), pipe).await?;
        // Reply: [next-cursor, [entries…], [deleted ids…]].
        let Value::Array(parts) = reply else {
            return Ok(Vec::new());
        };
        if let Some(next) = parts.first() {
            *cursor = redis::from_redis_value(next.clone()).unwrap_or_else(|_| "0-0".to_owned());
        }
        match parts.get(1) {
            Some(entries) => Self::leases(entries),
            None => Ok(Vec::new()),
        }
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&self.stream)
            .cmd("ZCARD")
            .arg(&self.retry)
            .cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let (ready, scheduled, first): (u64, u64, Value) = self.run(&self.conn, Duration::from_secs(5), pipe).await?;
        let oldest_age_secs = Self::leases(&first)
            .ok()
            .and_then(|l| l.into_iter().next())
            .and_then(|l| l.receipt.split('-').next().and_then(|ms| ms.parse::<i64>().ok()))
            .map_or(0.0, |ms| ((Utc::now().timestamp_millis() - ms) as f64 / 1000.0).max(0.0));
        Ok(QueueStats { ready, scheduled, oldest_age_secs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        Job {
            event_id: id.into(),
            workspace_id: "ws".into(),
            kind: super::super::EventKind::Click,
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
