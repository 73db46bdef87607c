//! Admin-plane messages: protobuf to domain and back.

use std::collections::{BTreeMap, BTreeSet};

use kms_core::ids::KeyName;
use kms_core::key::KeyState;
use kms_core::policy::{AccessPolicy, Grant, Operation, ReleasePolicy};
use kms_proto::v1 as pb;
use kms_proto::Reason;

use crate::error::ApiError;
use crate::seal::SealKind;
use crate::storage::{AdminRow, KeyRow, ProposalRow, ProposalStatus, Votes};

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

pub(crate) fn wire_status(s: crate::seal::Status) -> pb::SealStatus {
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

/// The TPM enrolment attempt a stored `enroll_hardware` proposal waits on, if any (the bytes
/// were checked as a canonical `QuorumOperation` when proposed).
pub(crate) fn awaited_tpm_enrollment(payload: &[u8]) -> Option<String> {
    match <pb::QuorumOperation as prost::Message>::decode(payload) {
        Ok(pb::QuorumOperation {
            operation: Some(pb::quorum_operation::Operation::EnrollHardware(op)),
        }) => match op.identity {
            Some(pb::enroll_hardware_op::Identity::Tpm(t)) => Some(t.enrollment_id),
            _ => None,
        },
        _ => None,
    }
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

/// A proposal as sent, with its votes.
pub(crate) fn proposal_to_wire(r: &ProposalRow, quorum: u32, votes: Votes) -> pb::Proposal {
    let approvals = votes
        .approvals
        .into_iter()
        .map(|a| pb::Approval {
            admin_id: a.admin_id,
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
        id: r.id.clone(),
        operation: r.operation.clone(),
        summary: r.summary.clone(),
        operation_bytes: r.payload.clone(),
        operation_sha256: r.digest.clone(),
        proposed_by: r.proposed_by.clone(),
        created_unix_ms: r.created_unix_ms,
        expires_unix_ms: r.expires_unix_ms,
        status: status as i32,
        approvals,
        approvals_required: quorum,
        outcome: r.outcome.clone(),
        rejections: votes
            .rejections
            .into_iter()
            .map(|r| pb::Rejection {
                admin_id: r.admin_id,
                reason: r.reason,
                rejected_unix_ms: r.rejected_unix_ms,
            })
            .collect(),
        result: None,
    }
}
