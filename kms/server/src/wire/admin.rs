//! Admin-plane messages: protobuf to domain and back.

use std::collections::{BTreeMap, BTreeSet};

use kms_core::ids::KeyName;
use kms_core::key::KeyState;
use kms_core::policy::{AccessPolicy, Grant, Operation, ReleasePolicy};
use kms_proto::v1 as pb;
use kms_proto::Reason;

use kms_core::admin::AdminPublicKey;
use kms_core::ids::AdminId;
use kms_core::jurisdiction::Country;
use kms_core::share_wrap;
use kms_proto::v1::admin_request::Operation as Op;

use crate::error::ApiError;
use crate::request::{Init, NewAdmin, Outcome, Page, ProposalView, RequestHeader};
use crate::seal::{SealKind, StatusReport};
use crate::storage::{AdminRow, KeyRow, ProposalStatus};

pub(crate) fn op_to_wire(o: Operation) -> pb::Operation {
    match o {
        Operation::GenerateDataKey => pb::Operation::GenerateDataKey,
        Operation::GenerateDataKeyWithoutPlaintext => pb::Operation::GenerateDataKeyWithoutPlaintext,
        Operation::Encrypt => pb::Operation::Encrypt,
        Operation::Decrypt => pb::Operation::Decrypt,
        Operation::ReEncrypt => pb::Operation::ReEncrypt,
    }
}

pub(crate) fn grant_from_wire(g: &pb::Grant) -> Result<Grant, ApiError> {
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

/// A seal kind from the wire (`None`: unspecified, or not one this server knows).
pub(crate) fn seal_kind_from_wire(kind: i32) -> Option<SealKind> {
    match pb::SealKind::try_from(kind) {
        Ok(pb::SealKind::Shamir) => Some(SealKind::Shamir),
        Ok(pb::SealKind::Dev) => Some(SealKind::Dev),
        Ok(pb::SealKind::Pkcs11) => Some(SealKind::Pkcs11),
        _ => None,
    }
}

fn seal_kind_to_wire(kind: SealKind) -> pb::SealKind {
    match kind {
        SealKind::Shamir => pb::SealKind::Shamir,
        SealKind::Dev => pb::SealKind::Dev,
        SealKind::Pkcs11 => pb::SealKind::Pkcs11,
    }
}

/// A replica's seal status (GetSealStatus, Init, Unseal, Seal, quorum results; signed in
/// GetNodeIdentity).
pub(crate) fn status_to_wire(r: StatusReport) -> pb::SealStatus {
    let s = r.status;
    pb::SealStatus {
        initialized: s.initialized,
        sealed: s.sealed,
        seal: s.kind.map_or(pb::SealKind::Unspecified, seal_kind_to_wire) as i32,
        threshold: s.threshold,
        progress: s.progress,
        unseal_public_key: s.unseal_public_key,
        key_check_value: s.key_check_value,
        root_generation: s.generation,
        approval_quorum: r.approval_quorum,
        deployment_id: r.deployment_id,
        state_version: r.state_version,
        integrity_alarm: r.integrity_alarm,
        rotation: s.rotating_to.map(|(to, kind)| pb::RootRotation {
            to_generation: to,
            seal: seal_kind_to_wire(kind) as i32,
            remaining: r.rotation_remaining,
        }),
    }
}

/// The method name of a signed operation (what the RPC called must be).
pub(crate) fn op_name(op: &Op) -> &'static str {
    kms_proto::admin::method(op).0
}

/// Opens a signed request's payload: the header authentication checks, and the operation.
pub(crate) fn open_request(payload: &[u8]) -> Result<(RequestHeader, Option<Op>), ApiError> {
    let req = <pb::AdminRequest as prost::Message>::decode(payload)
        .map_err(|_| ApiError::new(Reason::MalformedRequest, "the signed payload is not an AdminRequest"))?;
    let init_signers = match &req.operation {
        Some(Op::Init(init)) => init
            .admins
            .iter()
            .map(|a| (a.id.clone(), a.signing_public_key.clone()))
            .collect(),
        _ => Vec::new(),
    };
    Ok((
        RequestHeader {
            admin_id: req.admin_id,
            deployment_id: req.deployment_id,
            timestamp_unix_ms: req.timestamp_unix_ms,
            nonce: req.nonce,
            method: req.operation.as_ref().map(op_name),
            init_signers,
        },
        req.operation,
    ))
}

/// A new admin, every field parsed (the allowed jurisdictions are the operation's check).
pub(crate) fn new_admin_from_wire(a: &pb::NewAdmin) -> Result<NewAdmin, ApiError> {
    let id = AdminId::parse(&a.id)?;
    let country = Country::parse(&a.country)?;
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

/// An Init operation, decoded.
pub(crate) fn init_from_wire(init: &pb::InitOp) -> Result<Init, ApiError> {
    Ok(Init {
        seal: seal_kind_from_wire(init.seal),
        threshold: init.threshold,
        approval_quorum: init.approval_quorum,
        admins: init.admins.iter().map(new_admin_from_wire).collect::<Result<_, _>>()?,
    })
}

/// An executed quorum operation's result.
pub(crate) fn outcome_to_wire(o: Outcome) -> pb::proposal::Result {
    match o {
        Outcome::Admin(a) => pb::proposal::Result::Admin(admin_to_wire(&a)),
        Outcome::SealStatus(s) => pb::proposal::Result::SealStatus(status_to_wire(s)),
        Outcome::Hardware(h) => pb::proposal::Result::Hardware(crate::wire::hardware::hardware_to_wire(&h)),
        Outcome::Key(k) => pb::proposal::Result::Key(key_metadata(&k)),
    }
}

pub(crate) fn admin_to_wire(r: &AdminRow) -> pb::Admin {
    pb::Admin {
        id: r.id.to_string(),
        country: r.country.to_string(),
        signing_public_key: r.signing_public_key.clone(),
        custodian: r.custodian,
        created_unix_ms: r.created_unix_ms,
        encryption_public_key: r.encryption_public_key.clone(),
        removed_unix_ms: r.removed_unix_ms.unwrap_or(0),
    }
}

/// A published checkpoint key (GetAuditCheckpointKeys).
pub(crate) fn checkpoint_key_to_wire(
    key: &kms_core::audit::CheckpointKey,
    created_unix_ms: i64,
    retired_unix_ms: Option<i64>,
) -> pb::AuditCheckpointKey {
    pb::AuditCheckpointKey {
        kid: key.kid().to_owned(),
        algorithm: key.algorithm().as_str().to_owned(),
        public_key: key.public_key().to_vec(),
        created_unix_ms,
        retired_unix_ms: retired_unix_ms.unwrap_or(0),
    }
}

pub(crate) fn key_metadata(k: &KeyRow) -> pb::KeyMetadata {
    pb::KeyMetadata {
        id: k.id.to_string(),
        name: k.name.as_str().to_owned(),
        description: k.description.clone(),
        tags: k.tags.clone(),
        state: match k.state {
            KeyState::Enabled => pb::KeyState::Enabled,
            KeyState::Disabled => pb::KeyState::Disabled,
            KeyState::PendingDeletion => pb::KeyState::PendingDeletion,
            KeyState::Destroyed => pb::KeyState::Destroyed,
        } as i32,
        latest_version: k.latest_version.get(),
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
        release_policy: k.release_policy.to_json(),
        release_policy_version: k.release_policy_version,
    }
}

/// A CreateKey operation, decoded and checked.
pub(crate) fn new_key_from_wire(op: pb::CreateKeyOp) -> Result<crate::keys::NewKey, ApiError> {
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
    Ok(crate::keys::NewKey {
        name,
        description: op.description,
        tags: op.tags,
        grants,
        policy,
    })
}

pub(crate) fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
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

/// A proposal as answered, with its votes and, when this call executed it, its result.
pub(crate) fn proposal_to_wire(view: ProposalView) -> pb::Proposal {
    let ProposalView {
        row: r,
        approvals_required,
        votes,
        result,
    } = view;
    let approvals = votes
        .approvals
        .into_iter()
        .map(|a| pb::Approval {
            admin_id: a.admin_id.to_string(),
            approved_unix_ms: a.approved_unix_ms,
        })
        .collect();
    let status = match r.status_at(kms_core::now_unix_ms()) {
        ProposalStatus::Pending => pb::ProposalStatus::Pending,
        ProposalStatus::Executed => pb::ProposalStatus::Executed,
        ProposalStatus::Rejected => pb::ProposalStatus::Rejected,
        ProposalStatus::Expired => pb::ProposalStatus::Expired,
        ProposalStatus::Failed => pb::ProposalStatus::Failed,
    };
    pb::Proposal {
        id: r.id,
        operation: r.operation,
        summary: r.summary,
        operation_bytes: r.payload,
        operation_sha256: r.digest,
        proposed_by: r.proposed_by.to_string(),
        created_unix_ms: r.created_unix_ms,
        expires_unix_ms: r.expires_unix_ms,
        status: status as i32,
        approvals,
        approvals_required,
        outcome: r.outcome,
        rejections: votes
            .rejections
            .into_iter()
            .map(|r| pb::Rejection {
                admin_id: r.admin_id.to_string(),
                reason: r.reason,
                rejected_unix_ms: r.rejected_unix_ms,
            })
            .collect(),
        result: result.map(outcome_to_wire),
    }
}

/// A page of proposals.
pub(crate) fn proposals_to_wire(page: Page<ProposalView>) -> pb::ListProposalsResponse {
    pb::ListProposalsResponse {
        proposals: page.items.into_iter().map(proposal_to_wire).collect(),
        next_page_token: page.next_page_token,
    }
}
