//! Intake's unit tests: the ordering of corrections, the hit tally, the drain's stretches.

use super::*;
use crate::click::classify::Rules;
use crate::click::network::Networks;
use crate::click::sweep::SweepRule;
use crate::click::verdict::Timing;
use std::sync::atomic::Ordering;

fn click(code: &str) -> ClickRecord {
    ClickRecord {
        broadcast_id: Some("b1".into()),
        recipient: Some("+15550001".into()),
        ..crate::click::journal::tests::click(code)
    }
}

/// An intake over a real journal in a fresh directory named after `name`, with a healthy store and an
/// idle committer; the committer's end of its queue, the journal, and the directory (to remove).
fn intake(name: &str) -> (Intake, mpsc::Receiver<Batch>, Arc<Journal>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("linkhit-intake-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let journal = Arc::new(Journal::open(&dir, 1 << 20).unwrap());
    let (_tx, rx) = mpsc::channel(8);
    let (commit_tx, commit_rx) = mpsc::channel(8);
    let settings = Settings {
        capture_capacity: 8,
        batch_size: 250,
        flush_interval: Duration::from_millis(100),
        commit_queue: 8,
        recent_clicks: 100,
        recent_fold: Duration::ZERO,
        keep_full_ip: false,
        trusted_proxies: Vec::new(),
        classifier_memo: 16,
        guard_ttl: Duration::from_secs(3_600),
        networks: Arc::new(Networks::default()),
        timing: Timing::default(),
        sweep: SweepRule::default(),
        sweep_capacity: 16,
        hold: Duration::from_secs(10),
        own_thread: false,
    };
    let (spill, writer) =
        super::super::spill::channel(Some(Arc::clone(&journal)), Duration::from_millis(5), Arc::default());
    tokio::spawn(writer.run());
    let intake = Intake {
        spill,
        rx,
        commit_tx,
        classifier: Classifier::new(Arc::new(Rules::builtin()), 16),
        journal: Some(Arc::clone(&journal)),
        settings: Arc::new(settings),
        health: Arc::new(Health::default()),
        ids: BatchIds::new(),
        stop: CancellationToken::new(),
        sweeps: Sweeps::new(SweepRule::default(), 16),
        corrections: Vec::new(),
        handover: None,
        spare: Arc::new(super::super::Spare::default()),
        last_ip: None,
    };
    (intake, commit_rx, journal, dir)
}

/// Waits until the spill writer has written what intake handed it.
async fn written(intake: &Intake) {
    while intake.spill.waiting() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A batch that withdraws a hit must not reach the store before the hit: with the store healthy
/// again but the last replay's batches still journaled, it queues behind them in the journal. (A
/// withdrawal counted first finds no event to withdraw, and the bot's click is delivered when its
/// batch is replayed.) Batches without corrections, and any batch once the journal is empty, go
/// straight to the committer.
#[tokio::test]
async fn a_batch_with_corrections_queues_behind_journaled_batches() {
    let (mut intake, mut commit_rx, journal, dir) = intake("behind");

    // The hit a sweep will flip, journaled while the store was failing.
    let held = intake.ids.seal(vec![click("AAAA")], Vec::new());
    let held_id = held.id.clone();
    intake.to_journal(held).await;
    written(&intake).await;
    assert!(!journal.is_empty());

    // Healthy again, the journal not yet replayed: a plain batch goes to the committer...
    intake.hand_off(vec![click("BBBB")]).await;
    let direct = commit_rx.try_recv().expect("a batch without corrections is committed directly");
    assert!(direct.corrections.is_empty());
    intake.health.done(0); // the committer counted it

    // ... a batch correcting the journaled hit goes behind it.
    intake.corrections.push(Correction { click: click("AAAA"), event_id: format!("{held_id}:0") });
    intake.hand_off(vec![click("CCCC")]).await;
    assert!(commit_rx.try_recv().is_err(), "the correcting batch must not overtake the journaled hit");
    written(&intake).await;
    let order = journal.take_ids_from_disk();
    assert_eq!(order.len(), 2, "{order:?}");
    assert_eq!(order[0], held_id, "the corrected hit's batch first");
    assert!(journal.is_empty());

    // Journal empty (replayed): corrections go straight to the committer.
    intake.corrections.push(Correction { click: click("CCCC"), event_id: "x:0".into() });
    intake.hand_off(vec![click("DDDD")]).await;
    let direct = commit_rx.try_recv().expect("with nothing journaled, corrections are committed directly");
    assert_eq!(direct.corrections.len(), 1);
    intake.health.done(0);

    // The corrected hit still on its way to the journal: handed to the spill writer, which has not
    // run yet (this runtime has one thread), so the journal itself is empty. The correction waits too.
    let on_its_way = intake.ids.seal(vec![click("EEEE")], Vec::new());
    let on_its_way_id = on_its_way.id.clone();
    intake.to_journal(on_its_way).await;
    assert!(journal.is_empty() && intake.spill.waiting() == 1);
    intake.corrections.push(Correction { click: click("EEEE"), event_id: format!("{on_its_way_id}:0") });
    intake.hand_off(vec![click("FFFF")]).await;
    assert!(commit_rx.try_recv().is_err(), "the correcting batch must not overtake the hit being written");
    written(&intake).await;
    let order = journal.take_ids_from_disk();
    assert_eq!(order.len(), 2, "{order:?}");
    assert_eq!(order[0], on_its_way_id, "the corrected hit's batch first");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_hit_tally_is_bounded_and_counts_every_hit() {
    let mut tally = HitTally::default();
    let shared: Arc<str> = Arc::from("preview:facebook");
    for _ in 0..1_000 {
        tally.add(Class::Bot, &shared);
        // A reason made per hit (a new allocation each time): bounded by early publishing.
        tally.add(Class::Bot, &Arc::from("network:hosting:aws"));
        assert!(tally.0.len() <= MAX_TALLIED_REASONS);
    }
    let held: u64 = tally.0.values().map(|(_, n)| n).sum();
    assert!(held > 0 && held < 2_000, "some hits were published early, the rest are held");
}

#[test]
fn the_stretch_between_yields_grows_with_the_backlog() {
    assert_eq!(stretch(0), DRAIN_CHUNK);
    assert_eq!(stretch(4_096), DRAIN_CHUNK, "keeping up: short stretches");
    assert_eq!(stretch(16_384), 128);
    assert_eq!(stretch(65_536), 512, "a full default channel: ~1.5 ms of work, never a burst");
    let mut last = 0;
    for backlog in (0..=65_536).step_by(1_024) {
        assert!(stretch(backlog) >= last, "monotonic at {backlog}");
        last = stretch(backlog);
    }
}

/// What sends a batch to the journal while the committer still holds an earlier one.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The store failed; the committer journals what it holds.
    Unhealthy,
    /// The committer is stuck on a batch for longer than a flush interval.
    Stuck,
    /// The committer's queue is full.
    QueueFull,
}

/// A correction of a hit the committer still holds must not reach the journal ahead of it: the
/// committer journals that hit once the store fails it, behind whatever intake journaled meanwhile (a
/// withdrawal replayed first finds nothing to withdraw, and the unique count it lowers goes back up).
/// The correction waits in intake and rides the first batch after the committer is done.
#[tokio::test]
async fn corrections_wait_for_the_batches_the_committer_holds() {
    for fault in [Fault::Unhealthy, Fault::Stuck, Fault::QueueFull] {
        let (mut intake, mut commit_rx, journal, dir) = intake(&format!("{fault:?}"));

        // The hit a sweep will flip, handed to the committer, which has not finished it.
        intake.hand_off(vec![click("AAAA")]).await;
        let mut hits = 1;
        match fault {
            Fault::Unhealthy => intake.health.set(false),
            Fault::Stuck => intake.health.busy_since.store(1, Ordering::Release),
            Fault::QueueFull => {
                while intake.commit_tx.capacity() > 0 {
                    intake.hand_off(vec![click("FULL")]).await;
                    hits += 1;
                }
            }
        }
        assert_eq!(intake.health.holding(), hits, "{fault:?}");

        // A batch correcting it goes to the journal without the correction, which waits.
        intake.corrections.push(Correction { click: click("AAAA"), event_id: "held:0".into() });
        intake.hand_off(vec![click("BBBB")]).await;
        hits += 1;
        written(&intake).await;
        assert_eq!(intake.corrections.len(), 1, "{fault:?}: the correction waits for the committer");
        assert!(!journal.is_empty(), "{fault:?}: the batch itself went to the journal");

        // The committer journals what it held (as it does once the store fails it) and is done.
        while let Ok(batch) = commit_rx.try_recv() {
            super::super::journal(Some(&journal), vec![(batch, Some(chrono::Utc::now()))]).await.unwrap();
            intake.health.done(0);
        }
        intake.health.busy(false);
        assert_eq!(intake.health.holding(), 0);

        // The next batch carries the correction, behind the hit it corrects.
        intake.hand_off(vec![click("CCCC")]).await;
        hits += 1;
        assert!(commit_rx.try_recv().is_err(), "{fault:?}: behind the journal");
        assert!(intake.corrections.is_empty());
        written(&intake).await;
        let entries = journal.take_from_disk();
        let held = entries.iter().position(|e| &*e.batch.clicks[0].code == "AAAA").unwrap();
        let correcting: Vec<usize> = (0..entries.len()).filter(|&i| !entries[i].batch.corrections.is_empty()).collect();
        assert_eq!(correcting.len(), 1, "{fault:?}: one batch carries the correction");
        assert!(
            held < correcting[0],
            "{fault:?}: the corrected hit first, at {held}; the correction at {correcting:?}"
        );
        assert_eq!(entries.iter().map(|e| e.batch.clicks.len()).sum::<usize>(), hits, "{fault:?}: every hit");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A hit dropped uncounted (the journal refused its batch) has nothing for a correction to move: a
/// correction of it is discarded before it is sealed into a batch; others go on.
#[tokio::test]
async fn corrections_of_dropped_hits_are_discarded() {
    let (mut intake, mut commit_rx, _, dir) = intake("dropped");
    // A journal with room for nothing: the batch handed to it is dropped.
    let full = Arc::new(Journal::open(dir.join("full"), 1).unwrap());
    let (spill, writer) =
        super::super::spill::channel(Some(full), Duration::from_millis(5), Arc::clone(&intake.spill.dropped));
    tokio::spawn(writer.run());
    intake.spill = spill;
    let lost = intake.ids.seal(vec![click("AAAA"), click("BBBB")], Vec::new());
    let lost_id = lost.id.clone();
    intake.to_journal(lost).await;
    written(&intake).await;

    intake.corrections.push(Correction { click: click("BBBB"), event_id: crate::click::emit::event_id(&lost_id, 1) });
    intake.corrections.push(Correction { click: click("XXXX"), event_id: "counted:0".into() });
    intake.hand_off(vec![click("CCCC")]).await;
    let batch = commit_rx.try_recv().expect("committed directly");
    let kept: Vec<&str> = batch.corrections.iter().map(|c| c.event_id.as_str()).collect();
    assert_eq!(kept, ["counted:0"], "the dropped hit's correction is discarded, the other kept");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The store healthy, the journal still holding batches (replayed at the next probe), the committer
/// busy with a batch: corrections can go neither to the committer (they would overtake the journal)
/// nor to the journal (they would overtake the committer's batch, should the store fail it). They
/// wait; the hits still go to the committer — not, for want of their corrections, to the journal.
#[tokio::test]
async fn waiting_corrections_do_not_send_their_batch_to_the_journal() {
    let (mut intake, mut commit_rx, journal, dir) = intake("both");
    let earlier = intake.ids.seal(vec![click("AAAA")], Vec::new());
    intake.to_journal(earlier).await;
    written(&intake).await;
    intake.hand_off(vec![click("BBBB")]).await;
    assert_eq!(intake.health.holding(), 1);

    intake.corrections.push(Correction { click: click("BBBB"), event_id: "held:0".into() });
    intake.hand_off(vec![click("CCCC")]).await;
    assert_eq!(intake.corrections.len(), 1, "the correction waits");
    let _held = commit_rx.try_recv().unwrap();
    let direct = commit_rx.try_recv().expect("the hits go to the committer");
    assert!(direct.corrections.is_empty() && &*direct.clicks[0].code == "CCCC");
    assert_eq!(journal.take_ids_from_disk().len(), 1, "nothing more journaled");
    let _ = std::fs::remove_dir_all(&dir);
}
