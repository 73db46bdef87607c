//! Identifiers. Each is a newtype that can only hold a well-formed value (parse, don't validate).

use std::fmt;

use crate::Error;

/// A key's id: 16 random bytes, written `k-` followed by 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 16]);

impl KeyId {
    /// A fresh random id.
    pub fn generate() -> Result<Self, Error> {
        Ok(Self(crate::random_array()?))
    }

    /// The id from its 16 raw bytes (as stored in a blob).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses `k-<32 hex>`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidId {
            kind: "key id",
            reason: reason.to_owned(),
        };
        let hex_part = s.strip_prefix("k-").ok_or_else(|| bad("must start with `k-`"))?;
        if hex_part.len() != 32
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(bad("must be `k-` followed by 32 lowercase hex digits"));
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad("bad hex"))?;
        Ok(Self(out))
    }

    /// Whether `s` looks like a key id rather than a key name.
    pub fn looks_like_id(s: &str) -> bool {
        s.starts_with("k-") && s.len() == 34
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k-{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A key version, from 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct KeyVersion(u32);

impl KeyVersion {
    /// The first version of every key.
    pub const FIRST: Self = Self(1);

    /// A version number; 0 is not a version.
    pub fn new(v: u32) -> Option<Self> {
        (v > 0).then_some(Self(v))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn check_chars(
    kind: &'static str,
    s: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    what: &str,
) -> Result<(), Error> {
    if s.is_empty() || s.len() > max {
        return Err(Error::InvalidId {
            kind,
            reason: format!("must be 1 to {max} characters"),
        });
    }
    if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        return Err(Error::InvalidId {
            kind,
            reason: format!("character {c:?} not allowed (allowed: {what})"),
        });
    }
    Ok(())
}

/// A key's unique, human-chosen name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct KeyName(String);

impl KeyName {
    /// 1 to 128 characters of `[A-Za-z0-9/_.-]`, not shaped like a key id.
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_chars(
            "key name",
            s,
            128,
            |c| c.is_ascii_alphanumeric() || "/_.-".contains(c),
            "A-Z a-z 0-9 / _ . -",
        )?;
        if KeyId::looks_like_id(s) {
            return Err(Error::InvalidId {
                kind: "key name",
                reason: "must not look like a key id (`k-` + 32 characters)".into(),
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An administrator's id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AdminId(String);

impl AdminId {
    /// 1 to 64 characters of `[A-Za-z0-9._@-]`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_chars(
            "admin id",
            s,
            64,
            |c| c.is_ascii_alphanumeric() || "._@-".contains(c),
            "A-Z a-z 0-9 . _ @ -",
        )?;
        Ok(Self(s.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AdminId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who calls the data plane, as derived from the client certificate (`spiffe://…`, `dns:…`,
/// `cn:…`), or `anonymous` for a plaintext dev-mode connection.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Principal(String);

impl Principal {
    /// The principal of plaintext connections, which exist only in dev mode.
    pub fn anonymous() -> Self {
        Self("anonymous".into())
    }

    /// A principal from a name the server derived itself (not user input).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The principal as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the dev-mode anonymous principal.
    pub fn is_anonymous(&self) -> bool {
        self.0 == "anonymous"
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_round_trips_and_rejects_bad_forms() {
        let id = KeyId::generate().unwrap();
        assert_eq!(KeyId::parse(&id.to_string()).unwrap(), id);
        for bad in [
            "",
            "k-",
            "x-00000000000000000000000000000000",
            "k-0000",
            "k-0000000000000000000000000000000G",
            "k-0000000000000000000000000000000A",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_refuse_odd_characters_and_id_shapes() {
        assert!(KeyName::parse("payments/db-key_1.a").is_ok());
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse("a b").is_err());
        assert!(KeyName::parse(&"a".repeat(129)).is_err());
        assert!(KeyName::parse("k-00000000000000000000000000000000").is_err());
        assert!(AdminId::parse("alice@example.eu").is_ok());
        assert!(AdminId::parse("al ice").is_err());
    }
}
