//! Click truth beyond the user agent, end to end on both stores: timing after send and delivery, client
//! networks (built-in hosting list, operator files), sweeps with the hold window (events withdrawn,
//! counts corrected), carrier NAT crowds that stay human, delivery reports, and the signals kept with
//! each hit.

mod common;

use std::time::Duration;

use common::{Backend, Env, IMESSAGE_PREVIEW, IPHONE, Receiver, send, tap_from};
use serde_json::{Value, json};

on_both_stores!(
    timing_and_networks_decide_what_the_user_agent_cannot,
    operator_networks_override_the_built_in_list,
    delivery_reports_count_and_feed_the_timing,
    a_sweep_flips_its_early_hits_within_the_hold_and_withdraws_their_events,
    a_flood_of_previews_cannot_push_a_sweep_out_of_the_tracker,
    people_behind_one_carrier_address_stay_human,
);

fn ago(secs: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(secs)).to_rfc3339()
}

async fn env_with(backend: Backend, adjust: impl FnOnce(&mut linkhit::Config)) -> Env {
    let redis = (backend == Backend::Redis).then(common::RedisServer::start);
    let mut config = common::config(redis.as_ref());
    config.click_flush_interval = Duration::from_millis(50);
    config.webhook_allow_private = true;
    adjust(&mut config);
    Env::with_config(config, redis).await
}

async fn broadcast(env: &Env, id: &str, recipients: usize, sent_at: &str) -> Vec<String> {
    let list: Vec<Value> = (0..recipients)
        .map(|i| json!({"recipient": format!("+1202555{i:04}"), "message_id": format!("{id}-m{i}")}))
        .collect();
    let (status, body) = send(
        env.http
            .post(env.url(&format!("/api/v1/broadcasts/{id}/links")))
            .bearer_auth(&env.key)
            .json(&json!({"target_url": "https://shop.example/", "sent_at": sent_at, "recipients": list})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap().to_owned()).collect()
}

async fn stats(env: &Env, broadcast: &str, hits: u64) -> Value {
    env.poll_json(&format!("/api/v1/broadcasts/{broadcast}/stats"), Duration::from_secs(5), |s| s["hits"] == hits).await
}

async fn last_click(env: &Env, code: &str) -> Value {
    let (_, body) = env.get_json(&format!("/api/v1/links/{code}/clicks?limit=1")).await;
    body["clicks"][0].clone()
}

async fn timing_and_networks_decide_what_the_user_agent_cannot(backend: Backend) {
    let env = env_with(backend, |_| {}).await;
    let base = env.url("");
    // Sent just now: a stock iPhone user agent a second later is a preview or scanner.
    let fresh = broadcast(&env, "fresh", 1, &ago(0)).await;
    assert_eq!(tap_from(&env.http, &base, &fresh[0], IPHONE, "198.51.100.5").await, 302);
    // Sent an hour ago: the same user agent from a cloud network is a scanner, from a phone a person.
    let old = broadcast(&env, "old", 3, &ago(3600)).await;
    tap_from(&env.http, &base, &old[0], IPHONE, "3.5.0.9").await;
    tap_from(&env.http, &base, &old[1], IPHONE, "198.51.100.6").await;
    tap_from(&env.http, &base, &old[2], IMESSAGE_PREVIEW, "198.51.100.7").await;

    let s = stats(&env, "fresh", 1).await;
    assert_eq!((s["human_hits"].clone(), s["bot_hits"].clone()), (json!(0), json!(1)), "{s}");
    assert_eq!(s["bot_reasons"], json!({"timing:0s_after_send": 1}));
    let click = last_click(&env, &fresh[0]).await;
    assert_eq!((click["class"].clone(), click["reason"].clone()), (json!("bot"), json!("timing:0s_after_send")));

    let s = stats(&env, "old", 3).await;
    assert_eq!(
        (s["human_hits"].clone(), s["bot_hits"].clone(), s["unique_clicks"].clone()),
        (json!(1), json!(2), json!(1))
    );
    assert_eq!(s["bot_reasons"], json!({"network:hosting:aws": 1, "preview:imessage": 1}), "{s}");
    let click = last_click(&env, &old[0]).await;
    assert_eq!(click["signals"], json!(["network:hosting:aws"]), "every verdict keeps its signals: {click}");
    assert_eq!(last_click(&env, &old[1]).await["class"], "human");
    // /metrics counts verdicts by reason.
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(common::metric(&metrics, "linkhit_hits_total{class=\"bot\",reason=\"network:hosting:aws\"}") >= 1.0);
}

async fn operator_networks_override_the_built_in_list(backend: Backend) {
    let dir = common::temp_dir("networks");
    std::fs::create_dir_all(&dir).unwrap();
    let human = dir.join("human.txt");
    let bot = dir.join("bot.txt");
    let relay = dir.join("relay.txt");
    std::fs::write(&human, "# our office behind a cloud VPN\n3.5.0.0/24 office\n").unwrap();
    std::fs::write(&bot, "192.0.2.0/24 scanner-farm\n").unwrap();
    std::fs::write(&relay, "203.0.113.0/24 apple_private_relay\n").unwrap();
    let env = env_with(backend, |c| {
        c.extra_human_networks = Some(human.clone());
        c.extra_bot_networks = Some(bot.clone());
        c.privacy_relay_networks = Some(relay.clone());
    })
    .await;
    let base = env.url("");
    let codes = broadcast(&env, "ops", 4, &ago(3600)).await;
    tap_from(&env.http, &base, &codes[0], IPHONE, "3.5.0.9").await;
    tap_from(&env.http, &base, &codes[1], IPHONE, "3.5.1.9").await;
    tap_from(&env.http, &base, &codes[2], IPHONE, "192.0.2.44").await;
    tap_from(&env.http, &base, &codes[3], IPHONE, "203.0.113.44").await;
    let s = stats(&env, "ops", 4).await;
    assert_eq!(s["bot_reasons"], json!({"network:hosting:aws": 1, "network:operator_bot:scanner-farm": 1}), "{s}");
    assert_eq!(last_click(&env, &codes[0]).await["reason"], "network:operator_human");
    assert_eq!(last_click(&env, &codes[3]).await["signals"], json!(["network:relay:apple_private_relay"]));
    assert_eq!(last_click(&env, &codes[3]).await["class"], "human", "a privacy relay is people");
}

async fn delivery_reports_count_and_feed_the_timing(backend: Backend) {
    let env = env_with(backend, |_| {}).await;
    let base = env.url("");
    let codes = broadcast(&env, "dlr", 3, &ago(3600)).await;
    let (status, body) = env
        .post(
            "/api/v1/delivery-reports",
            json!({"reports": [
                {"broadcast_id": "dlr", "recipient": "+12025550000", "status": "delivered", "at": ago(0)},
                {"message_id": "dlr-m1", "status": "delivered", "at": ago(600)},
                {"message_id": "dlr-m2", "status": "failed"},
                {"message_id": "no-such-message", "status": "delivered"},
            ]}),
        )
        .await;
    assert_eq!((status, body.clone()), (202, json!({"accepted": 3, "not_found": 1})), "{body}");
    let (_, link) = env.get_json(&format!("/api/v1/links/{}", codes[2])).await;
    assert_eq!(link["delivery_status"], "failed");
    // Just delivered: the preview fetch that comes with delivery; delivered ten minutes ago: a person.
    tap_from(&env.http, &base, &codes[0], IPHONE, "198.51.100.10").await;
    tap_from(&env.http, &base, &codes[1], IPHONE, "198.51.100.11").await;
    let s = stats(&env, "dlr", 2).await;
    assert_eq!(s["delivered"], 2, "{s}");
    assert_eq!(s["bot_reasons"], json!({"timing:0s_after_delivery": 1}), "{s}");
    assert_eq!(s["human_hits"], 1);
    for (body, code) in [
        (json!({"reports": []}), "INVALID_REPORTS"),
        (json!({"reports": [{"status": "delivered"}]}), "INVALID_REPORT"),
        (json!({"reports": [{"message_id": "x", "status": "read"}]}), "INVALID_STATUS"),
        (json!({"reports": [{"message_id": "x", "status": "delivered", "at": "now"}]}), "INVALID_AT"),
        (json!({"reports": [{"message_id": "x", "status": "delivered", "deliverd": true}]}), "UNKNOWN_FIELD"),
    ] {
        let (status, resp) = env.post("/api/v1/delivery-reports", body.clone()).await;
        assert_eq!(common::error_code(status, &resp, 400), code, "{body}");
    }
}

async fn a_sweep_flips_its_early_hits_within_the_hold_and_withdraws_their_events(backend: Backend) {
    let env = env_with(backend, |c| c.click_hold = Duration::from_secs(3)).await;
    let base = env.url("");
    let receiver = Receiver::start().await;
    let (status, _) =
        send(env.http.put(env.url("/api/v1/webhooks")).bearer_auth(&env.key).json(&json!({"click_url": receiver.url})))
            .await;
    assert_eq!(status, 200);
    // Sent 30 s ago: too late for the timing rule, soon enough for a sweep.
    let codes = broadcast(&env, "sweep", 4, &ago(30)).await;
    // A scanner with a stock browser user agent from an ordinary address opens recipients 0 and 1 —
    // each looks human on its own, and each is counted — then recipient 2: a sweep.
    tap_from(&env.http, &base, &codes[0], IPHONE, "198.51.100.77").await;
    tap_from(&env.http, &base, &codes[1], IPHONE, "198.51.100.77").await;
    env.poll_json("/api/v1/broadcasts/sweep/stats", Duration::from_secs(5), |s| s["human_hits"] == 2).await;
    tap_from(&env.http, &base, &codes[2], IPHONE, "198.51.100.77").await;
    // A person taps recipient 3's link from their own phone.
    tap_from(&env.http, &base, &codes[3], IPHONE, "198.51.100.200").await;
    let s = env
        .poll_json("/api/v1/broadcasts/sweep/stats", Duration::from_secs(5), |s| s["hits"] == 4 && s["human_hits"] == 1)
        .await;
    assert_eq!(
        (s["human_hits"].clone(), s["bot_hits"].clone(), s["unique_clicks"].clone()),
        (json!(1), json!(3), json!(1)),
        "the sweep's early hits moved to the bots, never counted in both: {s}"
    );
    assert_eq!(s["bot_reasons"], json!({"sweep": 3}));
    for code in &codes[..2] {
        let (_, l) = env.get_json(&format!("/api/v1/links/{code}/stats")).await;
        assert_eq!((l["human_hits"].clone(), l["bot_hits"].clone()), (json!(0), json!(1)), "{l}");
    }
    // After the hold only the person's event is delivered: the two held events of the sweep were withdrawn.
    let hooks = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let hooks_now = receiver.hooks();
    assert_eq!(hooks_now.len(), 1, "{:?}", hooks_now.iter().map(|h| h.body.clone()).collect::<Vec<_>>());
    assert_eq!(hooks[0].json()["payload"]["destination"], "+12025550003");
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(common::metric(&metrics, "linkhit_verdict_flips_total") >= 2.0, "flips are counted");
}

async fn a_flood_of_previews_cannot_push_a_sweep_out_of_the_tracker(backend: Backend) {
    // A tracker of four hits (and clients). Six link previews (bots by their user agent), three of them
    // HEAD requests, arrive between a scanner's hits: were they tracked, they would push the scanner's
    // window out and its third recipient would look like its first.
    let env = env_with(backend, |c| {
        c.sweep_capacity = 4;
        c.click_hold = Duration::from_secs(5);
    })
    .await;
    let base = env.url("");
    let codes = broadcast(&env, "previews", 9, &ago(30)).await;
    tap_from(&env.http, &base, &codes[0], IPHONE, "198.51.100.77").await;
    tap_from(&env.http, &base, &codes[1], IPHONE, "198.51.100.77").await;
    for (i, code) in codes[3..].iter().enumerate() {
        let ip = format!("198.51.100.{}", 10 + i);
        if i < 3 {
            let head = env.http.head(format!("{base}/{code}")).header("user-agent", IMESSAGE_PREVIEW);
            let (status, _) = send(head.header("x-forwarded-for", ip)).await;
            assert_eq!(status, 302);
        } else {
            tap_from(&env.http, &base, code, IMESSAGE_PREVIEW, &ip).await;
        }
    }
    tap_from(&env.http, &base, &codes[2], IPHONE, "198.51.100.77").await;
    let s = env
        .poll_json("/api/v1/broadcasts/previews/stats", Duration::from_secs(5), |s| {
            s["hits"] == 9 && s["human_hits"] == 0
        })
        .await;
    assert_eq!(
        (s["bot_hits"].clone(), s["unique_clicks"].clone(), s["bot_reasons"]["sweep"].clone()),
        (json!(9), json!(0), json!(3)),
        "the scanner's three hits are a sweep, the previews bots by their agent: {s}"
    );
    // The previews' own verdict is their user agent's, with no sweep signal.
    let preview = last_click(&env, &codes[5]).await;
    assert_eq!(preview["class"], "bot", "{preview}");
    assert!(!preview.to_string().contains("sweep"), "{preview}");
}

async fn people_behind_one_carrier_address_stay_human(backend: Backend) {
    let env = env_with(backend, |_| {}).await;
    let base = env.url("");
    // Twenty recipients on one carrier NAT address with the same phone model, ten minutes after send.
    let codes = broadcast(&env, "cgnat", 20, &ago(600)).await;
    for code in &codes {
        assert_eq!(tap_from(&env.http, &base, code, IPHONE, "100.64.0.1").await, 302);
    }
    let s = stats(&env, "cgnat", 20).await;
    assert_eq!((s["human_hits"].clone(), s["unique_clicks"].clone()), (json!(20), json!(20)), "{s}");
}
