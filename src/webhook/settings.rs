//! A workspace's webhook configuration: the stored record, the partial update of
//! `PUT /api/v1/webhooks` with its validation rules, and the masked view.
//!
//! Pure: validation returns [`UpdateError`]s with the contract's stable codes; nothing here does I/O.
//! Secrets (signing secret, static `Authorization`, OAuth client secret) are kept in the record and
//! never leave it except as `"***"`; `"***"` sent back in an update means "unchanged", so a client may
//! PUT what it got from GET.

use serde_json::{Map, Value};

use super::ssrf;
use crate::model::webhook::{
    CLICK_FIELDS, CONVERSION_FIELDS, CredentialsLocation, Format, HitsCount, MASK, OAuth, RecipientFormat,
    WebhookSettings, origin,
};

/// Longest signing secret (the contract's limit).
pub const MAX_SECRET: usize = 64;

/// A refused update, with the contract's stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateError {
    pub code: &'static str,
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> UpdateError {
    UpdateError { code, message: message.into() }
}

/// Applies a `PUT /api/v1/webhooks` body to `current`. Every field is optional; absent = unchanged.
/// Checks run in a fixed order so that one body always yields the same code: body shape, toggles,
/// conflicts, URLs, format, fields, secrets, OAuth.
pub fn apply_update(
    current: &WebhookSettings,
    body: &Value,
    allow_private: bool,
) -> Result<WebhookSettings, UpdateError> {
    let Value::Object(map) = body else {
        return Err(err("INVALID_BODY", "the body must be a JSON object"));
    };
    let mut next = current.clone();

    let toggle = |name: &str| -> Result<Option<bool>, UpdateError> {
        match map.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(err("INVALID_TOGGLE", format!("{name} must be true or false"))),
        }
    };
    let unique = toggle("unique_clicks_only")?;
    let enabled = toggle("enabled")?;
    let clear_secret = toggle("clear_signing_secret")?.unwrap_or(false);
    if clear_secret && map.get("signing_secret").is_some_and(|v| !v.is_null()) {
        return Err(err("CONFLICTING_FIELDS", "signing_secret and clear_signing_secret: true cannot be sent together"));
    }

    for (name, slot) in [
        ("click_url", &mut next.click_url),
        ("opt_out_url", &mut next.opt_out_url),
        ("conversion_url", &mut next.conversion_url),
    ] {
        if let Some(raw) = map.get(name) {
            *slot = parse_url(name, raw, allow_private)?;
        }
    }

    if let Some(raw) = map.get("format") {
        let parsed = raw.as_str().and_then(Format::parse);
        next.format =
            parsed.ok_or_else(|| err("INVALID_FORMAT", "format must be \"8x8\", \"link_hit\" or \"fields\""))?;
    }

    if let Some(raw) = map.get("click_fields") {
        next.click_fields = Some(parse_fields("click_fields", raw, &CLICK_FIELDS)?);
    }
    if let Some(raw) = map.get("conversion_fields") {
        next.conversion_fields = Some(parse_fields("conversion_fields", raw, &CONVERSION_FIELDS)?);
    }
    if let Some(raw) = map.get("hits") {
        next.hits = match raw.as_str() {
            Some("human") => HitsCount::Human,
            Some("all") => HitsCount::All,
            _ => return Err(err("INVALID_HITS", "hits must be \"human\" or \"all\"")),
        };
    }
    if let Some(raw) = map.get("recipient_format") {
        next.recipient_format = match raw.as_str() {
            Some("e164") => RecipientFormat::E164,
            Some("digits") => RecipientFormat::Digits,
            _ => return Err(err("INVALID_RECIPIENT_FORMAT", "recipient_format must be \"e164\" or \"digits\"")),
        };
    }

    if let Some(raw) = map.get("signing_secret") {
        match raw {
            Value::String(s) if s == MASK => {}
            Value::String(s) => next.signing_secret = Some(parse_signing_secret(s)?),
            _ => return Err(err("INVALID_SECRET", "signing_secret must be a string")),
        }
    }
    if clear_secret {
        next.signing_secret = None;
    }

    if let Some(raw) = map.get("http_authorization") {
        match raw {
            Value::Null => next.http_authorization = None,
            Value::String(s) if s.is_empty() => next.http_authorization = None,
            Value::String(s) if s == MASK => {}
            Value::String(s) if is_header_value(s) && s.len() <= 4096 => next.http_authorization = Some(s.clone()),
            _ => {
                return Err(err(
                    "INVALID_SECRET",
                    "http_authorization must be a header value of at most 4096 characters",
                ));
            }
        }
    }

    if let Some(raw) = map.get("oauth") {
        next.oauth = match raw {
            Value::Null => None,
            Value::Object(o) => Some(parse_oauth(o, current.oauth.as_ref(), allow_private)?),
            _ => return Err(err("INVALID_OAUTH", "oauth must be an object or null")),
        };
    }

    if let Some(u) = unique {
        next.unique_clicks_only = u;
    }
    if let Some(e) = enabled {
        next.enabled = e;
    }
    bind_authorization(current, &mut next, map)?;
    Ok(next)
}

/// `http_authorization` is bound to the destinations (scheme, host, port) it was stored for: sending it
/// again binds it to the URLs of this configuration; a `PUT` that points a channel at a new destination
/// without sending it again is refused (`SECRET_REQUIRED`), so a key allowed to change URLs cannot
/// redirect the secret to a server of its own.
fn bind_authorization(
    current: &WebhookSettings,
    next: &mut WebhookSettings,
    body: &Map<String, Value>,
) -> Result<(), UpdateError> {
    if next.http_authorization.is_none() {
        next.authorization_origins = None;
        return Ok(());
    }
    let sent_again = matches!(body.get("http_authorization"), Some(Value::String(s)) if s != MASK);
    let destinations = next.channel_origins();
    if sent_again {
        next.authorization_origins = Some(destinations);
        return Ok(());
    }
    let bound = current.authorization_bound_origins();
    if let Some(new) = destinations.iter().find(|d| !bound.contains(*d)) {
        return Err(err(
            "SECRET_REQUIRED",
            format!(
                "http_authorization was stored for other destinations; send it again to use it with {new} (or clear it with \"\")"
            ),
        ));
    }
    next.authorization_origins = Some(bound.into_iter().filter(|o| destinations.contains(o)).collect());
    Ok(())
}

fn parse_url(name: &str, raw: &Value, allow_private: bool) -> Result<Option<String>, UpdateError> {
    match raw {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) if url::Url::parse(s).is_ok_and(|u| !u.username().is_empty() || u.password().is_some()) => {
            Err(err(
                "INVALID_URL",
                format!(
                    "{name} must not carry user-info (user:password@); credentials go in http_authorization or oauth"
                ),
            ))
        }
        Value::String(s) => ssrf::check_url(s, allow_private)
            .map(|_| Some(s.clone()))
            .map_err(|e| err("INVALID_URL", format!("{name}: {e}"))),
        _ => Err(err("INVALID_URL", format!("{name} must be a string URL, \"\" or null"))),
    }
}

fn parse_fields(list: &str, raw: &Value, allowed: &[&str]) -> Result<Vec<String>, UpdateError> {
    let bad = |why: String| err("INVALID_FIELDS", format!("{list} {why}; allowed: {}", allowed.join(", ")));
    let Value::Array(items) = raw else {
        return Err(bad("must be a non-empty list".into()));
    };
    if items.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    let mut fields: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let name = item.as_str().ok_or_else(|| bad(format!("holds {item}, not a field name")))?;
        if !allowed.contains(&name) {
            return Err(bad(format!("holds the unknown field `{name}`")));
        }
        if !fields.iter().any(|f| f == name) {
            fields.push(name.to_owned());
        }
    }
    Ok(fields)
}

fn parse_signing_secret(raw: &str) -> Result<String, UpdateError> {
    if raw.is_empty() || raw.chars().count() > MAX_SECRET {
        return Err(err("INVALID_SECRET", format!("signing_secret must be 1-{MAX_SECRET} characters")));
    }
    if super::sign::secret_key(raw).is_none() {
        return Err(err("INVALID_SECRET", "a whsec_ signing secret must be base64 after the prefix"));
    }
    Ok(raw.to_owned())
}

fn parse_oauth(o: &Map<String, Value>, current: Option<&OAuth>, allow_private: bool) -> Result<OAuth, UpdateError> {
    let text = |name: &str| -> Result<Option<String>, UpdateError> {
        match o.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 2048 && !s.chars().any(char::is_control) => {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(err("INVALID_OAUTH", format!("oauth.{name} must be a non-empty string"))),
        }
    };
    let url = match o.get("url") {
        Some(raw @ Value::String(_)) => parse_url("oauth.url", raw, allow_private)?,
        _ => None,
    }
    .ok_or_else(|| err("INVALID_URL", "oauth.url must be an http(s) URL"))?;
    let client_id = text("client_id")?.ok_or_else(|| err("INVALID_OAUTH", "oauth.client_id is required"))?;
    let kept = |current: Option<&OAuth>| -> Result<Option<String>, UpdateError> {
        // The stored secret stays bound to the token endpoint it was given for.
        match current {
            Some(c) if origin(&c.url) != origin(&url) => Err(err(
                "SECRET_REQUIRED",
                "oauth.client_secret was stored for another token endpoint; send it again with the new oauth.url",
            )),
            Some(c) => Ok(Some(c.client_secret.clone())),
            None => Ok(None),
        }
    };
    let client_secret = match o.get("client_secret") {
        Some(Value::String(s)) if s == MASK => kept(current)?,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 4096 => Some(s.clone()),
        None => kept(current)?,
        Some(_) => {
            return Err(err("INVALID_SECRET", "oauth.client_secret must be a non-empty string"));
        }
    }
    .ok_or_else(|| err("INVALID_SECRET", "oauth.client_secret is required"))?;
    let credentials_location = match o.get("credentials_location") {
        None | Some(Value::Null) => CredentialsLocation::Header,
        Some(Value::String(s)) if s == "header" => CredentialsLocation::Header,
        Some(Value::String(s)) if s == "body" => CredentialsLocation::Body,
        Some(_) => {
            return Err(err("INVALID_OAUTH", "oauth.credentials_location must be \"header\" or \"body\""));
        }
    };
    Ok(OAuth { url, client_id, client_secret, credentials_location, scope: text("scope")? })
}

fn is_header_value(s: &str) -> bool {
    hyper::header::HeaderValue::from_str(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(current: &WebhookSettings, body: Value) -> Result<WebhookSettings, &'static str> {
        apply_update(current, &body, false).map_err(|e| e.code)
    }

    #[test]
    fn validation_codes() {
        let base = WebhookSettings::default();
        let cases = [
            (json!([]), "INVALID_BODY"),
            (json!({"click_url": "ftp://x.example/"}), "INVALID_URL"),
            (json!({"click_url": "http://127.0.0.1/hook"}), "INVALID_URL"),
            (json!({"click_url": 5}), "INVALID_URL"),
            (json!({"opt_out_url": "http://169.254.169.254/"}), "INVALID_URL"),
            (json!({"format": "xml"}), "INVALID_FORMAT"),
            (json!({"format": 1}), "INVALID_FORMAT"),
            (json!({"click_fields": null}), "INVALID_FIELDS"),
            (json!({"click_fields": []}), "INVALID_FIELDS"),
            (json!({"click_fields": ["event_id", "password"]}), "INVALID_FIELDS"),
            (json!({"click_fields": "event_id"}), "INVALID_FIELDS"),
            (json!({"unique_clicks_only": "yes"}), "INVALID_TOGGLE"),
            (json!({"enabled": null}), "INVALID_TOGGLE"),
            (json!({"clear_signing_secret": 1}), "INVALID_TOGGLE"),
            (json!({"signing_secret": ""}), "INVALID_SECRET"),
            (json!({"signing_secret": "x".repeat(65)}), "INVALID_SECRET"),
            (json!({"signing_secret": 42}), "INVALID_SECRET"),
            (json!({"signing_secret": null}), "INVALID_SECRET"),
            (json!({"signing_secret": "whsec_!!!!"}), "INVALID_SECRET"),
            (json!({"signing_secret": "whsec_abc", "clear_signing_secret": true}), "CONFLICTING_FIELDS"),
            (json!({"http_authorization": 7}), "INVALID_SECRET"),
            (json!({"http_authorization": "Bearer a\nb"}), "INVALID_SECRET"),
            (json!({"oauth": "x"}), "INVALID_OAUTH"),
            (json!({"oauth": {"client_id": "a", "client_secret": "b"}}), "INVALID_URL"),
            (json!({"oauth": {"url": "https://auth.example.com/t", "client_secret": "b"}}), "INVALID_OAUTH"),
            (json!({"oauth": {"url": "https://auth.example.com/t", "client_id": "a"}}), "INVALID_SECRET"),
            (
                json!({"oauth": {"url": "https://auth.example.com/t", "client_id": "a", "client_secret": "b", "credentials_location": "query"}}),
                "INVALID_OAUTH",
            ),
        ];
        for (body, code) in cases {
            assert_eq!(apply(&base, body.clone()).unwrap_err(), code, "{body}");
        }
    }

    #[test]
    fn partial_updates_and_masking() {
        let base = WebhookSettings::default();
        let a = apply(
            &base,
            json!({
                "click_url": "https://hooks.example.com/click",
                "format": "fields",
                "click_fields": ["event_id", "hits", "hits"],
                "signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "http_authorization": "Bearer t0k3n",
                "unique_clicks_only": true,
            }),
        )
        .unwrap();
        assert_eq!(a.click_fields.as_deref(), Some(&["event_id".to_owned(), "hits".to_owned()][..]));
        // Absent fields are unchanged; "***" keeps a secret.
        let b = apply(&a, json!({"opt_out_url": "https://hooks.example.com/stop", "signing_secret": "***"})).unwrap();
        assert_eq!(b.click_url, a.click_url);
        assert_eq!(b.signing_secret, a.signing_secret);
        assert!(b.unique_clicks_only);
        // "" and null disable channels; clear_signing_secret clears.
        let c = apply(
            &b,
            json!({"click_url": "", "opt_out_url": null, "clear_signing_secret": true, "http_authorization": ""}),
        )
        .unwrap();
        assert_eq!((c.click_url, c.opt_out_url, c.signing_secret, c.http_authorization), (None, None, None, None));
        let masked = b.masked();
        assert_eq!(masked["signing_secret"], "***");
        assert_eq!(masked["http_authorization"], "***");
        assert!(!masked.to_string().contains("t0k3n") && !masked.to_string().contains("MfKQ9"));
        assert_eq!(WebhookSettings::default().masked()["signing_secret"], Value::Null);
    }

    #[test]
    fn oauth_secret_survives_a_masked_round_trip() {
        let a = apply(
            &WebhookSettings::default(),
            json!({"oauth": {"url": "https://auth.example.com/token", "client_id": "id", "client_secret": "s3cr3t", "scope": "hooks"}}),
        )
        .unwrap();
        let shown = a.masked();
        assert_eq!(shown["oauth"]["client_secret"], "***");
        let b = apply(&a, json!({"oauth": shown["oauth"].clone()})).unwrap();
        assert_eq!(b.oauth.unwrap().client_secret, "s3cr3t");
    }

    #[test]
    fn private_urls_only_when_allowed() {
        let body = json!({"click_url": "http://127.0.0.1:9000/hook"});
        assert!(apply_update(&WebhookSettings::default(), &body, false).is_err());
        assert!(apply_update(&WebhookSettings::default(), &body, true).is_ok());
    }

    #[test]
    fn secrets_stay_bound_to_their_destinations() {
        let a = apply(
            &WebhookSettings::default(),
            json!({"click_url": "https://hooks.example.com/click", "http_authorization": "Bearer s3cret",
                   "oauth": {"url": "https://auth.example.com/token", "client_id": "id", "client_secret": "cs"}}),
        )
        .unwrap();
        let cases = [
            // Same destination, another path: allowed without the secret.
            (json!({"click_url": "https://hooks.example.com/v2"}), Ok(())),
            (json!({"opt_out_url": "https://hooks.example.com:443/stop"}), Ok(())),
            // A new destination for the stored Authorization: the secret must come again.
            (json!({"click_url": "https://attacker.example/"}), Err("SECRET_REQUIRED")),
            (json!({"opt_out_url": "http://hooks.example.com/stop"}), Err("SECRET_REQUIRED")),
            (json!({"click_url": "https://hooks.example.com:8443/"}), Err("SECRET_REQUIRED")),
            (json!({"click_url": "https://attacker.example/", "http_authorization": "***"}), Err("SECRET_REQUIRED")),
            (json!({"click_url": "https://attacker.example/", "http_authorization": "Bearer new"}), Ok(())),
            (json!({"click_url": "https://attacker.example/", "http_authorization": ""}), Ok(())),
            // The OAuth client secret is bound to its token endpoint.
            (
                json!({"oauth": {"url": "https://evil.example/token", "client_id": "id", "client_secret": "***"}}),
                Err("SECRET_REQUIRED"),
            ),
            (json!({"oauth": {"url": "https://evil.example/token", "client_id": "id"}}), Err("SECRET_REQUIRED")),
            (json!({"oauth": {"url": "https://auth.example.com/v2/token", "client_id": "id"}}), Ok(())),
            (
                json!({"oauth": {"url": "https://evil.example/token", "client_id": "id", "client_secret": "new"}}),
                Ok(()),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(apply(&a, body.clone()).map(|_| ()), want, "{body}");
        }
        let moved =
            apply(&a, json!({"click_url": "https://other.example/", "http_authorization": "Bearer x"})).unwrap();
        assert!(moved.authorization_allowed_for("https://other.example/hook"));
        assert!(!moved.authorization_allowed_for("https://hooks.example.com/click"), "rebinding forgets the old one");
    }

    #[test]
    fn user_info_in_urls_is_refused() {
        for url in ["https://user:pass@hooks.example.com/", "https://user@hooks.example.com/"] {
            let body = json!({"click_url": url});
            assert_eq!(apply(&WebhookSettings::default(), body.clone()).unwrap_err(), "INVALID_URL", "{body}");
        }
    }
}
