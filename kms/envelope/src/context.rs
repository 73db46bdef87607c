//! The encryption context: string pairs authenticated in the header (ESDK
//! `data-format/message-header.md#aad`), and given to the wrapping keys (kmsd binds them to the
//! wrapped key, and its policy and audit see them).

use std::collections::BTreeMap;

use crate::error::FormatError;
use crate::wire::Cursor;

/// Keys with this prefix are the format's own (`aws-crypto-public-key` carries the signing key
/// of a signed message); callers may not set them.
pub const RESERVED_PREFIX: &str = "aws-crypto-";

/// The key under which a signed message's header carries the verification key (base64 of the
/// compressed point).
pub(crate) const PUBLIC_KEY_KEY: &str = "aws-crypto-public-key";

/// An encryption context: pairs in key order (byte order of their UTF-8, as the format sorts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair (builder style).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// The pairs.
    pub fn pairs(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// One value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether it has no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn insert(&mut self, key: String, value: String) {
        self.0.insert(key, value);
    }

    /// Refuses keys the format reserves, as a caller's context must not carry them.
    pub(crate) fn check_caller_keys(&self) -> Result<(), crate::Error> {
        match self.0.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
            Some(k) => Err(crate::Error::InvalidContext(format!(
                "the key {k:?} starts with {RESERVED_PREFIX:?}, which the message format reserves"
            ))),
            None => Ok(()),
        }
    }

    /// The serialized form: empty for an empty context, else a u16 count and each pair as u16
    /// length-prefixed key and value, in key order. Also the AAD of the raw AES wrap.
    pub fn serialize(&self) -> Result<Vec<u8>, crate::Error> {
        let mut out = Vec::new();
        if self.0.is_empty() {
            return Ok(out);
        }
        let count = u16::try_from(self.0.len())
            .map_err(|_| crate::Error::InvalidContext(format!("{} pairs; at most 65535", self.0.len())))?;
        out.extend_from_slice(&count.to_be_bytes());
        for (k, v) in &self.0 {
            for item in [k, v] {
                let len = u16::try_from(item.len()).map_err(|_| {
                    crate::Error::InvalidContext(format!("an entry of {} bytes; at most 65535", item.len()))
                })?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(item.as_bytes());
            }
        }
        if out.len() > usize::from(u16::MAX) {
            return Err(crate::Error::InvalidContext(format!(
                "{} bytes serialized; the header allows at most 65535",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Parses the serialized form (the header's AAD field, whose length is known).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut map = BTreeMap::new();
        if bytes.is_empty() {
            return Ok(Self(map));
        }
        let mut c = Cursor::new(bytes);
        let count = c
            .u16()
            .map_err(|_| FormatError::Malformed("encryption context: truncated count"))?;
        if count == 0 {
            return Err(FormatError::Malformed(
                "encryption context: a count of zero with a non-empty field",
            ));
        }
        for _ in 0..count {
            let k = c
                .u16_prefixed()
                .map_err(|_| FormatError::Malformed("encryption context: truncated key"))?;
            let v = c
                .u16_prefixed()
                .map_err(|_| FormatError::Malformed("encryption context: truncated value"))?;
            let k = String::from_utf8(k.to_vec())
                .map_err(|_| FormatError::Malformed("encryption context: a key is not UTF-8"))?;
            let v = String::from_utf8(v.to_vec())
                .map_err(|_| FormatError::Malformed("encryption context: a value is not UTF-8"))?;
            if map.insert(k, v).is_some() {
                return Err(FormatError::Malformed("encryption context: a key appears twice"));
            }
        }
        if !c.is_empty() {
            return Err(FormatError::Malformed("encryption context: bytes after the last pair"));
        }
        Ok(Self(map))
    }
}

impl From<BTreeMap<String, String>> for EncryptionContext {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EncryptionContext {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serializes_sorted_and_parses_back() {
        let ec: EncryptionContext = [("b", "2"), ("a", "1")].into_iter().collect();
        let bytes = ec.serialize().unwrap();
        assert_eq!(hex::encode(&bytes), "0002000161000131000162000132");
        assert_eq!(EncryptionContext::parse(&bytes).unwrap(), ec);
        assert!(EncryptionContext::new().serialize().unwrap().is_empty());
    }

    #[test]
    fn refuses_duplicates_trailing_bytes_and_zero_counts() {
        let dup = hex::decode("0002000161000131000161000132").unwrap();
        assert!(EncryptionContext::parse(&dup).is_err());
        assert!(EncryptionContext::parse(&hex::decode("000100016100013100").unwrap()).is_err());
        assert!(EncryptionContext::parse(&hex::decode("0000").unwrap()).is_err());
    }

    #[test]
    fn reserved_keys_are_refused_from_callers() {
        let ec = EncryptionContext::new().with("aws-crypto-public-key", "x");
        assert!(ec.check_caller_keys().is_err());
    }
}
