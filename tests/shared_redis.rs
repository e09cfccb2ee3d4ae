//! Many instances on one Redis: cross-instance resolution, disable propagation, restarts, outages.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN, Env, RedisServer, TestServer, client, config, eventually, hit, send};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_created_on_a_resolves_on_b_and_disable_reaches_b_within_a_second() {
    let env = Env::new(common::Backend::Redis).await;
    let b = TestServer::start(config(env.redis.as_ref())).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/ab"})).await["code"].as_str().unwrap().to_owned();

    // B has never seen the code: it reads Redis, then serves from its cache.
    assert_eq!(hit(&env.http, &b, &code).await, (302, Some("https://example.com/ab".into())));
    assert_eq!(hit(&env.http, &b, &code).await.0, 302);

    let disabled_at = Instant::now();
    let (status, _) = send(env.http.delete(env.url(&format!("/api/v1/links/{code}"))).bearer_auth(&env.key)).await;
    assert_eq!(status, 204);
    let propagated = eventually(Duration::from_secs(1), || async { hit(&env.http, &b, &code).await.0 == 410 }).await;
    assert!(propagated, "B still redirects {:?} after the disable on A", disabled_at.elapsed());

    // B's API sees the same data too.
    let (status, link) = send(env.http.get(b.url(&format!("/api/v1/links/{code}"))).bearer_auth(&env.key)).await;
    assert_eq!(status, 200);
    assert_eq!(link["status"], "disabled");
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_workspaces_keys_and_links() {
    let redis = RedisServer::start();
    let first = Env::with_config(config(Some(&redis)), None).await;
    let code =
        first.create_link(json!({"target_url": "https://example.com/r"})).await["code"].as_str().unwrap().to_owned();
    let key = first.key.clone();
    first.server.stop().await.unwrap();

    let second = TestServer::start(config(Some(&redis))).await;
    let http = client();
    assert_eq!(hit(&http, &second, &code).await, (302, Some("https://example.com/r".into())));
    let (status, link) = send(http.get(second.url(&format!("/api/v1/links/{code}"))).bearer_auth(&key)).await;
    assert_eq!(status, 200, "the API key survived the restart: {link}");
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_and_cached_links_outlive_it() {
    let env = Env::new(common::Backend::Redis).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/up"})).await["code"].as_str().unwrap().to_owned();
    assert_eq!(env.hit(&code).await.0, 302); // cached now
    let ready = || async { env.http.get(env.url("/readyz")).send().await.unwrap().status().as_u16() };
    assert_eq!(ready().await, 200);

    // Redis hangs (SIGSTOP): cached links still redirect, misses fail fast with 503, readyz says 503.
    let redis = env.redis.as_ref().unwrap();
    let unknown = redis.unknown_valid_code();
    let forged = redis.code_with_wrong_check();
    redis.pause();
    let started = Instant::now();
    assert_eq!(env.hit(&code).await, (302, Some("https://example.com/up".into())));
    assert_eq!(env.hit(&unknown).await.0, 503);
    assert!(started.elapsed() < Duration::from_secs(5), "a miss must not hang: {:?}", started.elapsed());
    assert_eq!(env.hit(&forged).await.0, 404, "a code with wrong check characters never reaches Redis");
    assert_eq!(ready().await, 503);
    let (status, body) = env.post("/api/v1/links", json!({"target_url": "https://example.com"})).await;
    assert_eq!(common::error_code(status, &body, 503), "STORE_UNAVAILABLE");

    redis.resume();
    assert!(eventually(Duration::from_secs(5), || async { ready().await == 200 }).await);
    assert_eq!(env.hit(&unknown).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_becomes_ready_when_it_appears() {
    let port = common::free_port();
    let mut cfg = config(None);
    cfg.redis_url = Some(format!("redis://127.0.0.1:{port}/"));
    let server = TestServer::start(cfg).await;
    let http = client();
    assert_eq!(http.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(server.url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(hit(&http, &server, "zzzzzzzz").await.0, 503);
    let _redis = RedisServer::start_on(port);
    let became_ready = eventually(Duration::from_secs(10), || async {
        http.get(server.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    assert!(became_ready);
    let (status, _) =
        send(http.post(server.url("/api/v1/workspaces")).bearer_auth(ADMIN).json(&json!({"name": "late"}))).await;
    assert_eq!(status, 201);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_codes_barely_reaches_redis() {
    let env = Env::new(common::Backend::Redis).await;
    let redis = env.redis.as_ref().unwrap();
    let gets = || -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
        info.lines()
            .find(|l| l.starts_with("cmdstat_get:"))
            .and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = gets();
    let plain = linkhit::code::CodePolicy::new(8, 8);
    for _ in 0..1000 {
        assert_eq!(env.hit(&plain.generate()).await.0, 404);
    }
    let reached = gets() - before;
    assert!(reached <= 10, "{reached} of 1,000 random codes reached Redis");
}
