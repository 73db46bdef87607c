//! Signed audit checkpoints: every so often the server signs the audit chain's head
//! (sequence number, hash, time) with a key the seal holds, so that rewriting the chain up to a
//! checkpoint, or cutting it short, is caught offline by `kmsctl audit verify` even against
//! someone who can write the database and recompute every hash.
//!
//! The key: with a seal that holds a signing key in hardware ([`RootOfTrust::checkpoint_signer`],
//! the pkcs11 seal's HSM) that ES256 key, recorded in `checkpoint_keys` without any secret;
//! otherwise an Ed25519 seed generated here and stored wrapped under the root key. A stored key
//! is used or published only after it is checked against the seal (the seed unwraps and derives
//! the row's public key and kid, or the HSM holds it), so a row an attacker writes into the
//! database never signs nor is offered for pinning.
//!
//! Must never log, return or store the seed unwrapped.

use std::sync::Arc;
use std::time::Duration;

use kms_core::audit::{Checkpoint, CheckpointAlgorithm, CheckpointAnchor, CheckpointKey, CheckpointSigner, GENESIS};
use kms_core::ids::{KeyId, KeyVersion};
use kms_core::secret::SecretKey;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::seal::{AnchorStore, RootOfTrust, Seal, SealSigner};
use crate::storage::{CheckpointKeyRow, Store, Violation, ViolationKind};
use kms_proto::Reason;

/// The key version in the wrapping AAD of every checkpoint seed. `checkpoint_keys` has no
/// version column: a seed is tied to its row by deriving the row's public key and kid.
pub const CHECKPOINT_KEY_WRAP_VERSION: u32 = 1;

/// The key that signs, as the seal holds it.
enum Signer {
    /// Ed25519, seed unwrapped from the database.
    Software(CheckpointSigner),
    /// ES256 in the seal's HSM.
    Hsm(Arc<dyn SealSigner>, CheckpointKey),
}

impl Signer {
    fn key(&self) -> &CheckpointKey {
        match self {
            Self::Software(s) => s.key(),
            Self::Hsm(_, k) => k,
        }
    }

    async fn sign(&self, c: &Checkpoint) -> Result<Vec<u8>, ApiError> {
        match self {
            Self::Software(s) => Ok(s.sign(c)),
            Self::Hsm(hsm, _) => {
                // A PKCS#11 call blocks; keep it off the async workers.
                let hsm = hsm.clone();
                let message = kms_core::audit::checkpoint_message(c);
                tokio::task::spawn_blocking(move || hsm.sign(&message))
                    .await
                    .map_err(|_| ApiError::new(Reason::CheckpointSign, "the HSM signing task failed"))?
                    .map_err(|e| {
                        ApiError::new(
                            Reason::CheckpointSign,
                            format!("the HSM cannot sign the checkpoint: {e}"),
                        )
                    })
            }
        }
    }
}

pub(crate) fn wrap_id() -> (KeyId, Option<KeyVersion>) {
    (
        KeyId::from_bytes(crate::wrap_ids::CHECKPOINT_KEY),
        KeyVersion::new(CHECKPOINT_KEY_WRAP_VERSION),
    )
}

/// The seal's HSM key as a checkpoint key, if the seal holds one.
/// The seal's HSM signer with its public key parsed.
struct HsmKey {
    signer: Arc<dyn SealSigner>,
    key: CheckpointKey,
}

fn hsm_key(root: &dyn RootOfTrust) -> Result<Option<HsmKey>, ApiError> {
    let Some(hsm) = root.checkpoint_signer() else {
        return Ok(None);
    };
    let alg = CheckpointAlgorithm::parse(hsm.algorithm())
        .filter(|a| *a == CheckpointAlgorithm::Es256)
        .ok_or_else(|| {
            ApiError::new(
                Reason::CheckpointKey,
                format!("the seal's checkpoint key is {}, not ES256", hsm.algorithm()),
            )
        })?;
    let key = CheckpointKey::new(alg, hsm.public_key())
        .map_err(|e| ApiError::new(Reason::CheckpointKey, format!("the seal's checkpoint key: {e}")))?;
    Ok(Some(HsmKey { signer: hsm, key }))
}

/// The row's key if the seal vouches for it: an HSM row whose key the seal's HSM holds, or a
/// software row whose seed unwraps under the root key to the row's public key and kid.
fn trusted(row: &CheckpointKeyRow, root: &dyn RootOfTrust, hsm: Option<&CheckpointKey>) -> Option<Trusted> {
    let key = CheckpointKey::parse(&row.kid, &row.algorithm, row.public_key.clone()).ok()?;
    match (&row.wrapped_secret, key.algorithm()) {
        (Some(wrapped), CheckpointAlgorithm::EdDsa) => {
            let (id, version) = wrap_id();
            let seed: SecretKey<32> = root.unwrap(id, version?, wrapped).ok()?;
            let signer = CheckpointSigner::from_seed(&seed).ok()?;
            (signer.key() == &key).then_some(Trusted::Software(signer))
        }
        (None, CheckpointAlgorithm::Es256) => {
            let held = hsm == Some(&key)
                || row
                    .hsm_label
                    .as_deref()
                    .is_some_and(|label| root.holds_checkpoint_key(label, key.public_key()));
            held.then_some(Trusted::Hsm(key))
        }
        _ => None,
    }
}

enum Trusted {
    Software(CheckpointSigner),
    Hsm(CheckpointKey),
}

impl Trusted {
    fn key(&self) -> &CheckpointKey {
        match self {
            Self::Software(s) => s.key(),
            Self::Hsm(k) => k,
        }
    }
}

/// The rows the seal vouches for, in the stored order (oldest first), each with its row.
fn trusted_rows<'a>(
    rows: &'a [CheckpointKeyRow],
    root: &dyn RootOfTrust,
    hsm: Option<&CheckpointKey>,
) -> Vec<(&'a CheckpointKeyRow, Trusted)> {
    rows.iter()
        .filter_map(|row| match trusted(row, root, hsm) {
            Some(t) => Some((row, t)),
            None => {
                tracing::error!(
                    kid = %row.kid,
                    algorithm = %row.algorithm,
                    root_generation = row.root_generation,
                    "checkpoint key row ignored: the seal does not hold its key (altered database?)"
                );
                None
            }
        })
        .collect()
}

/// The signing key: with an HSM seal its key, else the oldest trusted software key in use.
/// Creates (and records) it if there is none; of replicas racing to create one, one wins and
/// all use its key.
async fn signing_key(store: &Store, root: &dyn RootOfTrust) -> Result<Signer, ApiError> {
    let hsm = hsm_key(root)?;
    if let Some(HsmKey { signer: hsm, key }) = hsm {
        let row = CheckpointKeyRow {
            kid: key.kid().to_owned(),
            algorithm: key.algorithm().as_str().to_owned(),
            public_key: key.public_key().to_vec(),
            wrapped_secret: None,
            hsm_label: Some(hsm.label()),
            root_generation: i64::try_from(root.generation()).unwrap_or(i64::MAX),
            created_unix_ms: kms_core::now_unix_ms(),
            retired_unix_ms: None,
        };
        let kid = row.kid.clone();
        let added = store
            .insert_checkpoint_key_unless(&row, |rows| rows.iter().any(|r| r.kid == kid))
            .await?;
        if added {
            tracing::info!(kid = %key.kid(), label = %hsm.label(), "audit checkpoint key recorded (HSM, ES256)");
        }
        // A row with this kid that is not the HSM's key cannot exist: the kid is a hash of the
        // public key, and a different public key under it is refused when read.
        return Ok(Signer::Hsm(hsm, key));
    }

    let pick = |rows: &[CheckpointKeyRow]| -> Option<CheckpointSigner> {
        trusted_rows(rows, root, None)
            .into_iter()
            .filter(|(row, _)| row.retired_unix_ms.is_none())
            .find_map(|(_, t)| match t {
                Trusted::Software(s) => Some(s),
                Trusted::Hsm(_) => None,
            })
    };
    if let Some(s) = pick(&store.checkpoint_keys().await?) {
        return Ok(Signer::Software(s));
    }
    let seed = SecretKey::<32>::generate()?;
    let signer = CheckpointSigner::from_seed(&seed)?;
    let (id, version) = wrap_id();
    let version = version.ok_or_else(|| ApiError::new(Reason::CheckpointKey, "wrap version 0"))?;
    let row = CheckpointKeyRow {
        kid: signer.key().kid().to_owned(),
        algorithm: CheckpointAlgorithm::EdDsa.as_str().to_owned(),
        public_key: signer.key().public_key().to_vec(),
        wrapped_secret: Some(root.wrap(id, version, &seed)?),
        hsm_label: None,
        root_generation: i64::try_from(root.generation()).unwrap_or(i64::MAX),
        created_unix_ms: kms_core::now_unix_ms(),
        retired_unix_ms: None,
    };
    // Checked again under the lock: another replica may have created one meanwhile.
    if store
        .insert_checkpoint_key_unless(&row, |rows| pick(rows).is_some())
        .await?
    {
        tracing::info!(kid = %row.kid, "audit checkpoint key created (Ed25519, wrapped under the root key)");
    }
    pick(&store.checkpoint_keys().await?)
        .map(Signer::Software)
        .ok_or_else(|| {
            ApiError::new(
                Reason::CheckpointKey,
                "no checkpoint signing key unwraps under this root key",
            )
        })
}

/// The signer of checkpoints for this process, with what it remembers of them: the last
/// checkpoint it verified or signed. Before each signature it checks that the database still
/// holds that checkpoint, that every checkpoint stored since (by other replicas) verifies and
/// descends from it, recomputes the audit chain from it to the head (and checks that the newest
/// entry this process wrote is still there), and that the state log extends the state it
/// signed; the new checkpoint then names the newest one as its previous. If the database went
/// backwards it raises the integrity alarm instead (audited; nothing is signed or served any
/// more until the process restarts).
pub struct Checkpoints {
    store: Store,
    last: tokio::sync::Mutex<Option<Checkpoint>>,
    keys: tokio::sync::Mutex<KnownKeys>,
}

/// The checkpoint keys this process has verified against the seal: the signer of the current
/// root generation and every key seen vouched for since the process started. Kept in memory, so
/// a key row changed in the database afterwards neither stops the server from signing nor makes
/// its own earlier checkpoints look forged.
#[derive(Default)]
struct KnownKeys {
    generation: u64,
    signer: Option<Signer>,
    known: Vec<CheckpointKey>,
}

impl KnownKeys {
    /// Adds the keys the seal vouches for that the database names now.
    async fn learn(&mut self, store: &Store, root: &dyn RootOfTrust) -> Result<(), ApiError> {
        let hsm = hsm_key(root)?.map(|h| h.key);
        let rows = store.checkpoint_keys().await?;
        for (_, t) in trusted_rows(&rows, root, hsm.as_ref()) {
            if !self.known.contains(t.key()) {
                self.known.push(t.key().clone());
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checkpoints")
    }
}

/// How many stored checkpoints a process that remembers none looks back through for the newest
/// one that verifies.
const TAIL: u32 = 64;

/// How many audit entries are read at a time while the chain is recomputed.
const PAGE: i64 = 5_000;

impl Checkpoints {
    /// The signer for `store`.
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            last: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::new(KnownKeys::default()),
        })
    }

    /// The last checkpoint this process verified or signed.
    pub async fn last(&self) -> Option<Checkpoint> {
        self.last.lock().await.clone()
    }

    fn rollback(&self, table: &'static str, seq: i64, detail: String) -> ApiError {
        self.store
            .integrity()
            .raise(Violation {
                table,
                key: format!("[\"{seq}\"]"),
                kind: ViolationKind::StateRollback,
                detail,
            })
            .into()
    }

    /// Signs the audit head with the seal's checkpoint key if it advanced past the newest
    /// checkpoint, after the checks above. `None` if there was nothing to sign (empty chain, head
    /// already checkpointed, or another replica stored a checkpoint for this head first).
    pub async fn sign(&self, root: &dyn RootOfTrust) -> Result<Option<Checkpoint>, ApiError> {
        self.store.integrity().check_alarm()?;
        // Read before the checkpoints, the head and the state (below), as they are.
        let anchor = self.check_anchored(root).await?;
        let mut last = self.last.lock().await;
        // What this process wrote, before the head is read: the head can only be at or past it.
        let written = self.store.integrity().audit_written();
        let mut known = self.keys.lock().await;
        if known.signer.is_none() || known.generation != root.generation() {
            let signer = signing_key(&self.store, root).await?;
            let hsm = hsm_key(root)?.map(|h| h.key);
            let rows = self.store.checkpoint_keys().await?;
            let mut keys: Vec<CheckpointKey> = trusted_rows(&rows, root, hsm.as_ref())
                .into_iter()
                .map(|(_, t)| t.key().clone())
                .collect();
            keys.push(signer.key().clone());
            for k in keys {
                if !known.known.contains(&k) {
                    known.known.push(k);
                }
            }
            known.signer = Some(signer);
            known.generation = root.generation();
        }
        let keys = &known.known;
        let stored = match &*last {
            Some(l) => self.store.checkpoints_from(l.seq).await?,
            None => self.store.checkpoints_tail(TAIL).await?,
        };
        // The state and the head are read after the checkpoints: every checkpoint read was signed
        // over a head and a state committed before it was stored, so both are at or past it. Read
        // before, a checkpoint another replica stored in between would be ahead of them and look
        // like a rollback.
        // The state: verified, and never behind what this process saw.
        self.store.integrity().catch_up(&self.store).await?;
        let state = self.store.integrity().head();
        let (head_seq, head_hash) = self.store.audit_head().await?;
        // A key another replica started using (or a new generation's): vouched for by the seal?
        if stored.iter().any(|(c, _)| !keys.iter().any(|k| k.kid() == c.kid)) {
            known.learn(&self.store, root).await?;
        }
        let Some(signer) = known.signer.as_ref() else {
            return Err(ApiError::new(Reason::CheckpointKey, "no checkpoint signing key"));
        };
        let keys = &known.known;
        let mut valid: Vec<Checkpoint> = Vec::new();
        for (c, sig) in stored {
            match keys.iter().find(|k| k.kid() == c.kid).map(|k| k.verify(&c, &sig)) {
                Some(Ok(())) => valid.push(c),
                _ => self.store.integrity().report(Violation {
                    table: "audit_checkpoints",
                    key: format!("[\"{}\"]", c.seq),
                    kind: ViolationKind::Integrity,
                    detail: "its signature does not verify under a checkpoint key the seal holds (written by someone else); it is ignored".into(),
                }),
            }
        }
        if let Some(l) = &*last {
            if !valid.iter().any(|c| c.seq == l.seq && c.id() == l.id()) {
                return Err(self.rollback(
                    "audit_checkpoints",
                    l.seq,
                    format!(
                        "checkpoint {} that this server signed or verified is gone or changed: the audit log was rolled back or rewritten",
                        l.seq
                    ),
                ));
            }
        }
        let base = valid.last().cloned().or_else(|| last.clone());
        // Every checkpoint since the last one known here descends from it.
        if let (Some(l), Some(b)) = (&*last, &base) {
            let mut at = b.clone();
            while at.seq > l.seq {
                match valid.iter().find(|c| c.seq == at.prev_seq && c.id() == at.prev_id) {
                    Some(p) => at = p.clone(),
                    None => break,
                }
            }
            if at.seq != l.seq {
                return Err(self.rollback(
                    "audit_checkpoints",
                    b.seq,
                    format!(
                        "checkpoint {} does not descend from checkpoint {} that this server knows",
                        b.seq, l.seq
                    ),
                ));
            }
        }
        let (from_seq, from_hash) = match (&*last, &base) {
            (Some(l), _) => (l.seq, l.hash),
            (None, Some(b)) => (b.seq, b.hash),
            (None, None) => (0, GENESIS),
        };
        if head_seq < from_seq {
            return Err(self.rollback(
                "audit_head",
                head_seq,
                format!("the audit log ends at {head_seq}, before checkpoint {from_seq}: entries were removed"),
            ));
        }
        if let Some((w, _)) = written {
            if w > head_seq {
                return Err(self.rollback(
                    "audit_head",
                    head_seq,
                    format!("the audit log ends at {head_seq}, but this server wrote entry {w}: entries were removed"),
                ));
            }
        }
        // The chain from the last checkpoint known here to the head, recomputed.
        let mut at = from_seq;
        let mut prev = from_hash;
        while at < head_seq {
            let upto = head_seq.min(at + PAGE);
            let entries = self.store.audit_entries(at, upto).await?;
            for e in &entries {
                if e.seq != at + 1
                    || e.prev_hash != prev
                    || kms_core::audit::entry_hash(&prev, e.seq, &e.record) != e.hash
                {
                    return Err(self.rollback(
                        "audit_log",
                        at + 1,
                        format!("audit entry {} is missing or altered (the chain after checkpoint {from_seq} does not recompute)", at + 1),
                    ));
                }
                if valid.iter().any(|c| c.seq == e.seq && c.hash != e.hash)
                    || written.is_some_and(|(w, h)| w == e.seq && h != e.hash)
                {
                    return Err(self.rollback(
                        "audit_log",
                        e.seq,
                        format!("audit entry {} is not the one that was written or checkpointed", e.seq),
                    ));
                }
                prev = e.hash;
                at = e.seq;
            }
            if entries.is_empty() {
                break;
            }
        }
        if at != head_seq || prev != head_hash {
            return Err(self.rollback(
                "audit_head",
                head_seq,
                format!("the audit head ({head_seq}) is not where the chain from checkpoint {from_seq} ends"),
            ));
        }
        // The state signed last is still the start of the state log this process replayed.
        if let Some(b) = &base {
            let logged = if b.state.seq == 0 {
                Some(kms_core::integrity::STATE_GENESIS)
            } else {
                self.store.state_log_hash(b.state.seq).await?
            };
            if !b.state.is_extended_by(&state) || logged != Some(b.state.hash) {
                return Err(self.rollback(
                    "state_log",
                    b.state.seq,
                    format!(
                        "the state (version {}) does not extend state version {} signed into checkpoint {}: the database was rolled back",
                        state.version, b.state.version, b.seq
                    ),
                ));
            }
        }
        // The checkpoint the HSM anchors is on the chain verified above: with its seq at or past
        // the last checkpoint known here, it is one of the checkpoints that verified and
        // descend from that one, over the entries recomputed. A copy of the database that
        // forked from the one another replica serves holds neither the other's entries nor
        // (unless the operator copied the row over) its checkpoints.
        if let Some(a) = &anchor {
            if a.seq > head_seq || (a.seq >= from_seq && !valid.iter().any(|c| c.seq == a.seq && c.id() == a.id)) {
                return Err(self.rollback(
                    "audit_checkpoints",
                    a.seq,
                    format!(
                        "the HSM's anchor names checkpoint {}, which is not on this database's audit chain (it ends at {head_seq}): another replica of this deployment signed it over entries this database does not hold, so this database is a copy that forked from the one it serves, or was rolled back",
                        a.seq
                    ),
                ));
            }
        }
        if head_seq == 0 || base.as_ref().is_some_and(|b| b.seq >= head_seq) {
            *last = base;
            return Ok(None);
        }
        let checkpoint = Checkpoint {
            seq: head_seq,
            hash: head_hash,
            time_unix_ms: kms_core::now_unix_ms(),
            kid: signer.key().kid().to_owned(),
            prev_seq: base.as_ref().map_or(0, |b| b.seq),
            prev_id: base.as_ref().map_or([0; 32], Checkpoint::id),
            state,
        };
        let signature = signer.sign(&checkpoint).await?;
        if !self.store.insert_checkpoint(&checkpoint, &signature).await? {
            // Refused because a checkpoint with a higher seq (or this one's) is stored. Another
            // replica's, if it verifies: it is checked next time. A row no checkpoint key
            // verifies (the operator's) would otherwise stop every checkpoint, and the HSM
            // anchor with them, without a word: refuse instead, every round, until it is removed.
            let newest = self.store.checkpoints_tail(1).await?;
            let verifies = |known: &KnownKeys| {
                newest
                    .iter()
                    .all(|(c, sig)| known.known.iter().any(|k| k.kid() == c.kid && k.verify(c, sig).is_ok()))
            };
            if !verifies(&known) {
                known.learn(&self.store, root).await?;
            }
            if !verifies(&known) {
                let seq = newest.first().map_or(0, |(c, _)| c.seq);
                self.store.integrity().report(Violation {
                    table: "audit_checkpoints",
                    key: format!("[\"{seq}\"]"),
                    kind: ViolationKind::Integrity,
                    detail: "its signature does not verify under a checkpoint key the seal holds, and it stands where this server's next checkpoint must go".into(),
                });
                return Err(ApiError::new(
                    Reason::CheckpointBlocked,
                    format!(
                        "checkpoint {seq}, stored after checkpoint {}, was not signed by a checkpoint key the seal holds: no checkpoint can be stored after it until it is removed",
                        checkpoint.prev_seq
                    ),
                ));
            }
            *last = base;
            return Ok(None);
        }
        tracing::debug!(seq = checkpoint.seq, kid = %checkpoint.kid, state = state.version, "audit checkpoint signed");
        *last = Some(checkpoint.clone());
        drop(last);
        if let Some(anchors) = root.anchor_store() {
            self.anchor(anchors, &checkpoint).await;
        }
        Ok(Some(checkpoint))
    }

    /// With a seal that anchors checkpoints (the pkcs11 seal's HSM): the anchor, after checking
    /// that the database still holds the checkpoint it names, as it was signed, and that its
    /// state extends the anchored one, as the seal checks at start; every round. Every replica
    /// of the deployment anchors its checkpoints there, so a replica run on a copy of the
    /// database (a fork, each copy serving writes the other never sees) finds the other copy's
    /// newer anchor missing from its own database, or (the row copied over) off its own audit
    /// chain ([`Checkpoints::sign`]), at its next round: the alarm is raised (`state_rollback`)
    /// and it serves nothing more. An HSM that cannot be read fails the round (no checkpoint is
    /// signed without the check; `kms_audit_checkpoint_failures_total` counts it).
    async fn check_anchored(&self, root: &dyn RootOfTrust) -> Result<Option<CheckpointAnchor>, ApiError> {
        let Some(anchors) = root.anchor_store() else {
            return Ok(None);
        };
        let Some(cfg) = self.store.seal_config().await? else {
            return Ok(None);
        };
        let deployment = cfg.deployment_id;
        let read = tokio::task::spawn_blocking(move || crate::seal::read_anchor(anchors.as_ref(), &deployment)).await;
        let Some(anchor) = read.map_err(|_| ApiError::new(Reason::HsmUnavailable, "the HSM anchor task failed"))??
        else {
            return Ok(None);
        };
        match self.store.check_anchor(&anchor).await {
            Ok(()) => Ok(Some(anchor)),
            Err(crate::storage::StoreError::Rollback(mut v))
                if v.kind == ViolationKind::StateRollback && v.table == "audit_checkpoints" =>
            {
                v.detail = format!(
                    "{} (found while serving: another replica of this deployment anchored it, so this database is a copy that forked from the one it serves, or was rolled back)",
                    v.detail
                );
                Err(self.store.integrity().raise(v).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records `c` in the seal's HSM (if it is newer than what the HSM holds), so a database
    /// rolled back behind it is refused at the next start.
    async fn anchor(&self, anchors: Arc<dyn AnchorStore>, c: &Checkpoint) {
        let Ok(Some(cfg)) = self.store.seal_config().await else {
            return;
        };
        let label = crate::seal::anchor_label(&cfg.deployment_id);
        let value = CheckpointAnchor::of(c).encode();
        let seq = c.seq;
        let done = tokio::task::spawn_blocking(move || {
            let newer = anchors
                .read(&label)?
                .iter()
                .filter_map(|b| CheckpointAnchor::decode(b))
                .all(|a| a.seq < seq);
            if newer {
                anchors.write(&label, &value)?;
            }
            Ok::<(), kms_core::Error>(())
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the checkpoint anchor in the HSM"),
            Err(_) => tracing::warn!("the HSM anchor task failed"),
        }
    }
}

/// Signs a checkpoint now with the seal's key (see [`Checkpoints::sign`]). Needs the server
/// unsealed.
pub async fn checkpoint_now(checkpoints: &Checkpoints, seal: &Seal) -> Result<Option<Checkpoint>, ApiError> {
    checkpoints.sign(seal.root()?.as_ref()).await
}

/// Starts the periodic signer: every `interval`, while unsealed, [`checkpoint_now`]. Stop it
/// with [`JoinHandle::abort`] (a checkpoint is one INSERT: stopping between two is harmless),
/// then call [`checkpoint_now`] once for the final head.
pub fn spawn(checkpoints: Arc<Checkpoints>, seal: Arc<Seal>, interval: Duration) -> JoinHandle<()> {
    let period = interval.max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if seal.root().is_err() || checkpoints.store.integrity().alarm().is_some() {
                continue;
            }
            match checkpoint_now(&checkpoints, &seal).await {
                Ok(_) => {
                    if let Some(c) = checkpoints.last().await {
                        crate::telemetry::audit_checkpoint(c.seq, c.time_unix_ms);
                    }
                }
                Err(e) => {
                    crate::telemetry::audit_checkpoint_failed();
                    tracing::warn!(reason = %e.reason, error = %e.message, "audit checkpoint not signed");
                }
            }
        }
    })
}

/// The checkpoint keys the seal vouches for (in use and retired), created first if there is
/// none, for GetAuditCheckpointKeys. Needs the server unsealed: only the seal can tell the
/// server's keys from rows someone else wrote into the database, and publishing those for
/// pinning would let them sign checkpoints.
pub(crate) async fn published_keys(store: &Store, seal: &Seal) -> Result<Vec<PublishedKey>, ApiError> {
    vouched_keys(store, seal.root()?.as_ref()).await
}

/// A checkpoint key the seal vouches for, as published.
#[derive(Clone, Debug)]
pub struct PublishedKey {
    /// The key.
    pub key: CheckpointKey,
    /// When it was made.
    pub created_unix_ms: i64,
    /// When it stopped signing, if it did.
    pub retired_unix_ms: Option<i64>,
}

async fn vouched_keys(store: &Store, root: &dyn RootOfTrust) -> Result<Vec<PublishedKey>, ApiError> {
    signing_key(store, root).await?;
    let hsm = hsm_key(root)?.map(|h| h.key);
    let rows = store.checkpoint_keys().await?;
    Ok(trusted_rows(&rows, root, hsm.as_ref())
        .into_iter()
        .map(|(row, t)| PublishedKey {
            key: t.key().clone(),
            created_unix_ms: row.created_unix_ms,
            retired_unix_ms: row.retired_unix_ms,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kms_core::audit::{Record, GENESIS};
    use kms_core::blob::Kek;
    use kms_core::root::{RootKeyMaterial, SoftwareRoot};
    use ring::signature::{self, KeyPair as _};

    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        crate::storage::test_store().await
    }

    async fn sign_head(store: &Store, root: &dyn RootOfTrust) -> Result<Option<Checkpoint>, ApiError> {
        Checkpoints::new(store.clone()).sign(root).await
    }

    /// A software root of generation 1.
    struct Soft(SoftwareRoot);

    impl RootOfTrust for Soft {
        fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, kms_core::Error> {
            self.0.wrap(key_id, version, kek)
        }
        fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, kms_core::Error> {
            self.0.unwrap(key_id, version, wrapped)
        }
        fn generation(&self) -> u64 {
            1
        }
    }

    fn new_root() -> Soft {
        Soft(SoftwareRoot::new(&RootKeyMaterial::generate().unwrap()).unwrap())
    }

    fn record(i: i64) -> Record {
        Record {
            time_unix_ms: i,
            caller: "cn:test".into(),
            operation: "decrypt".into(),
            key_id: None,
            outcome: "allowed".into(),
            reason: String::new(),
            detail: "{}".into(),
        }
    }

    fn pinned(keys: &[PublishedKey]) -> Vec<CheckpointKey> {
        keys.iter().map(|k| k.key.clone()).collect()
    }

    /// Checks every stored checkpoint against `keys` and the stored chain.
    async fn verify_all(store: &Store, keys: &[CheckpointKey]) -> kms_core::audit::AuditReport {
        let mut v = kms_core::audit::AuditVerifier::new(keys, store.checkpoints().await.unwrap());
        let (head, _) = store.audit_head().await.unwrap();
        // The chain is rebuilt from the head's records only through the stored rows.
        let mut conn = store.pool().acquire().await.unwrap();
        for e in kms_audit::all_entries(&mut conn).await.unwrap().unwrap() {
            v.push(&e);
        }
        assert_eq!(v.count(), head);
        v.finish()
    }

    #[tokio::test]
    async fn checkpoints_follow_the_head_and_verify_under_the_published_key() {
        let (store, _dir) = store().await;
        let root = new_root();
        assert!(sign_head(&store, &root).await.unwrap().is_none(), "empty chain");
        store.append_audit((0..3).map(record).collect()).await.unwrap();
        let c = sign_head(&store, &root).await.unwrap().unwrap();
        assert_eq!(c.seq, 3);
        assert_eq!(c.hash, store.audit_head().await.unwrap().1);
        assert!(sign_head(&store, &root).await.unwrap().is_none(), "head already signed");
        store.append_audit((3..5).map(record).collect()).await.unwrap();
        let c2 = sign_head(&store, &root).await.unwrap().unwrap();
        assert_eq!((c2.seq, &c2.kid), (5, &c.kid), "one key signs both");

        let keys = vouched_keys(&store, &root).await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key.kid(), c.kid);
        assert_eq!(keys[0].key.algorithm().as_str(), "EdDSA");
        assert_eq!(keys[0].retired_unix_ms, None);
        let rows = store.checkpoint_keys().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].hsm_label.is_none());
        assert_eq!(rows[0].root_generation, 1);
        // The seed is stored wrapped, never as the seed itself.
        let wrapped = rows[0].wrapped_secret.clone().unwrap();
        assert_ne!(wrapped.len(), 32);

        let report = verify_all(&store, &pinned(&keys)).await;
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.checkpoints_verified, 2);
        assert_eq!(report.gap.entries, 0);
    }

    #[tokio::test]
    async fn a_key_row_written_by_someone_else_is_neither_used_nor_published() {
        let (store, _dir) = store().await;
        let root = new_root();
        // The attacker's own seed, "wrapped" under a root key they made up, is written first.
        let attacker_root = new_root();
        let seed = SecretKey::<32>::generate().unwrap();
        let attacker = CheckpointSigner::from_seed(&seed).unwrap();
        let (id, version) = wrap_id();
        let forged = CheckpointKeyRow {
            kid: attacker.key().kid().to_owned(),
            algorithm: "EdDSA".into(),
            public_key: attacker.key().public_key().to_vec(),
            wrapped_secret: Some(attacker_root.wrap(id, version.unwrap(), &seed).unwrap()),
            hsm_label: None,
            root_generation: 1,
            created_unix_ms: 0,
            retired_unix_ms: None,
        };
        assert!(store.insert_checkpoint_key_unless(&forged, |_| false).await.unwrap());
        // And a row pairing the attacker's public key with a genuine wrapped seed of ours.
        store.append_audit(vec![record(1)]).await.unwrap();
        let c = sign_head(&store, &root).await.unwrap().unwrap();
        assert_ne!(c.kid, attacker.key().kid());
        let ours = store
            .checkpoint_keys()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.kid == c.kid)
            .unwrap();
        let mut swapped = forged.clone();
        swapped.kid = CheckpointKey::kid_for(&[1; 32]);
        swapped.public_key = vec![1; 32];
        swapped.wrapped_secret = ours.wrapped_secret.clone();
        assert!(store.insert_checkpoint_key_unless(&swapped, |_| false).await.unwrap());

        let keys = vouched_keys(&store, &root).await.unwrap();
        assert_eq!(
            keys.iter().map(|k| k.key.kid()).collect::<Vec<_>>(),
            vec![c.kid.as_str()]
        );
        store.append_audit(vec![record(2)]).await.unwrap();
        assert_eq!(sign_head(&store, &root).await.unwrap().unwrap().kid, c.kid);
    }

    /// The operator copies the newest checkpoint under a seq far ahead. Its signature does not
    /// verify, and it stands where every later checkpoint must go: each round is refused with
    /// `checkpoint_blocked` (not passed over as another replica's checkpoint, which would stop
    /// checkpoints and the HSM anchor silently) until the row is removed.
    #[tokio::test]
    async fn a_forged_checkpoint_ahead_of_the_chain_is_refused_not_passed_over() {
        let (store, _dir) = store().await;
        let root = new_root();
        let running = Checkpoints::new(store.clone());
        store.append_audit((0..3).map(record).collect()).await.unwrap();
        let first = running.sign(&root).await.unwrap().unwrap();
        let rest = "hash, time_unix_ms, kid, signature, prev_seq, prev_id, state_version, state_seq, state_hash";
        sqlx::query(&format!(
            "INSERT INTO audit_checkpoints (seq, {rest}) SELECT seq + 1000000, {rest} FROM audit_checkpoints WHERE seq = $1"
        ))
        .bind(first.seq)
        .execute(store.pool())
        .await
        .unwrap();
        store.append_audit((3..5).map(record).collect()).await.unwrap();
        // The running process, and one that starts now and remembers no checkpoint.
        for signer in [&running, &Checkpoints::new(store.clone())] {
            let e = signer.sign(&root).await.unwrap_err();
            assert_eq!(e.reason, Reason::CheckpointBlocked, "{}", e.message);
            assert!(
                e.message.contains(&format!("checkpoint {}", first.seq + 1_000_000)),
                "{}",
                e.message
            );
        }
        assert_eq!(store.checkpoints().await.unwrap().len(), 2, "nothing stored past it");
        assert!(store.integrity().alarm().is_none(), "a forged row is no rollback");
        sqlx::query("DELETE FROM audit_checkpoints WHERE seq = $1")
            .bind(first.seq + 1_000_000)
            .execute(store.pool())
            .await
            .unwrap();
        let next = running.sign(&root).await.unwrap().unwrap();
        assert_eq!((next.seq, next.prev_seq), (5, first.seq));
    }

    #[tokio::test]
    async fn racing_replicas_end_with_one_key() {
        let (store, _dir) = store().await;
        let root = Arc::new(new_root());
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (store, root) = (store.clone(), root.clone());
            tasks.push(tokio::spawn(async move {
                signing_key(&store, root.as_ref())
                    .await
                    .map(|s| s.key().kid().to_owned())
            }));
        }
        let mut kids = Vec::new();
        for t in tasks {
            kids.push(t.await.unwrap().unwrap());
        }
        kids.dedup();
        assert_eq!(kids.len(), 1, "{kids:?}");
        assert_eq!(store.checkpoint_keys().await.unwrap().len(), 1);
        // Two checkpoints of the same head: the second is not stored.
        store.append_audit(vec![record(1)]).await.unwrap();
        let c = sign_head(&store, root.as_ref()).await.unwrap().unwrap();
        assert!(!store.insert_checkpoint(&c, b"sig").await.unwrap());
        // Nor one of a later head from the same base (a replica that signed while this one did),
        // nor one from an older base: the chain does not fork.
        let fork = Checkpoint {
            seq: c.seq + 5,
            prev_seq: c.prev_seq,
            ..c.clone()
        };
        assert!(!store.insert_checkpoint(&fork, b"sig").await.unwrap());
        let next = Checkpoint {
            seq: c.seq + 5,
            prev_seq: c.seq,
            prev_id: c.id(),
            ..c.clone()
        };
        assert!(store.insert_checkpoint(&next, b"sig").await.unwrap());
        let stale = Checkpoint {
            seq: c.seq + 9,
            prev_seq: c.seq,
            ..c.clone()
        };
        assert!(!store.insert_checkpoint(&stale, b"sig").await.unwrap());
    }

    /// Two replicas on one database: one writes audit entries and signs checkpoints as fast as it
    /// can, the other signs meanwhile, both as a process that knows no checkpoint yet (just
    /// started) and as one that goes on. A checkpoint the first stores between the other's reads
    /// is newer than the head or the state the other read before it, and is no rollback: the
    /// kill -9 failover under load found this (the survivor refused to serve with
    /// `state_rollback`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_another_replica_stores_meanwhile_are_no_rollback() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let Some([a, b]) = crate::storage::test_replicas().await else {
            return;
        };
        let root = Arc::new(new_root());
        a.append_audit(vec![record(0)]).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let (stop, root) = (stop.clone(), root.clone());
            tokio::spawn(async move {
                let signer = Checkpoints::new(b.clone());
                let mut signed = 0;
                let mut i = 1;
                while !stop.load(Ordering::Relaxed) {
                    b.append_audit(vec![record(i), record(i + 1)]).await.unwrap();
                    b.integrity().catch_up(&b).await.unwrap();
                    if signer.sign(root.as_ref()).await.unwrap().is_some() {
                        signed += 1;
                    }
                    i += 2;
                }
                signed
            })
        };
        let going_on = Checkpoints::new(a.clone());
        for _ in 0..150 {
            Checkpoints::new(a.clone()).sign(root.as_ref()).await.unwrap();
            going_on.sign(root.as_ref()).await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let signed = busy.await.unwrap();
        assert!(signed > 10, "the busy replica signed {signed} checkpoints");
        assert!(a.integrity().alarm().is_none(), "{:?}", a.integrity().alarm());
    }

    /// The HSM's anchor is shared by the replicas: one unsealing checks it against a state
    /// another replica moved on (here by creating its checkpoint key) after this process last
    /// read the state. That is no rollback; a database behind the anchor still is.
    #[tokio::test]
    async fn an_anchor_another_replica_wrote_after_this_one_read_the_state_is_no_rollback() {
        let Some([a, b]) = crate::storage::test_replicas().await else {
            return;
        };
        let root = new_root();
        a.append_audit(vec![record(0)]).await.unwrap();
        let before = a.integrity().head();
        let c = sign_head(&b, &root).await.unwrap().unwrap();
        assert!(
            c.state.version > before.version,
            "the checkpoint key moved the state on"
        );
        assert_eq!(a.integrity().head(), before, "a has not read the state since");
        a.check_anchor(&CheckpointAnchor::of(&c)).await.unwrap();

        // An anchor past what the database holds is still refused.
        let mut ahead = CheckpointAnchor::of(&c);
        ahead.state.version += 1;
        ahead.state.seq += 1;
        let e = a.check_anchor(&ahead).await.unwrap_err();
        assert!(matches!(e, crate::storage::StoreError::Rollback(_)), "{e:?}");
    }

    struct FakeHsm {
        pair: signature::EcdsaKeyPair,
    }

    impl SealSigner for FakeHsm {
        fn algorithm(&self) -> &'static str {
            "ES256"
        }
        fn public_key(&self) -> Vec<u8> {
            self.pair.public_key().as_ref().to_vec()
        }
        fn label(&self) -> String {
            "kms-audit-checkpoint".into()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, kms_core::Error> {
            let rng = ring::rand::SystemRandom::new();
            Ok(self
                .pair
                .sign(&rng, message)
                .map_err(|_| kms_core::Error::Rng)?
                .as_ref()
                .to_vec())
        }
    }

    struct HsmRoot {
        inner: SoftwareRoot,
        hsm: Arc<FakeHsm>,
    }

    impl RootOfTrust for HsmRoot {
        fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, kms_core::Error> {
            self.inner.wrap(key_id, version, kek)
        }
        fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, kms_core::Error> {
            self.inner.unwrap(key_id, version, wrapped)
        }
        fn checkpoint_signer(&self) -> Option<Arc<dyn SealSigner>> {
            Some(self.hsm.clone())
        }
        fn generation(&self) -> u64 {
            1
        }
    }

    #[tokio::test]
    async fn an_hsm_seal_signs_with_its_own_es256_key() {
        let (store, _dir) = store().await;
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let hsm = Arc::new(FakeHsm {
            pair: signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
        });
        let root = HsmRoot {
            inner: new_root().0,
            hsm: hsm.clone(),
        };
        store.append_audit((0..2).map(record).collect()).await.unwrap();
        let c = sign_head(&store, &root).await.unwrap().unwrap();
        let rows = store.checkpoint_keys().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].algorithm, "ES256");
        assert_eq!(rows[0].hsm_label.as_deref(), Some("kms-audit-checkpoint"));
        assert!(rows[0].wrapped_secret.is_none());
        assert_eq!(c.kid, rows[0].kid);
        let keys = vouched_keys(&store, &root).await.unwrap();
        assert_eq!(keys.len(), 1);
        let report = verify_all(&store, &pinned(&keys)).await;
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.checkpoints_verified, 1);
        // Signing again on another replica records nothing new.
        store.append_audit(vec![record(3)]).await.unwrap();
        assert!(sign_head(&store, &root).await.unwrap().is_some());
        assert_eq!(store.checkpoint_keys().await.unwrap().len(), 1);
        assert_ne!(c.hash, GENESIS);
    }
}
