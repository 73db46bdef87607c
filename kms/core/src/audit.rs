//! The audit chain: each entry's hash covers its fields and the previous entry's hash, so an
//! edited, removed or reordered entry breaks every hash after it. The server writes entries; the
//! CLI re-computes the chain offline with this same code. Entries never carry key material.

use ring::digest;

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0u8; 32];

const LABEL: &[u8] = b"kms-audit-v1\0";

/// How a call ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Done.
    Allowed,
    /// Refused (bad input, not permitted, wrong state).
    Refused,
    /// Failed inside the server.
    Error,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }
}

/// One audit entry's content, before it has a place in the chain.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    /// When, in milliseconds since the Unix epoch.
    pub time_unix_ms: i64,
    /// Who: a principal (data plane) or `admin:<id>` (admin plane).
    pub caller: String,
    /// The operation, e.g. `decrypt`, `admin.create_key`.
    pub operation: String,
    /// The key concerned, if any.
    pub key_id: Option<String>,
    /// `allowed`, `refused` or `error`.
    pub outcome: String,
    /// A stable reason code (empty when allowed).
    pub reason: String,
    /// Details for humans (JSON object); never key material.
    pub detail: String,
}

/// A record with its place in the chain.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// The content.
    pub record: Record,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev_hash: [u8; 32],
    /// This entry's hash.
    pub hash: [u8; 32],
}

/// The hash of `record` at position `seq` after `prev_hash`: SHA-256 of "kms-audit-v1\0" ‖ prev
/// hash ‖ seq (i64 BE) ‖ time (i64 BE) ‖ each text field as u32 BE length ‖ UTF-8 (caller,
/// operation, key id or empty, outcome, reason, detail) ‖ a byte 1 or 0 for whether a key id is
/// present.
pub fn entry_hash(prev_hash: &[u8; 32], seq: i64, record: &Record) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(LABEL);
    ctx.update(prev_hash);
    ctx.update(&seq.to_be_bytes());
    ctx.update(&record.time_unix_ms.to_be_bytes());
    for field in [
        record.caller.as_str(),
        record.operation.as_str(),
        record.key_id.as_deref().unwrap_or(""),
        record.outcome.as_str(),
        record.reason.as_str(),
        record.detail.as_str(),
    ] {
        ctx.update(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    ctx.update(&[u8::from(record.key_id.is_some())]);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Chains `records` after (`last_seq`, `last_hash`).
pub fn chain(last_seq: i64, last_hash: [u8; 32], records: Vec<Record>) -> Vec<Entry> {
    let mut prev = last_hash;
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            let seq = last_seq + 1 + i64::try_from(i).unwrap_or(i64::MAX);
            let hash = entry_hash(&prev, seq, &record);
            let e = Entry {
                seq,
                record,
                prev_hash: prev,
                hash,
            };
            prev = hash;
            e
        })
        .collect()
}

/// Where a chain is broken.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Break {
    /// The first entry that does not verify (or the sequence number that is missing).
    pub seq: i64,
    /// What is wrong with it.
    pub what: String,
}

/// Checks entries in order from the first: sequence numbers without gaps from 1, each entry's
/// previous hash equal to the hash before it, each hash recomputed from the fields.
#[derive(Debug)]
pub struct ChainVerifier {
    next_seq: i64,
    prev: [u8; 32],
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev: GENESIS,
        }
    }
}

impl ChainVerifier {
    /// Checks the next entry.
    pub fn push(&mut self, e: &Entry) -> Result<(), Break> {
        if e.seq != self.next_seq {
            return Err(Break {
                seq: self.next_seq,
                what: format!("entry {} is missing (found {} next)", self.next_seq, e.seq),
            });
        }
        if e.prev_hash != self.prev {
            return Err(Break {
                seq: e.seq,
                what: "its previous-hash does not match the hash of the entry before it".into(),
            });
        }
        if entry_hash(&self.prev, e.seq, &e.record) != e.hash {
            return Err(Break {
                seq: e.seq,
                what: "its content does not match its hash (the entry was altered)".into(),
            });
        }
        self.prev = e.hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Entries verified so far.
    pub fn count(&self) -> i64 {
        self.next_seq - 1
    }

    /// The hash of the last verified entry.
    pub fn head(&self) -> [u8; 32] {
        self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> Record {
        Record {
            time_unix_ms: i,
            caller: "cn:a".into(),
            operation: "decrypt".into(),
            key_id: Some("k-1".into()),
            outcome: "allowed".into(),
            reason: String::new(),
            detail: "{}".into(),
        }
    }

    #[test]
    fn tampering_is_found_at_the_right_entry() {
        let entries = chain(0, GENESIS, (0..5).map(rec).collect());
        let mut v = ChainVerifier::default();
        entries.iter().for_each(|e| v.push(e).unwrap());
        assert_eq!(v.count(), 5);

        let mut edited = entries.clone();
        edited[2].record.outcome = "refused".into();
        let mut v = ChainVerifier::default();
        let b = edited.iter().try_for_each(|e| v.push(e)).unwrap_err();
        assert_eq!(b.seq, 3);

        let mut removed = entries.clone();
        removed.remove(1);
        let mut v = ChainVerifier::default();
        assert_eq!(removed.iter().try_for_each(|e| v.push(e)).unwrap_err().seq, 2);

        let mut k = rec(0);
        k.key_id = None;
        let mut j = rec(0);
        j.key_id = Some(String::new());
        assert_ne!(entry_hash(&GENESIS, 1, &k), entry_hash(&GENESIS, 1, &j));
    }
}
