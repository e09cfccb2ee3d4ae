//! Stages 3–6 in two tasks, joined by a small bounded queue of batches.
//!
//! - [`intake`] drains captured hits, classifies them, and every `batch_size` hits or `flush_interval`
//!   seals a [`Batch`] (with a fresh id) and hands it to the committer — unless the store is unhealthy
//!   or the committer is busy, in which case the batch goes straight to the journal.
//! - [`committer`] counts each batch (`Store::record_batch`, idempotent by batch id), emits its events,
//!   then releases it. A commit that fails, or has not answered within `flush_interval`, makes the
//!   store *unhealthy*: the batch is journaled as attempted (in doubt: only the store's guard knows
//!   whether it counted) and every new batch is journaled at once, until a replay of what the journal
//!   held succeeds with every commit within a flush interval. So at most one flush interval of hits is
//!   ever held only in memory. A batch carrying corrections is journaled while the journal (or the
//!   spill writer) holds anything, so that it is never counted before the hits it corrects.
//! - [`spill`] is intake's way to the journal: batches written in groups, one sync per group.
//!
//! Shutdown is bounded by a deadline: what the store does not take before it is journaled, and the
//! next start counts it exactly once.

mod committer;
mod intake;
mod spill;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::classify::{Classifier, Rules};
use super::emit::EventSink;
use super::journal::{Entry, Journal};
use super::network::Networks;
use super::sweep::{SweepRule, Sweeps};
use super::verdict::Timing;
use crate::model::{Batch, ClickRecord, Correction};
use crate::redirect::capture::{Capture, Handover};
use crate::store::SharedStore;

/// Tuning of the pipeline; see `Config` for the defaults and their reasons.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Hits the capture channel holds.
    pub capture_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// Batches waiting for the committer before intake journals them.
    pub commit_queue: usize,
    /// Recent clicks kept per link.
    pub recent_clicks: usize,
    /// A bot's repeats on a link within this long of its listed hit are not listed (`LINKHIT_RECENT_FOLD`).
    pub recent_fold: Duration,
    pub keep_full_ip: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub classifier_memo: usize,
    /// How long the store keeps a batch's guard (`LINKHIT_COMMIT_GUARD_TTL`): an in-doubt batch older
    /// than this is not replayed.
    pub guard_ttl: Duration,
    /// Client networks (`click::network`).
    pub networks: Arc<Networks>,
    pub timing: Timing,
    pub sweep: SweepRule,
    /// Sweep-tracker capacity (hits remembered).
    pub sweep_capacity: usize,
    /// The click hold window (`LINKHIT_CLICK_HOLD`): how long a verdict may still flip.
    pub hold: Duration,
    /// Run intake and committer on their own OS thread (`LINKHIT_CLICK_THREAD`).
    pub own_thread: bool,
}

/// Whether the store takes commits; shared by intake (which journals while it does not) and the
/// committer (which decides). Also what the committer holds, for intake's ordering of corrections.
#[derive(Debug)]
pub(crate) struct Health {
    ok: AtomicBool,
    /// When the committer began its current piece of work (ms since the epoch), or 0.
    busy_since: AtomicI64,
    /// Batches handed to the committer that it has neither counted nor journaled yet.
    handed: AtomicUsize,
    /// Attempted batches the committer keeps in memory (the journal refused them), as of its last step.
    in_doubt: AtomicUsize,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ok: AtomicBool::new(true),
            busy_since: AtomicI64::new(0),
            handed: AtomicUsize::new(0),
            in_doubt: AtomicUsize::new(0),
        }
    }
}

impl Health {
    pub(crate) fn ok(&self) -> bool {
        self.ok.load(Ordering::Acquire)
    }

    /// The committer starts (`true`) or ends (`false`) a piece of work on the store or the sink.
    pub(crate) fn busy(&self, busy: bool) {
        let now = if busy { chrono::Utc::now().timestamp_millis().max(1) } else { 0 };
        self.busy_since.store(now, Ordering::Release);
    }

    /// Whether the committer has been busy with one piece of work for longer than `limit`: a batch
    /// handed to it now would wait in memory for longer than a flush interval, so intake journals it.
    pub(crate) fn stuck(&self, limit: Duration) -> bool {
        let since = self.busy_since.load(Ordering::Acquire);
        since != 0 && chrono::Utc::now().timestamp_millis() - since > limit.as_millis() as i64
    }

    pub(crate) fn set(&self, ok: bool) {
        if self.ok.swap(ok, Ordering::AcqRel) != ok {
            metrics::gauge!("linkhit_store_healthy").set(if ok { 1.0 } else { 0.0 });
            if ok {
                tracing::info!("the store takes commits again; new batches are counted directly");
            } else {
                tracing::warn!("the store is failing or slow; new batches go to the journal until it recovers");
            }
        }
    }

    /// Intake hands the committer a batch (or takes the handing back: `false`, the queue refused it).
    pub(crate) fn hand(&self, handed: bool) {
        if handed {
            self.handed.fetch_add(1, Ordering::AcqRel);
        } else {
            self.handed.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The committer is done with a handed batch — counted it, journaled it, or kept it in doubt
    /// (`in_doubt`: how many batches it now keeps so).
    pub(crate) fn done(&self, in_doubt: usize) {
        // In doubt first: `holding` never reads the batch as gone before it is counted there.
        self.in_doubt(in_doubt);
        self.hand(false);
    }

    /// The committer's batches in doubt after a replay.
    pub(crate) fn in_doubt(&self, in_doubt: usize) {
        self.in_doubt.store(in_doubt, Ordering::Release);
    }

    /// Batches the committer holds that are neither counted nor in the journal: handed ones it has not
    /// finished, and ones in doubt. A correction of their hits that went to the journal now could land
    /// ahead of them there (they are journaled once the store fails them).
    pub(crate) fn holding(&self) -> usize {
        self.handed.load(Ordering::Acquire) + self.in_doubt.load(Ordering::Acquire)
    }

    /// Batches handed to the committer it has not finished.
    pub(crate) fn handed(&self) -> usize {
        self.handed.load(Ordering::Acquire)
    }
}

/// Human hits of batches dropped without being counted (the journal refused them), by event id: a
/// verdict correction of one has nothing to move — counted, it would take a human hit and a unique
/// click from the counts that this hit never added — and is discarded wherever it is still on its way
/// (waiting in intake, queued for the committer, in the spill writer's group). The newest
/// [`DROPPED_HITS`] are kept: corrections come within the hold window.
#[derive(Debug, Default)]
pub(crate) struct Dropped(std::sync::Mutex<(HashSet<String>, VecDeque<String>)>);

/// Dropped hits [`Dropped`] remembers (~100 bytes each).
const DROPPED_HITS: usize = 65_536;

impl Dropped {
    fn note(&self, batch: &Batch) {
        let mut ids: Vec<String> = (batch.clicks.iter().enumerate())
            .filter(|(_, c)| c.is_human())
            .map(|(i, _)| super::emit::event_id(&batch.id, i))
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (set, order) = &mut *guard;
        if ids.len() > DROPPED_HITS {
            ids.drain(..ids.len() - DROPPED_HITS);
        }
        for id in ids {
            if set.insert(id.clone()) {
                order.push_back(id);
            }
        }
        while order.len() > DROPPED_HITS {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }

    /// Removes the corrections of dropped hits from `corrections`; how many it removed.
    pub(crate) fn strip(&self, corrections: &mut Vec<Correction>) -> usize {
        if corrections.is_empty() {
            return 0;
        }
        let guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.0.is_empty() {
            return 0;
        }
        let before = corrections.len();
        corrections.retain(|c| !guard.0.contains(&c.event_id));
        let stripped = before - corrections.len();
        if stripped > 0 {
            tracing::info!(stripped, "discarding verdict corrections of hits that were dropped uncounted");
        }
        stripped
    }
}

/// Emptied batch buffers on their way back from the committer to intake. A batch is a few hundred
/// records of ~250 bytes: grown afresh for every batch, its buffer was reallocated eight times on the
/// way (a copy each) and, freed and taken again, came back as fresh pages the kernel had to zero —
/// `perf` on the click thread at saturation: 37 % page clearing, 15 % copying (docs/PERFORMANCE.md,
/// session 6). At most `SPARE_BUFFERS` wait here; more are freed.
#[derive(Debug, Default)]
pub(crate) struct Spare(std::sync::Mutex<Vec<Vec<ClickRecord>>>);

/// Buffers kept by [`Spare`]: one being filled, one queued, one being counted, and one for slack.
const SPARE_BUFFERS: usize = 4;

impl Spare {
    /// An empty buffer for `capacity` records.
    pub(crate) fn take(&self, capacity: usize) -> Vec<ClickRecord> {
        match self.0.lock().ok().and_then(|mut spare| spare.pop()) {
            Some(mut buffer) => {
                buffer.reserve(capacity);
                buffer
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// A finished batch's buffer, emptied.
    pub(crate) fn give(&self, mut clicks: Vec<ClickRecord>) {
        clicks.clear();
        if let Ok(mut spare) = self.0.lock()
            && spare.len() < SPARE_BUFFERS
        {
            spare.push(clicks);
        }
    }
}

/// Batch ids: this run's random id and a sequence number. Owned by intake, which knows the sequence of
/// the batch it is filling (a hit's event id is derived from it, see `emit::event_id`).
pub(crate) struct BatchIds {
    run: String,
    next: u64,
}

impl BatchIds {
    fn new() -> Self {
        Self { run: uuid::Uuid::new_v4().simple().to_string(), next: 0 }
    }

    /// The sequence number of the batch being filled.
    pub(crate) fn current(&self) -> u64 {
        self.next
    }

    /// The id of batch `seq` of this run.
    pub(crate) fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.run)
    }

    pub(crate) fn seal(&mut self, clicks: Vec<ClickRecord>, corrections: Vec<Correction>) -> Batch {
        let id = self.id(self.next);
        self.next += 1;
        Batch { id, clicks, corrections }
    }
}

/// The running pipeline.
pub struct Pipeline {
    stop: CancellationToken,
    deadline: Arc<OnceLock<Instant>>,
    running: Running,
}

/// Where the two tasks run.
enum Running {
    /// On the caller's runtime, next to the redirects.
    Shared { intake: JoinHandle<()>, committer: JoinHandle<()> },
    /// On the `linkhit-clicks` thread; `done` fires when both tasks ended.
    Thread { done: tokio::sync::oneshot::Receiver<()> },
}

/// Name of the pipeline's own thread (visible in `top -H`, `perf`).
const THREAD_NAME: &str = "linkhit-clicks";

/// Runs both tasks on a new OS thread with a current-thread runtime; the futures come back if the
/// thread cannot be started.
fn start_thread<I, C>(intake: I, committer: C) -> Result<Running, (I, C)>
where
    I: std::future::Future<Output = ()> + Send + 'static,
    C: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().thread_name(THREAD_NAME).build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::warn!(error = %err, "cannot build the click pipeline's runtime; it shares the redirect workers");
            return Err((intake, committer));
        }
    };
    let (done_tx, done) = tokio::sync::oneshot::channel();
    // Shared with the thread so that the futures come back if it cannot be started.
    let work = Arc::new(std::sync::Mutex::new(Some((intake, committer))));
    let theirs = Arc::clone(&work);
    let spawned = std::thread::Builder::new().name(THREAD_NAME.to_owned()).spawn(move || {
        let Some((intake, committer)) = theirs.lock().ok().and_then(|mut w| w.take()) else { return };
        runtime.block_on(async move {
            let intake = tokio::spawn(intake);
            let committer = tokio::spawn(committer);
            let _ = intake.await;
            let _ = committer.await;
        });
        // Abandoned commits on a hung store are not waited for: what they carried is journaled.
        runtime.shutdown_timeout(Duration::from_millis(200));
        let _ = done_tx.send(());
    });
    match spawned {
        Ok(_) => Ok(Running::Thread { done }),
        Err(err) => {
            tracing::warn!(error = %err, "cannot start the click pipeline's thread; it shares the redirect workers");
            let taken = work.lock().ok().and_then(|mut w| w.take());
            Err(taken.expect("the thread never ran, so the work is still here"))
        }
    }
}

impl Pipeline {
    /// Starts both tasks; returns the hot path's [`Capture`] handle and the pipeline.
    pub fn start(
        store: SharedStore,
        rules: Arc<Rules>,
        sink: Arc<dyn EventSink>,
        journal: Option<Arc<Journal>>,
        settings: Settings,
    ) -> (Capture, Self) {
        let (tx, rx) = mpsc::channel(settings.capture_capacity.max(1));
        let (commit_tx, commit_rx) = mpsc::channel(settings.commit_queue.max(1));
        let stop = CancellationToken::new();
        let deadline = Arc::new(OnceLock::new());
        let settings = Arc::new(settings);
        let health = Arc::new(Health::default());
        metrics::gauge!("linkhit_store_healthy").set(1.0);
        let own_thread = settings.own_thread;
        let spare = Arc::new(Spare::default());
        let handover = own_thread.then(|| Arc::new(Handover::default()));
        let dropped = Arc::new(Dropped::default());
        let (spill, writer) =
            spill::channel(journal.clone(), spill::linger(settings.flush_interval), Arc::clone(&dropped));
        let intake = intake::run(
            intake::Intake {
                spill,
                handover: handover.clone(),
                spare: Arc::clone(&spare),
                rx,
                commit_tx,
                classifier: Classifier::new(rules, settings.classifier_memo),
                journal: journal.clone(),
                settings: Arc::clone(&settings),
                health: Arc::clone(&health),
                ids: BatchIds::new(),
                stop: stop.clone(),
                sweeps: Sweeps::new(settings.sweep, settings.sweep_capacity),
                corrections: Vec::new(),
                last_ip: None,
            },
            writer,
        );
        let committer = committer::Committer {
            store,
            sink,
            journal,
            settings,
            health,
            stop: stop.clone(),
            deadline: Arc::clone(&deadline),
            in_doubt: Vec::new(),
            dropped,
            spare,
            slowest: Duration::ZERO,
        }
        .run(commit_rx);
        let shared =
            |(intake, committer)| Running::Shared { intake: tokio::spawn(intake), committer: tokio::spawn(committer) };
        let (capture, running) = match handover {
            Some(handover) => match start_thread(intake, committer) {
                Ok(running) => (Capture::with_handover(tx, handover), running),
                Err(tasks) => (Capture::new(Some(tx)), shared(tasks)),
            },
            None => (Capture::new(Some(tx)), shared((intake, committer))),
        };
        (capture, Self { stop, deadline, running })
    }

    /// Flushes everything captured — counted if the store takes it before `deadline`, journaled
    /// otherwise — and stops. Call after the server stopped accepting requests.
    pub async fn shutdown(self, deadline: Instant) {
        let _ = self.deadline.set(deadline);
        self.stop.cancel();
        match self.running {
            Running::Shared { intake, committer } => {
                let _ = intake.await;
                let _ = committer.await;
            }
            Running::Thread { done } => {
                let _ = done.await;
            }
        }
    }
}

/// A batch on its way to the journal, with when its counting was first attempted (`None`: never).
pub(crate) type Pending = (Batch, Option<DateTime<Utc>>);

/// Writes batches to the journal (on a blocking thread), all or nothing. On refusal (no journal, full,
/// I/O error) the batches come back with the reason.
async fn journal(journal: Option<&Arc<Journal>>, batches: Vec<Pending>) -> Result<(), (Vec<Pending>, String)> {
    if batches.is_empty() {
        return Ok(());
    }
    let Some(journal) = journal else {
        return Err((batches, "no journal configured".to_owned()));
    };
    let journal = Arc::clone(journal);
    let written = tokio::task::spawn_blocking(move || {
        let entries = batches.into_iter().map(|(batch, attempted_at)| Entry { batch, attempted_at }).collect();
        journal.append_owned(entries).map_err(|(err, refused)| (pending(refused), err.to_string()))
    })
    .await;
    match written {
        Ok(result) => result,
        Err(err) => Err((Vec::new(), format!("the journal writer failed: {err}"))),
    }
}

/// Journal entries back as batches on their way to the journal.
fn pending(entries: Vec<Entry>) -> Vec<Pending> {
    entries.into_iter().map(|e| (e.batch, e.attempted_at)).collect()
}

/// Drops batches that were never attempted (so they are certainly not counted) with a metric and a log
/// line: `counted == answered − dropped` stays exact. Their human hits are noted in `dropped`, so that
/// later corrections of them are discarded. The verdict corrections they carry are lost: their hits
/// stay counted as human (`linkhit_corrections_inexact_total{why="dropped"}`).
fn drop_unattempted(batches: &[Pending], why: &str, dropped: &Dropped) {
    for (batch, _) in batches {
        dropped.note(batch);
    }
    let hits: usize = batches.iter().map(|(b, _)| b.clicks.len()).sum();
    let corrections: usize = batches.iter().map(|(b, _)| b.corrections.len()).sum();
    if hits > 0 {
        metrics::counter!("linkhit_hits_dropped_total", "stage" => "journal").increment(hits as u64);
        tracing::error!(hits, reason = %why, "dropping captured hits: the store does not take them and the journal cannot hold them");
    }
    if corrections > 0 {
        metrics::counter!("linkhit_corrections_inexact_total", "why" => "dropped").increment(corrections as u64);
        tracing::error!(corrections, reason = %why, "dropping verdict corrections: their hits stay counted as human");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_batch_buffers_are_filled_again() {
        let spare = Spare::default();
        let first = spare.take(250);
        assert!(first.capacity() >= 250);
        let buffer = first.as_ptr();
        spare.give(first);
        let again = spare.take(250);
        assert_eq!(again.as_ptr(), buffer, "the same buffer, not a fresh allocation");
        assert!(again.is_empty());
        spare.give(Vec::with_capacity(1));
        assert!(spare.take(250).capacity() >= 250, "a small recycled buffer is grown to the batch size");
        for _ in 0..2 * SPARE_BUFFERS {
            spare.give(Vec::with_capacity(250));
        }
        assert_eq!(spare.0.lock().map(|s| s.len()).unwrap_or(0), SPARE_BUFFERS, "bounded: extra buffers are freed");
    }
}
