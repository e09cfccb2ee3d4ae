//! The Redis outbox: a Redis Stream read through a consumer group, a sorted set of delayed retries and
//! a dead-letter list (key layout in `queue/mod.rs`).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::Value;

use super::{Lease, Queue, QueueError, QueueStats};
use crate::model::Job;
use crate::redis_conn::{Pool, has_error_code};

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
        let open = || Pool::open(url, Duration::from_secs(2)).map_err(|e| QueueError::Unavailable(e.to_string()));
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
            Ok(Err(e)) if has_error_code(&e, "NOGROUP") => Err(QueueError::NoGroup),
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
            Err(e) if has_error_code(&e, "BUSYGROUP") => Ok(()),
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
            Err(QueueError::NoGroup) => {
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
