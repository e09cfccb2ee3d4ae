//! Delivery workers: pull jobs from the outbox, deliver, then acknowledge, reschedule or dead-letter.
//!
//! Concurrency is bounded twice: a global semaphore (`LINKHIT_WEBHOOK_CONCURRENCY`, jobs held by this
//! process) and one per endpoint (scheme, host and port; `LINKHIT_WEBHOOK_ENDPOINT_CONCURRENCY`
//! requests in flight). Jobs may queue for their endpoint's slots, but only up to an *admission* cap
//! (4 × the endpoint's concurrency, and never more than half the global slots); past it a job goes back
//! to the retry set for a second without counting an attempt. So a slow or dead receiver holds at most
//! half of the global slots, and other workspaces' events keep flowing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::deliver::{Attempt, Deliverer};
use super::queue::{Lease, Queue};
use super::settings_cache::SettingsCache;
use crate::backoff::Backoff;
use crate::model::{DeliveryLog, Job, LogOutcome};
use crate::store::SharedStore;

/// How long a job whose endpoint is saturated waits before it is offered again.
const DEFER: Duration = Duration::from_secs(1);

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
    pub claim_interval: Duration,
    pub log_cap: usize,
}

pub struct Worker {
    queue: Arc<dyn Queue>,
    store: SharedStore,
    deliverer: Arc<Deliverer>,
    settings: Arc<SettingsCache>,
    config: WorkerConfig,
    global: Arc<Semaphore>,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    /// Jobs deferred because their endpoint was saturated, since the pull loop last looked.
    deferred: AtomicUsize,
    room: Arc<tokio::sync::Notify>,
}

/// One receiver endpoint's share of the workers.
struct Endpoint {
    slots: Semaphore,
    admitted: AtomicUsize,
    admission: usize,
    /// Told when this endpoint's backlog drops to half its admission (shared by all endpoints).
    room: Arc<tokio::sync::Notify>,
}

/// Holds an admission until dropped.
struct Admitted(Arc<Endpoint>);

impl Drop for Admitted {
    fn drop(&mut self) {
        let before = self.0.admitted.fetch_sub(1, Ordering::AcqRel);
        if before == self.0.admission / 2 + 1 {
            self.0.room.notify_one();
        }
    }
}

impl Endpoint {
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.admission {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admitted(Arc::clone(self)))
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
            deferred: AtomicUsize::new(0),
            room: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Runs until `shutdown`, then waits up to `grace` for attempts in flight (unfinished Redis leases
    /// are reclaimed by the next worker).
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let maintenance = tokio::spawn(Arc::clone(&self).maintain(shutdown.clone()));
            shutdown.run_until_cancelled(Arc::clone(&self).pull_loop()).await;
            maintenance.abort();
            let all = u32::try_from(self.config.concurrency.max(1)).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(grace, self.global.acquire_many(all)).await;
        })
    }

    async fn pull_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let Ok(first) = Arc::clone(&self.global).acquire_owned().await else {
                return;
            };
            let room = self.global.available_permits() + 1;
            // Jobs were deferred: an endpoint's backlog is full. Rather than spin through the stream,
            // wait until some endpoint has room again (or 50 ms, so other endpoints' jobs still flow).
            if self.deferred.swap(0, Ordering::AcqRel) > 0 {
                let _ = tokio::time::timeout(Duration::from_millis(50), self.room.notified()).await;
            }
            match self.queue.pull(room.min(128)).await {
                Ok(leases) => {
                    backoff.reset();
                    self.dispatch(leases, Some(first));
                }
                Err(err) => {
                    drop(first);
                    metrics::counter!("linkhit_webhook_queue_errors_total").increment(1);
                    tracing::warn!(error = %err, "cannot read the webhook outbox; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    fn dispatch(self: &Arc<Self>, leases: Vec<Lease>, mut first: Option<tokio::sync::OwnedSemaphorePermit>) {
        for lease in leases {
            let permit = match first.take() {
                Some(p) => p,
                // Pulled no more than the free permits, but reclaimed leases may exceed them: wait.
                None => match Arc::clone(&self.global).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        let this = Arc::clone(self);
                        tokio::spawn(async move {
                            if let Ok(p) = Arc::clone(&this.global).acquire_owned().await {
                                this.handle(lease).await;
                                drop(p);
                            }
                        });
                        continue;
                    }
                },
            };
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.handle(lease).await;
                drop(permit);
            });
        }
    }

    /// Promotes due retries, reclaims abandoned leases, publishes queue metrics.
    async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut promote = tokio::time::interval(Duration::from_millis(100));
        let mut reclaim = tokio::time::interval(self.config.claim_interval.max(Duration::from_millis(100)));
        let mut stats = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = promote.tick() => {
                    if let Err(err) = self.queue.promote().await {
                        tracing::debug!(error = %err, "promoting webhook retries failed");
                    }
                }
                _ = reclaim.tick() => match self.queue.reclaim(100).await {
                    Ok(leases) if !leases.is_empty() => {
                        tracing::info!(jobs = leases.len(), "reclaimed webhook jobs abandoned by a stopped worker");
                        self.dispatch(leases, None);
                    }
                    Ok(_) => {}
                    Err(err) => tracing::debug!(error = %err, "reclaiming webhook jobs failed"),
                },
                _ = stats.tick() => if let Ok(s) = self.queue.stats().await {
                    metrics::gauge!("linkhit_webhook_outbox_ready").set(s.ready as f64);
                    metrics::gauge!("linkhit_webhook_outbox_scheduled").set(s.scheduled as f64);
                    metrics::gauge!("linkhit_webhook_outbox_oldest_age_seconds").set(s.oldest_age_secs);
                },
            }
        }
    }

    fn endpoint(&self, url: &str) -> Arc<Endpoint> {
        let key = url::Url::parse(url)
            .map(|u| {
                format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0))
            })
            .unwrap_or_else(|_| url.to_owned());
        let per_endpoint = self.config.per_endpoint.max(1);
        let admission = (per_endpoint * 4).min((self.config.concurrency / 2).max(1));
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(endpoints.entry(key).or_insert_with(|| {
            Arc::new(Endpoint {
                slots: Semaphore::new(per_endpoint),
                admitted: AtomicUsize::new(0),
                admission,
                room: Arc::clone(&self.room),
            })
        }))
    }

    async fn handle(&self, lease: Lease) {
        let job = &lease.job;
        let settings = match self.settings.get(&job.workspace_id).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read webhook settings; deferring delivery");
                self.reschedule(&lease, job, DEFER).await;
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
            };
            self.append_log(&job.workspace_id, entry).await;
            metrics::counter!("linkhit_webhook_deliveries_total", "outcome" => "cancelled").increment(1);
            let _ = self.queue.ack(&lease).await;
            return;
        };
        let endpoint = self.endpoint(&url);
        let Some(_admitted) = endpoint.admit() else {
            self.deferred.fetch_add(1, Ordering::AcqRel);
            metrics::counter!("linkhit_webhook_deliveries_total", "outcome" => "deferred").increment(1);
            self.reschedule(&lease, job, DEFER).await;
            return;
        };
        let Ok(_slot) = endpoint.slots.acquire().await else { return };
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
                metrics::counter!("linkhit_webhook_dead_letters_total").increment(1);
                tracing::warn!(event_id = %job.event_id, workspace_id = %job.workspace_id, attempts = number, reason = reason.as_str(), "webhook dead-lettered");
                self.queue.dead_letter(&lease).await
            }
        };
        if let Err(err) = done {
            tracing::warn!(error = %err, event_id = %job.event_id, outcome = ?outcome, "could not record a delivery outcome in the outbox; the lease will be reclaimed and the event may be sent again");
        }
    }

    async fn reschedule(&self, lease: &Lease, job: &Job, delay: Duration) {
        let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        if let Err(err) = self.queue.retry(lease, job, due).await {
            tracing::warn!(error = %err, "could not defer a webhook job; the lease will be reclaimed");
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

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The last attempt of the retry schedule failed.
    RetriesExhausted,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::RetriesExhausted => "retries_exhausted",
        }
    }
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
