//! Who may use a key (access grants) and when its plaintext may leave the server (release
//! policy). A release policy either allows unattested release (only where the server
//! configuration permits it: dev mode and tests) or requires attestation, optionally with
//! `allOf`/`anyOf` conditions over the attested workload's claims ([`crate::claims`]);
//! docs/release-policy.md describes the language.
//!
//! Parsing refuses anything it does not understand and names the bad part; evaluation is a pure
//! function of the policy and the claims. Nothing here may panic on any input, and nothing here
//! replaces the server's own release checks, which hold whatever a policy says.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

use crate::claims::{claim_type, quote, ClaimType, ClaimValue, ReleaseClaims};
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

    /// The first principal (or `*`) that these grants allow `op` and `other` does not: `None`
    /// if everyone allowed `op` here is allowed it by `other` too. `*` here is covered only by
    /// `*` there. ReEncrypt uses it so that data never moves to a key that more principals may
    /// decrypt.
    pub fn widens(&self, other: &AccessPolicy, op: Operation) -> Option<&str> {
        self.grants
            .iter()
            .filter(|g| g.operations.contains(&op))
            .find(|g| {
                let covered = if g.principal == "*" {
                    other
                        .grants
                        .iter()
                        .any(|o| o.principal == "*" && o.operations.contains(&op))
                } else {
                    other.allows(&Principal::new(g.principal.as_str()), op)
                };
                !covered
            })
            .map(|g| g.principal.as_str())
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

impl AttestationRequirement {
    /// The name in documents: `required` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::None => "none",
        }
    }
}

/// One condition of a release policy over the claims of an attested workload
/// ([`ReleaseClaims`]). In a [`ReleasePolicy`] (which only parsing builds) every claim named is
/// in the schema and every value fits its type, in canonical form.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Condition {
    /// `{"allOf":[…]}`: every condition holds.
    AllOf(Vec<Condition>),
    /// `{"anyOf":[…]}`: at least one condition holds.
    AnyOf(Vec<Condition>),
    /// `{"claim":…,"equals":…}`: the claim is present and equal to the value (same type).
    Equals {
        /// The claim's name.
        claim: String,
        /// The value required.
        value: ClaimValue,
    },
    /// `{"claim":…,"in":[…]}`: the claim is present and equal to one of the values.
    In {
        /// The claim's name.
        claim: String,
        /// The values allowed (1 to [`ReleasePolicy::MAX_IN_VALUES`], no duplicates).
        values: Vec<ClaimValue>,
    },
    /// `{"claim":…,"atLeast":…}`: the integer claim is present and at least the minimum.
    AtLeast {
        /// The claim's name (an integer claim).
        claim: String,
        /// The minimum.
        min: i64,
    },
}

/// A key's release policy document (docs/release-policy.md): whether attestation is required and,
/// if so, the conditions the attested workload's claims must meet. Only [`ReleasePolicy::parse`]
/// (or `Deserialize`, which applies the same rules) builds one, so a value is always valid.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReleasePolicy {
    version: u32,
    attestation: AttestationRequirement,
    /// Empty when the document has no `allOf`.
    all_of: Vec<Condition>,
    /// Empty when the document has no `anyOf`.
    any_of: Vec<Condition>,
}

impl Default for ReleasePolicy {
    /// `{"version":1,"attestation":"required"}`: any attested workload, no conditions.
    fn default() -> Self {
        Self {
            version: 1,
            attestation: AttestationRequirement::Required,
            all_of: Vec::new(),
            any_of: Vec::new(),
        }
    }
}

impl ReleasePolicy {
    /// The largest document, in bytes.
    pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
    /// The deepest nesting: a condition in the top-level `allOf`/`anyOf` is at depth 1, one in a
    /// group at depth `d` is at depth `d + 1`.
    pub const MAX_DEPTH: usize = 8;
    /// The most conditions in a document, groups and leaves alike.
    pub const MAX_CONDITIONS: usize = 256;
    /// The most values of one `in`.
    pub const MAX_IN_VALUES: usize = 256;

    /// Parses and validates a JSON document; an empty string is the default (attestation
    /// required, no conditions). The error's reason names the JSON path of the bad part, e.g.
    /// `allOf[1].anyOf[0].claim: unknown claim "snp.measurment" (did you mean …)`.
    pub fn parse(json: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidPolicy {
            document: "release policy",
            reason,
        };
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        if json.len() > Self::MAX_DOCUMENT_BYTES {
            return Err(bad(format!(
                "the document is {} bytes; at most {}",
                json.len(),
                Self::MAX_DOCUMENT_BYTES
            )));
        }
        let doc: Json = serde_json::from_str(json).map_err(|e| {
            // Data errors are ours (a duplicate field); the others are JSON syntax.
            bad(if e.is_data() {
                e.to_string()
            } else {
                format!("not valid JSON: {e}")
            })
        })?;
        Self::from_document(doc).map_err(bad)
    }

    /// The canonical JSON form stored and returned: fields in the order `version`,
    /// `attestation`, `allOf`, `anyOf` (absent when empty); in a condition `claim` first; hex in
    /// lowercase; no whitespace. Parsing it gives back an equal policy.
    pub fn to_json(&self) -> String {
        // Serializing strings, integers and booleans into a string cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether plaintext may be released without attestation.
    pub fn allows_unattested_release(&self) -> bool {
        self.attestation == AttestationRequirement::None
    }

    /// The document version (1).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Whether attestation is required.
    pub fn attestation(&self) -> AttestationRequirement {
        self.attestation
    }

    /// The top-level `allOf` conditions (empty if absent).
    pub fn all_of(&self) -> &[Condition] {
        &self.all_of
    }

    /// The top-level `anyOf` conditions (empty if absent).
    pub fn any_of(&self) -> &[Condition] {
        &self.any_of
    }

    /// Whether an attested workload with these claims meets the policy: every top-level `allOf`
    /// condition holds and, if there is an `anyOf`, at least one of its conditions holds. A
    /// claim absent from `claims` makes its condition false. A policy with
    /// `"attestation":"none"` has no conditions and is always met.
    ///
    /// This decides only what the policy says. The server's own checks (token from `Attest`,
    /// enrolled and active hardware in an allowed jurisdiction, no debug SNP guest, sealing to
    /// the token's key) hold whatever the policy says and are not made here.
    pub fn evaluate(&self, claims: &ReleaseClaims) -> Result<(), PolicyMismatch> {
        if self.attestation == AttestationRequirement::None {
            return Ok(());
        }
        let all = Path::root("allOf");
        for (i, c) in self.all_of.iter().enumerate() {
            c.evaluate(&all.at(i), claims)?;
        }
        if !self.any_of.is_empty() {
            any_of(&self.any_of, &Path::root("anyOf"), claims)?;
        }
        Ok(())
    }

    /// Whether every set of claims that meets `self` also meets `other`, as far as a structural
    /// comparison can tell: a conservative check (it may answer `false` for policies that are in
    /// fact as strict) for moves between keys such as ReEncrypt, where data must not go to a
    /// key that releases it more easily.
    ///
    /// `true` when `other` allows unattested release, or when `self` requires attestation,
    /// contains every top-level `allOf` condition of `other`, and `other` has no `anyOf`, or
    /// every `anyOf` condition of `self` is one of `other`'s, or one of `other`'s `anyOf`
    /// conditions is among `self`'s `allOf`.
    pub fn is_at_least_as_strict_as(&self, other: &ReleasePolicy) -> bool {
        if other.attestation == AttestationRequirement::None {
            return true;
        }
        if self.attestation == AttestationRequirement::None {
            return false;
        }
        let all_of_covered = other.all_of.iter().all(|c| self.all_of.contains(c));
        let any_of_covered = other.any_of.is_empty()
            || (!self.any_of.is_empty() && self.any_of.iter().all(|c| other.any_of.contains(c)))
            || other.any_of.iter().any(|c| self.all_of.contains(c));
        all_of_covered && any_of_covered
    }

    /// Validates a parsed document; the error is the reason, naming the path.
    fn from_document(doc: Json) -> Result<Self, String> {
        let Json::Object(fields) = doc else {
            return Err("a release policy must be a JSON object".into());
        };
        let (mut version, mut attestation, mut all_of, mut any_of) = (None, None, None, None);
        for (name, value) in fields {
            match name.as_str() {
                "version" => version = Some(value),
                "attestation" => attestation = Some(value),
                "allOf" => all_of = Some(value),
                "anyOf" => any_of = Some(value),
                _ => {
                    return Err(format!(
                        "unknown field {} (expected version, attestation, allOf, anyOf)",
                        quote(&name)
                    ))
                }
            }
        }
        let version = match version {
            None => return Err("missing field \"version\"".into()),
            Some(Json::Int(1)) => 1,
            Some(Json::Int(v)) => return Err(format!("version {v} is unknown (expected 1)")),
            Some(_) => return Err("version: must be the integer 1".into()),
        };
        let attestation = match attestation {
            None => return Err("missing field \"attestation\"".into()),
            Some(Json::Str(s)) if s == "required" => AttestationRequirement::Required,
            Some(Json::Str(s)) if s == "none" => AttestationRequirement::None,
            Some(Json::Str(s)) => {
                return Err(format!(
                    "attestation: {} is unknown (expected \"required\" or \"none\")",
                    quote(&s)
                ))
            }
            Some(_) => return Err("attestation: must be \"required\" or \"none\"".into()),
        };
        if attestation == AttestationRequirement::None {
            if let Some(list) = [("allOf", &all_of), ("anyOf", &any_of)]
                .iter()
                .find_map(|(n, v)| v.as_ref().map(|_| *n))
            {
                return Err(format!(
                    "{list}: conditions need attested claims, and \"attestation\":\"none\" releases without attestation"
                ));
            }
        }
        let mut count = 0;
        let all_of = match all_of {
            Some(v) => conditions(v, &Path::root("allOf"), 1, &mut count)?,
            None => Vec::new(),
        };
        let any_of = match any_of {
            Some(v) => conditions(v, &Path::root("anyOf"), 1, &mut count)?,
            None => Vec::new(),
        };
        Ok(Self {
            version,
            attestation,
            all_of,
            any_of,
        })
    }
}

impl Serialize for ReleasePolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = 2 + usize::from(!self.all_of.is_empty()) + usize::from(!self.any_of.is_empty());
        let mut m = s.serialize_map(Some(len))?;
        m.serialize_entry("version", &self.version)?;
        m.serialize_entry("attestation", self.attestation.as_str())?;
        if !self.all_of.is_empty() {
            m.serialize_entry("allOf", &self.all_of)?;
        }
        if !self.any_of.is_empty() {
            m.serialize_entry("anyOf", &self.any_of)?;
        }
        m.end()
    }
}

/// Applies the rules of [`ReleasePolicy::parse`] but the size limit.
impl<'de> Deserialize<'de> for ReleasePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let doc = Json::deserialize(d)?;
        Self::from_document(doc).map_err(de::Error::custom)
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::AllOf(list) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("allOf", list)?;
                m.end()
            }
            Self::AnyOf(list) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("anyOf", list)?;
                m.end()
            }
            Self::Equals { claim, value } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("claim", claim)?;
                m.serialize_entry("equals", value)?;
                m.end()
            }
            Self::In { claim, values } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("claim", claim)?;
                m.serialize_entry("in", values)?;
                m.end()
            }
            Self::AtLeast { claim, min } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("claim", claim)?;
                m.serialize_entry("atLeast", min)?;
                m.end()
            }
        }
    }
}

/// Why claims do not meet a release policy, for the audit log and the caller.
///
/// `Display` gives the detail: the failing condition's path, the claim, what was required and
/// what the claims had, e.g. `allOf[2]: snp.tcb.snp is 7, at least 8 required`; for an `anyOf`,
/// why each alternative failed (bounded to about [`PolicyMismatch::MAX_DETAIL_BYTES`]).
/// [`PolicyMismatch::summary`] is short and free of claim values.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{detail}")]
pub struct PolicyMismatch {
    summary: String,
    detail: String,
}

impl PolicyMismatch {
    /// The longest detail, roughly (a message is never cut inside a character).
    pub const MAX_DETAIL_BYTES: usize = 1024;

    /// A short summary whose form does not depend on claim values, usable as a reason detail:
    /// `<path>: <claim> absent | wrong type | not equal | not in list | below minimum`, or
    /// `<path>: no alternative holds` for an `anyOf`. E.g. `allOf[2]: snp.tcb.snp below minimum`.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The full message (the same as `Display`).
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl Condition {
    /// Checks the condition at `path` against `claims`.
    fn evaluate(&self, path: &Path<'_>, claims: &ReleaseClaims) -> Result<(), PolicyMismatch> {
        match self {
            Self::AllOf(list) => {
                let inner = path.field("allOf");
                for (i, c) in list.iter().enumerate() {
                    c.evaluate(&inner.at(i), claims)?;
                }
                Ok(())
            }
            Self::AnyOf(list) => any_of(list, &path.field("anyOf"), claims),
            Self::Equals { claim, value } => {
                let required = show(value);
                match claims.get(claim) {
                    None => Err(mismatch(path, claim, "absent", format!("absent, {required} required"))),
                    Some(actual) if same_value(claim, actual, value) => Ok(()),
                    Some(actual) => Err(mismatch(
                        path,
                        claim,
                        if same_kind(actual, value) {
                            "not equal"
                        } else {
                            "wrong type"
                        },
                        format!("is {}, {required} required", show(actual)),
                    )),
                }
            }
            Self::In { claim, values } => {
                let required = one_of(values);
                match claims.get(claim) {
                    None => Err(mismatch(path, claim, "absent", format!("absent, {required} required"))),
                    Some(actual) if values.iter().any(|v| same_value(claim, actual, v)) => Ok(()),
                    Some(actual) => Err(mismatch(
                        path,
                        claim,
                        if values.iter().any(|v| same_kind(actual, v)) {
                            "not in list"
                        } else {
                            "wrong type"
                        },
                        format!("is {}, {required} required", show(actual)),
                    )),
                }
            }
            Self::AtLeast { claim, min } => match claims.get(claim) {
                None => Err(mismatch(
                    path,
                    claim,
                    "absent",
                    format!("absent, at least {min} required"),
                )),
                Some(ClaimValue::Int(actual)) if actual >= min => Ok(()),
                Some(actual) => Err(mismatch(
                    path,
                    claim,
                    if actual.as_int().is_some() {
                        "below minimum"
                    } else {
                        "wrong type"
                    },
                    format!("is {}, at least {min} required", show(actual)),
                )),
            },
        }
    }
}

/// At least one of `list` (the conditions of the `anyOf` at `path`) holds.
fn any_of(list: &[Condition], path: &Path<'_>, claims: &ReleaseClaims) -> Result<(), PolicyMismatch> {
    let mut failures = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match c.evaluate(&path.at(i), claims) {
            Ok(()) => return Ok(()),
            Err(e) => failures.push(e),
        }
    }
    let mut detail = format!("{path}: no alternative holds: ");
    for (i, f) in failures.iter().enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        let room = PolicyMismatch::MAX_DETAIL_BYTES.saturating_sub(detail.len() + sep.len());
        if f.detail.len() <= room {
            detail.push_str(sep);
            detail.push_str(&f.detail);
            continue;
        }
        // Cut this alternative's reason to the room left (on a character boundary) and count
        // the ones that do not fit at all.
        let mut more = failures.len() - i;
        if room > 64 {
            let mut cut = room - 32;
            while !f.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.push_str(sep);
            detail.push_str(&f.detail[..cut]);
            detail.push('…');
            more -= 1;
        }
        if more > 0 {
            detail.push_str(&format!("; … ({more} more)"));
        }
        break;
    }
    Err(PolicyMismatch {
        summary: format!("{path}: no alternative holds"),
        detail,
    })
}

/// A leaf condition's mismatch.
fn mismatch(path: &Path<'_>, claim: &str, kind: &str, what: String) -> PolicyMismatch {
    PolicyMismatch {
        summary: format!("{path}: {claim} {kind}"),
        detail: format!("{path}: {claim} {what}"),
    }
}

/// Equality as conditions see it: same type, hex compared case-insensitively.
fn same_value(claim: &str, actual: &ClaimValue, required: &ClaimValue) -> bool {
    match (actual, required) {
        (ClaimValue::Str(a), ClaimValue::Str(r)) if claim_type(claim).is_some_and(ClaimType::is_hex) => {
            a.eq_ignore_ascii_case(r)
        }
        _ => actual == required,
    }
}

/// Whether two values are of the same JSON type.
fn same_kind(a: &ClaimValue, b: &ClaimValue) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// A value for a message, long strings cut.
fn show(v: &ClaimValue) -> String {
    match v {
        ClaimValue::Str(s) => quote(s),
        other => other.to_string(),
    }
}

/// The values of an `in` for a message: listed if short, counted otherwise.
fn one_of(values: &[ClaimValue]) -> String {
    const MAX_LISTED: usize = 200;
    let listed = values.iter().map(show).collect::<Vec<_>>().join(", ");
    match values {
        [one] => show(one),
        _ if listed.len() <= MAX_LISTED => format!("one of {listed}"),
        _ => format!("one of {} allowed values", values.len()),
    }
}

/// Where a part of a document is, e.g. `allOf[1].anyOf[0].claim`; built on the stack, formatted
/// only for messages.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    name: &'static str,
    index: Option<usize>,
}

impl<'a> Path<'a> {
    /// A top-level field.
    fn root(name: &'static str) -> Self {
        Self {
            parent: None,
            name,
            index: None,
        }
    }

    /// A field of the condition at `self`.
    fn field(&'a self, name: &'static str) -> Path<'a> {
        Path {
            parent: Some(self),
            name,
            index: None,
        }
    }

    /// Item `i` of the list at `self`.
    fn at(&self, i: usize) -> Path<'a> {
        Path {
            index: Some(i),
            ..*self
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            write!(f, "{parent}.")?;
        }
        f.write_str(self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        Ok(())
    }
}

/// Parses the list at `path` (an `allOf` or `anyOf`) whose conditions are at `depth`.
fn conditions(list: Json, path: &Path<'_>, depth: usize, count: &mut usize) -> Result<Vec<Condition>, String> {
    let Json::Array(items) = list else {
        return Err(format!("{path}: must be a list of conditions"));
    };
    if items.is_empty() {
        return Err(format!("{path}: empty list"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| condition(item, &path.at(i), depth, count))
        .collect()
}

/// The fields a condition may have.
const CONDITION_FIELDS: &str = "allOf, anyOf, or claim with one of equals, in, atLeast";

/// Parses the condition at `path`, which is at `depth`.
fn condition(item: Json, path: &Path<'_>, depth: usize, count: &mut usize) -> Result<Condition, String> {
    *count += 1;
    if *count > ReleasePolicy::MAX_CONDITIONS {
        return Err(format!(
            "{path}: more than {} conditions in the document",
            ReleasePolicy::MAX_CONDITIONS
        ));
    }
    if depth > ReleasePolicy::MAX_DEPTH {
        return Err(format!(
            "{path}: nested deeper than {} levels",
            ReleasePolicy::MAX_DEPTH
        ));
    }
    let Json::Object(fields) = item else {
        return Err(format!("{path}: a condition must be an object ({CONDITION_FIELDS})"));
    };
    if fields.is_empty() {
        return Err(format!("{path}: empty condition (expected {CONDITION_FIELDS})"));
    }
    if let Some((name, _)) = fields
        .iter()
        .find(|(n, _)| !matches!(n.as_str(), "allOf" | "anyOf" | "claim" | "equals" | "in" | "atLeast"))
    {
        return Err(format!(
            "{path}: unknown field {} (expected {CONDITION_FIELDS})",
            quote(name)
        ));
    }
    let names = fields.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if fields.iter().any(|(n, _)| n == "allOf" || n == "anyOf") {
        let mut fields = fields.into_iter();
        return match (fields.next(), fields.next()) {
            (Some((name, list)), None) if name == "allOf" => Ok(Condition::AllOf(conditions(
                list,
                &path.field("allOf"),
                depth + 1,
                count,
            )?)),
            (Some((name, list)), None) if name == "anyOf" => Ok(Condition::AnyOf(conditions(
                list,
                &path.field("anyOf"),
                depth + 1,
                count,
            )?)),
            _ => Err(format!(
                "{path}: a condition is exactly one of allOf, anyOf, or claim with one operator; found {}",
                names.join(", ")
            )),
        };
    }

    // A claim condition: `claim` and exactly one operator, in any order.
    let operator_names = names
        .iter()
        .filter(|n| *n != "claim")
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut claim = None;
    let mut operators = Vec::new();
    for (n, v) in fields {
        if n == "claim" {
            claim = Some(v);
        } else {
            operators.push((n, v));
        }
    }
    let Some(claim) = claim else {
        return Err(format!("{path}: missing field \"claim\""));
    };
    let Json::Str(claim) = claim else {
        return Err(format!("{}: must be a string", path.field("claim")));
    };
    let ty = ClaimType::of(&claim).map_err(|e| format!("{}: {e}", path.field("claim")))?;
    let mut operators = operators.into_iter();
    let (Some((op, arg)), None) = (operators.next(), operators.next()) else {
        return Err(format!(
            "{path}: claim {} needs exactly one operator (equals, in or atLeast), found {}",
            quote(&claim),
            if operator_names.is_empty() {
                "none"
            } else {
                &operator_names
            }
        ));
    };
    match op.as_str() {
        "equals" => {
            let value = claim_value(arg, &path.field("equals"), &claim, ty)?;
            Ok(Condition::Equals { claim, value })
        }
        "in" => {
            let at = path.field("in");
            let Json::Array(items) = arg else {
                return Err(format!("{at}: must be a list of values"));
            };
            if items.is_empty() {
                return Err(format!("{at}: empty list"));
            }
            if items.len() > ReleasePolicy::MAX_IN_VALUES {
                return Err(format!(
                    "{at}: {} values; at most {}",
                    items.len(),
                    ReleasePolicy::MAX_IN_VALUES
                ));
            }
            let mut values: Vec<ClaimValue> = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let value = claim_value(item, &at.at(i), &claim, ty)?;
                if let Some(j) = values.iter().position(|v| *v == value) {
                    return Err(format!("{}: duplicate of in[{j}]", at.at(i)));
                }
                values.push(value);
            }
            Ok(Condition::In { claim, values })
        }
        "atLeast" => {
            let at = path.field("atLeast");
            if !ty.is_int() {
                return Err(format!("{at}: {} is not an integer claim", quote(&claim)));
            }
            match arg {
                Json::Int(min) => Ok(Condition::AtLeast { claim, min }),
                _ => Err(format!("{at}: must be an integer")),
            }
        }
        // Only operator names remain after the unknown-field check.
        other => Err(format!("{path}: unknown field {}", quote(other))),
    }
}

/// A value of an `equals` or `in` at `path` for `claim` of type `ty`, checked and canonical.
fn claim_value(v: Json, path: &Path<'_>, claim: &str, ty: ClaimType) -> Result<ClaimValue, String> {
    let value = match v {
        Json::Str(s) => ClaimValue::Str(s),
        Json::Int(i) => ClaimValue::Int(i),
        Json::Bool(b) => ClaimValue::Bool(b),
        _ => return Err(format!("{path}: must be a string, an integer or a boolean")),
    };
    ty.check(claim, &value).map_err(|e| format!("{path}: {e}"))
}

/// A JSON value as validation sees it: objects keep their order and refuse duplicate keys, and
/// numbers are either an `i64` or something no field accepts.
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    /// A fraction, or an integer outside `i64`.
    OtherNumber,
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// Builds [`Json`]; serde_json bounds the nesting (128 levels) before this sees it.
struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Json, E> {
        Ok(Json::Int(i))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Json, E> {
        Ok(i64::try_from(u).map_or(Json::OtherNumber, Json::Int))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json, E> {
        Ok(Json::OtherNumber)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json, E> {
        Ok(Json::Str(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Json, E> {
        Ok(Json::Str(s))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut seen = BTreeSet::new();
        let mut fields = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if !seen.insert(name.clone()) {
                return Err(de::Error::custom(format!("duplicate field {}", quote(&name))));
            }
            fields.push((name, map.next_value()?));
        }
        Ok(Json::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(list: &[(&str, &[Operation])]) -> AccessPolicy {
        AccessPolicy::new(
            list.iter()
                .map(|(p, ops)| Grant {
                    principal: (*p).into(),
                    operations: ops.iter().copied().collect(),
                })
                .collect(),
        )
        .unwrap()
    }

    /// Who may decrypt under a destination must be allowed to decrypt under the source: a named
    /// principal by name or `*`, `*` only by `*`, `anonymous` only by name.
    #[test]
    fn widening_is_decided_per_principal() {
        use Operation::{Decrypt, Encrypt, ReEncrypt};
        let src = policy_of(&[("app", &[Decrypt, Encrypt]), ("rotator", &[ReEncrypt])]);
        let same = policy_of(&[("app", &[Decrypt]), ("rotator", &[ReEncrypt])]);
        assert_eq!(same.widens(&src, Decrypt), None);
        // Other operations do not count: a destination may let someone else encrypt.
        let more_encrypt = policy_of(&[("app", &[Decrypt]), ("billing", &[Encrypt])]);
        assert_eq!(more_encrypt.widens(&src, Decrypt), None);
        let other_reader = policy_of(&[("app", &[Decrypt]), ("mallory", &[Decrypt])]);
        assert_eq!(other_reader.widens(&src, Decrypt), Some("mallory"));
        let the_rotator_reads = policy_of(&[("rotator", &[Decrypt])]);
        assert_eq!(the_rotator_reads.widens(&src, Decrypt), Some("rotator"));
        let everyone = policy_of(&[("*", &[Decrypt])]);
        assert_eq!(everyone.widens(&src, Decrypt), Some("*"));
        assert_eq!(everyone.widens(&everyone, Decrypt), None);
        // A source open to every authenticated principal covers any named one, not anonymous.
        assert_eq!(other_reader.widens(&everyone, Decrypt), None);
        let anonymous = policy_of(&[("anonymous", &[Decrypt])]);
        assert_eq!(anonymous.widens(&everyone, Decrypt), Some("anonymous"));
        assert_eq!(anonymous.widens(&anonymous, Decrypt), None);
    }

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
        let e = ReleasePolicy::parse("not json").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    const M1: &str = "11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa";
    const M2: &str = "22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb";
    const PCR7: &str = "7777777777777777777777777777777777777777777777777777777777777777";

    /// The example of docs/release-policy.md, with hex in upper case.
    fn example() -> String {
        format!(
            r#"{{"version":1, "attestation":"required",
                 "allOf":[ {{"claim":"jurisdiction","equals":"EU"}},
                           {{"anyOf":[{{"claim":"snp.measurement","in":["{}", "{M2}"]}},
                                      {{"allOf":[{{"claim":"tee","equals":"tpm"}},{{"equals":"{PCR7}","claim":"tpm.pcr.7"}}]}}]}},
                           {{"claim":"snp.tcb.snp","atLeast":8}},
                           {{"claim":"snp.policy.debug","equals":false}} ]}}"#,
            M1.to_ascii_uppercase()
        )
    }

    fn reason(json: &str) -> String {
        match ReleasePolicy::parse(json) {
            Err(Error::InvalidPolicy { document, reason }) => {
                assert_eq!(document, "release policy");
                reason
            }
            other => panic!("{json}: expected InvalidPolicy, got {other:?}"),
        }
    }

    fn snp_claims() -> ReleaseClaims {
        let mut c = ReleaseClaims::new();
        c.insert_str("tee", "snp")
            .insert_str("jurisdiction", "EU")
            .insert_str("country", "DE")
            .insert_str("snp.measurement", M1)
            .insert_int("snp.tcb.snp", 8)
            .insert_bool("snp.policy.debug", false);
        c
    }

    fn tpm_claims() -> ReleaseClaims {
        let mut c = ReleaseClaims::new();
        c.insert_str("tee", "tpm")
            .insert_str("jurisdiction", "EU")
            .insert_str("tpm.pcr.7", PCR7)
            .insert_int("snp.tcb.snp", 9)
            .insert_bool("snp.policy.debug", false);
        c
    }

    #[test]
    fn old_documents_still_parse() {
        for json in [
            r#"{"version":1,"attestation":"required"}"#,
            r#"{"version":1,"attestation":"none"}"#,
        ] {
            let p = ReleasePolicy::parse(json).unwrap();
            assert_eq!(p.to_json(), json);
            assert!(p.all_of().is_empty() && p.any_of().is_empty());
        }
        assert_eq!(
            ReleasePolicy::parse(" {\"attestation\" : \"required\", \"version\" : 1} ").unwrap(),
            ReleasePolicy::default()
        );
        assert_eq!(
            ReleasePolicy::default().to_json(),
            r#"{"version":1,"attestation":"required"}"#
        );
        assert_eq!(ReleasePolicy::default().version(), 1);
        assert_eq!(ReleasePolicy::default().attestation(), AttestationRequirement::Required);
    }

    #[test]
    fn canonical_form_round_trips() {
        let p = ReleasePolicy::parse(&example()).unwrap();
        let canonical = p.to_json();
        assert_eq!(
            canonical,
            format!(
                concat!(
                    r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"jurisdiction","equals":"EU"}},"#,
                    r#"{{"anyOf":[{{"claim":"snp.measurement","in":["{M1}","{M2}"]}},"#,
                    r#"{{"allOf":[{{"claim":"tee","equals":"tpm"}},{{"claim":"tpm.pcr.7","equals":"{PCR7}"}}]}}]}},"#,
                    r#"{{"claim":"snp.tcb.snp","atLeast":8}},{{"claim":"snp.policy.debug","equals":false}}]}}"#
                ),
                M1 = M1,
                M2 = M2,
                PCR7 = PCR7
            )
        );
        let again = ReleasePolicy::parse(&canonical).unwrap();
        assert_eq!(again, p);
        assert_eq!(again.to_json(), canonical);
        assert_eq!(p.all_of().len(), 4);
        assert_eq!(
            p.all_of()[2],
            Condition::AtLeast {
                claim: "snp.tcb.snp".into(),
                min: 8
            }
        );
        // Deserialize applies the same rules.
        assert_eq!(serde_json::from_str::<ReleasePolicy>(&canonical).unwrap(), p);
        assert!(serde_json::from_str::<ReleasePolicy>(r#"{"version":1,"attestation":"none","allOf":[]}"#).is_err());

        let both = r#"{"anyOf":[{"claim":"tee","equals":"snp"}],"attestation":"required","version":1,"allOf":[{"atLeast":0,"claim":"snp.vmpl"}]}"#;
        assert_eq!(
            ReleasePolicy::parse(both).unwrap().to_json(),
            r#"{"version":1,"attestation":"required","allOf":[{"claim":"snp.vmpl","atLeast":0}],"anyOf":[{"claim":"tee","equals":"snp"}]}"#
        );
    }

    #[test]
    fn bad_parts_are_named_by_path() {
        let m95 = &M1[1..];
        let cases: Vec<(String, &str)> = vec![
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"snp"},{"anyOf":[{"claim":"snp.measurment","equals":"x"}]}]}"#.into(),
                r#"allOf[1].anyOf[0].claim: unknown claim "snp.measurment" (did you mean "snp.measurement"?)"#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"snp"},{"claim":"tee","equals":"snp"},{"claim":"snp.measurement","atLeast":1}]}"#.into(),
                r#"allOf[2].atLeast: "snp.measurement" is not an integer claim"#,
            ),
            (
                format!(r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"snp.measurement","equals":"{m95}"}}]}}"#),
                r#"allOf[0].equals: "snp.measurement" needs 96 hex digits, found 95"#,
            ),
            (
                format!(r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"snp.measurement","in":["{M1}","{m95}"]}}]}}"#),
                r#"allOf[0].in[1]: "snp.measurement" needs 96 hex digits, found 95"#,
            ),
            (
                format!(r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"snp.measurement","in":["{M1}","{}"]}}]}}"#, M1.to_ascii_uppercase()),
                "allOf[0].in[1]: duplicate of in[0]",
            ),
            (
                r#"{"version":1,"attestation":"required","anyOf":[]}"#.into(),
                "anyOf: empty list",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"anyOf":[]}]}"#.into(),
                "allOf[0].anyOf: empty list",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","in":[]}]}"#.into(),
                "allOf[0].in: empty list",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"country","equals":"de"}]}"#.into(),
                r#"allOf[0].equals: "country" needs an ISO 3166-1 alpha-2 country code (two upper-case letters, e.g. DE), found "de""#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"sgx"}]}"#.into(),
                r#"allOf[0].equals: "tee" needs one of "snp", "tpm", found "sgx""#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"snp.policy.debug","equals":"false"}]}"#.into(),
                r#"allOf[0].equals: "snp.policy.debug" needs a boolean, found string "false""#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"snp.tcb.snp","atLeast":"8"}]}"#.into(),
                "allOf[0].atLeast: must be an integer",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"snp.tcb.snp","atLeast":8.5}]}"#.into(),
                "allOf[0].atLeast: must be an integer",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"snp.tcb.snp","atLeast":9223372036854775808}]}"#.into(),
                "allOf[0].atLeast: must be an integer",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"snp.tcb.snp","equals":null}]}"#.into(),
                "allOf[0].equals: must be a string, an integer or a boolean",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"snp","note":"x"}]}"#.into(),
                r#"allOf[0]: unknown field "note""#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee"}]}"#.into(),
                r#"allOf[0]: claim "tee" needs exactly one operator (equals, in or atLeast), found none"#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"snp","in":["snp"]}]}"#.into(),
                r#"allOf[0]: claim "tee" needs exactly one operator (equals, in or atLeast), found equals, in"#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"equals":"snp"}]}"#.into(),
                r#"allOf[0]: missing field "claim""#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":7,"equals":"snp"}]}"#.into(),
                "allOf[0].claim: must be a string",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"allOf":[{"claim":"tee","equals":"snp"}],"claim":"tee"}]}"#.into(),
                "allOf[0]: a condition is exactly one of allOf, anyOf, or claim with one operator; found allOf, claim",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"allOf":[{"claim":"tee","equals":"snp"}],"anyOf":[{"claim":"tee","equals":"snp"}]}]}"#.into(),
                "allOf[0]: a condition is exactly one of allOf, anyOf, or claim with one operator; found allOf, anyOf",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{}]}"#.into(),
                "allOf[0]: empty condition",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":["tee"]}"#.into(),
                "allOf[0]: a condition must be an object",
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":{"claim":"tee","equals":"snp"}}"#.into(),
                "allOf: must be a list of conditions",
            ),
            (
                r#"{"version":1,"attestation":"required","anyOf":[{"claim":"tee","in":"snp"}]}"#.into(),
                "anyOf[0].in: must be a list of values",
            ),
            (
                r#"{"version":1,"attestation":"none","allOf":[{"claim":"tee","equals":"snp"}]}"#.into(),
                "allOf: conditions need attested claims",
            ),
            (
                r#"{"version":1,"attestation":"none","anyOf":[{"claim":"tee","equals":"snp"}]}"#.into(),
                "anyOf: conditions need attested claims",
            ),
            (r#"{"version":1}"#.into(), r#"missing field "attestation""#),
            (r#"{"attestation":"none"}"#.into(), r#"missing field "version""#),
            (r#"{"version":"1","attestation":"none"}"#.into(), "version: must be the integer 1"),
            (r#"{"version":1,"attestation":true}"#.into(), "attestation: must be"),
            (r#"[1]"#.into(), "must be a JSON object"),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"snp","equals":"tpm"}]}"#.into(),
                r#"duplicate field "equals""#,
            ),
            (
                r#"{"version":1,"version":1,"attestation":"required"}"#.into(),
                r#"duplicate field "version""#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"tpm.pcr.24","equals":"00"}]}"#.into(),
                r#"allOf[0].claim: unknown claim "tpm.pcr.24" (PCR claims are tpm.pcr.0 to tpm.pcr.23"#,
            ),
            (
                r#"{"version":1,"attestation":"required","allOf":[{"claim":"hardware_id","equals":"hw-1"}]}"#.into(),
                r#"allOf[0].equals: "hardware_id" needs a hardware id (hw- followed by 32 hex digits), found "hw-1""#,
            ),
        ];
        for (json, expected) in cases {
            let r = reason(&json);
            assert!(
                r.starts_with(expected) || r.contains(expected),
                "{json}\n  got: {r}\n  want: {expected}"
            );
        }
        let many = (0..257).map(|i| format!("\"{i:02x}\"")).collect::<Vec<_>>().join(",");
        let r = reason(&format!(
            r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"tpm.ak_name","in":[{many}]}}]}}"#
        ));
        assert_eq!(r, "allOf[0].in: 257 values; at most 256");
    }

    #[test]
    fn limits() {
        let leaf = r#"{"claim":"tee","equals":"snp"}"#;
        let nested = |depth: usize| {
            let mut c = leaf.to_owned();
            for _ in 1..depth {
                c = format!(r#"{{"anyOf":[{c}]}}"#);
            }
            format!(r#"{{"version":1,"attestation":"required","allOf":[{c}]}}"#)
        };
        let p = ReleasePolicy::parse(&nested(8)).unwrap();
        assert!(p.evaluate(&snp_claims()).is_ok());
        assert!(p.evaluate(&tpm_claims()).is_err());
        let r = reason(&nested(9));
        assert_eq!(
            r,
            "allOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf[0]: nested deeper than 8 levels"
        );
        // Far deeper than serde_json's own limit: an error, not a stack overflow.
        assert!(ReleasePolicy::parse(&nested(10_000)).is_err());

        let conditions = |n: usize| {
            let list = vec![leaf; n].join(",");
            format!(r#"{{"version":1,"attestation":"required","allOf":[{list}]}}"#)
        };
        assert_eq!(ReleasePolicy::parse(&conditions(256)).unwrap().all_of().len(), 256);
        assert_eq!(
            reason(&conditions(257)),
            "allOf[256]: more than 256 conditions in the document"
        );
        // Groups count too.
        let grouped = format!(
            r#"{{"version":1,"attestation":"required","allOf":[{{"allOf":[{}]}}]}}"#,
            vec![leaf; 256].join(",")
        );
        assert_eq!(
            reason(&grouped),
            "allOf[0].allOf[255]: more than 256 conditions in the document"
        );

        let big = format!(
            r#"{{"version":1,"attestation":"required","allOf":[{leaf}]}}{}"#,
            " ".repeat(ReleasePolicy::MAX_DOCUMENT_BYTES)
        );
        assert!(reason(&big).contains("at most 65536"));
    }

    #[test]
    fn garbage_never_panics() {
        for json in [
            "{",
            "}",
            "null",
            "\"x\"",
            "1e999",
            r#"{"version":1e0,"attestation":"required"}"#,
            r#"{"version":-1,"attestation":"required"}"#,
            r#"{"version":1,"attestation":"required","allOf":[[[[]]]]}"#,
            r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"\u0000"}]}"#,
            r#"{"version":1,"attestation":"required","allOf":[{"claim":"site","equals":"\ud800"}]}"#,
            r#"{"version":1,"attestation":"required","allOf":[{"claim":"snp.measurement","equals":"ééé"}]}"#,
            "\u{feff}{}",
        ] {
            assert!(ReleasePolicy::parse(json).is_err(), "{json}");
        }
        let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(ReleasePolicy::parse(&deep_array[..ReleasePolicy::MAX_DOCUMENT_BYTES]).is_err());
        let long_claim = format!(
            r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"{}","equals":1}}]}}"#,
            "a".repeat(60_000)
        );
        assert!(reason(&long_claim).len() < 300);
    }

    #[test]
    fn evaluation_truth_table() {
        let p = ReleasePolicy::parse(&example()).unwrap();
        assert_eq!(p.evaluate(&snp_claims()), Ok(()));
        assert_eq!(p.evaluate(&tpm_claims()), Ok(()));

        // Claims hex in upper case still matches: hex compares case-insensitively.
        let mut c = snp_claims();
        c.insert_str("snp.measurement", M2.to_ascii_uppercase());
        assert_eq!(p.evaluate(&c), Ok(()));

        let mut c = snp_claims();
        c.insert_int("snp.tcb.snp", 7);
        let e = p.evaluate(&c).unwrap_err();
        assert_eq!(e.to_string(), "allOf[2]: snp.tcb.snp is 7, at least 8 required");
        assert_eq!(e.summary(), "allOf[2]: snp.tcb.snp below minimum");

        let mut c = snp_claims();
        c.insert_str("jurisdiction", "");
        let e = p.evaluate(&c).unwrap_err();
        assert_eq!(e.detail(), r#"allOf[0]: jurisdiction is "", "EU" required"#);
        assert_eq!(e.summary(), "allOf[0]: jurisdiction not equal");

        let mut c = snp_claims();
        c.insert_bool("snp.policy.debug", true);
        assert_eq!(
            p.evaluate(&c).unwrap_err().to_string(),
            "allOf[3]: snp.policy.debug is true, false required"
        );

        // Neither alternative of the nested anyOf: each failure is listed.
        let mut c = snp_claims();
        c.insert_str("snp.measurement", "00".repeat(48));
        let e = p.evaluate(&c).unwrap_err();
        assert_eq!(e.summary(), "allOf[1].anyOf: no alternative holds");
        let d = e.to_string();
        assert!(
            d.starts_with("allOf[1].anyOf: no alternative holds: allOf[1].anyOf[0]: snp.measurement is \"0000"),
            "{d}"
        );
        assert!(d.contains("not") || d.contains("required"), "{d}");
        assert!(
            d.contains(r#"; allOf[1].anyOf[1].allOf[0]: tee is "snp", "tpm" required"#),
            "{d}"
        );

        // TPM with the wrong PCR 7.
        let mut c = tpm_claims();
        c.insert_str("tpm.pcr.7", "00".repeat(32));
        let d = p.evaluate(&c).unwrap_err().to_string();
        assert!(d.contains("allOf[1].anyOf[0]: snp.measurement absent, one of"), "{d}");
        assert!(d.contains("allOf[1].anyOf[1].allOf[1]: tpm.pcr.7 is \"0000"), "{d}");

        // Absent claims make conditions false.
        let mut c = snp_claims();
        c = c
            .iter()
            .filter(|(k, _)| *k != "jurisdiction")
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        let e = p.evaluate(&c).unwrap_err();
        assert_eq!(e.to_string(), r#"allOf[0]: jurisdiction absent, "EU" required"#);
        assert_eq!(e.summary(), "allOf[0]: jurisdiction absent");
        assert_eq!(
            p.evaluate(&ReleaseClaims::new()).unwrap_err().summary(),
            "allOf[0]: jurisdiction absent"
        );

        // Type mismatches never match.
        for (name, value) in [
            ("snp.tcb.snp", ClaimValue::from("9")),
            ("snp.tcb.snp", ClaimValue::Bool(true)),
            ("snp.policy.debug", ClaimValue::Int(0)),
            ("snp.policy.debug", ClaimValue::from("false")),
            ("jurisdiction", ClaimValue::Bool(true)),
        ] {
            let mut c = snp_claims();
            c.insert(name, value.clone());
            let e = p.evaluate(&c).unwrap_err();
            assert!(
                e.summary().ends_with(&format!("{name} wrong type")),
                "{name}={value}: {e:?}"
            );
            assert!(e.to_string().contains(&format!("{name} is {value}")), "{e}");
        }
        let mut c = snp_claims();
        c.insert_int("snp.measurement", 1);
        assert!(p.evaluate(&c).is_err());
    }

    #[test]
    fn top_level_any_of_and_all_of() {
        let p = ReleasePolicy::parse(
            r#"{"version":1,"attestation":"required",
                "allOf":[{"claim":"country","in":["DE","FR"]}],
                "anyOf":[{"claim":"tee","equals":"tpm"},{"claim":"snp.vmpl","equals":0}]}"#,
        )
        .unwrap();
        let claims = |country: &str, tee: &str, vmpl: Option<i64>| {
            let mut c = ReleaseClaims::new();
            c.insert_str("country", country).insert_str("tee", tee);
            if let Some(v) = vmpl {
                c.insert_int("snp.vmpl", v);
            }
            c
        };
        let table = [
            ("DE", "tpm", None, true),
            ("FR", "snp", Some(0), true),
            ("DE", "snp", Some(1), false),
            ("DE", "snp", None, false),
            ("NL", "tpm", None, false),
            ("NL", "snp", Some(0), false),
        ];
        for (country, tee, vmpl, ok) in table {
            assert_eq!(
                p.evaluate(&claims(country, tee, vmpl)).is_ok(),
                ok,
                "{country} {tee} {vmpl:?}"
            );
        }
        let e = p.evaluate(&claims("NL", "tpm", None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"allOf[0]: country is "NL", one of "DE", "FR" required"#
        );
        assert_eq!(e.summary(), "allOf[0]: country not in list");
        let e = p.evaluate(&claims("DE", "snp", Some(1))).unwrap_err();
        assert_eq!(e.summary(), "anyOf: no alternative holds");
        assert_eq!(
            e.to_string(),
            r#"anyOf: no alternative holds: anyOf[0]: tee is "snp", "tpm" required; anyOf[1]: snp.vmpl is 1, 0 required"#
        );

        // Attestation none: always met; required without conditions: any claims.
        let none = ReleasePolicy::parse(r#"{"version":1,"attestation":"none"}"#).unwrap();
        assert_eq!(none.evaluate(&ReleaseClaims::new()), Ok(()));
        assert_eq!(ReleasePolicy::default().evaluate(&ReleaseClaims::new()), Ok(()));
    }

    #[test]
    fn mismatch_detail_is_bounded() {
        let alternatives = (0..120)
            .map(|i| {
                format!(
                    r#"{{"claim":"snp.measurement","equals":"{}"}}"#,
                    format!("{i:02x}").repeat(48)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let p = ReleasePolicy::parse(&format!(
            r#"{{"version":1,"attestation":"required","anyOf":[{{"anyOf":[{alternatives}]}},{{"anyOf":[{alternatives}]}}]}}"#
        ))
        .unwrap();
        let e = p.evaluate(&snp_claims()).unwrap_err();
        assert!(
            e.detail().len() <= PolicyMismatch::MAX_DETAIL_BYTES + 32,
            "{}",
            e.detail().len()
        );
        assert!(e.detail().contains("more)"), "{e}");
        assert_eq!(e.summary(), "anyOf: no alternative holds");

        let many = (0..100)
            .map(|i| format!(r#""{}""#, format!("{i:02x}").repeat(48)))
            .collect::<Vec<_>>();
        let p = ReleasePolicy::parse(&format!(
            r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"snp.measurement","in":[{}]}}]}}"#,
            many.join(",")
        ))
        .unwrap();
        let e = p.evaluate(&snp_claims()).unwrap_err();
        assert!(e.to_string().ends_with("one of 100 allowed values required"), "{e}");
    }

    #[test]
    fn strictness_comparison_is_conservative() {
        let parse = |s: &str| ReleasePolicy::parse(s).unwrap();
        let none = parse(r#"{"version":1,"attestation":"none"}"#);
        let any = parse(r#"{"version":1,"attestation":"required"}"#);
        let eu = parse(r#"{"version":1,"attestation":"required","allOf":[{"claim":"jurisdiction","equals":"EU"}]}"#);
        let eu_snp = parse(
            r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"snp"},{"claim":"jurisdiction","equals":"EU"}]}"#,
        );
        let either = parse(
            r#"{"version":1,"attestation":"required","anyOf":[{"claim":"tee","equals":"snp"},{"claim":"tee","equals":"tpm"}]}"#,
        );
        let snp_only = parse(r#"{"version":1,"attestation":"required","anyOf":[{"claim":"tee","equals":"snp"}]}"#);

        for p in [&none, &any, &eu, &eu_snp, &either] {
            assert!(p.is_at_least_as_strict_as(p));
            assert!(p.is_at_least_as_strict_as(&none));
        }
        assert!(!none.is_at_least_as_strict_as(&any));
        assert!(any.is_at_least_as_strict_as(&none));
        assert!(eu.is_at_least_as_strict_as(&any));
        assert!(!any.is_at_least_as_strict_as(&eu));
        assert!(eu_snp.is_at_least_as_strict_as(&eu));
        assert!(!eu.is_at_least_as_strict_as(&eu_snp));
        assert!(snp_only.is_at_least_as_strict_as(&either));
        assert!(!either.is_at_least_as_strict_as(&snp_only));
        assert!(eu_snp.is_at_least_as_strict_as(&either));
        assert!(!eu.is_at_least_as_strict_as(&either));
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
