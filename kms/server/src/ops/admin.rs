//! The admin plane's operations: key management, admins and the seal. Every call but
//! GetSealStatus is a signed request; [`AdminPlane::authenticate`] checks it before anything else
//! runs. State changes commit together with their audit entry (one transaction). Quorum
//! operations run through `ops::quorum` (proposals, approvals, execution at M).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kms_core::admin::AdminPublicKey;
use kms_core::blob::Kek;
use kms_core::ids::{AdminId, KeyId, KeyVersion};
use kms_core::jurisdiction::AllowedCountries;
use kms_core::key::{KeyState, Transition, DELETION_WINDOW_DAYS};
use kms_core::share_wrap;

use crate::audit::Audit;
use crate::audit::AuditLog;
use crate::error::ApiError;
use crate::keys::{Keys, NewKey};
use crate::ops::quorum::Exec;
use crate::request::{Init, NewAdmin, RequestHeader, Signed};
use crate::seal::{Seal, SealKind, StatusReport};
use crate::storage::{AdminRow, KeyRow, QuorumClose, RootGenerationRow, SealConfigRow, ShareRow, Store, StoreError};
use kms_proto::Reason;

/// The AdminService implementation.
#[derive(Debug)]
pub struct AdminPlane {
    pub(crate) store: Store,
    pub(crate) seal: Arc<Seal>,
    pub(crate) keys: Arc<Keys>,
    pub(crate) audit: AuditLog,
    pub(crate) allowed_countries: AllowedCountries,
    pub(crate) window: Duration,
    pub(crate) skew: Duration,
    pub(crate) init_admins: Option<Vec<String>>,
    /// Who may fetch a share and unseal while sealed: `admin.custodians`, or else
    /// `admin.init_admins` ([`Self::check_pinned_custodian`]).
    pub(crate) custodians: Option<Vec<String>>,
    pub(crate) proposal_ttl: Duration,
    pub(crate) allow_unattested: bool,
    pub(crate) attestation: Arc<crate::attest::Attestation>,
    /// Who calls, for the rate limits (admins are authenticated by their signatures).
    pub(crate) callers: crate::identity::Callers,
    /// This node: it signs the audit checkpoint keys it publishes.
    pub(crate) node: Arc<crate::node::Node>,
}

impl AdminPlane {
    /// Refuses an admin whose country is outside the allowed jurisdictions.
    pub(crate) fn check_admin_country(&self, a: &NewAdmin) -> Result<(), ApiError> {
        if !self.allowed_countries.allows(&a.country) {
            return Err(ApiError::new(
                Reason::CountryNotAllowed,
                format!(
                    "admin {}: country {} is outside the allowed jurisdictions",
                    a.id, a.country
                ),
            ));
        }
        Ok(())
    }

    /// Init from a signed request: the seal asked for, the admins' countries, then
    /// [`Self::initialize`].
    pub(crate) async fn init(&self, init: Init, audit: &mut Audit) -> Result<StatusReport, ApiError> {
        let kind = init
            .seal
            .ok_or_else(|| ApiError::new(Reason::BadSeal, "seal must be SHAMIR, PKCS11 or DEV"))?;
        for a in &init.admins {
            self.check_admin_country(a)?;
        }
        self.initialize(kind, init.threshold, init.approval_quorum, init.admins, audit)
            .await?;
        self.status().await
    }

    /// Checks a signed request (`req`, opened from `signed.payload` by `wire::admin`): the
    /// method, freshness, the admin, the signature over the exact bytes, and the nonce (once only,
    /// on every replica). Returns the admin. For Init the signer must be one of the admins it
    /// names.
    pub(crate) async fn authenticate(
        &self,
        signed: Signed<'_>,
        req: &RequestHeader,
        method: &'static str,
        audit: &mut Audit,
    ) -> Result<AdminId, ApiError> {
        let admin_id = AdminId::parse(&req.admin_id)?;
        // Until the signature verifies, the caller is only who the request claims to be.
        *audit = Audit::new(format!("unverified:{admin_id}"), audit_op(method));
        let signed_method = req
            .method
            .ok_or_else(|| ApiError::new(Reason::MissingOperation, "the request names no operation"))?;
        if signed_method != method {
            return Err(ApiError::new(
                Reason::OperationMismatch,
                format!("the signed operation is {signed_method} but the method called is {method}"),
            ));
        }
        let now = kms_core::now_unix_ms();
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let skew = i64::try_from(self.skew.as_millis()).unwrap_or(i64::MAX);
        // Saturating: the timestamp is the caller's, and checked before anything else is.
        let behind = now.saturating_sub(req.timestamp_unix_ms);
        let ahead = req.timestamp_unix_ms.saturating_sub(now);
        if behind > window {
            return Err(ApiError::new(
                Reason::StaleRequest,
                format!(
                    "the request's timestamp is {} s behind the server's clock (allowed: {} s)",
                    behind / 1000,
                    window / 1000
                ),
            ));
        }
        if ahead > skew {
            return Err(ApiError::new(
                Reason::FutureRequest,
                format!(
                    "the request's timestamp is {} s ahead of the server's clock (allowed: {} s)",
                    ahead / 1000,
                    skew / 1000
                ),
            ));
        }
        if !(16..=64).contains(&req.nonce.len()) {
            return Err(ApiError::new(
                Reason::BadNonce,
                "the request nonce must be 16 to 64 bytes",
            ));
        }
        // The custodians' own requests are served while sealed, from rows that are verified
        // when the seal opens; every other request needs the rows to verify now.
        let sealed_ok = matches!(method, "get_encrypted_share" | "unseal" | "seal") && self.seal.root().is_err();
        let key = match method {
            "init" => {
                if !req.deployment_id.is_empty() {
                    return Err(ApiError::new(
                        Reason::WrongDeployment,
                        "an Init request names no deployment (the deployment is made by Init)",
                    ));
                }
                let (_, key) = req
                    .init_signers
                    .iter()
                    .find(|(id, _)| id == admin_id.as_str())
                    .ok_or_else(|| {
                        ApiError::new(
                            Reason::UnknownAdmin,
                            "Init must be signed by one of the admins it names",
                        )
                    })?;
                AdminPublicKey::parse(key)?
            }
            _ => {
                let seal_record = if sealed_ok {
                    self.store.seal_config_unverified().await?
                } else {
                    self.store.seal_config().await?
                }
                .ok_or_else(|| ApiError::new(Reason::NotInitialized, "the server is not initialized (kmsctl init)"))?;
                if req.deployment_id != seal_record.deployment_id {
                    return Err(ApiError::new(
                        Reason::WrongDeployment,
                        format!(
                            "the request is signed for deployment {:?}, but this is deployment {} (a request for another deployment cannot be replayed here)",
                            req.deployment_id, seal_record.deployment_id
                        ),
                    ));
                }
                let row = if sealed_ok {
                    self.store.admin_unverified(admin_id.as_str()).await?
                } else {
                    self.store.admin(&admin_id).await?
                }
                .ok_or_else(|| ApiError::new(Reason::UnknownAdmin, format!("no admin {admin_id}")))?;
                if row.removed_unix_ms.is_some() {
                    return Err(ApiError::new(
                        Reason::AdminRemoved,
                        format!("admin {admin_id} was removed"),
                    ));
                }
                if sealed_ok && method != "seal" {
                    self.check_pinned_custodian(&row, audit)?;
                }
                AdminPublicKey::parse(&row.signing_public_key)
                    .map_err(|_| ApiError::new(Reason::CorruptAdmin, "stored admin key is unreadable"))?
            }
        };
        key.verify(signed.payload, signed.signature).map_err(|_| {
            ApiError::new(
                Reason::BadSignature,
                format!("the signature does not verify with admin {admin_id}'s key"),
            )
        })?;
        audit.caller = format!("admin:{admin_id}");
        // Kept until the request is stale on every replica (whose clocks may lag by the skew).
        if !self
            .store
            .use_nonce(
                &req.nonce,
                req.timestamp_unix_ms.saturating_add(window).saturating_add(skew),
                !reads_only(method),
            )
            .await?
        {
            return Err(ApiError::new(
                Reason::ReplayedRequest,
                "this request nonce was already used",
            ));
        }
        Ok(admin_id)
    }

    /// A sealed server reads the admin row of a custodian's `GetEncryptedShare` or `Unseal`
    /// unverified (the rows' key is under the root it does not hold yet), so whoever writes the
    /// database could add an admin of their own, or put their key in a custodian's row, beside
    /// a seal record for a root of their own with one share, and unseal alone. The stored id,
    /// country and keys must therefore be one of the custodians the configuration pins
    /// (`admin.custodians`, or else `admin.init_admins`): the database can name only admins
    /// whose HSM keys it does not hold.
    pub(crate) fn check_pinned_custodian(&self, row: &AdminRow, audit: &mut Audit) -> Result<(), ApiError> {
        let Some(pinned) = &self.custodians else {
            return Err(ApiError::new(
                Reason::UnsealNotPinned,
                "this server pins no custodians (admin.custodians, or admin.init_admins, in its configuration): a sealed server cannot verify the database's admin rows, so it takes shares only from pinned admins; list their fingerprints (kmsctl admin fingerprint) and restart it",
            ));
        };
        let stored = kms_core::admin::fingerprint(
            row.id.as_str(),
            row.country.as_str(),
            &row.signing_public_key,
            &row.encryption_public_key,
        );
        if !pinned.contains(&stored) {
            audit.detail("admin_fingerprint", stored.clone());
            return Err(ApiError::new(
                Reason::CustodianNotPinned,
                format!(
                    "the database's admin {} (fingerprint {stored}) is not a custodian this server's configuration pins (admin.custodians, or admin.init_admins): a sealed server takes shares only from pinned admins",
                    row.id
                ),
            ));
        }
        Ok(())
    }

    /// Init is refused unless the admins it names are exactly those whose fingerprints the
    /// configuration pins (`admin.init_admins`), so whoever reaches an uninitialized server
    /// first cannot make it theirs. Without a pinned set only dev mode initializes (itself).
    pub(crate) fn check_pinned_admins(&self, admins: &[NewAdmin], audit: &mut Audit) -> Result<(), ApiError> {
        let offered: BTreeSet<String> = admins
            .iter()
            .map(|a| {
                kms_core::admin::fingerprint(
                    a.id.as_str(),
                    a.country.as_str(),
                    a.signing_key.as_bytes(),
                    &a.encryption_key,
                )
            })
            .collect();
        audit.detail("admin_fingerprints", offered.iter().cloned().collect::<Vec<_>>());
        let Some(pinned) = &self.init_admins else {
            return Err(ApiError::new(
                Reason::InitNotPinned,
                "this server pins no initial admin set (admin.init_admins in its configuration): list the fingerprints of the admins Init will name (kmsctl admin fingerprint) and restart it",
            ));
        };
        let pinned: BTreeSet<String> = pinned.iter().cloned().collect();
        if offered != pinned {
            let unexpected: Vec<&String> = offered.difference(&pinned).collect();
            let missing = pinned.difference(&offered).count();
            return Err(ApiError::new(
                Reason::InitAdminsMismatch,
                format!(
                    "the admins of this Init are not the set pinned in the server's configuration (admin.init_admins): {} not pinned ({}), {missing} pinned admin(s) missing",
                    unexpected.len(),
                    unexpected.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Initializes the database and the seal (from a signed Init, or from dev mode's start).
    pub async fn initialize(
        &self,
        kind: SealKind,
        threshold: u32,
        approval_quorum: u32,
        admins: Vec<NewAdmin>,
        audit: &mut Audit,
    ) -> Result<crate::seal::Status, ApiError> {
        if self.seal.is_initialized() {
            return Err(ApiError::new(
                Reason::AlreadyInitialized,
                "the server is already initialized",
            ));
        }
        if admins.is_empty() {
            return Err(ApiError::new(Reason::NoAdmins, "Init needs at least one admin"));
        }
        let mut ids = BTreeSet::new();
        for a in &admins {
            if !ids.insert(a.id.clone()) {
                return Err(ApiError::new(
                    Reason::DuplicateAdmin,
                    format!("admin {} is listed twice", a.id),
                ));
            }
        }
        if approval_quorum == 0 || approval_quorum as usize > admins.len() {
            return Err(ApiError::new(
                Reason::BadQuorum,
                format!(
                    "approval_quorum {approval_quorum}: must be between 1 and the number of admins ({})",
                    admins.len()
                ),
            ));
        }
        let custodians: Vec<&NewAdmin> = admins.iter().filter(|a| a.custodian).collect();
        let threshold = match kind {
            SealKind::Dev | SealKind::Pkcs11 => 0,
            SealKind::Shamir => {
                if custodians.is_empty() || custodians.len() > 255 {
                    return Err(ApiError::new(
                        Reason::BadCustodians,
                        "the shamir seal needs 1 to 255 custodians",
                    ));
                }
                if threshold == 0 || threshold as usize > custodians.len() {
                    return Err(ApiError::new(
                        Reason::BadThreshold,
                        format!(
                            "threshold must be between 1 and the number of custodians ({}), not {threshold}",
                            custodians.len()
                        ),
                    ));
                }
                threshold
            }
        };
        // Dev mode initializes itself, with its own dev admin.
        if !self.seal.dev_mode() {
            self.check_pinned_admins(&admins, audit)?;
        }
        let root = self.seal.create_root(kind, 1)?;
        let now = kms_core::now_unix_ms();
        let deployment_id = format!("dep-{}", hex::encode(kms_core::random_array::<16>()?));
        let seal_row = SealConfigRow {
            kind: kind.as_str().to_owned(),
            threshold,
            kcv: root.check.clone(),
            created_unix_ms: now,
            approval_quorum,
            root_generation: 1,
            deployment_id: deployment_id.clone(),
        };
        let generation = RootGenerationRow {
            generation: 1,
            kind: kind.as_str().to_owned(),
            status: "active".into(),
            threshold,
            kcv: root.check.clone(),
            hsm_label: root.hsm_label.clone(),
            next_root_wrapped: None,
            created_unix_ms: now,
            created_by: audit.caller.clone(),
            completed_unix_ms: None,
            integrity_key: Some(root.integrity_key.clone()),
        };
        let mut shares = Vec::new();
        if let (SealKind::Shamir, Some(material)) = (kind, &root.material) {
            let n = u8::try_from(custodians.len()).unwrap_or(u8::MAX);
            let t = u8::try_from(threshold).unwrap_or(u8::MAX);
            let split = kms_core::shamir::split(material, t, n)?;
            for (c, share) in custodians.iter().zip(split) {
                let plaintext = share_wrap::share_plaintext(c.id.as_str(), share.expose_secret());
                let envelope = share_wrap::seal(&c.encryption_key, plaintext.expose_secret())?;
                shares.push(ShareRow {
                    generation: 1,
                    admin_id: c.id.clone(),
                    envelope: envelope.encode(),
                });
            }
        }
        let rows: Vec<AdminRow> = admins
            .iter()
            .map(|a| AdminRow {
                id: a.id.clone(),
                country: a.country.clone(),
                signing_public_key: a.signing_key.as_bytes().to_vec(),
                encryption_public_key: a.encryption_key.clone(),
                custodian: a.custodian && kind == SealKind::Shamir,
                created_unix_ms: now,
                removed_unix_ms: None,
                removed_by: None,
            })
            .collect();
        audit.detail("deployment_id", deployment_id.as_str());
        audit.detail("seal", kind.as_str());
        audit.detail("threshold", threshold);
        audit.detail("approval_quorum", approval_quorum);
        if let Some(label) = &root.hsm_label {
            audit.detail("hsm_label", label.as_str());
        }
        audit.detail("admins", rows.iter().map(|r| r.id.to_string()).collect::<Vec<_>>());
        if let (SealKind::Dev, Some(material)) = (kind, &root.material) {
            self.seal.write_dev_root(material)?;
        }
        let record = Audit::clone_allowed(audit);
        let ring = root
            .key_ring()
            .ok_or_else(|| ApiError::new(Reason::IntegrityKey, "the new root has no integrity key"))?;
        match self
            .store
            .initialize(&seal_row, &generation, &rows, &shares, ring, record)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                if kind == SealKind::Dev {
                    self.seal.discard_dev_root();
                }
                if let Some(label) = &root.hsm_label {
                    self.seal.discard_hsm_root(label);
                }
                if let StoreError::Conflict = e {
                    // Another replica won the race: adopt its seal record, sealed.
                    if let Ok(Some(cfg)) = self.store.seal_config_unverified().await {
                        self.seal.adopt_initialized(&self.store, &cfg).await;
                    }
                    return Err(ApiError::new(
                        Reason::AlreadyInitialized,
                        "the server is already initialized",
                    ));
                }
                return Err(ApiError::from(e));
            }
        }
        self.seal.finish_init(kind, threshold, root)?;
        Ok(self.seal.status())
    }

    /// AddAdmin (quorum). The country is checked by the server whatever the quorum: an admin
    /// outside the allowed jurisdictions cannot be added.
    pub(crate) async fn add_admin_op(
        &self,
        new: NewAdmin,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<AdminRow>, ApiError> {
        self.check_admin_country(&new)?;
        if new.custodian {
            return Err(ApiError::new(
                Reason::CustodianNeedsReshare,
                "an admin becomes a custodian when the root key is re-shared: add the admin without custodian, then rotate the root key with the new custodian set (rotate_root)",
            ));
        }
        audit.detail("new_admin", new.id.to_string());
        audit.detail("country", new.country.to_string());
        if self.store.admin(&new.id).await?.is_some() {
            return Err(ApiError::new(Reason::AdminExists, format!("admin {} exists", new.id)));
        }
        let row = AdminRow {
            id: new.id,
            country: new.country,
            signing_public_key: new.signing_key.as_bytes().to_vec(),
            encryption_public_key: new.encryption_key,
            custodian: false,
            created_unix_ms: kms_core::now_unix_ms(),
            removed_unix_ms: None,
            removed_by: None,
        };
        let Exec::Run(close) = exec else { return Ok(None) };
        match self.store.add_admin(&row, close, Audit::clone_allowed(audit)).await {
            Ok(()) => Ok(Some(row)),
            Err(StoreError::Conflict) => Err(ApiError::new(Reason::AdminExists, format!("admin {} exists", row.id))),
            Err(e) => Err(ApiError::from(e)),
        }
    }

    /// RemoveAdmin (quorum).
    pub(crate) async fn remove_admin_op(
        &self,
        by: &AdminId,
        admin_id: &str,
        reason: &str,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<AdminRow>, ApiError> {
        let id = AdminId::parse(admin_id)?;
        if reason.trim().is_empty() || reason.len() > 1024 {
            return Err(ApiError::new(
                Reason::BadReason,
                "reason: 1 to 1024 characters, required",
            ));
        }
        audit.detail("removed_admin", id.to_string());
        audit.detail("reason", reason);
        self.store
            .admin(&id)
            .await?
            .filter(|r| r.removed_unix_ms.is_none())
            .ok_or_else(|| ApiError::new(Reason::AdminNotFound, format!("no active admin {id}")))?;
        let Exec::Run(close) = exec else { return Ok(None) };
        let now = kms_core::now_unix_ms();
        let removed = self
            .store
            .remove_admin(&id, by.as_str(), now, close, Audit::clone_allowed(audit))
            .await
            .map_err(ApiError::from)?;
        Ok(Some(removed))
    }

    /// SetQuorum (quorum).
    pub(crate) async fn set_quorum_op(
        &self,
        approval_quorum: u32,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<StatusReport>, ApiError> {
        let admins = self.store.admins(false).await?.len();
        if approval_quorum == 0 || approval_quorum as usize > admins {
            return Err(ApiError::new(
                Reason::BadQuorum,
                format!("approval_quorum {approval_quorum}: must be between 1 and the number of admins ({admins})"),
            ));
        }
        audit.detail("approval_quorum", approval_quorum);
        let Exec::Run(close) = exec else { return Ok(None) };
        self.store
            .set_approval_quorum(approval_quorum, close, Audit::clone_allowed(audit))
            .await
            .map_err(ApiError::from)?;
        Ok(Some(self.status().await?))
    }

    /// ScheduleKeyDeletion (quorum).
    pub(crate) async fn schedule_deletion_op(
        &self,
        key_ref: &str,
        pending_window_days: u32,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<Arc<KeyRow>>, ApiError> {
        if !DELETION_WINDOW_DAYS.contains(&pending_window_days) {
            return Err(ApiError::new(
                Reason::BadDeletionWindow,
                format!("pending_window_days {pending_window_days}: must be 7 to 30"),
            ));
        }
        audit.detail("pending_window_days", pending_window_days);
        let Exec::Run(close) = exec else {
            self.seal.require_initialized()?;
            let key = self.keys.resolve(key_ref).await?;
            audit.key(&key.id);
            if !Transition::ScheduleDeletion.from().contains(&key.state) {
                return Err(ApiError::new(
                    Reason::InvalidStateTransition,
                    format!(
                        "key {} is {}: only a disabled key can be scheduled for deletion (disable it first)",
                        key.id, key.state
                    ),
                ));
            }
            return Ok(None);
        };
        // The window starts when the quorum is reached, not when it was proposed.
        let at = kms_core::now_unix_ms() + i64::from(pending_window_days) * 86_400_000;
        audit.detail("deletion_unix_ms", at);
        self.change_state(key_ref, Transition::ScheduleDeletion, Some(at), close, audit)
            .await
            .map(Some)
    }

    /// The seal status with the quorum and generation from the database.
    pub(crate) async fn status(&self) -> Result<StatusReport, ApiError> {
        seal_status(&self.store, &self.seal).await
    }

    /// GetEncryptedShare: this custodian's share envelope of the current root generation, and
    /// the generation.
    pub(crate) async fn encrypted_share(&self, admin: &AdminId, audit: &mut Audit) -> Result<(Vec<u8>, u64), ApiError> {
        self.seal.require_initialized()?;
        self.seal.refresh_sealed(&self.store).await?;
        let generation = self.seal.status().generation;
        audit.detail("generation", generation);
        let envelope = self
            .store
            .share_of_unverified(admin.as_str(), generation)
            .await?
            .ok_or_else(|| not_a_custodian(admin, generation))?;
        Ok((envelope, generation))
    }

    /// Unseal: one custodian's share, re-wrapped to this process's unseal key. Returns how many
    /// shares this attempt holds.
    pub(crate) async fn submit_share(
        &self,
        admin: &AdminId,
        envelope: &[u8],
        audit: &mut Audit,
    ) -> Result<u32, ApiError> {
        self.seal.refresh_sealed(&self.store).await?;
        let generation = self.seal.status().generation;
        audit.detail("generation", generation);
        if self
            .store
            .share_of_unverified(admin.as_str(), generation)
            .await?
            .is_none()
        {
            return Err(not_a_custodian(admin, generation));
        }
        let status = self.seal.submit_share(&self.store, admin.as_str(), envelope).await?;
        audit.detail("progress", status.progress);
        audit.detail("sealed", status.sealed);
        Ok(status.progress)
    }

    /// RotateKey: a new version under a fresh KEK, in one transaction with its audit entry (which
    /// names the new version).
    pub(crate) async fn rotate_key(&self, key_ref: &str, audit: &mut Audit) -> Result<Arc<KeyRow>, ApiError> {
        let root = self.seal.root()?;
        let key = self.keys.resolve(key_ref).await?;
        audit.key(&key.id);
        let id = key.id;
        let kek = Kek::generate()?;
        let base = audit.clone();
        let rotated = self
            .store
            .rotate_key(
                id,
                kms_core::now_unix_ms(),
                root.generation(),
                |v| root.wrap(id, v, &kek),
                |v| {
                    let mut record = base;
                    record.detail("new_version", v.get());
                    record.allowed()
                },
            )
            .await?;
        match rotated {
            Some(row) => Ok(self.keys.remember(row)),
            None => {
                let current = self
                    .store
                    .key_by_id(key.id)
                    .await?
                    .map(|r| r.state.to_string())
                    .unwrap_or_default();
                Err(ApiError::new(
                    Reason::KeyNotEnabled,
                    format!("key {} is {current}; only an enabled key can be rotated", key.id),
                ))
            }
        }
    }

    /// CreateKey: a new Enabled key with version 1 under a fresh KEK wrapped by the root key.
    pub(crate) async fn create_key(&self, new: NewKey, audit: &mut Audit) -> Result<Arc<KeyRow>, ApiError> {
        let NewKey {
            name,
            description,
            tags,
            grants,
            policy,
        } = new;
        if policy.allows_unattested_release() && !self.allow_unattested {
            return Err(ApiError::new(
                Reason::UnattestedKeysDisabled,
                "this server does not allow keys that release plaintext without attestation (danger.allow_unattested_keys)",
            ));
        }
        let root = self.seal.root()?;
        // The UNIQUE constraint answers this too (Conflict below), but it is the database's: a
        // second key under a name, with the constraint dropped, would leave the name to the
        // database's choice of row (which `key_by_name` refuses).
        if self.store.key_by_name(name.as_str()).await?.is_some() {
            return Err(ApiError::new(
                Reason::KeyNameTaken,
                format!("a key named {:?} exists", name.as_str()),
            ));
        }
        let id = KeyId::generate()?;
        audit.key(id);
        audit.detail("name", name.as_str());
        audit.detail("release_policy", policy.to_json());
        let kek = Kek::generate()?;
        let wrapped = root.wrap(id, KeyVersion::FIRST, &kek)?;
        let now = kms_core::now_unix_ms();
        let row = KeyRow {
            id,
            name,
            description,
            tags,
            state: KeyState::Enabled,
            latest_version: KeyVersion::FIRST,
            grants,
            release_policy: policy.clone(),
            release_policy_version: 1,
            created_unix_ms: now,
            updated_unix_ms: now,
            deletion_unix_ms: None,
        };
        match self
            .store
            .create_key(&row, &wrapped, root.generation(), Audit::clone_allowed(audit))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(ApiError::new(
                    Reason::KeyNameTaken,
                    format!("a key named {:?} exists", row.name.as_str()),
                ));
            }
            Err(e) => return Err(ApiError::from(e)),
        }
        Ok(self.keys.remember(row))
    }

    /// Applies a lifecycle transition. Needs no root key: a sealed replica can still disable a
    /// key (fail-safe) or schedule its deletion.
    pub(crate) async fn change_state(
        &self,
        key_ref: &str,
        transition: Transition,
        deletion: Option<i64>,
        close: Option<&QuorumClose>,
        audit: &mut Audit,
    ) -> Result<Arc<KeyRow>, ApiError> {
        let to = transition.to();
        self.seal.require_initialized()?;
        let key = self.keys.resolve(key_ref).await?;
        audit.key(&key.id);
        audit.detail("to", to.as_str());
        let now = kms_core::now_unix_ms();
        let changed = self
            .store
            .change_state(
                key.id,
                transition,
                deletion,
                None,
                now,
                close,
                Audit::clone_allowed(audit),
            )
            .await
            .map_err(ApiError::from)?;
        match changed {
            Some(row) => Ok(self.keys.remember(row)),
            None => {
                let current = self
                    .store
                    .key_by_id(key.id)
                    .await?
                    .ok_or_else(|| ApiError::new(Reason::KeyNotFound, format!("no key {}", key.id)))?;
                let current = self.keys.remember(current);
                let allowed: Vec<&str> = transition.from().iter().map(|s| s.as_str()).collect();
                Err(ApiError::new(
                    Reason::InvalidStateTransition,
                    format!(
                        "key {} is {}; it can become {} only from {}",
                        current.id,
                        current.state,
                        to,
                        allowed.join(" or ")
                    ),
                ))
            }
        }
    }
}

/// Whether the admin method only reads (its replay changes nothing; see `Store::use_nonce`).
/// A method not listed changes something.
fn reads_only(method: &str) -> bool {
    matches!(
        method,
        "get_encrypted_share"
            | "list_admins"
            | "describe_key"
            | "list_keys"
            | "describe_hardware"
            | "list_hardware"
            | "describe_proposal"
            | "list_proposals"
    )
}

pub(crate) fn audit_op(method: &'static str) -> &'static str {
    match method {
        "init" => "admin.init",
        "get_encrypted_share" => "admin.get_encrypted_share",
        "unseal" => "admin.unseal",
        "seal" => "admin.seal",
        "add_admin" => "admin.add_admin",
        "list_admins" => "admin.list_admins",
        "create_key" => "admin.create_key",
        "describe_key" => "admin.describe_key",
        "list_keys" => "admin.list_keys",
        "rotate_key" => "admin.rotate_key",
        "enable_key" => "admin.enable_key",
        "disable_key" => "admin.disable_key",
        "schedule_key_deletion" => "admin.schedule_key_deletion",
        "cancel_key_deletion" => "admin.cancel_key_deletion",
        "set_release_policy" => "admin.set_release_policy",
        "enroll_hardware" => "admin.enroll_hardware",
        "describe_hardware" => "admin.describe_hardware",
        "list_hardware" => "admin.list_hardware",
        "revoke_hardware" => "admin.revoke_hardware",
        "propose" => "admin.propose",
        "approve" => "admin.approve",
        "reject" => "admin.reject",
        "describe_proposal" => "admin.describe_proposal",
        "list_proposals" => "admin.list_proposals",
        _ => "admin.unknown",
    }
}

/// The seal status of this replica, with the quorum, deployment and generation from the
/// database (`GetSealStatus`, and signed in `GetNodeIdentity`).
pub(crate) async fn seal_status(store: &Store, seal: &Seal) -> Result<StatusReport, ApiError> {
    let status = seal.status();
    let from = status.generation;
    let sealed = status.sealed;
    let rotating = status.rotating_to.is_some();
    // While sealed the record cannot be verified yet (it is, when the seal opens); after the
    // integrity alarm nothing is trusted, and the status says why.
    let cfg = if sealed || store.integrity().alarm().is_some() {
        store.seal_config_unverified().await?
    } else {
        match store.seal_config().await {
            // The alarm went up since it was looked at: the status still answers, and says so.
            Err(StoreError::Rollback(_)) => store.seal_config_unverified().await?,
            other => other?,
        }
    };
    let (approval_quorum, deployment_id) = cfg.map_or((0, String::new()), |c| (c.approval_quorum, c.deployment_id));
    let integrity_alarm = if let Some(alarm) = store.integrity().alarm() {
        format!("{}: {alarm}", alarm.kind.reason())
    } else {
        seal.open_refused().unwrap_or_default()
    };
    Ok(StatusReport {
        status,
        approval_quorum,
        deployment_id,
        state_version: u64::try_from(store.integrity().head().version).unwrap_or(0),
        integrity_alarm,
        rotation_remaining: if rotating {
            store.remaining_under(from).await?
        } else {
            0
        },
    })
}

/// The refusal of a share request by an admin without a share of `generation`.
fn not_a_custodian(admin: &AdminId, generation: u64) -> ApiError {
    ApiError::new(
        Reason::NotACustodian,
        format!("admin {admin} holds no share of root generation {generation}"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use kms_core::ids::KeyName;
    use kms_core::key::{KeyState, Transition};
    use kms_core::policy::{AccessPolicy, Operation, ReleasePolicy};
    use kms_proto::Reason;

    use crate::audit::Audit;
    use crate::keys::NewKey;
    use crate::ops::testkit::{Kit, UNATTESTED};

    fn new_key(name: &str, policy: &str) -> NewKey {
        NewKey {
            name: KeyName::parse(name).unwrap(),
            description: "d".into(),
            tags: BTreeMap::from([("team".to_owned(), "pay".to_owned())]),
            grants: AccessPolicy::new(vec![kms_core::policy::Grant {
                principal: "spiffe://eu/app".into(),
                operations: BTreeSet::from([Operation::Decrypt]),
            }])
            .unwrap(),
            policy: ReleasePolicy::parse(policy).unwrap(),
        }
    }

    #[tokio::test]
    async fn create_key_stores_version_1_and_names_are_unique() {
        let kit = Kit::new().await;
        let mut audit = Audit::new("admin:test", "admin.create_key");
        let row = kit
            .admin
            .create_key(new_key("pay", UNATTESTED), &mut audit)
            .await
            .unwrap();
        assert_eq!((row.latest_version.get(), row.state), (1, KeyState::Enabled));
        let stored = kit.store.key_by_name("pay").await.unwrap().unwrap();
        assert_eq!(stored.id, row.id);
        assert_eq!(stored.tags["team"], "pay");
        let e = kit
            .admin
            .create_key(new_key("pay", UNATTESTED), &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::KeyNameTaken);
    }

    #[tokio::test]
    async fn unattested_keys_need_the_danger_setting() {
        let mut kit = Kit::new().await;
        kit.admin.allow_unattested = false;
        let mut audit = Audit::new("admin:test", "admin.create_key");
        let e = kit
            .admin
            .create_key(new_key("k", UNATTESTED), &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::UnattestedKeysDisabled);
        kit.admin
            .create_key(new_key("k", r#"{"version":1,"attestation":"required"}"#), &mut audit)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn state_changes_follow_the_key_lifecycle() {
        let kit = Kit::new().await;
        let mut audit = Audit::new("admin:test", "admin.create_key");
        kit.admin
            .create_key(new_key("k", UNATTESTED), &mut audit)
            .await
            .unwrap();
        let e = kit
            .admin
            .change_state("k", Transition::Enable, None, None, &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::InvalidStateTransition);
        kit.admin
            .change_state("k", Transition::Disable, None, None, &mut audit)
            .await
            .unwrap();
        assert_eq!(
            kit.store.key_by_name("k").await.unwrap().unwrap().state,
            KeyState::Disabled
        );
        let e = kit
            .admin
            .change_state("nope", Transition::Disable, None, None, &mut audit)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, Reason::KeyNotFound);
    }

    #[tokio::test]
    async fn rotate_key_adds_a_version_and_audits_it_in_the_same_transaction() {
        let kit = Kit::new().await;
        let mut audit = Audit::new("admin:test", "admin.create_key");
        kit.admin
            .create_key(new_key("k", UNATTESTED), &mut audit)
            .await
            .unwrap();
        let mut audit = Audit::new("admin:test", "admin.rotate_key");
        let row = kit.admin.rotate_key("k", &mut audit).await.unwrap();
        assert_eq!(row.latest_version.get(), 2);
        let details: Vec<String> =
            sqlx::query_scalar("SELECT detail FROM audit_log WHERE operation = 'admin.rotate_key'")
                .fetch_all(kit.store.pool())
                .await
                .unwrap();
        assert_eq!(details.len(), 1);
        let detail: serde_json::Value = serde_json::from_str(&details[0]).unwrap();
        assert_eq!(detail["new_version"], 2);

        let mut audit = Audit::new("admin:test", "admin.disable_key");
        kit.admin
            .change_state("k", Transition::Disable, None, None, &mut audit)
            .await
            .unwrap();
        let mut audit = Audit::new("admin:test", "admin.rotate_key");
        let e = kit.admin.rotate_key("k", &mut audit).await.err().unwrap();
        assert_eq!(e.reason, Reason::KeyNotEnabled);
    }
}
