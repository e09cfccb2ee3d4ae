//! The application state shared by every connection: configuration, store, resolver, credentials,
//! metrics, the click pipeline's capture handle and the webhook machinery. Built once by `run`, passed
//! explicitly (no globals besides the metrics recorder, which the `metrics` crate makes process-wide by
//! design).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::AdminToken;
use crate::click::emit::EventSink;
use crate::click::journal::Journal;
use crate::click::pipeline::{Pipeline, Settings};
use crate::click::sweep::SweepRule;
use crate::click::verdict::Timing;
use crate::code::CodePolicy;
use crate::config::Config;
use crate::redirect::cache::LinkCache;
use crate::redirect::capture::Capture;
use crate::redirect::metrics::RedirectMetrics;
use crate::redirect::resolve::Resolver;
use crate::store::{self, SharedStore};
use crate::telemetry;
use crate::webhook::deliver::Deliverer;
use crate::webhook::outbox::Outbox;
use crate::webhook::queue::{Limits, MemoryQueue, Queue, RedisQueue};
use crate::webhook::settings_cache::SettingsCache;
use crate::webhook::worker::{Worker, WorkerConfig};

/// How long webhook settings are cached; a change made on another instance applies within this.
const SETTINGS_TTL: Duration = Duration::from_secs(2);

/// What the webhook routes need.
pub struct Webhooks {
    pub settings: Arc<SettingsCache>,
    pub deliverer: Arc<Deliverer>,
    /// The outbox, for the dead-letter routes.
    pub queue: Arc<dyn Queue>,
}

pub struct App {
    pub config: Config,
    /// Base of short URLs, without a trailing slash.
    pub base_url: String,
    pub store: SharedStore,
    pub resolver: Arc<Resolver>,
    pub admin_token: AdminToken,
    pub prometheus: PrometheusHandle,
    pub redirect_metrics: RedirectMetrics,
    /// The hot path's hand-off to the click pipeline.
    pub capture: Capture,
    /// Where events that do not come from a hit go (an inbound opt-out, a conversion): the same sink
    /// as the pipeline's (the webhook outbox).
    pub events: Arc<dyn EventSink>,
    /// `/track` requests per client address.
    pub track_limiter: crate::limit::PerAddress,
    /// Listings of a broadcast's links (each reads the broadcast's whole recipient index) in flight at
    /// once: a burst of them cannot monopolise Redis and starve redirects.
    pub listing_slots: tokio::sync::Semaphore,
    pub webhooks: Webhooks,
}

/// The background parts `run` starts and stops around the server.
pub struct Background {
    pub pipeline: Option<Pipeline>,
    pub worker: Option<Arc<Worker>>,
}

impl App {
    /// Builds the state for a server bound at `bound`. Prints a generated admin token when none is
    /// configured (the only time it is ever shown). Events go to `sink` when given (tests), otherwise
    /// to the webhook outbox.
    pub fn build(
        config: Config,
        bound: SocketAddr,
        sink: Option<Arc<dyn EventSink>>,
    ) -> anyhow::Result<(Self, Background)> {
        let prometheus = telemetry::prometheus();
        let store = store::open(&config)?;
        let base_url = config.effective_base_url(bound);
        let networks = crate::click::network::Networks::load(
            config.extra_human_networks.as_deref(),
            config.privacy_relay_networks.as_deref(),
            config.extra_bot_networks.as_deref(),
        )?;
        let rules = crate::click::classify::load_rules(
            config.extra_human_patterns.as_deref(),
            config.extra_bot_patterns.as_deref(),
        )?;

        let settings = Arc::new(SettingsCache::new(Arc::clone(&store), SETTINGS_TTL));
        let deliverer = Arc::new(Deliverer::new(config.webhook_timeout, config.webhook_allow_private)?);
        let limits = Limits {
            link_burst: config.webhook_link_budget.burst,
            link_per_minute: config.webhook_link_budget.per_minute,
            max_backlog: config.webhook_max_backlog,
            dead_letters: config.webhook_dead_letters,
        };
        let queue: Arc<dyn Queue> = match &config.redis_url {
            None => Arc::new(MemoryQueue::new(limits)),
            Some(url) => Arc::new(RedisQueue::open(url, &config.redis_prefix, limits)?),
        };
        let worker = config.role.delivers().then(|| {
            Worker::new(
                Arc::clone(&queue),
                Arc::clone(&store),
                Arc::clone(&deliverer),
                Arc::clone(&settings),
                WorkerConfig {
                    concurrency: config.webhook_concurrency,
                    per_endpoint: config.webhook_endpoint_concurrency,
                    schedule: config.webhook_retry_schedule.0.clone(),
                    // A lease outlives the attempt it covers (a request may take the webhook timeout,
                    // twice with an OAuth refresh).
                    lease: config.webhook_claim_idle.max(config.webhook_timeout * 3),
                    log_cap: config.webhook_log_limit,
                },
            )
        });
        let sink = sink.unwrap_or_else(|| {
            Arc::new(Outbox::new(
                Arc::clone(&queue),
                Arc::clone(&store),
                Arc::clone(&settings),
                base_url.clone(),
                config.click_hold,
            ))
        });

        let events = Arc::clone(&sink);
        let (capture, pipeline) = if config.capture && config.role.serves() {
            let journal = Journal::open(&config.journal_dir, config.journal_max_bytes)
                .with_context(|| format!("opening the click journal in {}", config.journal_dir.display()))?;
            let pipeline_settings = Settings {
                capture_capacity: config.capture_buffer,
                batch_size: config.click_batch,
                flush_interval: config.click_flush_interval,
                commit_queue: config.commit_queue,
                recent_clicks: config.recent_clicks,
                recent_fold: config.recent_fold,
                keep_full_ip: config.keep_full_ip,
                trusted_proxies: config.trusted_proxies.clone(),
                classifier_memo: 100_000,
                guard_ttl: config.commit_guard_ttl,
                networks: Arc::new(networks),
                timing: Timing {
                    fast_after_send: config.click_fast_after_send,
                    fast_after_delivery: config.click_fast_after_delivery,
                },
                sweep: SweepRule {
                    recipients: config.sweep_recipients,
                    window: config.sweep_window,
                    after_send: config.sweep_after_send,
                },
                sweep_capacity: config.sweep_capacity,
                hold: config.click_hold,
                own_thread: config.click_thread,
            };
            let (capture, pipeline) =
                Pipeline::start(Arc::clone(&store), Arc::new(rules), sink, Some(Arc::new(journal)), pipeline_settings);
            (capture, Some(pipeline))
        } else {
            (Capture::disabled(), None)
        };

        let (length, min_length) =
            (usize::from(config.code_length), usize::from(config.code_min_length.unwrap_or(config.code_length)));
        let codes = if config.code_check {
            CodePolicy::checked(length, min_length)
        } else {
            CodePolicy::new(length, min_length)
        };
        if let Some(secret) = &config.code_secret {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(secret.as_bytes());
            codes.set_key(digest[..16].try_into().expect("16 bytes"));
        }
        let cache = LinkCache::new(
            config.cache_capacity,
            config.cache_ttl,
            config.negative_cache_capacity,
            config.negative_cache_ttl,
        );
        let click_ids = crate::click_id::ClickIds::new(config.click_id_ttl);
        let resolver = Arc::new(Resolver::new(cache, Arc::clone(&store), codes, click_ids));
        let admin_token = match &config.admin_token {
            Some(token) => AdminToken::new(token),
            None => {
                let token = crate::auth::new_admin_token();
                use std::io::Write;
                // A closed stdout must not stop the server (`println!` would panic).
                let mut out = std::io::stdout();
                let _ = writeln!(
                    out,
                    "linkhit: no LINKHIT_ADMIN_TOKEN set; generated admin token (shown once, not stored): {token}"
                )
                .and_then(|()| out.flush());
                AdminToken::new(&token)
            }
        };
        let track_limiter = crate::limit::PerAddress::per_minute(config.track_rate);
        let app = Self {
            base_url,
            config,
            store,
            resolver,
            admin_token,
            prometheus,
            redirect_metrics: RedirectMetrics::new(),
            capture,
            events,
            track_limiter,
            listing_slots: tokio::sync::Semaphore::new(2),
            webhooks: Webhooks { settings, deliverer, queue },
        };
        Ok((app, Background { pipeline, worker }))
    }

    /// The public short URL of `code`.
    pub fn short_url(&self, code: &str) -> String {
        let mut url = String::with_capacity(self.base_url.len() + 1 + code.len());
        url.push_str(&self.base_url);
        url.push('/');
        url.push_str(code);
        url
    }
}
