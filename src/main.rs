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
        invalid(&message.to_string());
    }
    // An unusable journal directory would only show during the first outage, as lost clicks: refuse to
    // start instead.
    if config.capture
        && config.role.serves()
        && let Err(err) = linkhit::click::journal::Journal::probe(&config.journal_dir)
    {
        invalid(&format!("LINKHIT_JOURNAL_DIR: {err}"));
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = config.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().context("starting the tokio runtime")?;
    let result = runtime.block_on(async move {
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        linkhit::run(listener, config, shutdown).await
    });
    // Tasks still blocked on a hung store (background refreshes, abandoned commits) are not waited for:
    // what they carried is journaled already.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Stops with exit code 2 and a message naming the setting. Writing to a closed stderr is not an error.
fn invalid(message: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "linkhit: invalid configuration: {message}");
    std::process::exit(2);
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
        if writeln!(out, "{json}").is_err() {
            // The reader went away (`| head`): stop quietly.
            return Ok(());
        }
    }
    let _ = out.flush();
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
        // Shutdown starts before anything is logged about it: logging must never be able to stop it.
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        shutdown.cancel();
        tracing::info!(signal = which, "shutting down");
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}
