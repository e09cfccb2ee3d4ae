//! Intake: drain captured hits, classify them, seal batches and hand them on — to the committer while
//! the store is healthy and the committer keeps up, to the journal otherwise. Never waits for the store.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::spill::{Spill, Writer};
use super::{BatchIds, Health, Settings};
use crate::click::address;
use crate::click::classify::{Classifier, Signals};
use crate::click::journal::Journal;
use crate::click::sweep::{Client, Flippable, Sweeps};
use crate::click::verdict::{Evidence, judge, with_sweep};
use crate::model::{Batch, Class, ClickRecord, Correction};
use crate::redirect::capture::{Handover, Hit};

pub(super) struct Intake {
    pub rx: mpsc::Receiver<Hit>,
    pub commit_tx: mpsc::Sender<Batch>,
    pub classifier: Classifier,
    pub journal: Option<Arc<Journal>>,
    /// The way to the journal: batches handed over here are appended in groups (`spill`).
    pub spill: Spill,
    pub settings: Arc<Settings>,
    pub health: Arc<Health>,
    pub ids: BatchIds,
    pub stop: CancellationToken,
    pub sweeps: Sweeps<ClickRecord>,
    /// Flipped hits of earlier batches, sent with the next batch.
    pub corrections: Vec<Correction>,
    /// On its own thread: the redirects wake it when hits pile up (`capture::Handover`).
    pub handover: Option<Arc<Handover>>,
    /// Buffers of finished batches, to fill again.
    pub spare: Arc<super::Spare>,
    /// The last client address seen and its text (`ip_text`).
    pub last_ip: Option<(IpAddr, Arc<str>)>,
}

/// A stable hash of a text (user agents in the sweep tracker; recipients are `CachedLink::recipient_key`).
fn hash(text: &str) -> u64 {
    use std::hash::BuildHasher;
    // Process-local identities for the sweep tracker: a fast hash suffices.
    foldhash::fast::FixedState::with_seed(0x6c69_6e6b_6869_7400).hash_one(text)
}

/// Which bot a hit is, for folding its repeats (`CachedLink::bot_repeats`): its user agent and address.
fn fingerprint(user_agent: Option<&str>, client: Option<IpAddr>) -> u32 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6c69_6e6b_6869_7401).hash_one((user_agent, client)) as u32
}

impl Intake {
    /// Turns a captured hit into a classified, owned record: the user agent, then the client's network,
    /// the timing and the sweep rule (`verdict::judge`). `index` is the hit's place in the batch being
    /// filled; earlier hits a sweep flips are corrected in `batch` or queued as corrections.
    fn record(&mut self, hit: Hit, batch: &mut [ClickRecord], tally: &mut HitTally) -> ClickRecord {
        let settings = Arc::clone(&self.settings);
        let user_agent = hit.user_agent.as_ref().and_then(|v| v.to_str().ok());
        let (ua, user_agent_text) =
            self.classifier.classify_hit(Signals { user_agent, head: hit.head, prefetch: hit.prefetch });
        let forwarded = hit.forwarded_for.as_ref().and_then(|v| v.to_str().ok());
        let client = address::client_ip(hit.peer, forwarded, &settings.trusted_proxies);
        let link = &hit.link;
        let at_ms = hit.at.timestamp_millis();
        let mut evidence = Evidence {
            network: client.and_then(|ip| settings.networks.lookup(ip)),
            since_send_ms: link.sent_unix().map(|s| at_ms - s * 1000),
            since_delivery_ms: link.delivered_unix().map(|d| at_ms - d * 1000),
            sweep: None,
        };
        let judged = judge(&ua, &evidence, &settings.timing);
        let ip = client.map(|ip| self.ip_text(if settings.keep_full_ip { ip } else { address::anonymize(ip) }));
        // Every text is shared with the cached link, the classifier's memo or the verdict: a hit copies
        // no string (docs/PERFORMANCE.md, session 7).
        let mut record = ClickRecord {
            code: Arc::clone(&link.code),
            workspace_id: Arc::clone(&link.workspace_id),
            broadcast_id: link.broadcast_id.clone(),
            recipient: if judged.class == Class::Human { link.recipient.clone() } else { None },
            kind: link.kind,
            at: hit.at,
            class: judged.class,
            reason: Arc::clone(&judged.reason),
            method: crate::model::method_text(hit.head),
            user_agent: user_agent_text,
            ip,
            signals: judged.signals.clone(),
            click_id: hit.click_id.clone(),
            folded: false,
        };
        // A client whose user agent is a bot's is the same bot on every hit (the tracker's client key
        // includes the agent; HEAD and prefetch only add reasons to be a bot): a sweep could flip none of
        // its hits, so they are not tracked — and a flood of previews, GET or HEAD, cannot push a
        // scanner's window out of the bounded tracker (nor pay its per-client map on every hit;
        // docs/PERFORMANCE.md, session 11). A HEAD or prefetch verdict is not the agent's own: ask for that
        // (memoised) only then.
        let bot_by_agent = ua.class == Class::Bot
            && (!(hit.head || hit.prefetch)
                || self.classifier.classify_hit(Signals { user_agent, head: false, prefetch: false }).0.class
                    == Class::Bot);
        if let (Some(broadcast), Some(ip), false) = (&link.broadcast_id, client, bot_by_agent) {
            let who = Client {
                workspace_id: Arc::clone(&link.workspace_id),
                broadcast_id: Arc::clone(broadcast),
                ip,
                user_agent: hash(user_agent.unwrap_or("")),
            };
            let recipient = link.recipient_key;
            let flippable = (record.class == Class::Human).then(|| Flippable {
                seq: self.ids.current(),
                index: batch.len(),
                at_ms,
                item: record.clone(),
            });
            let observed = self.sweeps.observe(&who, recipient, at_ms, evidence.since_send_ms, flippable);
            if let Some(n) = observed.sweep {
                let judged = with_sweep(&judged, n).unwrap_or_else(|| {
                    evidence.sweep = Some(n);
                    judge(&ua, &evidence, &settings.timing)
                });
                record.class = judged.class;
                record.reason = judged.reason;
                record.signals = judged.signals;
                for flip in observed.flips {
                    self.flip(flip, &record.reason, batch, at_ms);
                }
            }
        }
        if record.class == Class::Bot && !settings.recent_fold.is_zero() {
            // Whole seconds, rounded up: 0.5 folds within the second, it does not turn folding off.
            let window = settings.recent_fold.as_secs_f64().ceil().min(f64::from(u32::MAX)) as u32;
            record.folded = link.bot_repeats(fingerprint(user_agent, client), hit.at.timestamp(), window);
        }
        tally.add(record.class, &record.reason);
        record
    }

    /// The text of a client's (anonymised) address, shared with the previous hit's when it is the same
    /// client: floods come from few addresses.
    fn ip_text(&mut self, ip: IpAddr) -> Arc<str> {
        match &self.last_ip {
            Some((last, text)) if *last == ip => Arc::clone(text),
            _ => {
                let text: Arc<str> = Arc::from(address::text(ip));
                self.last_ip = Some((ip, Arc::clone(&text)));
                text
            }
        }
    }

    /// Moves an earlier human hit to the bots: in place if its batch is still being filled, as a
    /// correction of its counted batch (and a withdrawal of its held event) within the hold window.
    fn flip(&mut self, flip: Flippable<ClickRecord>, reason: &Arc<str>, batch: &mut [ClickRecord], now_ms: i64) {
        let moved = |mut click: ClickRecord| {
            click.class = Class::Bot;
            click.reason = Arc::clone(reason);
            click.signals = Some(match click.signals.take() {
                Some(s) if !s.is_empty() => Arc::from(format!("{s},{reason}")),
                _ => Arc::clone(reason),
            });
            click
        };
        if flip.seq == self.ids.current() {
            if let Some(slot) = batch.get_mut(flip.index) {
                *slot = moved(slot.clone());
                metrics::counter!("linkhit_verdict_flips_total", "outcome" => "in_batch").increment(1);
            }
            return;
        }
        if now_ms - flip.at_ms > self.settings.hold.as_millis() as i64 {
            metrics::counter!("linkhit_verdict_flips_total", "outcome" => "too_late").increment(1);
            return;
        }
        metrics::counter!("linkhit_verdict_flips_total", "outcome" => "corrected").increment(1);
        let event_id = crate::click::emit::event_id(&self.ids.id(flip.seq), flip.index);
        self.corrections.push(Correction { click: moved(flip.item), event_id });
    }
}

pub(super) async fn run(mut me: Intake, writer: Writer) {
    let writer = tokio::spawn(writer.run());
    let depth = metrics::gauge!("linkhit_capture_queue_depth");
    let settings = Arc::clone(&me.settings);
    let mut batch: Vec<ClickRecord> = Vec::with_capacity(settings.batch_size);
    let mut tally = HitTally::default();
    let mut last_flush = tokio::time::Instant::now();
    // Polled on a short timer rather than woken per hit: a receiver parked in `recv` costs every
    // redirect a cross-thread wake-up (measured: several µs of CPU per hit at 60k hits/s), while a
    // sleeping one costs the sender nothing.
    let mut tick = tokio::time::interval(DRAIN_INTERVAL.min(settings.flush_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let handover = me.handover.clone();
    // Where this task really runs: on the click thread, or — if that could not start — on a redirect
    // worker, which must never sleep.
    let on_own_thread = std::thread::current().name() == Some(super::THREAD_NAME);
    let catch_up = CATCH_UP.min(me.rx.max_capacity() / 4).max(1);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = nudged(handover.as_deref()) => {}
            () = me.stop.cancelled(), if !stopping => {
                // No new hits after this; take what is already captured, then finish.
                me.rx.close();
                stopping = true;
            }
        }
        depth.set((me.rx.max_capacity() - me.rx.capacity()) as f64);
        let mut since_yield = 0;
        loop {
            match me.rx.try_recv() {
                Ok(hit) => {
                    let record = me.record(hit, &mut batch, &mut tally);
                    batch.push(record);
                    // Classifying is a few µs a hit: give the worker back to the redirects every chunk,
                    // so a full channel never holds a redirect worker for more than ~100 µs.
                    since_yield += 1;
                    if since_yield >= DRAIN_CHUNK {
                        // Behind, the stretch between two yields grows with the backlog (32 hits up to
                        // 4,096 waiting, 512 at 65,536): the thread takes more of the CPU before the
                        // channel can overflow, in stretches of at most ~1.5 ms — never a burst.
                        let backlog = me.rx.len();
                        if since_yield >= stretch(backlog) {
                            since_yield = 0;
                            if on_own_thread {
                                pace(backlog, if stopping { 0 } else { catch_up });
                            }
                            tokio::task::yield_now().await;
                        }
                    }
                    if batch.len() >= settings.batch_size {
                        let next = me.spare.take(settings.batch_size);
                        me.hand_off(std::mem::replace(&mut batch, next)).await;
                        last_flush = tokio::time::Instant::now();
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    if let Some(handover) = &handover {
                        handover.rearm();
                        // A redirect that filled the channel between the last receive and the rearm
                        // did not wake us: look once more.
                        if !me.rx.is_empty() {
                            continue;
                        }
                    }
                    break;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
            }
        }
        tally.publish();
        if stopping {
            break;
        }
        if !batch.is_empty() && last_flush.elapsed() >= settings.flush_interval {
            let next = me.spare.take(settings.batch_size);
            me.hand_off(std::mem::replace(&mut batch, next)).await;
            last_flush = tokio::time::Instant::now();
        }
    }
    if !batch.is_empty() {
        // Shutting down: waiting for room is fine now; the committer journals what it cannot count
        // before the deadline.
        let corrections = std::mem::take(&mut me.corrections);
        let sealed = me.ids.seal(batch, corrections);
        if !me.health.ok() || me.behind(&sealed) {
            me.to_journal(sealed).await;
        } else if let Err(mpsc::error::SendError(sealed)) = me.commit_tx.send(sealed).await {
            me.to_journal(sealed).await;
        }
    }
    // The writer ends once everything handed to it is on disk.
    drop(me);
    let _ = writer.await;
}

impl Intake {
    /// Gives a batch to the committer, or journals it when the store is unhealthy, the committer is
    /// stuck or its queue is full, or the batch corrects hits that may still be in the journal.
    async fn hand_off(&mut self, clicks: Vec<ClickRecord>) {
        metrics::histogram!("linkhit_click_batch_size").record(clicks.len() as f64);
        let corrections = std::mem::take(&mut self.corrections);
        let batch = self.ids.seal(clicks, corrections);
        // The committer stuck on one batch (a hung store, a slow sink) would leave this one only in
        // memory for longer than a flush interval: journal it. A batch that corrects earlier hits must
        // not be counted before them: while the journal holds batches (the store may be healthy again
        // with the last replay's batches still waiting for the next probe), it queues behind them.
        if !self.health.ok() || self.health.stuck(self.settings.flush_interval) || self.behind(&batch) {
            self.to_journal(batch).await;
            return;
        }
        match self.commit_tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch)) => {
                self.to_journal(batch).await;
            }
        }
    }

    /// Whether `batch` corrects hits that may still be on their way to the journal or in it: it must
    /// then queue behind them.
    fn behind(&self, batch: &Batch) -> bool {
        !batch.corrections.is_empty()
            && (self.spill.waiting() > 0 || self.journal.as_ref().is_some_and(|j| !j.is_empty()))
    }

    /// Journals a batch nobody tried to count (in the spill writer's next group); it is dropped
    /// (metric, log) if the journal refuses it.
    async fn to_journal(&self, batch: Batch) {
        self.spill.send(batch).await;
    }
}

/// Resolves when the redirects ask the click thread to drain before its next tick.
async fn nudged(handover: Option<&Handover>) {
    match handover {
        Some(handover) => handover.wake.notified().await,
        None => std::future::pending().await,
    }
}

/// Hits classified between two yields of the intake task.
const DRAIN_CHUNK: usize = 32;
/// Hits classified between two yields with `backlog` hits waiting: `DRAIN_CHUNK` while keeping up,
/// growing with the backlog behind (512 at the default 65,536-hit channel: ~1.5 ms of work).
fn stretch(backlog: usize) -> usize {
    DRAIN_CHUNK.max(backlog / 128)
}

/// On its own thread, between two stretches: step off the CPU so that a redirect worker sharing it runs.
///
/// A `sched_yield` is not enough: the scheduler gives the CPU back to whichever thread used less than its
/// share, and that is this one (it needs about a third of a CPU at saturation), so a yield returns at
/// once and the thread runs on until the 4 ms tick — the redirects' p99 (`perf sched`: click-thread runs
/// of 1.5 ms at p90, 4 ms at p99, docs/PERFORMANCE.md session 6). A short sleep really leaves the CPU to
/// the worker, and when it ends the redirects are interrupted for one stretch (~100 µs), never a slice.
/// Behind (`catch_up` hits waiting: `CATCH_UP`, or a quarter of a smaller capture channel; 0 while
/// stopping) it only yields, so that it cannot fall further behind: a sleep per 32 hits caps the thread
/// at about half a CPU. With one stretch or less left (≤ `DRAIN_CHUNK` waiting) it finishes without a
/// pause: the sleep and its two task switches cost more than the ~80 µs of work it would defer (click
/// thread 2.3–2.8 → 1.8–2.4 µs per hit, p99 no worse; docs/PERFORMANCE.md session 7).
fn pace(backlog: usize, catch_up: usize) {
    if backlog >= catch_up {
        std::thread::yield_now();
    } else if backlog > DRAIN_CHUNK {
        std::thread::sleep(PAUSE);
    }
}

/// Hits waiting above which the click thread stops pausing between stretches.
const CATCH_UP: usize = 8_192;
/// The pause between two stretches (the kernel's timer slack adds ~50 µs).
const PAUSE: Duration = Duration::from_micros(50);

/// How often intake drains the capture channel.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Reasons a tally holds before it publishes.
const MAX_TALLIED_REASONS: usize = 256;

/// Hits per (class, reason) since the last publish: one metrics update per reason per drain instead
/// of a registry lookup per hit. Keyed by the reason's allocation, not its text (no hashing of the text
/// per hit): reasons are shared `Arc`s, and two allocations of one text only make two increments of the
/// same counter.
#[derive(Default)]
struct HitTally(crate::counting::Fast<(Class, usize), (Arc<str>, u64)>);

impl HitTally {
    fn add(&mut self, class: Class, reason: &Arc<str>) {
        // Some reasons are made per hit (a hosting network's, `head_request`): each is an entry, so a
        // long drain publishes early rather than growing the map.
        if self.0.len() >= MAX_TALLIED_REASONS {
            self.publish();
        }
        let key = (class, crate::model::text_address(reason));
        self.0.entry(key).or_insert_with(|| (Arc::clone(reason), 0)).1 += 1;
    }

    fn publish(&mut self) {
        for ((class, _), (reason, n)) in self.0.drain() {
            metrics::counter!("linkhit_hits_total", "class" => class.as_str(), "reason" => reason.to_string())
                .increment(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::classify::Rules;
    use crate::click::network::Networks;
    use crate::click::sweep::SweepRule;
    use crate::click::verdict::Timing;
    use std::sync::atomic::{AtomicBool, AtomicI64};

    fn click(code: &str) -> ClickRecord {
        ClickRecord {
            broadcast_id: Some("b1".into()),
            recipient: Some("+15550001".into()),
            ..crate::click::journal::tests::click(code)
        }
    }

    /// An intake over a real journal in `dir`, with a healthy store and an idle committer, and the
    /// committer's end of its queue.
    fn intake(dir: &std::path::Path) -> (Intake, mpsc::Receiver<Batch>) {
        let _ = std::fs::remove_dir_all(dir);
        let journal = Arc::new(Journal::open(dir, 1 << 20).unwrap());
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
        let (spill, writer) = super::super::spill::channel(Some(Arc::clone(&journal)), Duration::from_millis(5));
        tokio::spawn(writer.run());
        let intake = Intake {
            spill,
            rx,
            commit_tx,
            classifier: Classifier::new(Arc::new(Rules::builtin()), 16),
            journal: Some(journal),
            settings: Arc::new(settings),
            health: Arc::new(Health(AtomicBool::new(true), AtomicI64::new(0))),
            ids: BatchIds::new(),
            stop: CancellationToken::new(),
            sweeps: Sweeps::new(SweepRule::default(), 16),
            corrections: Vec::new(),
            handover: None,
            spare: Arc::new(super::super::Spare::default()),
            last_ip: None,
        };
        (intake, commit_rx)
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
        let dir = std::env::temp_dir().join(format!("linkhit-intake-test-{}", std::process::id()));
        let (mut intake, mut commit_rx) = intake(&dir);
        let journal = Arc::clone(intake.journal.as_ref().unwrap());

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
}
