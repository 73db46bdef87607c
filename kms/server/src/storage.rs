//! Storage: the only module that speaks SQL. One schema on PostgreSQL (production, several
//! replicas) and SQLite (single node, dev), through sqlx's `Any` driver with `$n` placeholders,
//! which both accept. Every state change is one transaction that also appends its audit entry,
//! so a change is never durable without its record. Transactions that write begin with their
//! write (an UPDATE), which takes PostgreSQL's row lock or SQLite's write lock before any read, so
//! concurrent replicas serialize instead of deadlocking. Uniqueness (names, versions, nonces,
//! audit sequence numbers) is guarded by constraints, not by application checks.
//!
//! Never stores a usable key: KEKs arrive here wrapped.

use std::collections::BTreeMap;

use kms_core::audit::{self, Record};
use kms_core::key::{KeyState, Transition};
use kms_core::policy::AccessPolicy;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::error::ApiError;

mod attest;
pub(crate) mod checkpoint;
mod quorum;
mod rotation;
pub use attest::{ChallengeUse, HardwareRow, HardwareStatus, Identity, TokenKeyRow, TpmEnrollmentRow};
pub use quorum::{ApprovalAdded, ApprovalRow, ProposalRow, ProposalStatus, QuorumClose, RejectionAdded, RejectionRow};
pub use rotation::{RewrapItem, RootGenerationRow, SecretTable};

/// Which database.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// The database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// The seal's record.
#[derive(Clone, Debug)]
pub struct SealConfigRow {
    /// `shamir` or `dev`.
    pub kind: String,
    /// Shares needed.
    pub threshold: u32,
    /// Root key check value.
    pub kcv: Vec<u8>,
    /// M of the approval quorum.
    pub approval_quorum: u32,
    /// The current root key generation.
    pub root_generation: u64,
}

/// An admin.
#[derive(Clone, Debug)]
pub struct AdminRow {
    /// Id.
    pub id: String,
    /// Country.
    pub country: String,
    /// SEC1 signing key.
    pub signing_public_key: Vec<u8>,
    /// SEC1 encryption key.
    pub encryption_public_key: Vec<u8>,
    /// Holds a share.
    pub custodian: bool,
    /// Created.
    pub created_unix_ms: i64,
    /// Removed (the row stays for the record).
    pub removed_unix_ms: Option<i64>,
}

/// A key's metadata.
#[derive(Clone, Debug)]
pub struct KeyRow {
    /// `k-…`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// State.
    pub state: KeyState,
    /// Newest version.
    pub latest_version: u32,
    /// Grants.
    pub grants: AccessPolicy,
    /// Release policy JSON (canonical form).
    pub release_policy: String,
    /// The release policy's version (1 at creation, +1 per change).
    pub release_policy_version: u32,
    /// Created.
    pub created_unix_ms: i64,
    /// When the material will be destroyed, while pending deletion.
    pub deletion_unix_ms: Option<i64>,
}

/// A failure to store.
#[derive(Debug)]
pub enum StoreError {
    /// A uniqueness constraint refused the row.
    Conflict,
    /// The database failed.
    Db(sqlx::Error),
    /// A refusal computed inside the transaction.
    Api(ApiError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e {
            if d.is_unique_violation() {
                return Self::Conflict;
            }
        }
        Self::Db(e)
    }
}

impl From<ApiError> for StoreError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

const KEY_COLUMNS: &str = "id, name, description, tags, state, latest_version, grants, release_policy, \
     release_policy_version, created_unix_ms, deletion_unix_ms";

impl Store {
    /// Connects and runs the embedded migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .connect(url)
            .await?;
        let store = Self { pool, backend };
        match backend {
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&store.pool).await?,
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&store.pool).await?,
        }
        Ok(store)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool (for tests and the audit verifier).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    // ----- seal and admins -------------------------------------------------------------------

    /// The seal record, if initialized.
    pub async fn seal_config(&self) -> Result<Option<SealConfigRow>, sqlx::Error> {
        let row =
            sqlx::query("SELECT kind, threshold, kcv, approval_quorum, root_generation FROM seal_config WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(SealConfigRow {
                kind: r.try_get("kind")?,
                threshold: u32::try_from(r.try_get::<i64, _>("threshold")?).unwrap_or(0),
                kcv: r.try_get("kcv")?,
                approval_quorum: u32::try_from(r.try_get::<i64, _>("approval_quorum")?).unwrap_or(u32::MAX),
                root_generation: u64::try_from(r.try_get::<i64, _>("root_generation")?).unwrap_or(0),
            })
        })
        .transpose()
    }

    /// Initializes an empty database: seal record, admins, shares, audit entry, in one
    /// transaction. `Conflict` if already initialized (on any replica).
    pub async fn initialize(
        &self,
        seal: &SealConfigRow,
        admins: &[AdminRow],
        shares: &[(String, Vec<u8>)],
        hsm_label: Option<&str>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO seal_config (id, kind, threshold, kcv, created_unix_ms, approval_quorum, root_generation) \
             VALUES (1, $1, $2, $3, $4, $5, 1)",
        )
        .bind(&seal.kind)
        .bind(i64::from(seal.threshold))
        .bind(&seal.kcv)
        .bind(record.time_unix_ms)
        .bind(i64::from(seal.approval_quorum))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO root_generations (generation, kind, status, threshold, kcv, hsm_label, created_unix_ms, created_by) \
             VALUES (1, $1, 'active', $2, $3, $4, $5, $6)",
        )
        .bind(&seal.kind)
        .bind(i64::from(seal.threshold))
        .bind(&seal.kcv)
        .bind(hsm_label)
        .bind(record.time_unix_ms)
        .bind(&record.caller)
        .execute(&mut *tx)
        .await?;
        for a in admins {
            insert_admin(&mut tx, a).await?;
        }
        rotation::insert_shares(&mut tx, 1, shares).await?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A custodian's share envelope of a root key generation.
    pub async fn share_of(&self, admin_id: &str, generation: u64) -> Result<Option<Vec<u8>>, sqlx::Error> {
        let row = sqlx::query("SELECT envelope FROM root_shares WHERE admin_id = $1 AND generation = $2")
            .bind(admin_id)
            .bind(i64::try_from(generation).unwrap_or(i64::MAX))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("envelope")).transpose()
    }

    /// One admin (also a removed one: callers check `removed_unix_ms`).
    pub async fn admin(&self, id: &str) -> Result<Option<AdminRow>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {ADMIN_COLUMNS} FROM admins WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| admin_row(&r)).transpose()
    }

    /// Every admin, by id: active ones, or all.
    pub async fn admins(&self, include_removed: bool) -> Result<Vec<AdminRow>, sqlx::Error> {
        let filter = if include_removed {
            ""
        } else {
            "WHERE removed_unix_ms IS NULL"
        };
        sqlx::query(&format!("SELECT {ADMIN_COLUMNS} FROM admins {filter} ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(admin_row)
            .collect()
    }

    /// Adds an admin with its audit entry. `Conflict` if the id exists (also removed).
    pub async fn add_admin(
        &self,
        admin: &AdminRow,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write(close).await?;
        insert_admin(&mut tx, admin).await?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes an admin (the row stays, marked removed) with its audit entry. Refused inside the
    /// transaction if fewer active admins than the approval quorum, or fewer active custodians
    /// of the current root generation than its unseal threshold, would remain, and while a root
    /// rotation is in progress (its new custodians are fixed). The admin's approvals and
    /// rejections of pending proposals stop counting.
    pub async fn remove_admin(
        &self,
        id: &str,
        by: &str,
        now: i64,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write(close).await?;
        // Lock order: seal record before admin rows (as approvals and rotations take them).
        sqlx::query("UPDATE seal_config SET approval_quorum = approval_quorum WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "UPDATE admins SET removed_unix_ms = $2, removed_by = $3 WHERE id = $1 AND removed_unix_ms IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done != 1 {
            return Err(StoreError::Api(ApiError::not_found(
                "admin_not_found",
                format!("no active admin {id}"),
            )));
        }
        let row = sqlx::query(
            "SELECT s.approval_quorum AS quorum, s.threshold AS threshold, s.kind AS kind, \
             (SELECT COUNT(*) FROM admins WHERE removed_unix_ms IS NULL) AS admins, \
             (SELECT COUNT(*) FROM root_shares r JOIN admins a ON a.id = r.admin_id \
               WHERE r.generation = s.root_generation AND a.removed_unix_ms IS NULL) AS custodians \
             FROM seal_config s WHERE s.id = 1",
        )
        .fetch_one(&mut *tx)
        .await?;
        let (quorum, threshold, kind): (i64, i64, String) =
            (row.try_get("quorum")?, row.try_get("threshold")?, row.try_get("kind")?);
        let (admins, custodians): (i64, i64) = (row.try_get("admins")?, row.try_get("custodians")?);
        rotation::refuse_if_rotating(&mut tx).await?;
        if admins < quorum {
            return Err(StoreError::Api(ApiError::precondition(
                "quorum_unreachable",
                format!("removing {id} would leave {admins} admins for an approval quorum of {quorum}: lower the quorum first"),
            )));
        }
        if kind == "shamir" && custodians < threshold {
            return Err(StoreError::Api(ApiError::precondition(
                "too_few_custodians",
                format!("removing {id} would leave {custodians} custodians for an unseal threshold of {threshold}: rotate the root key to other custodians first"),
            )));
        }
        // The admin's approvals and rejections of pending proposals stay on record but stop
        // counting: quorum counts join the active admins.
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets M of the approval quorum, refused inside the transaction if there are fewer active
    /// admins.
    pub async fn set_approval_quorum(
        &self,
        quorum: u32,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write(close).await?;
        sqlx::query("UPDATE seal_config SET approval_quorum = $1 WHERE id = 1")
            .bind(i64::from(quorum))
            .execute(&mut *tx)
            .await?;
        let admins: i64 = sqlx::query("SELECT COUNT(*) AS n FROM admins WHERE removed_unix_ms IS NULL")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if admins < i64::from(quorum) {
            return Err(StoreError::Api(ApiError::precondition(
                "quorum_unreachable",
                format!("there are {admins} admins: a quorum of {quorum} could never be reached"),
            )));
        }
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records an admin request nonce. `false` if it was seen before (a replay).
    pub async fn use_nonce(&self, nonce: &[u8], expires_unix_ms: i64) -> Result<bool, sqlx::Error> {
        match sqlx::query("INSERT INTO admin_nonces (nonce, expires_unix_ms) VALUES ($1, $2)")
            .bind(nonce)
            .bind(expires_unix_ms)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Forgets nonces whose requests can no longer be fresh.
    pub async fn purge_nonces(&self, now_unix_ms: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM admin_nonces WHERE expires_unix_ms < $1")
            .bind(now_unix_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    // ----- keys ------------------------------------------------------------------------------

    /// Creates a key with version 1. `Conflict` if the name (or id) exists.
    pub async fn create_key(
        &self,
        key: &KeyRow,
        wrapped_v1: &[u8],
        root_generation: u64,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_generation(&mut tx, root_generation).await?;
        sqlx::query(
            "INSERT INTO keys (id, name, description, tags, state, latest_version, grants, release_policy, created_unix_ms, updated_unix_ms, deletion_unix_ms) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $8, NULL)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.description)
        .bind(serde_json::to_string(&key.tags).unwrap_or_default())
        .bind(key.state.as_str())
        .bind(serde_json::to_string(&key.grants).unwrap_or_default())
        .bind(&key.release_policy)
        .bind(key.created_unix_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO key_versions (key_id, version, wrapped_kek, created_unix_ms, root_generation) VALUES ($1, 1, $2, $3, $4)",
        )
        .bind(&key.id)
        .bind(wrapped_v1)
        .bind(key.created_unix_ms)
        .bind(i64::try_from(root_generation).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO release_policies (key_id, version, document, set_unix_ms, set_by) VALUES ($1, 1, $2, $3, $4)",
        )
        .bind(&key.id)
        .bind(&key.release_policy)
        .bind(key.created_unix_ms)
        .bind(&record.caller)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A key by id.
    pub async fn key_by_id(&self, id: &str) -> Result<Option<KeyRow>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| key_row(&r)).transpose()
    }

    /// A key by name.
    pub async fn key_by_name(&self, name: &str) -> Result<Option<KeyRow>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| key_row(&r)).transpose()
    }

    /// Up to `limit` keys with id greater than `after`, by id.
    pub async fn list_keys(&self, after: &str, limit: u32) -> Result<Vec<KeyRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_row)
        .collect()
    }

    /// Adds the next version to an enabled key. The version number comes from an UPDATE on the
    /// key's row, so concurrent rotations on any replica get consecutive numbers; the primary
    /// key on (key, version) would refuse a duplicate anyway. `wrap` wraps the new KEK for the
    /// version it is given; `make_record` writes the audit entry for it.
    pub async fn rotate_key(
        &self,
        id: &str,
        now: i64,
        root_generation: u64,
        wrap: impl FnOnce(u32) -> Result<Vec<u8>, ApiError>,
        make_record: impl FnOnce(u32) -> Record,
    ) -> Result<Option<KeyRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_generation(&mut tx, root_generation).await?;
        let row = sqlx::query(
            "UPDATE keys SET latest_version = latest_version + 1, updated_unix_ms = $2 WHERE id = $1 AND state = 'enabled' RETURNING latest_version",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let version = u32::try_from(row.try_get::<i64, _>("latest_version")?)
            .map_err(|_| ApiError::internal("version_overflow", "version out of range"))?;
        let wrapped = wrap(version)?;
        sqlx::query(
            "INSERT INTO key_versions (key_id, version, wrapped_kek, created_unix_ms, root_generation) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(i64::from(version))
        .bind(wrapped)
        .bind(now)
        .bind(i64::try_from(root_generation).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, vec![make_record(version)]).await?;
        let key = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let key = key_row(&key)?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// Applies a lifecycle transition if the key is in a state it starts from (and, with
    /// `due_by`, its deletion time is at or before it). `None` if it was not (the caller reads the
    /// key to say why). Destroying erases every version's wrapped KEK in the same transaction.
    #[allow(clippy::too_many_arguments)] // each is a column or a guard of the one UPDATE
    pub async fn change_state(
        &self,
        id: &str,
        transition: Transition,
        deletion_unix_ms: Option<i64>,
        due_by: Option<i64>,
        now: i64,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<Option<KeyRow>, StoreError> {
        let from = transition.from();
        let to = transition.to();
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 6)).collect();
        let sql = format!(
            "UPDATE keys SET state = $2, deletion_unix_ms = $3, updated_unix_ms = $4 WHERE id = $1 AND state IN ({}) \
             AND COALESCE(deletion_unix_ms, 0) <= $5 RETURNING {KEY_COLUMNS}",
            placeholders.join(", ")
        );
        let sources = from;
        let mut tx = self.begin_write(close).await?;
        let mut q = sqlx::query(&sql)
            .bind(id)
            .bind(to.as_str())
            .bind(deletion_unix_ms)
            .bind(now)
            .bind(due_by.unwrap_or(i64::MAX));
        for s in sources {
            q = q.bind(s.as_str());
        }
        let Some(row) = q.fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let key = key_row(&row)?;
        if to == KeyState::Destroyed {
            // Erase the material: after this no blob under this key can ever be decrypted.
            sqlx::query("UPDATE key_versions SET wrapped_kek = NULL, destroyed_unix_ms = $2 WHERE key_id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// The wrapped KEK of one version: `None` if no such version, `Some(None)` if destroyed.
    pub async fn wrapped_kek(&self, id: &str, version: u32) -> Result<Option<Option<Vec<u8>>>, sqlx::Error> {
        let row = sqlx::query("SELECT wrapped_kek FROM key_versions WHERE key_id = $1 AND version = $2")
            .bind(id)
            .bind(i64::from(version))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<Option<Vec<u8>>, _>("wrapped_kek")).transpose()
    }

    /// Keys whose deletion window has ended.
    pub async fn due_for_destruction(&self, now: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query("SELECT id FROM keys WHERE state = 'pending_deletion' AND deletion_unix_ms <= $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect()
    }

    // ----- audit -----------------------------------------------------------------------------

    /// Appends records to the chain in one transaction.
    pub async fn append_audit(&self, records: Vec<Record>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        append_in_tx(&mut tx, records).await?;
        tx.commit().await
    }
}

/// Appends `records` after the chain head inside `tx`. The first statement updates the head row,
/// which serializes writers on every replica; the sequence numbers' primary key would refuse a
/// duplicate in any case.
pub(crate) async fn append_in_tx(tx: &mut Transaction<'static, Any>, records: Vec<Record>) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let n = i64::try_from(records.len()).unwrap_or(i64::MAX);
    let head = sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
        .bind(n)
        .fetch_one(&mut **tx)
        .await?;
    let new_last: i64 = head.try_get("seq")?;
    let prev: Vec<u8> = head.try_get("hash")?;
    let mut prev_hash = [0u8; 32];
    if prev.len() != 32 {
        return Err(sqlx::Error::Protocol("audit_head.hash is not 32 bytes".into()));
    }
    prev_hash.copy_from_slice(&prev);
    let entries = audit::chain(new_last - n, prev_hash, records);
    for chunk in entries.chunks(200) {
        let mut sql = String::from(
            "INSERT INTO audit_log (seq, time_unix_ms, caller, operation, key_id, outcome, reason, detail, prev_hash, hash) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            let b = i * 10;
            sql.push_str(&format!(
                "(${},${},${},${},${},${},${},${},${},${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10
            ));
        }
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.seq)
                .bind(e.record.time_unix_ms)
                .bind(e.record.caller.clone())
                .bind(e.record.operation.clone())
                .bind(e.record.key_id.clone())
                .bind(e.record.outcome.clone())
                .bind(e.record.reason.clone())
                .bind(e.record.detail.clone())
                .bind(e.prev_hash.to_vec())
                .bind(e.hash.to_vec());
        }
        q.execute(&mut **tx).await?;
    }
    let last_hash = entries.last().map(|e| e.hash.to_vec()).unwrap_or(prev);
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(last_hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Locks the seal record and refuses a secret wrapped under a root generation older than the
/// current one (a replica that missed a rotation): otherwise it could be stored under a retired
/// generation nothing can open any more. The lock orders the write against the transaction that
/// completes a rotation (which locks the same row first).
pub(crate) async fn lock_generation(tx: &mut Transaction<'static, Any>, generation: u64) -> Result<(), StoreError> {
    let n =
        sqlx::query("UPDATE seal_config SET root_generation = root_generation WHERE id = 1 AND root_generation <= $1")
            .bind(i64::try_from(generation).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await?
            .rows_affected();
    if n != 1 {
        return Err(StoreError::Api(ApiError::unavailable(
            "generation_changed",
            "the root key was rotated and this replica still holds the previous generation; retry in a moment",
        )));
    }
    Ok(())
}

const ADMIN_COLUMNS: &str =
    "id, country, signing_public_key, encryption_public_key, custodian, created_unix_ms, removed_unix_ms";

async fn insert_admin(tx: &mut Transaction<'static, Any>, a: &AdminRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admins (id, country, signing_public_key, encryption_public_key, custodian, created_unix_ms) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&a.id)
    .bind(&a.country)
    .bind(&a.signing_public_key)
    .bind(&a.encryption_public_key)
    .bind(i64::from(a.custodian))
    .bind(a.created_unix_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn admin_row(r: &AnyRow) -> Result<AdminRow, sqlx::Error> {
    Ok(AdminRow {
        id: r.try_get("id")?,
        country: r.try_get("country")?,
        signing_public_key: r.try_get("signing_public_key")?,
        encryption_public_key: r.try_get("encryption_public_key")?,
        custodian: r.try_get::<i64, _>("custodian")? != 0,
        created_unix_ms: r.try_get("created_unix_ms")?,
        removed_unix_ms: r.try_get("removed_unix_ms")?,
    })
}

pub(crate) fn key_row(r: &AnyRow) -> Result<KeyRow, sqlx::Error> {
    let corrupt = |what: &str| sqlx::Error::Protocol(format!("corrupt keys row: {what}"));
    let state: String = r.try_get("state")?;
    let tags: String = r.try_get("tags")?;
    let grants: String = r.try_get("grants")?;
    Ok(KeyRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags"))?,
        state: KeyState::parse(&state).ok_or_else(|| corrupt("state"))?,
        latest_version: u32::try_from(r.try_get::<i64, _>("latest_version")?).map_err(|_| corrupt("latest_version"))?,
        grants: serde_json::from_str(&grants).map_err(|_| corrupt("grants"))?,
        release_policy: r.try_get("release_policy")?,
        release_policy_version: u32::try_from(r.try_get::<i64, _>("release_policy_version")?)
            .map_err(|_| corrupt("release_policy_version"))?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        deletion_unix_ms: r.try_get("deletion_unix_ms")?,
    })
}
