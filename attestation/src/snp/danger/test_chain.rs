//! DANGER: fake AMD-style certificate chains and synthetic SNP reports, for tests only.
//!
//! A [`TestChain`] is an RSA-PSS ARK and ASK (or ASVK) made from fixed test keys shipped in the
//! source tree, and a fresh P-384 VCEK (or VLEK) carrying AMD's hwID and TCB extensions. It signs
//! [`TestReport`]s with any field chosen, so tests can drive the verifier into every refusal.
//! Its roots are trusted only when passed as `SnpTrust::danger_test_roots`, and claims verified
//! through them say `danger_test_root: true`.
//!
//! Must never be enabled outside tests: the RSA private keys here are public.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PSS_SHA384};

use super::der;
use super::{DangerTestRoot, DangerTestRoots};
use crate::snp::report::{REPORT_LEN, SIGNED_LEN};
use crate::snp::{FirmwareVersion, Product, Signer, SnpEvidence, SnpTrust, Tcb};

/// Test-only RSA-2048 keys (PKCS#8). Public: anyone can sign with them.
const ARK_KEY: &[u8] = include_bytes!("keys/test-ark-rsa2048.pk8");
const ASK_KEY: &[u8] = include_bytes!("keys/test-ask-rsa2048.pk8");
const ARK2_KEY: &[u8] = include_bytes!("keys/test-ark2-rsa2048.pk8");
const ASK2_KEY: &[u8] = include_bytes!("keys/test-ask2-rsa2048.pk8");

const OID_PSS: &[u64] = &[1, 2, 840, 113_549, 1, 1, 10];
const OID_MGF1: &[u64] = &[1, 2, 840, 113_549, 1, 1, 8];
const OID_SHA384: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 2];
const OID_RSA: &[u64] = &[1, 2, 840, 113_549, 1, 1, 1];
const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10_045, 2, 1];
const OID_SECP384R1: &[u64] = &[1, 3, 132, 0, 34];
const OID_CN: &[u64] = &[2, 5, 4, 3];
const OID_O: &[u64] = &[2, 5, 4, 10];
const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

/// The test chains' organisation name, so no one mistakes them for AMD's.
pub const ORGANISATION: &str = "DANGER test chain, not AMD";

/// A time inside every default validity window (2025-01-01T00:00:00Z).
pub const VALID_AT: i64 = 1_735_689_600;

/// Why a test chain could not be built or could not sign.
#[derive(Debug, thiserror::Error)]
#[error("test chain: {0}")]
pub struct TestChainError(String);

fn err(what: &str) -> impl Fn(ring::error::Unspecified) -> TestChainError + '_ {
    move |_| TestChainError(what.to_owned())
}

/// Which fixed RSA keys sign the ARK and ASK. Chains built from different key sets do not
/// verify each other's certificates; chains from the same set and product do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeySet {
    /// The usual test keys.
    #[default]
    Primary,
    /// A second, unrelated pair: for "untrusted root" tests.
    Alternate,
}

/// How to build a [`TestChain`].
#[derive(Clone, Debug)]
pub struct TestChainOptions {
    /// The product (root names, TCB layout, CPUID of default reports).
    pub product: Product,
    /// VCEK (ASK chain) or VLEK (ASVK chain).
    pub signer: Signer,
    /// The chip id of default reports.
    pub chip_id: [u8; 64],
    /// The TCB in the VCEK's extensions (and the default reports' TCB fields).
    pub tcb: Tcb,
    /// The hwID extension; `None` leaves it out (as on a VLEK).
    pub hwid: Option<Vec<u8>>,
    /// The CSP id extension (VLEK).
    pub csp_id: Option<String>,
    /// The ARK and ASK validity (Unix seconds).
    pub ca_validity: (i64, i64),
    /// The VCEK/VLEK validity (Unix seconds).
    pub vek_validity: (i64, i64),
    /// Which RSA keys sign the ARK and ASK.
    pub keys: KeySet,
}

impl TestChainOptions {
    /// Defaults for `product` and `signer`: a VCEK carries the chip id as hwID (8 bytes on
    /// Turin), a VLEK carries a CSP id and no hwID.
    pub fn new(product: Product, signer: Signer) -> Self {
        let mut chip_id = [0u8; 64];
        let meaningful = if product == Product::Turin { 8 } else { 64 };
        for (i, b) in chip_id[..meaningful].iter_mut().enumerate() {
            *b = 0xC0 ^ i as u8;
        }
        let (hwid, csp_id) = match signer {
            Signer::Vcek => (Some(chip_id[..meaningful].to_vec()), None),
            Signer::Vlek => (None, Some("CN=danger-test-csp.example".to_owned())),
        };
        Self {
            product,
            signer,
            chip_id,
            tcb: Tcb {
                fmc: (product == Product::Turin).then_some(1),
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
            },
            hwid,
            csp_id,
            // 2020-01-01 .. 2049-12-31 and 2023-01-01 .. 2030-01-01.
            ca_validity: (1_577_836_800, 2_524_521_600),
            vek_validity: (1_672_531_200, 1_893_456_000),
            keys: KeySet::Primary,
        }
    }
}

impl Default for TestChainOptions {
    fn default() -> Self {
        Self::new(Product::Milan, Signer::Vcek)
    }
}

/// A fake ARK → ASK/ASVK → VCEK/VLEK chain that can sign synthetic reports.
pub struct TestChain {
    options: TestChainOptions,
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
    vek_der: Vec<u8>,
    vek_key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for TestChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestChain")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn name(common_name: &str) -> Vec<u8> {
    der::seq(&[
        &der::set(&[&der::seq(&[&der::oid(OID_O), &der::utf8(ORGANISATION)])]),
        &der::set(&[&der::seq(&[&der::oid(OID_CN), &der::utf8(common_name)])]),
    ])
}

fn pss_sha384() -> Vec<u8> {
    der::seq(&[
        &der::oid(OID_PSS),
        &der::seq(&[
            &der::explicit(0, &der::seq(&[&der::oid(OID_SHA384)])),
            &der::explicit(
                1,
                &der::seq(&[&der::oid(OID_MGF1), &der::seq(&[&der::oid(OID_SHA384)])]),
            ),
            &der::explicit(2, &der::uint_u64(48)),
        ]),
    ])
}

fn extension(oid: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    if critical {
        der::seq(&[&der::oid(oid), &der::boolean(true), &der::octets(value)])
    } else {
        der::seq(&[&der::oid(oid), &der::octets(value)])
    }
}

fn amd_oid(tail: &[u64]) -> Vec<u64> {
    let mut arcs = vec![1, 3, 6, 1, 4, 1, 3704, 1];
    arcs.extend_from_slice(tail);
    arcs
}

struct CertSpec<'a> {
    serial: u64,
    issuer: &'a str,
    subject: &'a str,
    validity: (i64, i64),
    spki: Vec<u8>,
    extensions: Vec<Vec<u8>>,
}

fn sign_certificate(spec: CertSpec<'_>, key: &RsaKeyPair, rng: &SystemRandom) -> Result<Vec<u8>, TestChainError> {
    let extensions: Vec<&[u8]> = spec.extensions.iter().map(Vec::as_slice).collect();
    let tbs = der::seq(&[
        &der::explicit(0, &der::uint_u64(2)),
        &der::uint_u64(spec.serial),
        &pss_sha384(),
        &name(spec.issuer),
        &der::seq(&[&der::time(spec.validity.0), &der::time(spec.validity.1)]),
        &name(spec.subject),
        &spec.spki,
        &der::explicit(3, &der::seq(&extensions)),
    ]);
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(&RSA_PSS_SHA384, rng, &tbs, &mut signature)
        .map_err(err("RSA-PSS signing failed"))?;
    Ok(der::seq(&[&tbs, &pss_sha384(), &der::bits(0, &signature)]))
}

fn rsa_key(pkcs8: &[u8]) -> Result<RsaKeyPair, TestChainError> {
    RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| TestChainError(format!("test RSA key: {e}")))
}

fn rsa_spki(key: &RsaKeyPair) -> Vec<u8> {
    der::seq(&[
        &der::seq(&[&der::oid(OID_RSA), &der::null()]),
        &der::bits(0, key.public_key().as_ref()),
    ])
}

fn ca_extensions(crl_sign: bool) -> Vec<Vec<u8>> {
    // KeyUsage bits: keyCertSign (5) = 0x04, cRLSign (6) = 0x02, in DER's MSB-first order.
    let key_usage = if crl_sign {
        der::bits(1, &[0x06])
    } else {
        der::bits(2, &[0x04])
    };
    vec![
        extension(OID_KEY_USAGE, true, &key_usage),
        extension(OID_BASIC_CONSTRAINTS, true, &der::seq(&[&der::boolean(true)])),
    ]
}

impl TestChain {
    /// Builds a chain. The VCEK/VLEK key is fresh; the ARK and ASK keys are the fixed test keys.
    pub fn new(options: TestChainOptions) -> Result<Self, TestChainError> {
        let rng = SystemRandom::new();
        let (ark_key, ask_key) = match options.keys {
            KeySet::Primary => (rsa_key(ARK_KEY)?, rsa_key(ASK_KEY)?),
            KeySet::Alternate => (rsa_key(ARK2_KEY)?, rsa_key(ASK2_KEY)?),
        };
        let product = options.product.as_str();
        let ark_name = format!("ARK-{product}");
        let (ask_name, vek_name) = match options.signer {
            Signer::Vcek => (format!("SEV-{product}"), "SEV-VCEK"),
            Signer::Vlek => (format!("SEV-VLEK-{product}"), "SEV-VLEK"),
        };
        let ark_der = sign_certificate(
            CertSpec {
                serial: 1,
                issuer: &ark_name,
                subject: &ark_name,
                validity: options.ca_validity,
                spki: rsa_spki(&ark_key),
                extensions: ca_extensions(true),
            },
            &ark_key,
            &rng,
        )?;
        let ask_der = sign_certificate(
            CertSpec {
                serial: 2,
                issuer: &ark_name,
                subject: &ask_name,
                validity: options.ca_validity,
                spki: rsa_spki(&ask_key),
                extensions: ca_extensions(false),
            },
            &ark_key,
            &rng,
        )?;

        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map_err(err("P-384 key generation failed"))?;
        let vek_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| TestChainError(format!("P-384 key: {e}")))?;
        let vek_spki = der::seq(&[
            &der::seq(&[&der::oid(OID_EC_PUBLIC_KEY), &der::oid(OID_SECP384R1)]),
            &der::bits(0, vek_key.public_key().as_ref()),
        ]);
        let tcb = options.tcb;
        let svn = |n: u64, v: u8| extension(&amd_oid(&[3, n]), false, &der::uint_u64(u64::from(v)));
        let mut extensions = vec![
            extension(&amd_oid(&[1]), false, &der::uint_u64(0)),
            extension(&amd_oid(&[2]), false, &der::ia5(product)),
            svn(1, tcb.bootloader),
            svn(2, tcb.tee),
            svn(3, tcb.snp),
        ];
        let reserved: &[u64] = if options.product == Product::Turin {
            &[5, 6, 7]
        } else {
            &[4, 5, 6, 7]
        };
        extensions.extend(reserved.iter().map(|&n| svn(n, 0)));
        extensions.push(svn(8, tcb.microcode));
        if let Some(fmc) = tcb.fmc.filter(|_| options.product == Product::Turin) {
            extensions.push(svn(9, fmc));
        }
        if let Some(hwid) = &options.hwid {
            extensions.push(extension(&amd_oid(&[4]), false, hwid));
        }
        if let Some(csp) = &options.csp_id {
            extensions.push(extension(&amd_oid(&[5]), false, &der::ia5(csp)));
        }
        let vek_der = sign_certificate(
            CertSpec {
                serial: 3,
                issuer: &ask_name,
                subject: vek_name,
                validity: options.vek_validity,
                spki: vek_spki,
                extensions,
            },
            &ask_key,
            &rng,
        )?;
        Ok(Self {
            options,
            ark_der,
            ask_der,
            vek_der,
            vek_key,
            rng,
        })
    }

    /// The options it was built with.
    pub fn options(&self) -> &TestChainOptions {
        &self.options
    }

    /// The ARK certificate (DER).
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }

    /// The ASK or ASVK certificate (DER).
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }

    /// The VCEK or VLEK certificate (DER).
    pub fn vek_der(&self) -> &[u8] {
        &self.vek_der
    }

    /// The ASK (or ASVK) and ARK as a PEM bundle, as AMD's KDS serves them.
    pub fn chain_pem(&self) -> Vec<u8> {
        let mut pem = der::pem("CERTIFICATE", &self.ask_der);
        pem.push_str(&der::pem("CERTIFICATE", &self.ark_der));
        pem.into_bytes()
    }

    /// This chain's root, to trust it.
    pub fn danger_root(&self) -> DangerTestRoot {
        DangerTestRoot {
            product: self.options.product,
            signer: self.options.signer,
            ark_der: self.ark_der.clone(),
            ask_der: self.ask_der.clone(),
        }
    }

    /// Every genuine report ([`SnpTrust::insecure_any_platform`]) plus this chain's root (VLEKs
    /// accepted if it is a VLEK chain): tests narrow it to what they check.
    pub fn trust(&self) -> SnpTrust {
        SnpTrust {
            accept_vlek: self.options.signer == Signer::Vlek,
            danger_test_roots: Some(DangerTestRoots {
                roots: vec![self.danger_root()],
            }),
            ..SnpTrust::insecure_any_platform()
        }
    }

    /// The strict default trust ([`SnpTrust::default`]) for this chain's product, with `floor`
    /// as its minimum TCB, plus this chain's root.
    pub fn strict_trust(&self, floor: Tcb) -> SnpTrust {
        let mut trust = SnpTrust {
            products: [self.options.product].into(),
            accept_vlek: self.options.signer == Signer::Vlek,
            danger_test_roots: Some(DangerTestRoots {
                roots: vec![self.danger_root()],
            }),
            ..SnpTrust::default()
        };
        match self.options.product {
            Product::Milan => trust.minimum_tcb.milan = Some(floor),
            Product::Genoa => trust.minimum_tcb.genoa = Some(floor),
            Product::Turin => trust.minimum_tcb.turin = Some(floor),
        }
        trust
    }

    /// A report that this chain's [`TestChain::trust`] accepts as is (version 3, debug off,
    /// VMPL 0, SMT on as on most real hosts, alias check not reported), to modify before
    /// signing.
    pub fn report(&self) -> TestReport {
        let o = &self.options;
        let (family, model) = o.product.cpuid();
        TestReport {
            product: o.product,
            version: 3,
            guest_svn: 1,
            policy: TestReport::POLICY_SMT | TestReport::POLICY_RESERVED_1,
            family_id: [0x11; 16],
            image_id: [0x22; 16],
            vmpl: 0,
            signature_algo: 1,
            current_tcb: o.tcb,
            platform_info: 1,
            author_key_en: false,
            mask_chip_key: false,
            signing_key: match o.signer {
                Signer::Vcek => 0,
                Signer::Vlek => 1,
            },
            report_data: [0; 64],
            measurement: [0x33; 48],
            host_data: [0x44; 32],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [0x55; 32],
            report_id_ma: [0xFF; 32],
            reported_tcb: o.tcb,
            cpuid: [family, model, 1],
            chip_id: o.chip_id,
            committed_tcb: o.tcb,
            current_firmware: FirmwareVersion {
                major: 1,
                minor: 55,
                build: 21,
            },
            committed_firmware: FirmwareVersion {
                major: 1,
                minor: 55,
                build: 21,
            },
            launch_tcb: o.tcb,
            launch_mit_vector: 0,
            current_mit_vector: 0,
        }
    }

    /// Encodes and signs `report` with the VCEK/VLEK.
    pub fn sign(&self, report: &TestReport) -> Result<Vec<u8>, TestChainError> {
        let mut bytes = report.to_bytes();
        self.sign_bytes(&mut bytes)?;
        Ok(bytes)
    }

    /// (Re-)signs raw report bytes in place: the signature over bytes 0x000–0x29F replaces
    /// whatever was at 0x2A0.
    pub fn sign_bytes(&self, report: &mut [u8]) -> Result<(), TestChainError> {
        if report.len() != REPORT_LEN {
            return Err(TestChainError(format!(
                "a report is {REPORT_LEN} bytes, not {}",
                report.len()
            )));
        }
        let signature = self
            .vek_key
            .sign(&self.rng, &report[..SIGNED_LEN])
            .map_err(err("ECDSA signing failed"))?;
        let (r, s) = signature.as_ref().split_at(48);
        let field = &mut report[SIGNED_LEN..];
        field.fill(0);
        for (dst, src) in field[..48].iter_mut().zip(r.iter().rev()) {
            *dst = *src;
        }
        for (dst, src) in field[72..120].iter_mut().zip(s.iter().rev()) {
            *dst = *src;
        }
        Ok(())
    }

    /// Evidence for `report`: the signed report and this chain's VCEK/VLEK (no PEM chain).
    pub fn evidence(&self, report: &TestReport) -> Result<SnpEvidence, TestChainError> {
        Ok(SnpEvidence {
            report: self.sign(report)?,
            vek: Some(self.vek_der.clone()),
            chain: None,
        })
    }
}

/// The fields of a synthetic report. `to_bytes` lays them out as the SNP ABI does; CPUID is
/// written from version 3 on, the mitigation vectors from version 5 on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestReport {
    /// Selects the TCB byte layout.
    pub product: Product,
    /// VERSION.
    pub version: u32,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// POLICY (see the `POLICY_*` constants).
    pub policy: u64,
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// VMPL.
    pub vmpl: u32,
    /// SIGNATURE_ALGO (1: ECDSA P-384 with SHA-384).
    pub signature_algo: u32,
    /// CURRENT_TCB.
    pub current_tcb: Tcb,
    /// PLATFORM_INFO (bit 0: SMT enabled).
    pub platform_info: u64,
    /// KEY_INFO.AUTHOR_KEY_EN.
    pub author_key_en: bool,
    /// KEY_INFO.MASK_CHIP_KEY.
    pub mask_chip_key: bool,
    /// KEY_INFO.SIGNING_KEY (0 VCEK, 1 VLEK, 7 none).
    pub signing_key: u32,
    /// REPORT_DATA.
    pub report_data: [u8; 64],
    /// MEASUREMENT.
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// ID_KEY_DIGEST.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST.
    pub author_key_digest: [u8; 48],
    /// REPORT_ID.
    pub report_id: [u8; 32],
    /// REPORT_ID_MA.
    pub report_id_ma: [u8; 32],
    /// REPORTED_TCB.
    pub reported_tcb: Tcb,
    /// CPUID family, model, stepping (version 3 and later).
    pub cpuid: [u8; 3],
    /// CHIP_ID.
    pub chip_id: [u8; 64],
    /// COMMITTED_TCB.
    pub committed_tcb: Tcb,
    /// CURRENT version.
    pub current_firmware: FirmwareVersion,
    /// COMMITTED version.
    pub committed_firmware: FirmwareVersion,
    /// LAUNCH_TCB.
    pub launch_tcb: Tcb,
    /// LAUNCH_MIT_VECTOR (version 5 and later).
    pub launch_mit_vector: u64,
    /// CURRENT_MIT_VECTOR (version 5 and later).
    pub current_mit_vector: u64,
}

impl TestReport {
    /// POLICY: SMT allowed.
    pub const POLICY_SMT: u64 = 1 << 16;
    /// POLICY: reserved, must be one.
    pub const POLICY_RESERVED_1: u64 = 1 << 17;
    /// POLICY: a migration agent is allowed.
    pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
    /// POLICY: debugging allowed.
    pub const POLICY_DEBUG: u64 = 1 << 19;

    /// The unsigned report bytes (signature field zero).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        let key_info =
            u32::from(self.author_key_en) | u32::from(self.mask_chip_key) << 1 | (self.signing_key & 0b111) << 2;
        let fw = |v: FirmwareVersion| [v.build, v.minor, v.major, 0];
        put(0x000, &self.version.to_le_bytes());
        put(0x004, &self.guest_svn.to_le_bytes());
        put(0x008, &self.policy.to_le_bytes());
        put(0x010, &self.family_id);
        put(0x020, &self.image_id);
        put(0x030, &self.vmpl.to_le_bytes());
        put(0x034, &self.signature_algo.to_le_bytes());
        put(0x038, &self.current_tcb.to_report_bytes(self.product));
        put(0x040, &self.platform_info.to_le_bytes());
        put(0x048, &key_info.to_le_bytes());
        put(0x050, &self.report_data);
        put(0x090, &self.measurement);
        put(0x0C0, &self.host_data);
        put(0x0E0, &self.id_key_digest);
        put(0x110, &self.author_key_digest);
        put(0x140, &self.report_id);
        put(0x160, &self.report_id_ma);
        put(0x180, &self.reported_tcb.to_report_bytes(self.product));
        if self.version >= 3 {
            put(0x188, &self.cpuid);
        }
        put(0x1A0, &self.chip_id);
        put(0x1E0, &self.committed_tcb.to_report_bytes(self.product));
        put(0x1E8, &fw(self.current_firmware));
        put(0x1EC, &fw(self.committed_firmware));
        put(0x1F0, &self.launch_tcb.to_report_bytes(self.product));
        if self.version >= 5 {
            put(0x1F8, &self.launch_mit_vector.to_le_bytes());
            put(0x200, &self.current_mit_vector.to_le_bytes());
        }
        b
    }
}
