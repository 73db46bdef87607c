//! SQL of the attested release: challenges, the hardware registry, TPM enrolment attempts, TPM
//! clocks, token signing keys and release policy versions. Challenges (`attestation_nonces`)
//! are not authenticated: a nonce row someone else writes is useless without evidence that binds
//! it, from a workload holding the calling principal's mTLS key (docs/threat-model.md).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use kms_core::audit::Record;
use kms_core::integrity::Value;
use sqlx::Row as _;

use super::row::{self, Row};
use super::tables::{
    HardwareRow, HardwareStatus, KeyRow, ReleasePolicyRow, TokenKeyRow, TpmClockRow, TpmEnrollmentRow,
};
use super::{
    g, require_generation, Backend, Listing, QuorumClose, Refusal, Store, StoreError, Stored, Tx, Violation,
    ViolationKind,
};

/// What consuming a challenge nonce found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChallengeUse {
    /// Issued, unexpired, unused: now used.
    Fresh,
    /// Never issued by this service (or purged long ago).
    Unknown,
    /// Issued but expired.
    Expired,
    /// Already used.
    Replayed,
}

/// Which identity column to look a machine up by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// SNP chip id (hex).
    SnpChipId,
    /// TPM AK name (hex).
    TpmAkName,
    /// TPM EK digest (hex).
    TpmEkDigest,
}

impl Identity {
    /// The registry's column.
    pub fn column(self) -> &'static str {
        match self {
            Self::SnpChipId => "snp_chip_id",
            Self::TpmAkName => "tpm_ak_name",
            Self::TpmEkDigest => "tpm_ek_digest",
        }
    }
}

impl Store {
    // ----- release policies ------------------------------------------------------------------

    /// Replaces the release policy of a key that is not destroyed, as the next policy version,
    /// with its audit record. `None` if no such key or it is destroyed.
    pub async fn set_release_policy(
        &self,
        id: kms_core::ids::KeyId,
        policy: &kms_core::policy::ReleasePolicy,
        now: i64,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<Option<KeyRow>, StoreError> {
        let mut tx = self.begin_write(close).await?;
        let Some(old) = tx.get::<KeyRow>(&[Value::text(id.to_string())]).await? else {
            return Ok(None);
        };
        if old.state == kms_core::key::KeyState::Destroyed {
            return Ok(None);
        }
        let mut key = old.row.clone();
        key.release_policy = policy.clone();
        key.release_policy_version = old
            .release_policy_version
            .checked_add(1)
            .ok_or(Refusal::VersionOverflow)?;
        key.updated_unix_ms = now;
        tx.update(&old, &key).await?;
        tx.insert(&ReleasePolicyRow {
            key_id: id,
            version: key.release_policy_version,
            document: policy.to_json(),
            set_unix_ms: now,
            set_by: record.caller.clone(),
        })
        .await?;
        tx.audit(vec![record]).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    // ----- challenges ------------------------------------------------------------------------

    /// How many challenges issued to `principal` are still open (unused, unexpired).
    pub async fn open_challenges(&self, principal: &str, now: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM attestation_nonces WHERE principal = $1 AND expires_unix_ms > $2 AND used_unix_ms IS NULL",
        )
        .bind(principal)
        .bind(now)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?)
    }

    /// Records a challenge issued to `principal`.
    pub async fn insert_challenge(
        &self,
        nonce: &[u8],
        principal: &str,
        expires_unix_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO attestation_nonces (nonce, principal, expires_unix_ms) VALUES ($1, $2, $3)")
            .bind(nonce)
            .bind(principal)
            .bind(expires_unix_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Uses a challenge issued to `principal`: one conditional UPDATE, so of any number of
    /// concurrent callers on any replicas exactly one gets `Fresh`. Another principal's nonce is
    /// `Unknown` to this one (and stays usable by its owner).
    ///
    /// On PostgreSQL the UPDATE commits without waiting for its WAL to reach the disk
    /// (`synchronous_commit` off for this statement's transaction alone): the nonce is used for
    /// every session, on every replica, from its commit on, and the only thing a database crash
    /// can undo is a use that no caller was told succeeded. A token is answered only after its
    /// audit record's commit, which waits for the WAL up to that record, and PostgreSQL's WAL is
    /// one sequence: the use, committed before, is on disk by then. What a crash can give back is
    /// a nonce whose attempt failed (or whose answer was never sent), until the nonce expires.
    /// This saves a disk flush per Attest (docs/performance.md).
    pub async fn consume_challenge(&self, nonce: &[u8], principal: &str, now: i64) -> Result<ChallengeUse, StoreError> {
        let used = match self.backend {
            Backend::Postgres => {
                // A data-modifying WITH runs exactly once, whatever the outer query reads;
                // set_config(…, true) lasts until this statement's implicit transaction ends,
                // after its commit record is written (as SET LOCAL does).
                let r = sqlx::query(
                    "WITH used AS (UPDATE attestation_nonces SET used_unix_ms = $2 WHERE nonce = $1 AND principal = $3 AND used_unix_ms IS NULL AND expires_unix_ms > $2 RETURNING 1) \
                     SELECT COUNT(*) AS n, set_config('synchronous_commit', 'off', true) AS commit_mode FROM used",
                )
                .bind(nonce)
                .bind(now)
                .bind(principal)
                .fetch_one(&self.pool)
                .await?;
                u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0)
            }
            Backend::Sqlite => sqlx::query(
                "UPDATE attestation_nonces SET used_unix_ms = $2 WHERE nonce = $1 AND principal = $3 AND used_unix_ms IS NULL AND expires_unix_ms > $2",
            )
            .bind(nonce)
            .bind(now)
            .bind(principal)
            .execute(&self.pool)
            .await?
            .rows_affected(),
        };
        self.challenge_use(used, nonce, principal).await
    }

    /// What a use that changed `used` rows means: `Fresh` for one, else why the nonce was not
    /// usable (one more read).
    async fn challenge_use(&self, used: u64, nonce: &[u8], principal: &str) -> Result<ChallengeUse, StoreError> {
        if used == 1 {
            return Ok(ChallengeUse::Fresh);
        }
        let row = sqlx::query(
            "SELECT expires_unix_ms, used_unix_ms FROM attestation_nonces WHERE nonce = $1 AND principal = $2",
        )
        .bind(nonce)
        .bind(principal)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => ChallengeUse::Unknown,
            Some(r) if r.try_get::<Option<i64>, _>("used_unix_ms")?.is_some() => ChallengeUse::Replayed,
            Some(_) => ChallengeUse::Expired,
        })
    }

    /// [`Store::consume_challenge`], and the registry entry for an SNP chip id as
    /// [`Store::hardware_by_identity`] reads it, in one statement on PostgreSQL (one round trip
    /// and one pool checkout where there were two; in turn on SQLite). For Attest, which reads
    /// the entry by the chip id its report claims before the report's signature is verified and
    /// must not act on the entry unless it verifies. The entry's read is `Err` on its own (a row
    /// that does not verify), so that the nonce's use is known either way.
    pub async fn consume_challenge_reading_hardware(
        &self,
        nonce: &[u8],
        principal: &str,
        now: i64,
        chip_id_hex: &str,
    ) -> Result<(ChallengeUse, Result<Option<HardwareRow>, StoreError>), StoreError> {
        if self.backend == Backend::Sqlite {
            let used = self.consume_challenge(nonce, principal, now).await?;
            return Ok((used, self.hardware_by_identity(Identity::SnpChipId, chip_id_hex).await));
        }
        // The registry is outer-joined to the use's one-row count, so there is a row when no
        // entry names the chip; the SELECT reads the snapshot from before the UPDATE, which
        // does not touch the registry. Durability as in consume_challenge.
        // Built once: the column list is fixed.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH used AS (UPDATE attestation_nonces SET used_unix_ms = $2 WHERE nonce = $1 AND principal = $3 AND used_unix_ms IS NULL AND expires_unix_ms > $2 RETURNING 1), \
                 n AS (SELECT COUNT(*) AS n, set_config('synchronous_commit', 'off', true) AS commit_mode FROM used) \
                 SELECT n.n, {} FROM n LEFT JOIN {} AS h ON h.snp_chip_id = $4",
                row::select_list_as::<HardwareRow>("h"),
                HardwareRow::TABLE.name(),
            )
        });
        let read_at = self.integrity.read_at();
        let rows = sqlx::query(SQL.as_str())
            .bind(nonce)
            .bind(now)
            .bind(principal)
            .bind(chip_id_hex)
            .fetch_all(&self.pool)
            .await?;
        let used = match rows.first() {
            Some(r) => u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
            None => 0,
        };
        let used = self.challenge_use(used, nonce, principal).await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut returned = std::collections::HashSet::with_capacity(rows.len());
        for r in &rows {
            if !row::present_as::<HardwareRow>(r, "h_")? {
                continue;
            }
            match self.integrity.verify_as::<HardwareRow>(self, r, "h_", read_at).await {
                // A copy of a genuine entry is one entry (see Store::fetch).
                Ok(Some(s)) if !returned.insert(s.row.key()) => {
                    entries.push(Err(self.integrity.copied::<HardwareRow>(&s.row.key())))
                }
                // The entry must name the chip itself (see hardware_by_identity).
                Ok(Some(s)) if s.snp_chip_id.as_deref() == Some(chip_id_hex) => entries.push(Ok(s)),
                Ok(Some(s)) => entries.push(Err(self.integrity.substituted(&s, "h.snp_chip_id = $4"))),
                // Read before this process learned of a newer version: read the registry again
                // on its own (the nonce's use is done).
                Ok(None) => return Ok((used, self.hardware_by_identity(Identity::SnpChipId, chip_id_hex).await)),
                Err(e @ (StoreError::Integrity(_) | StoreError::Rollback(_))) => entries.push(Err(e)),
                Err(e) => return Ok((used, Err(e))),
            }
        }
        let entry = self
            .integrity
            .check_alarm()
            .and_then(|()| self.best_entry(entries, Identity::SnpChipId.column(), chip_id_hex));
        Ok((used, entry))
    }

    /// Forgets challenges and TPM enrolment attempts that expired before `before`, but not the
    /// attempts in `keep` (those a pending enrolment proposal names: its approvals may take the
    /// proposal's lifetime). The attempts go in one transaction, recorded in the state log as
    /// deletions.
    pub async fn purge_attestation(&self, before: i64, keep: &BTreeSet<String>) -> Result<u64, StoreError> {
        let a = sqlx::query("DELETE FROM attestation_nonces WHERE expires_unix_ms < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let expired = |rows: &[Stored<TpmEnrollmentRow>]| rows.iter().any(|r| !keep.contains(&r.id));
        if !expired(
            &self
                .all::<TpmEnrollmentRow>("WHERE expires_unix_ms < $1", &[Value::int(before)], |e| {
                    e.expires_unix_ms < before
                })
                .await?,
        ) {
            return Ok(a);
        }
        let mut tx = Tx::begin(self).await?;
        let rows = tx
            .all::<TpmEnrollmentRow>("WHERE expires_unix_ms < $1", &[Value::int(before)], |e| {
                e.expires_unix_ms < before
            })
            .await?;
        let mut b = 0;
        for e in rows.iter().filter(|r| !keep.contains(&r.id)) {
            tx.delete(e).await?;
            b += 1;
        }
        tx.commit().await?;
        Ok(a + b)
    }

    // ----- hardware registry -----------------------------------------------------------------

    /// Enrols a machine with its audit record. `Conflict` if one of its identities is already
    /// active in another entry.
    ///
    /// That no identity is active twice is checked here, against the whole registry read and
    /// verified as the state log knows it ([`Tx::every`]), not only by the database's partial
    /// unique indexes: with those dropped, a second entry for an enrolled chip (another country,
    /// another policy) would otherwise be enrolled, and which of the two a lookup finds would be
    /// the database's choice. The read takes a verification per entry; enrolments are rare and
    /// quorum-approved.
    /// With `tpm_enrollment`, the credential-activation attempt is claimed (marked used) in the
    /// same transaction: refused if it was used meanwhile. Its expiry was checked when the
    /// enrolment was proposed (the approvals that follow have the proposal's lifetime).
    pub async fn insert_hardware(
        &self,
        h: &HardwareRow,
        tpm_enrollment: Option<&str>,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write(close).await?;
        if let Some(attempt) = tpm_enrollment {
            match tx.get::<TpmEnrollmentRow>(&[Value::text(attempt)]).await? {
                Some(a) if a.used_unix_ms.is_none() => {
                    let mut used = a.row.clone();
                    used.used_unix_ms = Some(h.enrolled_unix_ms);
                    tx.update(&a, &used).await?;
                }
                _ => return Err(Refusal::TpmEnrollmentUsed.into()),
            }
        }
        for s in tx.every::<HardwareRow>().await? {
            if s.status == HardwareStatus::Active && s.identities().any(|i| h.identities().any(|j| i == j)) {
                return Err(StoreError::Conflict);
            }
        }
        tx.insert(h).await?;
        tx.audit(vec![record]).await?;
        tx.commit().await
    }

    /// A registry entry by id.
    pub async fn hardware(&self, id: &str) -> Result<Option<HardwareRow>, StoreError> {
        Ok(self.get::<HardwareRow>(&[Value::text(id)]).await?.map(|s| s.row))
    }

    /// The entry for an SNP chip id (hex), a TPM AK name or an EK digest (hex): the active one if
    /// there is one, else the most recently revoked one (so a refusal can say "revoked"). Only
    /// rows that verify are considered; if only rows that do not verify name the identity, their
    /// refusal is the answer.
    pub async fn hardware_by_identity(
        &self,
        identity: Identity,
        value: &str,
    ) -> Result<Option<HardwareRow>, StoreError> {
        let column = identity.column();
        // The entry must name the identity itself: an entry the database returns for a lookup
        // of another chip is refused (`row_substituted`), not taken as that chip's enrolment.
        let rows = self
            .fetch::<HardwareRow>(&format!("WHERE {column} = $1"), &[Value::text(value)], |h| {
                h.identities().any(|(i, v)| i == identity && v == value)
            })
            .await?;
        self.best_entry(rows, column, value)
    }

    /// Of the entries a lookup of `column` = `value` read: the active one, else the newest
    /// revoked one, else the refusal of one that did not verify. Two genuine active entries
    /// with the identity (the partial unique index dropped, and a second enrolment slipped in
    /// before [`Store::insert_hardware`] checked the registry) are refused, so which machine an
    /// identity means is never the database's choice.
    fn best_entry(
        &self,
        rows: Vec<Result<Stored<HardwareRow>, StoreError>>,
        column: &str,
        value: &str,
    ) -> Result<Option<HardwareRow>, StoreError> {
        let mut best: Option<HardwareRow> = None;
        let mut active = 0;
        let mut refused = None;
        for r in rows {
            match r {
                Ok(s) => {
                    if s.status == HardwareStatus::Active {
                        active += 1;
                        if active > 1 {
                            return Err(self.integrity.ambiguous(
                                &s.row,
                                format!(
                                    "{active} active registry entries kmsd wrote have {column} {value}, which only one may have (the database's unique index on it was dropped): the machine is not trusted until all but one are revoked"
                                ),
                            ));
                        }
                    }
                    let better = match &best {
                        None => true,
                        Some(b) => {
                            (s.status == HardwareStatus::Active && b.status != HardwareStatus::Active)
                                || (s.status == b.status && s.enrolled_unix_ms > b.enrolled_unix_ms)
                        }
                    };
                    if better {
                        best = Some(s.row);
                    }
                }
                Err(e) => refused = Some(e),
            }
        }
        match (best, refused) {
            (Some(h), _) => Ok(Some(h)),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }

    /// For the scan: each machine identity that more than one active entry kmsd wrote holds
    /// (the partial unique indexes dropped, and a second entry enrolled before
    /// [`Store::insert_hardware`] checked the whole registry), one violation per entry after
    /// the first. Lookups of such an identity refuse it already; the scan reports it even if
    /// nothing looks it up.
    pub(crate) async fn identities_active_twice(&self) -> Result<Vec<Violation>, StoreError> {
        let active = self
            .all::<HardwareRow>("WHERE status = 'active'", &[], |h| h.status == HardwareStatus::Active)
            .await?;
        let mut holders: std::collections::BTreeMap<(&'static str, &str), Vec<&HardwareRow>> =
            std::collections::BTreeMap::new();
        for h in &active {
            for (identity, value) in h.identities() {
                holders.entry((identity.column(), value)).or_default().push(&h.row);
            }
        }
        Ok(holders
            .into_iter()
            .filter(|(_, entries)| entries.len() > 1)
            .flat_map(|((column, value), entries)| {
                let first = entries[0].id.clone();
                entries.into_iter().skip(1).map(move |h| Violation {
                    table: HardwareRow::TABLE.name(),
                    key: h.key(),
                    kind: ViolationKind::Integrity,
                    detail: format!(
                        "active like entry {first} with {column} {value}, which only one active entry may have (the database's unique index on it was dropped)"
                    ),
                })
            })
            .collect())
    }

    /// A page of the registry (see [`Store::page`]).
    pub async fn list_hardware(&self, after: &str, size: u32) -> Result<Listing<HardwareRow>, StoreError> {
        self.page("", &[], row::every, after, size).await
    }

    /// Revokes an active entry with its audit record. `None` if there is no active entry with
    /// that id.
    pub async fn revoke_hardware(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
        record: Record,
    ) -> Result<Option<HardwareRow>, StoreError> {
        let mut tx = Tx::begin(self).await?;
        let Some(old) = tx.get::<HardwareRow>(&[Value::text(id)]).await? else {
            return Ok(None);
        };
        if old.status != HardwareStatus::Active {
            return Ok(None);
        }
        let mut h = old.row.clone();
        h.status = HardwareStatus::Revoked;
        h.revoked_unix_ms = Some(now);
        h.revoked_by = Some(by.to_owned());
        h.revocation_reason = Some(reason.to_owned());
        tx.update(&old, &h).await?;
        tx.audit(vec![record]).await?;
        tx.commit().await?;
        Ok(Some(h))
    }

    /// The release decision's inputs: the machine's registry entry and the key's current row,
    /// read fresh (so a revocation or policy change on any replica applies to the very next
    /// call) in one query, and each verified as [`Store::hardware`] and [`Store::key_by_id`]
    /// verify it.
    pub async fn release_inputs(
        &self,
        hardware_id: &str,
        key_id: kms_core::ids::KeyId,
    ) -> Result<(Option<HardwareRow>, Option<KeyRow>), StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(super::pair_sql::<HardwareRow, KeyRow>);
        let (hw, key) = self
            .get_pair::<HardwareRow, KeyRow>(&SQL, &[Value::text(hardware_id)], &[Value::text(key_id.to_string())])
            .await?;
        Ok((hw.map(|s| s.row), key.map(|s| s.row)))
    }

    // ----- TPM enrolment ---------------------------------------------------------------------

    /// How many credential-activation attempts `principal` has open (unused, unexpired).
    pub async fn open_tpm_enrollments(&self, principal: &str, now: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM tpm_enrollments WHERE requested_by = $1 AND expires_unix_ms > $2 AND used_unix_ms IS NULL",
        )
        .bind(principal)
        .bind(now)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?)
    }

    /// Records a credential-activation attempt.
    pub async fn insert_tpm_enrollment(&self, e: &TpmEnrollmentRow) -> Result<(), StoreError> {
        let mut tx = Tx::begin(self).await?;
        tx.insert(e).await?;
        tx.commit().await
    }

    /// An attempt that can still complete (unused, unexpired). `Err(why)` names why it cannot:
    /// unknown, expired or already used. It is claimed (marked used, once, on any replica) by
    /// [`Store::insert_hardware`] in the enrolment's transaction.
    /// With `now = None` the expiry is not checked (an enrolment proposed in time and
    /// approved later).
    pub async fn tpm_enrollment(
        &self,
        id: &str,
        now: Option<i64>,
    ) -> Result<Result<TpmEnrollmentRow, ChallengeUse>, StoreError> {
        let Some(row) = self.get::<TpmEnrollmentRow>(&[Value::text(id)]).await? else {
            return Ok(Err(ChallengeUse::Unknown));
        };
        if row.used_unix_ms.is_some() {
            return Ok(Err(ChallengeUse::Replayed));
        }
        if row.expires_unix_ms <= now.unwrap_or(i64::MIN) {
            return Ok(Err(ChallengeUse::Expired));
        }
        Ok(Ok(row.row))
    }

    /// Marks an attempt used after a wrong answer, so a credential challenge gets one try.
    pub async fn burn_tpm_enrollment(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = Tx::begin(self).await?;
        if let Some(a) = tx.get::<TpmEnrollmentRow>(&[Value::text(id)]).await? {
            if a.used_unix_ms.is_none() {
                let mut used = a.row.clone();
                used.used_unix_ms = Some(now);
                tx.update(&a, &used).await?;
            }
        }
        tx.commit().await
    }

    // ----- TPM clocks ------------------------------------------------------------------------

    /// The newest clock recorded for an AK (authenticated; not tracked by the state log).
    pub(crate) async fn tpm_clock(&self, ak_name: &str) -> Result<Option<Stored<TpmClockRow>>, StoreError> {
        self.get::<TpmClockRow>(&[Value::text(ak_name)]).await
    }

    /// Records a newer clock for an AK if the stored one is still `previous` (compare and swap,
    /// so two replicas cannot both move it from the same value). `false` if it changed meanwhile.
    pub(crate) async fn advance_tpm_clock(
        &self,
        previous: Option<&Stored<TpmClockRow>>,
        next: &TpmClockRow,
    ) -> Result<bool, StoreError> {
        match self.put_untracked(previous, next).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ----- token keys ------------------------------------------------------------------------

    /// Every token signing key that verifies, oldest first.
    pub async fn token_keys(&self) -> Result<Vec<TokenKeyRow>, StoreError> {
        Ok(self
            .all::<TokenKeyRow>("ORDER BY version", &[], row::every)
            .await?
            .into_iter()
            .map(|s| s.row)
            .collect())
    }

    /// Adds a token signing key; `false` if another replica added that version first.
    pub async fn insert_token_key(&self, k: &TokenKeyRow) -> Result<bool, StoreError> {
        let mut tx = Tx::begin(self).await?;
        require_generation(&mut tx, k.root_generation).await?;
        if tx.get::<TokenKeyRow>(&[Value::int(k.version)]).await?.is_some() {
            return Ok(false);
        }
        match tx.insert(k).await {
            Ok(()) => {
                tx.commit().await?;
                Ok(true)
            }
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ----- untracked rows --------------------------------------------------------------------

    /// Writes an authenticated row of a table the state log does not track (a TPM clock, a
    /// replica heartbeat): inserted if `previous` is `None`, else replacing `previous` only if it
    /// is still what is stored (`Conflict` if not). Takes no state lock.
    pub(crate) async fn put_untracked<T: Row>(&self, previous: Option<&Stored<T>>, next: &T) -> Result<(), StoreError> {
        debug_assert!(!T::TABLE.tracked());
        let values = next.to_values();
        let (generation, mac) = self.integrity.untracked_authenticator::<T>(&values)?;
        match previous {
            None => {
                let sql = row::insert_sql::<T>();
                let mut q = sqlx::query(&sql);
                for v in &values {
                    q = row::bind(q, v);
                }
                q.bind(0i64).bind(g(generation)).bind(mac).execute(&self.pool).await?;
            }
            Some(old) => {
                let n = T::COLUMNS.len() - T::KEY;
                let sets: Vec<String> = T::COLUMNS[T::KEY..]
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{} = ${}", c.name, i + 1))
                    .collect();
                let sql = format!(
                    "UPDATE {} SET {}, row_generation = ${}, row_mac = ${} {} AND row_mac = ${}",
                    T::TABLE.name(),
                    sets.join(", "),
                    n + 1,
                    n + 2,
                    row::key_where::<T>(n + 3),
                    n + 3 + T::KEY
                );
                let mut q = sqlx::query(&sql);
                for v in &values[T::KEY..] {
                    q = row::bind(q, v);
                }
                q = q.bind(g(generation)).bind(mac);
                for v in &values[..T::KEY] {
                    q = row::bind(q, v);
                }
                if q.bind(old.mac.clone()).execute(&self.pool).await?.rows_affected() != 1 {
                    return Err(StoreError::Conflict);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use kms_core::ids::{KeyId, KeyName, KeyVersion};
    use kms_core::key::KeyState;
    use kms_core::policy::{AccessPolicy, ReleasePolicy};

    use super::*;

    fn record(operation: &str) -> Record {
        crate::storage::test_record(0, operation)
    }

    fn key() -> KeyRow {
        KeyRow {
            id: KeyId::from_bytes([7; 16]),
            name: KeyName::parse("payroll").unwrap(),
            description: String::new(),
            tags: BTreeMap::new(),
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

    async fn sql(store: &Store, sql: &str) {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }

    /// The release inputs come from one query of both tables; each row is verified as a read of
    /// its own table verifies it: as written, it is the answer; absent, `None`; changed in the
    /// database, an integrity error; deleted after kmsd wrote it, a rollback. On SQLite and on
    /// PostgreSQL.
    #[tokio::test]
    async fn release_inputs_verify_each_row_as_a_read_of_its_table_does() {
        let (stores, _dir) = crate::storage::test_stores().await;
        for store in &stores {
            let (hw, k) = (HardwareRow::example(), key());
            let backend = store.backend();
            store
                .insert_hardware(&hw, None, None, record("admin.enroll_hardware"))
                .await
                .unwrap();
            store
                .create_key(&k, &[1; 60], 1, record("admin.create_key"))
                .await
                .unwrap();
            let both = store.release_inputs(&hw.id, k.id).await.unwrap();
            assert_eq!(both, (Some(hw.clone()), Some(k.clone())), "{backend:?}");
            assert_eq!(
                both,
                (
                    store.hardware(&hw.id).await.unwrap(),
                    store.key_by_id(k.id).await.unwrap()
                )
            );
            let other = KeyId::from_bytes([8; 16]);
            assert_eq!(
                store.release_inputs("hw-unknown", other).await.unwrap(),
                (None, None),
                "{backend:?}"
            );
            assert_eq!(
                store.release_inputs(&hw.id, other).await.unwrap(),
                (Some(hw.clone()), None)
            );

            // A column of either row changed by someone else.
            sql(store, "CREATE TABLE hw_kept AS SELECT * FROM hardware").await;
            sql(store, "CREATE TABLE keys_kept AS SELECT * FROM keys").await;
            sql(store, "UPDATE hardware SET country = 'US'").await;
            let e = store.release_inputs(&hw.id, k.id).await.unwrap_err();
            assert!(
                matches!(&e, StoreError::Integrity(v) if v.table == "hardware"),
                "{backend:?}: {e}"
            );
            sql(store, "DELETE FROM hardware").await;
            sql(store, "INSERT INTO hardware SELECT * FROM hw_kept").await;
            sql(
                store,
                r#"UPDATE keys SET release_policy = '{"version":1,"attestation":"none"}'"#,
            )
            .await;
            let e = store.release_inputs(&hw.id, k.id).await.unwrap_err();
            assert!(
                matches!(&e, StoreError::Integrity(v) if v.table == "keys"),
                "{backend:?}: {e}"
            );
            sql(
                store,
                "UPDATE keys SET release_policy = (SELECT release_policy FROM keys_kept)",
            )
            .await;
            assert_eq!(
                store.release_inputs(&hw.id, k.id).await.unwrap(),
                (Some(hw.clone()), Some(k.clone()))
            );

            // Either row deleted: kmsd wrote it, so it is a rollback, not an unknown machine or key.
            sql(store, "DELETE FROM hardware").await;
            let e = store.release_inputs(&hw.id, k.id).await.unwrap_err();
            assert!(
                matches!(&e, StoreError::Rollback(v) if v.table == "hardware"),
                "{backend:?}: {e}"
            );
            sql(store, "INSERT INTO hardware SELECT * FROM hw_kept").await;
            sql(store, "DELETE FROM key_versions").await;
            sql(store, "DELETE FROM release_policies").await;
            sql(store, "DELETE FROM keys").await;
            let e = store.release_inputs(&hw.id, k.id).await.unwrap_err();
            assert!(
                matches!(&e, StoreError::Rollback(v) if v.table == "keys"),
                "{backend:?}: {e}"
            );
        }
    }

    /// On PostgreSQL the operator can redefine `=` on text for kmsd's connections (an operator
    /// in `public`, searched before `pg_catalog`): a lookup of an unknown chip id or machine id
    /// then returns an enrolled machine's genuine row. Every read refuses it as
    /// `row_substituted`, the attest path's combined read included.
    #[tokio::test]
    async fn a_row_returned_for_another_identity_is_refused_on_postgresql() {
        use sqlx::Connection as _;
        let Some(url) = crate::storage::fresh_postgres_database().await else {
            return;
        };
        let (hw, k) = (HardwareRow::example(), key());
        let chip = hw.snp_chip_id.clone().unwrap();
        let (stranger_chip, stranger_id) = ("ef".repeat(64), "hw-stranger");
        // kmsd's schema first (its partial indexes need the real `=`), then the rigging, then a
        // replica whose connections all have it.
        let (writer, integrity_key) = crate::storage::test_store_keyed(&url).await;
        writer
            .insert_hardware(&hw, None, None, record("admin.enroll_hardware"))
            .await
            .unwrap();
        writer
            .create_key(&k, &[1; 60], 1, record("admin.create_key"))
            .await
            .unwrap();
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        for sql in [
            "CREATE TABLE public.rigged (asked TEXT PRIMARY KEY, answer TEXT NOT NULL)".to_owned(),
            "CREATE FUNCTION public.rigged_eq(l TEXT, r TEXT) RETURNS BOOLEAN LANGUAGE plpgsql STABLE AS $$ \
             DECLARE a TEXT; BEGIN \
             SELECT answer INTO a FROM public.rigged WHERE asked OPERATOR(pg_catalog.=) r; \
             IF FOUND THEN RETURN l OPERATOR(pg_catalog.=) a; END IF; \
             RETURN l OPERATOR(pg_catalog.=) r; END $$"
                .to_owned(),
            "CREATE OPERATOR public.= (LEFTARG = TEXT, RIGHTARG = TEXT, FUNCTION = public.rigged_eq)".to_owned(),
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = public, pg_catalog', current_database()); END $$"
                .to_owned(),
            format!("INSERT INTO public.rigged VALUES ('{stranger_chip}', '{chip}'), ('{stranger_id}', '{}')", hw.id),
        ] {
            sqlx::query(&sql).execute(&mut c).await.unwrap();
        }
        c.close().await.unwrap();
        let store = crate::storage::test_process(&url, &integrity_key).await;
        // The rigging works: the database answers for the stranger with the enrolled machine.
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hardware WHERE snp_chip_id = $1")
            .bind(&stranger_chip)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(n, 1);
        let substituted = |e: StoreError| {
            assert!(
                matches!(&e, StoreError::Integrity(v) if v.kind == ViolationKind::Substituted && v.table == "hardware"),
                "{e:?}"
            );
        };
        substituted(
            store
                .hardware_by_identity(Identity::SnpChipId, &stranger_chip)
                .await
                .unwrap_err(),
        );
        substituted(store.hardware(stranger_id).await.unwrap_err());
        substituted(store.release_inputs(stranger_id, k.id).await.unwrap_err());
        let nonce = [9u8; 32];
        store.insert_challenge(&nonce, "app", i64::MAX).await.unwrap();
        let (used, entry) = store
            .consume_challenge_reading_hardware(&nonce, "app", 1, &stranger_chip)
            .await
            .unwrap();
        assert_eq!(used, ChallengeUse::Fresh);
        substituted(entry.unwrap_err());
        // Asked for as they are, the rows are served.
        assert_eq!(
            store.hardware_by_identity(Identity::SnpChipId, &chip).await.unwrap(),
            Some(hw.clone())
        );
        assert_eq!(store.release_inputs(&hw.id, k.id).await.unwrap(), (Some(hw), Some(k)));
    }

    /// A challenge is used once, by the principal it was issued to, before it expires; on
    /// SQLite and PostgreSQL, and on PostgreSQL also raced from two replicas. The PostgreSQL
    /// statement turns `synchronous_commit` off for its own transaction only: every connection
    /// of the pool still commits synchronously afterwards (the audit and state writes that
    /// follow on the same connections must wait for the disk).
    #[tokio::test]
    async fn a_challenge_is_used_once_by_its_principal_and_leaves_commits_synchronous() {
        let (stores, _dir) = crate::storage::test_stores().await;
        for store in &stores {
            let backend = store.backend();
            let now = 1_000_000;
            store.insert_challenge(&[1; 32], "alice", now + 1000).await.unwrap();
            store.insert_challenge(&[2; 32], "alice", now - 1).await.unwrap();
            let use_ =
                |nonce: u8, who: &'static str| async move { store.consume_challenge(&[nonce; 32], who, now).await };
            assert_eq!(use_(1, "bob").await.unwrap(), ChallengeUse::Unknown, "{backend:?}");
            assert_eq!(use_(1, "alice").await.unwrap(), ChallengeUse::Fresh, "{backend:?}");
            assert_eq!(use_(1, "alice").await.unwrap(), ChallengeUse::Replayed, "{backend:?}");
            assert_eq!(use_(2, "alice").await.unwrap(), ChallengeUse::Expired, "{backend:?}");
            assert_eq!(use_(3, "alice").await.unwrap(), ChallengeUse::Unknown, "{backend:?}");
            assert_eq!(store.open_challenges("alice", now).await.unwrap(), 0, "{backend:?}");
            if backend == Backend::Postgres {
                // Hold every connection the pool may have (4) and ask each.
                let mut held = Vec::new();
                for _ in 0..4 {
                    held.push(store.pool().acquire().await.unwrap());
                }
                for c in &mut held {
                    let mode: String = sqlx::query("SHOW synchronous_commit")
                        .fetch_one(&mut **c)
                        .await
                        .unwrap()
                        .try_get(0)
                        .unwrap();
                    assert_eq!(mode, "on");
                }
            }
        }
        let Some([a, b]) = crate::storage::test_replicas().await else {
            return;
        };
        for round in 0..20u8 {
            a.insert_challenge(&[round; 32], "alice", i64::MAX).await.unwrap();
            let uses: Vec<_> = (0..8)
                .map(|i| {
                    let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                    tokio::spawn(async move {
                        if i < 4 {
                            s.consume_challenge(&[round; 32], "alice", 1).await.unwrap()
                        } else {
                            s.consume_challenge_reading_hardware(&[round; 32], "alice", 1, "cd")
                                .await
                                .unwrap()
                                .0
                        }
                    })
                })
                .collect();
            let mut fresh = 0;
            for u in uses {
                match u.await.unwrap() {
                    ChallengeUse::Fresh => fresh += 1,
                    other => assert_eq!(other, ChallengeUse::Replayed),
                }
            }
            assert_eq!(fresh, 1, "round {round}");
        }
    }

    /// The nonce's use with the registry read (one statement on PostgreSQL) answers what the
    /// two calls made in turn answer: the use, and the entry chosen as `hardware_by_identity`
    /// chooses it; an entry changed in the database is an error of its own, after which the
    /// nonce is still used. On SQLite and PostgreSQL.
    #[tokio::test]
    async fn a_challenge_used_with_the_registry_read_answers_as_the_two_calls_do() {
        let (stores, _dir) = crate::storage::test_stores().await;
        for store in &stores {
            let backend = store.backend();
            let now = 1_000_000;
            for n in 1..=6u8 {
                store.insert_challenge(&[n; 32], "alice", now + 1000).await.unwrap();
            }
            let hw = HardwareRow::example();
            let chip = hw.snp_chip_id.clone().unwrap();
            let both = |nonce: u8, chip: String| async move {
                let (used, entry) = store
                    .consume_challenge_reading_hardware(&[nonce; 32], "alice", now, &chip)
                    .await
                    .unwrap();
                let alone = store.hardware_by_identity(Identity::SnpChipId, &chip).await;
                assert_eq!(
                    format!("{entry:?}"),
                    format!("{alone:?}"),
                    "{backend:?}: the entry read alone"
                );
                (used, entry)
            };
            let (used, entry) = both(1, chip.clone()).await;
            assert_eq!((used, entry.unwrap()), (ChallengeUse::Fresh, None), "{backend:?}");

            store
                .insert_hardware(&hw, None, None, record("admin.enroll_hardware"))
                .await
                .unwrap();
            let (used, entry) = both(2, chip.clone()).await;
            assert_eq!(
                (used, entry.unwrap()),
                (ChallengeUse::Fresh, Some(hw.clone())),
                "{backend:?}"
            );
            let (used, entry) = both(2, chip.clone()).await;
            assert_eq!(
                (used, entry.unwrap()),
                (ChallengeUse::Replayed, Some(hw.clone())),
                "{backend:?}"
            );
            let (used, entry) = both(9, "ee".repeat(64)).await;
            assert_eq!((used, entry.unwrap()), (ChallengeUse::Unknown, None), "{backend:?}");

            // Revoked and re-enrolled: the active entry of the two.
            let hw_revoked = store
                .revoke_hardware(&hw.id, "admin", "replaced", now, record("admin.revoke_hardware"))
                .await
                .unwrap()
                .unwrap();
            let mut again = HardwareRow::example();
            again.id = format!("hw-{}", "ef".repeat(16));
            again.enrolled_unix_ms = hw.enrolled_unix_ms - 1;
            store
                .insert_hardware(&again, None, None, record("admin.enroll_hardware"))
                .await
                .unwrap();
            let (used, entry) = both(3, chip.clone()).await;
            assert_eq!(
                (used, entry.unwrap()),
                (ChallengeUse::Fresh, Some(again.clone())),
                "{backend:?}"
            );

            // The operator changes one entry: the other is the answer, as alone.
            sql(
                store,
                &format!("UPDATE hardware SET country = 'US' WHERE id = '{}'", again.id),
            )
            .await;
            let (used, entry) = both(5, chip.clone()).await;
            assert_eq!(
                (used, entry.unwrap()),
                (ChallengeUse::Fresh, Some(hw_revoked.clone())),
                "{backend:?}"
            );
            // Both: the read is refused, and the nonce is used all the same.
            sql(store, "UPDATE hardware SET country = 'US'").await;
            let (used, entry) = both(4, chip.clone()).await;
            assert_eq!(used, ChallengeUse::Fresh, "{backend:?}");
            let e = entry.unwrap_err();
            assert!(
                matches!(&e, StoreError::Integrity(v) if v.table == "hardware"),
                "{backend:?}: {e}"
            );
            let (used, _) = both(4, chip.clone()).await;
            assert_eq!(used, ChallengeUse::Replayed, "{backend:?}");
        }
    }

    /// That a machine's identity (SNP chip id, TPM EK digest, TPM AK name) is active in one
    /// registry entry only is kmsd's own check, not only the database's partial unique
    /// indexes: with the indexes dropped (on SQLite and PostgreSQL), a second enrolment of an
    /// active identity is still refused; and two active entries kmsd wrote for one chip (put
    /// past the check here) make every lookup of the chip refuse, the attest path's combined
    /// read included, instead of answering with the one the database picks.
    #[tokio::test]
    async fn an_identity_is_active_in_one_entry_without_the_unique_indexes() {
        let (stores, _dir) = crate::storage::test_stores().await;
        for store in &stores {
            let backend = store.backend();
            for index in ["hardware_active_chip", "hardware_active_ek", "hardware_active_ak"] {
                sqlx::query(&format!("DROP INDEX {index}"))
                    .execute(store.pool())
                    .await
                    .unwrap();
            }
            let enrol = |h: HardwareRow| async move {
                store
                    .insert_hardware(&h, None, None, record("admin.enroll_hardware"))
                    .await
            };
            let hw = HardwareRow::example();
            let chip = hw.snp_chip_id.clone().unwrap();
            enrol(hw.clone()).await.unwrap();
            let mut elsewhere = HardwareRow::example();
            elsewhere.id = format!("hw-{}", "ef".repeat(16));
            elsewhere.country = "US".into();
            elsewhere.enrolled_unix_ms = 2;
            assert!(
                matches!(enrol(elsewhere.clone()).await, Err(StoreError::Conflict)),
                "{backend:?}: a chip enrolled twice"
            );
            // A TPM: its EK, and its AK, are each active once.
            let mut tpm = HardwareRow::example();
            tpm.id = format!("hw-{}", "01".repeat(16));
            tpm.kind = "tpm".into();
            tpm.snp_chip_id = None;
            tpm.tpm_ek_digest = Some("0e".repeat(32));
            tpm.tpm_ak_name = Some("000b".to_owned() + &"0a".repeat(32));
            enrol(tpm.clone()).await.unwrap();
            let mut same_ek = tpm.clone();
            same_ek.id = format!("hw-{}", "02".repeat(16));
            same_ek.tpm_ak_name = Some("000b".to_owned() + &"0b".repeat(32));
            let mut same_ak = tpm.clone();
            same_ak.id = format!("hw-{}", "03".repeat(16));
            same_ak.tpm_ek_digest = Some("0f".repeat(32));
            for (what, h) in [("EK", same_ek), ("AK", same_ak)] {
                assert!(
                    matches!(enrol(h).await, Err(StoreError::Conflict)),
                    "{backend:?}: a TPM {what} enrolled twice"
                );
            }
            // Revoked, the chip can be enrolled again.
            store
                .revoke_hardware(&hw.id, "admin", "moved", 3, record("admin.revoke_hardware"))
                .await
                .unwrap()
                .unwrap();
            enrol(elsewhere.clone()).await.unwrap();
            assert_eq!(
                store.hardware_by_identity(Identity::SnpChipId, &chip).await.unwrap(),
                Some(elsewhere.clone()),
                "{backend:?}"
            );
            // A second active entry for the chip, written past the check.
            let mut third = HardwareRow::example();
            third.id = format!("hw-{}", "04".repeat(16));
            third.enrolled_unix_ms = 4;
            let mut tx = store.begin_write(None).await.unwrap();
            tx.insert(&third).await.unwrap();
            tx.audit(vec![record("admin.enroll_hardware")]).await.unwrap();
            tx.commit().await.unwrap();
            let ambiguous = |e: StoreError| match e {
                StoreError::Integrity(v) => {
                    assert_eq!(v.table, "hardware", "{backend:?}");
                    assert!(
                        v.detail
                            .contains(&format!("2 active registry entries kmsd wrote have snp_chip_id {chip}")),
                        "{backend:?}: {v:?}"
                    );
                }
                other => panic!("{backend:?}: {other:?}"),
            };
            ambiguous(
                store
                    .hardware_by_identity(Identity::SnpChipId, &chip)
                    .await
                    .unwrap_err(),
            );
            store.insert_challenge(&[7; 32], "app", i64::MAX).await.unwrap();
            let (used, entry) = store
                .consume_challenge_reading_hardware(&[7; 32], "app", 5, &chip)
                .await
                .unwrap();
            assert_eq!(used, ChallengeUse::Fresh, "{backend:?}");
            ambiguous(entry.unwrap_err());
            // The scan reports the second entry, whether or not anything looks the chip up.
            let found = store.integrity().scan(store).await.unwrap();
            assert!(
                found
                    .iter()
                    .any(|v| v.table == "hardware" && v.detail.contains(&format!("with snp_chip_id {chip}"))),
                "{backend:?}: {found:?}"
            );
        }
    }
}
