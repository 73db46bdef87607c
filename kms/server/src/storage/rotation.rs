//! Root key generations and their rotation: the pending generation, the batches that re-wrap
//! every root-wrapped secret (KEK versions, token signing seeds, checkpoint signing secrets) from
//! generation g to g+1, and the transaction that completes it. Each batch is one transaction of
//! conditional UPDATEs (`... AND root_generation = g`), so a batch interrupted by a crash leaves
//! every row under exactly one generation, and two replicas re-wrapping at once do each row once.

use kms_core::audit::Record;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{append_in_tx, QuorumClose, Store, StoreError};
use crate::error::ApiError;

/// One root key generation.
#[derive(Clone, Debug)]
pub struct RootGenerationRow {
    /// Its number (1 at init).
    pub generation: u64,
    /// The seal that holds it.
    pub kind: String,
    /// `active`, `pending` (being rotated to) or `retired`.
    pub status: String,
    /// Shares needed to unseal it (shamir).
    pub threshold: u32,
    /// Its check value (KCV; the pkcs11 seal's canary).
    pub kcv: Vec<u8>,
    /// pkcs11: the key's label in the HSM.
    pub hsm_label: Option<String>,
    /// While pending and held in software: the root wrapped under the current root.
    pub next_root_wrapped: Option<Vec<u8>>,
}

/// The tables holding secrets wrapped under the root key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SecretTable {
    /// `key_versions.wrapped_kek` (id = key id, number = version).
    KeyVersions,
    /// `token_keys.wrapped_seed` (number = version).
    TokenKeys,
    /// `checkpoint_keys.wrapped_secret` (id = kid).
    CheckpointKeys,
}

/// A secret to re-wrap.
#[derive(Clone, Debug)]
pub struct RewrapItem {
    /// Where it is.
    pub table: SecretTable,
    /// Key id or kid.
    pub id: String,
    /// Version (0 where the table has none).
    pub number: i64,
    /// The wrapped secret; `None` where there is none (a destroyed version, an HSM-held key):
    /// then only its generation moves.
    pub wrapped: Option<Vec<u8>>,
}

const GENERATION_COLUMNS: &str = "generation, kind, status, threshold, kcv, hsm_label, next_root_wrapped";

fn generation_row(r: &AnyRow) -> Result<RootGenerationRow, sqlx::Error> {
    Ok(RootGenerationRow {
        generation: u64::try_from(r.try_get::<i64, _>("generation")?)
            .map_err(|_| sqlx::Error::Protocol("corrupt root_generations row".into()))?,
        kind: r.try_get("kind")?,
        status: r.try_get("status")?,
        threshold: u32::try_from(r.try_get::<i64, _>("threshold")?).unwrap_or(0),
        kcv: r.try_get("kcv")?,
        hsm_label: r.try_get("hsm_label")?,
        next_root_wrapped: r.try_get("next_root_wrapped")?,
    })
}

/// Stores the custodians' share envelopes of a root generation.
pub(super) async fn insert_shares(
    tx: &mut Transaction<'static, Any>,
    generation: u64,
    shares: &[(String, Vec<u8>)],
) -> Result<(), sqlx::Error> {
    for (admin, envelope) in shares {
        sqlx::query("INSERT INTO root_shares (generation, admin_id, envelope) VALUES ($1, $2, $3)")
            .bind(g(generation))
            .bind(admin)
            .bind(envelope)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// `rotation_in_progress` while a generation is pending (its custodians and root are fixed).
pub(super) async fn refuse_if_rotating(tx: &mut Transaction<'static, Any>) -> Result<(), StoreError> {
    let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM root_generations WHERE status = 'pending'")
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    if pending > 0 {
        return Err(StoreError::Api(ApiError::precondition(
            "rotation_in_progress",
            "a root key rotation is in progress: wait for it to complete (kmsctl status)",
        )));
    }
    Ok(())
}

fn g(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// One generation.
    pub async fn root_generation(&self, generation: u64) -> Result<Option<RootGenerationRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {GENERATION_COLUMNS} FROM root_generations WHERE generation = $1"
        ))
        .bind(g(generation))
        .fetch_optional(&self.pool)
        .await?
        .map(|r| generation_row(&r))
        .transpose()
    }

    /// The generation being rotated to, if a rotation is in progress.
    pub async fn pending_root_generation(&self) -> Result<Option<RootGenerationRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {GENERATION_COLUMNS} FROM root_generations WHERE status = 'pending' ORDER BY generation LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?
        .map(|r| generation_row(&r))
        .transpose()
    }

    /// When the rotation to `generation` started.
    pub async fn rotation_started_unix_ms(&self, generation: u64) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query("SELECT created_unix_ms FROM root_generations WHERE generation = $1")
            .bind(g(generation))
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("created_unix_ms"))
            .transpose()
    }

    /// Starts a rotation to `next` (status pending) with the new custodians' shares. Refused if
    /// the current generation is not `next.generation - 1` or a rotation is in progress.
    pub async fn start_rotation(
        &self,
        next: &RootGenerationRow,
        shares: &[(String, Vec<u8>)],
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write(close).await?;
        let current = g(next.generation) - 1;
        let locked = sqlx::query(
            "UPDATE seal_config SET root_generation = root_generation WHERE id = 1 AND root_generation = $1",
        )
        .bind(current)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if locked != 1 {
            return Err(StoreError::Api(ApiError::precondition(
                "generation_changed",
                "the root key generation changed meanwhile: propose the rotation again",
            )));
        }
        refuse_if_rotating(&mut tx).await?;
        sqlx::query(
            "INSERT INTO root_generations (generation, kind, status, threshold, kcv, hsm_label, next_root_wrapped, created_unix_ms, created_by) \
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8)",
        )
        .bind(g(next.generation))
        .bind(&next.kind)
        .bind(i64::from(next.threshold))
        .bind(&next.kcv)
        .bind(next.hsm_label.as_deref())
        .bind(next.next_root_wrapped.as_deref())
        .bind(record.time_unix_ms)
        .bind(&record.caller)
        .execute(&mut *tx)
        .await?;
        insert_shares(&mut tx, next.generation, shares).await?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` secrets still under generation `old`: KEK versions first, then token and
    /// checkpoint keys.
    pub async fn rewrap_batch(&self, old: u64, limit: u32) -> Result<Vec<RewrapItem>, sqlx::Error> {
        let mut out = Vec::new();
        let rows = sqlx::query(
            "SELECT key_id, version, wrapped_kek FROM key_versions WHERE root_generation = $1 ORDER BY key_id, version LIMIT $2",
        )
        .bind(g(old))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            out.push(RewrapItem {
                table: SecretTable::KeyVersions,
                id: r.try_get("key_id")?,
                number: r.try_get("version")?,
                wrapped: r.try_get("wrapped_kek")?,
            });
        }
        if !out.is_empty() {
            return Ok(out);
        }
        for r in &sqlx::query(
            "SELECT version, wrapped_seed FROM token_keys WHERE root_generation = $1 ORDER BY version LIMIT $2",
        )
        .bind(g(old))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        {
            out.push(RewrapItem {
                table: SecretTable::TokenKeys,
                id: String::new(),
                number: r.try_get("version")?,
                wrapped: Some(r.try_get("wrapped_seed")?),
            });
        }
        if !out.is_empty() {
            return Ok(out);
        }
        for r in &sqlx::query(
            "SELECT kid, wrapped_secret FROM checkpoint_keys WHERE root_generation = $1 ORDER BY kid LIMIT $2",
        )
        .bind(g(old))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        {
            out.push(RewrapItem {
                table: SecretTable::CheckpointKeys,
                id: r.try_get("kid")?,
                number: 0,
                wrapped: r.try_get("wrapped_secret")?,
            });
        }
        Ok(out)
    }

    /// Stores one batch of re-wrapped secrets (each `(item, new wrapped)`) under `new`, in one
    /// transaction; rows no longer under `old` are left alone. Returns the rows moved.
    pub async fn apply_rewrap(
        &self,
        old: u64,
        new: u64,
        batch: &[(RewrapItem, Option<Vec<u8>>)],
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut moved = 0;
        for (item, wrapped) in batch {
            let q = match item.table {
                SecretTable::KeyVersions => sqlx::query(
                    "UPDATE key_versions SET wrapped_kek = CASE WHEN wrapped_kek IS NULL THEN NULL ELSE $1 END, root_generation = $2 \
                     WHERE key_id = $3 AND version = $4 AND root_generation = $5",
                ),
                SecretTable::TokenKeys => sqlx::query(
                    "UPDATE token_keys SET wrapped_seed = $1, root_generation = $2 WHERE $3 = '' AND version = $4 AND root_generation = $5",
                ),
                SecretTable::CheckpointKeys => sqlx::query(
                    "UPDATE checkpoint_keys SET wrapped_secret = CASE WHEN wrapped_secret IS NULL THEN NULL ELSE $1 END, \
                     root_generation = $2 WHERE kid = $3 AND $4 = 0 AND root_generation = $5",
                ),
            };
            moved += q
                .bind(wrapped.as_deref())
                .bind(g(new))
                .bind(&item.id)
                .bind(item.number)
                .bind(g(old))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// Records that replica `id` (unsealed) holds `generation` and, during a rotation, `next`.
    pub async fn heartbeat(&self, id: &str, generation: u64, next: Option<u64>, now: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO replicas (id, generation, next_generation, seen_unix_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET generation = $2, next_generation = $3, seen_unix_ms = $4",
        )
        .bind(id)
        .bind(g(generation))
        .bind(next.map(g))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a replica (sealed or stopping); rows not refreshed for a while are ignored anyway.
    pub async fn forget_replica(&self, id: &str, before: i64) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM replicas WHERE id = $1 OR seen_unix_ms < $2")
            .bind(id)
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Live replicas (seen since `since`) that hold `old` but not yet `new`.
    pub async fn replicas_behind(&self, old: u64, new: u64, since: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query(
            "SELECT id FROM replicas WHERE seen_unix_ms > $1 AND generation = $2 \
             AND (next_generation IS NULL OR next_generation <> $3) ORDER BY id",
        )
        .bind(since)
        .bind(g(old))
        .bind(g(new))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect()
    }

    /// How many secrets are still under generation `old`.
    pub async fn remaining_under(&self, old: u64) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM key_versions WHERE root_generation = $1) \
             + (SELECT COUNT(*) FROM token_keys WHERE root_generation = $1) \
             + (SELECT COUNT(*) FROM checkpoint_keys WHERE root_generation = $1) AS n",
        )
        .bind(g(old))
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Completes the rotation from `old` to `new` once nothing is left under `old`: `new`
    /// becomes the seal's current generation (kind, threshold, check value), `old` is retired
    /// and its shares deleted, custodian flags follow the new shares. `false` if there is
    /// nothing to complete (done by another replica, or secrets remain).
    pub async fn complete_rotation(&self, old: u64, new: u64, record: Record) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The seal record's lock first: a write wrapping under `old` (which takes the same lock)
        // either committed before, and is counted below, or waits and is then refused.
        let locked = sqlx::query(
            "UPDATE seal_config SET root_generation = root_generation WHERE id = 1 AND root_generation = $1",
        )
        .bind(g(old))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if locked != 1 {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE root_generations SET status = 'active', next_root_wrapped = NULL, completed_unix_ms = $2 \
             WHERE generation = $1 AND status = 'pending'",
        )
        .bind(g(new))
        .bind(record.time_unix_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done != 1 {
            return Ok(false);
        }
        let left: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM key_versions WHERE root_generation = $1) \
             + (SELECT COUNT(*) FROM token_keys WHERE root_generation = $1) \
             + (SELECT COUNT(*) FROM checkpoint_keys WHERE root_generation = $1) AS n",
        )
        .bind(g(old))
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if left > 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE root_generations SET status = 'retired', completed_unix_ms = $2 WHERE generation = $1")
            .bind(g(old))
            .bind(record.time_unix_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE seal_config SET root_generation = $1, \
             kind = (SELECT kind FROM root_generations WHERE generation = $1), \
             threshold = (SELECT threshold FROM root_generations WHERE generation = $1), \
             kcv = (SELECT kcv FROM root_generations WHERE generation = $1) WHERE id = 1",
        )
        .bind(g(new))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM root_shares WHERE generation = $1")
            .bind(g(old))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE admins SET custodian = CASE WHEN EXISTS \
             (SELECT 1 FROM root_shares r WHERE r.admin_id = admins.id AND r.generation = $1) THEN 1 ELSE 0 END",
        )
        .bind(g(new))
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(true)
    }
}
