//! The embedded store's outbox, in process: the same partitions, due times, leases and bounds as Redis.
//! **Not durable**: jobs are lost when the process stops.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{Lease, Limits, Partition, Pushed, Queue, QueueError, QueueStats, spend_budget};
use crate::model::{DeadLetter, DeadReason, Job};

/// Per-link budgets remembered before the oldest (idle, hence full again) are forgotten.
const MAX_BUDGETS: usize = 100_000;

pub struct MemoryQueue {
    limits: Limits,
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    workspaces: HashMap<String, Workspace>,
}

#[derive(Default)]
struct Workspace {
    jobs: HashMap<String, Job>,
    /// Partition → (due ms, event id).
    due: HashMap<String, BTreeSet<(i64, String)>>,
    /// Event id → its current due ms (to find it in `due`).
    scores: HashMap<String, i64>,
    dead: VecDeque<DeadLetter>,
    budgets: HashMap<String, (f64, i64)>,
}

impl Workspace {
    fn schedule(&mut self, partition: &str, id: &str, due: i64) {
        if let Some(old) = self.scores.insert(id.to_owned(), due)
            && let Some(set) = self.due.get_mut(partition)
        {
            set.remove(&(old, id.to_owned()));
        }
        self.due.entry(partition.to_owned()).or_default().insert((due, id.to_owned()));
    }

    fn forget(&mut self, partition: &str, id: &str) -> Option<Job> {
        if let Some(old) = self.scores.remove(id)
            && let Some(set) = self.due.get_mut(partition)
        {
            set.remove(&(old, id.to_owned()));
            if set.is_empty() {
                self.due.remove(partition);
            }
        }
        self.jobs.remove(id)
    }

    fn bury(&mut self, job: Job, reason: DeadReason, cap: usize) -> u64 {
        self.dead.push_front(DeadLetter { reason, at_ms: Utc::now().timestamp_millis(), job });
        let evicted = self.dead.len().saturating_sub(cap.max(1));
        self.dead.truncate(cap.max(1));
        evicted as u64
    }
}

impl MemoryQueue {
    pub fn new(limits: Limits) -> Self {
        Self { limits, state: Mutex::default(), ready: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

fn due_ms(job: &Job) -> i64 {
    job.due_at.map_or_else(|| Utc::now().timestamp_millis(), |d| d.timestamp_millis())
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn push(&self, jobs: &[Job]) -> Result<Vec<Pushed>, QueueError> {
        let now = Utc::now().timestamp_millis();
        let mut state = self.lock();
        let mut out = Vec::with_capacity(jobs.len());
        let mut evicted = 0;
        for job in jobs {
            let ws = state.workspaces.entry(job.workspace_id.clone()).or_default();
            if ws.jobs.contains_key(&job.event_id) {
                out.push(Pushed::Duplicate);
                continue;
            }
            if self.limits.link_burst > 0
                && let Some(code) = &job.code
            {
                if ws.budgets.len() >= MAX_BUDGETS {
                    ws.budgets.clear();
                }
                let (ok, next) = spend_budget(ws.budgets.get(code).copied(), now, &self.limits);
                ws.budgets.insert(code.clone(), next);
                if !ok {
                    evicted += ws.bury(job.clone(), DeadReason::LinkBudget, self.limits.dead_letters);
                    out.push(Pushed::DeadLettered(DeadReason::LinkBudget));
                    continue;
                }
            }
            if ws.jobs.len() >= self.limits.max_backlog {
                evicted += ws.bury(job.clone(), DeadReason::BacklogFull, self.limits.dead_letters);
                out.push(Pushed::DeadLettered(DeadReason::BacklogFull));
                continue;
            }
            ws.jobs.insert(job.event_id.clone(), job.clone());
            ws.schedule(&job.partition(), &job.event_id, due_ms(job));
            out.push(Pushed::Queued);
        }
        drop(state);
        super::count_evicted(evicted);
        self.ready.notify_one();
        Ok(out)
    }

    async fn withdraw(&self, workspace_id: &str, jobs: &[(String, String)]) -> Result<usize, QueueError> {
        let now = Utc::now().timestamp_millis();
        let mut state = self.lock();
        let Some(ws) = state.workspaces.get_mut(workspace_id) else { return Ok(0) };
        let mut n = 0;
        for (id, partition) in jobs {
            // A job whose due time passed may be leased already: too late to withdraw.
            if ws.scores.get(id).is_some_and(|&due| due > now) && ws.forget(partition, id).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn due(&self, max: usize) -> Result<Vec<Partition>, QueueError> {
        let now = Utc::now().timestamp_millis();
        let state = self.lock();
        let mut due: Vec<(i64, Partition)> = state
            .workspaces
            .iter()
            .flat_map(|(ws, w)| {
                w.due.iter().filter_map(move |(name, set)| {
                    let first = set.first()?.0;
                    (first <= now).then(|| (first, Partition { workspace_id: ws.clone(), name: name.clone() }))
                })
            })
            .collect();
        due.sort_by_key(|(at, _)| *at);
        Ok(due.into_iter().take(max).map(|(_, p)| p).collect())
    }

    async fn take(&self, partition: &Partition, max: usize, lease: Duration) -> Result<Vec<Lease>, QueueError> {
        let now = Utc::now().timestamp_millis();
        let until = now + lease.as_millis() as i64;
        let mut state = self.lock();
        let Some(ws) = state.workspaces.get_mut(&partition.workspace_id) else { return Ok(Vec::new()) };
        let ids: Vec<String> = ws
            .due
            .get(&partition.name)
            .map(|set| set.iter().take_while(|(at, _)| *at <= now).take(max).map(|(_, id)| id.clone()).collect())
            .unwrap_or_default();
        let mut leases = Vec::with_capacity(ids.len());
        for id in ids {
            ws.schedule(&partition.name, &id, until);
            if let Some(job) = ws.jobs.get(&id) {
                leases.push(Lease { job: job.clone(), partition: partition.clone() });
            }
        }
        Ok(leases)
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        if let Some(ws) = self.lock().workspaces.get_mut(&lease.partition.workspace_id) {
            ws.forget(&lease.partition.name, &lease.job.event_id);
        }
        Ok(())
    }

    async fn retry(&self, lease: &Lease, job: &Job, due: DateTime<Utc>) -> Result<(), QueueError> {
        let mut state = self.lock();
        let ws = state.workspaces.entry(lease.partition.workspace_id.clone()).or_default();
        ws.jobs.insert(job.event_id.clone(), job.clone());
        ws.schedule(&lease.partition.name, &job.event_id, due.timestamp_millis());
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, reason: DeadReason) -> Result<u64, QueueError> {
        let mut state = self.lock();
        let ws = state.workspaces.entry(lease.partition.workspace_id.clone()).or_default();
        ws.forget(&lease.partition.name, &lease.job.event_id);
        let evicted = ws.bury(lease.job.clone(), reason, self.limits.dead_letters);
        drop(state);
        super::count_evicted(evicted);
        Ok(evicted)
    }

    async fn dead_letters(&self, workspace_id: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let state = self.lock();
        Ok(state.workspaces.get(workspace_id).map(|w| w.dead.iter().take(limit).cloned().collect()).unwrap_or_default())
    }

    async fn replay_dead_letters(
        &self,
        workspace_id: &str,
        since: Option<DateTime<Utc>>,
        sub_account_id: Option<&str>,
    ) -> Result<usize, QueueError> {
        let since = since.map_or(i64::MIN, |s| s.timestamp_millis());
        let now = Utc::now();
        let mut state = self.lock();
        let Some(ws) = state.workspaces.get_mut(workspace_id) else { return Ok(0) };
        let (replay, keep): (Vec<DeadLetter>, Vec<DeadLetter>) = ws.dead.drain(..).partition(|d| {
            d.at_ms >= since && sub_account_id.is_none_or(|sub| d.job.sub_account_id.as_deref() == Some(sub))
        });
        ws.dead = keep.into();
        let n = replay.len();
        for dead in replay {
            let job = Job { attempt: 0, due_at: Some(now), ..dead.job };
            if ws.jobs.contains_key(&job.event_id) {
                continue;
            }
            ws.schedule(&job.partition(), &job.event_id, now.timestamp_millis());
            ws.jobs.insert(job.event_id.clone(), job);
        }
        drop(state);
        self.ready.notify_one();
        Ok(n)
    }

    async fn backlog(&self, workspace_id: &str) -> Result<usize, QueueError> {
        Ok(self.lock().workspaces.get(workspace_id).map_or(0, |w| w.jobs.len()))
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = Utc::now().timestamp_millis();
        let state = self.lock();
        let firsts: Vec<i64> = state
            .workspaces
            .values()
            .flat_map(|w| w.due.values().filter_map(|s| s.first().map(|f| f.0)))
            .filter(|&at| at <= now)
            .collect();
        Ok(QueueStats {
            due_partitions: firsts.len() as u64,
            oldest_due_secs: firsts.iter().min().map_or(0.0, |&at| (now - at) as f64 / 1000.0),
        })
    }

    async fn wait(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.ready.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn job(id: &str, ws: &str, code: &str) -> Job {
        Job {
            event_id: id.into(),
            workspace_id: ws.into(),
            kind: EventKind::Click,
            payload: "{}".into(),
            attempt: 0,
            created_at: Utc::now(),
            sub_account_id: None,
            code: Some(code.into()),
            url: "https://hooks.example/".into(),
            due_at: None,
        }
    }

    #[tokio::test]
    async fn partitions_leases_retries_and_bounds() {
        let q = MemoryQueue::new(Limits { link_burst: 2, link_per_minute: 1, max_backlog: 3, dead_letters: 2 });
        let pushed = q
            .push(&[job("a", "w1", "x"), job("a", "w1", "x"), job("b", "w1", "x"), job("c", "w1", "x")])
            .await
            .unwrap();
        assert_eq!(
            pushed,
            [Pushed::Queued, Pushed::Duplicate, Pushed::Queued, Pushed::DeadLettered(DeadReason::LinkBudget)]
        );
        let pushed = q.push(&[job("d", "w1", "y"), job("e", "w1", "z"), job("f", "w2", "x")]).await.unwrap();
        assert_eq!(pushed, [Pushed::Queued, Pushed::DeadLettered(DeadReason::BacklogFull), Pushed::Queued]);
        let dead = q.dead_letters("w1", 10).await.unwrap();
        assert_eq!(dead.iter().map(|d| d.job.event_id.as_str()).collect::<Vec<_>>(), ["e", "c"]);
        let due = q.due(10).await.unwrap();
        assert_eq!(due.len(), 2, "one partition per workspace");
        let w1 = due.iter().find(|p| p.workspace_id == "w1").unwrap().clone();
        let leases = q.take(&w1, 2, Duration::from_secs(60)).await.unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(q.take(&w1, 10, Duration::from_secs(60)).await.unwrap().len(), 1, "leased jobs are not due");
        q.ack(&leases[0]).await.unwrap();
        let next = Job { attempt: 1, ..leases[1].job.clone() };
        q.retry(&leases[1], &next, Utc::now()).await.unwrap();
        let again = q.take(&w1, 10, Duration::from_secs(60)).await.unwrap();
        assert_eq!((again.len(), again[0].job.attempt), (1, 1));
        assert_eq!(
            q.dead_letter(&again[0], DeadReason::RetriesExhausted).await.unwrap(),
            1,
            "the cap evicts the oldest"
        );
        assert_eq!(q.replay_dead_letters("w1", None, None).await.unwrap(), 2);
        let replayed = q.take(&w1, 10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(replayed.len(), 2, "replayed with their ids and a fresh attempt count");
        assert!(replayed.iter().all(|l| l.job.attempt == 0));
    }

    #[tokio::test]
    async fn held_jobs_wait_and_can_be_withdrawn() {
        let q = MemoryQueue::default();
        let mut held = job("h", "w", "x");
        held.due_at = Some(Utc::now() + chrono::Duration::seconds(30));
        q.push(&[held.clone()]).await.unwrap();
        assert!(q.due(10).await.unwrap().is_empty(), "not due during the hold");
        assert_eq!(q.withdraw("w", &[("h".into(), held.partition())]).await.unwrap(), 1);
        assert_eq!(q.withdraw("w", &[("h".into(), held.partition())]).await.unwrap(), 0);
    }
}
