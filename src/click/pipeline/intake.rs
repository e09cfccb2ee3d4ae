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
            bot_slot: link.bot_slot(),
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
            let recipient = u64::from(link.recipient_key);
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
        // Corrections that waited for the committer go once it holds nothing, with or without hits.
        let waited = !me.corrections.is_empty() && me.health.holding() == 0;
        if (!batch.is_empty() || waited) && last_flush.elapsed() >= settings.flush_interval {
            let next = me.spare.take(settings.batch_size);
            me.hand_off(std::mem::replace(&mut batch, next)).await;
            last_flush = tokio::time::Instant::now();
        }
    }
    me.last_batch(batch).await;
    // The writer ends once everything handed to it is on disk.
    drop(me);
    let _ = writer.await;
}

impl Intake {
    /// Shutting down: hands on what is left, waiting for room if need be. Corrections first wait until
    /// the committer is done with what it was handed (it counts or journals each before the deadline).
    async fn last_batch(&mut self, batch: Vec<ClickRecord>) {
        while !self.corrections.is_empty() && self.health.handed() > 0 && !self.commit_tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut corrections = std::mem::take(&mut self.corrections);
        self.spill.dropped.strip(&mut corrections);
        if batch.is_empty() && corrections.is_empty() {
            return;
        }
        let in_doubt = self.health.holding().saturating_sub(self.health.handed());
        if !corrections.is_empty() && in_doubt > 0 {
            // Batches in doubt (the store failed them, the journal refused them) get their last try
            // only after this: what of them is journaled then lands behind these corrections.
            metrics::counter!("linkhit_corrections_inexact_total", "why" => "out_of_order")
                .increment(corrections.len() as u64);
            tracing::warn!(
                corrections = corrections.len(),
                in_doubt,
                "stopping with batches in doubt: verdict corrections are journaled before them and may be counted first"
            );
        }
        let sealed = self.ids.seal(batch, corrections);
        if !self.health.ok() || self.behind(&sealed.corrections) {
            self.to_journal(sealed).await;
            return;
        }
        self.health.hand(true);
        if let Err(mpsc::error::SendError(sealed)) = self.commit_tx.send(sealed).await {
            self.health.hand(false);
            self.to_journal(sealed).await;
        }
    }

    /// Gives a batch to the committer, or journals it when the store is unhealthy, the committer is
    /// stuck or its queue is full, or the batch corrects hits that may still be in the journal.
    ///
    /// Corrections of hits dropped uncounted are discarded ([`super::Dropped`]). The others are never
    /// counted before the hits they correct, wherever those are:
    /// - in the journal or on their way to it: the batch carrying them queues behind them there
    ///   ([`Self::behind`]);
    /// - with the committer (queued, being counted, in doubt), when this batch goes to the journal: the
    ///   committer journals its batches once the store fails them, which would put them behind their
    ///   corrections. The corrections wait here and ride a later batch, once the committer holds
    ///   nothing ([`MAX_WAITING_CORRECTIONS`] at most).
    async fn hand_off(&mut self, clicks: Vec<ClickRecord>) {
        let mut corrections = std::mem::take(&mut self.corrections);
        self.spill.dropped.strip(&mut corrections);
        // The committer stuck on one batch (a hung store, a slow sink) would leave this one only in
        // memory for longer than a flush interval: journal it.
        let healthy = self.health.ok() && !self.health.stuck(self.settings.flush_interval);
        if !healthy || self.behind(&corrections) {
            // The corrections' way is the journal: they wait if the committer holds batches, and then
            // the hits need not follow them there.
            corrections = self.wait_for_committer(corrections);
        }
        let direct = healthy && !self.behind(&corrections);
        if clicks.is_empty() && corrections.is_empty() {
            self.spare.give(clicks);
            return;
        }
        if !clicks.is_empty() {
            metrics::histogram!("linkhit_click_batch_size").record(clicks.len() as f64);
        }
        let mut batch = self.ids.seal(clicks, corrections);
        if direct {
            self.health.hand(true);
            match self.commit_tx.try_send(batch) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(refused) | mpsc::error::TrySendError::Closed(refused)) => {
                    self.health.hand(false);
                    batch = refused;
                    let corrections = std::mem::take(&mut batch.corrections);
                    batch.corrections = self.wait_for_committer(corrections);
                    if batch.clicks.is_empty() && batch.corrections.is_empty() {
                        // A batch of corrections alone, and they wait: nothing left to journal.
                        self.spare.give(batch.clicks);
                        return;
                    }
                }
            }
        }
        self.to_journal(batch).await;
    }

    /// The corrections a batch on its way to the journal may carry: all of them, unless the committer
    /// holds batches whose hits they may correct — then none, and they wait in `self.corrections` for a
    /// later batch. Past [`MAX_WAITING_CORRECTIONS`] they go anyway, counted as out of order: a committer
    /// held up that long is failing, and it journals what it holds within its own timeouts.
    fn wait_for_committer(&mut self, corrections: Vec<Correction>) -> Vec<Correction> {
        if corrections.is_empty() || self.health.holding() == 0 {
            return corrections;
        }
        // Every waiting correction is in `corrections` (the caller took them all).
        let waiting = self.corrections.len() + corrections.len();
        if waiting > MAX_WAITING_CORRECTIONS {
            metrics::counter!("linkhit_corrections_inexact_total", "why" => "out_of_order")
                .increment(corrections.len() as u64);
            tracing::warn!(
                waiting,
                "too many verdict corrections waiting for the committer: these go to the journal now and may be counted before the hits they correct"
            );
            return corrections;
        }
        let mut waiting = corrections;
        waiting.append(&mut self.corrections);
        self.corrections = waiting;
        Vec::new()
    }

    /// Whether `corrections` correct hits that may still be on their way to the journal or in it: their
    /// batch must then queue behind them.
    fn behind(&self, corrections: &[Correction]) -> bool {
        !corrections.is_empty() && (self.spill.waiting() > 0 || self.journal.as_ref().is_some_and(|j| !j.is_empty()))
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

/// Verdict corrections kept waiting for the committer (~250 bytes each: ~16 MB); see
/// [`Intake::wait_for_committer`].
const MAX_WAITING_CORRECTIONS: usize = 65_536;

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
mod tests;
