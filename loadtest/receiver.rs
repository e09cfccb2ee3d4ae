//! A webhook receiver for load tests: answers 200 to every POST, counts events and distinct
//! `webhook-id`s, and measures click-to-receiver latency from the payload's `occurredAt` (8x8 format).
//! `GET /stats` returns the figures as JSON.
//!
//! Run: `cargo run --release --example receiver -- 127.0.0.1:9999`

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct Stats {
    events: u64,
    ids: HashSet<String>,
    latencies_ms: Vec<f64>,
    first: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9999".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    loop {
        let (stream, _) = listener.accept().await?;
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let stats = Arc::clone(&stats);
                async move { Ok::<_, Infallible>(handle(req, &stats).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(req: Request<hyper::body::Incoming>, stats: &Mutex<Stats>) -> Response<Full<Bytes>> {
    if req.method() == Method::GET {
        let s = stats.lock().unwrap();
        let mut lat = s.latencies_ms.clone();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| if lat.is_empty() { 0.0 } else { lat[((lat.len() - 1) as f64 * p).round() as usize] };
        let span = match (s.first, s.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let body = serde_json::json!({
            "events": s.events,
            "distinct_ids": s.ids.len(),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": lat.last().copied().unwrap_or(0.0),
            "span_s": span,
        });
        return Response::new(Full::new(Bytes::from(body.to_string())));
    }
    let id = req.headers().get("webhook-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let now = chrono::Utc::now();
    let latency = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["payload"]["occurredAt"].as_str().map(str::to_owned))
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| (now - at.with_timezone(&chrono::Utc)).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    let mut s = stats.lock().unwrap();
    s.events += 1;
    if let Some(id) = id {
        s.ids.insert(id);
    }
    if let Some(ms) = latency {
        s.latencies_ms.push(ms);
    }
    let t = std::time::Instant::now();
    s.first.get_or_insert(t);
    s.last = Some(t);
    Response::new(Full::new(Bytes::from_static(b"ok")))
}
