//! AttestationService: challenges, Attest (evidence → token), the token keys, and the machine
//! side of TPM enrolment. Callers are identified by their client certificate, like data-plane
//! callers; every call that consumes a nonce or issues a token is audited with its claims.

use std::sync::Arc;

use attestation::snp::SnpEvidence;
use attestation::tpm::ek::VerifiedEk;
use attestation::tpm::AkPublic;
use kms_core::hpke_seal::{self, X25519};
use kms_core::ids::Principal;
use kms_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{finish, Audit};
use crate::attest::{refusal_reason, Attestation, Evidence};
use crate::audit::AuditLog;
use crate::error::ApiError;
use crate::identity::Identities;
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
    pub(crate) identities: Arc<Identities>,
    pub(crate) tls: bool,
}

/// Largest evidence part accepted (certificates, reports, quotes are far smaller).
const MAX_PART: usize = 16 * 1024;

fn check_size(what: &str, b: &[u8]) -> Result<(), ApiError> {
    if b.len() > MAX_PART {
        return Err(ApiError::new(
            Reason::EvidenceMalformed,
            format!("{what}: {} bytes; at most {MAX_PART}", b.len()),
        ));
    }
    Ok(())
}

/// Wire evidence to the verifier's types; shape errors are INVALID_ARGUMENT.
pub(crate) fn evidence_from_wire(e: Option<pb::attest_request::Evidence>) -> Result<Evidence, ApiError> {
    match e {
        None => Err(ApiError::new(Reason::MissingEvidence, "evidence: set `snp` or `tpm`")),
        Some(pb::attest_request::Evidence::Snp(s)) => Ok(Evidence::Snp(snp_from_wire(s)?)),
        Some(pb::attest_request::Evidence::Tpm(t)) => {
            check_size("tpm.ak_public", &t.ak_public)?;
            check_size("tpm.quote", &t.quote)?;
            check_size("tpm.signature", &t.signature)?;
            kms_node::tpm_from_wire(&t)
                .map(Evidence::Tpm)
                .map_err(|m| ApiError::new(Reason::EvidenceMalformed, m))
        }
    }
}

pub(crate) fn snp_from_wire(s: pb::SnpEvidence) -> Result<SnpEvidence, ApiError> {
    check_size("snp.report", &s.report)?;
    check_size("snp.vek_certificate", &s.vek_certificate)?;
    check_size("snp.cert_chain", &s.cert_chain)?;
    Ok(SnpEvidence {
        report: s.report,
        vek: (!s.vek_certificate.is_empty()).then_some(s.vek_certificate),
        chain: (!s.cert_chain.is_empty()).then_some(s.cert_chain),
    })
}

impl AttestationPlane {
    async fn caller<T>(&self, request: &Request<T>, operation: &'static str) -> Result<Principal, Status> {
        super::identify(&self.identities, &self.audit, request, self.tls, operation).await
    }

    async fn attest(
        &self,
        who: &Principal,
        req: pb::AttestRequest,
        audit: &mut Audit,
    ) -> Result<pb::AttestResponse, ApiError> {
        hpke_seal::check_public_key::<X25519>(&req.hpke_public_key).map_err(|_| {
            ApiError::new(
                Reason::InvalidHpkePublicKey,
                format!(
                    "hpke_public_key: {} bytes; an X25519 public key is 32",
                    req.hpke_public_key.len()
                ),
            )
        })?;
        // A key HPKE cannot seal to (e.g. a low-order X25519 point) would make every release
        // under the token fail: refuse it now.
        hpke_seal::seal_release(&req.hpke_public_key, b"kms-attest-check", b"", b"").map_err(|_| {
            ApiError::new(
                Reason::InvalidHpkePublicKey,
                "hpke_public_key: not an X25519 public key HPKE can seal to",
            )
        })?;
        let evidence = evidence_from_wire(req.evidence)?;
        audit.detail(
            "tee",
            match evidence {
                Evidence::Snp(_) => "snp",
                Evidence::Tpm(_) => "tpm",
            },
        );
        self.engine.consume(&req.nonce, who).await?;
        let (claims, hw) = self.engine.verify(&req.nonce, &req.hpke_public_key, &evidence).await?;
        audit.detail("hardware_id", hw.id.as_str());
        let issued = self.engine.issue(who, &req.hpke_public_key, claims, hw).await?;
        let claims_json = serde_json::to_string(&issued.claims.kms).unwrap_or_default();
        audit.detail("token_id", issued.claims.jti.as_str());
        audit.detail("expires_unix", issued.claims.exp);
        audit.detail("claims", serde_json::to_value(&issued.claims.kms).unwrap_or_default());
        let mut answer = pb::AttestResponse {
            token: issued.token,
            expires_unix_ms: issued.claims.exp.saturating_mul(1000),
            claims_json,
            hardware_id: issued.hardware.id,
            token_id: issued.claims.jti,
            ..Default::default()
        };
        self.node.sign_attest(&mut answer, &req.nonce, &req.hpke_public_key);
        Ok(answer)
    }

    async fn begin_tpm(
        &self,
        who: &Principal,
        req: pb::BeginTpmEnrollmentRequest,
        audit: &mut Audit,
    ) -> Result<pb::TpmEnrollmentChallenge, ApiError> {
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
        check_size("ek_certificate", &req.ek_certificate)?;
        check_size("ak_public", &req.ak_public)?;
        if req.ek_intermediates.len() > 8 {
            return Err(ApiError::new(Reason::InvalidArgument, "ek_intermediates: at most 8"));
        }
        for i in &req.ek_intermediates {
            check_size("ek_intermediates", i)?;
        }
        let intermediates: Vec<&[u8]> = req.ek_intermediates.iter().map(Vec::as_slice).collect();
        let ek: VerifiedEk = cas
            .verify(&req.ek_certificate, &intermediates, kms_core::now_unix_ms() / 1000)
            .map_err(|r| {
                let reason = match r.check {
                    attestation::Check::Malformed => Reason::EkCertificateMalformed,
                    attestation::Check::EkProfile => Reason::EkCertificateNotEk,
                    _ => Reason::EkCertificateUntrusted,
                };
                ApiError::new(reason, format!("EK certificate refused: {r}"))
            })?;
        let ak = AkPublic::from_tpm2b_public(&req.ak_public)
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
                ek_certificate: req.ek_certificate,
                ek_record: record.to_string(),
                ak_public: req.ak_public,
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
        Ok(pb::TpmEnrollmentChallenge {
            enrollment_id: id,
            id_object: blob.id_object().to_vec(),
            encrypted_secret: blob.encrypted_secret().to_vec(),
            expires_unix_ms: expires,
            ak_name,
            ek_digest,
        })
    }
}

#[tonic::async_trait]
impl pb::attestation_service_server::AttestationService for AttestationPlane {
    async fn get_node_identity(
        &self,
        request: Request<pb::GetNodeIdentityRequest>,
    ) -> Result<Response<pb::NodeIdentity>, Status> {
        let nonce = request.into_inner().nonce;
        if !(16..=64).contains(&nonce.len()) {
            return Err(ApiError::new(Reason::BadNonce, "nonce: 16 to 64 random bytes").to_status());
        }
        let status = super::admin::seal_status(&self.store, &self.seal)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(self.node.identity(&nonce, &status)))
    }

    async fn get_challenge(
        &self,
        request: Request<pb::GetChallengeRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        let who = self.caller(&request, "attestation.get_challenge").await?;
        // Not audited when it succeeds: a challenge grants nothing, and Attest records its use.
        match self.engine.challenge(&who).await {
            Ok((nonce, expires)) => Ok(Response::new(pb::Challenge {
                nonce: nonce.to_vec(),
                expires_unix_ms: expires,
            })),
            Err(e) => {
                self.audit
                    .record(Audit::new(who.as_str(), "attestation.get_challenge").failed(&e))
                    .await;
                Err(e.to_status())
            }
        }
    }

    async fn attest(&self, request: Request<pb::AttestRequest>) -> Result<Response<pb::AttestResponse>, Status> {
        let who = self.caller(&request, "attestation.attest").await?;
        let mut audit = Audit::new(who.as_str(), "attestation.attest");
        let result = self.attest(&who, request.into_inner(), &mut audit).await;
        finish(&self.audit, audit, result, true).await
    }

    async fn get_token_keys(
        &self,
        _request: Request<pb::GetTokenKeysRequest>,
    ) -> Result<Response<pb::TokenKeys>, Status> {
        let jwks_json = self.engine.jwks().await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::TokenKeys { jwks_json }))
    }

    async fn begin_tpm_enrollment(
        &self,
        request: Request<pb::BeginTpmEnrollmentRequest>,
    ) -> Result<Response<pb::TpmEnrollmentChallenge>, Status> {
        let who = self.caller(&request, "attestation.begin_tpm_enrollment").await?;
        let mut audit = Audit::new(who.as_str(), "attestation.begin_tpm_enrollment");
        let result = self.begin_tpm(&who, request.into_inner(), &mut audit).await;
        finish(&self.audit, audit, result, false).await
    }
}
