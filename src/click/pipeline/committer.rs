//! The committer: counts batches, emits their events, releases them; decides whether the store is
//! healthy; replays the journal.
//!
//! A batch is *finished* when it is counted and its events are accepted by the sink; only then is it
//! released (the store forgets its guard). Until then it is in memory for at most one flush interval,
//! or in the journal, or — when even the journal refuses an attempted batch — in `in_doubt`, retried
//! through the store's guard (it may have counted, so it is dropped, with `linkhit_hits_in_doubt_total`,
//! only past [`MAX_IN_DOUBT`] batches or at shutdown).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Health, Pending, Settings};
use crate::click::emit::{self, EventSink};
use crate::click::journal::{Entry, Journal};
use crate::model::{Batch, ClickTally};
use crate::store::{SharedStore, StoreError};

/// How often an unhealthy store is probed (by replaying the journal).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a replayed batch may take: nothing waits in memory for it, so this can be generous.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long emitting a batch's events may take before the batch counts as unfinished.
const EMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// An in-doubt batch is replayed only this long before its guard could expire.
const GUARD_MARGIN: Duration = Duration::from_secs(3600);
/// Attempted batches kept in memory when the journal refuses them.
const MAX_IN_DOUBT: usize = 1024;
/// Batches replayed as a group: their `A` markers written with one sync before, their `D` markers with
/// one after.
const DONE_GROUP: usize = 64;

pub(super) struct Committer {
    pub store: SharedStore,
    pub sink: Arc<dyn EventSink>,
    pub journal: Option<Arc<Journal>>,
    pub settings: Arc<Settings>,
    pub health: Arc<Health>,
    pub stop: CancellationToken,
    pub deadline: Arc<OnceLock<Instant>>,
    /// Attempted, unfinished batches the journal could not take.
    pub in_doubt: Vec<Batch>,
    /// Hits dropped uncounted: their corrections are discarded.
    pub dropped: Arc<super::Dropped>,
    /// Where finished batches' buffers go back to intake.
    pub spare: Arc<super::Spare>,
    /// The longest the store took to answer a commit of the replay under way.
    pub slowest: Duration,
}

impl Committer {
    pub(super) async fn run(mut self, mut batches: mpsc::Receiver<Batch>) {
        self.health.busy(true);
        self.replay().await;
        self.health.busy(false);
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => {
                        self.health.busy(true);
                        self.commit(batch).await;
                        self.health.done(self.in_doubt.len());
                        self.health.busy(false);
                    }
                    None => break,
                },
                _ = probe.tick(), if !self.stop.is_cancelled() => {
                    if !self.health.ok() || !self.in_doubt.is_empty() || self.journal.as_ref().is_some_and(|j| !j.is_empty()) {
                        self.health.busy(true);
                        // Batches already queued first (counted, or journaled while the store is
                        // unhealthy): a replay can wait on a hung store for REPLAY_TIMEOUT, and they
                        // must not wait in memory that long.
                        while let Ok(batch) = batches.try_recv() {
                            self.commit(batch).await;
                            self.health.done(self.in_doubt.len());
                        }
                        self.replay().await;
                        self.health.in_doubt(self.in_doubt.len());
                        self.health.busy(false);
                    }
                }
            }
        }
        // Intake is done (shutdown). In-doubt batches get one last try, then the journal.
        let in_doubt = std::mem::take(&mut self.in_doubt);
        for batch in in_doubt {
            self.commit_attempted(batch).await;
        }
        if !self.in_doubt.is_empty() {
            let hits: usize = self.in_doubt.iter().map(|b| b.clicks.len()).sum();
            metrics::counter!("linkhit_hits_in_doubt_total").increment(hits as u64);
            tracing::error!(
                hits,
                "stopping with batches that may or may not have been counted (the store did not answer and the journal refused them)"
            );
        }
    }

    /// Waits for `fut` at most `wait`, and no longer once shutdown begins while it runs (a hung store
    /// must not hold the shutdown): `Err` then, as for a timeout; what it carried stays unfinished.
    async fn bounded<T>(&self, wait: Duration, fut: impl std::future::Future<Output = T>) -> Result<T, ()> {
        let started_stopping = self.stop.is_cancelled();
        tokio::select! {
            r = tokio::time::timeout(wait, fut) => r.map_err(|_| ()),
            () = self.stop.cancelled(), if !started_stopping => Err(()),
        }
    }

    /// Time left before the shutdown deadline, if shutdown began.
    fn remaining(&self) -> Option<Duration> {
        self.deadline.get().map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn past_deadline(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// The longest a commit may keep a batch only in memory: one flush interval, less near the deadline.
    fn patience(&self) -> Duration {
        let slow = self.settings.flush_interval;
        self.remaining().map_or(slow, |r| r.min(slow))
    }

    /// Counts a fresh batch, or journals it: at once when the store is unhealthy, as attempted (in
    /// doubt) when the commit fails or is slow.
    async fn commit(&mut self, mut batch: Batch) {
        // Corrections of hits dropped since the batch was sealed (the journal refused theirs).
        if self.dropped.strip(&mut batch.corrections) > 0 && batch.clicks.is_empty() && batch.corrections.is_empty() {
            return;
        }
        if !self.health.ok() || self.past_deadline() {
            self.journal_batches(vec![(batch, None)]).await;
            return;
        }
        let attempted_at = Utc::now();
        let batch = Arc::new(batch);
        let mut attempt = {
            let (store, batch, recent) = (Arc::clone(&self.store), Arc::clone(&batch), self.settings.recent_clicks);
            tokio::spawn(async move { store.record_batch(&batch, recent).await })
        };
        let outcome = tokio::time::timeout(self.patience(), &mut attempt).await;
        let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
        match outcome {
            Ok(Ok(Ok(tallies))) => {
                if self.finish(&batch, &tallies).await {
                    self.store.release_batch(&batch);
                    self.spare.give(batch.clicks);
                    return;
                }
            }
            Ok(Ok(Err(err))) => {
                metrics::counter!("linkhit_store_errors_total", "op" => "record_batch").increment(1);
                tracing::warn!(error = %err, batch = %batch.id, hits = batch.clicks.len(), "counting a batch failed; it is journaled and retried");
            }
            Ok(Err(err)) => tracing::error!(error = %err, "the counting task failed"),
            Err(_) => {
                // The call goes on in the background; whatever it did, the guard tells the replay.
                metrics::counter!("linkhit_store_errors_total", "op" => "record_batch_slow").increment(1);
                tracing::warn!(batch = %batch.id, hits = batch.clicks.len(), waited = ?self.patience(), "counting a batch is slow; it is journaled and retried");
            }
        }
        self.health.set(false);
        self.journal_batches(vec![(batch, Some(attempted_at))]).await;
    }

    /// Emits a counted batch's events. `false`: the sink refused them (the batch stays unfinished).
    async fn finish(&self, batch: &Batch, tallies: &[ClickTally]) -> bool {
        let wait = self.remaining().map_or(EMIT_TIMEOUT, |r| r.min(EMIT_TIMEOUT));
        if !batch.corrections.is_empty() {
            match self.bounded(wait, self.sink.withdraw(&batch.corrections)).await {
                Ok(Ok(_)) => {}
                _ => {
                    tracing::warn!(batch = %batch.id, "withdrawing the events of flipped hits failed; the batch is journaled and tried again");
                    return false;
                }
            }
        }
        let events = emit::events(batch, tallies);
        if events.is_empty() {
            return true;
        }
        match self.bounded(wait, self.sink.emit(events)).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, batch = %batch.id, "a counted batch's events were not accepted; it is journaled and emitted again");
                false
            }
            Err(_) => {
                tracing::warn!(batch = %batch.id, "emitting a counted batch's events timed out; it is journaled and emitted again");
                false
            }
        }
    }

    /// Journals batches; attempted ones the journal refuses stay in memory (in doubt), never-attempted
    /// ones are dropped with a metric.
    async fn journal_batches(&mut self, batches: Vec<Pending>) {
        if let Err((refused, why)) = super::journal(self.journal.as_ref(), batches).await {
            let (attempted, fresh): (Vec<Pending>, Vec<Pending>) = refused.into_iter().partition(|(_, a)| a.is_some());
            super::drop_unattempted(&fresh, &why, &self.dropped);
            for (batch, _) in attempted {
                if self.in_doubt.len() >= MAX_IN_DOUBT {
                    metrics::counter!("linkhit_hits_in_doubt_total").increment(batch.clicks.len() as u64);
                    tracing::error!(batch = %batch.id, hits = batch.clicks.len(), "too many batches in doubt: this one may or may not have been counted");
                    continue;
                }
                self.in_doubt.push(batch);
            }
        }
    }

    /// Counts a batch of the replay (through its guard), within [`REPLAY_TIMEOUT`]; notes how long the
    /// store took.
    async fn recount(&mut self, batch: &Batch) -> Result<Result<Vec<ClickTally>, StoreError>, ()> {
        let wait = self.remaining().map_or(REPLAY_TIMEOUT, |r| r.min(REPLAY_TIMEOUT));
        let started = Instant::now();
        let counted = self.bounded(wait, self.store.record_batch(batch, self.settings.recent_clicks)).await;
        self.slowest = self.slowest.max(started.elapsed());
        counted
    }

    /// Retries an attempted batch through the store's guard. `true` when finished.
    async fn commit_attempted(&mut self, batch: Batch) -> bool {
        let counted = self.recount(&batch).await;
        if let Ok(Ok(tallies)) = counted
            && self.finish(&batch, &tallies).await
        {
            self.store.release_batch(&batch);
            return true;
        }
        self.health.set(false);
        let attempted = Some(Utc::now());
        self.journal_batches(vec![(batch, attempted)]).await;
        false
    }

    /// Retries in-doubt batches, then counts every journal segment there is when it starts; marks the
    /// store healthy once they are done, if none took longer than a flush interval. Stops at the first
    /// failure (the store is unhealthy again).
    async fn replay(&mut self) {
        self.slowest = Duration::ZERO;
        if self.replay_all().await {
            // Everything the journal held when this replay began is counted, so the store takes commits
            // again — if it answered each within a flush interval. Batches journaled while it ran are on
            // disk and wait for the next probe: under steady traffic the journal is never empty here, and
            // waiting for it to be kept every hit on the journal's way for as long as the traffic lasted
            // (`tests/faults_binary.rs`, `a_store_that_answers_again_takes_commits_while_taps_go_on`). A
            // store that answers, but slower, stays unhealthy and on the journal's way
            // (`a_slow_store_stays_on_the_journal_until_it_answers_in_time`): a direct commit would outwait
            // its patience and be journaled in doubt, and Redis would receive it twice (late, then on replay,
            // answered from its guard).
            self.health.set(self.slowest <= self.settings.flush_interval);
        }
    }

    /// [`Self::replay`]'s work: `true` when everything it found is counted.
    async fn replay_all(&mut self) -> bool {
        let mut in_doubt = std::mem::take(&mut self.in_doubt).into_iter();
        while let Some(batch) = in_doubt.next() {
            if !self.commit_attempted(batch).await {
                // The store failed again: the rest stay in doubt, untried (dropping them here could
                // lose hits the store never counted).
                self.in_doubt.extend(in_doubt);
                return false;
            }
        }
        let Some(journal) = self.journal.clone() else {
            return true;
        };
        let segments = match blocking(&journal, |j| j.take_segments()).await {
            Some(Ok(segments)) => segments,
            Some(Err(err)) => {
                tracing::error!(error = %err, "cannot list journal segments");
                return false;
            }
            None => return false,
        };
        for segment in segments {
            if !self.replay_segment(&journal, segment).await {
                return false;
            }
        }
        true
    }

    /// Counts what a segment holds that is not done yet; deletes the segment when all is done.
    ///
    /// Batches are replayed in groups of up to [`DONE_GROUP`], each group's replay markers written with
    /// one sync before and one after: the `A` markers of its never-attempted batches before the first
    /// of them is tried, the `D` markers of those finished after the last, and only then are their
    /// guards released. A crash or failure part-way through a group leaves its counted batches to their
    /// guards (as a crash between counting and marking always did), and its untried ones marked as
    /// attempted: they are replayed through their guards like any in-doubt batch, within
    /// `LINKHIT_COMMIT_GUARD_TTL` − 1 h of the mark.
    async fn replay_segment(&mut self, journal: &Arc<Journal>, segment: PathBuf) -> bool {
        let path = segment.clone();
        let content = match blocking(journal, move |j| j.read_segment(&path)).await {
            Some(Ok(content)) => content,
            Some(Err(err)) => {
                tracing::error!(segment = %segment.display(), error = %err, "cannot read journal segment");
                return false;
            }
            None => return false,
        };
        let pending: Vec<&Entry> = content.entries.iter().filter(|e| !content.done.contains(&e.batch.id)).collect();
        tracing::info!(segment = %segment.display(), batches = pending.len(), "replaying journal segment");
        let first_attempt =
            |e: &Entry| [e.attempted_at, content.attempted.get(&e.batch.id).copied()].into_iter().flatten().min();
        for group in pending.chunks(DONE_GROUP) {
            let never_attempted: Vec<String> =
                group.iter().filter(|e| first_attempt(e).is_none()).map(|e| e.batch.id.clone()).collect();
            let (seg, now) = (segment.clone(), Utc::now());
            if !matches!(blocking(journal, move |j| j.mark_attempts(&seg, &never_attempted, now)).await, Some(Ok(()))) {
                tracing::error!(segment = %segment.display(), "cannot record replay attempts; replay stops");
                return false;
            }
            let mut finished = Finished::default();
            let whole = self.replay_group(group, first_attempt, &mut finished).await;
            if !self.settle(journal, &segment, &mut finished).await || !whole {
                return false;
            }
        }
        let seg = segment.clone();
        if !matches!(blocking(journal, move |j| j.remove(&seg)).await, Some(Ok(()))) {
            tracing::error!(segment = %segment.display(), "could not delete a replayed journal segment");
            return false;
        }
        true
    }

    /// Counts a group of a segment's batches in order, noting each finished (or dropped) one in
    /// `finished`. `false` when it stopped early: the store failed, or the deadline passed.
    async fn replay_group<'a>(
        &mut self,
        group: &[&'a Entry],
        first_attempt: impl Fn(&Entry) -> Option<DateTime<Utc>>,
        finished: &mut Finished<'a>,
    ) -> bool {
        let expiry = self.settings.guard_ttl.saturating_sub(GUARD_MARGIN);
        for entry in group {
            if self.past_deadline() {
                return false;
            }
            if let Some(at) = first_attempt(entry)
                && (Utc::now() - at).to_std().unwrap_or_default() >= expiry
            {
                // Its guard may be gone: replaying could count it twice. Dropped, loudly.
                let hits = entry.batch.clicks.len() as u64;
                tracing::error!(batch = %entry.batch.id, hits, attempted_at = %at, "dropping a journaled batch attempted longer ago than LINKHIT_COMMIT_GUARD_TTL: it may have been counted then");
                finished.ids.push(entry.batch.id.clone());
                finished.expired_hits += hits;
                continue;
            }
            match self.recount(&entry.batch).await {
                Ok(Ok(tallies)) if self.finish(&entry.batch, &tallies).await => {
                    finished.ids.push(entry.batch.id.clone());
                    finished.batches.push(&entry.batch);
                }
                Ok(Ok(_)) => {
                    self.health.set(false);
                    return false;
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "journal replay interrupted; it resumes when the store answers");
                    self.health.set(false);
                    return false;
                }
                Err(()) => {
                    tracing::warn!("journal replay timed out; it resumes when the store answers");
                    self.health.set(false);
                    return false;
                }
            }
        }
        true
    }

    /// Writes the `D` markers of `finished` (one sync), then releases its batches' guards and counts
    /// its hits as replayed (or dropped). `false` when the markers could not be written: the guards
    /// stay, so a later replay cannot count them again.
    async fn settle(&self, journal: &Arc<Journal>, segment: &std::path::Path, finished: &mut Finished<'_>) -> bool {
        if finished.ids.is_empty() {
            return true;
        }
        let (seg, ids) = (segment.to_owned(), std::mem::take(&mut finished.ids));
        if !matches!(blocking(journal, move |j| j.mark_done(&seg, &ids)).await, Some(Ok(()))) {
            tracing::error!(segment = %segment.display(), "cannot record replayed batches as done; replay stops");
            return false;
        }
        if finished.expired_hits > 0 {
            metrics::counter!("linkhit_hits_dropped_total", "stage" => "in_doubt_expired")
                .increment(finished.expired_hits);
        }
        for batch in finished.batches.drain(..) {
            metrics::counter!("linkhit_journal_replayed_total").increment(batch.clicks.len() as u64);
            self.store.release_batch(batch);
        }
        true
    }
}

/// Finished batches of a segment whose `D` markers are not written yet: counted and emitted ones (to
/// release once marked) and ones dropped as expired (ids and hits only).
#[derive(Default)]
struct Finished<'a> {
    ids: Vec<String>,
    batches: Vec<&'a Batch>,
    expired_hits: u64,
}

/// Runs a journal operation on a blocking thread.
async fn blocking<T: Send + 'static>(
    journal: &Arc<Journal>,
    op: impl FnOnce(&Journal) -> T + Send + 'static,
) -> Option<T> {
    let journal = Arc::clone(journal);
    tokio::task::spawn_blocking(move || op(&journal)).await.ok()
}
