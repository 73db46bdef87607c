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
pub mod integrity;
pub mod jurisdiction;
pub mod key;
pub mod keyfile;
pub mod policy;
pub mod root;
pub mod secret;
pub mod shamir;
pub mod share_wrap;
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

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2025-03-01T12:00:00Z`.
pub fn rfc3339_utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil: exact for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339_utc_known_instants() {
        assert_eq!(super::rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339_utc(1_740_830_400_999), "2025-03-01T12:00:00Z");
        assert_eq!(super::rfc3339_utc(-1_000), "1969-12-31T23:59:59Z");
    }
}
