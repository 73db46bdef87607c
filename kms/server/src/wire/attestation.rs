//! Evidence messages: protobuf to the verifiers' types.

use crate::attest::Evidence;
use crate::error::ApiError;
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
