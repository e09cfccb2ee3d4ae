//! The Redis outbox (key layout in `queue/mod.rs`): per-workspace hashes of jobs and per-partition sorted
//! sets of due times, written by Lua scripts inside one workspace's hash tag, and an index of due
//! partitions in 16 shards (their own hash tags) that workers poll.
//!
//! Index rule, so that no queued job is ever orphaned: a push writes its jobs *before* it lowers the
//! index score (`ZADD LT`); a worker that found a partition empty removes the index entry *before*
//! checking the partition once more and re-adding it if a job arrived meanwhile. A worker never raises
//! a score further than one second ahead, so a push racing with it waits at most that long.

use std::collections::HashMap;
use std::hash::Hasher;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::Value;

use super::scripts::{
    PUSH_SCRIPT, PUSH_SHA, REQUEUE_SCRIPT, REQUEUE_SHA, TAKE_SCRIPT, TAKE_SHA, WITHDRAW_SCRIPT, WITHDRAW_SHA,
};
use super::{Lease, Limits, Partition, Pushed, Queue, QueueError, QueueStats};
use crate::model::{DeadLetter, DeadReason, Job};
use crate::redis_conn::{Pool, hash_tag};

/// Index shards: partitions spread over this many sorted sets (and so over cluster slots).
const SHARDS: u64 = 16;
/// How often an idle worker polls the index.
const POLL: Duration = Duration::from_millis(50);
/// Deadline of one outbox command.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The Redis outbox.
pub struct RedisQueue {
    pool: Pool,
    prefix: String,
    limits: Limits,
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> QueueError {
    QueueError::Corrupt(e.to_string())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl RedisQueue {
    /// Connects lazily. Must be called inside a Tokio runtime.
    pub fn open(url: &str, prefix: &str, limits: Limits) -> Result<Self, QueueError> {
        let pool = Pool::open(url, Duration::from_secs(2)).map_err(unavailable)?;
        Ok(Self { pool, prefix: prefix.to_owned(), limits })
    }

    fn jobs_key(&self, ws: &str) -> String {
        format!("{}:wh:{{{ws}}}:jobs", self.prefix)
    }
    fn due_key(&self, ws: &str, partition: &str) -> String {
        format!("{}:wh:{{{ws}}}:due:{partition}", self.prefix)
    }
    fn dead_key(&self, ws: &str) -> String {
        format!("{}:wh:{{{ws}}}:dead", self.prefix)
    }
    fn budget_key(&self, ws: &str, code: &str) -> String {
        format!("{}:wh:{{{ws}}}:budget:{code}", self.prefix)
    }
    fn index_key(&self, shard: u64) -> String {
        format!("{}:wh:idx:{{idx-{shard}}}", self.prefix)
    }
    /// The index shard of a workspace: a fixed hash, the same in every process.
    fn shard(ws: &str) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
        h.write(ws.as_bytes());
        h.finish() % SHARDS
    }
    fn index_member(p: &Partition) -> String {
        format!("{}\t{}", p.workspace_id, p.name)
    }

    /// Runs tagged commands (see `Pool::spread`) under the outbox deadline.
    async fn spread(&self, tagged: Vec<(String, redis::Cmd)>) -> Result<Vec<Value>, QueueError> {
        match tokio::time::timeout(TIMEOUT, self.pool.spread(tagged, &[])).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("outbox command timed out")),
        }
    }

    /// A script call: `EVAL` (cluster: every call carries its script) or `EVALSHA` after a `SCRIPT LOAD`
    /// in the same pipeline (single node).
    fn script(&self, sha: &str, text: &str) -> (redis::Cmd, Option<redis::Cmd>) {
        if self.pool.is_cluster() {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(text);
            (cmd, None)
        } else {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha);
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(text);
            (cmd, Some(load))
        }
    }

    /// Lowers the index score of partitions to their earliest due time (adding them if absent).
    async fn index(&self, due: HashMap<Partition, i64>) -> Result<(), QueueError> {
        if due.is_empty() {
            return Ok(());
        }
        let tagged = due
            .into_iter()
            .map(|(p, at)| {
                let key = self.index_key(Self::shard(&p.workspace_id));
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(&key).arg("LT").arg(at).arg(Self::index_member(&p));
                (hash_tag(&key).to_owned(), cmd)
            })
            .collect();
        self.spread(tagged).await.map(|_| ())
    }

    /// Runs a script in a workspace's slot (loading it first on a single node).
    async fn run_script(
        &self,
        ws: &str,
        sha: &str,
        text: &str,
        args: impl FnOnce(&mut redis::Cmd),
    ) -> Result<Value, QueueError> {
        let (mut cmd, load) = self.script(sha, text);
        args(&mut cmd);
        let tag = ws.to_owned();
        let mut tagged = Vec::with_capacity(2);
        if let Some(load) = load {
            tagged.push((tag.clone(), load));
        }
        tagged.push((tag, cmd));
        let mut replies = self.spread(tagged).await?;
        replies.pop().ok_or_else(|| corrupt("no reply"))
    }
}

fn ints(value: &Value) -> Vec<i64> {
    match value {
        Value::Array(items) => {
            items.iter().filter_map(|v| if let Value::Int(n) = v { Some(*n) } else { None }).collect()
        }
        _ => Vec::new(),
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn push(&self, jobs: &[Job]) -> Result<Vec<Pushed>, QueueError> {
        let mut out = vec![Pushed::Queued; jobs.len()];
        let mut by_ws: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            by_ws.entry(job.workspace_id.as_str()).or_default().push(i);
        }
        let now = now_ms();
        let mut index: HashMap<Partition, i64> = HashMap::new();
        for (ws, members) in by_ws {
            let mut keys = vec![self.jobs_key(ws), self.dead_key(ws)];
            let mut key_index: HashMap<String, usize> = HashMap::new();
            let mut slot = |keys: &mut Vec<String>, key: String| -> usize {
                *key_index.entry(key.clone()).or_insert_with(|| {
                    keys.push(key);
                    keys.len()
                })
            };
            let mut args: Vec<Vec<u8>> = vec![
                now.to_string().into_bytes(),
                self.limits.max_backlog.to_string().into_bytes(),
                self.limits.dead_letters.max(1).to_string().into_bytes(),
                self.limits.link_burst.to_string().into_bytes(),
                self.limits.link_per_minute.to_string().into_bytes(),
            ];
            for &i in &members {
                let job = &jobs[i];
                let due = slot(&mut keys, self.due_key(ws, &job.partition()));
                let budget = job.code.as_deref().map_or(0, |code| slot(&mut keys, self.budget_key(ws, code)));
                let at = job.due_at.map_or(now, |d| d.timestamp_millis());
                args.push(job.event_id.clone().into_bytes());
                args.push(due.to_string().into_bytes());
                args.push(budget.to_string().into_bytes());
                args.push(at.to_string().into_bytes());
                args.push(serde_json::to_vec(job).map_err(corrupt)?);
            }
            let reply = self
                .run_script(ws, &PUSH_SHA, PUSH_SCRIPT, |cmd| {
                    cmd.arg(keys.len()).arg(&keys).arg(&args);
                })
                .await?;
            let codes = ints(&reply);
            if codes.len() != members.len() + 1 {
                return Err(corrupt(format!("push answered {reply:?}")));
            }
            super::count_evicted(codes[members.len()].max(0) as u64);
            for (&i, code) in members.iter().zip(&codes) {
                out[i] = match code {
                    0 => {
                        let at = jobs[i].due_at.map_or(now, |d| d.timestamp_millis());
                        let slot = index.entry(Partition::of(&jobs[i])).or_insert(at);
                        *slot = (*slot).min(at);
                        Pushed::Queued
                    }
                    1 => Pushed::Duplicate,
                    2 => Pushed::DeadLettered(DeadReason::LinkBudget),
                    _ => Pushed::DeadLettered(DeadReason::BacklogFull),
                };
            }
        }
        // After the jobs: an index entry can point at an empty partition (harmless), never the reverse.
        self.index(index).await?;
        Ok(out)
    }

    async fn withdraw(&self, workspace_id: &str, jobs: &[(String, String)]) -> Result<usize, QueueError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut keys = vec![self.jobs_key(workspace_id)];
        let mut args = vec![now_ms().to_string()];
        for (id, partition) in jobs {
            keys.push(self.due_key(workspace_id, partition));
            args.push(id.clone());
            args.push((keys.len()).to_string());
        }
        let reply = self
            .run_script(workspace_id, &WITHDRAW_SHA, WITHDRAW_SCRIPT, |cmd| {
                cmd.arg(keys.len()).arg(&keys).arg(&args);
            })
            .await?;
        match reply {
            Value::Int(n) => Ok(n.max(0) as usize),
            other => Err(corrupt(format!("withdraw answered {other:?}"))),
        }
    }

    async fn due(&self, max: usize) -> Result<Vec<Partition>, QueueError> {
        let now = now_ms();
        let tagged = (0..SHARDS)
            .map(|shard| {
                let key = self.index_key(shard);
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(&key).arg("-inf").arg(now).arg("WITHSCORES").arg("LIMIT").arg(0).arg(max.max(1));
                (hash_tag(&key).to_owned(), cmd)
            })
            .collect();
        let mut due: Vec<(f64, Partition)> = Vec::new();
        for reply in self.spread(tagged).await? {
            let pairs: Vec<(String, f64)> = redis::from_redis_value(reply).map_err(corrupt)?;
            for (member, score) in pairs {
                if let Some((ws, name)) = member.split_once('\t') {
                    due.push((score, Partition { workspace_id: ws.to_owned(), name: name.to_owned() }));
                }
            }
        }
        due.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(due.into_iter().take(max).map(|(_, p)| p).collect())
    }

    async fn take(&self, partition: &Partition, max: usize, lease: Duration) -> Result<Vec<Lease>, QueueError> {
        let ws = &partition.workspace_id;
        let now = now_ms();
        let (jobs_key, due_key) = (self.jobs_key(ws), self.due_key(ws, &partition.name));
        let reply = self
            .run_script(ws, &TAKE_SHA, TAKE_SCRIPT, |cmd| {
                cmd.arg(2).arg(&jobs_key).arg(&due_key).arg(now).arg(max.max(1)).arg(lease.as_millis() as u64);
            })
            .await?;
        let Value::Array(parts) = reply else { return Err(corrupt("take answered no array")) };
        let (jobs, next_due): (Vec<Vec<u8>>, i64) = match parts.as_slice() {
            [jobs, Value::Int(next)] => (redis::from_redis_value(jobs.clone()).map_err(corrupt)?, *next),
            other => return Err(corrupt(format!("take answered {other:?}"))),
        };
        let mut leases = Vec::with_capacity(jobs.len());
        for raw in jobs {
            match serde_json::from_slice::<Job>(&raw) {
                Ok(job) => leases.push(Lease { job, partition: partition.clone() }),
                Err(err) => tracing::error!(error = %err, "skipping an unreadable outbox job"),
            }
        }
        // Keep the index right (see the module's index rule).
        let index_key = self.index_key(Self::shard(ws));
        let member = Self::index_member(partition);
        let tag = hash_tag(&index_key).to_owned();
        if next_due < 0 {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&index_key).arg(&member);
            self.spread(vec![(tag.clone(), zrem)]).await?;
            let mut card = redis::cmd("ZCARD");
            card.arg(&due_key);
            let left = self.spread(vec![(ws.clone(), card)]).await?;
            if matches!(left.first(), Some(Value::Int(n)) if *n > 0) {
                self.index(HashMap::from([(partition.clone(), now)])).await?;
            }
        } else {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&index_key).arg(next_due.min(now + 1000)).arg(&member);
            self.spread(vec![(tag, zadd)]).await?;
        }
        Ok(leases)
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.forget(&mut pipe, lease);
        self.atomic(&lease.partition.workspace_id, pipe).await
    }

    async fn retry(&self, lease: &Lease, job: &Job, due: DateTime<Utc>) -> Result<(), QueueError> {
        let ws = &lease.partition.workspace_id;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.jobs_key(ws))
            .arg(&job.event_id)
            .arg(serde_json::to_vec(job).map_err(corrupt)?)
            .ignore()
            .cmd("ZADD")
            .arg(self.due_key(ws, &lease.partition.name))
            .arg(due.timestamp_millis())
            .arg(&job.event_id)
            .ignore();
        self.atomic(ws, pipe).await?;
        self.index(HashMap::from([(lease.partition.clone(), due.timestamp_millis())])).await
    }

    async fn dead_letter(&self, lease: &Lease, reason: DeadReason) -> Result<u64, QueueError> {
        let ws = &lease.partition.workspace_id;
        let record = DeadLetter { reason, at_ms: now_ms(), job: lease.job.clone() };
        let cap = self.limits.dead_letters.max(1);
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.forget(&mut pipe, lease);
        pipe.cmd("LPUSH")
            .arg(self.dead_key(ws))
            .arg(serde_json::to_vec(&record).map_err(corrupt)?)
            .cmd("LTRIM")
            .arg(self.dead_key(ws))
            .arg(0)
            .arg(cap - 1)
            .ignore();
        let len: (i64,) = self.query(ws, pipe).await?;
        let evicted = (len.0 - cap as i64).max(0) as u64;
        super::count_evicted(evicted);
        Ok(evicted)
    }

    async fn dead_letters(&self, workspace_id: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(self.dead_key(workspace_id)).arg(0).arg(limit as i64 - 1);
        let reply = self.spread(vec![(workspace_id.to_owned(), cmd)]).await?;
        let raw: Vec<Vec<u8>> =
            redis::from_redis_value(reply.into_iter().next().unwrap_or(Value::Nil)).map_err(corrupt)?;
        Ok(raw.iter().filter_map(|r| serde_json::from_slice(r).ok()).collect())
    }

    async fn replay_dead_letters(
        &self,
        workspace_id: &str,
        since: Option<DateTime<Utc>>,
        sub_account_id: Option<&str>,
    ) -> Result<usize, QueueError> {
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(self.dead_key(workspace_id)).arg(0).arg(-1);
        let reply = self.spread(vec![(workspace_id.to_owned(), cmd)]).await?;
        let raw: Vec<Vec<u8>> =
            redis::from_redis_value(reply.into_iter().next().unwrap_or(Value::Nil)).map_err(corrupt)?;
        let since = since.map_or(i64::MIN, |s| s.timestamp_millis());
        let now = Utc::now();
        let mut keys = vec![self.jobs_key(workspace_id), self.dead_key(workspace_id)];
        let mut key_index: HashMap<String, usize> = HashMap::new();
        let mut args: Vec<Vec<u8>> = vec![now.timestamp_millis().to_string().into_bytes()];
        let mut index: HashMap<Partition, i64> = HashMap::new();
        for stored in raw {
            let Ok(dead) = serde_json::from_slice::<DeadLetter>(&stored) else { continue };
            if dead.at_ms < since || sub_account_id.is_some_and(|sub| dead.job.sub_account_id.as_deref() != Some(sub)) {
                continue;
            }
            let job = Job { attempt: 0, due_at: Some(now), ..dead.job };
            let due = self.due_key(workspace_id, &job.partition());
            let slot = *key_index.entry(due.clone()).or_insert_with(|| {
                keys.push(due);
                keys.len()
            });
            index.insert(Partition::of(&job), now.timestamp_millis());
            args.push(stored);
            args.push(job.event_id.clone().into_bytes());
            args.push(slot.to_string().into_bytes());
            args.push(serde_json::to_vec(&job).map_err(corrupt)?);
        }
        if args.len() == 1 {
            return Ok(0);
        }
        let reply = self
            .run_script(workspace_id, &REQUEUE_SHA, REQUEUE_SCRIPT, |cmd| {
                cmd.arg(keys.len()).arg(&keys).arg(&args);
            })
            .await?;
        self.index(index).await?;
        match reply {
            Value::Int(n) => Ok(n.max(0) as usize),
            other => Err(corrupt(format!("replay answered {other:?}"))),
        }
    }

    async fn backlog(&self, workspace_id: &str) -> Result<usize, QueueError> {
        let mut cmd = redis::cmd("HLEN");
        cmd.arg(self.jobs_key(workspace_id));
        match self.spread(vec![(workspace_id.to_owned(), cmd)]).await?.first() {
            Some(Value::Int(n)) => Ok((*n).max(0) as usize),
            other => Err(corrupt(format!("HLEN answered {other:?}"))),
        }
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = now_ms();
        let mut tagged = Vec::new();
        for shard in 0..SHARDS {
            let key = self.index_key(shard);
            let mut count = redis::cmd("ZCOUNT");
            count.arg(&key).arg("-inf").arg(now);
            tagged.push((hash_tag(&key).to_owned(), count));
            let mut first = redis::cmd("ZRANGE");
            first.arg(&key).arg(0).arg(0).arg("WITHSCORES");
            tagged.push((hash_tag(&key).to_owned(), first));
        }
        let replies = self.spread(tagged).await?;
        let mut stats = QueueStats::default();
        let mut oldest = i64::MAX;
        for pair in replies.chunks(2) {
            if let [Value::Int(n), first] = pair {
                stats.due_partitions += (*n).max(0) as u64;
                if let Ok(v) = redis::from_redis_value::<Vec<(String, f64)>>(first.clone())
                    && let Some((_, score)) = v.first()
                {
                    oldest = oldest.min(*score as i64);
                }
            }
        }
        if oldest <= now {
            stats.oldest_due_secs = (now - oldest) as f64 / 1000.0;
        }
        Ok(stats)
    }

    async fn wait(&self, max: Duration) {
        tokio::time::sleep(max.min(POLL)).await;
    }
}

impl RedisQueue {
    /// Appends what takes a leased job out of the outbox (its record and its due entry).
    fn forget(&self, pipe: &mut redis::Pipeline, lease: &Lease) {
        let ws = &lease.partition.workspace_id;
        pipe.cmd("HDEL").arg(self.jobs_key(ws)).arg(&lease.job.event_id).ignore();
        pipe.cmd("ZREM").arg(self.due_key(ws, &lease.partition.name)).arg(&lease.job.event_id).ignore();
    }

    /// Runs an atomic pipeline in a workspace's slot.
    async fn atomic(&self, ws: &str, pipe: redis::Pipeline) -> Result<(), QueueError> {
        let _: () = self.query(ws, pipe).await?;
        Ok(())
    }

    async fn query<T: redis::FromRedisValue>(&self, _ws: &str, pipe: redis::Pipeline) -> Result<T, QueueError> {
        let work = async {
            let mut conn = self.pool.get().await?;
            pipe.query_async(&mut conn).await
        };
        match tokio::time::timeout(TIMEOUT, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("outbox command timed out")),
        }
    }
}
