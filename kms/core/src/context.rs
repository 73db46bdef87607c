//! The encryption context: caller-chosen string pairs bound to a blob as additional authenticated
//! data, and their canonical encoding. The encoding must never change for a given map, or old
//! blobs stop decrypting.

use std::collections::BTreeMap;

use crate::Error;

/// At most this many pairs.
pub const MAX_PAIRS: usize = 64;
/// At most this many bytes in one key or value.
pub const MAX_ITEM_BYTES: usize = 1024;
/// At most this many bytes in all keys and values together.
pub const MAX_TOTAL_BYTES: usize = 8192;

/// A validated encryption context.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Checks the limits: at most 64 pairs, keys of 1 to 1024 bytes, values of at most 1024
    /// bytes, 8192 bytes in all.
    pub fn new(map: BTreeMap<String, String>) -> Result<Self, Error> {
        if map.len() > MAX_PAIRS {
            return Err(Error::InvalidContext(format!(
                "{} pairs; at most {MAX_PAIRS} are allowed",
                map.len()
            )));
        }
        let mut total = 0usize;
        for (k, v) in &map {
            if k.is_empty() {
                return Err(Error::InvalidContext("empty key".into()));
            }
            if k.len() > MAX_ITEM_BYTES || v.len() > MAX_ITEM_BYTES {
                return Err(Error::InvalidContext(format!(
                    "entry {:?} exceeds {MAX_ITEM_BYTES} bytes",
                    truncate(k)
                )));
            }
            total += k.len() + v.len();
        }
        if total > MAX_TOTAL_BYTES {
            return Err(Error::InvalidContext(format!(
                "{total} bytes in all; at most {MAX_TOTAL_BYTES}"
            )));
        }
        Ok(Self(map))
    }

    /// The pairs, in key order.
    pub fn pairs(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The canonical encoding: a u32 count, then for each pair in byte order of the keys a u32
    /// length and the key's UTF-8 bytes, a u32 length and the value's bytes (big-endian lengths).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.0.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>());
        put_u32(&mut out, self.0.len());
        // BTreeMap<String, _> orders by the keys' bytes, which is the order we promise.
        for (k, v) in &self.0 {
            put_u32(&mut out, k.len());
            out.extend_from_slice(k.as_bytes());
            put_u32(&mut out, v.len());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Limits above keep every length far below u32::MAX.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_encoding_is_order_independent_and_unambiguous() {
        let a = EncryptionContext::new(BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())])).unwrap();
        assert_eq!(
            a.canonical_bytes(),
            [
                &[0, 0, 0, 2][..],
                &[0, 0, 0, 1],
                b"a",
                &[0, 0, 0, 1],
                b"1",
                &[0, 0, 0, 1],
                b"b",
                &[0, 0, 0, 1],
                b"2"
            ]
            .concat()
        );
        let x = EncryptionContext::new(BTreeMap::from([("ab".into(), "c".into())])).unwrap();
        let y = EncryptionContext::new(BTreeMap::from([("a".into(), "bc".into())])).unwrap();
        assert_ne!(x.canonical_bytes(), y.canonical_bytes());
    }

    #[test]
    fn limits_are_enforced() {
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(EncryptionContext::new(many).is_err());
        assert!(EncryptionContext::new(BTreeMap::from([(String::new(), "v".into())])).is_err());
        assert!(EncryptionContext::new(BTreeMap::from([("k".into(), "v".repeat(1025))])).is_err());
    }
}
