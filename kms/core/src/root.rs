//! The root key (RK) and what it does in software: wrap and unwrap key-encryption keys (KEKs),
//! and its key check value. Seals that hold the root key in software (`shamir`, `dev`) use
//! [`SoftwareRoot`]; an HSM seal implements the server's seal boundary without it.

use ring::{aead, hmac};

use crate::blob::Kek;
use crate::ids::{KeyId, KeyVersion};
use crate::secret::SecretKey;
use crate::Error;

/// The root key's material.
pub type RootKeyMaterial = SecretKey<32>;

const WRAP_LABEL: &[u8] = b"kms-kek-wrap-v1\0";
const KCV_LABEL: &[u8] = b"kms-root-kcv-v1";
/// A wrapped KEK: 12-byte nonce ‖ 32-byte ciphertext ‖ 16-byte tag.
pub const WRAPPED_KEK_LEN: usize = 12 + 32 + 16;

/// A root key held in memory.
pub struct SoftwareRoot {
    key: aead::LessSafeKey,
    kcv: [u8; 16],
}

impl SoftwareRoot {
    /// Takes the root key material.
    pub fn new(material: &RootKeyMaterial) -> Result<Self, Error> {
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, material.expose_secret()).map_err(|_| Error::Rng)?;
        Ok(Self {
            key: aead::LessSafeKey::new(unbound),
            kcv: key_check_value(material),
        })
    }

    /// The key check value of this root key.
    pub fn kcv(&self) -> [u8; 16] {
        self.kcv
    }

    /// Wraps a KEK: AES-256-GCM under the root key with a random nonce, AAD binding the key id
    /// and version so a wrapped KEK cannot be moved to another key or version. Random nonces are
    /// safe here: one root key wraps at most one KEK per key version, far below 2^32.
    pub fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, Error> {
        let nonce: [u8; 12] = crate::random_array()?;
        let mut out = Vec::with_capacity(WRAPPED_KEK_LEN);
        out.extend_from_slice(&nonce);
        let mut body = zeroize::Zeroizing::new(kek.expose_secret().to_vec());
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(wrap_aad(key_id, version)),
                &mut body,
            )
            .map_err(|_| Error::Rng)?;
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Unwraps a KEK wrapped by [`SoftwareRoot::wrap`] for the same key id and version.
    pub fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, Error> {
        if wrapped.len() != WRAPPED_KEK_LEN {
            return Err(Error::UnwrapFailed);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&wrapped[..12]);
        let mut body = zeroize::Zeroizing::new(wrapped[12..].to_vec());
        let plain = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(wrap_aad(key_id, version)),
                &mut body,
            )
            .map_err(|_| Error::UnwrapFailed)?;
        Kek::from_slice(plain).ok_or(Error::UnwrapFailed)
    }
}

fn wrap_aad(key_id: KeyId, version: KeyVersion) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_LABEL.len() + 20);
    aad.extend_from_slice(WRAP_LABEL);
    aad.extend_from_slice(key_id.as_bytes());
    aad.extend_from_slice(&version.get().to_be_bytes());
    aad
}

/// The AAD that binds a wrapped KEK to its key id and version: `"kms-kek-wrap-v1\0" ‖ key id ‖
/// version (u32 big-endian)`. Every root-key implementation (software or HSM) wraps with this AAD,
/// so their wrapped KEKs have one format.
pub fn kek_wrap_aad(key_id: KeyId, version: KeyVersion) -> Vec<u8> {
    wrap_aad(key_id, version)
}

/// The key check value: HMAC-SHA256(RK, "kms-root-kcv-v1"), first 16 bytes. It tells the right
/// root key from a wrong one and reveals nothing about it.
pub fn key_check_value(material: &RootKeyMaterial) -> [u8; 16] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, material.expose_secret());
    let tag = hmac::sign(&key, KCV_LABEL);
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag.as_ref()[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_is_bound_to_key_and_version() {
        let rk = SoftwareRoot::new(&RootKeyMaterial::generate().unwrap()).unwrap();
        let other = SoftwareRoot::new(&RootKeyMaterial::generate().unwrap()).unwrap();
        let id = KeyId::generate().unwrap();
        let kek = Kek::generate().unwrap();
        let w = rk.wrap(id, KeyVersion::FIRST, &kek).unwrap();
        assert_eq!(
            rk.unwrap(id, KeyVersion::FIRST, &w).unwrap().expose_secret(),
            kek.expose_secret()
        );
        assert!(rk.unwrap(id, KeyVersion::new(2).unwrap(), &w).is_err());
        assert!(rk.unwrap(KeyId::generate().unwrap(), KeyVersion::FIRST, &w).is_err());
        assert!(other.unwrap(id, KeyVersion::FIRST, &w).is_err());
        assert_ne!(rk.kcv(), other.kcv());
    }
}
