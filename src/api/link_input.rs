//! What the link routes take: the fields a link shares whichever route creates it, each validated with
//! its own error code, into a [`Draft`] waiting for its code.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::app::App;
use crate::error::ApiError;
use crate::model::{Link, LinkKind};
use crate::validate;

/// Longest `broadcast_id`.
pub(super) const MAX_ID_LEN: usize = 128;
/// Longest `message_id`, `sender`, `message_ref`.
pub(super) const MAX_ATTR_LEN: usize = 256;
/// Longest SMS text accepted by `messages/shorten` (a 10-part concatenated SMS is ~1,600 characters).
pub(super) const MAX_TEXT_LEN: usize = 10_000;

/// The fields a link shares whichever route creates it. Every field is taken as raw JSON so that a
/// wrong type gets the field's own error code, not a generic one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinkInput {
    #[serde(default)]
    pub(super) target_url: Value,
    #[serde(default)]
    pub(super) broadcast_id: Value,
    #[serde(default)]
    pub(super) recipient: Value,
    #[serde(default)]
    pub(super) message_id: Value,
    #[serde(default)]
    pub(super) sender: Value,
    #[serde(default)]
    pub(super) message_ref: Value,
    #[serde(default)]
    pub(super) kind: Value,
    #[serde(default)]
    pub(super) expires_at: Value,
    #[serde(default)]
    pub(super) sent_at: Value,
    #[serde(default)]
    pub(super) sub_account_id: Value,
    #[serde(default)]
    pub(super) track_conversions: Value,
    #[serde(default)]
    pub(super) message: Value,
    #[serde(default)]
    pub(super) subject: Value,
    #[serde(default)]
    pub(super) content_urls: Value,
}

/// Longest `sub_account_id`.
pub(super) const MAX_SUB_ACCOUNT_LEN: usize = 64;
/// MMS media per message.
pub(super) const MAX_CONTENT_URLS: usize = 10;

/// A validated link, waiting for its code.
#[derive(Debug, Clone)]
pub(super) struct Draft {
    pub(super) kind: LinkKind,
    pub(super) target_url: Option<String>,
    pub(super) broadcast_id: Option<String>,
    pub(super) recipient: Option<String>,
    pub(super) message_id: Option<String>,
    pub(super) sender: Option<String>,
    pub(super) message_ref: Option<String>,
    pub(super) expires_at: Option<DateTime<Utc>>,
    pub(super) sent_at: Option<DateTime<Utc>>,
    pub(super) sub_account_id: Option<String>,
    pub(super) track_conversions: bool,
    pub(super) message: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) content_urls: Vec<String>,
}

impl Draft {
    pub(super) fn into_link(self, app: &App, workspace_id: &str, now: DateTime<Utc>) -> Link {
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
            sub_account_id: self.sub_account_id,
            track_conversions: self.track_conversions,
            message: self.message,
            subject: self.subject,
            content_urls: self.content_urls,
            // Given by the store as it inserts the link.
            bot_slot: None,
        }
    }

    /// An opt-out link must name who opts out: one without a recipient would confirm an unsubscribe and
    /// record nothing.
    pub(super) fn require_recipient(&self) -> Result<(), ApiError> {
        if self.kind == LinkKind::OptOut && self.recipient.is_none() {
            return Err(ApiError::bad_request(
                "INVALID_RECIPIENT",
                "an opt-out link needs the recipient it unsubscribes (recipient is required for kind \"opt_out\" and [opt-out-link])",
            ));
        }
        Ok(())
    }
}

pub(super) fn parse_kind(raw: &Value) -> Result<LinkKind, ApiError> {
    match raw {
        Value::Null => Ok(LinkKind::Redirect),
        Value::String(s) if s == "redirect" => Ok(LinkKind::Redirect),
        Value::String(s) if s == "opt_out" => Ok(LinkKind::OptOut),
        _ => Err(ApiError::bad_request("INVALID_KIND", "kind must be \"redirect\" or \"opt_out\"")),
    }
}

pub(super) fn parse_target(raw: &Value, required: bool) -> Result<Option<String>, ApiError> {
    let err = |e: validate::TargetUrlError| ApiError::bad_request("INVALID_TARGET_URL", e.to_string());
    match raw {
        Value::Null if required => Err(err(validate::TargetUrlError::Missing)),
        Value::Null => Ok(None),
        Value::String(s) => validate::target_url(s).map(Some).map_err(err),
        _ => Err(err(validate::TargetUrlError::NotAString)),
    }
}

/// A recipient: E.164, or international digits without `+` (Burst's `61435790000`) that the phone-number
/// library validates; stored as E.164.
pub(crate) fn parse_recipient(raw: &Value) -> Result<Option<String>, ApiError> {
    let normalised = match raw {
        Value::Null => return Ok(None),
        Value::String(s) => validate::normalize_recipient(s),
        _ => None,
    };
    normalised.map(Some).ok_or_else(|| {
        ApiError::bad_request(
            "INVALID_RECIPIENT",
            format!(
                "recipient must be an E.164 phone number such as +12025550293, or international digits such as 61435790000, got {raw}"
            ),
        )
    })
}

pub(super) fn parse_flag(raw: &Value, field: &str) -> Result<bool, ApiError> {
    match raw {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => Err(ApiError::bad_request("INVALID_TOGGLE", format!("{field} must be true or false"))),
    }
}

/// The message text (newlines allowed, as in an SMS).
pub(super) fn parse_message(raw: &Value) -> Result<Option<String>, ApiError> {
    match raw {
        Value::Null => Ok(None),
        Value::String(s) if !s.is_empty() && s.chars().count() <= MAX_TEXT_LEN && !s.contains('\0') => {
            Ok(Some(s.clone()))
        }
        _ => Err(ApiError::bad_request(
            "INVALID_MESSAGE",
            format!("message must be the SMS text, 1-{MAX_TEXT_LEN} characters"),
        )),
    }
}

pub(super) fn parse_content_urls(raw: &Value) -> Result<Vec<String>, ApiError> {
    let bad = |why: String| ApiError::bad_request("INVALID_CONTENT_URLS", why);
    match raw {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) if items.len() <= MAX_CONTENT_URLS => items
            .iter()
            .map(|item| match item {
                Value::String(u) => validate::target_url(u).map_err(|e| bad(format!("content_urls: {e}"))),
                _ => Err(bad("content_urls must hold URL strings".into())),
            })
            .collect(),
        _ => Err(bad(format!("content_urls must be a list of at most {MAX_CONTENT_URLS} http(s) URLs"))),
    }
}

/// An optional text attribute; integers are accepted and kept as their decimal text (senders and
/// message ids are often numeric in SMS APIs).
pub(super) fn parse_attr(raw: &Value, field: &str, code: &'static str, max: usize) -> Result<Option<String>, ApiError> {
    let text = match raw {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Number(n) => match whole_number(n) {
            Some(text) => text,
            None => return Err(ApiError::bad_request(code, format!("{field} must be a string or an integer"))),
        },
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

/// A JSON number that is an integer (`61481074191`, or `61481074191.0`, which JSON Schema counts as the
/// same integer) as its decimal text; `None` for a fraction or a number beyond 64 bits.
pub(super) fn whole_number(n: &serde_json::Number) -> Option<String> {
    if n.is_u64() || n.is_i64() {
        return Some(n.to_string());
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| format!("{}", f as i64))
}

/// `sub_account_id`: 1-64 visible ASCII characters, the same rule as the webhook routes' parameter.
pub(super) fn parse_sub_account(raw: &Value) -> Result<Option<String>, ApiError> {
    let id = parse_attr(raw, "sub_account_id", "INVALID_SUB_ACCOUNT_ID", MAX_SUB_ACCOUNT_LEN)?;
    if id.as_ref().is_some_and(|id| !id.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(ApiError::bad_request(
            "INVALID_SUB_ACCOUNT_ID",
            "sub_account_id must be 1-64 visible ASCII characters (no spaces)",
        ));
    }
    Ok(id)
}

/// `sent_at`: when the SMS went out; up to a day ahead is accepted (clock skew, scheduled sends).
pub(super) fn parse_sent_at(raw: &Value, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ApiError> {
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

pub(super) fn parse_expires(raw: &Value, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ApiError> {
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
    pub(super) fn validate(&self, now: DateTime<Utc>) -> Result<Draft, ApiError> {
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
            sub_account_id: parse_sub_account(&self.sub_account_id)?,
            track_conversions: parse_flag(&self.track_conversions, "track_conversions")?,
            message: parse_message(&self.message)?,
            subject: parse_attr(&self.subject, "subject", "INVALID_SUBJECT", MAX_ATTR_LEN)?,
            content_urls: parse_content_urls(&self.content_urls)?,
        })
    }
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
