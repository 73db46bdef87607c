//! Decides whether evidence proves that a workload runs on genuine, approved hardware: AMD
//! SEV-SNP attestation reports and TPM 2.0 quotes, verified into typed claims or refused with the
//! name of the check that failed. No server, database or network: the same code runs in `kmsd`
//! and in the offline verifier (`kmsctl verify`).
//!
//! Must never panic on malformed input, and never accept evidence that skipped a check.
#![warn(missing_docs)]

pub mod binding;
mod refusal;
pub mod snp;
pub mod tpm;

#[cfg(feature = "attester")]
pub mod attester;

pub use refusal::{Check, Refusal};

/// A verifier for one kind of evidence. Implementations hold their trust configuration (roots,
/// minimum TCB, what is allowed) and are cheap to call many times (chains are cached).
pub trait Verifier {
    /// The evidence this verifier takes.
    type Evidence: ?Sized;
    /// What verified evidence proves.
    type Claims;

    /// Verifies `evidence` against the binding the caller expects (see [`binding`]) at time
    /// `now` (seconds since the Unix epoch; certificates are checked for validity then).
    fn verify(
        &self,
        evidence: &Self::Evidence,
        expected_binding: &[u8],
        now_unix: i64,
    ) -> Result<Self::Claims, Refusal>;
}
