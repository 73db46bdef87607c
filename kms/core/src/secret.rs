//! Types that hold key material. They zeroize on drop, have no `Debug`, `Clone` or `Serialize`,
//! and are read only through `expose_secret()`, so a reviewer can find every read with one search.

use zeroize::{Zeroize, Zeroizing};

/// A fixed-size secret, such as an AES-256 key.
pub struct SecretKey<const N: usize>(Box<[u8; N]>);

impl<const N: usize> SecretKey<N> {
    /// A fresh key from the system CSPRNG.
    pub fn generate() -> Result<Self, crate::Error> {
        let mut key = Self(Box::new([0u8; N]));
        crate::random_fill(&mut key.0[..])?;
        Ok(key)
    }

    /// Takes ownership of `bytes`; the caller's copy is zeroized.
    pub fn from_slice(bytes: &mut [u8]) -> Option<Self> {
        if bytes.len() != N {
            bytes.zeroize();
            return None;
        }
        let mut key = Self(Box::new([0u8; N]));
        key.0.copy_from_slice(bytes);
        bytes.zeroize();
        Some(key)
    }

    /// The key bytes.
    pub fn expose_secret(&self) -> &[u8; N] {
        &self.0
    }

    /// A copy, made on purpose (e.g. to hand a cached key-encryption key to a request).
    pub fn duplicate(&self) -> Self {
        Self(Box::new(*self.0))
    }
}

impl<const N: usize> Drop for SecretKey<N> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A secret of variable length (decrypted payloads, serialized shares).
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, handed over (e.g. to a response that zeroizes nothing: the caller decides).
    pub fn into_exposed(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An AES-256 data key, generated per request.
pub type DataKey = SecretKey<32>;
