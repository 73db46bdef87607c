//! Keys as the data plane sees them: metadata cached for a short, configured time (so the hot
//! path rarely reads the database, and a change made on another replica applies within that
//! time; a change made here applies at once), and KEKs unwrapped once and cached in zeroizing
//! memory, so the hot path never asks the seal (or, later, an HSM).
//!
//! Never logs a KEK, and drops every cached KEK when the server is sealed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kms_core::blob::Kek;
use kms_core::ids::{KeyId, KeyName, KeyVersion};

use kms_core::secret::SecretBytes;

use crate::attest::SealedRelease;
use crate::error::ApiError;
use crate::seal::Seal;
use crate::storage::{KeyRow, Store};
use kms_proto::Reason;

/// A blob made by the data plane: the ciphertext and the key version it is under.
#[derive(Debug)]
pub struct Wrapped {
    /// The ciphertext blob (`kms_core::blob`).
    pub blob: Vec<u8>,
    /// The key's id.
    pub key_id: KeyId,
    /// The key version.
    pub version: KeyVersion,
}

/// What `Encrypt` wraps: the plaintext as sent, or sealed to this node's HPKE key (so a
/// TLS-terminating relay saw only HPKE ciphertext).
pub enum EncryptInput<'a> {
    /// In the request, in clear.
    Clear(&'a [u8]),
    /// Sealed to `recipient` (the node HPKE public key the caller names).
    Sealed {
        /// The node HPKE public key the caller sealed to.
        recipient: [u8; 32],
        /// The HPKE ciphertext.
        sealed: kms_core::hpke_seal::Sealed,
    },
}

/// Plaintext leaving the data plane in one call.
pub enum Plaintext {
    /// In the clear: the key releases to unattested callers.
    Clear(SecretBytes),
    /// HPKE-sealed to the attested workload's key and signed by this node; never in the clear.
    Sealed(SealedRelease),
}

/// Plaintext released by GenerateDataKey or Decrypt.
pub struct Released {
    /// The key it was under.
    pub key_id: KeyId,
    /// The key version.
    pub version: KeyVersion,
    /// The plaintext.
    pub plaintext: Plaintext,
}

/// ReEncrypt's result: the source it came from and the new blob.
#[derive(Debug)]
pub struct ReEncrypted {
    /// The source key.
    pub source_key_id: KeyId,
    /// The source key version.
    pub source_version: KeyVersion,
    /// The blob under the destination key.
    pub wrapped: Wrapped,
}

/// The key cache.
pub struct Keys {
    store: Store,
    seal: Arc<Seal>,
    ttl: Duration,
    meta: RwLock<HashMap<KeyId, (Arc<KeyRow>, Instant)>>,
    names: RwLock<HashMap<String, KeyId>>,
    keks: RwLock<HashMap<(KeyId, KeyVersion), Arc<Kek>>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys")
    }
}

impl Keys {
    /// An empty cache.
    pub fn new(store: Store, seal: Arc<Seal>, ttl: Duration) -> Self {
        Self {
            store,
            seal,
            ttl,
            meta: RwLock::default(),
            names: RwLock::default(),
            keks: RwLock::default(),
        }
    }

    /// The key named by `key_ref` (an id `k-…` or a name).
    pub async fn resolve(&self, key_ref: &str) -> Result<Arc<KeyRow>, ApiError> {
        if key_ref.is_empty() {
            return Err(ApiError::new(
                Reason::MissingKey,
                "no key given (an id `k-…` or a name)",
            ));
        }
        if KeyId::looks_like_id(key_ref) {
            let id = KeyId::parse(key_ref)?;
            return self.by_id(id).await;
        }
        // A malformed name is the caller's mistake (`invalid_argument`), not a missing key, and
        // goes to no database query and, unbounded, into no audit record.
        KeyName::parse(key_ref)?;
        let cached_id = read(&self.names).get(key_ref).copied();
        if let Some(id) = cached_id {
            if let Some(k) = self.fresh(id) {
                return Ok(k);
            }
        }
        let row = self
            .store
            .key_by_name(key_ref)
            .await?
            .ok_or_else(|| ApiError::new(Reason::KeyNotFound, format!("no key named {key_ref:?}")))?;
        Ok(self.remember(row))
    }

    /// The key with this id.
    pub async fn by_id(&self, id: KeyId) -> Result<Arc<KeyRow>, ApiError> {
        if let Some(k) = self.fresh(id) {
            return Ok(k);
        }
        let row = self
            .store
            .key_by_id(id)
            .await?
            .ok_or_else(|| ApiError::new(Reason::KeyNotFound, format!("no key {id}")))?;
        Ok(self.remember(row))
    }

    /// Records a row just read or written (a change made on this replica applies at once).
    pub fn remember(&self, row: KeyRow) -> Arc<KeyRow> {
        if row.state == kms_core::key::KeyState::Destroyed {
            write(&self.keks).retain(|(id, _), _| *id != row.id);
        }
        let row = Arc::new(row);
        write(&self.names).insert(row.name.as_str().to_owned(), row.id);
        write(&self.meta).insert(row.id, (row.clone(), Instant::now()));
        row
    }

    fn fresh(&self, id: KeyId) -> Option<Arc<KeyRow>> {
        let meta = read(&self.meta);
        let (row, at) = meta.get(&id)?;
        (at.elapsed() < self.ttl).then(|| row.clone())
    }

    /// The KEK of (key, version), unwrapped by the seal once and then cached.
    pub async fn kek(&self, key: &KeyRow, version: KeyVersion) -> Result<Arc<Kek>, ApiError> {
        let id = key.id;
        if let Some(k) = read(&self.keks).get(&(id, version)) {
            return Ok(k.clone());
        }
        let root = self.seal.root()?;
        let wrapped = match self.store.wrapped_kek(id, version).await? {
            None => {
                return Err(ApiError::new(
                    Reason::KeyVersionNotFound,
                    format!("key {} has no version {version}", key.id),
                ))
            }
            Some(None) => {
                return Err(ApiError::new(
                    Reason::KeyDestroyed,
                    format!("key {} version {version} has been destroyed", key.id),
                ))
            }
            Some(Some(w)) => w,
        };
        let kek = Arc::new(root.unwrap(id, version, &wrapped).map_err(|_| {
            ApiError::new(
                Reason::KekUnwrapFailed,
                format!(
                    "cannot unwrap key {} version {version}: wrong root key or corrupted record",
                    key.id
                ),
            )
        })?);
        write(&self.keks).insert((id, version), kek.clone());
        // A Seal that ran while this call unwrapped must not leave its KEK cached.
        if self.seal.root().is_err() {
            self.clear_keks();
            return Err(ApiError::sealed());
        }
        Ok(kek)
    }

    /// `sealed` (or `not_initialized`) unless the root of trust is available; `state_rollback`
    /// once this server found the database gone back behind a state it saw.
    pub fn ensure_unsealed(&self) -> Result<(), ApiError> {
        self.seal.root()?;
        self.store.integrity().check_alarm().map_err(ApiError::from)
    }

    /// Forgets every cached KEK (when sealing).
    pub fn clear_keks(&self) {
        write(&self.keks).clear();
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Poisoning only follows a panic while holding the lock; the maps stay consistent because
    // every write is a single insert or remove.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// A key to create, decoded and checked (`wire::admin::new_key_from_wire`).
pub struct NewKey {
    /// Its unique name.
    pub name: KeyName,
    /// Free text, at most 1024 characters.
    pub description: String,
    /// At most 50 tags.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Who may call which data-plane operation.
    pub grants: kms_core::policy::AccessPolicy,
    /// Its release policy.
    pub policy: kms_core::policy::ReleasePolicy,
}
