//! MakeCredential in software: the server's half of credential activation (TPM 2.0 Library
//! Part 1, 24 "Credential Protection"), as Keylime and `tpm2_makecredential -T none` do it.
//!
//! The server encrypts a secret so that only the TPM holding `ek` can decrypt it, and only into
//! the AK named `ak_name` (TPM2_ActivateCredential checks the name through the integrity HMAC).
//! A workload that returns the secret proves the AK lives in the same TPM as the EK.
//!
//! ring has neither RSA-OAEP nor AES-CFB, so this module uses the RustCrypto crates (`rsa`,
//! `aes` + `cfb-mode`, `hmac`, `sha2`, `p256`). It only encrypts with public keys: no private key
//! operation, so the `rsa` crate's timing side channel on decryption (RUSTSEC-2023-0071) does
//! not apply. The seed and derived keys are zeroized after use.

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use rsa::rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::ak::AkName;
use super::ek::{EkKey, EkPublic};
use super::wire::{alg, put_tpm2b};

/// The largest credential: the digest size of the EK's name algorithm (SHA-256).
pub const MAX_CREDENTIAL: usize = 32;

/// Why MakeCredential could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MakeCredentialError {
    /// The credential is empty or longer than the EK's name digest.
    #[error("the credential must be 1 to {MAX_CREDENTIAL} bytes, not {0}")]
    CredentialSize(usize),
    /// The EK's key or parameters are not supported here.
    #[error("unsupported EK: {0}")]
    UnsupportedEk(String),
    /// The public-key operation failed (e.g. an invalid RSA or EC public key).
    #[error("encrypting the seed to the EK failed: {0}")]
    Encrypt(String),
}

/// The output of MakeCredential: what TPM2_ActivateCredential takes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CredentialBlob {
    id_object: Vec<u8>,
    encrypted_secret: Vec<u8>,
}

impl CredentialBlob {
    /// A credential as received on the wire (the machine side of enrolment): the marshalled
    /// TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, e.g. to write [`CredentialBlob::to_tpm2_tools`]
    /// for `tpm2_activatecredential`.
    pub fn from_parts(id_object: Vec<u8>, encrypted_secret: Vec<u8>) -> Self {
        Self {
            id_object,
            encrypted_secret,
        }
    }

    /// TPM2B_ID_OBJECT, marshalled (u16 size ‖ TPM2B integrity HMAC ‖ encIdentity).
    pub fn id_object(&self) -> &[u8] {
        &self.id_object
    }

    /// TPM2B_ENCRYPTED_SECRET, marshalled (u16 size ‖ RSA-OAEP ciphertext or ephemeral ECC
    /// point).
    pub fn encrypted_secret(&self) -> &[u8] {
        &self.encrypted_secret
    }

    /// The file `tpm2_makecredential -o` writes and `tpm2_activatecredential -i` reads: magic
    /// 0xBADCC0DE and version 1 (big-endian u32s), then the two structures.
    pub fn to_tpm2_tools(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.id_object.len() + self.encrypted_secret.len());
        out.extend_from_slice(&0xBADC_C0DEu32.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&self.id_object);
        out.extend_from_slice(&self.encrypted_secret);
        out
    }
}

/// Protects `credential` (1 to 32 bytes) for activation by the TPM holding `ek` into the AK named
/// `ak_name`. Supports EKs with name algorithm SHA-256 and AES-128/256-CFB: RSA (2048–4096 bits,
/// RSA-OAEP-SHA-256 with label "IDENTITY") and ECC P-256 (ephemeral ECDH and KDFe).
pub fn make_credential(
    ek: &EkPublic,
    ak_name: &AkName,
    credential: &[u8],
) -> Result<CredentialBlob, MakeCredentialError> {
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Err(MakeCredentialError::CredentialSize(credential.len()));
    }
    if ek.name_alg != alg::SHA256 {
        return Err(MakeCredentialError::UnsupportedEk(format!(
            "name algorithm {:#06x} (only SHA-256)",
            ek.name_alg
        )));
    }
    let (seed, secret) = seed_and_secret(&ek.key)?;
    Ok(protect(
        &seed[..],
        ek.symmetric.key_bits,
        ak_name.as_bytes(),
        credential,
        &secret,
    ))
}

/// A fresh seed, and the seed encrypted to the EK (the TPMU_ENCRYPTED_SECRET contents).
fn seed_and_secret(ek: &EkKey) -> Result<(Zeroizing<[u8; 32]>, Vec<u8>), MakeCredentialError> {
    match ek {
        EkKey::Rsa { n, e } => {
            let key = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e))
                .map_err(|e| MakeCredentialError::Encrypt(e.to_string()))?;
            let mut seed = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut seed[..]);
            // The label includes its terminating NUL, as the TPM hashes it.
            let padding = rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0");
            let secret = key
                .encrypt(&mut OsRng, padding, &seed[..])
                .map_err(|e| MakeCredentialError::Encrypt(e.to_string()))?;
            Ok((seed, secret))
        }
        EkKey::EcP256 { x, y } => {
            let mut sec1 = [0u8; 65];
            sec1[0] = 4;
            sec1[1..33].copy_from_slice(x);
            sec1[33..].copy_from_slice(y);
            let ek_key = p256::PublicKey::from_sec1_bytes(&sec1)
                .map_err(|e| MakeCredentialError::Encrypt(format!("EK point: {e}")))?;
            let ephemeral = p256::ecdh::EphemeralSecret::random(&mut OsRng);
            let ephemeral_point = p256::EncodedPoint::from(ephemeral.public_key());
            let (Some(qe_x), Some(qe_y)) = (ephemeral_point.x(), ephemeral_point.y()) else {
                return Err(MakeCredentialError::Encrypt("ephemeral point at infinity".into()));
            };
            let z = ephemeral.diffie_hellman(&ek_key);
            let mut seed = Zeroizing::new([0u8; 32]);
            kdfe_sha256(z.raw_secret_bytes(), b"IDENTITY", qe_x, x, &mut seed[..]);
            // TPMS_ECC_POINT: two TPM2B_ECC_PARAMETERs.
            let mut secret = Vec::with_capacity(68);
            put_tpm2b(&mut secret, qe_x);
            put_tpm2b(&mut secret, qe_y);
            Ok((seed, secret))
        }
        EkKey::EcP384 { .. } => Err(MakeCredentialError::UnsupportedEk(
            "ECC P-384 (only RSA and ECC P-256 EKs)".into(),
        )),
    }
}

/// Derives the symmetric and HMAC keys from `seed` and builds the marshalled TPM2B_ID_OBJECT and
/// TPM2B_ENCRYPTED_SECRET.
fn protect(seed: &[u8], sym_bits: u16, name: &[u8], credential: &[u8], secret: &[u8]) -> CredentialBlob {
    // encIdentity = CFB(symKey, IV = 0, TPM2B_DIGEST(credential))
    let mut enc_identity = Zeroizing::new(Vec::with_capacity(2 + credential.len()));
    put_tpm2b(&mut enc_identity, credential);
    let mut sym_key = Zeroizing::new(vec![0u8; usize::from(sym_bits / 8)]);
    kdfa_sha256(seed, b"STORAGE", name, &[], &mut sym_key);
    let iv = [0u8; 16];
    // The key length is 16 or 32 by construction (EkPublic only admits AES-128/256), so the
    // `new_from_slices` calls cannot fail.
    if sym_key.len() == 16 {
        if let Ok(c) = cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &iv) {
            c.encrypt(&mut enc_identity);
        }
    } else if let Ok(c) = cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(&sym_key, &iv) {
        c.encrypt(&mut enc_identity);
    }

    // outerHMAC = HMAC(HMACkey, encIdentity ‖ name)
    let mut hmac_key = Zeroizing::new([0u8; 32]);
    kdfa_sha256(seed, b"INTEGRITY", &[], &[], &mut hmac_key[..]);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key[..])
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(&enc_identity);
    mac.update(name);
    let integrity = mac.finalize().into_bytes();

    let mut id_body = Vec::with_capacity(2 + integrity.len() + enc_identity.len());
    put_tpm2b(&mut id_body, &integrity);
    id_body.extend_from_slice(&enc_identity);
    let mut id_object = Vec::with_capacity(2 + id_body.len());
    put_tpm2b(&mut id_object, &id_body);
    let mut encrypted_secret = Vec::with_capacity(2 + secret.len());
    put_tpm2b(&mut encrypted_secret, secret);
    CredentialBlob {
        id_object,
        encrypted_secret,
    }
}

/// KDFa (SP 800-108 counter mode, HMAC-SHA-256), as the TPM defines it: each block is
/// HMAC(key, [i]32 ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖ [bits]32). Fills `out`.
fn kdfa_sha256(key: &[u8], label: &[u8], context_u: &[u8], context_v: &[u8], out: &mut [u8]) {
    let bits = (out.len() * 8) as u32;
    for (i, block) in out.chunks_mut(32).enumerate() {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(&(i as u32 + 1).to_be_bytes());
        mac.update(label);
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        block.copy_from_slice(&digest[..block.len()]);
    }
}

/// KDFe (SP 800-56A concatenation KDF, SHA-256), as the TPM defines it: each block is
/// H([i]32 ‖ Z ‖ label ‖ 0x00 ‖ partyUInfo ‖ partyVInfo). Fills `out`.
fn kdfe_sha256(z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8], out: &mut [u8]) {
    for (i, block) in out.chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update((i as u32 + 1).to_be_bytes());
        h.update(z);
        h.update(label);
        h.update([0]);
        h.update(party_u);
        h.update(party_v);
        let digest = h.finalize();
        block.copy_from_slice(&digest[..block.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_matches_a_hand_computed_block() {
        // One block: HMAC(key, 00000001 ‖ "STORAGE" ‖ 00 ‖ ctx ‖ 00000080), first 16 bytes.
        let mut out = [0u8; 16];
        kdfa_sha256(b"seed", b"STORAGE", b"name", &[], &mut out);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"seed").unwrap();
        mac.update(b"\x00\x00\x00\x01STORAGE\x00name\x00\x00\x00\x80");
        assert_eq!(&out[..], &mac.finalize().into_bytes()[..16]);

        let mut long = [0u8; 40];
        kdfa_sha256(b"k", b"L", &[], &[], &mut long);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"k").unwrap();
        mac.update(b"\x00\x00\x00\x02L\x00\x00\x00\x01\x40");
        assert_eq!(&long[32..], &mac.finalize().into_bytes()[..8]);
    }

    #[test]
    fn credential_size_is_bounded() {
        let ek = EkPublic::from_spki_der(&p256_spki()).unwrap();
        let name = AkName::from_bytes(&[&[0x00, 0x0b][..], &[1u8; 32]].concat()).unwrap();
        assert!(matches!(
            make_credential(&ek, &name, &[]),
            Err(MakeCredentialError::CredentialSize(0))
        ));
        assert!(matches!(
            make_credential(&ek, &name, &[0; 33]),
            Err(MakeCredentialError::CredentialSize(33))
        ));
        let blob = make_credential(&ek, &name, &[7; 32]).unwrap();
        // TPM2B_ID_OBJECT: size ‖ (TPM2B hmac(32) ‖ encIdentity(2 + 32))
        assert_eq!(blob.id_object().len(), 2 + 2 + 32 + 2 + 32);
        // TPM2B_ENCRYPTED_SECRET: size ‖ TPMS_ECC_POINT
        assert_eq!(blob.encrypted_secret().len(), 2 + 2 + 32 + 2 + 32);
        assert_eq!(&blob.to_tpm2_tools()[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
    }

    fn p256_spki() -> Vec<u8> {
        let secret = p256::SecretKey::random(&mut OsRng);
        let point = p256::EncodedPoint::from(secret.public_key());
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        spki.extend_from_slice(point.as_bytes());
        spki
    }
}
