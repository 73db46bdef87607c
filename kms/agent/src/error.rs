//! The one error type of the agent library, and the translation of failed gRPC calls into it.
//! Every message says what went wrong and, where it is obvious, what to do. Messages must never
//! carry key material, the HPKE private key, an attestation token or an activated credential.

use std::fmt;

use attestation::attester::snp::SnpAttesterError;
use attestation::attester::tpm::TpmError;

pub use kms_client::Refusal;
pub use kms_proto::status::REASON_METADATA;
use kms_proto::Reason;

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection settings do not make sense (endpoint URL, missing CA for https, half an
    /// identity).
    #[error("{0}")]
    Config(String),
    /// A local file (TLS material, AK file, enrolment request) cannot be read or is malformed.
    #[error("{0}")]
    Input(String),
    /// Nothing (or nothing usable) answered: connection refused, TLS handshake, timeout.
    #[error("cannot reach {target}: {detail} (check the endpoint URL, that kmsd runs there, and for https the CA, client certificate and key)")]
    Unreachable {
        /// The endpoint.
        target: String,
        /// What the transport said.
        detail: String,
    },
    /// The server answered with an error status (shown with the agent's hint).
    #[error("{refusal}{hint}", refusal = .0, hint = hint_suffix(.0))]
    Refused(Refusal),
    /// The server's answer is not acceptable: a data key in plaintext where it must be sealed, no
    /// sealed key, a key id or version that does not match the blob, a sealed key that does not
    /// open. Nothing from such an answer is used.
    #[error("the server's answer is refused: {0}")]
    BadResponse(String),
    /// The evidence could not be produced on this machine.
    #[error("cannot produce attestation evidence: {0}")]
    Evidence(#[from] EvidenceError),
    /// A TPM operation (enrolment, reading an AK) failed.
    #[error("TPM: {0}")]
    Tpm(#[from] TpmError),
    /// The answering kmsd is not one the node policy trusts, or an answer is not signed by a
    /// node that was verified: nothing from it is used.
    #[error("kmsd is not trusted: {0}")]
    Node(#[from] kms_node::NodeError),
}

impl Error {
    /// The server's refusal, when it refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The server's stable reason code (`kms-reason`) as sent, when it refused with one.
    pub fn reason(&self) -> Option<&str> {
        self.refusal().and_then(Refusal::reason_name)
    }

    /// The server's stable reason, when it refused with one this agent knows: what to match on.
    pub fn known_reason(&self) -> Option<Reason> {
        self.refusal().and_then(Refusal::reason)
    }

    pub(crate) fn bad_response(what: impl fmt::Display) -> Self {
        Self::BadResponse(what.to_string())
    }

    /// The error for a failed gRPC call to `target` (an endpoint, for messages): a refusal with
    /// the server's reason code and the agent's hint, or, for a status without a reason code
    /// that carries a transport error or says "unavailable" (made by the client's own
    /// transport, not by kmsd), [`Error::Unreachable`].
    pub fn from_grpc_status(status: tonic::Status, target: &str) -> Self {
        kms_client::Error::from_status(status, target).into()
    }
}

/// The channel's and the call's errors, in the agent's terms: settings are [`Error::Config`], an
/// unreadable TLS file [`Error::Input`], a refusal gets the agent's hint.
impl From<kms_client::Error> for Error {
    fn from(e: kms_client::Error) -> Self {
        use kms_client::Error as C;
        match e {
            C::Unreachable { target, detail } => Self::Unreachable { target, detail },
            C::Refused(r) => {
                let hint = r.reason().and_then(hint_for);
                Self::Refused(r.with_hint(hint))
            }
            e @ C::Read { .. } => Self::Input(e.to_string()),
            e => Self::Config(e.to_string()),
        }
    }
}

/// `; HINT` after a refusal, when the agent knows what to do about it.
fn hint_suffix(r: &Refusal) -> String {
    r.hint().map(|h| format!("; {h}")).unwrap_or_default()
}

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The TPM failed (or is absent).
    #[error("TPM: {0}")]
    Tpm(#[from] TpmError),
    /// The SEV-SNP guest device failed (or is absent).
    #[error("SEV-SNP: {0}")]
    Snp(#[from] SnpAttesterError),
    /// The evidence source's configuration is unusable (e.g. no PCR selected).
    #[error("{0}")]
    Config(String),
    /// An external evidence source (see [`crate::evidence::from_fn`]) failed.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl EvidenceError {
    /// Wraps the error of an external evidence source.
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Other(e.into())
    }
}

/// What the workload's operator can do about a refusal, by its stable reason.
fn hint_for(reason: Reason) -> Option<&'static str> {
    use Reason as R;
    Some(match reason {
        R::HardwareNotEnrolled => {
            "this machine is not in the hardware registry: enrol it (`kms-agent tpm enroll`, then an admin submits the request with EnrollHardware)"
        }
        R::HardwareRevoked => "this machine has been revoked by an admin; ask them why before enrolling it again",
        R::HardwareOutsideJurisdiction => "the machine's registered country is not in the server's allowed jurisdictions",
        R::NonceExpired => "producing the evidence took longer than the challenge lifetime: run again (and check the TPM or SNP device is responsive)",
        R::NonceReplayed | R::NonceUnknown => {
            "every attestation asks for a fresh challenge: run again; if this repeats, something replays requests or the replicas do not share a database"
        }
        R::EvidenceBindingMismatch => {
            "the evidence does not carry H(nonce, HPKE key): an external evidence source must put exactly the binding it was given into REPORT_DATA / the quote's qualifying data"
        }
        R::EvidenceHardwareIdentity => {
            "the quote is signed by another AK than the one enrolled for this machine: use the AK file written at enrolment (--ak)"
        }
        R::EvidencePcrs => "the PCR values do not match what the quote signed, or are not allowed: check --pcrs and the boot state",
        R::EvidenceCounters => "the TPM's clock or reset counters went backwards since the last quote: this TPM's state was rolled back",
        R::TokenExpired | R::TokenNotYetValid => "the attestation token is outside its lifetime: attest again (and check the clocks)",
        R::TokenMalformed | R::TokenUnknownKey | R::TokenBadSignature | R::TokenWrongAudience => {
            "the server does not accept this token (tokens from another server, or the server's token keys changed): attest again"
        }
        R::TokenPrincipalMismatch => "a token is valid only for the client certificate it was issued to: use the same --cert/--key for attest and release",
        R::ReleasePolicyNotMet => "the key's release policy does not accept this machine's claims (`kms-agent attest` shows them; an admin can show the policy)",
        R::AttestationRequired => "this key releases plaintext only to attested workloads",
        R::NotPermitted => "the key's grants do not allow this client certificate this operation",
        R::NoClientCertificate | R::BadClientCertificate => {
            "the server identifies callers by their client certificate: pass --cert and --key"
        }
        R::KeyNotFound => "no key with this id or name (or not visible to this client)",
        R::KeyDisabled | R::KeyPendingDeletion | R::KeyDestroyed => "the key cannot be used in its current state; ask an admin",
        R::DecryptFailed | R::InvalidContext => "pass exactly the --context pairs given when the blob was made",
        R::KeyMismatch => "the blob is under another key than --key",
        R::Sealed => "the server is sealed: custodians must unseal it (`kmsctl unseal`)",
        R::TpmEnrollmentNotConfigured => "the server has no TPM-manufacturer CA bundle (attestation.tpm_ek_ca_bundle), so it cannot enrol TPMs",
        R::EkCertificateUntrusted => {
            "the EK certificate does not chain to the server's TPM-manufacturer CA bundle: pass missing intermediates with --ek-intermediate, or have the bundle extended"
        }
        R::TpmEnrollmentExpired => "the enrolment challenge expired before the admin submitted it: run `kms-agent tpm enroll` again",
        R::TpmEnrollmentUsed => "this enrolment request was already submitted",
        R::DatabaseUnavailable | R::AuditUnavailable => "the server cannot write to its database; nothing took effect: retry once it is back",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, reason: Option<&str>) -> tonic::Status {
        let mut s = tonic::Status::new(code, "msg");
        if let Some(r) = reason {
            s.metadata_mut().insert(REASON_METADATA, r.parse().unwrap());
        }
        s
    }

    #[test]
    fn refusals_carry_reason_and_hint() {
        let e = Error::from_grpc_status(
            status(tonic::Code::PermissionDenied, Some("hardware_not_enrolled")),
            "https://kms",
        );
        assert_eq!(e.reason(), Some("hardware_not_enrolled"));
        assert_eq!(e.known_reason(), Some(Reason::HardwareNotEnrolled));
        let text = e.to_string();
        assert!(
            text.starts_with("the server refused: PERMISSION_DENIED (hardware_not_enrolled): msg; "),
            "{text}"
        );
        assert!(text.contains("kms-agent tpm enroll"), "{text}");
    }

    #[test]
    fn transport_failures_are_unreachable() {
        let e = Error::from_grpc_status(status(tonic::Code::Unavailable, None), "https://kms:7300");
        assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("https://kms:7300"));
        // A server-made Unavailable carries a reason.
        let e = Error::from_grpc_status(status(tonic::Code::Unavailable, Some("sealed")), "x");
        assert!(matches!(e, Error::Refused(_)));
    }
}
