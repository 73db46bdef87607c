//! Root key rotation and seal migration. `rotate_root` (a quorum operation) creates generation
//! g+1 — a fresh software root split among custodians (`shamir`) or a fresh non-extractable key
//! in the HSM (`pkcs11`) — records it as pending, and the worker here re-wraps every secret
//! under the root key from g to g+1 in batches, then completes the rotation in one transaction.
//!
//! No blob ever fails to decrypt: blobs are under KEKs, which do not change; only the KEKs'
//! wrapping moves, one conditional UPDATE per row, and while it moves the process holds both
//! roots and unwraps with whichever wrapped the row (`seal::Roots`). The worker waits
//! [`ADOPT_GRACE`] after the rotation starts before moving any row, so every replica has picked
//! up the next root (the seal's background tick adopts it) before a row it reads can be under
//! it. A crash (kill -9) in the middle leaves each row under one generation; after the restart
//! the pending generation is adopted again (unwrapped by the current root, or found in the
//! HSM) and the worker continues where it stopped.

use std::sync::Arc;
use std::time::Duration;

use kms_core::blob::Kek;
use kms_core::ids::{AdminId, KeyId, KeyVersion};
use kms_core::share_wrap;
use kms_proto::v1 as pb;

use crate::error::ApiError;
use crate::seal::{Seal, SealKind};
use crate::service::admin::{store_err, AdminPlane};
use crate::service::quorum::Exec;
use crate::service::Audit;
use crate::storage::{RewrapItem, RootGenerationRow, SecretTable, ShareRow, Store};
use kms_proto::Reason;

/// How long after a rotation starts the worker waits before re-wrapping (replicas adopt the
/// next root within a second).
pub const ADOPT_GRACE: Duration = Duration::from_secs(3);

/// The worker's pace.
#[derive(Clone, Copy, Debug)]
pub struct RotationPace {
    /// Secrets re-wrapped per transaction.
    pub batch_size: u32,
    /// Pause between batches.
    pub pause: Duration,
}

/// Where a wrapped secret's AAD comes from: (key id, version) as it was wrapped.
fn wrap_binding(item: &RewrapItem) -> Result<(KeyId, KeyVersion), ApiError> {
    let version = |n: i64| {
        u32::try_from(n)
            .ok()
            .and_then(KeyVersion::new)
            .ok_or_else(|| ApiError::new(Reason::RotationInvariant, "a wrapped secret has an invalid version"))
    };
    match item.table {
        SecretTable::KeyVersions => Ok((KeyId::parse(&item.id)?, version(item.number)?)),
        SecretTable::TokenKeys => Ok((
            KeyId::from_bytes(crate::attest::TOKEN_KEY_WRAP_ID),
            version(item.number)?,
        )),
        SecretTable::CheckpointKeys => {
            let (id, v) = crate::checkpoint::wrap_id();
            Ok((
                id,
                v.ok_or_else(|| ApiError::new(Reason::RotationInvariant, "checkpoint wrap version"))?,
            ))
        }
    }
}

/// Re-wraps one batch; returns how many rows moved, or `None` when nothing is left.
async fn step(store: &Store, seal: &Seal, batch_size: u32) -> Result<Option<u64>, ApiError> {
    let roots = seal.roots()?;
    let Some((new_gen, next)) = roots.next() else {
        return Ok(None);
    };
    let (old_gen, current) = roots.current();
    let items = store.rewrap_batch(old_gen, batch_size).await?;
    if items.is_empty() {
        return Ok(None);
    }
    let mut batch = Vec::with_capacity(items.len());
    for item in items {
        let rewrapped = match &item.wrapped {
            None => None,
            Some(w) => {
                let (id, version) = wrap_binding(&item)?;
                let secret: Kek = current.unwrap(id, version, w).map_err(|_| {
                    ApiError::new(
                        Reason::RotationUnwrap,
                        format!(
                            "a {:?} secret ({} {}) does not unwrap under generation {old_gen}",
                            item.table, item.id, item.number
                        ),
                    )
                })?;
                Some(next.wrap(id, version, &secret)?)
            }
        };
        batch.push((item, rewrapped));
    }
    let moved = store.apply_rewrap(old_gen, new_gen, &batch).await?;
    Ok(Some(moved))
}

/// Runs a pending rotation to completion (if this process holds both roots). Returns whether a
/// rotation completed.
pub async fn run_pending(store: &Store, seal: &Seal, pace: RotationPace) -> Result<bool, ApiError> {
    seal.adopt_rotation(store).await?;
    let Ok(roots) = seal.roots() else { return Ok(false) };
    let Some((new_gen, _)) = roots.next() else {
        return Ok(false);
    };
    let (old_gen, _) = roots.current();
    if store.root_generation(new_gen).await?.is_none() {
        return Ok(false);
    }
    loop {
        // A replica that was sealed may have been unsealed meanwhile: it adopts the next root
        // before serving, but wait for its report anyway.
        let now = kms_core::now_unix_ms();
        if !store
            .replicas_behind(old_gen, new_gen, now - REPLICA_LIVENESS_MS)
            .await?
            .is_empty()
        {
            return Ok(false);
        }
        let Some(moved) = step(store, seal, pace.batch_size).await? else {
            break;
        };
        tracing::info!(from = old_gen, to = new_gen, moved, "root rotation: batch re-wrapped");
        if !pace.pause.is_zero() {
            tokio::time::sleep(pace.pause).await;
        }
    }
    // Every row is re-authenticated under the next generation's integrity key before the old
    // one is dropped (content and versions unchanged; resumable the same way).
    let moved = store
        .reauthenticate_all(new_gen, pace.batch_size, pace.pause)
        .await
        .map_err(store_err)?;
    if moved > 0 {
        tracing::info!(
            from = old_gen,
            to = new_gen,
            moved,
            "root rotation: rows re-authenticated"
        );
    }
    let mut audit = Audit::new("system:rotation", "admin.rotate_root.complete");
    audit.detail("from_generation", old_gen);
    audit.detail("to_generation", new_gen);
    let done = store
        .complete_rotation(old_gen, new_gen, audit.allowed())
        .await
        .map_err(store_err)?;
    seal.complete_rotation(store).await?;
    if done {
        tracing::info!(from = old_gen, to = new_gen, "root rotation complete");
    }
    Ok(done)
}

/// A replica that has not refreshed its row for this long is not waited for (it stopped; when
/// it is unsealed again it adopts the rotation before serving).
const REPLICA_LIVENESS_MS: i64 = 5_000;

/// The worker: every second, records which generations this process holds (`replicas`),
/// follows rotations started or completed elsewhere, and runs a pending rotation — once every
/// live replica that holds the current generation also holds the next one (so no replica ever
/// reads a secret it cannot open), and no sooner than [`ADOPT_GRACE`] after it started.
pub fn spawn(store: Store, seal: Arc<Seal>, pace: RotationPace) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_wait_log = 0i64;
        loop {
            tick.tick().await;
            let now = kms_core::now_unix_ms();
            if let Err(e) = seal.refresh_sealed(&store).await {
                tracing::warn!(reason = %e.reason, message = %e.message, "cannot refresh the seal's generation");
            }
            if let Err(e) = seal.adopt_rotation(&store).await {
                tracing::warn!(reason = %e.reason, message = %e.message, "cannot adopt the root rotation");
            }
            let Ok(roots) = seal.roots() else {
                let _ = store.forget_replica(seal.replica_id(), now - 60_000).await;
                continue;
            };
            let (current, _) = roots.current();
            let next = roots.next().map(|(n, _)| n);
            if let Err(e) = store.heartbeat(seal.replica_id(), current, next, now).await {
                tracing::warn!(error = %e, "cannot record this replica's root generations");
                continue;
            }
            let Some(new) = next else { continue };
            let started = store.rotation_started_unix_ms(new).await.unwrap_or(None);
            let grace = i64::try_from(ADOPT_GRACE.as_millis()).unwrap_or(3000);
            if started.is_some_and(|t| now - t < grace) {
                continue;
            }
            match store.replicas_behind(current, new, now - REPLICA_LIVENESS_MS).await {
                Ok(behind) if !behind.is_empty() => {
                    if now - last_wait_log > 30_000 {
                        last_wait_log = now;
                        tracing::warn!(
                            replicas = ?behind,
                            "root rotation waits for replicas that do not hold the next root yet (a pkcs11 target needs [seal.pkcs11] on every replica)"
                        );
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the replicas' root generations");
                    continue;
                }
            }
            if let Err(e) = run_pending(&store, &seal, pace).await {
                tracing::warn!(reason = %e.reason, message = %e.message, "root rotation step failed; retrying");
            }
        }
    })
}

impl AdminPlane {
    /// RotateRoot (quorum): starts generation g+1 under the seal asked for.
    pub(crate) async fn rotate_root_op(
        &self,
        _admin: &AdminId,
        op: pb::RotateRootOp,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<pb::SealStatus>, ApiError> {
        let roots = self.seal.roots()?;
        let kind = match pb::SealKind::try_from(op.seal) {
            Ok(pb::SealKind::Shamir) => SealKind::Shamir,
            Ok(pb::SealKind::Pkcs11) => SealKind::Pkcs11,
            _ => {
                return Err(ApiError::new(
                    Reason::BadSeal,
                    "seal must be SHAMIR or PKCS11 (the dev seal cannot be rotated to)",
                ))
            }
        };
        if roots.next().is_some() || self.store.pending_root_generation().await?.is_some() {
            return Err(ApiError::new(
                Reason::RotationInProgress,
                "a root key rotation is already in progress: wait for it to complete (kmsctl status)",
            ));
        }
        let cfg = self
            .store
            .seal_config()
            .await?
            .ok_or_else(|| ApiError::new(Reason::NotInitialized, "the server is not initialized"))?;
        let new_gen = cfg.root_generation + 1;
        audit.detail("seal", kind.as_str());
        audit.detail("from_generation", cfg.root_generation);
        audit.detail("to_generation", new_gen);
        let mut custodians = Vec::new();
        let threshold = match kind {
            SealKind::Pkcs11 => {
                if !op.custodians.is_empty() || op.threshold != 0 {
                    return Err(ApiError::new(
                        Reason::BadCustodians,
                        "the pkcs11 seal has no custodians or threshold",
                    ));
                }
                0
            }
            _ => {
                let admins = self.store.admins(false).await?;
                let ids: Vec<String> = if op.custodians.is_empty() {
                    admins.iter().filter(|a| a.custodian).map(|a| a.id.clone()).collect()
                } else {
                    op.custodians.clone()
                };
                let mut seen = std::collections::BTreeSet::new();
                for id in &ids {
                    if !seen.insert(id.clone()) {
                        return Err(ApiError::new(
                            Reason::DuplicateAdmin,
                            format!("custodian {id} is listed twice"),
                        ));
                    }
                    let a = admins.iter().find(|a| &a.id == id).ok_or_else(|| {
                        ApiError::new(
                            Reason::UnknownCustodian,
                            format!("custodian {id} is not an active admin"),
                        )
                    })?;
                    custodians.push((a.id.clone(), a.encryption_public_key.clone()));
                }
                if custodians.is_empty() || custodians.len() > 255 {
                    return Err(ApiError::new(
                        Reason::BadCustodians,
                        "the shamir seal needs 1 to 255 custodians (none are named and there are none now)",
                    ));
                }
                let t = if op.threshold == 0 { cfg.threshold } else { op.threshold };
                if t == 0 || t as usize > custodians.len() {
                    return Err(ApiError::new(
                        Reason::BadThreshold,
                        format!(
                            "threshold must be between 1 and the number of custodians ({}), not {t}",
                            custodians.len()
                        ),
                    ));
                }
                audit.detail("custodians", ids);
                audit.detail("threshold", t);
                t
            }
        };
        let Exec::Run(close) = exec else {
            if kind == SealKind::Pkcs11 && !self.seal.has_hsm_config() {
                return Err(ApiError::new(
                    Reason::Pkcs11NotConfigured,
                    "this server has no [seal.pkcs11] configuration (module, token, pin_file or pin_env)",
                ));
            }
            return Ok(None);
        };
        let new_root = self.seal.create_root(kind, new_gen)?;
        let mut shares = Vec::new();
        let mut next_root_wrapped = None;
        if let Some(material) = &new_root.material {
            let n = u8::try_from(custodians.len()).unwrap_or(u8::MAX);
            let t = u8::try_from(threshold).unwrap_or(u8::MAX);
            let split = kms_core::shamir::split(material, t, n)?;
            for ((id, key), share) in custodians.iter().zip(split) {
                let plaintext = share_wrap::share_plaintext(id, share.expose_secret());
                let envelope = share_wrap::seal(key, plaintext.expose_secret())?;
                shares.push(ShareRow {
                    generation: new_gen,
                    admin_id: id.clone(),
                    envelope: envelope.encode(),
                });
            }
            next_root_wrapped = Some(self.seal.wrap_next_root(new_gen, material)?);
        }
        let row = RootGenerationRow {
            generation: new_gen,
            kind: kind.as_str().to_owned(),
            status: "pending".into(),
            threshold,
            kcv: new_root.check.clone(),
            hsm_label: new_root.hsm_label.clone(),
            next_root_wrapped,
            created_unix_ms: kms_core::now_unix_ms(),
            created_by: audit.caller.clone(),
            completed_unix_ms: None,
            integrity_key: Some(new_root.integrity_key.clone()),
        };
        if let Err(e) = self
            .store
            .start_rotation(&row, &shares, close, Audit::clone_allowed(audit))
            .await
        {
            // Nothing refers to the keys just made in the HSM: remove them — unless the error
            // came after a commit that did happen (then the generation row exists).
            if let Some(label) = &new_root.hsm_label {
                if matches!(self.store.root_generation(new_gen).await, Ok(None)) {
                    self.seal.discard_hsm_root(label);
                }
            }
            return Err(store_err(e));
        }
        self.seal.install_next(new_gen, new_root);
        self.wire_status().await.map(Some)
    }
}
