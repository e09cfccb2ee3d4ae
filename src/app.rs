//! The application state shared by every connection: configuration, store, resolver, credentials,
//! metrics. Built once by `run`, passed explicitly (no globals besides the metrics recorder, which the
//! `metrics` crate makes process-wide by design).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::click::capture::Capture;
use crate::click::emit::EventSink;
use crate::click::journal::Journal;
use crate::click::pipeline::{Pipeline, Settings};

use crate::auth::AdminToken;
use crate::code::CodePolicy;
use crate::config::Config;
use crate::redirect::cache::LinkCache;
use crate::redirect::resolve::Resolver;
use crate::store::{self, SharedStore};
use crate::telemetry::{self, RedirectMetrics};

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
}

impl App {
    /// Builds the state for a server bound at `bound`. Prints a generated admin token when none is
    /// configured (the only time it is ever shown).
    ///
    /// Starts the click pipeline (returned, so `run` can flush it at shutdown) unless capture is off.
    pub fn build(
        config: Config,
        bound: SocketAddr,
        sink: Arc<dyn EventSink>,
    ) -> anyhow::Result<(Self, Option<Pipeline>)> {
        let prometheus = telemetry::prometheus();
        let store = store::open(&config)?;
        let rules = crate::config::load_rules(
            config.extra_human_patterns.as_deref(),
            config.extra_bot_patterns.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        let (capture, pipeline) = if config.capture {
            let journal = Journal::open(&config.journal_dir, config.journal_max_bytes)
                .with_context(|| {
                    format!(
                        "opening the click journal in {}",
                        config.journal_dir.display()
                    )
                })?;
            let settings = Settings {
                capture_capacity: config.capture_buffer,
                batch_size: config.click_batch,
                flush_interval: config.click_flush_interval,
                commit_queue: config.commit_queue,
                recent_clicks: config.recent_clicks,
                keep_full_ip: config.keep_full_ip,
                trusted_proxies: config.trusted_proxies.clone(),
                classifier_memo: 100_000,
                shutdown_flush: config.shutdown_grace,
            };
            let (capture, pipeline) = Pipeline::start(
                Arc::clone(&store),
                Arc::new(rules),
                sink,
                Some(Arc::new(journal)),
                settings,
            );
            (capture, Some(pipeline))
        } else {
            (Capture::disabled(), None)
        };
        let codes = CodePolicy::new(
            usize::from(config.code_length),
            usize::from(config.code_min_length.unwrap_or(config.code_length)),
        );
        let cache = LinkCache::new(
            config.cache_capacity,
            config.cache_ttl,
            config.negative_cache_capacity,
            config.negative_cache_ttl,
        );
        let resolver = Arc::new(Resolver::new(cache, Arc::clone(&store), codes));
        let admin_token = match &config.admin_token {
            Some(token) => AdminToken::new(token),
            None => {
                let token = crate::auth::new_admin_token();
                println!(
                    "linkhit: no LINKHIT_ADMIN_TOKEN set; generated admin token (shown once, not stored): {token}"
                );
                AdminToken::new(&token)
            }
        };
        let app = Self {
            base_url: config.effective_base_url(bound),
            config,
            store,
            resolver,
            admin_token,
            prometheus,
            redirect_metrics: RedirectMetrics::new(),
            capture,
        };
        Ok((app, pipeline))
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
