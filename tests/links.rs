//! The contract's Links section, auth and isolation, over real HTTP, on both stores.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{ADMIN, Backend, Env, error_code, send};
use serde_json::{Value, json};

on_both_stores!(
    create_then_redirect,
    head_redirects_without_body,
    unknown_and_malformed_codes_are_404,
    disable_answers_410,
    expired_link_answers_410,
    get_link_shows_counters_and_fields,
    target_and_recipient_validation,
    bad_bodies,
    auth_and_permissions,
    workspaces_are_isolated,
    admin_routes,
    broadcast_of_100k_recipients,
    broadcast_validation,
    shorten_message_text,
    opt_out_link_page,
    unknown_routes_and_methods,
    ops_endpoints,
);

async fn create_then_redirect(backend: Backend) {
    let env = Env::new(backend).await;
    let link = env
        .create_link(json!({
            "target_url": "https://example.com/fall?utm=sms",
            "broadcast_id": "fall_campaign",
            "recipient": "+12025550293",
            "message_id": "9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11",
            "sender": "61481074191",
            "message_ref": "D701",
        }))
        .await;
    let code = link["code"].as_str().unwrap();
    assert_eq!(code.len(), 8);
    assert_eq!(link["short_url"], format!("{}/{code}", env.server.base));
    assert_eq!(link["target_url"], "https://example.com/fall?utm=sms");
    assert_eq!(link["broadcast_id"], "fall_campaign");
    assert_eq!(link["recipient"], "+12025550293");
    assert_eq!(link["sender"], "61481074191");
    assert_eq!(link["message_ref"], "D701");
    assert_eq!(link["kind"], "redirect");

    let resp = env.http.get(env.url(&format!("/{code}"))).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "https://example.com/fall?utm=sms");
    assert_eq!(resp.headers()["cache-control"], "private, max-age=0");
    // Served again from the cache: same answer.
    assert_eq!(env.hit(code).await, (302, Some("https://example.com/fall?utm=sms".into())));
}

async fn head_redirects_without_body(backend: Backend) {
    let env = Env::new(backend).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/h"})).await["code"].as_str().unwrap().to_owned();
    let resp = env.http.head(env.url(&format!("/{code}"))).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "https://example.com/h");
    assert_eq!(resp.headers()["cache-control"], "private, max-age=0");
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = env.http.post(env.url(&format!("/{code}"))).send().await.unwrap();
    assert_eq!(resp.status(), 405);
}

async fn unknown_and_malformed_codes_are_404(backend: Backend) {
    let env = Env::new(backend).await;
    for path in ["/zzzzzzzz", "/zzzzzzzz", "/short", "/waytoolongcode123", "/bad%20code", "/a/b/c", "/", "/~~~~~~~~"] {
        let resp = env.http.get(env.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.headers().get("location").is_none());
    }
}

async fn disable_answers_410(backend: Backend) {
    let env = Env::new(backend).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/d"})).await["code"].as_str().unwrap().to_owned();
    assert_eq!(env.hit(&code).await.0, 302); // now cached
    let (status, body) = send(env.http.delete(env.url(&format!("/api/v1/links/{code}"))).bearer_auth(&env.key)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(env.hit(&code).await, (410, None));
    let (status, link) = env.get_json(&format!("/api/v1/links/{code}")).await;
    assert_eq!(status, 200);
    assert_eq!(link["status"], "disabled");
    assert!(link["disabled_at"].is_string());
    // Disabling twice is fine.
    let (status, _) = send(env.http.delete(env.url(&format!("/api/v1/links/{code}"))).bearer_auth(&env.key)).await;
    assert_eq!(status, 204);
    // An unknown code cannot be disabled.
    let (status, body) = send(env.http.delete(env.url("/api/v1/links/zzzzzzzz")).bearer_auth(&env.key)).await;
    assert_eq!(error_code(status, &body, 404), "LINK_NOT_FOUND");
}

async fn expired_link_answers_410(backend: Backend) {
    let env = Env::new(backend).await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1200);
    let link =
        env.create_link(json!({"target_url": "https://example.com/e", "expires_at": expires.to_rfc3339()})).await;
    let code = link["code"].as_str().unwrap();
    assert!(link["expires_at"].is_string());
    assert_eq!(env.hit(code).await.0, 302);
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(2100)).await;
    assert_eq!(env.hit(code).await, (410, None));
    assert_eq!(env.get_json(&format!("/api/v1/links/{code}")).await.1["status"], "expired");
}

async fn get_link_shows_counters_and_fields(backend: Backend) {
    let env = Env::new(backend).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/g", "recipient": "+61481074191"})).await["code"]
            .as_str()
            .unwrap()
            .to_owned();
    let (status, link) = env.get_json(&format!("/api/v1/links/{code}")).await;
    assert_eq!(status, 200, "{link}");
    assert_eq!(link["code"], code.as_str());
    assert_eq!(link["target_url"], "https://example.com/g");
    assert_eq!(link["recipient"], "+61481074191");
    assert_eq!(link["status"], "active");
    for counter in ["hits", "human_hits", "bot_hits"] {
        assert!(link[counter].is_u64(), "{counter} missing in {link}");
    }
}

async fn target_and_recipient_validation(backend: Backend) {
    let env = Env::new(backend).await;
    let bad_targets = [
        json!("javascript:alert(document.cookie)"),
        json!("data:text/html,hi"),
        json!("ftp://example.com/x"),
        json!("/relative/path"),
        json!("//example.com/x"),
        json!("https://user:pw@example.com/"),
        json!(42),
        json!(""),
    ];
    for target in bad_targets {
        let (status, body) = env.post("/api/v1/links", json!({ "target_url": target })).await;
        assert_eq!(error_code(status, &body, 400), "INVALID_TARGET_URL", "{target}");
    }
    let (status, body) = env.post("/api/v1/links", json!({ "recipient": "+12025550293" })).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_TARGET_URL", "target_url is required");
    for recipient in [json!("2025550293"), json!("+1 202 555 0293"), json!("+0123"), json!(12025550293_u64)] {
        let (status, body) =
            env.post("/api/v1/links", json!({"target_url": "https://example.com", "recipient": recipient})).await;
        assert_eq!(error_code(status, &body, 400), "INVALID_RECIPIENT", "{recipient}");
    }
    let (status, body) = env
        .post("/api/v1/links", json!({"target_url": "https://example.com", "expires_at": "2000-01-01T00:00:00Z"}))
        .await;
    assert_eq!(error_code(status, &body, 400), "INVALID_EXPIRES_AT");
    let (status, body) = env.post("/api/v1/links", json!({"target_url": "https://example.com", "kind": "x"})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_KIND");
}

async fn bad_bodies(backend: Backend) {
    let env = Env::new(backend).await;
    for raw in ["{not json", "", "[1,2]", "\"text\"", "{\"target_url\": \"https://e.com\""] {
        let (status, body) = send(
            env.http
                .post(env.url("/api/v1/links"))
                .bearer_auth(&env.key)
                .header("content-type", "application/json")
                .body(raw.to_owned()),
        )
        .await;
        assert_eq!(error_code(status, &body, 400), "INVALID_BODY", "{raw:?}");
    }
    let huge = format!("{{\"target_url\": \"https://e.com/{}\"}}", "a".repeat(2 * 1024 * 1024));
    let (status, body) = send(env.http.post(env.url("/api/v1/links")).bearer_auth(&env.key).body(huge)).await;
    assert_eq!(error_code(status, &body, 413), "PAYLOAD_TOO_LARGE");
}

async fn auth_and_permissions(backend: Backend) {
    let env = Env::new(backend).await;
    let target = json!({"target_url": "https://example.com"});
    // No credentials, a wrong key, a wrong scheme: 401.
    let (status, body) = send(env.http.post(env.url("/api/v1/links")).json(&target)).await;
    assert_eq!(error_code(status, &body, 401), "UNAUTHORIZED");
    let (status, body) = send(env.http.post(env.url("/api/v1/links")).bearer_auth("lhk_wrong").json(&target)).await;
    assert_eq!(error_code(status, &body, 401), "UNAUTHORIZED");
    let (status, _) = send(env.http.post(env.url("/api/v1/links")).basic_auth("u", Some(&env.key)).json(&target)).await;
    assert_eq!(status, 401);
    // X-API-Key works like Bearer.
    let (status, link) =
        send(env.http.post(env.url("/api/v1/links")).header("x-api-key", &env.key).json(&target)).await;
    assert_eq!(status, 201, "{link}");
    let code = link["code"].as_str().unwrap();

    // A stats-only key: 403 on link writes and reads.
    let (status, body) = send(
        env.http
            .post(env.url(&format!("/api/v1/workspaces/{}/keys", env.workspace_id)))
            .bearer_auth(ADMIN)
            .json(&json!({"permissions": ["stats.read"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let stats_key = body["api_key"].as_str().unwrap();
    let (status, body) = send(env.http.post(env.url("/api/v1/links")).bearer_auth(stats_key).json(&target)).await;
    assert_eq!(error_code(status, &body, 403), "FORBIDDEN");
    let (status, body) = send(env.http.get(env.url(&format!("/api/v1/links/{code}"))).bearer_auth(stats_key)).await;
    assert_eq!(error_code(status, &body, 403), "FORBIDDEN");
    let (status, _) = send(env.http.delete(env.url(&format!("/api/v1/links/{code}"))).bearer_auth(stats_key)).await;
    assert_eq!(status, 403);

    // A read-only key reads but cannot disable.
    let (_, body) = send(
        env.http
            .post(env.url(&format!("/api/v1/workspaces/{}/keys", env.workspace_id)))
            .bearer_auth(ADMIN)
            .json(&json!({"permissions": ["links.read"]})),
    )
    .await;
    let read_key = body["api_key"].as_str().unwrap();
    let (status, _) = send(env.http.get(env.url(&format!("/api/v1/links/{code}"))).bearer_auth(read_key)).await;
    assert_eq!(status, 200);
    let (status, _) = send(env.http.delete(env.url(&format!("/api/v1/links/{code}"))).bearer_auth(read_key)).await;
    assert_eq!(status, 403);
    assert_eq!(env.hit(code).await.0, 302, "the failed disable changed nothing");
}

async fn workspaces_are_isolated(backend: Backend) {
    let env = Env::new(backend).await;
    let (_, other_key) = common::create_workspace(&env.http, &env.server, "globex").await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/mine"})).await["code"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/links/{code}");
    let (status, body) = send(env.http.get(env.url(&path)).bearer_auth(&other_key)).await;
    assert_eq!(error_code(status, &body, 404), "LINK_NOT_FOUND");
    let (unknown_status, unknown_body) =
        send(env.http.get(env.url("/api/v1/links/zzzzzzzz")).bearer_auth(&other_key)).await;
    assert_eq!(unknown_status, 404);
    assert_eq!(body["code"], unknown_body["code"], "another workspace's link looks exactly like no link");
    assert_eq!(body["message"], unknown_body["message"]);
    let (status, _) = send(env.http.delete(env.url(&path)).bearer_auth(&other_key)).await;
    assert_eq!(status, 404);
    assert_eq!(env.hit(&code).await.0, 302, "the other workspace could not disable it");
}

async fn admin_routes(backend: Backend) {
    let env = Env::new(backend).await;
    let create =
        |token: &str| env.http.post(env.url("/api/v1/workspaces")).bearer_auth(token).json(&json!({"name": "x"}));
    let (status, body) = send(create("wrong-token")).await;
    assert_eq!(error_code(status, &body, 401), "UNAUTHORIZED");
    let (status, _) = send(create(&env.key)).await;
    assert_eq!(status, 401, "a workspace key is not an admin credential");
    let (status, body) = send(env.http.post(env.url("/api/v1/workspaces")).json(&json!({"name": "x"}))).await;
    assert_eq!(error_code(status, &body, 401), "UNAUTHORIZED");
    for bad in [json!({}), json!({"name": ""}), json!({"name": 5})] {
        let (status, body) = send(env.http.post(env.url("/api/v1/workspaces")).bearer_auth(ADMIN).json(&bad)).await;
        assert_eq!(error_code(status, &body, 400), "INVALID_NAME", "{bad}");
    }
    let (status, body) = send(create(ADMIN)).await;
    assert_eq!(status, 201);
    assert!(body["workspace_id"].as_str().unwrap().starts_with("ws_"));
    assert!(body["api_key"].as_str().unwrap().len() >= 32);

    let keys = |ws: &str| format!("/api/v1/workspaces/{ws}/keys");
    let (status, body) = send(
        env.http
            .post(env.url(&keys("ws_doesnotexist")))
            .bearer_auth(ADMIN)
            .json(&json!({"permissions": ["links.read"]})),
    )
    .await;
    assert_eq!(error_code(status, &body, 404), "WORKSPACE_NOT_FOUND");
    for bad in [json!({"permissions": []}), json!({"permissions": ["root"]}), json!({})] {
        let (status, body) = send(env.http.post(env.url(&keys(&env.workspace_id))).bearer_auth(ADMIN).json(&bad)).await;
        assert_eq!(error_code(status, &body, 400), "INVALID_PERMISSIONS", "{bad}");
    }
    let (status, body) = send(
        env.http
            .post(env.url(&keys(&env.workspace_id)))
            .bearer_auth(&env.key)
            .json(&json!({"permissions": ["links.read"]})),
    )
    .await;
    assert_eq!(error_code(status, &body, 401), "UNAUTHORIZED");
}

async fn broadcast_of_100k_recipients(backend: Backend) {
    let env = Env::new(backend).await;
    const N: usize = 100_000;
    let recipients: Vec<Value> =
        (0..N).map(|i| json!({"recipient": format!("+1202{:07}", i), "message_id": format!("m-{i}")})).collect();
    let (status, body) = env
        .post(
            "/api/v1/broadcasts/spring_sale/links",
            json!({"target_url": "https://shop.example/spring", "recipients": recipients, "sender": "ACME"}),
        )
        .await;
    assert_eq!(status, 201, "{}", &body.to_string()[..200.min(body.to_string().len())]);
    assert_eq!(body["broadcast_id"], "spring_sale");
    let links = body["links"].as_array().unwrap();
    assert_eq!(links.len(), N);
    let mut codes = HashSet::with_capacity(N);
    for (i, link) in links.iter().enumerate() {
        assert_eq!(link["recipient"], format!("+1202{:07}", i), "order is kept");
        let code = link["code"].as_str().unwrap();
        assert_eq!(link["short_url"], format!("{}/{code}", env.server.base));
        codes.insert(code.to_owned());
    }
    assert_eq!(codes.len(), N, "one distinct code per recipient");
    for i in [0, 1, N / 2, N - 1] {
        let code = links[i]["code"].as_str().unwrap();
        assert_eq!(env.hit(code).await, (302, Some("https://shop.example/spring".into())));
        let (_, link) = env.get_json(&format!("/api/v1/links/{code}")).await;
        assert_eq!(link["broadcast_id"], "spring_sale");
        assert_eq!(link["message_id"], format!("m-{i}"));
        assert_eq!(link["sender"], "ACME");
    }
    if let Some(redis) = &env.redis {
        let mut conn = redis.conn();
        let count: u64 = redis::cmd("HGET")
            .arg(format!("lh:bc:{{{}:spring_sale}}", env.workspace_id))
            .arg("links")
            .query(&mut conn)
            .unwrap();
        assert_eq!(count, N as u64);
    }
}

async fn broadcast_validation(backend: Backend) {
    let env = Env::new(backend).await;
    let path = "/api/v1/broadcasts/b1/links";
    let (status, body) = env.post(path, json!({"target_url": "https://e.com", "recipients": []})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_RECIPIENTS");
    let (status, body) = env.post(path, json!({"target_url": "https://e.com"})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_RECIPIENTS");
    let (status, body) = env
        .post(
            path,
            json!({"target_url": "https://e.com", "recipients": [{"recipient": "+12025550100"}, {"recipient": "555"}]}),
        )
        .await;
    assert_eq!(error_code(status, &body, 400), "INVALID_RECIPIENT");
    assert!(body["message"].as_str().unwrap().contains("recipients[1]"), "{body}");
    let (status, body) =
        env.post(path, json!({"target_url": "javascript:x", "recipients": [{"recipient": "+12025550100"}]})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_TARGET_URL");
    // Nothing was created by the failed requests.
    let (status, body) = env.post(path, json!({"target_url": "https://e.com", "recipients": "x"})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_BODY");
}

async fn shorten_message_text(backend: Backend) {
    let env = Env::new(backend).await;
    let text = "Fall sale! https://shop.example/fall. Also (https://shop.example/kids), https://shop.example/fall again. Reply STOP or [opt-out-link]";
    let (status, body) = env
        .post(
            "/api/v1/messages/shorten",
            json!({"text": text, "recipient": "+12025550293", "sender": "ACME", "message_id": "m1", "broadcast_id": "fall"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let out = body["text"].as_str().unwrap();
    let links = body["links"].as_array().unwrap();
    assert_eq!(links.len(), 3, "two distinct URLs and one opt-out link: {body}");
    let short = |i: usize| links[i]["short_url"].as_str().unwrap().to_owned();
    let expected =
        format!("Fall sale! {}. Also ({}), {} again. Reply STOP or {}", short(0), short(1), short(0), short(2));
    assert_eq!(out, expected);
    assert_eq!(links[0]["target_url"], "https://shop.example/fall");
    assert_eq!(links[1]["target_url"], "https://shop.example/kids");
    assert_eq!(links[2]["kind"], "opt_out");
    for link in links {
        assert_eq!(link["recipient"], "+12025550293");
        assert_eq!(link["broadcast_id"], "fall");
    }
    assert_eq!(env.hit(links[1]["code"].as_str().unwrap()).await.1.as_deref(), Some("https://shop.example/kids"));

    let (status, body) = env.post("/api/v1/messages/shorten", json!({"text": "no links"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["text"], "no links");
    assert_eq!(body["links"], json!([]));
    let (status, body) = env.post("/api/v1/messages/shorten", json!({"recipient": "+12025550293"})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_TEXT");
    let (status, body) = env.post("/api/v1/messages/shorten", json!({"text": "x", "recipient": "bad"})).await;
    assert_eq!(error_code(status, &body, 400), "INVALID_RECIPIENT");
}

async fn opt_out_link_page(backend: Backend) {
    let env = Env::new(backend).await;
    let link = env.create_link(json!({"kind": "opt_out", "recipient": "+12025550293"})).await;
    assert_eq!(link["kind"], "opt_out");
    let resp = env.http.get(link["short_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(resp.text().await.unwrap().contains("unsubscribed"));
}

async fn unknown_routes_and_methods(backend: Backend) {
    let env = Env::new(backend).await;
    let (status, body) = env.get_json("/api/v1/nothing-here").await;
    assert_eq!(error_code(status, &body, 404), "NOT_FOUND");
    let (status, body) = send(env.http.put(env.url("/api/v1/links")).bearer_auth(&env.key)).await;
    assert_eq!(error_code(status, &body, 405), "METHOD_NOT_ALLOWED");
    let (status, body) = env.get_json("/api").await;
    assert_eq!(error_code(status, &body, 404), "NOT_FOUND");
    // Request ids: echoed when the caller sends a sane one, minted otherwise.
    let resp = env.http.get(env.url("/api/v1/nothing")).header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    let resp =
        env.http.get(env.url("/api/v1/nothing")).header("x-request-id", "bad id with spaces").send().await.unwrap();
    assert!(uuid::Uuid::parse_str(resp.headers()["x-request-id"].to_str().unwrap()).is_ok());
}

async fn ops_endpoints(backend: Backend) {
    let env = Env::new(backend).await;
    assert_eq!(env.http.get(env.url("/healthz")).send().await.unwrap().status(), 200);
    let ready = env.http.get(env.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let code =
        env.create_link(json!({"target_url": "https://example.com/m"})).await["code"].as_str().unwrap().to_owned();
    env.hit(&code).await;
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("linkhit_redirects_total{status=\"302\"}"), "{metrics}");
}
