//! The data-key cache: one data key (one attested release from kmsd) for many messages,
//! within limits on its age, the messages and the bytes it protects.
//!
//! An entry's id is a SHA-512 over everything that defines it: encrypt or decrypt, the suite,
//! the commitment policy, the keyrings (their cache identities: name, and what tells their wrapping keys or client
//! identities apart), and the
//! encryption context (for decryption also every wrapped key of the header). So a key cached
//! for one commitment policy, context or key set is never used for another (the ESDK's
//! CVE-2026-6550 was a cache shared across commitment policies).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest;

use crate::context::EncryptionContext;
use crate::crypto::{DataKey, Signer};
use crate::header::EncryptedDataKey;
use crate::suite::{CommitmentPolicy, Suite};

/// How long and how much one cached data key may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// An entry is not used after this age.
    pub max_age: Duration,
    /// An encryption entry protects at most this many messages.
    pub max_messages: u64,
    /// An encryption entry protects at most this many plaintext bytes.
    pub max_bytes: u64,
}

impl Default for CacheLimits {
    /// 5 minutes, 2^20 messages, 2^32 bytes.
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(300),
            max_messages: 1 << 20,
            max_bytes: 1 << 32,
        }
    }
}

/// What an encryption entry holds: the data key, its wraps, the context they are bound to, and
/// the signing key of a signed suite (shared by the messages of this entry).
pub(crate) struct EncryptionEntry {
    pub(crate) data_key: DataKey,
    pub(crate) edks: Vec<EncryptedDataKey>,
    pub(crate) context: EncryptionContext,
    pub(crate) signer: Option<Arc<Signer>>,
}

struct Slot<T> {
    value: Arc<T>,
    created: Instant,
    messages: u64,
    bytes: u64,
}

/// A cache of data keys, shared by any number of [`crate::Envelope`]s. Entries are zeroized
/// when evicted and the last message using them is done.
pub struct DataKeyCache {
    capacity: usize,
    limits: CacheLimits,
    encrypt: Mutex<HashMap<[u8; 64], Slot<EncryptionEntry>>>,
    decrypt: Mutex<HashMap<[u8; 64], Slot<DataKey>>>,
}

impl std::fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("capacity", &self.capacity)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl DataKeyCache {
    /// A cache of at most `capacity` entries of each kind.
    pub fn new(capacity: usize, limits: CacheLimits) -> Self {
        Self {
            capacity: capacity.max(1),
            limits,
            encrypt: Mutex::new(HashMap::new()),
            decrypt: Mutex::new(HashMap::new()),
        }
    }

    /// The limits.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// Entries held now (encryption, decryption), for tests and metrics.
    pub fn len(&self) -> (usize, usize) {
        (lock(&self.encrypt).len(), lock(&self.decrypt).len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Drops every entry.
    pub fn clear(&self) {
        lock(&self.encrypt).clear();
        lock(&self.decrypt).clear();
    }

    /// An encryption entry that may protect one more message of `bytes` bytes (counted now).
    pub(crate) fn take_encryption(&self, id: &[u8; 64], bytes: u64) -> Option<Arc<EncryptionEntry>> {
        let mut map = lock(&self.encrypt);
        let limits = self.limits;
        let usable = map.get(id).is_some_and(|s| {
            s.created.elapsed() < limits.max_age
                && s.messages < limits.max_messages
                && s.bytes.saturating_add(bytes) <= limits.max_bytes
        });
        if !usable {
            map.remove(id);
            return None;
        }
        let slot = map.get_mut(id)?;
        slot.messages += 1;
        slot.bytes += bytes;
        Some(slot.value.clone())
    }

    /// Keeps a fresh encryption entry that has protected one message of `bytes` bytes.
    pub(crate) fn put_encryption(&self, id: [u8; 64], entry: Arc<EncryptionEntry>, bytes: u64) {
        if bytes > self.limits.max_bytes || self.limits.max_messages <= 1 {
            return;
        }
        insert(&mut lock(&self.encrypt), self.capacity, id, entry, 1, bytes);
    }

    /// A data key for a message whose header has this id (decryption entries count no bytes:
    /// the writer chose them).
    pub(crate) fn take_decryption(&self, id: &[u8; 64]) -> Option<DataKey> {
        let mut map = lock(&self.decrypt);
        if map.get(id).is_some_and(|s| s.created.elapsed() >= self.limits.max_age) {
            map.remove(id);
        }
        map.get(id).map(|s| s.value.duplicate())
    }

    /// Keeps a data key that opened and verified a header.
    pub(crate) fn put_decryption(&self, id: [u8; 64], key: &DataKey) {
        insert(
            &mut lock(&self.decrypt),
            self.capacity,
            id,
            Arc::new(key.duplicate()),
            0,
            0,
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn insert<T>(
    map: &mut HashMap<[u8; 64], Slot<T>>,
    capacity: usize,
    id: [u8; 64],
    value: Arc<T>,
    messages: u64,
    bytes: u64,
) {
    if map.len() >= capacity && !map.contains_key(&id) {
        if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) {
            map.remove(&oldest);
        }
    }
    map.insert(
        id,
        Slot {
            value,
            created: Instant::now(),
            messages,
            bytes,
        },
    );
}

/// Builds a cache id.
pub(crate) struct CacheId(digest::Context);

impl CacheId {
    pub(crate) fn new(kind: &str, suite: Suite, policy: CommitmentPolicy, keyrings: &[Vec<u8>]) -> Self {
        let mut id = Self(digest::Context::new(&digest::SHA512));
        id.0.update(b"kms-envelope-cache-v1\0");
        id.field(kind.as_bytes());
        id.field(&suite.id().to_be_bytes());
        id.field(&[policy.cache_tag()]);
        id.field(&(keyrings.len() as u64).to_be_bytes());
        for k in keyrings {
            id.field(k);
        }
        id
    }

    /// Adds a length-prefixed field.
    pub(crate) fn field(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    pub(crate) fn context(&mut self, context: &EncryptionContext) {
        self.field(&(context.pairs().len() as u64).to_be_bytes());
        for (k, v) in context.pairs() {
            self.field(k.as_bytes());
            self.field(v.as_bytes());
        }
    }

    pub(crate) fn finish(self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}
