//! The SNP trust configuration: what a report must show beyond a valid signature chain.
//!
//! The defaults accept nothing they cannot justify: no product until it is listed with a
//! minimum TCB (AMD's security bulletins move the floor too often to pin one here, and a zero
//! floor accepts firmware with published vulnerabilities), no SMT, VMPL 0 only, the memory alias
//! check required, no migration agent, no VLEK. Each is a setting; loosening one is an explicit
//! choice in the configuration. [`SnpTrust::insecure_any_platform`] accepts every genuine report
//! (dev mode, and tests of the protocol rather than of the trust). The only way to trust a root
//! other than AMD's is `danger_test_roots`, which is never set by default nor read from a file.

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::claims::{Product, Tcb};
use super::danger::DangerTestRoots;

/// The minimum TCB per product: SVNs are not comparable across generations (Milan's microcode
/// 0xD9 and Turin's 0x09 are unrelated), so each has its own floor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinimumTcb {
    /// The floor for Milan (`fmc` is ignored).
    pub milan: Option<Tcb>,
    /// The floor for Genoa (`fmc` is ignored).
    pub genoa: Option<Tcb>,
    /// The floor for Turin (`fmc` applies when set).
    pub turin: Option<Tcb>,
}

impl MinimumTcb {
    /// The floor for `product`, if one is set.
    pub fn for_product(&self, product: Product) -> Option<&Tcb> {
        match product {
            Product::Milan => self.milan.as_ref(),
            Product::Genoa => self.genoa.as_ref(),
            Product::Turin => self.turin.as_ref(),
        }
    }

    /// The same floor for every product.
    pub fn all(tcb: Tcb) -> Self {
        Self {
            milan: Some(tcb),
            genoa: Some(tcb),
            turin: Some(tcb),
        }
    }
}

/// What the SNP verifier accepts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnpTrust {
    /// The products whose reports are accepted (`"milan"`, `"genoa"`, `"turin"`); each needs a
    /// floor in `minimum_tcb` ([`SnpTrust::check`]). Default: none, so SNP evidence is refused
    /// until the deployment names its fleet.
    #[serde(with = "product_names")]
    pub products: BTreeSet<Product>,
    /// Reported TCB floor per product, checked component by component (besides the equality of
    /// the reported TCB with the VCEK's, always enforced). Set it to AMD's latest security
    /// bulletin for the fleet.
    pub minimum_tcb: MinimumTcb,
    /// Accept guests whose policy allows SMT or that run with SMT enabled. Default false: AMD's
    /// SMT side channels are the reason; most hosts run with SMT on, so a fleet that accepts
    /// the risk says so here.
    pub allow_smt: bool,
    /// Require PLATFORM_INFO's ALIAS_CHECK_COMPLETE: the firmware checked, since the last
    /// reset, that no memory is aliased (the BadRAM attack, CVE-2024-21944). Default true;
    /// firmware older than the fix (Milan 1.55.x, Genoa 1.55.x) never sets it.
    pub require_alias_check: bool,
    /// Accept guests whose policy allows a migration agent (which can read guest memory during
    /// migration). Default false.
    pub allow_migration_agent: bool,
    /// VMPLs from which a report may be requested. Default {0}: a report from a higher VMPL
    /// comes from software below a paravisor or SVSM, which then holds VMPL 0. Guests under one
    /// (Azure, COCONUT) ask from VMPL 1 or above: list it. Values above 3 are always refused.
    pub allowed_vmpls: BTreeSet<u32>,
    /// Accept VLEK-signed reports (keys that AMD issues to a cloud provider rather than to a
    /// chip: they prove "a genuine AMD chip at that provider", not which chip). Default false.
    pub accept_vlek: bool,
    /// Extra roots for synthetic test chains. Never a default, never read from configuration
    /// files: set in code only, by tests. Claims verified through one say `danger_test_root`.
    #[serde(skip)]
    pub danger_test_roots: Option<DangerTestRoots>,
}

impl Default for SnpTrust {
    fn default() -> Self {
        Self {
            products: BTreeSet::new(),
            minimum_tcb: MinimumTcb::default(),
            allow_smt: false,
            require_alias_check: true,
            allow_migration_agent: false,
            allowed_vmpls: [0].into(),
            accept_vlek: false,
            danger_test_roots: None,
        }
    }
}

impl SnpTrust {
    /// Every genuine report of any product: zero floors, SMT, any VMPL, no alias check (debug
    /// guests and migration agents stay refused). Insecure: dev mode, offline inspection, and
    /// tests of the protocol rather than of the trust. Never what a configuration file gives.
    pub fn insecure_any_platform() -> Self {
        Self {
            products: Product::ALL.into_iter().collect(),
            minimum_tcb: MinimumTcb::all(Tcb::default()),
            allow_smt: true,
            require_alias_check: false,
            allow_migration_agent: false,
            allowed_vmpls: (0..=3).collect(),
            accept_vlek: false,
            danger_test_roots: None,
        }
    }

    /// Checks that the settings are usable: every accepted product has a floor, no floor is set
    /// for a product that is not accepted (a likely mistake), and VMPLs are 0 to 3. The message
    /// names the setting.
    pub fn check(&self) -> Result<(), String> {
        for p in Product::ALL {
            let name = p.as_str().to_ascii_lowercase();
            match (self.products.contains(&p), self.minimum_tcb.for_product(p).is_some()) {
                (true, false) => {
                    return Err(format!(
                        "minimum_tcb.{name}: required, since {name} is in products (set it to AMD's latest security bulletin for the fleet)"
                    ))
                }
                (false, true) => {
                    return Err(format!(
                        "minimum_tcb.{name} is set, but {name} is not in products: add it there, or remove the floor"
                    ))
                }
                _ => {}
            }
        }
        if let Some(v) = self.allowed_vmpls.iter().find(|v| **v > 3) {
            return Err(format!("allowed_vmpls: {v} is not a VMPL (0 to 3)"));
        }
        Ok(())
    }
}

/// Products as lower-case names in configuration files.
mod product_names {
    use super::*;

    pub(super) fn serialize<S: Serializer>(set: &BTreeSet<Product>, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<String> = set.iter().map(|p| p.as_str().to_ascii_lowercase()).collect();
        names.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<Product>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        names
            .iter()
            .map(|n| {
                Product::ALL
                    .into_iter()
                    .find(|p| p.as_str().eq_ignore_ascii_case(n))
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown product {n:?} (milan, genoa or turin)")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_configuration_files() {
        let trust: SnpTrust = serde_json::from_str("{}").expect("all defaults");
        assert!(trust.products.is_empty());
        assert!(!trust.allow_smt && trust.require_alias_check && !trust.allow_migration_agent && !trust.accept_vlek);
        assert_eq!(trust.allowed_vmpls, [0].into());
        assert!(trust.danger_test_roots.is_none());
        assert_eq!(trust.check(), Ok(()));
        let trust: SnpTrust = serde_json::from_str(
            r#"{"products": ["milan"], "allowed_vmpls": [0, 1], "minimum_tcb": {"milan": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}}}"#,
        )
        .expect("a configuration");
        assert_eq!(trust.products, [Product::Milan].into());
        assert_eq!(trust.allowed_vmpls, [0, 1].into());
        assert_eq!(trust.minimum_tcb.for_product(Product::Milan).map(|t| t.snp), Some(8));
        assert_eq!(trust.check(), Ok(()));
        // Test roots cannot come from a file.
        assert!(serde_json::from_str::<SnpTrust>(r#"{"danger_test_roots": null}"#).is_err());
        assert!(serde_json::from_str::<SnpTrust>(r#"{"allow_debug": true}"#).is_err());
        assert!(serde_json::from_str::<SnpTrust>(r#"{"products": ["rome"]}"#)
            .unwrap_err()
            .to_string()
            .contains("rome"));
        assert_eq!(SnpTrust::insecure_any_platform().check(), Ok(()));
    }

    #[test]
    fn an_accepted_product_needs_a_floor() {
        let genoa: SnpTrust = serde_json::from_str(r#"{"products": ["genoa"]}"#).unwrap();
        assert!(genoa.check().unwrap_err().contains("minimum_tcb.genoa: required"));
        let stray: SnpTrust = serde_json::from_str(
            r#"{"minimum_tcb": {"turin": {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1}}}"#,
        )
        .unwrap();
        assert!(stray.check().unwrap_err().contains("turin is not in products"));
        let vmpl = SnpTrust {
            allowed_vmpls: [0, 4].into(),
            ..SnpTrust::default()
        };
        assert!(vmpl.check().unwrap_err().contains("allowed_vmpls"));
    }
}
