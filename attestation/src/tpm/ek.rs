//! The endorsement key (EK): its public key in the TPM's and in X.509 form, its digest (the
//! TPM's identity in the hardware registry), and the validation of its certificate against a
//! bundle of TPM-manufacturer CA certificates.
//!
//! EK certificates do not pass WebPKI-style validators (critical subjectAltName with a directory
//! name, TCG key purposes, empty subjects), so the path is built here with x509-parser and every
//! signature is checked with ring. The leaf must also follow the TCG EK Credential Profile
//! ([`EkProfile`]): a certificate the manufacturer's CA issued for anything else is not an EK
//! certificate. Revocation (CRLs) is not checked.

use std::collections::BTreeSet;

use std::fmt;
use std::str::FromStr;

use ring::{digest, signature as ring_sig};
use serde::{Serialize, Serializer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::ak::{pad_be, rsa_exponent, trim_be};
use super::wire::{self, alg, attr, curve, KeyParams, SymDef};
use crate::{Check, Refusal};

/// The longest chain accepted above the EK certificate (intermediates + the trusted CA).
const MAX_CHAIN: usize = 5;

const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_SHA256_RSA: &str = "1.2.840.113549.1.1.11";
const OID_SHA384_RSA: &str = "1.2.840.113549.1.1.12";
const OID_SHA512_RSA: &str = "1.2.840.113549.1.1.13";
const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";
const OID_SHA512: &str = "2.16.840.1.101.3.4.2.3";
const OID_MGF1: &str = "1.2.840.113549.1.1.8";
// TCG EK Credential Profile: TPM manufacturer, model and version in the subjectAltName.
const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";
// TCG EK Credential Profile: tcg-kp-EKCertificate, the EK certificate's extended key usage.
const OID_TCG_KP_EK_CERTIFICATE: &str = "2.23.133.8.1";

/// What the TCG EK Credential Profile requires of an EK certificate beyond its chain: the
/// subjectAltName names the TPM (manufacturer, model and version, a directory name), and the
/// extended key usage is tcg-kp-EKCertificate (2.23.133.8.1). Some manufacturers' older
/// certificates omit the key usage: listing the manufacturer (`id:` and 8 hex digits, as the
/// subjectAltName names it) waives that one requirement for its certificates, never the
/// subjectAltName.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EkProfile {
    /// Manufacturers whose EK certificates may lack the EK extended key usage.
    pub eku_exempt_manufacturers: BTreeSet<String>,
}

impl EkProfile {
    fn check(
        &self,
        leaf: &X509Certificate<'_>,
        identity: &(Option<String>, Option<String>, Option<String>),
    ) -> Result<(), Refusal> {
        let profile = |detail: String| Refusal::new(Check::EkProfile, detail);
        let (Some(manufacturer), Some(_), Some(_)) = identity else {
            return Err(profile(format!(
                "{} names no TPM manufacturer, model and version in its subjectAltName: not an EK certificate (TCG EK Credential Profile)",
                subject(leaf)
            )));
        };
        let eku = match leaf.extended_key_usage() {
            Ok(Some(eku)) => eku
                .value
                .other
                .iter()
                .any(|o| o.to_id_string() == OID_TCG_KP_EK_CERTIFICATE),
            Ok(None) => false,
            Err(e) => return Err(malformed(format!("extended key usage: {e}"))),
        };
        let exempt = self
            .eku_exempt_manufacturers
            .iter()
            .any(|m| m.eq_ignore_ascii_case(manufacturer));
        if !eku && !exempt {
            return Err(profile(format!(
                "{} (TPM manufacturer {manufacturer}) lacks the EK extended key usage {OID_TCG_KP_EK_CERTIFICATE}: not an EK certificate (TCG EK Credential Profile), unless this manufacturer is exempted",
                subject(leaf)
            )));
        }
        Ok(())
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum EkKey {
    /// Big-endian modulus and exponent, without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    EcP256 {
        x: [u8; 32],
        y: [u8; 32],
    },
    EcP384 {
        x: [u8; 48],
        y: [u8; 48],
    },
}

/// An endorsement key's public key, with the parameters credential activation depends on (the
/// EK's name algorithm and symmetric algorithm).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EkPublic {
    pub(crate) key: EkKey,
    pub(crate) name_alg: u16,
    pub(crate) symmetric: SymDef,
}

fn malformed(detail: impl Into<String>) -> Refusal {
    Refusal::new(Check::Malformed, detail.into())
}

fn chain(detail: impl Into<String>) -> Refusal {
    Refusal::new(Check::CertificateChain, detail.into())
}

const fn aes_cfb(key_bits: u16) -> SymDef {
    SymDef {
        alg: alg::AES,
        key_bits,
        mode: alg::CFB,
    }
}

impl EkPublic {
    /// Parses an EK public area as `tpm2_createek -u` writes it (TPM2B_PUBLIC). It must be a
    /// restricted decryption key bound to its TPM with an AES-CFB symmetric algorithm, RSA or
    /// ECC P-256/P-384: what the TCG EK templates produce.
    pub fn from_tpm2b_public(bytes: &[u8]) -> Result<Self, Refusal> {
        let public = wire::tpm2b_public(bytes, "EK TPM2B_PUBLIC")?;
        let required = attr::FIXED_TPM | attr::FIXED_PARENT | attr::RESTRICTED | attr::DECRYPT;
        if public.attributes & required != required || public.attributes & attr::SIGN != 0 {
            return Err(malformed(format!(
                "EK attributes {:#010x}: not a restricted decryption key fixed to its TPM",
                public.attributes
            )));
        }
        let (key, symmetric) = match public.params {
            KeyParams::Rsa {
                symmetric,
                key_bits,
                exponent,
                modulus,
                ..
            } => {
                let n = trim_be(modulus);
                if !(2048..=4096).contains(&key_bits) || n.len() * 8 != usize::from(key_bits) {
                    return Err(malformed(format!(
                        "EK RSA key of {key_bits} bits with a {}-byte modulus",
                        modulus.len()
                    )));
                }
                let key = EkKey::Rsa {
                    n: n.to_vec(),
                    e: rsa_exponent(exponent),
                };
                (key, symmetric)
            }
            KeyParams::Ecc {
                symmetric, curve, x, y, ..
            } => {
                let key = match curve {
                    curve::NIST_P256 => pad_be::<32>(x)
                        .zip(pad_be::<32>(y))
                        .map(|(x, y)| EkKey::EcP256 { x, y }),
                    curve::NIST_P384 => pad_be::<48>(x)
                        .zip(pad_be::<48>(y))
                        .map(|(x, y)| EkKey::EcP384 { x, y }),
                    other => return Err(malformed(format!("EK curve {other:#06x} is not NIST P-256 or P-384"))),
                }
                .ok_or_else(|| malformed("EK point coordinates exceed the curve size"))?;
                (key, symmetric)
            }
        };
        let symmetric = symmetric
            .filter(|s| s.alg == alg::AES && s.mode == alg::CFB && matches!(s.key_bits, 128 | 256))
            .ok_or_else(|| malformed(format!("EK symmetric algorithm {symmetric:?} is not AES-128/256-CFB")))?;
        Ok(Self {
            key,
            name_alg: public.name_alg,
            symmetric,
        })
    }

    /// Takes the public key of an EK certificate (DER SubjectPublicKeyInfo). The EK is assumed to
    /// follow the TCG EK Credential Profile default templates: RSA 2048 and P-256 with SHA-256 and
    /// AES-128-CFB (low range), RSA 3072+ and P-384 with SHA-384 and AES-256-CFB (high range).
    pub fn from_spki_der(spki: &[u8]) -> Result<Self, Refusal> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(spki).map_err(|e| malformed(format!("EK public key: {e}")))?;
        if !rest.is_empty() {
            return Err(malformed("EK public key: trailing bytes"));
        }
        Self::from_spki(&spki)
    }

    fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, Refusal> {
        let key = spki_key(spki)?;
        let (name_alg, symmetric) = match &key {
            EkKey::Rsa { n, .. } if n.len() == 256 => (alg::SHA256, aes_cfb(128)),
            EkKey::Rsa { .. } => (alg::SHA384, aes_cfb(256)),
            EkKey::EcP256 { .. } => (alg::SHA256, aes_cfb(128)),
            EkKey::EcP384 { .. } => (alg::SHA384, aes_cfb(256)),
        };
        Ok(Self {
            key,
            name_alg,
            symmetric,
        })
    }

    /// The public key as a DER SubjectPublicKeyInfo, canonically encoded (the same bytes whether
    /// the key came from the TPM or from a certificate).
    pub fn spki_der(&self) -> Vec<u8> {
        match &self.key {
            EkKey::Rsa { n, e } => {
                let rsa_key = der(0x30, &[der_uint(n), der_uint(e)].concat());
                let algorithm = der(0x30, &[der_oid(OID_RSA_ENCRYPTION), vec![0x05, 0x00]].concat());
                der(0x30, &[algorithm, der_bits(&rsa_key)].concat())
            }
            EkKey::EcP256 { x, y } => ec_spki(OID_P256, x, y),
            EkKey::EcP384 { x, y } => ec_spki(OID_P384, x, y),
        }
    }

    /// SHA-256 of [`EkPublic::spki_der`]: how the hardware registry names a TPM.
    pub fn digest(&self) -> EkDigest {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, &self.spki_der()).as_ref());
        EkDigest(out)
    }

    /// A short description of the key type: `rsa-2048`, `ecc-p256`, `ecc-p384`.
    pub fn key_type(&self) -> String {
        match &self.key {
            EkKey::Rsa { n, .. } => format!("rsa-{}", n.len() * 8),
            EkKey::EcP256 { .. } => "ecc-p256".into(),
            EkKey::EcP384 { .. } => "ecc-p384".into(),
        }
    }
}

fn ec_spki(curve_oid: &str, x: &[u8], y: &[u8]) -> Vec<u8> {
    let algorithm = der(0x30, &[der_oid(OID_EC_PUBLIC_KEY), der_oid(curve_oid)].concat());
    der(0x30, &[algorithm, der_bits(&[&[4u8][..], x, y].concat())].concat())
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let bytes = trim_be(&bytes);
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(be: &[u8]) -> Vec<u8> {
    let be = trim_be(be);
    if be.first().is_none_or(|&b| b & 0x80 != 0) {
        der(0x02, &[&[0u8][..], be].concat())
    } else {
        der(0x02, be)
    }
}

fn der_bits(bytes: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], bytes].concat())
}

fn der_oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted.split('.').filter_map(|a| a.parse().ok()).collect();
    let mut body = vec![];
    if let [first, second, rest @ ..] = arcs.as_slice() {
        let mut encode = |mut v: u64| {
            let mut chunk = vec![(v & 0x7f) as u8];
            v >>= 7;
            while v > 0 {
                chunk.push(0x80 | (v & 0x7f) as u8);
                v >>= 7;
            }
            body.extend(chunk.iter().rev());
        };
        encode(first * 40 + second);
        rest.iter().for_each(|&a| encode(a));
    }
    der(0x06, &body)
}

fn spki_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<EkKey, Refusal> {
    let algorithm = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if algorithm == OID_RSA_ENCRYPTION => {
            let n = trim_be(rsa.modulus);
            if !(256..=512).contains(&n.len()) {
                return Err(malformed(format!("RSA key of {} bits", n.len() * 8)));
            }
            Ok(EkKey::Rsa {
                n: n.to_vec(),
                e: trim_be(rsa.exponent).to_vec(),
            })
        }
        Ok(PublicKey::EC(point)) if algorithm == OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| x509_parser::asn1_rs::Oid::try_from(p.clone()).ok())
                .map(|oid| oid.to_id_string());
            let data = point.data();
            match (curve.as_deref(), data.split_first()) {
                (Some(OID_P256), Some((4, xy))) if xy.len() == 64 => {
                    let (x, y) = xy.split_at(32);
                    Ok(EkKey::EcP256 {
                        x: x.try_into().map_err(|_| malformed("P-256 point"))?,
                        y: y.try_into().map_err(|_| malformed("P-256 point"))?,
                    })
                }
                (Some(OID_P384), Some((4, xy))) if xy.len() == 96 => {
                    let (x, y) = xy.split_at(48);
                    Ok(EkKey::EcP384 {
                        x: x.try_into().map_err(|_| malformed("P-384 point"))?,
                        y: y.try_into().map_err(|_| malformed("P-384 point"))?,
                    })
                }
                (curve, _) => Err(malformed(format!(
                    "EC key on curve {curve:?} (need an uncompressed P-256 or P-384 point)"
                ))),
            }
        }
        Ok(_) => Err(malformed(format!(
            "public key algorithm {algorithm} is neither RSA nor EC"
        ))),
        Err(e) => Err(malformed(format!("public key: {e}"))),
    }
}

/// SHA-256 of an EK's canonical SubjectPublicKeyInfo: the TPM's identity in the hardware
/// registry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EkDigest([u8; 32]);

impl EkDigest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for EkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EkDigest({self})")
    }
}

impl FromStr for EkDigest {
    type Err = Refusal;

    fn from_str(s: &str) -> Result<Self, Refusal> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| malformed(format!("EK digest: {e}")))?;
        Ok(Self(out))
    }
}

impl Serialize for EkDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// An EK certificate that chains to a trusted TPM-manufacturer CA.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifiedEk {
    /// The certified EK public key.
    pub public: EkPublic,
    /// Its digest (see [`EkPublic::digest`]).
    pub digest: EkDigest,
    /// TPM manufacturer from the subjectAltName (e.g. `id:49465800`), if present.
    pub tpm_manufacturer: Option<String>,
    /// TPM model from the subjectAltName, if present.
    pub tpm_model: Option<String>,
    /// TPM firmware version from the subjectAltName, if present.
    pub tpm_version: Option<String>,
    /// The issuers' subjects, from the EK certificate's issuer up to the trusted CA.
    pub chain: Vec<String>,
}

/// The trusted TPM-manufacturer CA certificates. A chain ends at the first certificate of the
/// bundle that issued it, so a bundle may hold roots, intermediates, or both.
#[derive(Clone, Debug)]
pub struct EkCaBundle {
    cas: Vec<Vec<u8>>,
    profile: EkProfile,
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, Refusal> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(malformed(format!("{what}: trailing bytes after the certificate"))),
        Err(e) => Err(malformed(format!("{what}: {e}"))),
    }
}

fn subject(cert: &X509Certificate<'_>) -> String {
    cert.subject().to_string()
}

impl EkCaBundle {
    /// The CA certificates in a PEM bundle (every `CERTIFICATE` block). Fails if there is none or
    /// one does not parse.
    pub fn from_pem(pem: &[u8]) -> Result<Self, Refusal> {
        let mut cas = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| malformed(format!("CA bundle: {e}")))?;
            if block.label == "CERTIFICATE" {
                cas.push(block.contents);
            }
        }
        Self::from_der(cas)
    }

    /// The CA certificates, each DER. Fails if there is none or one does not parse.
    pub fn from_der(cas: impl IntoIterator<Item = Vec<u8>>) -> Result<Self, Refusal> {
        let cas: Vec<Vec<u8>> = cas.into_iter().collect();
        if cas.is_empty() {
            return Err(malformed("CA bundle: no certificate"));
        }
        for (i, der) in cas.iter().enumerate() {
            parse_cert(der, &format!("CA bundle certificate {i}"))?;
        }
        Ok(Self {
            cas,
            profile: EkProfile::default(),
        })
    }

    /// The same bundle with `profile`'s exemptions.
    pub fn with_profile(self, profile: EkProfile) -> Self {
        Self { profile, ..self }
    }

    /// Validates `ek_cert` (DER) at `now_unix`: its chain, through the optional untrusted
    /// `intermediates` (DER), to a CA of this bundle. Every certificate on the path must be
    /// within its validity period (`CertificateValidity`); every signature must verify, issuers
    /// must be CAs allowed to sign certificates, path lengths must hold, and no certificate may
    /// carry a critical extension this code does not understand (`CertificateChain`). The EK
    /// certificate must not be a CA and must hold an RSA or P-256/P-384 key (`Malformed`), and
    /// must follow the TCG EK profile (`EkProfile`), checked once its chain verifies.
    pub fn verify(&self, ek_cert: &[u8], intermediates: &[&[u8]], now_unix: i64) -> Result<VerifiedEk, Refusal> {
        let leaf = parse_cert(ek_cert, "EK certificate")?;
        check_validity(&leaf, now_unix)?;
        check_critical_extensions(&leaf)?;
        if leaf.is_ca() {
            return Err(chain(format!("EK certificate {} is a CA certificate", subject(&leaf))));
        }
        let public = EkPublic::from_spki(leaf.public_key())?;

        let cas = parse_all(self.cas.iter().map(Vec::as_slice), "CA bundle certificate")?;
        let intermediates = parse_all(intermediates.iter().copied(), "intermediate certificate")?;
        let mut names = Vec::new();
        let mut current = &leaf;
        for depth in 0..MAX_CHAIN {
            // `depth` CA certificates lie between `current` and the EK certificate.
            let trusted = find_issuer(current, &cas);
            if let Ok(Some(ca)) = trusted {
                check_issuer(ca, depth, now_unix)?;
                names.push(subject(ca));
                let identity = tpm_identity(&leaf);
                self.profile.check(&leaf, &identity)?;
                let (tpm_manufacturer, tpm_model, tpm_version) = identity;
                return Ok(VerifiedEk {
                    digest: public.digest(),
                    public,
                    tpm_manufacturer,
                    tpm_model,
                    tpm_version,
                    chain: names,
                });
            }
            // Not issued by a trusted CA: try the supplied intermediates. If neither works, a
            // trusted CA's failed signature check says more than "no issuer".
            let next = match (trusted, find_issuer(current, &intermediates)) {
                (_, Ok(Some(next))) => next,
                (Err(refusal), _) | (_, Err(refusal)) => return Err(refusal),
                (_, Ok(None)) => {
                    return Err(chain(format!(
                        "no trusted TPM manufacturer CA issued {} (issuer {})",
                        subject(current),
                        current.issuer()
                    )))
                }
            };
            check_issuer(next, depth, now_unix)?;
            names.push(subject(next));
            current = next;
        }
        Err(chain(format!("EK certificate chain longer than {MAX_CHAIN}")))
    }
}

fn parse_all<'a>(ders: impl Iterator<Item = &'a [u8]>, what: &str) -> Result<Vec<X509Certificate<'a>>, Refusal> {
    ders.enumerate()
        .map(|(i, der)| parse_cert(der, &format!("{what} {i}")))
        .collect()
}

/// The candidate in `candidates` whose subject is `cert`'s issuer and whose key verifies
/// `cert`'s signature. A name match whose signature fails is an error only if no other
/// candidate verifies.
fn find_issuer<'c, 'a>(
    cert: &X509Certificate<'_>,
    candidates: &'c [X509Certificate<'a>],
) -> Result<Option<&'c X509Certificate<'a>>, Refusal> {
    let mut last_error = None;
    for ca in candidates
        .iter()
        .filter(|ca| ca.subject().as_raw() == cert.issuer().as_raw())
    {
        match verify_signature(cert, ca) {
            Ok(()) => return Ok(Some(ca)),
            Err(e) => last_error = Some(e),
        }
    }
    last_error.map_or(Ok(None), Err)
}

fn check_validity(cert: &X509Certificate<'_>, now_unix: i64) -> Result<(), Refusal> {
    let validity = cert.validity();
    if now_unix < validity.not_before.timestamp() || now_unix > validity.not_after.timestamp() {
        return Err(Refusal::new(
            Check::CertificateValidity,
            format!(
                "{} is valid from {} to {}, not at {now_unix}",
                subject(cert),
                validity.not_before,
                validity.not_after
            ),
        ));
    }
    Ok(())
}

fn check_critical_extensions(cert: &X509Certificate<'_>) -> Result<(), Refusal> {
    for ext in cert.extensions().iter().filter(|e| e.critical) {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(_)
            | ParsedExtension::KeyUsage(_)
            | ParsedExtension::ExtendedKeyUsage(_)
            | ParsedExtension::SubjectAlternativeName(_)
            | ParsedExtension::CertificatePolicies(_) => {}
            _ => {
                return Err(chain(format!(
                    "{} has a critical extension {} that is not handled",
                    subject(cert),
                    ext.oid
                )))
            }
        }
    }
    Ok(())
}

/// An issuer `depth` CA certificates above the EK certificate: valid now, a CA (basic
/// constraints), allowed to sign certificates (key usage, if present), path length respected.
fn check_issuer(ca: &X509Certificate<'_>, depth: usize, now_unix: i64) -> Result<(), Refusal> {
    check_validity(ca, now_unix)?;
    check_critical_extensions(ca)?;
    let name = subject(ca);
    let constraints = ca
        .basic_constraints()
        .map_err(|e| chain(format!("{name}: basic constraints: {e}")))?
        .map(|b| b.value.clone())
        .filter(|b| b.ca)
        .ok_or_else(|| chain(format!("{name} issued a certificate but is not a CA")))?;
    if let Some(max) = constraints.path_len_constraint {
        if depth > max as usize {
            return Err(chain(format!(
                "{name}: path length {depth} exceeds its constraint {max}"
            )));
        }
    }
    let key_usage = ca.key_usage().map_err(|e| chain(format!("{name}: key usage: {e}")))?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(chain(format!("{name}: key usage does not allow signing certificates")));
    }
    Ok(())
}

/// Checks `cert`'s signature with `issuer`'s key, with ring.
fn verify_signature(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<(), Refusal> {
    let name = subject(cert);
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err(chain(format!(
            "{name}: signature algorithm differs from the signed one"
        )));
    }
    let issuer_spki = issuer.public_key();
    let issuer_alg = issuer_spki.algorithm.algorithm.to_id_string();
    let issuer_curve = issuer_spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| x509_parser::asn1_rs::Oid::try_from(p.clone()).ok())
        .map(|oid| oid.to_id_string());
    let sig_oid = cert.signature_algorithm.algorithm.to_id_string();
    let is_rsa = issuer_alg == OID_RSA_ENCRYPTION;
    let is_ec = issuer_alg == OID_EC_PUBLIC_KEY;
    let algorithm: &dyn ring_sig::VerificationAlgorithm = match (sig_oid.as_str(), issuer_curve.as_deref()) {
        (OID_SHA256_RSA, _) if is_rsa => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        (OID_SHA384_RSA, _) if is_rsa => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        (OID_SHA512_RSA, _) if is_rsa => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        (OID_RSASSA_PSS, _) if is_rsa => pss_algorithm(cert).ok_or_else(|| {
            chain(format!("{name}: RSASSA-PSS parameters other than SHA-256/384/512 with MGF1 of the same hash and a salt of the hash size"))
        })?,
        (OID_ECDSA_SHA256, Some(OID_P256)) if is_ec => &ring_sig::ECDSA_P256_SHA256_ASN1,
        (OID_ECDSA_SHA384, Some(OID_P256)) if is_ec => &ring_sig::ECDSA_P256_SHA384_ASN1,
        (OID_ECDSA_SHA256, Some(OID_P384)) if is_ec => &ring_sig::ECDSA_P384_SHA256_ASN1,
        (OID_ECDSA_SHA384, Some(OID_P384)) if is_ec => &ring_sig::ECDSA_P384_SHA384_ASN1,
        (sig, curve) => {
            return Err(chain(format!(
                "{name}: signature algorithm {sig} with an issuer key {issuer_alg} {curve:?} is not supported"
            )))
        }
    };
    ring_sig::UnparsedPublicKey::new(algorithm, issuer_spki.subject_public_key.data.as_ref())
        .verify(cert.tbs_certificate.as_ref(), cert.signature_value.data.as_ref())
        .map_err(|_| {
            chain(format!(
                "{name}: signature does not verify with the key of {}",
                subject(issuer)
            ))
        })
}

fn pss_algorithm(cert: &X509Certificate<'_>) -> Option<&'static ring_sig::RsaParameters> {
    let SignatureAlgorithm::RSASSA_PSS(params) = SignatureAlgorithm::try_from(&cert.signature_algorithm).ok()? else {
        return None;
    };
    let hash = params.hash_algorithm_oid().to_id_string();
    let mgf = params.mask_gen_algorithm().ok()?;
    if mgf.mgf.to_id_string() != OID_MGF1 || mgf.hash.to_id_string() != hash {
        return None;
    }
    match (hash.as_str(), params.salt_length()) {
        (OID_SHA256, 32) => Some(&ring_sig::RSA_PSS_2048_8192_SHA256),
        (OID_SHA384, 48) => Some(&ring_sig::RSA_PSS_2048_8192_SHA384),
        (OID_SHA512, 64) => Some(&ring_sig::RSA_PSS_2048_8192_SHA512),
        _ => None,
    }
}

/// TPM manufacturer, model and version from the EK certificate's subjectAltName directory name.
fn tpm_identity(cert: &X509Certificate<'_>) -> (Option<String>, Option<String>, Option<String>) {
    let mut out = (None, None, None);
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return out;
    };
    for general_name in &san.value.general_names {
        let GeneralName::DirectoryName(dn) = general_name else {
            continue;
        };
        for attribute in dn.iter_attributes() {
            let value = attribute.as_str().ok().map(str::to_owned);
            match attribute.attr_type().to_id_string().as_str() {
                OID_TPM_MANUFACTURER => out.0 = value,
                OID_TPM_MODEL => out.1 = value,
                OID_TPM_VERSION => out.2 = value,
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_encodings() {
        assert_eq!(der_oid(OID_EC_PUBLIC_KEY), hex::decode("06072a8648ce3d0201").unwrap());
        assert_eq!(der_oid(OID_P384), hex::decode("06052b81040022").unwrap());
        assert_eq!(der_uint(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_uint(&[0x00, 0x01, 0x00, 0x01]), vec![0x02, 0x03, 0x01, 0x00, 0x01]);
        let long = der(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn spki_round_trip() {
        let ek = EkPublic {
            key: EkKey::EcP256 { x: [1; 32], y: [2; 32] },
            name_alg: alg::SHA256,
            symmetric: aes_cfb(128),
        };
        let parsed = EkPublic::from_spki_der(&ek.spki_der()).unwrap();
        assert_eq!(parsed, ek);
        let rsa = EkPublic {
            key: EkKey::Rsa {
                n: vec![0xc5; 256],
                e: vec![1, 0, 1],
            },
            name_alg: alg::SHA256,
            symmetric: aes_cfb(128),
        };
        assert_eq!(EkPublic::from_spki_der(&rsa.spki_der()).unwrap(), rsa);
        assert!(EkPublic::from_spki_der(&[0x30, 0x00]).is_err());
    }
}
