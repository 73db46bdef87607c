//! Server configuration: a TOML file with environment overrides (`KMSD__SECTION__KEY=value`),
//! checked completely before anything starts. A bad setting is named in the error. Anything that
//! weakens security is under `[danger]` and is never on by default (dev mode turns it on loudly).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kms_core::jurisdiction::AllowedCountries;
use serde::Deserialize;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Database URL: `postgres://…` or `sqlite://PATH`.
    pub database_url: String,
    /// Pool size.
    pub database_max_connections: u32,
    /// How long a call waits for a database connection before it fails with
    /// `database_unavailable`. It also bounds how long kmsd takes to notice that a database which
    /// was down is back: the pool retries a refused connection with a backoff of up to a fifth of
    /// it.
    pub database_acquire_timeout: Duration,
    /// mTLS; `None` only in dev mode (plaintext, loopback).
    pub tls: Option<TlsConfig>,
    /// Countries whose admins may exist.
    pub allowed_countries: AllowedCountries,
    /// How old an admin request's timestamp may be.
    pub admin_request_window: Duration,
    /// How far in the future an admin request's timestamp may be, and how much longer than the
    /// window a request nonce is kept (clocks of admins and replicas differ by at most this).
    pub admin_clock_skew: Duration,
    /// The fingerprints (`sha256:…`, `kmsctl admin fingerprint`) of exactly the admins Init must
    /// name (`admin.init_admins`). Without it Init is refused (outside dev mode), so whoever
    /// reaches an uninitialized server first cannot make it theirs.
    pub init_admins: Option<Vec<String>>,
    /// The fingerprints of the admins who may fetch their share and unseal while the server is
    /// sealed (`admin.custodians`; unset: `init_admins`). A sealed server cannot verify the
    /// database's admin rows (their key is under the root), so without this pin whoever writes
    /// the database could write an admin and a seal record of their own and unseal alone.
    pub custodians: Option<Vec<String>>,
    /// How often every row is read and checked, and missing rows looked for (`integrity`).
    pub integrity_scan_interval: Duration,
    /// How long a quorum proposal stays open (default and maximum).
    pub proposal_ttl: Duration,
    /// How long a replica trusts its cached copy of a key's metadata (state, grants, policy)
    /// before reading it again; changes made through this replica apply at once.
    pub key_cache_ttl: Duration,
    /// How often the destroyer looks for keys whose deletion window has ended.
    pub destroy_interval: Duration,
    /// Tests only, never read from a configuration file: how far ahead of the real clock the
    /// destroyer's clock runs, so a test can see a deletion window end without waiting 7 days
    /// (or writing the database, which kmsd refuses). Zero everywhere else.
    pub danger_destroyer_clock_ahead: Duration,
    /// Most audit entries written in one transaction.
    pub audit_batch_max: usize,
    /// How often a signed audit checkpoint is written (when the chain advanced).
    pub checkpoint_interval: Duration,
    /// The pkcs11 seal's HSM, if configured (`[seal.pkcs11]`).
    pub hsm: Option<HsmSealConfig>,
    /// Where this process's node identity evidence comes from (`[node]`).
    pub node: crate::node::NodeEvidence,
    /// How fast a root rotation re-wraps.
    pub rotation: RotationPace,
    /// Dev mode: the `dev` seal, plaintext on loopback. Never in production.
    pub dev: Option<DevConfig>,
    /// Attested release: challenge and token lifetimes, evidence trust.
    pub attestation: AttestationConfig,
    /// Settings that weaken security.
    pub danger: Danger,
    /// Log output.
    pub log: LogConfig,
    /// Call rate limits (`[limits]`).
    pub limits: LimitsConfig,
    /// The Prometheus endpoint (`[metrics]`); `None`: no metrics listener.
    pub metrics: Option<MetricsConfig>,
}

/// Attested release settings (`[attestation]`).
#[derive(Clone, Debug)]
pub struct AttestationConfig {
    /// How long a challenge nonce is accepted (10 s to 5 min).
    pub challenge_ttl: Duration,
    /// How long a token is valid (10 s to 10 min).
    pub token_ttl: Duration,
    /// Countries where enrolled hardware may be (default: the EU member states).
    pub allowed_countries: AllowedCountries,
    /// TPM-manufacturer CA certificates (PEM) that EK certificates must chain to. Without it,
    /// TPM enrolment is refused.
    pub tpm_ek_ca_bundle: Option<PathBuf>,
    /// TPM manufacturers (`id:` and 8 hex digits) whose EK certificates may lack the TCG EK
    /// extended key usage (`attestation.tpm_ek_eku_exempt_manufacturers`); every other part of
    /// the TCG EK profile is always required. Default: none.
    pub tpm_ek_eku_exempt_manufacturers: std::collections::BTreeSet<String>,
    /// What SNP evidence must show beyond a valid chain (`[attestation.snp]`).
    pub snp: attestation::snp::SnpTrust,
    /// Most open (unused, unexpired) challenges one principal may hold.
    pub max_open_challenges: u32,
    /// Most open TPM credential-activation attempts one principal may hold.
    pub max_open_tpm_enrollments: u32,
}

impl Default for AttestationConfig {
    fn default() -> Self {
        Self {
            challenge_ttl: Duration::from_secs(300),
            token_ttl: Duration::from_secs(300),
            allowed_countries: AllowedCountries::eu(),
            tpm_ek_ca_bundle: None,
            tpm_ek_eku_exempt_manufacturers: Default::default(),
            snp: attestation::snp::SnpTrust::default(),
            max_open_challenges: default_max_open_challenges(),
            max_open_tpm_enrollments: default_max_open_tpm_enrollments(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestationSection {
    #[serde(default = "default_challenge_ttl")]
    challenge_ttl_secs: u64,
    #[serde(default = "default_token_ttl")]
    token_ttl_secs: u64,
    #[serde(default = "default_countries")]
    allowed_countries: Vec<String>,
    #[serde(default)]
    tpm_ek_ca_bundle: Option<PathBuf>,
    #[serde(default)]
    tpm_ek_eku_exempt_manufacturers: Vec<String>,
    #[serde(default)]
    snp: attestation::snp::SnpTrust,
    #[serde(default = "default_max_open_challenges")]
    max_open_challenges: u32,
    #[serde(default = "default_max_open_tpm_enrollments")]
    max_open_tpm_enrollments: u32,
}

fn default_max_open_challenges() -> u32 {
    10_000
}
fn default_max_open_tpm_enrollments() -> u32 {
    16
}

impl Default for AttestationSection {
    fn default() -> Self {
        Self {
            challenge_ttl_secs: default_challenge_ttl(),
            token_ttl_secs: default_token_ttl(),
            allowed_countries: default_countries(),
            tpm_ek_ca_bundle: None,
            tpm_ek_eku_exempt_manufacturers: Vec::new(),
            snp: attestation::snp::SnpTrust::default(),
            max_open_challenges: default_max_open_challenges(),
            max_open_tpm_enrollments: default_max_open_tpm_enrollments(),
        }
    }
}

fn default_challenge_ttl() -> u64 {
    300
}
fn default_token_ttl() -> u64 {
    300
}

impl AttestationSection {
    fn validate(self) -> Result<AttestationConfig, ConfigError> {
        if !(10..=300).contains(&self.challenge_ttl_secs) {
            return Err(ConfigError(
                "attestation.challenge_ttl_secs must be between 10 and 300".into(),
            ));
        }
        if !(10..=600).contains(&self.token_ttl_secs) {
            return Err(ConfigError(
                "attestation.token_ttl_secs must be between 10 and 600".into(),
            ));
        }
        let allowed_countries = AllowedCountries::parse(self.allowed_countries.iter().map(String::as_str))
            .map_err(|e| ConfigError(format!("attestation.allowed_countries: {e}")))?;
        if let Some(p) = &self.tpm_ek_ca_bundle {
            check_ek_ca_bundle(p)?;
        }
        if self.max_open_challenges == 0 || self.max_open_tpm_enrollments == 0 {
            return Err(ConfigError(
                "attestation.max_open_challenges and attestation.max_open_tpm_enrollments must be at least 1".into(),
            ));
        }
        self.snp
            .check()
            .map_err(|e| ConfigError(format!("attestation.snp.{e}")))?;
        let mut exempt = std::collections::BTreeSet::new();
        for (i, m) in self.tpm_ek_eku_exempt_manufacturers.iter().enumerate() {
            let ok = m
                .strip_prefix("id:")
                .is_some_and(|h| h.len() == 8 && h.chars().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(ConfigError(format!(
                    "attestation.tpm_ek_eku_exempt_manufacturers[{i}]: {m:?} is not a TPM manufacturer id (id: and 8 hex digits, as EK certificates name it, e.g. id:49465800)"
                )));
            }
            exempt.insert(m.clone());
        }
        Ok(AttestationConfig {
            max_open_challenges: self.max_open_challenges,
            max_open_tpm_enrollments: self.max_open_tpm_enrollments,
            challenge_ttl: Duration::from_secs(self.challenge_ttl_secs),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            allowed_countries,
            tpm_ek_ca_bundle: self.tpm_ek_ca_bundle,
            tpm_ek_eku_exempt_manufacturers: exempt,
            snp: self.snp,
        })
    }
}

/// TLS settings (PEM files).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// Dev mode settings.
#[derive(Clone, Debug)]
pub struct DevConfig {
    /// Where the dev seal keeps its root key file and the dev admin's key file.
    pub data_dir: PathBuf,
}

/// Settings that weaken security. All off by default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Danger {
    /// Allow keys whose release policy releases plaintext without attestation.
    #[serde(default)]
    pub allow_unattested_keys: bool,
    /// Trust these SEV-SNP roots in addition to AMD's (synthetic test chains, benchmarks). Claims
    /// verified through one carry `danger_test_root = true`; kmsd warns at start.
    #[serde(default)]
    pub snp_test_roots: Vec<SnpTestRoot>,
    /// Do not lock kmsd's memory (`mlockall`), so its keys may be swapped out: for a host
    /// without swap or with encrypted swap only, where the lock limit cannot be raised.
    /// Without it a production kmsd that cannot lock refuses to start; dev mode tries and warns.
    #[serde(default)]
    pub allow_swap: bool,
}

/// A test-only SNP root: an ARK and the ASK (or ASVK) it issued, DER files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpTestRoot {
    /// `milan`, `genoa` or `turin`.
    pub product: String,
    /// `vcek` or `vlek`.
    pub signer: String,
    /// The ARK certificate (DER file).
    pub ark: PathBuf,
    /// The ASK or ASVK certificate (DER file).
    pub ask: PathBuf,
}

impl Danger {
    /// The test roots, read and typed. The error names the bad entry.
    pub fn snp_test_roots(&self) -> Result<Option<attestation::snp::danger::DangerTestRoots>, ConfigError> {
        use attestation::snp::{Product, Signer};
        if self.snp_test_roots.is_empty() {
            return Ok(None);
        }
        let mut roots = Vec::new();
        for (i, r) in self.snp_test_roots.iter().enumerate() {
            let bad = |m: String| ConfigError(format!("danger.snp_test_roots[{i}]: {m}"));
            let product = match r.product.as_str() {
                "milan" => Product::Milan,
                "genoa" => Product::Genoa,
                "turin" => Product::Turin,
                p => return Err(bad(format!("product {p:?} is not milan, genoa or turin"))),
            };
            let signer = match r.signer.as_str() {
                "vcek" => Signer::Vcek,
                "vlek" => Signer::Vlek,
                s => return Err(bad(format!("signer {s:?} is not vcek or vlek"))),
            };
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| bad(format!("cannot read {}: {e}", p.display())));
            roots.push(attestation::snp::danger::DangerTestRoot {
                product,
                signer,
                ark_der: read(&r.ark)?,
                ask_der: read(&r.ask)?,
            });
        }
        Ok(Some(attestation::snp::danger::DangerTestRoots { roots }))
    }
}

/// Log settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `kms_server=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// `[limits]`: token buckets (per replica) that refuse a flood with `rate_limited`
/// (RESOURCE_EXHAUSTED) before it does work or writes audit rows. A rate of 0 turns that limit
/// off.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Calls per second of one principal (client certificate), on every service.
    #[serde(default = "default_principal_rate")]
    pub principal_per_second: u32,
    /// How many calls a principal may make at once above its rate (at least the rate).
    #[serde(default = "default_principal_burst")]
    pub principal_burst: u32,
    /// Calls per second, per peer IP address, whose caller is not established: identification
    /// failures, and admin requests that fail authentication. Over it they are counted, not
    /// audited one by one.
    #[serde(default = "default_unauthenticated_rate")]
    pub unauthenticated_per_second: u32,
    /// Burst of `unauthenticated_per_second` (at least the rate).
    #[serde(default = "default_unauthenticated_burst")]
    pub unauthenticated_burst: u32,
    /// How often the refusals are written to the audit log: one `limits.refused` record per
    /// refused caller, with the count.
    #[serde(default = "default_limits_report_interval")]
    pub report_interval_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            principal_per_second: default_principal_rate(),
            principal_burst: default_principal_burst(),
            unauthenticated_per_second: default_unauthenticated_rate(),
            unauthenticated_burst: default_unauthenticated_burst(),
            report_interval_secs: default_limits_report_interval(),
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.report_interval_secs) {
            return Err(ConfigError(
                "limits.report_interval_secs must be between 1 and 86400".into(),
            ));
        }
        Ok(())
    }
}

fn default_principal_rate() -> u32 {
    10_000
}
fn default_principal_burst() -> u32 {
    20_000
}
fn default_unauthenticated_rate() -> u32 {
    100
}
fn default_unauthenticated_burst() -> u32 {
    200
}
fn default_limits_report_interval() -> u64 {
    60
}

fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: String,
    database: DatabaseSection,
    tls: TlsConfig,
    #[serde(default)]
    admin: AdminSection,
    #[serde(default)]
    keys: KeysSection,
    #[serde(default)]
    audit: AuditSection,
    #[serde(default)]
    seal: SealSection,
    #[serde(default)]
    attestation: AttestationSection,
    #[serde(default)]
    integrity: IntegritySection,
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    danger: Danger,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    metrics: Option<MetricsSection>,
}

/// `[node]`: where this process's node identity evidence comes from.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    /// `auto` (default), `none`, `snp` or `tpm`.
    #[serde(default)]
    evidence: Option<String>,
    #[serde(default)]
    tpm: Option<NodeTpmSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTpmSection {
    tcti: String,
    ak_file: PathBuf,
    #[serde(default = "default_node_pcrs")]
    pcrs: Vec<u8>,
}

fn default_node_pcrs() -> Vec<u8> {
    (0..=7).collect()
}

impl NodeSection {
    fn validate(self) -> Result<crate::node::NodeEvidence, ConfigError> {
        use crate::node::{NodeEvidence, TpmNode};
        let tpm = self
            .tpm
            .map(|t| {
                if t.tcti.is_empty() {
                    return Err(ConfigError(
                        "node.tpm.tcti: name the TCTI, e.g. \"device:/dev/tpmrm0\"".into(),
                    ));
                }
                if t.pcrs.is_empty() || t.pcrs.iter().any(|p| *p > 23) {
                    return Err(ConfigError("node.tpm.pcrs: a non-empty list of PCRs 0 to 23".into()));
                }
                Ok(TpmNode {
                    tcti: t.tcti,
                    ak_file: t.ak_file,
                    pcrs: t.pcrs,
                })
            })
            .transpose()?;
        Ok(match (self.evidence.as_deref().unwrap_or("auto"), tpm) {
            ("auto" | "tpm", Some(t)) => NodeEvidence::Tpm(t),
            ("auto", None) => NodeEvidence::Auto,
            ("tpm", None) => {
                return Err(ConfigError(
                    "node.evidence = \"tpm\" needs a [node.tpm] section (tcti, ak_file)".into(),
                ))
            }
            ("none", None) => NodeEvidence::None,
            ("snp", None) => NodeEvidence::Snp,
            (e @ ("none" | "snp"), Some(_)) => {
                return Err(ConfigError(format!(
                    "node.evidence = \"{e}\" and a [node.tpm] section: choose one"
                )))
            }
            (other, _) => {
                return Err(ConfigError(format!(
                    "node.evidence: {other:?} is not auto, none, snp or tpm"
                )))
            }
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: String,
    #[serde(default = "default_max_connections")]
    max_connections: u32,
    #[serde(default = "default_acquire_timeout_ms")]
    acquire_timeout_ms: u64,
}

fn default_max_connections() -> u32 {
    16
}

pub(crate) fn default_acquire_timeout_ms() -> u64 {
    5000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    #[serde(default = "default_countries")]
    allowed_countries: Vec<String>,
    #[serde(default = "default_window")]
    request_window_secs: u64,
    #[serde(default = "default_proposal_ttl")]
    proposal_ttl_secs: u64,
    #[serde(default = "default_clock_skew")]
    max_clock_skew_secs: u64,
    #[serde(default)]
    init_admins: Option<Vec<String>>,
    #[serde(default)]
    custodians: Option<Vec<String>>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            allowed_countries: default_countries(),
            request_window_secs: default_window(),
            proposal_ttl_secs: default_proposal_ttl(),
            max_clock_skew_secs: default_clock_skew(),
            init_admins: None,
            custodians: None,
        }
    }
}

fn default_clock_skew() -> u64 {
    30
}

/// `[integrity]`: how often every row is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegritySection {
    #[serde(default = "default_scan_interval")]
    scan_interval_secs: u64,
}

impl Default for IntegritySection {
    fn default() -> Self {
        Self {
            scan_interval_secs: default_scan_interval(),
        }
    }
}

fn default_scan_interval() -> u64 {
    300
}

/// Checks pinned admin fingerprints (`admin.{key}`): `sha256:` and 64 lowercase hex digits,
/// no duplicates.
fn check_fingerprints(key: &str, list: &[String]) -> Result<Vec<String>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError(format!("admin.{key}: list at least one admin fingerprint")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in list.iter().enumerate() {
        let ok = f
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if !ok {
            return Err(ConfigError(format!(
                "admin.{key}[{i}]: {f:?} is not an admin fingerprint (sha256: and 64 hex digits, as `kmsctl admin fingerprint` prints)"
            )));
        }
        if !seen.insert(f.clone()) {
            return Err(ConfigError(format!("admin.{key}[{i}]: {f} is listed twice")));
        }
    }
    Ok(list.to_vec())
}

fn default_countries() -> Vec<String> {
    vec!["EU".into()]
}
fn default_window() -> u64 {
    300
}
fn default_proposal_ttl() -> u64 {
    86_400
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysSection {
    #[serde(default = "default_cache_ttl")]
    cache_ttl_ms: u64,
    #[serde(default = "default_destroy_interval")]
    destroy_interval_secs: u64,
}

impl Default for KeysSection {
    fn default() -> Self {
        Self {
            cache_ttl_ms: default_cache_ttl(),
            destroy_interval_secs: default_destroy_interval(),
        }
    }
}

/// The longest `keys.cache_ttl_ms`: a minute.
const MAX_KEY_CACHE_TTL_MS: u64 = 60_000;

fn default_cache_ttl() -> u64 {
    1000
}
fn default_destroy_interval() -> u64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    #[serde(default = "default_batch")]
    batch_max: usize,
    #[serde(default = "default_checkpoint_interval")]
    checkpoint_interval_secs: u64,
}

fn default_checkpoint_interval() -> u64 {
    60
}

/// `[seal]`: the pkcs11 seal's HSM and the root rotation's pace.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SealSection {
    #[serde(default = "default_rotation_batch")]
    rotation_batch_size: u32,
    #[serde(default)]
    rotation_batch_pause_ms: u64,
    pkcs11: Option<Pkcs11Section>,
}

impl Default for SealSection {
    fn default() -> Self {
        Self {
            rotation_batch_size: default_rotation_batch(),
            rotation_batch_pause_ms: 0,
            pkcs11: None,
        }
    }
}

fn default_rotation_batch() -> u32 {
    500
}

/// `[seal.pkcs11]`: where the HSM is. The PIN is read from a file (mode 0600) or an
/// environment variable, never from this file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pkcs11Section {
    module: PathBuf,
    token: String,
    pin_file: Option<PathBuf>,
    pin_env: Option<String>,
}

impl SealSection {
    fn validate(&self) -> Result<(RotationPace, Option<HsmSealConfig>), ConfigError> {
        if !(1..=10_000).contains(&self.rotation_batch_size) {
            return Err(ConfigError(
                "seal.rotation_batch_size must be between 1 and 10000".into(),
            ));
        }
        let pace = RotationPace {
            batch_size: self.rotation_batch_size,
            pause: Duration::from_millis(self.rotation_batch_pause_ms),
        };
        let hsm = match &self.pkcs11 {
            None => None,
            Some(p) => {
                let token = p
                    .token
                    .parse()
                    .map_err(|e| ConfigError(format!("seal.pkcs11.token: {e}")))?;
                let pin = match (&p.pin_file, &p.pin_env) {
                    (Some(f), None) => kms_hsm::PinSource::File(f.clone()),
                    (None, Some(v)) => kms_hsm::PinSource::Env(v.clone()),
                    _ => {
                        return Err(ConfigError(
                            "seal.pkcs11: set exactly one of pin_file and pin_env".into(),
                        ))
                    }
                };
                if !p.module.is_file() {
                    return Err(ConfigError(format!(
                        "seal.pkcs11.module: {} is not a readable file",
                        p.module.display()
                    )));
                }
                Some(HsmSealConfig {
                    module: p.module.clone(),
                    token,
                    pin,
                    danger_accept_restored_database: false,
                })
            }
        };
        Ok((pace, hsm))
    }
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            batch_max: default_batch(),
            checkpoint_interval_secs: default_checkpoint_interval(),
        }
    }
}

fn default_batch() -> usize {
    512
}

/// A configuration that cannot be used; the message names the bad setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What a configuration file that sets only the required keys gives, with no TLS (which a
/// server outside dev mode refuses) and `127.0.0.1:7300` on SQLite `kms.db`: the base that
/// embedders and tests override field by field (`Config { listen, tls, ..Config::default() }`).
impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            database_url: "sqlite://kms.db?mode=rwc".to_owned(),
            database_max_connections: default_max_connections(),
            database_acquire_timeout: Duration::from_millis(default_acquire_timeout_ms()),
            tls: None,
            allowed_countries: AllowedCountries::eu(),
            admin_request_window: Duration::from_secs(default_window()),
            admin_clock_skew: Duration::from_secs(default_clock_skew()),
            init_admins: None,
            custodians: None,
            integrity_scan_interval: Duration::from_secs(default_scan_interval()),
            proposal_ttl: Duration::from_secs(default_proposal_ttl()),
            key_cache_ttl: Duration::from_millis(default_cache_ttl()),
            destroy_interval: Duration::from_secs(default_destroy_interval()),
            danger_destroyer_clock_ahead: Duration::ZERO,
            audit_batch_max: default_batch(),
            checkpoint_interval: Duration::from_secs(default_checkpoint_interval()),
            hsm: None,
            node: crate::node::NodeEvidence::Auto,
            rotation: RotationPace {
                batch_size: default_rotation_batch(),
                pause: Duration::ZERO,
            },
            dev: None,
            attestation: AttestationConfig::default(),
            danger: Danger::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            metrics: None,
        }
    }
}

impl Config {
    /// Reads `path`, applies `KMSD__…` overrides from `env`, and validates.
    pub fn from_file(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text, env).map_err(|ConfigError(m)| ConfigError(format!("{}: {m}", path.display())))
    }

    /// Parses TOML text with overrides.
    pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut value: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError(e.to_string()))?;
        for (k, v) in env {
            let Some(path) = k.strip_prefix("KMSD__") else { continue };
            let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut value, &parts, &v).map_err(|m| ConfigError(format!("environment variable {k}: {m}")))?;
        }
        let file: File =
            File::deserialize(toml::Value::Table(value)).map_err(|e| ConfigError(e.to_string().trim().to_owned()))?;
        let listen = file
            .listen
            .parse()
            .map_err(|_| ConfigError(format!("listen: {:?} is not an address like 0.0.0.0:7300", file.listen)))?;
        check_db_url(&file.database.url)?;
        if file.database.max_connections == 0 {
            return Err(ConfigError("database.max_connections must be at least 1".into()));
        }
        if !(100..=300_000).contains(&file.database.acquire_timeout_ms) {
            return Err(ConfigError(format!(
                "database.acquire_timeout_ms must be 100 to 300000 (got {})",
                file.database.acquire_timeout_ms
            )));
        }
        let allowed_countries = AllowedCountries::parse(file.admin.allowed_countries.iter().map(String::as_str))
            .map_err(|e| ConfigError(format!("admin.allowed_countries: {e}")))?;
        if !(10..=3600).contains(&file.admin.request_window_secs) {
            return Err(ConfigError(
                "admin.request_window_secs must be between 10 and 3600".into(),
            ));
        }
        if file.admin.max_clock_skew_secs > 600 {
            return Err(ConfigError("admin.max_clock_skew_secs must be at most 600".into()));
        }
        let init_admins = file
            .admin
            .init_admins
            .as_deref()
            .map(|l| check_fingerprints("init_admins", l))
            .transpose()?;
        let custodians = file
            .admin
            .custodians
            .as_deref()
            .map(|l| check_fingerprints("custodians", l))
            .transpose()?;
        if !(1..=86_400).contains(&file.integrity.scan_interval_secs) {
            return Err(ConfigError(
                "integrity.scan_interval_secs must be between 1 and 86400".into(),
            ));
        }
        if !(60..=30 * 86_400).contains(&file.admin.proposal_ttl_secs) {
            return Err(ConfigError(
                "admin.proposal_ttl_secs must be between 60 and 2592000 (30 days)".into(),
            ));
        }
        if file.audit.batch_max == 0 || file.audit.batch_max > 2000 {
            return Err(ConfigError("audit.batch_max must be between 1 and 2000".into()));
        }
        if !matches!(file.log.format.as_str(), "text" | "json") {
            return Err(ConfigError(format!(
                "log.format: {:?} is not `text` or `json`",
                file.log.format
            )));
        }
        if tracing_subscriber::EnvFilter::try_new(&file.log.level).is_err() {
            return Err(ConfigError(format!(
                "log.level: {:?} is not a tracing filter (e.g. `info`)",
                file.log.level
            )));
        }
        if file.keys.cache_ttl_ms > MAX_KEY_CACHE_TTL_MS {
            // The bound is how late a disable or a deletion made on another replica may still be
            // ignored by this one.
            return Err(ConfigError(format!(
                "keys.cache_ttl_ms must be at most {MAX_KEY_CACHE_TTL_MS} (got {})",
                file.keys.cache_ttl_ms
            )));
        }
        if file.keys.destroy_interval_secs == 0 {
            return Err(ConfigError("keys.destroy_interval_secs must be at least 1".into()));
        }
        for (name, p) in [
            ("tls.cert", &file.tls.cert),
            ("tls.key", &file.tls.key),
            ("tls.client_ca", &file.tls.client_ca),
        ] {
            if !p.is_file() {
                return Err(ConfigError(format!("{name}: {} is not a readable file", p.display())));
            }
        }
        let attestation = file.attestation.validate()?;
        let node = file.node.validate()?;
        if !(1..=86_400).contains(&file.audit.checkpoint_interval_secs) {
            return Err(ConfigError(
                "audit.checkpoint_interval_secs must be between 1 and 86400".into(),
            ));
        }
        let (rotation, hsm) = file.seal.validate()?;
        file.danger.snp_test_roots()?;
        file.limits.validate()?;
        let metrics = file.metrics.map(MetricsSection::validate).transpose()?;
        if metrics.as_ref().is_some_and(|m: &MetricsConfig| m.listen == listen) {
            return Err(ConfigError(format!(
                "metrics.listen: {listen} is the gRPC address (listen): metrics need their own"
            )));
        }
        Ok(Self {
            listen,
            database_url: file.database.url,
            database_max_connections: file.database.max_connections,
            database_acquire_timeout: Duration::from_millis(file.database.acquire_timeout_ms),
            tls: Some(file.tls),
            allowed_countries,
            admin_request_window: Duration::from_secs(file.admin.request_window_secs),
            admin_clock_skew: Duration::from_secs(file.admin.max_clock_skew_secs),
            init_admins,
            custodians,
            integrity_scan_interval: Duration::from_secs(file.integrity.scan_interval_secs),
            proposal_ttl: Duration::from_secs(file.admin.proposal_ttl_secs),
            key_cache_ttl: Duration::from_millis(file.keys.cache_ttl_ms),
            destroy_interval: Duration::from_secs(file.keys.destroy_interval_secs),
            danger_destroyer_clock_ahead: Duration::ZERO,
            audit_batch_max: file.audit.batch_max,
            checkpoint_interval: Duration::from_secs(file.audit.checkpoint_interval_secs),
            hsm,
            node,
            rotation,
            dev: None,
            attestation,
            danger: file.danger,
            log: file.log,
            limits: file.limits,
            metrics,
        })
    }

    /// `kmsd --danger-accept-restored-database`: at this start, accept a database behind the
    /// checkpoint anchored in the pkcs11 seal's HSM (a backup restored on purpose). Only with a
    /// `[seal.pkcs11]` section, the one seal that keeps an anchor.
    pub fn danger_accept_restored_database(&mut self) -> Result<(), ConfigError> {
        match self.hsm.as_mut() {
            Some(h) => {
                h.danger_accept_restored_database = true;
                Ok(())
            }
            None => Err(ConfigError(
                "--danger-accept-restored-database: only the pkcs11 seal keeps a checkpoint anchor to accept a restored database against; this configuration has no [seal.pkcs11]".into(),
            )),
        }
    }

    /// Sets (and checks) the TPM-manufacturer CA bundle for TPM enrolment.
    pub fn set_tpm_ek_ca_bundle(&mut self, path: Option<PathBuf>) -> Result<(), ConfigError> {
        if let Some(p) = &path {
            check_ek_ca_bundle(p)?;
        }
        self.attestation.tpm_ek_ca_bundle = path;
        Ok(())
    }

    /// Dev mode: SQLite in `data_dir`, the dev seal, plaintext, unattested keys allowed. Refuses
    /// a non-loopback address.
    pub fn dev(listen: SocketAddr, data_dir: PathBuf) -> Result<Self, ConfigError> {
        if !listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "--listen {listen}: dev mode serves plaintext and listens only on a loopback address (127.0.0.1 or ::1)"
            )));
        }
        Ok(Self {
            listen,
            database_url: format!("sqlite://{}?mode=rwc", data_dir.join("kms.db").display()),
            database_max_connections: 8,
            database_acquire_timeout: Duration::from_millis(default_acquire_timeout_ms()),
            tls: None,
            // Dev mode initializes itself with its own dev admin.
            init_admins: None,
            custodians: None,
            integrity_scan_interval: Duration::from_secs(60),
            // Dev mode checkpoints often, so the feature shows within a demo.
            checkpoint_interval: Duration::from_secs(5),
            dev: Some(DevConfig { data_dir }),
            // Dev mode accepts every genuine SNP report (no floors, SMT, any VMPL).
            attestation: AttestationConfig {
                snp: attestation::snp::SnpTrust::insecure_any_platform(),
                ..AttestationConfig::default()
            },
            danger: Danger {
                allow_unattested_keys: true,
                snp_test_roots: Vec::new(),
                allow_swap: false,
            },
            metrics: Some(MetricsConfig {
                listen: SocketAddr::from(DEV_METRICS_LISTEN),
            }),
            ..Self::default()
        })
    }

    /// Dev mode: serve metrics on `listen` instead of [`DEV_METRICS_LISTEN`] (loopback only, like
    /// the gRPC address; port 0 picks a free port).
    pub fn set_dev_metrics_listen(&mut self, listen: SocketAddr) -> Result<(), ConfigError> {
        if !listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "--metrics-listen {listen}: dev mode serves metrics only on a loopback address (127.0.0.1 or ::1)"
            )));
        }
        self.metrics = Some(MetricsConfig { listen });
        Ok(())
    }
}

/// A readable PEM bundle of at least one CA certificate.
fn check_ek_ca_bundle(p: &Path) -> Result<(), ConfigError> {
    let pem = std::fs::read(p).map_err(|e| {
        ConfigError(format!(
            "attestation.tpm_ek_ca_bundle: cannot read {}: {e}",
            p.display()
        ))
    })?;
    attestation::tpm::ek::EkCaBundle::from_pem(&pem)
        .map_err(|e| ConfigError(format!("attestation.tpm_ek_ca_bundle: {}: {e}", p.display())))?;
    Ok(())
}

fn check_db_url(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:") {
        Ok(())
    } else {
        Err(ConfigError(
            "database.url must start with postgres://, postgresql:// or sqlite:".into(),
        ))
    }
}

fn set_path(table: &mut toml::Table, parts: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = parts.split_last().ok_or("empty key")?;
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a section"))?;
    }
    let value = if let Ok(i) = raw.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else if raw.starts_with('[') {
        raw.parse::<toml::Value>()
            .or_else(|_| {
                format!("v = {raw}")
                    .parse::<toml::Table>()
                    .map(|mut t| t.remove("v").unwrap_or(toml::Value::String(raw.into())))
            })
            .map_err(|e| e.to_string())?
    } else {
        toml::Value::String(raw.to_owned())
    };
    t.insert(last.clone(), value);
    Ok(())
}

/// Where the pkcs11 seal's HSM is (`[seal.pkcs11]` in the configuration).
#[derive(Clone, Debug)]
pub struct HsmSealConfig {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The token.
    pub token: kms_hsm::TokenSelector,
    /// Where the user PIN comes from (a file or an environment variable; never the config).
    pub pin: kms_hsm::PinSource,
    /// `kmsd --danger-accept-restored-database`, never in a configuration file: at this start,
    /// a database behind the checkpoint anchored in the HSM (a backup restored on purpose) is
    /// accepted, audited, and the anchor moved to it, instead of being refused.
    pub danger_accept_restored_database: bool,
}

/// Where dev mode serves metrics unless `--metrics-listen` says otherwise.
pub const DEV_METRICS_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9464);

/// The Prometheus endpoint (`[metrics]`): plaintext HTTP `GET /metrics` on its own listener.
/// Off unless configured (dev mode: on, on loopback).
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Where to listen, e.g. `127.0.0.1:9464`.
    pub listen: SocketAddr,
}

/// `[metrics]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: String,
}

impl MetricsSection {
    fn validate(self) -> Result<MetricsConfig, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            ConfigError(format!(
                "metrics.listen: {:?} is not an address like 127.0.0.1:9464",
                self.listen
            ))
        })?;
        Ok(MetricsConfig { listen })
    }
}

/// The root rotation worker's pace (`[rotation]`).
#[derive(Clone, Copy, Debug)]
pub struct RotationPace {
    /// Secrets re-wrapped per transaction.
    pub batch_size: u32,
    /// Pause between batches.
    pub pause: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, String) {
        let d = tempfile::tempdir().unwrap();
        for f in ["c.pem", "k.pem", "ca.pem"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let base = format!(
            "listen = \"127.0.0.1:7300\"\n[database]\nurl = \"sqlite://x.db\"\n[tls]\ncert = \"{0}/c.pem\"\nkey = \"{0}/k.pem\"\nclient_ca = \"{0}/ca.pem\"\n",
            d.path().display()
        );
        (d, base)
    }

    /// `Config::default()` is what a file with only the required keys gives (so the defaults
    /// are the documented ones, in one place).
    #[test]
    fn default_is_a_minimal_file() {
        let (_d, base) = files();
        let file = Config::from_toml(&base, []).unwrap();
        let mut d = Config {
            database_url: file.database_url.clone(),
            tls: file.tls.clone(),
            ..Config::default()
        };
        assert_eq!(format!("{file:?}"), format!("{d:?}"));
        d.database_max_connections += 1;
        assert_ne!(format!("{file:?}"), format!("{d:?}"));
    }

    #[test]
    fn bad_keys_are_named() {
        let (_d, base) = files();
        assert!(Config::from_toml(&base, []).is_ok());
        let e = Config::from_toml(&format!("{base}\n[admin]\nallowed_countires = [\"DE\"]\n"), [])
            .unwrap_err()
            .0;
        assert!(e.contains("allowed_countires"), "{e}");
        let e = Config::from_toml(&format!("{base}\n[admin]\nallowed_countries = [\"Germany\"]\n"), [])
            .unwrap_err()
            .0;
        assert!(e.contains("allowed_countries"), "{e}");
        let e = Config::from_toml(&base.replace("127.0.0.1:7300", "nowhere"), [])
            .unwrap_err()
            .0;
        assert!(e.contains("listen"), "{e}");
        let e = Config::from_toml(&base, [("KMSD__DATABASE__URL".into(), "mysql://x".into())])
            .unwrap_err()
            .0;
        assert!(e.contains("database.url"), "{e}");
        let c = Config::from_toml(&base, [("KMSD__DATABASE__MAX_CONNECTIONS".into(), "7".into())]).unwrap();
        assert_eq!(c.database_max_connections, 7);
        let c = Config::from_toml(&base, [("KMSD__DATABASE__ACQUIRE_TIMEOUT_MS".into(), "750".into())]).unwrap();
        assert_eq!(c.database_acquire_timeout, Duration::from_millis(750));
        for bad in ["0", "99", "300001"] {
            let e = Config::from_toml(&base, [("KMSD__DATABASE__ACQUIRE_TIMEOUT_MS".into(), bad.into())])
                .unwrap_err()
                .0;
            assert!(e.contains("database.acquire_timeout_ms"), "{e}");
        }
        let c = Config::from_toml(&base, [("KMSD__KEYS__CACHE_TTL_MS".into(), "60000".into())]).unwrap();
        assert_eq!(c.key_cache_ttl, Duration::from_secs(60));
        for bad in ["60001", "18446744073709551615"] {
            let e = Config::from_toml(&base, [("KMSD__KEYS__CACHE_TTL_MS".into(), bad.into())])
                .unwrap_err()
                .0;
            assert!(e.contains("keys.cache_ttl_ms"), "{e}");
        }
        assert!(!c.danger.allow_unattested_keys);
    }

    #[test]
    fn pinned_custodians() {
        let (_d, base) = files();
        let f = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let c = Config::from_toml(&base, []).unwrap();
        assert_eq!((c.init_admins, c.custodians), (None, None));
        let c = Config::from_toml(
            &format!(
                "{base}\n[admin]\ninit_admins = [\"{}\"]\ncustodians = [\"{}\", \"{}\"]\n",
                f('a'),
                f('b'),
                f('c')
            ),
            [],
        )
        .unwrap();
        assert_eq!(c.init_admins, Some(vec![f('a')]));
        assert_eq!(c.custodians, Some(vec![f('b'), f('c')]));
        let e = Config::from_toml(&format!("{base}\n[admin]\ncustodians = [\"sha256:ab\"]\n"), [])
            .unwrap_err()
            .0;
        assert!(
            e.contains("admin.custodians[0]") && e.contains("not an admin fingerprint"),
            "{e}"
        );
        let e = Config::from_toml(&format!("{base}\n[admin]\ncustodians = []\n"), [])
            .unwrap_err()
            .0;
        assert!(e.contains("admin.custodians: list at least one"), "{e}");
        let e = Config::from_toml(
            &format!("{base}\n[admin]\ncustodians = [\"{}\", \"{}\"]\n", f('d'), f('d')),
            [],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("admin.custodians[1]") && e.contains("listed twice"), "{e}");
    }

    #[test]
    fn node_section() {
        use crate::node::NodeEvidence;
        let (_d, base) = files();
        let c = Config::from_toml(&base, []).unwrap();
        assert!(matches!(c.node, NodeEvidence::Auto));
        let tpm =
            format!("{base}\n[node.tpm]\ntcti = \"device:/dev/tpmrm0\"\nak_file = \"/var/lib/kms/node-ak.json\"\n");
        let c = Config::from_toml(&tpm, []).unwrap();
        let NodeEvidence::Tpm(t) = c.node else {
            panic!("[node.tpm] makes the TPM the evidence")
        };
        assert_eq!(
            (t.tcti.as_str(), t.pcrs),
            ("device:/dev/tpmrm0", (0..=7).collect::<Vec<u8>>())
        );
        let c = Config::from_toml(&format!("{base}\n[node]\nevidence = \"none\"\n"), []).unwrap();
        assert!(matches!(c.node, NodeEvidence::None));
        for (bad, named) in [
            ("[node]\nevidence = \"tpm\"\n", "needs a [node.tpm]"),
            ("[node]\nevidence = \"sgx\"\n", "not auto, none, snp or tpm"),
            (
                "[node]\nevidence = \"snp\"\n[node.tpm]\ntcti = \"x\"\nak_file = \"/a\"\n",
                "choose one",
            ),
            (
                "[node.tpm]\ntcti = \"x\"\nak_file = \"/a\"\npcrs = [24]\n",
                "node.tpm.pcrs",
            ),
            ("[node.tpm]\ntcti = \"\"\nak_file = \"/a\"\n", "node.tpm.tcti"),
        ] {
            let e = Config::from_toml(&format!("{base}\n{bad}"), []).unwrap_err().0;
            assert!(e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn attestation_section() {
        let (d, base) = files();
        let c = Config::from_toml(&base, []).unwrap();
        assert_eq!(c.attestation.challenge_ttl, Duration::from_secs(300));
        assert!(c.attestation.tpm_ek_ca_bundle.is_none());
        assert!(!c.attestation.snp.accept_vlek);
        let text = format!(
            "{base}\n[attestation]\nchallenge_ttl_secs = 60\ntoken_ttl_secs = 120\nallowed_countries = [\"DE\", \"FR\"]\n\
             [attestation.snp]\nproducts = [\"milan\"]\naccept_vlek = true\nallowed_vmpls = [0]\n\
             [attestation.snp.minimum_tcb.milan]\nbootloader = 3\ntee = 0\nsnp = 8\nmicrocode = 115\n"
        );
        let c = Config::from_toml(&text, []).unwrap();
        assert_eq!(c.attestation.token_ttl, Duration::from_secs(120));
        assert!(c.attestation.snp.accept_vlek);
        assert_eq!(c.attestation.snp.minimum_tcb.milan.map(|t| t.snp), Some(8));
        let fr = kms_core::jurisdiction::Country::parse("FR").unwrap();
        let it = kms_core::jurisdiction::Country::parse("IT").unwrap();
        assert!(c.attestation.allowed_countries.allows(&fr));
        assert!(!c.attestation.allowed_countries.allows(&it));
        for (bad, named) in [
            ("[attestation]\nchallenge_ttl_secs = 301\n", "challenge_ttl_secs"),
            ("[attestation]\ntoken_ttl_secs = 601\n", "token_ttl_secs"),
            (
                "[attestation]\nallowed_countries = [\"Europe\"]\n",
                "attestation.allowed_countries",
            ),
            (
                "[attestation]\ntpm_ek_ca_bundle = \"/nonexistent.pem\"\n",
                "tpm_ek_ca_bundle",
            ),
            ("[attestation.snp]\naccept_vlk = true\n", "accept_vlk"),
            // An accepted product needs a floor; a floor needs its product.
            (
                "[attestation.snp]\nproducts = [\"genoa\"]\n",
                "attestation.snp.minimum_tcb.genoa: required",
            ),
            (
                "[attestation.snp.minimum_tcb.milan]\nbootloader = 3\ntee = 0\nsnp = 8\nmicrocode = 115\n",
                "milan is not in products",
            ),
            ("[attestation.snp]\nproducts = [\"rome\"]\n", "rome"),
        ] {
            let e = Config::from_toml(&format!("{base}\n{bad}"), []).unwrap_err().0;
            assert!(e.contains(named), "{bad}: {e}");
        }
        // An EK CA bundle that is not PEM certificates is refused at load.
        std::fs::write(d.path().join("ek.pem"), "not a certificate").unwrap();
        let e = Config::from_toml(
            &format!(
                "{base}\n[attestation]\ntpm_ek_ca_bundle = \"{}/ek.pem\"\n",
                d.path().display()
            ),
            [],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("tpm_ek_ca_bundle"), "{e}");
        // Test roots are named danger and checked entry by entry.
        let e = Config::from_toml(
            &format!("{base}\n[[danger.snp_test_roots]]\nproduct = \"rome\"\nsigner = \"vcek\"\nark = \"/a\"\nask = \"/b\"\n"),
            [],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("danger.snp_test_roots[0]") && e.contains("rome"), "{e}");
    }

    #[test]
    fn metrics_section() {
        let (_d, base) = files();
        // Off unless configured.
        assert!(Config::from_toml(&base, []).unwrap().metrics.is_none());
        let c = Config::from_toml(&format!("{base}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n"), []).unwrap();
        assert_eq!(c.metrics.map(|m| m.listen), Some("127.0.0.1:9464".parse().unwrap()));
        let c = Config::from_toml(&base, [("KMSD__METRICS__LISTEN".into(), "0.0.0.0:9100".into())]).unwrap();
        assert_eq!(c.metrics.map(|m| m.listen), Some("0.0.0.0:9100".parse().unwrap()));
        for (bad, named) in [
            ("[metrics]\nlisten = \"localhost\"\n", "metrics.listen"),
            ("[metrics]\nlisten = \"127.0.0.1:9464\"\nport = 9464\n", "port"),
            ("[metrics]\n", "listen"),
            ("[metrics]\nlisten = \"127.0.0.1:7300\"\n", "their own"),
        ] {
            let e = Config::from_toml(&format!("{base}\n{bad}"), []).unwrap_err().0;
            assert!(e.contains(named), "{bad}: {e}");
        }
        // Dev mode: on, on loopback only.
        let mut dev = Config::dev("127.0.0.1:7300".parse().unwrap(), "/tmp/x".into()).unwrap();
        assert_eq!(
            dev.metrics.as_ref().map(|m| m.listen),
            Some(SocketAddr::from(DEV_METRICS_LISTEN))
        );
        assert!(dev.set_dev_metrics_listen("0.0.0.0:9464".parse().unwrap()).is_err());
        dev.set_dev_metrics_listen("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(dev.metrics.map(|m| m.listen.port()), Some(0));
    }

    #[test]
    fn dev_mode_is_loopback_only() {
        assert!(Config::dev("0.0.0.0:7300".parse().unwrap(), "/tmp/x".into()).is_err());
        assert!(Config::dev("127.0.0.1:7300".parse().unwrap(), "/tmp/x".into()).is_ok());
    }
}
