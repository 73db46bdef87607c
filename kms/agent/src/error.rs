//! The one error type of the agent library, and the translation of failed gRPC calls into it.
//! Every message says what went wrong and, where it is obvious, what to do. Messages must never
//! carry key material, the HPKE private key, an attestation token or an activated credential.

use std::fmt;

use attestation::attester::snp::SnpAttesterError;
use attestation::attester::tpm::TpmError;

use kms_proto::status::code_name;
pub use kms_proto::status::REASON_METADATA;

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
    /// The server answered with an error status.
    #[error("{0}")]
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

    /// The server's stable reason code (`kms-reason`), when it refused with one.
    pub fn reason(&self) -> Option<&str> {
        self.refusal().and_then(|r| r.reason.as_deref())
    }

    pub(crate) fn bad_response(what: impl fmt::Display) -> Self {
        Self::BadResponse(what.to_string())
    }

    /// The error for a failed gRPC call to `target` (an endpoint, for messages): a refusal with
    /// the server's reason code, or, for a status without a reason code that carries a
    /// transport error or says "unavailable" (made by the client's own transport, not by kmsd),
    /// [`Error::Unreachable`].
    pub fn from_grpc_status(status: tonic::Status, target: &str) -> Self {
        let reason = status
            .metadata()
            .get(REASON_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if reason.is_none()
            && (std::error::Error::source(&status).is_some()
                || matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ))
        {
            return Self::Unreachable {
                target: target.to_owned(),
                detail: status_detail(&status),
            };
        }
        Self::Refused(Refusal {
            code: status.code(),
            message: status.message().to_owned(),
            reason,
        })
    }
}

/// What the server said when it refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The gRPC status code.
    pub code: tonic::Code,
    /// The server's message (for humans; may change).
    pub message: String,
    /// The stable `kms-reason` code, when the server sent one.
    pub reason: Option<String>,
}

impl Refusal {
    /// The canonical gRPC name of the status code, e.g. `PERMISSION_DENIED`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }

    /// What the workload's operator can do about it, by the reason code.
    pub fn hint(&self) -> Option<&'static str> {
        self.reason.as_deref().and_then(hint_for)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server refused: {}", self.code_name())?;
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(h) = self.hint() {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
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

use kms_proto::status::detail as status_detail;

pub(crate) use kms_proto::status::error_chain;

/// What to do about a refusal, by its stable reason code.
fn hint_for(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "hardware_not_enrolled" => {
            "this machine is not in the hardware registry: enrol it (`kms-agent tpm enroll`, then an admin submits the request with EnrollHardware)"
        }
        "hardware_revoked" => "this machine has been revoked by an admin; ask them why before enrolling it again",
        "hardware_outside_jurisdiction" => "the machine's registered country is not in the server's allowed jurisdictions",
        "nonce_expired" => "producing the evidence took longer than the challenge lifetime: run again (and check the TPM or SNP device is responsive)",
        "nonce_replayed" | "nonce_unknown" => {
            "every attestation asks for a fresh challenge: run again; if this repeats, something replays requests or the replicas do not share a database"
        }
        "evidence_binding_mismatch" => {
            "the evidence does not carry H(nonce, HPKE key): an external evidence source must put exactly the binding it was given into REPORT_DATA / the quote's qualifying data"
        }
        "evidence_hardware_identity" => {
            "the quote is signed by another AK than the one enrolled for this machine: use the AK file written at enrolment (--ak)"
        }
        "evidence_pcrs" => "the PCR values do not match what the quote signed, or are not allowed: check --pcrs and the boot state",
        "evidence_counters" => "the TPM's clock or reset counters went backwards since the last quote: this TPM's state was rolled back",
        "token_expired" | "token_not_yet_valid" => "the attestation token is outside its lifetime: attest again (and check the clocks)",
        "token_malformed" | "token_unknown_key" | "token_bad_signature" | "token_wrong_audience" => {
            "the server does not accept this token (tokens from another server, or the server's token keys changed): attest again"
        }
        "token_principal_mismatch" => "a token is valid only for the client certificate it was issued to: use the same --cert/--key for attest and release",
        "release_policy_not_met" => "the key's release policy does not accept this machine's claims (`kms-agent attest` shows them; an admin can show the policy)",
        "attestation_required" => "this key releases plaintext only to attested workloads",
        "not_permitted" => "the key's grants do not allow this client certificate this operation",
        "no_client_certificate" | "bad_client_certificate" => {
            "the server identifies callers by their client certificate: pass --cert and --key"
        }
        "key_not_found" => "no key with this id or name (or not visible to this client)",
        "key_disabled" | "key_pending_deletion" | "key_destroyed" => "the key cannot be used in its current state; ask an admin",
        "decrypt_failed" | "wrong_context" | "invalid_context" => "pass exactly the --context pairs given when the blob was made",
        "key_mismatch" => "the blob is under another key than --key",
        "sealed" => "the server is sealed: custodians must unseal it (`kmsctl unseal`)",
        "tpm_enrollment_not_configured" => "the server has no TPM-manufacturer CA bundle (attestation.tpm_ek_ca_bundle), so it cannot enrol TPMs",
        "ek_certificate_untrusted" => {
            "the EK certificate does not chain to the server's TPM-manufacturer CA bundle: pass missing intermediates with --ek-intermediate, or have the bundle extended"
        }
        "tpm_enrollment_expired" => "the enrolment challenge expired before the admin submitted it: run `kms-agent tpm enroll` again",
        "tpm_enrollment_used" => "this enrolment request was already submitted",
        "database_unavailable" | "audit_unavailable" => "the server cannot write to its database; nothing took effect: retry once it is back",
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
