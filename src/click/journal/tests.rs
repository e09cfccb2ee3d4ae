//! The journal's unit tests: appends, replay markers, torn lines, the mirror, line encoding.

use super::*;
use crate::model::{Class, LinkKind};

/// A human hit on `code` (shared by the click pipeline's tests).
pub(crate) fn click(code: &str) -> ClickRecord {
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
        bot_slot: None,
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

/// A clock stepped back after a restart names a new segment like one an earlier run left: the new
/// segment never goes into that file. (Appended to it, the file would hold the earlier run's batches
/// and this one's, and the replay — reading this process's segments from memory — would skip the
/// earlier ones.) The names this process is about to choose, for the next two seconds, are taken by
/// such files; every earlier batch is still read, and the new one once.
#[test]
fn a_new_segment_never_opens_an_earlier_runs_file() {
    let scratch = temp_dir("collide-earlier");
    let earlier = Journal::open(&scratch, 1 << 20).unwrap();
    earlier.append(&[entry(&batch("earlier", &["a"]))]).unwrap();
    let content = fs::read(&earlier.take_segments().unwrap()[0]).unwrap();
    drop(earlier);
    let dir = temp_dir("collide");
    fs::create_dir_all(&dir).unwrap();
    let now = Utc::now().timestamp_millis();
    for ms in now..now + 2_000 {
        fs::write(dir.join(format!("batches-{ms}-000000.jsonl")), &content).unwrap();
    }
    let journal = Journal::open(&dir, 1 << 30).unwrap();
    journal.append_owned(vec![owned(batch("new", &["b"]))]).unwrap();
    let segments = journal.take_segments().unwrap();
    assert_eq!(segments.len(), 2_001, "a segment of its own");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for segment in &segments {
        for e in journal.read_segment(segment).unwrap().entries {
            *seen.entry(e.batch.id).or_default() += 1;
        }
    }
    assert_eq!(seen.get("earlier"), Some(&2_000), "every earlier run's batch");
    assert_eq!(seen.get("new"), Some(&1));
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&scratch);
}

/// The clock steps back an hour while the process runs (NTP): the next segment still sorts after the
/// last one, so the replay goes in the order the batches were written.
#[test]
fn segments_sort_in_the_order_written_when_the_clock_steps_back() {
    let dir = temp_dir("clock");
    let mut journal = Journal::open(&dir, 1 << 20).unwrap();
    journal.clock = || Utc::now().timestamp_millis() + 3_600_000;
    for id in ["first", "second", "third"] {
        journal.append_owned(vec![owned(batch(id, &["a"]))]).unwrap();
        journal.lock().active = None; // each in a segment of its own
        journal.clock = || Utc::now().timestamp_millis(); // stepped back an hour
    }
    let segments = journal.take_segments().unwrap();
    assert_eq!(segments.len(), 3);
    let order: Vec<String> =
        segments.iter().flat_map(|s| journal.read_segment(s).unwrap().entries).map(|e| e.batch.id).collect();
    assert_eq!(order, ["first", "second", "third"]);
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
