//! Test harness: real servers on port 0, real `redis-server` processes on free ports, a real HTTP client.
#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use linkhit::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = "test-admin-token-0123456789";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// A redis-server with extra arguments (e.g. cluster mode).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (apt-get install redis-server)");
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(server.url())
                && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return server;
            }
            assert!(Instant::now() < deadline, "redis-server on port {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the process hangs with its sockets open, like a stuck Redis.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// A synchronous connection for assertions on the raw key space.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

impl RedisServer {
    /// A code that passes the deployment's check characters but names no link (key read from Redis).
    pub fn unknown_valid_code(&self) -> String {
        let hex: String = redis::cmd("GET").arg("lh:codekey").query(&mut self.conn()).unwrap();
        let key: [u8; 16] = hex::decode(hex).unwrap().try_into().unwrap();
        let policy = linkhit::code::CodePolicy::checked(8, 8);
        policy.set_key(key);
        policy.generate()
    }

    /// A code of the right shape whose check characters are wrong (a valid code with its last character
    /// changed): the redirector refuses it without asking the store. A fixed string would be valid under
    /// one random key in 4,096.
    pub fn code_with_wrong_check(&self) -> String {
        let mut code = self.unknown_valid_code();
        let last = code.pop().unwrap();
        code.push(if last == 'a' { 'b' } else { 'a' });
        code
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        signal(self.pid(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

/// A config for tests: fixed admin token, optionally pointing at `redis`.
pub fn config(redis: Option<&RedisServer>) -> Config {
    let mut config = Config::for_tests();
    config.admin_token = Some(ADMIN.to_owned());
    config.redis_url = redis.map(RedisServer::url);
    config.journal_dir = temp_dir("journal");
    // Tests are the loopback proxy: each recipient's taps come from its own address (X-Forwarded-For).
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    // Webhooks at once, except in the tests of the hold window itself.
    config.click_hold = Duration::ZERO;
    config
}

/// How a test makes a human: the SMS went out an hour ago (a tap milliseconds after creating a link is
/// what link previews do), so link-creating bodies get a `sent_at` an hour in the past unless they say.
pub fn sent_an_hour_ago(path: &str, mut body: Value) -> Value {
    let creates = path.ends_with("/api/v1/links")
        || path.ends_with("/messages/shorten")
        || (path.contains("/broadcasts/") && path.ends_with("/links"));
    if creates && let Some(map) = body.as_object_mut() {
        map.entry("sent_at").or_insert_with(|| json!((chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339()));
    }
    body
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("linkhit-test-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A linkhit server running `linkhit::run` on 127.0.0.1:0 inside the test's runtime.
pub struct TestServer {
    pub base: String,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        Self::start_inner(config, None).await
    }

    pub async fn start_with_sink(config: Config, sink: std::sync::Arc<dyn linkhit::click::emit::EventSink>) -> Self {
        Self::start_inner(config, Some(sink)).await
    }

    async fn start_inner(config: Config, sink: Option<std::sync::Arc<dyn linkhit::click::emit::EventSink>>) -> Self {
        if std::env::var_os("LINKHIT_TEST_LOG").is_some() {
            linkhit::telemetry::init_tracing();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = match sink {
            Some(sink) => tokio::spawn(linkhit::run_with_sink(listener, config, shutdown.clone(), sink)),
            None => tokio::spawn(linkhit::run(listener, config, shutdown.clone())),
        };
        let server = Self { base, shutdown, handle };
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get(server.url("/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await.unwrap()
    }
}

/// An HTTP client that does not follow redirects (we assert on them).
pub fn client() -> reqwest::Client {
    // reqwest is built without a bundled crypto provider; linkhit installs ring's at start-up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One server (and its Redis, for `Backend::Redis`) plus a workspace with an all-permission key.
pub struct Env {
    pub server: TestServer,
    pub redis: Option<RedisServer>,
    pub http: reqwest::Client,
    pub workspace_id: String,
    pub key: String,
}

impl Env {
    pub async fn new(backend: Backend) -> Self {
        let redis = (backend == Backend::Redis).then(RedisServer::start);
        Self::with_config(config(redis.as_ref()), redis).await
    }

    pub async fn with_config(config: Config, redis: Option<RedisServer>) -> Self {
        let server = TestServer::start(config).await;
        let http = client();
        let (workspace_id, key) = create_workspace(&http, &server, "acme").await;
        Self { server, redis, http, workspace_id, key }
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// `POST` JSON to an API route with this env's key (link-creating bodies: see [`sent_an_hour_ago`]).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let body = sent_an_hour_ago(path, body);
        send(self.http.post(self.url(path)).bearer_auth(&self.key).json(&body)).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        send(self.http.get(self.url(path)).bearer_auth(&self.key)).await
    }

    pub async fn create_link(&self, body: Value) -> Value {
        let (status, link) = self.post("/api/v1/links", body).await;
        assert_eq!(status, 201, "{link}");
        link
    }

    /// Polls a JSON route until `want` holds, failing the test after `within`.
    pub async fn poll_json(&self, path: &str, within: Duration, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, body) = self.get_json(path).await;
            if want(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} not as expected within {within:?}: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /{code}` without following: (status, Location).
    pub async fn hit(&self, code: &str) -> (u16, Option<String>) {
        hit(&self.http, &self.server, code).await
    }
}

pub async fn hit(http: &reqwest::Client, server: &TestServer, code: &str) -> (u16, Option<String>) {
    let resp = http.get(server.url(&format!("/{code}"))).send().await.unwrap();
    let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), location)
}

pub const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
pub const ANDROID: &str =
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
pub const IMESSAGE_PREVIEW: &str = "facebookexternalhit/1.1 Facebot Twitterbot/1.0";
pub const WHATSAPP: &str = "WhatsApp/2.23.20.0 A";

/// `GET /{code}` with a user agent; returns the status.
pub async fn tap(http: &reqwest::Client, server: &TestServer, code: &str, user_agent: &str) -> u16 {
    http.get(server.url(&format!("/{code}"))).header("user-agent", user_agent).send().await.unwrap().status().as_u16()
}

/// Sends a request, returning the status and the JSON body (`null` when the body is empty).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, body)
}

pub async fn create_workspace(http: &reqwest::Client, server: &TestServer, name: &str) -> (String, String) {
    let (status, body) =
        send(http.post(server.url("/api/v1/workspaces")).bearer_auth(ADMIN).json(&json!({ "name": name }))).await;
    assert_eq!(status, 201, "{body}");
    (body["workspace_id"].as_str().unwrap().to_owned(), body["api_key"].as_str().unwrap().to_owned())
}

/// Asserts the contract's error body and returns its code.
pub fn error_code(status: u16, body: &Value, want_status: u16) -> String {
    assert_eq!(status, want_status, "{body}");
    let code = body["code"].as_str().unwrap_or_else(|| panic!("no code in {body}"));
    assert!(code.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{code}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let id = body["error_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "error_id {id} is not a uuid");
    let ts = body["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "timestamp {ts}");
    code.to_owned()
}

/// Polls `check` every 20 ms until it returns true or `within` elapses; returns whether it did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs each listed async test function once per backend.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Embedded).await
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Redis).await
                }
            )*
        }
    };
}

/// A scripted reply of the [`Receiver`].
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, delay: Duration::ZERO, headers: Vec::new() }
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    }
}

#[derive(Default)]
struct ReceiverState {
    received: std::sync::Mutex<Vec<Received>>,
    script: std::sync::Mutex<std::collections::VecDeque<Reply>>,
    default: std::sync::Mutex<Option<Reply>>,
    tokens: std::sync::atomic::AtomicU64,
}

/// A webhook receiver on 127.0.0.1 whose answers can be scripted. `POST /token` is an OAuth token
/// endpoint issuing `tok-1`, `tok-2`, … (one hour lifetime).
pub struct Receiver {
    pub url: String,
    pub port: u16,
    state: std::sync::Arc<ReceiverState>,
    shutdown: CancellationToken,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Self {
        use hyper::service::service_fn;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(ReceiverState::default());
        let shutdown = CancellationToken::new();
        let (st, stop) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    () = stop.cancelled() => return,
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let received = Received {
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                                at: Instant::now(),
                            };
                            let is_token = received.path == "/token";
                            st.received.lock().unwrap().push(received);
                            if is_token {
                                let n = st.tokens.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                                let body = format!(
                                    "{{\"access_token\":\"tok-{n}\",\"token_type\":\"Bearer\",\"expires_in\":3600}}"
                                );
                                return Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                        .unwrap(),
                                );
                            }
                            let reply = st
                                .script
                                .lock()
                                .unwrap()
                                .pop_front()
                                .or_else(|| st.default.lock().unwrap().clone())
                                .unwrap_or(Reply::status(200));
                            tokio::time::sleep(reply.delay).await;
                            let mut response = hyper::Response::builder().status(reply.status);
                            for (k, v) in &reply.headers {
                                response = response.header(*k, v);
                            }
                            Ok(response.body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url: format!("http://127.0.0.1:{port}"), port, state, shutdown }
    }

    /// Replies used in order, before the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = Some(reply);
    }

    /// Requests so far, except token requests.
    pub fn hooks(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().iter().filter(|r| r.path != "/token").cloned().collect()
    }

    pub fn token_requests(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().iter().filter(|r| r.path == "/token").cloned().collect()
    }

    /// Waits until at least `n` webhook requests arrived, failing the test after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let hooks = self.hooks();
            if hooks.len() >= n {
                return hooks;
            }
            assert!(Instant::now() < deadline, "receiver got {} of {n} webhooks within {within:?}", hooks.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `GET /{code}` from `client_ip` (through the trusted loopback proxy) with a user agent.
pub async fn tap_from(http: &reqwest::Client, base: &str, code: &str, user_agent: &str, client_ip: &str) -> u16 {
    http.get(format!("{base}/{code}"))
        .header("user-agent", user_agent)
        .header("x-forwarded-for", client_ip)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A broadcast's worth of taps with known expected counts: recipient `i` taps its link `1 + i % 3`
/// times from its phone and gets one link-preview fetch; every fourth recipient never taps (its preview
/// still hits). Each recipient taps from its own address.
pub struct Traffic {
    pub broadcast: String,
    pub codes: Vec<String>,
    /// Per link: (human hits, bot hits) answered so far.
    pub answered: Vec<(u64, u64)>,
}

impl Traffic {
    /// Creates `recipients` links in `broadcast` on the server at `base`.
    pub async fn create(http: &reqwest::Client, base: &str, key: &str, broadcast: &str, recipients: usize) -> Self {
        let list: Vec<Value> = (0..recipients).map(|i| json!({"recipient": format!("+1202555{i:04}")})).collect();
        let sent_at = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
        let (status, body) = send(
            http.post(format!("{base}/api/v1/broadcasts/{broadcast}/links"))
                .bearer_auth(key)
                .json(&json!({"target_url": "https://shop.example/sale", "sent_at": sent_at, "recipients": list})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let codes = body["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap().to_owned()).collect();
        Self { broadcast: broadcast.to_owned(), codes, answered: vec![(0, 0); recipients] }
    }

    /// One round of the campaign's taps against `base`; every answered tap is recorded.
    pub async fn run(&mut self, http: &reqwest::Client, base: &str) {
        for (i, code) in self.codes.iter().enumerate() {
            let ip = format!("198.51.{}.{}", 100 + i / 200, 1 + i % 200);
            if tap_from(http, base, code, WHATSAPP, "203.0.113.50").await == 302 {
                self.answered[i].1 += 1;
            }
            if i % 4 == 3 {
                continue;
            }
            for _ in 0..(1 + i % 3) {
                if tap_from(http, base, code, IPHONE, &ip).await == 302 {
                    self.answered[i].0 += 1;
                }
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.answered.iter().map(|(h, b)| h + b).sum()
    }

    /// The broadcast stats these taps must produce.
    pub fn expected_broadcast(&self) -> Value {
        let human: u64 = self.answered.iter().map(|a| a.0).sum();
        let bot: u64 = self.answered.iter().map(|a| a.1).sum();
        let unique = self.answered.iter().filter(|a| a.0 > 0).count();
        json!({"links": self.codes.len(), "hits": human + bot, "human_hits": human, "bot_hits": bot, "unique_clicks": unique})
    }

    /// Waits until the broadcast's hits reach what was answered, lets a moment pass for any late
    /// double count to show, then checks every counter exactly: the broadcast's, and each link's hits and
    /// human/bot split.
    pub async fn assert_counted_exactly(&self, http: &reqwest::Client, base: &str, key: &str, within: Duration) {
        let want = self.expected_broadcast();
        let stats_url = format!("{base}/api/v1/broadcasts/{}/stats", self.broadcast);
        let deadline = Instant::now() + within;
        loop {
            let (_, stats) = send(http.get(&stats_url).bearer_auth(key)).await;
            if stats["hits"].as_u64() >= want["hits"].as_u64() {
                break;
            }
            assert!(Instant::now() < deadline, "counted {stats} of {want} within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (_, stats) = send(http.get(&stats_url).bearer_auth(key)).await;
        for field in ["links", "hits", "human_hits", "bot_hits", "unique_clicks"] {
            assert_eq!(stats[field], want[field], "broadcast {field}: got {stats}, answered {want}");
        }
        for (code, (human, bot)) in self.codes.iter().zip(&self.answered) {
            let (_, link) = send(http.get(format!("{base}/api/v1/links/{code}/stats")).bearer_auth(key)).await;
            assert_eq!(
                (link["human_hits"].as_u64(), link["bot_hits"].as_u64(), link["hits"].as_u64()),
                (Some(*human), Some(*bot), Some(human + bot)),
                "link {code}: {link}"
            );
        }
    }
}

/// The sum of a metric's series in a `/metrics` text (0 when absent): `name` matches every label set,
/// `name{labels}` exactly that one.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let Some(rest) = l.strip_prefix(series) else { return false };
            series.ends_with('}') || rest.starts_with(' ') || rest.starts_with('{')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
