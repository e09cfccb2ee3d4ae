//! Intake's way to the journal: a writer task that appends batches in groups, one write and one sync
//! per group (group commit).
//!
//! Before, intake appended and synced each batch itself and waited for the sync: with the store
//! unhealthy at saturation that was one `fdatasync` per 250 hits, ~350 a second, and the sync path
//! (a virtio notification each) was ~18 % of the click thread's work (docs/PERFORMANCE.md, session 13).
//! Handing batches to a writer alone changed nothing: a sync takes less time than intake takes to fill
//! a batch, so every group held one batch. The writer therefore lingers: a group is written when it
//! holds [`GROUP`] batches, or when its oldest hit is [`linger`] old (a quarter of the flush interval),
//! or at shutdown. A batch sealed by the flush interval (its oldest hit already that old) is written at
//! once. So what a crash may lose stays within the flush interval that bounded it before.
//!
//! Bound and overflow: at most [`QUEUE`] batches wait for the writer (more than a group, so a lingering
//! writer never makes intake wait), and [`GROUP`] more are in the group being written: 80 batches in
//! all, ~6 MB at the default batch. When that many wait (a disk slower than the traffic), intake waits
//! for room, as it waited for each write before; the capture channel in front of it has its own bound
//! and drop policy.
//!
//! Order: batches reach the journal in the order intake sealed them. [`Spill::waiting`] counts those
//! not yet on disk, so that a batch carrying corrections can queue behind them (`Intake::hand_off`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Dropped;
use crate::click::journal::{Entry, EntryRef, Journal, JournalError, hits};
use crate::model::Batch;

/// Batches waiting for the writer, at most (~5 MB of records at the default batch of 250).
pub(super) const QUEUE: usize = 64;

/// Batches written together, at most: 4,000 hits at the default batch size, ~40 ms of a saturated
/// click thread.
pub(super) const GROUP: usize = 16;

/// The lines' buffer kept between groups, at most (a group at the default batch is ~1 MB).
const KEPT_BYTES: usize = 4 << 20;

/// How old a group's oldest hit may grow before the group is written: a quarter of the flush interval
/// (50 ms by default), so that a hit is on disk well within the flush interval of its capture.
pub(super) fn linger(flush_interval: Duration) -> Duration {
    flush_interval / 4
}

/// Intake's end: hands batches to the writer.
pub(super) struct Spill {
    tx: mpsc::Sender<Batch>,
    waiting: Arc<AtomicUsize>,
    /// Hits dropped uncounted (by the writer, the committer): their corrections are discarded.
    pub(super) dropped: Arc<Dropped>,
}

/// The writer's end: run it as a task; it ends once the [`Spill`] is dropped and everything handed to
/// it is written (or dropped with a metric when the journal refuses it).
pub(super) struct Writer {
    rx: mpsc::Receiver<Batch>,
    journal: Option<Arc<Journal>>,
    waiting: Arc<AtomicUsize>,
    linger: Duration,
    dropped: Arc<Dropped>,
}

/// A spill and its writer, appending to `journal` in groups whose oldest hit is at most `linger` old.
/// Hits dropped on the way are noted in `dropped`.
pub(super) fn channel(journal: Option<Arc<Journal>>, linger: Duration, dropped: Arc<Dropped>) -> (Spill, Writer) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let waiting = Arc::new(AtomicUsize::new(0));
    let spill = Spill { tx, waiting: Arc::clone(&waiting), dropped: Arc::clone(&dropped) };
    (spill, Writer { rx, journal, waiting, linger, dropped })
}

/// When a group starting with `batch` is due: once its oldest hit is `linger` old.
fn due(batch: &Batch, linger: Duration) -> Instant {
    let age = batch
        .clicks
        .iter()
        .map(|c| c.at)
        .min()
        .and_then(|oldest| (chrono::Utc::now() - oldest).to_std().ok())
        .unwrap_or(linger);
    Instant::now() + linger.saturating_sub(age)
}

impl Spill {
    /// Hands a batch nobody tried to count to the writer; waits only while [`QUEUE`] batches wait.
    pub(super) async fn send(&self, batch: Batch) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(batch)) = self.tx.send(batch).await {
            // The writer ends only after intake: not reached, but never silent.
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            super::drop_unattempted(&[(batch, None)], "the journal writer stopped", &self.dropped);
        }
    }

    /// Batches handed over and not yet on disk.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

impl Writer {
    pub(super) async fn run(mut self) {
        let Some(journal) = self.journal.take() else {
            // No journal: nothing can be kept.
            while let Some(batch) = self.rx.recv().await {
                super::drop_unattempted(&[(batch, None)], "no journal configured", &self.dropped);
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            return;
        };
        // The lines' buffer, kept from group to group: grown afresh, it was copied at every doubling and
        // its new pages zeroed (`memmove` was the click thread's top symbol).
        let mut lines = Vec::new();
        while let Some(first) = self.rx.recv().await {
            let due = due(&first, self.linger);
            let mut group = Group { lines: std::mem::take(&mut lines), ..Group::default() };
            if !group.add(first, &self.dropped) {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            while group.entries.len() < GROUP {
                match tokio::time::timeout_at(due, self.rx.recv()).await {
                    Ok(Some(batch)) => {
                        if !group.add(batch, &self.dropped) {
                            self.waiting.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    // Due, or intake is done (shutdown): write what there is.
                    Ok(None) | Err(_) => break,
                }
            }
            let n = group.entries.len();
            if n == 0 {
                // Nothing could be encoded (each dropped with the metric): no write, no empty segment.
                lines = group.lines;
                continue;
            }
            let hits = hits(&group.entries);
            metrics::histogram!("linkhit_journal_group_batches").record(n as f64);
            let journal = Arc::clone(&journal);
            let dropped = Arc::clone(&self.dropped);
            match tokio::task::spawn_blocking(move || group.write(&journal, &dropped)).await {
                Ok(mut kept) => {
                    kept.clear();
                    kept.shrink_to(KEPT_BYTES);
                    lines = kept;
                }
                Err(err) => {
                    metrics::counter!("linkhit_hits_dropped_total", "stage" => "journal").increment(hits as u64);
                    tracing::error!(error = %err, batches = n, hits, "the journal writer failed; the group's hits are lost");
                }
            }
            self.waiting.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// Batches on their way to the journal together, already encoded.
///
/// Each batch is encoded as it arrives, on the click thread, between intake's stretches (~40 µs for
/// 250 hits), so that the blocking thread only writes and syncs: encoding a whole group there held
/// linkhit's CPU for a millisecond or more at a time, next to the redirect worker.
#[derive(Default)]
struct Group {
    lines: Vec<u8>,
    /// The batches, in order, as the journal keeps them (its mirror of the segment).
    entries: Vec<Entry>,
    /// Where each entry's line is in `lines`.
    ranges: Vec<std::ops::Range<usize>>,
}

impl Group {
    /// Encodes a batch into the group; `false` if it could not be encoded (dropped with the metric).
    fn add(&mut self, batch: Batch, dropped: &Dropped) -> bool {
        let start = self.lines.len();
        match Journal::encode(&EntryRef { batch: &batch, attempted_at: None }, &mut self.lines) {
            Ok(()) => {
                self.entries.push(Entry { batch, attempted_at: None });
                self.ranges.push(start..self.lines.len());
                true
            }
            Err(err) => {
                self.lines.truncate(start);
                super::drop_unattempted(&[(batch, None)], &err.to_string(), dropped);
                false
            }
        }
    }

    /// Appends the group with one write and one sync. Appends are all or nothing: a group refused
    /// whole because it would not fit is tried one batch at a time, so that every batch that fits is
    /// kept; what is refused is dropped with a metric. A failed write is not tried again: its lines
    /// are cut back, but if even that failed they may be on disk, and a second copy would be counted
    /// twice. Gives the lines' buffer back, to be used again.
    fn write(mut self, journal: &Journal, dropped: &Dropped) -> Vec<u8> {
        self.strip(dropped);
        let Group { lines, entries, ranges } = self;
        if let Err((err, refused)) = journal.append_encoded(&lines, entries) {
            if refused.len() == 1 || !matches!(err, JournalError::Full { .. }) {
                super::drop_unattempted(&super::pending(refused), &err.to_string(), dropped);
            } else {
                for (entry, range) in refused.into_iter().zip(ranges) {
                    // A batch dropped just before may have hits this one corrects.
                    let mut one = Group::default();
                    one.entries.push(entry);
                    one.ranges.push(0..range.len());
                    one.lines.extend_from_slice(&lines[range]);
                    one.strip(dropped);
                    if one.entries.is_empty() {
                        continue;
                    }
                    if let Err((err, refused)) = journal.append_encoded(&one.lines, one.entries) {
                        super::drop_unattempted(&super::pending(refused), &err.to_string(), dropped);
                    }
                }
            }
        }
        lines
    }

    /// Takes out the corrections of hits dropped since the batches were encoded ([`Dropped`]; rare:
    /// the journal refused a batch just before), encoding again the batches that had any, and leaving
    /// out a batch left with nothing.
    fn strip(&mut self, dropped: &Dropped) {
        let mut stripped = false;
        for entry in &mut self.entries {
            stripped |= dropped.strip(&mut entry.batch.corrections) > 0;
        }
        if !stripped {
            return;
        }
        let entries = std::mem::take(&mut self.entries);
        self.lines.clear();
        self.ranges.clear();
        for entry in entries {
            if entry.batch.clicks.is_empty() && entry.batch.corrections.is_empty() {
                continue;
            }
            let start = self.lines.len();
            // It was encoded before, with more in it: this cannot fail.
            if Journal::encode(&EntryRef { batch: &entry.batch, attempted_at: None }, &mut self.lines).is_ok() {
                self.ranges.push(start..self.lines.len());
                self.entries.push(entry);
            } else {
                self.lines.truncate(start);
                super::drop_unattempted(&[(entry.batch, None)], "cannot encode", dropped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClickRecord, Correction};

    fn batch(id: &str, at: chrono::DateTime<chrono::Utc>) -> Batch {
        let click = ClickRecord { at, ..crate::click::journal::tests::click("AAAA") };
        Batch { id: id.into(), clicks: vec![click], corrections: Vec::new() }
    }

    /// Closes the spill and waits for its writer to write what it was handed and end.
    async fn close(spill: Spill, writer: tokio::task::JoinHandle<()>) {
        drop(spill);
        tokio::time::timeout(Duration::from_secs(10), writer).await.expect("the writer ends").unwrap();
    }

    async fn until_written(spill: &Spill) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while spill.waiting() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(spill.waiting(), 0, "written within 10 s");
    }

    /// A group is written when it is full, when its oldest hit is `linger` old, or when intake is
    /// done — in the order the batches were handed over — and not before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_are_written_when_full_due_or_closing_in_order() {
        let dir = std::env::temp_dir().join(format!("linkhit-spill-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let journal = Arc::new(Journal::open(&dir, 1 << 20).unwrap());
        let (spill, writer) = channel(Some(Arc::clone(&journal)), Duration::from_secs(3_600), Arc::default());
        let writer = tokio::spawn(writer.run());
        let now = chrono::Utc::now();

        // A fresh batch lingers: its group is neither full nor due.
        spill.send(batch("b0", now)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(spill.waiting(), 1, "a fresh batch waits for its group");
        assert!(journal.is_empty());

        // Fifteen more fill the group: all sixteen go to disk together, in order.
        for i in 1..GROUP {
            spill.send(batch(&format!("b{i}"), now)).await;
        }
        until_written(&spill).await;
        let expected: Vec<String> = (0..GROUP).map(|i| format!("b{i}")).collect();
        assert_eq!(journal.take_ids_from_disk(), expected);

        // A batch whose oldest hit is already `linger` old (sealed by the flush interval) is written at once.
        spill.send(batch("old", now - chrono::Duration::hours(2))).await;
        until_written(&spill).await;
        assert_eq!(journal.take_ids_from_disk(), ["old"]);

        // Intake done: what lingers is written before the writer ends.
        spill.send(batch("last", now)).await;
        close(spill, writer).await;
        assert_eq!(journal.take_ids_from_disk(), ["last"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A disk that fails a write (ENOSPC, and the partial write cannot be cut back): the group is
    /// dropped (counted in `linkhit_hits_dropped_total`) and not written again — its lines may be on
    /// disk, and a second copy would be counted twice — and the writer goes on: the next group goes to
    /// a new segment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_is_not_written_again_and_the_writer_goes_on() {
        let dir = std::env::temp_dir().join(format!("linkhit-spill-fail-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let journal = Arc::new(Journal::open(&dir, 1 << 20).unwrap());
        journal.write_to(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap());
        let (spill, writer) = channel(Some(Arc::clone(&journal)), Duration::from_secs(3_600), Arc::default());
        let writer = tokio::spawn(writer.run());
        let old = chrono::Utc::now() - chrono::Duration::hours(2);
        spill.send(batch("failed", old)).await;
        until_written(&spill).await;
        spill.send(batch("next", old)).await;
        until_written(&spill).await;
        close(spill, writer).await;
        assert_eq!(journal.take_ids_from_disk(), ["next"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A big batch the journal refuses is dropped; a small one after it, which fits, is kept without its
    /// correction of a hit of the dropped one (nothing to move: that hit was never counted) — whether
    /// it was in the same group (refused whole, then tried a batch at a time) or in the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_kept_after_a_dropped_one_loses_its_corrections_of_it() {
        for same_group in [true, false] {
            let dir =
                std::env::temp_dir().join(format!("linkhit-spill-dropped-test-{same_group}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            // Fresh hits linger (written together when the writer closes); old ones are written at once.
            let at = if same_group { chrono::Utc::now() } else { chrono::Utc::now() - chrono::Duration::hours(2) };
            let mut big = batch("big", at);
            big.clicks = vec![big.clicks[0].clone(); 20];
            let mut small = batch("small", at);
            small.corrections = vec![
                Correction { click: big.clicks[7].clone(), event_id: crate::click::emit::event_id("big", 7) },
                Correction { click: big.clicks[0].clone(), event_id: "elsewhere:0".into() },
            ];
            let size = |b: &Batch| {
                let mut line = Vec::new();
                Journal::encode(&EntryRef { batch: b, attempted_at: None }, &mut line).unwrap();
                line.len() as u64
            };
            let journal = Arc::new(Journal::open(&dir, size(&small) + 16).unwrap());
            assert!(size(&big) > size(&small) + 16);
            let (spill, writer) = channel(Some(Arc::clone(&journal)), Duration::from_secs(3_600), Arc::default());
            let writer = tokio::spawn(writer.run());
            spill.send(big).await;
            if !same_group {
                until_written(&spill).await;
            }
            spill.send(small).await;
            close(spill, writer).await;
            let kept = journal.take_from_disk();
            assert_eq!(kept.len(), 1, "same group: {same_group}");
            assert_eq!(kept[0].batch.id, "small");
            let corrections: Vec<&str> = kept[0].batch.corrections.iter().map(|c| c.event_id.as_str()).collect();
            assert_eq!(corrections, ["elsewhere:0"], "same group: {same_group}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// A group the journal refuses whole (it would not fit) is tried a batch at a time: every batch
    /// that fits is kept, only the rest is dropped (counted in `linkhit_hits_dropped_total`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_too_big_for_the_journal_keeps_what_fits() {
        let dir = std::env::temp_dir().join(format!("linkhit-spill-full-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let one = {
            let mut line = Vec::new();
            let b = batch("b00", chrono::Utc::now());
            Journal::encode(&EntryRef { batch: &b, attempted_at: None }, &mut line).unwrap();
            line.len() as u64
        };
        // Room for three batches of this size, not four.
        let journal = Arc::new(Journal::open(&dir, one * 3 + one / 2).unwrap());
        let (spill, writer) = channel(Some(Arc::clone(&journal)), Duration::from_secs(3_600), Arc::default());
        let writer = tokio::spawn(writer.run());
        for i in 0..5 {
            spill.send(batch(&format!("b{i:02}"), chrono::Utc::now())).await;
        }
        close(spill, writer).await;
        assert_eq!(journal.take_ids_from_disk(), ["b00", "b01", "b02"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
