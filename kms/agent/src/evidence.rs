//! Where evidence comes from: anything that, given a challenge nonce and the workload's HPKE
//! public key, returns hardware evidence that carries their binding. Our attesters (a TPM quote
//! through tss-esapi, an SNP report through `/dev/sev-guest`) implement it, and [`from_fn`]
//! adapts any other producer (tpm2-tools, a vendor's SNP guest tool).
//!
//! A source must never put anything but the binding it is given into the evidence: the server
//! refuses evidence whose REPORT_DATA or qualifying data differs (`evidence_binding_mismatch`).

use std::path::Path;

use attestation::attester::snp::SnpAttester;
use attestation::attester::tpm::{AkKey, Tpm};
use attestation::{binding, snp, tpm};

pub use kms_proto::v1::attest_request::Evidence;

use crate::error::EvidenceError;

/// What a source must attest to: the challenge nonce and the workload's HPKE public key.
#[derive(Clone, Copy, Debug)]
pub struct EvidenceRequest<'a> {
    /// The server's nonce (32 bytes).
    pub nonce: &'a [u8],
    /// The workload's X25519 HPKE public key (32 bytes).
    pub hpke_public_key: &'a [u8],
}

impl EvidenceRequest<'_> {
    /// SNP REPORT_DATA: SHA-512("kms-attest-v1\0" ‖ nonce ‖ HPKE public key).
    pub fn snp_report_data(&self) -> [u8; 64] {
        binding::snp_report_data(self.nonce, self.hpke_public_key)
    }

    /// TPM qualifying data (`tpm2_quote -q`): SHA-256("kms-attest-v1\0" ‖ nonce ‖ HPKE public key).
    pub fn tpm_qualifying_data(&self) -> [u8; 32] {
        binding::tpm_qualifying_data(self.nonce, self.hpke_public_key)
    }
}

/// Produces evidence bound to a request. Called once per attestation, synchronously: hardware
/// calls are short and blocking (a TPM quote, an SNP guest request).
pub trait EvidenceSource: Send {
    /// Evidence whose binding is `request`'s.
    fn evidence(&mut self, request: &EvidenceRequest<'_>) -> Result<Evidence, EvidenceError>;
}

impl<S: EvidenceSource + ?Sized> EvidenceSource for &mut S {
    fn evidence(&mut self, request: &EvidenceRequest<'_>) -> Result<Evidence, EvidenceError> {
        (**self).evidence(request)
    }
}

impl<S: EvidenceSource + ?Sized> EvidenceSource for Box<S> {
    fn evidence(&mut self, request: &EvidenceRequest<'_>) -> Result<Evidence, EvidenceError> {
        (**self).evidence(request)
    }
}

/// An evidence source made of a closure (see [`from_fn`]).
pub struct FnEvidence<F>(F);

impl<F> std::fmt::Debug for FnEvidence<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnEvidence")
    }
}

/// Adapts a closure to an [`EvidenceSource`], e.g. one that runs `tpm2_quote -q <binding>` and
/// reads its files back with [`tpm_evidence`].
pub fn from_fn<F>(f: F) -> FnEvidence<F>
where
    F: FnMut(&EvidenceRequest<'_>) -> Result<Evidence, EvidenceError> + Send,
{
    FnEvidence(f)
}

impl<F> EvidenceSource for FnEvidence<F>
where
    F: FnMut(&EvidenceRequest<'_>) -> Result<Evidence, EvidenceError> + Send,
{
    fn evidence(&mut self, request: &EvidenceRequest<'_>) -> Result<Evidence, EvidenceError> {
        (self.0)(request)
    }
}

/// TPM evidence (AK public, quote, signature, SHA-256 PCR values) in wire form.
pub fn tpm_evidence(evidence: &tpm::TpmEvidence) -> Evidence {
    Evidence::Tpm(kms_node::tpm_to_wire(evidence))
}

/// SNP evidence (report, VCEK/VLEK, chain) in wire form.
pub fn snp_evidence(evidence: snp::SnpEvidence) -> Evidence {
    Evidence::Snp(kms_node::snp_to_wire(evidence))
}

/// The PCRs quoted when nothing else is asked for: the firmware and boot-loader measurements
/// (0 to 7) of the TCG PC Client profile.
pub const DEFAULT_PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// Quotes SHA-256 PCRs with the AK enrolled for this machine. The TPM is opened for each quote
/// and released after it (a TPM serves one client at a time), and every object the quote loads
/// is flushed.
pub struct TpmQuoter {
    tcti: String,
    ak: AkKey,
    pcrs: Vec<u8>,
}

impl std::fmt::Debug for TpmQuoter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmQuoter")
            .field("tcti", &self.tcti)
            .field("pcrs", &self.pcrs)
            .finish_non_exhaustive()
    }
}

impl TpmQuoter {
    /// Quotes `pcrs` (indices 0 to 23; order and repeats do not matter) with `ak` on the TPM at
    /// `tcti` (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=N`).
    pub fn new(tcti: impl Into<String>, ak: AkKey, pcrs: &[u8]) -> Result<Self, EvidenceError> {
        let mut pcrs = pcrs.to_vec();
        pcrs.sort_unstable();
        pcrs.dedup();
        if pcrs.is_empty() {
            return Err(EvidenceError::Config("select at least one PCR to quote".into()));
        }
        if let Some(bad) = pcrs.iter().find(|&&i| i > 23) {
            return Err(EvidenceError::Config(format!("PCR {bad} does not exist (0 to 23)")));
        }
        ak.parsed_public()?;
        Ok(Self {
            tcti: tcti.into(),
            ak,
            pcrs,
        })
    }

    /// The PCRs quoted, ascending.
    pub fn pcrs(&self) -> &[u8] {
        &self.pcrs
    }
}

impl EvidenceSource for TpmQuoter {
    fn evidence(&mut self, request: &EvidenceRequest<'_>) -> Result<Evidence, EvidenceError> {
        let mut tpm = Tpm::open(&self.tcti)?;
        let evidence = tpm.quote(&self.ak, &request.tpm_qualifying_data(), &self.pcrs)?;
        Ok(tpm_evidence(&evidence))
    }
}

/// Asks the AMD Secure Processor for an attestation report (through the SEV-SNP guest device).
#[derive(Debug)]
pub struct SnpReporter {
    attester: SnpAttester,
    vmpl: Option<u32>,
}

impl SnpReporter {
    /// Opens the guest device at `path` (normally [`attestation::attester::snp::SEV_GUEST_DEVICE`]);
    /// reports are requested at `vmpl` (the firmware's default when `None`).
    pub fn open(path: impl AsRef<Path>, vmpl: Option<u32>) -> Result<Self, EvidenceError> {
        Ok(Self {
            attester: SnpAttester::open_path(path)?,
            vmpl,
        })
    }
}

impl EvidenceSource for SnpReporter {
    fn evidence(&mut self, request: &EvidenceRequest<'_>) -> Result<Evidence, EvidenceError> {
        let evidence = self.attester.report(request.snp_report_data(), self.vmpl)?;
        Ok(snp_evidence(evidence))
    }
}

#[cfg(test)]
mod tests {
    use attestation::tpm::PcrValues;

    use super::*;

    #[test]
    fn bindings_are_the_attestation_crate_ones() {
        let r = EvidenceRequest {
            nonce: &[7; 32],
            hpke_public_key: &[9; 32],
        };
        assert_eq!(r.snp_report_data(), binding::snp_report_data(&[7; 32], &[9; 32]));
        assert_eq!(
            r.tpm_qualifying_data(),
            binding::tpm_qualifying_data(&[7; 32], &[9; 32])
        );
    }

    #[test]
    fn closures_are_sources() {
        let mut calls = 0;
        let mut source = from_fn(|r: &EvidenceRequest<'_>| {
            calls += 1;
            Ok(snp_evidence(snp::SnpEvidence {
                report: r.snp_report_data().to_vec(),
                vek: None,
                chain: None,
            }))
        });
        let r = EvidenceRequest {
            nonce: &[1; 32],
            hpke_public_key: &[2; 32],
        };
        let Evidence::Snp(e) = source.evidence(&r).unwrap() else {
            panic!("not SNP")
        };
        assert_eq!(e.report, r.snp_report_data().to_vec());
        assert!(e.vek_certificate.is_empty() && e.cert_chain.is_empty());
        assert_eq!(calls, 1);
    }

    #[test]
    fn tpm_evidence_keeps_pcr_indices() {
        let mut pcrs = PcrValues::new();
        pcrs.insert(7, [7; 32]);
        pcrs.insert(0, [0; 32]);
        let Evidence::Tpm(e) = tpm_evidence(&tpm::TpmEvidence {
            ak_public: vec![1],
            quote: vec![2],
            signature: vec![3],
            pcrs,
        }) else {
            panic!("not TPM")
        };
        assert_eq!(e.pcrs.len(), 2);
        assert_eq!((e.pcrs[0].index, e.pcrs[0].sha256.as_slice()), (0, &[0u8; 32][..]));
        assert_eq!((e.pcrs[1].index, e.pcrs[1].sha256.as_slice()), (7, &[7u8; 32][..]));
    }

    #[test]
    fn quoters_check_their_pcr_selection() {
        let ak = AkKey {
            public: vec![0, 0],
            private: vec![0, 0],
        };
        assert!(matches!(
            TpmQuoter::new("swtpm:port=1", ak.clone(), &[]),
            Err(EvidenceError::Config(_))
        ));
        assert!(matches!(
            TpmQuoter::new("swtpm:port=1", ak.clone(), &[24]),
            Err(EvidenceError::Config(m)) if m.contains("PCR 24")
        ));
        // A malformed AK is caught before any TPM is touched.
        assert!(matches!(
            TpmQuoter::new("swtpm:port=1", ak, &[0]),
            Err(EvidenceError::Tpm(_))
        ));
    }

    #[test]
    fn a_missing_snp_device_says_so() {
        let e = SnpReporter::open("/nonexistent/sev-guest", None).unwrap_err();
        assert!(e.to_string().contains("not running in an SNP guest"), "{e}");
    }
}
