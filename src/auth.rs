//! Credentials: API key minting and hashing, admin token checking. Pure functions.
//!
//! Raw API keys exist only in the response that creates them; the store keeps their SHA-256 (keys are
//! 190 bits of randomness, so a fast hash is enough — a slow password hash would add nothing but
//! latency). Comparisons of secrets are constant-time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const KEY_ALPHABET: [char; 62] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm',
    'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J',
    'K', 'L', 'M', 'N', 'O', 'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z',
];

/// A new API key: `lhk_` + 32 alphanumerics (about 190 bits).
pub fn new_api_key() -> String {
    format!("lhk_{}", nanoid::nanoid!(32, &KEY_ALPHABET))
}

/// A new admin token, for when the operator did not configure one.
pub fn new_admin_token() -> String {
    format!("lha_{}", nanoid::nanoid!(40, &KEY_ALPHABET))
}

/// A new workspace id: `ws_` + 16 alphanumerics.
pub fn new_workspace_id() -> String {
    format!("ws_{}", nanoid::nanoid!(16, &KEY_ALPHABET))
}

/// The hex SHA-256 under which a key is stored and looked up.
pub fn hash_key(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

/// The shown-in-logs prefix of a key (`lhk_AbCd`), never enough to use it.
pub fn key_prefix(raw: &str) -> String {
    raw.chars().take(8).collect()
}

/// Checks a presented admin token against the configured one in constant time.
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self { digest: Sha256::digest(token.as_bytes()).into() }
    }

    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

/// The credential in a request: `Authorization: Bearer <x>` or `X-API-Key: <x>`.
pub fn presented_credential(headers: &hyper::HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = value.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let token = rest.trim();
            return (!token.is_empty()).then_some(token);
        }
        return None;
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::HeaderMap;

    #[test]
    fn keys_hash_stably_and_differ() {
        let a = new_api_key();
        let b = new_api_key();
        assert_ne!(a, b);
        assert!(a.starts_with("lhk_") && a.len() == 36);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn admin_token() {
        let t = AdminToken::new("s3cret-s3cret-s3cret");
        assert!(t.matches("s3cret-s3cret-s3cret"));
        assert!(!t.matches("s3cret-s3cret-s3cre"));
        assert!(!t.matches(""));
    }

    #[test]
    fn credentials_from_headers() {
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Headers, Option<&str>)] = &[
            (&[("authorization", "Bearer abc")], Some("abc")),
            (&[("authorization", "bearer   abc  ")], Some("abc")),
            (&[("authorization", "Basic abc")], None),
            (&[("authorization", "Bearer ")], None),
            (&[("x-api-key", "k1")], Some("k1")),
            (&[("x-api-key", "  ")], None),
            (&[], None),
        ];
        for (headers, want) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in *headers {
                map.insert(*k, v.parse().unwrap());
            }
            assert_eq!(presented_credential(&map), *want, "{headers:?}");
        }
    }
}
