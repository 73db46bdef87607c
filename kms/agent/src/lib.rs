//! The workload side of attested key release, and the machine side of TPM enrolment.
//!
//! A workload proves where it runs and receives data keys that only it can open:
//!
//! 1. [`Client::connect`] to kmsd (mutual TLS: the server identifies the workload by its client
//!    certificate).
//! 2. [`Client::attest`] with an [`EvidenceSource`]: a challenge nonce and a fresh X25519 HPKE
//!    key pair are bound into hardware evidence (a TPM quote with [`TpmQuoter`], an SEV-SNP
//!    report with [`SnpReporter`], or anything else through [`evidence::from_fn`]); the server
//!    answers with a short-lived token, held in a [`Session`] with the HPKE private key.
//! 3. [`Session::generate_data_key`] and [`Session::decrypt`]: the server evaluates the key's
//!    release policy on the token's claims and returns the secret HPKE-sealed to the session's
//!    key; it is checked and opened here.
//!
//! A machine with a TPM is enrolled once with [`Client::enroll_tpm`]: the [`EnrollmentRequest`]
//! goes to an admin (AdminService.EnrollHardware), the AK stays on the machine ([`encode_ak`]).
//!
//! This crate never logs, never puts key material, tokens or activated credentials in errors,
//! and never accepts a data key that crossed the wire unsealed.
#![warn(missing_docs)]

mod client;
mod enroll;
pub mod envelope;
mod error;
pub mod evidence;
mod session;

pub use attestation::attester::tpm::{AkKey, AkScheme, EkKind};
pub use client::{Challenge, Client, ClientConfig, NodeTrust};
pub use enroll::{decode_ak, encode_ak, EnrollmentRequest, PendingEnrollment, TpmEnrollOptions};
pub use envelope::KmsdKeyring;
pub use error::{Error, EvidenceError, Refusal, REASON_METADATA};
pub use evidence::{EvidenceRequest, EvidenceSource, SnpReporter, TpmQuoter};
pub use kms_client::{ChannelConfig, Reason, TlsFiles, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT};
pub use kms_core::secret::SecretBytes;
pub use kms_node::{NodeError, NodePolicy, VerifiedNode};
pub use session::{GeneratedKey, ReleaseOperation, Session, DATA_KEY_LEN};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The agent's futures can run on a multi-threaded runtime (`tokio::spawn`).
    #[allow(dead_code)]
    fn futures_are_send(client: Client, session: Session, mut source: TpmQuoter) {
        fn send<T: Send>(_: T) {}
        let context = BTreeMap::new();
        send(async move {
            let _ = client.attest(&mut source).await;
            let _ = client.enroll_tpm(&TpmEnrollOptions::new("device:/dev/tpmrm0")).await;
            let _ = session.generate_data_key("k", &context).await;
            let _ = session.decrypt(b"", &context, None).await;
        });
    }
}
