//! The ciphertext blob: what GenerateDataKey, Encrypt and ReEncrypt return. Self-describing (it
//! names its key and version, so no database is needed to parse it), versioned, and bound to the
//! caller's encryption context. Documented byte by byte in docs/blob-format.md.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "KMSB"
//!      4     1  format version (1)
//!      5    16  key id (raw bytes)
//!     21     4  key version, big-endian u32
//!     25    32  salt, random per blob
//!     57   n+16 AES-256-GCM ciphertext and tag
//! ```
//! Per-blob key and nonce: HKDF-SHA256 with the salt, the key-encryption key (KEK) as input
//! key material, and info "kms-blob-v1\0" ‖ key id ‖ key version, 44 bytes of output: the first
//! 32 are the AES-256-GCM key, the last 12 its nonce. A fresh 256-bit salt per blob makes every
//! (key, nonce) pair unique however many blobs one KEK version encrypts (a collision needs about
//! 2^128 blobs), which random 96-bit nonces under one key could not promise past 2^32 blobs.
//! AAD: the 57 header bytes ‖ the canonical encoding of the encryption context.

use ring::{aead, hkdf};

use crate::context::EncryptionContext;
use crate::ids::{KeyId, KeyVersion};
use crate::secret::{SecretBytes, SecretKey};
use crate::Error;

/// A key-encryption key: the material of one version of a customer key.
pub type Kek = SecretKey<32>;

/// The magic bytes every blob starts with.
pub const MAGIC: &[u8; 4] = b"KMSB";
/// The only format version so far.
pub const FORMAT_V1: u8 = 1;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 57;
/// The AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// The largest plaintext a blob may carry (Encrypt's limit; data keys are 32 bytes).
pub const MAX_PLAINTEXT: usize = 4096;
/// The largest blob.
pub const MAX_BLOB: usize = HEADER_LEN + MAX_PLAINTEXT + TAG_LEN;

const INFO_LABEL: &[u8] = b"kms-blob-v1\0";

/// A parsed blob: its header fields, checked, and a view of its ciphertext.
#[derive(Debug)]
pub struct Blob<'a> {
    key_id: KeyId,
    version: KeyVersion,
    header: &'a [u8],
    salt: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Blob<'a> {
    /// Parses a blob without decrypting it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(Error::MalformedBlob("too short"));
        }
        if bytes.len() > MAX_BLOB {
            return Err(Error::MalformedBlob("too long"));
        }
        if &bytes[0..4] != MAGIC {
            return Err(Error::MalformedBlob("not a KMS blob (bad magic)"));
        }
        if bytes[4] != FORMAT_V1 {
            return Err(Error::MalformedBlob("unknown format version"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[5..21]);
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[21..25]);
        let version = KeyVersion::new(u32::from_be_bytes(v)).ok_or(Error::MalformedBlob("key version 0"))?;
        Ok(Self {
            key_id: KeyId::from_bytes(id),
            version,
            header: &bytes[..HEADER_LEN],
            salt: &bytes[25..HEADER_LEN],
            ciphertext: &bytes[HEADER_LEN..],
        })
    }

    /// The key that encrypted it.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The key version that encrypted it.
    pub fn version(&self) -> KeyVersion {
        self.version
    }

    /// Decrypts with the KEK of (key id, version), checking the encryption context.
    pub fn open(&self, kek: &Kek, context: &EncryptionContext) -> Result<SecretBytes, Error> {
        let key = blob_key(kek, self.key_id, self.version, self.salt)?;
        let mut aad = Vec::with_capacity(HEADER_LEN + 64);
        aad.extend_from_slice(self.header);
        aad.extend_from_slice(&context.canonical_bytes());
        let mut buf = zeroize::Zeroizing::new(self.ciphertext.to_vec());
        let plain_len = key
            .key
            .open_in_place(key.nonce(), aead::Aad::from(&aad), &mut buf)
            .map_err(|_| Error::DecryptFailed)?
            .len();
        buf.truncate(plain_len);
        Ok(SecretBytes::new(std::mem::take(&mut *buf)))
    }
}

/// Encrypts `plaintext` (at most [`MAX_PLAINTEXT`] bytes) under one KEK version with a fresh salt.
pub fn seal(
    kek: &Kek,
    key_id: KeyId,
    version: KeyVersion,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let salt: [u8; 32] = crate::random_array()?;
    seal_with_salt(kek, key_id, version, context, plaintext, &salt)
}

/// [`seal`] with a given salt: for test vectors only. A repeated salt repeats the (key, nonce)
/// pair, so production code always calls [`seal`].
pub fn seal_with_salt(
    kek: &Kek,
    key_id: KeyId,
    version: KeyVersion,
    context: &EncryptionContext,
    plaintext: &[u8],
    salt: &[u8; 32],
) -> Result<Vec<u8>, Error> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(Error::MalformedBlob("plaintext longer than 4096 bytes"));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_V1);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&version.get().to_be_bytes());
    out.extend_from_slice(salt);
    let key = blob_key(kek, key_id, version, salt)?;
    let mut aad = Vec::with_capacity(HEADER_LEN + 64);
    aad.extend_from_slice(&out);
    aad.extend_from_slice(&context.canonical_bytes());
    let mut body = plaintext.to_vec();
    let tag = key
        .key
        .seal_in_place_separate_tag(key.nonce(), aead::Aad::from(&aad), &mut body)
        .map_err(|_| Error::Rng)?;
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    zeroize::Zeroize::zeroize(&mut body);
    Ok(out)
}

struct BlobKey {
    key: aead::LessSafeKey,
    nonce: [u8; 12],
}

impl BlobKey {
    fn nonce(&self) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(self.nonce)
    }
}

struct Okm(usize);

impl hkdf::KeyType for Okm {
    fn len(&self) -> usize {
        self.0
    }
}

fn blob_key(kek: &Kek, key_id: KeyId, version: KeyVersion, salt: &[u8]) -> Result<BlobKey, Error> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(kek.expose_secret());
    let version_bytes = version.get().to_be_bytes();
    let info = [INFO_LABEL, key_id.as_bytes(), &version_bytes];
    let mut okm = zeroize::Zeroizing::new([0u8; 44]);
    prk.expand(&info, Okm(44))
        .and_then(|o| o.fill(&mut okm[..]))
        .map_err(|_| Error::Rng)?;
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &okm[..32]).map_err(|_| Error::Rng)?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm[32..]);
    Ok(BlobKey {
        key: aead::LessSafeKey::new(unbound),
        nonce,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn kek() -> Kek {
        let mut b = [7u8; 32];
        Kek::from_slice(&mut b).unwrap()
    }

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_context_binding() {
        let id = KeyId::generate().unwrap();
        let v = KeyVersion::new(3).unwrap();
        let c = ctx(&[("tenant", "a")]);
        let blob = seal(&kek(), id, v, &c, b"hello").unwrap();
        let parsed = Blob::parse(&blob).unwrap();
        assert_eq!(parsed.key_id(), id);
        assert_eq!(parsed.version(), v);
        assert_eq!(parsed.open(&kek(), &c).unwrap().expose_secret(), b"hello");
        assert!(matches!(
            parsed.open(&kek(), &ctx(&[("tenant", "b")])),
            Err(Error::DecryptFailed)
        ));
        assert!(matches!(
            parsed.open(&kek(), &EncryptionContext::empty()),
            Err(Error::DecryptFailed)
        ));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let id = KeyId::from_bytes([1; 16]);
        let c = EncryptionContext::empty();
        let blob = seal(&kek(), id, KeyVersion::FIRST, &c, &[9u8; 32]).unwrap();
        for i in 0..blob.len() * 8 {
            let mut b = blob.clone();
            b[i / 8] ^= 1 << (i % 8);
            let ok = Blob::parse(&b).and_then(|p| p.open(&kek(), &c)).is_ok();
            assert!(!ok, "bit {i} flipped still decrypts");
        }
    }

    #[test]
    fn truncated_and_oversized_blobs_are_refused() {
        let blob = seal(
            &kek(),
            KeyId::from_bytes([1; 16]),
            KeyVersion::FIRST,
            &EncryptionContext::empty(),
            b"x",
        )
        .unwrap();
        for n in 0..blob.len() {
            let r = Blob::parse(&blob[..n]).and_then(|p| p.open(&kek(), &EncryptionContext::empty()));
            assert!(r.is_err());
        }
        assert!(Blob::parse(&vec![0u8; MAX_BLOB + 1]).is_err());
        assert!(seal(
            &kek(),
            KeyId::from_bytes([1; 16]),
            KeyVersion::FIRST,
            &EncryptionContext::empty(),
            &[0u8; MAX_PLAINTEXT + 1]
        )
        .is_err());
    }
}
