//! The domain of the key management service: secret types, identifiers, the key hierarchy, the
//! ciphertext blob format, the seals' cryptography, admin-request signatures, access and release
//! policies, and the audit chain.
//!
//! This crate does no I/O and knows nothing of gRPC or SQL, so the server, the CLI and offline
//! verifiers share one definition of every format. It must never log, and no type in it that holds
//! key material implements `Debug`, `Clone` or `Serialize`.
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod blob;
pub mod claims;
pub mod context;
mod error;
pub mod hpke_seal;
pub mod ids;
pub mod jurisdiction;
pub mod key;
pub mod keyfile;
pub mod policy;
pub mod root;
pub mod secret;
pub mod shamir;
pub mod token;

pub use error::Error;

/// Milliseconds since the Unix epoch, as the service stores times.
pub fn now_unix_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_fill(buf: &mut [u8]) -> Result<(), Error> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(buf).map_err(|_| Error::Rng)
}

/// `N` random bytes from the operating system's CSPRNG.
pub fn random_array<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    random_fill(&mut out)?;
    Ok(out)
}
