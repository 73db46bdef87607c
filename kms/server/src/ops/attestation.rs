//! The attestation service's operations: challenges, Attest (evidence → token), the token keys, and the machine
//! side of TPM enrolment. Callers are identified by their client certificate, like data-plane
//! callers; every call that consumes a nonce or issues a token is audited with its claims.

use crate::wire::attestation::*;
use std::sync::Arc;

use attestation::tpm::ek::VerifiedEk;
use attestation::tpm::AkPublic;
use kms_core::hpke_seal;
use kms_core::ids::Principal;

use crate::attest::{refusal_reason, Attestation, Attested, Evidence, TpmChallenge};
use crate::audit::Audit;
use crate::audit::AuditLog;
use crate::error::ApiError;
use crate::identity::Callers;
use crate::node::Node;
use crate::seal::Seal;
use crate::storage::Store;
use crate::storage::TpmEnrollmentRow;
use kms_proto::Reason;

/// The AttestationService implementation.
#[derive(Debug)]
pub struct AttestationPlane {
    pub(crate) node: Arc<Node>,
    pub(crate) store: Store,
    pub(crate) seal: Arc<Seal>,
    pub(crate) engine: Arc<Attestation>,
    pub(crate) audit: AuditLog,
    pub(crate) callers: Callers,
}

impl AttestationPlane {
    /// Attest: `evidence` bound to the challenge `nonce` and the workload's `hpke_public_key`
    /// is verified against the registry and the policy's roots, and a token issued for it.
    pub(crate) async fn attest(
        &self,
        who: &Principal,
        nonce: &[u8],
        hpke_public_key: &[u8],
        evidence: Evidence,
        audit: &mut Audit,
    ) -> Result<Attested, ApiError> {
        // A key HPKE cannot seal to (a low-order X25519 point) would make every release under
        // the token fail: refuse it now.
        hpke_seal::check_sealable(hpke_public_key).map_err(|_| {
            let why = if hpke_public_key.len() == 32 {
                "hpke_public_key: an X25519 point of small order, which HPKE cannot seal to".to_owned()
            } else {
                format!(
                    "hpke_public_key: {} bytes; an X25519 public key is 32",
                    hpke_public_key.len()
                )
            };
            ApiError::new(Reason::InvalidHpkePublicKey, why)
        })?;
        audit.detail(
            "tee",
            match evidence {
                Evidence::Snp(_) => "snp",
                Evidence::Tpm(_) => "tpm",
            },
        );
        let (claims, hw) = self
            .engine
            .consume_and_verify(nonce, who, hpke_public_key, &evidence)
            .await?;
        audit.detail("hardware_id", hw.id.as_str());
        let issued = self.engine.issue(who, hpke_public_key, claims, hw).await?;
        let claims_json = serde_json::to_string(&issued.claims.kms).unwrap_or_default();
        audit.detail("token_id", issued.claims.jti.as_str());
        audit.detail("expires_unix", issued.claims.exp);
        audit.detail("claims", serde_json::to_value(&issued.claims.kms).unwrap_or_default());
        let mut answer = Attested {
            token: issued.token,
            expires_unix_ms: issued.claims.exp.saturating_mul(1000),
            claims_json,
            hardware_id: issued.hardware.id,
            token_id: issued.claims.jti,
            node_public_key: Vec::new(),
            node_signature: Vec::new(),
        };
        answer.node_public_key = self.node.public_key().to_vec();
        answer.node_signature = self.node.sign_attest(&kms_node::message::AttestAnswer {
            nonce,
            hpke_public_key,
            token: &answer.token,
            token_id: &answer.token_id,
            expires_unix_ms: answer.expires_unix_ms,
            claims_json: &answer.claims_json,
            hardware_id: &answer.hardware_id,
        });
        Ok(answer)
    }

    /// BeginTpmEnrollment: the machine's EK certificate (with up to 8 intermediates) is verified
    /// against the EK CAs, and a credential for its AK made to the EK.
    pub(crate) async fn begin_tpm(
        &self,
        who: &Principal,
        ek_certificate: Vec<u8>,
        ek_intermediates: &[Vec<u8>],
        ak_public: Vec<u8>,
        audit: &mut Audit,
    ) -> Result<TpmChallenge, ApiError> {
        let cas = self.engine.ek_cas()?;
        let limit = self.engine.config().max_open_tpm_enrollments;
        let open = self
            .engine
            .store()
            .open_tpm_enrollments(who.as_str(), kms_core::now_unix_ms())
            .await?;
        if open >= i64::from(limit) {
            return Err(ApiError::new(
                Reason::TooManyTpmEnrollments,
                format!("{who} holds {open} open TPM enrolment attempts (at most {limit}): complete them or let them expire"),
            ));
        }
        check_size("ek_certificate", &ek_certificate)?;
        check_size("ak_public", &ak_public)?;
        if ek_intermediates.len() > 8 {
            return Err(ApiError::new(Reason::InvalidArgument, "ek_intermediates: at most 8"));
        }
        for i in ek_intermediates {
            check_size("ek_intermediates", i)?;
        }
        let intermediates: Vec<&[u8]> = ek_intermediates.iter().map(Vec::as_slice).collect();
        let ek: VerifiedEk = cas
            .verify(&ek_certificate, &intermediates, kms_core::now_unix_ms() / 1000)
            .map_err(|r| {
                let reason = match r.check {
                    attestation::Check::Malformed => Reason::EkCertificateMalformed,
                    attestation::Check::EkProfile => Reason::EkCertificateNotEk,
                    _ => Reason::EkCertificateUntrusted,
                };
                ApiError::new(reason, format!("EK certificate refused: {r}"))
            })?;
        let ak = AkPublic::from_tpm2b_public(&ak_public)
            .map_err(|r| ApiError::new(refusal_reason(r.check), format!("ak_public refused: {r}")))?;
        let ek_digest = ek.digest.to_string();
        let ak_name = ak.name().to_hex();
        audit.detail("ek_digest", ek_digest.as_str());
        audit.detail("ak_name", ak_name.as_str());
        let secret: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(kms_core::random_array()?);
        let blob = attestation::tpm::credential::make_credential(&ek.public, ak.name(), &secret[..]).map_err(|e| {
            ApiError::new(
                Reason::EkUnsupported,
                format!("cannot make a credential for this EK: {e}"),
            )
        })?;
        let id_bytes: [u8; 16] = kms_core::random_array()?;
        let id = format!("tpme-{}", hex::encode(id_bytes));
        let expires =
            kms_core::now_unix_ms() + i64::try_from(self.engine.config().challenge_ttl.as_millis()).unwrap_or(300_000);
        let record = serde_json::json!({
            "ek_key_type": ek.public.key_type(),
            "tpm_manufacturer": ek.tpm_manufacturer,
            "tpm_model": ek.tpm_model,
            "tpm_version": ek.tpm_version,
            "ek_chain": ek.chain,
        });
        self.engine
            .store()
            .insert_tpm_enrollment(&TpmEnrollmentRow {
                id: id.clone(),
                ek_digest: ek_digest.clone(),
                ek_certificate,
                ek_record: record.to_string(),
                ak_public,
                ak_name: ak_name.clone(),
                secret_sha256: ring::digest::digest(&ring::digest::SHA256, &secret[..])
                    .as_ref()
                    .to_vec(),
                requested_by: who.as_str().to_owned(),
                expires_unix_ms: expires,
                used_unix_ms: None,
            })
            .await?;
        audit.detail("enrollment_id", id.as_str());
        Ok(TpmChallenge {
            enrollment_id: id,
            id_object: blob.id_object().to_vec(),
            encrypted_secret: blob.encrypted_secret().to_vec(),
            expires_unix_ms: expires,
            ak_name,
            ek_digest,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use attestation::snp::SnpEvidence;
    use kms_proto::Reason;

    use crate::attest::Evidence;
    use crate::audit::Audit;
    use crate::ops::testkit::{who, Kit};

    #[tokio::test]
    async fn attest_refuses_a_bad_hpke_key() {
        let kit = Kit::new().await;
        let app = who("spiffe://eu/app");
        let mut audit = Audit::new(app.as_str(), "attestation.attest");
        let evidence = || Evidence::Snp(SnpEvidence::default());
        let e = kit
            .attestation
            .attest(&app, &[0; 32], &[1; 31], evidence(), &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::InvalidHpkePublicKey);
        // 32 bytes, but the all-zero X25519 point: HPKE cannot seal to it.
        let e = kit
            .attestation
            .attest(&app, &[0; 32], &[0; 32], evidence(), &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::InvalidHpkePublicKey);
    }

    #[tokio::test]
    async fn tpm_enrolment_needs_an_ek_ca_bundle() {
        let kit = Kit::new().await;
        let app = who("spiffe://eu/app");
        let mut audit = Audit::new(app.as_str(), "attestation.begin_tpm_enrollment");
        let e = kit
            .attestation
            .begin_tpm(&app, Vec::new(), &[], Vec::new(), &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::TpmEnrollmentNotConfigured);
    }
}
