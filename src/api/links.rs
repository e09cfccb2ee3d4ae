//! Link routes: create one, create one per recipient of a broadcast, shorten an SMS text, read, disable.

use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiResult, authorize, empty, json, owned_link, parse_json, read_body};
use crate::app::App;
use crate::error::ApiError;
use crate::model::{Link, LinkKind, LinkStats, Permission, rfc3339};
use crate::text::{self, Piece};
use crate::validate;

/// Longest `broadcast_id`.
const MAX_ID_LEN: usize = 128;
/// Longest `message_id`, `sender`, `message_ref`.
const MAX_ATTR_LEN: usize = 256;
/// Longest SMS text accepted by `messages/shorten` (a 10-part concatenated SMS is ~1,600 characters).
const MAX_TEXT_LEN: usize = 10_000;

/// The fields a link shares whichever route creates it. Every field is taken as raw JSON so that a
/// wrong type gets the field's own error code, not a generic one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkInput {
    #[serde(default)]
    target_url: Value,
    #[serde(default)]
    broadcast_id: Value,
    #[serde(default)]
    recipient: Value,
    #[serde(default)]
    message_id: Value,
    #[serde(default)]
    sender: Value,
    #[serde(default)]
    message_ref: Value,
    #[serde(default)]
    kind: Value,
    #[serde(default)]
    expires_at: Value,
    #[serde(default)]
    sent_at: Value,
}

/// A validated link, waiting for its code.
#[derive(Debug, Clone)]
struct Draft {
    kind: LinkKind,
    target_url: Option<String>,
    broadcast_id: Option<String>,
    recipient: Option<String>,
    message_id: Option<String>,
    sender: Option<String>,
    message_ref: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
}

impl Draft {
    fn into_link(self, app: &App, workspace_id: &str, now: DateTime<Utc>) -> Link {
        Link {
            code: app.resolver.codes().generate(),
            workspace_id: workspace_id.to_owned(),
            kind: self.kind,
            target_url: self.target_url,
            broadcast_id: self.broadcast_id,
            recipient: self.recipient,
            message_id: self.message_id,
            sender: self.sender,
            message_ref: self.message_ref,
            created_at: now,
            sent_at: self.sent_at,
            expires_at: self.expires_at,
            disabled_at: None,
            delivered_at: None,
            delivery_status: None,
        }
    }
}

fn parse_kind(raw: &Value) -> Result<LinkKind, ApiError> {
    match raw {
        Value::Null => Ok(LinkKind::Redirect),
        Value::String(s) if s == "redirect" => Ok(LinkKind::Redirect),
        Value::String(s) if s == "opt_out" => Ok(LinkKind::OptOut),
        _ => Err(ApiError::bad_request("INVALID_KIND", "kind must be \"redirect\" or \"opt_out\"")),
    }
}

fn parse_target(raw: &Value, required: bool) -> Result<Option<String>, ApiError> {
    let err = |e: validate::TargetUrlError| ApiError::bad_request("INVALID_TARGET_URL", e.to_string());
    match raw {
        Value::Null if required => Err(err(validate::TargetUrlError::Missing)),
        Value::Null => Ok(None),
        Value::String(s) => validate::target_url(s).map(Some).map_err(err),
        _ => Err(err(validate::TargetUrlError::NotAString)),
    }
}

fn parse_recipient(raw: &Value) -> Result<Option<String>, ApiError> {
    match raw {
        Value::Null => Ok(None),
        Value::String(s) if validate::is_e164(s) => Ok(Some(s.clone())),
        _ => Err(ApiError::bad_request(
            "INVALID_RECIPIENT",
            format!("recipient must be an E.164 phone number such as +12025550293, got {raw}"),
        )),
    }
}

/// An optional text attribute; integers are accepted and kept as their decimal text (senders and
/// message ids are often numeric in SMS APIs).
fn parse_attr(raw: &Value, field: &str, code: &'static str, max: usize) -> Result<Option<String>, ApiError> {
    let text = match raw {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => {
            return Err(ApiError::bad_request(code, format!("{field} must be a string")));
        }
    };
    if validate::is_reasonable_text(&text, max) {
        Ok(Some(text))
    } else {
        Err(ApiError::bad_request(code, format!("{field} must be 1-{max} characters without control characters")))
    }
}

/// `sent_at`: when the SMS went out; up to a day ahead is accepted (clock skew, scheduled sends).
fn parse_sent_at(raw: &Value, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let err = || ApiError::bad_request("INVALID_SENT_AT", "sent_at must be an RFC 3339 timestamp, at most a day ahead");
    match raw {
        Value::Null => Ok(None),
        Value::String(s) => {
            let at = DateTime::parse_from_rfc3339(s).map_err(|_| err())?.with_timezone(&Utc);
            if at > now + chrono::Duration::days(1) { Err(err()) } else { Ok(Some(at)) }
        }
        _ => Err(err()),
    }
}

fn parse_expires(raw: &Value, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let err = || ApiError::bad_request("INVALID_EXPIRES_AT", "expires_at must be a future RFC 3339 timestamp");
    match raw {
        Value::Null => Ok(None),
        Value::String(s) => {
            let at = DateTime::parse_from_rfc3339(s).map_err(|_| err())?.with_timezone(&Utc);
            if at <= now { Err(err()) } else { Ok(Some(at)) }
        }
        _ => Err(err()),
    }
}

impl LinkInput {
    fn validate(&self, now: DateTime<Utc>) -> Result<Draft, ApiError> {
        let kind = parse_kind(&self.kind)?;
        Ok(Draft {
            kind,
            target_url: parse_target(&self.target_url, kind == LinkKind::Redirect)?,
            broadcast_id: parse_attr(&self.broadcast_id, "broadcast_id", "INVALID_BROADCAST_ID", MAX_ID_LEN)?,
            recipient: parse_recipient(&self.recipient)?,
            message_id: parse_attr(&self.message_id, "message_id", "INVALID_MESSAGE_ID", MAX_ATTR_LEN)?,
            sender: parse_attr(&self.sender, "sender", "INVALID_SENDER", MAX_ATTR_LEN)?,
            message_ref: parse_attr(&self.message_ref, "message_ref", "INVALID_MESSAGE_REF", MAX_ATTR_LEN)?,
            expires_at: parse_expires(&self.expires_at, now)?,
            sent_at: parse_sent_at(&self.sent_at, now)?,
        })
    }
}

/// A link as the API shows it.
#[derive(Serialize)]
struct LinkView<'a> {
    code: &'a str,
    short_url: String,
    kind: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    workspace_id: &'a str,
    broadcast_id: Option<&'a str>,
    recipient: Option<&'a str>,
    message_id: Option<&'a str>,
    sender: Option<&'a str>,
    message_ref: Option<&'a str>,
    created_at: String,
    sent_at: String,
    expires_at: Option<String>,
    disabled_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_status: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    counters: Option<super::LinkStatsView>,
}

fn view<'a>(app: &App, link: &'a Link, counters: Option<&LinkStats>) -> LinkView<'a> {
    LinkView {
        code: &link.code,
        short_url: app.short_url(&link.code),
        kind: link.kind.as_str(),
        status: link.state_at(Utc::now()).as_str(),
        target_url: link.target_url.as_deref(),
        workspace_id: &link.workspace_id,
        broadcast_id: link.broadcast_id.as_deref(),
        recipient: link.recipient.as_deref(),
        message_id: link.message_id.as_deref(),
        sender: link.sender.as_deref(),
        message_ref: link.message_ref.as_deref(),
        created_at: rfc3339(link.created_at),
        sent_at: rfc3339(link.sent()),
        expires_at: link.expires_at.map(rfc3339),
        disabled_at: link.disabled_at.map(rfc3339),
        delivered_at: link.delivered_at.map(rfc3339),
        delivery_status: link.delivery_status.as_deref(),
        counters: counters.map(super::LinkStatsView::from),
    }
}

/// Stores new links with unique codes and tells this instance's cache about them.
async fn store_links(app: &App, links: &mut [Link]) -> Result<(), ApiError> {
    if !app.resolver.codes().ready() {
        // The shared code key has not been read from the store yet (it was unreachable at start-up).
        return Err(crate::store::StoreError::Unavailable("code key not loaded yet".into()).into());
    }
    crate::store::insert_unique(app.store.as_ref(), links, app.resolver.codes()).await?;
    for link in links.iter() {
        app.resolver.cache.created(&link.code);
    }
    metrics::counter!("linkhit_links_created_total").increment(links.len() as u64);
    Ok(())
}

/// `POST /api/v1/links`
pub async fn create(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::LinksWrite).await?;
    let input: LinkInput = parse_json(&read_body(req, app.config.max_body_bytes).await?)?;
    let now = Utc::now();
    let mut links = [input.validate(now)?.into_link(app, &caller.workspace_id, now)];
    store_links(app, &mut links).await?;
    json(StatusCode::CREATED, &view(app, &links[0], None))
}

/// Spelled out rather than `#[serde(flatten)]`ing `LinkInput`: flatten would buffer all 100,000+
/// recipients as untyped content before parsing them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastInput {
    #[serde(default)]
    target_url: Value,
    #[serde(default)]
    message_id: Value,
    #[serde(default)]
    sender: Value,
    #[serde(default)]
    message_ref: Value,
    #[serde(default)]
    kind: Value,
    #[serde(default)]
    expires_at: Value,
    #[serde(default)]
    sent_at: Value,
    recipients: Option<Vec<RecipientInput>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientInput {
    #[serde(default)]
    recipient: Value,
    #[serde(default)]
    message_id: Value,
    #[serde(default)]
    sender: Value,
    #[serde(default)]
    message_ref: Value,
    #[serde(default)]
    sent_at: Value,
}

#[derive(Serialize)]
struct BroadcastLinkView<'a> {
    recipient: Option<&'a str>,
    code: &'a str,
    short_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
}

/// `POST /api/v1/broadcasts/{broadcast_id}/links`: one distinct code per recipient, in request order.
pub async fn create_broadcast(app: &App, req: Request<Incoming>, broadcast_id: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::LinksWrite).await?;
    let broadcast_id =
        parse_attr(&Value::String(broadcast_id.to_owned()), "broadcast_id", "INVALID_BROADCAST_ID", MAX_ID_LEN)?
            .unwrap_or_default();
    let body = read_body(req, app.config.max_bulk_body_bytes).await?;
    let mut input: BroadcastInput = parse_json(&body)?;
    drop(body);
    let recipients = input.recipients.take().unwrap_or_default();
    if recipients.is_empty() {
        return Err(ApiError::bad_request("INVALID_RECIPIENTS", "recipients must be a non-empty list"));
    }
    if recipients.len() > app.config.max_bulk_recipients {
        return Err(ApiError::bad_request(
            "TOO_MANY_RECIPIENTS",
            format!("at most {} recipients per request", app.config.max_bulk_recipients),
        ));
    }
    let common = LinkInput {
        target_url: input.target_url,
        message_id: input.message_id,
        sender: input.sender,
        message_ref: input.message_ref,
        kind: input.kind,
        expires_at: input.expires_at,
        sent_at: input.sent_at,
        ..LinkInput::default()
    };
    let now = Utc::now();
    let mut base = common.validate(now)?;
    base.broadcast_id = Some(broadcast_id.clone());
    let mut links = Vec::with_capacity(recipients.len());
    for (i, r) in recipients.iter().enumerate() {
        let at = |e: ApiError| ApiError { message: format!("recipients[{i}]: {}", e.message), ..e };
        let mut draft = base.clone();
        draft.recipient = Some(parse_recipient(&r.recipient).map_err(at)?.ok_or_else(|| {
            ApiError::bad_request("INVALID_RECIPIENT", format!("recipients[{i}]: recipient is required"))
        })?);
        if let Some(v) = parse_attr(&r.message_id, "message_id", "INVALID_MESSAGE_ID", MAX_ATTR_LEN).map_err(at)? {
            draft.message_id = Some(v);
        }
        if let Some(v) = parse_attr(&r.sender, "sender", "INVALID_SENDER", MAX_ATTR_LEN).map_err(at)? {
            draft.sender = Some(v);
        }
        if let Some(v) = parse_attr(&r.message_ref, "message_ref", "INVALID_MESSAGE_REF", MAX_ATTR_LEN).map_err(at)? {
            draft.message_ref = Some(v);
        }
        if let Some(v) = parse_sent_at(&r.sent_at, now).map_err(at)? {
            draft.sent_at = Some(v);
        }
        links.push(draft.into_link(app, &caller.workspace_id, now));
    }
    drop(recipients);
    store_links(app, &mut links).await?;
    let views: Vec<BroadcastLinkView<'_>> = links
        .iter()
        .map(|l| BroadcastLinkView {
            recipient: l.recipient.as_deref(),
            code: &l.code,
            short_url: app.short_url(&l.code),
            message_id: l.message_id.as_deref(),
        })
        .collect();
    #[derive(Serialize)]
    struct Out<'a> {
        broadcast_id: &'a str,
        count: usize,
        links: Vec<BroadcastLinkView<'a>>,
    }
    json(StatusCode::CREATED, &Out { broadcast_id: &broadcast_id, count: views.len(), links: views })
}

/// Spelled out rather than `#[serde(flatten)]`ing `LinkInput`: flatten cannot refuse unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShortenInput {
    #[serde(default)]
    text: Value,
    #[serde(default)]
    target_url: Value,
    #[serde(default)]
    broadcast_id: Value,
    #[serde(default)]
    recipient: Value,
    #[serde(default)]
    message_id: Value,
    #[serde(default)]
    sender: Value,
    #[serde(default)]
    message_ref: Value,
    #[serde(default)]
    kind: Value,
    #[serde(default)]
    expires_at: Value,
    #[serde(default)]
    sent_at: Value,
}

impl ShortenInput {
    /// The fields every link of the message shares.
    fn common(&mut self) -> LinkInput {
        LinkInput {
            target_url: self.target_url.take(),
            broadcast_id: self.broadcast_id.take(),
            recipient: self.recipient.take(),
            message_id: self.message_id.take(),
            sender: self.sender.take(),
            message_ref: self.message_ref.take(),
            kind: self.kind.take(),
            expires_at: self.expires_at.take(),
            sent_at: self.sent_at.take(),
        }
    }
}

/// `POST /api/v1/messages/shorten`: every http(s) URL in the text becomes a short URL, every
/// `[opt-out-link]` an opt-out short URL (one opt-out link per message, however many placeholders).
pub async fn shorten(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::LinksWrite).await?;
    let mut input: ShortenInput = parse_json(&read_body(req, app.config.max_body_bytes).await?)?;
    let Value::String(message) = std::mem::take(&mut input.text) else {
        return Err(ApiError::bad_request("INVALID_TEXT", "text must be a string"));
    };
    if message.chars().count() > MAX_TEXT_LEN {
        return Err(ApiError::bad_request("INVALID_TEXT", format!("text is longer than {MAX_TEXT_LEN} characters")));
    }
    // The text decides kind and target of each link.
    // Validated as the opt-out link; the URL links copy it with their own kind and target.
    let mut common = input.common();
    common.kind = Value::String(LinkKind::OptOut.as_str().to_owned());
    common.target_url = Value::Null;
    let now = Utc::now();
    let base = common.validate(now)?;

    let pieces = text::split(&message);
    // One link per distinct valid URL, in order of first appearance, then the opt-out link.
    let mut targets: Vec<(&str, String)> = Vec::new();
    for piece in &pieces {
        if let Piece::Url(url) = piece
            && !targets.iter().any(|(raw, _)| raw == url)
            && let Ok(target) = validate::target_url(url)
        {
            targets.push((url, target));
        }
    }
    let wants_opt_out = pieces.contains(&Piece::OptOut);
    let mut links: Vec<Link> = targets
        .iter()
        .map(|(_, target)| {
            Draft { kind: LinkKind::Redirect, target_url: Some(target.clone()), ..base.clone() }.into_link(
                app,
                &caller.workspace_id,
                now,
            )
        })
        .collect();
    if wants_opt_out {
        links.push(base.clone().into_link(app, &caller.workspace_id, now));
    }
    store_links(app, &mut links).await?;

    let mut out = String::with_capacity(message.len());
    for piece in &pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Url(url) => match targets.iter().position(|(raw, _)| raw == url) {
                Some(i) => out.push_str(&app.short_url(&links[i].code)),
                None => out.push_str(url),
            },
            Piece::OptOut => out.push_str(&app.short_url(&links[links.len() - 1].code)),
        }
    }
    let views: Vec<LinkView<'_>> = links.iter().map(|l| view(app, l, None)).collect();
    json(StatusCode::OK, &serde_json::json!({ "text": out, "links": views }))
}

/// `GET /api/v1/links/{code}`: the link with its counters.
pub async fn get(app: &App, req: Request<Incoming>, code: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::LinksRead).await?;
    let link = owned_link(app, &caller.workspace_id, code).await?;
    let counters = app.store.link_stats(code).await?;
    json(StatusCode::OK, &view(app, &link, Some(&counters)))
}

/// `DELETE /api/v1/links/{code}`: the link answers 410 from now on, on every instance.
pub async fn disable(app: &App, req: Request<Incoming>, code: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::LinksWrite).await?;
    owned_link(app, &caller.workspace_id, code).await?;
    app.store.disable_link(code, Utc::now()).await?;
    app.resolver.cache.invalidate(code);
    empty(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> LinkInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn field_errors_have_their_own_codes() {
        let now = Utc::now();
        let cases = [
            (json!({}), "INVALID_TARGET_URL"),
            (json!({"target_url": 5}), "INVALID_TARGET_URL"),
            (json!({"target_url": "javascript:alert(1)"}), "INVALID_TARGET_URL"),
            (json!({"target_url": "https://e.com", "recipient": "12345"}), "INVALID_RECIPIENT"),
            (json!({"target_url": "https://e.com", "recipient": 12025550293_u64}), "INVALID_RECIPIENT"),
            (json!({"target_url": "https://e.com", "kind": "banana"}), "INVALID_KIND"),
            (json!({"target_url": "https://e.com", "expires_at": "tomorrow"}), "INVALID_EXPIRES_AT"),
            (json!({"target_url": "https://e.com", "expires_at": "2001-01-01T00:00:00Z"}), "INVALID_EXPIRES_AT"),
            (json!({"target_url": "https://e.com", "broadcast_id": ""}), "INVALID_BROADCAST_ID"),
            (json!({"target_url": "https://e.com", "sender": {"a": 1}}), "INVALID_SENDER"),
            (json!({"target_url": "https://e.com", "message_id": "a\u{0}b"}), "INVALID_MESSAGE_ID"),
        ];
        for (body, code) in cases {
            assert_eq!(input(body.clone()).validate(now).unwrap_err().code, code, "{body}");
        }
    }

    #[test]
    fn valid_inputs() {
        let now = Utc::now();
        let d = input(json!({"kind": "opt_out", "recipient": "+12025550293"})).validate(now).unwrap();
        assert_eq!(d.kind, LinkKind::OptOut);
        assert_eq!(d.target_url, None);
        let d = input(json!({"target_url": "https://e.com/x", "sender": 61481074191_u64, "expires_at": "2999-01-01T00:00:00+02:00"}))
            .validate(now)
            .unwrap();
        assert_eq!(d.sender.as_deref(), Some("61481074191"));
        assert_eq!(d.expires_at.unwrap().to_rfc3339(), "2998-12-31T22:00:00+00:00");
    }
}
