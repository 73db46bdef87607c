//! Integrity of the rows `kmsd` keeps in a database it does not trust (threat model, adversary
//! 1: the operator runs the database). Three pieces, all without I/O, so the server and offline
//! verifiers share one definition:
//!
//! - **Row authenticators**: every row `kmsd` acts on carries HMAC-SHA-256 under an integrity
//!   key that only the seal can open (one per root key generation, wrapped under that root),
//!   over the canonical encoding of [`RowEncoding`]: the table, every column by name and value,
//!   and the row's version. A row inserted, edited, or given another row's authenticator does
//!   not verify.
//! - **The state log**: every authenticated write appends, per row written, an entry (version,
//!   table, primary key, put or delete) to a hash chain ([`state_entry_hash`]). The head of the
//!   chain is in the state row, itself authenticated. Replaying the log tells, for every row,
//!   the one version `kmsd` last wrote, so an older genuine row put back (a rollback) is told
//!   from the current one row by row.
//! - **Anchors**: the state head (version, log position, hash) is signed into every audit
//!   checkpoint, held in memory by every running replica and, with the pkcs11 seal, in the HSM,
//!   so rolling the whole database back to an earlier genuine state is caught too.
//!
//! Nothing here logs, and the integrity key has no `Debug` or `Clone`.

use ring::{digest, hmac};

use crate::secret::SecretKey;
use crate::Error;

const ROW_LABEL: &[u8] = b"kms-row-v1\0";
const STATE_LABEL: &[u8] = b"kms-state-v1\0";
const STATE_LABEL_V2: &[u8] = b"kms-state-v2\0";
const ROW_DIGEST_LABEL: &[u8] = b"kms-row-digest-v1\0";

/// The hash before the first state log entry.
pub const STATE_GENESIS: [u8; 32] = [0u8; 32];

/// A column's value as stored. A NULL carries no kind: the schema fixes it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    /// An integer column (booleans are 0 or 1).
    Int(Option<i64>),
    /// A text column.
    Text(Option<String>),
    /// A binary column.
    Bytes(Option<Vec<u8>>),
}

impl Value {
    /// A non-NULL integer.
    pub fn int(v: impl Into<i64>) -> Self {
        Self::Int(Some(v.into()))
    }

    /// A non-NULL text.
    pub fn text(v: impl Into<String>) -> Self {
        Self::Text(Some(v.into()))
    }

    /// A non-NULL byte string.
    pub fn bytes(v: impl Into<Vec<u8>>) -> Self {
        Self::Bytes(Some(v.into()))
    }

    /// A boolean, stored as 0 or 1.
    pub fn bool(v: bool) -> Self {
        Self::Int(Some(i64::from(v)))
    }

    /// Whether it is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Int(None) | Self::Text(None) | Self::Bytes(None))
    }
}

/// The canonical encoding of one row, which its authenticator covers:
/// "kms-row-v1\0" ‖ u16 BE table length ‖ table ‖ i64 BE row version ‖ u16 BE column count ‖
/// for each column in schema order: u16 BE name length ‖ name ‖ kind byte (0 NULL, 1 integer
/// followed by i64 BE, 2 text and 3 bytes each followed by u32 BE length and the bytes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RowEncoding(Vec<u8>);

impl RowEncoding {
    /// Encodes `columns` (name, value) of a row of `table` at `version`.
    pub fn new<'a>(table: &str, version: i64, columns: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Self {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(ROW_LABEL);
        put_short(&mut out, table.as_bytes());
        out.extend_from_slice(&version.to_be_bytes());
        let count_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let mut count: u16 = 0;
        for (name, value) in columns {
            count = count.saturating_add(1);
            put_short(&mut out, name.as_bytes());
            match value {
                Value::Int(None) | Value::Text(None) | Value::Bytes(None) => out.push(0),
                Value::Int(Some(i)) => {
                    out.push(1);
                    out.extend_from_slice(&i.to_be_bytes());
                }
                Value::Text(Some(s)) => {
                    out.push(2);
                    put_long(&mut out, s.as_bytes());
                }
                Value::Bytes(Some(b)) => {
                    out.push(3);
                    put_long(&mut out, b);
                }
            }
        }
        out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
        Self(out)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn put_short(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_long(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// A row authenticator: HMAC-SHA-256 of a [`RowEncoding`].
pub const TAG_LEN: usize = 32;

/// The integrity key of one root key generation. Holds a secret: no `Debug`, `Clone` or
/// `Serialize`.
pub struct IntegrityKey {
    key: hmac::Key,
}

impl IntegrityKey {
    /// The key for 32 secret bytes (generated once per root generation, stored wrapped under
    /// that generation's root key).
    pub fn new(secret: &SecretKey<32>) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret()),
        }
    }

    /// The authenticator of `row`.
    pub fn tag(&self, row: &RowEncoding) -> [u8; TAG_LEN] {
        let t = hmac::sign(&self.key, row.as_bytes());
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(t.as_ref());
        out
    }

    /// Checks `tag` against `row` in constant time.
    pub fn verify(&self, row: &RowEncoding, tag: &[u8]) -> Result<(), Error> {
        hmac::verify(&self.key, row.as_bytes(), tag).map_err(|_| Error::BadSignature)
    }
}

/// What a state log entry records of a row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StateOp {
    /// The row was written (inserted or updated) at the entry's version.
    Put,
    /// The row was deleted.
    Delete,
}

impl StateOp {
    /// The stored name: `put` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Delete => "delete",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "put" => Some(Self::Put),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// One state log entry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StateEntry {
    /// Its position in the log, from 1, without gaps.
    pub seq: i64,
    /// The state version of the transaction that wrote the row (every row it wrote carries it).
    pub version: i64,
    /// The table.
    pub table: String,
    /// The row's primary key, canonical text (a JSON array of the key columns as strings).
    pub key: String,
    /// Put or delete.
    pub op: StateOp,
    /// For a put, the [`row_digest`] of the row as written: which content the version is, so a
    /// row authenticated at this version by a transaction that never committed (the same
    /// version, other content) is not taken for it. `None` for a delete, and for entries
    /// written before the digest was logged.
    pub digest: Option<[u8; 32]>,
}

/// The hash of `entry` after `prev`. Without a digest: SHA-256 of "kms-state-v1\0" ‖ prev ‖ seq
/// (i64 BE) ‖ version (i64 BE) ‖ table, key and op name, each as u32 BE length ‖ UTF-8. With
/// one: the same under "kms-state-v2\0", followed by the 32-byte digest.
pub fn state_entry_hash(prev: &[u8; 32], entry: &StateEntry) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(if entry.digest.is_some() {
        STATE_LABEL_V2
    } else {
        STATE_LABEL
    });
    ctx.update(prev);
    ctx.update(&entry.seq.to_be_bytes());
    ctx.update(&entry.version.to_be_bytes());
    for field in [entry.table.as_str(), entry.key.as_str(), entry.op.as_str()] {
        ctx.update(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    if let Some(d) = &entry.digest {
        ctx.update(d);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What a state log entry records of a row's content: SHA-256 of "kms-row-digest-v1\0" ‖ the
/// row's [`RowEncoding`] (which holds its table, version and every column). Independent of the
/// integrity key, so a root rotation that re-authenticates the row keeps it.
pub fn row_digest(row: &RowEncoding) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(ROW_DIGEST_LABEL);
    ctx.update(row.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The head of the state log: what the state row holds, and what checkpoints sign.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct StateHead {
    /// The state version: how many authenticated write transactions there have been.
    pub version: i64,
    /// The last log entry's position (0 for an empty log).
    pub seq: i64,
    /// The last log entry's hash ([`STATE_GENESIS`] for an empty log).
    pub hash: [u8; 32],
}

impl StateHead {
    /// Whether `later` can follow this head: nothing of it goes back.
    pub fn is_extended_by(&self, later: &StateHead) -> bool {
        later.version >= self.version && later.seq >= self.seq && (later.seq != self.seq || later.hash == self.hash)
    }
}

/// Canonical text of a primary key: a JSON array of its columns as strings.
pub fn key_text<I, S>(parts: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let parts: Vec<String> = parts.into_iter().map(|s| s.as_ref().to_owned()).collect();
    serde_json::to_string(&parts).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cols() -> Vec<(&'static str, Value)> {
        vec![
            ("id", Value::text("k-1")),
            ("state", Value::text("enabled")),
            ("deletion_unix_ms", Value::Int(None)),
            ("wrapped", Value::bytes(vec![1, 2, 3])),
        ]
    }

    fn enc(table: &str, version: i64, cols: &[(&'static str, Value)]) -> RowEncoding {
        RowEncoding::new(table, version, cols.iter().map(|(n, v)| (*n, v)))
    }

    #[test]
    fn encoding_layout() {
        let e = enc("t", 258, &[("a", Value::int(1)), ("b", Value::Text(None))]);
        let b = e.as_bytes();
        assert_eq!(&b[..11], b"kms-row-v1\0");
        assert_eq!(&b[11..14], &[0, 1, b't']);
        assert_eq!(&b[14..22], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&b[22..24], &[0, 2]);
        assert_eq!(&b[24..27], &[0, 1, b'a']);
        assert_eq!(b[27], 1);
        assert_eq!(&b[28..36], &1i64.to_be_bytes());
        assert_eq!(&b[36..39], &[0, 1, b'b']);
        assert_eq!(b[39], 0);
        assert_eq!(b.len(), 40);
    }

    #[test]
    fn every_part_of_a_row_is_covered() {
        let key = IntegrityKey::new(&SecretKey::generate().unwrap());
        let base = cols();
        let tag = key.tag(&enc("keys", 7, &base));
        key.verify(&enc("keys", 7, &base), &tag).unwrap();
        // Another table, version, column value, column name, NULL for empty, order, a column
        // more or less: none verifies.
        assert!(key.verify(&enc("hardware", 7, &base), &tag).is_err());
        assert!(key.verify(&enc("keys", 6, &base), &tag).is_err());
        let mut changed = base.clone();
        changed[1].1 = Value::text("disabled");
        assert!(key.verify(&enc("keys", 7, &changed), &tag).is_err());
        let mut renamed = base.clone();
        renamed[1].0 = "status";
        assert!(key.verify(&enc("keys", 7, &renamed), &tag).is_err());
        let mut emptied = base.clone();
        emptied[3].1 = Value::bytes(Vec::new());
        let mut nulled = base.clone();
        nulled[3].1 = Value::Bytes(None);
        assert_ne!(enc("keys", 7, &emptied), enc("keys", 7, &nulled));
        let mut swapped = base.clone();
        swapped.swap(0, 1);
        assert!(key.verify(&enc("keys", 7, &swapped), &tag).is_err());
        assert!(key.verify(&enc("keys", 7, &base[..3]), &tag).is_err());
        // A text and the same bytes as a blob differ.
        assert_ne!(
            enc("t", 1, &[("a", Value::text("ab"))]),
            enc("t", 1, &[("a", Value::bytes(b"ab".to_vec()))])
        );
        // Another key does not verify.
        let other = IntegrityKey::new(&SecretKey::generate().unwrap());
        assert!(other.verify(&enc("keys", 7, &base), &tag).is_err());
    }

    #[test]
    fn state_log_chains() {
        let e1 = StateEntry {
            seq: 1,
            version: 1,
            table: "admins".into(),
            key: key_text(["alice"]),
            op: StateOp::Put,
            digest: None,
        };
        let h1 = state_entry_hash(&STATE_GENESIS, &e1);
        // A digest is covered, and which content it names matters.
        let with = StateEntry {
            digest: Some([7; 32]),
            ..e1.clone()
        };
        let h_with = state_entry_hash(&STATE_GENESIS, &with);
        assert_ne!(h_with, h1);
        assert_ne!(
            state_entry_hash(
                &STATE_GENESIS,
                &StateEntry {
                    digest: Some([8; 32]),
                    ..e1.clone()
                }
            ),
            h_with
        );
        let e2 = StateEntry { seq: 2, ..e1.clone() };
        assert_ne!(state_entry_hash(&h1, &e2), state_entry_hash(&STATE_GENESIS, &e2));
        let deleted = StateEntry {
            op: StateOp::Delete,
            ..e1.clone()
        };
        assert_ne!(state_entry_hash(&STATE_GENESIS, &deleted), h1);
        assert_eq!(key_text(["2", "alice"]), r#"["2","alice"]"#);
        assert_eq!(StateOp::parse("delete"), Some(StateOp::Delete));
        let a = StateHead {
            version: 3,
            seq: 5,
            hash: [1; 32],
        };
        assert!(a.is_extended_by(&a));
        assert!(a.is_extended_by(&StateHead {
            version: 4,
            seq: 6,
            hash: [2; 32]
        }));
        assert!(!a.is_extended_by(&StateHead {
            version: 2,
            seq: 6,
            hash: [2; 32]
        }));
        assert!(!a.is_extended_by(&StateHead {
            version: 3,
            seq: 5,
            hash: [2; 32]
        }));
    }
}
