//! Parsers for the argument languages both binaries accept (for clap's `value_parser`). They only
//! turn text into values and must never touch files or the network.

use std::collections::BTreeMap;

use super::Failure;

/// One `K=V` argument. The key is everything before the first `=`, so values may contain `=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Before the first `=`; never empty.
    pub key: String,
    /// After it; may be empty.
    pub value: String,
}

/// Parses `K=V` (for clap).
pub fn parse_pair(s: &str) -> Result<Pair, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(Pair {
            key: k.to_owned(),
            value: v.to_owned(),
        }),
        Some(_) => Err(format!("{s:?}: the key before `=` is empty")),
        None => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Collects the pairs of option `what` (e.g. `--context`) into a map; a key given twice is a
/// mistake, not an override.
pub fn pairs_to_map(pairs: &[Pair], what: &str) -> Result<BTreeMap<String, String>, Failure> {
    let mut map = BTreeMap::new();
    for p in pairs {
        if map.insert(p.key.clone(), p.value.clone()).is_some() {
            return Err(Failure::usage(format!("{what}: key {:?} is given twice", p.key)));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals() {
        assert_eq!(
            parse_pair("tenant=a=b").unwrap(),
            Pair {
                key: "tenant".into(),
                value: "a=b".into()
            }
        );
        assert_eq!(parse_pair("empty=").unwrap().value, "");
        assert_eq!(parse_pair("=v").unwrap_err(), "\"=v\": the key before `=` is empty");
        assert_eq!(parse_pair("novalue").unwrap_err(), "\"novalue\" is not KEY=VALUE");
    }

    #[test]
    fn repeated_keys_are_refused() {
        let pairs = vec![parse_pair("a=1").unwrap(), parse_pair("b=2").unwrap()];
        let m = pairs_to_map(&pairs, "--context").unwrap();
        assert_eq!(m.get("a").map(String::as_str), Some("1"));
        assert_eq!(m.len(), 2);
        let twice = vec![parse_pair("a=1").unwrap(), parse_pair("a=2").unwrap()];
        let err = pairs_to_map(&twice, "--tag").unwrap_err();
        assert_eq!(err.to_string(), "--tag: key \"a\" is given twice");
        assert_eq!(err.exit_code(), crate::cli::exit::USAGE);
        assert!(pairs_to_map(&[], "--context").unwrap().is_empty());
    }
}
