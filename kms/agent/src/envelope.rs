//! kmsd as a keyring of the envelope library (`kms-envelope`): data keys from GenerateDataKey,
//! wrapped as kmsd ciphertext blobs, opened with Decrypt.
//!
//! In the message, a kmsd-wrapped data key has provider id `kmsd`, provider info
//! `<key id>/<version>` (UTF-8) and the blob as its ciphertext; the message's encryption context
//! (with a signed message's `aws-crypto-public-key`) is the blob's, so kmsd's release policy and
//! audit see it.
//!
//! By default keys come through an attested [`Session`]: HPKE-sealed to this workload, from a
//! verified node, re-attesting when the token nears its expiry. Plaintext release (keys whose
//! policy says `attestation: none`, dev mode) only through
//! [`KmsdKeyring::insecure_plaintext_release`].

use std::sync::Arc;
use std::time::Duration;

use kms_core::blob::Blob;
use kms_envelope::{keyring_error, BoxFuture, DataKey, EncryptedDataKey, Keyring, KeyringRequest};
use kms_proto::v1 as pb;
use tokio::sync::Mutex;

use crate::{Client, Error, EvidenceSource, Reason, Session};

/// The provider id of kmsd-wrapped data keys.
pub const PROVIDER_ID: &str = "kmsd";

/// A session is renewed when it has less than this left.
const RENEW_BEFORE: Duration = Duration::from_secs(30);

/// Whether kmsd refused the session's token itself (not the release): attesting again gets a
/// token it accepts. `token_key` is not one: it is kmsd failing to sign, not refusing a token.
fn is_token_refusal(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::TokenMalformed
            | Reason::TokenUnknownKey
            | Reason::TokenBadSignature
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::TokenWrongAudience
            | Reason::TokenPrincipalMismatch
    )
}

enum Release {
    /// Attest with the source whenever the session is missing or about to expire.
    Attested {
        source: Mutex<Box<dyn EvidenceSource>>,
        session: Mutex<Option<Arc<Session>>>,
    },
    /// One session, used until it expires.
    Session(Arc<Session>),
    /// Plaintext over the connection (keys with `attestation: none`).
    InsecurePlaintext,
}

/// kmsd as a keyring for [`kms_envelope::Envelope`].
pub struct KmsdKeyring {
    client: Client,
    key: String,
    release: Release,
}

impl KmsdKeyring {
    /// Data keys under `key` (id or name), released to this workload after it attests with
    /// `source` (again whenever the token is about to expire).
    pub fn attested(client: Client, key: impl Into<String>, source: impl EvidenceSource + 'static) -> Self {
        Self {
            client,
            key: key.into(),
            release: Release::Attested {
                source: Mutex::new(Box::new(source)),
                session: Mutex::new(None),
            },
        }
    }

    /// Data keys under `key` through an existing session (refused once its token expired).
    pub fn with_session(session: Session, key: impl Into<String>) -> Self {
        Self {
            client: session.client().clone(),
            key: key.into(),
            release: Release::Session(Arc::new(session)),
        }
    }

    /// Data keys under `key` released in plaintext, without attestation: only keys whose
    /// release policy allows it (`"attestation": "none"`, dev and tests) answer. Anything that
    /// can read the connection sees the data keys.
    pub fn insecure_plaintext_release(client: Client, key: impl Into<String>) -> Self {
        Self {
            client,
            key: key.into(),
            release: Release::InsecurePlaintext,
        }
    }

    /// The key (id or name) data keys are generated under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Drops a session kmsd no longer accepts (a token signed by a retired token key, after a
    /// restart), so the next call attests again. Whether it did.
    async fn forget_session(&self, e: &Error) -> bool {
        let token_refused = e.known_reason().is_some_and(is_token_refusal);
        match &self.release {
            Release::Attested { session, .. } if token_refused => {
                *session.lock().await = None;
                true
            }
            _ => false,
        }
    }

    async fn session(&self) -> Result<Option<Arc<Session>>, Error> {
        match &self.release {
            Release::InsecurePlaintext => Ok(None),
            Release::Session(s) => Ok(Some(s.clone())),
            Release::Attested { source, session } => {
                let mut held = session.lock().await;
                let fresh = held
                    .as_ref()
                    .filter(|s| s.expires_unix_ms() - kms_core::now_unix_ms() > RENEW_BEFORE.as_millis() as i64);
                if let Some(s) = fresh {
                    return Ok(Some(s.clone()));
                }
                let mut source = source.lock().await;
                let s = Arc::new(self.client.attest(&mut **source).await?);
                *held = Some(s.clone());
                Ok(Some(s))
            }
        }
    }

    /// Generates a data key, attesting again once if kmsd refused the session's token.
    async fn generate_retrying(
        &self,
        context: &std::collections::BTreeMap<String, String>,
    ) -> Result<(DataKey, EncryptedDataKey), Error> {
        match self.generate_key(context).await {
            Err(e) if self.forget_session(&e).await => self.generate_key(context).await,
            other => other,
        }
    }

    /// Opens a blob, attesting again once if kmsd refused the session's token.
    async fn unwrap_retrying(
        &self,
        edk: &EncryptedDataKey,
        context: &std::collections::BTreeMap<String, String>,
    ) -> Result<DataKey, Error> {
        match self.unwrap_key(edk, context).await {
            Err(e) if self.forget_session(&e).await => self.unwrap_key(edk, context).await,
            other => other,
        }
    }

    /// Generates a data key: the key and its blob.
    async fn generate_key(
        &self,
        context: &std::collections::BTreeMap<String, String>,
    ) -> Result<(DataKey, EncryptedDataKey), Error> {
        let (data_key, blob, key_id, version) = match self.session().await? {
            Some(s) => {
                let g = s.generate_data_key(&self.key, context).await?;
                let key = DataKey::new(g.data_key.into_exposed());
                (key, g.ciphertext_blob, g.key_id, g.key_version)
            }
            None => {
                let mut r: pb::GenerateDataKeyResponse = self
                    .client
                    .signed_key_call(
                        "generate_data_key",
                        "/kms.v1.KeyService/GenerateDataKey",
                        &pb::GenerateDataKeyRequest {
                            key: self.key.clone(),
                            encryption_context: context.clone().into_iter().collect(),
                            attestation_token: String::new(),
                            client_nonce: Vec::new(),
                        },
                    )
                    .await?;
                check_blob(&r.ciphertext_blob, &r.key_id, r.key_version)?;
                (
                    DataKey::new(std::mem::take(&mut r.plaintext)),
                    r.ciphertext_blob,
                    r.key_id,
                    r.key_version,
                )
            }
        };
        Ok((data_key, edk(blob, &key_id, version)))
    }

    async fn wrap_key(
        &self,
        key: &DataKey,
        context: &std::collections::BTreeMap<String, String>,
    ) -> Result<EncryptedDataKey, Error> {
        // The data key travels to this kmsd sealed to the node verified now (a TLS-terminating
        // relay sees only HPKE ciphertext), and the answer is signed by that node over this
        // request: a proxy cannot answer with another genuine blob (which this message's readers
        // could not open through this keyring).
        let r = self
            .client
            .encrypt_sealed(&self.key, context, key.expose_secret())
            .await?;
        check_blob(&r.ciphertext_blob, &r.key_id, r.key_version)?;
        Ok(edk(r.ciphertext_blob, &r.key_id, r.key_version))
    }

    async fn unwrap_key(
        &self,
        edk: &EncryptedDataKey,
        context: &std::collections::BTreeMap<String, String>,
    ) -> Result<DataKey, Error> {
        let expected = Some(self.key.as_str());
        match self.session().await? {
            Some(s) => Ok(DataKey::new(
                s.decrypt(&edk.ciphertext, context, expected).await?.into_exposed(),
            )),
            None => {
                let mut r: pb::DecryptResponse = self
                    .client
                    .signed_key_call(
                        "decrypt",
                        "/kms.v1.KeyService/Decrypt",
                        &pb::DecryptRequest {
                            ciphertext_blob: edk.ciphertext.clone(),
                            encryption_context: context.clone().into_iter().collect(),
                            key: self.key.clone(),
                            attestation_token: String::new(),
                            client_nonce: Vec::new(),
                        },
                    )
                    .await?;
                if r.plaintext.is_empty() {
                    return Err(Error::bad_response(
                        "no plaintext: the key releases only to attested workloads (use an attested keyring)",
                    ));
                }
                Ok(DataKey::new(std::mem::take(&mut r.plaintext)))
            }
        }
    }
}

/// The blob names the key and version the answer names.
fn check_blob(blob: &[u8], key_id: &str, version: u32) -> Result<(), Error> {
    let b = Blob::parse(blob).map_err(|e| Error::bad_response(format!("the ciphertext blob: {e}")))?;
    if b.key_id().to_string() != key_id || b.version().get() != version {
        return Err(Error::bad_response(
            "the blob is not under the key and version the answer names",
        ));
    }
    Ok(())
}

fn edk(blob: Vec<u8>, key_id: &str, version: u32) -> EncryptedDataKey {
    EncryptedDataKey {
        provider_id: PROVIDER_ID.to_owned(),
        provider_info: format!("{key_id}/{version}").into_bytes(),
        ciphertext: blob,
    }
}

/// The key id a kmsd-wrapped key names in its provider info.
fn info_key_id(edk: &EncryptedDataKey) -> Option<&str> {
    std::str::from_utf8(&edk.provider_info)
        .ok()?
        .split_once('/')
        .map(|(id, _)| id)
}

impl Keyring for KmsdKeyring {
    fn name(&self) -> String {
        format!("kmsd {} {}", self.client.target(), self.key)
    }

    /// The endpoint and key, the connection (its client identity) and the release mode: a
    /// release cached for one principal or mode never serves another.
    fn cache_identity(&self) -> Vec<u8> {
        let mode = match self.release {
            Release::Attested { .. } | Release::Session(_) => "attested",
            Release::InsecurePlaintext => "plaintext",
        };
        format!("{}\0{mode}\0{}", self.name(), self.client.instance()).into_bytes()
    }

    fn generate<'a>(
        &'a self,
        request: KeyringRequest<'a>,
    ) -> BoxFuture<'a, Result<(DataKey, EncryptedDataKey), kms_envelope::Error>> {
        Box::pin(async move {
            if request.suite.key_len() != crate::DATA_KEY_LEN {
                return Err(keyring_error(
                    self,
                    format!(
                        "kmsd makes 32-byte data keys; {} needs {}",
                        request.suite,
                        request.suite.key_len()
                    ),
                ));
            }
            self.generate_retrying(request.context.pairs())
                .await
                .map_err(|e| keyring_error(self, e))
        })
    }

    fn wrap<'a>(
        &'a self,
        key: &'a DataKey,
        request: KeyringRequest<'a>,
    ) -> BoxFuture<'a, Result<EncryptedDataKey, kms_envelope::Error>> {
        Box::pin(async move {
            self.wrap_key(key, request.context.pairs())
                .await
                .map_err(|e| keyring_error(self, e))
        })
    }

    /// Blobs under this keyring's key (by id; a keyring named by a key name tries every kmsd
    /// blob, and kmsd refuses those under other keys).
    fn recognizes(&self, edk: &EncryptedDataKey) -> bool {
        edk.provider_id == PROVIDER_ID
            && match info_key_id(edk) {
                Some(id) => !kms_core::ids::KeyId::looks_like_id(&self.key) || id == self.key,
                None => false,
            }
    }

    fn unwrap<'a>(
        &'a self,
        edk: &'a EncryptedDataKey,
        request: KeyringRequest<'a>,
    ) -> BoxFuture<'a, Result<DataKey, kms_envelope::Error>> {
        Box::pin(async move {
            let key = self
                .unwrap_retrying(edk, request.context.pairs())
                .await
                .map_err(|e| keyring_error(self, e))?;
            match key.expose_secret().len() {
                crate::DATA_KEY_LEN => Ok(key),
                n => Err(keyring_error(
                    self,
                    format!("the released key is {n} bytes, not {}", crate::DATA_KEY_LEN),
                )),
            }
        })
    }
}
