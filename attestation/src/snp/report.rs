//! The SEV-SNP attestation report (AMD SEV-SNP ABI, "ATTESTATION_REPORT"), read at fixed offsets
//! from the exact bytes received. Nothing here re-encodes the report: the signature is checked
//! over the received bytes 0x000–0x29F, so a flipped bit anywhere in them is caught, reserved
//! bytes included.
//!
//! Must never panic on malformed input: every read is from a `[u8; REPORT_LEN]`.

use ring::signature;

use super::claims::{FirmwareVersion, GuestPolicy, PlatformInfo, Product, Signer};
use crate::{Check, Refusal};

/// The length of an attestation report, in bytes.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part: bytes 0x000..SIGNED_LEN.
pub(crate) const SIGNED_LEN: usize = 0x2A0;
/// Report versions accepted: 2 (SNP ABI 1.51), 3 (1.55: CPUID fields), 5 (1.57: mitigation vectors).
pub const ACCEPTED_VERSIONS: [u32; 3] = [2, 3, 5];

/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only one defined.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Each of R and S is a 72-byte little-endian field; a P-384 scalar takes 48 of them.
const SIG_COMPONENT_LEN: usize = 72;
const SCALAR_LEN: usize = 48;

mod offset {
    pub(super) const VERSION: usize = 0x000;
    pub(super) const GUEST_SVN: usize = 0x004;
    pub(super) const POLICY: usize = 0x008;
    pub(super) const FAMILY_ID: usize = 0x010;
    pub(super) const IMAGE_ID: usize = 0x020;
    pub(super) const VMPL: usize = 0x030;
    pub(super) const SIGNATURE_ALGO: usize = 0x034;
    pub(super) const CURRENT_TCB: usize = 0x038;
    pub(super) const PLATFORM_INFO: usize = 0x040;
    pub(super) const KEY_INFO: usize = 0x048;
    pub(super) const REPORT_DATA: usize = 0x050;
    pub(super) const MEASUREMENT: usize = 0x090;
    pub(super) const HOST_DATA: usize = 0x0C0;
    pub(super) const ID_KEY_DIGEST: usize = 0x0E0;
    pub(super) const AUTHOR_KEY_DIGEST: usize = 0x110;
    pub(super) const REPORT_ID: usize = 0x140;
    pub(super) const REPORT_ID_MA: usize = 0x160;
    pub(super) const REPORTED_TCB: usize = 0x180;
    pub(super) const CPUID_FAM_ID: usize = 0x188;
    pub(super) const CPUID_MOD_ID: usize = 0x189;
    pub(super) const CPUID_STEP: usize = 0x18A;
    pub(super) const CHIP_ID: usize = 0x1A0;
    pub(super) const COMMITTED_TCB: usize = 0x1E0;
    pub(super) const CURRENT_VERSION: usize = 0x1E8;
    pub(super) const COMMITTED_VERSION: usize = 0x1EC;
    pub(super) const LAUNCH_TCB: usize = 0x1F0;
    pub(super) const LAUNCH_MIT_VECTOR: usize = 0x1F8;
    pub(super) const CURRENT_MIT_VECTOR: usize = 0x200;
    pub(super) const SIGNATURE: usize = 0x2A0;
}

/// A report whose length, version, signature algorithm and signing-key field are known good.
/// The signature is not verified yet: see [`Report::verify_signature`].
pub(crate) struct Report<'a> {
    raw: &'a [u8; REPORT_LEN],
    signer: Signer,
}

fn malformed(detail: impl Into<String>) -> Refusal {
    Refusal::new(Check::Malformed, detail)
}

impl<'a> Report<'a> {
    /// Parses the framing of `bytes`: length, version, signature algorithm, signing key.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, Refusal> {
        let raw: &[u8; REPORT_LEN] = bytes.try_into().map_err(|_| {
            malformed(format!(
                "attestation report is {} bytes, expected {REPORT_LEN}",
                bytes.len()
            ))
        })?;
        let report = Report {
            raw,
            signer: Signer::Vcek,
        };
        let version = report.version();
        if !ACCEPTED_VERSIONS.contains(&version) {
            return Err(Refusal::new(
                Check::Version,
                format!("report version {version} is not one of {ACCEPTED_VERSIONS:?}"),
            ));
        }
        let algo = report.u32_at(offset::SIGNATURE_ALGO);
        if algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(Refusal::new(
                Check::Signature,
                format!("signature algorithm {algo} is not ECDSA P-384 with SHA-384 (1)"),
            ));
        }
        // The unsigned tail of the signature field is reserved: insisting on zeros makes the
        // accepted bytes canonical (nothing in them can change without failing).
        let tail = &raw[offset::SIGNATURE + 2 * SIG_COMPONENT_LEN..];
        if tail.iter().any(|&b| b != 0) {
            return Err(malformed("reserved bytes after the signature's R and S are not zero"));
        }
        // KEY_INFO bits 4:2: 0 = VCEK, 1 = VLEK, 7 = none (unsigned); others reserved.
        let signer = match (report.u32_at(offset::KEY_INFO) >> 2) & 0b111 {
            0 => Signer::Vcek,
            1 => Signer::Vlek,
            7 => {
                return Err(Refusal::new(
                    Check::SigningKey,
                    "the report is not signed (SIGNING_KEY = none)",
                ))
            }
            other => {
                return Err(Refusal::new(
                    Check::SigningKey,
                    format!("unknown SIGNING_KEY value {other}"),
                ))
            }
        };
        Ok(Report { raw, signer })
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }

    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.raw[at..at + N]);
        out
    }

    /// Verifies the ECDSA P-384/SHA-384 signature over the received bytes 0x000–0x29F with the
    /// uncompressed P-384 point `public_key`.
    pub(crate) fn verify_signature(&self, public_key: &[u8]) -> Result<(), Refusal> {
        let sig = &self.raw[offset::SIGNATURE..offset::SIGNATURE + 2 * SIG_COMPONENT_LEN];
        let (r, s) = sig.split_at(SIG_COMPONENT_LEN);
        if r[SCALAR_LEN..].iter().chain(&s[SCALAR_LEN..]).any(|&b| b != 0) {
            return Err(Refusal::new(
                Check::Signature,
                "signature R or S has non-zero bytes beyond the 48 of a P-384 scalar",
            ));
        }
        let mut fixed = [0u8; 2 * SCALAR_LEN];
        for (dst, src) in fixed[..SCALAR_LEN].iter_mut().zip(r[..SCALAR_LEN].iter().rev()) {
            *dst = *src;
        }
        for (dst, src) in fixed[SCALAR_LEN..].iter_mut().zip(s[..SCALAR_LEN].iter().rev()) {
            *dst = *src;
        }
        signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, public_key)
            .verify(&self.raw[..SIGNED_LEN], &fixed)
            .map_err(|_| {
                Refusal::new(
                    Check::Signature,
                    "the report signature does not verify with the VCEK/VLEK",
                )
            })
    }

    pub(crate) fn signer(&self) -> Signer {
        self.signer
    }

    pub(crate) fn version(&self) -> u32 {
        self.u32_at(offset::VERSION)
    }

    pub(crate) fn guest_svn(&self) -> u32 {
        self.u32_at(offset::GUEST_SVN)
    }

    pub(crate) fn policy(&self) -> GuestPolicy {
        GuestPolicy::from_raw(self.u64_at(offset::POLICY))
    }

    pub(crate) fn family_id(&self) -> [u8; 16] {
        self.array(offset::FAMILY_ID)
    }

    pub(crate) fn image_id(&self) -> [u8; 16] {
        self.array(offset::IMAGE_ID)
    }

    pub(crate) fn vmpl(&self) -> u32 {
        self.u32_at(offset::VMPL)
    }

    pub(crate) fn platform_info(&self) -> PlatformInfo {
        PlatformInfo::from_raw(self.u64_at(offset::PLATFORM_INFO))
    }

    /// KEY_INFO bit 0: the ID key was certified by an author key.
    pub(crate) fn author_key_en(&self) -> bool {
        self.u32_at(offset::KEY_INFO) & 1 != 0
    }

    /// KEY_INFO bit 1: MASK_CHIP_KEY, the platform is configured not to sign with the VCEK.
    pub(crate) fn mask_chip_key(&self) -> bool {
        self.u32_at(offset::KEY_INFO) & 0b10 != 0
    }

    pub(crate) fn report_data(&self) -> [u8; 64] {
        self.array(offset::REPORT_DATA)
    }

    pub(crate) fn measurement(&self) -> [u8; 48] {
        self.array(offset::MEASUREMENT)
    }

    pub(crate) fn host_data(&self) -> [u8; 32] {
        self.array(offset::HOST_DATA)
    }

    pub(crate) fn id_key_digest(&self) -> [u8; 48] {
        self.array(offset::ID_KEY_DIGEST)
    }

    pub(crate) fn author_key_digest(&self) -> [u8; 48] {
        self.array(offset::AUTHOR_KEY_DIGEST)
    }

    pub(crate) fn report_id(&self) -> [u8; 32] {
        self.array(offset::REPORT_ID)
    }

    pub(crate) fn report_id_ma(&self) -> [u8; 32] {
        self.array(offset::REPORT_ID_MA)
    }

    pub(crate) fn current_tcb_raw(&self) -> [u8; 8] {
        self.array(offset::CURRENT_TCB)
    }

    pub(crate) fn reported_tcb_raw(&self) -> [u8; 8] {
        self.array(offset::REPORTED_TCB)
    }

    pub(crate) fn committed_tcb_raw(&self) -> [u8; 8] {
        self.array(offset::COMMITTED_TCB)
    }

    pub(crate) fn launch_tcb_raw(&self) -> [u8; 8] {
        self.array(offset::LAUNCH_TCB)
    }

    pub(crate) fn chip_id(&self) -> [u8; 64] {
        self.array(offset::CHIP_ID)
    }

    /// CPUID family, model and stepping (version 3 and later; zero or absent before).
    pub(crate) fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then(|| {
            (
                self.raw[offset::CPUID_FAM_ID],
                self.raw[offset::CPUID_MOD_ID],
                self.raw[offset::CPUID_STEP],
            )
        })
    }

    /// The product named by the CPUID fields, when they are present and known.
    pub(crate) fn cpuid_product(&self) -> Option<Product> {
        let (family, model, _) = self.cpuid()?;
        Product::from_cpuid(family, model)
    }

    pub(crate) fn current_firmware(&self) -> FirmwareVersion {
        self.firmware_at(offset::CURRENT_VERSION)
    }

    pub(crate) fn committed_firmware(&self) -> FirmwareVersion {
        self.firmware_at(offset::COMMITTED_VERSION)
    }

    fn firmware_at(&self, at: usize) -> FirmwareVersion {
        FirmwareVersion {
            build: self.raw[at],
            minor: self.raw[at + 1],
            major: self.raw[at + 2],
        }
    }

    /// LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR (version 5 and later).
    pub(crate) fn mitigation_vectors(&self) -> Option<(u64, u64)> {
        (self.version() >= 5).then(|| {
            (
                self.u64_at(offset::LAUNCH_MIT_VECTOR),
                self.u64_at(offset::CURRENT_MIT_VECTOR),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_wrong_length_without_panicking() {
        let bytes = vec![0u8; REPORT_LEN + 1];
        for len in 0..bytes.len() {
            if len == REPORT_LEN {
                continue;
            }
            let refusal = Report::parse(&bytes[..len])
                .err()
                .expect("wrong length must be refused");
            assert_eq!(refusal.check, Check::Malformed);
        }
    }

    #[test]
    fn refuses_unknown_versions_and_unsigned_reports() {
        let mut bytes = vec![0u8; REPORT_LEN];
        bytes[offset::SIGNATURE_ALGO] = 1;
        for version in [0u32, 1, 4, 6, u32::MAX] {
            bytes[..4].copy_from_slice(&version.to_le_bytes());
            assert_eq!(Report::parse(&bytes).err().map(|r| r.check), Some(Check::Version));
        }
        bytes[..4].copy_from_slice(&2u32.to_le_bytes());
        assert!(Report::parse(&bytes).is_ok());
        bytes[offset::KEY_INFO] = 7 << 2;
        assert_eq!(Report::parse(&bytes).err().map(|r| r.check), Some(Check::SigningKey));
        bytes[offset::KEY_INFO] = 2 << 2;
        assert_eq!(Report::parse(&bytes).err().map(|r| r.check), Some(Check::SigningKey));
        bytes[offset::KEY_INFO] = 1 << 2;
        assert_eq!(Report::parse(&bytes).ok().map(|r| r.signer()), Some(Signer::Vlek));
    }
}
