//! The spill journal: classified clicks that could not be counted yet (the store is down and the
//! in-memory commit queue is full), written as JSON lines to segment files in a directory, replayed
//! after the store recovers and at start-up.
//!
//! Guarantees: a segment is deleted only after every click in it was counted; clicks of a segment whose
//! replay failed part-way are written back to a new segment before the old one is deleted, so a replay
//! counts each click once. (A crash *during* a replay can count the batches replayed before the crash
//! twice: the store's counters have no per-click idempotency key.) A torn last line, left by a crash
//! mid-append, is skipped and counted as `linkhit_journal_corrupt_lines_total`.
//!
//! Blocking file I/O: callers run these methods on `spawn_blocking` threads, never on the hot path.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::ClickRecord;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal is full ({limit} bytes)")]
    Full { limit: u64 },
    #[error("journal I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    seq: AtomicU64,
}

struct State {
    /// The segment currently appended to.
    active: Option<(PathBuf, File)>,
    /// Bytes in all segments of the directory.
    bytes: u64,
}

impl Journal {
    /// Opens (creating) the journal directory and accounts for segments left by a previous run.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, JournalError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let journal =
            Self { dir, max_bytes, state: Mutex::new(State { active: None, bytes: 0 }), seq: AtomicU64::new(0) };
        let bytes = journal.segments()?.iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
        journal.lock().bytes = bytes;
        metrics::gauge!("linkhit_journal_bytes").set(bytes as f64);
        Ok(journal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends clicks to the active segment and syncs it to disk. All or nothing: a batch that would
    /// exceed the size limit is refused whole.
    pub fn append(&self, clicks: &[ClickRecord]) -> Result<(), JournalError> {
        let mut buf = Vec::with_capacity(clicks.len() * 256);
        for click in clicks {
            serde_json::to_writer(&mut buf, click).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut state = self.lock();
        if state.bytes + buf.len() as u64 > self.max_bytes {
            return Err(JournalError::Full { limit: self.max_bytes });
        }
        if state.active.is_none() {
            let path = self.dir.join(format!(
                "clicks-{}-{:06}.jsonl",
                chrono::Utc::now().timestamp_millis(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            ));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            state.active = Some((path, file));
        }
        let (_, file) = state.active.as_mut().expect("just opened");
        file.write_all(&buf)?;
        file.sync_data()?;
        state.bytes += buf.len() as u64;
        metrics::gauge!("linkhit_journal_bytes").set(state.bytes as f64);
        metrics::counter!("linkhit_journal_spilled_total").increment(clicks.len() as u64);
        Ok(())
    }

    /// Whether any segment waits for replay.
    pub fn is_empty(&self) -> bool {
        self.lock().bytes == 0
    }

    /// Closes the active segment and returns every segment, oldest first, for replay.
    pub fn take_segments(&self) -> Result<Vec<PathBuf>, JournalError> {
        self.lock().active = None;
        self.segments()
    }

    fn segments(&self) -> Result<Vec<PathBuf>, JournalError> {
        let mut segments: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        segments.sort();
        Ok(segments)
    }

    /// Reads a segment. Unparsable lines (a torn write) are skipped and counted.
    pub fn read(path: &Path) -> Result<Vec<ClickRecord>, JournalError> {
        let mut clicks = Vec::new();
        for line in BufReader::new(File::open(path)?).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(click) => clicks.push(click),
                Err(err) => {
                    metrics::counter!("linkhit_journal_corrupt_lines_total").increment(1);
                    tracing::warn!(path = %path.display(), error = %err, "skipping a corrupt journal line");
                }
            }
        }
        Ok(clicks)
    }

    /// Deletes a replayed segment.
    pub fn remove(&self, path: &Path) -> Result<(), JournalError> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path)?;
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(len);
        metrics::gauge!("linkhit_journal_bytes").set(state.bytes as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Class;
    use crate::model::LinkKind;

    fn click(code: &str) -> ClickRecord {
        ClickRecord {
            code: code.into(),
            workspace_id: "ws".into(),
            broadcast_id: None,
            recipient: None,
            kind: LinkKind::Redirect,
            at: chrono::Utc::now(),
            class: Class::Human,
            reason: "browser:Safari".into(),
            method: "GET".into(),
            user_agent: Some("UA".into()),
            ip: Some("203.0.113.0".into()),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("linkhit-journal-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn append_take_read_remove() {
        let dir = temp_dir("basic");
        let journal = Journal::open(&dir, 1 << 20).unwrap();
        assert!(journal.is_empty());
        journal.append(&[click("a"), click("b")]).unwrap();
        journal.append(&[click("c")]).unwrap();
        assert!(!journal.is_empty());
        let segments = journal.take_segments().unwrap();
        assert_eq!(segments.len(), 1);
        let read = Journal::read(&segments[0]).unwrap();
        assert_eq!(read.iter().map(|c| c.code.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        // Appends after a take go to a new segment.
        journal.append(&[click("d")]).unwrap();
        journal.remove(&segments[0]).unwrap();
        let rest = journal.take_segments().unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(Journal::read(&rest[0]).unwrap()[0].code, "d");
        // A reopened journal sees what is left.
        drop(journal);
        let reopened = Journal::open(&dir, 1 << 20).unwrap();
        assert!(!reopened.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn size_limit_refuses_whole_batches() {
        let dir = temp_dir("limit");
        let journal = Journal::open(&dir, 600).unwrap();
        journal.append(&[click("a")]).unwrap();
        assert!(matches!(journal.append(&[click("b"), click("c"), click("d")]), Err(JournalError::Full { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_lines_are_skipped() {
        let dir = temp_dir("torn");
        let journal = Journal::open(&dir, 1 << 20).unwrap();
        journal.append(&[click("a")]).unwrap();
        let segment = journal.take_segments().unwrap().remove(0);
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(b"{\"code\":\"b\",\"work").unwrap();
        let read = Journal::read(&segment).unwrap();
        assert_eq!(read.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
