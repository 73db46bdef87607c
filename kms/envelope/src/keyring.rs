//! Keyrings: who makes, wraps and opens a message's data key. A message can carry the data key
//! wrapped by several keyrings (two kmsd deployments in two regions, or kmsd and an offline
//! raw AES key); a reader needs only one of them.
//!
//! Our kmsd keyring lives in `kms-agent` (`kms_agent::envelope`), on the attested session; this
//! crate has the trait and the ESDK's raw AES keyring (interoperable with every ESDK).

use std::future::Future;
use std::pin::Pin;

use zeroize::Zeroizing;

use crate::context::EncryptionContext;
use crate::crypto::{ContentKey, DataKey};
use crate::error::Error;
use crate::header::{EncryptedDataKey, IV_LEN, TAG_LEN};
use crate::suite::Suite;

/// A boxed future, as keyrings return (they are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a keyring is asked about: the message's suite and its whole encryption context
/// (stored and authenticated-only pairs, and a signed message's public key).
#[derive(Clone, Copy, Debug)]
pub struct KeyringRequest<'a> {
    /// The message's suite (the data key has its `key_len()`).
    pub suite: Suite,
    /// The encryption context the wrapped key is bound to.
    pub context: &'a EncryptionContext,
}

/// Makes, wraps and opens data keys.
pub trait Keyring: Send + Sync {
    /// Names the keyring and its wrapping key in errors and cache ids (e.g.
    /// `kmsd k-…` or `raw-aes namespace/name`). Two keyrings with the same name must wrap
    /// under the same key.
    fn name(&self) -> String;

    /// What the data-key cache keys this keyring's entries by: must differ between keyrings
    /// whose wrapped keys or releases differ (another wrapping key under the same name, another
    /// client identity or release mode). By default the name.
    fn cache_identity(&self) -> Vec<u8> {
        self.name().into_bytes()
    }

    /// A new data key and its wrap under this keyring. By default a random key, wrapped with
    /// [`Keyring::wrap`]; kmsd makes the key itself (GenerateDataKey).
    fn generate<'a>(
        &'a self,
        request: KeyringRequest<'a>,
    ) -> BoxFuture<'a, Result<(DataKey, EncryptedDataKey), Error>> {
        Box::pin(async move {
            let key = DataKey::generate(request.suite.key_len())?;
            let edk = self.wrap(&key, request).await?;
            Ok((key, edk))
        })
    }

    /// Wraps a data key another keyring made.
    fn wrap<'a>(
        &'a self,
        key: &'a DataKey,
        request: KeyringRequest<'a>,
    ) -> BoxFuture<'a, Result<EncryptedDataKey, Error>>;

    /// Whether `edk` is this keyring's to open (its provider id and info match); only those
    /// are given to [`Keyring::unwrap`].
    fn recognizes(&self, edk: &EncryptedDataKey) -> bool;

    /// Opens `edk`.
    fn unwrap<'a>(
        &'a self,
        edk: &'a EncryptedDataKey,
        request: KeyringRequest<'a>,
    ) -> BoxFuture<'a, Result<DataKey, Error>>;
}

/// A keyring failure, naming the keyring; `source` is its own error (or a message).
pub fn keyring_error(keyring: &dyn Keyring, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Keyring {
        keyring: keyring.name(),
        source: source.into(),
    }
}

/// The ESDK's raw AES keyring (`framework/raw-aes-keyring.md`): the data key AES-GCM-wrapped
/// under a local key, with the serialized encryption context as AAD. Provider id: the key's
/// namespace; provider info: its name, the tag length in bits (u32), the IV length (u32), the
/// IV. Interoperable with every ESDK's raw AES keyring or `RawMasterKey`; for keys kept
/// offline (escrow), tests, and reading messages written by other ESDKs.
pub struct RawAesKeyring {
    namespace: String,
    name: String,
    key: ContentKey,
    /// HMAC-SHA-256 of a fixed label under the wrapping key: tells keys apart in cache ids
    /// without revealing them.
    key_tag: [u8; 32],
}

impl RawAesKeyring {
    /// A keyring over a 16-, 24- or 32-byte wrapping key (zeroize your copy).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, key: &[u8]) -> Result<Self, Error> {
        let key_bytes = key;
        let key = ContentKey::from_slice(key)
            .map_err(|_| Error::InvalidArgument(format!("a raw AES key is 16, 24 or 32 bytes, not {}", key.len())))?;
        let namespace = namespace.into();
        if namespace.starts_with("aws-kms") {
            return Err(Error::InvalidArgument(
                "a raw AES key's namespace may not start with \"aws-kms\" (reserved for AWS KMS)".into(),
            ));
        }
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_bytes),
            b"kms-envelope raw AES keyring cache identity",
        );
        let mut key_tag = [0u8; 32];
        key_tag.copy_from_slice(tag.as_ref());
        Ok(Self {
            namespace,
            name: name.into(),
            key,
            key_tag,
        })
    }

    fn info_len(&self) -> usize {
        self.name.len() + 8 + IV_LEN
    }
}

impl Keyring for RawAesKeyring {
    fn name(&self) -> String {
        format!("raw-aes {}/{}", self.namespace, self.name)
    }

    fn cache_identity(&self) -> Vec<u8> {
        let mut id = self.name().into_bytes();
        id.push(0);
        id.extend_from_slice(&self.key_tag);
        id
    }

    fn wrap<'a>(
        &'a self,
        key: &'a DataKey,
        request: KeyringRequest<'a>,
    ) -> BoxFuture<'a, Result<EncryptedDataKey, Error>> {
        Box::pin(async move {
            let iv: [u8; IV_LEN] =
                kms_core::random_array().map_err(|_| Error::Crypto("the random number generator failed"))?;
            let aad = request.context.serialize()?;
            let mut ciphertext = key.expose_secret().to_vec();
            let tag = self.key.seal(&iv, &aad, &mut ciphertext)?;
            ciphertext.extend_from_slice(&tag);
            let mut info = Vec::with_capacity(self.info_len());
            info.extend_from_slice(self.name.as_bytes());
            info.extend_from_slice(&((TAG_LEN * 8) as u32).to_be_bytes());
            info.extend_from_slice(&(IV_LEN as u32).to_be_bytes());
            info.extend_from_slice(&iv);
            Ok(EncryptedDataKey {
                provider_id: self.namespace.clone(),
                provider_info: info,
                ciphertext,
            })
        })
    }

    fn recognizes(&self, edk: &EncryptedDataKey) -> bool {
        let info = &edk.provider_info;
        edk.provider_id == self.namespace
            && info.len() == self.info_len()
            && info.starts_with(self.name.as_bytes())
            && info[self.name.len()..self.name.len() + 8] == [0, 0, 0, 128, 0, 0, 0, 12]
    }

    fn unwrap<'a>(
        &'a self,
        edk: &'a EncryptedDataKey,
        request: KeyringRequest<'a>,
    ) -> BoxFuture<'a, Result<DataKey, Error>> {
        Box::pin(async move {
            // `unwrap` is public: it may be given any wrapped key, not only those `recognizes`
            // accepted. One that is not this keyring's is refused before the provider info is
            // read by this keyring's layout.
            if !self.recognizes(edk) {
                return Err(keyring_error(
                    self,
                    "the wrapped key is not this keyring's: its provider id is not the namespace, or its provider \
                     info is not the key name, a 128-bit tag length, a 12-byte IV length and the IV",
                ));
            }
            let len = request.suite.key_len();
            if edk.ciphertext.len() != len + TAG_LEN {
                return Err(keyring_error(
                    self,
                    format!(
                        "the wrapped key is {} bytes, not {}",
                        edk.ciphertext.len(),
                        len + TAG_LEN
                    ),
                ));
            }
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(&edk.provider_info[self.name.len() + 8..]);
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(&edk.ciphertext[len..]);
            let mut key = Zeroizing::new(edk.ciphertext[..len].to_vec());
            let aad = request.context.serialize()?;
            if !self.key.open(&iv, &aad, &mut key, &tag) {
                return Err(keyring_error(
                    self,
                    "the wrapped key does not open (another key, or another encryption context)",
                ));
            }
            Ok(DataKey::new(std::mem::take(&mut *key)))
        })
    }
}
