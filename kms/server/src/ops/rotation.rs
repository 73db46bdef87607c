//! RotateRoot (quorum): starts root generation g+1 under the seal asked for; the rotation
//! worker re-wraps every secret afterwards.

use crate::audit::Audit;
use crate::error::ApiError;
use crate::ops::admin::AdminPlane;
use crate::ops::quorum::Exec;
use crate::request::RootRotation;
use crate::seal::{SealKind, StatusReport};
use crate::storage::{RootGenerationRow, ShareRow};
use kms_core::ids::AdminId;
use kms_core::share_wrap;
use kms_proto::Reason;

impl AdminPlane {
    /// RotateRoot (quorum): starts generation g+1 under the seal asked for.
    pub(crate) async fn rotate_root_op(
        &self,
        _admin: &AdminId,
        op: RootRotation,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<StatusReport>, ApiError> {
        let roots = self.seal.roots()?;
        let kind = match op.seal {
            Some(k @ (SealKind::Shamir | SealKind::Pkcs11)) => k,
            _ => {
                return Err(ApiError::new(
                    Reason::BadSeal,
                    "seal must be SHAMIR or PKCS11 (the dev seal cannot be rotated to)",
                ))
            }
        };
        if roots.next().is_some() || self.store.pending_root_generation().await?.is_some() {
            return Err(ApiError::new(
                Reason::RotationInProgress,
                "a root key rotation is already in progress: wait for it to complete (kmsctl status)",
            ));
        }
        let cfg = self
            .store
            .seal_config()
            .await?
            .ok_or_else(|| ApiError::new(Reason::NotInitialized, "the server is not initialized"))?;
        let new_gen = cfg.root_generation + 1;
        audit.detail("seal", kind.as_str());
        audit.detail("from_generation", cfg.root_generation);
        audit.detail("to_generation", new_gen);
        let mut custodians = Vec::new();
        let threshold = match kind {
            SealKind::Pkcs11 => {
                if !op.custodians.is_empty() || op.threshold != 0 {
                    return Err(ApiError::new(
                        Reason::BadCustodians,
                        "the pkcs11 seal has no custodians or threshold",
                    ));
                }
                0
            }
            _ => {
                let admins = self.store.admins(false).await?;
                let ids: Vec<String> = if op.custodians.is_empty() {
                    admins
                        .iter()
                        .filter(|a| a.custodian)
                        .map(|a| a.id.to_string())
                        .collect()
                } else {
                    op.custodians.clone()
                };
                let mut seen = std::collections::BTreeSet::new();
                for id in &ids {
                    if !seen.insert(id.clone()) {
                        return Err(ApiError::new(
                            Reason::DuplicateAdmin,
                            format!("custodian {id} is listed twice"),
                        ));
                    }
                    let a = admins.iter().find(|a| a.id.as_str() == id).ok_or_else(|| {
                        ApiError::new(
                            Reason::UnknownCustodian,
                            format!("custodian {id} is not an active admin"),
                        )
                    })?;
                    custodians.push((a.id.clone(), a.encryption_public_key.clone()));
                }
                if custodians.is_empty() || custodians.len() > 255 {
                    return Err(ApiError::new(
                        Reason::BadCustodians,
                        "the shamir seal needs 1 to 255 custodians (none are named and there are none now)",
                    ));
                }
                let t = if op.threshold == 0 { cfg.threshold } else { op.threshold };
                if t == 0 || t as usize > custodians.len() {
                    return Err(ApiError::new(
                        Reason::BadThreshold,
                        format!(
                            "threshold must be between 1 and the number of custodians ({}), not {t}",
                            custodians.len()
                        ),
                    ));
                }
                audit.detail("custodians", ids);
                audit.detail("threshold", t);
                t
            }
        };
        let Exec::Run(close) = exec else {
            if kind == SealKind::Pkcs11 && !self.seal.has_hsm_config() {
                return Err(ApiError::new(
                    Reason::Pkcs11NotConfigured,
                    "this server has no [seal.pkcs11] configuration (module, token, pin_file or pin_env)",
                ));
            }
            return Ok(None);
        };
        let new_root = self.seal.create_root(kind, new_gen)?;
        let mut shares = Vec::new();
        let mut next_root_wrapped = None;
        if let Some(material) = &new_root.material {
            let n = u8::try_from(custodians.len()).unwrap_or(u8::MAX);
            let t = u8::try_from(threshold).unwrap_or(u8::MAX);
            let split = kms_core::shamir::split(material, t, n)?;
            for ((id, key), share) in custodians.iter().zip(split) {
                let plaintext = share_wrap::share_plaintext(id.as_str(), share.expose_secret());
                let envelope = share_wrap::seal(key, plaintext.expose_secret())?;
                shares.push(ShareRow {
                    generation: new_gen,
                    admin_id: id.clone(),
                    envelope: envelope.encode(),
                });
            }
            next_root_wrapped = Some(self.seal.wrap_next_root(new_gen, material)?);
        }
        let row = RootGenerationRow {
            generation: new_gen,
            kind: kind.as_str().to_owned(),
            status: "pending".into(),
            threshold,
            kcv: new_root.check.clone(),
            hsm_label: new_root.hsm_label.clone(),
            next_root_wrapped,
            created_unix_ms: kms_core::now_unix_ms(),
            created_by: audit.caller.clone(),
            completed_unix_ms: None,
            integrity_key: Some(new_root.integrity_key.clone()),
        };
        if let Err(e) = self
            .store
            .start_rotation(&row, &shares, close, Audit::clone_allowed(audit))
            .await
        {
            // Nothing refers to the keys just made in the HSM: remove them — unless the error
            // came after a commit that did happen (then the generation row exists).
            if let Some(label) = &new_root.hsm_label {
                if matches!(self.store.root_generation(new_gen).await, Ok(None)) {
                    self.seal.discard_hsm_root(label);
                }
            }
            return Err(ApiError::from(e));
        }
        self.seal.install_next(new_gen, new_root);
        self.status().await.map(Some)
    }
}
