//! Evidence messages: protobuf to the verifiers' types.

use crate::attest::{Attested, Evidence, TpmChallenge};
use crate::error::ApiError;
use crate::node::{Evidence as NodeEvidence, Node};
use attestation::snp::SnpEvidence;
use kms_proto::v1 as pb;
use kms_proto::Reason;

/// Largest evidence part accepted (certificates, reports, quotes are far smaller).
pub(crate) const MAX_PART: usize = 16 * 1024;

pub(crate) fn check_size(what: &str, b: &[u8]) -> Result<(), ApiError> {
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

/// An Attest answer.
pub(crate) fn attested_to_wire(a: Attested) -> pb::AttestResponse {
    pb::AttestResponse {
        token: a.token,
        expires_unix_ms: a.expires_unix_ms,
        claims_json: a.claims_json,
        hardware_id: a.hardware_id,
        token_id: a.token_id,
        node_public_key: a.node_public_key,
        node_signature: a.node_signature,
    }
}

/// A TPM credential challenge.
pub(crate) fn tpm_challenge_to_wire(c: TpmChallenge) -> pb::TpmEnrollmentChallenge {
    pb::TpmEnrollmentChallenge {
        enrollment_id: c.enrollment_id,
        id_object: c.id_object,
        encrypted_secret: c.encrypted_secret,
        expires_unix_ms: c.expires_unix_ms,
        ak_name: c.ak_name,
        ek_digest: c.ek_digest,
    }
}

/// The node's hardware evidence on the wire.
pub fn node_evidence_to_wire(e: &NodeEvidence) -> pb::node_identity::Evidence {
    match e {
        NodeEvidence::Snp(s) => pb::node_identity::Evidence::Snp(kms_node::snp_to_wire(s.clone())),
        NodeEvidence::Tpm { quote, ek_certificate } => pb::node_identity::Evidence::Tpm(pb::NodeTpmEvidence {
            quote: Some(kms_node::tpm_to_wire(quote)),
            ek_certificate: ek_certificate.clone(),
        }),
    }
}

/// GetNodeIdentity's answer for `nonce`: the statement, the evidence and `status`, signed by
/// the node key over the nonce.
pub(crate) fn node_identity(node: &Node, nonce: &[u8], status: &pb::SealStatus) -> pb::NodeIdentity {
    kms_node::identity(
        node.key(),
        node.statement(),
        node.evidence().map(node_evidence_to_wire),
        node.no_evidence_reason(),
        nonce,
        status,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_must_be_named() {
        assert_eq!(
            evidence_from_wire(None).err().map(|e| e.reason),
            Some(Reason::MissingEvidence)
        );
    }
}
