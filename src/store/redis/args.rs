//! A Redis call's arguments built in one buffer.

use crate::model::{ClickRecord, EscapedTexts};
use crate::store::StoreError;

/// A call's arguments in one buffer: building a batch's request allocates per call, not per argument
/// (it was ~10 small allocations per hit — callgrind, docs/PERFORMANCE.md session 6).
#[derive(Default)]
pub(super) struct Args {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Args {
    /// Room for about `bytes` of arguments: a single node's call carries a whole batch (~250 bytes a hit),
    /// and growing the buffer from empty cost ~1k instructions per hit in copies.
    pub(super) fn with_capacity(bytes: usize) -> Self {
        Self { data: Vec::with_capacity(bytes), ends: Vec::with_capacity(bytes / 16) }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.ends.push(self.data.len());
    }

    /// One argument made of `parts` (a key from its pieces, without building a `String`).
    pub(super) fn push_parts(&mut self, parts: &[&str]) {
        for part in parts {
            self.data.extend_from_slice(part.as_bytes());
        }
        self.ends.push(self.data.len());
    }

    /// Appends `other`'s arguments after these.
    pub(super) fn append(&mut self, other: &Args) {
        let base = self.data.len();
        self.data.extend_from_slice(&other.data);
        self.ends.extend(other.ends.iter().map(|e| e + base));
    }

    /// How many arguments.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(super) fn int<I: itoa::Integer>(&mut self, v: I) {
        self.push(itoa::Buffer::new().format(v).as_bytes());
    }

    pub(super) fn recent(&mut self, click: &ClickRecord, texts: &mut EscapedTexts) {
        click.write_recent_json_with(&mut self.data, texts);
        self.ends.push(self.data.len());
    }

    pub(super) fn json<T: serde::Serialize>(&mut self, value: &T) -> Result<(), StoreError> {
        serde_json::to_writer(&mut self.data, value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.ends.push(self.data.len());
        Ok(())
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(s, e)| &self.data[s..e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_come_back_one_by_one() {
        let mut args = Args::default();
        args.push(b"b");
        args.int(250_u64);
        args.push(b"");
        args.json(&serde_json::json!({"a": 1})).expect("serializes");
        let got: Vec<&[u8]> = args.iter().collect();
        assert_eq!(got, vec![&b"b"[..], b"250", b"", br#"{"a":1}"#]);
        assert_eq!(Args::default().iter().count(), 0);
        let mut keys = Args::default();
        keys.push(b"k1");
        let mut run = Args::default();
        run.push_parts(&["p", ":cnt:{", "abc", "}"]);
        run.push_parts(&["p", ":cnt:{", "de", "}"]);
        keys.append(&run);
        let got: Vec<&[u8]> = keys.iter().collect();
        assert_eq!(got, vec![&b"k1"[..], b"p:cnt:{abc}", b"p:cnt:{de}"]);
        assert_eq!((keys.len(), run.len(), keys.is_empty()), (3, 2, false));
    }
}
