//! Link codes: generation (nanoid, URL-safe alphabet) and the cheap syntactic check the redirector
//! runs before touching any cache or store.
//!
//! Generation only proposes a code; uniqueness is the store's job (`SET NX`-style insert, see
//! `links::insert_unique`), never luck.

/// nanoid's URL-safe alphabet: what a code may contain.
pub const ALPHABET: [char; 64] = [
    '_', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k',
    'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H',
    'I', 'J', 'K', 'L', 'M', 'N', 'O', 'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z',
];

/// Paths served by linkhit itself; a generated code never equals one of them.
const RESERVED: [&str; 5] = ["api", "healthz", "readyz", "metrics", "favicon.ico"];

/// The code length policy of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodePolicy {
    /// Length of newly generated codes.
    pub length: usize,
    /// Shortest accepted code (older, shorter codes stay valid after the length is raised).
    pub min_length: usize,
}

impl CodePolicy {
    pub fn new(length: usize, min_length: usize) -> Self {
        Self { length, min_length: min_length.min(length) }
    }

    /// A fresh random code. Not guaranteed unique: the store decides that.
    pub fn generate(&self) -> String {
        loop {
            let code = nanoid::nanoid!(self.length, &ALPHABET);
            if !RESERVED.contains(&code.as_str()) {
                return code;
            }
        }
    }

    /// Whether `code` could be a code of this deployment: right length, URL-safe alphabet.
    /// Runs on every redirect, so it is a byte loop with no allocation.
    #[inline]
    pub fn is_valid(&self, code: &str) -> bool {
        let len = code.len();
        len >= self.min_length
            && len <= self.length
            && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
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
    fn generated_codes_use_the_whole_alphabet() {
        let policy = CodePolicy::new(32, 32);
        let seen: std::collections::HashSet<char> =
            (0..200).flat_map(|_| policy.generate().chars().collect::<Vec<_>>()).collect();
        assert_eq!(seen.len(), 64);
    }
}
