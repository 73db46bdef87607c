//! TPM 2.0 evidence: verifies a quote (TPMS_ATTEST signed by an attestation key) into
//! [`TpmClaims`]; validates endorsement-key certificates against TPM-manufacturer CAs
//! ([`ek`]); and runs MakeCredential in software, the server's half of credential activation
//! ([`credential`]). See README.md beside this file for what is checked and what is not.
//!
//! Evidence is in the TPM's own formats, so tpm2-tools, tss-esapi or any other TPM stack can
//! produce it. The verifier parses TPM structures itself (no libtss2), never panics on
//! malformed input, and checks every signature over the exact bytes received.

use ring::digest;
use serde::{Serialize, Serializer};

use crate::{Check, Refusal, Verifier};

mod ak;
pub mod credential;
pub mod ek;
mod pcr;
mod wire;

pub use ak::{AkName, AkPublic, SignatureScheme};
pub use pcr::PcrValues;

/// A quote and what is needed to check it, each in the format the TPM tools write.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TpmEvidence {
    /// The AK's public area, TPM2B_PUBLIC (`tpm2_createak -u`).
    pub ak_public: Vec<u8>,
    /// The quote, TPMS_ATTEST bytes as signed (`tpm2_quote -m`).
    pub quote: Vec<u8>,
    /// The quote's signature, TPMT_SIGNATURE (`tpm2_quote -s`).
    pub signature: Vec<u8>,
    /// The SHA-256 PCR values the quote selects (`tpm2_quote -o`, parsed with
    /// [`PcrValues::from_tpm2_tools`]).
    pub pcrs: PcrValues,
}

/// What a TPM verifier trusts.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TpmTrust {
    expected_ak: Option<AkName>,
}

impl TpmTrust {
    /// Accept only quotes signed by the AK with this name (the one enrolled for the machine,
    /// bound to its EK by credential activation). Any other AK is an `Identity` refusal.
    pub fn enrolled_ak(name: AkName) -> Self {
        Self {
            expected_ak: Some(name),
        }
    }

    /// Accept a quote from any AK that is a restricted signing key. The caller must then look
    /// up [`TpmClaims::ak_name`] among enrolled, active machines before trusting anything in the
    /// claims: without that, the claims prove nothing about which machine produced them.
    pub fn ak_checked_by_caller() -> Self {
        Self { expected_ak: None }
    }
}

/// Verifies TPM quotes. See the module documentation.
#[derive(Clone, Debug)]
pub struct TpmVerifier {
    trust: TpmTrust,
}

impl TpmVerifier {
    /// A verifier with `trust`.
    pub fn new(trust: TpmTrust) -> Self {
        Self { trust }
    }
}

/// The PCR bank the claims' values come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PcrBank {
    /// SHA-256.
    Sha256,
}

/// The TPM's clock and boot counters at the time of the quote (TPMS_CLOCK_INFO). The server
/// keeps the last one seen per AK and refuses a quote whose counters went backwards
/// ([`ClockInfo::check_after`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since it was manufactured (or last cleared).
    pub clock: u64,
    /// TPM Resets (reboots) since the last TPM2_Clear.
    pub reset_count: u32,
    /// TPM Restarts/Resumes (e.g. hibernation) since the last Reset.
    pub restart_count: u32,
    /// Whether `clock` cannot have gone backwards since it was last reported.
    pub safe: bool,
}

impl ClockInfo {
    /// Refuses (`Counters`) unless this clock info can follow `earlier` from the same TPM: the
    /// reset count does not decrease; within one reset the restart count does not decrease;
    /// within one boot cycle the clock does not go back. (After a Reset the clock may go back
    /// if it was not `safe`, so it is not compared across Resets.)
    pub fn check_after(&self, earlier: &ClockInfo) -> Result<(), Refusal> {
        let backwards = |what: &str, now: u64, before: u64| {
            Err(Refusal::new(
                Check::Counters,
                format!("{what} went backwards: {now} after {before}"),
            ))
        };
        if self.reset_count < earlier.reset_count {
            return backwards("resetCount", self.reset_count.into(), earlier.reset_count.into());
        }
        if self.reset_count == earlier.reset_count {
            if self.restart_count < earlier.restart_count {
                return backwards("restartCount", self.restart_count.into(), earlier.restart_count.into());
            }
            if self.restart_count == earlier.restart_count && self.clock < earlier.clock {
                return backwards("clock", self.clock, earlier.clock);
            }
        }
        Ok(())
    }
}

fn hex_bytes<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// u64 as 16 hex digits: JSON readers that parse numbers as doubles would round it.
fn hex_u64<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

/// What a verified quote proves: the AK (by name) signed, at that clock, over these PCR values
/// and this binding. Which machine that AK belongs to is for the hardware registry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
#[non_exhaustive]
pub struct TpmClaims {
    /// The quoting AK's name (hex).
    pub ak_name: AkName,
    /// The scheme of the quote's signature.
    pub signature_scheme: SignatureScheme,
    /// The bank of `pcrs`.
    pub pcr_bank: PcrBank,
    /// The quoted PCR values, exactly those the quote selects.
    pub pcrs: PcrValues,
    /// Clock and boot counters.
    pub clock_info: ClockInfo,
    /// The TPM firmware version (vendor-specific; 16 hex digits in JSON).
    #[serde(serialize_with = "hex_u64")]
    pub firmware_version: u64,
    /// The AK's qualified name as the TPM reports it (its hierarchy path; hex).
    #[serde(serialize_with = "hex_bytes")]
    pub qualified_signer: Vec<u8>,
    /// The quote's qualifying data (equal to the expected binding; hex).
    #[serde(serialize_with = "hex_bytes")]
    pub extra_data: Vec<u8>,
}

impl Verifier for TpmVerifier {
    type Evidence = TpmEvidence;
    type Claims = TpmClaims;

    /// Checks, in order: the AK public area parses and is a restricted, fixedTPM signing key
    /// (`Malformed`, `SigningKey`); its name is the enrolled one if one is configured
    /// (`Identity`); the signature over the exact quote bytes (`Malformed`, `SigningKey`,
    /// `Signature`); magic and type (`Version`); the quote parses (`Malformed`); extraData equals
    /// `expected_binding` (`Binding`); the supplied PCR values are exactly the selected ones and
    /// their digest is the quote's (`Pcrs`). `now_unix` is not used: a quote has no certificate.
    fn verify(&self, evidence: &TpmEvidence, expected_binding: &[u8], _now_unix: i64) -> Result<TpmClaims, Refusal> {
        let ak = AkPublic::from_tpm2b_public(&evidence.ak_public)?;
        if let Some(expected) = &self.trust.expected_ak {
            if ak.name() != expected {
                return Err(Refusal::new(
                    Check::Identity,
                    format!("quote signed by AK {}, enrolled AK is {expected}", ak.name()),
                ));
            }
        }
        // Authenticate before parsing: only TPM-signed bytes are interpreted.
        let signature_scheme = ak.verify(&evidence.quote, &evidence.signature)?;
        let quote = wire::quote(&evidence.quote)?;

        if quote.extra_data != expected_binding {
            return Err(Refusal::new(
                Check::Binding,
                format!(
                    "quote extraData {} is not the expected binding {}",
                    hex::encode(quote.extra_data),
                    hex::encode(expected_binding)
                ),
            ));
        }

        let pcrs = check_pcrs(&quote, &evidence.pcrs)?;

        Ok(TpmClaims {
            ak_name: ak.name().clone(),
            signature_scheme,
            pcr_bank: PcrBank::Sha256,
            pcrs,
            clock_info: ClockInfo {
                clock: quote.clock,
                reset_count: quote.reset_count,
                restart_count: quote.restart_count,
                safe: quote.safe,
            },
            firmware_version: quote.firmware_version,
            qualified_signer: quote.qualified_signer.to_vec(),
            extra_data: quote.extra_data.to_vec(),
        })
    }
}

/// Recomputes the PCR digest over the quote's own selection from the supplied values. Returns the
/// selected values; refuses a selection outside the SHA-256 bank, an empty selection, a missing
/// or unselected value, and a digest mismatch.
fn check_pcrs(quote: &wire::Quote<'_>, supplied: &PcrValues) -> Result<PcrValues, Refusal> {
    let refuse = |detail: String| Err(Refusal::new(Check::Pcrs, detail));
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut selected = PcrValues::new();
    for selection in &quote.pcr_select {
        let mut indices = selection.indices().peekable();
        if indices.peek().is_none() {
            continue;
        }
        if selection.hash != wire::alg::SHA256 {
            return refuse(format!(
                "the quote selects PCRs of bank {:#06x}; only SHA-256 is supported",
                selection.hash
            ));
        }
        for index in indices {
            let Some(value) = supplied.get(index) else {
                return refuse(format!("PCR {index} is selected by the quote but its value is missing"));
            };
            ctx.update(value);
            selected.insert(index, *value);
        }
    }
    if selected.is_empty() {
        return refuse("the quote selects no PCR".into());
    }
    if let Some((index, _)) = supplied.iter().find(|(i, _)| selected.get(*i).is_none()) {
        return refuse(format!("PCR {index} is supplied but not selected by the quote"));
    }
    let computed = ctx.finish();
    if computed.as_ref() != quote.pcr_digest {
        return refuse(format!(
            "PCR digest of the supplied values {} is not the quote's {}",
            hex::encode(computed.as_ref()),
            hex::encode(quote.pcr_digest)
        ));
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_must_not_go_backwards() {
        let base = ClockInfo {
            clock: 1000,
            reset_count: 5,
            restart_count: 2,
            safe: true,
        };
        let later = |clock, reset_count, restart_count| ClockInfo {
            clock,
            reset_count,
            restart_count,
            safe: true,
        };
        assert!(later(1001, 5, 2).check_after(&base).is_ok());
        assert!(later(1000, 5, 2).check_after(&base).is_ok());
        assert!(later(10, 6, 0).check_after(&base).is_ok());
        assert!(later(10, 5, 3).check_after(&base).is_ok());
        for bad in [later(999, 5, 2), later(2000, 4, 9), later(2000, 5, 1)] {
            assert_eq!(bad.check_after(&base).unwrap_err().check, Check::Counters);
        }
    }
}
