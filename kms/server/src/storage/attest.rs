//! SQL of the attested release: challenges, the hardware registry, TPM enrolment attempts, TPM
//! clocks, token signing keys and release policy versions.

use kms_core::audit::Record;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{append_in_tx, key_row, KeyRow, QuorumClose, Store, StoreError, KEY_COLUMNS};
use crate::error::ApiError;

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

/// A registry entry's status.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HardwareStatus {
    /// May obtain tokens.
    Active,
    /// Revoked: its tokens stop working.
    Revoked,
}

impl HardwareStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }
}

/// An enrolled machine.
#[derive(Clone, Debug)]
pub struct HardwareRow {
    /// `hw-…`.
    pub id: String,
    /// `snp` or `tpm`.
    pub kind: String,
    /// Status.
    pub status: HardwareStatus,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// Site.
    pub site: String,
    /// Operator (legal entity).
    pub operator: String,
    /// Free text.
    pub description: String,
    /// SNP chip id (hex).
    pub snp_chip_id: Option<String>,
    /// VLEK-signed reports accepted.
    pub snp_accept_vlek: bool,
    /// TPM EK digest (hex).
    pub tpm_ek_digest: Option<String>,
    /// TPM AK name (hex).
    pub tpm_ak_name: Option<String>,
    /// TPM EK certificate (DER).
    pub tpm_ek_certificate: Option<Vec<u8>>,
    /// What the evidence showed at enrolment (JSON).
    pub enrollment_record: String,
    /// When enrolled.
    pub enrolled_unix_ms: i64,
    /// By whom.
    pub enrolled_by: String,
    /// When revoked.
    pub revoked_unix_ms: Option<i64>,
    /// By whom.
    pub revoked_by: Option<String>,
    /// Why.
    pub revocation_reason: Option<String>,
}

/// A TPM credential-activation attempt.
#[derive(Clone, Debug)]
pub struct TpmEnrollmentRow {
    /// Attempt id.
    pub id: String,
    /// EK digest (hex).
    pub ek_digest: String,
    /// EK certificate (DER).
    pub ek_certificate: Vec<u8>,
    /// What the EK certificate showed (JSON).
    pub ek_record: String,
    /// AK TPM2B_PUBLIC.
    pub ak_public: Vec<u8>,
    /// AK name (hex).
    pub ak_name: String,
    /// SHA-256 of the credential secret.
    pub secret_sha256: Vec<u8>,
    /// The principal that asked.
    pub requested_by: String,
    /// Expiry.
    pub expires_unix_ms: i64,
}

/// A token signing key.
#[derive(Clone, Debug)]
pub struct TokenKeyRow {
    /// Version (1, 2, …).
    pub version: u32,
    /// JWK thumbprint.
    pub kid: String,
    /// Ed25519 public key.
    pub public_key: Vec<u8>,
    /// The seed, wrapped under the root key.
    pub wrapped_seed: Vec<u8>,
    /// The root key generation that wrapped it.
    pub root_generation: u64,
}

const HARDWARE_COLUMNS: &str = "id, kind, status, country, site, operator, description, snp_chip_id, snp_accept_vlek, \
     tpm_ek_digest, tpm_ak_name, tpm_ek_certificate, enrollment_record, enrolled_unix_ms, enrolled_by, \
     revoked_unix_ms, revoked_by, revocation_reason";

fn hardware_row(r: &AnyRow) -> Result<HardwareRow, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let status = match status.as_str() {
        "active" => HardwareStatus::Active,
        "revoked" => HardwareStatus::Revoked,
        _ => return Err(sqlx::Error::Protocol("corrupt hardware row: status".into())),
    };
    Ok(HardwareRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        status,
        country: r.try_get("country")?,
        site: r.try_get("site")?,
        operator: r.try_get("operator")?,
        description: r.try_get("description")?,
        snp_chip_id: r.try_get("snp_chip_id")?,
        snp_accept_vlek: r.try_get::<i64, _>("snp_accept_vlek")? != 0,
        tpm_ek_digest: r.try_get("tpm_ek_digest")?,
        tpm_ak_name: r.try_get("tpm_ak_name")?,
        tpm_ek_certificate: r.try_get("tpm_ek_certificate")?,
        enrollment_record: r.try_get("enrollment_record")?,
        enrolled_unix_ms: r.try_get("enrolled_unix_ms")?,
        enrolled_by: r.try_get("enrolled_by")?,
        revoked_unix_ms: r.try_get("revoked_unix_ms")?,
        revoked_by: r.try_get("revoked_by")?,
        revocation_reason: r.try_get("revocation_reason")?,
    })
}

impl Store {
    // ----- release policies ------------------------------------------------------------------

    /// Replaces the release policy of a key that is not destroyed, as the next policy version,
    /// with its audit record. `None` if no such key or it is destroyed.
    pub async fn set_release_policy(
        &self,
        id: &str,
        document: &str,
        now: i64,
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<Option<KeyRow>, StoreError> {
        let mut tx = self.begin_write(close).await?;
        let row = sqlx::query(&format!(
            "UPDATE keys SET release_policy = $2, release_policy_version = release_policy_version + 1, \
             updated_unix_ms = $3 WHERE id = $1 AND state <> 'destroyed' RETURNING {KEY_COLUMNS}"
        ))
        .bind(id)
        .bind(document)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let key = key_row(&row)?;
        sqlx::query(
            "INSERT INTO release_policies (key_id, version, document, set_unix_ms, set_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(i64::from(key.release_policy_version))
        .bind(document)
        .bind(now)
        .bind(&record.caller)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    // ----- challenges ------------------------------------------------------------------------

    /// How many challenges issued to `principal` are still open (unused, unexpired).
    pub async fn open_challenges(&self, principal: &str, now: i64) -> Result<i64, sqlx::Error> {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM attestation_nonces WHERE principal = $1 AND expires_unix_ms > $2 AND used_unix_ms IS NULL",
        )
        .bind(principal)
        .bind(now)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")
    }

    /// Records a challenge issued to `principal`.
    pub async fn insert_challenge(
        &self,
        nonce: &[u8],
        principal: &str,
        expires_unix_ms: i64,
    ) -> Result<(), sqlx::Error> {
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
    pub async fn consume_challenge(
        &self,
        nonce: &[u8],
        principal: &str,
        now: i64,
    ) -> Result<ChallengeUse, sqlx::Error> {
        let used = sqlx::query(
            "UPDATE attestation_nonces SET used_unix_ms = $2 WHERE nonce = $1 AND principal = $3 AND used_unix_ms IS NULL AND expires_unix_ms > $2",
        )
        .bind(nonce)
        .bind(now)
        .bind(principal)
        .execute(&self.pool)
        .await?
        .rows_affected();
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

    /// Forgets challenges and TPM enrolment attempts that expired before `before`.
    pub async fn purge_attestation(&self, before: i64) -> Result<u64, sqlx::Error> {
        let a = sqlx::query("DELETE FROM attestation_nonces WHERE expires_unix_ms < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let b = sqlx::query("DELETE FROM tpm_enrollments WHERE expires_unix_ms < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(a + b)
    }

    // ----- hardware registry -----------------------------------------------------------------

    /// Enrols a machine with its audit record. `Conflict` if one of its identities is already
    /// active in another entry.
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
            let claimed =
                sqlx::query("UPDATE tpm_enrollments SET used_unix_ms = $2 WHERE id = $1 AND used_unix_ms IS NULL")
                    .bind(attempt)
                    .bind(h.enrolled_unix_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if claimed != 1 {
                return Err(StoreError::Api(ApiError::precondition(
                    "tpm_enrollment_used",
                    "the credential challenge was used meanwhile (by another enrolment): the machine must start again (BeginTpmEnrollment)",
                )));
            }
        }
        sqlx::query(&format!(
            "INSERT INTO hardware ({HARDWARE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, NULL, NULL, NULL)"
        ))
        .bind(&h.id)
        .bind(&h.kind)
        .bind(h.status.as_str())
        .bind(&h.country)
        .bind(&h.site)
        .bind(&h.operator)
        .bind(&h.description)
        .bind(h.snp_chip_id.clone())
        .bind(i64::from(h.snp_accept_vlek))
        .bind(h.tpm_ek_digest.clone())
        .bind(h.tpm_ak_name.clone())
        .bind(h.tpm_ek_certificate.clone())
        .bind(&h.enrollment_record)
        .bind(h.enrolled_unix_ms)
        .bind(&h.enrolled_by)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A registry entry by id.
    pub async fn hardware(&self, id: &str) -> Result<Option<HardwareRow>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {HARDWARE_COLUMNS} FROM hardware WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| hardware_row(&r)).transpose()
    }

    /// The entry for an SNP chip id (hex) or a TPM AK name (hex): the active one if there is one,
    /// else the most recently revoked one (so a refusal can say "revoked").
    pub async fn hardware_by_identity(
        &self,
        column: Identity,
        value: &str,
    ) -> Result<Option<HardwareRow>, sqlx::Error> {
        let column = match column {
            Identity::SnpChipId => "snp_chip_id",
            Identity::TpmAkName => "tpm_ak_name",
            Identity::TpmEkDigest => "tpm_ek_digest",
        };
        let row = sqlx::query(&format!(
            "SELECT {HARDWARE_COLUMNS} FROM hardware WHERE {column} = $1 \
             ORDER BY CASE status WHEN 'active' THEN 0 ELSE 1 END, enrolled_unix_ms DESC LIMIT 1"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| hardware_row(&r)).transpose()
    }

    /// Up to `limit` entries with id greater than `after`, by id.
    pub async fn list_hardware(&self, after: &str, limit: u32) -> Result<Vec<HardwareRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {HARDWARE_COLUMNS} FROM hardware WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(hardware_row)
        .collect()
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
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE hardware SET status = 'revoked', revoked_unix_ms = $2, revoked_by = $3, revocation_reason = $4 \
             WHERE id = $1 AND status = 'active' RETURNING {HARDWARE_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .bind(by)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let h = hardware_row(&row)?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(Some(h))
    }

    /// The release decision's inputs in one round trip: the machine's registry entry and the
    /// key's current row (read fresh, so a revocation or policy change on any replica applies to
    /// the very next call).
    pub async fn release_inputs(
        &self,
        hardware_id: &str,
        key_id: &str,
    ) -> Result<(Option<HardwareRow>, Option<KeyRow>), sqlx::Error> {
        let hw = self.hardware(hardware_id);
        let key = async {
            let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| key_row(&r)).transpose()
        };
        let (hw, key) = tokio::try_join!(hw, key)?;
        Ok((hw, key))
    }

    // ----- TPM enrolment ---------------------------------------------------------------------

    /// How many credential-activation attempts `principal` has open (unused, unexpired).
    pub async fn open_tpm_enrollments(&self, principal: &str, now: i64) -> Result<i64, sqlx::Error> {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM tpm_enrollments WHERE requested_by = $1 AND expires_unix_ms > $2 AND used_unix_ms IS NULL",
        )
        .bind(principal)
        .bind(now)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")
    }

    /// Records a credential-activation attempt.
    pub async fn insert_tpm_enrollment(&self, e: &TpmEnrollmentRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO tpm_enrollments (id, ek_digest, ek_certificate, ek_record, ak_public, ak_name, secret_sha256, requested_by, expires_unix_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&e.id)
        .bind(&e.ek_digest)
        .bind(&e.ek_certificate)
        .bind(&e.ek_record)
        .bind(&e.ak_public)
        .bind(&e.ak_name)
        .bind(&e.secret_sha256)
        .bind(&e.requested_by)
        .bind(e.expires_unix_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
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
    ) -> Result<Result<TpmEnrollmentRow, ChallengeUse>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT id, ek_digest, ek_certificate, ek_record, ak_public, ak_name, secret_sha256, requested_by, expires_unix_ms \
             FROM tpm_enrollments WHERE id = $1 AND used_unix_ms IS NULL AND expires_unix_ms > $2",
        )
        .bind(id)
        .bind(now.unwrap_or(i64::MIN))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return Ok(Ok(TpmEnrollmentRow {
                id: r.try_get("id")?,
                ek_digest: r.try_get("ek_digest")?,
                ek_certificate: r.try_get("ek_certificate")?,
                ek_record: r.try_get("ek_record")?,
                ak_public: r.try_get("ak_public")?,
                ak_name: r.try_get("ak_name")?,
                secret_sha256: r.try_get("secret_sha256")?,
                requested_by: r.try_get("requested_by")?,
                expires_unix_ms: r.try_get("expires_unix_ms")?,
            }));
        }
        let row = sqlx::query("SELECT used_unix_ms FROM tpm_enrollments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Err(match row {
            None => ChallengeUse::Unknown,
            Some(r) if r.try_get::<Option<i64>, _>("used_unix_ms")?.is_some() => ChallengeUse::Replayed,
            Some(_) => ChallengeUse::Expired,
        }))
    }

    /// Marks an attempt used after a wrong answer, so a credential challenge gets one try.
    pub async fn burn_tpm_enrollment(&self, id: &str, now: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE tpm_enrollments SET used_unix_ms = $2 WHERE id = $1 AND used_unix_ms IS NULL")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ----- TPM clocks ------------------------------------------------------------------------

    /// The newest (reset count, restart count, clock) recorded for an AK.
    pub async fn tpm_clock(&self, ak_name: &str) -> Result<Option<(u32, u32, u64)>, sqlx::Error> {
        let row = sqlx::query("SELECT reset_count, restart_count, clock FROM tpm_clocks WHERE ak_name = $1")
            .bind(ak_name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let reset: i64 = r.try_get("reset_count")?;
            let restart: i64 = r.try_get("restart_count")?;
            let clock: i64 = r.try_get("clock")?;
            let bad = |_| sqlx::Error::Protocol("corrupt tpm_clocks row".into());
            Ok((
                u32::try_from(reset).map_err(bad)?,
                u32::try_from(restart).map_err(bad)?,
                u64::try_from(clock).map_err(bad)?,
            ))
        })
        .transpose()
    }

    /// Records a newer clock for an AK if the stored one is still `previous` (compare and swap,
    /// so two replicas cannot both move it from the same value). `false` if it changed meanwhile.
    pub async fn advance_tpm_clock(
        &self,
        ak_name: &str,
        previous: Option<(u32, u32, u64)>,
        next: (u32, u32, u64),
    ) -> Result<bool, sqlx::Error> {
        let clock = i64::try_from(next.2).unwrap_or(i64::MAX);
        match previous {
            None => match sqlx::query(
                "INSERT INTO tpm_clocks (ak_name, reset_count, restart_count, clock) VALUES ($1, $2, $3, $4)",
            )
            .bind(ak_name)
            .bind(i64::from(next.0))
            .bind(i64::from(next.1))
            .bind(clock)
            .execute(&self.pool)
            .await
            {
                Ok(_) => Ok(true),
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
                Err(e) => Err(e),
            },
            Some(p) => Ok(sqlx::query(
                "UPDATE tpm_clocks SET reset_count = $2, restart_count = $3, clock = $4 \
                 WHERE ak_name = $1 AND reset_count = $5 AND restart_count = $6 AND clock = $7",
            )
            .bind(ak_name)
            .bind(i64::from(next.0))
            .bind(i64::from(next.1))
            .bind(clock)
            .bind(i64::from(p.0))
            .bind(i64::from(p.1))
            .bind(i64::try_from(p.2).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1),
        }
    }

    // ----- token keys ------------------------------------------------------------------------

    /// Every token signing key, oldest first.
    pub async fn token_keys(&self) -> Result<Vec<TokenKeyRow>, sqlx::Error> {
        sqlx::query("SELECT version, kid, public_key, wrapped_seed, root_generation FROM token_keys ORDER BY version")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(TokenKeyRow {
                    version: u32::try_from(r.try_get::<i64, _>("version")?)
                        .map_err(|_| sqlx::Error::Protocol("corrupt token_keys row".into()))?,
                    kid: r.try_get("kid")?,
                    public_key: r.try_get("public_key")?,
                    wrapped_seed: r.try_get("wrapped_seed")?,
                    root_generation: u64::try_from(r.try_get::<i64, _>("root_generation")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Adds a token signing key; `false` if another replica added that version first.
    pub async fn insert_token_key(&self, k: &TokenKeyRow, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        super::lock_generation(&mut tx, k.root_generation).await?;
        match sqlx::query(
            "INSERT INTO token_keys (version, kid, public_key, wrapped_seed, created_unix_ms, root_generation) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(i64::from(k.version))
        .bind(&k.kid)
        .bind(&k.public_key)
        .bind(&k.wrapped_seed)
        .bind(now)
        .bind(i64::try_from(k.root_generation).unwrap_or(i64::MAX))
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
}

/// Which identity column to look a machine up by.
#[derive(Clone, Copy, Debug)]
pub enum Identity {
    /// SNP chip id (hex).
    SnpChipId,
    /// TPM AK name (hex).
    TpmAkName,
    /// TPM EK digest (hex).
    TpmEkDigest,
}
