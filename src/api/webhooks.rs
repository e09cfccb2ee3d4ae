//! Webhook routes: configure (`webhooks.write`), read (`webhooks.read`), send a test event, read the
//! delivery log.

use chrono::Utc;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};

use serde::de::IgnoredAny;

use super::{ApiResult, authorize, json, read_body, refuse_unknown_fields};
use crate::app::App;
use crate::error::ApiError;
use crate::model::{DeliveryLog, EventKind, Job, LogOutcome};
use crate::model::{Permission, rfc3339, rfc3339_secs};
use crate::webhook::payload::{self, Facts};
use crate::webhook::settings::apply_update;

/// The fields `PUT /api/v1/webhooks` knows. Parsed only to refuse any other (`UNKNOWN_FIELD`: a
/// `delivery_url` or `subAccountId` must not answer 200 with nothing configured); the values are
/// validated by `settings::apply_update`, each with its own code.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SettingsFields {
    click_url: Option<IgnoredAny>,
    opt_out_url: Option<IgnoredAny>,
    format: Option<IgnoredAny>,
    click_fields: Option<IgnoredAny>,
    unique_clicks_only: Option<IgnoredAny>,
    signing_secret: Option<IgnoredAny>,
    clear_signing_secret: Option<IgnoredAny>,
    http_authorization: Option<IgnoredAny>,
    oauth: Option<IgnoredAny>,
    enabled: Option<IgnoredAny>,
    hits: Option<IgnoredAny>,
    conversion_url: Option<IgnoredAny>,
    conversion_fields: Option<IgnoredAny>,
    recipient_format: Option<IgnoredAny>,
}

/// The fields of `oauth`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct OAuthFields {
    url: Option<IgnoredAny>,
    client_id: Option<IgnoredAny>,
    client_secret: Option<IgnoredAny>,
    credentials_location: Option<IgnoredAny>,
    scope: Option<IgnoredAny>,
}

/// `POST /api/v1/webhooks/test`'s body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TestFields {
    r#type: Option<IgnoredAny>,
}

/// `PUT /api/v1/webhooks`: partial update; answers the stored configuration, secrets masked.
pub async fn put(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::WebhooksWrite).await?;
    let query = req.uri().query().unwrap_or_default().to_owned();
    let bytes = read_body(req, app.config.max_body_bytes).await?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_body(format!("request body is not valid JSON: {e}")))?;
    if body.is_object() {
        refuse_unknown_fields::<SettingsFields>(&body)?;
        if let Some(oauth) = body.get("oauth").filter(|o| o.is_object()) {
            refuse_unknown_fields::<OAuthFields>(oauth)?;
        }
    }
    let sub = sub_account(&query)?;
    let current = app.store.get_webhook_settings(&caller.workspace_id, sub.as_deref()).await?.unwrap_or_default();
    let mut next = apply_update(&current, &body, app.config.webhook_allow_private)
        .map_err(|e| ApiError::bad_request(e.code, e.message))?;
    next.updated_at = Some(Utc::now());
    next.sub_account_id = sub.clone();
    app.store.put_webhook_settings(&caller.workspace_id, sub.as_deref(), &next).await?;
    app.webhooks.settings.invalidate(&caller.workspace_id, sub.as_deref());
    tracing::info!(workspace_id = %caller.workspace_id, sub_account_id = ?sub, "webhook settings updated");
    json(StatusCode::OK, &next.masked())
}

/// `?sub_account_id=...`: a sub-account's configuration (absent: the workspace-wide one, the vendors'
/// `"*"`, which is also what `*` names).
/// The webhook routes take no other query parameter (`limit` on the lists): a typo such as
/// `?subAccountId=` must not silently change the workspace-wide configuration.
fn sub_account(query: &str) -> Result<Option<String>, ApiError> {
    let mut sub = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "sub_account_id" if value == "*" => sub = None,
            "sub_account_id" => {
                if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ApiError::bad_request(
                        "INVALID_SUB_ACCOUNT_ID",
                        "sub_account_id must be 1-64 visible ASCII characters (no spaces)",
                    ));
                }
                sub = Some(value.into_owned());
            }
            "limit" => {}
            other => {
                return Err(ApiError::bad_request(
                    "UNKNOWN_PARAMETER",
                    format!("unknown query parameter `{other}`: this route takes sub_account_id (and limit on lists)"),
                ));
            }
        }
    }
    Ok(sub)
}

/// `GET /api/v1/webhooks`: the configuration; for a sub-account without one of its own, the
/// workspace-wide configuration it inherits (`"inherited": true`).
pub async fn get(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::WebhooksRead).await?;
    let sub = sub_account(req.uri().query().unwrap_or_default())?;
    let own = match &sub {
        Some(sub) => app.store.get_webhook_settings(&caller.workspace_id, Some(sub)).await?,
        None => None,
    };
    let mut view = match own {
        Some(settings) => settings.masked(),
        None => {
            let mut view =
                app.store.get_webhook_settings(&caller.workspace_id, None).await?.unwrap_or_default().masked();
            if sub.is_some() {
                view["inherited"] = Value::Bool(true);
            }
            view
        }
    };
    view["sub_account_id"] = json!(sub);
    json(StatusCode::OK, &view)
}

/// `POST /api/v1/webhooks/test` `{"type": "click" | "opt_out"}`: one sample event, sent now, logged,
/// answered with the attempt's outcome.
pub async fn test(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::WebhooksWrite).await?;
    let sub = sub_account(req.uri().query().unwrap_or_default())?;
    let bytes = read_body(req, app.config.max_body_bytes).await?;
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid_body(format!("request body is not valid JSON: {e}")))?
    };
    if !body.is_object() {
        return Err(ApiError::invalid_body("request body must be a JSON object"));
    }
    refuse_unknown_fields::<TestFields>(&body)?;
    let kind = match body.get("type") {
        None | Some(Value::Null) => EventKind::Click,
        Some(Value::String(t)) if t == "click" => EventKind::Click,
        Some(Value::String(t)) if t == "opt_out" => EventKind::OptOut,
        Some(Value::String(t)) if t == "conversion" => EventKind::Conversion,
        Some(_) => {
            return Err(ApiError::bad_request("INVALID_TYPE", "type must be \"click\", \"opt_out\" or \"conversion\""));
        }
    };
    let settings = app.webhooks.settings.get_for(&caller.workspace_id, sub.as_deref()).await?;
    let url = match kind {
        EventKind::Click => settings.click_url.clone(),
        EventKind::OptOut => settings.opt_out_url.clone(),
        EventKind::Conversion => settings.conversion_url.clone(),
    }
    .ok_or_else(|| {
        ApiError::bad_request("WEBHOOK_NOT_CONFIGURED", format!("no {}_url is configured", kind.as_str()))
    })?;
    let event_id = uuid::Uuid::new_v4().to_string();
    let occurred_at = rfc3339_secs(Utc::now());
    let short_url = app.short_url("SAMPLE00");
    let facts = Facts {
        event_id: &event_id,
        occurred_at: &occurred_at,
        code: "SAMPLE00",
        short_url: &short_url,
        target_url: Some("https://example.com/sample"),
        broadcast_id: Some("sample_broadcast"),
        recipient: Some(match settings.recipient_format {
            crate::model::RecipientFormat::E164 => "+15555550100",
            crate::model::RecipientFormat::Digits => "15555550100",
        }),
        message_id: Some("sample-message-id"),
        sender: Some("SAMPLE"),
        message_ref: Some("sample-ref"),
        user_agent: Some(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        ),
        ip: Some("203.0.113.0"),
        hits: 1,
        first_click: true,
        workspace_id: &caller.workspace_id,
        source: crate::model::OPT_OUT_LINK,
        message_type: "SMS",
        message: Some("Fall sale: 20% off today https://example.com/sample"),
        conversion: (kind == EventKind::Conversion).then_some(payload::ConversionFacts {
            name: "purchase",
            value: Some(49.9),
            currency: "USD",
            click_id: Some("SAMPLE00.AAAAAAAAAAAAAAAAAAAAAAAA"),
        }),
        ..Facts::default()
    };
    let fields = if kind == EventKind::Conversion {
        settings.effective_conversion_fields()
    } else {
        settings.effective_click_fields()
    };
    let body = payload::render(settings.format, &fields, kind, &facts);
    let job = Job {
        event_id: event_id.clone(),
        workspace_id: caller.workspace_id.clone(),
        kind,
        payload: body.to_string(),
        attempt: 0,
        created_at: Utc::now(),
        sub_account_id: None,
        code: None,
        url: url.clone(),
        due_at: None,
    };
    let job = Job { sub_account_id: sub.clone(), ..job };
    let attempt = app.webhooks.deliverer.attempt(&settings, &caller.workspace_id, &url, &job).await;
    let entry = DeliveryLog {
        event_id: event_id.clone(),
        kind,
        url: url.clone(),
        attempt: 1,
        payload: job.payload.clone(),
        response_code: attempt.status(),
        response_time_ms: attempt.elapsed_ms,
        error: attempt.error(),
        at: Utc::now(),
        outcome: LogOutcome::Test,
        next_attempt_at: None,
        sub_account_id: sub.clone(),
    };
    app.store.append_webhook_logs(&caller.workspace_id, &[entry], app.config.webhook_log_limit).await?;
    json(
        StatusCode::OK,
        &json!({
            "event_id": event_id,
            "type": kind.as_str(),
            "url": url,
            "success": attempt.succeeded(),
            "response_code": attempt.status(),
            "response_time_ms": attempt.elapsed_ms,
            "error": attempt.error(),
            "payload": body,
        }),
    )
}

/// `GET /api/v1/webhooks/logs?limit=10`: one entry per attempt, newest first.
pub async fn logs(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::WebhooksRead).await?;
    let limit = super::limit(&req, 10, app.config.webhook_log_limit.max(1))?;
    let sub = sub_account(req.uri().query().unwrap_or_default())?;
    // A sub-account's entries are picked from the whole (capped) log.
    let fetch = if sub.is_some() { app.config.webhook_log_limit.max(1) } else { limit };
    let logs = app.store.webhook_logs(&caller.workspace_id, fetch).await?;
    let logs: Vec<Value> = logs
        .iter()
        .filter(|l| sub.is_none() || l.sub_account_id == sub)
        .take(limit)
        .map(|l| {
            json!({
                "event_id": l.event_id,
                "type": l.kind.as_str(),
                "url": l.url,
                "attempt": l.attempt,
                "payload": serde_json::from_str::<Value>(&l.payload).unwrap_or_else(|_| Value::String(l.payload.clone())),
                "response_code": l.response_code,
                "response_time_ms": l.response_time_ms,
                "error": l.error,
                "at": rfc3339(l.at),
                "outcome": l.outcome,
                "next_attempt_at": l.next_attempt_at.map(rfc3339),
                "sub_account_id": l.sub_account_id,
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "logs": logs }))
}

/// `GET /api/v1/webhooks/dead-letters?limit=100`: events that will not be delivered without a replay,
/// newest first, with why (`retries_exhausted`, `link_budget`, `backlog_full`).
pub async fn dead_letters(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::WebhooksRead).await?;
    let limit = super::limit(&req, 100, 10_000)?;
    let sub = sub_account(req.uri().query().unwrap_or_default())?;
    let fetch = if sub.is_some() { 10_000 } else { limit };
    let letters = app.webhooks.queue.dead_letters(&caller.workspace_id, fetch).await.map_err(outbox_error)?;
    let backlog = app.webhooks.queue.backlog(&caller.workspace_id).await.map_err(outbox_error)?;
    let shown: Vec<Value> = letters
        .iter()
        .filter(|d| sub.is_none() || d.job.sub_account_id == sub)
        .take(limit)
        .map(|d| {
            json!({
                "event_id": d.job.event_id,
                "type": d.job.kind.as_str(),
                "url": d.job.url,
                "reason": d.reason.as_str(),
                "at": chrono::DateTime::from_timestamp_millis(d.at_ms).map(rfc3339),
                "attempts": d.job.attempt,
                "sub_account_id": d.job.sub_account_id,
                "payload": serde_json::from_str::<Value>(&d.job.payload).unwrap_or(Value::String(d.job.payload.clone())),
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "dead_letters": shown, "backlog": backlog }))
}

/// `POST /api/v1/webhooks/dead-letters/replay` `{"since": "<RFC 3339>"}` (optional): queues those dead
/// letters again with their original event ids → 202 `{"replayed": n}`.
pub async fn replay_dead_letters(app: &App, req: Request<Incoming>) -> ApiResult {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Replay {
        #[serde(default)]
        since: Option<Value>,
    }
    let caller = authorize(app, req.headers(), Permission::WebhooksWrite).await?;
    let sub = sub_account(req.uri().query().unwrap_or_default())?;
    let bytes = read_body(req, app.config.max_body_bytes).await?;
    let body: Replay =
        if bytes.iter().all(u8::is_ascii_whitespace) { Replay { since: None } } else { super::parse_json(&bytes)? };
    let since = match body.since {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            chrono::DateTime::parse_from_rfc3339(&s)
                .map_err(|_| ApiError::bad_request("INVALID_SINCE", "since must be an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
        Some(_) => return Err(ApiError::bad_request("INVALID_SINCE", "since must be an RFC 3339 time")),
    };
    let replayed = app
        .webhooks
        .queue
        .replay_dead_letters(&caller.workspace_id, since, sub.as_deref())
        .await
        .map_err(outbox_error)?;
    tracing::info!(workspace_id = %caller.workspace_id, replayed, "dead letters replayed");
    json(StatusCode::ACCEPTED, &json!({ "replayed": replayed }))
}

fn outbox_error(err: crate::webhook::queue::QueueError) -> ApiError {
    tracing::warn!(error = %err, "webhook outbox unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "STORE_UNAVAILABLE",
        "the webhook outbox is unavailable; retry shortly",
    )
}
