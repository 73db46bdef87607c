//! Share envelopes: a root-key share encrypted to one P-256 key, in the form a PKCS#11 token can
//! open and re-seal without the share leaving it (`kms-hsm`'s `HsmShareKey::rewrap`), and the
//! software side of the same envelope that the server uses.
//!
//! Construction (ECDH-ES with AES key wrap): a fresh ephemeral P-256 key pair per envelope;
//! Z = the x-coordinate of ECDH(ephemeral, recipient) (32 bytes); `wrapped` = AES-256 key wrap
//! with padding (RFC 5649) of the plaintext under Z. There is deliberately no KDF: the token side
//! derives with `CKM_ECDH1_DERIVE` and `CKD_NULL`, which is all SoftHSM2 (and many modules)
//! offer, and the two sides must agree byte for byte. That is sound here because every envelope
//! uses a fresh ephemeral key, so Z is a one-time uniformly-distributed-enough key (a P-256
//! x-coordinate, used only as a 256-bit AES key, never output); AES-KWP is deterministic
//! authenticated encryption, so a tampered envelope or a wrong key fails with overwhelming
//! probability; and the plaintext carries its own context ([`share_plaintext`]), binding the share
//! to the admin it belongs to.
//!
//! Plaintexts are a multiple of 8 bytes ([`seal`] refuses others), so RFC 5649 adds no padding:
//! SoftHSM2 2.6.1's `CKM_AES_KEY_WRAP_PAD` unwrap keeps the padding zeros in the unwrapped
//! object, which would otherwise grow the content at every re-wrap. [`share_plaintext`] pads with
//! zeros and records the share's length, so this costs callers nothing.
//!
//! This module must never log, and never hand out a share except as [`SecretBytes`].

use aes_kw::KekAes256;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use zeroize::Zeroizing;

use crate::secret::SecretBytes;
use crate::Error;

/// The first byte of an encoded [`ShareEnvelope`].
pub const ENVELOPE_VERSION: u8 = 1;
/// Length of a SEC1 uncompressed P-256 point.
pub const P256_PUBLIC_KEY_LEN: usize = 65;
/// Label that starts every share plaintext (see [`share_plaintext`]).
pub const SHARE_LABEL: &[u8] = b"kms-share-v2\0";

/// A share sealed to one P-256 key. Encoded ([`ShareEnvelope::encode`]) as
/// `version (1 byte, = 1) ‖ ephemeral public key (65 bytes, SEC1 uncompressed) ‖ wrapped`, where
/// `wrapped` is the RFC 5649 output (at least 16 bytes, a multiple of 8) and runs to the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareEnvelope {
    /// The sender's ephemeral P-256 public key, SEC1 uncompressed (65 bytes).
    pub ephemeral_public_key: Vec<u8>,
    /// AES-256-KWP (RFC 5649) of the plaintext under the ECDH x-coordinate.
    pub wrapped: Vec<u8>,
}

impl ShareEnvelope {
    /// The versioned byte encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.ephemeral_public_key.len() + self.wrapped.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.ephemeral_public_key);
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// Parses [`ShareEnvelope::encode`]'s output; checks the version, that the ephemeral key is a
    /// point on P-256 and that `wrapped` has a length RFC 5649 can produce.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (&version, rest) = bytes
            .split_first()
            .ok_or(Error::ShareEnvelope("empty share envelope"))?;
        if version != ENVELOPE_VERSION {
            return Err(Error::ShareEnvelope("unknown share envelope version (expected 1)"));
        }
        if rest.len() < P256_PUBLIC_KEY_LEN {
            return Err(Error::ShareEnvelope("share envelope too short"));
        }
        let (epk, wrapped) = rest.split_at(P256_PUBLIC_KEY_LEN);
        let envelope = Self {
            ephemeral_public_key: epk.to_vec(),
            wrapped: wrapped.to_vec(),
        };
        envelope.check()?;
        Ok(envelope)
    }

    /// Checks the shape of both fields (not the authenticity of `wrapped`, which only opening can).
    pub fn check(&self) -> Result<(), Error> {
        parse_public_key(&self.ephemeral_public_key)?;
        if self.wrapped.len() < 16 || !self.wrapped.len().is_multiple_of(8) {
            return Err(Error::ShareEnvelope(
                "wrapped share has a length AES key wrap cannot produce",
            ));
        }
        Ok(())
    }
}

/// Checks that `bytes` is a SEC1 uncompressed P-256 public key (65 bytes, a point on the curve).
pub fn check_public_key(bytes: &[u8]) -> Result<(), Error> {
    parse_public_key(bytes).map(|_| ())
}

/// Parses a SEC1 uncompressed P-256 public key, checking that it is on the curve.
fn parse_public_key(bytes: &[u8]) -> Result<PublicKey, Error> {
    if bytes.len() != P256_PUBLIC_KEY_LEN || bytes[0] != 4 {
        return Err(Error::InvalidPublicKey("P-256 (65-byte SEC1 uncompressed)"));
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| Error::InvalidPublicKey("P-256 (not a point on the curve)"))
}

fn generate_secret() -> Result<SecretKey, Error> {
    // A uniformly random 32-byte string is a valid scalar except with probability ~2^-32; draw
    // again in that case rather than reduce, so the key stays uniform.
    for _ in 0..16 {
        let bytes = Zeroizing::new(crate::random_array::<32>()?);
        if let Ok(key) = SecretKey::from_slice(bytes.as_ref()) {
            return Ok(key);
        }
    }
    Err(Error::Rng)
}

fn public_bytes(secret: &SecretKey) -> Vec<u8> {
    secret.public_key().to_encoded_point(false).as_bytes().to_vec()
}

/// The AES-256 key wrap key shared by `secret` and `peer`: the ECDH x-coordinate.
fn kek(secret: &SecretKey, peer: &PublicKey) -> KekAes256 {
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    let z: Zeroizing<[u8; 32]> = Zeroizing::new((*shared.raw_secret_bytes()).into());
    KekAes256::from(*z)
}

/// Seals `plaintext` to `recipient_public_key` (SEC1 uncompressed P-256) with a fresh ephemeral key.
pub fn seal(recipient_public_key: &[u8], plaintext: &[u8]) -> Result<ShareEnvelope, Error> {
    let recipient = parse_public_key(recipient_public_key)?;
    if plaintext.is_empty() || !plaintext.len().is_multiple_of(8) {
        return Err(Error::ShareEnvelope(
            "a sealed plaintext must be a non-empty multiple of 8 bytes (see share_plaintext)",
        ));
    }
    let ephemeral = generate_secret()?;
    let wrapped = kek(&ephemeral, &recipient)
        .wrap_with_padding_vec(plaintext)
        .map_err(|_| Error::ShareEnvelope("share too long for AES key wrap"))?;
    Ok(ShareEnvelope {
        ephemeral_public_key: public_bytes(&ephemeral),
        wrapped,
    })
}

/// A P-256 private key held in memory that opens envelopes sealed to it (the server's unseal key,
/// or a custodian without an HSM in tests). Zeroized on drop; no `Debug` or `Clone`.
pub struct UnsealKey {
    secret: SecretKey,
}

/// A custodian's share key held in software: the same thing as [`UnsealKey`], for tests and for
/// custodians without an HSM.
pub type ShareKey = UnsealKey;

impl UnsealKey {
    /// A fresh key from the system CSPRNG.
    pub fn generate() -> Result<Self, Error> {
        Ok(Self {
            secret: generate_secret()?,
        })
    }

    /// Loads a 32-byte big-endian scalar.
    pub fn from_bytes(scalar: &SecretBytes) -> Result<Self, Error> {
        SecretKey::from_slice(scalar.expose_secret())
            .map(|secret| Self { secret })
            .map_err(|_| Error::InvalidPublicKey("P-256 private (32-byte scalar)"))
    }

    /// The 32-byte scalar, to store (encrypted) and reload with [`UnsealKey::from_bytes`].
    pub fn to_bytes(&self) -> SecretBytes {
        SecretBytes::new(self.secret.to_bytes().to_vec())
    }

    /// The public key envelopes are sealed to (SEC1 uncompressed, 65 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        public_bytes(&self.secret)
    }

    /// Opens an envelope sealed to this key. Fails on a wrong key or any change to the envelope.
    pub fn open(&self, envelope: &ShareEnvelope) -> Result<SecretBytes, Error> {
        envelope.check()?;
        let ephemeral = parse_public_key(&envelope.ephemeral_public_key)?;
        let mut out = Zeroizing::new(vec![0u8; envelope.wrapped.len() - 8]);
        let len = kek(&self.secret, &ephemeral)
            .unwrap_with_padding(&envelope.wrapped, &mut out)
            .map_err(|_| Error::ShareEnvelope("cannot open the share envelope: wrong key or tampered envelope"))?
            .len();
        out.truncate(len);
        Ok(SecretBytes::new(std::mem::take(&mut *out)))
    }
}

/// The plaintext sealed in a share envelope:
/// `"kms-share-v2\0" ‖ admin_id ‖ "\0" ‖ share length (u32 big-endian) ‖ share ‖ zeros`, padded
/// with zeros to a multiple of 8 bytes. The admin id binds the share to its custodian, so a share
/// re-wrapped by one custodian cannot be submitted as another's. Admin ids never contain NUL.
pub fn share_plaintext(admin_id: &str, share: &[u8]) -> SecretBytes {
    let unpadded = SHARE_LABEL.len() + admin_id.len() + 1 + 4 + share.len();
    let mut out = Vec::with_capacity(unpadded.next_multiple_of(8));
    out.extend_from_slice(SHARE_LABEL);
    out.extend_from_slice(admin_id.as_bytes());
    out.push(0);
    // Shares are tens of bytes; u32::MAX saturates harmlessly (parsing then fails).
    out.extend_from_slice(&u32::try_from(share.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(share);
    out.resize(unpadded.next_multiple_of(8), 0);
    SecretBytes::new(out)
}

/// Checks the label, admin id, length and padding of a [`share_plaintext`] and returns the share.
pub fn parse_share_plaintext(admin_id: &str, plaintext: &SecretBytes) -> Result<SecretBytes, Error> {
    let rest = plaintext
        .expose_secret()
        .strip_prefix(SHARE_LABEL)
        .ok_or(Error::ShareEnvelope("not a kms-share-v2 plaintext"))?;
    let rest = rest
        .strip_prefix(admin_id.as_bytes())
        .and_then(|r| r.strip_prefix(&[0u8]))
        .ok_or(Error::ShareEnvelope("the share was sealed for another admin"))?;
    let malformed = Error::ShareEnvelope("malformed share plaintext (length or padding)");
    if rest.len() < 4 {
        return Err(malformed);
    }
    let (len, rest) = rest.split_at(4);
    let len = usize::try_from(u32::from_be_bytes([len[0], len[1], len[2], len[3]]))
        .map_err(|_| Error::ShareEnvelope("share too long"))?;
    if rest.len() < len {
        return Err(malformed);
    }
    let (share, padding) = rest.split_at(len);
    if padding.len() >= 8 || padding.iter().any(|&b| b != 0) {
        return Err(malformed);
    }
    Ok(SecretBytes::new(share.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let key = UnsealKey::generate().unwrap();
        let pt = share_plaintext("alice", b"share bytes");
        let env = seal(&key.public_key(), pt.expose_secret()).unwrap();
        assert_eq!(env.ephemeral_public_key.len(), 65);
        let decoded = ShareEnvelope::decode(&env.encode()).unwrap();
        assert_eq!(decoded, env);
        let opened = key.open(&decoded).unwrap();
        assert_eq!(opened.expose_secret(), pt.expose_secret());
        let share = parse_share_plaintext("alice", &opened).unwrap();
        assert_eq!(share.expose_secret(), b"share bytes");
        // Each envelope has its own ephemeral key.
        assert_ne!(
            seal(&key.public_key(), b"12345678").unwrap().ephemeral_public_key,
            env.ephemeral_public_key
        );
        // Only whole 8-byte blocks are sealed.
        assert!(seal(&key.public_key(), b"1234567").is_err());
        assert!(seal(&key.public_key(), b"").is_err());
        // Reloading the key from its bytes opens the same envelope.
        let again = UnsealKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(again.open(&env).unwrap().expose_secret(), pt.expose_secret());
    }

    #[test]
    fn wrong_key_fails() {
        let key = UnsealKey::generate().unwrap();
        let other = ShareKey::generate().unwrap();
        let env = seal(&key.public_key(), b"secret!!").unwrap();
        assert!(other.open(&env).is_err());
    }

    #[test]
    fn tampering_fails() {
        let key = UnsealKey::generate().unwrap();
        let env = seal(&key.public_key(), b"secret share 16b").unwrap();
        let mut bad = env.clone();
        bad.wrapped[3] ^= 1;
        assert!(key.open(&bad).is_err());
        let mut bad = env.clone();
        bad.wrapped.truncate(bad.wrapped.len() - 8);
        assert!(key.open(&bad).is_err());
        // Another valid point as the ephemeral key gives another KEK.
        let mut bad = env.clone();
        bad.ephemeral_public_key = UnsealKey::generate().unwrap().public_key();
        assert!(key.open(&bad).is_err());
        // Not a point.
        let mut bad = env.clone();
        bad.ephemeral_public_key[64] ^= 1;
        assert!(key.open(&bad).is_err());
        let enc = env.encode();
        assert!(ShareEnvelope::decode(&enc[..enc.len() - 1]).is_err());
        assert!(ShareEnvelope::decode(&enc[..40]).is_err());
        assert!(ShareEnvelope::decode(&[]).is_err());
        let mut v2 = enc.clone();
        v2[0] = 2;
        assert!(ShareEnvelope::decode(&v2).is_err());
        assert!(seal(&[4u8; 65], b"12345678").is_err());
    }

    #[test]
    fn context_mismatch_fails() {
        let pt = share_plaintext("alice", b"s");
        assert!(parse_share_plaintext("bob", &pt).is_err());
        assert!(parse_share_plaintext("alic", &pt).is_err());
        let not_labelled = SecretBytes::new(b"kms-share-v1\0alice\0\0\0\0\x01s".to_vec());
        assert!(parse_share_plaintext("alice", &not_labelled).is_err());
        assert_eq!(parse_share_plaintext("alice", &pt).unwrap().expose_secret(), b"s");
        for len in 0..40 {
            let share = vec![0xa5; len];
            let pt = share_plaintext("bob", &share);
            assert_eq!(pt.len() % 8, 0);
            assert_eq!(parse_share_plaintext("bob", &pt).unwrap().expose_secret(), &share[..]);
            // Extra padding, a non-zero pad byte or a truncated share are refused.
            let mut long = pt.expose_secret().to_vec();
            long.extend_from_slice(&[0; 8]);
            assert!(parse_share_plaintext("bob", &SecretBytes::new(long)).is_err());
            let cut = pt.expose_secret()[..pt.len() - 8].to_vec();
            assert!(parse_share_plaintext("bob", &SecretBytes::new(cut)).is_err());
        }
        let mut dirty = share_plaintext("bob", b"abcd").expose_secret().to_vec();
        let last = dirty.len() - 1;
        dirty[last] = 1;
        assert!(parse_share_plaintext("bob", &SecretBytes::new(dirty)).is_err());
    }

    #[test]
    fn aes_kwp_is_rfc5649() {
        // RFC 5649 section 6, second example: the padding variant the token's
        // CKM_AES_KEY_WRAP_PAD implements.
        let kek = aes_kw::KekAes192::from(
            <[u8; 24]>::try_from(hex::decode("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8").unwrap()).unwrap(),
        );
        let w = kek
            .wrap_with_padding_vec(&hex::decode("466f7250617369").unwrap())
            .unwrap();
        assert_eq!(hex::encode(w), "afbeb0f07dfbf5419200f2ccb50bb24f");
    }
}
