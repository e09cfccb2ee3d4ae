//! linkhit on a real 3-master Redis Cluster (redis-server --cluster-enabled, joined with
//! redis-cli --cluster create): links, counters, unique clicks, cache invalidation and webhooks through
//! two instances, with keys spread over every master.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{IMESSAGE_PREVIEW, IPHONE, Receiver, RedisServer, TestServer, client, free_port, hit, send, tap};
use serde_json::{Value, json};

struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = common::temp_dir("cluster-node");
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("nodes.conf");
            nodes.push(RedisServer::start_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--dir",
                    dir.to_str().unwrap(),
                ],
            ));
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut node.conn()).unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not become ok: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_counters_invalidation_and_webhooks_on_a_cluster() {
    let cluster = Cluster::start();
    let receiver = Receiver::start().await;
    let mut config = common::config(None);
    config.redis_url = Some(cluster.url());
    config.webhook_allow_private = true;
    config.click_flush_interval = Duration::from_millis(50);
    let a = TestServer::start(config.clone()).await;
    config.journal_dir = common::temp_dir("journal-b"); // one process per journal directory
    let b = TestServer::start(config).await;
    let http = client();
    assert_eq!(http.get(a.url("/readyz")).send().await.unwrap().status(), 200);

    let (_, key) = common::create_workspace(&http, &a, "cluster").await;
    let (status, _) =
        send(http.put(a.url("/api/v1/webhooks")).bearer_auth(&key).json(&json!({"click_url": receiver.url}))).await;
    assert_eq!(status, 200);
    let recipients: Vec<Value> = (0..500).map(|i| json!({"recipient": format!("+1202555{i:04}")})).collect();
    let (status, body) = send(http.post(a.url("/api/v1/broadcasts/c1/links")).bearer_auth(&key).json(
        &common::sent_an_hour_ago("/api/v1/links", json!({"target_url": "https://e.com/c", "recipients": recipients})),
    ))
    .await;
    assert_eq!(status, 201, "{body}");
    let codes: Vec<String> =
        body["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap().to_owned()).collect();
    assert_eq!(codes.iter().collect::<std::collections::HashSet<_>>().len(), 500);

    // Keys are spread over every master.
    for node in &cluster.nodes {
        let size: u64 = redis::cmd("DBSIZE").query(&mut node.conn()).unwrap();
        assert!(size > 50, "node {} holds only {size} keys", node.port);
    }

    // Resolve on B what A created (20 hits without a user agent: bots); taps on both instances count
    // into the same counters.
    for code in &codes[..20] {
        assert_eq!(hit(&http, &b, code).await, (302, Some("https://e.com/c".into())));
    }
    for (i, code) in codes[..10].iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        tap(&http, server, code, IPHONE).await;
        tap(&http, server, code, IPHONE).await;
        tap(&http, server, code, IMESSAGE_PREVIEW).await;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let stats = loop {
        let (_, s) = send(http.get(a.url("/api/v1/broadcasts/c1/stats")).bearer_auth(&key)).await;
        if s["hits"] == 50 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        stats,
        json!({"broadcast_id": "c1", "links": 500, "hits": 50, "human_hits": 20, "bot_hits": 30, "unique_clicks": 10,
               "delivered": 0, "bot_reasons": {"empty_user_agent": 20, "preview:imessage": 10},
               "opt_outs": 0, "opt_out_links": 0, "conversions": 0, "conversion_value": {}})
    );
    let (_, link) = send(http.get(b.url(&format!("/api/v1/links/{}/stats", codes[0]))).bearer_auth(&key)).await;
    assert_eq!((link["hits"].clone(), link["human_hits"].clone()), (json!(4), json!(2)));

    // Every human click reached the webhook receiver (20 distinct events).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids: std::collections::HashSet<String> =
            receiver.hooks().iter().filter_map(|h| h.header("webhook-id")).collect();
        if ids.len() == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{} of 20 webhooks delivered", ids.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A disable on A reaches B's cache within a second (pub/sub is cluster-wide).
    let (status, _) = send(http.delete(a.url(&format!("/api/v1/links/{}", codes[1]))).bearer_auth(&key)).await;
    assert_eq!(status, 204);
    // Until the invalidation arrives, B redirects (and counts) the link: those hits count too.
    let served = std::sync::atomic::AtomicU64::new(0);
    let propagated = common::eventually(Duration::from_secs(1), || async {
        let status = hit(&http, &b, &codes[1]).await.0;
        if status == 302 {
            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        status == 410
    })
    .await;
    assert!(propagated, "B still redirects a link disabled on A");

    let want = 50 + served.load(std::sync::atomic::Ordering::Relaxed);
    let listed = common::eventually(Duration::from_secs(3), || async {
        let (_, list) = send(http.get(a.url("/api/v1/broadcasts")).bearer_auth(&key)).await;
        list["broadcasts"][0]["hits"] == want
    })
    .await;
    assert!(listed, "the broadcast list counts every hit ({want})");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// One master stops (SIGSTOP) while batches are counted: the slots on the other masters apply their
/// share, the stopped one does not answer; the batch is journaled in doubt and replayed, the guards of
/// the slots that answered make their share a no-op, and the stopped master's share is applied when it
/// resumes. Every counter exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_stopped_mid_batch_counts_each_hit_once() {
    let cluster = Cluster::start();
    let mut config = common::config(None);
    config.redis_url = Some(cluster.url());
    config.click_flush_interval = Duration::from_millis(50);
    config.click_batch = 40;
    let server = TestServer::start(config).await;
    let http = client();
    let base = server.url("");
    let (_, key) = common::create_workspace(&http, &server, "cluster-fault").await;
    let mut traffic = common::Traffic::create(&http, &base, &key, "stop", 120).await;
    traffic.run(&http, &base).await;
    cluster.nodes[1].pause();
    traffic.run(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[1].resume();
    traffic.run(&http, &base).await;
    traffic.assert_counted_exactly(&http, &base, &key, Duration::from_secs(30)).await;
    server.stop().await.unwrap();
}

/// Counting runs the script by its SHA on a cluster too (never `EVAL` with the script's text per slot
/// call), and a master that lost its scripts (`SCRIPT FLUSH`: as after a restart or failover) gets it
/// loaded again: every hit still counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_the_script_still_counts_each_hit_once() {
    let cluster = Cluster::start();
    let mut config = common::config(None);
    config.redis_url = Some(cluster.url());
    config.click_flush_interval = Duration::from_millis(50);
    let server = TestServer::start(config).await;
    let http = client();
    let (_, key) = common::create_workspace(&http, &server, "noscript").await;
    let recipients: Vec<Value> = (0..60).map(|i| json!({"recipient": format!("+1202555{i:04}")})).collect();
    let (status, body) = send(http.post(server.url("/api/v1/broadcasts/s1/links")).bearer_auth(&key).json(
        &common::sent_an_hour_ago("/api/v1/links", json!({"target_url": "https://e.com/s", "recipients": recipients})),
    ))
    .await;
    assert_eq!(status, 201, "{body}");
    let codes: Vec<String> =
        body["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap().to_owned()).collect();
    let counted = |want: u64| {
        let (http, server, key) = (&http, &server, &key);
        async move {
            common::eventually(Duration::from_secs(5), || async move {
                let (_, s) = send(http.get(server.url("/api/v1/broadcasts/s1/stats")).bearer_auth(key)).await;
                s["hits"] == want
            })
            .await
        }
    };
    for code in &codes[..30] {
        tap(&http, &server, code, IMESSAGE_PREVIEW).await;
    }
    assert!(counted(30).await, "the first 30 hits counted");
    for node in &cluster.nodes[..2] {
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut node.conn()).unwrap();
    }
    for code in &codes {
        tap(&http, &server, code, IMESSAGE_PREVIEW).await;
    }
    assert!(counted(90).await, "all 90 hits counted");
    // Settled: nothing counted twice after the retry.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, stats) = send(http.get(server.url("/api/v1/broadcasts/s1/stats")).bearer_auth(&key)).await;
    assert_eq!((stats["hits"].clone(), stats["bot_hits"].clone()), (json!(90), json!(90)));
    let (_, link) = send(http.get(server.url(&format!("/api/v1/links/{}/stats", codes[0]))).bearer_auth(&key)).await;
    assert_eq!(link["hits"], 2);
    let mut evals = 0;
    for node in &cluster.nodes {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut node.conn()).unwrap();
        evals += info.lines().filter(|l| l.starts_with("cmdstat_eval:")).count();
    }
    assert_eq!(evals, 0, "the script text was sent with EVAL");
    server.stop().await.unwrap();
}
