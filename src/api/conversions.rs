//! Conversions: the public postback `/track` (POST and GET, no API key: the click id is the credential)
//! and the server-to-server `POST /api/v1/conversions` (`conversions.write`, like createAction).
//!
//! A conversion is attributed to its link (and so its broadcast and recipient) and, with a click id, to
//! one click. It counts once: per (click id, name) — `/track` and the API alike — or per the caller's
//! `id`. Counting is idempotent in the store; the event is queued after counting, and a duplicate whose
//! event was not queued yet (the first call failed half-way) queues it then — at least once, with one
//! event id. A conversion counts whatever its click's verdict; one on a hit judged a bot is counted in
//! `linkhit_conversions_total{click_class="bot"}`, the classifier's clearest error signal.
//!
//! Abuse: `/track` takes at most `LINKHIT_TRACK_RATE` requests per client address per minute (429
//! beyond), bodies of at most 4 KiB; a click id that is unknown, forged, of another deployment or
//! expired answers 404 before anything is read from the store.

use std::net::IpAddr;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;

use super::{ApiResult, authorize, error_response, json, owned_link, parse_json, read_body};
use crate::app::App;
use crate::click::emit::Event;
use crate::error::ApiError;
use crate::model::{Class, Conversion, Link, LinkKind, Permission, Recorded, rfc3339};

/// Largest `/track` body.
const TRACK_BODY_LIMIT: usize = 4 * 1024;
/// Largest conversion value accepted (per conversion).
const MAX_VALUE: i64 = 1_000_000_000_000;

/// A conversion as asked for, before attribution.
struct Ask {
    name: String,
    value: Option<Decimal>,
    currency: String,
    at: DateTime<Utc>,
}

fn parse_name(raw: &Value) -> Result<String, ApiError> {
    match raw {
        Value::String(s) if crate::validate::is_reasonable_text(s, 64) => Ok(s.clone()),
        _ => Err(ApiError::bad_request("INVALID_NAME", "name is required: 1-64 characters (\"purchase\", \"signup\")")),
    }
}

/// A value as exact decimal text: at most six decimals, from 0 to 10^12.
fn parse_value_text(text: &str) -> Result<Decimal, ApiError> {
    let bad = || {
        ApiError::bad_request("INVALID_VALUE", "value must be a number from 0 to 1000000000000 with at most 6 decimals")
    };
    // Plain decimal text (`49.90`), or what serde_json prints for a number (`1e3`); not `1_000`, `+5`.
    let plain = text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-'));
    if !plain || text.is_empty() {
        return Err(bad());
    }
    let v = Decimal::from_str(text).or_else(|_| Decimal::from_scientific(text)).map_err(|_| bad())?;
    if v.is_sign_negative() || v > Decimal::from(MAX_VALUE) || crate::counting::micro_units(v).is_none() {
        return Err(bad());
    }
    Ok(v.normalize())
}

fn parse_value(raw: &Value) -> Result<Option<Decimal>, ApiError> {
    match raw {
        Value::Null => Ok(None),
        // serde_json keeps the shortest text that reads back as the same double: `49.90` is `49.9`.
        Value::Number(n) => parse_value_text(&n.to_string()).map(Some),
        Value::String(s) => parse_value_text(s).map(Some),
        _ => parse_value_text("x").map(Some),
    }
}

fn parse_currency(raw: &Value) -> Result<String, ApiError> {
    match raw {
        Value::Null => Ok("USD".to_owned()),
        Value::String(s) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) => Ok(s.clone()),
        _ => Err(ApiError::bad_request("INVALID_CURRENCY", "currency must be an ISO 4217 code such as \"USD\"")),
    }
}

fn parse_occurred_at(raw: &Value, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let bad =
        || ApiError::bad_request("INVALID_OCCURRED_AT", "occurred_at must be an RFC 3339 time, not in the future");
    match raw {
        Value::Null => Ok(now),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .filter(|t| *t <= now + chrono::Duration::minutes(5))
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// A stable, key-safe digest of what makes a conversion count once.
fn dedup(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

fn event_id(dedup: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c69_6e6b_6869_7400_8000_0000_0000_0003);
    uuid::Uuid::new_v5(&NAMESPACE, dedup.as_bytes()).to_string()
}

fn not_found_click() -> ApiError {
    ApiError::not_found("CLICK_NOT_FOUND", "unknown, expired or invalid click id")
}

/// The link of a click id: verified (key, expiry), then read. `None` for anything not a live click id.
async fn link_of_click(app: &App, click_id: &str) -> Result<Link, ApiError> {
    let verified = app.resolver.click_ids.verify(click_id, Utc::now().timestamp()).ok_or_else(not_found_click)?;
    match app.store.get_link(&verified.code).await? {
        Some(link) if link.track_conversions && link.kind == LinkKind::Redirect => Ok(link),
        _ => Err(not_found_click()),
    }
}

/// What recording did, for the answer.
struct Outcome {
    conversion: Conversion,
    recorded: Recorded,
}

/// Counts a conversion (once) and queues its event (at least once).
async fn count(
    app: &App,
    link: &Link,
    click_id: Option<&str>,
    ask: Ask,
    id: Option<&str>,
    source: &'static str,
) -> Result<Outcome, ApiError> {
    let dedup = match (id, click_id) {
        (Some(id), _) => dedup(&["id", &link.workspace_id, id]),
        (None, Some(click)) => dedup(&["click", click, &ask.name]),
        (None, None) => dedup(&["once", &uuid::Uuid::new_v4().to_string()]),
    };
    let conversion = Conversion {
        event_id: event_id(&dedup),
        dedup,
        workspace_id: link.workspace_id.clone(),
        code: link.code.clone(),
        broadcast_id: link.broadcast_id.clone(),
        recipient: link.recipient.clone(),
        click_id: click_id.map(str::to_owned),
        name: ask.name,
        value: ask.value,
        currency: ask.currency,
        at: ask.at,
    };
    let ttl = app.config.click_id_ttl;
    let (recorded, class) = app.store.record_conversion(&conversion, ttl).await?;
    let class_label = match (click_id, class) {
        (None, _) => "none",
        (Some(_), Some(Class::Human)) => "human",
        (Some(_), Some(Class::Bot)) => "bot",
        (Some(_), None) => "unknown",
    };
    let outcome = match recorded {
        Recorded::New => "new",
        Recorded::Duplicate { .. } => "duplicate",
        Recorded::Refused => "refused",
    };
    metrics::counter!("linkhit_conversions_total", "source" => source, "outcome" => outcome, "click_class" => class_label)
        .increment(1);
    if recorded == Recorded::Refused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONVERSION_LIMIT",
            "this click has converted the most times a click may (20 distinct names)",
        ));
    }
    if recorded == Recorded::New && class == Some(Class::Bot) {
        tracing::info!(code = %link.code, "a conversion came from a hit judged a bot: a classifier error");
    }
    if matches!(recorded, Recorded::New | Recorded::Duplicate { emitted: false }) {
        let event = Event::Conversion { id: conversion.event_id.clone(), conversion: conversion.clone() };
        app.events.emit(vec![event]).await.map_err(|err| {
            tracing::error!(error = %err, "a conversion was counted but its event could not be queued yet");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "OUTBOX_UNAVAILABLE",
                "the conversion is counted; its webhook event could not be queued: retry the same request",
            )
        })?;
        app.store.conversion_emitted(&conversion, ttl).await?;
    }
    Ok(Outcome { conversion, recorded })
}

fn view(c: &Conversion) -> Value {
    json!({
        "event_id": c.event_id,
        "code": c.code,
        "click_id": c.click_id,
        "name": c.name,
        "value": c.value.and_then(|v| rust_decimal::prelude::ToPrimitive::to_f64(&v)),
        "currency": c.currency,
        "occurred_at": rfc3339(c.at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiInput {
    #[serde(default)]
    code: Value,
    #[serde(default)]
    click_id: Value,
    #[serde(default)]
    name: Value,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    currency: Value,
    #[serde(default)]
    occurred_at: Value,
    #[serde(default)]
    id: Value,
}

/// `POST /api/v1/conversions`: 201 counted, 200 `{"duplicate": true}` for an `id` (or click and name)
/// counted before.
pub async fn record(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::ConversionsWrite).await?;
    let input: ApiInput = parse_json(&read_body(req, app.config.max_body_bytes).await?)?;
    let now = Utc::now();
    let ask = Ask {
        name: parse_name(&input.name)?,
        value: parse_value(&input.value)?,
        currency: parse_currency(&input.currency)?,
        at: parse_occurred_at(&input.occurred_at, now)?,
    };
    let id = match &input.id {
        Value::Null => None,
        Value::String(s) if crate::validate::is_reasonable_text(s, 128) => Some(s.as_str()),
        _ => return Err(ApiError::bad_request("INVALID_ID", "id must be 1-128 characters")),
    };
    let (link, click_id) = match (&input.code, &input.click_id) {
        (Value::String(code), Value::Null) => (owned_link(app, &caller.workspace_id, code).await?, None),
        (Value::Null, Value::String(click)) => {
            let link = link_of_click(app, click).await?;
            if link.workspace_id != caller.workspace_id {
                return Err(not_found_click());
            }
            (link, Some(click.as_str()))
        }
        _ => {
            return Err(ApiError::bad_request(
                "INVALID_ATTRIBUTION",
                "give exactly one of code (the link) and click_id (the lh_click of a redirect)",
            ));
        }
    };
    let out = count(app, &link, click_id, ask, id, "api").await?;
    match out.recorded {
        Recorded::New => json(StatusCode::CREATED, &json!({ "conversion": view(&out.conversion) })),
        Recorded::Duplicate { .. } | Recorded::Refused => {
            json(StatusCode::OK, &json!({ "duplicate": true, "event_id": out.conversion.event_id }))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackInput {
    #[serde(default)]
    click_id: Value,
    #[serde(default)]
    name: Value,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    currency: Value,
}

fn with_cors(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/track`: `POST` (JSON) → 202 / 200 duplicate; `GET` (query, a pixel or a redirect chain) → 204;
/// `OPTIONS` → the CORS preflight. Errors carry the API's JSON error body.
pub async fn track(app: &App, req: Request<Incoming>, peer: Option<IpAddr>) -> Response<Full<Bytes>> {
    let response = match track_inner(app, req, peer).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    };
    with_cors(response)
}

async fn track_inner(app: &App, req: Request<Incoming>, peer: Option<IpAddr>) -> ApiResult {
    if req.method() == Method::OPTIONS {
        let mut response = super::empty(StatusCode::NO_CONTENT)?;
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        return Ok(response);
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(ApiError::method_not_allowed("GET, POST, OPTIONS"));
    }
    let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let client = crate::click::address::client_ip(peer, forwarded, &app.config.trusted_proxies);
    if let Some(ip) = client
        && !app.track_limiter.allow(ip)
    {
        metrics::counter!("linkhit_track_refused_total", "reason" => "rate").increment(1);
        return Err(ApiError::too_many_requests("too many conversions from this address; retry in a minute"));
    }
    let get = req.method() == Method::GET;
    let (click_id, ask) = if get {
        let query = req.uri().query().unwrap_or_default().to_owned();
        let mut fields = serde_json::Map::new();
        // A pixel URL may carry other parameters (utm_…): only these four are read.
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if matches!(k.as_ref(), "click_id" | "name" | "value" | "currency") {
                fields.insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
        (fields.get("click_id").cloned().unwrap_or(Value::Null), parse_ask(&fields)?)
    } else {
        let input: TrackInput = parse_json(&read_body(req, TRACK_BODY_LIMIT).await?)?;
        let fields: serde_json::Map<String, Value> = [
            ("name".to_owned(), input.name),
            ("value".to_owned(), input.value),
            ("currency".to_owned(), input.currency),
        ]
        .into_iter()
        .collect();
        (input.click_id, parse_ask(&fields)?)
    };
    let Value::String(click_id) = click_id else {
        return Err(ApiError::bad_request("INVALID_CLICK_ID", "click_id is required: the lh_click of the redirect"));
    };
    let link = link_of_click(app, &click_id).await.inspect_err(|_| {
        metrics::counter!("linkhit_track_refused_total", "reason" => "click_id").increment(1);
    })?;
    let out = count(app, &link, Some(&click_id), ask, None, "track").await?;
    match (get, out.recorded) {
        (true, _) => super::empty(StatusCode::NO_CONTENT),
        (false, Recorded::New) => {
            json(StatusCode::ACCEPTED, &json!({ "accepted": true, "event_id": out.conversion.event_id }))
        }
        (false, Recorded::Duplicate { .. } | Recorded::Refused) => {
            json(StatusCode::OK, &json!({ "duplicate": true, "event_id": out.conversion.event_id }))
        }
    }
}

fn parse_ask(fields: &serde_json::Map<String, Value>) -> Result<Ask, ApiError> {
    let get = |k: &str| fields.get(k).cloned().unwrap_or(Value::Null);
    Ok(Ask {
        name: parse_name(&get("name"))?,
        value: parse_value(&get("value"))?,
        currency: parse_currency(&get("currency"))?,
        at: Utc::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_exact_decimals_within_bounds() {
        assert_eq!(parse_value(&json!(49.90)).unwrap(), Some(Decimal::from_str("49.9").unwrap()));
        assert_eq!(parse_value(&json!("0.1")).unwrap(), Some(Decimal::from_str("0.1").unwrap()));
        assert_eq!(parse_value(&json!(1e3)).unwrap(), Some(Decimal::from(1000)));
        assert_eq!(parse_value(&Value::Null).unwrap(), None);
        for bad in [json!(-1), json!(1e13), json!("0.0000001"), json!("abc"), json!(true), json!([1])] {
            assert_eq!(parse_value(&bad).unwrap_err().code, "INVALID_VALUE", "{bad}");
        }
    }

    #[test]
    fn currencies_and_names() {
        assert_eq!(parse_currency(&Value::Null).unwrap(), "USD");
        assert_eq!(parse_currency(&json!("AUD")).unwrap(), "AUD");
        for bad in [json!("usd"), json!("US"), json!("USDT"), json!(5)] {
            assert_eq!(parse_currency(&bad).unwrap_err().code, "INVALID_CURRENCY");
        }
        assert!(parse_name(&json!("purchase")).is_ok());
        for bad in [json!(""), json!("a\nb"), json!("x".repeat(65)), Value::Null] {
            assert_eq!(parse_name(&bad).unwrap_err().code, "INVALID_NAME");
        }
    }

    #[test]
    fn one_conversion_per_click_and_name() {
        assert_eq!(dedup(&["click", "c.1", "purchase"]), dedup(&["click", "c.1", "purchase"]));
        assert_ne!(dedup(&["click", "c.1", "purchase"]), dedup(&["click", "c.1", "signup"]));
        assert_ne!(dedup(&["click", "c.1p", "urchase"]), dedup(&["click", "c.1", "purchase"]), "parts are delimited");
    }
}
