//! HPKE (RFC 9180, base mode) with HKDF-SHA256 and AES-256-GCM, over two KEMs:
//! DHKEM(P-256, HKDF-SHA256) for sealing root-key shares to custodians' P-256 keys, and
//! DHKEM(X25519, HKDF-SHA256) for sealing to ephemeral keys (the sealed server's unseal key; a
//! TEE's key in the attested release). One module, so every caller uses the same suite.

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::{DhP256HkdfSha256, X25519HkdfSha256};
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};

use crate::secret::SecretBytes;
use crate::Error;

/// DHKEM(P-256, HKDF-SHA256).
pub type P256 = DhP256HkdfSha256;
/// DHKEM(X25519, HKDF-SHA256).
pub type X25519 = X25519HkdfSha256;

/// HPKE `info` of a root-key share sealed to custodian `admin_id` (at init). The admin id is
/// bound so a share sealed for one custodian cannot be submitted as another's.
pub fn share_info(admin_id: &str) -> Vec<u8> {
    [b"kms-share-v1\0".as_slice(), admin_id.as_bytes()].concat()
}

/// HPKE `info` of a share a custodian `admin_id` re-seals to the server's unseal key.
pub fn unseal_info(admin_id: &str) -> Vec<u8> {
    [b"kms-unseal-v1\0".as_slice(), admin_id.as_bytes()].concat()
}

/// An HPKE ciphertext: the encapsulated key and the AEAD ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The KEM's encapsulated key.
    pub encapsulated_key: Vec<u8>,
    /// The AES-256-GCM ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

/// An HPKE private key of KEM `K`. No `Debug`, `Clone` or `Serialize`.
pub struct PrivateKey<K: Kem> {
    sk: K::PrivateKey,
    pk: K::PublicKey,
}

impl<K: Kem> PrivateKey<K> {
    /// A fresh key pair.
    pub fn generate() -> Self {
        let (sk, pk) = K::gen_keypair(&mut rand_core::UnwrapErr(rand_core::OsRng));
        Self { sk, pk }
    }

    /// The private key from its serialized form (32 bytes for P-256 and X25519).
    pub fn from_secret_bytes(bytes: &SecretBytes) -> Result<Self, Error> {
        let sk = K::PrivateKey::from_bytes(bytes.expose_secret()).map_err(|_| Error::Hpke("invalid private key"))?;
        let pk = K::sk_to_pk(&sk);
        Ok(Self { sk, pk })
    }

    /// The serialized private key.
    pub fn to_secret_bytes(&self) -> SecretBytes {
        SecretBytes::new(self.sk.to_bytes().to_vec())
    }

    /// The serialized public key (SEC1 uncompressed for P-256, 32 bytes for X25519).
    pub fn public_key(&self) -> Vec<u8> {
        self.pk.to_bytes().to_vec()
    }

    /// Opens what [`seal`] sealed to this key with the same `info` and `aad`.
    pub fn open(&self, sealed: &Sealed, info: &[u8], aad: &[u8]) -> Result<SecretBytes, Error> {
        let enc = K::EncappedKey::from_bytes(&sealed.encapsulated_key)
            .map_err(|_| Error::Hpke("invalid encapsulated key"))?;
        hpke::single_shot_open::<AesGcm256, HkdfSha256, K>(
            &OpModeR::Base,
            &self.sk,
            &enc,
            info,
            &sealed.ciphertext,
            aad,
        )
        .map(SecretBytes::new)
        .map_err(|_| Error::Hpke("cannot open: wrong key, info, aad or tampered ciphertext"))
    }
}

/// Checks that `public_key` is a valid public key of KEM `K`.
pub fn check_public_key<K: Kem>(public_key: &[u8]) -> Result<(), Error> {
    K::PublicKey::from_bytes(public_key)
        .map(|_| ())
        .map_err(|_| Error::InvalidPublicKey("HPKE"))
}

/// Seals `plaintext` to `public_key` (serialized as [`PrivateKey::public_key`] gives it).
pub fn seal<K: Kem>(public_key: &[u8], info: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Sealed, Error> {
    let pk = K::PublicKey::from_bytes(public_key).map_err(|_| Error::InvalidPublicKey("HPKE"))?;
    let (enc, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, K, _>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
        &mut rand_core::UnwrapErr(rand_core::OsRng),
    )
    .map_err(|_| Error::Hpke("seal failed"))?;
    Ok(Sealed {
        encapsulated_key: enc.to_bytes().to_vec(),
        ciphertext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<K: Kem>() {
        let sk = PrivateKey::<K>::generate();
        let sealed = seal::<K>(&sk.public_key(), b"info", b"aad", b"secret").unwrap();
        assert_eq!(sk.open(&sealed, b"info", b"aad").unwrap().expose_secret(), b"secret");
        assert!(sk.open(&sealed, b"other", b"aad").is_err());
        assert!(sk.open(&sealed, b"info", b"other").is_err());
        assert!(PrivateKey::<K>::generate().open(&sealed, b"info", b"aad").is_err());
        let again = PrivateKey::<K>::from_secret_bytes(&sk.to_secret_bytes()).unwrap();
        assert_eq!(again.public_key(), sk.public_key());
    }

    #[test]
    fn p256_and_x25519_round_trip() {
        round_trip::<P256>();
        round_trip::<X25519>();
        assert_eq!(PrivateKey::<P256>::generate().public_key().len(), 65);
        assert!(check_public_key::<P256>(&[4u8; 65]).is_err());
    }
}
