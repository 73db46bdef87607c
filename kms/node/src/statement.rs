//! What a node's evidence binds.

use ring::digest;

use crate::key::NODE_KEY_LEN;

const LABEL: &[u8] = b"kms-node-v2\0";

/// The keys a `kmsd` process answers with: its node key, the unseal key custodians' tokens
/// re-wrap shares to, (the SHA-256 of the SubjectPublicKeyInfo of) its TLS server key, and the
/// HPKE key callers seal `Encrypt` plaintexts to, all made or read when the process starts. The hardware evidence binds [`NodeStatement::encode`]:
/// SHA-512 of it as SEV-SNP REPORT_DATA, SHA-256 as TPM qualifying data.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeStatement {
    /// The Ed25519 node public key.
    pub node_public_key: [u8; NODE_KEY_LEN],
    /// The unseal public key (P-256, SEC1 uncompressed).
    pub unseal_public_key: Vec<u8>,
    /// SHA-256 of the TLS server certificate's SubjectPublicKeyInfo; all zero when the process
    /// serves plaintext (dev mode).
    pub tls_spki_sha256: [u8; 32],
    /// The node's HPKE public key (X25519, 32 bytes): `Encrypt` plaintexts are sealed to it
    /// (`kms_core::hpke_seal::seal_encrypt_input`), so a TLS-terminating relay sees only HPKE
    /// ciphertext.
    pub hpke_public_key: [u8; 32],
}

impl NodeStatement {
    /// `"kms-node-v2\0" ‖ node public key (32) ‖ u16 BE length ‖ unseal public key ‖ TLS SPKI
    /// SHA-256 (32) ‖ HPKE public key (32)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LABEL.len() + 32 + 2 + self.unseal_public_key.len() + 32 + 32);
        out.extend_from_slice(LABEL);
        out.extend_from_slice(&self.node_public_key);
        out.extend_from_slice(
            &u16::try_from(self.unseal_public_key.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.unseal_public_key);
        out.extend_from_slice(&self.tls_spki_sha256);
        out.extend_from_slice(&self.hpke_public_key);
        out
    }

    /// SHA-256 of the encoding: what signed answers name the statement by, and the TPM
    /// qualifying data.
    pub fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, &self.encode()).as_ref());
        out
    }

    /// SEV-SNP REPORT_DATA: SHA-512 of the encoding.
    pub fn snp_report_data(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(digest::digest(&digest::SHA512, &self.encode()).as_ref());
        out
    }

    /// TPM qualifying data (TPMS_ATTEST.extraData): [`NodeStatement::digest`].
    pub fn tpm_qualifying_data(&self) -> [u8; 32] {
        self.digest()
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (`spki_der`), for
/// [`NodeStatement::tls_spki_sha256`].
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, spki_der).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_binding() {
        let s = NodeStatement {
            node_public_key: [1; 32],
            unseal_public_key: vec![4; 65],
            tls_spki_sha256: [2; 32],
            hpke_public_key: [3; 32],
        };
        let mut other = s.clone();
        other.node_public_key[0] ^= 1;
        assert_ne!(s.digest(), other.digest());
        let mut other = s.clone();
        other.unseal_public_key.push(0);
        assert_ne!(s.digest(), other.digest());
        let mut other = s.clone();
        other.tls_spki_sha256[31] ^= 1;
        assert_ne!(s.snp_report_data(), other.snp_report_data());
        let mut other = s.clone();
        other.hpke_public_key[0] ^= 1;
        assert_ne!(s.digest(), other.digest());
        assert_eq!(s.tpm_qualifying_data(), s.digest());
        assert_eq!(&s.encode()[..12], b"kms-node-v2\0");
        assert_eq!(s.encode().len(), 12 + 32 + 2 + 65 + 32 + 32);
    }
}
