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
use kms_core::ids::{KeyId, KeyVersion};

use crate::audit::Audit;
use crate::config::RotationPace;
use crate::error::ApiError;
use crate::seal::Seal;
use crate::storage::{RewrapItem, SecretTable, Store};
use kms_proto::Reason;

/// How long after a rotation starts the worker waits before re-wrapping (replicas adopt the
/// next root within a second).
pub const ADOPT_GRACE: Duration = Duration::from_secs(3);

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
        SecretTable::TokenKeys => Ok((KeyId::from_bytes(crate::wrap_ids::TOKEN_KEY), version(item.number)?)),
        SecretTable::CheckpointKeys => {
            let (id, v) = crate::workers::checkpoint::wrap_id();
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
        crate::telemetry::rotation_rows("rewrap", moved);
        if !pace.pause.is_zero() {
            tokio::time::sleep(pace.pause).await;
        }
    }
    // Every row is re-authenticated under the next generation's integrity key before the old
    // one is dropped (content and versions unchanged; resumable the same way).
    let moved = store
        .reauthenticate_all(new_gen, pace.batch_size, pace.pause)
        .await
        .map_err(ApiError::from)?;
    crate::telemetry::rotation_rows("reauthenticate", moved);
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
        .map_err(ApiError::from)?;
    seal.complete_rotation(store).await?;
    if done {
        tracing::info!(from = old_gen, to = new_gen, "root rotation complete");
        crate::telemetry::rotation_completed();
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
