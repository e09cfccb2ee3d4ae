//! Link codes: generation (nanoid, URL-safe alphabet) and the cheap syntactic check the redirector
//! runs before touching any cache or store.
//!
//! Generation only proposes a code; uniqueness is the store's job (`SET NX`-style insert, see
//! `store::insert_unique`), never luck.
//!
//! Check characters: with `LINKHIT_CODE_CHECK` (the default) the last two characters of a code are a
//! keyed SipHash of the others (12 bits), under a key every instance shares (kept in the store). A flood
//! of random or guessed codes is then rejected here, before any cache or store lookup — only 1 in 4,096
//! random codes gets through — and valid codes cannot be forged without the key. Until the key is known
//! (the store was unreachable at start-up) codes are checked for shape only.

use std::sync::{Arc, OnceLock};

/// nanoid's URL-safe alphabet: what a code may contain.
pub const ALPHABET: [char; 64] = [
    '_', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k',
    'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H',
    'I', 'J', 'K', 'L', 'M', 'N', 'O', 'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z',
];

/// Paths served by linkhit itself; a generated code never equals one of them.
const RESERVED: [&str; 5] = ["api", "healthz", "readyz", "metrics", "favicon.ico"];

/// Number of check characters at the end of a code.
const CHECK_CHARS: usize = 2;

/// The code policy of one deployment: lengths, and the shared check key once known.
#[derive(Debug, Clone)]
pub struct CodePolicy {
    /// Length of newly generated codes.
    pub length: usize,
    /// Shortest accepted code (older, shorter codes stay valid after the length is raised).
    pub min_length: usize,
    /// `Some` when codes carry check characters; the key arrives from the store (see module docs).
    check: Option<Arc<OnceLock<(u64, u64)>>>,
}

impl PartialEq for CodePolicy {
    fn eq(&self, other: &Self) -> bool {
        self.length == other.length
            && self.min_length == other.min_length
            && self.check.is_some() == other.check.is_some()
    }
}

impl CodePolicy {
    /// Codes without check characters.
    pub fn new(length: usize, min_length: usize) -> Self {
        Self { length, min_length: min_length.min(length), check: None }
    }

    /// Codes with check characters; the key is supplied later with [`CodePolicy::set_key`].
    pub fn checked(length: usize, min_length: usize) -> Self {
        Self { check: Some(Arc::new(OnceLock::new())), ..Self::new(length, min_length) }
    }

    /// Installs the shared check key (16 bytes). Later calls are ignored.
    pub fn set_key(&self, key: [u8; 16]) {
        if let Some(slot) = &self.check {
            let k0 = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
            let k1 = u64::from_le_bytes(key[8..].try_into().expect("8 bytes"));
            let _ = slot.set((k0, k1));
        }
    }

    /// Whether new codes can be generated: always without checks, once the key is known with them.
    pub fn ready(&self) -> bool {
        self.check.as_ref().is_none_or(|slot| slot.get().is_some())
    }

    /// A fresh random code. Not guaranteed unique: the store decides that.
    ///
    /// The bytes come from the thread-local CSPRNG ([`rand::rng`], ChaCha, seeded from the OS):
    /// `nanoid!`'s default seeds a new generator from the OS for every code (a `getrandom` call plus
    /// a ChaCha key setup, most of the cost of creating a link in bulk).
    pub fn generate(&self) -> String {
        loop {
            let code = match self.check.as_ref().and_then(|slot| slot.get()) {
                Some(key) => {
                    let mut code = nanoid::format(random_bytes, &ALPHABET, self.length - CHECK_CHARS);
                    let check = check_chars(*key, code.as_bytes());
                    code.extend(check);
                    code
                }
                None => nanoid::format(random_bytes, &ALPHABET, self.length),
            };
            if !RESERVED.contains(&code.as_str()) {
                return code;
            }
        }
    }

    /// Whether `code` could be a code of this deployment: right length, URL-safe alphabet, and (when
    /// checked) the right check characters. Runs on every redirect: a byte loop and one SipHash of a
    /// few bytes, no allocation.
    #[inline]
    pub fn is_valid(&self, code: &str) -> bool {
        let len = code.len();
        let shaped = len >= self.min_length
            && len <= self.length
            && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !shaped {
            return false;
        }
        match self.check.as_ref().and_then(|slot| slot.get()) {
            Some(key) => {
                let (body, check) = code.as_bytes().split_at(len - CHECK_CHARS);
                check_chars(*key, body).into_iter().map(|c| c as u8).eq(check.iter().copied())
            }
            None => true,
        }
    }
}

/// The two check characters of a code body.
/// `size` random bytes for `nanoid::format` (64-character alphabet: it masks each byte to 6 bits).
fn random_bytes(size: usize) -> Vec<u8> {
    use rand::Rng;
    let mut bytes = vec![0u8; size];
    rand::rng().fill(&mut bytes[..]);
    bytes
}

fn check_chars(key: (u64, u64), body: &[u8]) -> [char; CHECK_CHARS] {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher24::new_with_keys(key.0, key.1);
    h.write(body);
    let v = h.finish();
    [ALPHABET[(v & 63) as usize], ALPHABET[((v >> 6) & 63) as usize]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let policy = CodePolicy::new(8, 8);
        let cases = [
            ("abcdEF12", true),
            ("a_b-c_d-", true),
            ("abcdEF1", false),   // too short
            ("abcdEF123", false), // too long
            ("abcd EF1", false),  // space
            ("abcd/EF1", false),  // slash
            ("abcd%2F1", false),  // percent-encoding
            ("abcdéF1", false),   // non-ASCII (é is two bytes: length 8, still rejected)
            ("", false),
            ("healthz", false),
        ];
        for (code, want) in cases {
            assert_eq!(policy.is_valid(code), want, "{code:?}");
        }
        let relaxed = CodePolicy::new(10, 7);
        assert!(relaxed.is_valid("abcdefg"));
        assert!(relaxed.is_valid("abcdefghij"));
        assert!(!relaxed.is_valid("abcdef"));
    }

    #[test]
    fn generated_codes_are_valid_and_distinct_enough() {
        let policy = CodePolicy::new(8, 8);
        let codes: std::collections::HashSet<String> = (0..10_000).map(|_| policy.generate()).collect();
        assert!(codes.iter().all(|c| policy.is_valid(c)));
        // 64^8 codes: a collision among 10,000 is ~1e-7 likely; the store handles it anyway.
        assert!(codes.len() >= 9_999);
    }

    #[test]
    fn check_characters_reject_random_codes() {
        let policy = CodePolicy::checked(8, 8);
        assert!(policy.is_valid("zzzzzzzz"), "shape only until the key is known");
        assert!(!policy.ready());
        policy.set_key(*b"0123456789abcdef");
        assert!(policy.ready());
        let generated: Vec<String> = (0..1000).map(|_| policy.generate()).collect();
        assert!(generated.iter().all(|c| c.len() == 8 && policy.is_valid(c)));
        let plain = CodePolicy::new(8, 8);
        let accepted = (0..20_000).map(|_| plain.generate()).filter(|c| policy.is_valid(c)).count();
        assert!(accepted < 20_000 / 100, "{accepted} of 20,000 random codes passed the check");
        // Another key, other codes.
        let other = CodePolicy::checked(8, 8);
        other.set_key(*b"fedcba9876543210");
        assert!(generated.iter().filter(|c| other.is_valid(c)).count() < 50);
        // A changed character breaks the check almost always.
        let code = &generated[0];
        let flipped = format!("{}{}", if code.starts_with('a') { 'b' } else { 'a' }, &code[1..]);
        let _ = policy.is_valid(&flipped);
    }

    #[test]
    fn generated_codes_use_the_whole_alphabet() {
        let policy = CodePolicy::new(32, 32);
        let seen: std::collections::HashSet<char> =
            (0..200).flat_map(|_| policy.generate().chars().collect::<Vec<_>>()).collect();
        assert_eq!(seen.len(), 64);
    }
}
