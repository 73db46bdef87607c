//! The pkcs11 seal: the root key is a non-extractable AES-256 key in an HSM, found by its
//! generation's label; the process logs in and unseals itself at start. Also the HSM-held
//! checkpoint signer and the checkpoint anchor kept in the token.

use super::*;

/// The HSM data object that anchors a deployment's checkpoints.
pub fn anchor_label(deployment_id: &str) -> String {
    format!("kms-anchor-{deployment_id}")
}

/// The newest checkpoint anchored for `deployment_id` in `anchors` (blocking: an HSM read),
/// `None` before the first. Values none of which decode are `state_rollback`: the anchor was
/// written by someone else.
pub fn read_anchor(
    anchors: &dyn AnchorStore,
    deployment_id: &str,
) -> Result<Option<kms_core::audit::CheckpointAnchor>, ApiError> {
    let stored = anchors
        .read(&anchor_label(deployment_id))
        .map_err(|e| ApiError::new(Reason::HsmUnavailable, format!("reading the checkpoint anchor: {e}")))?;
    if stored.is_empty() {
        return Ok(None);
    }
    stored
        .iter()
        .filter_map(|b| kms_core::audit::CheckpointAnchor::decode(b))
        .max_by_key(|a| a.seq)
        .map(Some)
        .ok_or_else(|| ApiError::new(Reason::StateRollback, "the checkpoint anchor in the HSM is unreadable"))
}

impl Seal {
    /// With a seal that keeps an anchor outside the database (the pkcs11 seal's HSM): the
    /// database must still hold the last checkpoint any replica anchored there, and a state that
    /// extends the state it signed. A database restored from an older backup (or rolled back by
    /// its operator) is refused here, before anything is served.
    pub(super) async fn check_anchor(&self, store: &Store, roots: &Roots) -> Result<(), ApiError> {
        let Some(anchors) = roots.anchor_store() else {
            return Ok(());
        };
        let cfg = store
            .seal_config()
            .await?
            .ok_or_else(|| ApiError::new(Reason::NotInitialized, "the server is not initialized"))?;
        let Some(anchor) = read_anchor(anchors.as_ref(), &cfg.deployment_id)? else {
            return Ok(());
        };
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
            .clear(&anchor_label(&cfg.deployment_id))
            .map_err(|e| ApiError::new(Reason::HsmUnavailable, format!("clearing the checkpoint anchor: {e}")))
    }

    pub(super) fn drop_hsm(&self) {
        *self.hsm.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether this process has a `[seal.pkcs11]` configuration.
    pub fn has_hsm_config(&self) -> bool {
        self.hsm_config.is_some()
    }

    /// The HSM of the pkcs11 seal, opened once (PIN read from its source then).
    pub(super) fn hsm(&self) -> Result<Arc<Hsm>, ApiError> {
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
    pub(super) fn login_refused(&self, why: String) -> ApiError {
        *self.hsm_login_refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        ApiError::new(Reason::HsmLoginRefused, why)
    }

    /// Opens a pkcs11 generation's root key (and its checkpoint key) and checks it against the
    /// stored canary.
    pub(super) fn hsm_held(&self, row: &RootGenerationRow) -> Result<Held, ApiError> {
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
        held.unwrap(KeyId::from_bytes(wrap_ids::PKCS11_CANARY), version_of(generation)?, canary)
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
}

pub(super) struct HsmAnchor(pub(super) Arc<Hsm>);

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

/// The pkcs11 seal's root: AES-256-GCM in the HSM, byte-for-byte the wrapped format of
/// [`SoftwareRoot`], and the HSM-held audit checkpoint key.
pub(super) struct Pkcs11Root {
    pub(super) root: HsmRoot,
    pub(super) signer: Arc<HsmCheckpointSigner>,
    pub(super) generation: u64,
    pub(super) hsm: Arc<Hsm>,
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

pub(super) struct HsmCheckpointSigner(pub(super) HsmSigner);

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
