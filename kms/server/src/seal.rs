//! The seal: how the root key is held, behind one boundary. The rest of the server asks the seal
//! for a [`RootOfTrust`] that wraps and unwraps KEKs, and never touches root key material.
//! Implementations: `shamir` (the root key rebuilt in memory from M custodians' shares) and
//! `dev` (a root key file, only with `kmsd --dev`). An HSM seal is another `RootOfTrust`.
//!
//! Never logs, returns or stores the root key or a share.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use kms_core::blob::Kek;
use kms_core::hpke_seal::{PrivateKey, X25519};
use kms_core::ids::{KeyId, KeyVersion};
use kms_core::root::{key_check_value, RootKeyMaterial, SoftwareRoot};
use kms_core::secret::SecretBytes;

use crate::error::ApiError;
use crate::storage::{SealConfigRow, Store};

/// Wraps and unwraps KEKs under the root key.
pub trait RootOfTrust: Send + Sync {
    /// Wraps `kek` for (key, version).
    fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, kms_core::Error>;
    /// Unwraps what [`RootOfTrust::wrap`] wrapped for the same (key, version).
    fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, kms_core::Error>;
}

impl RootOfTrust for SoftwareRoot {
    fn wrap(&self, key_id: KeyId, version: KeyVersion, kek: &Kek) -> Result<Vec<u8>, kms_core::Error> {
        SoftwareRoot::wrap(self, key_id, version, kek)
    }
    fn unwrap(&self, key_id: KeyId, version: KeyVersion, wrapped: &[u8]) -> Result<Kek, kms_core::Error> {
        SoftwareRoot::unwrap(self, key_id, version, wrapped)
    }
}

/// The seal kinds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SealKind {
    /// M-of-N custodians.
    Shamir,
    /// Dev mode root key file.
    Dev,
}

impl SealKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shamir => "shamir",
            Self::Dev => "dev",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "shamir" => Some(Self::Shamir),
            "dev" => Some(Self::Dev),
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
    /// The X25519 key custodians seal their share to.
    pub unseal_public_key: Vec<u8>,
    /// The root key's check value, once initialized: custodians compare it with the value they
    /// saw at init, so a database whose seal record was swapped is noticed before they unseal.
    pub key_check_value: Vec<u8>,
}

enum State {
    Uninitialized,
    Sealed {
        kind: SealKind,
        threshold: u32,
        kcv: [u8; 16],
        shares: BTreeMap<String, SecretBytes>,
    },
    Unsealed {
        kind: SealKind,
        threshold: u32,
        kcv: [u8; 16],
        root: Arc<dyn RootOfTrust>,
    },
}

/// The seal.
pub struct Seal {
    state: RwLock<State>,
    unseal_key: PrivateKey<X25519>,
    dev_dir: Option<PathBuf>,
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
    Db(#[from] sqlx::Error),
    /// Configuration mismatch or corrupt state.
    #[error("{0}")]
    Refused(String),
}

const DEV_ROOT_FILE: &str = "dev-root-key";

impl Seal {
    /// Loads the seal state at start: uninitialized, sealed (shamir), or unsealed from the dev
    /// root key file (dev seal, dev mode only).
    pub async fn load(store: &Store, dev_dir: Option<PathBuf>) -> Result<Self, LoadError> {
        let state = match store.seal_config().await? {
            None => State::Uninitialized,
            Some(cfg) => {
                let kind = SealKind::parse(&cfg.kind)
                    .ok_or_else(|| LoadError::Refused(format!("unknown seal kind {:?} in the database", cfg.kind)))?;
                let kcv: [u8; 16] = cfg
                    .kcv
                    .as_slice()
                    .try_into()
                    .map_err(|_| LoadError::Refused("corrupt key check value in the database".into()))?;
                match kind {
                    SealKind::Shamir => State::Sealed {
                        kind,
                        threshold: cfg.threshold,
                        kcv,
                        shares: BTreeMap::new(),
                    },
                    SealKind::Dev => {
                        let dir = dev_dir.as_ref().ok_or_else(|| {
                            LoadError::Refused(
                                "this database uses the dev seal; it can only be served with `kmsd --dev`".into(),
                            )
                        })?;
                        let root = read_dev_root(dir)?;
                        if key_check_value(&root) != kcv {
                            return Err(LoadError::Refused(format!(
                                "{} does not hold the root key of this database",
                                dir.join(DEV_ROOT_FILE).display()
                            )));
                        }
                        State::Unsealed {
                            kind,
                            threshold: cfg.threshold,
                            kcv,
                            root: Arc::new(SoftwareRoot::new(&root).map_err(|e| LoadError::Refused(e.to_string()))?),
                        }
                    }
                }
            }
        };
        Ok(Self {
            state: RwLock::new(state),
            unseal_key: PrivateKey::generate(),
            dev_dir,
        })
    }

    /// The root of trust, or `sealed`.
    pub fn root(&self) -> Result<Arc<dyn RootOfTrust>, ApiError> {
        match &*self.read() {
            State::Unsealed { root, .. } => Ok(root.clone()),
            State::Uninitialized => Err(ApiError::precondition(
                "not_initialized",
                "the server is not initialized (kmsctl init)",
            )),
            State::Sealed { .. } => Err(ApiError::sealed()),
        }
    }

    /// `not_initialized` until init has run (operations that need no root key).
    pub fn require_initialized(&self) -> Result<(), ApiError> {
        if self.is_initialized() {
            Ok(())
        } else {
            Err(ApiError::precondition(
                "not_initialized",
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
            },
            State::Sealed {
                kind,
                threshold,
                shares,
                kcv,
            } => Status {
                initialized: true,
                sealed: true,
                kind: Some(*kind),
                threshold: *threshold,
                progress: u32::try_from(shares.len()).unwrap_or(u32::MAX),
                unseal_public_key,
                key_check_value: kcv.to_vec(),
            },
            State::Unsealed {
                kind, threshold, kcv, ..
            } => Status {
                initialized: true,
                sealed: false,
                kind: Some(*kind),
                threshold: *threshold,
                progress: 0,
                unseal_public_key,
                key_check_value: kcv.to_vec(),
            },
        }
    }

    /// Creates a fresh root key for init. For the dev seal it is also written to the dev root key
    /// file. Returns the material (to split into shares) and the seal record to store; the seal
    /// becomes unsealed with it only after the record is stored ([`Seal::finish_init`]).
    pub fn new_root(&self, kind: SealKind, threshold: u32) -> Result<(RootKeyMaterial, SealConfigRow), ApiError> {
        if kind == SealKind::Dev && self.dev_dir.is_none() {
            return Err(ApiError::precondition(
                "dev_seal_refused",
                "the dev seal exists only in dev mode (kmsd --dev)",
            ));
        }
        let root = RootKeyMaterial::generate()?;
        let row = SealConfigRow {
            kind: kind.as_str().to_owned(),
            threshold,
            kcv: key_check_value(&root).to_vec(),
        };
        Ok((root, row))
    }

    /// Writes the dev root key file (dev seal only), before the seal record is committed. A file
    /// left from an earlier, now empty, database is moved aside, not overwritten.
    pub fn write_dev_root(&self, root: &RootKeyMaterial) -> Result<(), ApiError> {
        let dir = self
            .dev_dir
            .as_ref()
            .ok_or_else(|| ApiError::precondition("dev_seal_refused", "the dev seal exists only in dev mode"))?;
        let path = dir.join(DEV_ROOT_FILE);
        if path.exists() {
            let aside = dir.join(format!("{DEV_ROOT_FILE}.replaced-{}", kms_core::now_unix_ms()));
            std::fs::rename(&path, &aside).map_err(|e| {
                ApiError::internal("dev_root_write", format!("cannot move the old dev root key aside: {e}"))
            })?;
        }
        write_secret_file(&path, hex::encode(root.expose_secret()).as_bytes())
            .map_err(|e| ApiError::internal("dev_root_write", format!("cannot write the dev root key: {e}")))
    }

    /// Removes the dev root key file written for an init that did not commit.
    pub fn discard_dev_root(&self) {
        if let Some(dir) = &self.dev_dir {
            let _ = std::fs::remove_file(dir.join(DEV_ROOT_FILE));
        }
    }

    /// After init is stored: this process holds the root key it created.
    pub fn finish_init(&self, kind: SealKind, threshold: u32, root: &RootKeyMaterial) -> Result<(), ApiError> {
        let software = SoftwareRoot::new(root)?;
        *self.write() = State::Unsealed {
            kind,
            threshold,
            kcv: software.kcv(),
            root: Arc::new(software),
        };
        Ok(())
    }

    /// Another replica initialized the database: load its seal record (sealed).
    pub fn adopt_sealed(&self, cfg: &SealConfigRow) {
        let mut st = self.write();
        if matches!(&*st, State::Uninitialized) {
            if let (Some(kind), Ok(kcv)) = (SealKind::parse(&cfg.kind), <[u8; 16]>::try_from(cfg.kcv.as_slice())) {
                *st = State::Sealed {
                    kind,
                    threshold: cfg.threshold,
                    kcv,
                    shares: BTreeMap::new(),
                };
            }
        }
    }

    /// Opens a custodian's share sealed to this process's unseal key and adds it. When the
    /// threshold is reached the root key is rebuilt and checked; a wrong set is discarded
    /// whole so the custodians can start again.
    pub fn submit_share(
        &self,
        admin_id: &str,
        encapsulated_key: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Status, ApiError> {
        let info = kms_core::hpke_seal::unseal_info(admin_id);
        let share = self
            .unseal_key
            .open(
                &kms_core::hpke_seal::Sealed {
                    encapsulated_key,
                    ciphertext,
                },
                &info,
                b"",
            )
            .map_err(|_| {
                ApiError::invalid(
                    "share_unreadable",
                    "the share is not sealed to this server's current unseal key for this admin (fetch the status again)",
                )
            })?;
        {
            let mut st = self.write();
            match &mut *st {
                State::Uninitialized => {
                    return Err(ApiError::precondition(
                        "not_initialized",
                        "the server is not initialized",
                    ));
                }
                State::Unsealed { .. } => {
                    return Err(ApiError::precondition(
                        "already_unsealed",
                        "the server is already unsealed",
                    ));
                }
                State::Sealed {
                    kind,
                    threshold,
                    kcv,
                    shares,
                } => {
                    if *kind != SealKind::Shamir {
                        return Err(ApiError::precondition("not_shamir", "this seal takes no shares"));
                    }
                    if shares.contains_key(admin_id) {
                        return Err(ApiError::precondition(
                            "share_already_submitted",
                            format!("admin {admin_id} has already submitted a share in this unseal attempt"),
                        ));
                    }
                    shares.insert(admin_id.to_owned(), share);
                    if u32::try_from(shares.len()).unwrap_or(u32::MAX) >= *threshold {
                        let all: Vec<SecretBytes> = std::mem::take(shares).into_values().collect();
                        let t = u8::try_from(*threshold).unwrap_or(u8::MAX);
                        let root = kms_core::shamir::combine(t, &all, kcv).map_err(|e| match e {
                            kms_core::Error::KeyCheckMismatch => ApiError::invalid(
                                "wrong_share_set",
                                "the submitted shares do not rebuild this server's root key; all shares were discarded, start again",
                            ),
                            other => ApiError::invalid("invalid_share", format!("{other}; all shares were discarded, start again")),
                        })?;
                        let software = SoftwareRoot::new(&root)?;
                        *st = State::Unsealed {
                            kind: *kind,
                            threshold: *threshold,
                            kcv: *kcv,
                            root: Arc::new(software),
                        };
                    }
                }
            }
        }
        Ok(self.status())
    }

    /// Drops the root key (shamir only: a dev seal would unseal itself at the next start anyway).
    pub fn seal(&self) -> Result<(), ApiError> {
        let mut st = self.write();
        let (kind, threshold, kcv) = match &*st {
            State::Unsealed {
                kind, threshold, kcv, ..
            } => (*kind, *threshold, *kcv),
            State::Sealed { .. } => return Ok(()),
            State::Uninitialized => {
                return Err(ApiError::precondition(
                    "not_initialized",
                    "the server is not initialized",
                ))
            }
        };
        if kind != SealKind::Shamir {
            return Err(ApiError::precondition(
                "not_shamir",
                "only the shamir seal can be sealed at run time",
            ));
        }
        *st = State::Sealed {
            kind,
            threshold,
            kcv,
            shares: BTreeMap::new(),
        };
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
