//! Webhooks end to end: configuration API, formats on the wire, signatures, retries, dead letters,
//! OAuth, isolation between receivers — against a scripted receiver on port 0, on both stores.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{ADMIN, Backend, Env, IPHONE, Receiver, Reply, WHATSAPP, error_code, send, tap};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

on_both_stores!(
    settings_validation_and_masking,
    a_human_click_is_delivered_signed_in_8x8,
    link_hit_and_fields_formats_count_human_hits,
    unique_clicks_only_fires_once_per_recipient,
    opt_outs_go_to_the_opt_out_url,
    failures_are_retried_on_schedule_with_a_stable_event_id,
    the_last_failure_dead_letters,
    retry_after_is_honoured,
    static_and_oauth_authorization,
    test_endpoint_sends_a_sample_now,
    a_slow_receiver_does_not_delay_another_workspace,
    a_hanging_token_endpoint_does_not_delay_another_workspace,
    a_flood_on_a_hanging_receiver_stays_bounded_and_another_workspace_flows,
    dead_letters_are_listed_and_replayed_with_their_event_ids,
    secrets_only_go_where_they_were_stored_for,
    unknown_fields_are_refused_on_every_route,
);

/// An env whose webhooks may target 127.0.0.1 and whose retries are fast.
async fn env(backend: Backend, schedule: &str) -> Env {
    env_with(backend, schedule, |_| {}).await
}

async fn env_with(backend: Backend, schedule: &str, adjust: impl FnOnce(&mut linkhit::Config)) -> Env {
    let redis = (backend == Backend::Redis).then(common::RedisServer::start);
    let mut config = common::config(redis.as_ref());
    config.webhook_allow_private = true;
    config.webhook_retry_schedule = linkhit::config::parse_schedule(schedule).unwrap();
    config.click_flush_interval = Duration::from_millis(50);
    adjust(&mut config);
    Env::with_config(config, redis).await
}

async fn dead_letters(env: &Env, key: &str) -> Value {
    let (status, body) = send(env.http.get(env.url("/api/v1/webhooks/dead-letters?limit=1000")).bearer_auth(key)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn put(env: &Env, body: Value) -> (u16, Value) {
    send(env.http.put(env.url("/api/v1/webhooks")).bearer_auth(&env.key).json(&body)).await
}

async fn link(env: &Env, body: Value) -> String {
    env.create_link(body).await["code"].as_str().unwrap().to_owned()
}

async fn logs(env: &Env, limit: usize) -> Vec<Value> {
    let (status, body) = env.get_json(&format!("/api/v1/webhooks/logs?limit={limit}")).await;
    assert_eq!(status, 200, "{body}");
    body["logs"].as_array().unwrap().clone()
}

fn verify_signature(secret_b64: &str, hook: &common::Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(secret_b64).unwrap();
    let id = hook.header("webhook-id").unwrap();
    let ts = hook.header("webhook-timestamp").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{}", hook.body).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    hook.header("webhook-signature").unwrap() == format!("v1,{expected}")
}

async fn settings_validation_and_masking(backend: Backend) {
    let redis = (backend == Backend::Redis).then(common::RedisServer::start);
    let env = Env::with_config(common::config(redis.as_ref()), redis).await; // private URLs NOT allowed
    let cases = [
        (json!({"click_url": "ftp://hooks.example.com/"}), "INVALID_URL"),
        (json!({"click_url": "http://127.0.0.1:9/hook"}), "INVALID_URL"),
        (json!({"click_url": "http://169.254.169.254/latest/meta-data"}), "INVALID_URL"),
        (json!({"click_url": "http://2130706433/"}), "INVALID_URL"),
        (json!({"click_url": 42}), "INVALID_URL"),
        (json!({"signing_secret": ""}), "INVALID_SECRET"),
        (json!({"signing_secret": "s".repeat(65)}), "INVALID_SECRET"),
        (json!({"signing_secret": 1}), "INVALID_SECRET"),
        (json!({"click_fields": []}), "INVALID_FIELDS"),
        (json!({"click_fields": null}), "INVALID_FIELDS"),
        (json!({"click_fields": ["event_id", "nope"]}), "INVALID_FIELDS"),
        (json!({"unique_clicks_only": "true"}), "INVALID_TOGGLE"),
        (json!({"enabled": 1}), "INVALID_TOGGLE"),
        (json!({"signing_secret": "whsec_dGVzdA==", "clear_signing_secret": true}), "CONFLICTING_FIELDS"),
        (json!({"format": "xml"}), "INVALID_FORMAT"),
    ];
    for (body, code) in cases {
        let (status, resp) = put(&env, body.clone()).await;
        assert_eq!(error_code(status, &resp, 400), code, "{body}");
    }
    let (status, resp) = send(
        env.http
            .put(env.url("/api/v1/webhooks"))
            .bearer_auth(&env.key)
            .header("content-type", "application/json")
            .body("{oops"),
    )
    .await;
    assert_eq!(error_code(status, &resp, 400), "INVALID_BODY");

    let (status, stored) = put(
        &env,
        json!({
            "click_url": "https://hooks.example.com/click",
            "opt_out_url": "https://hooks.example.com/stop",
            "format": "link_hit",
            "signing_secret": "whsec_dGVzdC1zZWNyZXQtdmFsdWU=",
            "http_authorization": "Bearer very-secret-token",
            "oauth": {"url": "https://auth.example.com/token", "client_id": "cid", "client_secret": "csecret"},
            "unique_clicks_only": true,
        }),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["signing_secret"], "***");
    assert_eq!(stored["http_authorization"], "***");
    assert_eq!(stored["oauth"]["client_secret"], "***");
    assert_eq!(stored["format"], "link_hit");
    assert_eq!(stored["unique_clicks_only"], true);
    let (status, shown) = env.get_json("/api/v1/webhooks").await;
    assert_eq!(status, 200);
    for secret in ["dGVzdC1zZWNyZXQtdmFsdWU", "very-secret-token", "csecret"] {
        assert!(!shown.to_string().contains(secret), "GET leaks a secret: {shown}");
        assert!(!stored.to_string().contains(secret));
    }
    // Partial update: only the format changes; "" disables a channel.
    let (_, after) = put(&env, json!({"format": "8x8", "opt_out_url": ""})).await;
    assert_eq!(after["format"], "8x8");
    assert_eq!(after["click_url"], "https://hooks.example.com/click");
    assert_eq!(after["opt_out_url"], Value::Null);
    assert_eq!(after["signing_secret"], "***");
    let (_, cleared) = put(&env, json!({"clear_signing_secret": true})).await;
    assert_eq!(cleared["signing_secret"], Value::Null);

    // Permissions.
    let (_, body) = send(
        env.http
            .post(env.url(&format!("/api/v1/workspaces/{}/keys", env.workspace_id)))
            .bearer_auth(ADMIN)
            .json(&json!({"permissions": ["webhooks.read"]})),
    )
    .await;
    let reader = body["api_key"].as_str().unwrap();
    let (status, _) = send(env.http.get(env.url("/api/v1/webhooks")).bearer_auth(reader)).await;
    assert_eq!(status, 200);
    let (status, resp) = send(env.http.put(env.url("/api/v1/webhooks")).bearer_auth(reader).json(&json!({}))).await;
    assert_eq!(error_code(status, &resp, 403), "FORBIDDEN");
    let (status, _) = send(env.http.get(env.url("/api/v1/webhooks"))).await;
    assert_eq!(status, 401);
}

async fn a_human_click_is_delivered_signed_in_8x8(backend: Backend) {
    let env = env(backend, "1").await;
    let receiver = Receiver::start().await;
    let (status, _) = put(
        &env,
        json!({"click_url": format!("{}/click", receiver.url), "signing_secret": "whsec_dGVzdC1zZWNyZXQtdmFsdWU="}),
    )
    .await;
    assert_eq!(status, 200);
    let code = link(
        &env,
        json!({"target_url": "https://shop.example/fall", "recipient": "+12025550293", "message_id": "m-1", "broadcast_id": "fall"}),
    )
    .await;
    tap(&env.http, &env.server, &code, WHATSAPP).await; // a preview: never delivered
    tap(&env.http, &env.server, &code, IPHONE).await;
    let hooks = receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.hooks().len(), 1, "bots fire nothing");
    let hook = &hooks[0];
    assert_eq!(hook.path, "/click");
    assert_eq!(hook.header("content-type").as_deref(), Some("application/json"));
    assert!(hook.header("user-agent").unwrap().starts_with("linkhit/"));
    assert!(verify_signature("dGVzdC1zZWNyZXQtdmFsdWU=", hook), "Standard Webhooks signature verifies");
    let ts: i64 = hook.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    let body = hook.json();
    assert_eq!(body["namespace"], "SMS");
    assert_eq!(body["eventType"], "short_url_clicked");
    assert_eq!(body["description"], "Short URL from SMS clicked");
    let p = &body["payload"];
    assert_eq!(p["eventId"].as_str(), hook.header("webhook-id").as_deref());
    assert_eq!(p["umid"], "m-1");
    assert_eq!(p["destination"], "+12025550293");
    assert_eq!(p["shortUrl"], format!("{}/{code}", env.server.base));
    assert_eq!(p["targetUrl"], "https://shop.example/fall");
    assert!(chrono::DateTime::parse_from_rfc3339(p["occurredAt"].as_str().unwrap()).is_ok());
    let log = logs(&env, 10).await;
    assert_eq!(log[0]["outcome"], "delivered");
    assert_eq!(log[0]["response_code"], 200);
    assert_eq!(log[0]["attempt"], 1);
    assert_eq!(log[0]["type"], "click");
    assert_eq!(log[0]["payload"], body);
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("linkhit_webhook_deliveries_total{outcome=\"delivered\"}"), "{metrics}");
    assert!(metrics.contains("linkhit_webhook_attempt_seconds_bucket"), "attempt latency is a histogram");
}

async fn link_hit_and_fields_formats_count_human_hits(backend: Backend) {
    let env = env(backend, "1").await;
    let receiver = Receiver::start().await;
    put(&env, json!({"click_url": receiver.url, "format": "link_hit"})).await;
    let code = link(
        &env,
        json!({"target_url": "https://shop.example/lh", "recipient": "+61481074191", "sender": "61481074191", "message_ref": "D701", "message_id": "m-9", "broadcast_id": "b"}),
    )
    .await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    let hooks = receiver.wait_for(2, Duration::from_secs(5)).await;
    let first = hooks[0].json();
    assert_eq!(first["event_type"], "LINK_HIT");
    assert_eq!(first["link_hit"]["hits"], 1);
    assert_eq!(first["link_hit"]["url"], "https://shop.example/lh");
    assert_eq!(
        first["link_hit"]["source_message"],
        json!({"type": "SMS", "id": "m-9", "message": null, "message_ref": "D701", "recipient": "+61481074191",
               "sender": "61481074191"})
    );
    assert_eq!(hooks[1].json()["link_hit"]["hits"], 2);

    put(&env, json!({"format": "fields", "click_fields": ["event_id", "hits", "first_click", "recipient", "browser", "code"]})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    let hooks = receiver.wait_for(3, Duration::from_secs(5)).await;
    let fields = hooks[2].json();
    let keys: Vec<&String> = fields.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "exactly the selected fields: {fields}");
    assert_eq!(fields["hits"], 3);
    assert_eq!(fields["first_click"], false);
    assert_eq!(fields["recipient"], "+61481074191");
    assert_eq!(fields["browser"], "Safari");
    assert_eq!(fields["code"], code.as_str());
    assert_eq!(fields["event_id"].as_str(), hooks[2].header("webhook-id").as_deref());
}

async fn unique_clicks_only_fires_once_per_recipient(backend: Backend) {
    let env = env(backend, "1").await;
    let receiver = Receiver::start().await;
    put(&env, json!({"click_url": receiver.url, "unique_clicks_only": true, "format": "fields", "click_fields": ["code", "first_click"]}))
        .await;
    let (_, body) = env
        .post(
            "/api/v1/broadcasts/u1/links",
            json!({"target_url": "https://e.com/u", "recipients": [{"recipient": "+12025550001"}]}),
        )
        .await;
    let in_broadcast = body["links"][0]["code"].as_str().unwrap().to_owned();
    let standalone = link(&env, json!({"target_url": "https://e.com/solo"})).await;
    for _ in 0..3 {
        tap(&env.http, &env.server, &in_broadcast, IPHONE).await;
        tap(&env.http, &env.server, &standalone, IPHONE).await;
    }
    receiver.wait_for(4, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let hooks = receiver.hooks();
    let for_code = |c: &str| hooks.iter().filter(|h| h.json()["code"] == c).count();
    assert_eq!(for_code(&in_broadcast), 1, "only the recipient's first human hit fires");
    assert_eq!(for_code(&standalone), 3, "links without a broadcast deliver every human hit");
    assert!(hooks.iter().any(|h| h.json() == json!({"code": in_broadcast, "first_click": true})));
}

async fn opt_outs_go_to_the_opt_out_url(backend: Backend) {
    let env = env(backend, "1").await;
    let receiver = Receiver::start().await;
    put(&env, json!({"click_url": format!("{}/click", receiver.url), "opt_out_url": format!("{}/stop", receiver.url), "format": "link_hit"}))
        .await;
    let code =
        link(&env, json!({"kind": "opt_out", "recipient": "+12025550999", "message_id": "m-o", "sender": "ACME"}))
            .await;
    tap(&env.http, &env.server, &code, WHATSAPP).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    tap(&env.http, &env.server, &code, IPHONE).await; // already opted out: no second event
    let hooks = receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.hooks().len(), 1);
    assert_eq!(hooks[0].path, "/stop");
    let body = hooks[0].json();
    assert_eq!(body["event_type"], "OPT_OUT");
    assert_eq!(body["opt_out"]["source"], "LINK_HIT");
    assert_eq!(body["opt_out"]["source_message"]["recipient"], "+12025550999");
    assert_eq!(body["opt_out"]["source_message"]["id"], "m-o");
    assert_eq!(logs(&env, 1).await[0]["type"], "opt_out");
}

async fn failures_are_retried_on_schedule_with_a_stable_event_id(backend: Backend) {
    let env = env(backend, "0.3,0.6").await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(404)]);
    put(&env, json!({"click_url": receiver.url})).await;
    let code = link(&env, json!({"target_url": "https://e.com/r"})).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    let hooks = receiver.wait_for(3, Duration::from_secs(10)).await;
    let ids: Vec<_> = hooks.iter().map(|h| h.header("webhook-id").unwrap()).collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "the event id is the same on every attempt: {ids:?}");
    assert_eq!(hooks[0].body, hooks[2].body, "the same payload is resent");
    let gap1 = hooks[1].at - hooks[0].at;
    let gap2 = hooks[2].at - hooks[1].at;
    assert!(gap1 >= Duration::from_millis(250), "first retry after ~0.3 s, got {gap1:?}");
    assert!(gap2 >= Duration::from_millis(500), "second retry after ~0.6 s, got {gap2:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = logs(&env, 10).await;
    let attempts: Vec<(Value, Value, Value)> =
        log.iter().map(|l| (l["attempt"].clone(), l["response_code"].clone(), l["outcome"].clone())).collect();
    assert_eq!(
        attempts,
        vec![
            (json!(3), json!(200), json!("delivered")),
            (json!(2), json!(404), json!("retry_scheduled")),
            (json!(1), json!(500), json!("retry_scheduled")),
        ],
        "one log entry per attempt, newest first"
    );
    assert!(log.iter().all(|l| l["event_id"] == ids[0].as_str()));
    assert!(log[2]["error"].as_str().unwrap().contains("500"));
    assert!(log[2]["next_attempt_at"].is_string());
}

async fn the_last_failure_dead_letters(backend: Backend) {
    let env = env(backend, "0.1,0.1").await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(503));
    put(&env, json!({"click_url": receiver.url})).await;
    let code = link(&env, json!({"target_url": "https://e.com/dl"})).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    receiver.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.hooks().len(), 3, "initial attempt + one per scheduled retry, then no more");
    let log = logs(&env, 10).await;
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["outcome"], "dead_lettered");
    assert_eq!(log[0]["attempt"], 3);
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("linkhit_webhook_dead_letters_total"), "{metrics}");
}

async fn retry_after_is_honoured(backend: Backend) {
    let env = env(backend, "0.05,0.05").await;
    let receiver = Receiver::start().await;
    let mut busy = Reply::status(429);
    busy.headers.push(("retry-after", "1".to_owned()));
    receiver.script([busy]);
    put(&env, json!({"click_url": receiver.url})).await;
    let code = link(&env, json!({"target_url": "https://e.com/ra"})).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    let hooks = receiver.wait_for(2, Duration::from_secs(10)).await;
    let gap = hooks[1].at - hooks[0].at;
    assert!(gap >= Duration::from_millis(900), "Retry-After: 1 beats the 0.05 s schedule, got {gap:?}");
}

async fn static_and_oauth_authorization(backend: Backend) {
    let env = env(backend, "0.1,0.1").await;
    let receiver = Receiver::start().await;
    put(&env, json!({"click_url": receiver.url, "http_authorization": "Token abc123"})).await;
    let code = link(&env, json!({"target_url": "https://e.com/auth"})).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    let hooks = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(hooks[0].header("authorization").as_deref(), Some("Token abc123"), "sent verbatim");

    put(
        &env,
        json!({"oauth": {"url": format!("{}/token", receiver.url), "client_id": "cid", "client_secret": "csecret", "scope": "hooks"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    let hooks = receiver.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(hooks[1].header("authorization").as_deref(), Some("Bearer tok-1"));
    assert_eq!(hooks[2].header("authorization").as_deref(), Some("Bearer tok-1"), "the token is cached");
    let tokens = receiver.token_requests();
    assert_eq!(tokens.len(), 1);
    let basic = base64::engine::general_purpose::STANDARD.encode("cid:csecret");
    assert_eq!(tokens[0].header("authorization"), Some(format!("Basic {basic}")));
    assert!(tokens[0].body.contains("grant_type=client_credentials") && tokens[0].body.contains("scope=hooks"));

    // A 401 makes linkhit fetch a fresh token and try again at once.
    receiver.script([Reply::status(401)]);
    tap(&env.http, &env.server, &code, IPHONE).await;
    let hooks = receiver.wait_for(5, Duration::from_secs(5)).await;
    assert_eq!(hooks[3].header("authorization").as_deref(), Some("Bearer tok-1"));
    assert_eq!(hooks[4].header("authorization").as_deref(), Some("Bearer tok-2"));
    assert_eq!(receiver.token_requests().len(), 2);
}

async fn test_endpoint_sends_a_sample_now(backend: Backend) {
    let env = env(backend, "1").await;
    let receiver = Receiver::start().await;
    let (status, body) = env.post("/api/v1/webhooks/test", json!({"type": "click"})).await;
    assert_eq!(error_code(status, &body, 400), "WEBHOOK_NOT_CONFIGURED");
    put(&env, json!({"click_url": receiver.url, "opt_out_url": receiver.url, "format": "link_hit"})).await;
    let (status, body) = env.post("/api/v1/webhooks/test", json!({"type": "opt_out"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["response_code"], 200);
    assert_eq!(body["type"], "opt_out");
    let hooks = receiver.wait_for(1, Duration::from_secs(2)).await;
    assert_eq!(hooks[0].json()["event_type"], "OPT_OUT");
    receiver.script([Reply::status(500)]);
    let (_, body) = env.post("/api/v1/webhooks/test", json!({"type": "click"})).await;
    assert_eq!(body["success"], false);
    assert_eq!(body["response_code"], 500);
    let log = logs(&env, 2).await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["outcome"], "test");
    assert_eq!(log[0]["response_code"], 500);
    let (status, body) = env.post("/api/v1/webhooks/test", json!({"type": "bounce"})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_TYPE");
}

async fn a_slow_receiver_does_not_delay_another_workspace(backend: Backend) {
    let redis = (backend == Backend::Redis).then(common::RedisServer::start);
    let mut config = common::config(redis.as_ref());
    config.webhook_allow_private = true;
    config.webhook_concurrency = 4;
    config.webhook_endpoint_concurrency = 2;
    config.click_flush_interval = Duration::from_millis(50);
    let env = Env::with_config(config, redis).await;
    let slow = Receiver::start().await;
    let mut sleepy = Reply::status(200);
    sleepy.delay = Duration::from_secs(2);
    slow.set_default(sleepy);
    let fast = Receiver::start().await;
    put(&env, json!({"click_url": slow.url})).await;
    let slow_code = link(&env, json!({"target_url": "https://e.com/slow"})).await;

    let (_, key_b) = common::create_workspace(&env.http, &env.server, "b").await;
    let (status, _) =
        send(env.http.put(env.url("/api/v1/webhooks")).bearer_auth(&key_b).json(&json!({"click_url": fast.url}))).await;
    assert_eq!(status, 200);
    let (_, link_b) = send(
        env.http
            .post(env.url("/api/v1/links"))
            .bearer_auth(&key_b)
            .json(&common::sent_an_hour_ago("/api/v1/links", json!({"target_url": "https://e.com/fast"}))),
    )
    .await;
    let fast_code = link_b["code"].as_str().unwrap().to_owned();

    for _ in 0..10 {
        tap(&env.http, &env.server, &slow_code, IPHONE).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // A's events are queued and its receiver busy
    tap(&env.http, &env.server, &fast_code, IPHONE).await;
    fast.wait_for(1, Duration::from_secs(5)).await;
    let slow_done = slow.hooks().len();
    assert!(slow_done < 10, "B was delivered while A's backlog ({slow_done} of 10 received) was still draining");
}

/// OAuth tokens are fetched under a lock per (workspace, token URL, client id), not one lock for all:
/// workspace A's token endpoint accepting the connection and never answering must not hold up B.
async fn a_hanging_token_endpoint_does_not_delay_another_workspace(backend: Backend) {
    let redis = (backend == Backend::Redis).then(common::RedisServer::start);
    let mut config = common::config(redis.as_ref());
    config.webhook_allow_private = true;
    config.webhook_timeout = Duration::from_secs(30);
    let env = Env::with_config(config, redis).await;
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/token", hanging.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = hanging.accept().await {
                held.lock().unwrap().push(stream);
            }
        })
    };
    let receiver = Receiver::start().await;
    let oauth = |url: &str, id: &str| json!({"url": url, "client_id": id, "client_secret": "s3cret"});
    let (status, body) = put(&env, json!({"click_url": receiver.url, "oauth": oauth(&hanging_url, "a")})).await;
    assert_eq!(status, 200, "{body}");
    let (_, key_b) = common::create_workspace(&env.http, &env.server, "b").await;
    let settings_b = json!({"click_url": receiver.url, "oauth": oauth(&format!("{}/token", receiver.url), "b")});
    let (status, _) = send(env.http.put(env.url("/api/v1/webhooks")).bearer_auth(&key_b).json(&settings_b)).await;
    assert_eq!(status, 200);

    let test_a = {
        let (http, url, key) = (env.http.clone(), env.url("/api/v1/webhooks/test"), env.key.clone());
        tokio::spawn(async move { send(http.post(url).bearer_auth(key).json(&json!({"type": "click"}))).await })
    };
    assert!(
        common::eventually(Duration::from_secs(5), || {
            let held = held.clone();
            async move { !held.lock().unwrap().is_empty() }
        })
        .await,
        "A's token request reached its hanging endpoint"
    );
    let (status, body) =
        send(env.http.post(env.url("/api/v1/webhooks/test")).bearer_auth(&key_b).json(&json!({"type": "click"}))).await;
    assert_eq!((status, body["success"].clone()), (200, json!(true)), "{body}");
    assert_eq!(receiver.hooks()[0].header("authorization").as_deref(), Some("Bearer tok-1"));
    assert!(!test_a.is_finished(), "B was delivered while A still waits for its token endpoint");
    holder.abort();
    held.lock().unwrap().clear(); // closing A's connection ends its attempt
    let (_, body_a) = test_a.await.unwrap();
    assert_eq!(body_a["success"], false, "{body_a}");
}

/// Anyone can tap a public link as fast as they like: a link's events past its budget are dead-lettered
/// (`link_budget`), a workspace's past its backlog cap too (`backlog_full`), the dead-letter list is
/// capped — so a flood while the receiver hangs leaves bounded state — and another workspace's event
/// is delivered meanwhile.
async fn a_flood_on_a_hanging_receiver_stays_bounded_and_another_workspace_flows(backend: Backend) {
    let env = env_with(backend, "60", |c| {
        c.webhook_link_budget = linkhit::config::parse_budget("5,0").unwrap();
        c.webhook_max_backlog = 20;
        c.webhook_dead_letters = 50;
        c.webhook_timeout = Duration::from_secs(60);
        c.click_flush_interval = Duration::from_millis(20);
    })
    .await;
    let hanging = Receiver::start().await;
    let mut never = Reply::status(200);
    never.delay = Duration::from_secs(120);
    hanging.set_default(never);
    put(&env, json!({"click_url": hanging.url})).await;
    let flooded = link(&env, json!({"target_url": "https://e.com/flood"})).await;
    for _ in 0..300 {
        tap(&env.http, &env.server, &flooded, IPHONE).await;
    }
    let mut others = Vec::new();
    for i in 0..30 {
        others.push(link(&env, json!({"target_url": format!("https://e.com/o{i}")})).await);
    }
    for code in &others {
        tap(&env.http, &env.server, code, IPHONE).await;
    }
    // Workspace B, its own receiver: delivered while A's receiver still holds every request it got.
    let fast = Receiver::start().await;
    let (_, key_b) = common::create_workspace(&env.http, &env.server, "b").await;
    send(env.http.put(env.url("/api/v1/webhooks")).bearer_auth(&key_b).json(&json!({"click_url": fast.url}))).await;
    let (_, link_b) = send(
        env.http
            .post(env.url("/api/v1/links"))
            .bearer_auth(&key_b)
            .json(&common::sent_an_hour_ago("/api/v1/links", json!({"target_url": "https://e.com/b"}))),
    )
    .await;
    tap(&env.http, &env.server, link_b["code"].as_str().unwrap(), IPHONE).await;
    fast.wait_for(1, Duration::from_secs(10)).await;

    // A's state is bounded: 20 queued at most, 50 dead letters at most, the rest evicted and counted.
    let body = common::eventually(Duration::from_secs(10), || async {
        let d = dead_letters(&env, &env.key).await;
        d["dead_letters"].as_array().unwrap().len() == 50
    })
    .await;
    assert!(body, "the dead-letter list fills to its cap");
    let d = dead_letters(&env, &env.key).await;
    assert_eq!(d["backlog"], 20, "{}", d["backlog"]);
    let reasons: std::collections::BTreeSet<&str> =
        d["dead_letters"].as_array().unwrap().iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains("backlog_full") && reasons.contains("link_budget"), "{reasons:?}");
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // 300 + 30 events: 20 queued, 310 dead-lettered, 50 kept → at least 260 evicted.
    assert!(common::metric(&metrics, "linkhit_webhook_dead_letters_evicted_total") >= 260.0);
    if let Some(redis) = &env.redis {
        let mut conn = redis.conn();
        let jobs: u64 =
            redis::cmd("HLEN").arg(format!("lh:wh:{{{}}}:jobs", env.workspace_id)).query(&mut conn).unwrap();
        let dead: u64 =
            redis::cmd("LLEN").arg(format!("lh:wh:{{{}}}:dead", env.workspace_id)).query(&mut conn).unwrap();
        assert_eq!((jobs, dead), (20, 50), "Redis holds no more than the bounds");
    }
    assert!(hanging.hooks().len() <= 20, "A's receiver got at most what was queued");
}

/// Dead letters can be read (why, when, what) and replayed: they leave the list and are delivered with
/// the event ids of their failed attempts.
async fn dead_letters_are_listed_and_replayed_with_their_event_ids(backend: Backend) {
    let env = env(backend, "0.05").await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(500));
    put(&env, json!({"click_url": receiver.url})).await;
    let code = link(&env, json!({"target_url": "https://e.com/dl"})).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    receiver.wait_for(4, Duration::from_secs(10)).await;
    let ok = common::eventually(Duration::from_secs(5), || async {
        dead_letters(&env, &env.key).await["dead_letters"].as_array().unwrap().len() == 2
    })
    .await;
    assert!(ok, "both events dead-lettered after their retries");
    let d = dead_letters(&env, &env.key).await;
    let letter = &d["dead_letters"][0];
    assert_eq!(letter["reason"], "retries_exhausted");
    assert_eq!(letter["type"], "click");
    assert_eq!(letter["url"], receiver.url);
    assert!(letter["payload"].is_object() && letter["at"].is_string(), "{letter}");
    let failed_ids: std::collections::BTreeSet<String> =
        receiver.hooks().iter().filter_map(|h| h.header("webhook-id")).collect();
    assert_eq!(failed_ids.len(), 2);

    // A key without webhooks.write cannot replay.
    let (status, key) = send(
        env.http
            .post(env.url(&format!("/api/v1/workspaces/{}/keys", env.workspace_id)))
            .bearer_auth(common::ADMIN)
            .json(&json!({"permissions": ["webhooks.read"]})),
    )
    .await;
    assert_eq!(status, 201);
    let reader = key["api_key"].as_str().unwrap();
    let (status, _) =
        send(env.http.post(env.url("/api/v1/webhooks/dead-letters/replay")).bearer_auth(reader).json(&json!({}))).await;
    assert_eq!(status, 403);
    assert_eq!(dead_letters(&env, reader).await["dead_letters"].as_array().unwrap().len(), 2, "but can read");

    receiver.set_default(Reply::status(200));
    let before = receiver.hooks().len();
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, body) = env.post("/api/v1/webhooks/dead-letters/replay", json!({"since": future})).await;
    assert_eq!((status, body["replayed"].clone()), (202, json!(0)), "nothing dead-lettered after `since`");
    let (status, body) = env.post("/api/v1/webhooks/dead-letters/replay", json!({})).await;
    assert_eq!((status, body["replayed"].clone()), (202, json!(2)), "{body}");
    let hooks = receiver.wait_for(before + 2, Duration::from_secs(10)).await;
    let replayed: std::collections::BTreeSet<String> =
        hooks[before..].iter().filter_map(|h| h.header("webhook-id")).collect();
    assert_eq!(replayed, failed_ids, "replayed with their original event ids");
    assert!(dead_letters(&env, &env.key).await["dead_letters"].as_array().unwrap().is_empty());
    let (status, body) = env.post("/api/v1/webhooks/dead-letters/replay", json!({"since": "yesterday"})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_SINCE");
}

/// A key that may change webhook URLs cannot walk a stored secret to a server of its own: a URL to a
/// new destination needs the secret again (`SECRET_REQUIRED`), and what is stored is only ever sent
/// to the destinations it was stored for — the test endpoint included.
async fn secrets_only_go_where_they_were_stored_for(backend: Backend) {
    let env = env(backend, "1").await;
    let ours = Receiver::start().await;
    let attacker = Receiver::start().await;
    let (status, body) = put(
        &env,
        json!({"click_url": ours.url, "http_authorization": "Bearer s3cret",
               "oauth": null}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for body in [
        json!({"click_url": attacker.url}),
        json!({"click_url": attacker.url, "http_authorization": "***"}),
        json!({"opt_out_url": format!("{}/stop", attacker.url)}),
    ] {
        let (status, resp) = put(&env, body.clone()).await;
        assert_eq!(error_code(status, &resp, 400), "SECRET_REQUIRED", "{body}");
    }
    // Same destination, other path: fine without the secret.
    let (status, _) = put(&env, json!({"click_url": format!("{}/v2", ours.url)})).await;
    assert_eq!(status, 200);
    let (status, body) = env.post("/api/v1/webhooks/test", json!({"type": "click"})).await;
    assert_eq!(body["success"], true, "{status} {body}");
    assert_eq!(ours.hooks()[0].header("authorization").as_deref(), Some("Bearer s3cret"));
    assert!(attacker.hooks().is_empty() && attacker.token_requests().is_empty());

    // OAuth: the client secret is bound to its token endpoint.
    let oauth = |url: String, secret: &str| json!({"oauth": {"url": url, "client_id": "cid", "client_secret": secret}});
    let (status, _) = put(&env, oauth(format!("{}/token", ours.url), "csecret")).await;
    assert_eq!(status, 200);
    let (status, body) = put(&env, oauth(format!("{}/token", attacker.url), "***")).await;
    assert_eq!(error_code(status, &body, 400), "SECRET_REQUIRED");
    let (status, body) = env.post("/api/v1/webhooks/test", json!({"type": "click"})).await;
    assert_eq!(body["success"], true, "{status} {body}");
    assert!(attacker.token_requests().is_empty() && attacker.hooks().is_empty(), "nothing reached the attacker");

    // Credentials in a URL are refused, and never shown back.
    let (status, body) = put(&env, json!({"click_url": "https://user:pass@hooks.example.com/"})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_URL");
    assert!(!body.to_string().contains("pass@"), "{body}");
}

/// A field a route does not know is a 400 naming it, never silently ignored.
async fn unknown_fields_are_refused_on_every_route(backend: Backend) {
    let env = env(backend, "1").await;
    let cases = [
        ("PUT", "/api/v1/webhooks", json!({"delivery_url": "https://hooks.example.com/"}), "delivery_url"),
        ("PUT", "/api/v1/webhooks", json!({"subAccountId": "*"}), "subAccountId"),
        (
            "PUT",
            "/api/v1/webhooks",
            json!({"oauth": {"url": "https://a.example/t", "client_id": "c", "client_secret": "s", "grant": "x"}}),
            "grant",
        ),
        ("POST", "/api/v1/webhooks/test", json!({"type": "click", "tpye": 1}), "tpye"),
        ("POST", "/api/v1/links", json!({"target_url": "https://e.com/", "recipeint": "+12025550100"}), "recipeint"),
        (
            "POST",
            "/api/v1/broadcasts/b/links",
            json!({"target_url": "https://e.com/", "recipients": [{"recipient": "+12025550100", "mesage_id": "x"}]}),
            "mesage_id",
        ),
        (
            "POST",
            "/api/v1/broadcasts/b/links",
            json!({"target_url": "https://e.com/", "knd": "opt_out", "recipients": [{"recipient": "+12025550100"}]}),
            "knd",
        ),
        ("POST", "/api/v1/messages/shorten", json!({"text": "hi", "recipent": "+12025550100"}), "recipent"),
        ("POST", "/api/v1/webhooks/dead-letters/replay", json!({"sinse": "2026-01-01T00:00:00Z"}), "sinse"),
    ];
    for (method, path, body, field) in cases {
        let req = match method {
            "PUT" => env.http.put(env.url(path)),
            _ => env.http.post(env.url(path)),
        };
        let (status, resp) = send(req.bearer_auth(&env.key).json(&body)).await;
        assert_eq!(error_code(status, &resp, 400), "UNKNOWN_FIELD", "{method} {path} {body}");
        assert!(resp["message"].as_str().unwrap().contains(field), "{resp}");
    }
    let (status, resp) = send(
        env.http
            .post(env.url("/api/v1/workspaces"))
            .bearer_auth(common::ADMIN)
            .json(&json!({"name": "x", "nmae": "y"})),
    )
    .await;
    assert_eq!(error_code(status, &resp, 400), "UNKNOWN_FIELD");
}
