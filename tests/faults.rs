//! The fault suite: every way Redis or the disk can fail while clicks arrive, each ending with counts
//! checked exactly — per link (hits, human/bot split) and per broadcast (hits, split, unique clicks):
//! counted == answered, or answered − reported dropped for a full journal. Redis-backed, in process;
//! the faults that need the real binary (kill -9, SIGTERM, stderr, start-up checks) are in
//! `tests/faults_binary.rs`. (Metrics are process-wide and the tests of this file run concurrently, so
//! metric assertions here only ever check that something happened, never that it did not.)

mod common;

use std::time::Duration;

use common::{Env, RedisServer, Traffic, config, metric};

async fn metrics(env: &Env) -> String {
    env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// A private Redis, a server over it committing every 50 ms in batches of `batch`, and a broadcast of
/// `links` links with its traffic.
async fn faulted(broadcast: &str, batch: usize, links: usize) -> (RedisServer, Env, String, Traffic) {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.click_flush_interval = Duration::from_millis(50);
    cfg.click_batch = batch;
    let env = Env::with_config(cfg, None).await;
    let base = env.url("");
    let traffic = Traffic::create(&env.http, &base, &env.key, broadcast, links).await;
    (redis, env, base, traffic)
}

/// Redis hangs (SIGSTOP) longer than a commit may wait: the waiting batches are journaled as in doubt
/// while Redis still holds their commands; when Redis resumes it executes those late *and* linkhit
/// replays them — the batch guards make the second application a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stalled_past_the_commit_timeout_counts_each_hit_once() {
    let (redis, env, base, mut traffic) = faulted("stall", 20, 60).await;
    traffic.run(&env.http, &base).await; // every link cached, some counted
    redis.pause();
    traffic.run(&env.http, &base).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // commits abandoned, batches journaled
    redis.resume();
    traffic.run(&env.http, &base).await;
    traffic.assert_counted_exactly(&env.http, &base, &env.key, Duration::from_secs(20)).await;
    let text = metrics(&env).await;
    assert!(
        metric(&text, "linkhit_batches_deduplicated_total") >= 1.0,
        "a late-executed batch was replayed and answered from its guard:\n{}",
        text.lines()
            .filter(|l| l.contains("batches_dedup") || l.contains("store_errors"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Redis loses its scripts (`SCRIPT FLUSH`, as after a restart without persistence or a failover): the
/// counting script runs by its SHA and is loaded only when Redis answers `NOSCRIPT`, then the batch is
/// sent again — every hit counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_scripts_counts_each_hit_once() {
    let (redis, env, base, mut traffic) = faulted("noscript", 20, 60).await;
    traffic.run(&env.http, &base).await;
    traffic.assert_counted_exactly(&env.http, &base, &env.key, Duration::from_secs(10)).await;
    for _ in 0..3 {
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut redis.conn()).unwrap();
        traffic.run(&env.http, &base).await;
        traffic.assert_counted_exactly(&env.http, &base, &env.key, Duration::from_secs(10)).await;
    }
    let text = metrics(&env).await;
    assert!(metric(&text, "linkhit_redis_script_loads_total") >= 1.0, "the script was loaded again");
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
    let calls = |name: &str| -> u64 {
        let line = info.lines().find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")));
        line.unwrap_or_else(|| panic!("no {name} in {info}")).split(',').next().unwrap().parse().unwrap()
    };
    let (loads, evals) = (calls("script|load"), calls("evalsha"));
    // Loaded per batch (as before) would be one load per call; here: after each flush, and at most once
    // more for a slow commit replayed from the journal while its first attempt ran.
    assert!(loads >= 3 && loads * 3 <= evals, "loaded when missing, not per batch: {loads} loads, {evals} calls");
}

/// Redis refuses writes (`maxmemory` reached with `noeviction`) for a while: nothing is counted half,
/// nothing twice; once memory is available again, every journaled hit is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_for_lack_of_memory_count_each_hit_once() {
    let (redis, env, base, mut traffic) = faulted("oom", 25, 80).await;
    traffic.run(&env.http, &base).await;
    traffic.assert_counted_exactly(&env.http, &base, &env.key, Duration::from_secs(10)).await;
    let mut conn = redis.conn();
    let used: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
    let used: u64 = used.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query(&mut conn).unwrap();
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(used.saturating_sub(1024)).query(&mut conn).unwrap();
    traffic.run(&env.http, &base).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, during) = env.get_json("/api/v1/broadcasts/oom/stats").await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query(&mut conn).unwrap();
    traffic.run(&env.http, &base).await;
    traffic.assert_counted_exactly(&env.http, &base, &env.key, Duration::from_secs(20)).await;
    let text = metrics(&env).await;
    assert!(metric(&text, "linkhit_store_errors_total") >= 1.0, "the refusals were seen: {during}");
}

/// A journal capped at a few kilobytes while Redis hangs: what does not fit is dropped and reported;
/// everything else is counted once: counted == answered − reported dropped, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_counts_exactly_what_it_did_not_report_dropped() {
    let redis = RedisServer::start();
    let mut cfg = config(Some(&redis));
    cfg.click_flush_interval = Duration::from_millis(20);
    cfg.click_batch = 5;
    cfg.journal_max_bytes = 6_000;
    let env = Env::with_config(cfg, None).await;
    let base = env.url("");
    let mut traffic = Traffic::create(&env.http, &base, &env.key, "full", 40).await;
    traffic.run(&env.http, &base).await;
    traffic.assert_counted_exactly(&env.http, &base, &env.key, Duration::from_secs(10)).await;
    let counted_before = traffic.total();
    redis.pause();
    traffic.run(&env.http, &base).await;
    traffic.run(&env.http, &base).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();
    let dropped = metric(&metrics(&env).await, "linkhit_hits_dropped_total{stage=\"journal\"}") as u64;
    assert!(dropped > 0, "the journal limit was reached");
    let want = traffic.total() - dropped;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let hits = loop {
        let (_, stats) = env.get_json("/api/v1/broadcasts/full/stats").await;
        let hits = stats["hits"].as_u64().unwrap();
        if hits >= want || std::time::Instant::now() > deadline {
            break hits;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, stats) = env.get_json("/api/v1/broadcasts/full/stats").await;
    assert_eq!(stats["hits"].as_u64(), Some(hits));
    assert_eq!(
        hits,
        want,
        "answered {} (of which {counted_before} before the outage), reported dropped {dropped}",
        traffic.total()
    );
    assert_eq!(metric(&metrics(&env).await, "linkhit_hits_dropped_total{stage=\"journal\"}") as u64, dropped);
}
