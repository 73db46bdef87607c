//! The node policy a custodian or a workload keeps locally: which nodes it trusts to answer.

use std::collections::BTreeSet;

use attestation::snp::SnpTrust;
use kms_core::policy::{AttestationRequirement, Condition, ReleasePolicy};
use serde::Deserialize;

/// Which TPM-attested nodes are trusted: those whose quotes are signed by one of these AKs
/// (their TPM2 names, hex). The AK of a `kmsd` host is what its operator hands the custodians at
/// deployment, from the host itself (`kmsd` logs it at start) or from `kmsctl node show`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmNodeTrust {
    /// The trusted AK names (hex, lower or upper case).
    pub ak_names: BTreeSet<String>,
}

/// A node policy: the hardware a node may run on and the conditions its claims must meet, in
/// the release-policy language (docs/release-policy.md) over the node's evidence claims (`tee`,
/// `snp.*`, `tpm.*`; there are no registry claims for a node).
///
/// ```json
/// {"version": 1,
///  "tpm": {"ak_names": ["000b5f…"]},
///  "release_policy": {"version": 1, "attestation": "required",
///                     "allOf": [{"claim": "tpm.pcr.7", "equals": "…"}]}}
/// ```
/// `snp` takes the SEV-SNP trust settings of `[attestation.snp]` (products and their minimum
/// TCBs, SMT, VMPLs, alias check, VLEK). `deployment_id` (optional) pins the deployment the node
/// must serve, as its signed status names it: genuine `kmsd` on allowed hardware, initialized by
/// someone else with a root and admins of their own, is then refused.
#[derive(Clone, Debug)]
pub struct NodePolicy {
    /// Trust for SEV-SNP nodes, if they are accepted.
    pub snp: Option<SnpTrust>,
    /// Trust for TPM nodes, if they are accepted.
    pub tpm: Option<TpmNodeTrust>,
    /// What the node's claims must meet.
    pub release_policy: ReleasePolicy,
    /// The deployment the node must serve (`SealStatus.deployment_id`), if pinned.
    pub deployment_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    snp: Option<SnpTrust>,
    #[serde(default)]
    tpm: Option<TpmNodeTrust>,
    release_policy: serde_json::Value,
    #[serde(default)]
    deployment_id: Option<String>,
}

/// A node policy that cannot be used; the message names the part.
#[derive(Debug, thiserror::Error)]
#[error("node policy: {0}")]
pub struct PolicyError(pub String);

impl NodePolicy {
    /// Parses and checks a node policy document (see the type's documentation).
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let bad = |m: String| PolicyError(m);
        let f: File = serde_json::from_str(json).map_err(|e| bad(format!("not a node policy: {e}")))?;
        if f.version != 1 {
            return Err(bad(format!("version {} (this kmsctl reads version 1)", f.version)));
        }
        let release_policy =
            ReleasePolicy::parse(&f.release_policy.to_string()).map_err(|e| bad(format!("release_policy: {e}")))?;
        let policy = Self::new(f.snp, f.tpm, release_policy)?;
        match f.deployment_id {
            Some(d) => policy.pinned_to(d),
            None => Ok(policy),
        }
    }

    /// The same policy, accepting only nodes that serve deployment `deployment_id`.
    pub fn pinned_to(mut self, deployment_id: impl Into<String>) -> Result<Self, PolicyError> {
        let d = deployment_id.into();
        if d.is_empty() || d.len() > 128 || d.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(PolicyError(format!(
                "deployment_id: {d:?} is not a deployment id (kmsctl status prints it)"
            )));
        }
        self.deployment_id = Some(d);
        Ok(self)
    }

    /// A policy from its parts, checked: at least one kind of node accepted, the release policy
    /// requires attestation, SNP settings usable, TPM AK names listed and hex.
    pub fn new(
        snp: Option<SnpTrust>,
        tpm: Option<TpmNodeTrust>,
        release_policy: ReleasePolicy,
    ) -> Result<Self, PolicyError> {
        let bad = |m: String| PolicyError(m);
        if snp.is_none() && tpm.is_none() {
            return Err(bad("accepts no node: give `snp` or `tpm` (or both)".into()));
        }
        if release_policy.attestation() != AttestationRequirement::Required {
            return Err(bad("release_policy: a node policy must require attestation".into()));
        }
        if let Some(s) = &snp {
            s.check().map_err(|e| bad(format!("snp.{e}")))?;
            if !pins_snp_software(&release_policy) {
                return Err(bad(format!(
                    "release_policy: a policy that accepts SEV-SNP nodes must pin their software, or any SEV-SNP guest on any AMD host passes: \
                     require {} with `equals` or `in` (in `allOf`, or in every `anyOf` branch an SNP node can meet)",
                    SNP_SOFTWARE_CLAIMS.join(", ")
                )));
            }
        }
        if let Some(t) = &tpm {
            if t.ak_names.is_empty() {
                return Err(bad("tpm.ak_names: list the AK names of the kmsd hosts".into()));
            }
            if let Some(n) = t.ak_names.iter().find(|n| n.is_empty() || hex::decode(n).is_err()) {
                return Err(bad(format!("tpm.ak_names: {n:?} is not a hex AK name")));
            }
        }
        Ok(Self {
            snp,
            tpm,
            release_policy,
            deployment_id: None,
        })
    }
}

/// The claims that name an SEV-SNP guest's software: its launch measurement, or the key that
/// signed its ID block (which commits to the measurement) or that key's author key.
/// `snp.host_data` is set by the host, and `snp.chip_id` names hardware, not what runs on it.
const SNP_SOFTWARE_CLAIMS: [&str; 3] = ["snp.measurement", "snp.id_key_digest", "snp.author_key_digest"];

/// Whether every SEV-SNP node that meets `policy` has its software pinned: a condition
/// `equals` or `in` on one of [`SNP_SOFTWARE_CLAIMS`] on every way of meeting it. A structural
/// check, so conservative: a branch an SNP node cannot meet (`tee` other than `snp`, any `tpm.*`
/// claim, which SNP evidence never has) needs no pin.
fn pins_snp_software(policy: &ReleasePolicy) -> bool {
    fn pins(c: &Condition) -> bool {
        match c {
            Condition::AllOf(all) => all.iter().any(pins),
            Condition::AnyOf(any) => !any.is_empty() && any.iter().all(pins),
            Condition::Equals { claim, value } => {
                SNP_SOFTWARE_CLAIMS.contains(&claim.as_str())
                    || claim.starts_with("tpm.")
                    || (claim == "tee" && value.as_str() != Some("snp"))
            }
            Condition::In { claim, values } => {
                SNP_SOFTWARE_CLAIMS.contains(&claim.as_str())
                    || claim.starts_with("tpm.")
                    || (claim == "tee" && values.iter().all(|v| v.as_str() != Some("snp")))
            }
            Condition::AtLeast { claim, .. } => claim.starts_with("tpm."),
            _ => false,
        }
    }
    policy.all_of().iter().any(pins) || (!policy.any_of().is_empty() && policy.any_of().iter().all(pins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_may_pin_a_deployment() {
        let base = r#""tpm":{"ak_names":["000bAA"]},"release_policy":{"version":1,"attestation":"required"}"#;
        let p = NodePolicy::parse(&format!(r#"{{"version":1,{base},"deployment_id":"dep-7f3a"}}"#)).unwrap();
        assert_eq!(p.deployment_id.as_deref(), Some("dep-7f3a"));
        assert_eq!(
            NodePolicy::parse(&format!(r#"{{"version":1,{base}}}"#))
                .unwrap()
                .deployment_id,
            None
        );
        for bad in ["", "dep 1"] {
            let e = NodePolicy::parse(&format!(r#"{{"version":1,{base},"deployment_id":"{bad}"}}"#)).unwrap_err();
            assert!(e.to_string().contains("deployment_id"), "{e}");
        }
    }

    #[test]
    fn snp_nodes_must_have_their_software_pinned() {
        let m = "33".repeat(48);
        let snp =
            r#""snp":{"products":["milan"],"minimum_tcb":{"milan":{"bootloader":0,"tee":0,"snp":0,"microcode":0}}}"#;
        let parse = |rp: &str| {
            NodePolicy::parse(&format!(
                r#"{{"version":1,{snp},"tpm":{{"ak_names":["00"]}},"release_policy":{rp}}}"#
            ))
        };
        for pinned in [
            format!(
                r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"snp.measurement","equals":"{m}"}}]}}"#
            ),
            format!(
                r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"snp.id_key_digest","in":["{m}"]}}]}}"#
            ),
            format!(
                r#"{{"version":1,"attestation":"required","allOf":[{{"anyOf":[{{"claim":"snp.measurement","equals":"{m}"}},{{"claim":"snp.author_key_digest","equals":"{m}"}}]}}]}}"#
            ),
            // SNP nodes cannot meet a TPM branch (nor a policy that admits only TPM nodes).
            format!(
                r#"{{"version":1,"attestation":"required","anyOf":[{{"claim":"tpm.pcr.7","equals":"{}"}},{{"allOf":[{{"claim":"tee","equals":"snp"}},{{"claim":"snp.measurement","equals":"{m}"}}]}}]}}"#,
                "00".repeat(32)
            ),
            r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"tpm"}]}"#.to_owned(),
        ] {
            parse(&pinned).unwrap_or_else(|e| panic!("{pinned}: {e}"));
        }
        for open in [
            r#"{"version":1,"attestation":"required"}"#.to_owned(),
            r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"snp"},{"claim":"snp.guest_svn","atLeast":3}]}"#.to_owned(),
            format!(r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"snp.host_data","equals":"{}"}},{{"claim":"snp.chip_id","equals":"{}"}}]}}"#, "00".repeat(32), "00".repeat(64)),
            // One branch an SNP node can meet without a pinned measurement.
            format!(r#"{{"version":1,"attestation":"required","anyOf":[{{"claim":"snp.measurement","equals":"{m}"}},{{"claim":"snp.policy.debug","equals":false}}]}}"#),
        ] {
            let e = parse(&open).unwrap_err().to_string();
            assert!(e.contains("must pin their software") && e.contains("snp.measurement"), "{open}: {e}");
        }
    }

    #[test]
    fn policies_name_their_bad_part() {
        let ok =
            r#"{"version":1,"tpm":{"ak_names":["000bAA"]},"release_policy":{"version":1,"attestation":"required"}}"#;
        let p = NodePolicy::parse(ok).unwrap();
        assert!(p.snp.is_none() && p.tpm.is_some());
        for (bad, named) in [
            (
                r#"{"version":2,"tpm":{"ak_names":["00"]},"release_policy":{"version":1,"attestation":"required"}}"#,
                "version 2",
            ),
            (
                r#"{"version":1,"release_policy":{"version":1,"attestation":"required"}}"#,
                "accepts no node",
            ),
            (
                r#"{"version":1,"tpm":{"ak_names":[]},"release_policy":{"version":1,"attestation":"required"}}"#,
                "tpm.ak_names",
            ),
            (
                r#"{"version":1,"tpm":{"ak_names":["xyz"]},"release_policy":{"version":1,"attestation":"required"}}"#,
                "not a hex AK name",
            ),
            (
                r#"{"version":1,"tpm":{"ak_names":["00"]},"release_policy":{"version":1,"attestation":"none"}}"#,
                "require attestation",
            ),
            (
                r#"{"version":1,"tpm":{"ak_names":["00"]},"release_policy":{"version":1,"attestation":"required","allOf":[{"claim":"snp.measurment","equals":"00"}]}}"#,
                "release_policy",
            ),
            (
                r#"{"version":1,"snp":{"products":["milan"]},"release_policy":{"version":1,"attestation":"required"}}"#,
                "snp.minimum_tcb.milan",
            ),
            (
                r#"{"version":1,"tpm":{"ak_names":["00"]},"release_policy":{"version":1,"attestation":"required"},"extra":1}"#,
                "extra",
            ),
        ] {
            let e = NodePolicy::parse(bad).unwrap_err().to_string();
            assert!(e.contains(named), "{bad}: {e}");
        }
    }
}
