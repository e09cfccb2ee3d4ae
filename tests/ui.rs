//! The campaign view in a real headless Chromium against a linkhit on port 0 with seeded clicks: the
//! numbers on the page are the API's, failed webhook deliveries are highlighted, and a screenshot is not
//! blank. Needs Chromium (`apt-get install chromium`; `.ci/run` installs it; or set LINKHIT_CHROMIUM).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Env, IMESSAGE_PREVIEW, IPHONE, Receiver, Reply, send, tap};
use serde_json::{Value, json};

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("LINKHIT_CHROMIUM") {
        return PathBuf::from(path);
    }
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!("the UI test needs Chromium: apt-get install chromium (or set LINKHIT_CHROMIUM)");
}

/// Runs headless Chromium on `url` with `extra` arguments; returns stdout.
fn headless(url: &str, extra: &[&str]) -> String {
    let profile = common::temp_dir("chromium-profile");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of `<td data-field="FIELD">` inside the row `<tr data-broadcast="ID">` of a DOM dump.
fn cell(dom: &str, broadcast: &str, field: &str) -> String {
    let start =
        dom.find(&format!("data-broadcast=\"{broadcast}\"")).unwrap_or_else(|| panic!("no row for {broadcast}"));
    let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
    let at = row.find(&format!("data-field=\"{field}\"")).unwrap_or_else(|| panic!("no {field} in {row}"));
    let text = &row[at..];
    let open = text.find('>').unwrap() + 1;
    text[open..open + text[open..].find('<').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_apis_numbers() {
    let mut config = common::config(None);
    config.webhook_allow_private = true;
    config.webhook_retry_schedule = linkhit::config::parse_schedule("0.1").unwrap();
    config.click_flush_interval = Duration::from_millis(50);
    let env = Env::with_config(config, None).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500)]);
    send(env.http.put(env.url("/api/v1/webhooks")).bearer_auth(&env.key).json(&json!({"click_url": receiver.url})))
        .await;

    let mut first_code = String::new();
    for (name, taps) in [("spring_sale", [3usize, 1, 0]), ("autumn", [0, 2, 1])] {
        let recipients: Vec<Value> = (0..3).map(|i| json!({"recipient": format!("+1202555{:04}", i)})).collect();
        let (_, body) = env
            .post(
                &format!("/api/v1/broadcasts/{name}/links"),
                json!({"target_url": "https://e.com/x", "recipients": recipients}),
            )
            .await;
        if name == "spring_sale" {
            first_code = body["links"][0]["code"].as_str().unwrap().to_owned();
        }
        for (i, n) in taps.iter().enumerate() {
            let code = body["links"][i]["code"].as_str().unwrap();
            for _ in 0..*n {
                tap(&env.http, &env.server, code, IPHONE).await;
            }
            tap(&env.http, &env.server, code, IMESSAGE_PREVIEW).await;
        }
    }
    let api = env
        .poll_json("/api/v1/broadcasts", Duration::from_secs(2), |b| {
            b["broadcasts"][0]["hits"] == 6 && b["broadcasts"][1]["hits"] == 7
        })
        .await;
    receiver.wait_for(2, Duration::from_secs(5)).await; // one failure, then its retry
    tokio::time::sleep(Duration::from_millis(300)).await;

    let url = format!("{}/ui#key={}&code={first_code}", env.server.base, env.key);
    let dom = headless(&url, &["--dump-dom"]);
    assert!(dom.contains("data-ready=\"true\""), "the page finished loading: {dom}");
    for b in api["broadcasts"].as_array().unwrap() {
        let id = b["broadcast_id"].as_str().unwrap();
        for field in ["links", "hits", "human_hits", "bot_hits", "unique_clicks"] {
            assert_eq!(cell(&dom, id, field), b[field].to_string(), "{id} {field}");
        }
        let ctr = format!("{:.1}%", b["click_through_rate"].as_f64().unwrap() * 100.0);
        assert_eq!(cell(&dom, id, "click_through_rate"), ctr);
    }
    assert_eq!(cell(&dom, "spring_sale", "unique_clicks"), "2");
    assert!(dom.contains("<svg"), "the clicks-over-time chart is drawn");
    // The link's recent clicks: three human taps and one iMessage preview, with verdicts and reasons.
    assert_eq!(dom.matches("class=\"verdict-human\"").count(), 3, "{dom}");
    assert_eq!(dom.matches("class=\"verdict-bot\"").count(), 1);
    assert!(dom.contains("browser:Safari") && dom.contains("preview:imessage"));
    assert!(dom.contains("class=\"failed\""), "the failed delivery is highlighted");
    assert!(!dom.contains(&env.key), "the key does not end up in the page");

    // A desktop and a phone-sized screenshot, neither blank.
    for (size, keep) in [("1200,1400", "LINKHIT_UI_SCREENSHOT"), ("390,1600", "LINKHIT_UI_SCREENSHOT_PHONE")] {
        let shot = common::temp_dir("ui-shot").with_extension("png");
        headless(&url, &[&format!("--screenshot={}", shot.display()), &format!("--window-size={size}")]);
        let file = std::fs::File::open(&shot).expect("a screenshot was written");
        let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        let distinct: std::collections::HashSet<&[u8]> =
            pixels[..info.buffer_size()].chunks(info.color_type.samples()).collect();
        assert!(distinct.len() > 20, "the {size} screenshot is not blank ({} colours)", distinct.len());
        if let Some(path) = std::env::var_os(keep) {
            std::fs::copy(&shot, path).unwrap();
        }
        let _ = std::fs::remove_file(&shot);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_and_broadcast_list_agree_on_both_stores() {
    for backend in [common::Backend::Embedded, common::Backend::Redis] {
        let env = Env::new(backend).await;
        let (_, body) = env
            .post(
                "/api/v1/broadcasts/tl/links",
                json!({"target_url": "https://e.com/t", "recipients": [{"recipient": "+12025550100"}]}),
            )
            .await;
        let code = body["links"][0]["code"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            tap(&env.http, &env.server, &code, IPHONE).await;
        }
        tap(&env.http, &env.server, &code, IMESSAGE_PREVIEW).await;
        env.poll_json("/api/v1/broadcasts/tl/stats", Duration::from_secs(1), |s| s["hits"] == 4).await;
        for bucket in ["minute", "hour", "day"] {
            let (status, t) = env.get_json(&format!("/api/v1/broadcasts/tl/timeline?bucket={bucket}")).await;
            assert_eq!(status, 200, "{t}");
            let points = t["points"].as_array().unwrap();
            let human: u64 = points.iter().map(|p| p["human"].as_u64().unwrap()).sum();
            let bot: u64 = points.iter().map(|p| p["bot"].as_u64().unwrap()).sum();
            assert_eq!((human, bot), (3, 1), "{backend:?} {bucket}: {t}");
            assert!(chrono::DateTime::parse_from_rfc3339(points[0]["at"].as_str().unwrap()).is_ok());
        }
        let (_, list) = env.get_json("/api/v1/broadcasts").await;
        assert_eq!(
            list["broadcasts"][0],
            json!({"broadcast_id": "tl", "links": 1, "hits": 4, "human_hits": 3, "bot_hits": 1, "unique_clicks": 1,
                   "opt_outs": 0, "conversions": 0, "conversion_value": {}, "click_through_rate": 1.0})
        );
        let (status, body) = env.get_json("/api/v1/broadcasts/tl/timeline?bucket=week").await;
        assert_eq!(common::error_code(status, &body, 400), "INVALID_BUCKET");
        let (status, _) = env.get_json("/api/v1/broadcasts/nope/timeline").await;
        assert_eq!(status, 404);
        let page = env.http.get(env.url("/ui")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    }
}
