//! The audit chain: each entry's hash covers its fields and the previous entry's hash, so an
//! edited, removed or reordered entry breaks every hash after it. The server writes entries; the
//! CLI re-computes the chain offline with this same code. Entries never carry key material.

use ring::digest;
use ring::signature::{self, KeyPair as _};

use crate::integrity::StateHead;
use crate::secret::SecretKey;
use crate::Error;

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

// ----- signed checkpoints ----------------------------------------------------------------------

const CHECKPOINT_LABEL: &[u8] = b"kms-audit-checkpoint-v2\0";

/// A statement that the chain had `hash` at `seq` at a time, signed by the key `kid`. A
/// checkpoint pins everything up to `seq`: rewriting or dropping an entry at or before it (even
/// with every later hash recomputed) no longer matches the signed hash. Checkpoints form a chain
/// of their own (each names the one before it), so one cannot be removed from the middle, and each
/// signs the head of the server's state log ([`StateHead`]), so the authenticated rows of the
/// database cannot be rolled back behind a checkpoint either.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    /// The last entry covered.
    pub seq: i64,
    /// That entry's hash.
    pub hash: [u8; 32],
    /// When it was signed, in milliseconds since the Unix epoch.
    pub time_unix_ms: i64,
    /// The signing key's id ([`CheckpointKey::kid_for`]).
    pub kid: String,
    /// The previous checkpoint's seq (0 for the first checkpoint).
    pub prev_seq: i64,
    /// The previous checkpoint's id ([`Checkpoint::id`]; zeros for the first checkpoint).
    pub prev_id: [u8; 32],
    /// The head of the state log when the checkpoint was signed.
    pub state: StateHead,
}

impl Checkpoint {
    /// The checkpoint's id: SHA-256 of what its signature covers ([`checkpoint_message`]), which
    /// the next checkpoint names.
    pub fn id(&self) -> [u8; 32] {
        let d = digest::digest(&digest::SHA256, &checkpoint_message(self));
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// Whether this is the first checkpoint of a chain (it names no previous one).
    pub fn is_first(&self) -> bool {
        self.prev_seq == 0 && self.prev_id == [0; 32]
    }
}

/// What a checkpoint signature covers: "kms-audit-checkpoint-v2\0" ‖ seq (i64 BE) ‖ hash ‖ time
/// (i64 BE) ‖ previous checkpoint's seq (i64 BE) ‖ its id ‖ state version (i64 BE) ‖ state log
/// seq (i64 BE) ‖ state log hash ‖ kid (UTF-8, the rest of the message).
pub fn checkpoint_message(c: &Checkpoint) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_LABEL.len() + 168 + c.kid.len());
    m.extend_from_slice(CHECKPOINT_LABEL);
    m.extend_from_slice(&c.seq.to_be_bytes());
    m.extend_from_slice(&c.hash);
    m.extend_from_slice(&c.time_unix_ms.to_be_bytes());
    m.extend_from_slice(&c.prev_seq.to_be_bytes());
    m.extend_from_slice(&c.prev_id);
    m.extend_from_slice(&c.state.version.to_be_bytes());
    m.extend_from_slice(&c.state.seq.to_be_bytes());
    m.extend_from_slice(&c.state.hash);
    m.extend_from_slice(c.kid.as_bytes());
    m
}

/// What a server keeps outside the database (in its HSM) of the last checkpoint it signed: its
/// seq, its id and the state head it signed. A database rolled back behind it is caught when
/// the server starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CheckpointAnchor {
    /// The checkpoint's seq.
    pub seq: i64,
    /// Its id ([`Checkpoint::id`]).
    pub id: [u8; 32],
    /// The state head it signed.
    pub state: StateHead,
}

const ANCHOR_LABEL: &[u8] = b"kms-anchor-v1\0";

impl CheckpointAnchor {
    /// The anchor of `c`.
    pub fn of(c: &Checkpoint) -> Self {
        Self {
            seq: c.seq,
            id: c.id(),
            state: c.state,
        }
    }

    /// "kms-anchor-v1\0" ‖ seq ‖ id ‖ state version ‖ state seq ‖ state hash (integers i64 BE).
    pub fn encode(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(ANCHOR_LABEL.len() + 88);
        m.extend_from_slice(ANCHOR_LABEL);
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&self.id);
        m.extend_from_slice(&self.state.version.to_be_bytes());
        m.extend_from_slice(&self.state.seq.to_be_bytes());
        m.extend_from_slice(&self.state.hash);
        m
    }

    /// Parses [`CheckpointAnchor::encode`]'s output.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b = b.strip_prefix(ANCHOR_LABEL)?;
        if b.len() != 8 + 32 + 8 + 8 + 32 {
            return None;
        }
        let i64_at = |i: usize| b[i..i + 8].try_into().ok().map(i64::from_be_bytes);
        Some(Self {
            seq: i64_at(0)?,
            id: b[8..40].try_into().ok()?,
            state: StateHead {
                version: i64_at(40)?,
                seq: i64_at(48)?,
                hash: b[56..88].try_into().ok()?,
            },
        })
    }
}

/// The signature algorithms of checkpoint keys (JOSE names).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CheckpointAlgorithm {
    /// Ed25519 (software seals: the seed is wrapped under the root key).
    EdDsa,
    /// ECDSA P-256 with SHA-256, ASN.1 DER signatures (a key inside the pkcs11 seal's HSM).
    Es256,
}

impl CheckpointAlgorithm {
    /// The JOSE name: `EdDSA` or `ES256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
        }
    }

    /// Parses a JOSE name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(Self::EdDsa),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }
}

/// A public key that verifies checkpoints. Parsed: its public key has the algorithm's form and
/// its kid is derived from it, so a key whose kid was changed cannot be built.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CheckpointKey {
    kid: String,
    algorithm: CheckpointAlgorithm,
    public_key: Vec<u8>,
}

impl CheckpointKey {
    /// The key for `public_key` (EdDSA: 32 bytes; ES256: a SEC1 uncompressed P-256 point, 65
    /// bytes).
    pub fn new(algorithm: CheckpointAlgorithm, public_key: Vec<u8>) -> Result<Self, Error> {
        let ok = match algorithm {
            CheckpointAlgorithm::EdDsa => public_key.len() == 32,
            // Whether the point is on the curve is checked by every verification.
            CheckpointAlgorithm::Es256 => public_key.len() == 65 && public_key.first() == Some(&4),
        };
        if !ok {
            return Err(Error::InvalidPublicKey(match algorithm {
                CheckpointAlgorithm::EdDsa => "Ed25519 checkpoint",
                CheckpointAlgorithm::Es256 => "ES256 checkpoint",
            }));
        }
        Ok(Self {
            kid: Self::kid_for(&public_key),
            algorithm,
            public_key,
        })
    }

    /// Parses a key as stored or published: the algorithm's JOSE name and the public key, and
    /// checks that `kid` is the one the public key derives.
    pub fn parse(kid: &str, algorithm: &str, public_key: Vec<u8>) -> Result<Self, Error> {
        let alg = CheckpointAlgorithm::parse(algorithm).ok_or_else(|| Error::InvalidId {
            kind: "checkpoint key algorithm",
            reason: format!("{algorithm:?} is neither EdDSA nor ES256"),
        })?;
        let key = Self::new(alg, public_key)?;
        if key.kid != kid {
            return Err(Error::InvalidId {
                kind: "checkpoint key id",
                reason: format!("{kid:?} is not the id of its public key ({})", key.kid),
            });
        }
        Ok(key)
    }

    /// The key id of `public_key`: hex of the first 16 bytes of its SHA-256.
    pub fn kid_for(public_key: &[u8]) -> String {
        let d = digest::digest(&digest::SHA256, public_key);
        hex::encode(&d.as_ref()[..16])
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn algorithm(&self) -> CheckpointAlgorithm {
        self.algorithm
    }

    /// The public key bytes.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Checks `signature` over `checkpoint`, which must name this key.
    pub fn verify(&self, checkpoint: &Checkpoint, signature: &[u8]) -> Result<(), Error> {
        if checkpoint.kid != self.kid {
            return Err(Error::BadSignature);
        }
        let alg: &dyn signature::VerificationAlgorithm = match self.algorithm {
            CheckpointAlgorithm::EdDsa => &signature::ED25519,
            CheckpointAlgorithm::Es256 => &signature::ECDSA_P256_SHA256_ASN1,
        };
        signature::UnparsedPublicKey::new(alg, &self.public_key)
            .verify(&checkpoint_message(checkpoint), signature)
            .map_err(|_| Error::BadSignature)
    }
}

/// An Ed25519 checkpoint signing key (software seals). Holds the private key: no `Debug`,
/// `Clone` or `Serialize`.
pub struct CheckpointSigner {
    pair: signature::Ed25519KeyPair,
    key: CheckpointKey,
}

impl CheckpointSigner {
    /// The signer of an Ed25519 seed.
    pub fn from_seed(seed: &SecretKey<32>) -> Result<Self, Error> {
        // ring refuses only a seed of the wrong length, which the type rules out.
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed.expose_secret())
            .map_err(|_| Error::InvalidPublicKey("Ed25519 checkpoint"))?;
        let key = CheckpointKey::new(CheckpointAlgorithm::EdDsa, pair.public_key().as_ref().to_vec())?;
        Ok(Self { pair, key })
    }

    /// Its public key.
    pub fn key(&self) -> &CheckpointKey {
        &self.key
    }

    /// Signs `checkpoint` (whose kid must be this key's, or the signature will not verify).
    pub fn sign(&self, checkpoint: &Checkpoint) -> Vec<u8> {
        self.pair.sign(&checkpoint_message(checkpoint)).as_ref().to_vec()
    }
}

/// Why a checkpoint does not vouch for the chain.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum CheckpointFault {
    /// Signed with a key id that is not among the trusted (pinned) keys.
    UnknownKey,
    /// The signature does not verify under the key it names.
    BadSignature,
    /// The chain's hash at the checkpoint's seq differs from the signed one: an entry at or
    /// before it was edited, removed or inserted, and the chain recomputed after it.
    HashMismatch {
        /// The chain's hash at that seq.
        chain: [u8; 32],
    },
    /// The checkpoint is past the end of the chain: entries were removed from the end.
    BeyondChain {
        /// The last seq of the chain.
        chain_end: i64,
    },
    /// The checkpoint it names as the previous one is not stored (a checkpoint was removed
    /// from the middle of the checkpoint chain), or it claims to be the first while earlier
    /// checkpoints exist.
    ChainBroken {
        /// The previous checkpoint's seq it names (0: it claims to be the first).
        prev_seq: i64,
    },
}

impl std::fmt::Display for CheckpointFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKey => f.write_str("it is signed by a key that is not trusted (not pinned)"),
            Self::BadSignature => f.write_str("its signature does not verify (forged or altered checkpoint)"),
            Self::HashMismatch { chain } => write!(
                f,
                "the chain's hash there is {}, not the signed one (entries up to it were rewritten)",
                hex::encode(chain)
            ),
            Self::BeyondChain { chain_end } => write!(
                f,
                "it is past the end of the chain at {chain_end} (entries were removed from the end)"
            ),
            Self::ChainBroken { prev_seq: 0 } => {
                f.write_str("it claims to be the first checkpoint, but earlier checkpoints are stored")
            }
            Self::ChainBroken { prev_seq } => write!(
                f,
                "the checkpoint before it (at {prev_seq}) is not stored as it signed it (a checkpoint was removed or replaced)"
            ),
        }
    }
}

/// A checkpoint that does not vouch for the chain.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BadCheckpoint {
    /// The checkpoint's seq.
    pub seq: i64,
    /// The key id it names.
    pub kid: String,
    /// What is wrong.
    pub fault: CheckpointFault,
}

/// The entries after the last valid checkpoint: nothing vouches for them but the chain itself,
/// which whoever can write the database can recompute.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Gap {
    /// How many.
    pub entries: i64,
    /// The time of the first of them.
    pub first_time_unix_ms: Option<i64>,
    /// The time of the last of them.
    pub last_time_unix_ms: Option<i64>,
}

/// What [`AuditVerifier::finish`] found.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditReport {
    /// Entries whose chain verified, from the first.
    pub entries: i64,
    /// The hash of the last verified entry.
    pub head: [u8; 32],
    /// The first broken entry, if the chain breaks.
    pub chain_break: Option<Break>,
    /// Checkpoints whose signature verified and whose hash matched the chain.
    pub checkpoints_verified: usize,
    /// Checkpoints that do not vouch for the chain, by seq.
    pub bad_checkpoints: Vec<BadCheckpoint>,
    /// Checkpoints with good signatures past a chain break, which could not be compared.
    pub checkpoints_unchecked: usize,
    /// The last checkpoint that verified.
    pub last_checkpoint: Option<Checkpoint>,
    /// The entries after it (after the start of the chain if there is none).
    pub gap: Gap,
    /// With an anchor ([`AuditVerifier::with_anchor`]): why the checkpoints do not extend it.
    pub anchor_fault: Option<String>,
}

impl AuditReport {
    /// Whether the chain and every checkpoint verified (and extend the anchor, if one was given).
    pub fn is_ok(&self) -> bool {
        self.chain_break.is_none() && self.bad_checkpoints.is_empty() && self.anchor_fault.is_none()
    }

    /// The earliest problem: the chain's first break or the lowest bad checkpoint.
    pub fn first_break(&self) -> Option<Break> {
        let checkpoint = self.bad_checkpoints.first().map(|b| Break {
            seq: b.seq,
            what: format!("checkpoint {} (key {}): {}", b.seq, b.kid, b.fault),
        });
        match (self.chain_break.clone(), checkpoint) {
            (Some(c), Some(k)) => Some(if k.seq < c.seq { k } else { c }),
            (c, k) => c.or(k),
        }
    }
}

/// Checks the chain ([`ChainVerifier`]) and the signed checkpoints together. Signatures are
/// checked against the trusted keys when the checkpoints are given; entries are then pushed in
/// order (streaming, so the chain need not fit in memory), and each checkpoint's hash is
/// compared with the chain's at its seq as the chain passes it.
pub struct AuditVerifier {
    chain: ChainVerifier,
    broken: Option<Break>,
    /// Whether the break is inside the entries (so checkpoints past it cannot be compared).
    broken_in_chain: bool,
    /// Checkpoints whose signature verified, by descending seq (the next one is last).
    pending: Vec<Checkpoint>,
    bad: Vec<BadCheckpoint>,
    verified: usize,
    last_checkpoint: Option<Checkpoint>,
    gap: Gap,
    /// Every stored checkpoint's id and link by seq.
    stored: std::collections::BTreeMap<i64, StoredLink>,
    /// The checkpoint an earlier verification ended at, which the chain must extend.
    anchor: Option<Checkpoint>,
}

/// A stored checkpoint's id and the seq of the one it names as previous.
#[derive(Clone, Copy, Debug)]
struct StoredLink {
    id: [u8; 32],
    prev_seq: i64,
}

impl std::fmt::Debug for AuditVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditVerifier")
            .field("entries", &self.chain.count())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl AuditVerifier {
    /// A verifier trusting `keys`, for `checkpoints` with their signatures (in any order).
    pub fn new(keys: &[CheckpointKey], checkpoints: Vec<(Checkpoint, Vec<u8>)>) -> Self {
        let mut pending = Vec::new();
        let mut bad = Vec::new();
        // Every stored checkpoint by seq, with its id: what the previous-checkpoint links point at.
        let stored: std::collections::BTreeMap<i64, StoredLink> = checkpoints
            .iter()
            .map(|(c, _)| {
                (
                    c.seq,
                    StoredLink {
                        id: c.id(),
                        prev_seq: c.prev_seq,
                    },
                )
            })
            .collect();
        let lowest = stored.keys().next().copied();
        for (c, sig) in checkpoints {
            let fault = match keys.iter().find(|k| k.kid() == c.kid) {
                None => Some(CheckpointFault::UnknownKey),
                Some(k) => match k.verify(&c, &sig) {
                    Err(_) => Some(CheckpointFault::BadSignature),
                    Ok(()) if c.is_first() && lowest != Some(c.seq) => {
                        Some(CheckpointFault::ChainBroken { prev_seq: 0 })
                    }
                    Ok(()) if !c.is_first() && stored.get(&c.prev_seq).map(|l| l.id) != Some(c.prev_id) => {
                        Some(CheckpointFault::ChainBroken { prev_seq: c.prev_seq })
                    }
                    Ok(()) => None,
                },
            };
            match fault {
                Some(fault) => bad.push(BadCheckpoint {
                    seq: c.seq,
                    kid: c.kid,
                    fault,
                }),
                None => pending.push(c),
            }
        }
        pending.sort_by_key(|c| std::cmp::Reverse(c.seq));
        let mut v = Self {
            chain: ChainVerifier::default(),
            broken: None,
            broken_in_chain: false,
            pending,
            bad,
            verified: 0,
            last_checkpoint: None,
            gap: Gap::default(),
            stored,
            anchor: None,
        };
        // A checkpoint of the empty chain (or of a seq that cannot exist) is settled now.
        v.settle(0, GENESIS);
        v
    }

    /// Requires the chain to extend `anchor`, the last checkpoint an earlier verification ended
    /// at (an auditor's state file): it must still be stored exactly as it was, and the newest
    /// verified checkpoint must descend from it. A database rolled back to before the anchor,
    /// or whose checkpoints after it were rewritten, fails.
    pub fn with_anchor(mut self, anchor: Checkpoint) -> Self {
        self.anchor = Some(anchor);
        self
    }

    /// Checks the next entry. After the chain breaks, the rest is ignored: the break is the
    /// answer, reported by [`AuditVerifier::finish`].
    pub fn push(&mut self, e: &Entry) {
        if self.broken_in_chain {
            return;
        }
        if let Err(b) = self.chain.push(e) {
            self.broken = Some(b);
            self.broken_in_chain = true;
            return;
        }
        self.gap.entries += 1;
        self.gap.first_time_unix_ms.get_or_insert(e.record.time_unix_ms);
        self.gap.last_time_unix_ms = Some(e.record.time_unix_ms);
        self.settle(e.seq, e.hash);
    }

    /// Records a break found outside the entries' hashes: `in_chain` for one that stops the
    /// chain where it is (an unreadable row), not for a finding after the last entry (a head
    /// that disagrees with the chain). The first break is kept.
    pub fn fail(&mut self, b: Break, in_chain: bool) {
        if self.broken.is_none() {
            self.broken = Some(b);
            self.broken_in_chain = in_chain;
        }
    }

    /// Entries verified so far.
    pub fn count(&self) -> i64 {
        self.chain.count()
    }

    /// The hash of the last verified entry.
    pub fn head(&self) -> [u8; 32] {
        self.chain.head()
    }

    /// Whether the chain broke inside the entries (further entries are not looked at).
    pub fn chain_broken(&self) -> bool {
        self.broken_in_chain
    }

    /// Compares the checkpoints at or before `seq` with the chain's hash `hash` at `seq`.
    fn settle(&mut self, seq: i64, hash: [u8; 32]) {
        while let Some(c) = self.pending.last() {
            if c.seq > seq {
                break;
            }
            let Some(c) = self.pending.pop() else { break };
            if c.seq == seq && c.hash == hash {
                self.verified += 1;
                self.gap = Gap::default();
                self.last_checkpoint = Some(c);
            } else {
                // Below the seq the chain is at: a seq that is not in the chain (0 but for the
                // genesis hash, or negative).
                let chain = if c.seq == seq { hash } else { GENESIS };
                self.bad.push(BadCheckpoint {
                    seq: c.seq,
                    kid: c.kid,
                    fault: CheckpointFault::HashMismatch { chain },
                });
            }
        }
    }

    /// The result, once every entry has been pushed.
    pub fn finish(mut self) -> AuditReport {
        let end = self.chain.count();
        let mut unchecked = 0;
        if self.broken_in_chain {
            unchecked = self.pending.len();
        } else {
            for c in std::mem::take(&mut self.pending) {
                self.bad.push(BadCheckpoint {
                    seq: c.seq,
                    kid: c.kid,
                    fault: CheckpointFault::BeyondChain { chain_end: end },
                });
            }
        }
        self.bad.sort_by_key(|b| b.seq);
        let anchor_fault = self.anchor.as_ref().and_then(|a| self.anchor_fault(a));
        AuditReport {
            entries: end,
            head: self.chain.head(),
            chain_break: self.broken,
            checkpoints_verified: self.verified,
            bad_checkpoints: self.bad,
            checkpoints_unchecked: unchecked,
            last_checkpoint: self.last_checkpoint,
            gap: self.gap,
            anchor_fault,
        }
    }

    /// Why the verified checkpoints do not extend `anchor`, if they do not.
    fn anchor_fault(&self, anchor: &Checkpoint) -> Option<String> {
        match self.stored.get(&anchor.seq) {
            None => {
                return Some(format!(
                    "the checkpoint at {} that an earlier verification ended at is no longer stored: the database was rolled back or its checkpoints removed",
                    anchor.seq
                ))
            }
            Some(l) if l.id != anchor.id() => {
                return Some(format!(
                    "the checkpoint stored at {} is not the one an earlier verification ended at: the checkpoints were rewritten",
                    anchor.seq
                ))
            }
            Some(_) => {}
        }
        let Some(newest) = self.last_checkpoint.as_ref().filter(|c| c.seq >= anchor.seq) else {
            return Some(format!(
                "no checkpoint at or after {} (the one an earlier verification ended at) verifies",
                anchor.seq
            ));
        };
        let mut at = newest.seq;
        while at > anchor.seq {
            match self.stored.get(&at) {
                Some(l) if l.prev_seq < at => at = l.prev_seq,
                _ => break,
            }
        }
        (at != anchor.seq).then(|| {
            format!(
                "the newest checkpoint ({}) does not descend from the one an earlier verification ended at ({})",
                newest.seq, anchor.seq
            )
        })
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

    fn signer() -> CheckpointSigner {
        CheckpointSigner::from_seed(&SecretKey::generate().unwrap()).unwrap()
    }

    /// A first checkpoint of `e`.
    fn signed(s: &CheckpointSigner, e: &Entry) -> (Checkpoint, Vec<u8>) {
        signed_after(s, e, None)
    }

    /// A checkpoint of `e` that names `prev` as the one before it.
    fn signed_after(s: &CheckpointSigner, e: &Entry, prev: Option<&Checkpoint>) -> (Checkpoint, Vec<u8>) {
        let c = Checkpoint {
            seq: e.seq,
            hash: e.hash,
            time_unix_ms: 1_000 + e.seq,
            kid: s.key().kid().to_owned(),
            prev_seq: prev.map_or(0, |p| p.seq),
            prev_id: prev.map_or([0; 32], Checkpoint::id),
            state: StateHead {
                version: e.seq,
                seq: e.seq * 2,
                hash: [e.seq as u8; 32],
            },
        };
        let sig = s.sign(&c);
        (c, sig)
    }

    /// Checkpoints of `at`, each naming the one before.
    fn chained(s: &CheckpointSigner, at: &[&Entry]) -> Vec<(Checkpoint, Vec<u8>)> {
        let mut out: Vec<(Checkpoint, Vec<u8>)> = Vec::new();
        for e in at {
            let next = signed_after(s, e, out.last().map(|(c, _)| c));
            out.push(next);
        }
        out
    }

    fn run(keys: &[CheckpointKey], cps: Vec<(Checkpoint, Vec<u8>)>, entries: &[Entry]) -> AuditReport {
        let mut v = AuditVerifier::new(keys, cps);
        entries.iter().for_each(|e| v.push(e));
        v.finish()
    }

    /// Rewrites the chain from `entries` as an attacker with write access would: every hash
    /// recomputed, sequence numbers renumbered.
    fn rechain(entries: &[Entry]) -> Vec<Entry> {
        chain(0, GENESIS, entries.iter().map(|e| e.record.clone()).collect())
    }

    #[test]
    fn anchors_round_trip() {
        let s = signer();
        let e = &chain(0, GENESIS, vec![rec(1)])[0];
        let (c, _) = signed(&s, e);
        let a = CheckpointAnchor::of(&c);
        assert_eq!(CheckpointAnchor::decode(&a.encode()), Some(a));
        assert_eq!(a.id, c.id());
        assert!(CheckpointAnchor::decode(&a.encode()[1..]).is_none());
        assert!(CheckpointAnchor::decode(b"kms-anchor-v1\0short").is_none());
    }

    #[test]
    fn checkpoint_message_layout() {
        let c = Checkpoint {
            seq: 258,
            hash: [7; 32],
            time_unix_ms: 1,
            kid: "ab".into(),
            prev_seq: 3,
            prev_id: [9; 32],
            state: StateHead {
                version: 4,
                seq: 5,
                hash: [6; 32],
            },
        };
        let m = checkpoint_message(&c);
        assert_eq!(&m[..24], b"kms-audit-checkpoint-v2\0");
        assert_eq!(&m[24..32], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&m[32..64], &[7; 32]);
        assert_eq!(&m[64..72], &[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&m[72..80], &3i64.to_be_bytes());
        assert_eq!(&m[80..112], &[9; 32]);
        assert_eq!(&m[112..120], &4i64.to_be_bytes());
        assert_eq!(&m[120..128], &5i64.to_be_bytes());
        assert_eq!(&m[128..160], &[6; 32]);
        assert_eq!(&m[160..], b"ab");
        assert_eq!(c.id().as_slice(), digest::digest(&digest::SHA256, &m).as_ref());
    }

    #[test]
    fn keys_are_parsed_and_verify_both_algorithms() {
        let s = signer();
        let k = s.key().clone();
        assert_eq!(k.kid(), CheckpointKey::kid_for(k.public_key()));
        assert_eq!(k.kid().len(), 32);
        let (c, sig) = signed(&s, &chain(0, GENESIS, vec![rec(1)])[0]);
        k.verify(&c, &sig).unwrap();
        let mut other = c.clone();
        other.time_unix_ms += 1;
        assert!(k.verify(&other, &sig).is_err());
        assert!(CheckpointKey::parse(k.kid(), "EdDSA", k.public_key().to_vec()).is_ok());
        assert!(CheckpointKey::parse(&"00".repeat(16), "EdDSA", k.public_key().to_vec()).is_err());
        assert!(CheckpointKey::parse(k.kid(), "RS256", k.public_key().to_vec()).is_err());
        assert!(CheckpointKey::new(CheckpointAlgorithm::EdDsa, vec![0; 31]).is_err());
        assert!(CheckpointKey::new(CheckpointAlgorithm::Es256, vec![4; 64]).is_err());
        assert!(CheckpointKey::new(CheckpointAlgorithm::Es256, vec![2; 65]).is_err());

        // ES256 as an HSM signs: ECDSA P-256 / SHA-256, DER.
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair =
            signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap();
        let es = CheckpointKey::new(CheckpointAlgorithm::Es256, pair.public_key().as_ref().to_vec()).unwrap();
        let c = Checkpoint {
            kid: es.kid().to_owned(),
            ..c
        };
        let sig = pair.sign(&rng, &checkpoint_message(&c)).unwrap();
        es.verify(&c, sig.as_ref()).unwrap();
        // A signature by one key is not accepted under another's kid.
        assert!(k.verify(&c, sig.as_ref()).is_err());
    }

    #[test]
    fn a_clean_chain_with_checkpoints_verifies_and_reports_the_gap() {
        let s = signer();
        let entries = chain(0, GENESIS, (0..10).map(rec).collect());
        let mut cps = chained(&s, &[&entries[2], &entries[6]]);
        cps.reverse();
        let r = run(&[s.key().clone()], cps, &entries);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.entries, 10);
        assert_eq!(r.checkpoints_verified, 2);
        assert_eq!(r.last_checkpoint.as_ref().unwrap().seq, 7);
        assert_eq!(
            r.gap,
            Gap {
                entries: 3,
                first_time_unix_ms: Some(7),
                last_time_unix_ms: Some(9),
            }
        );
        assert!(r.first_break().is_none());

        let none = run(&[s.key().clone()], vec![], &entries);
        assert!(none.is_ok());
        assert_eq!(none.gap.entries, 10);
        assert!(none.last_checkpoint.is_none());
    }

    #[test]
    fn an_edited_row_breaks_the_chain() {
        let s = signer();
        let entries = chain(0, GENESIS, (0..6).map(rec).collect());
        let cps = vec![signed(&s, &entries[4])];
        let mut edited = entries.clone();
        edited[1].record.detail = "{\"x\":1}".into();
        let r = run(&[s.key().clone()], cps, &edited);
        assert!(!r.is_ok());
        assert_eq!(r.chain_break.as_ref().unwrap().seq, 2);
        assert_eq!(r.first_break().unwrap().seq, 2);
        assert_eq!(r.checkpoints_unchecked, 1);
    }

    #[test]
    fn an_edited_and_rechained_row_is_caught_by_the_checkpoint() {
        let s = signer();
        let entries = chain(0, GENESIS, (0..6).map(rec).collect());
        let cps = chained(&s, &[&entries[1], &entries[4]]);
        let mut edited = entries.clone();
        edited[3].record.detail = "{\"x\":1}".into();
        let edited = rechain(&edited);
        let r = run(&[s.key().clone()], cps, &edited);
        assert!(r.chain_break.is_none());
        assert_eq!(r.checkpoints_verified, 1);
        assert_eq!(r.bad_checkpoints.len(), 1);
        assert_eq!(r.bad_checkpoints[0].seq, 5);
        assert!(
            matches!(r.bad_checkpoints[0].fault, CheckpointFault::HashMismatch { chain } if chain == edited[4].hash)
        );
        let b = r.first_break().unwrap();
        assert_eq!(b.seq, 5);
        assert!(b.what.contains("rewritten"), "{}", b.what);
        // The last valid checkpoint is the one at 2: everything after it is unvouched.
        assert_eq!(r.last_checkpoint.unwrap().seq, 2);
        assert_eq!(r.gap.entries, 4);
    }

    #[test]
    fn a_deleted_row_is_caught_with_or_without_rechaining() {
        let s = signer();
        let entries = chain(0, GENESIS, (0..6).map(rec).collect());
        let cps = || vec![signed(&s, &entries[4])];
        let mut removed = entries.clone();
        removed.remove(2);
        let r = run(&[s.key().clone()], cps(), &removed);
        assert_eq!(r.first_break().unwrap().seq, 3);
        assert!(r.chain_break.unwrap().what.contains("missing"));

        let r = run(&[s.key().clone()], cps(), &rechain(&removed));
        assert!(r.chain_break.is_none());
        assert_eq!(r.first_break().unwrap().seq, 5);
        assert!(matches!(
            r.bad_checkpoints[0].fault,
            CheckpointFault::HashMismatch { .. }
        ));
    }

    #[test]
    fn a_truncated_chain_leaves_a_checkpoint_beyond_its_end() {
        let s = signer();
        let entries = chain(0, GENESIS, (0..6).map(rec).collect());
        let cps = chained(&s, &[&entries[1], &entries[5]]);
        let r = run(&[s.key().clone()], cps, &entries[..4]);
        assert!(r.chain_break.is_none());
        assert_eq!(
            r.bad_checkpoints,
            vec![BadCheckpoint {
                seq: 6,
                kid: s.key().kid().to_owned(),
                fault: CheckpointFault::BeyondChain { chain_end: 4 },
            }]
        );
        assert!(r.first_break().unwrap().what.contains("past the end"));

        // A break after the last entry (the head disagrees) still lets the end be judged.
        let mut v = AuditVerifier::new(&[s.key().clone()], vec![signed(&s, &entries[5])]);
        entries[..4].iter().for_each(|e| v.push(e));
        v.fail(
            Break {
                seq: 5,
                what: "head".into(),
            },
            false,
        );
        let r = v.finish();
        assert_eq!(r.bad_checkpoints.len(), 1);
        assert_eq!(r.first_break().unwrap().seq, 5);
    }

    #[test]
    fn forged_and_unknown_key_checkpoints_are_flagged() {
        let s = signer();
        let attacker = signer();
        let entries = chain(0, GENESIS, (0..4).map(rec).collect());
        // The attacker's key, under its own kid: not pinned.
        let unknown = signed(&attacker, &entries[3]);
        // The attacker's signature under the pinned kid: does not verify.
        let mut forged = signed(&attacker, &entries[2]);
        forged.0.kid = s.key().kid().to_owned();
        forged.1 = attacker.sign(&forged.0);
        // A genuine checkpoint whose time was altered.
        let mut altered = signed(&s, &entries[1]);
        altered.0.time_unix_ms += 1;
        let r = run(&[s.key().clone()], vec![unknown, forged, altered], &entries);
        assert!(r.chain_break.is_none());
        assert_eq!(r.checkpoints_verified, 0);
        let faults: Vec<(i64, CheckpointFault)> = r.bad_checkpoints.iter().map(|b| (b.seq, b.fault.clone())).collect();
        assert_eq!(
            faults,
            vec![
                (2, CheckpointFault::BadSignature),
                (3, CheckpointFault::BadSignature),
                (4, CheckpointFault::UnknownKey),
            ]
        );
        assert_eq!(r.gap.entries, 4);
        assert!(r.first_break().unwrap().what.contains("does not verify"));
    }

    #[test]
    fn a_checkpoint_of_the_empty_chain() {
        let s = signer();
        let c = Checkpoint {
            seq: 0,
            hash: GENESIS,
            time_unix_ms: 0,
            kid: s.key().kid().to_owned(),
            prev_seq: 0,
            prev_id: [0; 32],
            state: StateHead::default(),
        };
        let sig = s.sign(&c);
        let r = run(&[s.key().clone()], vec![(c.clone(), sig)], &[]);
        assert!(r.is_ok());
        assert_eq!(r.checkpoints_verified, 1);
        let bad = Checkpoint { hash: [1; 32], ..c };
        let sig = s.sign(&bad);
        assert!(!run(&[s.key().clone()], vec![(bad, sig)], &[]).is_ok());
    }

    #[test]
    fn a_checkpoint_removed_from_the_middle_breaks_the_checkpoint_chain() {
        let s = signer();
        let entries = chain(0, GENESIS, (0..8).map(rec).collect());
        let mut cps = chained(&s, &[&entries[1], &entries[3], &entries[5]]);
        let r = run(&[s.key().clone()], cps.clone(), &entries);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.checkpoints_verified, 3);
        // The one at 4 removed: the one at 6 names it.
        cps.remove(1);
        let r = run(&[s.key().clone()], cps.clone(), &entries);
        assert_eq!(
            r.bad_checkpoints
                .iter()
                .map(|b| (b.seq, b.fault.clone()))
                .collect::<Vec<_>>(),
            vec![(6, CheckpointFault::ChainBroken { prev_seq: 4 })]
        );
        assert!(r.first_break().unwrap().what.contains("removed or replaced"));
        // The first removed: the next names a checkpoint that is not there.
        let mut cps = chained(&s, &[&entries[1], &entries[3]]);
        cps.remove(0);
        assert!(!run(&[s.key().clone()], cps, &entries).is_ok());
        // A second "first" checkpoint after earlier ones: the server lost track of the chain.
        let mut cps = chained(&s, &[&entries[1]]);
        cps.push(signed(&s, &entries[4]));
        let r = run(&[s.key().clone()], cps, &entries);
        assert_eq!(r.bad_checkpoints[0].fault, CheckpointFault::ChainBroken { prev_seq: 0 });
    }

    #[test]
    fn an_anchor_must_be_extended() {
        let s = signer();
        let entries = chain(0, GENESIS, (0..8).map(rec).collect());
        let cps = chained(&s, &[&entries[1], &entries[3], &entries[5]]);
        let anchored = |cps: Vec<(Checkpoint, Vec<u8>)>, entries: &[Entry], anchor: &Checkpoint| {
            let mut v = AuditVerifier::new(&[s.key().clone()], cps).with_anchor(anchor.clone());
            entries.iter().for_each(|e| v.push(e));
            v.finish()
        };
        // The newest descends from the anchor; the anchor itself is fine too.
        assert!(anchored(cps.clone(), &entries, &cps[1].0).is_ok());
        assert!(anchored(cps.clone(), &entries, &cps[2].0).is_ok());
        // Rolled back to before the anchor: the chain and its checkpoints end at 4.
        let r = anchored(cps[..2].to_vec(), &entries[..5], &cps[2].0);
        assert!(r.chain_break.is_none() && r.bad_checkpoints.is_empty());
        assert!(r.anchor_fault.as_deref().unwrap().contains("no longer stored"), "{r:?}");
        assert!(!r.is_ok());
        // A checkpoint at the anchor's seq that is not the anchor.
        let mut other = cps[1].0.clone();
        other.time_unix_ms += 1;
        let r = anchored(cps.clone(), &entries, &other);
        assert!(r.anchor_fault.as_deref().unwrap().contains("rewritten"), "{r:?}");
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
