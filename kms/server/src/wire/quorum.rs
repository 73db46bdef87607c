//! Quorum operations: the canonical protobuf bytes a proposal stores, to [`QuorumOp`] and back,
//! and the stored requests its approvals are read from again when it executes. A proposal is
//! signed over these bytes, so they are kept as they came and decoded each time they are used.

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::quorum_operation::Operation as QOp;
use kms_proto::Reason;
use prost::Message;

use crate::error::ApiError;
use crate::request::{Approves, EnrollIdentity, Enrollment, QuorumOp, RootRotation, StoredRequest};
use crate::wire::admin::{new_admin_from_wire, seal_kind_from_wire};
use crate::wire::attestation::snp_from_wire;

/// The canonical bytes of a quorum operation (what a direct RPC call proposes).
pub(crate) fn canonical(op: QOp) -> Vec<u8> {
    pb::QuorumOperation { operation: Some(op) }.encode_to_vec()
}

/// Decodes proposal bytes, refusing any encoding but the canonical one (so an operation has one
/// digest) and an empty operation.
pub(crate) fn decode(bytes: &[u8]) -> Result<QuorumOp, ApiError> {
    let op = pb::QuorumOperation::decode(bytes).map_err(|_| {
        ApiError::new(
            Reason::MalformedOperation,
            "operation is not a serialized QuorumOperation",
        )
    })?;
    if op.encode_to_vec() != bytes {
        return Err(ApiError::new(
            Reason::NonCanonicalOperation,
            "operation is not in canonical encoding (unknown fields, or fields out of order): re-encode it",
        ));
    }
    from_wire(
        op.operation
            .ok_or_else(|| ApiError::new(Reason::MissingOperation, "the QuorumOperation names no operation"))?,
    )
}

fn from_wire(op: QOp) -> Result<QuorumOp, ApiError> {
    Ok(match op {
        QOp::AddAdmin(a) => QuorumOp::AddAdmin(new_admin_from_wire(&a.admin.unwrap_or_default())?),
        QOp::RemoveAdmin(r) => QuorumOp::RemoveAdmin {
            admin_id: r.admin_id,
            reason: r.reason,
        },
        QOp::SetQuorum(q) => QuorumOp::SetQuorum {
            approval_quorum: q.approval_quorum,
        },
        QOp::EnrollHardware(e) => QuorumOp::EnrollHardware(Enrollment {
            country: e.country,
            site: e.site,
            operator: e.operator,
            description: e.description,
            identity: match e.identity {
                None => None,
                Some(pb::enroll_hardware_op::Identity::Snp(s)) => Some(EnrollIdentity::Snp {
                    evidence: snp_from_wire(s.evidence.unwrap_or_default())?,
                    accept_vlek: s.accept_vlek,
                }),
                Some(pb::enroll_hardware_op::Identity::Tpm(t)) => Some(EnrollIdentity::Tpm {
                    enrollment_id: t.enrollment_id,
                    activated_secret: t.activated_secret,
                    expected_ek_digest: t.expected_ek_digest,
                    expected_ak_name: t.expected_ak_name,
                }),
            },
        }),
        QOp::SetReleasePolicy(p) => QuorumOp::SetReleasePolicy {
            key: p.key,
            release_policy: p.release_policy,
        },
        QOp::ScheduleKeyDeletion(s) => QuorumOp::ScheduleKeyDeletion {
            key: s.key,
            pending_window_days: s.pending_window_days,
        },
        QOp::RotateRoot(r) => QuorumOp::RotateRoot(RootRotation {
            seal: seal_kind_from_wire(r.seal),
            threshold: r.threshold,
            custodians: r.custodians,
        }),
    })
}

/// What a stored approval's signed request approves (its signature is checked by the caller).
pub(crate) fn stored_request(payload: &[u8]) -> Result<StoredRequest, String> {
    let req = pb::AdminRequest::decode(payload).map_err(|_| "its stored request is not an AdminRequest".to_owned())?;
    let approves = match req.operation {
        Some(Op::Approve(a)) => Approves::Proposal {
            id: a.proposal_id,
            operation_sha256: a.operation_sha256,
        },
        Some(Op::Propose(p)) => Approves::Operation(p.operation),
        // With M = 1 a quorum operation's own RPC is its proposal.
        Some(Op::AddAdmin(a)) => Approves::Operation(canonical(QOp::AddAdmin(a))),
        Some(Op::SetReleasePolicy(p)) => Approves::Operation(canonical(QOp::SetReleasePolicy(p))),
        Some(Op::ScheduleKeyDeletion(s)) => Approves::Operation(canonical(QOp::ScheduleKeyDeletion(s))),
        Some(Op::EnrollHardware(e)) => Approves::Operation(canonical(QOp::EnrollHardware(e))),
        _ => Approves::Nothing,
    };
    Ok(StoredRequest {
        admin_id: req.admin_id,
        deployment_id: req.deployment_id,
        approves,
    })
}

/// The TPM enrolment attempt a stored `enroll_hardware` proposal waits on, if any (the bytes
/// were checked as a canonical `QuorumOperation` when proposed).
pub(crate) fn awaited_tpm_enrollment(payload: &[u8]) -> Option<String> {
    match pb::QuorumOperation::decode(payload) {
        Ok(pb::QuorumOperation {
            operation: Some(QOp::EnrollHardware(op)),
        }) => match op.identity {
            Some(pb::enroll_hardware_op::Identity::Tpm(t)) => Some(t.enrollment_id),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_the_canonical_encoding_decodes() {
        let bytes = canonical(QOp::SetQuorum(pb::SetQuorumOp { approval_quorum: 2 }));
        assert!(matches!(
            decode(&bytes).unwrap(),
            QuorumOp::SetQuorum { approval_quorum: 2 }
        ));
        // An unknown field (number 15, varint 1) appended: same operation, another digest.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0x78, 0x01]);
        assert_eq!(decode(&longer).unwrap_err().reason, Reason::NonCanonicalOperation);
        assert_eq!(decode(&[0xff]).unwrap_err().reason, Reason::MalformedOperation);
        assert_eq!(decode(&[]).unwrap_err().reason, Reason::MissingOperation);
    }

    #[test]
    fn a_direct_call_approves_its_own_canonical_bytes() {
        let op = pb::ScheduleKeyDeletionOp {
            key: "k".into(),
            pending_window_days: 7,
        };
        let req = pb::AdminRequest {
            admin_id: "alice".into(),
            deployment_id: "dep".into(),
            operation: Some(Op::ScheduleKeyDeletion(op.clone())),
            ..Default::default()
        };
        let stored = stored_request(&req.encode_to_vec()).unwrap();
        assert_eq!(stored.admin_id, "alice");
        match stored.approves {
            Approves::Operation(b) => assert_eq!(b, canonical(QOp::ScheduleKeyDeletion(op))),
            other => panic!("{other:?}"),
        }
        let list = pb::AdminRequest {
            operation: Some(Op::ListKeys(pb::ListKeysOp::default())),
            ..Default::default()
        };
        assert!(matches!(
            stored_request(&list.encode_to_vec()).unwrap().approves,
            Approves::Nothing
        ));
    }
}
