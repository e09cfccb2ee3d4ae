//! Link routes: create one, create one per recipient of a broadcast, shorten an SMS text, read, disable.

use chrono::Utc;
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

use super::link_input::{
    Draft, LinkInput, MAX_ATTR_LEN, MAX_ID_LEN, MAX_TEXT_LEN, parse_attr, parse_message, parse_recipient, parse_sent_at,
};

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
    sub_account_id: Option<&'a str>,
    track_conversions: bool,
    message_type: &'static str,
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    content_urls: &'a [String],
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
        sub_account_id: link.sub_account_id.as_deref(),
        track_conversions: link.track_conversions,
        message_type: link.message_type(),
        message: link.message.as_deref(),
        subject: link.subject.as_deref(),
        content_urls: &link.content_urls,
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
    let draft = input.validate(now)?;
    draft.require_recipient()?;
    let mut links = [draft.into_link(app, &caller.workspace_id, now)];
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
    #[serde(default)]
    sub_account_id: Value,
    #[serde(default)]
    track_conversions: Value,
    #[serde(default)]
    message: Value,
    #[serde(default)]
    subject: Value,
    #[serde(default)]
    content_urls: Value,
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
    /// This recipient's text, when the messages were personalised.
    #[serde(default)]
    message: Value,
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
        sub_account_id: input.sub_account_id,
        track_conversions: input.track_conversions,
        message: input.message,
        subject: input.subject,
        content_urls: input.content_urls,
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
        if let Some(v) = parse_message(&r.message).map_err(at)? {
            draft.message = Some(v);
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
    expires_at: Value,
    #[serde(default)]
    sent_at: Value,
    #[serde(default)]
    sub_account_id: Value,
    #[serde(default)]
    track_conversions: Value,
    #[serde(default)]
    subject: Value,
    #[serde(default)]
    content_urls: Value,
}

impl ShortenInput {
    /// The fields every link of the message shares.
    fn common(&mut self) -> LinkInput {
        LinkInput {
            // The text decides each link's target and kind.
            target_url: Value::Null,
            broadcast_id: self.broadcast_id.take(),
            recipient: self.recipient.take(),
            message_id: self.message_id.take(),
            sender: self.sender.take(),
            message_ref: self.message_ref.take(),
            kind: Value::Null,
            expires_at: self.expires_at.take(),
            sent_at: self.sent_at.take(),
            sub_account_id: self.sub_account_id.take(),
            track_conversions: self.track_conversions.take(),
            message: Value::Null,
            subject: self.subject.take(),
            content_urls: self.content_urls.take(),
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
    if wants_opt_out {
        base.require_recipient()?;
    }
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
        links.push(Draft { track_conversions: false, ..base.clone() }.into_link(app, &caller.workspace_id, now));
    }
    let compose = |links: &[Link]| {
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
        out
    };
    // Every link keeps the text as sent (Burst's `source_message.message`). Codes are final unless one
    // collided on insert (odds of 1 in 2^48 per link); then the stored text names the first code drawn.
    let sent = compose(&links);
    for link in &mut links {
        link.message = Some(sent.clone());
    }
    store_links(app, &mut links).await?;
    let out = compose(&links);
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
