//! The seal: how the root key is held, behind one boundary. The rest of the server asks the seal
//! for a [`RootOfTrust`] that wraps and unwraps KEKs, and never touches root key material.
//! Implementations: `shamir` (the root key rebuilt in memory from M custodians' shares),
//! `pkcs11` (a non-extractable AES-256 key in an HSM; the process unseals itself at start) and
//! `dev` (a root key file, only with `kmsd --dev`).
//!
//! Root keys have generations. A rotation (or a migration between seals) adds generation g+1
//! while g is current; until every wrapped secret has been re-wrapped (see `rotation`), the
//! process holds both ([`Roots`]): new secrets are wrapped under g+1, and unwrapping tries g+1
//! then g (AES-GCM authenticates, so the wrong root fails cleanly). A software next root is kept
//! wrapped under the current root in the database, so an interrupted rotation resumes after the
//! current root is unsealed again.
//!
//! Never logs, returns or stores the root key or a share in the clear.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use kms_core::blob::Kek;
use kms_core::ids::{KeyId, KeyVersion};
use kms_core::integrity::IntegrityKey;
use kms_core::root::{kek_wrap_aad, key_check_value, RootKeyMaterial, SoftwareRoot};
use kms_core::secret::{SecretBytes, SecretKey};
use kms_core::share_wrap::{self, ShareEnvelope, UnsealKey};
use kms_hsm::{Hsm, HsmRoot, HsmSigner, PinSource, TokenSelector};

use crate::error::ApiError;
use crate::storage::{KeyRing, RootGenerationRow, SealConfigRow, Store, StoreError, Table};
use kms_proto::Reason;

/// Wraps and unwraps KEKs under the root key.
pub trait RootOfTrust: Send + Sync {
    /// Wraps `kek` for (key, version).
    fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, kms_core::Error>;
    /// Unwraps what [`RootOfTrust::wrap`] wrapped for the same (key, version).
    fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, kms_core::Error>;
    /// The root key generation [`RootOfTrust::wrap`] wraps under (stored with what it wraps).
    fn generation(&self) -> u64;
    /// The seal's own checkpoint signing key, if it holds one in hardware (pkcs11). Software
    /// seals return `None`: their checkpoint key is a secret wrapped under the root key.
    fn checkpoint_signer(&self) -> Option<Arc<dyn SealSigner>> {
        None
    }
    /// Whether the seal's HSM holds the checkpoint signing key `label` with this public key
    /// (also a retired generation's), so its earlier checkpoints stay verifiable by the
    /// published keys.
    fn holds_checkpoint_key(&self, label: &str, public_key: &[u8]) -> bool {
        let _ = (label, public_key);
        false
    }
    /// Memory outside the database that the seal holds (the pkcs11 seal's HSM), where the last
    /// signed audit checkpoint is anchored. `None` for software seals.
    fn anchor_store(&self) -> Option<Arc<dyn AnchorStore>> {
        None
    }
}

/// A small value kept outside the database (in the seal's HSM).
pub trait AnchorStore: Send + Sync {
    /// The values under `label` (more than one after an interrupted write).
    fn read(&self, label: &str) -> Result<Vec<Vec<u8>>, kms_core::Error>;
    /// Sets the value under `label`.
    fn write(&self, label: &str, value: &[u8]) -> Result<(), kms_core::Error>;
    /// Removes the value under `label`.
    fn clear(&self, label: &str) -> Result<(), kms_core::Error>;
}

struct HsmAnchor(Arc<Hsm>);

impl AnchorStore for HsmAnchor {
    fn read(&self, label: &str) -> Result<Vec<Vec<u8>>, kms_core::Error> {
        self.0.read_data(label).map_err(|e| kms_core::Error::Hsm(e.to_string()))
    }
    fn write(&self, label: &str, value: &[u8]) -> Result<(), kms_core::Error> {
        self.0
            .write_data(label, value)
            .map_err(|e| kms_core::Error::Hsm(e.to_string()))
    }
    fn clear(&self, label: &str) -> Result<(), kms_core::Error> {
        self.0
            .delete_object(label)
            .map(|_| ())
            .map_err(|e| kms_core::Error::Hsm(e.to_string()))
    }
}

/// A signing key the seal holds in hardware (the pkcs11 seal's HSM): signs audit checkpoints.
pub trait SealSigner: Send + Sync {
    /// JOSE algorithm name: "ES256" (ECDSA P-256, SHA-256, ASN.1 DER signatures).
    fn algorithm(&self) -> &'static str;
    /// The public key (ES256: SEC1 uncompressed point).
    fn public_key(&self) -> Vec<u8>;
    /// The key's label in the HSM.
    fn label(&self) -> String;
    /// Signs `message` (hashing included); ASN.1 DER signature.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, kms_core::Error>;
}

/// The seal kinds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SealKind {
    /// M-of-N custodians.
    Shamir,
    /// Dev mode root key file.
    Dev,
    /// A non-extractable key in a PKCS#11 HSM.
    Pkcs11,
}

impl SealKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shamir => "shamir",
            Self::Dev => "dev",
            Self::Pkcs11 => "pkcs11",
        }
    }
    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shamir" => Some(Self::Shamir),
            "dev" => Some(Self::Dev),
            "pkcs11" => Some(Self::Pkcs11),
            _ => None,
        }
    }
}

/// Where the pkcs11 seal's HSM is (`[seal.pkcs11]` in the configuration).
#[derive(Clone, Debug)]
pub struct HsmSealConfig {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// Where the user PIN comes from (a file or an environment variable; never the config).
    pub pin: PinSource,
    /// `kmsd --danger-accept-restored-database`, never in a configuration file: at this start,
    /// a database behind the checkpoint anchored in the HSM (a backup restored on purpose) is
    /// accepted, audited, and the anchor moved to it, instead of being refused.
    pub danger_accept_restored_database: bool,
}

/// What the seal reports.
#[derive(Clone, Debug)]
pub struct Status {
    /// Initialized.
    pub initialized: bool,
    /// Sealed.
    pub sealed: bool,
    /// Kind, once initialized.
    pub kind: Option<SealKind>,
    /// Shares needed.
    pub threshold: u32,
    /// Shares submitted.
    pub progress: u32,
    /// The P-256 key custodians' tokens re-wrap their share to.
    pub unseal_public_key: Vec<u8>,
    /// The root key's check value, once initialized: custodians compare it with the value they
    /// saw at init, so a database whose seal record was swapped is noticed before they unseal.
    pub key_check_value: Vec<u8>,
    /// The current generation.
    pub generation: u64,
    /// The generation being rotated to, and its kind.
    pub rotating_to: Option<(u64, SealKind)>,
}

/// One root key generation's public facts.
#[derive(Clone, Copy, Debug)]
struct Generation {
    number: u64,
    kind: SealKind,
    threshold: u32,
    kcv: [u8; 16],
}

/// A generation's root key held by this process, with the generation's integrity key (which
/// authenticates database rows; wrapped under that root in its generation row).
#[derive(Clone)]
struct Held {
    number: u64,
    kind: SealKind,
    root: Arc<dyn RootOfTrust>,
    integrity: Arc<IntegrityKey>,
}

/// The roots this process holds: the current generation's and, during a rotation, the next.
/// As a [`RootOfTrust`] it wraps under the newest and unwraps with whichever root wrapped.
pub struct Roots {
    current: Held,
    next: Option<Held>,
}

impl Roots {
    fn newest(&self) -> &Held {
        self.next.as_ref().unwrap_or(&self.current)
    }

    /// The current generation's root (the one a rotation moves away from).
    pub fn current(&self) -> (u64, Arc<dyn RootOfTrust>) {
        (self.current.number, self.current.root.clone())
    }

    /// The next generation's root, during a rotation.
    pub fn next(&self) -> Option<(u64, Arc<dyn RootOfTrust>)> {
        self.next.as_ref().map(|h| (h.number, h.root.clone()))
    }

    /// The integrity keys of the generations held.
    fn key_ring(&self) -> Option<KeyRing> {
        let mut keys = vec![(self.current.number, self.current.integrity.clone())];
        if let Some(n) = &self.next {
            keys.push((n.number, n.integrity.clone()));
        }
        KeyRing::new(keys)
    }
}

impl RootOfTrust for Roots {
    fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, kms_core::Error> {
        self.newest().root.wrap(key_id, version, kek)
    }
    fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, kms_core::Error> {
        match &self.next {
            Some(next) => next
                .root
                .unwrap(key_id, version, wrapped)
                .or_else(|_| self.current.root.unwrap(key_id, version, wrapped)),
            None => self.current.root.unwrap(key_id, version, wrapped),
        }
    }
    fn generation(&self) -> u64 {
        self.newest().number
    }
    fn checkpoint_signer(&self) -> Option<Arc<dyn SealSigner>> {
        self.newest().root.checkpoint_signer()
    }
    fn holds_checkpoint_key(&self, label: &str, public_key: &[u8]) -> bool {
        self.next
            .as_ref()
            .is_some_and(|n| n.root.holds_checkpoint_key(label, public_key))
            || self.current.root.holds_checkpoint_key(label, public_key)
    }
    fn anchor_store(&self) -> Option<Arc<dyn AnchorStore>> {
        self.newest().root.anchor_store()
    }
}

/// The pkcs11 seal's root: AES-256-GCM in the HSM, byte-for-byte the wrapped format of
/// [`SoftwareRoot`], and the HSM-held audit checkpoint key.
struct Pkcs11Root {
    root: HsmRoot,
    signer: Arc<HsmCheckpointSigner>,
    generation: u64,
    hsm: Arc<Hsm>,
}

impl RootOfTrust for Pkcs11Root {
    fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, kms_core::Error> {
        self.root
            .encrypt(&kek_wrap_aad(key_id, version), kek.expose_secret())
            .map_err(|e| kms_core::Error::Hsm(e.to_string()))
    }
    fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, kms_core::Error> {
        let plain = self
            .root
            .decrypt(&kek_wrap_aad(key_id, version), wrapped)
            .map_err(|_| kms_core::Error::UnwrapFailed)?;
        let mut bytes = zeroize::Zeroizing::new(plain.expose_secret().to_vec());
        Kek::from_slice(&mut bytes).ok_or(kms_core::Error::UnwrapFailed)
    }
    fn generation(&self) -> u64 {
        self.generation
    }
    fn checkpoint_signer(&self) -> Option<Arc<dyn SealSigner>> {
        Some(self.signer.clone())
    }
    fn holds_checkpoint_key(&self, label: &str, public_key: &[u8]) -> bool {
        self.hsm
            .signing_key(label)
            .is_ok_and(|k| k.public_key_bytes() == public_key)
    }
    fn anchor_store(&self) -> Option<Arc<dyn AnchorStore>> {
        Some(Arc::new(HsmAnchor(self.hsm.clone())))
    }
}

/// A software root of one generation.
struct GenerationRoot {
    root: SoftwareRoot,
    generation: u64,
}

impl RootOfTrust for GenerationRoot {
    fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, kms_core::Error> {
        self.root.wrap(key_id, version, kek)
    }
    fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, kms_core::Error> {
        self.root.unwrap(key_id, version, wrapped)
    }
    fn generation(&self) -> u64 {
        self.generation
    }
}

struct HsmCheckpointSigner(HsmSigner);

impl SealSigner for HsmCheckpointSigner {
    fn algorithm(&self) -> &'static str {
        "ES256"
    }
    fn public_key(&self) -> Vec<u8> {
        self.0.public_key_bytes().to_vec()
    }
    fn label(&self) -> String {
        self.0.label().to_owned()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, kms_core::Error> {
        self.0
            .sign_raw(message)
            .map_err(|e| kms_core::Error::Hsm(e.to_string()))
    }
}

enum State {
    Uninitialized,
    Sealed {
        generation: Generation,
        shares: BTreeMap<String, SecretBytes>,
    },
    Unsealed {
        generation: Generation,
        roots: Arc<Roots>,
    },
}

/// The seal.
pub struct Seal {
    state: RwLock<State>,
    unseal_key: UnsealKey,
    dev_dir: Option<PathBuf>,
    hsm_config: Option<HsmSealConfig>,
    hsm: std::sync::Mutex<Option<Arc<Hsm>>>,
    hsm_login_refused: std::sync::Mutex<Option<String>>,
    /// Why the database was last refused when the seal tried to open it (reported in the status
    /// until an open succeeds).
    open_refused: std::sync::Mutex<Option<String>>,
    replica_id: String,
    /// The database whose rows the held integrity keys authenticate (published to it whenever
    /// the state changes).
    store: Store,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal")
    }
}

/// Why the seal could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Database.
    #[error("database: {0}")]
    Db(String),
    /// Configuration mismatch or corrupt state.
    #[error("{0}")]
    Refused(String),
    /// The HSM refused the pkcs11 seal's PIN. Not to be retried by a supervisor (each try
    /// counts towards locking the token): `kmsd` exits with its own code.
    #[error("pkcs11 seal: {0}")]
    HsmLoginRefused(String),
}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(d) => Self::Db(d.to_string()),
            other => Self::Refused(ApiError::from(other).message),
        }
    }
}

const DEV_ROOT_FILE: &str = "dev-root-key";
/// The reserved key id under which a software next root is wrapped by the current root (its
/// version is the next generation number).
const NEXT_ROOT_WRAP_ID: [u8; 16] = [0xff; 16];
/// The AAD of the pkcs11 root's check value: a fixed value encrypted at init and decrypted at
/// every start, so the wrong key (or token) is noticed before anything is served.
const PKCS11_CANARY_ID: [u8; 16] = [0xfe; 16];
/// The reserved key id under which each generation's integrity key is wrapped by that
/// generation's root (its version is the generation number).
const INTEGRITY_KEY_WRAP_ID: [u8; 16] = [0xfd; 16];

/// A fresh integrity key for `generation`, and it wrapped under that generation's root.
fn new_integrity(root: &dyn RootOfTrust, generation: u64) -> Result<(Arc<IntegrityKey>, Vec<u8>), ApiError> {
    let secret = SecretKey::<32>::generate()?;
    let wrapped = root.wrap(
        KeyId::from_bytes(INTEGRITY_KEY_WRAP_ID),
        version_of(generation)?,
        &secret,
    )?;
    Ok((Arc::new(IntegrityKey::new(&secret)), wrapped))
}

/// Unwraps a generation's integrity key with its root. A generation row without one (written
/// before row authentication existed) cannot be used: the database must be initialized again.
fn open_integrity(
    root: &dyn RootOfTrust,
    generation: u64,
    wrapped: Option<&[u8]>,
) -> Result<Arc<IntegrityKey>, ApiError> {
    let wrapped = wrapped.ok_or_else(|| {
        ApiError::new(
            Reason::RowIntegrity,
            format!("root generation {generation} has no integrity key (a database from before row authentication): initialize a new database"),
        )
    })?;
    let secret = root
        .unwrap(KeyId::from_bytes(INTEGRITY_KEY_WRAP_ID), version_of(generation)?, wrapped)
        .map_err(|_| {
            ApiError::new(
                Reason::RowIntegrity,
                format!("the integrity key of root generation {generation} does not unwrap under its root key (the generation row was altered)"),
            )
        })?;
    Ok(Arc::new(IntegrityKey::new(&secret)))
}

fn generation_of(row: &RootGenerationRow) -> Result<Generation, LoadError> {
    let kind = SealKind::parse(&row.kind)
        .ok_or_else(|| LoadError::Refused(format!("unknown seal kind {:?} in the database", row.kind)))?;
    let kcv = check_value(kind, &row.kcv)
        .ok_or_else(|| LoadError::Refused("corrupt key check value in the database".into()))?;
    Ok(Generation {
        number: row.generation,
        kind,
        threshold: row.threshold,
        kcv,
    })
}

/// The 16-byte check value shown for a stored one: software roots store their KCV; the pkcs11
/// seal stores a canary whose SHA-256 prefix is shown.
fn check_value(kind: SealKind, stored: &[u8]) -> Option<[u8; 16]> {
    match kind {
        SealKind::Pkcs11 => {
            let d = ring::digest::digest(&ring::digest::SHA256, stored);
            d.as_ref()[..16].try_into().ok()
        }
        _ => stored.try_into().ok(),
    }
}

impl Seal {
    /// Loads the seal state at start: uninitialized; sealed (shamir); or unsealed from the HSM
    /// (pkcs11) or the dev root key file (dev seal, dev mode only), with a rotation in progress
    /// picked up, once the database's rows verify ([`Seal::open`]). A pkcs11 or dev seal whose
    /// database does not verify starts sealed and says why.
    pub async fn load(
        store: &Store,
        dev_dir: Option<PathBuf>,
        hsm_config: Option<HsmSealConfig>,
    ) -> Result<Self, LoadError> {
        let seal = Self {
            state: RwLock::new(State::Uninitialized),
            unseal_key: UnsealKey::generate().map_err(|e| LoadError::Refused(e.to_string()))?,
            dev_dir,
            hsm_config,
            hsm: std::sync::Mutex::new(None),
            hsm_login_refused: std::sync::Mutex::new(None),
            open_refused: std::sync::Mutex::new(None),
            replica_id: format!(
                "replica-{}",
                hex::encode(kms_core::random_array::<8>().map_err(|e| LoadError::Refused(e.to_string()))?)
            ),
            store: store.clone(),
        };
        let Some(cfg) = store.seal_config_unverified().await? else {
            return Ok(seal);
        };
        let row = store
            .root_generation_unverified(cfg.root_generation)
            .await?
            .ok_or_else(|| LoadError::Refused(format!("root generation {} is missing", cfg.root_generation)))?;
        let generation = generation_of(&row)?;
        let sealed = State::Sealed {
            generation,
            shares: BTreeMap::new(),
        };
        let held = match generation.kind {
            SealKind::Shamir => None,
            SealKind::Dev => {
                let dir = seal.dev_dir.as_ref().ok_or_else(|| {
                    LoadError::Refused(
                        "this database uses the dev seal; it can only be served with `kmsd --dev`".into(),
                    )
                })?;
                let root = read_dev_root(dir)?;
                if key_check_value(&root) != generation.kcv {
                    return Err(LoadError::Refused(format!(
                        "{} does not hold the root key of this database",
                        dir.join(DEV_ROOT_FILE).display()
                    )));
                }
                Some(software_held(&row, SealKind::Dev, &root).map_err(|e| LoadError::Refused(e.message))?)
            }
            SealKind::Pkcs11 => match seal.hsm_held(&row) {
                Ok(held) => Some(held),
                // The HSM (or the key's partition) does not answer yet: start sealed and try
                // again every second; unsealed as soon as it answers.
                Err(e) if matches!(e.reason, Reason::HsmUnavailable | Reason::HsmKeyMissing) => {
                    tracing::warn!(message = %e.message, "pkcs11 seal: the HSM does not answer; sealed until it does");
                    None
                }
                // A refused PIN: never retried (a token locks after wrong PINs).
                Err(e) if e.reason == Reason::HsmLoginRefused => return Err(LoadError::HsmLoginRefused(e.message)),
                // No configuration, or the wrong key under the label: an operator must fix it.
                Err(e) => return Err(LoadError::Refused(format!("pkcs11 seal: {}", e.message))),
            },
        };
        let state = match held {
            None => sealed,
            Some(current) => match seal.open(store, generation, current).await {
                Ok(state) => state,
                Err(e) => {
                    tracing::error!(reason = %e.reason, message = %e.message, "the database does not verify: staying sealed");
                    sealed
                }
            },
        };
        seal.replace(&mut seal.write(), state);
        Ok(seal)
    }

    /// Opens the database under `current` (and the pending generation's root, if a rotation is
    /// in progress): the integrity keys are published to the store, the whole state log is
    /// replayed and every row checked. Refused (and the keys withdrawn) if the state or the seal's
    /// own rows do not verify; other rows that do not verify are reported and stay refused one by
    /// one. Returns the unsealed state to install.
    async fn open(&self, store: &Store, generation: Generation, current: Held) -> Result<State, ApiError> {
        let next = match store.pending_root_generation_unverified().await? {
            Some(p) => Some(self.open_pending(&p, &current)?),
            None => None,
        };
        let roots = Roots { current, next };
        store.integrity().set_keys(roots.key_ring());
        let opened = store.integrity().open(store).await;
        let refusal = match opened {
            Err(e) => Some(ApiError::from(e)),
            Ok(violations) => violations
                .into_iter()
                .find(|v| {
                    matches!(
                        Table::parse(v.table),
                        Some(Table::SealConfig | Table::RootGenerations | Table::RootShares)
                    )
                })
                .map(|v| ApiError::from(StoreError::Integrity(v))),
        };
        let refusal = match refusal {
            Some(e) => Some(e),
            None => self.check_anchor(store, &roots).await.err(),
        };
        if let Some(e) = refusal {
            // The state is not changed here: its own keys again.
            self.republish(&self.read());
            *self.open_refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{}: {}", e.reason, e.message));
            return Err(e);
        }
        *self.open_refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(State::Unsealed {
            generation,
            roots: Arc::new(roots),
        })
    }

    /// With a seal that keeps an anchor outside the database (the pkcs11 seal's HSM): the
    /// database must still hold the last checkpoint any replica anchored there, and a state that
    /// extends the state it signed. A database restored from an older backup (or rolled back by
    /// its operator) is refused here, before anything is served.
    async fn check_anchor(&self, store: &Store, roots: &Roots) -> Result<(), ApiError> {
        let Some(anchors) = roots.anchor_store() else {
            return Ok(());
        };
        let cfg = store
            .seal_config()
            .await?
            .ok_or_else(|| ApiError::new(Reason::NotInitialized, "the server is not initialized"))?;
        let stored = anchors
            .read(&crate::checkpoint::anchor_label(&cfg.deployment_id))
            .map_err(|e| ApiError::new(Reason::HsmUnavailable, format!("reading the checkpoint anchor: {e}")))?;
        if stored.is_empty() {
            return Ok(());
        }
        let anchor = stored
            .iter()
            .filter_map(|b| kms_core::audit::CheckpointAnchor::decode(b))
            .max_by_key(|a| a.seq)
            .ok_or_else(|| ApiError::new(Reason::StateRollback, "the checkpoint anchor in the HSM is unreadable"))?;
        let Err(e) = store.check_anchor(&anchor).await else {
            return Ok(());
        };
        let accept = self
            .hsm_config
            .as_ref()
            .is_some_and(|c| c.danger_accept_restored_database);
        if !accept || !matches!(e, StoreError::Rollback(_)) {
            let e = ApiError::from(store.integrity().reported_error(e));
            tracing::error!(reason = %e.reason, message = %e.message, "the database is behind the checkpoint anchored in the HSM");
            return Err(e);
        }
        // A restore the operator of this host asked for: the earlier state becomes the one this
        // deployment continues from. Recorded in the audit log; the next checkpoint is anchored.
        let StoreError::Rollback(mut v) = e else {
            unreachable!("matched above")
        };
        v.detail = format!(
            "accepted by --danger-accept-restored-database: {} (the HSM's anchor named checkpoint {}, state version {}; the database continues from state version {})",
            v.detail,
            anchor.seq,
            anchor.state.version,
            store.integrity().head().version
        );
        tracing::error!(detail = %v.detail, "a database behind the HSM's checkpoint anchor is accepted: the later state is abandoned");
        store.integrity().report(v);
        anchors
            .clear(&crate::checkpoint::anchor_label(&cfg.deployment_id))
            .map_err(|e| ApiError::new(Reason::HsmUnavailable, format!("clearing the checkpoint anchor: {e}")))
    }

    /// Replaces the state and publishes its integrity keys to the store (none unless unsealed).
    fn replace(&self, st: &mut std::sync::RwLockWriteGuard<'_, State>, new: State) {
        let ring = match &new {
            State::Unsealed { roots, .. } => roots.key_ring(),
            _ => None,
        };
        **st = new;
        self.store.integrity().set_keys(ring);
    }

    /// The roots, or `sealed`.
    pub fn roots(&self) -> Result<Arc<Roots>, ApiError> {
        match &*self.read() {
            State::Unsealed { roots, .. } => Ok(roots.clone()),
            State::Uninitialized => Err(ApiError::new(
                Reason::NotInitialized,
                "the server is not initialized (kmsctl init)",
            )),
            State::Sealed { .. } => Err(ApiError::sealed()),
        }
    }

    /// The root of trust (wrapping under the newest generation), or `sealed`.
    pub fn root(&self) -> Result<Arc<dyn RootOfTrust>, ApiError> {
        Ok(self.roots()?)
    }

    /// `not_initialized` until init has run (operations that need no root key).
    pub fn require_initialized(&self) -> Result<(), ApiError> {
        if self.is_initialized() {
            Ok(())
        } else {
            Err(ApiError::new(
                Reason::NotInitialized,
                "the server is not initialized (kmsctl init)",
            ))
        }
    }

    /// Whether init has run.
    pub fn is_initialized(&self) -> bool {
        !matches!(&*self.read(), State::Uninitialized)
    }

    /// Whether this process is in dev mode.
    pub fn dev_mode(&self) -> bool {
        self.dev_dir.is_some()
    }

    /// This process's unseal public key (P-256, SEC1): custodians' tokens re-wrap shares to it.
    pub fn unseal_public_key(&self) -> Vec<u8> {
        self.unseal_key.public_key()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        let unseal_public_key = self.unseal_key.public_key();
        match &*self.read() {
            State::Uninitialized => Status {
                initialized: false,
                sealed: true,
                kind: None,
                threshold: 0,
                progress: 0,
                unseal_public_key,
                key_check_value: Vec::new(),
                generation: 0,
                rotating_to: None,
            },
            State::Sealed { generation, shares } => Status {
                initialized: true,
                sealed: true,
                kind: Some(generation.kind),
                threshold: generation.threshold,
                progress: u32::try_from(shares.len()).unwrap_or(u32::MAX),
                unseal_public_key,
                key_check_value: generation.kcv.to_vec(),
                generation: generation.number,
                rotating_to: None,
            },
            State::Unsealed { generation, roots } => Status {
                initialized: true,
                sealed: false,
                kind: Some(generation.kind),
                threshold: generation.threshold,
                progress: 0,
                unseal_public_key,
                key_check_value: generation.kcv.to_vec(),
                generation: generation.number,
                rotating_to: roots.next.as_ref().map(|h| (h.number, h.kind)),
            },
        }
    }

    /// Why the seal last refused to open the database (its rows or state did not verify), if it
    /// did and has not opened it since.
    pub fn open_refused(&self) -> Option<String> {
        self.open_refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This process's id in the `replicas` table.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Replaces the state with generation `number` of the database: unsealed from the HSM
    /// (pkcs11; sealed if the HSM cannot be used) or sealed (shamir), shares collected so far
    /// dropped.
    async fn take_generation(&self, store: &Store, number: u64) -> Result<(), ApiError> {
        // What this replaces: only if no one changed the state meanwhile (e.g. the background
        // tick installing a next root, or custodians completing an unseal).
        let before = self.state_key();
        let row = store
            .root_generation_unverified(number)
            .await?
            .ok_or_else(|| ApiError::new(Reason::CorruptRootGeneration, format!("generation {number} is missing")))?;
        let g = generation_of(&row).map_err(|e| ApiError::new(Reason::CorruptRootGeneration, e.to_string()))?;
        let sealed = || State::Sealed {
            generation: g,
            shares: BTreeMap::new(),
        };
        let state = match g.kind {
            SealKind::Pkcs11 => match self.hsm_held(&row) {
                // A rotation in progress: its next root is held before anything is served.
                Ok(held) => match self.open(store, g, held).await {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::warn!(reason = %e.reason, message = %e.message, "cannot open the database under the current pkcs11 root; staying sealed");
                        sealed()
                    }
                },
                Err(e) => {
                    if e.reason == Reason::HsmLoginRefused {
                        tracing::error!(message = %e.message, "pkcs11 seal: the HSM refused the login; sealed until kmsd is restarted with the right PIN");
                    } else {
                        tracing::debug!(reason = %e.reason, message = %e.message, "cannot open the current pkcs11 root; sealed");
                        // A dead login (HSM restarted) is reopened at the next try.
                        self.drop_hsm();
                    }
                    sealed()
                }
            },
            _ => sealed(),
        };
        let mut st = self.write();
        if state_key_of(&st) == before {
            self.replace(&mut st, state);
        } else {
            self.republish(&st);
        }
        Ok(())
    }

    /// Publishes the current state's integrity keys again (after an attempt that did not
    /// change the state).
    fn republish(&self, st: &State) {
        self.store.integrity().set_keys(match st {
            State::Unsealed { roots, .. } => roots.key_ring(),
            _ => None,
        });
    }

    /// The state's identity for compare-and-swap: (sealed, generation, next generation).
    fn state_key(&self) -> (bool, u64, Option<u64>) {
        state_key_of(&self.read())
    }

    fn drop_hsm(&self) {
        *self.hsm.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A sealed process follows the database's current generation (rotated by another
    /// replica): its shares of the old generation would no longer match anything stored.
    /// A sealed pkcs11 process retries the HSM.
    pub async fn refresh_sealed(&self, store: &Store) -> Result<(), ApiError> {
        let (held, kind) = match &*self.read() {
            State::Sealed { generation, .. } => (generation.number, generation.kind),
            _ => return Ok(()),
        };
        if let Some(cfg) = store.seal_config_unverified().await? {
            if cfg.root_generation != held || kind == SealKind::Pkcs11 {
                self.take_generation(store, cfg.root_generation).await?;
            }
        }
        Ok(())
    }

    /// Whether this process has a `[seal.pkcs11]` configuration.
    pub fn has_hsm_config(&self) -> bool {
        self.hsm_config.is_some()
    }

    /// The HSM of the pkcs11 seal, opened once (PIN read from its source then).
    fn hsm(&self) -> Result<Arc<Hsm>, ApiError> {
        let mut slot = self.hsm.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        let cfg = self.hsm_config.as_ref().ok_or_else(|| {
            ApiError::new(
                Reason::Pkcs11NotConfigured,
                "this server has no [seal.pkcs11] configuration (module, token, pin_file or pin_env)",
            )
        })?;
        if let Some(why) = self
            .hsm_login_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            // Never try a refused PIN again: tokens lock after a few wrong PINs.
            return Err(ApiError::new(Reason::HsmLoginRefused, why.clone()));
        }
        let pin = cfg
            .pin
            .read()
            .map_err(|e| self.login_refused(format!("HSM PIN: {e}")))?;
        let hsm = Arc::new(Hsm::open(&cfg.module, &cfg.token, &pin).map_err(|e| match e {
            // The PIN itself was refused (incorrect, locked, expired, not initialized): trying
            // it again would count towards locking the token.
            kms_hsm::HsmError::PinIncorrect { .. } | kms_hsm::HsmError::PinSource(_) => {
                self.login_refused(e.to_string())
            }
            kms_hsm::HsmError::Login { ref reason, .. } if reason.contains("PIN") => self.login_refused(e.to_string()),
            // Anything else (device error, token absent, session lost) may pass: retried.
            other => ApiError::new(Reason::HsmUnavailable, other.to_string()),
        })?);
        *slot = Some(hsm.clone());
        Ok(hsm)
    }

    /// Records a login refusal (wrong PIN, unreadable PIN source): not retried until restart.
    fn login_refused(&self, why: String) -> ApiError {
        *self.hsm_login_refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        ApiError::new(Reason::HsmLoginRefused, why)
    }

    /// Opens a pkcs11 generation's root key (and its checkpoint key) and checks it against the
    /// stored canary.
    fn hsm_held(&self, row: &RootGenerationRow) -> Result<Held, ApiError> {
        let (generation, label, canary) = (row.generation, row.hsm_label.as_deref().unwrap_or(""), &row.kcv);
        let hsm = self.hsm()?;
        let root = hsm.root_key(label).map_err(|e| {
            ApiError::new(
                Reason::HsmKeyMissing,
                format!("root key {label:?} of generation {generation}: {e}"),
            )
        })?;
        let signer = hsm.signing_key(&format!("{label}-audit")).map_err(|e| {
            ApiError::new(
                Reason::HsmKeyMissing,
                format!("audit checkpoint key of generation {generation}: {e}"),
            )
        })?;
        let held = Pkcs11Root {
            root,
            signer: Arc::new(HsmCheckpointSigner(signer)),
            generation,
            hsm: hsm.clone(),
        };
        held.unwrap(KeyId::from_bytes(PKCS11_CANARY_ID), version_of(generation)?, canary)
            .map_err(|_| {
                ApiError::new(
                    Reason::WrongRootKey,
                    format!("the HSM key {label:?} is not the root key of generation {generation} (its check value does not open)"),
                )
            })?;
        let integrity = open_integrity(&held, generation, row.integrity_key.as_deref())?;
        Ok(Held {
            number: generation,
            kind: SealKind::Pkcs11,
            root: Arc::new(held),
            integrity,
        })
    }

    /// Creates a fresh root key for a generation. Software seals return the material (to split
    /// into shares or write to the dev file) with its KCV; the pkcs11 seal generates the key in
    /// the HSM and returns no material, with the canary as check value.
    pub fn create_root(&self, kind: SealKind, generation: u64) -> Result<NewRoot, ApiError> {
        match kind {
            SealKind::Dev if self.dev_dir.is_none() => Err(ApiError::new(
                Reason::DevSealRefused,
                "the dev seal exists only in dev mode (kmsd --dev)",
            )),
            SealKind::Dev | SealKind::Shamir => {
                let material = RootKeyMaterial::generate()?;
                let root: Arc<dyn RootOfTrust> = Arc::new(GenerationRoot {
                    root: SoftwareRoot::new(&material)?,
                    generation,
                });
                let (integrity, integrity_key) = new_integrity(root.as_ref(), generation)?;
                Ok(NewRoot {
                    check: key_check_value(&material).to_vec(),
                    hsm_label: None,
                    material: Some(material),
                    integrity_key,
                    held: Held {
                        number: generation,
                        kind,
                        root,
                        integrity,
                    },
                })
            }
            SealKind::Pkcs11 => {
                let hsm = self.hsm()?;
                let label = format!("kms-root-g{generation}-{}", hex::encode(kms_core::random_array::<6>()?));
                let hsm_err = |e: kms_hsm::HsmError| ApiError::new(Reason::HsmUnavailable, e.to_string());
                let root = hsm.generate_root_key(&label).map_err(hsm_err)?;
                let signer = hsm.generate_signing_key(&format!("{label}-audit")).map_err(hsm_err)?;
                let held = Pkcs11Root {
                    root,
                    signer: Arc::new(HsmCheckpointSigner(signer)),
                    generation,
                    hsm: hsm.clone(),
                };
                let canary = held.wrap(
                    KeyId::from_bytes(PKCS11_CANARY_ID),
                    version_of(generation)?,
                    &Kek::generate()?,
                )?;
                let (integrity, integrity_key) = new_integrity(&held, generation)?;
                Ok(NewRoot {
                    check: canary,
                    hsm_label: Some(label),
                    material: None,
                    integrity_key,
                    held: Held {
                        number: generation,
                        kind,
                        root: Arc::new(held),
                        integrity,
                    },
                })
            }
        }
    }

    /// Deletes the HSM keys of a root whose generation was never stored.
    pub fn discard_hsm_root(&self, label: &str) {
        if let Ok(hsm) = self.hsm() {
            for l in [label.to_owned(), format!("{label}-audit")] {
                if let Err(e) = hsm.delete_object(&l) {
                    tracing::warn!(label = %l, error = %e, "cannot delete an unused HSM key");
                }
            }
        }
    }

    /// Writes the dev root key file (dev seal only), before the seal record is committed. A file
    /// left from an earlier, now empty, database is moved aside, not overwritten.
    pub fn write_dev_root(&self, root: &RootKeyMaterial) -> Result<(), ApiError> {
        let dir = self
            .dev_dir
            .as_ref()
            .ok_or_else(|| ApiError::new(Reason::DevSealRefused, "the dev seal exists only in dev mode"))?;
        let path = dir.join(DEV_ROOT_FILE);
        if path.exists() {
            let aside = dir.join(format!("{DEV_ROOT_FILE}.replaced-{}", kms_core::now_unix_ms()));
            std::fs::rename(&path, &aside).map_err(|e| {
                ApiError::new(
                    Reason::DevRootWrite,
                    format!("cannot move the old dev root key aside: {e}"),
                )
            })?;
        }
        write_secret_file(&path, hex::encode(root.expose_secret()).as_bytes())
            .map_err(|e| ApiError::new(Reason::DevRootWrite, format!("cannot write the dev root key: {e}")))
    }

    /// Removes the dev root key file written for an init that did not commit.
    pub fn discard_dev_root(&self) {
        if let Some(dir) = &self.dev_dir {
            let _ = std::fs::remove_file(dir.join(DEV_ROOT_FILE));
        }
    }

    /// After init is stored: this process holds the root key it created.
    pub fn finish_init(&self, kind: SealKind, threshold: u32, root: NewRoot) -> Result<(), ApiError> {
        let kcv = check_value(kind, &root.check)
            .ok_or_else(|| ApiError::new(Reason::Internal, "check value of the wrong length"))?;
        let state = State::Unsealed {
            generation: Generation {
                number: 1,
                kind,
                threshold,
                kcv,
            },
            roots: Arc::new(Roots {
                current: root.held,
                next: None,
            }),
        };
        self.replace(&mut self.write(), state);
        Ok(())
    }

    /// Another replica initialized the database: load its seal record (sealed, or unsealed by
    /// the HSM).
    pub async fn adopt_initialized(&self, store: &Store, cfg: &SealConfigRow) {
        if !matches!(&*self.read(), State::Uninitialized) {
            return;
        }
        let Ok(Some(row)) = store.root_generation_unverified(cfg.root_generation).await else {
            return;
        };
        let Ok(generation) = generation_of(&row) else { return };
        let state = match generation.kind {
            SealKind::Pkcs11 => {
                let opened = match self.hsm_held(&row) {
                    Ok(held) => self.open(store, generation, held).await,
                    Err(e) => Err(e),
                };
                match opened {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::warn!(reason = %e.reason, message = %e.message, "cannot open the pkcs11 root of the database initialized by another replica");
                        return;
                    }
                }
            }
            _ => State::Sealed {
                generation,
                shares: BTreeMap::new(),
            },
        };
        let mut st = self.write();
        if matches!(&*st, State::Uninitialized) {
            self.replace(&mut st, state);
        }
    }

    /// Picks up the database's rotation state: a pending next generation is opened (a software
    /// one by unwrapping it with the current root; a pkcs11 one from the HSM) so new secrets are
    /// wrapped under it and secrets already re-wrapped open; a completed rotation (done by
    /// another replica) makes the next generation current. Does nothing while sealed.
    pub async fn adopt_rotation(&self, store: &Store) -> Result<(), ApiError> {
        let (generation, roots) = match &*self.read() {
            State::Unsealed { generation, roots } => (*generation, roots.clone()),
            _ => return Ok(()),
        };
        // As stored: a generation this process does not hold authenticates it after a rotation
        // it missed (the rows it acts on are verified once it holds that generation).
        let Some(cfg) = store.seal_config_unverified().await? else {
            return Ok(());
        };
        if cfg.root_generation > generation.number {
            // Completed elsewhere: the pending generation we hold became current.
            if let Some(next) = &roots.next {
                if next.number == cfg.root_generation {
                    if let Some(row) = store.root_generation(next.number).await? {
                        let g = generation_of(&row)
                            .map_err(|e| ApiError::new(Reason::CorruptRootGeneration, e.to_string()))?;
                        self.promote(g);
                        return Ok(());
                    }
                }
            }
            // We never held it: this process must not go on with a retired root. It takes the
            // current generation instead: from the HSM (pkcs11), or sealed, for custodians to
            // unseal with their shares of that generation.
            tracing::warn!(
                held = generation.number,
                current = cfg.root_generation,
                "the root key was rotated past the generation this process holds: switching to the current one"
            );
            self.take_generation(store, cfg.root_generation).await?;
            return Ok(());
        }
        if roots.next.is_some() {
            return Ok(());
        }
        let Some(row) = store.pending_root_generation().await? else {
            return Ok(());
        };
        let held = self.open_pending(&row, &roots.current)?;
        self.install_held(row.generation, held);
        Ok(())
    }

    /// Wraps a software next root under the current root (for the rotation record).
    pub fn wrap_next_root(&self, next_generation: u64, material: &RootKeyMaterial) -> Result<Vec<u8>, ApiError> {
        let roots = self.roots()?;
        Ok(roots.current.root.wrap(
            KeyId::from_bytes(NEXT_ROOT_WRAP_ID),
            version_of(next_generation)?,
            material,
        )?)
    }

    /// Holds a next generation's root once its rotation record is stored.
    pub fn install_next(&self, number: u64, root: NewRoot) {
        self.install_held(number, root.held);
    }

    fn install_held(&self, number: u64, held_root: Held) {
        let mut st = self.write();
        if let State::Unsealed { generation, roots } = &*st {
            if roots.next.is_none() && number == generation.number + 1 {
                let new = Roots {
                    current: roots.current.clone(),
                    next: Some(held_root),
                };
                let generation = *generation;
                self.replace(
                    &mut st,
                    State::Unsealed {
                        generation,
                        roots: Arc::new(new),
                    },
                );
            }
        }
    }

    /// The rotation completed: the next generation becomes current.
    fn promote(&self, g: Generation) {
        let mut st = self.write();
        if let State::Unsealed { roots, .. } = &*st {
            if let Some(next) = &roots.next {
                if next.number == g.number {
                    let current = next.clone();
                    self.replace(
                        &mut st,
                        State::Unsealed {
                            generation: g,
                            roots: Arc::new(Roots { current, next: None }),
                        },
                    );
                }
            }
        }
    }

    /// After the rotation's completing transaction: promote the next generation.
    pub async fn complete_rotation(&self, store: &Store) -> Result<(), ApiError> {
        self.adopt_rotation(store).await
    }

    /// Opens a custodian's share re-wrapped to this process's unseal key and adds it. The
    /// envelope must carry the share labelled for this admin. When the threshold is reached the
    /// root key is rebuilt and checked (a wrong set is discarded whole so the custodians can
    /// start again), and a rotation in progress is picked up before anything is served, so
    /// secrets already re-wrapped under the next generation open at once.
    pub async fn submit_share(&self, store: &Store, admin_id: &str, envelope: &[u8]) -> Result<Status, ApiError> {
        let Some((generation, root)) = self.add_share(admin_id, envelope)? else {
            return Ok(self.status());
        };
        // The shares rebuilt generation g; if the database moved on meanwhile, g is retired.
        if let Some(cfg) = store.seal_config_unverified().await? {
            if cfg.root_generation != generation.number {
                self.take_generation(store, cfg.root_generation).await?;
                return Err(ApiError::new(
                    Reason::GenerationChanged,
                    format!(
                        "the root key was rotated to generation {} meanwhile: unseal with your shares of that generation",
                        cfg.root_generation
                    ),
                ));
            }
        }
        let row = store
            .root_generation_unverified(generation.number)
            .await?
            .ok_or_else(|| ApiError::new(Reason::CorruptRootGeneration, "the current generation is missing"))?;
        let current = software_held(&row, SealKind::Shamir, &root)?;
        // The rows are checked before anything is served: a seal record, generation or share
        // that kmsd did not write refuses the unseal (the custodians start again once an
        // operator has looked).
        let unsealed = self.open(store, generation, current).await?;
        {
            let mut st = self.write();
            if let State::Sealed { generation: g, .. } = &*st {
                if g.number == generation.number {
                    self.replace(&mut st, unsealed);
                } else {
                    self.republish(&st);
                }
            } else {
                self.republish(&st);
            }
        }
        Ok(self.status())
    }

    /// Adds a share; with the threshold reached, takes the shares and returns the rebuilt root.
    fn add_share(&self, admin_id: &str, envelope: &[u8]) -> Result<Option<(Generation, RootKeyMaterial)>, ApiError> {
        let unreadable = || {
            ApiError::new(
                Reason::ShareUnreadable,
                "the share is not wrapped to this server's current unseal key for this admin (fetch the status again)",
            )
        };
        let envelope = ShareEnvelope::decode(envelope).map_err(|_| unreadable())?;
        let plaintext = self.unseal_key.open(&envelope).map_err(|_| unreadable())?;
        let share = share_wrap::parse_share_plaintext(admin_id, &plaintext).map_err(|_| {
            ApiError::new(
                Reason::ShareNotYours,
                format!("the submitted share is not the one sealed to admin {admin_id}"),
            )
        })?;
        {
            let mut st = self.write();
            match &mut *st {
                State::Uninitialized => {
                    return Err(ApiError::new(Reason::NotInitialized, "the server is not initialized"));
                }
                State::Unsealed { .. } => {
                    return Err(ApiError::new(Reason::AlreadyUnsealed, "the server is already unsealed"));
                }
                State::Sealed { generation, shares } => {
                    if generation.kind != SealKind::Shamir {
                        return Err(ApiError::new(Reason::NotShamir, "this seal takes no shares"));
                    }
                    if shares.contains_key(admin_id) {
                        return Err(ApiError::new(
                            Reason::ShareAlreadySubmitted,
                            format!("admin {admin_id} has already submitted a share in this unseal attempt"),
                        ));
                    }
                    shares.insert(admin_id.to_owned(), share);
                    if u32::try_from(shares.len()).unwrap_or(u32::MAX) >= generation.threshold {
                        let all: Vec<SecretBytes> = std::mem::take(shares).into_values().collect();
                        let t = u8::try_from(generation.threshold).unwrap_or(u8::MAX);
                        let root = kms_core::shamir::combine(t, &all, &generation.kcv).map_err(|e| match e {
                            kms_core::Error::KeyCheckMismatch => ApiError::new(
                                Reason::WrongShareSet,
                                "the submitted shares do not rebuild this server's root key; all shares were discarded, start again",
                            ),
                            other => ApiError::new(Reason::InvalidShare, format!("{other}; all shares were discarded, start again")),
                        })?;
                        return Ok(Some((*generation, root)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Opens a pending generation's root: from the HSM (pkcs11) or by unwrapping it with the
    /// current root (software).
    fn open_pending(&self, row: &RootGenerationRow, current: &Held) -> Result<Held, ApiError> {
        let g = generation_of(row).map_err(|e| ApiError::new(Reason::CorruptRootGeneration, e.to_string()))?;
        match g.kind {
            SealKind::Pkcs11 => self.hsm_held(row),
            kind => {
                let wrapped = row.next_root_wrapped.as_deref().ok_or_else(|| {
                    ApiError::new(
                        Reason::CorruptRootGeneration,
                        "pending software generation without its wrapped root",
                    )
                })?;
                let material = current
                    .root
                    .unwrap(KeyId::from_bytes(NEXT_ROOT_WRAP_ID), version_of(g.number)?, wrapped)
                    .map_err(|_| ApiError::new(Reason::CorruptRootGeneration, "the next root does not unwrap"))?;
                software_held(row, kind, &material)
            }
        }
    }

    /// Drops the root keys (shamir only: the other seals unseal themselves at the next start).
    pub fn seal(&self) -> Result<(), ApiError> {
        let mut st = self.write();
        let generation = match &*st {
            State::Unsealed { generation, .. } => *generation,
            State::Sealed { .. } => return Ok(()),
            State::Uninitialized => return Err(ApiError::new(Reason::NotInitialized, "the server is not initialized")),
        };
        if generation.kind != SealKind::Shamir {
            return Err(ApiError::new(
                Reason::NotShamir,
                "only the shamir seal can be sealed at run time (stop the process to seal the others)",
            ));
        }
        self.replace(
            &mut st,
            State::Sealed {
                generation,
                shares: BTreeMap::new(),
            },
        );
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the state itself is still consistent
        // because every write replaces it whole.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn state_key_of(st: &State) -> (bool, u64, Option<u64>) {
    match st {
        State::Uninitialized => (true, 0, None),
        State::Sealed { generation, .. } => (true, generation.number, None),
        State::Unsealed { generation, roots } => (false, generation.number, roots.next.as_ref().map(|n| n.number)),
    }
}

/// A root a generation will have: the material for software seals (to split or write), its
/// check value (KCV, or the pkcs11 canary) and the held root.
pub struct NewRoot {
    /// Stored check value.
    pub check: Vec<u8>,
    /// The HSM key label (pkcs11).
    pub hsm_label: Option<String>,
    /// Software seals' material.
    pub material: Option<RootKeyMaterial>,
    /// The generation's integrity key, wrapped under the new root (stored in its generation
    /// row).
    pub integrity_key: Vec<u8>,
    held: Held,
}

impl NewRoot {
    /// The new generation's integrity key, as a ring (what Init authenticates its rows with).
    pub fn key_ring(&self) -> Option<KeyRing> {
        KeyRing::new(vec![(self.held.number, self.held.integrity.clone())])
    }
}

/// A software root of the generation `row` describes, with its integrity key.
fn software_held(row: &RootGenerationRow, kind: SealKind, material: &RootKeyMaterial) -> Result<Held, ApiError> {
    let root: Arc<dyn RootOfTrust> = Arc::new(GenerationRoot {
        root: SoftwareRoot::new(material)?,
        generation: row.generation,
    });
    let integrity = open_integrity(root.as_ref(), row.generation, row.integrity_key.as_deref())?;
    Ok(Held {
        number: row.generation,
        kind,
        root,
        integrity,
    })
}

fn version_of(generation: u64) -> Result<KeyVersion, ApiError> {
    u32::try_from(generation)
        .ok()
        .and_then(KeyVersion::new)
        .ok_or_else(|| ApiError::new(Reason::CorruptRootGeneration, "generation out of range"))
}

fn read_dev_root(dir: &std::path::Path) -> Result<RootKeyMaterial, LoadError> {
    let path = dir.join(DEV_ROOT_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| LoadError::Refused(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = zeroize::Zeroizing::new(
        hex::decode(text.trim()).map_err(|_| LoadError::Refused(format!("{} is corrupt", path.display())))?,
    );
    RootKeyMaterial::from_slice(&mut bytes).ok_or_else(|| LoadError::Refused(format!("{} is corrupt", path.display())))
}

/// Writes a file readable only by its owner, refusing to follow or replace an existing one.
pub fn write_secret_file(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}
