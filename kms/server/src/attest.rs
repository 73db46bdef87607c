//! The attested release engine: challenges, evidence verification against the hardware registry,
//! token issuance and verification, and the release decision. gRPC-free: the handlers in
//! `ops::attestation`, `ops::data` and `ops::hardware` call it.
//!
//! What holds whatever a key's release policy says: a token is issued only for
//! evidence that verified, is bound to a fresh challenge and the workload's HPKE key, and comes
//! from enrolled, active hardware in an allowed jurisdiction; every release re-reads the machine's
//! registry entry and the key's policy; plaintext is returned only HPKE-sealed to the token's key.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use attestation::snp::{SnpClaims, SnpEvidence, SnpVerifier, REPORT_LEN};
use attestation::tpm::ek::EkCaBundle;
use attestation::tpm::{TpmClaims, TpmEvidence, TpmTrust, TpmVerifier};
use attestation::{Check, Refusal, Verifier};
use kms_core::claims::ReleaseClaims;
use kms_core::ids::{KeyId, KeyVersion, Principal};
use kms_core::jurisdiction::Country;

use kms_core::secret::SecretKey;
use kms_core::token::{TokenClaims, TokenSigner, TokenVerifier};

use crate::config::{AttestationConfig, ConfigError};
use crate::error::ApiError;
use crate::seal::Seal;
use crate::storage::{ChallengeUse, HardwareRow, HardwareStatus, Identity, KeyRow, Store, TokenKeyRow, TpmClockRow};
use kms_proto::Reason;

/// Token issuer and audience.
pub const TOKEN_ISSUER: &str = "kms";

/// The token keys of this deployment, unwrapped while the server is unsealed.
struct TokenKeys {
    signer: TokenSigner,
    verifier: TokenVerifier,
    /// (kid, public key) of every trusted key, for the JWKS.
    public: Vec<(String, [u8; 32])>,
}

/// A verified token and the inputs of a release decision.
#[derive(Debug)]
pub struct Authorized {
    /// The verified token.
    pub token: TokenClaims,
    /// The claims the policy saw: the token's, with the registry's current location fields.
    pub claims: ReleaseClaims,
    /// The key, read fresh.
    pub key: KeyRow,
}

/// What Attest returns (its `Debug` leaves out the token: a bearer credential).
pub struct Issued {
    /// The JWT.
    pub token: String,
    /// Its claims.
    pub claims: TokenClaims,
    /// The machine.
    pub hardware: HardwareRow,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"<redacted>")
            .field("claims", &self.claims)
            .field("hardware", &self.hardware)
            .finish()
    }
}

/// Evidence as received.
#[derive(Debug)]
pub enum Evidence {
    /// SEV-SNP.
    Snp(SnpEvidence),
    /// TPM 2.0.
    Tpm(TpmEvidence),
}

/// The engine.
pub struct Attestation {
    store: Store,
    seal: Arc<Seal>,
    config: AttestationConfig,
    snp: SnpVerifier,
    ek_cas: Option<EkCaBundle>,
    tokens: RwLock<Option<Arc<TokenKeys>>>,
    token_init: tokio::sync::Mutex<()>,
    last_reload: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestation")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    kms_core::now_unix_ms()
}

fn ttl_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Plaintext HPKE-sealed to an attested workload's key, signed by this node.
pub struct SealedRelease {
    /// HPKE encapsulated key.
    pub encapsulated_key: Vec<u8>,
    /// HPKE ciphertext of the plaintext.
    pub ciphertext: Vec<u8>,
    /// This node's public key.
    pub node_public_key: Vec<u8>,
    /// The node's signature over the release (`kms_node::message::release`).
    pub node_signature: Vec<u8>,
}

/// An Attest answer: the token and its facts, signed by this node (`Node::sign_attest`); its
/// `Debug` leaves out the token.
pub struct Attested {
    /// The release token (JWT).
    pub token: String,
    /// Its expiry.
    pub expires_unix_ms: i64,
    /// The claims it carries, as JSON.
    pub claims_json: String,
    /// The registry entry of the machine.
    pub hardware_id: String,
    /// The token id.
    pub token_id: String,
    /// This node's public key.
    pub node_public_key: Vec<u8>,
    /// The node's signature over the answer (`kms_node::message::AttestAnswer`).
    pub node_signature: Vec<u8>,
}

impl std::fmt::Debug for Attested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attested")
            .field("token", &"<redacted>")
            .field("expires_unix_ms", &self.expires_unix_ms)
            .field("claims_json", &self.claims_json)
            .field("hardware_id", &self.hardware_id)
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

/// A TPM credential challenge (BeginTpmEnrollment), for the machine to activate.
#[derive(Debug)]
pub struct TpmChallenge {
    /// The enrolment attempt.
    pub enrollment_id: String,
    /// TPM2B_ID_OBJECT.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET.
    pub encrypted_secret: Vec<u8>,
    /// When the attempt expires.
    pub expires_unix_ms: i64,
    /// The AK's name, as the server computed it.
    pub ak_name: String,
    /// The EK's digest.
    pub ek_digest: String,
}

/// The stable reason for an evidence refusal.
pub fn refusal_reason(check: Check) -> Reason {
    match check {
        Check::Malformed => Reason::EvidenceMalformed,
        Check::CertificateChain => Reason::EvidenceCertificateChain,
        Check::CertificateValidity => Reason::EvidenceCertificateValidity,
        Check::Signature => Reason::EvidenceSignature,
        Check::Binding => Reason::EvidenceBindingMismatch,
        Check::Version => Reason::EvidenceUnsupportedVersion,
        Check::GuestPolicy => Reason::EvidenceGuestPolicy,
        Check::Tcb => Reason::EvidenceTcb,
        Check::Identity => Reason::EvidenceHardwareIdentity,
        Check::Vmpl => Reason::EvidenceVmpl,
        Check::SigningKey => Reason::EvidenceSigningKey,
        Check::Pcrs => Reason::EvidencePcrs,
        Check::Counters => Reason::EvidenceCounters,
        Check::EkProfile => Reason::EvidenceEkProfile,
        _ => Reason::EvidenceRefused,
    }
}

/// An evidence refusal of `tee` (`snp`, `tpm`): the caller learns which check failed, the audit
/// log what exactly, the metrics count it by check.
fn refused(tee: &'static str, r: Refusal) -> ApiError {
    crate::telemetry::attestation_refused(tee, r.check.as_str());
    let message = format!(
        "evidence refused: the {} check failed (the audit log has the detail)",
        r.check.as_str()
    );
    ApiError::new(refusal_reason(r.check), message).with_audit_detail(r.to_string())
}

fn db(e: crate::storage::StoreError) -> ApiError {
    e.into()
}

impl Attestation {
    /// The engine for `config`. Fails if the SNP trust or the EK CA bundle cannot be used.
    pub fn new(
        store: Store,
        seal: Arc<Seal>,
        config: AttestationConfig,
        snp_test_roots: Option<attestation::snp::danger::DangerTestRoots>,
    ) -> Result<Self, ConfigError> {
        let mut trust = config.snp.clone();
        if snp_test_roots.is_some() {
            tracing::warn!("danger.snp_test_roots is set: SNP evidence signed by test roots is accepted (claims say danger_test_root)");
            trust.danger_test_roots = snp_test_roots;
        }
        let snp = SnpVerifier::new(trust).map_err(|e| ConfigError(format!("attestation.snp: {e}")))?;
        let ek_cas = match &config.tpm_ek_ca_bundle {
            Some(p) => {
                let pem = std::fs::read(p)
                    .map_err(|e| ConfigError(format!("attestation.tpm_ek_ca_bundle: {}: {e}", p.display())))?;
                Some(
                    EkCaBundle::from_pem(&pem)
                        .map_err(|e| ConfigError(format!("attestation.tpm_ek_ca_bundle: {}: {e}", p.display())))?
                        .with_profile(attestation::tpm::ek::EkProfile {
                            eku_exempt_manufacturers: config.tpm_ek_eku_exempt_manufacturers.clone(),
                        }),
                )
            }
            None => None,
        };
        Ok(Self {
            store,
            seal,
            config,
            snp,
            ek_cas,
            tokens: RwLock::new(None),
            token_init: tokio::sync::Mutex::new(()),
            last_reload: std::sync::Mutex::new(None),
        })
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &AttestationConfig {
        &self.config
    }

    /// The SNP verifier (enrolment verifies reports with it too).
    pub fn snp_verifier(&self) -> &SnpVerifier {
        &self.snp
    }

    /// The EK CA bundle, if TPM enrolment is configured.
    pub fn ek_cas(&self) -> Result<&EkCaBundle, ApiError> {
        self.ek_cas.as_ref().ok_or_else(|| {
            ApiError::new(
                Reason::TpmEnrollmentNotConfigured,
                "this server has no TPM-manufacturer CA bundle (attestation.tpm_ek_ca_bundle): TPM enrolment is off",
            )
        })
    }

    /// Whether an unknown token key id may trigger a reload now: at most once a second.
    fn may_reload(&self) -> bool {
        let Ok(mut last) = self.last_reload.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Drops the unwrapped token signing key (when the server seals).
    pub fn clear(&self) {
        if let Ok(mut t) = self.tokens.write() {
            *t = None;
        }
    }

    // ----- challenges ------------------------------------------------------------------------

    /// A fresh challenge nonce and its expiry.
    pub async fn challenge(&self, principal: &Principal) -> Result<([u8; 32], i64), ApiError> {
        let now = now_ms();
        let open = self.store.open_challenges(principal.as_str(), now).await.map_err(db)?;
        if open >= i64::from(self.config.max_open_challenges) {
            return Err(ApiError::new(
                Reason::TooManyChallenges,
                format!(
                    "{principal} holds {open} open challenges (at most {}): use or let them expire",
                    self.config.max_open_challenges
                ),
            ));
        }
        let expires = now + ttl_ms(self.config.challenge_ttl);
        let nonce = self
            .store
            .integrity()
            .challenge_nonce(principal.as_str(), expires)
            .map_err(db)?;
        self.store
            .insert_challenge(&nonce, principal.as_str(), expires)
            .await
            .map_err(db)?;
        Ok((nonce, expires))
    }

    /// Whether `nonce` is a challenge this service issued to `principal` and that has not
    /// expired, from the nonce itself (its authenticator), before the database is asked.
    fn issued(&self, nonce: &[u8], principal: &Principal) -> Result<(), ApiError> {
        check_nonce_length(nonce)?;
        match self
            .store
            .integrity()
            .challenge_expiry(principal.as_str(), nonce)
            .map_err(db)?
        {
            None => fresh(ChallengeUse::Unknown),
            Some(expires) if expires <= now_ms() => fresh(ChallengeUse::Expired),
            Some(_) => Ok(()),
        }
    }

    /// Uses a nonce once, on any replica.
    async fn consume(&self, nonce: &[u8], principal: &Principal) -> Result<(), ApiError> {
        self.issued(nonce, principal)?;
        fresh(
            self.store
                .consume_challenge(nonce, principal.as_str(), now_ms())
                .await
                .map_err(db)?,
        )
    }

    // ----- evidence --------------------------------------------------------------------------

    /// Uses the challenge `nonce` once (on any replica; refused evidence uses it too), verifies
    /// `evidence` bound to (nonce, hpke key), finds its hardware, and returns the claims the
    /// release policies see.
    pub async fn consume_and_verify(
        &self,
        nonce: &[u8],
        principal: &Principal,
        hpke_public_key: &[u8],
        evidence: &Evidence,
    ) -> Result<(ReleaseClaims, HardwareRow), ApiError> {
        self.issued(nonce, principal)?;
        let now = now_ms() / 1000;
        let ev = match evidence {
            Evidence::Snp(ev) => ev,
            Evidence::Tpm(ev) => {
                self.consume(nonce, principal).await?;
                return self.verify_tpm(nonce, hpke_public_key, ev, now).await;
            }
        };
        let claimed_chip = match attestation::snp::unverified_chip_id(&ev.report) {
            Ok(chip) => chip,
            // No chip id to read the registry by: the nonce is used, and the refusal is the one
            // the verifier gives (it parses the framing first, the same way).
            Err(r) => {
                self.consume(nonce, principal).await?;
                return Err(refused("snp", r));
            }
        };
        // The nonce's use and the registry read are one statement (one round trip). The entry
        // is read by the chip id the report claims, before its signature is checked, and
        // looked at only once the report has verified with that chip id: the answer to a
        // report that does not verify is the same whether or not the chip is enrolled.
        let claimed_hex = claimed_chip.to_hex();
        let (used, entry) = self
            .store
            .consume_challenge_reading_hardware(nonce, principal.as_str(), now_ms(), &claimed_hex)
            .await
            .map_err(db)?;
        fresh(used)?;
        let binding = attestation::binding::snp_report_data(nonce, hpke_public_key);
        let claims = self.snp.verify(ev, &binding, now).map_err(|r| refused("snp", r))?;
        let entry = if claims.chip_id == claimed_chip {
            entry
        } else {
            // Not reached (the verifier reads the same bytes); read the entry again if it is.
            self.store
                .hardware_by_identity(Identity::SnpChipId, &claims.chip_id.to_hex())
                .await
        };
        let hw = self.snp_hardware(&claims, entry.map_err(db)?)?;
        self.check_location(&hw)?;
        Ok((snp_claims(&claims, &hw), hw))
    }

    /// Verifies a TPM quote bound to (nonce, hpke key), finds its machine, and returns the claims
    /// the release policies see. The nonce must already be used.
    async fn verify_tpm(
        &self,
        nonce: &[u8],
        hpke_public_key: &[u8],
        ev: &TpmEvidence,
        now: i64,
    ) -> Result<(ReleaseClaims, HardwareRow), ApiError> {
        // The quote is verified before the registry is consulted, so nobody learns whether an
        // AK is enrolled without a quote that AK signed. The registry lookup by the quoting AK's
        // name is then the enrolled-AK check.
        let binding = attestation::binding::tpm_qualifying_data(nonce, hpke_public_key);
        let verifier = TpmVerifier::new(TpmTrust::ak_checked_by_caller());
        let claims = verifier.verify(ev, &binding, now).map_err(|r| refused("tpm", r))?;
        let ak_hex = claims.ak_name.to_hex();
        let hw = self
            .store
            .hardware_by_identity(Identity::TpmAkName, &ak_hex)
            .await
            .map_err(db)?;
        let hw = active(hw, || format!("no machine is enrolled with TPM AK {ak_hex}"))?;
        self.advance_clock(&ak_hex, &claims).await?;
        self.check_location(&hw)?;
        Ok((tpm_claims(&claims, &hw), hw))
    }

    /// The registry entry `entry` read by a verified report's chip id, checked for it.
    fn snp_hardware(&self, claims: &SnpClaims, entry: Option<HardwareRow>) -> Result<HardwareRow, ApiError> {
        if claims.chip_id_masked {
            return Err(ApiError::new(
                Reason::HardwareNotEnrolled,
                "the report's chip id is masked: the machine cannot be identified",
            ));
        }
        let chip = claims.chip_id.to_hex();
        let hw = active(entry, || {
            format!("no machine is enrolled with SNP chip id {}…", &chip[..16])
        })?;
        if claims.signer == attestation::snp::Signer::Vlek && !hw.snp_accept_vlek {
            return Err(ApiError::new(
                Reason::VlekNotAccepted,
                format!(
                    "the report is VLEK-signed and machine {} was not enrolled to accept VLEK",
                    hw.id
                ),
            ));
        }
        Ok(hw)
    }

    /// Quotes from one AK may not go back in time (reset/restart counters, clock).
    async fn advance_clock(&self, ak_hex: &str, claims: &TpmClaims) -> Result<(), ApiError> {
        let c = &claims.clock_info;
        let next = TpmClockRow {
            ak_name: ak_hex.to_owned(),
            reset_count: c.reset_count,
            restart_count: c.restart_count,
            clock: c.clock,
        };
        for _ in 0..5 {
            let prev = self.store.tpm_clock(ak_hex).await.map_err(db)?;
            if let Some(p) = &prev {
                let earlier = attestation::tpm::ClockInfo {
                    clock: p.clock,
                    reset_count: p.reset_count,
                    restart_count: p.restart_count,
                    safe: true,
                };
                c.check_after(&earlier).map_err(|r| refused("tpm", r))?;
                if p.row == next {
                    return Ok(());
                }
            }
            if self.store.advance_tpm_clock(prev.as_ref(), &next).await.map_err(db)? {
                return Ok(());
            }
        }
        Err(ApiError::new(
            Reason::TpmClockContention,
            "the TPM clock record kept changing; retry",
        ))
    }

    /// The machine's country must still be in an allowed jurisdiction.
    pub fn check_location(&self, hw: &HardwareRow) -> Result<(), ApiError> {
        let allowed = Country::parse(&hw.country)
            .map(|c| self.config.allowed_countries.allows(&c))
            .unwrap_or(false);
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                Reason::HardwareOutsideJurisdiction,
                format!(
                    "machine {} is in {}, outside the allowed jurisdictions",
                    hw.id, hw.country
                ),
            ))
        }
    }

    // ----- tokens ----------------------------------------------------------------------------

    async fn token_keys(&self) -> Result<Arc<TokenKeys>, ApiError> {
        self.seal.root()?;
        if let Some(k) = self.tokens.read().ok().and_then(|t| t.clone()) {
            return Ok(k);
        }
        self.load_token_keys().await
    }

    /// Loads the token keys from the database: creates the first one if there is none, and
    /// trusts a row only if its seed unwraps under the root key and derives the row's public key
    /// and kid. A row written into the database by anyone else (a public key without a seed
    /// wrapped under this root key) is ignored and logged, so it can neither verify a forged
    /// token nor appear in the published key set.
    async fn load_token_keys(&self) -> Result<Arc<TokenKeys>, ApiError> {
        let _one = self.token_init.lock().await;
        if let Some(k) = self.tokens.read().ok().and_then(|t| t.clone()) {
            return Ok(k);
        }
        let root = self.seal.root()?;
        let wrap_id = KeyId::from_bytes(crate::wrap_ids::TOKEN_KEY);
        let mut rows = self.store.token_keys().await.map_err(db)?;
        if rows.is_empty() {
            let seed = SecretKey::<32>::generate()?;
            let signer = TokenSigner::from_seed(&seed)?;
            let version = KeyVersion::new(1).ok_or_else(|| ApiError::new(Reason::TokenKey, "version 1"))?;
            let row = TokenKeyRow {
                version: 1,
                kid: signer.kid().to_owned(),
                public_key: signer.public_key().to_vec(),
                wrapped_seed: root.wrap(wrap_id, version, &seed)?,
                created_unix_ms: now_ms(),
                root_generation: root.generation(),
            };
            // Another replica may win the race: then its key is the one.
            self.store.insert_token_key(&row).await.map_err(db)?;
            rows = self.store.token_keys().await.map_err(db)?;
        }
        let mut signers = Vec::new();
        for row in &rows {
            let signer = KeyVersion::new(row.version)
                .and_then(|v| root.unwrap(wrap_id, v, &row.wrapped_seed).ok())
                .and_then(|seed| TokenSigner::from_seed(&seed).ok())
                .filter(|s| s.kid() == row.kid && s.public_key().as_slice() == row.public_key.as_slice());
            match signer {
                Some(s) => signers.push(s),
                None => tracing::error!(
                    version = row.version,
                    kid = %row.kid,
                    "token key row ignored: its seed does not unwrap under the root key to its public key (altered database?)"
                ),
            }
        }
        let public: Vec<(String, [u8; 32])> = signers.iter().map(|s| (s.kid().to_owned(), s.public_key())).collect();
        let verifier = TokenVerifier::new(&public)?;
        let signer = signers
            .pop()
            .ok_or_else(|| ApiError::new(Reason::TokenKey, "no token signing key unwraps under this root key"))?;
        let keys = Arc::new(TokenKeys {
            signer,
            verifier,
            public,
        });
        if let Ok(mut t) = self.tokens.write() {
            // Checked under the lock that `clear` takes: a Seal that happened meanwhile wins.
            if self.seal.root().is_err() {
                return Err(ApiError::sealed());
            }
            *t = Some(keys.clone());
        }
        Ok(keys)
    }

    /// The JWKS of the token keys this server trusts (each verified against its wrapped seed),
    /// created first if there is none yet. Needs the server unsealed.
    pub async fn jwks(&self) -> Result<String, ApiError> {
        let keys = self.token_keys().await?;
        Ok(kms_core::token::jwks_json(&keys.public))
    }

    /// Issues a token for verified claims.
    pub async fn issue(
        &self,
        principal: &Principal,
        hpke_public_key: &[u8],
        claims: ReleaseClaims,
        hardware: HardwareRow,
    ) -> Result<Issued, ApiError> {
        let keys = self.token_keys().await?;
        let now = now_ms() / 1000;
        let ttl = i64::try_from(self.config.token_ttl.as_secs()).unwrap_or(600);
        let token = TokenClaims::new(&hardware.id, principal.as_str(), hpke_public_key, claims, now, ttl)?;
        let jwt = keys.signer.sign(&token)?;
        Ok(Issued {
            token: jwt,
            claims: token,
            hardware,
        })
    }

    /// Verifies a token for `principal`, re-reads the machine and the key, and evaluates the
    /// key's release policy on the claims. Every refusal names why.
    pub async fn authorize(
        &self,
        jwt: &str,
        principal: &Principal,
        key_id: KeyId,
        audit: &mut crate::audit::Audit,
    ) -> Result<Authorized, ApiError> {
        let keys = self.token_keys().await?;
        let now = now_ms() / 1000;
        let token = match keys.verifier.verify(jwt, now) {
            Ok(t) => t,
            Err(kms_core::token::TokenError::UnknownKey) if self.may_reload() => {
                // Perhaps a key another replica created since this one loaded its keys. Reloads
                // are rate-limited so that tokens with made-up key ids cannot keep the server
                // reading and unwrapping.
                if let Ok(mut t) = self.tokens.write() {
                    *t = None;
                }
                self.load_token_keys().await?.verifier.verify(jwt, now).map_err(|e| {
                    ApiError::new(
                        crate::error::token_reason(&e),
                        format!("attestation token refused: {e}"),
                    )
                })?
            }
            Err(e) => {
                return Err(ApiError::new(
                    crate::error::token_reason(&e),
                    format!("attestation token refused: {e}"),
                ))
            }
        };
        // Named in the audit entry as soon as the signature is known good, refused or not.
        audit.detail("token_id", token.jti.as_str());
        audit.detail("hardware_id", token.sub.as_str());
        if token.principal != principal.as_str() {
            return Err(ApiError::new(
                Reason::TokenPrincipalMismatch,
                format!(
                    "the attestation token was issued to {}, not to {principal}",
                    token.principal
                ),
            ));
        }
        let (hw, key) = self.store.release_inputs(&token.sub, key_id).await.map_err(db)?;
        let key = key.ok_or_else(|| ApiError::new(Reason::KeyNotFound, format!("no key {key_id}")))?;
        let hw = hw.ok_or_else(|| {
            ApiError::new(
                Reason::HardwareNotEnrolled,
                format!("the token's machine {} is not in the registry", token.sub),
            )
        })?;
        if hw.status != HardwareStatus::Active {
            return Err(revoked(&hw));
        }
        self.check_location(&hw)?;
        audit.detail("release_policy_version", key.release_policy_version);
        let mut claims = token.kms.clone();
        location_claims(&mut claims, &hw);
        key.release_policy.evaluate(&claims).map_err(|m| {
            ApiError::new(
                Reason::ReleasePolicyNotMet,
                format!(
                    "the attested claims do not meet release policy version {} of key {}: {}",
                    key.release_policy_version,
                    key.id,
                    m.summary()
                ),
            )
            .with_audit_detail(m.detail().to_owned())
        })?;
        Ok(Authorized { token, claims, key })
    }
}

/// The refusal for a revoked machine; the admin's reason goes to the audit log only.
fn revoked(h: &HardwareRow) -> ApiError {
    ApiError::new(Reason::HardwareRevoked, format!("machine {} is revoked", h.id)).with_audit_detail(format!(
        "revoked by {} at {}: {}",
        h.revoked_by.as_deref().unwrap_or(""),
        h.revoked_unix_ms.unwrap_or(0),
        h.revocation_reason.as_deref().unwrap_or("")
    ))
}

fn check_nonce_length(nonce: &[u8]) -> Result<(), ApiError> {
    if nonce.len() != 32 {
        return Err(ApiError::new(
            Reason::InvalidNonce,
            format!("nonce: {} bytes; a challenge nonce is 32 bytes", nonce.len()),
        ));
    }
    Ok(())
}

/// A nonce's use: fine if it was fresh, else the refusal that says why not.
fn fresh(used: ChallengeUse) -> Result<(), ApiError> {
    match used {
        ChallengeUse::Fresh => Ok(()),
        ChallengeUse::Unknown => Err(ApiError::new(
            Reason::NonceUnknown,
            "this nonce was not issued by this service to this caller (call GetChallenge)",
        )),
        ChallengeUse::Expired => Err(ApiError::new(
            Reason::NonceExpired,
            "the challenge expired: get a new one and attest again",
        )),
        ChallengeUse::Replayed => Err(ApiError::new(
            Reason::NonceReplayed,
            "the challenge was already used: every attestation needs its own",
        )),
    }
}
/// An active registry entry, or the refusal that says why not.
fn active(hw: Option<HardwareRow>, missing: impl FnOnce() -> String) -> Result<HardwareRow, ApiError> {
    match hw {
        Some(h) if h.status == HardwareStatus::Active => Ok(h),
        Some(h) => Err(revoked(&h)),
        None => Err(ApiError::new(Reason::HardwareNotEnrolled, missing())),
    }
}

/// The registry's fields: who and where the machine is.
fn location_claims(c: &mut ReleaseClaims, hw: &HardwareRow) {
    c.insert_str("hardware_id", hw.id.clone());
    c.insert_str("country", hw.country.clone());
    let eu = Country::parse(&hw.country).map(|c| c.is_eu()).unwrap_or(false);
    c.insert_str("jurisdiction", if eu { "EU" } else { "" });
    c.insert_str("site", hw.site.clone());
    c.insert_str("operator", hw.operator.clone());
}

/// The release claims of a verified SNP report on enrolled hardware: the evidence's
/// ([`kms_node::claims::snp`]) and the registry's.
pub fn snp_claims(s: &SnpClaims, hw: &HardwareRow) -> ReleaseClaims {
    let mut c = kms_node::claims::snp(s);
    location_claims(&mut c, hw);
    c
}

/// The release claims of a verified TPM quote from enrolled hardware: the quote's
/// ([`kms_node::claims::tpm`], with the EK digest enrolment verified) and the registry's.
pub fn tpm_claims(t: &TpmClaims, hw: &HardwareRow) -> ReleaseClaims {
    let mut c = kms_node::claims::tpm(t, hw.tpm_ek_digest.as_deref());
    location_claims(&mut c, hw);
    c
}

/// For SNP enrolment: the REPORT_DATA of a report, so it can be verified without a challenge
/// (enrolment names a chip; it does not release anything).
pub fn report_data_of(report: &[u8]) -> Vec<u8> {
    if report.len() == REPORT_LEN {
        report[0x50..0x90].to_vec()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token is a bearer credential: a `{:?}` in a log line must not carry it.
    #[test]
    fn debug_leaves_the_token_out() {
        let answer = Attested {
            token: "eyJhbGciOiJFZERTQSJ9.secret-claims.secret-signature".into(),
            expires_unix_ms: 1,
            claims_json: "{}".into(),
            hardware_id: "hw-1".into(),
            token_id: "t-1".into(),
            node_public_key: vec![1],
            node_signature: vec![2],
        };
        let shown = format!("{answer:?}");
        assert!(
            !shown.contains("secret") && shown.contains("<redacted>") && shown.contains("hw-1"),
            "{shown}"
        );
    }

    fn hw() -> HardwareRow {
        HardwareRow {
            snp_chip_id: None,
            tpm_ek_digest: Some("cd".repeat(32)),
            enrolled_unix_ms: 0,
            ..HardwareRow::example()
        }
    }

    /// The claims the server builds match the schema policies are validated against, so a policy
    /// on any claim the server emits can be written (and none is misspelt on one side).
    #[test]
    fn server_claims_follow_the_claim_schema() {
        use attestation::snp::danger::test_chain::{TestChain, TestChainOptions};
        for product in [attestation::snp::Product::Milan, attestation::snp::Product::Turin] {
            let chain = TestChain::new(TestChainOptions::new(product, attestation::snp::Signer::Vcek)).unwrap();
            let verifier = SnpVerifier::new(chain.trust()).unwrap();
            let report = chain.report();
            let claims = verifier
                .verify(&chain.evidence(&report).unwrap(), &report.report_data, 1_800_000_000)
                .unwrap();
            let c = snp_claims(&claims, &hw());
            c.validate().unwrap();
            for (name, _) in c.iter() {
                assert!(
                    kms_core::claims::claim_type(name).is_some(),
                    "{name} is not in the schema"
                );
            }
            assert_eq!(
                c.get("snp.product").and_then(|v| v.as_str()),
                Some(product.as_str().to_lowercase().as_str())
            );
        }
    }
}
