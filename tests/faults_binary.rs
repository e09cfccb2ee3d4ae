//! Faults that need the real `linkhit` binary: `kill -9` during an outage and during a journal replay,
//! SIGTERM while Redis hangs, a closed stderr, and an unusable journal directory at start. Counts are
//! checked exactly per link and per broadcast (`common::Traffic`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN, RedisServer, Traffic, client, free_port, send};
use linkhit::click::journal::{EntryRef, Journal};
use linkhit::model::{Batch, Class, ClickRecord, LinkKind};
use serde_json::json;

/// A running `linkhit` binary on a free port.
struct Linkhit {
    child: Child,
    base: String,
}

impl Linkhit {
    fn start(redis: &RedisServer, journal: &Path, extra: &[(&str, &str)]) -> Self {
        Self::start_with(redis, journal, extra, Stdio::null())
    }

    fn start_with(redis: &RedisServer, journal: &Path, extra: &[(&str, &str)], stderr: Stdio) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_linkhit"))
            .env("LINKHIT_LISTEN", format!("127.0.0.1:{port}"))
            .env("LINKHIT_ADMIN_TOKEN", ADMIN)
            .env("LINKHIT_REDIS_URL", redis.url())
            .env("LINKHIT_JOURNAL_DIR", journal)
            .env("LINKHIT_TRUSTED_PROXIES", "127.0.0.1/32")
            .env("LINKHIT_CLICK_FLUSH_INTERVAL", "0.05")
            .env("LINKHIT_CLICK_BATCH", "20")
            .env("LINKHIT_CLICK_HOLD", "0")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "linkhit did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, base: format!("http://127.0.0.1:{port}") }
    }

    fn signal(&self, sig: &str) {
        common::signal(self.child.id(), sig);
    }

    /// Waits for the exit; `None` if it did not come within `within`.
    fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Linkhit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn workspace(http: &reqwest::Client, base: &str) -> String {
    let (status, body) =
        send(http.post(format!("{base}/api/v1/workspaces")).bearer_auth(ADMIN).json(&json!({"name": "f"}))).await;
    assert_eq!(status, 201, "{body}");
    body["api_key"].as_str().unwrap().to_owned()
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "jsonl")).count())
        .unwrap_or(0)
}

/// `kill -9` while Redis hangs: a flush interval after the last answered tap, every hit is on disk;
/// the next start counts each exactly once. (The documented bound — hits of the last flush interval —
/// is what a kill *within* that interval can lose.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_outage_loses_nothing_older_than_a_flush_interval() {
    let redis = RedisServer::start();
    let journal = common::temp_dir("kill9-journal");
    let http = client();
    let first = Linkhit::start(&redis, &journal, &[]);
    let key = workspace(&http, &first.base).await;
    let mut traffic = Traffic::create(&http, &first.base, &key, "kill9", 50).await;
    traffic.run(&http, &first.base).await;
    let before = traffic.total();
    let counted = common::eventually(Duration::from_secs(10), || async {
        let (_, s) = send(http.get(format!("{}/api/v1/broadcasts/kill9/stats", first.base)).bearer_auth(&key)).await;
        s["hits"].as_u64() == Some(before)
    })
    .await;
    assert!(counted, "the taps before the outage are counted");
    redis.pause();
    traffic.run(&http, &first.base).await;
    traffic.run(&http, &first.base).await;
    // Every hit answered during the outage reaches the disk within about a flush interval (50 ms here;
    // waited for rather than slept, as a loaded CI machine may take longer to get there).
    let outage = (traffic.total() - before) as f64;
    let on_disk = common::eventually(Duration::from_secs(10), || async {
        let text = http.get(format!("{}/metrics", first.base)).send().await.unwrap().text().await.unwrap();
        common::metric(&text, "linkhit_journal_spilled_total") >= outage
    })
    .await;
    assert!(on_disk, "the outage's hits were journaled");
    first.signal("KILL");
    drop(first);
    assert!(segments(&journal) > 0, "the outage's hits are on disk");
    redis.resume();
    let second = Linkhit::start(&redis, &journal, &[]);
    traffic.assert_counted_exactly(&http, &second.base, &key, Duration::from_secs(20)).await;
}

/// `kill -9` in the middle of a journal replay, twice: the replay markers and the batch guards make
/// the third run finish the replay without counting anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_journal_replay_counts_each_batch_once() {
    let redis = RedisServer::start();
    let journal = common::temp_dir("replay-journal");
    let http = client();
    let setup = Linkhit::start(&redis, &journal, &[]);
    let key = workspace(&http, &setup.base).await;
    let (_, body) = send(
        http.post(format!("{}/api/v1/broadcasts/replay/links", setup.base))
            .bearer_auth(&key)
            .json(&common::sent_an_hour_ago("/api/v1/links", json!({"target_url": "https://e.com/r", "recipients": [{"recipient": "+12025550100"}, {"recipient": "+12025550101"}]}))),
    )
    .await;
    let codes: Vec<String> =
        body["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap().to_owned()).collect();
    let (_, link) = send(http.get(format!("{}/api/v1/links/{}", setup.base, codes[0])).bearer_auth(&key)).await;
    let workspace_id = link["workspace_id"].as_str().map(str::to_owned).unwrap_or_default();
    drop(setup);

    // What an earlier run left: 1,500 batches of 4 hits (3 human on link 0, 1 bot on link 1).
    let record = |code: &str, recipient: &str, class: Class| ClickRecord {
        code: code.into(),
        workspace_id: workspace_id.as_str().into(),
        broadcast_id: Some("replay".into()),
        recipient: Some(recipient.into()),
        kind: LinkKind::Redirect,
        at: chrono::Utc::now(),
        class,
        reason: "test".into(),
        method: "GET".into(),
        user_agent: None,
        ip: None,
        signals: None,
        click_id: None,
        folded: false,
        bot_slot: None,
    };
    let batches: Vec<Batch> = (0..1500)
        .map(|n| Batch {
            id: format!("earlier-run-{n}"),
            clicks: vec![
                record(&codes[0], "+12025550100", Class::Human),
                record(&codes[0], "+12025550100", Class::Human),
                record(&codes[0], "+12025550100", Class::Human),
                record(&codes[1], "+12025550101", Class::Bot),
            ],
            corrections: Vec::new(),
        })
        .collect();
    {
        let j = Journal::open(&journal, 1 << 30).unwrap();
        for chunk in batches.chunks(500) {
            let entries: Vec<EntryRef<'_>> = chunk.iter().map(|b| EntryRef { batch: b, attempted_at: None }).collect();
            j.append(&entries).unwrap();
            j.take_segments().unwrap();
        }
    }
    let stats_of = |base: String, key: String| {
        let http = http.clone();
        async move {
            let (_, s) = send(http.get(format!("{base}/api/v1/broadcasts/replay/stats")).bearer_auth(&key)).await;
            s["hits"].as_u64().unwrap_or(0)
        }
    };
    for run in 0..2 {
        let replaying = Linkhit::start(&redis, &journal, &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Kill once some of the journal is counted, and before all of it is.
        loop {
            let hits = stats_of(replaying.base.clone(), key.clone()).await;
            if hits > (run as u64 + 1) * 600 {
                break;
            }
            assert!(Instant::now() < deadline, "run {run}: replay made no progress ({hits})");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        replaying.signal("KILL");
        drop(replaying);
    }
    let last = Linkhit::start(&redis, &journal, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while segments(&journal) > 0 {
        assert!(Instant::now() < deadline, "the replay did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, s) = send(http.get(format!("{}/api/v1/broadcasts/replay/stats", last.base)).bearer_auth(&key)).await;
    assert_eq!(
        (s["hits"].clone(), s["human_hits"].clone(), s["bot_hits"].clone(), s["unique_clicks"].clone()),
        (json!(6000), json!(4500), json!(1500), json!(1)),
        "{s}"
    );
    for (code, want) in [(&codes[0], json!([4500, 0])), (&codes[1], json!([0, 1500]))] {
        let (_, l) = send(http.get(format!("{}/api/v1/links/{code}/stats", last.base)).bearer_auth(&key)).await;
        assert_eq!(json!([l["human_hits"], l["bot_hits"]]), want, "{l}");
    }
}

/// A Redis stall while taps keep coming: once Redis answers again, the store is healthy again and new
/// batches are counted directly, though the journal is never empty while the taps go on (each replay
/// finds batches journaled while it ran). An earlier build waited for an empty journal to call the store
/// healthy, so under steady traffic every hit took the journal's way (written, fsynced, read back) for
/// as long as the traffic lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_answers_again_takes_commits_while_taps_go_on() {
    let redis = RedisServer::start();
    let journal = common::temp_dir("recover-journal");
    let http = client();
    let server = Linkhit::start(&redis, &journal, &[("LINKHIT_CLICK_BATCH", "5")]);
    let key = workspace(&http, &server.base).await;
    let mut traffic = Traffic::create(&http, &server.base, &key, "recover", 40).await;
    let metrics = || async {
        let text = http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
        (common::metric(&text, "linkhit_store_healthy"), common::metric(&text, "linkhit_journal_spilled_total"))
    };
    traffic.run(&http, &server.base).await;
    redis.pause();
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_millis(600) {
        traffic.run(&http, &server.base).await;
    }
    redis.resume();
    assert!(metrics().await.1 > 0.0, "the stall sent batches to the journal");
    // Taps go on; within a few probes (one a second) the store must take commits again, and then
    // nothing more reaches the journal.
    let resumed = Instant::now();
    let mut healthy_since: Option<f64> = None;
    let mut rounds_healthy = 0;
    while rounds_healthy < 10 {
        assert!(
            resumed.elapsed() < Duration::from_secs(8),
            "the store was not healthy again within 8 s of Redis answering while taps went on: {:?}",
            metrics().await
        );
        traffic.run(&http, &server.base).await;
        let (healthy, spilled) = metrics().await;
        // Ten rounds in a row healthy with nothing journaled (the batches journaled during the last
        // replay are replayed at the next probe, which may send a few more there while it runs).
        match healthy_since {
            Some(since) if healthy == 1.0 && spilled == since => rounds_healthy += 1,
            _ if healthy == 1.0 => (healthy_since, rounds_healthy) = (Some(spilled), 0),
            _ => (healthy_since, rounds_healthy) = (None, 0),
        }
    }
    traffic.assert_counted_exactly(&http, &server.base, &key, Duration::from_secs(20)).await;
}

/// A Redis that answers, but every commit later than a flush interval (`DEBUG SLEEP` over and over):
/// the first slow commit sends the store to the journal, and it stays unhealthy while even the replays
/// are slow — one slow direct commit in all. An earlier build called the store healthy after every
/// probe whose replay merely succeeded, inviting direct commits that outwait their patience, are
/// journaled in doubt and are applied twice by Redis (late, then from their guards). Once Redis is
/// prompt again the store is healthy, and every hit is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_stays_on_the_journal_until_it_answers_in_time() {
    let redis = RedisServer::start_with(free_port(), &["--enable-debug-command", "yes"]);
    let journal = common::temp_dir("slow-journal");
    let http = client();
    let server = Linkhit::start(&redis, &journal, &[("LINKHIT_CLICK_BATCH", "5")]);
    let key = workspace(&http, &server.base).await;
    let mut traffic = Traffic::create(&http, &server.base, &key, "slow", 40).await;
    let metrics = || async {
        let text = http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
        (
            common::metric(&text, "linkhit_store_healthy"),
            common::metric(&text, r#"linkhit_store_errors_total{op="record_batch_slow"}"#),
        )
    };
    traffic.run(&http, &server.base).await;
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sleeper = {
        let (slow, mut conn) = (std::sync::Arc::clone(&slow), redis.conn());
        std::thread::spawn(move || {
            while slow.load(std::sync::atomic::Ordering::Relaxed) {
                redis::cmd("DEBUG").arg("SLEEP").arg(0.2).query::<()>(&mut conn).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = Instant::now();
    let mut healthy_rounds = 0;
    while started.elapsed() < Duration::from_secs(5) {
        traffic.run(&http, &server.base).await;
        if started.elapsed() > Duration::from_secs(1) && metrics().await.0 == 1.0 {
            healthy_rounds += 1;
        }
    }
    let slow_commits = metrics().await.1;
    slow.store(false, std::sync::atomic::Ordering::Relaxed);
    sleeper.join().unwrap();
    assert_eq!(
        (healthy_rounds, slow_commits),
        (0, 1.0),
        "(rounds of taps after the first second with the store healthy, slow direct commits) while Redis was slow"
    );
    let prompt = Instant::now();
    while metrics().await.0 != 1.0 {
        assert!(prompt.elapsed() < Duration::from_secs(10), "the store is healthy again once Redis is prompt");
        traffic.run(&http, &server.base).await;
    }
    traffic.assert_counted_exactly(&http, &server.base, &key, Duration::from_secs(20)).await;
}

/// SIGTERM while Redis hangs: the process ends within the grace period plus 5 s (the shipped 30 s
/// SIGKILL timeouts are never reached), journaling what it could not count; the next start counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_redis_hangs_ends_in_time_and_loses_nothing() {
    let redis = RedisServer::start();
    let journal = common::temp_dir("sigterm-journal");
    let http = client();
    let mut first = Linkhit::start(&redis, &journal, &[("LINKHIT_SHUTDOWN_GRACE", "2")]);
    let key = workspace(&http, &first.base).await;
    let mut traffic = Traffic::create(&http, &first.base, &key, "term", 40).await;
    traffic.run(&http, &first.base).await;
    redis.pause();
    traffic.run(&http, &first.base).await;
    first.signal("TERM");
    let status = first.wait(Duration::from_secs(2 + 5));
    assert!(status.is_some(), "linkhit still running 7 s after SIGTERM with a 2 s grace period");
    assert!(status.unwrap().success());
    redis.resume();
    let second = Linkhit::start(&redis, &journal, &[]);
    traffic.assert_counted_exactly(&http, &second.base, &key, Duration::from_secs(20)).await;
}

/// stderr closed under the process (a dead log shipper): API calls still answer, clicks still count,
/// and SIGTERM still ends it with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_costs_log_lines_only() {
    let redis = RedisServer::start();
    let journal = common::temp_dir("stderr-journal");
    let http = client();
    let mut linkhit = Linkhit::start_with(&redis, &journal, &[("RUST_LOG", "debug")], Stdio::piped());
    drop(linkhit.child.stderr.take()); // the reading end is gone: every write to stderr fails (EPIPE)
    let key = workspace(&http, &linkhit.base).await;
    // Errors are logged: an unknown route, bad JSON, a bad key.
    for _ in 0..3 {
        let (status, body) =
            send(http.post(format!("{}/api/v1/links", linkhit.base)).bearer_auth(&key).body("{")).await;
        assert_eq!(status, 400, "the API answers while logging fails: {body}");
        let (status, _) = send(http.get(format!("{}/api/v1/links/x", linkhit.base)).bearer_auth("nope")).await;
        assert_eq!(status, 401);
    }
    let mut traffic = Traffic::create(&http, &linkhit.base, &key, "stderr", 10).await;
    traffic.run(&http, &linkhit.base).await;
    traffic.assert_counted_exactly(&http, &linkhit.base, &key, Duration::from_secs(10)).await;
    let metrics = http.get(format!("{}/metrics", linkhit.base)).send().await.unwrap().text().await.unwrap();
    assert!(common::metric(&metrics, "linkhit_log_write_errors_total") > 0.0, "lost log lines are counted");
    linkhit.signal("TERM");
    let status = linkhit.wait(Duration::from_secs(15)).expect("SIGTERM ends the process");
    assert!(status.success(), "{status:?}");
}

/// An unusable journal directory stops the process at start with exit 2 and names the variable,
/// instead of losing clicks during the first outage.
#[test]
fn an_unusable_journal_directory_stops_start_up() {
    let blocker: PathBuf = common::temp_dir("journal-blocker");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"a file, not a directory").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_linkhit"))
        .env("LINKHIT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("LINKHIT_ADMIN_TOKEN", ADMIN)
        .env_remove("LINKHIT_REDIS_URL")
        .env("LINKHIT_JOURNAL_DIR", blocker.join("journal"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LINKHIT_JOURNAL_DIR"), "{stderr}");
    let _ = std::fs::remove_file(&blocker);
}
