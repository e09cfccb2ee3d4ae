//! linkhit: a short-link redirector for SMS platforms.
//!
//! The binary is a thin shell around [`run`]: it parses [`config::Config`], binds the listener and
//! hands both to `run` with a shutdown token. Tests call `run` on `127.0.0.1:0`. See
//! `docs/ARCHITECTURE.md` for the map of modules and their invariants.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod click;
pub mod click_id;
pub mod code;
pub mod config;
pub mod counting;
pub mod error;
pub mod limit;
pub mod model;
pub mod ops;
pub mod redirect;
pub mod redis_conn;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod ui;
pub mod validate;
pub mod webhook;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Runs linkhit on `listener` until `shutdown` is cancelled, then drains connections, flushes the click
/// pipeline, lets webhook deliveries in flight finish, and returns.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    serve(listener, config, shutdown, None).await
}

/// [`run`] with click and opt-out events sent to `sink` instead of the webhook outbox (tests).
pub async fn run_with_sink(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
    sink: Arc<dyn click::emit::EventSink>,
) -> anyhow::Result<()> {
    serve(listener, config, shutdown, Some(sink)).await
}

async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
    sink: Option<Arc<dyn click::emit::EventSink>>,
) -> anyhow::Result<()> {
    config.validate()?;
    let bound = listener.local_addr()?;
    let grace = config.shutdown_grace;
    let (app, background) = app::App::build(config, bound, sink)?;
    let app = Arc::new(app);
    // Background work lives until the connections are drained, then stops.
    let stop_background = CancellationToken::new();
    if let Some(feed) = app.store.invalidations(stop_background.clone()) {
        tokio::spawn(Arc::clone(&app.resolver).follow(feed));
    }
    let worker = background.worker.map(|w| w.spawn(stop_background.clone(), grace));
    // The shared key of code check characters and click ids. Usually the store answers at once; if not,
    // keep trying in the background.
    match app.store.code_key().await {
        Ok(key) => {
            app.resolver.codes().set_key(key);
            app.resolver.click_ids.set_key(key);
        }
        Err(_) => {
            tokio::spawn(load_code_key(Arc::clone(&app), stop_background.clone()));
        }
    }
    tracing::info!(
        listen = %bound,
        base_url = %app.base_url,
        store = app.store.name(),
        role = ?app.config.role,
        version = env!("CARGO_PKG_VERSION"),
        "linkhit serving"
    );
    let began = Arc::new(std::sync::OnceLock::new());
    {
        let (began, shutdown) = (Arc::clone(&began), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let _ = began.set(std::time::Instant::now());
        });
    }
    let admin = match app.config.admin_listen {
        Some(addr) => {
            let admin_listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("LINKHIT_ADMIN_LISTEN: cannot listen on {addr}: {e}"))?;
            tracing::info!(listen = %addr, "admin listener (metrics, health) serving");
            Some(tokio::spawn(server::serve_as(
                server::Listener::Admin,
                admin_listener,
                Arc::clone(&app),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    server::serve(listener, Arc::clone(&app), shutdown).await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // Connections are drained (within the grace period): nothing captures any more. Count what was
    // captured — or journal it, if the store does not take it before the deadline — which also queues its
    // webhook events; then stop the workers. The whole shutdown ends within the grace period plus a few
    // seconds, however the store behaves.
    let began = began.get().copied().unwrap_or_else(std::time::Instant::now);
    let deadline = (began + grace).max(std::time::Instant::now() + FLUSH_AT_LEAST);
    if let Some(pipeline) = background.pipeline {
        pipeline.shutdown(deadline).await;
    }
    stop_background.cancel();
    if let Some(worker) = worker {
        let _ = tokio::time::timeout(WORKER_STOP, worker).await;
    }
    tracing::info!("linkhit stopped");
    Ok(())
}

/// Time the click pipeline gets to flush at shutdown even when draining connections used up the grace
/// period (journal writes are local and fast).
const FLUSH_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(1);
/// Time the webhook workers get after the pipeline flushed.
const WORKER_STOP: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads (or creates) the shared code key, retrying until the store answers.
async fn load_code_key(app: Arc<app::App>, stop: CancellationToken) {
    let mut backoff = backoff::Backoff::new(std::time::Duration::from_millis(100), std::time::Duration::from_secs(5));
    while !stop.is_cancelled() {
        match app.store.code_key().await {
            Ok(key) => {
                app.resolver.codes().set_key(key);
                app.resolver.click_ids.set_key(key);
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the code key yet; codes are checked for shape only");
                backoff.wait().await;
            }
        }
    }
}
