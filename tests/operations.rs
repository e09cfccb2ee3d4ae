//! An operator's view (issue #16): the admin listener keeps `/metrics` and the health routes reachable
//! while public clients hold every public connection slot, and `/metrics` passes Prometheus' own linter
//! (`promtool check metrics`, from the Debian package `prometheus`; `.ci/run` installs it).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, IPHONE, WHATSAPP, config, tap_from};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_while_public_clients_hold_every_slot() {
    let admin_port = common::free_port();
    let mut config = config(None);
    config.max_connections = 2;
    config.admin_listen = Some(format!("127.0.0.1:{admin_port}").parse().unwrap());
    let env = Env::with_config(config, None).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let quick = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    // `/metrics` lives only on the admin listener; the health routes on both.
    assert_eq!(quick.get(env.url("/metrics")).send().await.unwrap().status(), 404);
    assert_eq!(quick.get(format!("{admin}/metrics")).send().await.unwrap().status(), 200);
    assert_eq!(quick.get(env.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(quick.get(format!("{admin}/nothing")).send().await.unwrap().status(), 404, "ops routes only");

    // Two slow clients take both public slots and send nothing (the header timeout is 10 s).
    let public = env.server.base.trim_start_matches("http://").to_owned();
    let held: Vec<std::net::TcpStream> = (0..2).map(|_| std::net::TcpStream::connect(&public).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new client (not one of the kept-alive connections that may hold the slots already) gets no answer.
    let fresh = reqwest::Client::builder().timeout(Duration::from_secs(2)).pool_max_idle_per_host(0).build().unwrap();
    let starved = fresh.get(env.url("/healthz")).send().await;
    assert!(starved.is_err(), "the public listener is full: {starved:?}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = fresh.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} on the admin listener while the public one is full");
    }
    drop(held);
}

fn promtool() -> String {
    for name in ["promtool"] {
        if Command::new("which").arg(name).output().is_ok_and(|o| o.status.success()) {
            return name.to_owned();
        }
    }
    panic!("this test needs promtool: apt-get install prometheus (.ci/run installs it)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let env = Env::new(common::Backend::Embedded).await;
    // Traffic that touches most series: a human and a bot hit, a conversion, an opt-out, an error.
    let link = env.create_link(json!({"target_url": "https://shop.example/", "track_conversions": true})).await;
    let code = link["code"].as_str().unwrap();
    tap_from(&env.http, &env.server.base, code, IPHONE, "198.51.100.1").await;
    tap_from(&env.http, &env.server.base, code, WHATSAPP, "198.51.100.2").await;
    env.post("/api/v1/conversions", json!({"code": code, "name": "purchase", "value": 5})).await;
    env.post("/api/v1/opt-outs", json!({"recipient": "+12025550100"})).await;
    env.poll_json(&format!("/api/v1/links/{code}/stats"), Duration::from_secs(5), |s| s["hits"] == 2).await;
    let text = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("# HELP linkhit_redirects_total"), "{text}");
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}
