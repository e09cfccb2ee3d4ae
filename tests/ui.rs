//! The campaign console in a real headless Chromium, driven over WebDriver (chromedriver on a free port,
//! `fantoccini` as the client) the way a campaign owner uses it: sign in with a key, open a broadcast,
//! read its funnel, search its links by recipient, open a link's clicks, then on the Webhooks page change
//! the click URL, send a test event and replay the dead letters. Every number read off the page is
//! checked against the API; the layout is checked at 1280x800 and 390x844.
//!
//! Needs Chromium and its driver (`apt-get install chromium chromium-driver`; `.ci/run` installs them;
//! `LINKHIT_CHROMIUM` and `LINKHIT_CHROMEDRIVER` override the binaries). With `LINKHIT_SCREENSHOTS` set
//! the screenshots are saved to docs/screenshots/ for the README.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ANDROID, Env, IMESSAGE_PREVIEW, IPHONE, Receiver, Reply, WHATSAPP, send, tap, tap_from};
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{Value, json};

/// How long any one thing on the page may take to show up.
const PATIENCE: Duration = Duration::from_secs(10);

fn binary(env: &str, names: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    for name in names {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!("the UI test needs {names:?}: apt-get install chromium chromium-driver (or set {env})");
}

/// The chromedriver process, killed by its PID when dropped (also when the test fails).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A chromedriver process on a free port and a WebDriver session with headless Chromium.
async fn browser() -> (Driver, Client) {
    let port = common::free_port();
    let driver = Driver(
        Command::new(binary("LINKHIT_CHROMEDRIVER", &["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let chromium = binary("LINKHIT_CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--force-device-scale-factor=1", "--lang=en-US", "--window-size=1280,800",
        ]}),
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("no WebDriver session from chromedriver on port {port}: {e}"),
        }
    }
}

/// Runs `body` as a function body in the page and answers its return value.
async fn js(c: &Client, body: &str) -> Value {
    c.execute(body, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{body}"))
}

/// Polls `body` until it returns something truthy; fails naming `what` (and the page's status line).
async fn until(c: &Client, what: &str, body: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = js(c, body).await;
        if !matches!(value, Value::Null | Value::Bool(false)) && value != json!("") && value != json!(0) {
            return value;
        }
        if Instant::now() > deadline {
            let status = js(c, "return document.getElementById('status').textContent").await;
            panic!("{what}: not so within {PATIENCE:?} (last {value}; page status {status})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks `css` once it is visible and enabled, as a person would (a real pointer click).
async fn click(c: &Client, css: &str) {
    let q = serde_json::to_string(css).unwrap();
    until(
        c,
        &format!("{css} clickable"),
        &format!("const e = document.querySelector({q}); return !!e && !e.disabled && e.getClientRects().length > 0"),
    )
    .await;
    c.find(Locator::Css(css)).await.unwrap().click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(c: &Client, css: &str, text: &str) {
    click(c, css).await;
    let input = c.find(Locator::Css(css)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

/// The text of every element matching `css`, in order.
async fn texts(c: &Client, css: &str) -> Vec<String> {
    let q = serde_json::to_string(css).unwrap();
    let v = js(c, &format!("return [...document.querySelectorAll({q})].map(e => e.textContent.trim())")).await;
    serde_json::from_value(v).unwrap()
}

async fn text(c: &Client, css: &str) -> String {
    texts(c, css).await.into_iter().next().unwrap_or_else(|| panic!("nothing matches {css}"))
}

/// Sizes the viewport (not the window) to `width` x `height`.
async fn viewport(c: &Client, width: i64, height: i64) {
    c.set_window_size(width as u32, height as u32).await.unwrap();
    let inner = js(c, "return [window.innerWidth, window.innerHeight]").await;
    let (dw, dh) = (width - inner[0].as_i64().unwrap(), height - inner[1].as_i64().unwrap());
    if dw != 0 || dh != 0 {
        c.set_window_size((width + dw) as u32, (height + dh) as u32).await.unwrap();
    }
    until(
        c,
        &format!("a {width}x{height} viewport"),
        &format!("return innerWidth === {width} && innerHeight === {height}"),
    )
    .await;
}

/// At the current size: nothing scrolls sideways and the funnel's numbers are on screen; then a
/// screenshot, which must not be blank, kept in docs/screenshots/ when LINKHIT_SCREENSHOTS is set.
async fn check_layout(c: &Client, name: &str) {
    let fits = "const w = window.innerWidth;
        const boxes = [...document.querySelectorAll('#view-broadcast [data-metric]')].map(e => e.getBoundingClientRect());
        const chart = document.querySelector('#chart svg');
        return document.documentElement.scrollWidth <= w && boxes.length >= 6
            && boxes.every(b => b.width > 0 && b.left >= 0 && b.right <= w)
            && !!chart && Math.abs(chart.getBoundingClientRect().width - chart.width.baseVal.value) < 2";
    until(c, &format!("{name}: no sideways scrolling and the key numbers in view"), fits).await;
    js(c, "document.activeElement.blur(); window.scrollTo(0, 0); return true").await;
    let png = c.screenshot().await.unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(&png)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let distinct: std::collections::HashSet<&[u8]> =
        pixels[..info.buffer_size()].chunks(info.color_type.samples()).collect();
    assert!(distinct.len() > 20, "the {name} screenshot is blank ({} colours)", distinct.len());
    if std::env::var_os("LINKHIT_SCREENSHOTS").is_some() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("console-{name}.png")), &png).unwrap();
    }
}

/// `bot_reasons` grouped by the part before the first ':', with the details after it.
fn bot_kinds(reasons: &Value) -> std::collections::BTreeMap<String, (u64, Vec<(String, u64)>)> {
    let mut kinds = std::collections::BTreeMap::<String, (u64, Vec<(String, u64)>)>::new();
    for (reason, n) in reasons.as_object().unwrap() {
        let n = n.as_u64().unwrap();
        let (kind, detail) = reason.split_once(':').map_or((reason.as_str(), None), |(k, d)| (k, Some(d)));
        let entry = kinds.entry(kind.to_owned()).or_default();
        entry.0 += n;
        entry.1.extend(detail.map(|d| (d.to_owned(), n)));
    }
    kinds
}

/// What the test seeded: the broadcast's codes by recipient index and the two webhook receivers.
struct Seeded {
    codes: Vec<String>,
    failing: Receiver,
    ok: Receiver,
    stats_only_key: String,
}

async fn seed(env: &Env) -> Seeded {
    let failing = Receiver::start().await;
    failing.set_default(Reply::status(500));
    let ok = Receiver::start().await;
    let click_url = format!("{}/hooks/linkhit/clicks?campaign=spring-sale-2025&source=console-test", failing.url);
    let (status, body) =
        send(env.http.put(env.url("/api/v1/webhooks")).bearer_auth(&env.key).json(&json!({"click_url": click_url})))
            .await;
    assert_eq!(status, 200, "{body}");

    let recipients: Vec<Value> = (0..4).map(|i| json!({"recipient": format!("+1202555010{i}")})).collect();
    let (status, body) = env
        .post(
            "/api/v1/broadcasts/spring_sale/links",
            json!({"target_url": "https://shop.example/sale", "recipients": recipients}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let codes: Vec<String> =
        body["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap().into()).collect();
    let (_, autumn) = env
        .post("/api/v1/broadcasts/autumn/links", json!({"target_url": "https://shop.example/autumn", "recipients": [{"recipient": "+12025550200"}, {"recipient": "+12025550201"}]}))
        .await;

    let delivered_at = (chrono::Utc::now() - chrono::Duration::minutes(59)).to_rfc3339();
    let report = json!({"reports": [{"broadcast_id": "spring_sale", "recipient": "+12025550100", "status": "delivered", "at": delivered_at}]});
    let (status, body) = env.post("/api/v1/delivery-reports", report).await;
    assert_eq!(status, 202, "{body}");

    let base = &env.server.base;
    for (code, ua, ip) in [
        (&codes[0], IPHONE, "198.51.100.10"),
        (&codes[0], IPHONE, "198.51.100.10"),
        (&codes[0], WHATSAPP, "203.0.113.50"),
        (&codes[1], ANDROID, "198.51.100.11"),
        (&codes[1], WHATSAPP, "203.0.113.51"),
        (&codes[2], IMESSAGE_PREVIEW, "203.0.113.52"),
        (&codes[3], "curl/8.5.0", "198.51.100.13"),
    ] {
        assert_eq!(tap_from(&env.http, base, code, ua, ip).await, 302);
    }
    tap(&env.http, &env.server, autumn["links"][0]["code"].as_str().unwrap(), IPHONE).await;

    let (status, body) =
        env.post("/api/v1/opt-outs", json!({"recipient": "+12025550103", "broadcast_id": "spring_sale"})).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, body) =
        env.post("/api/v1/conversions", json!({"code": codes[0], "name": "purchase", "value": 49.9})).await;
    assert!(status == 200 || status == 201, "{status} {body}");

    let stats = env
        .poll_json("/api/v1/broadcasts/spring_sale/stats", PATIENCE, |s| {
            s["hits"] == 7 && s["conversions"] == 1 && s["opt_outs"] == 1 && s["delivered"] == 1
        })
        .await;
    assert!(bot_kinds(&stats["bot_reasons"]).len() >= 2, "bots of more than one kind: {stats}");
    // Every human hit's click event fails twice (500, then its one retry) and becomes a dead letter.
    let (_, list) = env.get_json("/api/v1/broadcasts").await;
    let humans: u64 = list["broadcasts"].as_array().unwrap().iter().map(|b| b["human_hits"].as_u64().unwrap()).sum();
    env.poll_json("/api/v1/webhooks/dead-letters", PATIENCE, |d| {
        d["dead_letters"].as_array().unwrap().len() as u64 == humans && d["backlog"] == 0
    })
    .await;

    let (status, body) = send(
        env.http
            .post(env.url(&format!("/api/v1/workspaces/{}/keys", env.workspace_id)))
            .bearer_auth(common::ADMIN)
            .json(&json!({"permissions": ["stats.read"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    Seeded { codes, failing, ok, stats_only_key: body["api_key"].as_str().unwrap().to_owned() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_owner_uses_the_console() {
    let mut config = common::config(None);
    config.webhook_allow_private = true;
    config.webhook_retry_schedule = linkhit::config::RetrySchedule(vec![Duration::from_millis(50)]);
    config.click_flush_interval = Duration::from_millis(50);
    let env = Env::with_config(config, None).await;
    let seeded = seed(&env).await;

    let (driver, client) = browser().await;
    let outcome = std::panic::AssertUnwindSafe(drive(&client, &env, &seeded)).catch_unwind().await;
    let _ = client.close().await; // ends Chromium; then chromedriver goes
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn drive(c: &Client, env: &Env, seeded: &Seeded) {
    let base = &env.server.base;
    viewport(c, 1280, 800).await;
    c.goto(&format!("{base}/ui")).await.unwrap();
    type_into(c, "#key", "lh_not-a-key").await;
    click(c, "#key-form button[type=submit]").await;
    until(c, "a wrong key refused", "return document.getElementById('status').textContent.includes('not valid') && !document.getElementById('login').hidden").await;
    type_into(c, "#key", &env.key).await;
    click(c, "#key-form button[type=submit]").await;
    until(
        c,
        "signed in",
        "return document.body.dataset.ready === 'true' && !document.getElementById('view-list').hidden",
    )
    .await;
    // The test reads the page while it stands still: auto-refresh off (switched on again at the end).
    click(c, "#auto-refresh").await;
    assert_eq!(js(c, "return document.getElementById('auto-refresh').getAttribute('aria-pressed')").await, "false");

    // The list: every broadcast's numbers are the API's.
    let (_, list) = env.get_json("/api/v1/broadcasts").await;
    let list = list["broadcasts"].as_array().unwrap().clone();
    until(
        c,
        "a row per broadcast",
        &format!("return document.querySelectorAll('#broadcast-rows tr').length === {}", list.len()),
    )
    .await;
    for b in &list {
        let id = b["broadcast_id"].as_str().unwrap();
        for field in ["links", "hits", "human_hits", "bot_hits", "unique_clicks", "conversions", "opt_outs"] {
            let shown = text(c, &format!("tr[data-broadcast='{id}'] [data-field='{field}']")).await;
            assert_eq!(shown, b[field].to_string(), "{id} {field}");
        }
        let ctr = format!("{:.1}%", b["click_through_rate"].as_f64().unwrap() * 100.0);
        assert_eq!(text(c, &format!("tr[data-broadcast='{id}'] [data-field='click_through_rate']")).await, ctr);
    }

    // A broadcast: the funnel, opt-outs and bots by kind are the API's stats.
    click(c, "tr[data-broadcast='spring_sale'] a").await;
    until(c, "the funnel", "return document.querySelector('#funnel [data-metric=links]')").await;
    let (_, stats) = env.get_json("/api/v1/broadcasts/spring_sale/stats").await;
    assert!(c.current_url().await.unwrap().as_str().ends_with("/ui#broadcast=spring_sale"));
    for metric in ["links", "delivered", "unique_clicks", "conversions", "opt_outs", "bot_hits"] {
        assert_eq!(
            text(c, &format!("#view-broadcast [data-metric='{metric}']")).await,
            stats[metric].to_string(),
            "{metric}"
        );
    }
    let ctr = stats["unique_clicks"].as_f64().unwrap() / stats["links"].as_f64().unwrap() * 100.0;
    assert_eq!(text(c, "[data-metric='click_through']").await, format!("{ctr:.1}%"));
    assert_eq!(text(c, "[data-metric='conversion_value']").await, "$49.90");
    let kinds = bot_kinds(&stats["bot_reasons"]);
    assert_eq!(texts(c, "#bots [data-bot-kind]").await.len(), kinds.len(), "{stats}");
    for (kind, (count, details)) in &kinds {
        assert_eq!(text(c, &format!("[data-bot-kind='{kind}'] [data-field=count]")).await, count.to_string(), "{kind}");
        for (detail, n) in details {
            let shown = text(c, &format!("[data-bot-kind='{kind}'] [data-detail='{detail}']")).await;
            assert!(shown.ends_with(&format!("{detail} {n}")), "{kind}:{detail} shows {shown}");
        }
    }
    // The chart: the same hits and conversions as the timeline, one bar per bucket with human hits.
    let (_, timeline) = env.get_json("/api/v1/broadcasts/spring_sale/timeline?bucket=hour").await;
    let points = timeline["points"].as_array().unwrap();
    let sum = |k: &str| points.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    let drawn = until(c, "the chart", "const s = document.querySelector('#chart svg'); return s && [s.dataset.human, s.dataset.bot, s.dataset.conversions, document.querySelectorAll('#chart .bar-human').length]").await;
    let with_humans = points.iter().filter(|p| p["human"].as_u64() > Some(0)).count();
    assert_eq!(
        drawn,
        json!([sum("human").to_string(), sum("bot").to_string(), sum("conversions").to_string(), with_humans])
    );

    // Per minute: the page asks again and draws that series.
    c.find(Locator::Css("#bucket")).await.unwrap().select_by_value("minute").await.unwrap();
    let (_, minutes) = env.get_json("/api/v1/broadcasts/spring_sale/timeline?bucket=minute").await;
    let n = minutes["points"].as_array().unwrap().len();
    until(c, "the per-minute chart", &format!("const s = document.querySelector('#chart svg'); return s && s.dataset.bucket === 'minute' && s.dataset.buckets === '{n}' && s.dataset.human === '{}'", sum("human"))).await;
    // Bars stand where their time is: a series with its empty hours left out (as the API answers past
    // 1500 buckets) is drawn like the same series with them filled in.
    let positions = "const { drawTimeline } = await import('/ui/chart.js');
        const at = (h) => new Date(Date.UTC(2025, 0, 1, h)).toISOString();
        const p = (h, human) => ({ at: at(h), human, bot: 0, conversions: 0 });
        const xs = (points) => {
            const box = document.createElement('div');
            document.body.append(box);
            drawTimeline(box, points, 'hour');
            const x = [...box.querySelectorAll('.bar-human')].map(r => Number(r.getAttribute('x')));
            box.remove();
            return x;
        };
        return [xs([p(0, 1), p(1, 0), p(2, 0), p(3, 2), p(4, 1)]), xs([p(0, 1), p(3, 2), p(4, 1)])];";
    let xs = c.execute(&format!("return (async () => {{ {positions} }})()"), vec![]).await.unwrap();
    assert_eq!(xs[0], xs[1], "gaps keep their width: {xs}");
    let x: Vec<f64> = serde_json::from_value(xs[0].clone()).unwrap();
    assert!(((x[1] - x[0]) - 3.0 * (x[2] - x[1])).abs() < 0.01, "three hours are three times one hour: {x:?}");
    c.find(Locator::Css("#bucket")).await.unwrap().select_by_value("hour").await.unwrap();
    until(c, "the hourly chart again", &format!("const s = document.querySelector('#chart svg'); return s.dataset.bucket === 'hour' && s.dataset.buckets === '{}'", points.len())).await;

    check_layout(c, "desktop").await;
    viewport(c, 390, 844).await;
    check_layout(c, "phone").await;
    viewport(c, 1280, 800).await;

    // Search the links by recipient, then open one's clicks.
    let (_, found) = env.get_json("/api/v1/broadcasts/spring_sale/links?recipient=0100").await;
    assert_eq!(found["total"], 1, "{found}");
    type_into(c, "#recipient", "0100").await;
    click(c, "#links-form button[type=submit]").await;
    until(c, "the search's rows", "const rows = [...document.querySelectorAll('#link-rows tr')]; return document.getElementById('links-summary').dataset.total === '1' && rows.length === 1 && rows[0].querySelector('th').textContent === '+12025550100'").await;
    let code = &seeded.codes[0];
    assert_eq!(found["links"][0]["code"], json!(code));
    click(c, &format!("#link-rows tr[data-code='{code}'] a")).await;
    let (_, clicks) = env.get_json(&format!("/api/v1/links/{code}/clicks?limit=50")).await;
    let clicks = clicks["clicks"].as_array().unwrap();
    assert_eq!(clicks.len(), 3);
    until(
        c,
        "the link's clicks",
        &format!("return document.getElementById('clicks-summary').dataset.count === '{}'", clicks.len()),
    )
    .await;
    assert!(c.current_url().await.unwrap().as_str().ends_with(&format!("#broadcast=spring_sale&code={code}")));
    let want = |k: &str| clicks.iter().map(|x| x[k].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(texts(c, "#click-rows [data-field=class]").await, want("class"));
    assert_eq!(texts(c, "#click-rows [data-field=reason]").await, want("reason"));
    let signals: Vec<String> =
        clicks.iter().map(|x| x["signals"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect()).collect();
    assert_eq!(texts(c, "#click-rows [data-field=signals]").await, signals);
    assert_eq!(texts(c, "#click-rows td.verdict-human").await.len(), 2);
    assert_eq!(texts(c, "#click-rows td.verdict-bot").await.len(), 1);
    assert_eq!(text(c, "#link-rows tr.selected th").await, "+12025550100", "the open link's row is marked");

    webhooks(c, env, seeded).await;

    // A `#code=` link opens the link's broadcast with its clicks.
    c.goto(&format!("{base}/ui#code={code}")).await.unwrap();
    until(c, "the #code= link resolved", &format!("return location.hash === '#broadcast=spring_sale&code={code}' && document.getElementById('clicks-summary').dataset.count === '3' && !document.getElementById('view-broadcast').hidden")).await;

    // The key never reaches a URL or the page; a `#key=` link is refused and dropped.
    let page = c.source().await.unwrap();
    assert!(!page.contains(&env.key) && !c.current_url().await.unwrap().as_str().contains(&env.key));
    click(c, "#forget").await;
    until(
        c,
        "signed out",
        "return !document.getElementById('login').hidden && !sessionStorage.getItem('linkhit.apiKey')",
    )
    .await;
    c.goto(&format!("{base}/ui#key=leaked-key&broadcast=spring_sale")).await.unwrap();
    until(
        c,
        "the #key= fragment dropped",
        "return !location.hash.includes('key=') && !document.getElementById('key-note').hidden",
    )
    .await;
    assert_eq!(js(c, "return sessionStorage.getItem('linkhit.apiKey')").await, Value::Null);

    // A key with stats.read only: the broadcast view works, Webhooks is a short note, and a `#code=`
    // link (no links.read to find its broadcast) shows the link's clicks.
    type_into(c, "#key", &seeded.stats_only_key).await;
    click(c, "#key-form button[type=submit]").await;
    until(c, "the deep-linked broadcast", "return document.querySelector('#funnel [data-metric=links]') && !document.getElementById('view-broadcast').hidden").await;
    click(c, "a[data-section=webhooks]").await;
    until(
        c,
        "the note for a key without webhooks.read",
        "return !document.getElementById('wh-forbidden').hidden && document.getElementById('wh-body').hidden",
    )
    .await;
    assert_eq!(text(c, "#status").await, "", "no error, just the note");
    c.goto(&format!("{base}/ui#code={code}")).await.unwrap();
    until(c, "the clicks of a #code= link", &format!("return !document.getElementById('clicks').hidden && document.getElementById('clicks-code').textContent === '{code}' && document.getElementById('clicks-summary').dataset.count === '3'")).await;

    assert_eq!(
        js(c, "return document.body.dataset.cspViolations ?? null").await,
        Value::Null,
        "nothing the CSP blocked"
    );

    // Auto-refresh on again: it loads at once, and the toggle says so.
    let loads = js(c, "return Number(document.body.dataset.loads)").await.as_u64().unwrap();
    click(c, "#auto-refresh").await;
    until(c, "a refresh", &format!("return Number(document.body.dataset.loads) > {loads} && document.getElementById('auto-refresh').getAttribute('aria-pressed') === 'true'")).await;
}

/// The Webhooks page: failed deliveries highlighted, the click URL changed, a test event sent, the
/// dead letters replayed, and a refused change explained.
async fn webhooks(c: &Client, env: &Env, seeded: &Seeded) {
    click(c, "a[data-section=webhooks]").await;
    let (_, before) = env.get_json("/api/v1/webhooks").await;
    let old_url = before["click_url"].as_str().unwrap().to_owned();
    until(c, "the settings", &format!("return document.getElementById('wh-click_url').value === {}", json!(old_url)))
        .await;
    let (_, logs) = env.get_json("/api/v1/webhooks/logs?limit=50").await;
    let failed = logs["logs"].as_array().unwrap().iter().filter(|l| l["response_code"] != 200).count();
    assert!(failed > 0);
    until(
        c,
        "failed deliveries highlighted",
        &format!("return document.querySelectorAll('#wh-log-rows tr.failed').length === {failed}"),
    )
    .await;
    assert!(text(c, "#wh-log-rows tr.failed [data-field=error]").await.contains("500"));
    // Long URLs and errors wrap inside the table at 1280 px instead of running off to the side.
    let fits = "const box = document.querySelector('#wh-log-rows').closest('.scroll');
        const cells = [...document.querySelectorAll('#wh-log-rows [data-field=error], #wh-log-rows [data-field=url]')];
        return box.scrollWidth <= box.clientWidth && cells.every(td => td.getBoundingClientRect().right <= innerWidth)";
    assert_eq!(js(c, fits).await, true, "the delivery log fits at 1280 px");

    let (_, dead) = env.get_json("/api/v1/webhooks/dead-letters?limit=100").await;
    let dead_ids: Vec<String> =
        dead["dead_letters"].as_array().unwrap().iter().map(|d| d["event_id"].as_str().unwrap().into()).collect();
    until(
        c,
        "the dead letters",
        &format!("return document.getElementById('wh-dead-summary').dataset.count === '{}'", dead_ids.len()),
    )
    .await;

    // Change the click URL: only that field is sent, and the API has it.
    let new_url = format!("{}/clicks", seeded.ok.url);
    type_into(c, "#wh-click_url", &new_url).await;
    click(c, "#wh-save").await;
    until(c, "saved", "return document.getElementById('wh-save-result').dataset.success === 'true'").await;
    assert_eq!(text(c, "#wh-save-result").await, "Saved: click_url.");
    let (_, after) = env.get_json("/api/v1/webhooks").await;
    assert_eq!(after["click_url"], json!(new_url));
    for field in ["format", "hits", "recipient_format", "click_fields", "enabled", "unique_clicks_only"] {
        assert_eq!(after[field], before[field], "{field} untouched");
    }

    // A test event reaches the new URL.
    click(c, "#wh-test-send").await;
    until(c, "the test's outcome", "return document.getElementById('wh-test-result').dataset.success === 'true'").await;
    let hooks = seeded.ok.wait_for(1, PATIENCE).await;
    assert_eq!(hooks[0].path, "/clicks");
    assert!(text(c, "#wh-test-result").await.contains("HTTP 200"));

    // Replay: the dead letters leave the list and are delivered, with their event ids, to the new URL.
    let failed_before = seeded.failing.hooks().len();
    click(c, "#wh-replay").await;
    until(
        c,
        "replayed",
        &format!(
            "return document.getElementById('wh-replay-result').textContent.includes('Queued {} ')",
            dead_ids.len()
        ),
    )
    .await;
    until(c, "an empty dead-letter list", "return document.getElementById('wh-dead-summary').dataset.count === '0' && document.querySelectorAll('#wh-dead-rows tr').length === 0").await;
    let (_, dead) = env.get_json("/api/v1/webhooks/dead-letters?limit=100").await;
    assert_eq!(dead["dead_letters"], json!([]), "{dead}");
    let hooks = seeded.ok.wait_for(1 + dead_ids.len(), PATIENCE).await;
    let mut replayed: Vec<String> = hooks[1..].iter().map(|h| h.header("webhook-id").unwrap_or_default()).collect();
    let mut want = dead_ids.clone();
    replayed.sort();
    want.sort();
    assert_eq!(replayed, want, "the replays carry the dead letters' event ids");
    assert_eq!(seeded.failing.hooks().len(), failed_before, "nothing went to the old URL");

    // A change the API refuses shows the API's message.
    type_into(c, "#wh-opt_out_url", "ftp://example.com/stop").await;
    click(c, "#wh-save").await;
    until(c, "refused", "return document.getElementById('wh-save-result').dataset.success === 'false'").await;
    let shown = text(c, "#wh-save-result").await;
    assert!(shown.starts_with("Not saved: opt_out_url"), "{shown}");
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
