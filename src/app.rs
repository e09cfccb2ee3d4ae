//! The application state shared by every connection: configuration, store, resolver, credentials,
//! metrics. Built once by `run`, passed explicitly (no globals besides the metrics recorder, which the
//! `metrics` crate makes process-wide by design).

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

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
}

impl App {
    /// Builds the state for a server bound at `bound`. Prints a generated admin token when none is
    /// configured (the only time it is ever shown).
    pub fn build(config: Config, bound: SocketAddr) -> anyhow::Result<Self> {
        let prometheus = telemetry::prometheus();
        let store = store::open(&config)?;
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
        Ok(Self {
            base_url: config.effective_base_url(bound),
            config,
            store,
            resolver,
            admin_token,
            prometheus,
            redirect_metrics: RedirectMetrics::new(),
        })
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
