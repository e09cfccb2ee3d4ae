//! Click ids: the `lh_click` parameter a redirect adds to the target of a link that tracks conversions.
//!
//! A click id verifies itself, so `/track` accepts one the moment the redirect answered, before the hit
//! is counted, without a store lookup: `<code>.<base64url(issued 4 | nonce 6 | tag 8)>`, where `issued`
//! is the unix second it was made (big-endian), `nonce` is random, and `tag` is the first 8 bytes of
//! HMAC-SHA256 over the code, `issued` and `nonce` under a key every instance derives from the store's
//! shared code key. Forging one takes 2^64 guesses (and `/track` is rate limited); an id older than
//! `LINKHIT_CLICK_ID_TTL` is refused.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const RAW_LEN: usize = 4 + 6 + 8;
/// Longest click id accepted (a code of at most 32 characters, the dot, 24 characters).
pub const MAX_LEN: usize = 57;

/// Issues and verifies click ids. Cheap to clone; the key arrives once from the store.
#[derive(Clone)]
pub struct ClickIds {
    key: Arc<OnceLock<[u8; 32]>>,
    ttl_secs: i64,
}

/// A verified click id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub code: String,
    pub issued_unix: i64,
}

impl ClickIds {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self { key: Arc::new(OnceLock::new()), ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX) }
    }

    /// Installs the key, derived from the store's shared code key. Later calls are ignored.
    pub fn set_key(&self, code_key: [u8; 16]) {
        let mut h = Sha256::new();
        h.update(b"linkhit click id v1\0");
        h.update(code_key);
        let _ = self.key.set(h.finalize().into());
    }

    pub fn ready(&self) -> bool {
        self.key.get().is_some()
    }

    fn tag(key: &[u8; 32], code: &str, head: &[u8]) -> [u8; 8] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(code.as_bytes());
        mac.update(&[0]);
        mac.update(head);
        let out = mac.finalize().into_bytes();
        out[..8].try_into().expect("8 bytes")
    }

    /// A fresh click id for a hit on `code` at `now_unix`; `None` until the key is known.
    pub fn issue(&self, code: &str, now_unix: i64) -> Option<String> {
        let key = self.key.get()?;
        let mut raw = [0u8; RAW_LEN];
        raw[..4].copy_from_slice(&u32::try_from(now_unix.max(0)).unwrap_or(u32::MAX).to_be_bytes());
        rand::Rng::fill(&mut rand::rng(), &mut raw[4..10]);
        let tag = Self::tag(key, code, &raw[..10]);
        raw[10..].copy_from_slice(&tag);
        let mut id = String::with_capacity(code.len() + 25);
        id.push_str(code);
        id.push('.');
        URL_SAFE_NO_PAD.encode_string(raw, &mut id);
        Some(id)
    }

    /// Checks a click id: well formed, made with this deployment's key, not expired at `now_unix`.
    pub fn verify(&self, id: &str, now_unix: i64) -> Option<Verified> {
        let key = self.key.get()?;
        if id.len() > MAX_LEN {
            return None;
        }
        let (code, rest) = id.rsplit_once('.')?;
        if code.is_empty() || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(rest).ok()?;
        if raw.len() != RAW_LEN {
            return None;
        }
        let want = Self::tag(key, code, &raw[..10]);
        // Constant-time comparison of the tag.
        if !subtle_eq(&want, &raw[10..]) {
            return None;
        }
        let issued = i64::from(u32::from_be_bytes(raw[..4].try_into().ok()?));
        // A little slack for clocks between instances.
        if issued > now_unix + 60 || now_unix - issued > self.ttl_secs {
            return None;
        }
        Some(Verified { code: code.to_owned(), issued_unix: issued })
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `target` with `lh_click=<id>` added to its query (other parameters and the fragment kept).
pub fn add_to_target(target: &str, id: &str) -> String {
    let (base, fragment) = match target.find('#') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    let sep = if !base.contains('?') {
        "?"
    } else if base.ends_with('?') || base.ends_with('&') {
        ""
    } else {
        "&"
    };
    let mut out = String::with_capacity(target.len() + id.len() + 10);
    out.push_str(base);
    out.push_str(sep);
    out.push_str("lh_click=");
    out.push_str(id);
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> ClickIds {
        let ids = ClickIds::new(std::time::Duration::from_secs(30 * 86_400));
        ids.set_key(*b"0123456789abcdef");
        ids
    }

    #[test]
    fn issued_ids_verify_and_name_their_code() {
        let ids = ids();
        let id = ids.issue("Ab3_x-9Q", 1_800_000_000).unwrap();
        assert!(id.starts_with("Ab3_x-9Q."));
        assert!(id.len() <= MAX_LEN);
        assert_eq!(
            ids.verify(&id, 1_800_000_100),
            Some(Verified { code: "Ab3_x-9Q".into(), issued_unix: 1_800_000_000 })
        );
        assert_ne!(ids.issue("Ab3_x-9Q", 1_800_000_000).unwrap(), id, "a fresh nonce per hit");
    }

    #[test]
    fn forged_expired_and_foreign_ids_fail() {
        let ids = ids();
        let id = ids.issue("Ab3_x-9Q", 1_800_000_000).unwrap();
        // Another code with the same tail.
        assert_eq!(ids.verify(&id.replacen("Ab3_x-9Q", "Ab3_x-9R", 1), 1_800_000_000), None);
        // One character of the tag changed.
        let mut forged = id.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(ids.verify(&forged, 1_800_000_000), None);
        // Expired, and from the future.
        assert_eq!(ids.verify(&id, 1_800_000_000 + 31 * 86_400), None);
        assert_eq!(ids.verify(&id, 1_799_999_000), None);
        // Another deployment's key.
        let other = ClickIds::new(std::time::Duration::from_secs(86_400));
        other.set_key(*b"fedcba9876543210");
        assert_eq!(other.verify(&id, 1_800_000_000), None);
        // Garbage.
        for bad in ["", ".", "abc", "abc.", "abc.!!!!", &"a".repeat(200)] {
            assert_eq!(ids.verify(bad, 1_800_000_000), None, "{bad}");
        }
        // No key yet: nothing issued, nothing verified.
        let unkeyed = ClickIds::new(std::time::Duration::from_secs(86_400));
        assert_eq!(unkeyed.issue("Ab3_x-9Q", 1), None);
        assert_eq!(unkeyed.verify(&id, 1_800_000_000), None);
    }

    #[test]
    fn the_parameter_joins_the_query_and_keeps_the_fragment() {
        let cases = [
            ("https://e.com/", "https://e.com/?lh_click=X"),
            ("https://e.com/p?a=1", "https://e.com/p?a=1&lh_click=X"),
            ("https://e.com/p?a=1#top", "https://e.com/p?a=1&lh_click=X#top"),
            ("https://e.com/p#x?y", "https://e.com/p?lh_click=X#x?y"),
            ("https://e.com/p?", "https://e.com/p?lh_click=X"),
        ];
        for (target, want) in cases {
            assert_eq!(add_to_target(target, "X"), want);
        }
    }
}
