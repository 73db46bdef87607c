//! Attestation tokens: the short-lived JWT (RFC 7519) the server issues once it has verified a
//! workload's SEV-SNP or TPM evidence, signed with EdDSA over Ed25519 (RFC 8037).
//!
//! Every replica must verify tokens that any replica issued, so the signing key is derived from a
//! 32-byte seed that the server keeps wrapped under its root key. Verification takes the time as an
//! argument, never the system clock, so offline verifiers and tests choose it.
//!
//! This module must never accept an algorithm other than EdDSA, never use a key that the token
//! itself carries (a `kid` only selects among the keys the verifier was built with), and never put
//! a token, or any part of one, in an error.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use crate::claims::ReleaseClaims;
use crate::hpke_seal::{check_public_key, X25519};
use crate::secret::SecretKey;
use crate::Error;

/// The `iss` of every token.
pub const ISSUER: &str = "kms";
/// The `aud` of every token: the data plane's release operations.
pub const AUDIENCE: &str = "kms-release";
/// The longest token [`TokenVerifier::verify`] looks at, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// How far in the future `nbf` and `iat` may be (clock skew between replicas), in seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// The longest lifetime (`exp - iat`) of a token, in seconds (at most 10 minutes: docs/attested-release.md).
pub const MAX_LIFETIME_SECS: i64 = 600;

/// The confirmation claim (`cnf`, RFC 7800): the key the token's holder proves possession of, here
/// the workload's HPKE public key, to which releases under this token are sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The X25519 public key, base64url without padding (32 bytes).
    pub hpke_x25519: String,
}

/// The claims of an attestation token.
///
/// [`TokenVerifier::verify`] returns claims whose issuer, audience, times and formats it checked;
/// claims built any other way are checked by [`TokenSigner::sign`] before they are signed. Claims
/// a token carries beyond these are ignored, so a replica can add one before the others know it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Issuer: always [`ISSUER`].
    pub iss: String,
    /// Audience: always [`AUDIENCE`].
    pub aud: String,
    /// Subject: the enrolled hardware's id, `hw-` followed by 32 lowercase hex digits.
    pub sub: String,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: i64,
    /// Not before, in seconds since the Unix epoch.
    pub nbf: i64,
    /// Expiry, in seconds since the Unix epoch: the token is valid while `now < exp`.
    pub exp: i64,
    /// The token id: 16 random bytes as 32 lowercase hex digits. The HPKE `info` of every release
    /// under this token binds it (see [`crate::hpke_seal::release_info`]).
    pub jti: String,
    /// The mTLS principal the token was issued to; it is valid for that principal only.
    pub principal: String,
    /// The workload's HPKE public key.
    pub cnf: Confirmation,
    /// The claims release policies are evaluated on (see [`crate::claims`]).
    pub kms: ReleaseClaims,
}

impl TokenClaims {
    /// The claims of `token` read without checking its signature: for a holder that got the
    /// token over an authenticated channel (the workload, from an Attest answer its node
    /// signed) and checks that it says what was asked for. Never a basis for a release.
    pub fn read_unverified(token: &str) -> Result<Self, TokenError> {
        let payload = token.split('.').nth(1).ok_or(TokenError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
    }

    /// Claims for a token issued at `now_unix` (seconds) for `lifetime_secs` (1 to
    /// [`MAX_LIFETIME_SECS`]), with a fresh random token id.
    pub fn new(
        hardware_id: &str,
        principal: &str,
        hpke_public_key: &[u8],
        kms: ReleaseClaims,
        now_unix: i64,
        lifetime_secs: i64,
    ) -> Result<Self, Error> {
        if !(1..=MAX_LIFETIME_SECS).contains(&lifetime_secs) {
            return Err(claim_error("exp", "the lifetime must be 1 to 600 seconds"));
        }
        let exp = now_unix
            .checked_add(lifetime_secs)
            .ok_or_else(|| claim_error("exp", "out of range"))?;
        check_public_key::<X25519>(hpke_public_key)?;
        let claims = Self {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: hardware_id.to_owned(),
            iat: now_unix,
            nbf: now_unix,
            exp,
            jti: hex::encode(crate::random_array::<16>()?),
            principal: principal.to_owned(),
            cnf: Confirmation {
                hpke_x25519: URL_SAFE_NO_PAD.encode(hpke_public_key),
            },
            kms,
        };
        claims.check_issuable()?;
        Ok(claims)
    }

    /// The workload's X25519 HPKE public key from `cnf`, checked to be exactly 32 bytes.
    pub fn hpke_public_key(&self) -> Result<[u8; 32], TokenError> {
        decode_32(&self.cnf.hpke_x25519).ok_or(TokenError::Malformed)
    }

    /// Everything except the issuer, audience and validity at a given time: the formats of `sub`,
    /// `jti` and `cnf`, and a lifetime of at most [`MAX_LIFETIME_SECS`].
    fn check_shape(&self) -> Result<(), (&'static str, &'static str)> {
        let hardware_hex = self.sub.strip_prefix("hw-").unwrap_or_default();
        if !is_lower_hex(hardware_hex, 32) {
            return Err(("sub", "must be `hw-` followed by 32 lowercase hex digits"));
        }
        if !is_lower_hex(&self.jti, 32) {
            return Err(("jti", "must be 32 lowercase hex digits"));
        }
        if decode_32(&self.cnf.hpke_x25519).is_none() {
            return Err(("cnf.hpke_x25519", "must be 32 bytes, base64url without padding"));
        }
        match self.exp.checked_sub(self.iat) {
            Some(lifetime) if (1..=MAX_LIFETIME_SECS).contains(&lifetime) => Ok(()),
            _ => Err(("exp", "the lifetime (exp - iat) must be 1 to 600 seconds")),
        }
    }

    /// What [`TokenSigner::sign`] requires: what the verifier checks whatever the time, and release
    /// claims that fit the schema of [`crate::claims`].
    fn check_issuable(&self) -> Result<(), Error> {
        if self.iss != ISSUER {
            return Err(claim_error("iss", "must be `kms`"));
        }
        if self.aud != AUDIENCE {
            return Err(claim_error("aud", "must be `kms-release`"));
        }
        self.check_shape()
            .map_err(|(claim, reason)| claim_error(claim, reason))?;
        self.kms.validate().map_err(|e| claim_error("kms", e.reason()))
    }
}

fn claim_error(claim: &str, reason: &str) -> Error {
    Error::InvalidId {
        kind: "attestation token claim",
        reason: format!("{claim}: {reason}"),
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decodes base64url without padding that must hold exactly 32 bytes (the only encoding
/// accepted: the decoder refuses padding and non-zero trailing bits).
fn decode_32(b64: &str) -> Option<[u8; 32]> {
    if b64.len() != 43 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(b64).ok()?.try_into().ok()
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 §2): base64url of the SHA-256
/// of `{"crv":"Ed25519","kty":"OKP","x":"…"}`. Used as the `kid` of signing keys.
pub fn jwk_thumbprint(public_key: &[u8; 32]) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, jwk.as_bytes()))
}

/// The RFC 7517 JWK Set of Ed25519 verification keys (RFC 8037), given as (kid, public key):
/// `{"keys":[{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"alg":"EdDSA","use":"sig"}]}`.
/// [`TokenVerifier::from_jwks_json`] reads it back.
pub fn jwks_json(keys: &[(String, [u8; 32])]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(kid, public_key)| {
            serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(public_key),
                "kid": kid,
                "alg": "EdDSA",
                "use": "sig",
            })
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// Signs attestation tokens with an Ed25519 key derived from a 32-byte seed.
///
/// No `Clone`, and `Debug` shows only the key id. ring's key pair keeps the expanded private key
/// for the signer's lifetime, which that crate does not zeroize on drop.
///
/// Signing builds the compact JWS itself (header and claims as JSON, base64url, one ring signature)
/// rather than through `jsonwebtoken`, which parses a PKCS#8 document on every call: that parse
/// was a third of the signing time on the Attest path. Verification stays with `jsonwebtoken`, so a
/// token this signer writes is checked by code it does not share.
pub struct TokenSigner {
    pair: Ed25519KeyPair,
    public_key: [u8; 32],
    kid: String,
}

impl TokenSigner {
    /// The signer of `seed` (the server keeps the seed wrapped under its root key; a new one comes
    /// from [`SecretKey::generate`]).
    pub fn from_seed(seed: &SecretKey<32>) -> Result<Self, Error> {
        // ring refuses only a seed of the wrong length, which the type rules out.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.expose_secret())
            .map_err(|_| Error::InvalidPublicKey("Ed25519"))?;
        let public_key: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| Error::InvalidPublicKey("Ed25519"))?;
        Ok(Self {
            pair,
            kid: jwk_thumbprint(&public_key),
            public_key,
        })
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// A verifier of this signer's tokens (a server verifying its own tokens adds the keys of
    /// other replicas with [`TokenVerifier::new`]).
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier {
            keys: vec![VerificationKey::new(self.kid.clone(), self.public_key)],
            verified: Verified::default(),
        }
    }

    /// The compact JWT of `claims`, with header `{"typ":"JWT","alg":"EdDSA","kid":…}`. Refuses
    /// claims the verifier would refuse whatever the time: wrong `iss` or `aud`, a malformed `sub`,
    /// `jti` or `cnf`, or a lifetime outside 1 to [`MAX_LIFETIME_SECS`].
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, Error> {
        claims.check_issuable()?;
        // Serializing these claims cannot fail (string keys, no maps with other keys), so a
        // failure here is not the caller's: report it without detail.
        let failed = |_| Error::InvalidId {
            kind: "attestation token",
            reason: "signing failed".to_owned(),
        };
        let header = serde_json::to_vec(&JwsHeader {
            typ: "JWT",
            alg: "EdDSA",
            kid: &self.kid,
        })
        .map_err(failed)?;
        let claims = serde_json::to_vec(claims).map_err(failed)?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The protected header of every token, in the order `jsonwebtoken` writes it.
#[derive(Serialize)]
struct JwsHeader<'a> {
    typ: &'static str,
    alg: &'static str,
    kid: &'a str,
}

/// Why a token was refused. Each reason is stable ([`TokenError::reason`]); no message carries any
/// part of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a compact JWT of this service: too long, bad encoding or JSON, an algorithm other than
    /// EdDSA, a `crit` header, or a claim missing or malformed.
    #[error("malformed attestation token")]
    Malformed,
    /// No `kid`, or a `kid` that is not among the verification keys.
    #[error("attestation token signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify under the key its `kid` names.
    #[error("attestation token signature does not verify")]
    BadSignature,
    /// `exp` is not in the future.
    #[error("attestation token expired")]
    Expired,
    /// `nbf` or `iat` is further in the future than the allowed clock skew.
    #[error("attestation token not yet valid")]
    NotYetValid,
    /// `iss` is not [`ISSUER`] or `aud` is not [`AUDIENCE`].
    #[error("attestation token has the wrong issuer or audience")]
    WrongIssuerOrAudience,
}

impl TokenError {
    /// The stable reason code given to callers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "token_malformed",
            Self::UnknownKey => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongIssuerOrAudience => "token_wrong_audience",
        }
    }
}

struct VerificationKey {
    kid: String,
    public_key: [u8; 32],
    decoding: DecodingKey,
}

impl VerificationKey {
    fn new(kid: String, public_key: [u8; 32]) -> Self {
        Self {
            decoding: DecodingKey::from_ed_der(&public_key),
            kid,
            public_key,
        }
    }
}

/// Verifies attestation tokens against a fixed set of Ed25519 keys, each named by its `kid`.
///
/// A workload presents the same token on every release for its lifetime, so the verifier
/// remembers the claims of up to [`VERIFIED_TOKENS`] tokens whose signature it has verified, keyed
/// by the whole token: the same bytes under the same keys verify the same way, and the keys of a
/// verifier never change (a new key set is a new verifier, which starts empty). The time checks
/// run on every call, remembered or not; refusals are not remembered.
pub struct TokenVerifier {
    keys: Vec<VerificationKey>,
    verified: Verified,
}

/// How many verified tokens a [`TokenVerifier`] remembers.
pub const VERIFIED_TOKENS: usize = 1024;

/// The claims of tokens whose signature and shape verified, by token.
#[derive(Default)]
struct Verified(std::sync::Mutex<std::collections::HashMap<Box<str>, TokenClaims>>);

impl Verified {
    fn get(&self, token: &str) -> Option<TokenClaims> {
        self.0.lock().ok()?.get(token).cloned()
    }

    /// Remembers `claims`; when full, forgets the tokens expired at `now` first, and all of them
    /// if none has.
    fn insert(&self, token: &str, claims: &TokenClaims, now: i64) {
        let Ok(mut map) = self.0.lock() else { return };
        if map.len() >= VERIFIED_TOKENS {
            map.retain(|_, c| c.exp > now);
            if map.len() >= VERIFIED_TOKENS {
                map.clear();
            }
        }
        map.insert(token.into(), claims.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl TokenVerifier {
    /// A verifier of the keys given as (kid, public key). Refuses an empty set, an empty kid and a
    /// kid given twice.
    pub fn new(keys: &[(String, [u8; 32])]) -> Result<Self, Error> {
        if keys.is_empty() {
            return Err(key_set_error("no keys".to_owned()));
        }
        for (i, (kid, _)) in keys.iter().enumerate() {
            if kid.is_empty() {
                return Err(key_set_error(format!("keys[{i}].kid is empty")));
            }
            if keys[..i].iter().any(|(other, _)| other == kid) {
                return Err(key_set_error(format!("keys[{i}].kid is given twice")));
            }
        }
        Ok(Self {
            keys: keys
                .iter()
                .map(|(kid, public_key)| VerificationKey::new(kid.clone(), *public_key))
                .collect(),
            verified: Verified::default(),
        })
    }

    /// A verifier of the keys of a JWK Set as [`jwks_json`] writes it. Every key must be an
    /// Ed25519 key (`kty` `OKP`, `crv` `Ed25519`) with a `kid`; `alg`, if present, must be `EdDSA`
    /// and `use`, if present, `sig`.
    pub fn from_jwks_json(json: &str) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct JwkSet {
            keys: Vec<Jwk>,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kty: Option<String>,
            crv: Option<String>,
            x: Option<String>,
            kid: Option<String>,
            alg: Option<String>,
            #[serde(rename = "use")]
            use_: Option<String>,
        }

        let set: JwkSet = serde_json::from_str(json)
            .map_err(|_| key_set_error("not a JSON object with a `keys` array".to_owned()))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.into_iter().enumerate() {
            let bad = |what: &str| key_set_error(format!("keys[{i}].{what}"));
            if jwk.kty.as_deref() != Some("OKP") {
                return Err(bad("kty must be `OKP`"));
            }
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(bad("crv must be `Ed25519`"));
            }
            if jwk.alg.as_deref().is_some_and(|alg| alg != "EdDSA") {
                return Err(bad("alg must be `EdDSA`"));
            }
            if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
                return Err(bad("use must be `sig`"));
            }
            let public_key = jwk
                .x
                .as_deref()
                .and_then(decode_32)
                .ok_or_else(|| bad("x must be 32 bytes, base64url without padding"))?;
            let kid = jwk.kid.ok_or_else(|| bad("kid is missing"))?;
            keys.push((kid, public_key));
        }
        Self::new(&keys)
    }

    /// The keys, as (kid, public key), e.g. for [`jwks_json`].
    pub fn keys(&self) -> Vec<(String, [u8; 32])> {
        self.keys.iter().map(|k| (k.kid.clone(), k.public_key)).collect()
    }

    /// Verifies a compact JWT at time `now_unix` (seconds since the Unix epoch) and returns its
    /// claims: the signature under the key its `kid` names (EdDSA only), `iss` and `aud`, the
    /// formats of the claims, `now_unix < exp`, and `nbf` and `iat` at most [`CLOCK_SKEW_SECS`]
    /// after `now_unix`.
    ///
    /// It does not check that the token is presented by the principal it was issued to, nor the
    /// hardware's current registry status: the caller does.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<TokenClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let claims = match self.verified.get(token) {
            Some(claims) => claims,
            None => {
                let claims = self.verify_signed(token)?;
                self.verified.insert(token, &claims, now_unix);
                claims
            }
        };
        if now_unix >= claims.exp {
            return Err(TokenError::Expired);
        }
        let latest = now_unix.saturating_add(CLOCK_SKEW_SECS);
        if claims.nbf > latest || claims.iat > latest {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// Everything [`TokenVerifier::verify`] checks but the time: the header, the key, the
    /// signature, the issuer, the audience and the claims' shape.
    fn verify_signed(&self, token: &str) -> Result<TokenClaims, TokenError> {
        #[derive(Deserialize)]
        struct JoseHeader {
            alg: String,
            kid: Option<String>,
            crit: Option<serde::de::IgnoredAny>,
        }

        let mut parts = token.split('.');
        let (Some(header), Some(_payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        // The header is read here, before any key is chosen, so that the algorithm is ours to
        // decide: a token cannot pick `none`, an HMAC keyed with our public key, or a key it
        // carries itself.
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?;
        let header: JoseHeader = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
        if header.alg != "EdDSA" || header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(TokenError::UnknownKey)?;

        let claims = jsonwebtoken::decode::<TokenClaims>(token, &key.decoding, &signature_only())
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            })?
            .claims;

        if claims.iss != ISSUER || claims.aud != AUDIENCE {
            return Err(TokenError::WrongIssuerOrAudience);
        }
        claims.check_shape().map_err(|_| TokenError::Malformed)?;
        Ok(claims)
    }
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.kid)).finish()
    }
}

/// `jsonwebtoken`'s validation reduced to the EdDSA signature: its time checks read the system
/// clock, so [`TokenVerifier::verify`] checks the claims itself against the time it is given.
fn signature_only() -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation
}

fn key_set_error(reason: String) -> Error {
    Error::InvalidPolicy {
        document: "token key set",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    // RFC 8032 §7.1, TEST 1.
    const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn seed(hex_seed: &str) -> SecretKey<32> {
        let mut bytes = hex::decode(hex_seed).unwrap();
        SecretKey::from_slice(&mut bytes).unwrap()
    }

    /// RFC 8410 §7 / RFC 5958 v1 PKCS#8 of an Ed25519 private key, up to the 32-byte seed:
    /// SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }.
    const PKCS8_ED25519_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];

    /// The v1 PKCS#8 document (RFC 8410) of an Ed25519 seed, as `jsonwebtoken` and ring take it
    /// (the signer's cross-check against `jsonwebtoken::encode`).
    fn ed25519_pkcs8(seed: &SecretKey<32>) -> zeroize::Zeroizing<Vec<u8>> {
        // The exact capacity up front, so the vector never reallocates and leaves a copy behind.
        let mut der = zeroize::Zeroizing::new(Vec::with_capacity(PKCS8_ED25519_PREFIX.len() + 32));
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(seed.expose_secret());
        der
    }

    fn signer() -> TokenSigner {
        TokenSigner::from_seed(&SecretKey::generate().unwrap()).unwrap()
    }

    fn claims_at(now: i64) -> TokenClaims {
        let mut kms = ReleaseClaims::new();
        kms.insert_str("tee", "snp")
            .insert_str("country", "DE")
            .insert_int("snp.report_version", 3)
            .insert_bool("danger_test_root", false);
        TokenClaims::new(
            &format!("hw-{}", "ab".repeat(16)),
            "spiffe://example.org/workload",
            &[9u8; 32],
            kms,
            now,
            300,
        )
        .unwrap()
    }

    /// Signs without the checks of [`TokenSigner::sign`], to build tokens the verifier must refuse.
    fn sign_raw(signer: &TokenSigner, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let message = format!("{h}.{p}");
        let sig = URL_SAFE_NO_PAD.encode(signer.pair.sign(message.as_bytes()));
        format!("{message}.{sig}")
    }

    fn eddsa_header(signer: &TokenSigner) -> serde_json::Value {
        serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": signer.kid()})
    }

    fn parts(token: &str) -> Vec<Vec<u8>> {
        token.split('.').map(|p| URL_SAFE_NO_PAD.decode(p).unwrap()).collect()
    }

    fn join(parts: &[Vec<u8>]) -> String {
        parts
            .iter()
            .map(|p| URL_SAFE_NO_PAD.encode(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn round_trip() {
        let signer = signer();
        let claims = claims_at(NOW);
        let token = signer.sign(&claims).unwrap();
        let got = signer.verifier().verify(&token, NOW).unwrap();
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::to_value(&claims).unwrap()
        );
        assert_eq!(got.hpke_public_key().unwrap(), [9u8; 32]);
        assert_eq!(got.jti.len(), 32);
        assert_ne!(got.jti, claims_at(NOW).jti, "token ids are random");

        let header: serde_json::Value = serde_json::from_slice(&parts(&token)[0]).unwrap();
        assert_eq!(header, eddsa_header(&signer));
        let payload: serde_json::Value = serde_json::from_slice(&parts(&token)[1]).unwrap();
        assert_eq!(payload["iss"], "kms");
        assert_eq!(payload["aud"], "kms-release");
        assert_eq!(payload["exp"], NOW + 300);
        assert_eq!(payload["cnf"]["hpke_x25519"], URL_SAFE_NO_PAD.encode([9u8; 32]));
        assert_eq!(payload["kms"]["snp.report_version"], 3);
        assert_eq!(payload["kms"]["danger_test_root"], false);
    }

    #[test]
    fn validity_window_uses_the_given_time() {
        let signer = signer();
        let verifier = signer.verifier();
        let token = signer.sign(&claims_at(NOW)).unwrap();
        assert!(verifier.verify(&token, NOW + 299).is_ok());
        assert_eq!(verifier.verify(&token, NOW + 300).unwrap_err(), TokenError::Expired);
        assert_eq!(verifier.verify(&token, i64::MAX).unwrap_err(), TokenError::Expired);
        assert!(verifier.verify(&token, NOW - 60).is_ok());
        assert_eq!(verifier.verify(&token, NOW - 61).unwrap_err(), TokenError::NotYetValid);
        assert_eq!(verifier.verify(&token, i64::MIN).unwrap_err(), TokenError::NotYetValid);

        // nbf alone in the future.
        let mut claims = serde_json::to_value(claims_at(NOW)).unwrap();
        claims["nbf"] = (NOW + 61).into();
        let token = sign_raw(&signer, &eddsa_header(&signer), &claims);
        assert_eq!(verifier.verify(&token, NOW).unwrap_err(), TokenError::NotYetValid);
        assert!(verifier.verify(&token, NOW + 1).is_ok());
    }

    #[test]
    fn refuses_tampering_and_other_keys() {
        let signer = signer();
        let verifier = signer.verifier();
        let token = signer.sign(&claims_at(NOW)).unwrap();

        let mut p = parts(&token);
        let i = p[1].iter().position(|&b| b == b'w').unwrap(); // in "workload"
        p[1][i] = b'W';
        assert_eq!(verifier.verify(&join(&p), NOW).unwrap_err(), TokenError::BadSignature);

        let mut p = parts(&token);
        p[2][5] ^= 1;
        assert_eq!(verifier.verify(&join(&p), NOW).unwrap_err(), TokenError::BadSignature);
        let mut p = parts(&token);
        p[2].pop();
        assert_eq!(verifier.verify(&join(&p), NOW).unwrap_err(), TokenError::BadSignature);

        // Another key: same kid forged, or its own kid.
        let other = self::signer();
        let forged = sign_raw(
            &other,
            &eddsa_header(&signer),
            &serde_json::to_value(claims_at(NOW)).unwrap(),
        );
        assert_eq!(verifier.verify(&forged, NOW).unwrap_err(), TokenError::BadSignature);
        let foreign = other.sign(&claims_at(NOW)).unwrap();
        assert_eq!(verifier.verify(&foreign, NOW).unwrap_err(), TokenError::UnknownKey);

        // No kid.
        let no_kid = sign_raw(
            &signer,
            &serde_json::json!({"alg": "EdDSA", "typ": "JWT"}),
            &serde_json::to_value(claims_at(NOW)).unwrap(),
        );
        assert_eq!(verifier.verify(&no_kid, NOW).unwrap_err(), TokenError::UnknownKey);

        // A key carried in the header is never used.
        let embedded = sign_raw(
            &other,
            &serde_json::json!({"alg": "EdDSA", "kid": other.kid(), "jwk": {
                "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(other.public_key())}}),
            &serde_json::to_value(claims_at(NOW)).unwrap(),
        );
        assert_eq!(verifier.verify(&embedded, NOW).unwrap_err(), TokenError::UnknownKey);
    }

    #[test]
    fn refuses_other_algorithms() {
        let signer = signer();
        let verifier = signer.verifier();
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_string(&claims_at(NOW)).unwrap());
        let header =
            |alg: &str| URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{}"}}"#, signer.kid()));

        for alg in ["none", "None", "NONE"] {
            let unsigned = format!("{}.{claims}.", header(alg));
            assert_eq!(
                verifier.verify(&unsigned, NOW).unwrap_err(),
                TokenError::Malformed,
                "{alg}"
            );
        }
        // HMAC keyed with the public key, the classic algorithm confusion, and with the kid.
        for (alg, hmac_alg) in [
            ("HS256", ring::hmac::HMAC_SHA256),
            ("HS384", ring::hmac::HMAC_SHA384),
            ("HS512", ring::hmac::HMAC_SHA512),
        ] {
            let message = format!("{}.{claims}", header(alg));
            for secret in [signer.public_key().as_slice(), signer.kid().as_bytes()] {
                let tag = ring::hmac::sign(&ring::hmac::Key::new(hmac_alg, secret), message.as_bytes());
                let token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag));
                assert_eq!(
                    verifier.verify(&token, NOW).unwrap_err(),
                    TokenError::Malformed,
                    "{alg}"
                );
            }
        }
        // An EdDSA signature under another algorithm name, and a crit header.
        for header in [
            serde_json::json!({"alg": "ES256", "kid": signer.kid()}),
            serde_json::json!({"alg": "Ed25519", "kid": signer.kid()}),
            serde_json::json!({"alg": "EdDSA", "kid": signer.kid(), "crit": ["exp"]}),
            serde_json::json!({"alg": ["EdDSA"], "kid": signer.kid()}),
            serde_json::json!({"kid": signer.kid()}),
        ] {
            let token = sign_raw(&signer, &header, &serde_json::to_value(claims_at(NOW)).unwrap());
            assert_eq!(
                verifier.verify(&token, NOW).unwrap_err(),
                TokenError::Malformed,
                "{header}"
            );
        }
    }

    #[test]
    fn refuses_wrong_issuer_audience_and_malformed_claims() {
        let signer = signer();
        let verifier = signer.verifier();
        let with = |field: &str, value: serde_json::Value| {
            let mut claims = serde_json::to_value(claims_at(NOW)).unwrap();
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(field);
            } else {
                claims[field] = value;
            }
            verifier.verify(&sign_raw(&signer, &eddsa_header(&signer), &claims), NOW)
        };
        for (field, value) in [("aud", "kms-admin".into()), ("aud", "".into()), ("iss", "kms2".into())] {
            assert_eq!(with(field, value).unwrap_err(), TokenError::WrongIssuerOrAudience);
        }
        for (field, value) in [
            ("aud", serde_json::json!(["kms-release"])),
            ("exp", serde_json::json!(NOW as f64 + 300.5)),
            ("exp", serde_json::json!((NOW + 300).to_string())),
            ("exp", (NOW + 601).into()),
            ("exp", serde_json::Value::Null),
            ("iat", serde_json::Value::Null),
            ("sub", "hw-ABABABABABABABABABABABABABABABAB".into()),
            ("sub", "hw-abab".into()),
            ("jti", "00".into()),
            (
                "cnf",
                serde_json::json!({"hpke_x25519": URL_SAFE_NO_PAD.encode([1u8; 31])}),
            ),
            (
                "cnf",
                serde_json::json!({"hpke_x25519": format!("{}=", URL_SAFE_NO_PAD.encode([1u8; 32]))}),
            ),
            ("kms", serde_json::json!([])),
            ("kms", serde_json::json!({"tee": {"nested": 1}})),
            ("kms", serde_json::json!({"tee": null})),
            ("principal", serde_json::Value::Null),
        ] {
            assert_eq!(
                with(field, value.clone()).unwrap_err(),
                TokenError::Malformed,
                "{field}: {value}"
            );
        }
        assert!(with("kms", serde_json::json!({})).is_ok());
    }

    #[test]
    fn refuses_garbage_and_oversize() {
        let signer = signer();
        let verifier = signer.verifier();
        for garbage in [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b",
            "eyJhbGciOiJFZERTQSJ9",
            "é.é.é",
            "eyJhbGciOiJFZERTQSJ9==.e30.AAAA",
        ] {
            assert_eq!(
                verifier.verify(garbage, NOW).unwrap_err(),
                TokenError::Malformed,
                "{garbage}"
            );
        }
        // {"alg":"EdDSA"} with no kid: no key to try.
        assert_eq!(
            verifier.verify("eyJhbGciOiJFZERTQSJ9.e30.", NOW).unwrap_err(),
            TokenError::UnknownKey
        );
        let token = signer.sign(&claims_at(NOW)).unwrap();
        assert_eq!(
            verifier.verify(&format!("{token}.x"), NOW).unwrap_err(),
            TokenError::Malformed
        );
        assert_eq!(
            verifier.verify(&format!("{token}="), NOW).unwrap_err(),
            TokenError::Malformed
        );
        assert_eq!(
            verifier.verify(&format!(" {token}"), NOW).unwrap_err(),
            TokenError::Malformed
        );
        assert_eq!(
            verifier.verify(&"a".repeat(MAX_TOKEN_LEN + 1), NOW).unwrap_err(),
            TokenError::Malformed
        );

        // Correctly signed, but over the limit.
        let mut claims = claims_at(NOW);
        for i in 0..20 {
            claims.kms.insert_str(format!("padding{i}"), "x".repeat(1000));
        }
        let big = signer.sign(&claims).unwrap();
        assert!(big.len() > MAX_TOKEN_LEN);
        assert_eq!(verifier.verify(&big, NOW).unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn errors_have_stable_reasons_and_never_echo_the_token() {
        let signer = signer();
        let token = signer.sign(&claims_at(NOW)).unwrap();
        let err = signer.verifier().verify(&token, NOW + 1000).unwrap_err();
        assert_eq!(err.reason(), "token_expired");
        assert!(!err.to_string().contains(&token[..20]));
        assert!(!format!("{err:?}").contains(&token[..20]));
        let reasons = [
            TokenError::Malformed,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongIssuerOrAudience,
        ]
        .map(|e| e.reason());
        assert_eq!(
            reasons,
            [
                "token_malformed",
                "token_unknown_key",
                "token_bad_signature",
                "token_expired",
                "token_not_yet_valid",
                "token_wrong_audience"
            ]
        );
    }

    #[test]
    fn sign_refuses_claims_the_verifier_would_refuse() {
        let signer = signer();
        let mut claims = claims_at(NOW);
        claims.aud = "other".into();
        assert!(signer.sign(&claims).is_err());
        let mut claims = claims_at(NOW);
        claims.exp = claims.iat + MAX_LIFETIME_SECS + 1;
        assert!(signer.sign(&claims).is_err());
        let mut claims = claims_at(NOW);
        claims.sub = "machine-1".into();
        assert!(signer.sign(&claims).is_err());

        let kms = ReleaseClaims::new();
        let sub = format!("hw-{}", "0".repeat(32));
        assert!(TokenClaims::new(&sub, "p", &[1u8; 32], kms.clone(), NOW, 0).is_err());
        assert!(TokenClaims::new(&sub, "p", &[1u8; 32], kms.clone(), NOW, 601).is_err());
        assert!(TokenClaims::new(&sub, "p", &[1u8; 32], kms.clone(), i64::MAX, 10).is_err());
        assert!(TokenClaims::new(&sub, "p", &[1u8; 31], kms.clone(), NOW, 10).is_err());
        assert!(TokenClaims::new("hw-1", "p", &[1u8; 32], kms.clone(), NOW, 10).is_err());
        assert!(TokenClaims::new(&sub, "p", &[1u8; 32], kms, NOW, 600).is_ok());
    }

    #[test]
    fn jwks_round_trip_and_key_rotation() {
        let old = signer();
        let new = signer();
        let jwks = jwks_json(&[
            (old.kid().to_owned(), old.public_key()),
            (new.kid().to_owned(), new.public_key()),
        ]);
        let value: serde_json::Value = serde_json::from_str(&jwks).unwrap();
        assert_eq!(
            value["keys"][1],
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(new.public_key()),
                "kid": new.kid(), "alg": "EdDSA", "use": "sig"})
        );
        let verifier = TokenVerifier::from_jwks_json(&jwks).unwrap();
        assert_eq!(verifier.keys()[0], (old.kid().to_owned(), old.public_key()));
        for signer in [&old, &new] {
            let token = signer.sign(&claims_at(NOW)).unwrap();
            assert!(verifier.verify(&token, NOW).is_ok());
        }
        assert_eq!(format!("{verifier:?}"), format!("[{:?}, {:?}]", old.kid(), new.kid()));
    }

    #[test]
    fn jwks_refusals() {
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let ok = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"});
        assert!(TokenVerifier::from_jwks_json(&serde_json::json!({"keys": [ok]}).to_string()).is_ok());
        let mut bad_sets = vec![
            "".to_owned(),
            "[]".to_owned(),
            r#"{"keys":{}}"#.to_owned(),
            r#"{"keys":[]}"#.to_owned(),
            serde_json::json!({"keys": [ok, ok]}).to_string(),
        ];
        for (field, value) in [
            ("kty", serde_json::json!("EC")),
            ("crv", serde_json::json!("X25519")),
            ("crv", serde_json::Value::Null),
            ("alg", serde_json::json!("HS256")),
            ("use", serde_json::json!("enc")),
            ("x", serde_json::json!(URL_SAFE_NO_PAD.encode([7u8; 33]))),
            ("x", serde_json::json!(format!("{x}="))),
            ("x", serde_json::Value::Null),
            ("kid", serde_json::Value::Null),
            ("kid", serde_json::json!("")),
        ] {
            let mut key = ok.clone();
            if value.is_null() {
                key.as_object_mut().unwrap().remove(field);
            } else {
                key[field] = value;
            }
            bad_sets.push(serde_json::json!({ "keys": [key] }).to_string());
        }
        for set in bad_sets {
            assert!(TokenVerifier::from_jwks_json(&set).is_err(), "{set}");
        }
        assert!(TokenVerifier::new(&[]).is_err());
    }

    #[test]
    fn rfc8037_thumbprint() {
        // RFC 8037 appendix A.3.
        let x: [u8; 32] = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(jwk_thumbprint(&x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        // The same key is RFC 8032's TEST 1, so a signer from its seed has that kid.
        assert_eq!(hex::encode(x), RFC8032_PUBLIC);
        let signer = TokenSigner::from_seed(&seed(RFC8032_SEED)).unwrap();
        assert_eq!(signer.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(hex::encode(signer.public_key()), RFC8032_PUBLIC);
    }

    #[test]
    fn pkcs8_from_rfc8032_seed() {
        let pkcs8 = ed25519_pkcs8(&seed(RFC8032_SEED));
        assert_eq!(pkcs8.len(), 48);
        assert_eq!(hex::encode(&pkcs8[..16]), "302e020100300506032b657004220420");
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap();
        assert_eq!(hex::encode(pair.public_key().as_ref()), RFC8032_PUBLIC);
        // RFC 8032 TEST 1: the signature of the empty message, by the signer's own key pair too.
        let test1 = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
        assert_eq!(hex::encode(pair.sign(b"")), test1);
        let signer = TokenSigner::from_seed(&seed(RFC8032_SEED)).unwrap();
        assert_eq!(hex::encode(signer.pair.sign(b"")), test1);
    }

    /// The signer writes its JWS itself; Ed25519 is deterministic, so `jsonwebtoken`, given the
    /// same key, header and claims, must write the same token byte for byte.
    #[test]
    fn sign_writes_what_jsonwebtoken_writes() {
        let seed = SecretKey::generate().unwrap();
        let signer = TokenSigner::from_seed(&seed).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ed_der(&ed25519_pkcs8(&seed));
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.kid().to_owned());
        for now in [NOW, NOW + 1, 1] {
            let claims = claims_at(now);
            assert_eq!(
                signer.sign(&claims).unwrap(),
                jsonwebtoken::encode(&header, &claims, &key).unwrap()
            );
        }
    }

    /// The verifier remembers verified tokens, but checks the time of each presentation and
    /// never remembers a refusal; it forgets when full.
    #[test]
    fn verified_tokens_are_remembered_but_their_time_is_checked_every_time() {
        let signer = signer();
        let verifier = signer.verifier();
        let claims = claims_at(NOW);
        let token = signer.sign(&claims).unwrap();
        assert_eq!(verifier.verify(&token, NOW).unwrap().jti, claims.jti);
        assert_eq!(verifier.verified.len(), 1);
        // Remembered: the same answer, and the time checks still apply.
        assert_eq!(verifier.verify(&token, NOW + 1).unwrap().jti, claims.jti);
        assert_eq!(verifier.verify(&token, claims.exp).unwrap_err(), TokenError::Expired);
        assert_eq!(
            verifier.verify(&token, NOW - CLOCK_SKEW_SECS - 1).unwrap_err(),
            TokenError::NotYetValid
        );
        assert_eq!(verifier.verified.len(), 1);

        // A refusal is not remembered, and a remembered token does not vouch for another.
        let (body, sig) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[0] ^= 1;
        let forged = format!("{body}.{}", URL_SAFE_NO_PAD.encode(&sig));
        for _ in 0..2 {
            assert_eq!(verifier.verify(&forged, NOW).unwrap_err(), TokenError::BadSignature);
        }
        assert_eq!(verifier.verified.len(), 1);
        // Another key set starts with nothing remembered.
        assert_eq!(
            TokenSigner::from_seed(&SecretKey::generate().unwrap())
                .unwrap()
                .verifier()
                .verify(&token, NOW)
                .unwrap_err(),
            TokenError::UnknownKey
        );

        // Bounded: the tokens expired by now go first, then all of them.
        for i in 1..VERIFIED_TOKENS {
            let t = signer.sign(&claims_at(NOW + i64::try_from(i).unwrap() % 100)).unwrap();
            verifier.verify(&t, NOW + 100).unwrap();
        }
        assert_eq!(verifier.verified.len(), VERIFIED_TOKENS);
        let late = signer.sign(&claims_at(NOW + 500)).unwrap();
        verifier.verify(&late, NOW + 500).unwrap();
        assert!(verifier.verified.len() <= VERIFIED_TOKENS);
        // Every token of `claims_at(t)` lives 300 s: by NOW + 500 all the earlier ones expired.
        assert!(
            verifier.verified.len() < VERIFIED_TOKENS,
            "expired tokens were not forgotten"
        );
    }

    #[test]
    fn signer_debug_shows_only_the_kid() {
        let signer = TokenSigner::from_seed(&seed(RFC8032_SEED)).unwrap();
        let debug = format!("{signer:?}");
        assert!(debug.contains(signer.kid()));
        assert!(!debug.contains(RFC8032_SEED) && !debug.contains("9d61"));
    }
}
