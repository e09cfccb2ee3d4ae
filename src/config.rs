//! Configuration: one `Config` struct, every setting a CLI flag with a `LINKHIT_*` environment twin.
//!
//! Values are parsed and validated here, at start-up, so that the rest of the program can trust them
//! (a bad value stops the process with a message naming the flag, never a panic later). The names and
//! defaults of the variables fixed by the contract (`LINKHIT_LISTEN`, `LINKHIT_BASE_URL`,
//! `LINKHIT_REDIS_URL`, `LINKHIT_ADMIN_TOKEN`, `LINKHIT_WEBHOOK_ALLOW_PRIVATE`,
//! `LINKHIT_WEBHOOK_RETRY_SCHEDULE`) must not change.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The command line of the `linkhit` binary.
#[derive(Debug, Parser)]
#[command(
    name = "linkhit",
    version,
    about = "Short-link redirector for SMS platforms",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve`, accepted without the subcommand too (it is the default).
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP server (the default).
    Serve(Box<Config>),
    /// Read user agents on stdin, print one JSON verdict per line.
    Classify(ClassifyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ClassifyArgs {
    /// File of extra bot user-agent substrings, as for `serve`.
    #[arg(long, env = "LINKHIT_EXTRA_BOT_PATTERNS")]
    pub extra_bot_patterns: Option<std::path::PathBuf>,
    /// File of extra human user-agent substrings, as for `serve`.
    #[arg(long, env = "LINKHIT_EXTRA_HUMAN_PATTERNS")]
    pub extra_human_patterns: Option<std::path::PathBuf>,
    /// Networks files, as for `serve`.
    #[arg(long, env = "LINKHIT_EXTRA_BOT_NETWORKS")]
    pub extra_bot_networks: Option<std::path::PathBuf>,
    #[arg(long, env = "LINKHIT_EXTRA_HUMAN_NETWORKS")]
    pub extra_human_networks: Option<std::path::PathBuf>,
    #[arg(long, env = "LINKHIT_PRIVACY_RELAY_NETWORKS")]
    pub privacy_relay_networks: Option<std::path::PathBuf>,
    /// Timing rules, as for `serve`.
    #[arg(long, env = "LINKHIT_CLICK_FAST_AFTER_SEND", default_value = "10", value_parser = parse_seconds)]
    pub click_fast_after_send: Duration,
    #[arg(long, env = "LINKHIT_CLICK_FAST_AFTER_DELIVERY", default_value = "5", value_parser = parse_seconds)]
    pub click_fast_after_delivery: Duration,
}

/// Every setting of the server. Built by clap from flags and `LINKHIT_*` variables, or by tests directly
/// through [`Config::for_tests`].
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LINKHIT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Public base of short URLs (`short_url` = base + "/" + code). Default: `http://<listen address>`.
    #[arg(long, env = "LINKHIT_BASE_URL", value_parser = parse_base_url)]
    pub base_url: Option<String>,

    /// Redis URL (`redis://host:port/db`). Unset: the embedded in-process store (nothing persisted).
    #[arg(long, env = "LINKHIT_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel, so several deployments (or tests) can share one Redis.
    #[arg(long, env = "LINKHIT_REDIS_PREFIX", default_value = "lh", value_parser = parse_prefix)]
    pub redis_prefix: String,

    /// Timeout of one Redis command, in seconds (fractions allowed). A cache miss waits at most this
    /// long before answering 503.
    #[arg(long, env = "LINKHIT_REDIS_TIMEOUT", default_value = "0.5", value_parser = parse_seconds)]
    pub redis_timeout: Duration,

    /// Bearer token of the admin routes. Unset: one is generated and printed once at start-up.
    #[arg(long, env = "LINKHIT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Let webhook URLs point at loopback/private addresses (local testing only).
    #[arg(long, env = "LINKHIT_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// Comma-separated webhook retry delays in seconds (fractions allowed).
    #[arg(long, env = "LINKHIT_WEBHOOK_RETRY_SCHEDULE", default_value = "1,10,30,90", value_parser = parse_schedule)]
    pub webhook_retry_schedule: RetrySchedule,

    /// Length of generated link codes (URL-safe alphabet `A-Za-z0-9_-`).
    #[arg(long, env = "LINKHIT_CODE_LENGTH", default_value_t = 8, value_parser = clap::value_parser!(u8).range(6..=32))]
    pub code_length: u8,

    /// Shortest code the redirector accepts. Default: the code length. Lower it after shortening
    /// `--code-length` so that links created earlier keep working.
    #[arg(long, env = "LINKHIT_CODE_MIN_LENGTH", value_parser = clap::value_parser!(u8).range(6..=32))]
    pub code_min_length: Option<u8>,

    /// End codes with two check characters (a keyed hash) so that random-code floods are rejected
    /// without a lookup. Turn off only to keep accepting codes created without them.
    #[arg(long, env = "LINKHIT_CODE_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub code_check: bool,

    /// Secret the check key is derived from. Unset: a random key is created in the store on first
    /// start and shared by every instance through it.
    #[arg(long, env = "LINKHIT_CODE_SECRET", hide_env_values = true)]
    pub code_secret: Option<String>,

    /// Most links held in the in-process redirect cache (about 200 bytes each plus the URL).
    #[arg(long, env = "LINKHIT_CACHE_CAPACITY", default_value_t = 1_000_000)]
    pub cache_capacity: usize,

    /// Seconds a cached link is served before it is revalidated in the background (the redirect
    /// itself never waits for that).
    #[arg(long, env = "LINKHIT_CACHE_TTL", default_value = "300", value_parser = parse_seconds)]
    pub cache_ttl: Duration,

    /// Most unknown codes remembered as "not found" (protects the store from random-code floods).
    #[arg(long, env = "LINKHIT_NEGATIVE_CACHE_CAPACITY", default_value_t = 100_000)]
    pub negative_cache_capacity: usize,

    /// Seconds an unknown code is remembered as "not found".
    #[arg(long, env = "LINKHIT_NEGATIVE_CACHE_TTL", default_value = "2", value_parser = parse_seconds)]
    pub negative_cache_ttl: Duration,

    /// Most simultaneously open client connections; further ones wait in the listen backlog.
    #[arg(long, env = "LINKHIT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Largest request head (request line + headers) in bytes.
    #[arg(long, env = "LINKHIT_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Seconds a client may take to send its request head.
    #[arg(long, env = "LINKHIT_HEADER_READ_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub header_read_timeout: Duration,

    /// Largest API request body in bytes (all routes but broadcast bulk create).
    #[arg(long, env = "LINKHIT_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest body of `POST /api/v1/broadcasts/{id}/links` in bytes.
    #[arg(long, env = "LINKHIT_MAX_BULK_BODY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_bulk_body_bytes: usize,

    /// Most recipients in one broadcast bulk create.
    #[arg(long, env = "LINKHIT_MAX_BULK_RECIPIENTS", default_value_t = 1_000_000)]
    pub max_bulk_recipients: usize,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "LINKHIT_SHUTDOWN_GRACE", default_value = "10", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,

    /// Record hits (counters, recent clicks, opt-outs, webhooks). `false` only for benchmarking.
    #[arg(long, env = "LINKHIT_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub capture: bool,

    /// Comma-separated proxy networks (CIDR) whose `X-Forwarded-For` is believed, e.g. the load
    /// balancer's `10.0.0.0/8`. Empty: the TCP peer is the client.
    #[arg(long, env = "LINKHIT_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Keep full client IP addresses in recent clicks (default: IPv4 /24, IPv6 /48).
    #[arg(long, env = "LINKHIT_KEEP_FULL_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub keep_full_ip: bool,

    /// Directory of the click journal (hits waiting for an unreachable store).
    #[arg(long, env = "LINKHIT_JOURNAL_DIR", default_value = "linkhit-journal")]
    pub journal_dir: std::path::PathBuf,

    /// Seconds a counted batch's idempotency guard lives in Redis when it is never released (a batch is
    /// released once counted and its events queued). A journal entry whose counting was attempted longer
    /// ago than this is not replayed (it could count twice); it is dropped with a metric and a log line.
    #[arg(long, env = "LINKHIT_COMMIT_GUARD_TTL", default_value = "2592000", value_parser = parse_seconds)]
    pub commit_guard_ttl: Duration,

    /// Most bytes the click journal may hold; past it, hits are dropped (with a metric and a log line).
    #[arg(long, env = "LINKHIT_JOURNAL_MAX_BYTES", default_value_t = 1 << 30)]
    pub journal_max_bytes: u64,

    /// Hits the capture channel holds between the redirect and the click pipeline.
    #[arg(long, env = "LINKHIT_CAPTURE_BUFFER", default_value_t = 65_536)]
    pub capture_buffer: usize,

    /// Hits counted per store round trip.
    #[arg(long, env = "LINKHIT_CLICK_BATCH", default_value_t = 250)]
    pub click_batch: usize,

    /// Run classification and counting on their own OS thread (with its own small runtime) instead of
    /// the redirect workers: a batch being counted never holds a redirect. `false` shares the workers.
    #[arg(long, env = "LINKHIT_CLICK_THREAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub click_thread: bool,

    /// Seconds between flushes of a partial batch (keeps stats within a second of the click).
    #[arg(long, env = "LINKHIT_CLICK_FLUSH_INTERVAL", default_value = "0.2", value_parser = parse_seconds)]
    pub click_flush_interval: Duration,

    /// Batches waiting for the store before further batches spill to the journal.
    #[arg(long, env = "LINKHIT_COMMIT_QUEUE", default_value_t = 64)]
    pub commit_queue: usize,

    /// Recent clicks kept per link for `GET /api/v1/links/{code}/clicks`.
    #[arg(long, env = "LINKHIT_RECENT_CLICKS", default_value_t = 100)]
    pub recent_clicks: usize,

    /// Seconds within which a bot's repeat on the same link (same user agent and client address as the
    /// link's last listed bot hit) is counted but not listed again in its recent clicks. 0: every hit is
    /// listed.
    #[arg(long, env = "LINKHIT_RECENT_FOLD", default_value = "60", value_parser = parse_seconds)]
    pub recent_fold: Duration,

    /// Seconds a hit's verdict may still change while evidence arrives (a sweep seen later): click and
    /// opt-out events wait this long in the outbox, withdrawn if the verdict flips, and counts are
    /// corrected (a hit is never counted in both classes). 0: no hold, verdicts are final at once.
    #[arg(long, env = "LINKHIT_CLICK_HOLD", default_value = "10", value_parser = parse_seconds)]
    pub click_hold: Duration,

    /// A second listen address for `/metrics`, `/healthz` and `/readyz` only, with its own connection
    /// limit; when set, `/metrics` is served only there (the health routes stay on both).
    #[arg(long, env = "LINKHIT_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,

    /// Connections the admin listener serves at once.
    #[arg(long, env = "LINKHIT_ADMIN_MAX_CONNECTIONS", default_value_t = 64)]
    pub admin_max_connections: usize,

    /// Seconds a click id (`lh_click`, links with `track_conversions`) is accepted by `/track` and
    /// `POST /api/v1/conversions` after its redirect.
    #[arg(long, env = "LINKHIT_CLICK_ID_TTL", default_value = "2592000", value_parser = parse_seconds)]
    pub click_id_ttl: Duration,

    /// Conversions `/track` takes per client address per minute (a burst of the same size); beyond it
    /// 429 `RATE_LIMITED`. The click id is the credential, so this bounds guessing and floods.
    #[arg(long, env = "LINKHIT_TRACK_RATE", default_value = "60")]
    pub track_rate: u32,

    /// A hit this many seconds (or fewer) after its SMS was sent is a link preview or scanner, not a
    /// person: people read first.
    #[arg(long, env = "LINKHIT_CLICK_FAST_AFTER_SEND", default_value = "10", value_parser = parse_seconds)]
    pub click_fast_after_send: Duration,

    /// A hit this many seconds (or fewer) after the platform reported the SMS delivered is a preview or
    /// scanner.
    #[arg(long, env = "LINKHIT_CLICK_FAST_AFTER_DELIVERY", default_value = "5", value_parser = parse_seconds)]
    pub click_fast_after_delivery: Duration,

    /// Distinct recipients of one broadcast hit by one client (address and user agent) within
    /// `LINKHIT_SWEEP_WINDOW`, each within `LINKHIT_SWEEP_AFTER_SEND` of its send, that make a sweep
    /// (bots). 0 turns sweep detection off.
    #[arg(long, env = "LINKHIT_SWEEP_RECIPIENTS", default_value_t = 3)]
    pub sweep_recipients: usize,

    /// Seconds within which a client's hits on different recipients make a sweep.
    #[arg(long, env = "LINKHIT_SWEEP_WINDOW", default_value = "30", value_parser = parse_seconds)]
    pub sweep_window: Duration,

    /// Only hits this many seconds after their send (or sooner) count toward a sweep: people behind one
    /// carrier NAT address tap minutes later and are never taken for a sweep.
    #[arg(long, env = "LINKHIT_SWEEP_AFTER_SEND", default_value = "120", value_parser = parse_seconds)]
    pub sweep_after_send: Duration,

    /// Hits (and clients) the sweep tracker remembers at most; beyond, the clients seen first are
    /// forgotten (a few hundred bytes a client). Hits whose user agent is a bot's are never tracked, so a
    /// flood of link previews cannot push a scanner's window out.
    #[arg(long, env = "LINKHIT_SWEEP_CAPACITY", default_value_t = 200_000)]
    pub sweep_capacity: usize,

    /// File of extra bot networks (CIDR per line, optional label; `#` comments).
    #[arg(long, env = "LINKHIT_EXTRA_BOT_NETWORKS")]
    pub extra_bot_networks: Option<std::path::PathBuf>,

    /// File of networks whose hits are always people (CIDR per line); checked before every network rule.
    #[arg(long, env = "LINKHIT_EXTRA_HUMAN_NETWORKS")]
    pub extra_human_networks: Option<std::path::PathBuf>,

    /// File of privacy-relay egress networks (e.g. Apple's iCloud Private Relay list, built by
    /// `tools/networks/refresh.py`): never held against a hit.
    #[arg(long, env = "LINKHIT_PRIVACY_RELAY_NETWORKS")]
    pub privacy_relay_networks: Option<std::path::PathBuf>,

    /// File of extra bot user-agent substrings, one per line (`#` comments).
    #[arg(long, env = "LINKHIT_EXTRA_BOT_PATTERNS")]
    pub extra_bot_patterns: Option<std::path::PathBuf>,

    /// File of user-agent substrings that are always human, one per line; checked before every bot rule.
    #[arg(long, env = "LINKHIT_EXTRA_HUMAN_PATTERNS")]
    pub extra_human_patterns: Option<std::path::PathBuf>,

    /// What this instance does: `all` (default), `redirect` (redirects, API, click pipeline; events are
    /// queued for workers elsewhere) or `worker` (webhook delivery only; serves just the ops endpoints).
    /// Split roles need Redis.
    #[arg(long, env = "LINKHIT_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,

    /// Seconds one webhook request may take.
    #[arg(long, env = "LINKHIT_WEBHOOK_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub webhook_timeout: Duration,

    /// Webhook jobs held by this process at once (in flight or waiting for their endpoint).
    #[arg(long, env = "LINKHIT_WEBHOOK_CONCURRENCY", default_value_t = 512)]
    pub webhook_concurrency: usize,

    /// Webhook requests in flight at once to one endpoint (scheme, host, port).
    #[arg(long, env = "LINKHIT_WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 32)]
    pub webhook_endpoint_concurrency: usize,

    /// Seconds a delivery may stay unacknowledged before another worker takes it over (Redis).
    #[arg(long, env = "LINKHIT_WEBHOOK_CLAIM_IDLE", default_value = "60", value_parser = parse_seconds)]
    pub webhook_claim_idle: Duration,

    /// Per-link webhook event budget: `BURST,PER_MINUTE` — a link's events beyond a burst of BURST, then
    /// PER_MINUTE a minute, are dead-lettered (`link_budget`) instead of crowding out the workspace's
    /// other recipients. `0` turns the budget off.
    #[arg(long, env = "LINKHIT_WEBHOOK_LINK_BUDGET", default_value = "20,60", value_parser = parse_budget)]
    pub webhook_link_budget: LinkBudget,

    /// Webhook events a workspace may have waiting (all channels); past it they are dead-lettered
    /// (`backlog_full`).
    #[arg(long, env = "LINKHIT_WEBHOOK_MAX_BACKLOG", default_value_t = 50_000)]
    pub webhook_max_backlog: usize,

    /// Dead letters kept per workspace; the oldest are evicted past it (counted).
    #[arg(long, env = "LINKHIT_WEBHOOK_DEAD_LETTERS", default_value_t = 10_000)]
    pub webhook_dead_letters: usize,

    /// Delivery log entries kept per workspace.
    #[arg(long, env = "LINKHIT_WEBHOOK_LOG_LIMIT", default_value_t = 1_000)]
    pub webhook_log_limit: usize,

    /// Tokio worker threads. Default: one per core.
    #[arg(long, env = "LINKHIT_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl Config {
    /// A configuration with every default, listening nowhere in particular; tests adjust fields.
    pub fn for_tests() -> Self {
        let cli = Cli::try_parse_from(["linkhit"]).expect("defaults parse");
        let mut config = cli.serve;
        config.admin_token = Some("test-admin-token".to_owned());
        config
    }

    /// Checks what clap cannot check field by field. Called once at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(min) = self.code_min_length
            && min > self.code_length
        {
            return Err(ConfigError::CodeMinLength { min, length: self.code_length });
        }
        let at_least_one = [
            ("LINKHIT_CACHE_CAPACITY", self.cache_capacity),
            ("LINKHIT_MAX_CONNECTIONS", self.max_connections),
            ("LINKHIT_CAPTURE_BUFFER", self.capture_buffer),
            ("LINKHIT_CLICK_BATCH", self.click_batch),
            ("LINKHIT_COMMIT_QUEUE", self.commit_queue),
            ("LINKHIT_SWEEP_CAPACITY", self.sweep_capacity),
            ("LINKHIT_WEBHOOK_CONCURRENCY", self.webhook_concurrency),
            ("LINKHIT_WEBHOOK_ENDPOINT_CONCURRENCY", self.webhook_endpoint_concurrency),
            ("LINKHIT_WEBHOOK_MAX_BACKLOG", self.webhook_max_backlog),
            ("LINKHIT_WEBHOOK_DEAD_LETTERS", self.webhook_dead_letters),
            ("LINKHIT_WORKER_THREADS", self.worker_threads.unwrap_or(1)),
        ];
        if let Some((name, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero(name));
        }
        if let Some(token) = &self.admin_token
            && token.trim().len() < 16
        {
            return Err(ConfigError::ShortAdminToken);
        }
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::SmallHeaderLimit);
        }
        let above_zero = [
            ("LINKHIT_CLICK_FLUSH_INTERVAL", self.click_flush_interval),
            ("LINKHIT_WEBHOOK_TIMEOUT", self.webhook_timeout),
        ];
        if let Some((name, _)) = above_zero.iter().find(|(_, v)| v.is_zero()) {
            return Err(ConfigError::NotPositive(name));
        }
        if self.role != Role::All && self.redis_url.is_none() {
            return Err(ConfigError::SplitRoleWithoutRedis);
        }
        Ok(())
    }

    /// The base of short URLs: the configured one, or `http://` + the address actually bound.
    pub fn effective_base_url(&self, bound: SocketAddr) -> String {
        match &self.base_url {
            Some(base) => base.clone(),
            None => format!("http://{bound}"),
        }
    }
}

/// A configuration that is inconsistent as a whole (each message names the variable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("LINKHIT_CODE_MIN_LENGTH ({min}) must not exceed LINKHIT_CODE_LENGTH ({length})")]
    CodeMinLength { min: u8, length: u8 },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("LINKHIT_ADMIN_TOKEN must be at least 16 characters")]
    ShortAdminToken,
    #[error("LINKHIT_MAX_HEADER_BYTES must be at least 8192")]
    SmallHeaderLimit,
    #[error("{0} must be above 0")]
    NotPositive(&'static str),
    #[error("LINKHIT_ROLE=redirect or worker needs LINKHIT_REDIS_URL: split roles share the outbox through Redis")]
    SplitRoleWithoutRedis,
}

/// What an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    All,
    Redirect,
    Worker,
}

impl Role {
    /// Serves redirects and the API, and runs the click pipeline.
    pub fn serves(self) -> bool {
        matches!(self, Role::All | Role::Redirect)
    }
    /// Runs webhook delivery workers.
    pub fn delivers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

/// `LINKHIT_WEBHOOK_LINK_BUDGET`: a burst, then a rate per minute (burst 0: no budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkBudget {
    pub burst: u32,
    pub per_minute: u32,
}

/// Parses `"20,60"` (burst, per minute) or `"0"` (off).
pub fn parse_budget(raw: &str) -> Result<LinkBudget, String> {
    let bad = || format!("`{raw}` is not BURST,PER_MINUTE (two whole numbers, e.g. 20,60) or 0");
    let raw = raw.trim();
    if raw == "0" {
        return Ok(LinkBudget { burst: 0, per_minute: 0 });
    }
    let (burst, rate) = raw.split_once(',').ok_or_else(bad)?;
    let burst: u32 = burst.trim().parse().map_err(|_| bad())?;
    let per_minute: u32 = rate.trim().parse().map_err(|_| bad())?;
    if burst == 0 || burst > 1_000_000 || per_minute > 1_000_000 {
        return Err(bad());
    }
    Ok(LinkBudget { burst, per_minute })
}

/// Delays between webhook delivery attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule(pub Vec<Duration>);

/// Parses `"1,10,30,90"` (seconds, fractions allowed) into delays.
pub fn parse_schedule(raw: &str) -> Result<RetrySchedule, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(RetrySchedule(Vec::new()));
    }
    raw.split(',').map(|part| parse_seconds(part.trim())).collect::<Result<Vec<_>, _>>().map(RetrySchedule)
}

/// Parses a non-negative number of seconds, fractions allowed (`"0.25"`).
pub fn parse_seconds(raw: &str) -> Result<Duration, String> {
    let secs: f64 = raw.trim().parse().map_err(|_| format!("`{raw}` is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("`{raw}` is not a number of seconds between 0 and one year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_base_url(raw: &str) -> Result<String, String> {
    let parsed = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!("`{raw}` must be an absolute http(s) URL"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("`{raw}` must not have a query or fragment"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

fn parse_prefix(raw: &str) -> Result<String, String> {
    let ok =
        !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if ok { Ok(raw.to_owned()) } else { Err(format!("`{raw}` must be 1-64 characters of A-Z a-z 0-9 _ - . :")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let cases: &[(&str, Option<Vec<f64>>)] = &[
            ("1,10,30,90", Some(vec![1.0, 10.0, 30.0, 90.0])),
            ("0.1, 0.2", Some(vec![0.1, 0.2])),
            ("", Some(vec![])),
            ("1,x", None),
            ("-1", None),
            ("NaN", None),
        ];
        for (raw, want) in cases {
            let got = parse_schedule(raw).ok().map(|s| s.0.iter().map(Duration::as_secs_f64).collect());
            assert_eq!(&got, want, "{raw}");
        }
    }

    #[test]
    fn link_budgets() {
        assert_eq!(parse_budget("20,60"), Ok(LinkBudget { burst: 20, per_minute: 60 }));
        assert_eq!(parse_budget(" 3 , 0 "), Ok(LinkBudget { burst: 3, per_minute: 0 }));
        assert_eq!(parse_budget("0"), Ok(LinkBudget { burst: 0, per_minute: 0 }));
        for bad in ["", "20", "a,b", "-1,5", "0,5", "20,60,1"] {
            assert!(parse_budget(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(parse_base_url("https://s.example/").unwrap(), "https://s.example");
        assert_eq!(parse_base_url("https://example.com/l").unwrap(), "https://example.com/l");
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("https://x/?a=1").is_err());
        assert!(parse_base_url("nope").is_err());
    }

    #[test]
    fn defaults_follow_the_contract() {
        let cli = Cli::try_parse_from(["linkhit"]).unwrap();
        let c = cli.serve;
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.webhook_retry_schedule, parse_schedule("1,10,30,90").unwrap());
        assert!(!c.webhook_allow_private);
        assert!(c.redis_url.is_none());
        assert_eq!(c.code_length, 8);
    }

    #[test]
    fn validation_rejects_inconsistent_settings() {
        let mut c = Config::for_tests();
        assert!(c.validate().is_ok());
        c.code_min_length = Some(12);
        assert_eq!(c.validate(), Err(ConfigError::CodeMinLength { min: 12, length: 8 }));
        assert!(c.validate().unwrap_err().to_string().contains("LINKHIT_CODE_MIN_LENGTH"));
        let mut c = Config::for_tests();
        c.admin_token = Some("short".into());
        assert_eq!(c.validate(), Err(ConfigError::ShortAdminToken));
        let mut c = Config::for_tests();
        c.click_batch = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero("LINKHIT_CLICK_BATCH")));
    }
}
