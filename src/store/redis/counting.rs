//! Counting a batch of classified hits in Redis, idempotently and atomically per slot.
//!
//! The batch is grouped by `crate::counting`, turned into operations (one per link, per broadcast and per
//! possible opt-out) and run by one Lua script per *slot*: on a single node the whole batch is one
//! script call; on a cluster the operations are split by the slot of their hash tag and each slot's
//! share is one call. Each call first checks the slot's guard key for the batch id
//! (`P:guard:{TAG}:BATCH`): if present, the call changes nothing and answers the stored reply; if not,
//! it applies every operation and stores its reply under the guard. So:
//!
//! - a retry after a timeout, a journal replay, a second instance replaying, or a replay interrupted by a
//!   crash changes nothing that was applied before (and learns what it told the first time);
//! - a slot applies its share in full or not at all: a script runs atomically, and the `#!lua` shebang
//!   makes Redis refuse the whole call up front when it is out of memory (`maxmemory` with
//!   `noeviction`), instead of failing at the first write half-way through;
//! - when one cluster node fails mid-batch, the slots that answered are guarded and the retry applies
//!   only the rest.
//!
//! Guards are deleted when the pipeline releases the batch (counted and its events queued; the
//! `UNLINK`s ride on the next batch's pipeline) and otherwise expire after `LINKHIT_COMMIT_GUARD_TTL`.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use redis::cluster_routing::Slot;

use super::RedisStore;
use super::args::Args;
use super::keys::Keys;
use crate::counting;
use crate::model::{Batch, Class, ClickRecord, ClickTally, EscapedTexts};
use crate::redis_conn::hash_tag;
use crate::store::StoreError;

/// Deadline of one counting call. Long enough for a big batch on a busy Redis; the pipeline does not
/// wait this long on the hot side: it journals a batch whose commit is slow (`click::pipeline`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies one slot's share of a batch. KEYS[1]: the guard; KEYS[2..]: the keys the operations name by
/// index. ARGV[1]: guard lifetime (ms); then the operations, each a type letter and its arguments:
///
/// - `L` counters-key bots-key recent-key click-ids-key human bot first-ms last-ms cap k json×k m
///   (id class)×m slot-of-key [code slots-prefix] — a link: counters (bot hits in `bots-key`, `INCRBY`),
///   first and last human click, the newest `k` recent clicks pushed (oldest first), the list capped,
///   the verdicts of tracked hits (click ids; the first 1,000 of a link kept, for 30 days); on a single
///   node `slot-of-key` (`P:bslot-of`; 0 on a cluster, without the next two) gives the link's bot
///   slot, whose count its answer includes;
///   answers `{human hits, bot hits}` after the batch (0 when the batch has no human hit of it: not read,
///   not needed).
/// - `X` slots-key m #offset×m p (#offset n)×p — unlisted bot hits (a flood's repeats) of links with a
///   bot slot in one `P:bslots` key (single node): `m` links with one hit, `p` with `n`; one
///   `BITFIELD INCRBY i64` per link, in one command for the lot, where `R` costs a keyspace lookup per
///   hit; answers 0.
/// - `b` bots-key recent-key bots cap k json×k — a link with only bot hits in the batch and no
///   tracked click id (on SMS traffic, most of them: previews and scanners): the same as `L` with a
///   third of the arguments and no reads; answers 0.
/// - `R` first m — KEYS[first..first+m-1] are bots keys of links with one unlisted bot hit each (on a
///   flood, most links of a batch): one argument per hit, one `INCR` per hit; answers 0.
/// - `c` bots-key bots — bot hits of a link none of which is listed (repeats `LINKHIT_RECENT_FOLD`
///   folds: on a flood, most): the counter alone; answers 0.
/// - `B` hash-key uniques-key timeline-key counts-key reasons-key hits human bot r recipient×r
///   p (field n)×p q (reason n)×q — a broadcast: counters, human hits per recipient and the exact
///   unique-recipient set (a recipient joins it when its count reaches 1), the per-minute timeline, bot
///   hits per reason; answers 1/0 per recipient (new to the set or not), or 0 when `r` is 0.
/// - `O` key recipient json — a possible opt-out (`HSETNX`); answers 1 if new.
/// - `P` key recipient — a recipient opted out through a broadcast (`SADD`); answers 0.
/// - `Z` key recipient — that opt-out's hit flipped to bot (`SREM`); answers 0.
/// - `K` key click-id — a tracked hit whose verdict flipped to bot; answers 0.
/// - `C` counters-key bots-key n — a link's n human hits counted again as bots (a verdict flipped);
///   answers 0.
/// - `D` hash-key uniques-key timeline-key counts-key reasons-key k (recipient h-field b-field reason)×k
///   — the same for a broadcast: a recipient whose human hits drop to 0 leaves the unique set; answers 0.
/// - `Y` key recipient json — an opt-out recorded by a hit whose verdict flipped is removed; answers 0.
///
/// Returns `{0, reply}` after applying, `{1, reply}` when the guard shows the batch was applied before;
/// `reply` is the JSON array of the operations' answers.
const APPLY_SCRIPT: &str = include_str!("counting.lua");

static APPLY_SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(APPLY_SCRIPT).get_hash().to_owned());

/// What one operation's answer means.
#[derive(Debug, Clone, Copy)]
enum Answer<'a> {
    /// The link's human hits after the batch.
    Link(&'a str),
    /// Broadcast group `n` of the batch: per human recipient hit, new to the set or not.
    Broadcast(usize),
    /// Click `i` may have recorded an opt-out.
    OptOut(usize),
    /// A correction: nothing to read.
    Nothing,
}

/// One script call: a slot's share of the batch.
struct Call<'a> {
    /// The hash tag the guard shares (the slot's first operation's).
    tag: String,
    /// The operations' keys (KEYS[2..]), in one buffer like the arguments.
    keys: Args,
    args: Args,
    answers: Vec<Answer<'a>>,
    /// Bots keys of links with one bot hit, unlisted: the call's `R` operation.
    run: Args,
    /// Unlisted bot hits of links with a bot slot (single node): (slot, hits), the call's `X` operations.
    slotted: Vec<(u32, usize)>,
}

impl Call<'_> {
    /// Adds a key to the call and writes its index (KEYS[1] is the guard, so the first operation key is
    /// KEYS[2]).
    fn key(&mut self, key: String) {
        self.keys.push(key.as_bytes());
        self.args.int(self.keys.len() + 1);
    }

    /// The five keys a broadcast operation (`B`, `D`) names, its counters hash `hash` first.
    fn broadcast_keys(&mut self, store: &RedisStore, hash: String, workspace: &str, broadcast: &str) {
        self.key(hash);
        self.key(store.keys.broadcast_uniques(workspace, broadcast));
        self.key(store.keys.timeline(workspace, broadcast));
        self.key(store.keys.broadcast_recipient_hits(workspace, broadcast));
        self.key(store.keys.broadcast_bot_reasons(workspace, broadcast));
    }
}

/// The call for hash tag `tag`'s slot, opened when it is the first.
fn call_for<'a>(
    calls: &mut Vec<Call<'a>>,
    by_slot: &mut counting::Fast<Slot, usize>,
    cluster: bool,
    tag: &str,
    hits: usize,
) -> usize {
    if !cluster && !calls.is_empty() {
        return 0;
    }
    let slot = if cluster { Slot::for_key(tag) } else { Slot::for_key("") };
    *by_slot.entry(slot).or_insert_with(|| {
        // A single node's call takes the whole batch; a cluster's, the hits of one slot (often one).
        let hits = if cluster { 1 } else { hits };
        calls.push(Call {
            tag: tag.to_owned(),
            keys: Args::with_capacity(hits * KEY_BYTES_PER_HIT),
            args: Args::with_capacity(hits * ARG_BYTES_PER_HIT),
            answers: Vec::new(),
            run: Args::with_capacity(hits * KEY_BYTES_PER_HIT),
            slotted: Vec::with_capacity(if cluster { 0 } else { hits }),
        });
        calls.len() - 1
    })
}

/// About what a counted hit adds to its call's arguments (its recent-click JSON and counters).
const ARG_BYTES_PER_HIT: usize = 256;
/// About what a counted hit's keys take (a bots key, often alone).
const KEY_BYTES_PER_HIT: usize = 32;

/// The script calls of a batch: one on a single node, one per slot on a cluster. Operations are written
/// straight into their call, in the order below.
fn calls<'a>(
    store: &RedisStore,
    batch: &'a Batch,
    groups: &counting::Groups<'a>,
    recent: usize,
) -> Result<Vec<Call<'a>>, StoreError> {
    let clicks = &batch.clicks;
    let cluster = store.pool.is_cluster();
    let mut calls: Vec<Call<'a>> = Vec::new();
    let mut by_slot = counting::Fast::default();
    let mut open = |calls: &mut Vec<Call<'a>>, tag: &str| call_for(calls, &mut by_slot, cluster, tag, clicks.len());
    let mut texts = EscapedTexts::default();
    // Where `L` finds a link's bot slot (single node), named once per batch.
    let slot_keys = (!cluster).then(|| (store.keys.bot_slot_of(), store.keys.bot_slots_prefix()));
    for (code, members) in &groups.links {
        let c = open(&mut calls, code);
        let call = &mut calls[c];
        // The newest `recent` hits not folded (`LINKHIT_RECENT_FOLD`), oldest first.
        let listed = || members.iter().map(|&i| &clicks[i]).filter(|c| !c.folded);
        let n = listed().count();
        let k = n.min(recent);
        let newest = || listed().skip(n - k);
        if members.iter().all(|&i| !clicks[i].is_human() && clicks[i].click_id.is_none()) {
            // Which operation a link takes depends on the batch alone, never on settings: a batch's guard
            // keeps its answers by position, and a replay under other settings must line up with them.
            let repeats = members.iter().all(|&i| clicks[i].folded);
            // A link's hits all carry its one slot (given at its creation, never changed).
            let slot = clicks[members[0]].bot_slot.filter(|_| !cluster);
            if let (true, Some(slot)) = (repeats, slot) {
                // Counted in the dense counters, with the batch's other slotted repeats (`X`).
                call.slotted.push((slot, members.len()));
                continue;
            }
            if repeats && members.len() == 1 {
                // One bot repeat (`LINKHIT_RECENT_FOLD`), a flood's usual hit: one of the call's run.
                call.run.push_parts(&store.keys.bots_parts(code));
                continue;
            }
            if repeats {
                // Bot repeats alone: counted, nothing listed.
                call.args.push(b"c");
                call.key(store.keys.bots(code));
                call.args.int(members.len());
                call.answers.push(Answer::Link(code));
                continue;
            }
            call.args.push(b"b");
            call.key(store.keys.bots(code));
            call.key(store.keys.recent_clicks(code));
            call.args.int(members.len());
            call.args.int(recent);
            call.args.int(k);
            for c in newest() {
                call.args.recent(c, &mut texts);
            }
            call.answers.push(Answer::Link(code));
            continue;
        }
        let human = || members.iter().map(|&i| &clicks[i]).filter(|c| c.is_human());
        let humans = human().count();
        call.args.push(b"L");
        call.key(store.keys.counters(code));
        call.key(store.keys.bots(code));
        call.key(store.keys.recent_clicks(code));
        call.key(store.keys.click_ids(code));
        call.args.int(humans);
        call.args.int(members.len() - humans);
        call.args.int(human().map(|c| c.at.timestamp_millis()).min().unwrap_or(0));
        call.args.int(human().map(|c| c.at.timestamp_millis()).max().unwrap_or(0));
        call.args.int(recent);
        call.args.int(k);
        for c in newest() {
            call.args.recent(c, &mut texts);
        }
        let tracked = || members.iter().map(|&i| &clicks[i]).filter(|c| c.click_id.is_some());
        call.args.int(tracked().count());
        for c in tracked() {
            call.args.push(c.click_id.as_deref().unwrap_or_default().as_bytes());
            call.args.push(c.class.as_str().as_bytes());
        }
        // On a single node, where to find the link's bot slot, read into the answer (its bot hits there
        // count too) — from `P:bslot-of`, not the hits: a build without slots may have rewritten the
        // link without its slot since.
        match &slot_keys {
            None => call.args.int(0),
            Some((slot_of, slots_prefix)) => {
                call.key(slot_of.clone());
                call.args.push(code.as_bytes());
                call.args.push(slots_prefix.as_bytes());
            }
        }
        call.answers.push(Answer::Link(code));
    }
    for (n, ((workspace, broadcast), members)) in groups.broadcasts.iter().enumerate() {
        let hash = store.keys.broadcast(workspace, broadcast);
        let c = open(&mut calls, hash_tag(&hash));
        let call = &mut calls[c];
        let human = members.iter().filter(|&&i| clicks[i].is_human()).count();
        let recipients: Vec<&str> =
            members.iter().filter(|&&i| clicks[i].is_human()).filter_map(|&i| clicks[i].recipient.as_deref()).collect();
        call.args.push(b"B");
        call.broadcast_keys(store, hash, workspace, broadcast);
        call.args.int(members.len());
        call.args.int(human);
        call.args.int(members.len() - human);
        call.args.int(recipients.len());
        for r in &recipients {
            call.args.push(r.as_bytes());
        }
        let buckets = counting::minute_buckets(members.iter().map(|&i| &clicks[i]));
        call.args.int(buckets.len());
        for ((minute, class), hits) in buckets {
            call.args.push(format!("{minute}:{}", if class == Class::Human { 'h' } else { 'b' }).as_bytes());
            call.args.int(hits);
        }
        let mut reasons: std::collections::BTreeMap<&str, u64> = Default::default();
        for &i in members.iter().filter(|&&i| !clicks[i].is_human()) {
            *reasons.entry(&*clicks[i].reason).or_default() += 1;
        }
        call.args.int(reasons.len());
        for (reason, hits) in reasons {
            call.args.push(reason.as_bytes());
            call.args.int(hits);
        }
        call.answers.push(Answer::Broadcast(n));
    }
    for ((workspace, broadcast), members) in &groups.broadcast_opt_outs {
        let key = store.keys.broadcast_opt_outs(workspace, broadcast);
        let c = open(&mut calls, hash_tag(&key));
        let call = &mut calls[c];
        for &i in members {
            call.args.push(b"P");
            call.key(key.clone());
            call.args.push(clicks[i].recipient.as_deref().unwrap_or_default().as_bytes());
            call.answers.push(Answer::Nothing);
        }
    }
    for &i in &groups.opt_outs {
        let click = &clicks[i];
        let recipient = click.recipient.as_deref().unwrap_or_default();
        let key = store.keys.opt_outs(&click.workspace_id);
        let c = open(&mut calls, hash_tag(&key));
        let call = &mut calls[c];
        call.args.push(b"O");
        call.key(key);
        call.args.push(recipient.as_bytes());
        call.args.json(&counting::opt_out_of(click, recipient))?;
        call.answers.push(Answer::OptOut(i));
    }
    // Verdict corrections (hits of earlier batches moved from human to bot), in the same guarded calls.
    let corrections: Vec<&ClickRecord> = batch.corrections.iter().map(|c| &c.click).collect();
    let mut by_link: Vec<(&str, u64)> = Vec::new();
    for c in &corrections {
        match by_link.iter_mut().find(|(code, _)| *code == &*c.code) {
            Some((_, n)) => *n += 1,
            None => by_link.push((&c.code, 1)),
        }
    }
    for (code, n) in by_link {
        let c = open(&mut calls, code);
        let call = &mut calls[c];
        call.args.push(b"C");
        call.key(store.keys.counters(code));
        call.key(store.keys.bots(code));
        call.args.int(n);
        call.answers.push(Answer::Nothing);
    }
    for c in corrections.iter().filter(|c| c.click_id.is_some()) {
        let n = open(&mut calls, &c.code);
        let call = &mut calls[n];
        call.args.push(b"K");
        call.key(store.keys.click_ids(&c.code));
        call.args.push(c.click_id.as_deref().unwrap_or_default().as_bytes());
        call.answers.push(Answer::Nothing);
    }
    for c in corrections.iter().filter(|c| c.kind == crate::model::LinkKind::OptOut) {
        if let (Some(broadcast), Some(recipient)) = (&c.broadcast_id, &c.recipient) {
            let key = store.keys.broadcast_opt_outs(&c.workspace_id, broadcast);
            let n = open(&mut calls, hash_tag(&key));
            let call = &mut calls[n];
            call.args.push(b"Z");
            call.key(key);
            call.args.push(recipient.as_bytes());
            call.answers.push(Answer::Nothing);
        }
    }
    let mut by_broadcast: Vec<((&str, &str), Vec<&ClickRecord>)> = Vec::new();
    // Opt-out links are not engagement: their hits were never in the broadcast's counters.
    for c in corrections.iter().filter(|c| c.broadcast_id.is_some() && c.kind == crate::model::LinkKind::Redirect) {
        let key = (&*c.workspace_id, c.broadcast_id.as_deref().unwrap_or_default());
        match by_broadcast.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(c),
            None => by_broadcast.push((key, vec![c])),
        }
    }
    for ((workspace, broadcast), list) in by_broadcast {
        let hash = store.keys.broadcast(workspace, broadcast);
        let n = open(&mut calls, hash_tag(&hash));
        let call = &mut calls[n];
        call.args.push(b"D");
        call.broadcast_keys(store, hash, workspace, broadcast);
        call.args.int(list.len());
        for c in list {
            let minute = counting::minute_of(c);
            call.args.push(c.recipient.as_deref().unwrap_or_default().as_bytes());
            call.args.push(format!("{minute}:h").as_bytes());
            call.args.push(format!("{minute}:b").as_bytes());
            call.args.push(c.reason.as_bytes());
        }
        call.answers.push(Answer::Nothing);
    }
    for c in corrections.iter().filter(|c| c.kind == crate::model::LinkKind::OptOut) {
        let Some(recipient) = c.recipient.as_deref() else { continue };
        let key = store.keys.opt_outs(&c.workspace_id);
        let n = open(&mut calls, hash_tag(&key));
        let call = &mut calls[n];
        call.args.push(b"Y");
        call.key(key);
        call.args.push(recipient.as_bytes());
        call.args.json(&counting::opt_out_of(c, recipient))?;
        call.answers.push(Answer::Nothing);
    }
    for call in &mut calls {
        call.slotted.sort_unstable();
        let slotted = std::mem::take(&mut call.slotted);
        for shard in slotted.chunk_by(|a, b| Keys::bot_shard(a.0) == Keys::bot_shard(b.0)) {
            let (key, _) = store.keys.bot_slots(shard[0].0);
            call.args.push(b"X");
            call.key(key);
            // Links with one hit (a flood's usual) by their offset alone; the others with their hits.
            let ones = shard.iter().filter(|(_, hits)| *hits == 1).count();
            call.args.int(ones);
            for &(slot, _) in shard.iter().filter(|(_, hits)| *hits == 1) {
                call.args.push_parts(&["#", itoa::Buffer::new().format(Keys::bot_offset(slot))]);
            }
            call.args.int(shard.len() - ones);
            for &(slot, hits) in shard.iter().filter(|(_, hits)| *hits != 1) {
                call.args.push_parts(&["#", itoa::Buffer::new().format(Keys::bot_offset(slot))]);
                call.args.int(hits);
            }
            call.answers.push(Answer::Nothing);
        }
        if !call.run.is_empty() {
            call.args.push(b"R");
            call.args.int(call.keys.len() + 2);
            call.args.int(call.run.len());
            call.keys.append(&call.run);
            call.answers.push(Answer::Nothing);
        }
    }
    Ok(calls)
}

/// Counts a batch (see `Store::record_batch`).
pub(super) async fn record_batch(
    store: &RedisStore,
    batch: &Batch,
    recent: usize,
) -> Result<Vec<ClickTally>, StoreError> {
    let clicks = &batch.clicks;
    let groups = counting::group(clicks);
    let calls = calls(store, batch, &groups, recent)?;
    let cluster = store.pool.is_cluster();
    let guard_ms = store.guard_ttl.as_millis().max(1) as u64;
    let mut tagged = Vec::with_capacity(calls.len());
    for call in &calls {
        // Run by its SHA: the 7 KB of script text are neither sent nor hashed per call (on a cluster a
        // batch is a call per slot, often one per hit). A single node gets it loaded at the head of its
        // first pipeline; a node without it (restarted, failed over, a new cluster master) answers
        // NOSCRIPT; the script is then loaded and the batch sent again (`spread_script`): the calls that
        // ran answer from their guards.
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(APPLY_SHA.as_str()).arg(call.keys.len() + 1).arg(store.keys.guard(&call.tag, &batch.id));
        for key in call.keys.iter() {
            cmd.arg(key);
        }
        cmd.arg(guard_ms);
        for arg in call.args.iter() {
            cmd.arg(arg);
        }
        tagged.push((call.tag.clone(), cmd));
    }
    let mut prelude = Vec::new();
    let mut released = store.take_released();
    if cluster {
        store.unlink_in_background(std::mem::take(&mut released));
    } else {
        if !released.is_empty() {
            let mut unlink = redis::cmd("UNLINK");
            unlink.arg(&released);
            prelude.push(unlink);
        }
        // Until a pipeline has loaded it, the script heads the pipeline (no extra round trip on the
        // first commit, which a short commit patience would journal); after that, never per batch.
        if !store.script_loaded.load(Ordering::Relaxed) {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(APPLY_SCRIPT);
            prelude.push(load);
        }
    }
    let spread = async {
        let replies = store.pool.spread_script(tagged, &prelude, Some(APPLY_SCRIPT)).await;
        if replies.is_ok() && !cluster {
            store.script_loaded.store(true, Ordering::Relaxed);
        }
        replies
    };
    let replies = match store.bounded(COMMIT_TIMEOUT, spread).await {
        Ok(replies) => replies,
        Err(err) => {
            if !cluster {
                // The pipeline may not have run: keep the guards to release for the next one.
                store.requeue_released(released);
            }
            return Err(err);
        }
    };
    let bad = |what: String| StoreError::Corrupt(format!("unexpected reply to the counting script: {what}"));
    let mut human_after: counting::Fast<&str, u64> = counting::Fast::default();
    let mut all_after: counting::Fast<&str, u64> = counting::Fast::default();
    let mut first_in_broadcast = vec![false; clicks.len()];
    let mut opted_out = vec![false; clicks.len()];
    let mut duplicate = false;
    for (call, reply) in calls.iter().zip(replies) {
        let (seen, answers) = match reply {
            Value::Array(parts) => match parts.as_slice() {
                [Value::Int(seen), Value::BulkString(json)] => (*seen == 1, json.clone()),
                other => return Err(bad(format!("{other:?}"))),
            },
            other => return Err(bad(format!("{other:?}"))),
        };
        duplicate |= seen;
        let answers: Vec<serde_json::Value> = match serde_json::from_slice(&answers) {
            Ok(serde_json::Value::Array(a)) => a,
            // cjson encodes an empty table as `{}`.
            Ok(serde_json::Value::Object(o)) if o.is_empty() => Vec::new(),
            _ => return Err(bad(String::from_utf8_lossy(&answers).into_owned())),
        };
        if answers.len() != call.answers.len() {
            return Err(bad(format!("{} answers for {} operations", answers.len(), call.answers.len())));
        }
        for (meaning, answer) in call.answers.iter().zip(answers) {
            match *meaning {
                Answer::Link(code) => {
                    // `{human, bot}` after the batch, or 0 when the batch had no human hit of the link.
                    let pair = answer.as_array().map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect::<Vec<_>>());
                    if let Some([human, bot]) = pair.as_deref() {
                        human_after.insert(code, *human);
                        all_after.insert(code, human + bot);
                    }
                }
                Answer::Broadcast(n) => {
                    let added = answer.as_array().cloned().unwrap_or_default();
                    let mut added = added.iter();
                    for &i in &groups.broadcasts[n].1 {
                        if clicks[i].is_human() && clicks[i].recipient.is_some() {
                            first_in_broadcast[i] = added.next().and_then(|v| v.as_u64()) == Some(1);
                        }
                    }
                }
                Answer::OptOut(i) => opted_out[i] = answer.as_u64() == Some(1),
                Answer::Nothing => {}
            }
        }
    }
    store.remember_guards(&batch.id, calls.iter().map(|c| store.keys.guard(&c.tag, &batch.id)).collect());
    if duplicate {
        metrics::counter!("linkhit_batches_deduplicated_total").increment(1);
        tracing::info!(batch = %batch.id, "batch was counted before; nothing counted twice");
    }
    Ok(counting::tallies(clicks, &human_after, &all_after, &first_in_broadcast, &opted_out))
}

/// The guard keys of a batch, one per script call, when this process did not count it (a replay after
/// a restart releases batches counted by an earlier run).
pub(super) fn guards(store: &RedisStore, batch: &Batch) -> Vec<String> {
    let groups = counting::group(&batch.clicks);
    match calls(store, batch, &groups, 0) {
        Ok(calls) => calls.iter().map(|c| store.keys.guard(&c.tag, &batch.id)).collect(),
        Err(_) => Vec::new(),
    }
}
