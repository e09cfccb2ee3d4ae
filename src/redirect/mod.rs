//! The redirect hot path: `GET`/`HEAD /{code}`. No authentication, no JSON, no store call on a cache hit.
//!
//! A click's journey starts here: [`resolve`] (cache, then store) → [`respond`] (302 / 404 / 410 / opt-out
//! page). Later stages (capture → classify → count → emit → deliver) run after the response, off this path.

mod bounded;
pub mod cache;
pub mod capture;
pub mod metrics;
pub mod resolve;
pub mod respond;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response};

use resolve::{Resolved, Resolver};
use respond::Outcome;

use std::net::IpAddr;

use hyper::http::request::Parts;

use self::metrics::RedirectMetrics;
use capture::{Capture, Hit};

/// Answers one redirect request for `code` (the path without its leading `/`).
pub async fn handle(
    resolver: &Arc<Resolver>,
    metrics: &RedirectMetrics,
    capture: &Capture,
    request: &Parts,
    peer: Option<IpAddr>,
) -> Response<Full<Bytes>> {
    let method = &request.method;
    let code = request.uri.path().get(1..).unwrap_or_default();
    if method != Method::GET && method != Method::HEAD {
        metrics.record(Outcome::MethodNotAllowed);
        return respond::response(Outcome::MethodNotAllowed, None, method, None);
    }
    let resolved = resolver.resolve(code).await;
    let outcome = respond::outcome(&resolved, || chrono::Utc::now().timestamp());
    let link = match &resolved {
        Resolved::Link(link) => Some(link.as_ref()),
        _ => None,
    };
    metrics.record(outcome);
    // A link tracking conversions gets a fresh click id per redirect (verifiable at once by `/track`).
    let click_id = match (outcome, link) {
        (Outcome::Redirected, Some(l)) if l.track => resolver.click_ids.issue(&l.code, chrono::Utc::now().timestamp()),
        _ => None,
    };
    let response = respond::response(outcome, link, method, click_id.as_deref());
    // Every answered GET/HEAD of a live link is a hit; classification happens off this path.
    if let (Outcome::Redirected | Outcome::OptOutPage, Resolved::Link(link)) = (outcome, &resolved) {
        let mut hit = Hit::from_request(Arc::clone(link), method == Method::HEAD, &request.headers, peer);
        hit.click_id = click_id.map(Arc::from);
        capture.record(hit);
    }
    response
}
