//! Stage 2: turn a resolution into the HTTP answer. Allocation-light: header values are prepared
//! when the link entered the cache, or static.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::cache::CachedLink;
use super::resolve::Resolved;
use crate::model::LinkKind;

static CACHE_CONTROL: HeaderValue = HeaderValue::from_static("private, max-age=0");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
static TEXT_HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
static RETRY_AFTER: HeaderValue = HeaderValue::from_static("1");
static ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD");

const OPT_OUT_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Unsubscribed</title></head>\
<body style=\"font-family:system-ui,sans-serif;max-width:30em;margin:3em auto;padding:0 1em\">\
<h1>You have been unsubscribed</h1><p>You will no longer receive these messages.</p></body></html>";

/// How a resolved link is answered, so that later stages (capture) know what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Redirected,
    OptOutPage,
    NotFound,
    Gone,
    Unavailable,
    MethodNotAllowed,
}

impl Outcome {
    pub fn status(self) -> StatusCode {
        match self {
            Outcome::Redirected => StatusCode::FOUND,
            Outcome::OptOutPage => StatusCode::OK,
            Outcome::NotFound => StatusCode::NOT_FOUND,
            Outcome::Gone => StatusCode::GONE,
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Outcome::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// Decides the outcome of a resolution at `now_unix` seconds.
pub fn outcome(resolved: &Resolved, now_unix: impl FnOnce() -> i64) -> Outcome {
    match resolved {
        Resolved::NotFound => Outcome::NotFound,
        Resolved::Unavailable => Outcome::Unavailable,
        Resolved::Link(link) if !link.is_live(now_unix) => Outcome::Gone,
        Resolved::Link(link) => match (link.kind, &link.location) {
            (LinkKind::OptOut, _) => Outcome::OptOutPage,
            (LinkKind::Redirect, Some(_)) => Outcome::Redirected,
            // A redirect link without a usable target cannot be followed.
            (LinkKind::Redirect, None) => Outcome::Gone,
        },
    }
}

/// Builds the response. `HEAD` gets the same status and headers with no body. `click_id`: the
/// `lh_click` to add to the target (links tracking conversions).
pub fn response(
    outcome: Outcome,
    link: Option<&CachedLink>,
    method: &Method,
    click_id: Option<&str>,
) -> Response<Full<Bytes>> {
    let body = |text: &'static str| {
        if method == Method::HEAD { Full::new(Bytes::new()) } else { Full::new(Bytes::from_static(text.as_bytes())) }
    };
    let mut builder = Response::builder().status(outcome.status());
    let headers = builder.headers_mut().expect("fresh builder");
    let body = match outcome {
        Outcome::Redirected => {
            if let Some(location) = link.and_then(|l| l.location.as_deref()) {
                let tracked = click_id
                    .and_then(|id| location.to_str().ok().map(|target| crate::click_id::add_to_target(target, id)))
                    .and_then(|url| HeaderValue::from_str(&url).ok());
                headers.insert(header::LOCATION, tracked.unwrap_or_else(|| location.clone()));
            }
            headers.insert(header::CACHE_CONTROL, CACHE_CONTROL.clone());
            Full::new(Bytes::new())
        }
        Outcome::OptOutPage => {
            headers.insert(header::CONTENT_TYPE, TEXT_HTML.clone());
            headers.insert(header::CACHE_CONTROL, NO_STORE.clone());
            body(OPT_OUT_PAGE)
        }
        Outcome::NotFound => plain(headers, body("Not Found\n")),
        Outcome::Gone => plain(headers, body("This link is no longer available.\n")),
        Outcome::Unavailable => {
            headers.insert(header::RETRY_AFTER, RETRY_AFTER.clone());
            plain(headers, body("Temporarily unavailable, please retry.\n"))
        }
        Outcome::MethodNotAllowed => {
            headers.insert(header::ALLOW, ALLOW.clone());
            plain(headers, body("Method Not Allowed\n"))
        }
    };
    builder.body(body).expect("valid static response parts")
}

fn plain(headers: &mut hyper::HeaderMap, body: Full<Bytes>) -> Full<Bytes> {
    headers.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
    headers.insert(header::CACHE_CONTROL, NO_STORE.clone());
    body
}
