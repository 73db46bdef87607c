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

mod dev;
mod generations;
mod pkcs11;
mod shamir;

pub use dev::write_secret_file;
use dev::*;
pub use generations::NewRoot;
use generations::*;
use pkcs11::*;
pub use pkcs11::{anchor_label, read_anchor};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use kms_core::blob::Kek;
use kms_core::ids::{KeyId, KeyVersion};
use kms_core::integrity::IntegrityKey;
use kms_core::root::{kek_wrap_aad, key_check_value, RootKeyMaterial, SoftwareRoot};
use kms_core::secret::{SecretBytes, SecretKey};
use kms_core::share_wrap::{self, ShareEnvelope, UnsealKey};
use kms_hsm::{Hsm, HsmRoot, HsmSigner};

use crate::config::HsmSealConfig;
use crate::error::ApiError;
use crate::storage::{KeyRing, RootGenerationRow, SealConfigRow, Store, StoreError, Table};
use crate::wrap_ids;
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

/// A replica's seal status as answered (GetSealStatus, and signed in GetNodeIdentity): the seal's
/// own [`Status`] with what the database adds.
#[derive(Debug)]
pub struct StatusReport {
    /// The seal's state in this process.
    pub status: Status,
    /// M of the M-of-N quorum (0 before init).
    pub approval_quorum: u32,
    /// The deployment Init made (empty before init).
    pub deployment_id: String,
    /// The authenticated state version this replica has seen.
    pub state_version: u64,
    /// Why nothing is trusted, when the integrity alarm is up or the seal refuses to open.
    pub integrity_alarm: String,
    /// Secrets still wrapped under the previous generation, while a rotation runs.
    pub rotation_remaining: u64,
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

    /// Drops the root keys, or on a sealed replica the shares submitted so far (shamir only: the
    /// other seals unseal themselves at the next start).
    pub fn seal(&self) -> Result<(), ApiError> {
        let mut st = self.write();
        let generation = match &*st {
            State::Unsealed { generation, .. } | State::Sealed { generation, .. } => *generation,
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
