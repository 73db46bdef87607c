//! The SNP trust configuration: what a report must show beyond a valid signature chain.
//!
//! Defaults are the strict choice wherever real hardware allows one; the exceptions (SMT, all
//! four VMPLs, a zero minimum TCB) are explained on each field. The only way to trust a root
//! other than AMD's is `danger_test_roots`, which is never set by default nor read from a file.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::claims::{Product, Tcb};
use super::danger::DangerTestRoots;

/// The minimum TCB per product: SVNs are not comparable across generations (Milan's microcode
/// 0xD9 and Turin's 0x09 are unrelated), so each has its own floor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinimumTcb {
    /// The floor for Milan (`fmc` is ignored).
    pub milan: Tcb,
    /// The floor for Genoa (`fmc` is ignored).
    pub genoa: Tcb,
    /// The floor for Turin (`fmc` applies when set).
    pub turin: Tcb,
}

impl MinimumTcb {
    /// The floor for `product`.
    pub fn for_product(&self, product: Product) -> &Tcb {
        match product {
            Product::Milan => &self.milan,
            Product::Genoa => &self.genoa,
            Product::Turin => &self.turin,
        }
    }
}

/// What the SNP verifier accepts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnpTrust {
    /// Reported TCB floor per product, checked component by component. Default: all zero, so by
    /// default only the equality of the reported TCB with the VCEK's is enforced. A deployment
    /// sets the floor to AMD's latest security bulletin for its fleet; it changes too often to
    /// pin a meaningful default here.
    pub minimum_tcb: MinimumTcb,
    /// Accept guests whose policy allows SMT or that run with SMT enabled. Default true: every
    /// real capture has SMT enabled (AMD's SMT side channels are the reason to turn this off).
    pub allow_smt: bool,
    /// Accept guests whose policy allows a migration agent (which can read guest memory during
    /// migration). Default false.
    pub allow_migration_agent: bool,
    /// VMPLs from which a report may be requested. Default {0, 1, 2, 3}: the measurement covers
    /// everything launched, whatever VMPL asks, and guests under a paravisor or SVSM (Azure,
    /// COCONUT) ask from VMPL 1 or above. Narrow it when the deployment's layout is known
    /// (e.g. {0} when no SVSM is used). Values above 3 are always refused.
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
            minimum_tcb: MinimumTcb::default(),
            allow_smt: true,
            allow_migration_agent: false,
            allowed_vmpls: (0..=3).collect(),
            accept_vlek: false,
            danger_test_roots: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_configuration_files() {
        let trust: SnpTrust = serde_json::from_str("{}").expect("all defaults");
        assert!(trust.allow_smt && !trust.allow_migration_agent && !trust.accept_vlek);
        assert_eq!(trust.allowed_vmpls, (0..=3).collect());
        assert!(trust.danger_test_roots.is_none());
        let trust: SnpTrust =
            serde_json::from_str(r#"{"allowed_vmpls": [0], "minimum_tcb": {"milan": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}}}"#)
                .expect("a narrowed configuration");
        assert_eq!(trust.allowed_vmpls, [0].into());
        assert_eq!(trust.minimum_tcb.for_product(Product::Milan).snp, 8);
        // Test roots cannot come from a file.
        assert!(serde_json::from_str::<SnpTrust>(r#"{"danger_test_roots": null}"#).is_err());
        assert!(serde_json::from_str::<SnpTrust>(r#"{"allow_debug": true}"#).is_err());
    }
}
