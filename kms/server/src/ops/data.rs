//! The data plane's operations (KeyService). Every call checks, in order: the seal, the request's shape, the
//! key's state, the caller's grant, and (for plaintext) the release policy. Plaintext data keys
//! and decrypted payloads are answered only after their audit record is durable.

use std::sync::Arc;

use kms_core::blob::{self, Blob};
use kms_core::context::EncryptionContext;
use kms_core::hpke_seal;
use kms_core::ids::{KeyId, KeyVersion, Principal};
use kms_core::key::KeyState;
use kms_core::policy::Operation;
use kms_core::secret::{DataKey, SecretBytes};

use crate::attest::{Attestation, Authorized, SealedRelease};
use crate::audit::Audit;
use crate::audit::AuditLog;
use crate::error::ApiError;
use crate::identity::Callers;
use crate::keys::{EncryptInput, Keys, Plaintext, ReEncrypted, Released, Wrapped};
use crate::node::{InputRefused, Node};
use crate::storage::KeyRow;
use kms_proto::Reason;

/// The KeyService implementation.
#[derive(Debug)]
pub struct DataPlane {
    pub(crate) node: Arc<Node>,
    pub(crate) keys: Arc<Keys>,
    pub(crate) audit: AuditLog,
    pub(crate) callers: Callers,
    pub(crate) allow_unattested: bool,
    pub(crate) attestation: Arc<Attestation>,
}

/// What a request brings for an attested release: the token and its client nonce (both empty
/// without one).
#[derive(Clone, Copy)]
pub(crate) struct Proof<'a> {
    pub(crate) token: &'a str,
    pub(crate) client_nonce: &'a [u8],
}

impl Proof<'_> {
    pub(crate) const NONE: Proof<'static> = Proof {
        token: "",
        client_nonce: &[],
    };
}

/// How plaintext may leave for this call.
pub(crate) enum Release {
    /// No plaintext is returned (GenerateDataKeyWithoutPlaintext, ReEncrypt).
    Nothing,
    /// In the clear, for an unattested key (dev, tests).
    Unattested,
    /// HPKE-sealed to the token's key, bound to the request's client nonce.
    Attested(Box<Authorized>, Vec<u8>),
}

impl Release {
    /// Seals `plaintext` for an attested release, signed by `node`; `None` otherwise.
    /// `requested` is the request's `key` field as received, and `context` its encryption
    /// context: both are bound into the release (`hpke_seal::release_request`), so the workload
    /// refuses an answer to a request that was changed on its way here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal(
        &self,
        node: &Node,
        operation: Operation,
        requested: &str,
        context: &EncryptionContext,
        key_id: KeyId,
        version: KeyVersion,
        blob: &[u8],
        plaintext: &[u8],
    ) -> Result<Option<SealedRelease>, ApiError> {
        let Release::Attested(auth, client_nonce) = self else {
            return Ok(None);
        };
        let pk = auth
            .token
            .hpke_public_key()
            .map_err(|e| ApiError::new(crate::error::token_reason(&e), format!("attestation token: {e}")))?;
        let info = hpke_seal::release_info(
            operation.as_str(),
            &key_id.to_string(),
            version.get(),
            &auth.token.jti,
            &hpke_seal::release_request(requested, context),
            client_nonce,
        );
        let sealed = hpke_seal::seal_release(&pk, &info, blob, plaintext)?;
        let node_signature = node.sign_release(&info, blob, &sealed.encapsulated_key, &sealed.ciphertext);
        Ok(Some(SealedRelease {
            encapsulated_key: sealed.encapsulated_key,
            ciphertext: sealed.ciphertext,
            node_public_key: node.public_key().to_vec(),
            node_signature,
        }))
    }
}

impl DataPlane {
    /// A usable key for `op` by `who`: enabled, and granted.
    pub(crate) fn check_usable(key: &KeyRow, who: &Principal, op: Operation) -> Result<(), ApiError> {
        match key.state {
            KeyState::Enabled => {}
            KeyState::Disabled => {
                return Err(ApiError::new(
                    Reason::KeyDisabled,
                    format!("key {} is disabled", key.id),
                ))
            }
            KeyState::PendingDeletion => {
                return Err(ApiError::new(
                    Reason::KeyPendingDeletion,
                    format!("key {} is pending deletion", key.id),
                ))
            }
            KeyState::Destroyed => {
                return Err(ApiError::new(
                    Reason::KeyDestroyed,
                    format!("key {} is destroyed", key.id),
                ))
            }
        }
        if !key.grants.allows(who, op) {
            return Err(ApiError::new(
                Reason::NotPermitted,
                format!("{who} may not call {} on key {}", op.as_str(), key.id),
            ));
        }
        Ok(())
    }

    /// ReEncrypt must not move data to a key that releases it more easily: the destination's
    /// release policy must be at least as strict as the source's (a conservative structural
    /// comparison: it contains the source's conditions), so an attested key's blob can move
    /// neither to an unattested key nor to one with fewer conditions.
    pub(crate) fn check_no_downgrade(src: &KeyRow, dst: &KeyRow) -> Result<(), ApiError> {
        if !dst.release_policy.is_at_least_as_strict_as(&src.release_policy) {
            return Err(ApiError::new(
                Reason::ReleasePolicyDowngrade,
                format!(
                    "the release policy of key {} is not at least as strict as that of key {}: re-encrypting would weaken it",
                    dst.id, src.id
                ),
            ));
        }
        Ok(())
    }

    /// ReEncrypt must not move data to a key that more principals may decrypt: everyone the
    /// destination's grants let decrypt must be allowed to decrypt under the source too. A
    /// principal that may only re-encrypt (a rotation job) can so move blobs between keys with
    /// the same readers, never to a key that someone else reads.
    pub(crate) fn check_no_grant_widening(src: &KeyRow, dst: &KeyRow) -> Result<(), ApiError> {
        if let Some(who) = dst.grants.widens(&src.grants, Operation::Decrypt) {
            return Err(ApiError::new(
                Reason::GrantsWidened,
                format!(
                    "{who} may decrypt under key {} but not under key {}: re-encrypting would let more principals read the data",
                    dst.id, src.id
                ),
            ));
        }
        Ok(())
    }

    /// Whether plaintext of this key may be returned to a caller that has not attested.
    pub(crate) fn check_release(&self, key: &KeyRow) -> Result<(), ApiError> {
        if key.release_policy.allows_unattested_release() && self.allow_unattested {
            Ok(())
        } else {
            Err(ApiError::new(
                Reason::AttestationRequired,
                format!("key {} releases plaintext only to an attested workload", key.id),
            ))
        }
    }

    /// Decides how plaintext may leave for `op` on `key`: with a token, the token is verified,
    /// the machine and the key are read fresh and the key's release policy is evaluated on the
    /// token's claims (the fresh key row then decides state and grants too); without one, only
    /// an unattested key releases. Operations that return no plaintext need neither.
    pub(crate) async fn gate(
        &self,
        who: &Principal,
        key: Arc<KeyRow>,
        proof: Proof<'_>,
        op: Operation,
        audit: &mut Audit,
    ) -> Result<(Arc<KeyRow>, Release), ApiError> {
        let Proof { token, client_nonce } = proof;
        let releases = matches!(op, Operation::GenerateDataKey | Operation::Decrypt);
        if token.is_empty() || !releases {
            Self::check_usable(&key, who, op)?;
            if !releases {
                return Ok((key, Release::Nothing));
            }
            self.check_release(&key)?;
            return Ok((key, Release::Unattested));
        }
        // Grants first: a caller without them learns nothing from the token path.
        Self::check_usable(&key, who, op)?;
        match client_nonce.len() {
            0 => {
                return Err(ApiError::new(
                    Reason::MissingClientNonce,
                    "client_nonce: an attested release needs 16 to 64 random bytes chosen for this request",
                ))
            }
            16..=64 => {}
            n => {
                return Err(ApiError::new(
                    Reason::InvalidClientNonce,
                    format!("client_nonce: {n} bytes; 16 to 64 are allowed"),
                ))
            }
        }
        audit.detail("attested", true);
        let auth = self.attestation.authorize(token, who, key.id, audit).await?;
        let fresh = self.keys.remember(auth.key.clone());
        Self::check_usable(&fresh, who, op)?;
        Ok((fresh, Release::Attested(Box::new(auth), client_nonce.to_vec())))
    }

    /// GenerateDataKey: a new data key wrapped under `key`, and its plaintext for the caller
    /// (sealed to the workload when the call is attested).
    pub(crate) async fn generate_data_key(
        &self,
        who: &Principal,
        key: &str,
        context: &EncryptionContext,
        proof: Proof<'_>,
        audit: &mut Audit,
    ) -> Result<(Wrapped, Released), ApiError> {
        let op = Operation::GenerateDataKey;
        let requested = key;
        let (blob, dk, key, release) = self.new_data_key(who, key, context, proof, op, audit).await?;
        let version = latest_version(&key)?;
        let sealed = release.seal(
            &self.node,
            op,
            requested,
            context,
            key.id,
            version,
            &blob,
            dk.expose_secret(),
        )?;
        let plaintext = match sealed {
            Some(sealed) => Plaintext::Sealed(sealed),
            None => Plaintext::Clear(SecretBytes::new(dk.expose_secret().to_vec())),
        };
        let released = Released {
            key_id: key.id,
            version,
            plaintext,
        };
        let wrapped = Wrapped {
            blob,
            key_id: key.id,
            version,
        };
        Ok((wrapped, released))
    }

    /// GenerateDataKeyWithoutPlaintext: a new data key, wrapped under `key` only.
    pub(crate) async fn generate_data_key_without_plaintext(
        &self,
        who: &Principal,
        key: &str,
        context: &EncryptionContext,
        audit: &mut Audit,
    ) -> Result<Wrapped, ApiError> {
        let op = Operation::GenerateDataKeyWithoutPlaintext;
        let (blob, _dk, key, _) = self.new_data_key(who, key, context, Proof::NONE, op, audit).await?;
        Ok(Wrapped {
            blob,
            key_id: key.id,
            version: latest_version(&key)?,
        })
    }

    /// Encrypt: the plaintext (at most `blob::MAX_PLAINTEXT` bytes, in clear or sealed to this
    /// node for this `key` as named and `context`) wrapped under `key`.
    pub(crate) async fn encrypt(
        &self,
        who: &Principal,
        key: &str,
        context: &EncryptionContext,
        input: EncryptInput<'_>,
        audit: &mut Audit,
    ) -> Result<Wrapped, ApiError> {
        self.keys.ensure_unsealed()?;
        let too_long = |len: usize| {
            ApiError::new(
                Reason::PlaintextTooLong,
                format!(
                    "plaintext is {len} bytes; at most {} may be encrypted",
                    blob::MAX_PLAINTEXT
                ),
            )
        };
        if let EncryptInput::Clear(p) = &input {
            if p.len() > blob::MAX_PLAINTEXT {
                return Err(too_long(p.len()));
            }
        }
        let requested = key;
        let key = self.keys.resolve(key).await?;
        audit.key(&key.id);
        Self::check_usable(&key, who, Operation::Encrypt)?;
        let opened;
        let plaintext = match input {
            EncryptInput::Clear(p) => p,
            EncryptInput::Sealed { recipient, sealed } => {
                audit.detail("input", "sealed");
                opened = self
                    .node
                    .open_encrypt_input(&recipient, &sealed, requested, context)
                    .map_err(|refused| match refused {
                        InputRefused::OtherNode => ApiError::new(
                            Reason::SealedForOtherNode,
                            format!(
                                "sealed_plaintext is sealed to another node's HPKE key; this is {}: seal to the key its GetNodeIdentity names",
                                self.node.id()
                            ),
                        ),
                        InputRefused::DoesNotOpen => ApiError::new(
                            Reason::BadSealedPlaintext,
                            "sealed_plaintext does not open: sealed for another key or encryption context, or altered",
                        ),
                    })?;
                opened.expose_secret()
            }
        };
        if plaintext.len() > blob::MAX_PLAINTEXT {
            return Err(too_long(plaintext.len()));
        }
        let version = latest_version(&key)?;
        let kek = self.keys.kek(&key, version).await?;
        let blob = blob::seal(&kek, key.id, version, context, plaintext)?;
        audit.detail("key_version", version.get());
        Ok(Wrapped {
            blob,
            key_id: key.id,
            version,
        })
    }

    /// Decrypt: the plaintext of `blob` (sealed to the workload when the call is attested).
    /// With `expected_key` set the caller must be allowed to decrypt under it, and the blob
    /// must be under it, before anything about the blob's own key is looked at (no probing of
    /// key names).
    pub(crate) async fn decrypt(
        &self,
        who: &Principal,
        expected_key: &str,
        blob: &[u8],
        context: &EncryptionContext,
        proof: Proof<'_>,
        audit: &mut Audit,
    ) -> Result<Released, ApiError> {
        self.keys.ensure_unsealed()?;
        if !expected_key.is_empty() {
            let expected = self.keys.resolve(expected_key).await?;
            if !expected.grants.allows(who, Operation::Decrypt) {
                audit.key(&expected.id);
                return Err(ApiError::new(
                    Reason::NotPermitted,
                    format!("{who} may not call decrypt on key {}", expected.id),
                ));
            }
            let named = Blob::parse(blob)?.key_id();
            if named != expected.id {
                audit.key(named);
                return Err(ApiError::new(
                    Reason::KeyMismatch,
                    format!("the blob is under key {named}, not {}", expected.id),
                ));
            }
        }
        let op = Operation::Decrypt;
        let (plain, key, version, release) = self.decrypt_blob(who, blob, context, op, proof, audit).await?;
        let sealed = release.seal(
            &self.node,
            op,
            expected_key,
            context,
            key.id,
            version,
            blob,
            plain.expose_secret(),
        )?;
        let plaintext = match sealed {
            Some(sealed) => Plaintext::Sealed(sealed),
            None => Plaintext::Clear(plain),
        };
        Ok(Released {
            key_id: key.id,
            version,
            plaintext,
        })
    }

    /// ReEncrypt: `blob` opened under its key and context and wrapped under `destination` (the
    /// source key when empty) and `destination_context`, never to a key that releases more
    /// easily or to more principals.
    pub(crate) async fn re_encrypt(
        &self,
        who: &Principal,
        blob: &[u8],
        source_context: &EncryptionContext,
        destination: &str,
        destination_context: &EncryptionContext,
        audit: &mut Audit,
    ) -> Result<ReEncrypted, ApiError> {
        self.keys.ensure_unsealed()?;
        let (plain, src, src_version, _) = self
            .decrypt_blob(who, blob, source_context, Operation::ReEncrypt, Proof::NONE, audit)
            .await?;
        let dst = if destination.is_empty() {
            self.keys.by_id(src.id).await?
        } else {
            self.keys.resolve(destination).await?
        };
        audit.detail("destination_key_id", dst.id.to_string());
        Self::check_usable(&dst, who, Operation::ReEncrypt)?;
        Self::check_no_downgrade(&src, &dst)?;
        Self::check_no_grant_widening(&src, &dst)?;
        let version = latest_version(&dst)?;
        let kek = self.keys.kek(&dst, version).await?;
        let new_blob = blob::seal(&kek, dst.id, version, destination_context, plain.expose_secret())?;
        audit.detail("destination_key_version", version.get());
        Ok(ReEncrypted {
            source_key_id: src.id,
            source_version: src_version,
            wrapped: Wrapped {
                blob: new_blob,
                key_id: dst.id,
                version,
            },
        })
    }

    pub(crate) async fn new_data_key(
        &self,
        who: &Principal,
        key: &str,
        context: &EncryptionContext,
        proof: Proof<'_>,
        op: Operation,
        audit: &mut Audit,
    ) -> Result<(Vec<u8>, DataKey, Arc<KeyRow>, Release), ApiError> {
        self.keys.ensure_unsealed()?;
        let key = self.keys.resolve(key).await?;
        audit.key(&key.id);
        let (key, release) = self.gate(who, key, proof, op, audit).await?;
        let version = latest_version(&key)?;
        let kek = self.keys.kek(&key, version).await?;
        let data_key = DataKey::generate()?;
        let blob = blob::seal(&kek, key.id, version, context, data_key.expose_secret())?;
        audit.detail("key_version", version.get());
        Ok((blob, data_key, key, release))
    }

    pub(crate) async fn decrypt_blob(
        &self,
        who: &Principal,
        bytes: &[u8],
        ctx: &EncryptionContext,
        op: Operation,
        proof: Proof<'_>,
        audit: &mut Audit,
    ) -> Result<(SecretBytes, Arc<KeyRow>, KeyVersion, Release), ApiError> {
        let parsed = Blob::parse(bytes)?;
        let key = self.keys.by_id(parsed.key_id()).await?;
        audit.key(&key.id);
        audit.detail("key_version", parsed.version().get());
        let (key, release) = self.gate(who, key, proof, op, audit).await?;
        if parsed.version() > key.latest_version {
            return Err(ApiError::new(
                Reason::KeyVersionNotFound,
                format!("key {} has no version {}", key.id, parsed.version()),
            ));
        }
        let kek = self.keys.kek(&key, parsed.version()).await?;
        let plain = parsed.open(&kek, ctx)?;
        Ok((plain, key, parsed.version(), release))
    }
}

/// The version new blobs of `key` are made under.
fn latest_version(key: &KeyRow) -> Result<KeyVersion, ApiError> {
    Ok(key.latest_version)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kms_core::context::EncryptionContext;
    use kms_core::hpke_seal;
    use kms_core::key::Transition;
    use kms_core::policy::Operation;
    use kms_proto::Reason;

    use super::Proof;
    use crate::audit::Audit;
    use crate::keys::EncryptInput;
    use crate::ops::testkit::{who, Kit, UNATTESTED};

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext::new(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()).unwrap()
    }

    #[tokio::test]
    async fn a_data_key_decrypts_under_its_context_only() {
        let kit = Kit::new().await;
        let app = who("spiffe://eu/app");
        kit.key(
            "orders",
            app.as_str(),
            &[Operation::GenerateDataKey, Operation::Decrypt],
            UNATTESTED,
        )
        .await;
        let c = ctx(&[("tenant", "a")]);
        let mut audit = Audit::new(app.as_str(), "generate_data_key");
        let (blob, dk, key, release) = kit
            .data
            .new_data_key(&app, "orders", &c, Proof::NONE, Operation::GenerateDataKey, &mut audit)
            .await
            .unwrap();
        assert!(matches!(release, super::Release::Unattested));
        assert_eq!(key.name.as_str(), "orders");

        let mut audit = Audit::new(app.as_str(), "decrypt");
        let (plain, _, version, _) = kit
            .data
            .decrypt_blob(&app, &blob, &c, Operation::Decrypt, Proof::NONE, &mut audit)
            .await
            .unwrap();
        assert_eq!(plain.expose_secret(), dk.expose_secret());
        assert_eq!(version.get(), 1);

        let mut audit = Audit::new(app.as_str(), "decrypt");
        let e = kit
            .data
            .decrypt_blob(
                &app,
                &blob,
                &ctx(&[("tenant", "b")]),
                Operation::Decrypt,
                Proof::NONE,
                &mut audit,
            )
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::DecryptFailed);

        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let mut audit = Audit::new(app.as_str(), "decrypt");
        let e = kit
            .data
            .decrypt_blob(&app, &tampered, &c, Operation::Decrypt, Proof::NONE, &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::DecryptFailed);
    }

    #[tokio::test]
    async fn refusals_name_the_check_that_failed() {
        let kit = Kit::new().await;
        let app = who("spiffe://eu/app");
        kit.key("k", app.as_str(), &[Operation::GenerateDataKey], UNATTESTED)
            .await;
        kit.key(
            "attested",
            app.as_str(),
            &[Operation::GenerateDataKey],
            r#"{"version":1,"attestation":"required"}"#,
        )
        .await;
        let c = ctx(&[]);
        let gen = |principal: &'static str, key: &'static str| {
            let kit = &kit;
            let c = &c;
            async move {
                let mut audit = Audit::new(principal, "generate_data_key");
                kit.data
                    .new_data_key(
                        &who(principal),
                        key,
                        c,
                        Proof::NONE,
                        Operation::GenerateDataKey,
                        &mut audit,
                    )
                    .await
                    .err()
                    .map(|e| e.reason)
            }
        };
        assert_eq!(gen("spiffe://eu/app", "k").await, None);
        assert_eq!(gen("spiffe://eu/other", "k").await, Some(Reason::NotPermitted));
        assert_eq!(gen("spiffe://eu/app", "nosuchkey").await, Some(Reason::KeyNotFound));
        assert_eq!(
            gen("spiffe://eu/app", "attested").await,
            Some(Reason::AttestationRequired)
        );

        let mut audit = Audit::new("admin:test", "admin.disable_key");
        kit.admin
            .change_state("k", Transition::Disable, None, None, &mut audit)
            .await
            .unwrap();
        assert_eq!(gen("spiffe://eu/app", "k").await, Some(Reason::KeyDisabled));

        let mut audit = Audit::new("spiffe://eu/app", "decrypt");
        let e = kit
            .data
            .decrypt_blob(
                &who("spiffe://eu/app"),
                b"not a blob",
                &c,
                Operation::Decrypt,
                Proof::NONE,
                &mut audit,
            )
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::MalformedBlob);
    }

    #[tokio::test]
    async fn encrypt_decrypt_and_re_encrypt() {
        use crate::keys::Plaintext;
        let kit = Kit::new().await;
        let app = who("spiffe://eu/app");
        let ops = [Operation::Encrypt, Operation::Decrypt, Operation::ReEncrypt];
        kit.key("a", app.as_str(), &ops, UNATTESTED).await;
        kit.key("b", app.as_str(), &ops, UNATTESTED).await;
        let (c, c2) = (ctx(&[("t", "1")]), ctx(&[("t", "2")]));
        let mut audit = Audit::new(app.as_str(), "encrypt");
        let clear = |p: Plaintext| match p {
            Plaintext::Clear(p) => p.expose_secret().to_vec(),
            Plaintext::Sealed(_) => panic!("sealed without a token"),
        };

        let w = kit
            .data
            .encrypt(&app, "a", &c, EncryptInput::Clear(b"hello"), &mut audit)
            .await
            .unwrap();
        let r = kit
            .data
            .decrypt(&app, "", &w.blob, &c, Proof::NONE, &mut audit)
            .await
            .unwrap();
        assert_eq!((r.key_id, clear(r.plaintext)), (w.key_id, b"hello".to_vec()));
        // Naming another key than the blob's is refused.
        let e = kit
            .data
            .decrypt(&app, "b", &w.blob, &c, Proof::NONE, &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::KeyMismatch);

        let moved = kit
            .data
            .re_encrypt(&app, &w.blob, &c, "b", &c2, &mut audit)
            .await
            .unwrap();
        assert_eq!(moved.source_key_id, w.key_id);
        assert_ne!(moved.wrapped.key_id, w.key_id);
        let r = kit
            .data
            .decrypt(&app, "b", &moved.wrapped.blob, &c2, Proof::NONE, &mut audit)
            .await
            .unwrap();
        assert_eq!(clear(r.plaintext), b"hello");

        let too_long = vec![0; kms_core::blob::MAX_PLAINTEXT + 1];
        let e = kit
            .data
            .encrypt(&app, "a", &c, EncryptInput::Clear(&too_long), &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::PlaintextTooLong);
    }

    #[tokio::test]
    async fn encrypt_opens_only_what_is_sealed_to_this_node_for_this_request() {
        use crate::keys::Plaintext;
        let kit = Kit::new().await;
        let app = who("spiffe://eu/app");
        let ops = [Operation::Encrypt, Operation::Decrypt];
        kit.key("a", app.as_str(), &ops, UNATTESTED).await;
        kit.key("b", app.as_str(), &ops, UNATTESTED).await;
        let c = ctx(&[("t", "1")]);
        let mut audit = Audit::new(app.as_str(), "encrypt");
        let node_key = kit.data.node.statement().hpke_public_key;
        let sealed_for = |key: &str, plaintext: &[u8]| EncryptInput::Sealed {
            recipient: node_key,
            sealed: hpke_seal::seal_encrypt_input(&node_key, key, &c, plaintext).unwrap(),
        };

        let w = kit
            .data
            .encrypt(&app, "a", &c, sealed_for("a", b"data key"), &mut audit)
            .await
            .unwrap();
        let r = kit
            .data
            .decrypt(&app, "a", &w.blob, &c, Proof::NONE, &mut audit)
            .await
            .unwrap();
        let Plaintext::Clear(p) = r.plaintext else {
            panic!("sealed without a token")
        };
        assert_eq!(p.expose_secret(), b"data key");

        // Moved into a request for another key (one whose blobs the mover could decrypt).
        let e = kit
            .data
            .encrypt(&app, "b", &c, sealed_for("a", b"data key"), &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::BadSealedPlaintext);
        // Sealed to another node (another replica, or a relay's key).
        let other = hpke_seal::NodeInputKey::generate().public_key();
        let e = kit
            .data
            .encrypt(
                &app,
                "a",
                &c,
                EncryptInput::Sealed {
                    recipient: other.as_slice().try_into().unwrap(),
                    sealed: hpke_seal::seal_encrypt_input(&other, "a", &c, b"data key").unwrap(),
                },
                &mut audit,
            )
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::SealedForOtherNode);
        assert!(e.message.contains(&kit.data.node.id()), "{}", e.message);
        // Over the limit once opened.
        let too_long = vec![0; kms_core::blob::MAX_PLAINTEXT + 1];
        let e = kit
            .data
            .encrypt(&app, "a", &c, sealed_for("a", &too_long), &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::PlaintextTooLong);
    }
}
