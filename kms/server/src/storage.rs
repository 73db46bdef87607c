//! Storage: the only module that speaks SQL. One schema on PostgreSQL (production, several
//! replicas) and SQLite (single node, dev), through sqlx's `Any` driver with `$n` placeholders,
//! which both accept.
//!
//! The database is not trusted (docs/threat-model.md): every row of an authenticated table is
//! decoded in one place, [`integrity`], which refuses a row `kmsd` did not write as it is
//! (`row_integrity`) or an older version of it (`row_rollback`), and every state change is one
//! [`Tx`]: it locks the state row first (so write transactions serialize on every replica),
//! reads and verifies the rows it decides on inside that lock, writes them authenticated, records
//! them in the state log and appends its audit entry, in one commit. Uniqueness (names, versions,
//! nonces, audit sequence numbers) is still guarded by constraints.
//!
//! Storage returns typed rows and its own errors ([`StoreError`], [`Refusal`]); the mapping to
//! the wire is in `crate::error`. It never stores a usable key: KEKs arrive here wrapped.

use kms_core::audit::{self, Record};
use kms_core::ids::{AdminId, KeyId, KeyVersion};
use kms_core::integrity::Value;
use kms_core::key::{KeyState, Transition};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Row as _, Transaction};
use std::sync::Arc;
use std::time::Duration;

mod attest;
pub(crate) mod checkpoint;
pub mod integrity;
mod quorum;
mod rotation;
pub(crate) mod row;
mod tables;

pub use attest::{ChallengeUse, Identity};
pub use integrity::{Integrity, KeyRing, Violation, ViolationKind};
pub use quorum::{ApprovalAdded, QuorumClose, RejectionAdded, Votes};
pub use rotation::{RewrapItem, SecretTable};
pub use row::Table;
pub use tables::{
    AdminRequestRow, AdminRow, ApprovalRow, CheckpointKeyRow, HardwareRow, HardwareStatus, KeyRow, KeyVersionRow,
    ProposalRow, ProposalStatus, RejectionRow, ReleasePolicyRow, ReplicaRow, RootGenerationRow, SealConfigRow,
    ShareRow, TokenKeyRow, TpmClockRow, TpmEnrollmentRow,
};

pub(crate) use integrity::{Stored, Tx};
use row::Row;

/// Which database.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// One page of a listing: the rows that verify, and the token of the next page (empty on the
/// last).
#[derive(Debug)]
pub struct Listing<T> {
    /// The rows.
    pub rows: Vec<T>,
    /// Where the next page starts, empty if there is none.
    pub next: String,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    integrity: Arc<Integrity>,
    /// The admin request nonces this process took, with when they stop mattering: `admin_nonces`
    /// is the database's, and a row deleted there must not let a request run twice here.
    nonces: Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, i64>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish()
    }
}

/// A failure to store or read.
#[derive(Debug)]
pub enum StoreError {
    /// A uniqueness constraint refused the row, or a row changed under a conditional write.
    Conflict,
    /// The database failed.
    Db(sqlx::Error),
    /// Rows cannot be verified or written: the seal holds no integrity key (sealed).
    Sealed,
    /// A row (or the state row) that `kmsd` did not write as it is.
    Integrity(Violation),
    /// An older genuine row, a row `kmsd` deleted put back or one it wrote gone, or the whole
    /// state gone back.
    Rollback(Violation),
    /// A refusal decided inside the transaction.
    Refused(Refusal),
    /// A wrapping callback failed.
    Crypto(kms_core::Error),
}

/// Why a transaction refused, decided under its locks (the wire's codes and messages are in
/// `crate::error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Init has not run.
    NotInitialized,
    /// No active admin with this id.
    AdminNotFound(AdminId),
    /// The admin was removed (or is not active).
    AdminRemoved(AdminId),
    /// The change would leave fewer active admins than M.
    QuorumUnreachable {
        /// Active admins that would remain.
        admins: i64,
        /// M.
        quorum: u32,
        /// The admin being removed, if that is the change.
        removing: Option<AdminId>,
    },
    /// Removing the admin would leave fewer custodians than the unseal threshold.
    TooFewCustodians {
        /// The admin.
        removing: AdminId,
        /// Custodians that would remain.
        custodians: i64,
        /// The threshold.
        threshold: u32,
    },
    /// A root rotation is in progress.
    RotationInProgress,
    /// This replica wraps under a generation older than the current one (retry).
    GenerationChanged,
    /// A rotation was proposed from a generation that is no longer current.
    RotationRaced,
    /// A TPM credential challenge was used meanwhile.
    TpmEnrollmentUsed,
    /// M > 1: the operation must be proposed.
    QuorumRequired(u32),
    /// The proposal is no longer pending.
    ProposalClosed(String),
    /// The approvals of active admins no longer reach M.
    QuorumNotReached {
        /// The proposal.
        proposal: String,
        /// Approvals that count.
        approvals: i64,
        /// M.
        quorum: u32,
    },
    /// This admin approved already (or, rejecting, had approved).
    AlreadyApproved {
        /// The admin.
        admin: AdminId,
        /// The proposal.
        proposal: String,
        /// Whether the admin tried to reject.
        rejecting: bool,
    },
    /// This admin rejected already (or, approving, had rejected).
    AlreadyRejected {
        /// The admin.
        admin: AdminId,
        /// The proposal.
        proposal: String,
        /// Whether the admin tried to approve.
        approving: bool,
    },
    /// A stored approval does not verify at execution (its signature, its signer or what it
    /// approves), so the proposal cannot run.
    ApprovalInvalid {
        /// The proposal.
        proposal: String,
        /// The approver.
        admin: AdminId,
        /// What is wrong.
        what: String,
    },
    /// A key version number overflowed.
    VersionOverflow,
    /// A bug: an invariant of the storage code does not hold.
    Internal(&'static str),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict => f.write_str("a uniqueness constraint or a concurrent change refused the write"),
            Self::Db(e) => write!(f, "database: {e}"),
            Self::Sealed => f.write_str("sealed: no integrity key is held"),
            Self::Integrity(v) | Self::Rollback(v) => write!(f, "{}: {v}", v.kind.reason()),
            Self::Refused(r) => write!(f, "refused: {r:?}"),
            Self::Crypto(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StoreError {}

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

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl From<kms_core::Error> for StoreError {
    fn from(e: kms_core::Error) -> Self {
        Self::Crypto(e)
    }
}

/// How long a pooled connection may sit unused before it is pinged on its way out of the pool.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

pub(crate) fn g(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The query of [`Store::get_pair`] for `A` and `B`.
pub(crate) fn pair_sql<A: Row, B: Row>() -> String {
    format!(
        "SELECT {}, {} FROM (SELECT 1 AS one) AS one LEFT JOIN {} AS a ON {} LEFT JOIN {} AS b ON {}",
        row::select_list_as::<A>("a"),
        row::select_list_as::<B>("b"),
        A::TABLE.name(),
        row::key_on::<A>("a", 1),
        B::TABLE.name(),
        row::key_on::<B>("b", 1 + A::KEY),
    )
}

impl Store {
    /// Connects and runs the embedded migrations, with calls waiting for a connection as long as
    /// `database.acquire_timeout_ms` does by default.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        let acquire_timeout = Duration::from_millis(crate::config::default_acquire_timeout_ms());
        Self::connect_with(url, max_connections, acquire_timeout).await
    }

    /// Connects and runs the embedded migrations. A call waits up to `acquire_timeout` for a
    /// connection; while the database refuses connections the pool retries with a backoff of up
    /// to a fifth of it (sqlx), which is therefore also about how long kmsd takes to serve again
    /// once the database is back.
    pub async fn connect_with(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(acquire_timeout)
            // sqlx pings a connection when it returns to the pool and, by default, again when it
            // is taken out: three round trips for every query. A connection used within the last
            // second passed its ping when it was put back; only one idle for longer (through a
            // database restart, say) is pinged before use, and one that fails is replaced.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await?;
        let store = Self {
            pool,
            backend,
            integrity: Arc::new(Integrity::new()),
            nonces: Arc::default(),
        };
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

    /// The integrity state: keys held, the state log view, the alarm.
    pub fn integrity(&self) -> &Integrity {
        &self.integrity
    }

    // ----- generic reads ---------------------------------------------------------------------

    /// Selects `T`'s rows by `rest` (the SQL after `SELECT … FROM`) with `binds` and verifies
    /// every row. A row read before this process learned of a newer version of it (written
    /// meanwhile) is read again: the whole query, up to three times. Rows that do not verify are
    /// `Err` in the result, and so are genuine rows that `selects` (`rest`'s condition restated
    /// in Rust) refuses: the database answered with a row the query does not select
    /// (`row_substituted`), and second copies of a genuine row (its primary key dropped).
    pub(crate) async fn fetch<T: Row>(
        &self,
        rest: &str,
        binds: &[Value],
        selects: impl Fn(&Stored<T>) -> bool,
    ) -> Result<Vec<Result<Stored<T>, StoreError>>, StoreError> {
        Ok(self
            .fetch_with::<T, ()>(rest, binds, selects, |_| Ok(()))
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// [`Store::fetch`], each row with what `key` reads from it as stored (whether or not it
    /// verifies).
    async fn fetch_with<T: Row, K>(
        &self,
        rest: &str,
        binds: &[Value],
        selects: impl Fn(&Stored<T>) -> bool,
        key: impl Fn(&sqlx::any::AnyRow) -> Result<K, sqlx::Error>,
    ) -> Result<Vec<(K, Result<Stored<T>, StoreError>)>, StoreError> {
        let sql = row::select::<T>(rest);
        for _ in 0..3 {
            let read_at = self.integrity.read_at();
            let mut q = sqlx::query(&sql);
            for v in binds {
                q = row::bind(q, v);
            }
            let rows = q.fetch_all(&self.pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            let mut returned = std::collections::HashSet::with_capacity(rows.len());
            let mut stale = false;
            for r in &rows {
                let k = key(r)?;
                match self.integrity.verify::<T>(self, r, read_at).await {
                    // Every copy of a genuine row verifies: it is one row, not two.
                    Ok(Some(s)) if !returned.insert(s.row.key()) => {
                        out.push((k, Err(self.integrity.copied::<T>(&s.row.key()))))
                    }
                    Ok(Some(s)) if selects(&s) => out.push((k, Ok(s))),
                    Ok(Some(s)) => out.push((k, Err(self.integrity.substituted(&s, rest)))),
                    Ok(None) => {
                        stale = true;
                        break;
                    }
                    Err(e @ (StoreError::Integrity(_) | StoreError::Rollback(_))) => out.push((k, Err(e))),
                    Err(e) => return Err(e),
                }
            }
            self.integrity.check_alarm()?;
            if !stale {
                return Ok(out);
            }
        }
        // Rewritten at every read: let the caller retry later.
        Err(StoreError::Conflict)
    }

    /// The row of `T` with primary key `key`, verified.
    pub(crate) async fn get<T: Row>(&self, key: &[Value]) -> Result<Option<Stored<T>>, StoreError> {
        let asked = row::key_of(key);
        let read_at = self.integrity.read_at();
        let rows = self
            .fetch::<T>(&row::key_where::<T>(1), key, |s| s.row.key() == asked)
            .await?;
        match rows.into_iter().next() {
            Some(r) => r.map(Some),
            None => self.absent::<T>(key, read_at).await,
        }
    }

    /// The row of `A` with primary key `a` and the row of `B` with primary key `b`, read in one
    /// query (one round trip instead of two: both tables outer-joined to a single row, each
    /// table's columns under a prefix of its own) and each verified as [`Store::get`] verifies
    /// it: a row that does not verify, or that kmsd wrote but is gone, is the error. `sql` is
    /// [`pair_sql`]`::<A, B>()`, which the caller keeps (building it is a few µs per call).
    pub(crate) async fn get_pair<A: Row, B: Row>(
        &self,
        sql: &str,
        a: &[Value],
        b: &[Value],
    ) -> Result<(Option<Stored<A>>, Option<Stored<B>>), StoreError> {
        for _ in 0..3 {
            let read_at = self.integrity.read_at();
            let mut q = sqlx::query(sql);
            for v in a.iter().chain(b) {
                q = row::bind(q, v);
            }
            let r = q.fetch_one(&self.pool).await?;
            let (Some(ra), Some(rb)) = (
                self.pair_side::<A>(&r, "a_", read_at).await?,
                self.pair_side::<B>(&r, "b_", read_at).await?,
            ) else {
                // One of them was read before this process learned of a newer version.
                continue;
            };
            let ra = match ra {
                Some(s) => Some(self.asked_for(s, a)?),
                None => self.absent::<A>(a, read_at).await?,
            };
            let rb = match rb {
                Some(s) => Some(self.asked_for(s, b)?),
                None => self.absent::<B>(b, read_at).await?,
            };
            return Ok((ra, rb));
        }
        // Rewritten at every read: let the caller retry later.
        Err(StoreError::Conflict)
    }

    /// One table's row of a [`Store::get_pair`] read, verified: `None` if it must be read again,
    /// `Some(None)` if the outer join found no row.
    async fn pair_side<T: Row>(
        &self,
        r: &sqlx::any::AnyRow,
        prefix: &str,
        read_at: i64,
    ) -> Result<Option<Option<Stored<T>>>, StoreError> {
        if !row::present_as::<T>(r, prefix)? {
            return Ok(Some(None));
        }
        let verified = self.integrity.verify_as::<T>(self, r, prefix, read_at).await?;
        self.integrity.check_alarm()?;
        Ok(verified.map(Some))
    }

    /// `s` if it is the row with primary key `key`, else its `row_substituted` refusal.
    fn asked_for<T: Row>(&self, s: Stored<T>, key: &[Value]) -> Result<Stored<T>, StoreError> {
        let asked = row::key_of(key);
        if s.row.key() == asked {
            Ok(s)
        } else {
            Err(self.integrity.substituted(&s, &format!("key {asked}")))
        }
    }

    /// No row of `T` with primary key `key`: `Ok(None)`, or the rollback if kmsd wrote one.
    async fn absent<T: Row>(&self, key: &[Value], read_at: i64) -> Result<Option<Stored<T>>, StoreError> {
        match self.integrity.missing::<T>(self, &row::key_of(key), read_at).await? {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Rows of `T` selected by `rest` with `binds` (and by `selects`, see [`Store::fetch`]),
    /// verified; rows that fail are reported and left out.
    pub(crate) async fn all<T: Row>(
        &self,
        rest: &str,
        binds: &[Value],
        selects: impl Fn(&Stored<T>) -> bool,
    ) -> Result<Vec<Stored<T>>, StoreError> {
        Ok(self
            .fetch::<T>(rest, binds, selects)
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .collect())
    }

    /// Rows of `T` selected by `rest`, as stored and **not verified**: only for what must be
    /// read while sealed (the seal record, generations, shares, the admins who unseal), each of
    /// which is verified when the seal opens.
    pub(crate) async fn unverified<T: Row>(&self, rest: &str, binds: &[Value]) -> Result<Vec<T>, StoreError> {
        let sql = row::select::<T>(rest);
        let mut q = sqlx::query(&sql);
        for v in binds {
            q = row::bind(q, v);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let values = row::read_values(r, T::COLUMNS)?;
                T::from_values(&row::Values {
                    columns: T::COLUMNS,
                    values: &values,
                })
                .map_err(|e| {
                    StoreError::Integrity(Violation {
                        table: T::TABLE.name(),
                        key: row::key_of(&values[..T::KEY]),
                        kind: ViolationKind::Integrity,
                        detail: format!("it does not decode: {e}"),
                    })
                })
            })
            .collect()
    }

    // ----- seal and admins -------------------------------------------------------------------

    /// The seal record, verified.
    pub async fn seal_config(&self) -> Result<Option<SealConfigRow>, StoreError> {
        Ok(self.get::<SealConfigRow>(&[Value::int(1)]).await?.map(|s| s.row))
    }

    /// The seal record as stored, not verified: for a sealed server (it is verified when the seal
    /// opens; custodians compare its check value with the one they pinned).
    pub async fn seal_config_unverified(&self) -> Result<Option<SealConfigRow>, StoreError> {
        Ok(self
            .unverified::<SealConfigRow>("WHERE id = 1", &[])
            .await?
            .into_iter()
            .next())
    }

    /// Initializes an empty database in one transaction: the state row, the seal record, the
    /// first root generation, the admins, the custodians' shares and the audit entry, every row
    /// authenticated under `ring` (the first generation's integrity key). `Conflict` if already
    /// initialized (on any replica).
    pub async fn initialize(
        &self,
        seal: &SealConfigRow,
        generation: &RootGenerationRow,
        admins: &[AdminRow],
        shares: &[ShareRow],
        ring: KeyRing,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = Tx::begin_init(self, ring).await?;
        tx.insert(seal).await?;
        tx.insert(generation).await?;
        for a in admins {
            tx.insert(a).await?;
        }
        for s in shares {
            tx.insert(s).await?;
        }
        tx.audit(vec![record]).await?;
        tx.commit().await
    }

    /// A custodian's share envelope of a root key generation, as stored (read while sealed; a
    /// swapped envelope does not rebuild the root key whose check value custodians pin).
    pub async fn share_of_unverified(&self, admin_id: &str, generation: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .unverified::<ShareRow>(
                "WHERE admin_id = $1 AND generation = $2",
                &[Value::text(admin_id), Value::int(g(generation))],
            )
            .await?
            .into_iter()
            .next()
            .map(|s| s.envelope))
    }

    /// One admin (also a removed one: callers check `removed_unix_ms`), verified.
    pub async fn admin(&self, id: &AdminId) -> Result<Option<AdminRow>, StoreError> {
        Ok(self.get::<AdminRow>(&[Value::text(id.as_str())]).await?.map(|s| s.row))
    }

    /// One admin as stored, not verified: for the custodians' requests while sealed (a custodian
    /// whose key someone swapped cannot rebuild the root key; the rows are verified at unseal).
    pub async fn admin_unverified(&self, id: &str) -> Result<Option<AdminRow>, StoreError> {
        Ok(self
            .unverified::<AdminRow>("WHERE id = $1", &[Value::text(id)])
            .await?
            .into_iter()
            .next())
    }

    /// Every admin that verifies, by id: active ones, or all.
    pub async fn admins(&self, include_removed: bool) -> Result<Vec<AdminRow>, StoreError> {
        Ok(self
            .all::<AdminRow>("ORDER BY id", &[], row::every)
            .await?
            .into_iter()
            .map(|s| s.row)
            .filter(|a| include_removed || a.removed_unix_ms.is_none())
            .collect())
    }

    /// Adds an admin with its audit entry. `Conflict` if the id exists (also removed).
    pub async fn add_admin(
        &self,
        admin: &AdminRow,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write(close).await?;
        if tx.get::<AdminRow>(&[Value::text(admin.id.as_str())]).await?.is_some() {
            return Err(StoreError::Conflict);
        }
        tx.insert(admin).await?;
        tx.audit(vec![record]).await?;
        tx.commit().await
    }

    /// Removes an admin (the row stays, marked removed) with its audit entry. Refused if fewer
    /// active admins than the approval quorum, or fewer active custodians of the current root
    /// generation than its unseal threshold, would remain, and while a root rotation is in
    /// progress (its new custodians are fixed). The admin's approvals and rejections of pending
    /// proposals stop counting.
    pub async fn remove_admin(
        &self,
        id: &AdminId,
        by: &str,
        now: i64,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<AdminRow, StoreError> {
        let mut tx = self.begin_write(close).await?;
        let seal = seal_in(&mut tx).await?;
        rotation::refuse_if_rotating(&mut tx, seal.root_generation).await?;
        // Every admin and share, complete and each once: the guards below count them, and an
        // admin the database hid or copied would make them pass for a removal that leaves fewer
        // admins than M, or fewer custodians than the threshold.
        let admins = tx.every::<AdminRow>().await?;
        let Some(old) = admins
            .iter()
            .find(|a| &a.id == id && a.removed_unix_ms.is_none())
            .cloned()
        else {
            return Err(Refusal::AdminNotFound(id.clone()).into());
        };
        let remaining: Vec<&Stored<AdminRow>> = admins
            .iter()
            .filter(|a| a.removed_unix_ms.is_none() && &a.id != id)
            .collect();
        let active = i64::try_from(remaining.len()).unwrap_or(i64::MAX);
        if active < i64::from(seal.approval_quorum) {
            return Err(Refusal::QuorumUnreachable {
                admins: active,
                quorum: seal.approval_quorum,
                removing: Some(id.clone()),
            }
            .into());
        }
        if seal.kind == "shamir" {
            let shares = tx.every::<ShareRow>().await?;
            let custodians = shares
                .iter()
                .filter(|s| s.generation == seal.root_generation && remaining.iter().any(|a| a.id == s.admin_id))
                .count();
            let custodians = i64::try_from(custodians).unwrap_or(i64::MAX);
            if custodians < i64::from(seal.threshold) {
                return Err(Refusal::TooFewCustodians {
                    removing: id.clone(),
                    custodians,
                    threshold: seal.threshold,
                }
                .into());
            }
        }
        let mut removed = old.row.clone();
        removed.removed_unix_ms = Some(now);
        removed.removed_by = Some(by.to_owned());
        tx.update(&old, &removed).await?;
        tx.audit(vec![record]).await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Sets M of the approval quorum, refused if there are fewer active admins.
    pub async fn set_approval_quorum(
        &self,
        quorum: u32,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write(close).await?;
        let old = seal_stored(&mut tx).await?;
        let admins = active_admins(&mut tx).await?;
        if admins < i64::from(quorum) {
            return Err(Refusal::QuorumUnreachable {
                admins,
                quorum,
                removing: None,
            }
            .into());
        }
        let mut new = old.row.clone();
        new.approval_quorum = quorum;
        tx.update(&old, &new).await?;
        tx.audit(vec![record]).await?;
        tx.commit().await
    }

    /// Records an admin request nonce until `expires_unix_ms`. `false` if it was seen before (a
    /// replay).
    ///
    /// Every request's nonce goes into `admin_nonces`, whose primary key decides between
    /// replicas, sealed or not. That table is not authenticated: a row deleted there lets a
    /// captured request run again. So a request that `changes` something, taken by an
    /// unsealed replica, is also recorded in `admin_requests`, in the same transaction: a row
    /// tracked by the state log, so once it is taken every unsealed replica knows it from its
    /// view of the log, and the row deleted is `row_rollback` there. (Reads are not recorded
    /// there, so they add nothing to the state log: a replayed read tells the one who captured
    /// the request only what its answer said then.) A row in either table is a use, so what the
    /// database adds there can only refuse requests. This process also remembers the nonces it
    /// took until they expire.
    pub async fn use_nonce(&self, nonce: &[u8], expires_unix_ms: i64, changes: bool) -> Result<bool, StoreError> {
        if self.nonce_taken_here(nonce) {
            return Ok(false);
        }
        let hex = hex::encode(nonce);
        // Any row, verified or not: a sealed replica does not follow the log.
        let recorded = sqlx::query("SELECT 1 AS one FROM admin_requests WHERE nonce = $1")
            .bind(hex.as_str())
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if recorded {
            return Ok(false);
        }
        let tx = if changes {
            match Tx::begin(self).await {
                Ok(tx) => Some(tx),
                Err(StoreError::Sealed) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let fresh = match tx {
            Some(mut tx) => {
                let key = [Value::text(hex.clone())];
                if tx.get::<AdminRequestRow>(&key).await?.is_some()
                    || !tx.claim_admin_nonce(nonce, expires_unix_ms).await?
                {
                    false
                } else {
                    let row = AdminRequestRow {
                        nonce: hex,
                        expires_unix_ms,
                    };
                    match tx.insert(&row).await {
                        Ok(()) => {
                            tx.commit().await?;
                            true
                        }
                        Err(StoreError::Conflict) => false,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => claim_admin_nonce(&self.pool, nonce, expires_unix_ms).await?,
        };
        if !fresh {
            return Ok(false);
        }
        let mut taken = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if taken.len() >= 4096 {
            let now = kms_core::now_unix_ms();
            taken.retain(|_, expires| *expires >= now);
        }
        // Taken concurrently by another call of this process: one of them is a replay.
        Ok(taken.insert(nonce.to_vec(), expires_unix_ms).is_none())
    }

    fn nonce_taken_here(&self, nonce: &[u8]) -> bool {
        let taken = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        taken
            .get(nonce)
            .is_some_and(|expires| *expires >= kms_core::now_unix_ms())
    }

    /// Forgets nonces whose requests can no longer be fresh: in `admin_nonces`, and in
    /// `admin_requests` as deletions the state log records (so that their absence is no
    /// rollback). Rows of `admin_requests` that do not verify are reported and left.
    pub async fn purge_nonces(&self, now_unix_ms: i64) -> Result<u64, StoreError> {
        let untracked = sqlx::query("DELETE FROM admin_nonces WHERE expires_unix_ms < $1")
            .bind(now_unix_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let mut tx = Tx::begin(self).await?;
        let stale = tx
            .all::<AdminRequestRow>("WHERE expires_unix_ms < $1", &[Value::int(now_unix_ms)], |r| {
                r.expires_unix_ms < now_unix_ms
            })
            .await?;
        for r in &stale {
            tx.delete(r).await?;
        }
        tx.commit().await?;
        Ok(untracked + u64::try_from(stale.len()).unwrap_or(u64::MAX))
    }

    // ----- keys ------------------------------------------------------------------------------

    /// Creates a key with version 1 and its first release policy. `Conflict` if the name (or id)
    /// exists.
    pub async fn create_key(
        &self,
        key: &KeyRow,
        wrapped_v1: &[u8],
        root_generation: u64,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = Tx::begin(self).await?;
        require_generation(&mut tx, root_generation).await?;
        tx.insert(key).await?;
        tx.insert(&KeyVersionRow {
            key_id: key.id,
            version: KeyVersion::FIRST,
            wrapped_kek: Some(wrapped_v1.to_vec()),
            created_unix_ms: key.created_unix_ms,
            destroyed_unix_ms: None,
            root_generation,
        })
        .await?;
        tx.insert(&ReleasePolicyRow {
            key_id: key.id,
            version: 1,
            document: key.release_policy.to_json(),
            set_unix_ms: key.created_unix_ms,
            set_by: record.caller.clone(),
        })
        .await?;
        tx.audit(vec![record]).await?;
        tx.commit().await
    }

    /// A key by id.
    pub async fn key_by_id(&self, id: KeyId) -> Result<Option<KeyRow>, StoreError> {
        Ok(self.get::<KeyRow>(&[Value::text(id.to_string())]).await?.map(|s| s.row))
    }

    /// A key by name (the row that verifies; if only rows that do not verify have the name,
    /// their refusal). Names are unique, but only the database's UNIQUE constraint says so: if
    /// two rows kmsd wrote have the name (the constraint dropped, and a second key created
    /// under it), neither is used, so which key a name means is never the database's choice.
    pub async fn key_by_name(&self, name: &str) -> Result<Option<KeyRow>, StoreError> {
        let mut genuine = Vec::new();
        let mut refused = None;
        for r in self
            .fetch::<KeyRow>("WHERE name = $1", &[Value::text(name)], |k| k.name.as_str() == name)
            .await?
        {
            match r {
                Ok(s) => genuine.push(s.row),
                Err(e) => refused = refused.or(Some(e)),
            }
        }
        match genuine.len() {
            0 => refused.map_or(Ok(None), Err),
            1 => Ok(genuine.pop()),
            n => Err(self.integrity.ambiguous(
                &genuine[1],
                format!(
                    "{n} rows kmsd wrote are named {name:?}, which only one may be (the database's UNIQUE constraint on the name was dropped): the name is not used"
                ),
            )),
        }
    }

    /// One page of a listing of a table keyed by `id`: of the first `size` rows with id greater
    /// than `after` (by id) that `filter` (`AND …`, binds from `$3`; restated in Rust as
    /// `selects`, see [`Store::fetch`]) selects, those that verify.
    /// The next page starts after the last of them as stored, verified or not: a row someone
    /// else wrote is left out of the page (and reported), and the listing goes on past it.
    pub(crate) async fn page<T: Row>(
        &self,
        filter: &str,
        binds: &[Value],
        selects: impl Fn(&Stored<T>) -> bool,
        after: &str,
        size: u32,
    ) -> Result<Listing<T>, StoreError> {
        let mut all = vec![Value::text(after), Value::int(size.saturating_add(1))];
        all.extend_from_slice(binds);
        // `id > $1` is not restated: text order is the database's collation. A row out of
        // order only moves the listing's cursor; every row listed is genuine and selected.
        let rest = format!("WHERE id > $1 {filter} ORDER BY id LIMIT $2");
        let mut raw = self
            .fetch_with::<T, String>(&rest, &all, selects, |r| sqlx::Row::try_get::<String, _>(r, "id"))
            .await?;
        let more = raw.len() > size as usize;
        raw.truncate(size as usize);
        let next = match raw.last() {
            Some((id, _)) if more => id.clone(),
            _ => String::new(),
        };
        Ok(Listing {
            rows: raw.into_iter().filter_map(|(_, r)| r.ok()).map(|s| s.row).collect(),
            next,
        })
    }

    /// A page of keys (see [`Store::page`]).
    pub async fn list_keys(&self, after: &str, size: u32) -> Result<Listing<KeyRow>, StoreError> {
        self.page("", &[], row::every, after, size).await
    }

    /// Adds the next version to an enabled key, in one transaction with its audit entry.
    /// `wrap` wraps the new KEK for the version it is given; `make_record` writes the audit
    /// entry for it. `None` if the key is not enabled (or not there).
    pub async fn rotate_key(
        &self,
        id: KeyId,
        now: i64,
        root_generation: u64,
        wrap: impl FnOnce(KeyVersion) -> Result<Vec<u8>, kms_core::Error>,
        make_record: impl FnOnce(KeyVersion) -> Record,
    ) -> Result<Option<KeyRow>, StoreError> {
        let mut tx = Tx::begin(self).await?;
        require_generation(&mut tx, root_generation).await?;
        let Some(old) = tx.get::<KeyRow>(&[Value::text(id.to_string())]).await? else {
            return Ok(None);
        };
        if old.state != KeyState::Enabled {
            return Ok(None);
        }
        let version = old
            .latest_version
            .get()
            .checked_add(1)
            .and_then(KeyVersion::new)
            .ok_or(Refusal::VersionOverflow)?;
        let mut key = old.row.clone();
        key.latest_version = version;
        key.updated_unix_ms = now;
        tx.update(&old, &key).await?;
        tx.insert(&KeyVersionRow {
            key_id: id,
            version,
            wrapped_kek: Some(wrap(version)?),
            created_unix_ms: now,
            destroyed_unix_ms: None,
            root_generation,
        })
        .await?;
        tx.audit(vec![make_record(version)]).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// Applies a lifecycle transition if the key is in a state it starts from (and, with
    /// `due_by`, its deletion time is at or before it). `None` if it was not (the caller reads the
    /// key to say why). Destroying erases every version's wrapped KEK in the same transaction.
    #[allow(clippy::too_many_arguments)] // each is a column or a guard of the one change
    pub async fn change_state(
        &self,
        id: KeyId,
        transition: Transition,
        deletion_unix_ms: Option<i64>,
        due_by: Option<i64>,
        now: i64,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<Option<KeyRow>, StoreError> {
        let mut tx = self.begin_write(close).await?;
        let id = id.to_string();
        let Some(old) = tx.get::<KeyRow>(&[Value::text(id.as_str())]).await? else {
            return Ok(None);
        };
        if !transition.from().contains(&old.state) || old.deletion_unix_ms.unwrap_or(0) > due_by.unwrap_or(i64::MAX) {
            return Ok(None);
        }
        let to = transition.to();
        let mut key = old.row.clone();
        key.state = to;
        key.deletion_unix_ms = deletion_unix_ms;
        key.updated_unix_ms = now;
        tx.update(&old, &key).await?;
        if to == KeyState::Destroyed {
            // Erase the material: after this no blob under this key can ever be decrypted.
            // Every version is read by its primary key, 1 to the latest: a read of "the versions
            // of this key" could be answered without one of them, which would keep its KEK. A
            // version kmsd wrote that the database does not return refuses the destruction
            // (`row_rollback`): the key stays pending deletion, audited, until it is back.
            for n in 1..=old.latest_version.get() {
                let Some(v) = tx
                    .get::<KeyVersionRow>(&[Value::text(id.as_str()), Value::int(i64::from(n))])
                    .await?
                else {
                    continue;
                };
                let mut erased = v.row.clone();
                erased.wrapped_kek = None;
                erased.destroyed_unix_ms = Some(now);
                tx.update(&v, &erased).await?;
            }
        }
        tx.audit(vec![record]).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// The wrapped KEK of one version: `None` if no such version, `Some(None)` if destroyed.
    pub async fn wrapped_kek(&self, id: KeyId, version: KeyVersion) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        Ok(self
            .get::<KeyVersionRow>(&[Value::text(id.to_string()), Value::int(version.get())])
            .await?
            .map(|s| s.row.wrapped_kek))
    }

    /// Versions of destroyed keys that still hold a wrapped KEK (the scan's check that a
    /// destruction erased everything), as violations.
    pub(crate) async fn destroyed_keys_with_material(&self) -> Result<Vec<Violation>, StoreError> {
        let destroyed: std::collections::BTreeSet<String> = self
            .all::<KeyRow>("WHERE state = 'destroyed'", &[], |k| k.state == KeyState::Destroyed)
            .await?
            .into_iter()
            .map(|s| s.row.id.to_string())
            .collect();
        if destroyed.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .all::<KeyVersionRow>("WHERE wrapped_kek IS NOT NULL", &[], |v| v.wrapped_kek.is_some())
            .await?
            .into_iter()
            .filter(|v| destroyed.contains(&v.key_id.to_string()))
            .map(|v| Violation {
                table: Table::KeyVersions.name(),
                key: v.row.key(),
                kind: ViolationKind::Integrity,
                detail: format!(
                    "key {} is destroyed, yet version {} still holds its wrapped KEK",
                    v.key_id, v.version
                ),
            })
            .collect())
    }

    /// Keys whose deletion window has ended.
    pub async fn due_for_destruction(&self, now: i64) -> Result<Vec<KeyId>, StoreError> {
        Ok(self
            .all::<KeyRow>(
                "WHERE state = 'pending_deletion' AND deletion_unix_ms <= $1",
                &[Value::int(now)],
                |k| k.state == KeyState::PendingDeletion && k.deletion_unix_ms.is_some_and(|t| t <= now),
            )
            .await?
            .into_iter()
            .map(|s| s.row.id)
            .collect())
    }

    // ----- audit -----------------------------------------------------------------------------

    /// Appends records to the chain in one transaction.
    pub async fn append_audit(&self, records: Vec<Record>) -> Result<(i64, [u8; 32]), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let head = append_in_tx(&mut tx, records).await?;
        tx.commit().await?;
        self.integrity.wrote_audit(head);
        Ok(head)
    }
}

/// The seal record, read and verified inside a write transaction.
/// Records an admin request's nonce in `admin_nonces` (not authenticated: its primary key is
/// what decides between replicas). `false` if it is there already.
pub(crate) async fn claim_admin_nonce<'c>(
    e: impl sqlx::Executor<'c, Database = Any>,
    nonce: &[u8],
    expires_unix_ms: i64,
) -> Result<bool, StoreError> {
    match sqlx::query("INSERT INTO admin_nonces (nonce, expires_unix_ms) VALUES ($1, $2)")
        .bind(nonce)
        .bind(expires_unix_ms)
        .execute(e)
        .await
    {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn seal_stored(tx: &mut Tx) -> Result<Stored<SealConfigRow>, StoreError> {
    tx.get::<SealConfigRow>(&[Value::int(1)])
        .await?
        .ok_or(StoreError::Refused(Refusal::NotInitialized))
}

pub(crate) async fn seal_in(tx: &mut Tx) -> Result<SealConfigRow, StoreError> {
    Ok(seal_stored(tx).await?.row)
}

/// Active admins, counted inside a write transaction over the whole table, complete and
/// verified ([`Tx::every`]): the count guards M, which a hidden or copied admin would move.
pub(crate) async fn active_admins(tx: &mut Tx) -> Result<i64, StoreError> {
    let n = tx
        .every::<AdminRow>()
        .await?
        .iter()
        .filter(|a| a.removed_unix_ms.is_none())
        .count();
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Refuses a secret wrapped under a root generation older than the current one (a replica that
/// missed a rotation): it would be stored under a generation nothing can open any more. Write
/// transactions serialize on the state row, so the transaction completing a rotation is either
/// before this one (and seen here) or after it.
pub(crate) async fn require_generation(tx: &mut Tx, generation: u64) -> Result<(), StoreError> {
    if seal_in(tx).await?.root_generation > generation {
        return Err(Refusal::GenerationChanged.into());
    }
    Ok(())
}

/// Appends `records` after the chain head inside `tx`; returns the new head. The first
/// statement updates the head row, which serializes writers on every replica; the sequence
/// numbers' primary key would refuse a duplicate in any case.
pub(crate) async fn append_in_tx(
    tx: &mut Transaction<'static, Any>,
    records: Vec<Record>,
) -> Result<(i64, [u8; 32]), sqlx::Error> {
    let n = i64::try_from(records.len()).unwrap_or(i64::MAX);
    let head = sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
        .bind(n)
        .fetch_one(&mut **tx)
        .await?;
    let new_last: i64 = head.try_get("seq")?;
    let prev: Vec<u8> = head.try_get("hash")?;
    let prev_hash: [u8; 32] = prev
        .as_slice()
        .try_into()
        .map_err(|_| sqlx::Error::Protocol("audit_head.hash is not 32 bytes".into()))?;
    if records.is_empty() {
        return Ok((new_last, prev_hash));
    }
    let entries = audit::chain(new_last - n, prev_hash, records);
    for chunk in entries.chunks(200) {
        let sql = format!(
            "INSERT INTO audit_log (seq, time_unix_ms, caller, operation, key_id, outcome, reason, detail, prev_hash, hash) VALUES {}",
            row::values_params(chunk.len(), 10)
        );
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
    let last_hash = entries.last().map(|e| e.hash).unwrap_or(prev_hash);
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(last_hash.to_vec())
        .execute(&mut **tx)
        .await?;
    Ok((new_last, last_hash))
}

/// A fresh SQLite store, initialized (one admin, generation 1, dev seal) with a random integrity
/// key that the store holds, for unit tests of what sits on storage.
#[cfg(test)]
pub(crate) async fn test_store() -> (Store, tempfile::TempDir) {
    #![allow(clippy::unwrap_used)]
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
    (test_store_at(&url).await, dir)
}

/// The same store on SQLite and, when `KMS_TEST_POSTGRES_URL` names a server, on a fresh
/// PostgreSQL database of its own too.
#[cfg(test)]
pub(crate) async fn test_stores() -> (Vec<Store>, tempfile::TempDir) {
    let (sqlite, dir) = test_store().await;
    let mut stores = vec![sqlite];
    if let Some(url) = fresh_postgres_database().await {
        stores.push(test_store_at(&url).await);
    }
    (stores, dir)
}

/// A new, empty database on the PostgreSQL server `KMS_TEST_POSTGRES_URL` names (its URL), or
/// `None` without one.
#[cfg(test)]
pub(crate) async fn fresh_postgres_database() -> Option<String> {
    #![allow(clippy::unwrap_used)]
    use sqlx::Connection as _;
    let base = std::env::var("KMS_TEST_POSTGRES_URL").ok()?;
    sqlx::any::install_default_drivers();
    let name = format!("kms_unit_{}", hex::encode(kms_core::random_array::<6>().unwrap()));
    let mut c = sqlx::AnyConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    Some(format!("{server}/{name}"))
}

/// Two stores on one fresh PostgreSQL database, as two kmsd processes (replicas) see it, when
/// `KMS_TEST_POSTGRES_URL` names a server (replicas share PostgreSQL; SQLite is one process's).
#[cfg(test)]
pub(crate) async fn test_replicas() -> Option<[Store; 2]> {
    let url = fresh_postgres_database().await?;
    let (a, key) = test_store_keyed(&url).await;
    Some([a, test_process(&url, &key).await])
}

/// An allowed audit record of `operation` by "test", for tests that write through the store.
#[cfg(test)]
pub(crate) fn test_record(time_unix_ms: i64, operation: &str) -> Record {
    Record {
        time_unix_ms,
        caller: "test".into(),
        operation: operation.into(),
        key_id: None,
        outcome: "allowed".into(),
        reason: String::new(),
        detail: "{}".into(),
    }
}

#[cfg(test)]
pub(crate) async fn test_store_at(url: &str) -> Store {
    test_store_keyed(url).await.0
}

/// Another process's store on the database at `url`, which `key` protects.
#[cfg(test)]
pub(crate) async fn test_process(url: &str, key: &Arc<kms_core::integrity::IntegrityKey>) -> Store {
    #![allow(clippy::unwrap_used)]
    let store = Store::connect(url, 4).await.unwrap();
    store
        .integrity()
        .set_keys(Some(KeyRing::new(vec![(1, key.clone())]).unwrap()));
    store.integrity().open(&store).await.unwrap();
    store
}

#[cfg(test)]
pub(crate) async fn test_store_keyed(url: &str) -> (Store, Arc<kms_core::integrity::IntegrityKey>) {
    #![allow(clippy::unwrap_used)]
    let store = Store::connect(url, 4).await.unwrap();
    let key = Arc::new(kms_core::integrity::IntegrityKey::new(
        &kms_core::secret::SecretKey::generate().unwrap(),
    ));
    let ring = || KeyRing::new(vec![(1, key.clone())]).unwrap();
    let seal = SealConfigRow {
        kind: "dev".into(),
        threshold: 0,
        kcv: vec![0; 16],
        created_unix_ms: 0,
        approval_quorum: 1,
        root_generation: 1,
        deployment_id: "dep-test".into(),
    };
    let generation = RootGenerationRow {
        generation: 1,
        kind: "dev".into(),
        status: "active".into(),
        threshold: 0,
        kcv: vec![0; 16],
        hsm_label: None,
        next_root_wrapped: None,
        created_unix_ms: 0,
        created_by: "test".into(),
        completed_unix_ms: None,
        integrity_key: Some(vec![0; 60]),
    };
    let admin = AdminRow {
        id: AdminId::parse("alice").expect("a valid admin id"),
        country: kms_core::jurisdiction::Country::parse("DE").expect("a valid country"),
        signing_public_key: vec![4; 65],
        encryption_public_key: vec![4; 65],
        custodian: false,
        created_unix_ms: 0,
        removed_unix_ms: None,
        removed_by: None,
    };
    let record = test_record(0, "admin.init");
    store
        .initialize(&seal, &generation, &[admin], &[], ring(), record)
        .await
        .unwrap();
    // The audit chain starts empty for the tests (Init wrote one entry), and the store handed out
    // is another process's, which did not write it.
    sqlx::query("DELETE FROM audit_log")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_head SET seq = 0, hash = $1")
        .bind(vec![0u8; 32])
        .execute(store.pool())
        .await
        .unwrap();
    let store = test_process(url, &key).await;
    (store, key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::row::{Column, Row};
    use super::*;

    fn alice() -> AdminId {
        AdminId::parse("alice").unwrap()
    }

    fn names(cols: &[Column]) -> Vec<&'static str> {
        cols.iter().map(|c| c.name).collect()
    }

    async fn schema(store: &Store, table: &str) -> Vec<String> {
        let sql = match store.backend() {
            Backend::Sqlite => format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            Backend::Postgres => format!(
                "SELECT column_name::text AS name FROM information_schema.columns \
                 WHERE table_name = '{table}' AND table_schema = current_schema() ORDER BY ordinal_position"
            ),
        };
        sqlx::query(&sql)
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("name"))
            .filter(|n| !matches!(n.as_str(), "row_version" | "row_generation" | "row_mac"))
            .collect()
    }

    /// Every column of every authenticated table is a column of its row type (so an
    /// authenticator covers the whole row), on both schemas.
    #[tokio::test]
    async fn row_types_cover_every_column() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = vec![
            Store::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display()), 2)
                .await
                .unwrap(),
        ];
        if let Some(url) = fresh_postgres_database().await {
            stores.push(Store::connect(&url, 2).await.unwrap());
        }
        macro_rules! check {
            ($store:expr, $($t:ty),*) => {$(
                let mut want: Vec<String> = names(<$t as Row>::COLUMNS).into_iter().map(String::from).collect();
                let mut have = schema($store, <$t as Row>::TABLE.name()).await;
                want.sort();
                have.sort();
                assert_eq!(have, want, "{}", <$t as Row>::TABLE.name());
            )*};
        }
        for store in &stores {
            check!(
                store,
                SealConfigRow,
                RootGenerationRow,
                ShareRow,
                AdminRow,
                KeyRow,
                KeyVersionRow,
                ReleasePolicyRow,
                HardwareRow,
                TpmEnrollmentRow,
                ProposalRow,
                ApprovalRow,
                RejectionRow,
                TokenKeyRow,
                CheckpointKeyRow,
                AdminRequestRow,
                ReplicaRow,
                TpmClockRow
            );
        }
        assert_eq!(Table::ALL.len(), 17);
    }

    /// A row written through a transaction verifies when read; changed in the database, it does
    /// not; an older version of it put back is a rollback.
    #[tokio::test]
    async fn rows_verify_only_as_written() {
        let (store, _dir) = test_store().await;
        let admin = store.admin(&alice()).await.unwrap().unwrap();
        let mut tx = Tx::begin(&store).await.unwrap();
        let old = tx.get::<AdminRow>(&[Value::text("alice")]).await.unwrap().unwrap();
        let mut removed = old.row.clone();
        removed.removed_unix_ms = Some(5);
        removed.removed_by = Some("bob".into());
        tx.update(&old, &removed).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.admin(&alice()).await.unwrap().unwrap(), removed);
        // The older version put back.
        sqlx::query("UPDATE admins SET removed_unix_ms = NULL, removed_by = NULL, row_version = $1, row_mac = $2 WHERE id = 'alice'")
            .bind(old.version)
            .bind(old.mac.clone())
            .execute(store.pool())
            .await
            .unwrap();
        assert!(matches!(store.admin(&alice()).await, Err(StoreError::Rollback(_))));
        // A column changed.
        sqlx::query("UPDATE admins SET removed_unix_ms = 6 WHERE id = 'alice'")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(matches!(store.admin(&alice()).await, Err(StoreError::Integrity(_))));
        assert_eq!(admin.id.as_str(), "alice");
        // The state log replays to the same view from scratch (another process).
        let again = Store::connect(
            &format!("sqlite://{}?mode=rwc", _dir.path().join("kms.db").display()),
            2,
        )
        .await
        .unwrap();
        assert!(matches!(again.admin(&alice()).await, Err(StoreError::Sealed)));
    }

    /// A key row named `name` with id bytes `id`, for tests that need many.
    fn numbered_key(id: [u8; 16], name: &str) -> KeyRow {
        use kms_core::policy::{AccessPolicy, ReleasePolicy};
        KeyRow {
            id: KeyId::from_bytes(id),
            name: kms_core::ids::KeyName::parse(name).unwrap(),
            description: String::new(),
            tags: Default::default(),
            state: KeyState::Enabled,
            latest_version: KeyVersion::FIRST,
            grants: AccessPolicy::new(Vec::new()).unwrap(),
            release_policy: ReleasePolicy::parse(r#"{"version":1,"attestation":"required"}"#).unwrap(),
            release_policy_version: 1,
            created_unix_ms: 1,
            updated_unix_ms: 1,
            deletion_unix_ms: None,
        }
    }

    /// A challenge nonce carries its principal and expiry under the integrity key: it is known
    /// as issued only to that principal, with that expiry, and not once any byte changes.
    #[tokio::test]
    async fn a_challenge_nonce_says_whom_it_was_issued_to_and_until_when() {
        let (store, _dir) = test_store().await;
        let i = store.integrity();
        let nonce = i.challenge_nonce("spiffe://eu.example/app", 1_000).unwrap();
        assert_eq!(
            i.challenge_expiry("spiffe://eu.example/app", &nonce).unwrap(),
            Some(1_000)
        );
        assert_eq!(i.challenge_expiry("spiffe://eu.example/other", &nonce).unwrap(), None);
        assert_ne!(nonce, i.challenge_nonce("spiffe://eu.example/app", 1_000).unwrap());
        for at in [0, 7, 8, 15, 16, 31] {
            let mut changed = nonce;
            changed[at] ^= 1;
            assert_eq!(
                i.challenge_expiry("spiffe://eu.example/app", &changed).unwrap(),
                None,
                "byte {at}"
            );
        }
        assert_eq!(
            i.challenge_expiry("spiffe://eu.example/app", &nonce[..31]).unwrap(),
            None
        );
        // Sealed (no integrity key held), no challenge is issued or recognized.
        i.set_keys(None);
        assert!(matches!(
            i.challenge_nonce("spiffe://eu.example/app", 1),
            Err(StoreError::Sealed)
        ));
        assert!(matches!(
            i.challenge_expiry("spiffe://eu.example/app", &nonce),
            Err(StoreError::Sealed)
        ));
    }

    /// A transaction that did not commit leaves nothing behind, yet its rows were authenticated
    /// at the version the next transaction takes: the operator who saw them written (a trigger,
    /// `log_statement`) and made the commit fail could put one back in place of the row
    /// committed at that version. Here the aborted write disables a key, the committed one
    /// changes its description: the aborted row, with a valid authenticator at the committed
    /// version, is refused, because the state log records which content that version is.
    #[tokio::test]
    async fn a_row_of_a_transaction_that_did_not_commit_is_not_taken_for_the_committed_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut urls = vec![format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display())];
        urls.extend(fresh_postgres_database().await);
        for url in urls {
            let (store, ik) = test_store_keyed(&url).await;
            let record = test_record(1, "admin.create_key");
            let key = numbered_key([9; 16], "payroll");
            store.create_key(&key, &[1; 60], 1, record).await.unwrap();
            let id = [Value::text(key.id.to_string())];

            // The write that does not commit: the key disabled (rolled back when dropped).
            let mut tx = Tx::begin(&store).await.unwrap();
            let old = tx.get::<KeyRow>(&id).await.unwrap().unwrap();
            let mut disabled = old.row.clone();
            disabled.state = KeyState::Disabled;
            tx.update(&old, &disabled).await.unwrap();
            drop(tx);

            // The one that commits, at the same version.
            let mut tx = Tx::begin(&store).await.unwrap();
            let old = tx.get::<KeyRow>(&id).await.unwrap().unwrap();
            let mut described = old.row.clone();
            described.description = "payroll, from 2027".into();
            tx.update(&old, &described).await.unwrap();
            tx.commit().await.unwrap();
            let committed = store.key_by_id(key.id).await.unwrap().unwrap();
            assert_eq!(committed.description, "payroll, from 2027");
            let version: i64 = sqlx::query("SELECT row_version FROM keys WHERE id = $1")
                .bind(key.id.to_string())
                .fetch_one(&store.pool)
                .await
                .unwrap()
                .get("row_version");

            // The aborted row as that transaction wrote it, put in the committed one's place.
            let values = disabled.to_values();
            let mac = ik
                .tag(&row::encoding(KeyRow::TABLE.name(), KeyRow::COLUMNS, &values, version))
                .to_vec();
            let sql = row::update_sql::<KeyRow>();
            let mut q = sqlx::query(&sql);
            for v in &values[KeyRow::KEY..] {
                q = row::bind(q, v);
            }
            q = q.bind(version).bind(1i64).bind(mac);
            for v in &values[..KeyRow::KEY] {
                q = row::bind(q, v);
            }
            assert_eq!(q.bind(version).execute(&store.pool).await.unwrap().rows_affected(), 1);
            match store.key_by_id(key.id).await {
                Err(StoreError::Integrity(v)) => {
                    assert!(v.detail.contains("not the content kmsd committed"), "{v:?}");
                }
                other => panic!("the aborted write was taken for the committed one: {other:?}"),
            }
            // A writer reading it inside its transaction refuses it too.
            let mut tx = Tx::begin(&store).await.unwrap();
            assert!(matches!(tx.get::<KeyRow>(&id).await, Err(StoreError::Integrity(_))));
        }
    }

    /// Key names are unique only by the database's UNIQUE constraint. With it dropped (the
    /// table rebuilt without it on SQLite), two genuine keys of one name leave the name unused
    /// and reported, rather than resolved to whichever row the database returns first.
    #[tokio::test]
    async fn a_name_two_genuine_keys_have_is_not_used() {
        let (stores, _dir) = test_stores().await;
        for store in stores {
            drop_constraint(
                &store,
                "keys",
                "ALTER TABLE keys DROP CONSTRAINT keys_name_key",
                "name TEXT NOT NULL UNIQUE",
                "name TEXT NOT NULL",
            )
            .await;
            let record = || test_record(1, "admin.create_key");
            store
                .create_key(&numbered_key([1; 16], "payroll"), &[1; 60], 1, record())
                .await
                .unwrap();
            assert_eq!(
                store.key_by_name("payroll").await.unwrap().unwrap().id,
                KeyId::from_bytes([1; 16])
            );
            store
                .create_key(&numbered_key([2; 16], "payroll"), &[1; 60], 1, record())
                .await
                .unwrap();
            match store.key_by_name("payroll").await {
                Err(StoreError::Integrity(v)) => {
                    assert!(v.detail.contains("2 rows kmsd wrote are named \"payroll\""), "{v:?}");
                    assert_eq!(v.table, "keys");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// Admin bob (France, not a custodian), added.
    async fn add_bob(store: &Store) -> AdminRow {
        let bob = AdminRow {
            id: AdminId::parse("bob").unwrap(),
            country: kms_core::jurisdiction::Country::parse("FR").unwrap(),
            signing_public_key: vec![4; 65],
            encryption_public_key: vec![4; 65],
            custodian: false,
            created_unix_ms: 1,
            removed_unix_ms: None,
            removed_by: None,
        };
        store
            .add_admin(&bob, None, test_record(1, "admin.add_admin"))
            .await
            .unwrap();
        bob
    }

    /// A pending generation 2 (dev seal), as a rotation's start writes it.
    async fn start_pending_generation(store: &Store) {
        let mut tx = Tx::begin(store).await.unwrap();
        tx.insert(&RootGenerationRow {
            generation: 2,
            kind: "dev".into(),
            status: "pending".into(),
            threshold: 0,
            kcv: vec![1; 16],
            hsm_label: None,
            next_root_wrapped: None,
            created_unix_ms: 1,
            created_by: "test".into(),
            completed_unix_ms: None,
            integrity_key: Some(vec![0; 60]),
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    /// Drops a constraint of `table` as its operator can: on PostgreSQL with `postgres`; on
    /// SQLite, which cannot drop one, by rebuilding the table (rows kept) with the column
    /// definition `column` written as `without`. The connection, for more of the same (on
    /// SQLite, foreign keys are off on it: the rebuilt table no longer matches them).
    async fn drop_constraint(
        store: &Store,
        table: &str,
        postgres: &str,
        column: &str,
        without: &str,
    ) -> sqlx::pool::PoolConnection<Any> {
        let statements = match store.backend {
            Backend::Postgres => vec![postgres.to_owned()],
            Backend::Sqlite => {
                let create: String = sqlx::query("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = $1")
                    .bind(table)
                    .fetch_one(&store.pool)
                    .await
                    .unwrap()
                    .get("sql");
                let rebuilt = create.replacen(
                    &format!("CREATE TABLE {table}"),
                    &format!("CREATE TABLE {table}_rebuilt"),
                    1,
                );
                assert!(rebuilt.contains(column), "{rebuilt}");
                vec![
                    "PRAGMA foreign_keys = OFF".to_owned(),
                    rebuilt.replacen(column, without, 1),
                    format!("INSERT INTO {table}_rebuilt SELECT * FROM {table}"),
                    format!("DROP TABLE {table}"),
                    format!("ALTER TABLE {table}_rebuilt RENAME TO {table}"),
                ]
            }
        };
        let mut conn = store.pool.acquire().await.unwrap();
        for sql in statements {
            sqlx::query(&sql).execute(&mut *conn).await.unwrap();
        }
        conn
    }

    /// The guards that count admins read the whole table, complete and each row once: with
    /// `admins`' primary key dropped and a genuine row copied (on SQLite and PostgreSQL), the
    /// copy is not a second admin, so neither a removal that would leave fewer active admins
    /// than M nor an M above the admins there are passes on its strength.
    #[tokio::test]
    async fn a_copied_admin_row_is_not_a_second_admin() {
        let (stores, _dir) = test_stores().await;
        for store in stores {
            let backend = store.backend;
            let bob = add_bob(&store).await;
            store
                .set_approval_quorum(2, None, test_record(1, "admin.set_quorum"))
                .await
                .unwrap();
            let mut conn = drop_constraint(
                &store,
                "admins",
                "ALTER TABLE admins DROP CONSTRAINT admins_pkey CASCADE",
                "id TEXT PRIMARY KEY",
                "id TEXT NOT NULL",
            )
            .await;
            sqlx::query("INSERT INTO admins SELECT * FROM admins WHERE id = 'bob'")
                .execute(&mut *conn)
                .await
                .unwrap();
            drop(conn);
            let copied = |e: StoreError| match e {
                StoreError::Integrity(v) => {
                    assert_eq!(v.table, "admins", "{backend:?}");
                    assert!(v.detail.contains("more than once"), "{backend:?}: {v:?}");
                }
                other => panic!("{backend:?}: {other:?}"),
            };
            // Alice removed would leave bob alone, under M = 2: bob twice would be two.
            copied(
                store
                    .remove_admin(&alice(), "bob", 2, None, test_record(1, "admin.remove_admin"))
                    .await
                    .unwrap_err(),
            );
            copied(
                store
                    .set_approval_quorum(3, None, test_record(1, "admin.set_quorum"))
                    .await
                    .unwrap_err(),
            );
            // Reads that are not guards take the copy for the one row it is.
            assert_eq!(
                store
                    .admins(false)
                    .await
                    .unwrap()
                    .iter()
                    .filter(|a| a.id.as_str() == "bob")
                    .count(),
                1,
                "{backend:?}"
            );
            assert_eq!(store.admin(&bob.id).await.unwrap(), Some(bob.clone()), "{backend:?}");
        }
    }

    /// Whether a rotation is under way is read by the pending generation's primary key: a view
    /// in `root_generations`' place that hides pending generations (on SQLite and PostgreSQL)
    /// makes an admin's removal, refused during a rotation (its custodians are fixed), fail as
    /// `row_rollback` instead of running as if no rotation were pending.
    #[tokio::test]
    async fn a_hidden_pending_generation_still_holds_removals_back() {
        let (stores, _dir) = test_stores().await;
        for store in stores {
            let backend = store.backend;
            let bob = add_bob(&store).await;
            start_pending_generation(&store).await;
            let remove = || store.remove_admin(&bob.id, "alice", 2, None, test_record(1, "admin.remove_admin"));
            assert!(
                matches!(remove().await, Err(StoreError::Refused(Refusal::RotationInProgress))),
                "{backend:?}"
            );
            let mut conn = store.pool.acquire().await.unwrap();
            for sql in [
                "ALTER TABLE root_generations RENAME TO root_generations_stored",
                "CREATE VIEW root_generations AS SELECT * FROM root_generations_stored WHERE status <> 'pending'",
            ] {
                sqlx::query(sql).execute(&mut *conn).await.unwrap();
            }
            drop(conn);
            match remove().await {
                Err(StoreError::Rollback(v)) => assert_eq!(v.table, "root_generations", "{backend:?}"),
                other => panic!("{backend:?}: {other:?}"),
            }
            assert!(store.admin(&bob.id).await.unwrap().unwrap().removed_unix_ms.is_none());
        }
    }

    /// The scan reports what no single row shows: a genuine row stored twice (its primary key
    /// dropped and the row copied), and a destroyed key whose version still holds a KEK.
    #[tokio::test]
    async fn the_scan_reports_copied_rows_and_material_left_under_a_destroyed_key() {
        let (stores, _dir) = test_stores().await;
        for store in stores {
            let record = test_record(1, "admin.create_key");
            let key = numbered_key([7; 16], "kept");
            store.create_key(&key, &[1; 60], 1, record).await.unwrap();
            assert!(store.integrity().scan(&store).await.unwrap().is_empty());
            let version = row::key_of(&[Value::text(key.id.to_string()), Value::int(1)]);

            // A destroyed key (written as a destruction that erased nothing would be).
            let mut tx = Tx::begin(&store).await.unwrap();
            let old = tx
                .get::<KeyRow>(&[Value::text(key.id.to_string())])
                .await
                .unwrap()
                .unwrap();
            let mut destroyed = old.row.clone();
            destroyed.state = KeyState::Destroyed;
            tx.update(&old, &destroyed).await.unwrap();
            tx.commit().await.unwrap();
            let found = store.integrity().scan(&store).await.unwrap();
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!((found[0].table, &found[0].key), ("key_versions", &version));
            assert!(found[0].detail.contains("still holds its wrapped KEK"), "{found:?}");

            // The versions table rebuilt without its primary key, and the row copied.
            for sql in [
                "CREATE TABLE kv_copy AS SELECT * FROM key_versions",
                "DROP TABLE key_versions",
                "ALTER TABLE kv_copy RENAME TO key_versions",
                "INSERT INTO key_versions SELECT * FROM key_versions",
            ] {
                sqlx::query(sql).execute(store.pool()).await.unwrap();
            }
            let found = store.integrity().scan(&store).await.unwrap();
            assert!(
                found
                    .iter()
                    .any(|v| v.key == version && v.detail.contains("more than once")),
                "{found:?}"
            );
        }
    }

    /// A write transaction of this process moves the view after its commit, without the
    /// catch-up lock. The race, played step by step on PostgreSQL: `a` commits a key but has
    /// not moved its view yet; replica `b` commits another; `a` begins a third transaction,
    /// whose catch-up reads both from the log, and while it does, the first commit moves the
    /// view. The catch-up must still bring the view to the state it read (it gave up, and the
    /// transaction raised "the state row changed while it was locked": a false rollback alarm).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_moving_the_view_during_a_catch_up_is_no_rollback() {
        let Some([a, b]) = test_replicas().await else {
            return;
        };
        let record = || test_record(0, "admin.create_key");
        let create = |store: &Store, n: u8| {
            let store = store.clone();
            async move {
                store
                    .create_key(&numbered_key([n; 16], &format!("key-{n}")), &[1; 60], 1, record())
                    .await
            }
        };
        let gate = a.integrity().hooks.commit_gate.clone().write_owned().await;
        let first = tokio::spawn(create(&a, 1));
        // Committed in the database, waiting at the gate to move a's view.
        let committed = || async {
            sqlx::query("SELECT count(*) AS n FROM keys")
                .fetch_one(b.pool())
                .await
                .unwrap()
                .get::<i64, _>("n")
        };
        while committed().await < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        create(&b, 2).await.unwrap();
        // While the third transaction's catch-up has read the log: the first one moves the view.
        let (moved, moved_rx) = tokio::sync::oneshot::channel();
        *a.integrity().hooks.before_apply.lock().unwrap() = Some(Box::pin(async move {
            drop(gate);
            moved_rx.await.unwrap()
        }));
        let third = tokio::spawn(create(&a, 3));
        first.await.unwrap().unwrap();
        moved.send(()).unwrap();
        third.await.unwrap().unwrap();
        assert!(a.integrity().alarm().is_none(), "{:?}", a.integrity().alarm());
        assert_eq!(a.list_keys("", 10).await.unwrap().rows.len(), 3);
    }

    /// A row still authenticated under the old generation (say written, after the worker's pass
    /// over its table, by a replica that held only the old root) holds the rotation open:
    /// completed, the old generation's integrity key is dropped and the row would never verify
    /// again.
    #[tokio::test]
    async fn a_row_left_under_the_old_generation_holds_the_rotation_open() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
        let (store, old_key) = test_store_keyed(&url).await;
        let new_key = Arc::new(kms_core::integrity::IntegrityKey::new(
            &kms_core::secret::SecretKey::generate().unwrap(),
        ));
        let record = |operation: &str| test_record(1, operation);
        start_pending_generation(&store).await;
        // A key written under generation 1 (by a replica that held only generation 1, after the
        // worker's pass over the keys table), then both generations held, as during a rotation.
        let straggler = numbered_key([9; 16], "straggler");
        store
            .create_key(&straggler, &[1; 60], 1, record("admin.create_key"))
            .await
            .unwrap();
        let both = KeyRing::new(vec![(1, old_key.clone()), (2, new_key.clone())]).unwrap();
        store.integrity().set_keys(Some(both));
        // Its secret re-wrapped (the bytes stand for the new root's wrapping), as the worker does.
        let batch: Vec<_> = store
            .rewrap_batch(1, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|item| {
                let again = item.wrapped.clone();
                (item, again)
            })
            .collect();
        assert_eq!(store.apply_rewrap(1, 2, &batch).await.unwrap(), 1);

        assert!(
            !store
                .complete_rotation(1, 2, record("admin.rotate_root.complete"))
                .await
                .unwrap(),
            "not completed while a row is under generation 1"
        );
        store.reauthenticate_all(2, 100, Duration::ZERO).await.unwrap();
        assert!(store
            .complete_rotation(1, 2, record("admin.rotate_root.complete"))
            .await
            .unwrap());
        // Generation 1 retired: only the new key is held, and every row verifies under it.
        store
            .integrity()
            .set_keys(Some(KeyRing::new(vec![(2, new_key.clone())]).unwrap()));
        assert_eq!(store.key_by_id(straggler.id).await.unwrap(), Some(straggler));
        assert!(store.integrity().scan(&store).await.unwrap().is_empty());
    }
}
