//! With Redis, accepted webhook events survive the process: SIGKILL linkhit while the receiver is down,
//! start it again, and every event arrives. Also: split roles share the outbox.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN, IPHONE, Receiver, RedisServer, TestServer, client, free_port, send, tap};
use serde_json::json;

fn spawn_linkhit(port: u16, redis: &RedisServer, journal: &std::path::Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_linkhit"))
        .env("LINKHIT_LISTEN", format!("127.0.0.1:{port}"))
        .env("LINKHIT_REDIS_URL", redis.url())
        .env("LINKHIT_ADMIN_TOKEN", ADMIN)
        .env("LINKHIT_WEBHOOK_ALLOW_PRIVATE", "true")
        .env(
            "LINKHIT_WEBHOOK_RETRY_SCHEDULE",
            "0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3",
        )
        .env("LINKHIT_WEBHOOK_CLAIM_IDLE", "1")
        .env("LINKHIT_CLICK_FLUSH_INTERVAL", "0.05")
        // Events at once: the hold window is not what this test is about.
        .env("LINKHIT_CLICK_HOLD", "0")
        .env("LINKHIT_JOURNAL_DIR", journal)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "linkhit did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_receiver_is_down_loses_no_event() {
    let redis = RedisServer::start();
    let journal = common::temp_dir("wh-durability");
    let receiver_port = free_port();
    let port = free_port();
    let mut first = spawn_linkhit(port, &redis, &journal);
    let base = format!("http://127.0.0.1:{port}");
    let http = client();

    let (_, ws) =
        send(http.post(format!("{base}/api/v1/workspaces")).bearer_auth(ADMIN).json(&json!({"name": "d"}))).await;
    let key = ws["api_key"].as_str().unwrap().to_owned();
    let (status, _) = send(
        http.put(format!("{base}/api/v1/webhooks"))
            .bearer_auth(&key)
            .json(&json!({"click_url": format!("http://127.0.0.1:{receiver_port}/hook")})),
    )
    .await;
    assert_eq!(status, 200);
    let mut codes = Vec::new();
    for i in 0..5 {
        let (_, link) = send(
            http.post(format!("{base}/api/v1/links"))
                .bearer_auth(&key)
                .json(&common::sent_an_hour_ago("/api/v1/links", json!({"target_url": format!("https://e.com/{i}")}))),
        )
        .await;
        codes.push(link["code"].as_str().unwrap().to_owned());
    }
    for code in &codes {
        let status = http.get(format!("{base}/{code}")).header("user-agent", IPHONE).send().await.unwrap().status();
        assert_eq!(status, 302);
    }
    // Every event has failed at least once (the receiver is down): they sit in the outbox.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, logs) = send(http.get(format!("{base}/api/v1/webhooks/logs?limit=100")).bearer_auth(&key)).await;
        let ids: HashSet<String> =
            logs["logs"].as_array().unwrap().iter().map(|l| l["event_id"].as_str().unwrap().to_owned()).collect();
        if ids.len() >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "events were not attempted: {logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::signal(first.id(), "KILL");
    first.wait().unwrap();

    let receiver = Receiver::start_on(receiver_port).await;
    let mut second = spawn_linkhit(free_port(), &redis, &journal);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids: HashSet<String> = receiver.hooks().iter().filter_map(|h| h.header("webhook-id")).collect();
        if ids.len() == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of 5 events arrived after the restart", ids.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::signal(second.id(), "TERM");
    assert_eq!(second.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_and_worker_roles_share_the_outbox() {
    use linkhit::config::Role;
    let redis = RedisServer::start();
    let receiver = Receiver::start().await;
    let mut redirect_cfg = common::config(Some(&redis));
    redirect_cfg.role = Role::Redirect;
    redirect_cfg.webhook_allow_private = true;
    redirect_cfg.click_flush_interval = Duration::from_millis(50);
    let mut worker_cfg = common::config(Some(&redis));
    worker_cfg.role = Role::Worker;
    worker_cfg.webhook_allow_private = true;
    let redirector = TestServer::start(redirect_cfg).await;
    let worker = TestServer::start(worker_cfg).await;
    let http = client();
    let (_, key) = common::create_workspace(&http, &redirector, "roles").await;
    send(http.put(redirector.url("/api/v1/webhooks")).bearer_auth(&key).json(&json!({"click_url": receiver.url})))
        .await;
    let (_, link) = send(
        http.post(redirector.url("/api/v1/links"))
            .bearer_auth(&key)
            .json(&common::sent_an_hour_ago("/api/v1/links", json!({"target_url": "https://e.com/r"}))),
    )
    .await;
    let code = link["code"].as_str().unwrap();
    assert_eq!(tap(&http, &redirector, code, IPHONE).await, 302);
    assert_eq!(tap(&http, &worker, code, IPHONE).await, 404, "a worker serves no redirects");
    assert_eq!(http.get(worker.url("/readyz")).send().await.unwrap().status(), 200);
    receiver.wait_for(1, Duration::from_secs(5)).await;
    redirector.stop().await.unwrap();
    worker.stop().await.unwrap();
}

#[test]
fn split_roles_require_redis() {
    let out = Command::new(env!("CARGO_BIN_EXE_linkhit"))
        .env("LINKHIT_ROLE", "worker")
        .env_remove("LINKHIT_REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LINKHIT_REDIS_URL"));
}
