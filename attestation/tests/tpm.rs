//! TPM tests against a real software TPM (swtpm) and a second, independent TPM stack
//! (tpm2-tools). Each test manufactures and runs its own swtpm on free ports. They need the
//! `attester` feature (`cargo test -p attestation --all-features`) and fail, naming
//! scripts/setup, when swtpm or tpm2-tools are missing.
#![cfg(feature = "attester")]

#[path = "tpm/support.rs"]
mod support;

#[path = "tpm/credential.rs"]
mod credential;
#[path = "tpm/ek.rs"]
mod ek;
#[path = "tpm/quote.rs"]
mod quote;
