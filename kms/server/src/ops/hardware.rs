//! Admin operations of the attested release: the hardware registry (enrol, describe, list,
//! revoke) and release policy changes. Called after the signed request is authenticated;
//! enrolment and policy changes are quorum operations (`ops::quorum`).

use std::sync::Arc;

use attestation::snp::Signer;
use attestation::Verifier;
use kms_core::ids::AdminId;
use kms_core::jurisdiction::Country;
use kms_core::policy::ReleasePolicy;

use crate::attest::{refusal_reason, report_data_of};
use crate::audit::Audit;
use crate::error::ApiError;
use crate::ops::admin::AdminPlane;
use crate::ops::quorum::Exec;
use crate::request::{EnrollIdentity, Enrollment, Page};
use crate::storage::{ChallengeUse, HardwareRow, HardwareStatus, KeyRow, QuorumClose, StoreError};
use kms_proto::Reason;

/// `hw-` followed by 32 hex digits.
fn check_hardware_id(id: &str) -> Result<(), ApiError> {
    let ok = id
        .strip_prefix("hw-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            Reason::InvalidHardwareId,
            format!("{id:?} is not a hardware id (hw- followed by 32 lowercase hex digits)"),
        ))
    }
}

fn check_text(what: &str, s: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n < min || n > max || s.chars().any(char::is_control) {
        return Err(ApiError::new(
            Reason::InvalidArgument,
            format!("{what}: {min} to {max} characters without control characters"),
        ));
    }
    Ok(())
}

impl AdminPlane {
    /// Enrols a machine: its location is checked against the allowed jurisdictions, its identity
    /// proven (SNP: a report verified against AMD's roots; TPM: the answer to a credential
    /// challenge), and the entry written with its audit record.
    pub(crate) async fn enroll_hardware(
        &self,
        admin: &AdminId,
        op: Enrollment,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<HardwareRow>, ApiError> {
        self.seal.require_initialized()?;
        let country = Country::parse(&op.country)?;
        check_text("site", &op.site, 1, 128)?;
        check_text("operator", &op.operator, 1, 256)?;
        check_text("description", &op.description, 0, 1024)?;
        audit.detail("country", country.as_str());
        audit.detail("site", op.site.as_str());
        audit.detail("operator", op.operator.as_str());
        if !self.attestation.config().allowed_countries.allows(&country) {
            return Err(ApiError::new(
                Reason::HardwareOutsideJurisdiction,
                format!("country {country} is outside the allowed jurisdictions: the machine cannot be enrolled"),
            ));
        }
        let attempt_id = match &op.identity {
            Some(EnrollIdentity::Tpm { enrollment_id, .. }) => Some(enrollment_id.clone()),
            _ => None,
        };
        let id_bytes: [u8; 16] = kms_core::random_array()?;
        let mut row = HardwareRow {
            id: format!("hw-{}", hex::encode(id_bytes)),
            kind: String::new(),
            status: HardwareStatus::Active,
            country: country.as_str().to_owned(),
            site: op.site,
            operator: op.operator,
            description: op.description,
            snp_chip_id: None,
            snp_accept_vlek: false,
            tpm_ek_digest: None,
            tpm_ak_name: None,
            tpm_ek_certificate: None,
            enrollment_record: String::new(),
            enrolled_unix_ms: kms_core::now_unix_ms(),
            enrolled_by: admin.as_str().to_owned(),
            revoked_unix_ms: None,
            revoked_by: None,
            revocation_reason: None,
        };
        match op.identity {
            None => {
                return Err(ApiError::new(
                    Reason::MissingIdentity,
                    "identity: set `snp` (a report) or `tpm` (a credential-activation answer)",
                ))
            }
            Some(EnrollIdentity::Snp { evidence, accept_vlek }) => {
                if accept_vlek && !self.attestation.config().snp.accept_vlek {
                    return Err(ApiError::new(
                        Reason::VlekDisabled,
                        "accept_vlek needs the server setting attestation.snp.accept_vlek",
                    ));
                }
                let binding = report_data_of(&evidence.report);
                let claims = self
                    .attestation
                    .snp_verifier()
                    .verify(&evidence, &binding, kms_core::now_unix_ms() / 1000)
                    .map_err(|r| ApiError::new(refusal_reason(r.check), format!("SNP report refused: {r}")))?;
                if claims.chip_id_masked {
                    return Err(ApiError::new(
                        Reason::ChipIdMasked,
                        "the report's chip id is masked: this machine cannot be enrolled by chip",
                    ));
                }
                if claims.signer == Signer::Vlek && !accept_vlek {
                    return Err(ApiError::new(
                        Reason::VlekNotAccepted,
                        "the report is VLEK-signed (a cloud provider's key, not chip-unique): enrol with accept_vlek to allow it",
                    ));
                }
                row.kind = "snp".into();
                row.snp_chip_id = Some(claims.chip_id.to_hex());
                row.snp_accept_vlek = accept_vlek;
                row.enrollment_record = serde_json::json!({
                    "product": claims.product.as_str().to_lowercase(),
                    "signer": format!("{:?}", claims.signer).to_lowercase(),
                    "reported_tcb": claims.reported_tcb,
                    "measurement": hex::encode(claims.measurement),
                    "danger_test_root": claims.danger_test_root,
                })
                .to_string();
                audit.detail("snp_chip_id", claims.chip_id.to_hex());
            }
            Some(EnrollIdentity::Tpm {
                enrollment_id,
                activated_secret,
                expected_ek_digest,
                expected_ak_name,
            }) => {
                let attempt = match self
                    .store
                    .tpm_enrollment(
                        &enrollment_id,
                        // Expiry matters until the enrolment is proposed: approvals may come
                        // later, within the proposal's lifetime.
                        (!matches!(exec, Exec::Run(Some(QuorumClose::Final { .. })))).then(kms_core::now_unix_ms),
                    )
                    .await?
                {
                    Ok(a) => a,
                    Err(why) => {
                        let (reason, msg) = match why {
                            ChallengeUse::Expired => (
                                Reason::TpmEnrollmentExpired,
                                "the credential challenge expired: the machine must start again (BeginTpmEnrollment)",
                            ),
                            ChallengeUse::Replayed => {
                                (Reason::TpmEnrollmentUsed, "this credential challenge was already used")
                            }
                            _ => (Reason::TpmEnrollmentUnknown, "no such TPM enrolment attempt"),
                        };
                        return Err(ApiError::new(reason, msg));
                    }
                };
                audit.detail("enrollment_id", attempt.id.as_str());
                if !expected_ek_digest.eq_ignore_ascii_case(&attempt.ek_digest)
                    || !expected_ak_name.eq_ignore_ascii_case(&attempt.ak_name)
                {
                    self.store
                        .burn_tpm_enrollment(&attempt.id, kms_core::now_unix_ms())
                        .await?;
                    return Err(ApiError::new(
                        Reason::TpmIdentityMismatch,
                        format!(
                            "the enrolment attempt is for EK {} / AK {}, not the EK {:?} / AK {:?} this request expects: \
                             the request file does not describe the machine that answered",
                            attempt.ek_digest, attempt.ak_name, expected_ek_digest, expected_ak_name
                        ),
                    ));
                }
                audit.detail("tpm_ek_digest", attempt.ek_digest.as_str());
                audit.detail("tpm_ak_name", attempt.ak_name.as_str());
                let answer = ring::digest::digest(&ring::digest::SHA256, &activated_secret);
                // Constant time: the digest of a 32-byte random secret is compared.
                let matches: bool =
                    subtle::ConstantTimeEq::ct_eq(answer.as_ref(), attempt.secret_sha256.as_slice()).into();
                if !matches {
                    self.store
                        .burn_tpm_enrollment(&attempt.id, kms_core::now_unix_ms())
                        .await?;
                    return Err(ApiError::new(
                        Reason::TpmCredentialMismatch,
                        "the activated secret is not the credential: this TPM does not hold the EK, or the AK is not its",
                    ));
                }
                row.kind = "tpm".into();
                row.tpm_ek_digest = Some(attempt.ek_digest);
                row.tpm_ak_name = Some(attempt.ak_name);
                row.tpm_ek_certificate = Some(attempt.ek_certificate);
                row.enrollment_record = attempt.ek_record;
            }
        }
        audit.detail("kind", row.kind.as_str());
        let Exec::Run(close) = exec else { return Ok(None) };
        audit.detail("hardware_id", row.id.as_str());
        match self
            .store
            .insert_hardware(&row, attempt_id.as_deref(), close, Audit::clone_allowed(audit))
            .await
        {
            Ok(()) => Ok(Some(row)),
            Err(StoreError::Conflict) => {
                // The entry holding one of its identities (a TPM may clash on its AK alone).
                let mut existing = None;
                for (identity, value) in row.identities() {
                    // For the message only: a lookup that fails names no entry.
                    if let Ok(Some(h)) = self.store.hardware_by_identity(identity, value).await {
                        if h.status == HardwareStatus::Active {
                            existing = Some(h);
                            break;
                        }
                    }
                }
                Err(ApiError::new(
                    Reason::HardwareAlreadyEnrolled,
                    format!(
                        "this machine is already enrolled and active as {}: revoke it first to enrol it again",
                        existing.map(|h| h.id).unwrap_or_default()
                    ),
                ))
            }
            Err(e) => Err(ApiError::from(e)),
        }
    }

    pub(crate) async fn describe_hardware(&self, id: &str, audit: &mut Audit) -> Result<HardwareRow, ApiError> {
        check_hardware_id(id)?;
        audit.detail("hardware_id", id);
        let h = self
            .store
            .hardware(id)
            .await?
            .ok_or_else(|| ApiError::new(Reason::HardwareNotFound, format!("no machine {id} in the registry")))?;
        Ok(h)
    }

    pub(crate) async fn list_hardware(&self, page_size: u32, page_token: &str) -> Result<Page<HardwareRow>, ApiError> {
        let size = crate::wire::page_size(page_size)?;
        let after = crate::wire::page_after(page_token)?;
        let page = self.store.list_hardware(&after, size).await?;
        Ok(Page {
            items: page.rows,
            next_page_token: crate::wire::page_token(page.next),
        })
    }

    /// Revokes a machine at once: the next release under any of its tokens is refused on every
    /// replica (the data plane reads the registry entry at each call).
    pub(crate) async fn revoke_hardware(
        &self,
        admin: &AdminId,
        hardware_id: &str,
        reason: &str,
        audit: &mut Audit,
    ) -> Result<HardwareRow, ApiError> {
        check_hardware_id(hardware_id)?;
        check_text("reason", reason, 1, 1024)?;
        audit.detail("hardware_id", hardware_id);
        audit.detail("reason", reason);
        let now = kms_core::now_unix_ms();
        match self
            .store
            .revoke_hardware(hardware_id, admin.as_str(), reason, now, Audit::clone_allowed(audit))
            .await
            .map_err(ApiError::from)?
        {
            Some(h) => Ok(h),
            None => match self.store.hardware(hardware_id).await? {
                None => Err(ApiError::new(
                    Reason::HardwareNotFound,
                    format!("no machine {hardware_id} in the registry"),
                )),
                Some(_) => Err(ApiError::new(
                    Reason::HardwareAlreadyRevoked,
                    format!("machine {hardware_id} is already revoked"),
                )),
            },
        }
    }

    /// Replaces a key's release policy (validated; the next policy version).
    pub(crate) async fn set_release_policy(
        &self,
        key_ref: &str,
        release_policy: &str,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<Arc<KeyRow>>, ApiError> {
        self.seal.require_initialized()?;
        let key = self.keys.resolve(key_ref).await?;
        audit.key(&key.id);
        let policy = ReleasePolicy::parse(release_policy)?;
        if policy.allows_unattested_release() && !self.allow_unattested {
            return Err(ApiError::new(
                Reason::UnattestedKeysDisabled,
                "this server does not allow keys that release plaintext without attestation (danger.allow_unattested_keys)",
            ));
        }
        let document = policy.to_json();
        audit.detail("release_policy", document.as_str());
        let Exec::Run(close) = exec else { return Ok(None) };
        let row = self
            .store
            .set_release_policy(
                key.id,
                &policy,
                kms_core::now_unix_ms(),
                close,
                Audit::clone_allowed(audit),
            )
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::new(
                    Reason::KeyDestroyed,
                    format!("key {} is destroyed: its release policy cannot change", key.id),
                )
            })?;
        Ok(Some(self.keys.remember(row)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kms_proto::v1 as pb;
    use prost::Message as _;

    use crate::storage::{test_store, ProposalRow, ProposalStatus, TpmEnrollmentRow, Tx};

    fn attempt(id: &str, expires_unix_ms: i64) -> TpmEnrollmentRow {
        TpmEnrollmentRow {
            id: id.into(),
            ek_digest: "ee".into(),
            ek_certificate: vec![1],
            ek_record: "{}".into(),
            ak_public: vec![2],
            ak_name: "aa".into(),
            secret_sha256: vec![0; 32],
            requested_by: "spiffe://eu.example/host".into(),
            expires_unix_ms,
            used_unix_ms: None,
        }
    }

    /// An attempt expired long ago is forgotten, unless a pending enrolment proposal names it:
    /// its approvals may take the proposal's lifetime, longer than the purge's hour.
    #[tokio::test]
    async fn attempts_awaiting_approval_are_kept() {
        let (store, _dir) = test_store().await;
        let now = kms_core::now_unix_ms();
        let long_ago = now - 2 * 3_600_000;
        let mut tx = Tx::begin(&store).await.unwrap();
        for id in ["tpm-awaited", "tpm-abandoned", "tpm-of-a-closed-proposal"] {
            tx.insert(&attempt(id, long_ago)).await.unwrap();
        }
        tx.insert(&attempt("tpm-fresh", now + 60_000)).await.unwrap();
        let enrol = |attempt: &str| {
            pb::QuorumOperation {
                operation: Some(pb::quorum_operation::Operation::EnrollHardware(pb::EnrollHardwareOp {
                    country: "DE".into(),
                    site: "FRA-2".into(),
                    operator: "Example Cloud GmbH".into(),
                    description: String::new(),
                    identity: Some(pb::enroll_hardware_op::Identity::Tpm(pb::TpmEnrollment {
                        enrollment_id: attempt.into(),
                        activated_secret: vec![3; 32],
                        expected_ek_digest: "ee".into(),
                        expected_ak_name: "aa".into(),
                    })),
                })),
            }
            .encode_to_vec()
        };
        let proposal = |n: char, attempt: &str, status: ProposalStatus| {
            let payload = enrol(attempt);
            ProposalRow {
                id: format!("prop-{}", n.to_string().repeat(32)),
                operation: "enroll_hardware".into(),
                digest: ring::digest::digest(&ring::digest::SHA256, &payload).as_ref().to_vec(),
                payload,
                summary: String::new(),
                proposed_by: kms_core::ids::AdminId::parse("alice").unwrap(),
                created_unix_ms: long_ago,
                expires_unix_ms: now + 86_400_000,
                approvals: 1,
                status,
                closed_unix_ms: None,
                closed_by: None,
                outcome: String::new(),
            }
        };
        tx.insert(&proposal('a', "tpm-awaited", ProposalStatus::Pending))
            .await
            .unwrap();
        tx.insert(&proposal('b', "tpm-of-a-closed-proposal", ProposalStatus::Rejected))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        assert_eq!(
            crate::workers::housekeeping::purge_attestation(&store, now)
                .await
                .unwrap(),
            2
        );
        let left = |id: &'static str| {
            let store = store.clone();
            async move { store.tpm_enrollment(id, None).await.unwrap().is_ok() }
        };
        assert!(left("tpm-awaited").await);
        assert!(left("tpm-fresh").await);
        assert!(!left("tpm-abandoned").await);
        assert!(!left("tpm-of-a-closed-proposal").await);
    }
}
