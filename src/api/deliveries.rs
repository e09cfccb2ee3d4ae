//! `POST /api/v1/delivery-reports` (`links.write`): the platform's delivery reports. A report names its
//! link by `message_id` or by (`broadcast_id`, `recipient`); its time feeds the classifier (a hit within
//! seconds of delivery is a link preview) and `delivered` reports count in the broadcast's stats.

use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::link_input::parse_attr;
use super::{ApiResult, authorize, json, parse_json, read_body};
use crate::app::App;
use crate::error::ApiError;
use crate::model::{Delivery, LinkRef, Permission};

/// Reports per request.
pub const MAX_REPORTS: usize = 10_000;

/// The statuses a report may carry.
pub const STATUSES: [&str; 6] = ["delivered", "failed", "expired", "rejected", "undelivered", "unknown"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    reports: Option<Vec<Report>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    #[serde(default)]
    message_id: Value,
    #[serde(default)]
    broadcast_id: Value,
    #[serde(default)]
    recipient: Value,
    #[serde(default)]
    status: Value,
    #[serde(default)]
    at: Value,
}

/// `POST /api/v1/delivery-reports` → 202 `{"accepted": n, "not_found": m}`.
pub async fn record(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::LinksWrite).await?;
    let body: Body = parse_json(&read_body(req, app.config.max_body_bytes).await?)?;
    let reports = body.reports.unwrap_or_default();
    if reports.is_empty() || reports.len() > MAX_REPORTS {
        return Err(ApiError::bad_request(
            "INVALID_REPORTS",
            format!("reports must be a list of 1 to {MAX_REPORTS} delivery reports"),
        ));
    }
    let now = Utc::now();
    let mut refs = Vec::with_capacity(reports.len());
    let mut parsed = Vec::with_capacity(reports.len());
    for (i, r) in reports.iter().enumerate() {
        let bad = |code: &'static str, what: &str| ApiError::bad_request(code, format!("reports[{i}]: {what}"));
        // The same rule as on links: text or an integer, 1-256 characters without control characters.
        let at_report = |e: ApiError| ApiError { message: format!("reports[{i}]: {}", e.message), ..e };
        let message_id = parse_attr(&r.message_id, "message_id", "INVALID_MESSAGE_ID", 256).map_err(at_report)?;
        let broadcast_id =
            parse_attr(&r.broadcast_id, "broadcast_id", "INVALID_BROADCAST_ID", 256).map_err(at_report)?;
        // A recipient, when given, is checked whichever field names the link (stored as E.164, as links are).
        let recipient = match &r.recipient {
            Value::Null => None,
            Value::String(raw) => Some(
                crate::validate::normalize_recipient(raw)
                    .ok_or_else(|| bad("INVALID_RECIPIENT", "recipient must be an E.164 phone number"))?,
            ),
            _ => return Err(bad("INVALID_RECIPIENT", "recipient must be an E.164 phone number")),
        };
        let link = match (message_id, broadcast_id, recipient) {
            (Some(m), _, _) => LinkRef::MessageId(m),
            (None, Some(b), Some(recipient)) => LinkRef::Recipient { broadcast_id: b, recipient },
            (None, Some(_), None) => return Err(bad("INVALID_RECIPIENT", "recipient must be an E.164 phone number")),
            _ => return Err(bad("INVALID_REPORT", "name the link by message_id, or by broadcast_id and recipient")),
        };
        let status = match &r.status {
            Value::String(s) if STATUSES.contains(&s.as_str()) => s.clone(),
            _ => return Err(bad("INVALID_STATUS", &format!("status must be one of {}", STATUSES.join(", ")))),
        };
        let at = match &r.at {
            Value::Null => now,
            Value::String(s) => DateTime::parse_from_rfc3339(s)
                .map_err(|_| bad("INVALID_AT", "at must be an RFC 3339 timestamp"))?
                .with_timezone(&Utc),
            _ => return Err(bad("INVALID_AT", "at must be an RFC 3339 timestamp")),
        };
        refs.push(link);
        parsed.push((status, at));
    }
    let codes = app.store.find_links(&caller.workspace_id, &refs).await?;
    let deliveries: Vec<Delivery> = codes
        .iter()
        .zip(parsed)
        .filter_map(|(code, (status, at))| code.as_ref().map(|code| Delivery { code: code.clone(), status, at }))
        .collect();
    let not_found = reports.len() - deliveries.len();
    let updated = app.store.record_deliveries(&deliveries).await?;
    for link in &updated {
        app.resolver.cache.invalidate(&link.code);
    }
    metrics::counter!("linkhit_delivery_reports_total", "outcome" => "accepted").increment(deliveries.len() as u64);
    metrics::counter!("linkhit_delivery_reports_total", "outcome" => "not_found").increment(not_found as u64);
    json(StatusCode::ACCEPTED, &json!({ "accepted": deliveries.len(), "not_found": not_found }))
}
