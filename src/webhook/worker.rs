//! Delivery workers: find due partitions of the outbox, take a few jobs from each, deliver, then
//! acknowledge, reschedule or dead-letter.
//!
//! Fairness comes from the partitions: each pass takes from every due partition, at most
//! `LINKHIT_WEBHOOK_ENDPOINT_CONCURRENCY` jobs in flight per partition and per endpoint (scheme, host
//! and port), and at most `LINKHIT_WEBHOOK_CONCURRENCY` in this process. A partition whose receiver
//! hangs therefore holds only its own jobs and its endpoint's slots; it is skipped while they are full,
//! and every other partition keeps flowing. Jobs are leased, not removed: a worker that dies leaves them
//! due again after `LINKHIT_WEBHOOK_CLAIM_IDLE`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::deliver::{Attempt, Deliverer};
use super::queue::{Lease, Partition, Queue};
use super::settings_cache::SettingsCache;
use crate::backoff::Backoff;
use crate::model::{DeadReason, DeliveryLog, Job, LogOutcome, origin};
use crate::store::SharedStore;

/// Partitions looked at per pass.
const PARTITIONS_PER_PASS: usize = 512;
/// How long an idle worker waits for work before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// When the next attempt is due after `attempts_made` failed attempts, or `None` to dead-letter.
/// `Retry-After` (429/503) wins over the schedule; otherwise the schedule's delay varies by up to ±10 %
/// (`jitter` in `[-1, 1]`) so that retries of a burst do not arrive as a burst.
pub fn next_delay(
    schedule: &[Duration],
    attempts_made: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let index = usize::try_from(attempts_made).ok()?.checked_sub(1)?;
    let base = *schedule.get(index)?;
    if let Some(delay) = retry_after {
        return Some(delay);
    }
    Some(base.mul_f64(1.0 + 0.1 * jitter.clamp(-1.0, 1.0)))
}

/// Tuning of the workers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub per_endpoint: usize,
    pub schedule: Vec<Duration>,
    /// How long a taken job stays leased before it is due again.
    pub lease: Duration,
    pub log_cap: usize,
}

pub struct Worker {
    queue: Arc<dyn Queue>,
    store: SharedStore,
    deliverer: Arc<Deliverer>,
    settings: Arc<SettingsCache>,
    config: WorkerConfig,
    global: Arc<Semaphore>,
    /// Slots per endpoint (scheme, host, port).
    endpoints: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Jobs in flight per partition.
    in_flight: Mutex<HashMap<Partition, Arc<AtomicUsize>>>,
}

/// What a delivery holds while in flight; dropping it frees the slots.
struct Slots {
    _global: OwnedSemaphorePermit,
    _endpoint: Option<OwnedSemaphorePermit>,
    partition: Arc<AtomicUsize>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.partition.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Worker {
    pub fn new(
        queue: Arc<dyn Queue>,
        store: SharedStore,
        deliverer: Arc<Deliverer>,
        settings: Arc<SettingsCache>,
        config: WorkerConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(config.concurrency.max(1))),
            queue,
            store,
            deliverer,
            settings,
            config,
            endpoints: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Runs until `shutdown`, then waits up to `grace` for attempts in flight (unfinished leases fall due
    /// again for the next worker).
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let maintenance = tokio::spawn(Arc::clone(&self).publish_stats(shutdown.clone()));
            shutdown.run_until_cancelled(Arc::clone(&self).run()).await;
            maintenance.abort();
            let all = u32::try_from(self.config.concurrency.max(1)).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(grace, self.global.acquire_many(all)).await;
        })
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.pass().await {
                Ok(took) => {
                    backoff.reset();
                    if took == 0 {
                        self.queue.wait(IDLE_WAIT).await;
                    }
                }
                Err(err) => {
                    metrics::counter!("linkhit_webhook_queue_errors_total").increment(1);
                    tracing::warn!(error = %err, "cannot read the webhook outbox; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// One look at every due partition: takes what each may have in flight. Returns how many jobs it
    /// started.
    async fn pass(self: &Arc<Self>) -> Result<usize, super::queue::QueueError> {
        let mut started = 0;
        for partition in self.queue.due(PARTITIONS_PER_PASS).await? {
            let global = self.global.available_permits();
            if global == 0 {
                break;
            }
            let per = self.config.per_endpoint.max(1);
            let in_flight = self.partition_counter(&partition);
            let mut room = per.saturating_sub(in_flight.load(Ordering::Acquire)).min(global);
            let endpoint = match self.url_of(&partition).await {
                Some(url) => {
                    let slots = self.endpoint(&url);
                    room = room.min(slots.available_permits());
                    Some(slots)
                }
                // No URL (channel off, settings unreadable): taken and settled one by one in `handle`.
                None => None,
            };
            if room == 0 {
                continue;
            }
            for lease in self.queue.take(&partition, room, self.config.lease).await? {
                let Ok(global) = Arc::clone(&self.global).try_acquire_owned() else { break };
                let endpoint = endpoint.as_ref().and_then(|s| Arc::clone(s).try_acquire_owned().ok());
                in_flight.fetch_add(1, Ordering::AcqRel);
                let slots = Slots { _global: global, _endpoint: endpoint, partition: Arc::clone(&in_flight) };
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    this.handle(lease).await;
                    drop(slots);
                });
                started += 1;
            }
        }
        Ok(started)
    }

    /// The URL a partition's jobs go to now.
    async fn url_of(&self, partition: &Partition) -> Option<String> {
        let settings = self.settings.get_for(&partition.workspace_id, partition.sub_account()).await.ok()?;
        settings.url_for(partition.kind()?).map(str::to_owned)
    }

    fn partition_counter(&self, partition: &Partition) -> Arc<AtomicUsize> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, n| n.load(Ordering::Acquire) > 0);
        }
        Arc::clone(map.entry(partition.clone()).or_default())
    }

    fn endpoint(&self, url: &str) -> Arc<Semaphore> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if endpoints.len() > 100_000 {
            let per = self.config.per_endpoint.max(1);
            endpoints.retain(|_, s| s.available_permits() < per);
        }
        Arc::clone(
            endpoints.entry(origin(url)).or_insert_with(|| Arc::new(Semaphore::new(self.config.per_endpoint.max(1)))),
        )
    }

    /// Publishes the outbox gauges.
    async fn publish_stats(self: Arc<Self>, shutdown: CancellationToken) {
        let mut stats = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = stats.tick() => if let Ok(s) = self.queue.stats().await {
                    metrics::gauge!("linkhit_webhook_outbox_due_partitions").set(s.due_partitions as f64);
                    metrics::gauge!("linkhit_webhook_outbox_oldest_age_seconds").set(s.oldest_due_secs);
                },
            }
        }
    }

    async fn handle(&self, lease: Lease) {
        let job = &lease.job;
        let settings = match self.settings.get_for(&job.workspace_id, job.sub_account_id.as_deref()).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read webhook settings; the event is tried again in a second");
                let due = Utc::now() + chrono::Duration::seconds(1);
                if let Err(err) = self.queue.retry(&lease, job, due).await {
                    tracing::warn!(error = %err, "could not defer a webhook job; its lease will run out");
                }
                return;
            }
        };
        let Some(url) = settings.url_for(job.kind).map(str::to_owned) else {
            // The channel was switched off after the event was accepted.
            let entry = DeliveryLog {
                event_id: job.event_id.clone(),
                kind: job.kind,
                url: String::new(),
                attempt: job.attempt,
                payload: job.payload.clone(),
                response_code: None,
                response_time_ms: 0,
                error: Some("webhook channel disabled".into()),
                at: Utc::now(),
                outcome: LogOutcome::Cancelled,
                next_attempt_at: None,
                sub_account_id: job.sub_account_id.clone(),
            };
            self.append_log(&job.workspace_id, entry).await;
            metrics::counter!("linkhit_webhook_deliveries_total", "outcome" => "cancelled").increment(1);
            let _ = self.queue.ack(&lease).await;
            return;
        };
        let attempt = self.deliverer.attempt(&settings, &job.workspace_id, &url, job).await;
        metrics::histogram!("linkhit_webhook_attempt_seconds").record(attempt.elapsed_ms as f64 / 1000.0);
        let number = job.attempt + 1;
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let outcome = decide(&attempt, number, &self.config.schedule, Utc::now(), jitter);
        self.log_attempt(job, &url, number, &attempt, &outcome).await;
        let done = match &outcome {
            Outcome::Delivered => {
                metrics::counter!("linkhit_webhook_deliveries_total", "outcome" => "delivered").increment(1);
                self.queue.ack(&lease).await
            }
            Outcome::RetryAt(due) => {
                metrics::counter!("linkhit_webhook_deliveries_total", "outcome" => "failed").increment(1);
                self.queue.retry(&lease, &Job { attempt: number, ..job.clone() }, *due).await
            }
            Outcome::DeadLettered(reason) => {
                metrics::counter!("linkhit_webhook_deliveries_total", "outcome" => "dead_lettered").increment(1);
                metrics::counter!("linkhit_webhook_dead_letters_total", "reason" => reason.as_str()).increment(1);
                tracing::warn!(event_id = %job.event_id, workspace_id = %job.workspace_id, attempts = number, reason = reason.as_str(), "webhook dead-lettered");
                self.queue.dead_letter(&lease, *reason).await.map(|_| ())
            }
        };
        if let Err(err) = done {
            tracing::warn!(error = %err, event_id = %job.event_id, outcome = ?outcome, "could not record a delivery outcome in the outbox; the lease will run out and the event may be sent again");
        }
    }

    async fn log_attempt(&self, job: &Job, url: &str, number: u32, attempt: &Attempt, outcome: &Outcome) {
        let (outcome, next_attempt_at) = match outcome {
            Outcome::Delivered => (LogOutcome::Delivered, None),
            Outcome::RetryAt(due) => (LogOutcome::RetryScheduled, Some(*due)),
            Outcome::DeadLettered(_) => (LogOutcome::DeadLettered, None),
        };
        let entry = DeliveryLog {
            event_id: job.event_id.clone(),
            kind: job.kind,
            url: url.to_owned(),
            attempt: number,
            payload: job.payload.clone(),
            response_code: attempt.status(),
            response_time_ms: attempt.elapsed_ms,
            error: attempt.error(),
            at: Utc::now(),
            outcome,
            next_attempt_at,
            sub_account_id: job.sub_account_id.clone(),
        };
        self.append_log(&job.workspace_id, entry).await;
    }

    async fn append_log(&self, workspace_id: &str, entry: DeliveryLog) {
        if let Err(err) = self.store.append_webhook_logs(workspace_id, &[entry], self.config.log_cap).await {
            tracing::warn!(error = %err, "could not write a webhook log entry");
        }
    }
}

/// What becomes of an event after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Failed; try again at this time.
    RetryAt(DateTime<Utc>),
    DeadLettered(DeadReason),
}

/// Decides what an attempt (the `number`-th) leads to. Pure: the worker acts on the answer.
pub fn decide(attempt: &Attempt, number: u32, schedule: &[Duration], now: DateTime<Utc>, jitter: f64) -> Outcome {
    if attempt.succeeded() {
        return Outcome::Delivered;
    }
    match next_delay(schedule, number, attempt.retry_after(), jitter) {
        Some(delay) => Outcome::RetryAt(now + chrono::Duration::from_std(delay).unwrap_or_default()),
        None => Outcome::DeadLettered(DeadReason::RetriesExhausted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule() {
        let s: Vec<Duration> = [1, 10, 30, 90].map(Duration::from_secs).to_vec();
        let cases = [
            (1, None, 0.0, Some(Duration::from_secs(1))),
            (2, None, 0.0, Some(Duration::from_secs(10))),
            (4, None, 0.0, Some(Duration::from_secs(90))),
            (5, None, 0.0, None),
            (0, None, 0.0, None),
            (1, None, 1.0, Some(Duration::from_millis(1100))),
            (2, None, -1.0, Some(Duration::from_secs(9))),
            (2, Some(Duration::from_secs(120)), 0.5, Some(Duration::from_secs(120))),
            (5, Some(Duration::from_secs(1)), 0.0, None),
        ];
        for (attempts, retry_after, jitter, want) in cases {
            assert_eq!(next_delay(&s, attempts, retry_after, jitter), want, "{attempts} {retry_after:?} {jitter}");
        }
        assert_eq!(next_delay(&[], 1, None, 0.0), None, "an empty schedule dead-letters at once");
    }

    #[test]
    fn decisions() {
        use super::super::deliver::Answer;
        let s: Vec<Duration> = [1, 10].map(Duration::from_secs).to_vec();
        let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        let at = |secs: i64| Outcome::RetryAt(now + chrono::Duration::seconds(secs));
        let status = |code: u16, retry_after: Option<u64>| Attempt {
            answer: Answer::Status { code, retry_after: retry_after.map(Duration::from_secs) },
            elapsed_ms: 5,
        };
        let failed = Attempt { answer: Answer::Failed("timed out".into()), elapsed_ms: 10_000 };
        let cases = [
            (status(200, None), 1, Outcome::Delivered),
            (status(204, None), 3, Outcome::Delivered),
            (status(500, None), 1, at(1)),
            (status(503, Some(120)), 1, at(120)),
            (status(404, None), 2, at(10)),
            (failed.clone(), 2, at(10)),
            (failed, 3, Outcome::DeadLettered(DeadReason::RetriesExhausted)),
            (status(302, None), 3, Outcome::DeadLettered(DeadReason::RetriesExhausted)),
        ];
        for (attempt, number, want) in cases {
            assert_eq!(decide(&attempt, number, &s, now, 0.0), want, "{attempt:?} #{number}");
        }
    }
}
