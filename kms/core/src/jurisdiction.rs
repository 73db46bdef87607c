//! Countries and jurisdictions. Admins and (later) hardware carry an ISO 3166-1 alpha-2 country;
//! the server allows only countries in the configured jurisdictions, by default the EU.

use std::collections::BTreeSet;
use std::fmt;

use crate::Error;

/// The EU member states, ISO 3166-1 alpha-2 (Greece is `GR` in ISO, `EL` only in EU usage).
pub const EU_MEMBER_STATES: [&str; 27] = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT", "LU", "LV",
    "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
];

/// An ISO 3166-1 alpha-2 country code (two upper-case letters).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Country(String);

impl Country {
    /// Parses two upper-case ASCII letters.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::InvalidId {
                kind: "country",
                reason: format!("{s:?} is not an ISO 3166-1 alpha-2 code (two upper-case letters, e.g. DE)"),
            })
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is an EU member state.
    pub fn is_eu(&self) -> bool {
        EU_MEMBER_STATES.contains(&self.0.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The countries whose admins (and hardware) the server accepts.
#[derive(Clone, Debug)]
pub struct AllowedCountries(BTreeSet<String>);

impl AllowedCountries {
    /// The EU member states: the default.
    pub fn eu() -> Self {
        Self(EU_MEMBER_STATES.iter().map(|s| (*s).to_owned()).collect())
    }

    /// An explicit list; each entry a country code or `EU` for all member states.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, Error> {
        let mut set = BTreeSet::new();
        for e in entries {
            if e == "EU" {
                set.extend(EU_MEMBER_STATES.iter().map(|s| (*s).to_owned()));
            } else {
                set.insert(Country::parse(e)?.0);
            }
        }
        Ok(Self(set))
    }

    /// Whether `country` is allowed.
    pub fn allows(&self, country: &Country) -> bool {
        self.0.contains(country.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eu_default() {
        let eu = AllowedCountries::eu();
        assert!(eu.allows(&Country::parse("DE").unwrap()));
        assert!(!eu.allows(&Country::parse("US").unwrap()));
        assert!(!eu.allows(&Country::parse("GB").unwrap()));
        assert!(Country::parse("de").is_err());
        assert!(Country::parse("DEU").is_err());
        let custom = AllowedCountries::parse(["EU", "NO"]).unwrap();
        assert!(custom.allows(&Country::parse("NO").unwrap()));
    }
}
