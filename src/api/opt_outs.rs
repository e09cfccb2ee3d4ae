//! Opt-outs by SMS: the platform passes on an inbound "STOP" (`POST /api/v1/opt-outs`, `opt_outs.write`),
//! reads one (`GET /api/v1/opt-outs/{recipient}`, `stats.read`) or opts a recipient back in
//! (`DELETE /api/v1/opt-outs/{recipient}`, `opt_outs.write`). The list is `GET /api/v1/opt-outs`
//! (`stats::opt_outs`).
//!
//! A new opt-out fires the `opt_out` event (Burst `OPT_OUT` with `source: "SMS_INBOUND"`); a recipient
//! already opted out answers 200 and fires nothing; after an opt-in the next opt-out fires again. The
//! event is queued before the answer: the opt-out is recorded as pending and settled once the outbox
//! took its event; if the outbox cannot take it the call answers 503 and the platform's retry announces
//! it (never recorded and silent).

use chrono::Utc;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::link_input::parse_recipient;
use super::{ApiResult, authorize, empty, json, opt_out_view, parse_json, read_body};
use crate::app::App;
use crate::click::emit::Event;
use crate::error::ApiError;
use crate::model::{LinkRef, OPT_OUT_SMS, OptOut, Permission};
use crate::validate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inbound {
    #[serde(default)]
    recipient: Value,
    #[serde(default)]
    keyword: Value,
    #[serde(default)]
    broadcast_id: Value,
    #[serde(default)]
    message_id: Value,
    /// The number the STOP was sent to.
    #[serde(default)]
    sender: Value,
    #[serde(default)]
    at: Value,
}

fn text(raw: &Value, field: &str, code: &'static str, max: usize) -> Result<Option<String>, ApiError> {
    match raw {
        Value::Null => Ok(None),
        Value::String(s) if validate::is_reasonable_text(s, max) => Ok(Some(s.clone())),
        _ => Err(ApiError::bad_request(code, format!("{field} must be 1-{max} characters without control characters"))),
    }
}

/// `POST /api/v1/opt-outs`: an inbound STOP.
pub async fn record(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::OptOutsWrite).await?;
    let input: Inbound = parse_json(&read_body(req, app.config.max_body_bytes).await?)?;
    let recipient = parse_recipient(&input.recipient)?
        .ok_or_else(|| ApiError::bad_request("INVALID_RECIPIENT", "recipient is required"))?;
    let keyword = text(&input.keyword, "keyword", "INVALID_KEYWORD", 64)?;
    let broadcast_id = text(&input.broadcast_id, "broadcast_id", "INVALID_BROADCAST_ID", 128)?;
    let message_id = text(&input.message_id, "message_id", "INVALID_MESSAGE_ID", 256)?;
    let sender = text(&input.sender, "sender", "INVALID_SENDER", 256)?;
    let now = Utc::now();
    let at = match &input.at {
        Value::Null => now,
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| *t <= now + chrono::Duration::minutes(5))
            .ok_or_else(|| ApiError::bad_request("INVALID_AT", "at must be an RFC 3339 time, not in the future"))?,
        _ => return Err(ApiError::bad_request("INVALID_AT", "at must be an RFC 3339 time")),
    };
    let opt_out = OptOut {
        recipient: recipient.clone(),
        at,
        source: OPT_OUT_SMS.to_owned(),
        code: String::new(),
        broadcast_id: broadcast_id.clone(),
        keyword,
        message_id: message_id.clone(),
        sender,
        pending: true,
    };
    // The message this STOP answers, for the payload's message facts: by message id, else by
    // (broadcast, recipient). Read before anything is recorded.
    let reference = match (&message_id, &broadcast_id) {
        (Some(m), _) => Some(LinkRef::MessageId(m.clone())),
        (None, Some(b)) => Some(LinkRef::Recipient { broadcast_id: b.clone(), recipient: recipient.clone() }),
        _ => None,
    };
    let code = match reference {
        Some(r) => app.store.find_links(&caller.workspace_id, &[r]).await?.pop().flatten(),
        None => None,
    };
    // Recorded as pending (its event not queued yet) and settled once the outbox took the event. A
    // call that fails half-way leaves it pending; the platform's retry finds it pending and announces it
    // (with the same event id): an opt-out is never recorded and silent.
    let new = app.store.record_opt_out(&opt_out, &caller.workspace_id).await?;
    let current =
        if new { Some(opt_out.clone()) } else { app.store.get_opt_out(&caller.workspace_id, &recipient).await? };
    let Some(current) = current else {
        // Opted back in between the two calls: nothing to announce.
        return json(StatusCode::OK, &opt_out_view(&opt_out));
    };
    if current.pending {
        let id = event_id(&caller.workspace_id, &current);
        let event =
            Event::InboundOptOut { id, workspace_id: caller.workspace_id.clone(), opt_out: current.clone(), code };
        if let Err(err) = app.events.emit(vec![event]).await {
            tracing::error!(error = %err, "an inbound opt-out is recorded; its event could not be queued yet");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "OUTBOX_UNAVAILABLE",
                "the opt-out is recorded; its webhook event could not be queued: retry the same request",
            ));
        }
        app.store.settle_opt_out(&caller.workspace_id, &current).await?;
    }
    let outcome = if new { "new" } else { "already" };
    metrics::counter!("linkhit_opt_outs_total", "source" => OPT_OUT_SMS, "outcome" => outcome).increment(1);
    let settled = OptOut { pending: false, ..current };
    json(if new { StatusCode::CREATED } else { StatusCode::OK }, &opt_out_view(&settled))
}

/// The event id of an inbound opt-out: the same for the same opt-out, distinct after an opt-in.
fn event_id(workspace_id: &str, o: &OptOut) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c69_6e6b_6869_7400_8000_0000_0000_0002);
    let name = format!("{workspace_id}/{}/{}", o.recipient, o.at.timestamp_millis());
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

fn path_recipient(raw: &str) -> Result<String, ApiError> {
    parse_recipient(&Value::String(raw.to_owned()))?
        .ok_or_else(|| ApiError::bad_request("INVALID_RECIPIENT", "recipient is required"))
}

/// `GET /api/v1/opt-outs/{recipient}`
pub async fn get(app: &App, req: Request<Incoming>, recipient: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::StatsRead).await?;
    let recipient = path_recipient(recipient)?;
    match app.store.get_opt_out(&caller.workspace_id, &recipient).await? {
        Some(o) => json(StatusCode::OK, &opt_out_view(&o)),
        None => Err(ApiError::not_found("OPT_OUT_NOT_FOUND", "this recipient has not opted out")),
    }
}

/// `DELETE /api/v1/opt-outs/{recipient}`: the recipient opted back in (204 whether or not there was an
/// opt-out: the state asked for holds).
pub async fn delete(app: &App, req: Request<Incoming>, recipient: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::OptOutsWrite).await?;
    let recipient = path_recipient(recipient)?;
    if app.store.delete_opt_out(&caller.workspace_id, &recipient).await? {
        metrics::counter!("linkhit_opt_ins_total").increment(1);
        tracing::info!(workspace_id = %caller.workspace_id, "a recipient opted back in");
    }
    empty(StatusCode::NO_CONTENT)
}
