//! The binding between a challenge and the workload's HPKE key, placed in the evidence by the
//! hardware: H("kms-attest-v1\0" ‖ nonce ‖ hpke_public_key), with SHA-512 for SNP REPORT_DATA
//! (64 bytes) and SHA-256 for TPM qualifying data (extraData, 32 bytes). Shared by the server and
//! the workload side.

use ring::digest;

/// The domain-separation label.
pub const LABEL: &[u8] = b"kms-attest-v1\0";

fn hash(alg: &'static digest::Algorithm, nonce: &[u8], hpke_public_key: &[u8]) -> digest::Digest {
    let mut ctx = digest::Context::new(alg);
    ctx.update(LABEL);
    ctx.update(nonce);
    ctx.update(hpke_public_key);
    ctx.finish()
}

/// SNP REPORT_DATA: SHA-512 of the binding input.
pub fn snp_report_data(nonce: &[u8], hpke_public_key: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out.copy_from_slice(hash(&digest::SHA512, nonce, hpke_public_key).as_ref());
    out
}

/// TPM qualifying data (TPMS_ATTEST.extraData): SHA-256 of the binding input.
pub fn tpm_qualifying_data(nonce: &[u8], hpke_public_key: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(hash(&digest::SHA256, nonce, hpke_public_key).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_differ_by_nonce_key_and_hash() {
        let a = snp_report_data(&[1; 32], b"pk");
        assert_ne!(a, snp_report_data(&[2; 32], b"pk"));
        assert_ne!(a, snp_report_data(&[1; 32], b"pK"));
        assert_ne!(&a[..32], &tpm_qualifying_data(&[1; 32], b"pk")[..]);
    }
}
