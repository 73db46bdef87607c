//! The suites' primitives: content-key derivation and key commitment (HKDF), AES-GCM for the
//! header authentication and the frames, and the footer signature (ECDSA over a running hash).

use aes_gcm::aead::AeadInPlace as _;
use aes_gcm::KeyInit as _;
use base64::Engine as _;
use kms_core::secret::SecretBytes;
use ring::{aead, digest, hkdf};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::header::{COMMITMENT_LEN, IV_LEN, TAG_LEN};
use crate::suite::{Kdf, SignatureAlgorithm, Suite};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A data key as the keyrings hand it over: the suite's length, zeroized on drop, no
/// `Debug` or `Clone`.
pub struct DataKey(SecretBytes);

impl DataKey {
    /// Takes `bytes` as a data key.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(SecretBytes::new(bytes))
    }

    /// A fresh random key of `len` bytes.
    pub fn generate(len: usize) -> Result<Self, Error> {
        let mut bytes = vec![0u8; len];
        kms_core::random_fill(&mut bytes).map_err(|_| Error::Crypto("the random number generator failed"))?;
        Ok(Self::new(bytes))
    }

    /// The key bytes.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// A second copy (for caches), zeroized like the first.
    pub(crate) fn duplicate(&self) -> Self {
        Self::new(self.expose_secret().to_vec())
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, info: &[&[u8]], len: usize) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    prk.expand(info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| Error::Crypto("HKDF expand failed"))?;
    Ok(out)
}

/// The content key of a message, and (format 2) its commitment, from the data key.
pub(crate) fn derive(
    suite: Suite,
    data_key: &DataKey,
    message_id: &[u8],
) -> Result<(ContentKey, Option<[u8; COMMITMENT_LEN]>), Error> {
    if data_key.len() != suite.key_len() {
        return Err(Error::Keyring {
            keyring: "data key".into(),
            source: format!("{} bytes; {} needs {}", data_key.len(), suite, suite.key_len()).into(),
        });
    }
    let id = suite.id().to_be_bytes();
    let (key, commitment) = match suite.kdf() {
        Kdf::Identity => (Zeroizing::new(data_key.expose_secret().to_vec()), None),
        Kdf::HkdfSha256 | Kdf::HkdfSha384 => {
            let alg = if suite.kdf() == Kdf::HkdfSha256 {
                hkdf::HKDF_SHA256
            } else {
                hkdf::HKDF_SHA384
            };
            let prk = hkdf::Salt::new(alg, &[]).extract(data_key.expose_secret());
            (expand(&prk, &[&id, message_id], suite.key_len())?, None)
        }
        Kdf::HkdfSha512 => {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA512, message_id).extract(data_key.expose_secret());
            let key = expand(&prk, &[&id, b"DERIVEKEY"], suite.key_len())?;
            let commit = expand(&prk, &[b"COMMITKEY"], COMMITMENT_LEN)?;
            let mut c = [0u8; COMMITMENT_LEN];
            c.copy_from_slice(&commit);
            (key, Some(c))
        }
    };
    Ok((ContentKey::from_slice(&key)?, commitment))
}

/// Constant-time comparison of a derived commitment with the header's.
pub(crate) fn commitment_matches(derived: &[u8; COMMITMENT_LEN], stored: &[u8; COMMITMENT_LEN]) -> bool {
    // Every byte is compared (no early exit): the time does not depend on where they differ.
    subtle::ConstantTimeEq::ct_eq(&derived[..], &stored[..]).into()
}

/// An AES-GCM content key (128 and 256 through ring; 192, for legacy suites, through aes-gcm).
pub(crate) enum ContentKey {
    Ring(Box<aead::LessSafeKey>),
    Aes192(Box<aes_gcm::AesGcm<aes_gcm::aes::Aes192, aes_gcm::aead::consts::U12>>),
}

impl ContentKey {
    pub(crate) fn from_slice(key: &[u8]) -> Result<Self, Error> {
        Ok(match key.len() {
            16 | 32 => {
                let alg = if key.len() == 16 {
                    &aead::AES_128_GCM
                } else {
                    &aead::AES_256_GCM
                };
                ContentKey::Ring(Box::new(aead::LessSafeKey::new(
                    aead::UnboundKey::new(alg, key).map_err(|_| Error::Crypto("AES key"))?,
                )))
            }
            24 => ContentKey::Aes192(Box::new(
                aes_gcm::AesGcm::new_from_slice(key).map_err(|_| Error::Crypto("AES-192 key"))?,
            )),
            _ => return Err(Error::Crypto("content key length")),
        })
    }

    /// Encrypts `buf` in place; returns the tag.
    pub(crate) fn seal(&self, iv: &[u8; IV_LEN], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], Error> {
        let mut out = [0u8; TAG_LEN];
        match self {
            ContentKey::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(*iv), aead::Aad::from(aad), buf)
                    .map_err(|_| Error::Crypto("AES-GCM seal"))?;
                out.copy_from_slice(tag.as_ref());
            }
            ContentKey::Aes192(k) => {
                let tag = k
                    .encrypt_in_place_detached(iv.into(), aad, buf)
                    .map_err(|_| Error::Crypto("AES-GCM seal"))?;
                out.copy_from_slice(&tag);
            }
        }
        Ok(out)
    }

    /// Decrypts `buf` in place if `tag` verifies; on failure `buf` is zeroed (never released).
    pub(crate) fn open(&self, iv: &[u8; IV_LEN], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let ok = match self {
            ContentKey::Ring(k) => k
                .open_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(*iv),
                    aead::Aad::from(aad),
                    aead::Tag::from(*tag),
                    buf,
                    0..,
                )
                .is_ok(),
            ContentKey::Aes192(k) => k.decrypt_in_place_detached(iv.into(), aad, buf, tag.into()).is_ok(),
        };
        if !ok {
            zeroize::Zeroize::zeroize(buf);
        }
        ok
    }
}

/// The header authentication's AAD: the header body, then the context that is authenticated
/// but not stored (the required-context CMM's keys; empty otherwise).
pub(crate) fn header_aad(body: &[u8], authenticated_only: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(body.len() + authenticated_only.len());
    aad.extend_from_slice(body);
    aad.extend_from_slice(authenticated_only);
    aad
}

/// What a frame's AAD says it is.
#[derive(Clone, Copy)]
pub(crate) enum BodyPart {
    Frame,
    FinalFrame,
    SingleBlock,
}

/// A frame's AAD: message id, the part's label, sequence number, plaintext length.
pub(crate) fn frame_aad(message_id: &[u8], part: BodyPart, sequence: u32, len: u64) -> Vec<u8> {
    let label: &[u8] = match part {
        BodyPart::Frame => b"AWSKMSEncryptionClient Frame",
        BodyPart::FinalFrame => b"AWSKMSEncryptionClient Final Frame",
        BodyPart::SingleBlock => b"AWSKMSEncryptionClient Single Block",
    };
    let mut aad = Vec::with_capacity(message_id.len() + label.len() + 12);
    aad.extend_from_slice(message_id);
    aad.extend_from_slice(label);
    aad.extend_from_slice(&sequence.to_be_bytes());
    aad.extend_from_slice(&len.to_be_bytes());
    aad
}

/// A frame's IV: its sequence number, big-endian, in the last four bytes.
pub(crate) fn frame_iv(sequence: u32) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    iv[8..].copy_from_slice(&sequence.to_be_bytes());
    iv
}

/// The running hash a signature covers (header, header authentication, body).
pub(crate) struct Transcript(digest::Context);

impl Transcript {
    pub(crate) fn new(alg: SignatureAlgorithm) -> Self {
        Self(digest::Context::new(match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => &digest::SHA256,
            SignatureAlgorithm::EcdsaP384Sha384 => &digest::SHA384,
        }))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(self) -> digest::Digest {
        self.0.finish()
    }
}

/// A message's signing key: made per message, its public half written into the header's
/// context, dropped (zeroized) once the footer is written.
pub(crate) enum Signer {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl Signer {
    pub(crate) fn generate(alg: SignatureAlgorithm) -> Result<Self, Error> {
        // A scalar from the system RNG; retried in the (negligible) case it is out of range.
        for _ in 0..8 {
            let mut seed = Zeroizing::new([0u8; 48]);
            let seed = &mut seed[..match alg {
                SignatureAlgorithm::EcdsaP256Sha256 => 32,
                SignatureAlgorithm::EcdsaP384Sha384 => 48,
            }];
            kms_core::random_fill(seed).map_err(|_| Error::Crypto("the random number generator failed"))?;
            let key = match alg {
                SignatureAlgorithm::EcdsaP256Sha256 => p256::ecdsa::SigningKey::from_slice(seed).map(Signer::P256),
                SignatureAlgorithm::EcdsaP384Sha384 => p384::ecdsa::SigningKey::from_slice(seed).map(Signer::P384),
            };
            if let Ok(k) = key {
                return Ok(k);
            }
        }
        Err(Error::Crypto("cannot make an ECDSA key"))
    }

    /// The public key as the header carries it: base64 of the compressed point.
    pub(crate) fn public_key_b64(&self) -> String {
        let point = match self {
            Signer::P256(k) => k.verifying_key().to_encoded_point(true).as_bytes().to_vec(),
            Signer::P384(k) => k.verifying_key().to_encoded_point(true).as_bytes().to_vec(),
        };
        B64.encode(point)
    }

    /// The DER signature over the transcript's hash.
    pub(crate) fn sign(&self, transcript: Transcript) -> Result<Vec<u8>, Error> {
        use p256::ecdsa::signature::hazmat::PrehashSigner as _;
        let digest = transcript.finish();
        let der = match self {
            Signer::P256(k) => {
                let s: p256::ecdsa::Signature = k
                    .sign_prehash(digest.as_ref())
                    .map_err(|_| Error::Crypto("ECDSA sign"))?;
                s.normalize_s().unwrap_or(s).to_der().as_bytes().to_vec()
            }
            Signer::P384(k) => {
                let s: p384::ecdsa::Signature = k
                    .sign_prehash(digest.as_ref())
                    .map_err(|_| Error::Crypto("ECDSA sign"))?;
                s.normalize_s().unwrap_or(s).to_der().as_bytes().to_vec()
            }
        };
        Ok(der)
    }
}

/// A signed message's verification key, from its header's context.
pub(crate) enum Verifier {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl Verifier {
    pub(crate) fn from_header(alg: SignatureAlgorithm, b64: Option<&str>) -> Result<Self, Error> {
        let b64 = b64.ok_or_else(|| {
            Error::Malformed("a signed message's header has no aws-crypto-public-key in its context".into())
        })?;
        let point = B64
            .decode(b64)
            .map_err(|_| Error::Malformed("aws-crypto-public-key is not base64".into()))?;
        // The format carries the compressed point (as every ESDK writes it); the SEC1 parser
        // would take the uncompressed form too, giving one key two encodings in the header.
        let (curve, compressed_len) = match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => ("P-256", 33),
            SignatureAlgorithm::EcdsaP384Sha384 => ("P-384", 49),
        };
        if point.len() != compressed_len || !matches!(point.first(), Some(0x02 | 0x03)) {
            return Err(Error::Malformed(format!(
                "aws-crypto-public-key is {} bytes{}; the format stores a compressed {curve} point \
                 ({compressed_len} bytes, starting 0x02 or 0x03)",
                point.len(),
                match point.first() {
                    Some(tag) => format!(" starting 0x{tag:02X}"),
                    None => String::new(),
                }
            )));
        }
        let bad = |_| Error::Malformed("aws-crypto-public-key is not a point on the suite's curve".into());
        Ok(match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => {
                Verifier::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(bad)?)
            }
            SignatureAlgorithm::EcdsaP384Sha384 => {
                Verifier::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(bad)?)
            }
        })
    }

    pub(crate) fn verify(&self, transcript: Transcript, der: &[u8]) -> Result<(), Error> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        let digest = transcript.finish();
        let ok = match self {
            Verifier::P256(k) => p256::ecdsa::Signature::from_der(der)
                .map(|s| k.verify_prehash(digest.as_ref(), &s).is_ok())
                .unwrap_or(false),
            Verifier::P384(k) => p384::ecdsa::Signature::from_der(der)
                .map(|s| k.verify_prehash(digest.as_ref(), &s).is_ok())
                .unwrap_or(false),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Signature)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The header carries the compressed point; the same key uncompressed (which the SEC1
    /// parser takes) or of another length is refused, naming what is expected.
    #[test]
    fn the_public_key_must_be_a_compressed_point() {
        for alg in [SignatureAlgorithm::EcdsaP256Sha256, SignatureAlgorithm::EcdsaP384Sha384] {
            let signer = Signer::generate(alg).unwrap();
            let compressed = signer.public_key_b64();
            assert!(Verifier::from_header(alg, Some(&compressed)).is_ok());
            let uncompressed = match &signer {
                Signer::P256(k) => k.verifying_key().to_encoded_point(false).as_bytes().to_vec(),
                Signer::P384(k) => k.verifying_key().to_encoded_point(false).as_bytes().to_vec(),
            };
            let mut truncated = B64.decode(&compressed).unwrap();
            truncated.pop();
            for bad in [uncompressed, truncated, Vec::new()] {
                match Verifier::from_header(alg, Some(&B64.encode(&bad))) {
                    Err(Error::Malformed(m)) => assert!(m.contains("compressed"), "{m}"),
                    Err(e) => panic!("{alg:?}: {e}"),
                    Ok(_) => panic!("{alg:?}: a {}-byte key is accepted", bad.len()),
                }
            }
        }
    }

    /// The Python ESDK's commitment vectors: data key, message id, and the content key and
    /// commitment a correct derivation gives (`test_data/esdk/commitment-test-vectors.json`).
    #[test]
    fn commitment_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test_data/esdk/commitment-test-vectors.json"
        );
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("the ESDK commitment vectors at {path}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut checked = 0;
        for t in v["tests"].as_array().expect("tests") {
            if t["status"] != serde_json::Value::Bool(true) {
                continue;
            }
            let header = B64.decode(t["header"].as_str().unwrap().trim()).unwrap();
            let suite = Suite::from_id(u16::from_be_bytes([header[1], header[2]])).unwrap();
            let key = DataKey::new(B64.decode(t["decrypted-dek"].as_str().unwrap()).unwrap());
            let message_id = B64.decode(t["message-id"].as_str().unwrap()).unwrap();
            let (_, c) = derive(suite, &key, &message_id).unwrap();
            assert_eq!(
                B64.encode(c.unwrap()),
                t["commitment"].as_str().unwrap(),
                "{}",
                t["comment"]
            );
            checked += 1;
        }
        assert!(checked >= 40, "only {checked} commitment vectors checked");
    }
}
