//! What a verified SNP report proves, as typed values (serialized to JSON for the offline
//! verifier's output and for release policies). Byte strings serialize as lowercase hex.
//!
//! Claims are built only from a report whose signature, chain and checks all passed; nothing here
//! parses untrusted bytes except `Deserialize`, which rebuilds claims already produced.

use std::fmt;

use serde::{Deserialize, Serialize};

/// AMD EPYC generation: selects the root of trust and the TCB layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Product {
    /// EPYC 7003 (family 19h, models 00h–0Fh).
    Milan,
    /// EPYC 9004/8004 (family 19h, models 10h–1Fh and A0h–AFh).
    Genoa,
    /// EPYC 9005 (family 1Ah, models 00h–11h).
    Turin,
}

impl Product {
    /// All products with pinned roots.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The product for a CPUID family and model (combined extended and base fields), if known.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Self::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Self::Genoa),
            (0x1A, 0x00..=0x11) => Some(Self::Turin),
            _ => None,
        }
    }

    /// The CPUID family and a model of this product (what a version 3+ report carries).
    pub fn cpuid(self) -> (u8, u8) {
        match self {
            Self::Milan => (0x19, 0x01),
            Self::Genoa => (0x19, 0x11),
            Self::Turin => (0x1A, 0x02),
        }
    }

    /// The name as AMD writes it (certificate names, KDS paths).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// Whether TCB values use the Turin layout (with an FMC component).
    pub(crate) fn has_fmc(self) -> bool {
        matches!(self, Self::Turin)
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which key signed the report, per the report's SIGNING_KEY field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signer {
    /// Versioned Chip Endorsement Key: unique to the chip and its TCB; chained to the ASK.
    Vcek,
    /// Versioned Loaded Endorsement Key: a cloud provider's key, not chip-unique; chained to the ASVK.
    Vlek,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vcek => "VCEK",
            Self::Vlek => "VLEK",
        })
    }
}

/// SVNs of the firmware components of a TCB version. `fmc` exists on Turin only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tcb {
    /// The FMC (first mutable code) SVN; Turin only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// The AMD-SP bootloader SVN.
    pub bootloader: u8,
    /// The AMD-SP TEE OS SVN.
    pub tee: u8,
    /// The SNP firmware SVN.
    pub snp: u8,
    /// The CPU microcode SVN.
    pub microcode: u8,
}

impl Tcb {
    /// Decodes a TCB_VERSION as `product` lays it out. Milan and Genoa:
    /// `[bootloader, tee, 0, 0, 0, 0, snp, microcode]`; Turin: `[fmc, bootloader, tee, snp, 0, 0, 0,
    /// microcode]`. Reserved bytes are dropped (the verifier compares raw bytes, not this).
    pub fn from_report_bytes(raw: [u8; 8], product: Product) -> Self {
        if product.has_fmc() {
            Self {
                fmc: Some(raw[0]),
                bootloader: raw[1],
                tee: raw[2],
                snp: raw[3],
                microcode: raw[7],
            }
        } else {
            Self {
                fmc: None,
                bootloader: raw[0],
                tee: raw[1],
                snp: raw[6],
                microcode: raw[7],
            }
        }
    }

    /// Encodes as `product` lays it out (reserved bytes zero; `fmc` ignored before Turin).
    pub fn to_report_bytes(&self, product: Product) -> [u8; 8] {
        if product.has_fmc() {
            [
                self.fmc.unwrap_or(0),
                self.bootloader,
                self.tee,
                self.snp,
                0,
                0,
                0,
                self.microcode,
            ]
        } else {
            [self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode]
        }
    }

    /// Checks every component against `minimum`; names the first one below it. A minimum FMC
    /// applies only where the TCB has one (Turin).
    pub fn meets(&self, minimum: &Tcb) -> Result<(), String> {
        let mut parts = vec![
            ("bootloader", self.bootloader, minimum.bootloader),
            ("tee", self.tee, minimum.tee),
            ("snp", self.snp, minimum.snp),
            ("microcode", self.microcode, minimum.microcode),
        ];
        if let (Some(fmc), Some(min)) = (self.fmc, minimum.fmc) {
            parts.push(("fmc", fmc, min));
        }
        match parts.into_iter().find(|(_, have, min)| have < min) {
            Some((name, have, min)) => Err(format!("{name} SVN {have} is below the minimum {min}")),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bl={} tee={} snp={} ucode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// The guest policy the guest owner set at launch (POLICY).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPolicy {
    /// The raw 64-bit value.
    pub raw: u64,
    /// Minimum ABI major version required.
    pub abi_major: u8,
    /// Minimum ABI minor version required.
    pub abi_minor: u8,
    /// SMT is allowed on the host.
    pub smt: bool,
    /// A migration agent may be associated with the guest.
    pub migration_agent: bool,
    /// Debugging is allowed: the host can read and write guest memory.
    pub debug: bool,
    /// The guest may run on a single socket only.
    pub single_socket: bool,
    /// CXL may be populated with devices or memory.
    pub cxl_allowed: bool,
    /// AES-256-XTS is required for memory encryption.
    pub mem_aes_256_xts: bool,
    /// Running Average Power Limit must be disabled.
    pub rapl_disabled: bool,
    /// Ciphertext hiding must be enabled.
    pub ciphertext_hiding: bool,
    /// Guest page swapping is disabled.
    pub page_swap_disabled: bool,
}

impl GuestPolicy {
    /// Decodes POLICY.
    pub fn from_raw(raw: u64) -> Self {
        let bit = |n: u32| raw & (1 << n) != 0;
        Self {
            raw,
            abi_minor: (raw & 0xFF) as u8,
            abi_major: ((raw >> 8) & 0xFF) as u8,
            smt: bit(16),
            migration_agent: bit(18),
            debug: bit(19),
            single_socket: bit(20),
            cxl_allowed: bit(21),
            mem_aes_256_xts: bit(22),
            rapl_disabled: bit(23),
            ciphertext_hiding: bit(24),
            page_swap_disabled: bit(25),
        }
    }
}

/// The platform state when the report was made (PLATFORM_INFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformInfo {
    /// The raw 64-bit value.
    pub raw: u64,
    /// SMT is enabled on the host.
    pub smt_enabled: bool,
    /// Transparent SME is enabled.
    pub tsme_enabled: bool,
    /// The platform uses error-correcting memory.
    pub ecc_enabled: bool,
    /// RAPL is disabled.
    pub rapl_disabled: bool,
    /// Ciphertext hiding is enabled.
    pub ciphertext_hiding_enabled: bool,
    /// The memory alias check completed.
    pub alias_check_complete: bool,
    /// SEV-TIO is enabled.
    pub tio_enabled: bool,
}

impl PlatformInfo {
    /// Decodes PLATFORM_INFO.
    pub fn from_raw(raw: u64) -> Self {
        let bit = |n: u32| raw & (1 << n) != 0;
        Self {
            raw,
            smt_enabled: bit(0),
            tsme_enabled: bit(1),
            ecc_enabled: bit(2),
            rapl_disabled: bit(3),
            ciphertext_hiding_enabled: bit(4),
            alias_check_complete: bit(5),
            tio_enabled: bit(7),
        }
    }
}

/// A firmware version (CURRENT or COMMITTED).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// The report's CHIP_ID field: 64 bytes, the identity enrolled in the hardware registry. On Turin
/// only the first 8 bytes are meaningful (the rest are zero); when the chip id is masked all are.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChipId(#[serde(with = "hex_array")] pub [u8; 64]);

impl ChipId {
    /// Whether every byte is zero (masked, or a VLEK report that hides it).
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChipId({})", self.to_hex())
    }
}

/// What a verified SNP report proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpClaims {
    /// The report format version (2, 3 or 5).
    pub report_version: u32,
    /// The EPYC generation whose root of trust verified the signing key.
    pub product: Product,
    /// Which key signed the report.
    pub signer: Signer,
    /// True when the chain ended in a root from `SnpTrust::danger_test_roots`, not AMD's: such
    /// claims prove nothing about real hardware.
    pub danger_test_root: bool,
    /// CHIP_ID (zero when masked). For a VCEK it equals the certificate's hwID.
    pub chip_id: ChipId,
    /// CHIP_ID is all zero: the platform masks it (MaskChipId), as VLEK platforms may.
    pub chip_id_masked: bool,
    /// KEY_INFO.MASK_CHIP_KEY: the platform is configured not to sign with its VCEK.
    pub mask_chip_key: bool,
    /// For a VLEK: the cloud provider named in the certificate (1.3.6.1.4.1.3704.1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlek_csp_id: Option<String>,
    /// REPORTED_TCB: the TCB the signing key was derived for (equals the certificate's).
    pub reported_tcb: Tcb,
    /// CURRENT_TCB.
    pub current_tcb: Tcb,
    /// COMMITTED_TCB.
    pub committed_tcb: Tcb,
    /// LAUNCH_TCB.
    pub launch_tcb: Tcb,
    /// CURRENT firmware version.
    pub current_firmware: FirmwareVersion,
    /// COMMITTED firmware version.
    pub committed_firmware: FirmwareVersion,
    /// MEASUREMENT: the launch digest (SHA-384).
    #[serde(with = "hex_array")]
    pub measurement: [u8; 48],
    /// HOST_DATA, set by the host at launch.
    #[serde(with = "hex_array")]
    pub host_data: [u8; 32],
    /// ID_KEY_DIGEST: SHA-384 of the ID key that signed the ID block (zero without one).
    #[serde(with = "hex_array")]
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST: SHA-384 of the author key (zero without one).
    #[serde(with = "hex_array")]
    pub author_key_digest: [u8; 48],
    /// KEY_INFO.AUTHOR_KEY_EN.
    pub author_key_en: bool,
    /// REPORT_DATA (equals the expected binding).
    #[serde(with = "hex_array")]
    pub report_data: [u8; 64],
    /// REPORT_ID of the guest.
    #[serde(with = "hex_array")]
    pub report_id: [u8; 32],
    /// REPORT_ID of the guest's migration agent.
    #[serde(with = "hex_array")]
    pub report_id_ma: [u8; 32],
    /// POLICY.
    pub policy: GuestPolicy,
    /// The VMPL of the software that requested the report.
    pub vmpl: u32,
    /// PLATFORM_INFO.
    pub platform_info: PlatformInfo,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// FAMILY_ID from the ID block.
    #[serde(with = "hex_array")]
    pub family_id: [u8; 16],
    /// IMAGE_ID from the ID block.
    #[serde(with = "hex_array")]
    pub image_id: [u8; 16],
    /// CPUID family, model, stepping (version 3 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuid: Option<[u8; 3]>,
    /// LAUNCH_MIT_VECTOR (version 5 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_mit_vector: Option<u64>,
    /// CURRENT_MIT_VECTOR (version 5 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_mit_vector: Option<u64>,
}

/// Serde for fixed-size byte arrays as lowercase hex strings.
mod hex_array {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(de::Error::custom)?;
        let len = bytes.len();
        bytes
            .try_into()
            .map_err(|_| de::Error::custom(format!("expected {N} bytes of hex, found {len}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_layouts_round_trip() {
        let milan = [3, 0, 0, 0, 0, 0, 8, 115];
        let tcb = Tcb::from_report_bytes(milan, Product::Milan);
        assert_eq!(
            tcb,
            Tcb {
                fmc: None,
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115
            }
        );
        assert_eq!(tcb.to_report_bytes(Product::Milan), milan);
        let turin = [1, 2, 3, 4, 0, 0, 0, 9];
        let tcb = Tcb::from_report_bytes(turin, Product::Turin);
        assert_eq!((tcb.fmc, tcb.bootloader, tcb.snp, tcb.microcode), (Some(1), 2, 4, 9));
        assert_eq!(tcb.to_report_bytes(Product::Turin), turin);
    }

    #[test]
    fn tcb_minimum_names_the_component() {
        let tcb = Tcb::from_report_bytes([3, 0, 0, 0, 0, 0, 8, 115], Product::Milan);
        assert!(tcb.meets(&Tcb::default()).is_ok());
        assert!(tcb.meets(&tcb).is_ok());
        let min = Tcb { snp: 9, ..tcb };
        assert!(tcb.meets(&min).err().unwrap_or_default().starts_with("snp"));
    }

    #[test]
    fn products_from_cpuid() {
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x19, 0xA0), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0, 0), None);
        for p in Product::ALL {
            let (f, m) = p.cpuid();
            assert_eq!(Product::from_cpuid(f, m), Some(p));
        }
    }
}
