//! Operational endpoints: `/healthz` (process up), `/readyz` (store reachable), `/metrics` (Prometheus).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::app::App;

pub fn healthz() -> Response<Full<Bytes>> {
    text(StatusCode::OK, "application/json", Bytes::from_static(b"{\"status\":\"ok\"}"))
}

pub async fn readyz(app: &App) -> Response<Full<Bytes>> {
    let store = app.store.name();
    match app.store.ping().await {
        Ok(()) => text(
            StatusCode::OK,
            "application/json",
            Bytes::from(format!("{{\"status\":\"ready\",\"store\":\"{store}\"}}")),
        ),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                Bytes::from(format!("{{\"status\":\"unavailable\",\"store\":\"{store}\"}}")),
            )
        }
    }
}

pub fn metrics(app: &App) -> Response<Full<Bytes>> {
    metrics::gauge!("linkhit_cache_links").set(app.resolver.cache.len() as f64);
    metrics::gauge!("linkhit_cache_missing").set(app.resolver.cache.missing_len() as f64);
    text(StatusCode::OK, "text/plain; version=0.0.4", Bytes::from(app.prometheus.render()))
}

fn text(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
