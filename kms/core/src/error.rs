//! The one error type of this crate. Messages name what is wrong and never carry key material.

/// Why a domain operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// A ciphertext blob could not be parsed.
    #[error("malformed ciphertext blob: {0}")]
    MalformedBlob(&'static str),
    /// Authenticated decryption failed: wrong key, wrong encryption context or tampered data.
    #[error("decryption failed: wrong encryption context, wrong key or tampered ciphertext")]
    DecryptFailed,
    /// An encryption context is not acceptable.
    #[error("invalid encryption context: {0}")]
    InvalidContext(String),
    /// An identifier is not well formed.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// What kind of identifier.
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A policy document is not acceptable; the message names the bad part.
    #[error("invalid {document}: {reason}")]
    InvalidPolicy {
        /// Which document.
        document: &'static str,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A public key could not be parsed.
    #[error("invalid {0} public key")]
    InvalidPublicKey(&'static str),
    /// A signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// Secret sharing failed (wrong parameters or inconsistent shares).
    #[error("secret sharing: {0}")]
    Shamir(String),
    /// The combined shares do not give the root key whose check value is recorded.
    #[error("the shares do not reconstruct the recorded root key (key check value mismatch)")]
    KeyCheckMismatch,
    /// A wrapped key-encryption key could not be unwrapped.
    #[error("cannot unwrap key-encryption key: wrong root key or corrupted record")]
    UnwrapFailed,
    /// HPKE sealing or opening failed.
    #[error("HPKE: {0}")]
    Hpke(&'static str),
    /// A key state change that the lifecycle does not allow.
    #[error("key state {from} cannot change to {to}")]
    InvalidTransition {
        /// The current state.
        from: crate::key::KeyState,
        /// The requested state.
        to: crate::key::KeyState,
    },
    /// A share envelope is malformed, or cannot be opened with the key given (wrong key,
    /// tampered envelope, or a share sealed for another admin).
    #[error("share envelope: {0}")]
    ShareEnvelope(&'static str),
    /// A signer (e.g. an HSM) could not sign; the message says why and never carries a secret.
    #[error("signing failed: {0}")]
    Signer(String),
    /// The HSM holding a root key failed (module, token or key unavailable); never a secret.
    #[error("HSM: {0}")]
    Hsm(String),
}
