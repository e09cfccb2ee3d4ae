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
    let cli = Cli::try_parse().unwrap_or_else(|err| parse_error(err));
    let config = match cli.command {
        Some(Command::Serve(config)) => *config,
        Some(Command::Classify(args)) => return classify(&args),
        None => cli.serve,
    };
    match std::env::var("LINKHIT_LOG_FORMAT") {
        Ok(f) if !f.eq_ignore_ascii_case("json") && !f.eq_ignore_ascii_case("text") => {
            invalid(&format!("LINKHIT_LOG_FORMAT must be \"text\" or \"json\", not {f:?}"))
        }
        _ => {}
    }
    linkhit::telemetry::init_tracing();
    if let Err(message) = config.validate() {
        invalid(&message.to_string());
    }
    if let Some(url) = &config.redis_url
        && let Err(err) = linkhit::redis_conn::parse_target(url)
    {
        invalid(&format!("LINKHIT_REDIS_URL: {err}"));
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
        let shutdown = CancellationToken::new();
        // The handlers are installed before the listener is bound: the port accepts connections from the
        // bind on, and a SIGTERM sent the moment a probe connects must start the graceful shutdown, not
        // kill the process silently (a race `tests/binary.rs::json_logs_on_request` hit under CI load).
        tokio::spawn(watch_signals(shutdown.clone())?);
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        linkhit::run(listener, config, shutdown).await
    });
    // Tasks still blocked on a hung store (background refreshes, abandoned commits) are not waited for:
    // what they carried is journaled already.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Stops with exit code 2 and a message naming the setting. Writing to a closed stderr is not an error.
/// A value clap refused: name the environment variable as well as the flag (the README documents the
/// variables), and exit 2 like every invalid setting. `--help` and `--version` print and exit 0.
fn parse_error(err: clap::Error) -> ! {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let long =
        arg.as_deref().and_then(|a| a.strip_prefix("--")).map(|a| a.split([' ', '=']).next().unwrap_or(a).to_owned());
    let command = Cli::command();
    let env = long.as_deref().and_then(|long| {
        std::iter::once(&command)
            .chain(command.get_subcommands())
            .flat_map(|c| c.get_arguments())
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    });
    match env {
        Some(env) => {
            let why = err.render().to_string();
            let why = why.lines().next().unwrap_or_default().trim_start_matches("error: ");
            invalid(&format!("{env} (--{}): {why}", long.unwrap_or_default()))
        }
        None => {
            let _ = err.print();
            std::process::exit(2);
        }
    }
}

fn invalid(message: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "linkhit: invalid configuration: {message}");
    std::process::exit(2);
}

/// `linkhit classify`: one hit per stdin line — a bare user agent, or a JSON object
/// `{"user_agent", "ip", "seconds_since_send", "seconds_since_delivery", "head"}` (every field optional)
/// — and one JSON verdict per stdout line: class, reason and the signals behind it. Sweeps need a
/// stream of hits on a broadcast and are not judged here.
fn classify(args: &ClassifyArgs) -> anyhow::Result<()> {
    use linkhit::click::classify::Signals;
    use linkhit::click::verdict::{Evidence, Timing, judge};
    use std::io::{BufRead, Write};
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Line {
        user_agent: Option<String>,
        ip: Option<std::net::IpAddr>,
        seconds_since_send: Option<f64>,
        seconds_since_delivery: Option<f64>,
        #[serde(default)]
        head: bool,
    }
    let rules =
        linkhit::click::classify::load_rules(args.extra_human_patterns.as_deref(), args.extra_bot_patterns.as_deref())?;
    let networks = linkhit::click::network::Networks::load(
        args.extra_human_networks.as_deref(),
        args.privacy_relay_networks.as_deref(),
        args.extra_bot_networks.as_deref(),
    )?;
    let timing =
        Timing { fast_after_send: args.click_fast_after_send, fast_after_delivery: args.click_fast_after_delivery };
    let mut classifier = linkhit::click::classify::Classifier::new(std::sync::Arc::new(rules), 100_000);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let text = line.context("reading stdin")?;
        let hit: Line = if text.trim_start().starts_with('{') {
            serde_json::from_str(&text).with_context(|| format!("line {}: not a hit object", n + 1))?
        } else {
            Line { user_agent: Some(text.clone()), ..Default::default() }
        };
        let ua =
            classifier.classify(Signals { user_agent: hit.user_agent.as_deref(), head: hit.head, prefetch: false });
        let evidence = Evidence {
            network: hit.ip.and_then(|ip| networks.lookup(ip)),
            since_send_ms: hit.seconds_since_send.map(|s| (s * 1000.0) as i64),
            since_delivery_ms: hit.seconds_since_delivery.map(|s| (s * 1000.0) as i64),
            sweep: None,
        };
        let verdict = judge(&ua, &evidence, &timing);
        let json = serde_json::json!({
            "user_agent": hit.user_agent, "class": verdict.class, "reason": &*verdict.reason,
            "signals": verdict.signals.as_deref().map_or(Vec::new(), |s| s.split(',').filter(|s| !s.is_empty()).collect()),
        });
        if writeln!(out, "{json}").is_err() {
            // The reader went away (`| head`): stop quietly.
            return Ok(());
        }
    }
    let _ = out.flush();
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future cancels `shutdown` on the first.
#[cfg(unix)]
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        // Shutdown starts before anything is logged about it: logging must never be able to stop it.
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        shutdown.cancel();
        tracing::info!(signal = which, "shutting down");
    })
}

#[cfg(not(unix))]
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    })
}
