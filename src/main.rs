//! The `linkhit` binary: parse the configuration, bind, run until SIGTERM/SIGINT, exit 0.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use linkhit::config::{ClassifyArgs, Cli, Command};

/// mimalloc instead of glibc's malloc: hyper, the click pipeline and the Redis client allocate and free
/// small buffers on every request, and glibc's allocator was 18 % of linkhit's CPU under load
/// (docs/PERFORMANCE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(config)) => *config,
        Some(Command::Classify(args)) => return classify(&args),
        None => cli.serve,
    };
    linkhit::telemetry::init_tracing();
    if let Err(message) = config.validate() {
        eprintln!("linkhit: invalid configuration: {message}");
        std::process::exit(2);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    runtime.build().context("starting the tokio runtime")?.block_on(async move {
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        linkhit::run(listener, config, shutdown).await
    })
}

/// `linkhit classify`: one user agent per stdin line → one JSON verdict per stdout line.
fn classify(args: &ClassifyArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let rules =
        linkhit::click::classify::load_rules(args.extra_human_patterns.as_deref(), args.extra_bot_patterns.as_deref())?;
    let mut classifier = linkhit::click::classify::Classifier::new(std::sync::Arc::new(rules), 100_000);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in std::io::stdin().lock().lines() {
        let ua = line.context("reading stdin")?;
        let verdict =
            classifier.classify(linkhit::click::classify::Signals { user_agent: Some(&ua), ..Default::default() });
        let json = serde_json::json!({"user_agent": ua, "class": verdict.class, "reason": &*verdict.reason});
        writeln!(out, "{json}")?;
    }
    out.flush()?;
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn watch_signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("could not install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
