//! Why evidence was refused: a stable check name (for callers and metrics) and a detail (for the
//! audit log). Details never contain secrets; evidence is not secret.

use std::fmt;

/// The check that failed. Stable names: they appear in audit entries and on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Check {
    /// The evidence could not be parsed.
    Malformed,
    /// A certificate chain does not lead to a trusted root, or a certificate is invalid.
    CertificateChain,
    /// A certificate is outside its validity period at the evaluation time.
    CertificateValidity,
    /// The evidence's signature does not verify.
    Signature,
    /// The binding (REPORT_DATA / extraData) is not the expected one.
    Binding,
    /// A report or quote version, magic or type that is not accepted.
    Version,
    /// The guest policy forbids what the trust configuration requires (e.g. debug).
    GuestPolicy,
    /// The TCB is below the minimum or does not match the certificate.
    Tcb,
    /// The hardware identity does not match (chip id vs VCEK hwID, AK vs enrolment).
    Identity,
    /// The VMPL is not allowed.
    Vmpl,
    /// The signing key kind is not allowed (e.g. VLEK without policy).
    SigningKey,
    /// PCR values do not match the quote's digest or are not allowed.
    Pcrs,
    /// Clock or reset counters went backwards.
    Counters,
    /// An EK certificate does not follow the TCG EK Credential Profile (EK key purpose, TPM
    /// manufacturer, model and version in the subjectAltName).
    EkProfile,
}

impl Check {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_evidence",
            Self::CertificateChain => "certificate_chain",
            Self::CertificateValidity => "certificate_validity",
            Self::Signature => "evidence_signature",
            Self::Binding => "binding_mismatch",
            Self::Version => "unsupported_version",
            Self::GuestPolicy => "guest_policy",
            Self::Tcb => "tcb",
            Self::Identity => "hardware_identity",
            Self::Vmpl => "vmpl",
            Self::SigningKey => "signing_key",
            Self::Pcrs => "pcrs",
            Self::Counters => "counters",
            Self::EkProfile => "ek_profile",
        }
    }
}

/// A refusal: which check failed, and what exactly.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refusal {
    /// The failed check.
    pub check: Check,
    /// What was found, for the audit log.
    pub detail: String,
}

impl Refusal {
    /// A refusal of `check` with `detail`.
    pub fn new(check: Check, detail: impl Into<String>) -> Self {
        Self {
            check,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check.as_str(), self.detail)
    }
}

impl std::error::Error for Refusal {}
