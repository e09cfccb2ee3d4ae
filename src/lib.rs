//! linkhit: a short-link redirector for SMS platforms.
//!
//! The binary is a thin shell around [`run`]: it parses [`config::Config`], binds the listener and
//! hands both to `run` with a shutdown token. Tests call `run` on `127.0.0.1:0`. See
//! `docs/ARCHITECTURE.md` for the map of modules and their invariants.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod click;
pub mod code;
pub mod config;
pub mod error;
pub mod model;
pub mod ops;
pub mod redirect;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod validate;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Runs linkhit on `listener` until `shutdown` is cancelled, then drains connections and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_sink(listener, config, shutdown, Arc::new(click::emit::Discard)).await
}

/// [`run`] with an explicit destination for click and opt-out events.
pub async fn run_with_sink(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
    sink: Arc<dyn click::emit::EventSink>,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let bound = listener.local_addr()?;
    let (app, pipeline) = app::App::build(config, bound, sink)?;
    let app = Arc::new(app);
    // Background work lives until the connections are drained, then stops.
    let background = CancellationToken::new();
    if let Some(feed) = app.store.invalidations(background.clone()) {
        tokio::spawn(Arc::clone(&app.resolver).follow(feed));
    }
    tracing::info!(
        listen = %bound,
        base_url = %app.base_url,
        store = app.store.name(),
        version = env!("CARGO_PKG_VERSION"),
        "linkhit serving"
    );
    server::serve(listener, Arc::clone(&app), shutdown).await;
    // Connections are drained: nothing captures any more. Count (or journal) what was captured.
    if let Some(pipeline) = pipeline {
        pipeline.shutdown().await;
    }
    background.cancel();
    tracing::info!("linkhit stopped");
    Ok(())
}
