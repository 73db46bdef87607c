//! The attestation key (AK): its public area, its TPM name, and the check of a signature it made.
//!
//! An [`AkPublic`] only exists for a key that can make a quote mean something: a restricted
//! signing key that cannot leave its TPM (fixedTPM, fixedParent, sensitiveDataOrigin), RSA
//! (2048–4096 bits) or ECC P-256, whose signatures ring can verify. A restricted key only signs
//! structures the TPM itself built, which is what stops anyone forging a TPMS_ATTEST with it.

use std::fmt;
use std::str::FromStr;

use ring::{digest, signature as ring_sig};
use serde::{Serialize, Serializer};

use super::wire::{self, alg, attr, curve, KeyParams};
use crate::{Check, Refusal};

/// A TPM object name: nameAlg (u16, big-endian) ‖ H_nameAlg(TPMT_PUBLIC). It identifies a key
/// (public area and attributes) across TPMs and tools: `tpm2_createak -n` writes the same bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AkName(Vec<u8>);

impl AkName {
    /// The name of the object whose marshalled TPMT_PUBLIC is `tpmt_public`, with hash `name_alg`.
    fn compute(name_alg: u16, tpmt_public: &[u8]) -> Result<Self, Refusal> {
        let algorithm = match name_alg {
            alg::SHA256 => &digest::SHA256,
            alg::SHA384 => &digest::SHA384,
            alg::SHA512 => &digest::SHA512,
            other => {
                return Err(Refusal::new(
                    Check::SigningKey,
                    format!("AK nameAlg {other:#06x} is not SHA-256/384/512"),
                ))
            }
        };
        let mut name = name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(digest::digest(algorithm, tpmt_public).as_ref());
        Ok(Self(name))
    }

    /// Takes a name as stored (e.g. in the hardware registry or from `tpm2_createak -n`): a known
    /// hash algorithm id followed by a digest of its size.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Refusal> {
        let bad = || Refusal::new(Check::Malformed, format!("not a TPM name: {}", hex::encode(bytes)));
        let (id, digest) = bytes.split_at_checked(2).ok_or_else(bad)?;
        let id = u16::from_be_bytes([id[0], id[1]]);
        match alg::digest_size(id) {
            Some(size) if size == digest.len() => Ok(Self(bytes.to_vec())),
            _ => Err(bad()),
        }
    }

    /// The raw name bytes (what MakeCredential binds and the quote's signer is named by).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex, as `tpm2_createak` prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for AkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AkName({})", self.to_hex())
    }
}

impl FromStr for AkName {
    type Err = Refusal;

    fn from_str(s: &str) -> Result<Self, Refusal> {
        let bytes = hex::decode(s).map_err(|e| Refusal::new(Check::Malformed, format!("AK name is not hex: {e}")))?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for AkName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// The signature schemes accepted for quotes. All hash with SHA-256, which is also the hash of
/// the quote's PCR digest.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SignatureScheme {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsassaSha256,
    /// RSASSA-PSS with SHA-256 (MGF1-SHA-256, salt length 32, as the TPM reference code signs).
    RsapssSha256,
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256Sha256,
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum Key {
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed SEC1 point.
    EcP256([u8; 65]),
}

/// A parsed AK public area (TPM2B_PUBLIC) that is fit to sign quotes, and its name.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AkPublic {
    key: Key,
    /// The scheme fixed in the key (TPM_ALG_NULL: any scheme of the key type), and its hash.
    scheme: wire::Scheme,
    name: AkName,
}

/// Left-pads a big-endian integer to `N` bytes; `None` if it does not fit.
pub(crate) fn pad_be<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let bytes = &bytes[first..];
    let mut out = [0u8; N];
    out.get_mut(N.checked_sub(bytes.len())?..)?.copy_from_slice(bytes);
    Some(out)
}

/// Strips leading zero bytes.
pub(crate) fn trim_be(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// The RSA exponent as big-endian bytes (0 in a TPM public area means 65537).
pub(crate) fn rsa_exponent(exponent: u32) -> Vec<u8> {
    let e = if exponent == 0 { 65537 } else { exponent };
    trim_be(&e.to_be_bytes()).to_vec()
}

impl AkPublic {
    /// Parses an AK public area as `tpm2_createak -u` writes it (TPM2B_PUBLIC) and checks that it
    /// is a restricted signing key bound to its TPM. Refusals: `Malformed` if it does not parse,
    /// `SigningKey` if the key is not fit to sign quotes.
    pub fn from_tpm2b_public(bytes: &[u8]) -> Result<Self, Refusal> {
        let public = wire::tpm2b_public(bytes, "AK TPM2B_PUBLIC")?;
        let required =
            attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::RESTRICTED | attr::SIGN;
        if public.attributes & required != required || public.attributes & attr::DECRYPT != 0 {
            return Err(Refusal::new(
                Check::SigningKey,
                format!(
                    "AK attributes {:#010x}: need fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign and not decrypt",
                    public.attributes
                ),
            ));
        }
        let name = AkName::compute(public.name_alg, public.bytes)?;
        let (key, scheme) = match public.params {
            KeyParams::Rsa {
                scheme,
                key_bits,
                exponent,
                modulus,
                ..
            } => {
                let n = trim_be(modulus);
                if !(2048..=4096).contains(&key_bits) || n.len() * 8 != usize::from(key_bits) {
                    return Err(Refusal::new(
                        Check::SigningKey,
                        format!("AK RSA key of {key_bits} bits with a {}-byte modulus", modulus.len()),
                    ));
                }
                let key = Key::Rsa {
                    n: n.to_vec(),
                    e: rsa_exponent(exponent),
                };
                (key, scheme)
            }
            KeyParams::Ecc {
                scheme, curve, x, y, ..
            } => {
                if curve != curve::NIST_P256 {
                    return Err(Refusal::new(
                        Check::SigningKey,
                        format!("AK ECC curve {curve:#06x} is not NIST P-256"),
                    ));
                }
                let (Some(x), Some(y)) = (pad_be::<32>(x), pad_be::<32>(y)) else {
                    return Err(Refusal::new(
                        Check::Malformed,
                        "AK ECC point coordinates exceed 32 bytes",
                    ));
                };
                let mut point = [0u8; 65];
                point[0] = 4;
                point[1..33].copy_from_slice(&x);
                point[33..].copy_from_slice(&y);
                (Key::EcP256(point), scheme)
            }
        };
        Ok(Self { key, scheme, name })
    }

    /// The AK's name (nameAlg ‖ H(TPMT_PUBLIC)).
    pub fn name(&self) -> &AkName {
        &self.name
    }

    /// Verifies a TPMT_SIGNATURE (as `tpm2_quote -s` writes it) over the exact `message` bytes.
    /// Refusals: `Malformed` if the signature does not parse, `SigningKey` if its scheme is not
    /// accepted or not the key's, `Signature` if it does not verify.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<SignatureScheme, Refusal> {
        let sig = wire::signature(signature)?;
        let (sig_alg, hash) = match sig {
            wire::Signature::Rsa { alg, hash, .. } | wire::Signature::Ecc { alg, hash, .. } => (alg, hash),
        };
        if self.scheme.alg != alg::NULL && (self.scheme.alg, self.scheme.hash) != (sig_alg, hash) {
            return Err(Refusal::new(
                Check::SigningKey,
                format!(
                    "signature scheme {sig_alg:#06x}/{hash:#06x} is not the AK's {:#06x}/{:#06x}",
                    self.scheme.alg, self.scheme.hash
                ),
            ));
        }
        if hash != alg::SHA256 {
            return Err(Refusal::new(
                Check::SigningKey,
                format!("signature hash {hash:#06x} is not SHA-256"),
            ));
        }
        let bad = |scheme: &str| {
            Refusal::new(
                Check::Signature,
                format!("{scheme} quote signature does not verify with the AK"),
            )
        };
        match (&self.key, sig) {
            (Key::Rsa { n, e }, wire::Signature::Rsa { alg, sig, .. }) => {
                let (params, scheme, label): (&ring_sig::RsaParameters, _, _) = match alg {
                    alg::RSASSA => (
                        &ring_sig::RSA_PKCS1_2048_8192_SHA256,
                        SignatureScheme::RsassaSha256,
                        "RSASSA",
                    ),
                    _ => (
                        &ring_sig::RSA_PSS_2048_8192_SHA256,
                        SignatureScheme::RsapssSha256,
                        "RSAPSS",
                    ),
                };
                if sig.len() != n.len() {
                    return Err(bad(label));
                }
                ring_sig::RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .map_err(|_| bad(label))?;
                Ok(scheme)
            }
            (
                Key::EcP256(point),
                wire::Signature::Ecc {
                    alg: alg::ECDSA, r, s, ..
                },
            ) => {
                let (Some(r), Some(s)) = (pad_be::<32>(r), pad_be::<32>(s)) else {
                    return Err(bad("ECDSA"));
                };
                let mut fixed = [0u8; 64];
                fixed[..32].copy_from_slice(&r);
                fixed[32..].copy_from_slice(&s);
                ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, &fixed)
                    .map_err(|_| bad("ECDSA"))?;
                Ok(SignatureScheme::EcdsaP256Sha256)
            }
            (_, _) => Err(Refusal::new(
                Check::SigningKey,
                format!("signature algorithm {sig_alg:#06x} does not fit the AK's key type"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_garbage() {
        let mut bytes = vec![0x00, 0x0b];
        bytes.extend([7u8; 32]);
        let name = AkName::from_bytes(&bytes).unwrap();
        assert_eq!(name.to_hex().parse::<AkName>().unwrap(), name);
        assert!(AkName::from_bytes(&bytes[..33]).is_err());
        assert!(AkName::from_bytes(&[0x00]).is_err());
        assert!(AkName::from_bytes(&[0x12, 0x34, 1, 2]).is_err());
        assert!("zz".parse::<AkName>().is_err());
    }

    #[test]
    fn padding() {
        assert_eq!(pad_be::<4>(&[0, 0, 0, 0, 0, 1, 2]), Some([0, 0, 1, 2]));
        assert_eq!(pad_be::<2>(&[1, 2, 3]), None);
        assert_eq!(pad_be::<2>(&[]), Some([0, 0]));
        assert_eq!(rsa_exponent(0), vec![1, 0, 1]);
        assert_eq!(rsa_exponent(3), vec![3]);
    }
}
