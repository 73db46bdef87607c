//! AMD's certificate chains: ARK (root, self-signed) → ASK/ASVK (intermediate) → VCEK/VLEK
//! (the P-384 key that signs reports). Certificates are parsed with x509-parser and their
//! RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) signatures checked with ring.
//!
//! Must never trust a chain because it is self-consistent: only roots built here (AMD's pinned
//! certificates, or `danger` test roots the caller configured) issue anything.

use ring::signature;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_HASH_SHA384, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS,
};
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Version};
use x509_parser::signature_algorithm::SignatureAlgorithm;

use super::claims::{Product, Signer, Tcb};
use crate::{Check, Refusal};

/// DER content of OID 1.3.6.1.4.1.3704.1 (AMD's SEV certificate extensions), without the arc.
const AMD_ARC: [u8; 8] = [0x2B, 0x06, 0x01, 0x04, 0x01, 0x9C, 0x78, 0x01];
/// .1.2: productName (IA5String).
const EXT_PRODUCT_NAME: u8 = 2;
/// .1.3.x: TCB component SVNs (INTEGER).
const EXT_TCB: u8 = 3;
/// .1.4: hwID (raw chip id as the extension value).
const EXT_HWID: u8 = 4;
/// .1.5: CSP id of a VLEK (IA5String).
const EXT_CSP_ID: u8 = 5;

/// The .3.x TCB component numbers.
mod tcb_ext {
    pub(super) const BOOTLOADER: u8 = 1;
    pub(super) const TEE: u8 = 2;
    pub(super) const SNP: u8 = 3;
    pub(super) const MICROCODE: u8 = 8;
    pub(super) const FMC: u8 = 9;
    /// spl_4..spl_7: reserved, zero in every certificate so far.
    pub(super) const RESERVED: [u8; 4] = [4, 5, 6, 7];
}

/// The salt length AMD uses and ring's RSA_PSS_*_SHA384 expects (the hash length).
const PSS_SALT_LEN: u32 = 48;

/// A certificate's validity window, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl Window {
    fn of(cert: &X509Certificate<'_>) -> Self {
        Self {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        }
    }

    pub(crate) fn check(&self, what: &str, now_unix: i64) -> Result<(), Refusal> {
        if now_unix < self.not_before || now_unix > self.not_after {
            return Err(Refusal::new(
                Check::CertificateValidity,
                format!(
                    "the {what} certificate is valid from {} to {} (Unix seconds), not at {now_unix}",
                    self.not_before, self.not_after
                ),
            ));
        }
        Ok(())
    }
}

/// An AMD signing CA (ARK, ASK or ASVK): what is needed of it after parsing.
#[derive(Debug)]
pub(crate) struct CaCert {
    pub(crate) der: Vec<u8>,
    subject: Vec<u8>,
    /// RSAPublicKey DER (what ring takes).
    rsa_public_key: Vec<u8>,
    pub(crate) window: Window,
    pub(crate) common_name: String,
}

fn chain_error(detail: impl Into<String>) -> Refusal {
    Refusal::new(Check::CertificateChain, detail)
}

/// Parses one DER certificate; trailing bytes are refused.
pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(e) => Err(format!("not a DER X.509 certificate: {e}")),
    }
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Checks that `cert` is signed by `issuer` with RSASSA-PSS SHA-384 (the only scheme AMD uses).
fn check_issued_by(cert: &X509Certificate<'_>, issuer: &CaCert) -> Result<(), String> {
    if cert.issuer().as_raw() != issuer.subject.as_slice() {
        return Err(format!("issuer is not the subject of {}", issuer.common_name));
    }
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err("outer and inner signature algorithms differ".into());
    }
    match SignatureAlgorithm::try_from(&cert.signature_algorithm) {
        Ok(SignatureAlgorithm::RSASSA_PSS(params)) => {
            let mgf_hash_ok = params
                .mask_gen_algorithm()
                .map(|mgf| mgf.hash == OID_NIST_HASH_SHA384)
                .unwrap_or(false);
            if *params.hash_algorithm_oid() != OID_NIST_HASH_SHA384
                || !mgf_hash_ok
                || params.salt_length() != PSS_SALT_LEN
                || params.trailer_field() != 1
            {
                return Err("RSASSA-PSS parameters are not SHA-384, MGF1-SHA-384, salt 48".into());
            }
        }
        _ => return Err("signature algorithm is not RSASSA-PSS".into()),
    }
    if cert.signature_value.unused_bits != 0 {
        return Err("signature bit string has unused bits".into());
    }
    signature::UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA384, &issuer.rsa_public_key)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| format!("the signature by {} does not verify", issuer.common_name))
}

impl CaCert {
    /// Parses an ARK (`issuer` = None: must be self-signed) or an ASK/ASVK issued by `issuer`.
    pub(crate) fn parse(der: &[u8], issuer: Option<&CaCert>) -> Result<Self, String> {
        let cert = parse_der(der)?;
        let common_name = common_name(&cert);
        let what = |e: String| format!("{common_name}: {e}");
        if cert.version() != X509Version::V3 {
            return Err(what("not an X.509 v3 certificate".into()));
        }
        match cert.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => {
                return Err(what("key usage does not allow certificate signing".into()))
            }
            Ok(_) => {}
            Err(e) => return Err(what(format!("bad key usage extension: {e}"))),
        }
        match cert.basic_constraints() {
            Ok(Some(bc)) if !bc.value.ca => return Err(what("basic constraints say it is not a CA".into())),
            Ok(_) => {}
            Err(e) => return Err(what(format!("bad basic constraints extension: {e}"))),
        }
        let spki = cert.public_key();
        if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION && spki.algorithm.algorithm != OID_PKCS1_RSASSAPSS {
            return Err(what("the public key is not RSA".into()));
        }
        let ca = CaCert {
            der: der.to_vec(),
            subject: cert.subject().as_raw().to_vec(),
            rsa_public_key: spki.subject_public_key.data.to_vec(),
            window: Window::of(&cert),
            common_name: common_name.clone(),
        };
        match issuer {
            Some(issuer) => check_issued_by(&cert, issuer).map_err(what)?,
            None => check_issued_by(&cert, &ca).map_err(|e| what(format!("not self-signed: {e}")))?,
        }
        Ok(ca)
    }
}

/// A root of trust: an ARK and the intermediate (ASK for VCEKs, ASVK for VLEKs) it issued.
#[derive(Debug)]
pub(crate) struct TrustedRoot {
    pub(crate) product: Product,
    pub(crate) signer: Signer,
    pub(crate) ark: CaCert,
    pub(crate) ask: CaCert,
    /// From `danger_test_roots`, not AMD.
    pub(crate) danger: bool,
}

impl TrustedRoot {
    /// Builds a root from an ASK+ARK (or ASVK+ARK) PEM bundle, in either order.
    pub(crate) fn from_pem(product: Product, signer: Signer, pem: &[u8], danger: bool) -> Result<Self, String> {
        let ders = pem_certificates(pem)?;
        let [a, b] =
            <[Vec<u8>; 2]>::try_from(ders).map_err(|v| format!("expected 2 certificates, found {}", v.len()))?;
        // The ARK is the self-signed one.
        match CaCert::parse(&a, None) {
            Ok(_) => Self::from_der(product, signer, &a, &b, danger),
            Err(_) => Self::from_der(product, signer, &b, &a, danger),
        }
    }

    pub(crate) fn from_der(
        product: Product,
        signer: Signer,
        ark_der: &[u8],
        ask_der: &[u8],
        danger: bool,
    ) -> Result<Self, String> {
        let ark = CaCert::parse(ark_der, None)?;
        let ask = CaCert::parse(ask_der, Some(&ark))?;
        Ok(Self {
            product,
            signer,
            ark,
            ask,
            danger,
        })
    }
}

/// The DER certificates of a PEM bundle.
pub(crate) fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for item in Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| format!("bad PEM: {e}"))?;
        if item.label != "CERTIFICATE" {
            return Err(format!("unexpected PEM block {:?}", item.label));
        }
        out.push(item.contents);
    }
    if out.is_empty() {
        return Err("no certificate in the PEM bundle".into());
    }
    Ok(out)
}

/// What a VCEK/VLEK certificate states, once its chain to a trusted root has verified.
#[derive(Clone, Debug)]
pub(crate) struct VekFacts {
    pub(crate) root: usize,
    pub(crate) product: Product,
    pub(crate) signer: Signer,
    pub(crate) danger: bool,
    /// Uncompressed P-384 point.
    pub(crate) public_key: Vec<u8>,
    pub(crate) tcb: Tcb,
    /// The TCB as the report lays it out for `product`: compared byte for byte.
    pub(crate) tcb_raw: [u8; 8],
    pub(crate) hwid: Option<Vec<u8>>,
    pub(crate) csp_id: Option<String>,
    pub(crate) product_name: Option<String>,
    /// VEK, ASK/ASVK, ARK windows.
    pub(crate) windows: [Window; 3],
}

impl VekFacts {
    pub(crate) fn check_validity(&self, now_unix: i64) -> Result<(), Refusal> {
        let (vek, ask) = match self.signer {
            Signer::Vcek => ("VCEK", "ASK"),
            Signer::Vlek => ("VLEK", "ASVK"),
        };
        self.windows[0].check(vek, now_unix)?;
        self.windows[1].check(ask, now_unix)?;
        self.windows[2].check("ARK", now_unix)
    }
}

/// The AMD extensions of a VEK, read before its product is known.
struct AmdExtensions {
    tcb: [Option<u8>; 10],
    hwid: Option<Vec<u8>>,
    csp_id: Option<String>,
    product_name: Option<String>,
}

/// A DER string (IA5String, UTF8String or PrintableString) with a short or one-byte length.
fn der_string(value: &[u8]) -> Option<String> {
    let (&tag, rest) = value.split_first()?;
    if !matches!(tag, 0x16 | 0x0C | 0x13) {
        return None;
    }
    let (len, body) = match rest.split_first()? {
        (&n, body) if n < 0x80 => (usize::from(n), body),
        (0x81, body) => {
            let (&n, body) = body.split_first()?;
            (usize::from(n), body)
        }
        _ => return None,
    };
    if body.len() != len {
        return None;
    }
    String::from_utf8(body.to_vec()).ok()
}

/// A DER INTEGER that fits a u8 (TCB SVNs; 0x80..=0xFF take a leading zero byte).
fn der_u8(value: &[u8]) -> Option<u8> {
    match value {
        [0x02, 1, v] if *v < 0x80 => Some(*v),
        [0x02, 2, 0, v] if *v >= 0x80 => Some(*v),
        _ => None,
    }
}

fn amd_extensions(cert: &X509Certificate<'_>) -> Result<AmdExtensions, String> {
    let mut out = AmdExtensions {
        tcb: [None; 10],
        hwid: None,
        csp_id: None,
        product_name: None,
    };
    /// Fills `slot` once: a repeated extension is refused rather than one copy ignored.
    fn once<T>(slot: &mut Option<T>, value: T, oid: &impl std::fmt::Display) -> Result<(), String> {
        match slot.replace(value) {
            Some(_) => Err(format!("duplicate AMD extension {oid}")),
            None => Ok(()),
        }
    }
    for ext in cert.extensions() {
        let oid = ext.oid.as_bytes();
        let Some(rest) = oid.strip_prefix(&AMD_ARC[..]) else {
            continue;
        };
        match rest {
            [EXT_TCB, n] if usize::from(*n) < out.tcb.len() => {
                let value =
                    der_u8(ext.value).ok_or_else(|| format!("TCB extension {} is not a small INTEGER", ext.oid))?;
                once(&mut out.tcb[usize::from(*n)], value, &ext.oid)?;
            }
            [EXT_HWID] => once(&mut out.hwid, ext.value.to_vec(), &ext.oid)?,
            [EXT_CSP_ID] => {
                let value = der_string(ext.value).ok_or("CSP id extension is not a string")?;
                once(&mut out.csp_id, value, &ext.oid)?;
            }
            [EXT_PRODUCT_NAME] => {
                let value = der_string(ext.value).ok_or("product name extension is not a string")?;
                once(&mut out.product_name, value, &ext.oid)?;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The TCB stated by the certificate, in `product`'s layout.
fn certificate_tcb(ext: &AmdExtensions, product: Product) -> Result<Tcb, String> {
    let component = |n: u8, name: &str| ext.tcb[usize::from(n)].ok_or(format!("no {name} SVN extension (.3.{n})"));
    for n in tcb_ext::RESERVED {
        if ext.tcb[usize::from(n)].unwrap_or(0) != 0 {
            return Err(format!("reserved TCB extension .3.{n} is not zero"));
        }
    }
    let fmc = if product.has_fmc() {
        Some(component(tcb_ext::FMC, "FMC")?)
    } else {
        if ext.tcb[usize::from(tcb_ext::FMC)].unwrap_or(0) != 0 {
            return Err(format!("an FMC SVN on a {product} certificate"));
        }
        None
    };
    Ok(Tcb {
        fmc,
        bootloader: component(tcb_ext::BOOTLOADER, "bootloader")?,
        tee: component(tcb_ext::TEE, "TEE")?,
        snp: component(tcb_ext::SNP, "SNP")?,
        microcode: component(tcb_ext::MICROCODE, "microcode")?,
    })
}

/// Verifies a VCEK/VLEK certificate against the first of `candidates` (indices into `roots`)
/// whose intermediate issued it.
pub(crate) fn verify_vek(der: &[u8], roots: &[TrustedRoot], candidates: &[usize]) -> Result<VekFacts, Refusal> {
    let cert = parse_der(der).map_err(|e| chain_error(format!("VCEK/VLEK: {e}")))?;
    if cert.version() != X509Version::V3 {
        return Err(chain_error("VCEK/VLEK: not an X.509 v3 certificate"));
    }
    let spki = cert.public_key();
    let on_p384 = spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_NIST_EC_P384);
    if !on_p384 || spki.subject_public_key.unused_bits != 0 {
        return Err(chain_error("VCEK/VLEK: the public key is not an ECDSA P-384 key"));
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => {
            return Err(chain_error("VCEK/VLEK: key usage does not allow digital signatures"))
        }
        Ok(_) => {}
        Err(e) => return Err(chain_error(format!("VCEK/VLEK: bad key usage extension: {e}"))),
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return Err(chain_error("VCEK/VLEK: the certificate is a CA")),
        Ok(_) => {}
        Err(e) => return Err(chain_error(format!("VCEK/VLEK: bad basic constraints extension: {e}"))),
    }

    // The issuer name selects the intermediate (and so the product, when the report's CPUID did
    // not); the signature decides.
    let issuer_name = cert.issuer().as_raw();
    let mut failures = Vec::new();
    let mut issuer = None;
    for &i in candidates {
        let Some(root) = roots.get(i) else { continue };
        if root.ask.subject != issuer_name {
            continue;
        }
        match check_issued_by(&cert, &root.ask) {
            Ok(()) => {
                issuer = Some((i, root));
                break;
            }
            Err(e) => failures.push(format!("{} {}: {e}", root.product, root.ask.common_name)),
        }
    }
    let Some((index, root)) = issuer else {
        if failures.is_empty() {
            return Err(chain_error(format!(
                "the VCEK/VLEK's issuer ({}) is not a trusted ASK/ASVK",
                cert.issuer()
            )));
        }
        return Err(chain_error(format!(
            "the VCEK/VLEK does not chain to a trusted root ({})",
            failures.join("; ")
        )));
    };

    let ext = amd_extensions(&cert).map_err(|e| chain_error(format!("VCEK/VLEK: {e}")))?;
    if let Some(name) = &ext.product_name {
        if !name.starts_with(root.product.as_str()) {
            return Err(chain_error(format!(
                "the certificate names product {name:?} but chains to the {} root",
                root.product
            )));
        }
    }
    let tcb = certificate_tcb(&ext, root.product).map_err(|e| Refusal::new(Check::Tcb, format!("VCEK/VLEK: {e}")))?;
    Ok(VekFacts {
        root: index,
        product: root.product,
        signer: root.signer,
        danger: root.danger,
        public_key: spki.subject_public_key.data.to_vec(),
        tcb_raw: tcb.to_report_bytes(root.product),
        tcb,
        hwid: ext.hwid,
        csp_id: ext.csp_id,
        product_name: ext.product_name,
        windows: [Window::of(&cert), root.ask.window, root.ark.window],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_der_values() {
        assert_eq!(der_u8(&[2, 1, 3]), Some(3));
        assert_eq!(der_u8(&[2, 2, 0, 0xA9]), Some(0xA9));
        assert_eq!(der_u8(&[2, 1, 0x80]), None);
        assert_eq!(der_u8(&[2, 2, 1, 0]), None);
        assert_eq!(der_u8(&[4, 1, 3]), None);
        assert_eq!(der_string(b"\x16\x05Milan").as_deref(), Some("Milan"));
        assert_eq!(der_string(b"\x16\x06Milan"), None);
        assert_eq!(der_string(b""), None);
    }
}
