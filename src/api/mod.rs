//! The management API under `/api/v1`: admin (workspaces, keys) and links. Lives apart from the
//! redirect hot path: it authenticates, parses JSON and talks to the store on every call.
//!
//! Every error leaves through [`error_response`] as the contract's JSON body; handlers return
//! `Result<Response, ApiError>` and never panic on input.

pub mod admin;
pub mod conversions;
pub mod deliveries;
pub mod link_input;
pub mod links;
pub mod opt_outs;
pub mod stats;
pub mod webhooks;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::app::App;
use crate::error::ApiError;
use crate::model::{Link, LinkStats, Permission, rfc3339};

pub type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Entry point for every request whose path starts with `/api/`. Each request gets a request id — the
/// caller's `X-Request-Id` when it is a sane token, a fresh UUID otherwise — echoed in the response and
/// attached to every log line of the request.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let request_id = request_id(req.headers());
    let span = tracing::info_span!("api", request_id = %request_id, method = %req.method(), path = %req.uri().path());
    let mut response = {
        use tracing::Instrument;
        async {
            match route(app, req).await {
                Ok(response) => response,
                Err(err) => error_response(&err),
            }
        }
        .instrument(span)
        .await
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The caller's request id if it is 1-128 visible ASCII characters, else a new UUID.
pub fn request_id(headers: &hyper::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

async fn route(app: &App, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().to_owned();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    // Each route: its handlers by method, and the `Allow` header of a 405 for any other method.
    macro_rules! methods {
        ($allow:literal; $($m:ident => $handler:expr),+ $(,)?) => {
            match method {
                $(Method::$m => $handler,)+
                _ => Err(ApiError::method_not_allowed($allow)),
            }
        };
    }
    match segs.as_slice() {
        ["api", "v1", "workspaces"] => methods!("POST"; POST => admin::create_workspace(app, req).await),
        ["api", "v1", "workspaces", workspace_id, "keys"] => {
            methods!("POST"; POST => admin::create_key(app, req, workspace_id).await)
        }
        ["api", "v1", "links"] => methods!("POST"; POST => links::create(app, req).await),
        ["api", "v1", "links", code] => methods!("GET, DELETE";
            GET => links::get(app, req, code).await,
            DELETE => links::disable(app, req, code).await,
        ),
        ["api", "v1", "links", code, "stats"] => methods!("GET"; GET => stats::link(app, req, code).await),
        ["api", "v1", "links", code, "clicks"] => methods!("GET"; GET => stats::clicks(app, req, code).await),
        ["api", "v1", "broadcasts"] => methods!("GET"; GET => stats::broadcasts(app, req).await),
        ["api", "v1", "broadcasts", broadcast_id, "timeline"] => {
            methods!("GET"; GET => stats::timeline(app, req, broadcast_id).await)
        }
        ["api", "v1", "broadcasts", broadcast_id, "stats"] => {
            methods!("GET"; GET => stats::broadcast(app, req, broadcast_id).await)
        }
        ["api", "v1", "broadcasts", broadcast_id, "links"] => methods!("GET, POST";
            GET => stats::broadcast_links(app, req, broadcast_id).await,
            POST => links::create_broadcast(app, req, broadcast_id).await,
        ),
        ["api", "v1", "webhooks"] => methods!("GET, PUT";
            PUT => webhooks::put(app, req).await,
            GET => webhooks::get(app, req).await,
        ),
        ["api", "v1", "webhooks", "test"] => methods!("POST"; POST => webhooks::test(app, req).await),
        ["api", "v1", "webhooks", "logs"] => methods!("GET"; GET => webhooks::logs(app, req).await),
        ["api", "v1", "webhooks", "dead-letters"] => methods!("GET"; GET => webhooks::dead_letters(app, req).await),
        ["api", "v1", "webhooks", "dead-letters", "replay"] => {
            methods!("POST"; POST => webhooks::replay_dead_letters(app, req).await)
        }
        ["api", "v1", "opt-outs"] => methods!("GET, POST";
            GET => stats::opt_outs(app, req).await,
            POST => opt_outs::record(app, req).await,
        ),
        ["api", "v1", "opt-outs", recipient] => methods!("GET, DELETE";
            GET => opt_outs::get(app, req, recipient).await,
            DELETE => opt_outs::delete(app, req, recipient).await,
        ),
        ["api", "v1", "conversions"] => methods!("POST"; POST => conversions::record(app, req).await),
        ["api", "v1", "delivery-reports"] => methods!("POST"; POST => deliveries::record(app, req).await),
        ["api", "v1", "messages", "shorten"] => methods!("POST"; POST => links::shorten(app, req).await),
        _ => Err(ApiError::not_found("NOT_FOUND", format!("no route for {path}"))),
    }
}

/// Renders an error as the contract's JSON body, logging server-side failures with their `error_id`.
pub fn error_response(err: &ApiError) -> Response<Full<Bytes>> {
    let body = err.to_body();
    if err.status.is_server_error() {
        tracing::error!(error_id = %body.error_id, code = err.code, message = %err.message, "API request failed");
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = err.status;
    response.headers_mut().insert(header::CONTENT_TYPE, JSON.clone());
    if let Some(allow) = err.allow {
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string()))?;
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, JSON.clone());
    Ok(response)
}

/// An empty response (`204 No Content`).
pub fn empty(status: StatusCode) -> ApiResult {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

/// Reads the whole body, refusing more than `limit` bytes with `413 PAYLOAD_TOO_LARGE`.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    /// Oversized bodies up to this size are read and discarded before answering 413, so that a client
    /// still sending gets the answer instead of a reset connection; larger ones are cut off at once.
    const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        if len <= DRAIN_LIMIT {
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        }
        return Err(too_large(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large(limit)),
        Err(err) => Err(ApiError::invalid_body(format!("could not read the request body: {err}"))),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("request body is larger than {limit} bytes"),
    )
}

/// Parses a JSON body into `T`; anything that is not valid JSON of that shape is `400 INVALID_BODY`.
///
/// The one mechanism for unknown fields on every route: every body type is
/// `#[serde(deny_unknown_fields)]`, and the error serde reports for a field the type does not know
/// becomes `400 UNKNOWN_FIELD` naming it — a typo (`"recipeint"`) is never silently ignored.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every route takes an object; serde would otherwise accept `[...]` for a struct.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_body("request body must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| match unknown_field(&e) {
        Some(field) => ApiError::bad_request(
            "UNKNOWN_FIELD",
            format!("unknown field `{field}`: this route does not take it (check the spelling)"),
        ),
        None => ApiError::invalid_body(format!("request body is not valid JSON for this route: {e}")),
    })
}

/// Refuses the fields of `value` that `T` (a `deny_unknown_fields` type) does not know, with the same
/// `UNKNOWN_FIELD` answer as [`parse_json`]; for bodies validated field by field from raw JSON. Other
/// mismatches are left to that validation, which gives each field its own code.
pub fn refuse_unknown_fields<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<(), ApiError> {
    match serde_json::from_value::<T>(value.clone()) {
        Err(e) if let Some(field) = unknown_field(&e) => Err(ApiError::bad_request(
            "UNKNOWN_FIELD",
            format!("unknown field `{field}`: this route does not take it (check the spelling)"),
        )),
        _ => Ok(()),
    }
}

/// The field named by serde's "unknown field `x`, expected …" error.
fn unknown_field(err: &serde_json::Error) -> Option<String> {
    let text = err.to_string();
    let rest = text.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The workspace and permissions behind a request's API key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub workspace_id: String,
    pub permissions: Vec<Permission>,
}

impl Caller {
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.permissions.contains(&permission) { Ok(()) } else { Err(ApiError::forbidden(permission.as_str())) }
    }
}

/// Authenticates a workspace request and checks one permission: 401 without a valid key, 403 with a
/// valid key lacking `permission`.
pub async fn authorize(app: &App, headers: &hyper::HeaderMap, permission: Permission) -> Result<Caller, ApiError> {
    let raw = crate::auth::presented_credential(headers).ok_or_else(ApiError::unauthorized)?;
    let record = app.store.get_api_key(&crate::auth::hash_key(raw)).await?.ok_or_else(ApiError::unauthorized)?;
    let caller = Caller { workspace_id: record.workspace_id, permissions: record.permissions };
    caller.require(permission)?;
    Ok(caller)
}

/// Checks the admin bearer token.
pub fn authorize_admin(app: &App, headers: &hyper::HeaderMap) -> Result<(), ApiError> {
    match crate::auth::presented_credential(headers) {
        Some(token) if app.admin_token.matches(token) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

/// Link counters as the API shows them (timestamps as RFC 3339 with milliseconds).
#[derive(Debug, Serialize)]
pub struct LinkStatsView {
    pub hits: u64,
    pub human_hits: u64,
    pub bot_hits: u64,
    pub unique_clicks: u64,
    pub first_click_at: Option<String>,
    pub last_click_at: Option<String>,
    pub conversions: u64,
    pub conversion_value: serde_json::Value,
}

/// Conversion values per currency as JSON numbers. Sums are kept exactly (decimal millionths); a
/// number is the nearest double, which prints the exact decimal up to 15 significant digits.
pub fn money(values: &std::collections::BTreeMap<String, rust_decimal::Decimal>) -> serde_json::Value {
    use rust_decimal::prelude::ToPrimitive;
    values.iter().map(|(currency, v)| (currency.clone(), serde_json::json!(v.to_f64().unwrap_or(0.0)))).collect()
}

impl From<&LinkStats> for LinkStatsView {
    fn from(s: &LinkStats) -> Self {
        Self {
            hits: s.hits,
            human_hits: s.human_hits,
            bot_hits: s.bot_hits,
            unique_clicks: s.unique_clicks,
            first_click_at: s.first_click_at.map(rfc3339),
            last_click_at: s.last_click_at.map(rfc3339),
            conversions: s.conversions,
            conversion_value: money(&s.conversion_value),
        }
    }
}

/// An opt-out as the API shows it.
pub fn opt_out_view(o: &crate::model::OptOut) -> serde_json::Value {
    serde_json::json!({
        "recipient": o.recipient,
        "at": rfc3339(o.at),
        "source": o.source,
        "code": (!o.code.is_empty()).then_some(&o.code),
        "broadcast_id": o.broadcast_id,
        "keyword": o.keyword,
        "message_id": o.message_id,
        "sender": o.sender,
    })
}

/// Parses `?limit=N` (1..=max, default `default`).
pub(crate) fn limit(req: &Request<Incoming>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(query) = req.uri().query() else {
        return Ok(default.min(max));
    };
    for pair in query.split('&') {
        if let Some(raw) = pair.strip_prefix("limit=") {
            return match raw.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request("INVALID_LIMIT", format!("limit must be an integer from 1 to {max}"))),
            };
        }
    }
    Ok(default.min(max))
}

/// Loads a link of the caller's workspace; another workspace's link is indistinguishable from none.
pub(crate) async fn owned_link(app: &App, workspace_id: &str, code: &str) -> Result<Link, ApiError> {
    let not_found = || ApiError::not_found("LINK_NOT_FOUND", "no such link");
    if !app.resolver.codes().is_valid(code) {
        return Err(not_found());
    }
    match app.store.get_link(code).await? {
        Some(link) if link.workspace_id == workspace_id => Ok(link),
        _ => Err(not_found()),
    }
}
