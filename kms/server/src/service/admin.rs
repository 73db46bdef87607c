//! AdminService: key management, admins and the seal. Every call but GetSealStatus is a signed
//! request; [`AdminPlane::authenticate`] checks it before anything else runs. State changes commit
//! together with their audit entry (one transaction). Sensitive operations will need a quorum of
//! admins (a later step); today one authenticated admin suffices.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kms_core::admin::AdminPublicKey;
use kms_core::blob::Kek;
use kms_core::ids::{AdminId, KeyId, KeyName, KeyVersion};
use kms_core::jurisdiction::{AllowedCountries, Country};
use kms_core::key::{KeyState, Transition, DELETION_WINDOW_DAYS};
use kms_core::policy::{AccessPolicy, Grant, Operation, ReleasePolicy};
use kms_core::share_wrap;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::quorum_operation::Operation as QOp;
use prost::Message;
use tonic::{Request, Response, Status};

use super::quorum::Exec;
use super::{finish, Audit};
use crate::audit::AuditLog;
use crate::error::ApiError;
use crate::keys::Keys;
use crate::seal::{Seal, SealKind};
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
    pub(crate) proposal_ttl: Duration,
    pub(crate) allow_unattested: bool,
    pub(crate) attestation: Arc<crate::attest::Attestation>,
}

/// A new admin, parsed.
#[derive(Debug)]
pub struct NewAdmin {
    /// Id.
    pub id: AdminId,
    /// Country.
    pub country: Country,
    /// Signing key.
    pub signing_key: AdminPublicKey,
    /// HPKE P-256 encryption key.
    pub encryption_key: Vec<u8>,
    /// Holds a share.
    pub custodian: bool,
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Init(_) => "init",
        Op::GetEncryptedShare(_) => "get_encrypted_share",
        Op::Unseal(_) => "unseal",
        Op::Seal(_) => "seal",
        Op::AddAdmin(_) => "add_admin",
        Op::ListAdmins(_) => "list_admins",
        Op::CreateKey(_) => "create_key",
        Op::DescribeKey(_) => "describe_key",
        Op::ListKeys(_) => "list_keys",
        Op::RotateKey(_) => "rotate_key",
        Op::EnableKey(_) => "enable_key",
        Op::DisableKey(_) => "disable_key",
        Op::ScheduleKeyDeletion(_) => "schedule_key_deletion",
        Op::CancelKeyDeletion(_) => "cancel_key_deletion",
        Op::SetReleasePolicy(_) => "set_release_policy",
        Op::EnrollHardware(_) => "enroll_hardware",
        Op::DescribeHardware(_) => "describe_hardware",
        Op::ListHardware(_) => "list_hardware",
        Op::RevokeHardware(_) => "revoke_hardware",
        Op::Propose(_) => "propose",
        Op::Approve(_) => "approve",
        Op::Reject(_) => "reject",
        Op::DescribeProposal(_) => "describe_proposal",
        Op::ListProposals(_) => "list_proposals",
    }
}

impl AdminPlane {
    /// Parses a wire NewAdmin and checks its country against the allowed jurisdictions.
    pub fn parse_new_admin(&self, a: &pb::NewAdmin) -> Result<NewAdmin, ApiError> {
        let id = AdminId::parse(&a.id)?;
        let country = Country::parse(&a.country)?;
        if !self.allowed_countries.allows(&country) {
            return Err(ApiError::new(
                Reason::CountryNotAllowed,
                format!("admin {id}: country {country} is outside the allowed jurisdictions"),
            ));
        }
        let signing_key = AdminPublicKey::parse(&a.signing_public_key)
            .map_err(|e| ApiError::new(Reason::InvalidPublicKey, format!("admin {id}: signing_public_key: {e}")))?;
        share_wrap::check_public_key(&a.encryption_public_key).map_err(|e| {
            ApiError::new(
                Reason::InvalidPublicKey,
                format!("admin {id}: encryption_public_key: {e}"),
            )
        })?;
        Ok(NewAdmin {
            id,
            country,
            signing_key,
            encryption_key: a.encryption_public_key.clone(),
            custodian: a.custodian,
        })
    }

    /// Checks a signed request: decodes it, checks the method, freshness, the admin, the
    /// signature over the exact bytes, and the nonce (once only, on every replica). Returns the
    /// operation. For Init the signer must be one of the admins it names.
    async fn authenticate(
        &self,
        signed: &pb::SignedRequest,
        method: &'static str,
        audit: &mut Audit,
    ) -> Result<(AdminId, Op), ApiError> {
        let req = pb::AdminRequest::decode(signed.payload.as_slice())
            .map_err(|_| ApiError::new(Reason::MalformedRequest, "the signed payload is not an AdminRequest"))?;
        let admin_id = AdminId::parse(&req.admin_id)?;
        // Until the signature verifies, the caller is only who the request claims to be.
        *audit = Audit::new(format!("unverified:{admin_id}"), audit_op(method));
        let op = req
            .operation
            .ok_or_else(|| ApiError::new(Reason::MissingOperation, "the request names no operation"))?;
        if op_name(&op) != method {
            return Err(ApiError::new(
                Reason::OperationMismatch,
                format!(
                    "the signed operation is {} but the method called is {method}",
                    op_name(&op)
                ),
            ));
        }
        let now = kms_core::now_unix_ms();
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let skew = i64::try_from(self.skew.as_millis()).unwrap_or(i64::MAX);
        if now - req.timestamp_unix_ms > window {
            return Err(ApiError::new(
                Reason::StaleRequest,
                format!(
                    "the request's timestamp is {} s behind the server's clock (allowed: {} s)",
                    (now - req.timestamp_unix_ms) / 1000,
                    window / 1000
                ),
            ));
        }
        if req.timestamp_unix_ms - now > skew {
            return Err(ApiError::new(
                Reason::FutureRequest,
                format!(
                    "the request's timestamp is {} s ahead of the server's clock (allowed: {} s)",
                    (req.timestamp_unix_ms - now) / 1000,
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
        let sealed_ok =
            matches!(op, Op::GetEncryptedShare(_) | Op::Unseal(_) | Op::Seal(_)) && self.seal.root().is_err();
        let key = match &op {
            Op::Init(init) => {
                if !req.deployment_id.is_empty() {
                    return Err(ApiError::new(
                        Reason::WrongDeployment,
                        "an Init request names no deployment (the deployment is made by Init)",
                    ));
                }
                let me = init.admins.iter().find(|a| a.id == admin_id.as_str()).ok_or_else(|| {
                    ApiError::new(
                        Reason::UnknownAdmin,
                        "Init must be signed by one of the admins it names",
                    )
                })?;
                AdminPublicKey::parse(&me.signing_public_key)?
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
                    self.store.admin(admin_id.as_str()).await?
                }
                .ok_or_else(|| ApiError::new(Reason::UnknownAdmin, format!("no admin {admin_id}")))?;
                if row.removed_unix_ms.is_some() {
                    return Err(ApiError::new(
                        Reason::AdminRemoved,
                        format!("admin {admin_id} was removed"),
                    ));
                }
                AdminPublicKey::parse(&row.signing_public_key)
                    .map_err(|_| ApiError::new(Reason::CorruptAdmin, "stored admin key is unreadable"))?
            }
        };
        key.verify(&signed.payload, &signed.signature).map_err(|_| {
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
            )
            .await?
        {
            return Err(ApiError::new(
                Reason::ReplayedRequest,
                "this request nonce was already used",
            ));
        }
        Ok((admin_id, op))
    }

    /// Init is refused unless the admins it names are exactly those whose fingerprints the
    /// configuration pins (`admin.init_admins`), so whoever reaches an uninitialized server
    /// first cannot make it theirs. Without a pinned set only dev mode initializes (itself).
    fn check_pinned_admins(&self, admins: &[NewAdmin], audit: &mut Audit) -> Result<(), ApiError> {
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
                    admin_id: c.id.to_string(),
                    envelope: envelope.encode(),
                });
            }
        }
        let rows: Vec<AdminRow> = admins
            .iter()
            .map(|a| AdminRow {
                id: a.id.to_string(),
                country: a.country.to_string(),
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
        audit.detail("admins", rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
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
                return Err(store_err(e));
            }
        }
        self.seal.finish_init(kind, threshold, root)?;
        Ok(self.seal.status())
    }

    /// AddAdmin (quorum). The country is checked by the server whatever the quorum: an admin
    /// outside the allowed jurisdictions cannot be added.
    pub(crate) async fn add_admin_op(
        &self,
        add: pb::AddAdminOp,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<pb::Admin>, ApiError> {
        let new = self.parse_new_admin(&add.admin.unwrap_or_default())?;
        if new.custodian {
            return Err(ApiError::new(
                Reason::CustodianNeedsReshare,
                "an admin becomes a custodian when the root key is re-shared: add the admin without custodian, then rotate the root key with the new custodian set (rotate_root)",
            ));
        }
        audit.detail("new_admin", new.id.to_string());
        audit.detail("country", new.country.to_string());
        if self.store.admin(new.id.as_str()).await?.is_some() {
            return Err(ApiError::new(Reason::AdminExists, format!("admin {} exists", new.id)));
        }
        let row = AdminRow {
            id: new.id.to_string(),
            country: new.country.to_string(),
            signing_public_key: new.signing_key.as_bytes().to_vec(),
            encryption_public_key: new.encryption_key,
            custodian: false,
            created_unix_ms: kms_core::now_unix_ms(),
            removed_unix_ms: None,
            removed_by: None,
        };
        let Exec::Run(close) = exec else { return Ok(None) };
        match self.store.add_admin(&row, close, Audit::clone_allowed(audit)).await {
            Ok(()) => Ok(Some(admin_to_wire(&row))),
            Err(StoreError::Conflict) => Err(ApiError::new(Reason::AdminExists, format!("admin {} exists", row.id))),
            Err(e) => Err(store_err(e)),
        }
    }

    /// RemoveAdmin (quorum).
    pub(crate) async fn remove_admin_op(
        &self,
        by: &AdminId,
        op: pb::RemoveAdminOp,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<pb::Admin>, ApiError> {
        let id = AdminId::parse(&op.admin_id)?;
        if op.reason.trim().is_empty() || op.reason.len() > 1024 {
            return Err(ApiError::new(
                Reason::BadReason,
                "reason: 1 to 1024 characters, required",
            ));
        }
        audit.detail("removed_admin", id.to_string());
        audit.detail("reason", op.reason.as_str());
        self.store
            .admin(id.as_str())
            .await?
            .filter(|r| r.removed_unix_ms.is_none())
            .ok_or_else(|| ApiError::new(Reason::AdminNotFound, format!("no active admin {id}")))?;
        let Exec::Run(close) = exec else { return Ok(None) };
        let now = kms_core::now_unix_ms();
        let removed = self
            .store
            .remove_admin(id.as_str(), by.as_str(), now, close, Audit::clone_allowed(audit))
            .await
            .map_err(store_err)?;
        Ok(Some(admin_to_wire(&removed)))
    }

    /// SetQuorum (quorum).
    pub(crate) async fn set_quorum_op(
        &self,
        op: pb::SetQuorumOp,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<pb::SealStatus>, ApiError> {
        let admins = self.store.admins(false).await?.len();
        if op.approval_quorum == 0 || op.approval_quorum as usize > admins {
            return Err(ApiError::new(
                Reason::BadQuorum,
                format!(
                    "approval_quorum {}: must be between 1 and the number of admins ({admins})",
                    op.approval_quorum
                ),
            ));
        }
        audit.detail("approval_quorum", op.approval_quorum);
        let Exec::Run(close) = exec else { return Ok(None) };
        self.store
            .set_approval_quorum(op.approval_quorum, close, Audit::clone_allowed(audit))
            .await
            .map_err(store_err)?;
        Ok(Some(self.wire_status().await?))
    }

    /// ScheduleKeyDeletion (quorum).
    pub(crate) async fn schedule_deletion_op(
        &self,
        s: pb::ScheduleKeyDeletionOp,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<pb::KeyMetadata>, ApiError> {
        if !DELETION_WINDOW_DAYS.contains(&s.pending_window_days) {
            return Err(ApiError::new(
                Reason::BadDeletionWindow,
                format!("pending_window_days {}: must be 7 to 30", s.pending_window_days),
            ));
        }
        audit.detail("pending_window_days", s.pending_window_days);
        let Exec::Run(close) = exec else {
            self.seal.require_initialized()?;
            let key = self.keys.resolve(&s.key).await?;
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
        let at = kms_core::now_unix_ms() + i64::from(s.pending_window_days) * 86_400_000;
        audit.detail("deletion_unix_ms", at);
        self.change_state(&s.key, Transition::ScheduleDeletion, Some(at), close, audit)
            .await
            .map(Some)
    }

    /// The seal status with the quorum and generation from the database.
    pub(crate) async fn wire_status(&self) -> Result<pb::SealStatus, ApiError> {
        seal_status(&self.store, &self.seal).await
    }

    pub(crate) fn key_metadata(k: &KeyRow) -> pb::KeyMetadata {
        pb::KeyMetadata {
            id: k.id.clone(),
            name: k.name.clone(),
            description: k.description.clone(),
            tags: k.tags.clone(),
            state: match k.state {
                KeyState::Enabled => pb::KeyState::Enabled,
                KeyState::Disabled => pb::KeyState::Disabled,
                KeyState::PendingDeletion => pb::KeyState::PendingDeletion,
                KeyState::Destroyed => pb::KeyState::Destroyed,
            } as i32,
            latest_version: k.latest_version,
            created_unix_ms: k.created_unix_ms,
            deletion_unix_ms: k.deletion_unix_ms.unwrap_or(0),
            grants: k
                .grants
                .grants
                .iter()
                .map(|g| pb::Grant {
                    principal: g.principal.clone(),
                    operations: g.operations.iter().map(|o| op_to_wire(*o) as i32).collect(),
                })
                .collect(),
            release_policy: k.release_policy.clone(),
            release_policy_version: k.release_policy_version,
        }
    }

    async fn create_key(&self, op: pb::CreateKeyOp, audit: &mut Audit) -> Result<pb::KeyMetadata, ApiError> {
        let name = KeyName::parse(&op.name)?;
        if op.description.chars().count() > 1024 {
            return Err(ApiError::new(
                Reason::InvalidArgument,
                "description: at most 1024 characters",
            ));
        }
        check_tags(&op.tags)?;
        let grants = AccessPolicy::new(op.grants.iter().map(grant_from_wire).collect::<Result<_, _>>()?)?;
        let policy = ReleasePolicy::parse(&op.release_policy)?;
        if policy.allows_unattested_release() && !self.allow_unattested {
            return Err(ApiError::new(
                Reason::UnattestedKeysDisabled,
                "this server does not allow keys that release plaintext without attestation (danger.allow_unattested_keys)",
            ));
        }
        let root = self.seal.root()?;
        let id = KeyId::generate()?;
        audit.key(&id.to_string());
        audit.detail("name", name.as_str());
        audit.detail("release_policy", policy.to_json());
        let kek = Kek::generate()?;
        let wrapped = root.wrap(id, KeyVersion::FIRST, &kek)?;
        let now = kms_core::now_unix_ms();
        let row = KeyRow {
            id: id.to_string(),
            name: name.as_str().to_owned(),
            description: op.description,
            tags: op.tags,
            state: KeyState::Enabled,
            latest_version: 1,
            grants,
            release_policy: policy.to_json(),
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
                    format!("a key named {:?} exists", row.name),
                ));
            }
            Err(e) => return Err(store_err(e)),
        }
        let row = self.keys.remember(row);
        Ok(Self::key_metadata(&row))
    }

    /// Applies a lifecycle transition. Needs no root key: a sealed replica can still disable a
    /// key (fail-safe) or schedule its deletion.
    async fn change_state(
        &self,
        key_ref: &str,
        transition: Transition,
        deletion: Option<i64>,
        close: Option<&QuorumClose>,
        audit: &mut Audit,
    ) -> Result<pb::KeyMetadata, ApiError> {
        let to = transition.to();
        self.seal.require_initialized()?;
        let key = self.keys.resolve(key_ref).await?;
        audit.key(&key.id);
        audit.detail("to", to.as_str());
        let now = kms_core::now_unix_ms();
        let changed = self
            .store
            .change_state(
                &key.id,
                transition,
                deletion,
                None,
                now,
                close,
                Audit::clone_allowed(audit),
            )
            .await
            .map_err(store_err)?;
        match changed {
            Some(row) => Ok(Self::key_metadata(&self.keys.remember(row))),
            None => {
                let current = self
                    .store
                    .key_by_id(&key.id)
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

impl Audit {
    /// The success record as it stands, for a transaction to write with its change.
    pub(crate) fn clone_allowed(a: &Audit) -> kms_core::audit::Record {
        Audit {
            caller: a.caller.clone(),
            operation: a.operation,
            key_id: a.key_id.clone(),
            detail: a.detail.clone(),
        }
        .allowed()
    }

    /// The refusal record as it stands.
    pub(crate) fn clone_failed(a: &Audit, e: &ApiError) -> kms_core::audit::Record {
        Audit {
            caller: a.caller.clone(),
            operation: a.operation,
            key_id: a.key_id.clone(),
            detail: a.detail.clone(),
        }
        .failed(e)
    }
}

fn audit_op(method: &'static str) -> &'static str {
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

pub(crate) fn store_err(e: StoreError) -> ApiError {
    ApiError::from(e)
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > 50 {
        return Err(ApiError::new(Reason::InvalidArgument, "tags: at most 50"));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(ApiError::new(
                Reason::InvalidArgument,
                format!("tag {k:?}: keys are 1 to 128 bytes, values at most 256"),
            ));
        }
    }
    Ok(())
}

fn op_to_wire(o: Operation) -> pb::Operation {
    match o {
        Operation::GenerateDataKey => pb::Operation::GenerateDataKey,
        Operation::GenerateDataKeyWithoutPlaintext => pb::Operation::GenerateDataKeyWithoutPlaintext,
        Operation::Encrypt => pb::Operation::Encrypt,
        Operation::Decrypt => pb::Operation::Decrypt,
        Operation::ReEncrypt => pb::Operation::ReEncrypt,
    }
}

fn grant_from_wire(g: &pb::Grant) -> Result<Grant, ApiError> {
    let mut operations = BTreeSet::new();
    for o in &g.operations {
        let op = match pb::Operation::try_from(*o) {
            Ok(pb::Operation::GenerateDataKey) => Operation::GenerateDataKey,
            Ok(pb::Operation::GenerateDataKeyWithoutPlaintext) => Operation::GenerateDataKeyWithoutPlaintext,
            Ok(pb::Operation::Encrypt) => Operation::Encrypt,
            Ok(pb::Operation::Decrypt) => Operation::Decrypt,
            Ok(pb::Operation::ReEncrypt) => Operation::ReEncrypt,
            _ => {
                return Err(ApiError::new(
                    Reason::InvalidPolicy,
                    format!("grant for {}: operation {o} is not a data-plane operation", g.principal),
                ))
            }
        };
        operations.insert(op);
    }
    Ok(Grant {
        principal: g.principal.clone(),
        operations,
    })
}

fn wire_status(s: crate::seal::Status) -> pb::SealStatus {
    pb::SealStatus {
        initialized: s.initialized,
        sealed: s.sealed,
        seal: match s.kind {
            None => pb::SealKind::Unspecified,
            Some(SealKind::Shamir) => pb::SealKind::Shamir,
            Some(SealKind::Dev) => pb::SealKind::Dev,
            Some(SealKind::Pkcs11) => pb::SealKind::Pkcs11,
        } as i32,
        threshold: s.threshold,
        progress: s.progress,
        unseal_public_key: s.unseal_public_key,
        key_check_value: s.key_check_value,
        root_generation: s.generation,
        approval_quorum: 0,
        deployment_id: String::new(),
        state_version: 0,
        integrity_alarm: String::new(),
        rotation: s.rotating_to.map(|(to, kind)| pb::RootRotation {
            to_generation: to,
            seal: match kind {
                SealKind::Shamir => pb::SealKind::Shamir,
                SealKind::Dev => pb::SealKind::Dev,
                SealKind::Pkcs11 => pb::SealKind::Pkcs11,
            } as i32,
            remaining: 0,
        }),
    }
}

/// Runs one admin method: authenticate, run `body`, audit, answer. `durable`: the success
/// record must be durable before answering (reads that release nothing queue it). `in_tx`: the
/// body's transaction already wrote the success record.
macro_rules! admin_call {
    ($self:ident, $request:ident, $method:literal, durable = $durable:expr, in_tx = $in_tx:expr, |$op:ident, $admin:ident, $audit:ident| $body:expr) => {
        admin_call!(
            $self,
            $request,
            $method,
            durable = $durable,
            in_tx = $in_tx,
            |$op, $admin, $audit, _signed| $body
        )
    };
    ($self:ident, $request:ident, $method:literal, durable = $durable:expr, in_tx = $in_tx:expr, |$op:ident, $admin:ident, $audit:ident, $signed:ident| $body:expr) => {{
        let $signed = $request.into_inner();
        let mut $audit = Audit::new("unauthenticated", audit_op($method));
        let result = async {
            let ($admin, op) = $self.authenticate(&$signed, $method, &mut $audit).await?;
            let _ = &$admin;
            let $op = op;
            $body
        }
        .await;
        if $in_tx && result.is_ok() {
            Ok(Response::new(result.map_err(|e: ApiError| e.to_status())?))
        } else {
            finish(&$self.audit, $audit, result, $durable).await
        }
    }};
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminPlane {
    async fn get_seal_status(
        &self,
        _request: Request<pb::GetSealStatusRequest>,
    ) -> Result<Response<pb::SealStatus>, Status> {
        self.wire_status().await.map(Response::new).map_err(|e| e.to_status())
    }

    async fn init(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::InitResponse>, Status> {
        admin_call!(
            self,
            request,
            "init",
            durable = true,
            in_tx = true,
            |op, admin, audit| {
                let Op::Init(init) = op else {
                    unreachable!("authenticate checked the operation")
                };
                let kind = match pb::SealKind::try_from(init.seal) {
                    Ok(pb::SealKind::Shamir) => SealKind::Shamir,
                    Ok(pb::SealKind::Dev) => SealKind::Dev,
                    Ok(pb::SealKind::Pkcs11) => SealKind::Pkcs11,
                    _ => return Err(ApiError::new(Reason::BadSeal, "seal must be SHAMIR, PKCS11 or DEV")),
                };
                let admins = init
                    .admins
                    .iter()
                    .map(|a| self.parse_new_admin(a))
                    .collect::<Result<Vec<_>, _>>()?;
                self.initialize(kind, init.threshold, init.approval_quorum, admins, &mut audit)
                    .await?;
                Ok(pb::InitResponse {
                    status: Some(self.wire_status().await?),
                })
            }
        )
    }

    async fn get_encrypted_share(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::EncryptedShare>, Status> {
        admin_call!(
            self,
            request,
            "get_encrypted_share",
            durable = true,
            in_tx = false,
            |op, admin, audit| {
                let _ = op;
                self.seal.require_initialized()?;
                self.seal.refresh_sealed(&self.store).await?;
                let generation = self.seal.status().generation;
                audit.detail("generation", generation);
                let envelope = self
                    .store
                    .share_of_unverified(admin.as_str(), generation)
                    .await?
                    .ok_or_else(|| {
                        ApiError::new(
                            Reason::NotACustodian,
                            format!("admin {admin} holds no share of root generation {generation}"),
                        )
                    })?;
                Ok(pb::EncryptedShare { envelope, generation })
            }
        )
    }

    async fn unseal(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::SealStatus>, Status> {
        admin_call!(
            self,
            request,
            "unseal",
            durable = true,
            in_tx = false,
            |op, admin, audit| {
                let Op::Unseal(u) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.seal.refresh_sealed(&self.store).await?;
                let generation = self.seal.status().generation;
                audit.detail("generation", generation);
                if self
                    .store
                    .share_of_unverified(admin.as_str(), generation)
                    .await?
                    .is_none()
                {
                    return Err(ApiError::new(
                        Reason::NotACustodian,
                        format!("admin {admin} holds no share of root generation {generation}"),
                    ));
                }
                let status = self.seal.submit_share(&self.store, admin.as_str(), &u.envelope).await?;
                audit.detail("progress", status.progress);
                audit.detail("sealed", status.sealed);
                let mut wire = self.wire_status().await?;
                wire.progress = status.progress;
                Ok(wire)
            }
        )
    }

    async fn seal(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::SealStatus>, Status> {
        admin_call!(
            self,
            request,
            "seal",
            durable = true,
            in_tx = false,
            |op, admin, audit| {
                let _ = op;
                self.seal.seal()?;
                self.keys.clear_keks();
                self.attestation.clear();
                self.wire_status().await
            }
        )
    }

    async fn add_admin(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Admin>, Status> {
        admin_call!(
            self,
            request,
            "add_admin",
            durable = true,
            in_tx = true,
            |op, admin, audit, signed| {
                let Op::AddAdmin(add) = op else {
                    unreachable!("authenticate checked the operation")
                };
                match self.direct(&admin, &signed, QOp::AddAdmin(add), &mut audit).await? {
                    pb::proposal::Result::Admin(a) => Ok(a),
                    _ => Err(ApiError::new(Reason::QuorumResult, "unexpected result")),
                }
            }
        )
    }

    async fn list_admins(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ListAdminsResponse>, Status> {
        admin_call!(
            self,
            request,
            "list_admins",
            durable = false,
            in_tx = false,
            |op, admin, audit| {
                let Op::ListAdmins(l) = op else {
                    unreachable!("authenticate checked the operation")
                };
                Ok(pb::ListAdminsResponse {
                    admins: self
                        .store
                        .admins(l.include_removed)
                        .await?
                        .iter()
                        .map(admin_to_wire)
                        .collect(),
                })
            }
        )
    }

    async fn create_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        admin_call!(
            self,
            request,
            "create_key",
            durable = true,
            in_tx = true,
            |op, admin, audit| {
                let Op::CreateKey(c) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.create_key(c, &mut audit).await
            }
        )
    }

    async fn describe_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        admin_call!(
            self,
            request,
            "describe_key",
            durable = false,
            in_tx = false,
            |op, admin, audit| {
                let Op::DescribeKey(d) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.seal.require_initialized()?;
                let key = self.keys.resolve(&d.key).await?;
                audit.key(&key.id);
                Ok(Self::key_metadata(&key))
            }
        )
    }

    async fn list_keys(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        admin_call!(
            self,
            request,
            "list_keys",
            durable = false,
            in_tx = false,
            |op, admin, audit| {
                let Op::ListKeys(l) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.seal.require_initialized()?;
                let size = super::page_size(l.page_size)?;
                if !l.page_token.is_empty() {
                    KeyId::parse(&l.page_token).map_err(|_| {
                        ApiError::new(Reason::BadPageToken, "page_token is not one this server returned")
                    })?;
                }
                let rows = self.store.list_keys(&l.page_token, size + 1).await?;
                let more = rows.len() > size as usize;
                let keys: Vec<pb::KeyMetadata> = rows.iter().take(size as usize).map(Self::key_metadata).collect();
                let next_page_token = if more {
                    keys.last().map(|k| k.id.clone()).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(pb::ListKeysResponse { keys, next_page_token })
            }
        )
    }

    async fn rotate_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        admin_call!(
            self,
            request,
            "rotate_key",
            durable = true,
            in_tx = true,
            |op, admin, audit| {
                let Op::RotateKey(r) = op else {
                    unreachable!("authenticate checked the operation")
                };
                let root = self.seal.root()?;
                let key = self.keys.resolve(&r.key).await?;
                audit.key(&key.id);
                let id = KeyId::parse(&key.id)?;
                let kek = Kek::generate()?;
                let base = Audit::clone_allowed(&audit);
                let rotated = self
                    .store
                    .rotate_key(
                        &key.id,
                        kms_core::now_unix_ms(),
                        root.generation(),
                        |v| {
                            let v = KeyVersion::new(v).ok_or_else(|| kms_core::Error::InvalidId {
                                kind: "key version",
                                reason: "version 0".into(),
                            })?;
                            root.wrap(id, v, &kek)
                        },
                        |v| {
                            let mut rec = base;
                            let mut detail: serde_json::Map<String, serde_json::Value> =
                                serde_json::from_str(&rec.detail).unwrap_or_default();
                            detail.insert("new_version".into(), v.into());
                            rec.detail = serde_json::Value::Object(detail).to_string();
                            rec
                        },
                    )
                    .await
                    .map_err(store_err)?;
                match rotated {
                    Some(row) => Ok(Self::key_metadata(&self.keys.remember(row))),
                    None => {
                        let current = self
                            .store
                            .key_by_id(&key.id)
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
        )
    }

    async fn enable_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        admin_call!(
            self,
            request,
            "enable_key",
            durable = true,
            in_tx = true,
            |op, admin, audit| {
                let Op::EnableKey(e) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.change_state(&e.key, Transition::Enable, None, None, &mut audit)
                    .await
            }
        )
    }

    async fn disable_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        admin_call!(
            self,
            request,
            "disable_key",
            durable = true,
            in_tx = true,
            |op, admin, audit| {
                let Op::DisableKey(d) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.change_state(&d.key, Transition::Disable, None, None, &mut audit)
                    .await
            }
        )
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        admin_call!(
            self,
            request,
            "schedule_key_deletion",
            durable = true,
            in_tx = true,
            |op, admin, audit, signed| {
                let Op::ScheduleKeyDeletion(s) = op else {
                    unreachable!("authenticate checked the operation")
                };
                match self
                    .direct(&admin, &signed, QOp::ScheduleKeyDeletion(s), &mut audit)
                    .await?
                {
                    pb::proposal::Result::Key(k) => Ok(k),
                    _ => Err(ApiError::new(Reason::QuorumResult, "unexpected result")),
                }
            }
        )
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        admin_call!(
            self,
            request,
            "cancel_key_deletion",
            durable = true,
            in_tx = true,
            |op, admin, audit| {
                let Op::CancelKeyDeletion(c) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.change_state(&c.key, Transition::CancelDeletion, None, None, &mut audit)
                    .await
            }
        )
    }

    async fn set_release_policy(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        admin_call!(
            self,
            request,
            "set_release_policy",
            durable = true,
            in_tx = true,
            |op, admin, audit, signed| {
                let Op::SetReleasePolicy(p) = op else {
                    unreachable!("authenticate checked the operation")
                };
                match self
                    .direct(&admin, &signed, QOp::SetReleasePolicy(p), &mut audit)
                    .await?
                {
                    pb::proposal::Result::Key(k) => Ok(k),
                    _ => Err(ApiError::new(Reason::QuorumResult, "unexpected result")),
                }
            }
        )
    }

    async fn enroll_hardware(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Hardware>, Status> {
        admin_call!(
            self,
            request,
            "enroll_hardware",
            durable = true,
            in_tx = true,
            |op, admin, audit, signed| {
                let Op::EnrollHardware(e) = op else {
                    unreachable!("authenticate checked the operation")
                };
                match self.direct(&admin, &signed, QOp::EnrollHardware(e), &mut audit).await? {
                    pb::proposal::Result::Hardware(h) => Ok(h),
                    _ => Err(ApiError::new(Reason::QuorumResult, "unexpected result")),
                }
            }
        )
    }

    async fn describe_hardware(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Hardware>, Status> {
        admin_call!(
            self,
            request,
            "describe_hardware",
            durable = false,
            in_tx = false,
            |op, admin, audit| {
                let Op::DescribeHardware(d) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.describe_hardware(&d.hardware_id, &mut audit).await
            }
        )
    }

    async fn list_hardware(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ListHardwareResponse>, Status> {
        admin_call!(
            self,
            request,
            "list_hardware",
            durable = false,
            in_tx = false,
            |op, admin, audit| {
                let Op::ListHardware(l) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.list_hardware(l).await
            }
        )
    }

    async fn revoke_hardware(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Hardware>, Status> {
        admin_call!(
            self,
            request,
            "revoke_hardware",
            durable = true,
            in_tx = true,
            |op, admin, audit| {
                let Op::RevokeHardware(r) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.revoke_hardware(&admin, r, &mut audit).await
            }
        )
    }

    async fn propose(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Proposal>, Status> {
        admin_call!(
            self,
            request,
            "propose",
            durable = true,
            in_tx = true,
            |op, admin, audit, signed| {
                let Op::Propose(p) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.submit(&admin, &signed, p.operation, p.ttl_secs, &mut audit).await
            }
        )
    }

    async fn approve(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Proposal>, Status> {
        admin_call!(
            self,
            request,
            "approve",
            durable = true,
            in_tx = true,
            |op, admin, audit, signed| {
                let Op::Approve(a) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.approve(&admin, &signed, a, &mut audit).await
            }
        )
    }

    async fn reject(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Proposal>, Status> {
        admin_call!(
            self,
            request,
            "reject",
            durable = true,
            in_tx = true,
            |op, admin, audit, signed| {
                let Op::Reject(r) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.reject(&admin, &signed, r, &mut audit).await
            }
        )
    }

    async fn describe_proposal(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Proposal>, Status> {
        admin_call!(
            self,
            request,
            "describe_proposal",
            durable = false,
            in_tx = false,
            |op, admin, audit| {
                let Op::DescribeProposal(d) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.describe_proposal(&d.proposal_id, &mut audit).await
            }
        )
    }

    async fn list_proposals(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ListProposalsResponse>, Status> {
        admin_call!(
            self,
            request,
            "list_proposals",
            durable = false,
            in_tx = false,
            |op, admin, audit| {
                let Op::ListProposals(l) = op else {
                    unreachable!("authenticate checked the operation")
                };
                self.list_proposals(l).await
            }
        )
    }

    async fn get_audit_checkpoint_keys(
        &self,
        _request: Request<pb::GetAuditCheckpointKeysRequest>,
    ) -> Result<Response<pb::AuditCheckpointKeys>, Status> {
        let keys = crate::checkpoint::published_keys(&self.store, &self.seal)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::AuditCheckpointKeys { keys }))
    }
}

pub(crate) fn admin_to_wire(r: &AdminRow) -> pb::Admin {
    pb::Admin {
        id: r.id.clone(),
        country: r.country.clone(),
        signing_public_key: r.signing_public_key.clone(),
        custodian: r.custodian,
        created_unix_ms: r.created_unix_ms,
        encryption_public_key: r.encryption_public_key.clone(),
        removed_unix_ms: r.removed_unix_ms.unwrap_or(0),
    }
}

/// The seal status of this replica, with the quorum, deployment and generation from the
/// database (`GetSealStatus`, and signed in `GetNodeIdentity`).
pub(crate) async fn seal_status(store: &Store, seal: &Seal) -> Result<pb::SealStatus, ApiError> {
    let status = seal.status();
    let from = status.generation;
    let sealed = status.sealed;
    let mut wire = wire_status(status);
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
    if let Some(cfg) = cfg {
        wire.approval_quorum = cfg.approval_quorum;
        wire.deployment_id = cfg.deployment_id;
    }
    wire.state_version = u64::try_from(store.integrity().head().version).unwrap_or(0);
    if let Some(alarm) = store.integrity().alarm() {
        wire.integrity_alarm = format!("{}: {alarm}", alarm.kind.reason());
    } else if let Some(refused) = seal.open_refused() {
        wire.integrity_alarm = refused;
    }
    if let Some(r) = wire.rotation.as_mut() {
        r.remaining = store.remaining_under(from).await?;
    }
    Ok(wire)
}
