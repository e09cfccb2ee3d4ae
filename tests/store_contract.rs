//! The `Store` trait's promises, checked identically on the embedded store and on a real Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use linkhit::code::CodePolicy;
use linkhit::model::{Batch, Class, ClickRecord, Correction, Link, LinkKind};
use linkhit::store::memory::MemoryStore;
use linkhit::store::redis::RedisStore;
use linkhit::store::{Invalidation, SharedStore, insert_unique};
use tokio_util::sync::CancellationToken;

fn link(code: &str, target: &str) -> Link {
    Link {
        code: code.into(),
        workspace_id: "ws_test".into(),
        kind: LinkKind::Redirect,
        target_url: Some(target.into()),
        broadcast_id: Some("b".into()),
        recipient: Some("+12025550100".into()),
        message_id: None,
        sender: None,
        message_ref: None,
        created_at: Utc::now(),
        sent_at: None,
        expires_at: None,
        disabled_at: None,
        delivered_at: None,
        delivery_status: None,
        ..Default::default()
    }
}

async fn insert_never_overwrites(store: SharedStore) {
    let first = link("AAAAAAAA", "https://example.com/first");
    assert_eq!(store.insert_links(std::slice::from_ref(&first)).await.unwrap(), vec![true]);
    // The same code again, and twice within one batch: only new codes are taken.
    let batch = vec![
        link("AAAAAAAA", "https://example.com/second"),
        link("BBBBBBBB", "https://example.com/b1"),
        link("BBBBBBBB", "https://example.com/b2"),
    ];
    assert_eq!(store.insert_links(&batch).await.unwrap(), vec![false, true, false]);
    assert_eq!(
        store.get_link("AAAAAAAA").await.unwrap().unwrap().target_url.as_deref(),
        Some("https://example.com/first")
    );
    assert_eq!(
        store.get_link("BBBBBBBB").await.unwrap().unwrap().target_url.as_deref(),
        Some("https://example.com/b1")
    );
}

async fn collisions_get_fresh_codes(store: SharedStore) {
    store.insert_links(&[link("CCCCCCCC", "https://example.com/old")]).await.unwrap();
    let mut links = vec![
        link("CCCCCCCC", "https://example.com/new"),
        link("DDDDDDDD", "https://example.com/d"),
        link("DDDDDDDD", "https://example.com/d2"),
    ];
    insert_unique(store.as_ref(), &mut links, &CodePolicy::new(8, 8)).await.unwrap();
    assert_ne!(links[0].code, "CCCCCCCC", "the colliding link got a new code");
    assert_eq!(links[1].code, "DDDDDDDD");
    assert_ne!(links[2].code, "DDDDDDDD");
    for l in &links {
        assert_eq!(store.get_link(&l.code).await.unwrap().unwrap().target_url, l.target_url);
    }
    assert_eq!(
        store.get_link("CCCCCCCC").await.unwrap().unwrap().target_url.as_deref(),
        Some("https://example.com/old")
    );
}

async fn disable_is_idempotent(store: SharedStore) {
    store.insert_links(&[link("EEEEEEEE", "https://example.com/e")]).await.unwrap();
    let t1 = Utc::now();
    let first = store.disable_link("EEEEEEEE", t1).await.unwrap().unwrap();
    let second = store.disable_link("EEEEEEEE", t1 + chrono::Duration::seconds(5)).await.unwrap().unwrap();
    assert_eq!(first.disabled_at, second.disabled_at, "the first disable wins");
    assert!(store.disable_link("NOTTHERE", t1).await.unwrap().is_none());
}

#[tokio::test]
async fn embedded_store_contract() {
    insert_never_overwrites(Arc::new(MemoryStore::default())).await;
    collisions_get_fresh_codes(Arc::new(MemoryStore::default())).await;
    disable_is_idempotent(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_store_contract() {
    let redis = common::RedisServer::start();
    let open = |prefix: &str| -> SharedStore {
        Arc::new(RedisStore::open(&redis.url(), prefix, Duration::from_secs(1)).unwrap())
    };
    insert_never_overwrites(open("t1")).await;
    collisions_get_fresh_codes(open("t2")).await;
    disable_is_idempotent(open("t3")).await;
}

#[tokio::test]
async fn redis_invalidations_reach_subscribers() {
    let redis = common::RedisServer::start();
    let a = RedisStore::open(&redis.url(), "inv", Duration::from_secs(1)).unwrap();
    let b = RedisStore::open(&redis.url(), "inv", Duration::from_secs(1)).unwrap();
    let shutdown = CancellationToken::new();
    let mut feed = linkhit::store::Store::invalidations(&b, shutdown.clone()).unwrap();
    // The first message after subscribing says "you may have missed something".
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.unwrap(), Some(Invalidation::All));
    linkhit::store::Store::insert_links(&a, &[link("FFFFFFFF", "https://example.com/f")]).await.unwrap();
    linkhit::store::Store::disable_link(&a, "FFFFFFFF", Utc::now()).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.unwrap(),
        Some(Invalidation::Code("FFFFFFFF".into()))
    );
    shutdown.cancel();
}

/// A hit of a batch (no broadcast: the link counters and recent clicks alone).
fn hit(code: &str, class: Class, folded: bool) -> ClickRecord {
    ClickRecord {
        code: code.into(),
        workspace_id: "ws_test".into(),
        broadcast_id: None,
        recipient: None,
        kind: LinkKind::Redirect,
        at: Utc::now(),
        class,
        reason: if class == Class::Human { "browser:Safari".into() } else { "preview:whatsapp".into() },
        method: "GET".into(),
        user_agent: None,
        ip: None,
        signals: None,
        click_id: None,
        folded,
        bot_slot: None,
    }
}

/// Folded bot repeats are counted and not listed, in every shape a batch can hold them (one link with one
/// repeat, several, mixed with a listed bot or a human); and a batch's operations depend on the batch
/// alone: counted under one `LINKHIT_RECENT_CLICKS` and replayed under another (an in-doubt batch
/// replayed after a restart with other settings, or by another instance), it answers from its guard
/// exactly as the first time and changes nothing.
async fn folded_repeats_count_once_whatever_the_settings(store: SharedStore) {
    use Class::{Bot, Human};
    let clicks = vec![
        hit("fold1", Bot, true),
        hit("fold2", Bot, true),
        hit("fold2", Bot, true),
        hit("mixed", Bot, false),
        hit("mixed", Bot, true),
        hit("human", Human, false),
        hit("human", Bot, true),
        hit("listed", Bot, false),
    ];
    let batch = Batch { id: "fold-batch-1".into(), clicks, corrections: Vec::new() };
    let first = store.record_batch(&batch, 2).await.unwrap();
    for recent in [0, 2, 100] {
        assert_eq!(store.record_batch(&batch, recent).await.unwrap(), first, "replayed with {recent} recent");
    }
    for (code, human, bot, listed) in
        [("fold1", 0, 1, 0), ("fold2", 0, 2, 0), ("mixed", 0, 2, 1), ("human", 1, 1, 1), ("listed", 0, 1, 1)]
    {
        let s = store.link_stats(code).await.unwrap();
        assert_eq!((s.hits, s.human_hits, s.bot_hits), (human + bot, human, bot), "{code}");
        assert_eq!(store.recent_clicks(code, 100).await.unwrap().len(), listed, "{code}");
    }
}

/// The embedded store, and a store (keys under `prefix`) over a private Redis the returned server keeps
/// running: for a promise both must keep.
fn both_stores(prefix: &str) -> (SharedStore, SharedStore, common::RedisServer) {
    let redis = common::RedisServer::start();
    let store: SharedStore = Arc::new(RedisStore::open(&redis.url(), prefix, Duration::from_secs(1)).unwrap());
    (Arc::new(MemoryStore::default()), store, redis)
}

#[tokio::test]
async fn folded_repeats_on_both_stores() {
    let (embedded, redis_store, _redis) = both_stores("f");
    folded_repeats_count_once_whatever_the_settings(embedded).await;
    folded_repeats_count_once_whatever_the_settings(redis_store).await;
}

/// A batch may carry corrections and no hits (they waited in intake for the committer, and no hit came
/// since): it moves the corrected human hit to the bots like any correction, and counted again (a
/// replay through its guard) it changes nothing.
async fn a_batch_of_corrections_alone_moves_its_hits(store: SharedStore) {
    assert_eq!(store.insert_links(&[link("corr1", "https://example.com/a")]).await.unwrap(), vec![true]);
    let human = ClickRecord {
        broadcast_id: Some("b".into()),
        recipient: Some("+12025550100".into()),
        ..hit("corr1", Class::Human, false)
    };
    let counted = Batch { id: "corr-batch-1".into(), clicks: vec![human.clone()], corrections: Vec::new() };
    store.record_batch(&counted, 10).await.unwrap();
    let stats = store.broadcast_stats("ws_test", "b").await.unwrap().unwrap();
    assert_eq!((stats.hits, stats.human_hits, stats.unique_clicks), (1, 1, 1));
    let flipped = ClickRecord { class: Class::Bot, reason: "sweep".into(), ..human };
    let corrections = vec![Correction { click: flipped, event_id: "corr-batch-1:0".into() }];
    let alone = Batch { id: "corr-batch-2".into(), clicks: Vec::new(), corrections };
    for _ in 0..2 {
        assert!(store.record_batch(&alone, 10).await.unwrap().is_empty(), "no hits, no tallies");
        let s = store.link_stats("corr1").await.unwrap();
        assert_eq!((s.hits, s.human_hits, s.bot_hits), (1, 0, 1));
        let stats = store.broadcast_stats("ws_test", "b").await.unwrap().unwrap();
        assert_eq!((stats.hits, stats.human_hits, stats.bot_hits, stats.unique_clicks), (1, 0, 1, 0));
    }
}

#[tokio::test]
async fn a_batch_of_corrections_alone_on_both_stores() {
    let (embedded, redis_store, _redis) = both_stores("c");
    a_batch_of_corrections_alone_moves_its_hits(embedded).await;
    a_batch_of_corrections_alone_moves_its_hits(redis_store).await;
}

/// A flood's bot repeats are counted wherever the store keeps a link's bot hits — on a single Redis
/// node, in the link's bot slot (given at creation), one `BITFIELD` per batch — and read back exactly:
/// alone and in runs, mixed with hits recorded before the link had a slot (an earlier build's
/// journal), in the answer a later human hit's tally gives, and unchanged by a replay.
async fn bot_repeats_count_exactly_wherever_they_are_kept(store: SharedStore, slotted: bool) {
    let codes = ["slotA001", "slotB001", "slotC001"];
    let links: Vec<Link> = codes.iter().map(|c| link(c, "https://example.com/s")).collect();
    assert_eq!(store.insert_links(&links).await.unwrap(), vec![true; 3]);
    let mut slots = Vec::new();
    for code in codes {
        slots.push(store.get_link(code).await.unwrap().unwrap().bot_slot);
    }
    if slotted {
        let s: Vec<u32> = slots.iter().map(|s| s.expect("a link created on a single node has a bot slot")).collect();
        assert!(s[1] == s[0] + 1 && s[2] == s[1] + 1, "consecutive: {s:?}");
    } else {
        assert_eq!(slots, [None, None, None]);
    }
    let repeat = |i: usize| ClickRecord { bot_slot: slots[i], ..hit(codes[i], Class::Bot, true) };
    // A: one repeat; B: three; C: two, and one from before the link had a slot.
    let clicks = vec![
        repeat(0),
        repeat(1),
        repeat(1),
        repeat(1),
        repeat(2),
        repeat(2),
        ClickRecord { bot_slot: None, ..repeat(2) },
    ];
    let flood = Batch { id: "slot-batch-1".into(), clicks, corrections: Vec::new() };
    let first = store.record_batch(&flood, 10).await.unwrap();
    assert_eq!(store.record_batch(&flood, 10).await.unwrap(), first, "replayed: the same answer");
    for (code, bots) in [(codes[0], 1), (codes[1], 3), (codes[2], 3)] {
        let s = store.link_stats(code).await.unwrap();
        assert_eq!((s.hits, s.human_hits, s.bot_hits), (bots, 0, bots), "{code}");
        assert!(store.recent_clicks(code, 10).await.unwrap().is_empty(), "repeats are not listed");
    }
    // A human hit on C: its tally counts C's bot hits, in the slot and out of it.
    let human = ClickRecord { bot_slot: slots[2], ..hit(codes[2], Class::Human, false) };
    let later = Batch { id: "slot-batch-2".into(), clicks: vec![repeat(2), human], corrections: Vec::new() };
    let tallies = store.record_batch(&later, 10).await.unwrap();
    assert_eq!((tallies[1].human_hits, tallies[1].hits), (1, 5), "3 bots before, 1 in the batch, 1 human");
    let s = store.link_stats(codes[2]).await.unwrap();
    assert_eq!((s.hits, s.human_hits, s.bot_hits), (5, 1, 4));
}

#[tokio::test]
async fn bot_repeats_count_exactly_on_both_stores() {
    let (embedded, store, redis) = both_stores("s");
    bot_repeats_count_exactly_wherever_they_are_kept(embedded, false).await;
    bot_repeats_count_exactly_wherever_they_are_kept(Arc::clone(&store), true).await;
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("s:bslots:*").query(&mut conn).unwrap();
    assert_eq!(keys, ["s:bslots:{0}"], "the repeats went to the dense counters");

    // A code already taken: not inserted, and the other link keeps its slot.
    let slot_of = |conn: &mut redis::Connection| -> Option<u32> {
        redis::cmd("HGET").arg("s:bslot-of").arg("slotC001").query(conn).unwrap()
    };
    let before = slot_of(&mut conn);
    assert!(before.is_some());
    assert_eq!(store.insert_links(&[link("slotC001", "https://example.com/other")]).await.unwrap(), vec![false]);
    assert_eq!(slot_of(&mut conn), before);

    // A build without bot slots rewrites the link (a disable, a delivery report) and drops its slot from
    // the JSON: its hits come without one and are counted in the link's key; the slot's count is still
    // read, by the stats and by the next human hit's tally.
    let json: String = redis::cmd("GET").arg("s:link:{slotC001}").query(&mut conn).unwrap();
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    old.as_object_mut().unwrap().remove("bot_slot");
    let _: () = redis::cmd("SET").arg("s:link:{slotC001}").arg(old.to_string()).query(&mut conn).unwrap();
    assert_eq!(store.get_link("slotC001").await.unwrap().unwrap().bot_slot, None);
    let clicks = vec![hit("slotC001", Class::Bot, true), hit("slotC001", Class::Human, false)];
    let batch = Batch { id: "slot-batch-3".into(), clicks, corrections: Vec::new() };
    let tallies = store.record_batch(&batch, 10).await.unwrap();
    assert_eq!((tallies[1].human_hits, tallies[1].hits), (2, 7), "2 humans, 2 bots in the slot, 3 in the key");
    let s = store.link_stats("slotC001").await.unwrap();
    assert_eq!((s.hits, s.human_hits, s.bot_hits), (7, 2, 5), "2 bots in the slot, 3 in the key");
}
