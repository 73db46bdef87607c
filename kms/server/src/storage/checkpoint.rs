//! SQL of signed audit checkpoints: the keys that sign them (`checkpoint_keys`), the checkpoints
//! (`audit_checkpoints`) and the chain head they sign. Never stores a usable private key: a
//! software key's secret arrives here wrapped under the root key, an HSM key's not at all.

use kms_core::audit::Checkpoint;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::Store;

/// A checkpoint signing key as stored. Nothing in it is trusted until the checkpoint module has
/// checked it against the seal (the secret unwraps to the public key, or the HSM holds it).
#[derive(Clone, Debug)]
pub(crate) struct CheckpointKeyRow {
    /// Hex of the first 16 bytes of SHA-256(public key); the primary key.
    pub(crate) kid: String,
    /// `EdDSA` or `ES256`.
    pub(crate) algorithm: String,
    /// Ed25519: 32 bytes; ES256: SEC1 uncompressed point.
    pub(crate) public_key: Vec<u8>,
    /// Software keys: the Ed25519 seed wrapped under the root key.
    pub(crate) wrapped_secret: Option<Vec<u8>>,
    /// HSM keys: the key's label in the HSM.
    pub(crate) hsm_label: Option<String>,
    /// The root key generation that wrapped the secret (or held by the seal at creation).
    pub(crate) root_generation: i64,
    /// Created.
    pub(crate) created_unix_ms: i64,
    /// No longer signs (still verifies the checkpoints it signed).
    pub(crate) retired_unix_ms: Option<i64>,
}

fn key_row(r: &AnyRow) -> Result<CheckpointKeyRow, sqlx::Error> {
    Ok(CheckpointKeyRow {
        kid: r.try_get("kid")?,
        algorithm: r.try_get("algorithm")?,
        public_key: r.try_get("public_key")?,
        wrapped_secret: r.try_get("wrapped_secret")?,
        hsm_label: r.try_get("hsm_label")?,
        root_generation: r.try_get("root_generation")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        retired_unix_ms: r.try_get("retired_unix_ms")?,
    })
}

const KEY_COLUMNS: &str =
    "kid, algorithm, public_key, wrapped_secret, hsm_label, root_generation, created_unix_ms, retired_unix_ms";

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], sqlx::Error> {
    <[u8; 32]>::try_from(bytes).map_err(|_| sqlx::Error::Protocol(format!("{what} is not 32 bytes")))
}

impl Store {
    /// Every checkpoint key, oldest first (ties by kid), so every replica picks the same one.
    pub(crate) async fn checkpoint_keys(&self) -> Result<Vec<CheckpointKeyRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM checkpoint_keys ORDER BY created_unix_ms, kid"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_row)
        .collect()
    }

    /// Adds `row` unless `have_one` says the keys already stored include a usable one. Replicas
    /// serialize on the seal record's row (updated first, as every writing transaction here
    /// begins), so of two racing replicas the second sees the first one's key and adds none.
    /// The row carries the root generation that wrapped its secret. `false` if nothing was added.
    pub(crate) async fn insert_checkpoint_key_unless(
        &self,
        row: &CheckpointKeyRow,
        have_one: impl FnOnce(&[CheckpointKeyRow]) -> bool,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Locks the seal record, and refuses a secret wrapped under a generation older than the
        // current one (this replica missed a rotation).
        sqlx::query(
            "UPDATE seal_config SET root_generation = root_generation WHERE id = 1 AND root_generation <= $1 \
             RETURNING root_generation",
        )
        .bind(row.root_generation)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            sqlx::Error::Protocol("no seal record, or the root key was rotated past this replica's generation".into())
        })?;
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM checkpoint_keys ORDER BY created_unix_ms, kid"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(key_row)
        .collect::<Result<Vec<_>, _>>()?;
        if have_one(&rows) {
            tx.rollback().await?;
            return Ok(false);
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO checkpoint_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)"
        ))
        .bind(&row.kid)
        .bind(&row.algorithm)
        .bind(&row.public_key)
        .bind(row.wrapped_secret.clone())
        .bind(row.hsm_label.clone())
        .bind(row.root_generation)
        .bind(row.created_unix_ms)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {
                tx.commit().await?;
                Ok(true)
            }
            // The same kid is there already (an HSM key another replica recorded).
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The chain head: the last sequence number and its hash (0 and the genesis hash when the
    /// chain is empty).
    pub(crate) async fn audit_head(&self) -> Result<(i64, [u8; 32]), sqlx::Error> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let hash: Vec<u8> = row.try_get("hash")?;
        Ok((row.try_get("seq")?, hash32(&hash, "audit_head.hash")?))
    }

    /// The sequence number of the newest checkpoint, if any.
    pub(crate) async fn latest_checkpoint_seq(&self) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query("SELECT seq FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("seq")).transpose()
    }

    /// Stores a signed checkpoint. `false` if one for that seq exists (another replica signed
    /// the same head first).
    pub(crate) async fn insert_checkpoint(&self, c: &Checkpoint, signature: &[u8]) -> Result<bool, sqlx::Error> {
        match sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, time_unix_ms, kid, signature) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(c.seq)
        .bind(c.hash.to_vec())
        .bind(c.time_unix_ms)
        .bind(&c.kid)
        .bind(signature)
        .execute(&self.pool)
        .await
        {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every checkpoint with its signature, by seq.
    #[cfg(test)]
    pub(crate) async fn checkpoints(&self) -> Result<Vec<(Checkpoint, Vec<u8>)>, sqlx::Error> {
        sqlx::query("SELECT seq, hash, time_unix_ms, kid, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let hash: Vec<u8> = r.try_get("hash")?;
                Ok((
                    Checkpoint {
                        seq: r.try_get("seq")?,
                        hash: hash32(&hash, "audit_checkpoints.hash")?,
                        time_unix_ms: r.try_get("time_unix_ms")?,
                        kid: r.try_get("kid")?,
                    },
                    r.try_get("signature")?,
                ))
            })
            .collect()
    }
}
