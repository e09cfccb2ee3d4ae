//! Logging and metrics set-up. The Prometheus recorder is installed once per process (the `metrics`
//! facade is global by design); every server in the process renders the same registry.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric linkhit emits, with the `# HELP` text `/metrics` shows (Prometheus' `promtool check
/// metrics` wants one per metric; docs/OPERATIONS.md has the long form and the labels).
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("linkhit_redirects_total", Kind::Counter, "Redirect requests answered, by status."),
    ("linkhit_hits_total", Kind::Counter, "Hits counted, by class (human, bot) and reason."),
    (
        "linkhit_hits_dropped_total",
        Kind::Counter,
        "Hits dropped, by pipeline stage (a full capture buffer, a full journal).",
    ),
    (
        "linkhit_hits_in_doubt_total",
        Kind::Counter,
        "Hits of batches whose counting was attempted too long ago to replay safely.",
    ),
    (
        "linkhit_verdict_flips_total",
        Kind::Counter,
        "Hits whose verdict flipped from human to bot during the hold window.",
    ),
    (
        "linkhit_corrections_inexact_total",
        Kind::Counter,
        "Verdict corrections that may not move their hit as they should: dropped with their batch, or journaled out of order.",
    ),
    (
        "linkhit_batches_deduplicated_total",
        Kind::Counter,
        "Batches the store had counted before (a retry or replay counted nothing twice).",
    ),
    (
        "linkhit_redis_script_loads_total",
        Kind::Counter,
        "Counting script loaded on every cluster master after one answered NOSCRIPT (the batch was resent).",
    ),
    ("linkhit_click_batch_size", Kind::Histogram, "Hits per counted batch."),
    ("linkhit_capture_queue_depth", Kind::Gauge, "Hits captured and not yet classified."),
    (
        "linkhit_journal_spilled_total",
        Kind::Counter,
        "Hits written to the click journal while the store was slow or down.",
    ),
    ("linkhit_journal_replayed_total", Kind::Counter, "Hits counted from the click journal."),
    (
        "linkhit_journal_corrupt_lines_total",
        Kind::Counter,
        "Journal lines that could not be read (torn writes cut back).",
    ),
    ("linkhit_journal_bytes", Kind::Gauge, "Bytes of the click journal on disk."),
    (
        "linkhit_journal_group_batches",
        Kind::Histogram,
        "Batches per journal write of intake's spill writer (one write and one sync per group).",
    ),
    ("linkhit_journal_write_seconds", Kind::Histogram, "Duration of one journal write and its sync."),
    (
        "linkhit_store_healthy",
        Kind::Gauge,
        "1 when the store takes counting commits, 0 while batches go to the journal.",
    ),
    ("linkhit_store_errors_total", Kind::Counter, "Store errors, by operation."),
    ("linkhit_cache_links", Kind::Gauge, "Links in the redirect cache."),
    ("linkhit_cache_missing", Kind::Gauge, "Codes remembered as unknown in the redirect cache."),
    ("linkhit_code_collisions_total", Kind::Counter, "Generated codes that were taken and drawn again."),
    ("linkhit_links_created_total", Kind::Counter, "Links created."),
    ("linkhit_delivery_reports_total", Kind::Counter, "Delivery reports received, by outcome."),
    ("linkhit_log_write_errors_total", Kind::Counter, "Log lines that could not be written."),
    ("linkhit_conversions_total", Kind::Counter, "Conversions, by source, outcome and the verdict of their click."),
    ("linkhit_track_refused_total", Kind::Counter, "/track calls refused, by reason (rate, click_id)."),
    ("linkhit_opt_outs_total", Kind::Counter, "Opt-outs passed on by the SMS platform, by outcome."),
    ("linkhit_opt_ins_total", Kind::Counter, "Recipients who opted back in."),
    ("linkhit_webhook_events_total", Kind::Counter, "Events offered to the webhook outbox, by type and outcome."),
    ("linkhit_webhook_deliveries_total", Kind::Counter, "Webhook delivery attempts, by outcome."),
    ("linkhit_webhook_attempt_seconds", Kind::Histogram, "Duration of webhook delivery attempts."),
    ("linkhit_webhook_dead_letters_total", Kind::Counter, "Webhook events dead-lettered, by reason."),
    ("linkhit_webhook_dead_letters_evicted_total", Kind::Counter, "Dead letters evicted from a full dead-letter list."),
    ("linkhit_webhook_queue_errors_total", Kind::Counter, "Webhook outbox operations that failed, by operation."),
    ("linkhit_webhook_outbox_due_partitions", Kind::Gauge, "Outbox partitions with events due now."),
    ("linkhit_webhook_outbox_oldest_age_seconds", Kind::Gauge, "Age of the oldest due outbox event."),
];

/// Registers the HELP text of every metric with the installed recorder.
fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// The process's Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            // Real Prometheus histograms (not summaries) for the distributions operators alert on.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("linkhit_webhook_attempt_seconds".into()),
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("linkhit_click_batch_size".into()),
                        &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("linkhit_journal_write_seconds".into()),
                        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("linkhit_journal_group_batches".into()),
                        &[1.0, 2.0, 4.0, 8.0, 12.0, 16.0],
                    )
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Initialises `tracing` from `RUST_LOG` (default `info`), writing to stderr so that stdout carries
/// only what is meant for the operator's eyes (the generated admin token). `LINKHIT_LOG_FORMAT=json`
/// switches to one JSON object per line for log shippers.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("LINKHIT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // `log_internal_errors(false)`: by default a failed write makes the subscriber report it with
    // `eprintln!`, which panics when stderr is closed (a log shipper that died, `| head`), taking the
    // logging task with it. Lost log lines are counted instead (`linkhit_log_write_errors_total`).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .log_internal_errors(false)
        .with_writer(|| Stderr);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).try_init()
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// stderr for log lines: a write that fails (closed pipe) is counted and dropped, never an error that
/// could stop anything.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            metrics::counter!("linkhit_log_write_errors_total").increment(1);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
