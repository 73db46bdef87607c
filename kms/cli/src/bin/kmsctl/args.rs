//! Parsers for the small argument languages of the command line: grants
//! (`PRINCIPAL=OP[,OP...]`), admin ids and countries; `K=V` pairs (encryption contexts, tags) are
//! kms-client's, shared with kms-agent. They only turn text into typed values and must never talk
//! to the server or touch files.

use std::collections::{BTreeMap, BTreeSet};

use kms_core::ids::AdminId;
use kms_core::jurisdiction::Country;
use kms_proto::v1 as pb;

pub(crate) use kms_client::cli::parse::{pairs_to_map, Pair};

/// One `--grant PRINCIPAL=OP[,OP...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GrantArg {
    pub(crate) principal: String,
    pub(crate) operations: BTreeSet<pb::Operation>,
}

/// The operation names `--grant` accepts, and what they mean on the wire.
pub(crate) const OPERATION_NAMES: [(&str, pb::Operation); 5] = [
    ("generate-data-key", pb::Operation::GenerateDataKey),
    (
        "generate-data-key-without-plaintext",
        pb::Operation::GenerateDataKeyWithoutPlaintext,
    ),
    ("encrypt", pb::Operation::Encrypt),
    ("decrypt", pb::Operation::Decrypt),
    ("re-encrypt", pb::Operation::ReEncrypt),
];

/// The command-line name of a wire operation.
pub(crate) fn operation_name(op: i32) -> String {
    OPERATION_NAMES
        .iter()
        .find(|(_, o)| *o as i32 == op)
        .map(|(n, _)| (*n).to_owned())
        .unwrap_or_else(|| format!("unknown({op})"))
}

/// Parses `PRINCIPAL=OP[,OP...]` (for clap). The principal ends at the *last* `=`: principals
/// are URIs that may contain `=`, operation names never do.
pub(crate) fn parse_grant(s: &str) -> Result<GrantArg, String> {
    let (principal, ops) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not PRINCIPAL=OP[,OP...]"))?;
    if principal.is_empty() {
        return Err(format!("{s:?}: the principal before `=` is empty"));
    }
    let mut operations = BTreeSet::new();
    for name in ops.split(',').map(str::trim) {
        let normalized = name.to_ascii_lowercase().replace('_', "-");
        if normalized == "all" {
            operations.extend(OPERATION_NAMES.iter().map(|(_, o)| *o));
            continue;
        }
        let op = OPERATION_NAMES
            .iter()
            .find(|(n, _)| *n == normalized)
            .map(|(_, o)| *o)
            .ok_or_else(|| {
                let known: Vec<&str> = OPERATION_NAMES.iter().map(|(n, _)| *n).collect();
                format!("{s:?}: unknown operation {name:?} (one of: {}, all)", known.join(", "))
            })?;
        operations.insert(op);
    }
    Ok(GrantArg {
        principal: principal.to_owned(),
        operations,
    })
}

/// The wire grants, one per principal: repeated `--grant`s for one principal add up.
pub(crate) fn grants_to_wire(grants: &[GrantArg]) -> Vec<pb::Grant> {
    let mut by_principal: BTreeMap<&str, BTreeSet<pb::Operation>> = BTreeMap::new();
    for g in grants {
        by_principal
            .entry(g.principal.as_str())
            .or_default()
            .extend(g.operations.iter().copied());
    }
    by_principal
        .into_iter()
        .map(|(principal, ops)| pb::Grant {
            principal: principal.to_owned(),
            operations: ops.into_iter().map(|o| o as i32).collect(),
        })
        .collect()
}

/// Parses an admin id (for clap), with kms-core's rules.
pub(crate) fn parse_admin_id(s: &str) -> Result<AdminId, String> {
    AdminId::parse(s).map_err(|e| e.to_string())
}

/// Parses an ISO 3166-1 alpha-2 country (for clap), with kms-core's rules.
pub(crate) fn parse_country(s: &str) -> Result<Country, String> {
    Country::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_operations_and_all() {
        let g = parse_grant("spiffe://eu/payments=encrypt,decrypt").unwrap();
        assert_eq!(g.principal, "spiffe://eu/payments");
        assert_eq!(
            g.operations.into_iter().collect::<Vec<_>>(),
            vec![pb::Operation::Encrypt, pb::Operation::Decrypt]
        );
        let all = parse_grant("*=all").unwrap();
        assert_eq!(all.operations.len(), 5);
        let underscores = parse_grant("cn:x=generate_data_key_without_plaintext").unwrap();
        assert!(underscores
            .operations
            .contains(&pb::Operation::GenerateDataKeyWithoutPlaintext));
    }

    #[test]
    fn grant_principals_may_contain_equals() {
        let g = parse_grant("spiffe://eu/svc?env=prod=re-encrypt").unwrap();
        assert_eq!(g.principal, "spiffe://eu/svc?env=prod");
        assert_eq!(
            g.operations.into_iter().collect::<Vec<_>>(),
            vec![pb::Operation::ReEncrypt]
        );
    }

    #[test]
    fn bad_grants_are_refused() {
        assert!(parse_grant("no-operations").is_err());
        assert!(parse_grant("=encrypt").is_err());
        assert!(parse_grant("p=").is_err());
        assert!(parse_grant("p=encrypt,").is_err());
        let e = parse_grant("p=sign").unwrap_err();
        assert!(e.contains("unknown operation \"sign\""), "{e}");
    }

    #[test]
    fn grants_for_one_principal_merge() {
        let wire = grants_to_wire(&[
            parse_grant("b=decrypt").unwrap(),
            parse_grant("a=encrypt").unwrap(),
            parse_grant("b=encrypt").unwrap(),
        ]);
        assert_eq!(wire.len(), 2);
        assert_eq!(wire[0].principal, "a");
        assert_eq!(wire[1].principal, "b");
        assert_eq!(
            wire[1].operations,
            vec![pb::Operation::Encrypt as i32, pb::Operation::Decrypt as i32]
        );
        assert_eq!(operation_name(pb::Operation::ReEncrypt as i32), "re-encrypt");
        assert_eq!(operation_name(99), "unknown(99)");
    }

    #[test]
    fn ids_and_countries_use_core_rules() {
        assert!(parse_admin_id("alice@example.eu").is_ok());
        assert!(parse_admin_id("al ice").is_err());
        assert!(parse_country("DE").is_ok());
        assert!(parse_country("de").is_err());
    }
}
