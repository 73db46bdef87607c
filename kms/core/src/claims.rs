//! The claims a release policy is evaluated on, and the schema of every claim name.
//!
//! An attestation token carries a flat map from claim name to a string, integer or boolean: what
//! the verified evidence proves and what the hardware registry says about the machine. The server
//! fills it when it issues a token; `Attest` returns it as `AttestResponse.claims_json`. Claims are
//! not secret (measurements, TCB versions, registry entries), so they may be logged and cloned.
//!
//! This module only describes and checks values; it never decides a release (that is
//! [`crate::policy::ReleasePolicy::evaluate`]) and does no I/O.
//!
//! # Schema
//!
//! Hex values are written in lowercase by the server; policies may use either case and are
//! stored in lowercase. Offsets are those of the SEV-SNP attestation report.
//!
//! | claim | type | from |
//! | --- | --- | --- |
//! | `tee` | one of `snp`, `tpm` | the kind of evidence verified |
//! | `hardware_id` | string: `hw-` + 32 hex digits | the hardware registry entry that matched |
//! | `country` | ISO 3166-1 alpha-2 (upper case) | hardware registry |
//! | `jurisdiction` | string: `EU`, or empty outside the EU | derived from `country` |
//! | `site` | string | hardware registry |
//! | `operator` | string | hardware registry |
//! | `danger_test_root` | boolean | the evidence chained to a test-only root (a `danger` setting) |
//! | `snp.product` | one of `milan`, `genoa`, `turin` | the chip's product (report CPUID or VCEK/VLEK) |
//! | `snp.signer` | one of `vcek`, `vlek` | KEY_INFO.SIGNING_KEY (0x048) |
//! | `snp.report_version` | integer | VERSION (0x000) |
//! | `snp.measurement` | hex, 48 bytes | MEASUREMENT (0x090) |
//! | `snp.host_data` | hex, 32 bytes | HOST_DATA (0x0C0) |
//! | `snp.id_key_digest` | hex, 48 bytes | ID_KEY_DIGEST (0x0E0) |
//! | `snp.author_key_digest` | hex, 48 bytes | AUTHOR_KEY_DIGEST (0x110) |
//! | `snp.family_id` | hex, 16 bytes | FAMILY_ID (0x010) |
//! | `snp.image_id` | hex, 16 bytes | IMAGE_ID (0x020) |
//! | `snp.chip_id` | hex, 64 bytes | CHIP_ID (0x1A0) |
//! | `snp.guest_svn` | integer | GUEST_SVN (0x004) |
//! | `snp.vmpl` | integer | VMPL (0x030) |
//! | `snp.tcb.bootloader`, `snp.tcb.tee`, `snp.tcb.snp`, `snp.tcb.microcode` | integer | REPORTED_TCB (0x180) |
//! | `snp.tcb.fmc` | integer | REPORTED_TCB (0x180), Turin only |
//! | `snp.committed_tcb.*`, `snp.launch_tcb.*` (same five components) | integer | COMMITTED_TCB (0x1E0): the anti-rollback floor the platform owner committed; LAUNCH_TCB (0x1F0): the TCB when the guest launched |
//! | `snp.policy.debug`, `snp.policy.migration_agent`, `snp.policy.smt`, `snp.policy.single_socket` | boolean | POLICY (0x008) bits 19, 18, 16, 20 |
//! | `snp.policy.abi_major`, `snp.policy.abi_minor` | integer | POLICY (0x008) bits 15:8, 7:0 |
//! | `snp.platform.smt_enabled`, `snp.platform.tsme_enabled` | boolean | PLATFORM_INFO (0x040) bits 0, 1 |
//! | `snp.platform.alias_check_complete` | boolean | PLATFORM_INFO (0x040) bit 5 |
//! | `tpm.ak_name` | hex, any length | the name of the quoting AK (enrolled) |
//! | `tpm.ek_digest` | hex, 32 bytes | hardware registry (SHA-256 of the EK public key) |
//! | `tpm.firmware_version` | hex, 8 bytes (16 digits) | TPMS_ATTEST.firmwareVersion |
//! | `tpm.pcr.0` … `tpm.pcr.23` | hex, 32 bytes | the quoted SHA-256 PCR values (only those quoted) |

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One claim's value: a JSON string, number (integer) or boolean.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClaimValue {
    /// A string (also hex values, enumerations, country codes).
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl ClaimValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// `string`, `integer` or `boolean`, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Str(_) => "string",
            Self::Int(_) => "integer",
            Self::Bool(_) => "boolean",
        }
    }
}

/// As in JSON: strings quoted and escaped (so a value cannot forge a log line), numbers and
/// booleans bare.
impl fmt::Display for ClaimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl From<&str> for ClaimValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<String> for ClaimValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<i64> for ClaimValue {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<bool> for ClaimValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

/// The claims of one attested workload: claim name to value, ordered by name. Serialized as a
/// flat JSON object (`{"tee":"snp","snp.vmpl":0,…}`).
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReleaseClaims(BTreeMap<String, ClaimValue>);

impl ReleaseClaims {
    /// No claims.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a claim, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: ClaimValue) -> &mut Self {
        self.0.insert(name.into(), value);
        self
    }

    /// Sets a string claim.
    pub fn insert_str(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.insert(name, ClaimValue::Str(value.into()))
    }

    /// Sets an integer claim.
    pub fn insert_int(&mut self, name: impl Into<String>, value: i64) -> &mut Self {
        self.insert(name, ClaimValue::Int(value))
    }

    /// Sets a boolean claim.
    pub fn insert_bool(&mut self, name: impl Into<String>, value: bool) -> &mut Self {
        self.insert(name, ClaimValue::Bool(value))
    }

    /// A claim's value, if present.
    pub fn get(&self, name: &str) -> Option<&ClaimValue> {
        self.0.get(name)
    }

    /// The claims in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ClaimValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of claims.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no claims.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON object (names in order), as tokens and `AttestResponse.claims_json` carry it.
    pub fn to_json(&self) -> String {
        // Serializing a map of strings to strings, integers and booleans cannot fail.
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// Parses a JSON object whose values are strings, integers or booleans. Checks the shape
    /// only; [`Self::validate`] checks the values against the schema.
    pub fn from_json(json: &str) -> Result<Self, InvalidClaim> {
        serde_json::from_str(json).map_err(|e| {
            InvalidClaim(format!(
                "claims must be a JSON object of strings, integers and booleans: {e}"
            ))
        })
    }

    /// Checks every claim the schema knows against its type (see [`ClaimType::check`]). Names
    /// outside the schema are allowed: no policy can refer to them.
    pub fn validate(&self) -> Result<(), InvalidClaim> {
        for (name, value) in &self.0 {
            if let Some(ty) = claim_type(name) {
                ty.check(name, value)?;
            }
        }
        Ok(())
    }
}

impl FromIterator<(String, ClaimValue)> for ReleaseClaims {
    fn from_iter<I: IntoIterator<Item = (String, ClaimValue)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// A claim name or value that does not fit the schema; the message names the claim and what is
/// wrong, e.g. `"snp.measurement" needs 96 hex digits, found 95`.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidClaim(String);

impl InvalidClaim {
    /// What is wrong.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// The type of a claim, which decides the values a policy may compare it with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ClaimType {
    /// A string of at most [`ClaimType::MAX_STR_BYTES`] bytes without control characters.
    Str,
    /// A byte string of exactly `bytes` bytes, as `2 × bytes` hex digits; compared
    /// case-insensitively, stored in lowercase.
    Hex {
        /// The length in bytes.
        bytes: usize,
    },
    /// A non-empty byte string as an even number of hex digits, at most
    /// [`ClaimType::MAX_HEX_DIGITS`]; compared case-insensitively, stored in lowercase.
    HexAnyLength,
    /// An integer (`atLeast` applies).
    Int,
    /// A boolean.
    Bool,
    /// One of these strings, exactly.
    Enum(&'static [&'static str]),
    /// An ISO 3166-1 alpha-2 country code: two upper-case letters.
    Country,
    /// A hardware registry id: `hw-` followed by 32 hex digits (hex part in lowercase).
    HardwareId,
}

/// The values of `tee`.
const TEES: &[&str] = &["snp", "tpm"];
/// The values of `snp.product`.
const SNP_PRODUCTS: &[&str] = &["milan", "genoa", "turin"];
/// The values of `snp.signer`.
const SNP_SIGNERS: &[&str] = &["vcek", "vlek"];

/// Every claim name but the PCRs (`tpm.pcr.0` to `tpm.pcr.23`, see [`claim_type`]).
const SCHEMA: &[(&str, ClaimType)] = &[
    ("tee", ClaimType::Enum(TEES)),
    ("hardware_id", ClaimType::HardwareId),
    ("country", ClaimType::Country),
    ("jurisdiction", ClaimType::Str),
    ("site", ClaimType::Str),
    ("operator", ClaimType::Str),
    ("danger_test_root", ClaimType::Bool),
    ("snp.product", ClaimType::Enum(SNP_PRODUCTS)),
    ("snp.signer", ClaimType::Enum(SNP_SIGNERS)),
    ("snp.report_version", ClaimType::Int),
    ("snp.measurement", ClaimType::Hex { bytes: 48 }),
    ("snp.host_data", ClaimType::Hex { bytes: 32 }),
    ("snp.id_key_digest", ClaimType::Hex { bytes: 48 }),
    ("snp.author_key_digest", ClaimType::Hex { bytes: 48 }),
    ("snp.family_id", ClaimType::Hex { bytes: 16 }),
    ("snp.image_id", ClaimType::Hex { bytes: 16 }),
    ("snp.chip_id", ClaimType::Hex { bytes: 64 }),
    ("snp.guest_svn", ClaimType::Int),
    ("snp.vmpl", ClaimType::Int),
    ("snp.tcb.bootloader", ClaimType::Int),
    ("snp.tcb.tee", ClaimType::Int),
    ("snp.tcb.snp", ClaimType::Int),
    ("snp.tcb.microcode", ClaimType::Int),
    ("snp.tcb.fmc", ClaimType::Int),
    ("snp.committed_tcb.bootloader", ClaimType::Int),
    ("snp.committed_tcb.tee", ClaimType::Int),
    ("snp.committed_tcb.snp", ClaimType::Int),
    ("snp.committed_tcb.microcode", ClaimType::Int),
    ("snp.committed_tcb.fmc", ClaimType::Int),
    ("snp.launch_tcb.bootloader", ClaimType::Int),
    ("snp.launch_tcb.tee", ClaimType::Int),
    ("snp.launch_tcb.snp", ClaimType::Int),
    ("snp.launch_tcb.microcode", ClaimType::Int),
    ("snp.launch_tcb.fmc", ClaimType::Int),
    ("snp.policy.debug", ClaimType::Bool),
    ("snp.policy.migration_agent", ClaimType::Bool),
    ("snp.policy.smt", ClaimType::Bool),
    ("snp.policy.single_socket", ClaimType::Bool),
    ("snp.policy.abi_major", ClaimType::Int),
    ("snp.policy.abi_minor", ClaimType::Int),
    ("snp.platform.smt_enabled", ClaimType::Bool),
    ("snp.platform.tsme_enabled", ClaimType::Bool),
    ("snp.platform.alias_check_complete", ClaimType::Bool),
    ("tpm.ak_name", ClaimType::HexAnyLength),
    ("tpm.ek_digest", ClaimType::Hex { bytes: 32 }),
    ("tpm.firmware_version", ClaimType::Hex { bytes: 8 }),
];

/// The prefix of the PCR claims.
const PCR_PREFIX: &str = "tpm.pcr.";

/// The type of a claim, or `None` if the schema has no such claim (see the module
/// documentation for the table).
pub fn claim_type(name: &str) -> Option<ClaimType> {
    if let Some(index) = name.strip_prefix(PCR_PREFIX) {
        return pcr_index(index).map(|_| ClaimType::Hex { bytes: 32 });
    }
    SCHEMA.iter().find(|(n, _)| *n == name).map(|(_, ty)| *ty)
}

/// A PCR index 0 to 23 written without leading zeros.
fn pcr_index(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 2 || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>().ok().filter(|i| *i <= 23)
}

impl ClaimType {
    /// The longest string value, in bytes.
    pub const MAX_STR_BYTES: usize = 1024;
    /// The most hex digits of a [`ClaimType::HexAnyLength`] value.
    pub const MAX_HEX_DIGITS: usize = 1024;

    /// The type of a claim, or an error naming the unknown claim (with a suggestion when a
    /// known name is close).
    pub fn of(name: &str) -> Result<Self, InvalidClaim> {
        if let Some(ty) = claim_type(name) {
            return Ok(ty);
        }
        if name.starts_with(PCR_PREFIX) {
            return Err(InvalidClaim(format!(
                "unknown claim {} (PCR claims are tpm.pcr.0 to tpm.pcr.23, without leading zeros)",
                quote(name)
            )));
        }
        Err(InvalidClaim(match suggestion(name) {
            Some(s) => format!("unknown claim {} (did you mean {s:?}?)", quote(name)),
            None => format!("unknown claim {}", quote(name)),
        }))
    }

    /// Whether `atLeast` applies.
    pub fn is_int(self) -> bool {
        self == Self::Int
    }

    /// Whether values compare case-insensitively (hex).
    pub(crate) fn is_hex(self) -> bool {
        matches!(self, Self::Hex { .. } | Self::HexAnyLength | Self::HardwareId)
    }

    /// Checks that `value` fits this type, for the claim `name` (which the message names), and
    /// returns it in canonical form: hex digits in lowercase, everything else unchanged.
    pub fn check(self, name: &str, value: &ClaimValue) -> Result<ClaimValue, InvalidClaim> {
        let wrong_type = || {
            InvalidClaim(format!(
                "{} needs {self}, found {} {value}",
                quote(name),
                value.type_name()
            ))
        };
        match self {
            Self::Int => value.as_int().map(ClaimValue::Int).ok_or_else(wrong_type),
            Self::Bool => value.as_bool().map(ClaimValue::Bool).ok_or_else(wrong_type),
            Self::Str => {
                let s = value.as_str().ok_or_else(wrong_type)?;
                if s.len() > Self::MAX_STR_BYTES || s.chars().any(char::is_control) {
                    return Err(InvalidClaim(format!(
                        "{} must be at most {} bytes without control characters",
                        quote(name),
                        Self::MAX_STR_BYTES
                    )));
                }
                Ok(value.clone())
            }
            Self::Hex { bytes } => {
                let s = value.as_str().ok_or_else(wrong_type)?;
                check_hex_digits(name, s)?;
                if s.len() != 2 * bytes {
                    return Err(InvalidClaim(format!(
                        "{} needs {} hex digits, found {}",
                        quote(name),
                        2 * bytes,
                        s.len()
                    )));
                }
                Ok(ClaimValue::Str(s.to_ascii_lowercase()))
            }
            Self::HexAnyLength => {
                let s = value.as_str().ok_or_else(wrong_type)?;
                check_hex_digits(name, s)?;
                if s.is_empty() || s.len() % 2 != 0 || s.len() > Self::MAX_HEX_DIGITS {
                    return Err(InvalidClaim(format!(
                        "{} needs an even number of hex digits, 2 to {}, found {}",
                        quote(name),
                        Self::MAX_HEX_DIGITS,
                        s.len()
                    )));
                }
                Ok(ClaimValue::Str(s.to_ascii_lowercase()))
            }
            Self::Enum(allowed) => {
                let s = value.as_str().ok_or_else(wrong_type)?;
                if allowed.contains(&s) {
                    Ok(value.clone())
                } else {
                    Err(InvalidClaim(format!(
                        "{} needs {self}, found {}",
                        quote(name),
                        quote(s)
                    )))
                }
            }
            Self::Country => {
                let s = value.as_str().ok_or_else(wrong_type)?;
                if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) {
                    Ok(value.clone())
                } else {
                    Err(InvalidClaim(format!(
                        "{} needs {self}, found {}",
                        quote(name),
                        quote(s)
                    )))
                }
            }
            Self::HardwareId => {
                let s = value.as_str().ok_or_else(wrong_type)?;
                match s.strip_prefix("hw-") {
                    Some(h) if h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        Ok(ClaimValue::Str(format!("hw-{}", h.to_ascii_lowercase())))
                    }
                    _ => Err(InvalidClaim(format!(
                        "{} needs {self}, found {}",
                        quote(name),
                        quote(s)
                    ))),
                }
            }
        }
    }
}

/// What a value of the type looks like, completing "needs …" in messages.
impl fmt::Display for ClaimType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str => f.write_str("a string"),
            Self::Hex { bytes } => write!(f, "{} hex digits", 2 * bytes),
            Self::HexAnyLength => f.write_str("hex digits"),
            Self::Int => f.write_str("an integer"),
            Self::Bool => f.write_str("a boolean"),
            Self::Enum(allowed) => {
                f.write_str("one of ")?;
                for (i, a) in allowed.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a:?}")?;
                }
                Ok(())
            }
            Self::Country => f.write_str("an ISO 3166-1 alpha-2 country code (two upper-case letters, e.g. DE)"),
            Self::HardwareId => f.write_str("a hardware id (hw- followed by 32 hex digits)"),
        }
    }
}

/// Refuses any character that is not a hex digit, naming the first one.
fn check_hex_digits(name: &str, s: &str) -> Result<(), InvalidClaim> {
    match s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        Some((at, c)) => Err(InvalidClaim(format!(
            "{} needs hex digits, found {c:?} at offset {at}",
            quote(name)
        ))),
        None => Ok(()),
    }
}

/// A string quoted and escaped for a message, cut to a readable length.
pub(crate) fn quote(s: &str) -> String {
    const MAX_CHARS: usize = 100;
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// The known claim name closest to `name`, if it is close enough to be a typo.
fn suggestion(name: &str) -> Option<&'static str> {
    // Bounds the work on hostile input; real claim names are short.
    if name.len() > 64 {
        return None;
    }
    SCHEMA
        .iter()
        .map(|(n, _)| (edit_distance(name, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.bytes().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, value: impl Into<ClaimValue>) -> Result<ClaimValue, String> {
        ClaimType::of(name)
            .and_then(|ty| ty.check(name, &value.into()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn schema_covers_every_claim() {
        for (name, _) in SCHEMA {
            assert!(claim_type(name).is_some(), "{name}");
        }
        assert_eq!(SCHEMA.len(), 46);
        for i in 0..=23 {
            assert_eq!(claim_type(&format!("tpm.pcr.{i}")), Some(ClaimType::Hex { bytes: 32 }));
        }
        for bad in [
            "tpm.pcr.24",
            "tpm.pcr.07",
            "tpm.pcr.",
            "tpm.pcr.-1",
            "tpm.pcr.+1",
            "tpm.pcr.100",
            "TEE",
            "",
        ] {
            assert_eq!(claim_type(bad), None, "{bad}");
        }
        let e = ClaimType::of("tpm.pcr.24").unwrap_err().to_string();
        assert!(e.contains("tpm.pcr.0 to tpm.pcr.23"), "{e}");
        let e = ClaimType::of("snp.measurment").unwrap_err().to_string();
        assert_eq!(e, r#"unknown claim "snp.measurment" (did you mean "snp.measurement"?)"#);
        let e = ClaimType::of("colour").unwrap_err().to_string();
        assert_eq!(e, r#"unknown claim "colour""#);
        assert!(ClaimType::of(&"x".repeat(100_000)).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn values_are_checked_and_canonicalized() {
        let m = "AB".repeat(48);
        assert_eq!(
            check("snp.measurement", m.as_str()).unwrap(),
            ClaimValue::from("ab".repeat(48))
        );
        assert_eq!(
            check("snp.measurement", &m[1..]).unwrap_err(),
            r#""snp.measurement" needs 96 hex digits, found 95"#
        );
        let e = check("snp.measurement", format!("g{}", &m[1..])).unwrap_err();
        assert_eq!(e, r#""snp.measurement" needs hex digits, found 'g' at offset 0"#);
        let e = check("snp.measurement", 5).unwrap_err();
        assert_eq!(e, r#""snp.measurement" needs 96 hex digits, found integer 5"#);
        assert_eq!(check("tpm.ak_name", "000BAA").unwrap(), ClaimValue::from("000baa"));
        assert!(check("tpm.ak_name", "000").unwrap_err().contains("even number"));
        assert!(check("tpm.ak_name", "").is_err());
        assert!(check("tpm.firmware_version", "0123456789ABCDEF").is_ok());

        let e = check("snp.policy.debug", "false").unwrap_err();
        assert_eq!(e, r#""snp.policy.debug" needs a boolean, found string "false""#);
        assert_eq!(check("snp.policy.debug", false).unwrap(), ClaimValue::Bool(false));
        assert!(check("snp.tcb.snp", true)
            .unwrap_err()
            .contains("needs an integer, found boolean true"));
        assert_eq!(check("snp.tcb.snp", 8).unwrap(), ClaimValue::Int(8));

        let e = check("tee", "sev").unwrap_err();
        assert_eq!(e, r#""tee" needs one of "snp", "tpm", found "sev""#);
        assert!(check("tee", "SNP").is_err());
        assert!(check("snp.product", "genoa").is_ok());
        assert!(check("snp.signer", "VCEK").is_err());

        for bad in ["de", "DEU", "D", "", "D1"] {
            let e = check("country", bad).unwrap_err();
            assert!(e.contains("two upper-case letters"), "{e}");
        }
        assert!(check("country", "DE").is_ok());

        let hw = format!("hw-{}", "A".repeat(32));
        assert_eq!(
            check("hardware_id", hw).unwrap(),
            ClaimValue::Str(format!("hw-{}", "a".repeat(32)))
        );
        assert!(check("hardware_id", "hw-123")
            .unwrap_err()
            .contains("hw- followed by 32 hex digits"));

        assert!(check("jurisdiction", "").is_ok());
        assert!(check("site", "a\nb").unwrap_err().contains("control characters"));
        assert!(check("operator", "x".repeat(1025)).is_err());
    }

    #[test]
    fn claims_round_trip_through_json() {
        let mut c = ReleaseClaims::new();
        c.insert_str("tee", "snp")
            .insert_int("snp.tcb.snp", 8)
            .insert_bool("snp.policy.debug", false);
        assert_eq!(c.len(), 3);
        assert!(!c.is_empty());
        let json = c.to_json();
        assert_eq!(json, r#"{"snp.policy.debug":false,"snp.tcb.snp":8,"tee":"snp"}"#);
        assert_eq!(ReleaseClaims::from_json(&json).unwrap(), c);
        assert_eq!(c.get("snp.tcb.snp"), Some(&ClaimValue::Int(8)));
        assert_eq!(c.iter().next().map(|(k, _)| k), Some("snp.policy.debug"));
        c.validate().unwrap();

        for bad in [
            "[]",
            r#"{"a":1.5}"#,
            r#"{"a":null}"#,
            r#"{"a":[1]}"#,
            r#"{"a":{}}"#,
            "1",
        ] {
            assert!(ReleaseClaims::from_json(bad).is_err(), "{bad}");
        }
        let mut c = ReleaseClaims::new();
        c.insert_str("snp.vmpl", "0").insert_str("unknown.claim", "x");
        assert!(c.validate().unwrap_err().to_string().contains("snp.vmpl"));
    }

    #[test]
    fn display_escapes_strings() {
        assert_eq!(ClaimValue::from("a\"\n").to_string(), r#""a\"\n""#);
        assert_eq!(ClaimValue::Int(-3).to_string(), "-3");
        assert_eq!(ClaimValue::Bool(true).to_string(), "true");
        assert_eq!(quote(&"é".repeat(200)).chars().count(), 103);
    }
}
