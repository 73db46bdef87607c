//! Parsers for the small argument languages of the command line: grants
//! (`PRINCIPAL=OP[,OP...]`), admin ids and countries, hex bytes, TCB versions and times; `K=V` pairs (encryption contexts, tags) are
//! kms-client's, shared with kms-agent. They only turn text into typed values and must never talk
//! to the server or touch files.

use std::collections::{BTreeMap, BTreeSet};

use attestation::snp::Tcb;
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

/// Bytes given in hex on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hex(pub(crate) Vec<u8>);

/// Hex bytes (an optional `0x` prefix is allowed).
pub(crate) fn parse_hex(s: &str) -> Result<Hex, String> {
    let s = s.trim();
    hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .map(Hex)
        .map_err(|e| format!("not hex: {e}"))
}

/// `bl=N,tee=N,snp=N,ucode=N[,fmc=N]`.
pub(crate) fn parse_tcb(s: &str) -> Result<Tcb, String> {
    let (mut bl, mut tee, mut snp, mut ucode, mut fmc) = (None, None, None, None, None);
    for part in s.split(',') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not NAME=N (expected bl=N,tee=N,snp=N,ucode=N[,fmc=N])"))?;
        let value: u8 = value
            .trim()
            .parse()
            .map_err(|e| format!("{name}: {value:?} is not 0..=255: {e}"))?;
        let slot = match name.trim() {
            "bl" => &mut bl,
            "tee" => &mut tee,
            "snp" => &mut snp,
            "ucode" => &mut ucode,
            "fmc" => &mut fmc,
            other => return Err(format!("unknown TCB component {other:?} (bl, tee, snp, ucode, fmc)")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("{name} given twice"));
        }
    }
    let need = |v: Option<u8>, name: &str| v.ok_or_else(|| format!("{name}=N is missing"));
    Ok(Tcb {
        fmc,
        bootloader: need(bl, "bl")?,
        tee: need(tee, "tee")?,
        snp: need(snp, "snp")?,
        microcode: need(ucode, "ucode")?,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds, or RFC 3339 (`2025-06-01T00:00:00Z`, fractions and `+HH:MM` offsets allowed).
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|e| format!("{s:?}: {e}"));
    }
    let bad = || format!("{s:?} is neither Unix seconds nor RFC 3339 (e.g. 2025-06-01T00:00:00Z)");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(r).ok_or_else(bad)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[usize::try_from(month - 1).map_err(|_| bad())?]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let h: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let m: i64 = rest[4..6].parse().map_err(|_| bad())?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
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

#[cfg(test)]
mod value_tests {
    use super::{parse_tcb, parse_time};

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("2025-06-01T00:00:00Z"), Ok(1_748_736_000));
        assert_eq!(parse_time("1748736000"), Ok(1_748_736_000));
        assert_eq!(parse_time("2025-06-01T02:00:00.5+02:00"), Ok(1_748_736_000));
        assert_eq!(parse_time("2026-01-01T00:00:00Z"), Ok(1_767_225_600));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        for bad in [
            "",
            "2025-06-01",
            "2025-02-30T00:00:00Z",
            "2025-06-01T00:00:00",
            "x025-06-01T00:00:00Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tcbs_parse() {
        let t = parse_tcb("bl=3,tee=0,snp=8,ucode=115").expect("tcb");
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode, t.fmc), (3, 0, 8, 115, None));
        assert_eq!(parse_tcb("bl=1,tee=2,snp=3,ucode=4,fmc=5").expect("tcb").fmc, Some(5));
        for bad in [
            "bl=3,tee=0,snp=8",
            "bl=3,tee=0,snp=8,ucode=256",
            "bl=1,bl=2,tee=0,snp=8,ucode=1",
            "x=1",
        ] {
            assert!(parse_tcb(bad).is_err(), "{bad}");
        }
    }
}
