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
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// earlier run's segment, whose batches this process's mirror does not hold.
    fn new_segment(&self) -> Result<(PathBuf, File), JournalError> {
        loop {
            let path = self.dir.join(format!(
                "batches-{}-{:06}.jsonl",
                Utc::now().timestamp_millis(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            ));
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

    /// Test helper: the batch ids on disk, oldest first, taken out of the journal as a replay would
    /// (read from the files, never from the mirror).
    #[cfg(test)]
    pub(crate) fn take_ids_from_disk(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for segment in self.take_segments().unwrap() {
            ids.extend(Self::read(&segment).unwrap().entries.into_iter().map(|e| e.batch.id));
            self.remove(&segment).unwrap();
        }
        ids
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
mod tests {
    use super::*;
    use crate::model::{Class, LinkKind};

    fn click(code: &str) -> ClickRecord {
        ClickRecord {
            code: code.into(),
            workspace_id: "ws".into(),
            broadcast_id: None,
            recipient: None,
            kind: LinkKind::Redirect,
            at: Utc::now(),
            class: Class::Human,
            reason: "browser:Safari".into(),
            method: "GET".into(),
            user_agent: Some("UA".into()),
            ip: Some("203.0.113.0".into()),
            signals: None,
            click_id: None,
            folded: false,
        }
    }

    fn batch(id: &str, codes: &[&str]) -> Batch {
        Batch { id: id.into(), clicks: codes.iter().map(|c| click(c)).collect(), corrections: Vec::new() }
    }

    fn entry(b: &Batch) -> EntryRef<'_> {
        EntryRef { batch: b, attempted_at: None }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("linkhit-journal-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn ids(segment: &Segment) -> Vec<&str> {
        segment.entries.iter().map(|e| e.batch.id.as_str()).collect()
    }

    /// A journal line reads back as the very batch it was made of: texts that need escaping, shared
    /// between hits or not, the time to the nanosecond, corrections and the attempt time. Lines of
    /// earlier versions (the time as RFC 3339 text) still read.
    #[test]
    fn a_line_reads_back_as_its_batch_and_old_lines_still_read() {
        let ua: std::sync::Arc<str> = r#"Odd "agent" \ with	tab, é and 🙂"#.into();
        let at = DateTime::from_timestamp_nanos(1_795_946_400_123_456_789);
        let mut clicks: Vec<ClickRecord> = (0..3).map(|i| click(&format!("c{i}"))).collect();
        for c in &mut clicks {
            c.user_agent = Some(std::sync::Arc::clone(&ua));
            c.at = at;
        }
        clicks[1].broadcast_id = Some("b\"1".into());
        clicks[1].recipient = Some("+1555".into());
        clicks[1].signals = Some("sweep:3_recipients".into());
        clicks[1].click_id = Some("ck_\u{7}".into());
        clicks[2].folded = true;
        clicks[2].user_agent = None;
        let batch = Batch {
            id: "run-7".into(),
            clicks,
            corrections: vec![Correction { click: click("c0"), event_id: "run-6:0".into() }],
        };
        let attempted_at = Some(DateTime::from_timestamp_millis(1_795_946_400_000).unwrap());
        let mut line = Vec::new();
        Journal::encode(&EntryRef { batch: &batch, attempted_at }, &mut line).unwrap();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains(r#""at":1795946400123456789"#), "the time as nanoseconds: {text}");
        let back: Entry = serde_json::from_str(text).unwrap();
        assert_eq!(back, Entry { batch: batch.clone(), attempted_at });
        // As earlier versions wrote it: the records' own serialization.
        let old = serde_json::to_string(&Entry { batch: batch.clone(), attempted_at: None }).unwrap();
        assert!(old.contains(r#""at":"2026-11-29T"#), "{old}");
        assert_eq!(serde_json::from_str::<Entry>(&old).unwrap().batch, batch);
    }

    fn owned(b: Batch) -> Entry {
        Entry { batch: b, attempted_at: None }
    }

    /// A segment this process wrote is replayed from memory: what it appended, in order, with the
    /// segment's markers — even when the file was since damaged, which shows where it came from. Handed
    /// over once; a segment with a borrowed append, or over the mirror's bound, is read from disk.
    #[test]
    fn segments_written_here_are_read_from_memory_within_the_bound() {
        let dir = temp_dir("mirror");
        let mut journal = Journal::open(&dir, 1 << 20).unwrap();
        journal.mirror_limit = 4;
        journal.append_owned(vec![owned(batch("b1", &["a", "b"]))]).unwrap();
        journal.append_owned(vec![owned(batch("b2", &["c"])), owned(batch("b3", &["d"]))]).unwrap();
        let segments = journal.take_segments().unwrap();
        assert_eq!(segments.len(), 1);
        let on_disk = Journal::read(&segments[0]).unwrap();
        assert_eq!(ids(&on_disk), ["b1", "b2", "b3"]);
        journal.mark_done(&segments[0], &["b1".to_owned()]).unwrap();
        fs::write(&segments[0], b"").unwrap();
        let mirrored = journal.read_segment(&segments[0]).unwrap();
        assert_eq!(mirrored.entries, on_disk.entries, "the same entries, from memory");
        assert!(mirrored.done.contains("b1") && !mirrored.done.contains("b2"), "with the segment's markers");
        assert!(journal.read_segment(&segments[0]).unwrap().entries.is_empty(), "handed over once, then disk");
        journal.remove(&segments[0]).unwrap();
        assert_eq!(journal.lock().mirrored_hits, 0);

        // A borrowed append: the segment is read from disk.
        journal.append_owned(vec![owned(batch("b4", &["e"]))]).unwrap();
        journal.append(&[entry(&batch("b5", &["f"]))]).unwrap();
        let segment = journal.take_segments().unwrap().remove(0);
        fs::write(&segment, b"").unwrap();
        assert!(journal.read_segment(&segment).unwrap().entries.is_empty(), "read from disk");
        journal.remove(&segment).unwrap();

        // Past the bound (4 hits): the mirrored segment is closed whole, and what follows goes to a
        // segment read from disk.
        journal.append_owned(vec![owned(batch("b6", &["a", "b", "c"]))]).unwrap();
        journal.append_owned(vec![owned(batch("b7", &["d", "e"]))]).unwrap();
        journal.append_owned(vec![owned(batch("b8", &["f"]))]).unwrap();
        assert_eq!(journal.lock().mirrored_hits, 3);
        let segments = journal.take_segments().unwrap();
        assert_eq!(segments.len(), 2);
        for segment in &segments {
            fs::write(segment, b"").unwrap();
        }
        assert_eq!(ids(&journal.read_segment(&segments[0]).unwrap()), ["b6"], "from memory");
        assert!(journal.read_segment(&segments[1]).unwrap().entries.is_empty(), "read from disk");
        assert_eq!(journal.lock().mirrored_hits, 0);
        for segment in &segments {
            journal.remove(segment).unwrap();
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn append_take_read_mark_remove() {
        let dir = temp_dir("basic");
        let journal = Journal::open(&dir, 1 << 20).unwrap();
        assert!(journal.is_empty());
        journal.append(&[entry(&batch("b1", &["a", "b"]))]).unwrap();
        journal.append(&[entry(&batch("b2", &["c"]))]).unwrap();
        let segments = journal.take_segments().unwrap();
        assert_eq!(segments.len(), 1);
        let read = Journal::read(&segments[0]).unwrap();
        assert_eq!(ids(&read), ["b1", "b2"]);
        assert_eq!(read.entries[0].batch.clicks.len(), 2);
        // Replay state survives a re-read.
        let now = Utc::now();
        journal.mark_attempts(&segments[0], &["b1".to_owned(), "b2".to_owned()], now).unwrap();
        journal.mark_done(&segments[0], &["b1".to_owned()]).unwrap();
        journal.mark_done(&segments[0], &[]).unwrap();
        let read = Journal::read(&segments[0]).unwrap();
        assert!(read.done.contains("b1") && !read.done.contains("b2"));
        for id in ["b1", "b2"] {
            assert_eq!(read.attempted.get(id).map(|t| t.timestamp_millis()), Some(now.timestamp_millis()));
        }
        // Groups of markers cut short (a crash): a torn line marks nothing, not even a batch whose id
        // is a prefix of the torn one, and the next group's markers are read whole.
        let state = Journal::state_path(&segments[0]);
        for torn in ["D b", "A b2 17", "D"] {
            fs::OpenOptions::new().append(true).open(&state).unwrap().write_all(torn.as_bytes()).unwrap();
            let read = Journal::read(&segments[0]).unwrap();
            assert!(!read.done.contains("b") && !read.done.contains("b2"), "{torn}: an unterminated line is not read");
            journal.mark_done(&segments[0], &["b9".to_owned()]).unwrap();
            let read = Journal::read(&segments[0]).unwrap();
            assert!(read.done.contains("b9") && !read.done.contains("b"), "{torn}: the next group is read whole");
            assert_eq!(read.attempted.get("b2").map(|t| t.timestamp_millis()), Some(now.timestamp_millis()));
        }
        // Appends after a take go to a new segment.
        journal.append(&[entry(&batch("b3", &["d"]))]).unwrap();
        journal.remove(&segments[0]).unwrap();
        assert!(!Journal::state_path(&segments[0]).exists());
        let rest = journal.take_segments().unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(ids(&Journal::read(&rest[0]).unwrap()), ["b3"]);
        // A reopened journal sees what is left.
        drop(journal);
        let reopened = Journal::open(&dir, 1 << 20).unwrap();
        assert!(!reopened.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_process_per_directory() {
        let dir = temp_dir("lock");
        let first = Journal::open(&dir, 1 << 20).unwrap();
        assert!(matches!(Journal::open(&dir, 1 << 20), Err(JournalError::Locked { .. })));
        drop(first);
        assert!(Journal::open(&dir, 1 << 20).is_ok(), "the lock dies with its holder");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unusable_directory_is_refused_at_open() {
        let dir = temp_dir("unusable");
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        fs::write(&dir, b"a file where the directory should be").unwrap();
        let err = Journal::open(dir.join("journal"), 1 << 20).err().expect("refused");
        assert!(matches!(err, JournalError::Unusable { .. }), "{err}");
        fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn size_limit_refuses_whole_batches() {
        let dir = temp_dir("limit");
        let journal = Journal::open(&dir, 700).unwrap();
        journal.append(&[entry(&batch("b1", &["a"]))]).unwrap();
        assert!(matches!(journal.append(&[entry(&batch("b2", &["b", "c", "d"]))]), Err(JournalError::Full { .. })));
        let segment = journal.take_segments().unwrap().remove(0);
        assert_eq!(ids(&Journal::read(&segment).unwrap()), ["b1"], "nothing of the refused batch was written");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_lines_are_skipped_and_legacy_segments_read_as_batches() {
        let dir = temp_dir("torn");
        let journal = Journal::open(&dir, 1 << 20).unwrap();
        journal.append(&[entry(&batch("b1", &["a"]))]).unwrap();
        let segment = journal.take_segments().unwrap().remove(0);
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(b"{\"batch\":{\"id\":\"b2\",\"cli").unwrap();
        assert_eq!(ids(&Journal::read(&segment).unwrap()), ["b1"]);
        let legacy = dir.join("clicks-1-000000.jsonl");
        let lines: String = ["x", "y"].iter().map(|c| serde_json::to_string(&click(c)).unwrap() + "\n").collect();
        fs::write(&legacy, lines).unwrap();
        let read = Journal::read(&legacy).unwrap();
        assert_eq!(ids(&read), ["legacy:clicks-1-000000.jsonl:0"]);
        assert_eq!(read.entries[0].batch.clicks.len(), 2);
        assert_eq!(ids(&Journal::read(&legacy).unwrap()), ids(&read), "legacy ids are stable across reads");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Appends racing a replay that takes, reads and removes segments: every batch appended is read by
    /// exactly one take. (An earlier build listed the directory after letting go of the lock, so a
    /// segment opened by an append in between was taken, and removed, while appends still went to it.)
    #[test]
    fn appends_racing_takes_lose_nothing() {
        let dir = temp_dir("race");
        let journal = std::sync::Arc::new(Journal::open(&dir, 1 << 30).unwrap());
        const BATCHES: usize = 3000;
        let appender = {
            let journal = std::sync::Arc::clone(&journal);
            std::thread::spawn(move || {
                for n in 0..BATCHES {
                    journal.append(&[entry(&batch(&format!("b{n}"), &["a"]))]).unwrap();
                }
            })
        };
        let mut seen = Vec::new();
        let take = |seen: &mut Vec<String>| {
            for segment in journal.take_segments().unwrap() {
                seen.extend(Journal::read(&segment).unwrap().entries.into_iter().map(|e| e.batch.id));
                journal.remove(&segment).unwrap();
            }
        };
        while !appender.is_finished() {
            take(&mut seen);
        }
        appender.join().unwrap();
        take(&mut seen);
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!((seen.len(), unique.len()), (BATCHES, BATCHES), "every batch read once");
        assert!(journal.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
