//! Who may use a key (access grants) and when its plaintext may leave the server (release
//! policy). The release policy is the hook the attested path plugs into: today it says either
//! "no attestation required" (allowed only when the server configuration permits it, i.e. dev
//! mode and tests) or "attestation required", which refuses plaintext release until the attested
//! release protocol exists.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::Principal;
use crate::Error;

/// A data-plane operation a grant can allow.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// GenerateDataKey (returns plaintext, subject to the release policy).
    GenerateDataKey,
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext,
    /// Encrypt.
    Encrypt,
    /// Decrypt (returns plaintext, subject to the release policy).
    Decrypt,
    /// ReEncrypt from this key.
    ReEncrypt,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Self; 5] = [
        Self::GenerateDataKey,
        Self::GenerateDataKeyWithoutPlaintext,
        Self::Encrypt,
        Self::Decrypt,
        Self::ReEncrypt,
    ];

    /// The name used in audit entries and documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GenerateDataKey => "generate_data_key",
            Self::GenerateDataKeyWithoutPlaintext => "generate_data_key_without_plaintext",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::ReEncrypt => "re_encrypt",
        }
    }
}

/// One principal's allowed operations.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Grant {
    /// A principal, `*` (any authenticated principal) or `anonymous` (dev-mode plaintext callers).
    pub principal: String,
    /// What it may do.
    pub operations: BTreeSet<Operation>,
}

/// A key's grants.
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AccessPolicy {
    /// The grants; a principal may appear once.
    pub grants: Vec<Grant>,
}

impl AccessPolicy {
    /// Checks the grants: at most 100, principals of 1 to 512 bytes without control
    /// characters, each principal once, each grant with at least one operation.
    pub fn new(grants: Vec<Grant>) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidPolicy {
            document: "grants",
            reason,
        };
        if grants.len() > 100 {
            return Err(bad(format!("{} grants; at most 100", grants.len())));
        }
        let mut seen = BTreeSet::new();
        for (i, g) in grants.iter().enumerate() {
            if g.principal.is_empty() || g.principal.len() > 512 || g.principal.chars().any(char::is_control) {
                return Err(bad(format!(
                    "grants[{i}].principal must be 1 to 512 bytes without control characters"
                )));
            }
            if g.operations.is_empty() {
                return Err(bad(format!("grants[{i}] ({}) allows no operation", g.principal)));
            }
            if !seen.insert(g.principal.as_str()) {
                return Err(bad(format!("grants[{i}]: principal {} appears twice", g.principal)));
            }
        }
        Ok(Self { grants })
    }

    /// Whether `principal` may perform `op`. `*` matches any authenticated principal, never the
    /// anonymous dev-mode caller, which must be granted by name.
    pub fn allows(&self, principal: &Principal, op: Operation) -> bool {
        self.grants.iter().any(|g| {
            let matches = g.principal == principal.as_str() || (g.principal == "*" && !principal.is_anonymous());
            matches && g.operations.contains(&op)
        })
    }
}

/// What a release policy requires before plaintext leaves the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttestationRequirement {
    /// Plaintext only to an attested workload (the default).
    Required,
    /// Plaintext to any caller the grants allow. Only where the server configuration permits
    /// unattested keys (dev mode, tests).
    None,
}

/// A key's release policy document (docs/release-policy.md).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicy {
    /// Document version; only 1 exists.
    pub version: u32,
    /// Whether attestation is required.
    pub attestation: AttestationRequirement,
}

impl Default for ReleasePolicy {
    fn default() -> Self {
        Self {
            version: 1,
            attestation: AttestationRequirement::Required,
        }
    }
}

impl ReleasePolicy {
    /// Parses a JSON document; an empty string is the default (attestation required). The error
    /// names the bad part.
    pub fn parse(json: &str) -> Result<Self, Error> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        let p: Self = serde_json::from_str(json).map_err(|e| Error::InvalidPolicy {
            document: "release policy",
            reason: e.to_string(),
        })?;
        if p.version != 1 {
            return Err(Error::InvalidPolicy {
                document: "release policy",
                reason: format!("version {} is unknown (expected 1)", p.version),
            });
        }
        Ok(p)
    }

    /// The canonical JSON form stored and returned.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether plaintext may be released without attestation.
    pub fn allows_unattested_release(&self) -> bool {
        self.attestation == AttestationRequirement::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_policy_parsing_names_the_bad_part() {
        assert_eq!(ReleasePolicy::parse("").unwrap(), ReleasePolicy::default());
        let none = ReleasePolicy::parse(r#"{"version":1,"attestation":"none"}"#).unwrap();
        assert!(none.allows_unattested_release());
        let e = ReleasePolicy::parse(r#"{"version":1,"attestation":"maybe"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("maybe"), "{e}");
        let e = ReleasePolicy::parse(r#"{"version":1,"attestation":"none","extra":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("extra"), "{e}");
        let e = ReleasePolicy::parse(r#"{"version":2,"attestation":"none"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
        assert!(ReleasePolicy::parse("not json").is_err());
    }

    #[test]
    fn grants() {
        let ops = |o: &[Operation]| o.iter().copied().collect::<BTreeSet<_>>();
        let p = AccessPolicy::new(vec![
            Grant {
                principal: "*".into(),
                operations: ops(&[Operation::Encrypt]),
            },
            Grant {
                principal: "spiffe://eu/app".into(),
                operations: ops(&[Operation::Decrypt]),
            },
        ])
        .unwrap();
        assert!(p.allows(&Principal::new("cn:x"), Operation::Encrypt));
        assert!(!p.allows(&Principal::anonymous(), Operation::Encrypt));
        assert!(p.allows(&Principal::new("spiffe://eu/app"), Operation::Decrypt));
        assert!(!p.allows(&Principal::new("cn:x"), Operation::Decrypt));
        assert!(AccessPolicy::new(vec![Grant {
            principal: "a".into(),
            operations: ops(&[])
        }])
        .is_err());
        let dup = Grant {
            principal: "a".into(),
            operations: ops(&[Operation::Encrypt]),
        };
        assert!(AccessPolicy::new(vec![dup.clone(), dup]).is_err());
    }
}
