//! The click journal: batches that are not counted yet, on disk, so that a Redis outage, a slow commit,
//! a shutdown or a crash neither loses nor double-counts them.
//!
//! Layout of the directory (`LINKHIT_JOURNAL_DIR`):
//! - `batches-<unix ms>-<seq>.jsonl`: segments, one [`Entry`] per line (a batch, and when its counting
//!   was first attempted, if ever). Appends go to the active segment; replay takes closed segments.
//! - `<segment>.state`: what replay did with a segment's batches: `A <batch id> <unix ms>` before an
//!   attempt to count one, `D <batch id>` once it is counted and its events are queued. Appended and
//!   fsynced a group at a time, and only whole, well-formed lines are read, so a crash in the middle
//!   of a replay leaves a record that never claims more than was done: at worst a group's untried
//!   batches are marked attempted, and its counted ones lack their `D` (their guards, not yet
//!   released, answer for them).
//! - `clicks-*.jsonl` from earlier versions (one click per line) are read as batches with ids derived
//!   from the file name and line, so their replay is idempotent too.
//! - `.lock`: held (`flock`) by the one process using the directory.
//!
//! Why this cannot count twice: a batch is counted idempotently by its id (`Store::record_batch`): the
//! store keeps a guard per batch until the batch is released, which happens only after its `D` marker
//! is on disk (or, for batches that never reached the journal, after counting and queueing its events).
//! A batch whose counting was attempted (an `attempted_at` in its entry or an `A` marker) is *in doubt*:
//! only the store's guard knows whether it counted, so it is replayed only while its guard can still
//! exist (`LINKHIT_COMMIT_GUARD_TTL` after the attempt); past that it is dropped with
//! `linkhit_hits_dropped_total{stage="in_doubt_expired"}` and a log line rather than risk a second count.
//!
//! Appends are all-or-nothing: a batch that would pass the size limit is refused whole, and a write that
//! fails part-way (a full disk) is cut back to the previous length, so no half line stays behind.
//!
//! Blocking file I/O: callers run these methods on `spawn_blocking` threads, never on the hot path.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Batch, ClickRecord, Correction, EscapedTexts};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal is full ({limit} bytes)")]
    Full { limit: u64 },
    #[error("journal directory {} cannot be used: {source}", dir.display())]
    Unusable { dir: PathBuf, source: std::io::Error },
    #[error("journal directory {} is used by another linkhit process", dir.display())]
    Locked { dir: PathBuf },
    #[error("journal I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// One journaled batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub batch: Batch,
    /// When counting it was first attempted (`None`: never; counting it cannot count twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempted_at: Option<DateTime<Utc>>,
}

/// One batch to journal, borrowed (serializes as an [`Entry`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EntryRef<'a> {
    pub batch: &'a Batch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempted_at: Option<DateTime<Utc>>,
}

/// An [`Entry`] as [`Journal::encode`] writes it: the same fields, the clicks as
/// [`ClickRecord::journal_ref`] writes them.
#[derive(Serialize)]
struct EntryLine<'a> {
    batch: BatchLine<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempted_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct BatchLine<'a> {
    id: &'a str,
    clicks: ClicksLine<'a>,
    #[serde(skip_serializing_if = "<[Correction]>::is_empty")]
    corrections: &'a [Correction],
}

/// A batch's clicks with the texts they share, escaped once.
struct ClicksLine<'a>(&'a [ClickRecord], &'a EscapedTexts);

impl Serialize for ClicksLine<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|c| c.journal_ref(self.1)))
    }
}

/// A segment as read for replay.
#[derive(Debug, Default)]
pub struct Segment {
    pub entries: Vec<Entry>,
    /// Batches already counted (`D` markers).
    pub done: HashSet<String>,
    /// Latest replay attempt per batch (`A` markers).
    pub attempted: HashMap<String, DateTime<Utc>>,
}

/// What ends a torn marker line before the next group of markers: no batch id holds a tab.
const TORN: &str = "\t#torn\n";

/// Hits per legacy batch when reading `clicks-*.jsonl` segments of earlier versions.
const LEGACY_BATCH: usize = 1000;

pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
    /// Hits kept in memory as the segments' mirrors, at most ([`MIRROR_HITS`]).
    mirror_limit: usize,
    state: Mutex<State>,
    /// `State::bytes`, readable without the lock ([`Self::is_empty`]): the lock is held through a
    /// write and its sync, and the click thread asks whether the journal is empty every second.
    bytes: AtomicU64,
    seq: AtomicU64,
    /// The time in the last segment's name (ms since the epoch): names never go back in time.
    last_ms: AtomicI64,
    /// The wall clock (ms since the epoch), for segment names; a test steps it back.
    clock: fn() -> i64,
    /// Held for the life of the journal: one process per directory.
    _lock: File,
}

struct State {
    /// The segment currently appended to, and its length.
    active: Option<(PathBuf, File, u64)>,
    /// Bytes in all segments of the directory.
    bytes: u64,
    /// The entries this process appended to each of its segments, in the segment's order, so that a
    /// replay need not parse back what it wrote ([`Journal::read_segment`]). `None`: the segment is
    /// not wholly mirrored (the bound below was reached), so it is read from disk.
    mirrors: HashMap<PathBuf, Option<Vec<Entry>>>,
    /// Hits in `mirrors`, at most `Journal::mirror_limit`.
    mirrored_hits: usize,
}

/// Hits the journal keeps in memory besides on disk (~30 MB; two seconds of a saturated instance).
/// Beyond it, segments are parsed back from disk: slower, never different.
const MIRROR_HITS: usize = 131_072;

/// Hits in journal entries (their clicks; a batch's few corrections are not counted).
pub fn hits(entries: &[Entry]) -> usize {
    entries.iter().map(|e| e.batch.clicks.len()).sum()
}

impl Journal {
    /// Checks that `dir` can hold a journal: creates it and writes, syncs and removes a probe file.
    /// Start-up calls this before anything else so that an unusable directory stops the process instead
    /// of dropping clicks during the first outage.
    pub fn probe(dir: &Path) -> Result<(), JournalError> {
        let unusable = |source| JournalError::Unusable { dir: dir.to_owned(), source };
        fs::create_dir_all(dir).map_err(unusable)?;
        let probe = dir.join(format!(".probe-{}", std::process::id()));
        let written = File::create(&probe).and_then(|mut f| {
            f.write_all(b"probe\n")?;
            f.sync_all()
        });
        let removed = fs::remove_file(&probe);
        written.map_err(unusable)?;
        removed.map_err(unusable)?;
        Ok(())
    }

    /// Opens (creating) the journal directory, takes its lock, and accounts for segments left by a
    /// previous run.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, JournalError> {
        let dir = dir.into();
        Self::probe(&dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))
            .map_err(|source| JournalError::Unusable { dir: dir.clone(), source })?;
        if lock.try_lock().is_err() {
            return Err(JournalError::Locked { dir });
        }
        let journal = Self {
            dir,
            max_bytes,
            mirror_limit: MIRROR_HITS,
            state: Mutex::new(State { active: None, bytes: 0, mirrors: HashMap::new(), mirrored_hits: 0 }),
            bytes: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            last_ms: AtomicI64::new(0),
            clock: || Utc::now().timestamp_millis(),
            _lock: lock,
        };
        let bytes = journal.segments()?.iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
        journal.lock().bytes = bytes;
        journal.bytes.store(bytes, Ordering::Release);
        metrics::gauge!("linkhit_journal_bytes").set(bytes as f64);
        Ok(journal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends entries to the active segment and syncs it to disk. All or nothing. The segment is
    /// then read back from disk, not from memory ([`Self::append_owned`] keeps the entries).
    pub fn append(&self, entries: &[EntryRef<'_>]) -> Result<(), JournalError> {
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.batch.clicks.len() * 256 + 64).sum());
        for entry in entries {
            Self::encode(entry, &mut buf)?;
        }
        let mut state = self.lock();
        let path = self.write(&mut state, &buf, entries.iter().map(|e| e.batch.clicks.len()).sum())?;
        if let Some(mirror) = state.mirrors.get_mut(&path)
            && let Some(kept) = mirror.take()
        {
            state.mirrored_hits -= hits(&kept);
        }
        Ok(())
    }

    /// [`Self::append`], keeping the entries as the segment's mirror. Refused entries come back with
    /// the reason.
    pub fn append_owned(&self, entries: Vec<Entry>) -> Result<(), (JournalError, Vec<Entry>)> {
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.batch.clicks.len() * 256 + 64).sum());
        for entry in &entries {
            if let Err(err) =
                Self::encode(&EntryRef { batch: &entry.batch, attempted_at: entry.attempted_at }, &mut buf)
            {
                return Err((err, entries));
            }
        }
        self.append_encoded(&buf, entries)
    }

    /// An entry as the journal's line, appended to `buf` (for [`Self::append_encoded`]): a writer can
    /// encode batches as they come and write them together.
    pub fn encode(entry: &EntryRef<'_>, buf: &mut Vec<u8>) -> Result<(), JournalError> {
        let mut texts = EscapedTexts::default();
        for click in &entry.batch.clicks {
            click.learn_journal_texts(&mut texts);
        }
        let line = EntryLine {
            batch: BatchLine {
                id: &entry.batch.id,
                clicks: ClicksLine(&entry.batch.clicks, &texts),
                corrections: &entry.batch.corrections,
            },
            attempted_at: entry.attempted_at,
        };
        serde_json::to_writer(&mut *buf, &line).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        Ok(())
    }

    /// Appends the lines [`Self::encode`] made of `entries` (in their order) to the active segment and
    /// syncs it to disk, keeping the entries as the segment's mirror (up to [`MIRROR_HITS`]), so that
    /// its replay in this process need not parse them back. All or nothing: refused entries come back
    /// with the reason.
    pub fn append_encoded(&self, buf: &[u8], entries: Vec<Entry>) -> Result<(), (JournalError, Vec<Entry>)> {
        let mut guard = self.lock();
        let hits = hits(&entries);
        let state = &mut *guard;
        if state.mirrored_hits + hits > self.mirror_limit
            && let Some((active, _, _)) = &state.active
            && state.mirrors.get(active).is_some_and(Option::is_some)
        {
            // Over the bound: the mirrored segment is closed whole (its copy stays good), and the
            // next one, unmirrored, is read from disk. Dropping the copy instead would free up to the
            // whole bound at once, under this lock.
            state.active = None;
        }
        let path = match self.write(state, buf, hits) {
            Ok(path) => path,
            Err(err) => return Err((err, entries)),
        };
        if let Some(Some(kept)) = state.mirrors.get_mut(&path) {
            kept.extend(entries);
            state.mirrored_hits += hits;
        }
        Ok(())
    }

    /// Writes whole lines (`hits` hits) to the active segment, opening one if needed, and syncs it;
    /// the segment's path. All or nothing.
    fn write(&self, state: &mut State, buf: &[u8], hits: usize) -> Result<PathBuf, JournalError> {
        if state.bytes + buf.len() as u64 > self.max_bytes {
            return Err(JournalError::Full { limit: self.max_bytes });
        }
        if state.active.is_none() {
            let (path, file) = self.new_segment()?;
            // Mirrored if its first append fits in the bound, until an append says otherwise.
            let mirrored = state.mirrored_hits + hits <= self.mirror_limit;
            state.mirrors.insert(path.clone(), mirrored.then(Vec::new));
            state.active = Some((path, file, 0));
        }
        let (path, file, len) = state.active.as_mut().expect("just opened");
        let path = path.clone();
        let started = std::time::Instant::now();
        let written = file.write_all(buf).and_then(|()| file.sync_data());
        metrics::histogram!("linkhit_journal_write_seconds").record(started.elapsed().as_secs_f64());
        if let Err(err) = written {
            // Cut a partial write back so the next append starts on a line of its own; a segment that
            // cannot even be cut back is closed (a new one is tried next time).
            if file.set_len(*len).and_then(|()| file.sync_data()).is_err() {
                state.active = None;
            }
            return Err(err.into());
        }
        *len += buf.len() as u64;
        state.bytes += buf.len() as u64;
        self.bytes.store(state.bytes, Ordering::Release);
        metrics::gauge!("linkhit_journal_bytes").set(state.bytes as f64);
        metrics::counter!("linkhit_journal_spilled_total").increment(hits as u64);
        Ok(path)
    }

    /// Creates a segment of a name no file has: a clock stepped back after a restart could name an
    /// earlier run's segment, whose batches this process's mirror does not hold. Names sort in the
    /// order this process made them (replay goes by name) even when the clock steps back while it
    /// runs: the time in a name is always past the last one's.
    fn new_segment(&self) -> Result<(PathBuf, File), JournalError> {
        loop {
            let now = (self.clock)();
            let last = self.last_ms.fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now.max(last + 1)));
            let ms = now.max(last.unwrap_or_default() + 1);
            let path = self.dir.join(format!("batches-{ms}-{:06}.jsonl", self.seq.fetch_add(1, Ordering::Relaxed)));
            match OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Whether any segment waits for replay.
    pub fn is_empty(&self) -> bool {
        self.bytes.load(Ordering::Acquire) == 0
    }

    /// Closes the active segment and returns every segment, oldest first, for replay.
    pub fn take_segments(&self) -> Result<Vec<PathBuf>, JournalError> {
        // Listed under the lock: a segment an append opens after this is not taken (it would be
        // removed after its replay while appends still went to it).
        let mut state = self.lock();
        state.active = None;
        self.segments()
    }

    fn segments(&self) -> Result<Vec<PathBuf>, JournalError> {
        let mut segments: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        // Legacy `clicks-` segments sort before `batches-` ones: they are older.
        segments.sort();
        Ok(segments)
    }

    fn state_path(segment: &Path) -> PathBuf {
        let mut name = segment.as_os_str().to_owned();
        name.push(".state");
        PathBuf::from(name)
    }

    /// Reads a segment of this journal and its replay state: what this process wrote to it from memory
    /// (its mirror, handed over once), anything else from disk ([`Self::read`]).
    pub fn read_segment(&self, path: &Path) -> Result<Segment, JournalError> {
        let mirrored = {
            let mut state = self.lock();
            match state.mirrors.remove(path) {
                Some(Some(entries)) => {
                    state.mirrored_hits -= hits(&entries);
                    Some(entries)
                }
                _ => None,
            }
        };
        match mirrored {
            Some(entries) => {
                let mut segment = Segment { entries, ..Segment::default() };
                Self::read_state(path, &mut segment)?;
                Ok(segment)
            }
            None => Self::read(path),
        }
    }

    /// Reads a segment and its replay state from disk. Unparsable lines (a torn write of a crashed
    /// process) are skipped and counted.
    pub fn read(path: &Path) -> Result<Segment, JournalError> {
        let legacy = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("clicks-"));
        let mut segment = Segment::default();
        let mut legacy_clicks: Vec<(usize, ClickRecord)> = Vec::new();
        for (n, line) in BufReader::new(File::open(path)?).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed = if legacy {
                serde_json::from_str::<ClickRecord>(&line).map(|c| legacy_clicks.push((n, c)))
            } else {
                serde_json::from_str::<Entry>(&line).map(|e| segment.entries.push(e))
            };
            if let Err(err) = parsed {
                metrics::counter!("linkhit_journal_corrupt_lines_total").increment(1);
                tracing::warn!(path = %path.display(), line = n + 1, error = %err, "skipping a corrupt journal line");
            }
        }
        if legacy {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for chunk in legacy_clicks.chunks(LEGACY_BATCH) {
                let id = format!("legacy:{name}:{}", chunk[0].0);
                // Earlier versions could have counted these before a crash: they count as attempted
                // at the segment's creation time only if a replay marker says so (below).
                let clicks = chunk.iter().map(|(_, c)| c.clone()).collect();
                segment
                    .entries
                    .push(Entry { batch: Batch { id, clicks, corrections: Vec::new() }, attempted_at: None });
            }
        }
        Self::read_state(path, &mut segment)?;
        Ok(segment)
    }

    /// Reads a segment's replay state (its `A` and `D` markers) into `segment`.
    fn read_state(path: &Path, segment: &mut Segment) -> Result<(), JournalError> {
        let state = Self::state_path(path);
        if state.exists() {
            // Only whole lines: a group of markers cut short by a crash ends in a line that could parse
            // as another batch's (`D run-12` of `D run-123`); the next group's write ends it with
            // `TORN`, which makes it name no batch.
            let text = fs::read_to_string(&state)?;
            for line in text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
                let mut parts = line.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("D"), Some(id), None) => {
                        segment.done.insert(id.to_owned());
                    }
                    (Some("A"), Some(id), Some(ms)) if parts.next().is_none() => {
                        if let Some(at) = ms.parse().ok().and_then(DateTime::from_timestamp_millis) {
                            segment.attempted.insert(id.to_owned(), at);
                        }
                    }
                    // A malformed line (see above).
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Records, durably, that replay is about to try to count `batch_ids` of `segment` (one write and
    /// one sync for them all).
    pub fn mark_attempts(&self, segment: &Path, batch_ids: &[String], at: DateTime<Utc>) -> Result<(), JournalError> {
        let ms = at.timestamp_millis();
        self.mark(segment, batch_ids.iter().map(|id| format!("A {id} {ms}\n")))
    }

    /// Records, durably, that `batch_ids` of `segment` are counted and their events are queued (one
    /// write and one sync for them all).
    pub fn mark_done(&self, segment: &Path, batch_ids: &[String]) -> Result<(), JournalError> {
        self.mark(segment, batch_ids.iter().map(|id| format!("D {id}\n")))
    }

    fn mark(&self, segment: &Path, lines: impl Iterator<Item = String>) -> Result<(), JournalError> {
        let mut text: String = lines.collect();
        if text.is_empty() {
            return Ok(());
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(Self::state_path(segment))?;
        let len = file.metadata()?.len();
        let mut last = [b'\n'];
        if len > 0 {
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, len - 1)?;
        }
        if last[0] != b'\n' {
            // A torn line (a crash cut the last group short): ended so that it names no batch (no id
            // holds a tab, and a time with one does not parse), and this group starts on a line of its
            // own. Its markers were not all written, so the guards they named were not released.
            text.insert_str(0, TORN);
        }
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        Ok(())
    }

    /// Test helper: appends go to `file` (`/dev/full`: a disk that fails every write, and cannot even
    /// cut one back) until a failure closes it.
    #[cfg(test)]
    pub(crate) fn write_to(&self, file: File) {
        self.lock().active = Some((self.dir.join("failing.jsonl"), file, 0));
    }

    /// Test helper: the entries on disk, oldest first, taken out of the journal as a replay would (read
    /// from the files, never from the mirror).
    #[cfg(test)]
    pub(crate) fn take_from_disk(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for segment in self.take_segments().unwrap() {
            entries.extend(Self::read(&segment).unwrap().entries);
            self.remove(&segment).unwrap();
        }
        entries
    }

    /// Test helper: the batch ids of [`Self::take_from_disk`].
    #[cfg(test)]
    pub(crate) fn take_ids_from_disk(&self) -> Vec<String> {
        self.take_from_disk().into_iter().map(|e| e.batch.id).collect()
    }

    /// Deletes a replayed segment and its state.
    pub fn remove(&self, path: &Path) -> Result<(), JournalError> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path)?;
        let _ = fs::remove_file(Self::state_path(path));
        let mut state = self.lock();
        if let Some(Some(entries)) = state.mirrors.remove(path) {
            state.mirrored_hits -= hits(&entries);
        }
        state.bytes = state.bytes.saturating_sub(len);
        self.bytes.store(state.bytes, Ordering::Release);
        metrics::gauge!("linkhit_journal_bytes").set(state.bytes as f64);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
