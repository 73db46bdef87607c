//! Admin-request signatures: the exact bytes an admin signs and how the server checks them.
//! An admin request is a serialized `AdminRequest` (admin id, timestamp, nonce, operation); the
//! signature covers a context label and those exact bytes, so no re-encoding can change what was
//! signed. The signer is a boundary: a software key file here, an HSM key behind PKCS#11 later.

use ring::signature::{self, EcdsaKeyPair, KeyPair};

use crate::secret::SecretBytes;
use crate::Error;

/// Prefixed to every signed admin payload, so these signatures cannot be confused with any other
/// use of the same key.
pub const SIGNATURE_CONTEXT: &[u8] = b"kms-admin-request-v1\0";

/// The message an admin signs for `payload`.
pub fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + payload.len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(payload);
    m
}

/// An admin's ECDSA P-256 public key, SEC1 uncompressed, checked to be a point on the curve.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AdminPublicKey(Vec<u8>);

impl AdminPublicKey {
    /// Parses a SEC1 uncompressed P-256 point (65 bytes starting 0x04).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        crate::share_wrap::check_public_key(bytes)?;
        Ok(Self(bytes.to_vec()))
    }

    /// The SEC1 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Verifies an ASN.1 DER ECDSA P-256/SHA-256 signature over [`signed_message`]`(payload)`.
    pub fn verify(&self, payload: &[u8], signature_der: &[u8]) -> Result<(), Error> {
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.0)
            .verify(&signed_message(payload), signature_der)
            .map_err(|_| Error::BadSignature)
    }
}

/// An admin's fingerprint: `sha256:` and the hex SHA-256 of "kms-admin-fingerprint-v1\0" ‖ id ‖
/// 0 ‖ country ‖ 0 ‖ signing key (SEC1) ‖ share key (SEC1). `kmsd` refuses Init unless the admins
/// it names have exactly the fingerprints pinned in its configuration (`admin.init_admins`), so
/// whoever reaches a fresh server first cannot make it theirs; `kmsctl admin fingerprint` prints it.
pub fn fingerprint(id: &str, country: &str, signing_public_key: &[u8], encryption_public_key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"kms-admin-fingerprint-v1\0");
    ctx.update(id.as_bytes());
    ctx.update(&[0]);
    ctx.update(country.as_bytes());
    ctx.update(&[0]);
    ctx.update(signing_public_key);
    ctx.update(encryption_public_key);
    format!("sha256:{}", hex::encode(ctx.finish().as_ref()))
}

/// Something that signs admin requests: a software key, or an HSM.
pub trait AdminSigner {
    /// The public key the server has on record for this admin.
    fn public_key(&self) -> AdminPublicKey;
    /// Signs [`signed_message`]`(payload)`; returns an ASN.1 DER signature.
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, Error>;
}

/// An ECDSA P-256 signing key held in memory (from a key file). For development and for the
/// first issue of the admin plane; production admins keep their key in an HSM.
pub struct SoftwareSigner {
    pair: EcdsaKeyPair,
}

impl SoftwareSigner {
    /// A fresh key, as PKCS#8 bytes to store.
    pub fn generate_pkcs8() -> Result<SecretBytes, Error> {
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map(|d| SecretBytes::new(d.as_ref().to_vec()))
            .map_err(|_| Error::Rng)
    }

    /// Loads a PKCS#8 key.
    pub fn from_pkcs8(pkcs8: &SecretBytes) -> Result<Self, Error> {
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.expose_secret(), &rng)
            .map(|pair| Self { pair })
            .map_err(|_| Error::InvalidPublicKey("P-256 PKCS#8 private"))
    }
}

impl AdminSigner for SoftwareSigner {
    fn public_key(&self) -> AdminPublicKey {
        AdminPublicKey(self.pair.public_key().as_ref().to_vec())
    }

    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, Error> {
        let rng = ring::rand::SystemRandom::new();
        self.pair
            .sign(&rng, &signed_message(payload))
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::Rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let signer = SoftwareSigner::from_pkcs8(&SoftwareSigner::generate_pkcs8().unwrap()).unwrap();
        let pk = AdminPublicKey::parse(signer.public_key().as_bytes()).unwrap();
        let sig = signer.sign(b"payload").unwrap();
        pk.verify(b"payload", &sig).unwrap();
        assert!(pk.verify(b"payloaD", &sig).is_err());
        let other = SoftwareSigner::from_pkcs8(&SoftwareSigner::generate_pkcs8().unwrap()).unwrap();
        assert!(other.public_key().verify(b"payload", &sig).is_err());
        assert!(AdminPublicKey::parse(&[4u8; 65]).is_err());
        assert!(AdminPublicKey::parse(&[4u8; 64]).is_err());
    }
}
