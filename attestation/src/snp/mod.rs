//! AMD SEV-SNP: verifies a raw attestation report and its VCEK/VLEK certificate against AMD's
//! pinned roots into [`SnpClaims`], or refuses naming the failed check. See README.md beside
//! this file for what is and is not checked.
//!
//! Must never accept a report whose signature was not checked over the exact received bytes, nor
//! a chain that does not end in a pinned root (or a `danger` test root the caller configured).

mod certs;
mod claims;
pub mod danger;
mod report;
mod trust;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ring::digest;
use serde::Serialize;

pub use claims::{ChipId, FirmwareVersion, GuestPolicy, PlatformInfo, Product, Signer, SnpClaims, Tcb};
pub use report::{ACCEPTED_VERSIONS, REPORT_LEN};
pub use trust::{MinimumTcb, SnpTrust};

use certs::{TrustedRoot, VekFacts};
use report::Report;

use crate::{Check, Refusal, Verifier};

/// The length of REPORT_DATA, which must equal the expected binding.
pub const REPORT_DATA_LEN: usize = 64;

/// How many verified VCEK/VLEK certificates are kept; the cache is emptied when it is full.
const CACHE_CAPACITY: usize = 4096;

/// ASVK+ARK chains for VLEKs, as AMD's key distribution service publishes them.
const VLEK_CHAINS: [(Product, &[u8]); 3] = [
    (Product::Milan, include_bytes!("roots/ask_ark_milan_vlek.pem")),
    (Product::Genoa, include_bytes!("roots/ask_ark_genoa_vlek.pem")),
    (Product::Turin, include_bytes!("roots/ask_ark_turin_vlek.pem")),
];

/// SNP evidence: the hardware's own formats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnpEvidence {
    /// The raw 1184-byte attestation report.
    pub report: Vec<u8>,
    /// The VCEK or VLEK certificate (DER). May be omitted for a VCEK this verifier has already
    /// verified for the same chip and TCB.
    pub vek: Option<Vec<u8>>,
    /// The ASK+ARK (or ASVK+ARK) PEM bundle. Optional: the pinned copies are used either way;
    /// when given it must be byte-identical to a pinned chain.
    pub chain: Option<Vec<u8>>,
}

/// The trust configuration could not be built (a test root does not parse or verify).
#[derive(Debug, thiserror::Error)]
#[error("SNP trust configuration: {0}")]
pub struct SnpConfigError(String);

/// What a VCEK/VLEK certificate states, once its chain to a trusted root has verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VekCertificate {
    /// The product of the root it chains to.
    pub product: Product,
    /// VCEK (chained to an ASK) or VLEK (to an ASVK).
    pub signer: Signer,
    /// The TCB the key was derived for.
    pub tcb: Tcb,
    /// The hwID extension (the chip id: 64 bytes, 8 on Turin), hex; absent for a VLEK.
    pub hw_id: Option<String>,
    /// The CSP id extension of a VLEK.
    pub csp_id: Option<String>,
    /// The product name extension (e.g. "Milan-B0").
    pub product_name: Option<String>,
    /// The certificate's validity (Unix seconds).
    pub not_before: i64,
    /// The certificate's validity (Unix seconds).
    pub not_after: i64,
    /// The root is a `danger` test root.
    pub danger_test_root: bool,
}

#[derive(Default)]
struct CacheInner {
    /// SHA-256 of the VCEK/VLEK DER → what its verified chain states.
    by_digest: HashMap<[u8; 32], Arc<VekFacts>>,
    /// (chip id, TCB bytes) → digest, for reports sent without their VCEK.
    by_chip: HashMap<([u8; 64], [u8; 8]), [u8; 32]>,
}

/// Verifies SEV-SNP evidence. Cheap to call concurrently; verified certificate chains are cached,
/// so a repeated VCEK costs one ECDSA verification (the report's).
pub struct SnpVerifier {
    trust: SnpTrust,
    roots: Vec<TrustedRoot>,
    cache: RwLock<CacheInner>,
}

impl std::fmt::Debug for SnpVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpVerifier")
            .field("trust", &self.trust)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

fn builtin_roots() -> Result<Vec<TrustedRoot>, String> {
    use sev::certs::snp::builtin::{genoa, milan, turin};
    let mut roots = Vec::new();
    for (product, ark, ask) in [
        (Product::Milan, milan::ARK, milan::ASK),
        (Product::Genoa, genoa::ARK, genoa::ASK),
        (Product::Turin, turin::ARK, turin::ASK),
    ] {
        let mut bundle = ask.to_vec();
        bundle.extend_from_slice(ark);
        roots.push(TrustedRoot::from_pem(product, Signer::Vcek, &bundle, false)?);
    }
    for (product, pem) in VLEK_CHAINS {
        roots.push(TrustedRoot::from_pem(product, Signer::Vlek, pem, false)?);
    }
    Ok(roots)
}

/// The chip id as a 64-byte report field holds it, from a hwID extension (64 bytes; 8 on Turin).
fn hwid_as_chip_id(hwid: &[u8]) -> Option<[u8; 64]> {
    let mut chip = [0u8; 64];
    match hwid.len() {
        8 | 64 => {
            chip[..hwid.len()].copy_from_slice(hwid);
            Some(chip)
        }
        _ => None,
    }
}

/// The chip id `report` claims, **unauthenticated**: nothing about it is checked but the report's
/// framing (length, version, signature algorithm). For fetching a registry entry in the same
/// database statement as other work before the signature is verified; act on the entry only
/// once [`SnpVerifier::verify`] has accepted the report, whose claims carry the same chip id.
pub fn unverified_chip_id(report: &[u8]) -> Result<ChipId, Refusal> {
    Ok(ChipId(Report::parse(report)?.chip_id()))
}
impl SnpVerifier {
    /// A verifier with AMD's pinned roots for Milan, Genoa and Turin (VCEK and VLEK chains), plus
    /// `trust.danger_test_roots` if set.
    pub fn new(trust: SnpTrust) -> Result<Self, SnpConfigError> {
        trust.check().map_err(SnpConfigError)?;
        let mut roots = builtin_roots().map_err(|e| SnpConfigError(format!("built-in AMD root: {e}")))?;
        if let Some(test_roots) = &trust.danger_test_roots {
            for root in &test_roots.roots {
                roots.push(
                    TrustedRoot::from_der(root.product, root.signer, &root.ark_der, &root.ask_der, true)
                        .map_err(|e| SnpConfigError(format!("danger test root: {e}")))?,
                );
            }
        }
        Ok(Self {
            trust,
            roots,
            cache: RwLock::new(CacheInner::default()),
        })
    }

    /// The trust configuration.
    pub fn trust(&self) -> &SnpTrust {
        &self.trust
    }

    /// Verifies a VCEK/VLEK certificate on its own: its chain to a trusted root for `signer`
    /// (and `product`, if given) and its validity at `now_unix`. For enrolment and diagnostics.
    pub fn verify_vek_certificate(
        &self,
        vek_der: &[u8],
        signer: Signer,
        product: Option<Product>,
        now_unix: i64,
    ) -> Result<VekCertificate, Refusal> {
        let candidates = self.candidates(signer, product, None);
        let facts = self.vek_facts(vek_der, &candidates)?;
        facts.check_validity(now_unix)?;
        Ok(VekCertificate {
            product: facts.product,
            signer: facts.signer,
            tcb: facts.tcb,
            hw_id: facts.hwid.as_ref().map(hex::encode),
            csp_id: facts.csp_id.clone(),
            product_name: facts.product_name.clone(),
            not_before: facts.windows[0].not_before,
            not_after: facts.windows[0].not_after,
            danger_test_root: facts.danger,
        })
    }

    /// Indices of the roots that may have issued a `signer` key for `product`, restricted to
    /// `chain_roots` when the evidence named its chain.
    fn candidates(&self, signer: Signer, product: Option<Product>, chain_roots: Option<&[usize]>) -> Vec<usize> {
        self.roots
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                r.signer == signer
                    && product.is_none_or(|p| p == r.product)
                    && chain_roots.is_none_or(|c| c.contains(i))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The roots whose ARK and intermediate are exactly the supplied PEM chain.
    fn supplied_chain_roots(&self, pem: &[u8]) -> Result<Vec<usize>, Refusal> {
        let ders = certs::pem_certificates(pem)
            .map_err(|e| Refusal::new(Check::CertificateChain, format!("supplied chain: {e}")))?;
        let matching: Vec<usize> = self
            .roots
            .iter()
            .enumerate()
            .filter(|(_, r)| ders.len() == 2 && ders.contains(&r.ark.der) && ders.contains(&r.ask.der))
            .map(|(i, _)| i)
            .collect();
        if matching.is_empty() {
            return Err(Refusal::new(
                Check::CertificateChain,
                "the supplied ASK/ARK chain is not a pinned AMD chain",
            ));
        }
        Ok(matching)
    }

    /// The facts of a VCEK/VLEK, from the cache or by verifying its chain to one of `candidates`.
    fn vek_facts(&self, der: &[u8], candidates: &[usize]) -> Result<Arc<VekFacts>, Refusal> {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        let cached = self
            .cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .by_digest
            .get(&key)
            .cloned();
        let facts = match cached {
            Some(facts) => facts,
            None => {
                let all: Vec<usize> = (0..self.roots.len()).collect();
                // Verified against every root, then restricted below: the result depends on the
                // certificate alone, so it can be cached whatever the report asked for.
                let facts = Arc::new(certs::verify_vek(der, &self.roots, &all)?);
                let mut cache = self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                if cache.by_digest.len() >= CACHE_CAPACITY {
                    cache.by_digest.clear();
                    cache.by_chip.clear();
                }
                if facts.signer == Signer::Vcek {
                    if let Some(chip) = facts.hwid.as_deref().and_then(hwid_as_chip_id) {
                        cache.by_chip.insert((chip, facts.tcb_raw), key);
                    }
                }
                cache.by_digest.insert(key, facts.clone());
                facts
            }
        };
        if !candidates.contains(&facts.root) {
            return Err(Refusal::new(
                Check::CertificateChain,
                format!(
                    "the certificate chains to the {} {} root, which this evidence does not allow",
                    facts.product, facts.signer
                ),
            ));
        }
        Ok(facts)
    }

    /// A VCEK verified earlier for this chip id and TCB.
    fn cached_vcek(&self, chip_id: [u8; 64], tcb_raw: [u8; 8]) -> Option<Arc<VekFacts>> {
        let cache = self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = cache.by_chip.get(&(chip_id, tcb_raw))?;
        cache.by_digest.get(key).cloned()
    }

    fn check_policy(&self, report: &Report<'_>) -> Result<(), Refusal> {
        let policy = report.policy();
        let platform = report.platform_info();
        if policy.debug {
            return Err(Refusal::new(
                Check::GuestPolicy,
                "the guest policy allows debugging (the host can read guest memory)",
            ));
        }
        if policy.migration_agent && !self.trust.allow_migration_agent {
            return Err(Refusal::new(
                Check::GuestPolicy,
                "the guest policy allows a migration agent",
            ));
        }
        if !self.trust.allow_smt && (policy.smt || platform.smt_enabled) {
            return Err(Refusal::new(
                Check::GuestPolicy,
                format!(
                    "SMT is not allowed (policy allows SMT: {}, platform has SMT enabled: {})",
                    policy.smt, platform.smt_enabled
                ),
            ));
        }
        if self.trust.require_alias_check && !platform.alias_check_complete {
            return Err(Refusal::new(
                Check::GuestPolicy,
                "the platform has not completed the memory alias check (PLATFORM_INFO ALIAS_CHECK_COMPLETE is clear: firmware without the BadRAM fix, or the check is pending)",
            ));
        }
        let vmpl = report.vmpl();
        if vmpl > 3 || !self.trust.allowed_vmpls.contains(&vmpl) {
            return Err(Refusal::new(
                Check::Vmpl,
                format!("VMPL {vmpl} is not one of {:?}", self.trust.allowed_vmpls),
            ));
        }
        Ok(())
    }

    fn check_identity(report: &Report<'_>, facts: &VekFacts) -> Result<(), Refusal> {
        let chip_id = report.chip_id();
        match (&facts.hwid, facts.signer) {
            (Some(hwid), _) => {
                let expected = hwid_as_chip_id(hwid).ok_or_else(|| {
                    Refusal::new(
                        Check::Identity,
                        format!("the certificate's hwID is {} bytes, not 64 or 8", hwid.len()),
                    )
                })?;
                if chip_id != expected {
                    return Err(Refusal::new(
                        Check::Identity,
                        format!(
                            "the report's chip id {} is not the certificate's hwID {}",
                            hex::encode(chip_id),
                            hex::encode(hwid)
                        ),
                    ));
                }
                Ok(())
            }
            (None, Signer::Vcek) => Err(Refusal::new(Check::Identity, "the VCEK has no hwID extension")),
            // A VLEK is not chip-specific: the chip id (if not masked) is only as good as the
            // firmware that signed with the provider's key.
            (None, Signer::Vlek) => Ok(()),
        }
    }

    fn claims(report: &Report<'_>, facts: &VekFacts) -> SnpClaims {
        let product = facts.product;
        let (launch_mit_vector, current_mit_vector) = report.mitigation_vectors().unzip();
        SnpClaims {
            report_version: report.version(),
            product,
            signer: facts.signer,
            danger_test_root: facts.danger,
            chip_id: ChipId(report.chip_id()),
            chip_id_masked: report.chip_id().iter().all(|&b| b == 0),
            mask_chip_key: report.mask_chip_key(),
            vlek_csp_id: facts.csp_id.clone(),
            reported_tcb: Tcb::from_report_bytes(report.reported_tcb_raw(), product),
            current_tcb: Tcb::from_report_bytes(report.current_tcb_raw(), product),
            committed_tcb: Tcb::from_report_bytes(report.committed_tcb_raw(), product),
            launch_tcb: Tcb::from_report_bytes(report.launch_tcb_raw(), product),
            current_firmware: report.current_firmware(),
            committed_firmware: report.committed_firmware(),
            measurement: report.measurement(),
            host_data: report.host_data(),
            id_key_digest: report.id_key_digest(),
            author_key_digest: report.author_key_digest(),
            author_key_en: report.author_key_en(),
            report_data: report.report_data(),
            report_id: report.report_id(),
            report_id_ma: report.report_id_ma(),
            policy: report.policy(),
            vmpl: report.vmpl(),
            platform_info: report.platform_info(),
            guest_svn: report.guest_svn(),
            family_id: report.family_id(),
            image_id: report.image_id(),
            cpuid: report.cpuid().map(|(f, m, s)| [f, m, s]),
            launch_mit_vector,
            current_mit_vector,
        }
    }
}

impl Verifier for SnpVerifier {
    type Evidence = SnpEvidence;
    type Claims = SnpClaims;

    fn verify(&self, evidence: &SnpEvidence, expected_binding: &[u8], now_unix: i64) -> Result<SnpClaims, Refusal> {
        let report = Report::parse(&evidence.report)?;
        let signer = report.signer();
        if signer == Signer::Vlek && !self.trust.accept_vlek {
            return Err(Refusal::new(
                Check::SigningKey,
                "the report is signed by a VLEK and the trust configuration does not accept VLEKs",
            ));
        }

        // Which roots may have issued the signing key: the report's signer kind, its CPUID
        // product (version 3 and later), and the supplied chain if any. Without CPUID the
        // certificate's issuer selects the product among the remaining roots.
        let chain_roots = match &evidence.chain {
            Some(pem) => Some(self.supplied_chain_roots(pem)?),
            None => None,
        };
        let product = report.cpuid_product();
        let candidates = self.candidates(signer, product, chain_roots.as_deref());
        if candidates.is_empty() {
            return Err(Refusal::new(
                Check::CertificateChain,
                format!(
                    "no trusted root issues {signer} keys for {}",
                    product.map_or("this product".to_owned(), |p| p.to_string())
                ),
            ));
        }
        let facts = match &evidence.vek {
            Some(der) => self.vek_facts(der, &candidates)?,
            None => match signer {
                Signer::Vcek => self
                    .cached_vcek(report.chip_id(), report.reported_tcb_raw())
                    .filter(|f| candidates.contains(&f.root))
                    .ok_or_else(|| {
                        Refusal::new(
                            Check::CertificateChain,
                            "no VCEK supplied, and none verified earlier for this chip id and TCB",
                        )
                    })?,
                Signer::Vlek => return Err(Refusal::new(Check::CertificateChain, "no VLEK certificate supplied")),
            },
        };
        if facts.signer != signer {
            return Err(Refusal::new(
                Check::SigningKey,
                format!("the report says {signer} but the certificate is a {}", facts.signer),
            ));
        }
        facts.check_validity(now_unix)?;
        report.verify_signature(&facts.public_key)?;

        // The report is authentic from here on.
        if expected_binding.len() != REPORT_DATA_LEN || report.report_data()[..] != *expected_binding {
            return Err(Refusal::new(
                Check::Binding,
                format!(
                    "REPORT_DATA {} is not the expected binding {}",
                    hex::encode(report.report_data()),
                    hex::encode(expected_binding)
                ),
            ));
        }
        self.check_policy(&report)?;

        let reported = report.reported_tcb_raw();
        if reported != facts.tcb_raw {
            return Err(Refusal::new(
                Check::Tcb,
                format!(
                    "the reported TCB ({}, {}) is not the certificate's ({}, {})",
                    Tcb::from_report_bytes(reported, facts.product),
                    hex::encode(reported),
                    facts.tcb,
                    hex::encode(facts.tcb_raw)
                ),
            ));
        }
        let floor = self
            .trust
            .minimum_tcb
            .for_product(facts.product)
            .filter(|_| self.trust.products.contains(&facts.product))
            .ok_or_else(|| {
                Refusal::new(
                    Check::Tcb,
                    format!(
                        "reports from {} are not accepted (not among the trusted products, which each need a minimum TCB)",
                        facts.product
                    ),
                )
            })?;
        facts
            .tcb
            .meets(floor)
            .map_err(|e| Refusal::new(Check::Tcb, format!("reported TCB on {}: {e}", facts.product)))?;
        Self::check_identity(&report, &facts)?;
        Ok(Self::claims(&report, &facts))
    }
}
