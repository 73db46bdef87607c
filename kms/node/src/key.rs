//! The node key: Ed25519, generated when the process starts and kept in memory only.

use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

/// The length of a node public key.
pub const NODE_KEY_LEN: usize = 32;
/// The length of a node signature.
pub const NODE_SIGNATURE_LEN: usize = 64;

/// A process's node signing key. No `Debug`, `Clone` or `Serialize`; the PKCS#8 document it
/// was made from is zeroized at once.
pub struct NodeKey {
    pair: Ed25519KeyPair,
}

impl NodeKey {
    /// A fresh key from the system's random generator.
    pub fn generate() -> Result<Self, kms_core::Error> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| kms_core::Error::Rng)?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| kms_core::Error::Rng)?;
        Ok(Self { pair })
    }

    /// A key from a fixed seed, for test vectors.
    #[cfg(test)]
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            pair: Ed25519KeyPair::from_seed_unchecked(seed).expect("a 32-byte seed"),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; NODE_KEY_LEN] {
        let mut out = [0u8; NODE_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The node's id ([`node_id`] of its public key).
    pub fn id(&self) -> String {
        node_id(&self.public_key())
    }

    /// Signs `message` (one of [`crate::message`]'s encodings).
    pub fn sign(&self, message: &[u8]) -> [u8; NODE_SIGNATURE_LEN] {
        let mut out = [0u8; NODE_SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// A node's id, for logs and audit entries: `node-` and the first 16 hex digits of SHA-256 of
/// its public key.
pub fn node_id(public_key: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, public_key);
    format!("node-{}", hex::encode(&d.as_ref()[..8]))
}

/// Whether `signature` is the node key `public_key`'s signature of `message`.
pub fn verify_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    public_key.len() == NODE_KEY_LEN
        && signature.len() == NODE_SIGNATURE_LEN
        && signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(message, signature)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_under_their_key_and_message() {
        let a = NodeKey::generate().unwrap();
        let b = NodeKey::generate().unwrap();
        let sig = a.sign(b"message");
        assert!(verify_signature(&a.public_key(), b"message", &sig));
        assert!(!verify_signature(&b.public_key(), b"message", &sig));
        assert!(!verify_signature(&a.public_key(), b"messagE", &sig));
        assert!(!verify_signature(&a.public_key()[..31], b"message", &sig));
        assert!(!verify_signature(&a.public_key(), b"message", &sig[..63]));
        assert!(a.id().starts_with("node-") && a.id().len() == 21);
        assert_ne!(a.id(), b.id());
    }
}
