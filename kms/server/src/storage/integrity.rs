//! The one place where rows become trusted: every row of an authenticated table that `kmsd`
//! reads is decoded here, and only here, after its authenticator verifies under an integrity key
//! the seal holds and its version is the one the state log says `kmsd` last wrote
//! ([`Integrity::verify`]); every row `kmsd` writes is written through a [`Tx`], which
//! authenticates it, records it in the state log and moves the state head in the same
//! transaction.
//!
//! The state log view ([`LogView`]) is this process's replay of the log: for every tracked row,
//! the version last written (or that it was deleted). It is rebuilt from the whole log when the
//! seal opens, kept current by reading new entries (every second, inside every write
//! transaction, and when a row newer than the view is read), and never moves backwards: a state
//! head older than one this process has seen, or a log rewritten behind it, raises the
//! `state_rollback` alarm, after which nothing is served until the process restarts.
//!
//! Must never act on a row that did not verify, and never log a key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kms_core::audit::Record;
use kms_core::integrity::{state_entry_hash, IntegrityKey, StateEntry, StateHead, StateOp, Value, STATE_GENESIS};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row as _, Transaction};

use super::row::{self, Row, Table, Values};
use super::{append_in_tx, Store, StoreError};

/// The integrity keys this process holds: one per root generation it holds (two during a
/// rotation), and which one new authenticators are made with.
pub struct KeyRing {
    keys: Vec<(u64, Arc<IntegrityKey>)>,
    newest: u64,
}

impl KeyRing {
    /// A ring of `keys` (generation, key); new rows are authenticated under the highest.
    pub fn new(keys: Vec<(u64, Arc<IntegrityKey>)>) -> Option<Self> {
        let newest = keys.iter().map(|(g, _)| *g).max()?;
        Some(Self { keys, newest })
    }

    fn key(&self, generation: u64) -> Option<&IntegrityKey> {
        self.keys
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, k)| k.as_ref())
    }

    fn newest(&self) -> (u64, &IntegrityKey) {
        // `new` refuses an empty ring, so the newest generation's key is there.
        let k = self
            .key(self.newest)
            .unwrap_or_else(|| unreachable!("the ring holds its newest key"));
        (self.newest, k)
    }

    /// The generations held.
    pub fn generations(&self) -> Vec<u64> {
        self.keys.iter().map(|(g, _)| *g).collect()
    }
}

/// How a row fails.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ViolationKind {
    /// Its authenticator is missing or does not verify, or it does not decode: `kmsd` did not
    /// write it as it is (`row_integrity`).
    Integrity,
    /// An older genuine version of a row, or a row `kmsd` deleted, put back; or a row `kmsd`
    /// wrote that is gone (`row_rollback`).
    Rollback,
    /// The state head went back, or the state log was rewritten (`state_rollback`).
    StateRollback,
    /// A genuine, current row returned for a read that does not select it: another key's row
    /// for a lookup by key, another machine's entry for a lookup by chip id
    /// (`row_substituted`). What the database's answer is checked against is the read's own
    /// condition, restated in Rust, so neither an operator-defined `=` on `kmsd`'s
    /// `search_path` nor a proxy on the wire can answer one question with another row.
    Substituted,
}

impl ViolationKind {
    /// The stable reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Integrity => "row_integrity",
            Self::Rollback => "row_rollback",
            Self::StateRollback => "state_rollback",
            Self::Substituted => "row_substituted",
        }
    }
}

/// A row (or the state) found not to be what `kmsd` wrote.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Violation {
    /// The table (`integrity_state` / `state_log` for the state itself).
    pub table: &'static str,
    /// The row's primary key (canonical text), if it could be read.
    pub key: String,
    /// How it fails.
    pub kind: ViolationKind,
    /// What exactly (for the log and the audit entry; never key material).
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} row {}: {}", self.table, self.key, self.detail)
    }
}

/// A genuine row a table returns twice: every copy verifies, so a read that counts rows would
/// count it again.
const COPIED_ROW: &str = "the table holds this row more than once (its primary key was dropped and the row copied)";

/// What the log says of one tracked row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Seen {
    version: i64,
    deleted: bool,
    /// The log entry that said so: a row read before the view learned of it may be older.
    seq: i64,
    /// The digest of the content written at `version` (`None` for a delete, or an entry from
    /// before digests were logged).
    digest: Option<[u8; 32]>,
}

/// A row at the version `seen` names: current if its content is what was committed (or the
/// log entry predates digests).
fn seen_content(seen: &Seen, digest: &[u8; 32]) -> VersionCheck {
    match &seen.digest {
        Some(d) if d != digest => VersionCheck::NotCommitted,
        _ => VersionCheck::Current,
    }
}

/// This process's replay of the state log.
#[derive(Default)]
struct LogView {
    /// The head replayed up to.
    head: StateHead,
    /// Whether the whole log has been replayed since the process started.
    loaded: bool,
    /// Every tracked row's last version.
    rows: HashMap<(Table, String), Seen>,
}

impl LogView {
    /// Takes a row's newest log entry. A deleted row is remembered (a deleted row put back is
    /// a rollback), except a deleted `admin_requests` row: it is deleted only once its request
    /// is stale everywhere, when a row put back can only refuse that request again, and
    /// remembering one per admin request ever made would grow the view without end.
    fn apply(&mut self, key: (Table, String), seen: Seen) {
        if seen.deleted && key.0 == Table::AdminRequests {
            self.rows.remove(&key);
        } else {
            self.rows.insert(key, seen);
        }
    }
}

/// What a version check found.
enum VersionCheck {
    Current,
    Older(i64),
    Deleted(i64),
    /// Newer than the view knows, or older than a version the view learned only after the row
    /// was read: the view must catch up (or the row be read again) before anything is decided.
    Unknown,
    /// The version kmsd last wrote, but not the content it committed at that version: a row
    /// authenticated by a transaction that did not commit, put in the committed row's place.
    NotCommitted,
}

/// The integrity state of a [`Store`], shared by its clones.
pub struct Integrity {
    ring: RwLock<Option<Arc<KeyRing>>>,
    view: RwLock<LogView>,
    catch_up: tokio::sync::Mutex<()>,
    alarm: RwLock<Option<Violation>>,
    reported: std::sync::Mutex<HashMap<(&'static str, String, ViolationKind), Instant>>,
    violations: tokio::sync::mpsc::UnboundedSender<Violation>,
    receiver: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Violation>>>,
    /// The newest audit entry this process wrote (seq, hash): the chain must keep it.
    audit_written: std::sync::Mutex<Option<(i64, [u8; 32])>>,
    /// Where a test holds a race open.
    #[cfg(test)]
    pub(crate) hooks: Hooks,
}

/// Points where a test stops a transaction or a catch-up, to play a race deterministically.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Hooks {
    /// Read-locked by a commit between the database's commit and the view's move.
    pub(crate) commit_gate: Arc<tokio::sync::RwLock<()>>,
    /// Run (once) by a catch-up between reading the log and moving the view.
    pub(crate) before_apply: std::sync::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>,
}

/// How often the same violation of the same row is reported again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Poisoned only by a panic while held; every writer replaces whole values.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The state row.
struct StateRow {
    head: StateHead,
    generation: u64,
    mac: Vec<u8>,
}

const STATE_COLUMNS: [row::Column; 4] = [
    row::int("id"),
    row::int("version"),
    row::int("log_seq"),
    row::bytes("log_hash"),
];

fn state_values(head: &StateHead) -> Vec<Value> {
    vec![
        Value::int(1),
        Value::int(head.version),
        Value::int(head.seq),
        Value::bytes(head.hash.to_vec()),
    ]
}

fn state_violation(kind: ViolationKind, detail: impl Into<String>) -> Violation {
    Violation {
        table: "integrity_state",
        key: "[\"1\"]".into(),
        kind,
        detail: detail.into(),
    }
}

fn hash32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

impl Integrity {
    pub(super) fn new() -> Self {
        let (violations, receiver) = tokio::sync::mpsc::unbounded_channel();
        Self {
            ring: RwLock::new(None),
            view: RwLock::new(LogView::default()),
            catch_up: tokio::sync::Mutex::new(()),
            alarm: RwLock::new(None),
            reported: std::sync::Mutex::new(HashMap::new()),
            violations,
            receiver: std::sync::Mutex::new(Some(receiver)),
            audit_written: std::sync::Mutex::new(None),
            #[cfg(test)]
            hooks: Hooks::default(),
        }
    }

    /// Notes an audit head this process committed.
    pub(crate) fn wrote_audit(&self, head: (i64, [u8; 32])) {
        let mut w = self.audit_written.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none_or(|(seq, _)| head.0 > seq) {
            *w = Some(head);
        }
    }

    /// The newest audit entry this process wrote.
    pub fn audit_written(&self) -> Option<(i64, [u8; 32])> {
        *self.audit_written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the keys the seal holds (`None` when sealed).
    pub fn set_keys(&self, ring: Option<KeyRing>) {
        *write(&self.ring) = ring.map(Arc::new);
    }

    /// The keys held, or `Sealed`.
    fn ring(&self) -> Result<Arc<KeyRing>, StoreError> {
        read(&self.ring).clone().ok_or(StoreError::Sealed)
    }

    /// A challenge nonce for `principal` that expires at `expires_unix_ms` (32 bytes): the expiry
    /// (8 bytes, big-endian), 8 random bytes, and the first 16 bytes of their authenticator
    /// under the newest integrity key (a `RowEncoding` of `attestation_challenge`, a name no
    /// table has, so it is no row's authenticator). Whether a nonce was issued, to whom, and
    /// until when is then known from the nonce itself: a row of `attestation_nonces` the
    /// database's operator inserts or prolongs does not make a nonce usable. (The row still
    /// records its single use.)
    pub(crate) fn challenge_nonce(&self, principal: &str, expires_unix_ms: i64) -> Result<[u8; 32], StoreError> {
        let random: [u8; 8] = kms_core::random_array().map_err(StoreError::Crypto)?;
        let ring = self.ring()?;
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&expires_unix_ms.to_be_bytes());
        nonce[8..16].copy_from_slice(&random);
        let tag = ring.newest().1.tag(&challenge_encoding(principal, &nonce[..16]));
        nonce[16..].copy_from_slice(&tag[..16]);
        Ok(nonce)
    }

    /// The expiry of a challenge nonce issued to `principal` by [`Integrity::challenge_nonce`]
    /// under a key held; `None` if it was not (made up, another principal's, or under a root
    /// generation retired since).
    pub(crate) fn challenge_expiry(&self, principal: &str, nonce: &[u8]) -> Result<Option<i64>, StoreError> {
        use subtle::ConstantTimeEq as _;
        let Ok(nonce) = <&[u8; 32]>::try_from(nonce) else {
            return Ok(None);
        };
        let ring = self.ring()?;
        let encoding = challenge_encoding(principal, &nonce[..16]);
        let issued = ring
            .keys
            .iter()
            .any(|(_, k)| bool::from(k.tag(&encoding)[..16].ct_eq(&nonce[16..])));
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&nonce[..8]);
        Ok(issued.then(|| i64::from_be_bytes(expiry)))
    }

    /// The keys held, for a rotation's re-authentication.
    pub(crate) fn ring_for_rotation(&self) -> Result<Arc<KeyRing>, StoreError> {
        self.ring()
    }

    /// Re-authenticates the state row under the newest key if it is under an older one
    /// (conditional on its old authenticator: a write transaction that moved it meanwhile
    /// authenticated it under the newest key already). Whether it moved.
    pub(crate) async fn reauthenticate_state(&self, store: &Store) -> Result<bool, StoreError> {
        let ring = self.ring()?;
        let mut conn = store.pool.acquire().await?;
        let Some(state) = read_state(&mut conn, &ring).await? else {
            return Ok(false);
        };
        let (generation, key) = ring.newest();
        if state.generation >= generation {
            return Ok(false);
        }
        let mac = key
            .tag(&row::encoding(
                "integrity_state",
                &STATE_COLUMNS,
                &state_values(&state.head),
                0,
            ))
            .to_vec();
        let n =
            sqlx::query("UPDATE integrity_state SET row_generation = $1, row_mac = $2 WHERE id = 1 AND row_mac = $3")
                .bind(i64::try_from(generation).unwrap_or(i64::MAX))
                .bind(mac)
                .bind(state.mac)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        Ok(n == 1)
    }

    /// The generations whose keys are held.
    pub fn held_generations(&self) -> Vec<u64> {
        read(&self.ring).as_ref().map(|r| r.generations()).unwrap_or_default()
    }

    /// The `state_rollback` alarm, once raised (until the process restarts).
    pub fn alarm(&self) -> Option<Violation> {
        read(&self.alarm).clone()
    }

    /// `Err` once the alarm is raised.
    pub fn check_alarm(&self) -> Result<(), StoreError> {
        match self.alarm() {
            Some(v) => Err(StoreError::Rollback(v)),
            None => Ok(()),
        }
    }

    /// Raises the alarm (the first violation is kept).
    pub(crate) fn raise(&self, v: Violation) -> StoreError {
        {
            let mut a = write(&self.alarm);
            if a.is_none() {
                tracing::error!(detail = %v, "integrity alarm: the database went back behind a state this server saw; nothing is served until it restarts");
                *a = Some(v.clone());
            }
        }
        self.report(v.clone());
        StoreError::Rollback(v)
    }

    /// The head this process has replayed up to.
    pub fn head(&self) -> StateHead {
        read(&self.view).head
    }

    /// Takes the receiver of violations (the server audits them); once.
    pub fn take_violations(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Violation>> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Logs and queues `v` for the audit log, at most once a minute per row and kind.
    pub(crate) fn report(&self, v: Violation) {
        let now = Instant::now();
        {
            let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            let k = (v.table, v.key.clone(), v.kind);
            if seen.get(&k).is_some_and(|t| now.duration_since(*t) < REPORT_EVERY) {
                return;
            }
            if seen.len() > 10_000 {
                seen.retain(|_, t| now.duration_since(*t) < REPORT_EVERY);
            }
            seen.insert(k, now);
        }
        tracing::error!(table = v.table, key = %v.key, reason = v.kind.reason(), detail = %v.detail, "a database row is refused");
        let _ = self.violations.send(v);
    }

    /// The authenticator of an untracked row (version 0) under the newest key held.
    pub(crate) fn untracked_authenticator<T: Row>(&self, values: &[Value]) -> Result<(u64, Vec<u8>), StoreError> {
        self.check_alarm()?;
        let ring = self.ring()?;
        let (generation, key) = ring.newest();
        Ok((
            generation,
            key.tag(&row::encoding(T::TABLE.name(), T::COLUMNS, values, 0)).to_vec(),
        ))
    }

    fn forget_reported(&self, table: &'static str, key: &str) {
        let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.is_empty() {
            seen.retain(|(t, k, _), _| !(*t == table && k == key));
        }
    }

    fn violation<T: Row>(&self, key: &str, kind: ViolationKind, detail: impl Into<String>) -> Violation {
        Violation {
            table: T::TABLE.name(),
            key: key.to_owned(),
            kind,
            detail: detail.into(),
        }
    }

    /// Checks a row's authenticator and decodes it; the version is checked by the caller.
    fn authenticate<T: Row>(
        &self,
        ring: &KeyRing,
        r: &AnyRow,
        prefix: &str,
    ) -> Result<(Stored<T>, String), StoreError> {
        let values = row::read_values_as(r, T::COLUMNS, prefix)?;
        let key = row::key_of(&values[..T::KEY]);
        let version: i64 = r.try_get(row::prefixed(prefix, "row_version").as_ref())?;
        let generation: i64 = r.try_get(row::prefixed(prefix, "row_generation").as_ref())?;
        let mac: Option<Vec<u8>> = r.try_get(row::prefixed(prefix, "row_mac").as_ref())?;
        let fail = |detail: String| StoreError::Integrity(self.violation::<T>(&key, ViolationKind::Integrity, detail));
        let Some(mac) = mac else {
            return Err(fail("it has no authenticator (kmsd did not write it)".into()));
        };
        let ik = u64::try_from(generation)
            .ok()
            .and_then(|g| ring.key(g))
            .ok_or_else(|| {
                fail(format!(
                    "it is authenticated under root generation {generation}, which this server does not hold"
                ))
            })?;
        let encoding = row::encoding(T::TABLE.name(), T::COLUMNS, &values, version);
        ik.verify(&encoding, &mac).map_err(|_| {
            fail("its authenticator does not match its content (it was written or changed by someone else)".into())
        })?;
        let digest = kms_core::integrity::row_digest(&encoding);
        let parsed = T::from_values(&Values {
            columns: T::COLUMNS,
            values: &values,
        })
        .map_err(|e| fail(format!("it does not decode: {e}")))?;
        Ok((
            Stored {
                row: parsed,
                version,
                generation: u64::try_from(generation).unwrap_or(0),
                mac,
                content_digest: digest,
            },
            key,
        ))
    }

    /// Checks a row's `version` against the view. `read_at` is the log position the view was at
    /// before the row was read: a newer version the view learned after that may have been
    /// written after the read, so it proves nothing yet.
    fn check_version(&self, table: Table, key: &str, version: i64, digest: &[u8; 32], read_at: i64) -> VersionCheck {
        if !table.tracked() {
            return VersionCheck::Current;
        }
        match read(&self.view).rows.get(&(table, key.to_owned())) {
            Some(s) if s.version == version && !s.deleted => seen_content(s, digest),
            Some(s) if s.seq > read_at => VersionCheck::Unknown,
            Some(s) if s.deleted && s.version >= version => VersionCheck::Deleted(s.version),
            Some(s) if s.version > version => VersionCheck::Older(s.version),
            _ => VersionCheck::Unknown,
        }
    }

    fn version_violation<T: Row>(&self, key: &str, version: i64, check: &VersionCheck) -> Option<Violation> {
        let detail = match check {
            VersionCheck::Current => return None,
            VersionCheck::NotCommitted => {
                return Some(self.violation::<T>(
                    key,
                    ViolationKind::Integrity,
                    format!(
                        "it is version {version}, but not the content kmsd committed as that version (a write of a transaction that did not commit, put in its place)"
                    ),
                ))
            }
            VersionCheck::Older(current) => format!(
                "it is version {version}, but kmsd last wrote version {current} of it (an older row was put back)"
            ),
            VersionCheck::Deleted(at) => {
                format!("kmsd deleted it at version {at}, yet it is there (version {version}: put back)")
            }
            VersionCheck::Unknown => {
                return Some(self.violation::<T>(
                    key,
                    ViolationKind::Integrity,
                    format!("the state log has no version {version} of it (kmsd did not write it)"),
                ))
            }
        };
        Some(self.violation::<T>(key, ViolationKind::Rollback, detail))
    }

    /// The log position of the view, taken before a read so that [`Integrity::verify`] can tell
    /// a row older than the view from one read before the view learned of a newer version.
    pub(crate) fn read_at(&self) -> i64 {
        read(&self.view).head.seq
    }

    /// Verifies and decodes a row read outside a write transaction (the read began when the view
    /// was at `read_at`): its authenticator, and that it is the version the state log says was
    /// written last (reading new log entries if the row is newer than this process's view).
    /// `Ok(None)` if the row may simply have been read before a newer version was written (the
    /// view learned of that version after the read began): the caller reads it again.
    pub(crate) async fn verify<T: Row>(
        &self,
        store: &Store,
        r: &AnyRow,
        read_at: i64,
    ) -> Result<Option<Stored<T>>, StoreError> {
        self.verify_as::<T>(store, r, "", read_at).await
    }

    /// The same, for `T`'s columns in a select of several tables, named `<prefix><name>`.
    pub(crate) async fn verify_as<T: Row>(
        &self,
        store: &Store,
        r: &AnyRow,
        prefix: &str,
        read_at: i64,
    ) -> Result<Option<Stored<T>>, StoreError> {
        self.check_alarm()?;
        let ring = self.ring()?;
        let (stored, key) = match self.authenticate::<T>(&ring, r, prefix) {
            Ok(x) => x,
            Err(e) => return Err(self.reported(e)),
        };
        let mut check = self.check_version(T::TABLE, &key, stored.version, &stored.content_digest, read_at);
        if matches!(check, VersionCheck::Unknown) {
            self.catch_up(store).await?;
            check = self.check_version(T::TABLE, &key, stored.version, &stored.content_digest, read_at);
            if matches!(check, VersionCheck::Unknown) {
                let v = read(&self.view);
                let written_since = match v.rows.get(&(T::TABLE, key.clone())) {
                    Some(s) => s.seq > read_at,
                    // A purged `admin_requests` row is forgotten (`LogView::apply`): one read
                    // before a purge the view learned of since is no forgery.
                    None => T::TABLE == Table::AdminRequests && v.head.seq > read_at,
                };
                if written_since {
                    return Ok(None);
                }
            }
        }
        match self.version_violation::<T>(&key, stored.version, &check) {
            None => Ok(Some(stored)),
            Some(v) => Err(self.reported(match v.kind {
                ViolationKind::Integrity => StoreError::Integrity(v),
                _ => StoreError::Rollback(v),
            })),
        }
    }

    /// The refusal (reported) of a genuine row the database returned for a read (`read`, the
    /// SQL condition or the key asked for) that does not select it.
    pub(crate) fn substituted<T: Row>(&self, stored: &Stored<T>, read: &str) -> StoreError {
        self.reported(StoreError::Integrity(self.violation::<T>(
            &stored.row.key(),
            ViolationKind::Substituted,
            format!("the database returned it for a read that does not select it ({read})"),
        )))
    }

    /// A genuine row that a read returned more than once (its primary key dropped and the row
    /// copied): reported; the copy is not taken for another row.
    pub(crate) fn copied<T: Row>(&self, key: &str) -> StoreError {
        self.reported(StoreError::Integrity(self.violation::<T>(
            key,
            ViolationKind::Integrity,
            COPIED_ROW,
        )))
    }

    /// Rows kmsd wrote, `second` among them, hold a value only one row may hold (a name, a
    /// machine's identity), which only the database's dropped constraint said: reported, and
    /// the value is not used. `detail` says which value.
    pub(crate) fn ambiguous<T: Row>(&self, second: &T, detail: String) -> StoreError {
        self.reported(StoreError::Integrity(self.violation::<T>(
            &second.key(),
            ViolationKind::Integrity,
            detail,
        )))
    }

    /// Reports an integrity error (passes others through).
    pub(crate) fn reported_error(&self, e: StoreError) -> StoreError {
        self.reported(e)
    }

    /// Reports an integrity error (passes others through).
    fn reported(&self, e: StoreError) -> StoreError {
        if let StoreError::Integrity(v) | StoreError::Rollback(v) = &e {
            self.report(v.clone());
        }
        e
    }

    /// A row whose primary key the state log knows but which is not there: deleted by someone
    /// else (a `row_rollback`), or `None` if the log does not have it (it does not exist) or it
    /// was written only after the read that missed it began (the read began at `read_at`).
    /// Reads new log entries first (a deletion by another replica is no rollback).
    pub(crate) async fn missing<T: Row>(
        &self,
        store: &Store,
        key: &str,
        read_at: i64,
    ) -> Result<Option<StoreError>, StoreError> {
        if !T::TABLE.tracked() {
            return Ok(None);
        }
        let known = |v: &LogView| v.rows.get(&(T::TABLE, key.to_owned())).copied();
        if known(&read(&self.view)).is_none_or(|s| s.deleted) {
            return Ok(None);
        }
        self.catch_up(store).await?;
        let Some(seen) = known(&read(&self.view)).filter(|s| !s.deleted && s.seq <= read_at) else {
            return Ok(None);
        };
        let v = self.gone::<T>(key, seen.version);
        Ok(Some(self.reported(StoreError::Rollback(v))))
    }

    /// The violation of a row `kmsd` wrote at `version` that is not there.
    fn gone<T: Row>(&self, key: &str, version: i64) -> Violation {
        self.violation::<T>(
            key,
            ViolationKind::Rollback,
            format!("kmsd wrote version {version} of it, but it is gone (deleted by someone else)"),
        )
    }

    /// The same, inside a write transaction (whose view is the database's state).
    pub(crate) fn missing_in_tx<T: Row>(&self, key: &str) -> Option<StoreError> {
        if !T::TABLE.tracked() {
            return None;
        }
        let seen = read(&self.view).rows.get(&(T::TABLE, key.to_owned())).copied()?;
        if seen.deleted {
            return None;
        }
        let v = self.gone::<T>(key, seen.version);
        Some(self.reported(StoreError::Rollback(v)))
    }

    /// Reads new state log entries (all of them the first time) and the state row, and checks
    /// that they extend what this process saw. Raises the alarm if they do not.
    pub(crate) async fn catch_up(&self, store: &Store) -> Result<(), StoreError> {
        // The connection first: whoever holds the lock never waits for one.
        let mut conn = store.pool.acquire().await?;
        let _one = self.catch_up.lock().await;
        self.catch_up_on(&mut conn).await
    }

    /// [`Integrity::catch_up`] on a connection (inside a write transaction that holds the state
    /// row's lock, or not). The caller holds the catch-up lock.
    async fn catch_up_on(&self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        self.check_alarm()?;
        let ring = self.ring()?;
        // A write transaction of this process that committed before the lock was taken moves
        // the view after its commit, without the lock: if it did so while this replay read the
        // log, the replay starts again from the moved view (applied over it, the replay would
        // be thrown away, and the view left behind the state it read: a false rollback). Each
        // round ends with the view moved by a commit that began before the lock was taken, and
        // no transaction begins without the lock, so the rounds end.
        while !self.replay(conn, &ring).await? {}
        Ok(())
    }

    /// One round of [`Integrity::catch_up_on`]: `false` if the view moved meanwhile and nothing
    /// was applied.
    async fn replay(&self, conn: &mut AnyConnection, ring: &KeyRing) -> Result<bool, StoreError> {
        // The view first: a write transaction moves it only after its commit, so the state
        // read below is at least as new, unless the database went back.
        let (start, loaded) = {
            let v = read(&self.view);
            (v.head, v.loaded)
        };
        let Some(state) = read_state(conn, ring).await? else {
            // Not initialized: nothing to replay (a view that saw a state means a deletion).
            let head = self.head();
            if head.version > 0 {
                return Err(self.raise(state_violation(
                    ViolationKind::StateRollback,
                    format!(
                        "the state row is gone, but this server saw state version {}",
                        head.version
                    ),
                )));
            }
            return Ok(true);
        };
        if !start.is_extended_by(&state.head) {
            return Err(self.raise(state_violation(
                ViolationKind::StateRollback,
                format!(
                    "the database's state is version {} (log entry {}), behind version {} (log entry {}) that this server saw, or its log differs: the database was rolled back",
                    state.head.version, state.head.seq, start.version, start.seq
                ),
            )));
        }
        if loaded && state.head == start {
            return Ok(true);
        }
        let from = if loaded { start.seq } else { 0 };
        let rows = sqlx::query(
            "SELECT seq, version, tbl, row_key, op, row_digest, prev_hash, hash FROM state_log WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(from.max(1))
        .bind(state.head.seq)
        .fetch_all(&mut *conn)
        .await?;
        let mut prev = if from == 0 { STATE_GENESIS } else { start.hash };
        let mut expect = if from == 0 { 1 } else { start.seq };
        let mut applied: Vec<((Table, String), Seen)> = Vec::with_capacity(rows.len());
        let mut last_version = if from == 0 { 0 } else { start.version };
        let broken = |detail: String| self.raise(state_violation(ViolationKind::StateRollback, detail));
        for (i, r) in rows.iter().enumerate() {
            let seq: i64 = r.try_get("seq")?;
            let hash_col: Vec<u8> = r.try_get("hash")?;
            let stored_hash = hash32(&hash_col).ok_or_else(|| broken(format!("state log entry {seq}: bad hash")))?;
            if i == 0 && from > 0 {
                // The entry this process replayed last must still be the same.
                if seq != start.seq || stored_hash != start.hash {
                    return Err(broken(format!(
                        "state log entry {} is not the one this server replayed: the log was rewritten",
                        start.seq
                    )));
                }
                expect = seq + 1;
                continue;
            }
            let entry = StateEntry {
                seq,
                version: r.try_get("version")?,
                table: r.try_get("tbl")?,
                key: r.try_get("row_key")?,
                op: StateOp::parse(&r.try_get::<String, _>("op")?)
                    .ok_or_else(|| broken(format!("state log entry {seq}: unknown operation")))?,
                digest: match r.try_get::<Option<Vec<u8>>, _>("row_digest")? {
                    None => None,
                    Some(d) => {
                        Some(hash32(&d).ok_or_else(|| broken(format!("state log entry {seq}: bad row digest")))?)
                    }
                },
            };
            let prev_col: Vec<u8> = r.try_get("prev_hash")?;
            if seq != expect
                || hash32(&prev_col) != Some(prev)
                || state_entry_hash(&prev, &entry) != stored_hash
                || entry.version < last_version
                || entry.version > state.head.version
            {
                return Err(broken(format!(
                    "state log entry {expect} is missing or altered (the log does not chain)"
                )));
            }
            let table = Table::parse(&entry.table)
                .filter(|t| t.tracked())
                .ok_or_else(|| broken(format!("state log entry {seq}: unknown table {:?}", entry.table)))?;
            applied.push((
                (table, entry.key),
                Seen {
                    version: entry.version,
                    deleted: entry.op == StateOp::Delete,
                    seq,
                    digest: entry.digest,
                },
            ));
            last_version = entry.version;
            prev = stored_hash;
            expect = seq + 1;
        }
        if expect != state.head.seq + 1 || prev != state.head.hash {
            return Err(broken(format!(
                "the state log ends before entry {} that the state row names",
                state.head.seq
            )));
        }
        #[cfg(test)]
        {
            let hook = self.hooks.before_apply.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(hook) = hook {
                hook.await;
            }
        }
        let mut v = write(&self.view);
        if v.head != start || v.loaded != loaded {
            // A commit of this process moved it: replay again from there.
            return Ok(false);
        }
        if !loaded {
            v.rows.clear();
        }
        for (k, s) in applied {
            v.apply(k, s);
        }
        v.head = state.head;
        v.loaded = true;
        Ok(true)
    }

    /// Replays the whole state log (when the seal opens) and checks every tracked row of every
    /// table: see [`Integrity::scan`].
    pub(crate) async fn open(&self, store: &Store) -> Result<Vec<Violation>, StoreError> {
        self.catch_up(store).await?;
        self.scan(store).await
    }

    /// Reads every row of every authenticated table and checks it, and that every row the log
    /// says exists is there. Returns (and reports) what fails; the rows that verify stay usable.
    pub(crate) async fn scan(&self, store: &Store) -> Result<Vec<Violation>, StoreError> {
        self.catch_up(store).await?;
        let mut found = Vec::new();
        let mut present: std::collections::HashSet<(Table, String)> = std::collections::HashSet::new();
        let mut read_at: HashMap<Table, i64> = HashMap::new();
        for table in Table::ALL {
            let at = self.read_at();
            read_at.insert(table, at);
            let rows = sqlx::query(&format!("SELECT * FROM {}", table.name()))
                .fetch_all(&store.pool)
                .await?;
            for r in &rows {
                match scan_one(self, store, table, r, at).await {
                    Ok(key) if present.contains(&(table, key.clone())) => {
                        // Its primary key constraint dropped and a genuine row copied: every
                        // copy verifies, so a read that counts rows would count it again.
                        let v = Violation {
                            table: table.name(),
                            key,
                            kind: ViolationKind::Integrity,
                            detail: COPIED_ROW.into(),
                        };
                        self.report(v.clone());
                        found.push(v);
                    }
                    Ok(key) => {
                        // A row that verifies again ends its incident: a new one is reported
                        // at once.
                        self.forget_reported(table.name(), &key);
                        present.insert((table, key));
                    }
                    Err(StoreError::Integrity(v) | StoreError::Rollback(v)) => {
                        present.insert((table, v.key.clone()));
                        found.push(v);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Rows kmsd wrote that are gone: known before their table was read, and not deleted
        // since (by any replica).
        self.catch_up(store).await?;
        let expected: Vec<((Table, String), Seen)> = read(&self.view)
            .rows
            .iter()
            .filter(|((t, _), s)| !s.deleted && read_at.get(t).is_some_and(|at| s.seq <= *at))
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        for ((table, key), seen) in expected {
            if !present.contains(&(table, key.clone())) {
                let v = Violation {
                    table: table.name(),
                    key,
                    kind: ViolationKind::Rollback,
                    detail: format!(
                        "kmsd wrote version {} of it, but it is gone (deleted by someone else)",
                        seen.version
                    ),
                };
                self.report(v.clone());
                found.push(v);
            }
        }
        for v in store
            .destroyed_keys_with_material()
            .await?
            .into_iter()
            .chain(store.identities_active_twice().await?)
        {
            self.report(v.clone());
            found.push(v);
        }
        Ok(found)
    }
}

/// Checks one row of `table` during a scan; the row's key if it verifies (or was written anew
/// while the scan read it).
async fn scan_one(i: &Integrity, store: &Store, table: Table, r: &AnyRow, read_at: i64) -> Result<String, StoreError> {
    use super::tables::*;
    macro_rules! check {
        ($t:ty) => {
            match i.verify::<$t>(store, r, read_at).await? {
                Some(s) => Ok(s.row.key()),
                None => Ok(row::key_of(&row::read_values(
                    r,
                    &<$t as Row>::COLUMNS[..<$t as Row>::KEY],
                )?)),
            }
        };
    }
    match table {
        Table::SealConfig => check!(SealConfigRow),
        Table::RootGenerations => check!(RootGenerationRow),
        Table::RootShares => check!(ShareRow),
        Table::Admins => check!(AdminRow),
        Table::Keys => check!(KeyRow),
        Table::KeyVersions => check!(KeyVersionRow),
        Table::ReleasePolicies => check!(ReleasePolicyRow),
        Table::Hardware => check!(HardwareRow),
        Table::TpmEnrollments => check!(TpmEnrollmentRow),
        Table::Proposals => check!(ProposalRow),
        Table::Approvals => check!(ApprovalRow),
        Table::Rejections => check!(RejectionRow),
        Table::TokenKeys => check!(TokenKeyRow),
        Table::CheckpointKeys => check!(CheckpointKeyRow),
        Table::Replicas => check!(ReplicaRow),
        Table::TpmClocks => check!(TpmClockRow),
        Table::AdminRequests => check!(AdminRequestRow),
    }
}

/// The state row, verified. `None` before Init.
async fn read_state(conn: &mut AnyConnection, ring: &KeyRing) -> Result<Option<StateRow>, StoreError> {
    let Some(r) =
        sqlx::query("SELECT version, log_seq, log_hash, row_generation, row_mac FROM integrity_state WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(None);
    };
    decode_state(&r, ring).map(Some)
}

fn decode_state(r: &AnyRow, ring: &KeyRing) -> Result<StateRow, StoreError> {
    let bad = |d: &str| StoreError::Integrity(state_violation(ViolationKind::Integrity, d));
    let hash: Vec<u8> = r.try_get("log_hash")?;
    let head = StateHead {
        version: r.try_get("version")?,
        seq: r.try_get("log_seq")?,
        hash: hash32(&hash).ok_or_else(|| bad("the state log hash is not 32 bytes"))?,
    };
    let generation = u64::try_from(r.try_get::<i64, _>("row_generation")?).unwrap_or(0);
    let mac: Vec<u8> = r.try_get("row_mac")?;
    let key = ring.key(generation).ok_or_else(|| {
        bad(&format!(
            "the state row is authenticated under root generation {generation}, which this server does not hold"
        ))
    })?;
    key.verify(
        &row::encoding("integrity_state", &STATE_COLUMNS, &state_values(&head), 0),
        &mac,
    )
    .map_err(|_| bad("the state row's authenticator does not match (it was written by someone else)"))?;
    Ok(StateRow { head, generation, mac })
}

/// What a challenge nonce's authenticator covers: the principal, and the nonce's expiry and
/// random bytes.
fn challenge_encoding(principal: &str, expiry_and_random: &[u8]) -> kms_core::integrity::RowEncoding {
    let (principal, body) = (Value::text(principal), Value::bytes(expiry_and_random));
    kms_core::integrity::RowEncoding::new(
        "attestation_challenge",
        0,
        [("principal", &principal), ("nonce", &body)],
    )
}

/// A row as read and verified, with what a later update of it needs.
#[derive(Clone, Debug)]
pub(crate) struct Stored<T> {
    /// The row.
    pub(crate) row: T,
    /// Its version.
    pub(crate) version: i64,
    /// The root generation whose integrity key authenticated it.
    pub(crate) generation: u64,
    /// Its authenticator.
    pub(crate) mac: Vec<u8>,
    /// The digest of its content ([`kms_core::integrity::row_digest`]; not `digest`, which
    /// would hide a row's own column of that name behind `Deref`).
    pub(crate) content_digest: [u8; 32],
}

impl<T> std::ops::Deref for Stored<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.row
    }
}

/// A write transaction: every authenticated row it writes is authenticated at the
/// transaction's state version and recorded in the state log; the state row moves in the same
/// commit. It begins by locking the state row, so write transactions serialize on every replica
/// (and then read every row they decide on inside the lock).
pub(crate) struct Tx {
    tx: Transaction<'static, Any>,
    store: Store,
    ring: Arc<KeyRing>,
    start: StateHead,
    version: i64,
    entries: Vec<(Table, String, StateOp, Option<[u8; 32]>)>,
    written: HashMap<(Table, String), Seen>,
    audit_head: Option<(i64, [u8; 32])>,
    approved_by: Option<Vec<String>>,
}

impl Tx {
    /// Begins: locks the state row, verifies it, and replays log entries this process has not
    /// seen (another replica's writes).
    pub(crate) async fn begin(store: &Store) -> Result<Self, StoreError> {
        let integrity = store.integrity.clone();
        integrity.check_alarm()?;
        let ring = integrity.ring()?;
        let mut tx = store.pool.begin().await?;
        let Some(r) = sqlx::query(
            "UPDATE integrity_state SET version = version WHERE id = 1 RETURNING version, log_seq, log_hash, row_generation, row_mac",
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(StoreError::Refused(super::Refusal::NotInitialized));
        };
        let state = match decode_state(&r, &ring) {
            Ok(s) => s,
            Err(e) => return Err(integrity.reported(e)),
        };
        {
            // While this transaction holds the state row's lock no other write commits, so the
            // view cannot move between here and the commit.
            let _one = integrity.catch_up.lock().await;
            integrity.catch_up_on(&mut tx).await?;
        }
        if integrity.head() != state.head {
            return Err(integrity.raise(state_violation(
                ViolationKind::StateRollback,
                "the state row changed while it was locked",
            )));
        }
        Ok(Self {
            tx,
            store: store.clone(),
            ring,
            start: state.head,
            version: state.head.version + 1,
            entries: Vec::new(),
            written: HashMap::new(),
            audit_head: None,
            approved_by: None,
        })
    }

    /// Begins the transaction of Init: creates the state row (a second Init on any replica
    /// conflicts on its primary key), authenticating under `ring`.
    pub(crate) async fn begin_init(store: &Store, ring: KeyRing) -> Result<Self, StoreError> {
        let integrity = store.integrity.clone();
        integrity.check_alarm()?;
        let mut tx = store.pool.begin().await?;
        sqlx::query(
            "INSERT INTO integrity_state (id, version, log_seq, log_hash, row_generation, row_mac) VALUES (1, 0, 0, $1, 0, $2)",
        )
        .bind(STATE_GENESIS.to_vec())
        .bind(Vec::<u8>::new())
        .execute(&mut *tx)
        .await?;
        Ok(Self {
            tx,
            store: store.clone(),
            ring: Arc::new(ring),
            start: StateHead::default(),
            version: 1,
            entries: Vec::new(),
            written: HashMap::new(),
            audit_head: None,
            approved_by: None,
        })
    }

    /// Rows of `T` selected by `rest` (`WHERE …`, `$1…` bound to `binds`), verified against the
    /// view and this transaction's own writes. Rows that fail are reported and left out, and so
    /// are second copies of a row (its primary key dropped and the row copied). Not complete:
    /// the database can leave rows out of the answer (see [`Tx::every`]).
    pub(crate) async fn all<T: Row>(
        &mut self,
        rest: &str,
        binds: &[Value],
        selects: impl Fn(&Stored<T>) -> bool,
    ) -> Result<Vec<Stored<T>>, StoreError> {
        let sql = row::select::<T>(rest);
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = row::bind(q, b);
        }
        let rows = q.fetch_all(&mut *self.tx).await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut returned = std::collections::HashSet::with_capacity(rows.len());
        for r in &rows {
            match self.check::<T>(r) {
                // Every copy of a genuine row verifies: counted once, whatever counts them.
                Ok(s) if !returned.insert(s.row.key()) => {
                    self.store.integrity.copied::<T>(&s.row.key());
                }
                Ok(s) if selects(&s) => out.push(s),
                Ok(s) => {
                    self.store.integrity.substituted(&s, rest);
                }
                Err(StoreError::Integrity(v) | StoreError::Rollback(v)) => self.store.integrity.report(v),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every row of the tracked table `T`, verified, and complete: a row that does not verify,
    /// or one the log says exists that the database did not return (a view in the table's place
    /// can leave rows out of any answer, filtered by `WHERE` or not), fails the read. For what
    /// must see every row, such as a rotation's completion, which retires the old root for good.
    pub(crate) async fn every<T: Row>(&mut self) -> Result<Vec<Stored<T>>, StoreError> {
        debug_assert!(T::TABLE.tracked());
        let sql = row::select::<T>("");
        let rows = sqlx::query(&sql).fetch_all(&mut *self.tx).await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut returned = std::collections::HashSet::with_capacity(rows.len());
        for r in &rows {
            let s = self.check::<T>(r).map_err(|e| self.store.integrity.reported(e))?;
            if !returned.insert(s.row.key()) {
                return Err(self
                    .store
                    .integrity
                    .reported(StoreError::Integrity(self.store.integrity.violation::<T>(
                        &s.row.key(),
                        ViolationKind::Integrity,
                        COPIED_ROW,
                    ))));
            }
            out.push(s);
        }
        // The transaction holds the state lock: the view, with this transaction's own writes,
        // is every row the table holds.
        let expected: Vec<(String, i64)> = {
            let view = read(&self.store.integrity.view);
            view.rows
                .iter()
                .filter(|((t, _), _)| *t == T::TABLE)
                .map(|((_, k), seen)| (k.clone(), *seen))
                .chain(
                    self.written
                        .iter()
                        .filter(|((t, _), _)| *t == T::TABLE)
                        .map(|((_, k), seen)| (k.clone(), *seen)),
                )
                .collect::<HashMap<String, Seen>>()
                .into_iter()
                .filter(|(_, seen)| !seen.deleted)
                .map(|(k, seen)| (k, seen.version))
                .collect()
        };
        for (key, version) in expected {
            if !returned.contains(&key) {
                return Err(self
                    .store
                    .integrity
                    .reported(StoreError::Rollback(self.store.integrity.gone::<T>(&key, version))));
            }
        }
        Ok(out)
    }

    /// The one row of `T` with primary key `key` (its key columns' values), verified; a row the
    /// log says exists but which is gone is a `row_rollback`.
    pub(crate) async fn get<T: Row>(&mut self, key: &[Value]) -> Result<Option<Stored<T>>, StoreError> {
        let sql = row::select::<T>(&row::key_where::<T>(1));
        let mut q = sqlx::query(&sql);
        for b in key {
            q = row::bind(q, b);
        }
        match q.fetch_optional(&mut *self.tx).await? {
            Some(r) => match self.check::<T>(&r) {
                Ok(s) if s.row.key() == row::key_of(key) => Ok(Some(s)),
                Ok(s) => Err(self
                    .store
                    .integrity
                    .substituted(&s, &format!("key {}", row::key_of(key)))),
                Err(e) => Err(self.store.integrity.reported(e)),
            },
            None => {
                let k = row::key_of(key);
                if self.written.get(&(T::TABLE, k.clone())).is_some_and(|s| s.deleted) {
                    return Ok(None);
                }
                match self.store.integrity.missing_in_tx::<T>(&k) {
                    Some(e) => Err(e),
                    None => Ok(None),
                }
            }
        }
    }

    fn check<T: Row>(&self, r: &AnyRow) -> Result<Stored<T>, StoreError> {
        let i = &self.store.integrity;
        let (stored, key) = i.authenticate::<T>(&self.ring, r, "")?;
        if !T::TABLE.tracked() {
            return Ok(stored);
        }
        let check = match self.written.get(&(T::TABLE, key.clone())) {
            Some(s) if s.deleted => VersionCheck::Deleted(s.version),
            Some(s) if s.version == stored.version => seen_content(s, &stored.content_digest),
            Some(s) => VersionCheck::Older(s.version),
            // The transaction holds the state lock: the view is the database's state.
            None => i.check_version(T::TABLE, &key, stored.version, &stored.content_digest, i64::MAX),
        };
        match i.version_violation::<T>(&key, stored.version, &check) {
            None => Ok(stored),
            Some(v) if v.kind == ViolationKind::Integrity => Err(StoreError::Integrity(v)),
            Some(v) => Err(StoreError::Rollback(v)),
        }
    }

    /// The authenticator of `values` at `version` (its generation and tag), and the digest of
    /// the content the state log records.
    fn authenticator<T: Row>(&self, values: &[Value], version: i64) -> (u64, Vec<u8>, [u8; 32]) {
        let (generation, key) = self.ring.newest();
        let encoding = row::encoding(T::TABLE.name(), T::COLUMNS, values, version);
        (
            generation,
            key.tag(&encoding).to_vec(),
            kms_core::integrity::row_digest(&encoding),
        )
    }

    fn record<T: Row>(&mut self, key: String, op: StateOp, digest: Option<[u8; 32]>) {
        if T::TABLE.tracked() {
            self.entries.push((T::TABLE, key.clone(), op, digest));
            self.written.insert(
                (T::TABLE, key),
                Seen {
                    version: self.version,
                    deleted: op == StateOp::Delete,
                    // Its log position, once committed.
                    seq: self.start.seq + i64::try_from(self.entries.len()).unwrap_or(i64::MAX),
                    digest,
                },
            );
        }
    }

    fn row_version<T: Row>(&self) -> i64 {
        if T::TABLE.tracked() {
            self.version
        } else {
            0
        }
    }

    /// Inserts `row`. `Conflict` on a uniqueness violation.
    pub(crate) async fn insert<T: Row>(&mut self, row: &T) -> Result<(), StoreError> {
        let values = row.to_values();
        let version = self.row_version::<T>();
        let (generation, mac, digest) = self.authenticator::<T>(&values, version);
        let sql = row::insert_sql::<T>();
        let mut q = sqlx::query(&sql);
        for v in &values {
            q = row::bind(q, v);
        }
        q.bind(version)
            .bind(i64::try_from(generation).unwrap_or(i64::MAX))
            .bind(mac)
            .execute(&mut *self.tx)
            .await?;
        self.record::<T>(row::key_of(&values[..T::KEY]), StateOp::Put, Some(digest));
        Ok(())
    }

    /// Replaces `old` (as read in this transaction) by `new` (same primary key).
    pub(crate) async fn update<T: Row>(&mut self, old: &Stored<T>, new: &T) -> Result<(), StoreError> {
        let values = new.to_values();
        let key = row::key_of(&values[..T::KEY]);
        if key != old.row.key() {
            return Err(StoreError::Refused(super::Refusal::Internal(
                "an update changes a primary key",
            )));
        }
        let version = self.row_version::<T>();
        let (generation, mac, digest) = self.authenticator::<T>(&values, version);
        let sql = row::update_sql::<T>();
        let mut q = sqlx::query(&sql);
        for v in &values[T::KEY..] {
            q = row::bind(q, v);
        }
        q = q
            .bind(version)
            .bind(i64::try_from(generation).unwrap_or(i64::MAX))
            .bind(mac);
        for v in &values[..T::KEY] {
            q = row::bind(q, v);
        }
        let n = q.bind(old.version).execute(&mut *self.tx).await?.rows_affected();
        if n != 1 {
            return Err(StoreError::Conflict);
        }
        self.record::<T>(key, StateOp::Put, Some(digest));
        Ok(())
    }

    /// Deletes `old` (as read in this transaction).
    pub(crate) async fn delete<T: Row>(&mut self, old: &Stored<T>) -> Result<(), StoreError> {
        let values = old.row.to_values();
        let sql = row::delete_sql::<T>();
        let mut q = sqlx::query(&sql);
        for v in &values[..T::KEY] {
            q = row::bind(q, v);
        }
        let n = q.bind(old.version).execute(&mut *self.tx).await?.rows_affected();
        if n != 1 {
            return Err(StoreError::Conflict);
        }
        self.record::<T>(row::key_of(&values[..T::KEY]), StateOp::Delete, None);
        Ok(())
    }

    /// Records an admin request's nonce in `admin_nonces` (not authenticated: its primary key
    /// is what decides between replicas) in this transaction. `false` if it is there already.
    pub(crate) async fn claim_admin_nonce(&mut self, nonce: &[u8], expires_unix_ms: i64) -> Result<bool, StoreError> {
        // A refusal ends the transaction on PostgreSQL: the caller drops it.
        super::claim_admin_nonce(&mut *self.tx, nonce, expires_unix_ms).await
    }

    /// Names the admins whose approvals this transaction's quorum counted: the audit records it
    /// appends get them as `approved_by`.
    pub(crate) fn set_approved_by(&mut self, admins: Vec<String>) {
        self.approved_by = Some(admins);
    }

    /// Appends audit records in this transaction (with `approved_by`, see
    /// [`Tx::set_approved_by`]).
    pub(crate) async fn audit(&mut self, mut records: Vec<Record>) -> Result<(), StoreError> {
        if let Some(admins) = &self.approved_by {
            for r in &mut records {
                let mut detail: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&r.detail).unwrap_or_default();
                detail.insert("approved_by".into(), serde_json::json!(admins));
                r.detail = serde_json::Value::Object(detail).to_string();
            }
        }
        self.audit_head = Some(append_in_tx(&mut self.tx, records).await?);
        Ok(())
    }

    /// Whether any row of an authenticated table is still authenticated under a generation
    /// older than `generation` (read under the state row's lock: no write moves it meanwhile).
    pub(crate) async fn authenticated_before(&mut self, generation: u64) -> Result<bool, StoreError> {
        let g = i64::try_from(generation).unwrap_or(i64::MAX);
        for table in Table::ALL {
            let sql = format!(
                "SELECT 1 AS one FROM {} WHERE row_generation < $1 LIMIT 1",
                table.name()
            );
            if sqlx::query(&sql).bind(g).fetch_optional(&mut *self.tx).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes the state log entries and the state row, and commits. Without any authenticated
    /// write, nothing of the state moves.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        if self.entries.is_empty() && self.start.version > 0 {
            self.tx.commit().await?;
            if let Some(h) = self.audit_head {
                self.store.integrity.wrote_audit(h);
            }
            return Ok(());
        }
        let mut head = self.start;
        let mut logged = Vec::with_capacity(self.entries.len());
        for (table, key, op, digest) in std::mem::take(&mut self.entries) {
            let entry = StateEntry {
                seq: head.seq + 1,
                version: self.version,
                table: table.name().to_owned(),
                key,
                op,
                digest,
            };
            let hash = state_entry_hash(&head.hash, &entry);
            logged.push((entry, head.hash, hash));
            head.seq += 1;
            head.hash = hash;
        }
        head.version = self.version;
        for chunk in logged.chunks(100) {
            let sql = format!(
                "INSERT INTO state_log (seq, version, tbl, row_key, op, row_digest, prev_hash, hash) VALUES {}",
                row::values_params(chunk.len(), 8)
            );
            let mut q = sqlx::query(&sql);
            for (e, prev, hash) in chunk {
                q = q
                    .bind(e.seq)
                    .bind(e.version)
                    .bind(e.table.clone())
                    .bind(e.key.clone())
                    .bind(e.op.as_str())
                    .bind(e.digest.map(|d| d.to_vec()))
                    .bind(prev.to_vec())
                    .bind(hash.to_vec());
            }
            q.execute(&mut *self.tx).await?;
        }
        let (generation, key) = self.ring.newest();
        let mac = key
            .tag(&row::encoding(
                "integrity_state",
                &STATE_COLUMNS,
                &state_values(&head),
                0,
            ))
            .to_vec();
        sqlx::query(
            "UPDATE integrity_state SET version = $1, log_seq = $2, log_hash = $3, row_generation = $4, row_mac = $5 WHERE id = 1",
        )
        .bind(head.version)
        .bind(head.seq)
        .bind(head.hash.to_vec())
        .bind(i64::try_from(generation).unwrap_or(i64::MAX))
        .bind(mac)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        if let Some(h) = self.audit_head {
            self.store.integrity.wrote_audit(h);
        }
        // The view follows this commit, unless a catch-up that replayed it from the log (this
        // transaction no longer holds the state row's lock, nor ever the catch-up lock) moved
        // the view on already.
        #[cfg(test)]
        let _gate = self.store.integrity.hooks.commit_gate.read().await;
        let mut v = write(&self.store.integrity.view);
        if v.head == self.start && (v.loaded || self.start.seq == 0) {
            for (k, seen) in self.written.drain() {
                v.apply(k, seen);
            }
            v.head = head;
            v.loaded = true;
        }
        Ok(())
    }
}

/// Re-authenticates `old` (verified under its generation) under the newest key without changing
/// its version (a root rotation moves rows to the next generation's key; content and version
/// stay). `false` if the row changed meanwhile.
pub(crate) async fn reauthenticate<T: Row>(
    conn: &mut AnyConnection,
    ring: &KeyRing,
    old: &Stored<T>,
) -> Result<bool, StoreError> {
    let values = old.row.to_values();
    let (generation, key) = ring.newest();
    if old.generation == generation {
        return Ok(true);
    }
    let mac = key
        .tag(&row::encoding(T::TABLE.name(), T::COLUMNS, &values, old.version))
        .to_vec();
    let sql = format!(
        "UPDATE {} SET row_generation = $1, row_mac = $2 {} AND row_version = ${} AND row_mac = ${}",
        T::TABLE.name(),
        row::key_where::<T>(3),
        3 + T::KEY,
        4 + T::KEY
    );
    let mut q = sqlx::query(&sql)
        .bind(i64::try_from(generation).unwrap_or(i64::MAX))
        .bind(mac);
    for v in &values[..T::KEY] {
        q = row::bind(q, v);
    }
    let n = q
        .bind(old.version)
        .bind(old.mac.clone())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(n == 1)
}
