//! SQL of signed audit checkpoints: the keys that sign them (`checkpoint_keys`, authenticated
//! rows), the checkpoints (`audit_checkpoints`, which their signatures authenticate) and the
//! chain they sign. Never stores a usable private key: a software key's secret arrives here
//! wrapped under the root key, an HSM key's not at all.

use kms_core::audit::{Checkpoint, CheckpointAnchor, Entry, Record};
use kms_core::integrity::{StateHead, Value};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use super::row;
use super::tables::CheckpointKeyRow;
use super::{require_generation, Store, StoreError, Tx, Violation, ViolationKind};

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| StoreError::Db(sqlx::Error::Protocol(format!("{what} is not 32 bytes"))))
}

const CHECKPOINT_COLUMNS: &str =
    "seq, hash, time_unix_ms, kid, signature, prev_seq, prev_id, state_version, state_seq, state_hash";

fn checkpoint_row(r: &AnyRow) -> Result<(Checkpoint, Vec<u8>), StoreError> {
    let hash: Vec<u8> = r.try_get("hash")?;
    let prev_id: Option<Vec<u8>> = r.try_get("prev_id")?;
    let state_hash: Option<Vec<u8>> = r.try_get("state_hash")?;
    Ok((
        Checkpoint {
            seq: r.try_get("seq")?,
            hash: hash32(&hash, "audit_checkpoints.hash")?,
            time_unix_ms: r.try_get("time_unix_ms")?,
            kid: r.try_get("kid")?,
            prev_seq: r.try_get("prev_seq")?,
            prev_id: hash32(prev_id.as_deref().unwrap_or(&[0; 32]), "audit_checkpoints.prev_id")?,
            state: StateHead {
                version: r.try_get("state_version")?,
                seq: r.try_get("state_seq")?,
                hash: hash32(
                    state_hash.as_deref().unwrap_or(&[0; 32]),
                    "audit_checkpoints.state_hash",
                )?,
            },
        },
        r.try_get("signature")?,
    ))
}

fn entry_row(r: &AnyRow) -> Result<Entry, StoreError> {
    let prev: Vec<u8> = r.try_get("prev_hash")?;
    let hash: Vec<u8> = r.try_get("hash")?;
    Ok(Entry {
        seq: r.try_get("seq")?,
        record: Record {
            time_unix_ms: r.try_get("time_unix_ms")?,
            caller: r.try_get("caller")?,
            operation: r.try_get("operation")?,
            key_id: r.try_get("key_id")?,
            outcome: r.try_get("outcome")?,
            reason: r.try_get("reason")?,
            detail: r.try_get("detail")?,
        },
        prev_hash: hash32(&prev, "audit_log.prev_hash")?,
        hash: hash32(&hash, "audit_log.hash")?,
    })
}

/// Checkpoint keys oldest first, ties by kid: the same order on every replica.
const KEYS_IN_ORDER: &str = "ORDER BY created_unix_ms, kid";

impl Store {
    /// Every checkpoint key that verifies, oldest first (ties by kid), so every replica picks the
    /// same one.
    pub(crate) async fn checkpoint_keys(&self) -> Result<Vec<CheckpointKeyRow>, StoreError> {
        Ok(self
            .all::<CheckpointKeyRow>(KEYS_IN_ORDER, &[], row::every)
            .await?
            .into_iter()
            .map(|s| s.row)
            .collect())
    }

    /// Adds `row` unless `have_one` says the keys already stored include a usable one. Write
    /// transactions serialize on the state row, so of two racing replicas the second sees the
    /// first one's key and adds none. The row carries the root generation that wrapped its
    /// secret, which must be current. `false` if nothing was added.
    pub(crate) async fn insert_checkpoint_key_unless(
        &self,
        row: &CheckpointKeyRow,
        have_one: impl FnOnce(&[CheckpointKeyRow]) -> bool,
    ) -> Result<bool, StoreError> {
        let mut tx = Tx::begin(self).await?;
        require_generation(&mut tx, u64::try_from(row.root_generation).unwrap_or(0)).await?;
        let rows: Vec<CheckpointKeyRow> = tx
            .all::<CheckpointKeyRow>(KEYS_IN_ORDER, &[], row::every)
            .await?
            .into_iter()
            .map(|s| s.row)
            .collect();
        if have_one(&rows) || tx.get::<CheckpointKeyRow>(&[Value::text(&row.kid)]).await?.is_some() {
            return Ok(false);
        }
        match tx.insert(row).await {
            Ok(()) => {
                tx.commit().await?;
                Ok(true)
            }
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The chain head: the last sequence number and its hash (0 and the genesis hash when the
    /// chain is empty).
    pub(crate) async fn audit_head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let hash: Vec<u8> = row.try_get("hash")?;
        Ok((row.try_get("seq")?, hash32(&hash, "audit_head.hash")?))
    }

    /// Audit entries with `after < seq <= upto`, in order.
    pub(crate) async fn audit_entries(&self, after: i64, upto: i64) -> Result<Vec<Entry>, StoreError> {
        sqlx::query(
            "SELECT seq, time_unix_ms, caller, operation, key_id, outcome, reason, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(entry_row)
        .collect()
    }

    /// Checkpoints with `seq >= from`, by seq.
    pub(crate) async fn checkpoints_from(&self, from: i64) -> Result<Vec<(Checkpoint, Vec<u8>)>, StoreError> {
        sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq >= $1 ORDER BY seq"
        ))
        .bind(from)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(checkpoint_row)
        .collect()
    }

    /// Stores a signed checkpoint if it extends the newest stored one (`c.prev_seq` is the
    /// highest seq, or 0 with none). `false` if it does not, or one for that seq exists: another
    /// replica extended the chain first, and its checkpoint is checked next time. Without the
    /// check two replicas signing from the same base (or one from a base the other had already
    /// extended) fork the chain, and each then reads the other's checkpoint as a rollback.
    ///
    /// On PostgreSQL the table is locked against concurrent inserts for the check and the
    /// insert; SQLite's write lock serialises them.
    pub(crate) async fn insert_checkpoint(&self, c: &Checkpoint, signature: &[u8]) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend() == super::Backend::Postgres {
            sqlx::query("LOCK TABLE audit_checkpoints IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let newest: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS n FROM audit_checkpoints")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if newest != c.prev_seq {
            return Ok(false);
        }
        match sqlx::query(&format!(
            "INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(c.seq)
        .bind(c.hash.to_vec())
        .bind(c.time_unix_ms)
        .bind(&c.kid)
        .bind(signature)
        .bind(c.prev_seq)
        .bind(c.prev_id.to_vec())
        .bind(c.state.version)
        .bind(c.state.seq)
        .bind(c.state.hash.to_vec())
        .execute(&mut *tx)
        .await
        {
            Ok(_) => {
                tx.commit().await?;
                Ok(true)
            }
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The newest `n` checkpoints, by seq.
    pub(crate) async fn checkpoints_tail(&self, n: u32) -> Result<Vec<(Checkpoint, Vec<u8>)>, StoreError> {
        let mut out = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC LIMIT $1"
        ))
        .bind(i64::from(n))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(checkpoint_row)
        .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// The hash of state log entry `seq`, if it exists.
    pub(crate) async fn state_log_hash(&self, seq: i64) -> Result<Option<[u8; 32]>, StoreError> {
        sqlx::query("SELECT hash FROM state_log WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| hash32(&r.try_get::<Vec<u8>, _>("hash")?, "state_log.hash"))
            .transpose()
    }

    /// Checks that the database still holds what `anchor` (kept outside it, in the HSM) says a
    /// server signed: the checkpoint at its seq with its id, and a state that extends its state
    /// head. A `state_rollback` violation if not. `anchor` must have been read before this call:
    /// the state is read (and verified) here, after it.
    pub(crate) async fn check_anchor(&self, anchor: &CheckpointAnchor) -> Result<(), StoreError> {
        let fail = |detail: String| {
            StoreError::Rollback(Violation {
                table: "audit_checkpoints",
                key: format!("[\"{}\"]", anchor.seq),
                kind: ViolationKind::StateRollback,
                detail,
            })
        };
        let stored = self.checkpoints_from(anchor.seq).await?;
        if !stored
            .first()
            .is_some_and(|(c, _)| c.seq == anchor.seq && c.id() == anchor.id)
        {
            return Err(fail(format!(
                "the HSM's anchor names checkpoint {}, which the database no longer holds as it was signed: the database was rolled back or its checkpoints rewritten",
                anchor.seq
            )));
        }
        // The state as the database holds it now, not as this process last read it: another
        // replica may have moved it on and anchored that since, and the anchor was read first.
        self.integrity.catch_up(self).await?;
        let head = self.integrity.head();
        let log_hash = if anchor.state.seq == 0 {
            Some(kms_core::integrity::STATE_GENESIS)
        } else {
            self.state_log_hash(anchor.state.seq).await?
        };
        if head.version < anchor.state.version || head.seq < anchor.state.seq || log_hash != Some(anchor.state.hash) {
            return Err(fail(format!(
                "the database's state (version {}) is behind the state version {} that the HSM's anchor records: the database was rolled back",
                head.version, anchor.state.version
            )));
        }
        Ok(())
    }

    /// Every checkpoint with its signature, by seq.
    #[cfg(test)]
    pub(crate) async fn checkpoints(&self) -> Result<Vec<(Checkpoint, Vec<u8>)>, StoreError> {
        self.checkpoints_from(i64::MIN).await
    }
}
