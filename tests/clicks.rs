//! The click pipeline over real HTTP: classification, counters, unique clicks, recent clicks, opt-outs,
//! stats routes, events, on both stores.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ADMIN, ANDROID, Backend, Env, IMESSAGE_PREVIEW, IPHONE, WHATSAPP, error_code, eventually, send, tap};
use linkhit::click::emit::{Collect, Event};
use serde_json::{Value, json};

on_both_stores!(
    humans_and_bots_are_counted_apart,
    unique_clicks_count_recipients_not_taps,
    recent_clicks_newest_first_with_anonymised_ip,
    recent_clicks_keep_the_newest_up_to_the_cap,
    a_bots_repeats_are_counted_but_listed_once,
    full_ip_and_trusted_proxy,
    opt_out_by_human_not_by_bot,
    stats_routes_auth_and_isolation,
    events_carry_hits_and_first_click,
);

/// The link's stats once `want` holds; within 1 s, the contract's visibility bound.
async fn stats_within_a_second(env: &Env, code: &str, want: impl Fn(&Value) -> bool) -> Value {
    env.poll_json(&format!("/api/v1/links/{code}/stats"), Duration::from_secs(1), want).await
}

async fn broadcast_link(env: &Env, broadcast: &str, recipients: &[&str]) -> Vec<String> {
    let recipients: Vec<Value> = recipients.iter().map(|r| json!({"recipient": r})).collect();
    let (status, body) = env
        .post(
            &format!("/api/v1/broadcasts/{broadcast}/links"),
            json!({"target_url": "https://shop.example/x", "recipients": recipients}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap().to_owned()).collect()
}

async fn humans_and_bots_are_counted_apart(backend: Backend) {
    let env = Env::new(backend).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/c"})).await["code"].as_str().unwrap().to_owned();
    let (http, server) = (&env.http, &env.server);
    assert_eq!(tap(http, server, &code, IPHONE).await, 302);
    assert_eq!(tap(http, server, &code, ANDROID).await, 302);
    assert_eq!(tap(http, server, &code, IPHONE).await, 302);
    for bot in [IMESSAGE_PREVIEW, WHATSAPP, "curl/8.5.0", "TelegramBot (like TwitterBot)", ""] {
        assert_eq!(tap(http, server, &code, bot).await, 302, "{bot}");
    }
    // A HEAD and a prefetch are bots whatever their user agent.
    let head = http.head(env.url(&format!("/{code}"))).header("user-agent", IPHONE).send().await.unwrap();
    assert_eq!(head.status(), 302);
    let prefetch = http
        .get(env.url(&format!("/{code}")))
        .header("user-agent", IPHONE)
        .header("sec-purpose", "prefetch")
        .send()
        .await
        .unwrap();
    assert_eq!(prefetch.status(), 302);

    let stats = stats_within_a_second(&env, &code, |s| s["hits"] == 10).await;
    assert_eq!(stats["code"], code.as_str());
    assert_eq!(stats["human_hits"], 3);
    assert_eq!(stats["bot_hits"], 7);
    assert_eq!(stats["unique_clicks"], 1);
    assert!(stats["first_click_at"].is_string() && stats["last_click_at"].is_string(), "{stats}");
    assert!(stats["first_click_at"].as_str() <= stats["last_click_at"].as_str());
    // The link view carries the same counters.
    let (_, link) = env.get_json(&format!("/api/v1/links/{code}")).await;
    assert_eq!(
        (link["hits"].clone(), link["human_hits"].clone(), link["bot_hits"].clone()),
        (json!(10), json!(3), json!(7))
    );

    // Unknown and disabled codes are not hits.
    assert_eq!(tap(http, server, "zzzzzzzz", IPHONE).await, 404);
    let metrics = http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("linkhit_hits_total{class=\"bot\",reason=\"preview:imessage\"}"), "{metrics}");
}

async fn unique_clicks_count_recipients_not_taps(backend: Backend) {
    let env = Env::new(backend).await;
    let codes = broadcast_link(&env, "spring", &["+12025550001", "+12025550002", "+12025550003"]).await;
    let (http, server) = (&env.http, &env.server);
    // Recipient 1 taps three times, recipient 2 once, recipient 3 only gets previews.
    for _ in 0..3 {
        tap(http, server, &codes[0], IPHONE).await;
    }
    tap(http, server, &codes[1], ANDROID).await;
    tap(http, server, &codes[2], IMESSAGE_PREVIEW).await;
    tap(http, server, &codes[2], WHATSAPP).await;
    let body = env.poll_json("/api/v1/broadcasts/spring/stats", Duration::from_secs(1), |b| b["hits"] == 6).await;
    assert_eq!(
        body,
        json!({"broadcast_id": "spring", "links": 3, "hits": 6, "human_hits": 4, "bot_hits": 2, "unique_clicks": 2,
               "delivered": 0, "bot_reasons": {"preview:imessage": 1, "preview:whatsapp": 1},
               "opt_outs": 0, "opt_out_links": 0, "conversions": 0, "conversion_value": {}})
    );
    let (_, s) = env.get_json(&format!("/api/v1/links/{}/stats", codes[2])).await;
    assert_eq!(s["unique_clicks"], 0, "a previewed link was not clicked");
    assert_eq!(s["first_click_at"], Value::Null);
}

async fn recent_clicks_newest_first_with_anonymised_ip(backend: Backend) {
    let env = Env::new(backend).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/r"})).await["code"].as_str().unwrap().to_owned();
    tap(&env.http, &env.server, &code, WHATSAPP).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    tap(&env.http, &env.server, &code, IPHONE).await;
    stats_within_a_second(&env, &code, |s| s["hits"] == 2).await;
    let (status, body) = env.get_json(&format!("/api/v1/links/{code}/clicks?limit=50")).await;
    assert_eq!(status, 200, "{body}");
    let clicks = body["clicks"].as_array().unwrap();
    assert_eq!(clicks.len(), 2);
    assert_eq!(clicks[0]["class"], "human");
    assert_eq!(clicks[0]["reason"], "browser:Safari");
    assert_eq!(clicks[0]["user_agent"], IPHONE);
    assert_eq!(clicks[0]["ip"], "127.0.0.0", "IPv4 loses its last octet");
    assert_eq!(clicks[1]["class"], "bot");
    assert_eq!(clicks[1]["reason"], "preview:whatsapp");
    assert!(clicks[0]["at"].as_str() >= clicks[1]["at"].as_str());
    let (_, one) = env.get_json(&format!("/api/v1/links/{code}/clicks?limit=1")).await;
    assert_eq!(one["clicks"].as_array().unwrap().len(), 1);
    for bad in ["0", "x", "100000"] {
        let (status, body) = env.get_json(&format!("/api/v1/links/{code}/clicks?limit={bad}")).await;
        assert_eq!(error_code(status, &body, 400), "INVALID_LIMIT");
    }
}

/// Bot-only batches and batches with humans keep the list at `LINKHIT_RECENT_CLICKS`, newest first (in
/// Redis, bot-only batches push without trimming and trim afterwards only when a list outgrew the cap).
async fn recent_clicks_keep_the_newest_up_to_the_cap(backend: Backend) {
    let redis = (backend == Backend::Redis).then(common::RedisServer::start);
    let mut config = common::config(redis.as_ref());
    config.recent_clicks = 3;
    let env = Env::with_config(config, redis).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/cap"})).await["code"].as_str().unwrap().to_owned();
    // One batch per hit: the link's list grows one by one past the cap.
    let agents = [WHATSAPP, IMESSAGE_PREVIEW, WHATSAPP, IMESSAGE_PREVIEW, IPHONE, WHATSAPP];
    for (i, agent) in agents.iter().enumerate() {
        tap(&env.http, &env.server, &code, agent).await;
        stats_within_a_second(&env, &code, |s| s["hits"] == i + 1).await;
    }
    let (status, body) = env.get_json(&format!("/api/v1/links/{code}/clicks?limit=3")).await;
    assert_eq!(status, 200, "{body}");
    let reasons: Vec<&str> = body["clicks"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["preview:whatsapp", "browser:Safari", "preview:imessage"], "{body}");
    let (status, over) = env.get_json(&format!("/api/v1/links/{code}/clicks?limit=4")).await;
    assert_eq!(error_code(status, &over, 400), "INVALID_LIMIT", "the cap is the largest limit");
    if let Some(redis) = &env.redis {
        let mut conn = redis.conn();
        let kept: usize = redis::cmd("LLEN").arg(format!("lh:clicks:{{{code}}}")).query(&mut conn).unwrap();
        assert_eq!(kept, 3, "the list itself is trimmed, not just the answer");
    }
    let s = stats_within_a_second(&env, &code, |s| s["hits"] == 6).await;
    assert_eq!((s["human_hits"].as_u64(), s["bot_hits"].as_u64()), (Some(1), Some(5)));
}

/// `LINKHIT_RECENT_FOLD`: a bot repeating itself on a link (same user agent, same address) within the
/// window is counted every time but listed once; another agent or address, and every human hit, is
/// listed. With the window at 0 every hit is listed.
async fn a_bots_repeats_are_counted_but_listed_once(backend: Backend) {
    for fold in [Duration::from_secs(60), Duration::ZERO] {
        let redis = (backend == Backend::Redis).then(common::RedisServer::start);
        let mut config = common::config(redis.as_ref());
        config.recent_fold = fold;
        config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        let env = Env::with_config(config, redis).await;
        let code =
            env.create_link(json!({"target_url": "https://example.com/f"})).await["code"].as_str().unwrap().to_owned();
        let from = |agent: &'static str, address: &'static str| {
            let req = env.http.get(env.url(&format!("/{code}"))).header("user-agent", agent);
            async move { req.header("x-forwarded-for", address).send().await.unwrap().status().as_u16() }
        };
        let taps = [
            (WHATSAPP, "198.51.100.7"),
            (WHATSAPP, "198.51.100.7"),
            (WHATSAPP, "198.51.100.7"),
            (WHATSAPP, "203.0.113.9"),
            (WHATSAPP, "203.0.113.9"),
            ("curl/8.5.0", "203.0.113.9"),
            (IPHONE, "198.51.100.20"),
            (IPHONE, "198.51.100.20"),
            ("curl/8.5.0", "203.0.113.9"),
            (WHATSAPP, "203.0.113.9"),
        ];
        for (agent, address) in taps {
            assert_eq!(from(agent, address).await, 302);
        }
        let s = stats_within_a_second(&env, &code, |s| s["hits"] == 10).await;
        assert_eq!((s["human_hits"].as_u64(), s["bot_hits"].as_u64()), (Some(2), Some(8)), "every hit is counted");
        let (status, body) = env.get_json(&format!("/api/v1/links/{code}/clicks")).await;
        assert_eq!(status, 200, "{body}");
        let listed: Vec<(&str, &str)> = body["clicks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["reason"].as_str().unwrap(), c["ip"].as_str().unwrap()))
            .rev()
            .collect();
        let (whatsapp, curl, iphone) = ("preview:whatsapp", "library:curl", "browser:Safari");
        let want: Vec<(&str, &str)> = if fold.is_zero() {
            vec![
                (whatsapp, "198.51.100.0"),
                (whatsapp, "198.51.100.0"),
                (whatsapp, "198.51.100.0"),
                (whatsapp, "203.0.113.0"),
                (whatsapp, "203.0.113.0"),
                (curl, "203.0.113.0"),
                (iphone, "198.51.100.0"),
                (iphone, "198.51.100.0"),
                (curl, "203.0.113.0"),
                (whatsapp, "203.0.113.0"),
            ]
        } else {
            vec![
                (whatsapp, "198.51.100.0"),
                (whatsapp, "203.0.113.0"),
                (curl, "203.0.113.0"),
                (iphone, "198.51.100.0"),
                (iphone, "198.51.100.0"),
                (whatsapp, "203.0.113.0"),
            ]
        };
        assert_eq!(listed, want, "window {fold:?}: {body}");
        if let Some(redis) = &env.redis {
            let kept: usize = redis::cmd("LLEN").arg(format!("lh:clicks:{{{code}}}")).query(&mut redis.conn()).unwrap();
            assert_eq!(kept, want.len(), "a folded repeat is not stored either");
        }
    }
}

async fn full_ip_and_trusted_proxy(backend: Backend) {
    let redis = (backend == Backend::Redis).then(common::RedisServer::start);
    let mut config = common::config(redis.as_ref());
    config.keep_full_ip = true;
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let env = Env::with_config(config, redis).await;
    let code =
        env.create_link(json!({"target_url": "https://example.com/ip"})).await["code"].as_str().unwrap().to_owned();
    let via_proxy = env
        .http
        .get(env.url(&format!("/{code}")))
        .header("user-agent", IPHONE)
        .header("x-forwarded-for", "198.51.100.23, 127.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(via_proxy.status(), 302);
    stats_within_a_second(&env, &code, |s| s["hits"] == 1).await;
    let (_, body) = env.get_json(&format!("/api/v1/links/{code}/clicks")).await;
    assert_eq!(body["clicks"][0]["ip"], "198.51.100.23", "{body}");
}

async fn opt_out_by_human_not_by_bot(backend: Backend) {
    let env = Env::new(backend).await;
    let link = env.create_link(json!({"kind": "opt_out", "recipient": "+12025550999", "broadcast_id": "promo"})).await;
    let code = link["code"].as_str().unwrap();
    for bot in [IMESSAGE_PREVIEW, WHATSAPP, "curl/8.5.0"] {
        assert_eq!(tap(&env.http, &env.server, code, bot).await, 200);
    }
    stats_within_a_second(&env, code, |s| s["bot_hits"] == 3).await;
    let (status, body) = env.get_json("/api/v1/opt-outs").await;
    assert_eq!(status, 200);
    assert_eq!(body["opt_outs"], json!([]), "a bot never opts anyone out");

    for _ in 0..2 {
        assert_eq!(tap(&env.http, &env.server, code, IPHONE).await, 200);
    }
    stats_within_a_second(&env, code, |s| s["human_hits"] == 2).await;
    let (_, body) = env.get_json("/api/v1/opt-outs").await;
    let list = body["opt_outs"].as_array().unwrap();
    assert_eq!(list.len(), 1, "one opt-out per recipient: {body}");
    assert_eq!(list[0]["recipient"], "+12025550999");
    assert_eq!(list[0]["source"], "link");
    assert!(chrono::DateTime::parse_from_rfc3339(list[0]["at"].as_str().unwrap()).is_ok());
}

async fn stats_routes_auth_and_isolation(backend: Backend) {
    let env = Env::new(backend).await;
    let code = env.create_link(json!({"target_url": "https://example.com/s", "broadcast_id": "b1"})).await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = send(
        env.http
            .post(env.url(&format!("/api/v1/workspaces/{}/keys", env.workspace_id)))
            .bearer_auth(ADMIN)
            .json(&json!({"permissions": ["links.write"]})),
    )
    .await;
    let write_only = body["api_key"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/v1/links/{code}/stats"),
        format!("/api/v1/links/{code}/clicks"),
        "/api/v1/broadcasts/b1/stats".to_owned(),
        "/api/v1/opt-outs".to_owned(),
    ] {
        let (status, body) = send(env.http.get(env.url(&path))).await;
        assert_eq!(error_code(status, &body, 401), "UNAUTHORIZED", "{path}");
        let (status, body) = send(env.http.get(env.url(&path)).bearer_auth(&write_only)).await;
        assert_eq!(error_code(status, &body, 403), "FORBIDDEN", "{path}");
        let (status, _) = env.get_json(&path).await;
        assert_eq!(status, 200, "{path}");
    }
    let (_, other) = common::create_workspace(&env.http, &env.server, "other").await;
    let (status, body) = send(env.http.get(env.url(&format!("/api/v1/links/{code}/stats"))).bearer_auth(&other)).await;
    assert_eq!(error_code(status, &body, 404), "LINK_NOT_FOUND");
    let (status, body) = send(env.http.get(env.url("/api/v1/broadcasts/b1/stats")).bearer_auth(&other)).await;
    assert_eq!(error_code(status, &body, 404), "BROADCAST_NOT_FOUND");
    let (status, body) = send(env.http.get(env.url("/api/v1/opt-outs")).bearer_auth(&other)).await;
    assert_eq!((status, body), (200, json!({"opt_outs": []})));
}

async fn events_carry_hits_and_first_click(backend: Backend) {
    let redis = (backend == Backend::Redis).then(common::RedisServer::start);
    let sink = Arc::new(Collect::default());
    let server = common::TestServer::start_with_sink(common::config(redis.as_ref()), sink.clone()).await;
    let http = common::client();
    let (_, key) = common::create_workspace(&http, &server, "ev").await;
    let (_, body) = send(http.post(server.url("/api/v1/broadcasts/ev/links")).bearer_auth(&key).json(&common::sent_an_hour_ago("/api/v1/links", json!({
        "target_url": "https://example.com/ev", "recipients": [{"recipient": "+12025550100", "message_id": "m1"}]
    }))))
    .await;
    let code = body["links"][0]["code"].as_str().unwrap().to_owned();
    let (_, optout) = send(
        http.post(server.url("/api/v1/links"))
            .bearer_auth(&key)
            .json(&common::sent_an_hour_ago("/api/v1/links", json!({"kind": "opt_out", "recipient": "+12025550100"}))),
    )
    .await;
    tap(&http, &server, &code, WHATSAPP).await;
    tap(&http, &server, &code, IPHONE).await;
    tap(&http, &server, &code, ANDROID).await;
    tap(&http, &server, optout["code"].as_str().unwrap(), IPHONE).await;
    tap(&http, &server, optout["code"].as_str().unwrap(), IPHONE).await;
    let all_in = eventually(Duration::from_secs(2), || async { sink.0.lock().unwrap().len() >= 3 }).await;
    assert!(all_in);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = sink.0.lock().unwrap().clone();
    assert_eq!(
        events.len(),
        3,
        "two human clicks and one opt-out; bots and repeated opt-outs fire nothing: {events:?}"
    );
    let clicks: Vec<_> = events
        .iter()
        .filter_map(|e| if let Event::Click { click, tally, .. } = e { Some((click, tally)) } else { None })
        .collect();
    assert_eq!(clicks.len(), 2);
    assert_eq!((clicks[0].1.human_hits, clicks[0].1.first_click), (1, true));
    assert_eq!((clicks[1].1.human_hits, clicks[1].1.first_click), (2, false));
    assert_eq!(clicks[0].0.recipient.as_deref(), Some("+12025550100"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::OptOut { click, .. } if click.recipient.as_deref() == Some("+12025550100")))
    );
    server.stop().await.unwrap();
}

/// Bot hits live in a key of their own (`lh:bots:{CODE}`); builds before it counted them in the counters
/// hash. An upgraded deployment reads both: in the stats, and in the events' `hits` whether the batch
/// also counts bot hits of the link (the script increments the key) or only human ones (it reads it).
/// Batches of two, sealed by size, make each batch's content certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_hits_counted_by_an_earlier_build_still_add_up() {
    let redis = common::RedisServer::start();
    let sink = Arc::new(Collect::default());
    let mut cfg = common::config(Some(&redis));
    cfg.click_batch = 2;
    cfg.click_flush_interval = Duration::from_secs(30);
    let server = common::TestServer::start_with_sink(cfg, sink.clone()).await;
    let http = common::client();
    let (_, key) = common::create_workspace(&http, &server, "up").await;
    let (_, link) = send(
        http.post(server.url("/api/v1/links"))
            .bearer_auth(&key)
            .json(&common::sent_an_hour_ago("/api/v1/links", json!({"target_url": "https://example.com/up"}))),
    )
    .await;
    let code = link["code"].as_str().unwrap().to_owned();
    // What an earlier build left: five bot hits in the hash.
    let _: () =
        redis::cmd("HSET").arg(format!("lh:cnt:{{{code}}}")).arg("bot_hits").arg(5).query(&mut redis.conn()).unwrap();
    // Batch 1: two bots. Batch 2: a human, then a bot. Batch 3: two humans.
    for ua in [WHATSAPP, "curl/8.5.0", IPHONE, "python-requests/2.31", IPHONE, ANDROID] {
        assert_eq!(tap(&http, &server, &code, ua).await, 302);
    }
    let counted = eventually(Duration::from_secs(3), || async { sink.0.lock().unwrap().len() >= 3 }).await;
    assert!(counted, "the three human taps' events");
    let tallies: Vec<(u64, u64)> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| if let Event::Click { tally, .. } = e { Some((tally.human_hits, tally.hits)) } else { None })
        .collect();
    // (human hits, hits) including the click: 5 earlier + 2 bots, then the human (the bot after it in its
    // batch is not before it); then 5 + 3 bots and humans 2 and 3.
    assert_eq!(tallies, vec![(1, 8), (2, 10), (3, 11)]);
    let (_, stats) = send(http.get(server.url(&format!("/api/v1/links/{code}/stats"))).bearer_auth(&key)).await;
    assert_eq!(
        (stats["hits"].clone(), stats["human_hits"].clone(), stats["bot_hits"].clone()),
        (json!(11), json!(3), json!(8)),
        "{stats}"
    );
    // The new bot hits went to their own key, the old ones stayed where they were.
    let mut conn = redis.conn();
    let bots: u64 = redis::cmd("GET").arg(format!("lh:bots:{{{code}}}")).query(&mut conn).unwrap();
    let old: u64 = redis::cmd("HGET").arg(format!("lh:cnt:{{{code}}}")).arg("bot_hits").query(&mut conn).unwrap();
    assert_eq!((bots, old), (3, 5));
    server.stop().await.unwrap();
}
