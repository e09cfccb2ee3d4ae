//! Validation of untrusted link input: target URLs and recipients. Pure functions, table-tested.
//!
//! A target URL ends up in a `Location` header sent to a phone, so it must be an absolute `http`/`https`
//! URL with a host (no `javascript:`, `data:`, relative or scheme-relative URLs), and it must be exactly
//! what the browser will follow: we validate with the WHATWG parser (`url`) and store its serialisation
//! whenever the input differs from it by more than the root path's `/`.

use url::Url;

/// Longest target URL accepted. Browsers and SMS gateways cope with far less than this.
pub const MAX_TARGET_URL_LEN: usize = 4096;

/// Why a target URL was refused. The message is shown to the API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetUrlError {
    #[error("target_url is required")]
    Missing,
    #[error("target_url must be a string")]
    NotAString,
    #[error("target_url is longer than {MAX_TARGET_URL_LEN} characters")]
    TooLong,
    #[error("target_url is not an absolute URL: {0}")]
    Unparsable(String),
    #[error("target_url must use http or https, not `{0}`")]
    Scheme(String),
    #[error("target_url must have a host")]
    NoHost,
    #[error("target_url must not contain credentials")]
    Credentials,
}

/// Checks a target URL and returns the string to store and redirect to.
pub fn target_url(raw: &str) -> Result<String, TargetUrlError> {
    if raw.len() > MAX_TARGET_URL_LEN {
        return Err(TargetUrlError::TooLong);
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(TargetUrlError::Missing);
    }
    let url = Url::parse(trimmed).map_err(|e| TargetUrlError::Unparsable(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(TargetUrlError::Scheme(other.to_owned())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(TargetUrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        // `https://bank.example@evil.example/` is a classic phishing disguise; no SMS link needs it.
        return Err(TargetUrlError::Credentials);
    }
    let normalised = url.as_str();
    // Keep the customer's spelling when it is what the parser would produce anyway (modulo the root
    // `/`), so that the API echoes back what was sent; otherwise redirect to the normalised form, which is
    // guaranteed to be a valid, unambiguous header value.
    if trimmed == normalised
        || (normalised.len() == trimmed.len() + 1 && normalised.starts_with(trimmed) && normalised.ends_with('/'))
    {
        Ok(trimmed.to_owned())
    } else {
        Ok(normalised.to_owned())
    }
}

/// Whether `raw` is an E.164 phone number: `+`, a non-zero digit, then up to 14 more digits.
pub fn is_e164(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.len() >= 3
        && bytes.len() <= 16
        && bytes[0] == b'+'
        && bytes[1] != b'0'
        && bytes[1..].iter().all(u8::is_ascii_digit)
}

/// A recipient as stored: E.164 (`+61435790000`). Accepts E.164, or international digits without the
/// `+` as Burst sends them (`61435790000`) when the phone-number library (libphonenumber's metadata)
/// finds a valid number for the country code they start with. `None`: not a phone number.
pub fn normalize_recipient(raw: &str) -> Option<String> {
    if let Some(digits) = raw.strip_prefix('+') {
        if !is_e164(raw) {
            return None;
        }
        // One number, one form: `+4407911123456` (the national trunk 0 kept after the country code) is
        // `+447911123456`. Only numbers that carry their country's national prefix after the country code
        // go through the (slow) parser; the rest are E.164 already (bulk creates stay fast).
        if !carries_national_prefix(digits) {
            return Some(raw.to_owned());
        }
        return Some(
            phonenumber::parse(None, raw)
                .ok()
                .filter(phonenumber::is_valid)
                .map(|n| n.format().mode(phonenumber::Mode::E164).to_string())
                .filter(|e164| is_e164(e164))
                .unwrap_or_else(|| raw.to_owned()),
        );
    }
    if raw.len() < 7 || raw.len() > 15 || !raw.bytes().all(|b| b.is_ascii_digit()) || raw.starts_with('0') {
        return None;
    }
    let number = phonenumber::parse(None, format!("+{raw}")).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    is_e164(&e164).then_some(e164)
}

/// Whether international digits continue, after their country calling code (codes are prefix-free),
/// with a national prefix of that country (`44` then `0`): libphonenumber's metadata.
fn carries_national_prefix(digits: &str) -> bool {
    let db = &*phonenumber::metadata::DATABASE;
    (1..=3.min(digits.len())).any(|len| {
        let Ok(code) = digits[..len].parse::<u16>() else { return false };
        db.by_code(&code).is_some_and(|regions| {
            regions.iter().any(|m| m.national_prefix().is_some_and(|p| !p.is_empty() && digits[len..].starts_with(p)))
        })
    })
}

/// Checks an optional free-text attribute (`broadcast_id`, `message_id`, `sender`, `message_ref`):
/// at most `max` characters and no control characters, so it is safe in logs, keys and payloads.
pub fn is_reasonable_text(raw: &str, max: usize) -> bool {
    !raw.is_empty() && raw.chars().count() <= max && !raw.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let ok = [
            ("https://example.com/a?b=c#d", "https://example.com/a?b=c#d"),
            ("http://example.com", "http://example.com"),
            ("https://EXAMPLE.com/x", "https://example.com/x"),
            ("https://example.com/a b", "https://example.com/a%20b"),
            ("https://münchen.de/", "https://xn--mnchen-3ya.de/"),
            ("  https://example.com/  ", "https://example.com/"),
            ("https://example.com:8443/p", "https://example.com:8443/p"),
        ];
        for (raw, want) in ok {
            assert_eq!(target_url(raw).as_deref(), Ok(want), "{raw}");
        }
        let bad = [
            "javascript:alert(1)",
            "JAVASCRIPT:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "ftp://example.com/file",
            "//example.com/path",
            "/relative",
            "example.com",
            "",
            "   ",
            "https://",
            "http://user:pass@example.com/",
            "https://bank.example@evil.example/",
            "file:///etc/passwd",
            "vbscript:msgbox",
        ];
        for raw in bad {
            assert!(target_url(raw).is_err(), "{raw} should be rejected");
        }
        assert_eq!(target_url(&format!("https://e.com/{}", "a".repeat(5000))), Err(TargetUrlError::TooLong));
    }

    #[test]
    fn e164() {
        let cases = [
            ("+12025550293", true),
            ("+61481074191", true),
            ("+447911123456", true),
            ("+123456789012345", true),
            ("+1234567890123456", false), // 16 digits
            ("12025550293", false),
            ("+02025550293", false),
            ("+1 202 555 0293", false),
            ("+1-202-555-0293", false),
            ("+", false),
            ("+1", false),
            ("", false),
            ("+1202555029a", false),
        ];
        for (raw, want) in cases {
            assert_eq!(is_e164(raw), want, "{raw}");
        }
    }

    #[test]
    fn texts() {
        assert!(is_reasonable_text("fall_campaign", 256));
        assert!(!is_reasonable_text("", 256));
        assert!(!is_reasonable_text("a\nb", 256));
        assert!(!is_reasonable_text(&"x".repeat(257), 256));
    }

    #[test]
    fn recipients_without_plus_are_normalised_by_the_phone_number_library() {
        // Burst's samples write recipients as international digits.
        assert_eq!(normalize_recipient("61435790000").as_deref(), Some("+61435790000"));
        assert_eq!(normalize_recipient("12025550293").as_deref(), Some("+12025550293"));
        assert_eq!(normalize_recipient("447911123456").as_deref(), Some("+447911123456"));
        // Ofcom's drama range (07700 900xxx) is reserved, never assigned: not valid.
        assert_eq!(normalize_recipient("447700900123"), None);
        assert_eq!(normalize_recipient("+61435790000").as_deref(), Some("+61435790000"));
        // The same number written two ways is one recipient.
        assert_eq!(normalize_recipient("+4407911123456").as_deref(), normalize_recipient("4407911123456").as_deref());
        assert_eq!(normalize_recipient("+4407911123456").as_deref(), Some("+447911123456"));
        // Not numbers of any country: too short, an unassigned country code, a national trunk prefix,
        // letters.
        for bad in ["12345", "999123456789", "0435790000", "6143579000a", "", "+", "61 435 790 000"] {
            assert_eq!(normalize_recipient(bad), None, "{bad}");
        }
    }
}
