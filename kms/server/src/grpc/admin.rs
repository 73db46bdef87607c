//! AdminService over gRPC: authenticate the signed request, decode it, run the operation, encode
//! the answer; one audit record per call.

use crate::audit::Audit;
use crate::error::ApiError;
use crate::grpc::finish;
use crate::ops::admin::*;
use crate::request::{Outcome, Signed};
use crate::wire::admin::*;
use crate::wire::hardware::{hardware_page_to_wire, hardware_to_wire};
use crate::wire::quorum::canonical;
use kms_core::key::Transition;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::quorum_operation::Operation as QOp;
use kms_proto::Reason;
use tonic::{Request, Response, Status};

/// What an admin operation answers: one variant per answer message. Lives for one call, on its
/// way to being encoded, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Answer {
    InitResponse(pb::InitResponse),
    EncryptedShare(pb::EncryptedShare),
    SealStatus(pb::SealStatus),
    Admin(pb::Admin),
    ListAdminsResponse(pb::ListAdminsResponse),
    KeyMetadata(pb::KeyMetadata),
    ListKeysResponse(pb::ListKeysResponse),
    Hardware(pb::Hardware),
    ListHardwareResponse(pb::ListHardwareResponse),
    Proposal(pb::Proposal),
    ListProposalsResponse(pb::ListProposalsResponse),
}

/// The answer message of one admin method.
trait FromAnswer: Sized {
    fn from_answer(answer: Answer) -> Option<Self>;
}

macro_rules! from_answer {
    ($($t:ident),*) => {
        $(impl FromAnswer for pb::$t {
            fn from_answer(answer: Answer) -> Option<Self> {
                match answer {
                    Answer::$t(a) => Some(a),
                    _ => None,
                }
            }
        })*
    };
}
from_answer!(
    InitResponse,
    EncryptedShare,
    SealStatus,
    Admin,
    ListAdminsResponse,
    KeyMetadata,
    ListKeysResponse,
    Hardware,
    ListHardwareResponse,
    Proposal,
    ListProposalsResponse
);

/// How a successful admin call's audit record is written.
#[derive(Clone, Copy, Debug)]
enum Commit {
    /// The operation wrote it in the transaction of its change.
    InTransaction,
    /// Made durable before the answer (seal changes, share releases).
    Durable,
    /// Queued (reads that release nothing).
    Queued,
}

/// Pins the answer type of an operation's body.
async fn answer<T>(body: impl std::future::Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
    body.await
}

impl AdminPlane {
    /// Every signed admin method: authenticate the request (which checks that its operation is
    /// the method's), run the operation, write the audit record as the operation requires, and
    /// answer with the method's message.
    async fn call<T: FromAnswer + prost::Message>(
        &self,
        request: Request<pb::SignedRequest>,
        method: &'static str,
    ) -> Result<Response<T>, Status> {
        self.callers.limit(&request)?;
        let peer = request.remote_addr();
        let request = request.into_inner();
        let signed = Signed {
            payload: &request.payload,
            signature: &request.signature,
        };
        let mut audit = Audit::new("unauthenticated", audit_op(method));
        let authenticated = async {
            let (header, op) = open_request(signed.payload)?;
            let admin = self.authenticate(signed, &header, method, &mut audit).await?;
            Ok((admin, op))
        }
        .await;
        let (admin, op) = match authenticated {
            Ok(a) => a,
            Err(e) => {
                // Audited as unauthenticated, one row each: within the peer's limit.
                self.callers.unauthenticated(peer)?;
                return finish::<T>(&self.audit, audit, Err(e), false).await;
            }
        };
        let result = async {
            let op = op.ok_or_else(|| ApiError::new(Reason::MissingOperation, "the request names no operation"))?;
            let (commit, answer) = self.run(op, &admin, signed, &mut audit).await?;
            let answer = T::from_answer(answer).ok_or_else(|| {
                ApiError::new(
                    Reason::Internal,
                    format!("{method}: the operation answered another message"),
                )
            })?;
            Ok((commit, answer))
        }
        .await;
        let answered = match result {
            Ok((Commit::InTransaction, answer)) => Ok(Response::new(answer)),
            Ok((commit, answer)) => finish(&self.audit, audit, Ok(answer), matches!(commit, Commit::Durable)).await,
            Err(e) => finish::<T>(&self.audit, audit, Err(e), false).await,
        };
        // Refusals are not signed: a proxy can always refuse in kmsd's name, but not claim that
        // kmsd did something.
        answered.map(|r| {
            crate::grpc::signed(&self.node, r, |answer| {
                kms_node::message::admin_answer(method, &request.payload, answer)
            })
        })
    }

    /// The one dispatch of signed admin operations.
    async fn run(
        &self,
        op: Op,
        admin: &kms_core::ids::AdminId,
        signed: Signed<'_>,
        audit: &mut Audit,
    ) -> Result<(Commit, Answer), ApiError> {
        Ok(match op {
            Op::Init(init) => {
                let answer = answer::<pb::InitResponse>(async {
                    let status = self.init(init_from_wire(&init)?, audit).await?;
                    Ok(pb::InitResponse {
                        status: Some(status_to_wire(status)),
                    })
                })
                .await?;
                (Commit::InTransaction, Answer::InitResponse(answer))
            }
            Op::GetEncryptedShare(_) => {
                let answer = answer::<pb::EncryptedShare>(async {
                    let (envelope, generation) = self.encrypted_share(admin, audit).await?;
                    Ok(pb::EncryptedShare { envelope, generation })
                })
                .await?;
                (Commit::Durable, Answer::EncryptedShare(answer))
            }
            Op::Unseal(u) => {
                let answer = answer::<pb::SealStatus>(async {
                    let progress = self.submit_share(admin, &u.envelope, audit).await?;
                    let mut status = self.status().await?;
                    status.status.progress = progress;
                    Ok(status_to_wire(status))
                })
                .await?;
                (Commit::Durable, Answer::SealStatus(answer))
            }
            Op::Seal(_) => {
                let answer = answer::<pb::SealStatus>(async {
                    self.seal.seal()?;
                    self.keys.clear_keks();
                    self.attestation.clear();
                    self.status().await.map(status_to_wire)
                })
                .await?;
                (Commit::Durable, Answer::SealStatus(answer))
            }
            Op::AddAdmin(add) => {
                let answer = answer::<pb::Admin>(async {
                    match self
                        .direct(admin, signed, "add_admin", canonical(QOp::AddAdmin(add)), audit)
                        .await?
                    {
                        Outcome::Admin(a) => Ok(admin_to_wire(&a)),
                        _ => Err(ApiError::new(Reason::QuorumResult, "unexpected result")),
                    }
                })
                .await?;
                (Commit::InTransaction, Answer::Admin(answer))
            }
            Op::ListAdmins(l) => {
                let answer = answer::<pb::ListAdminsResponse>(async {
                    Ok(pb::ListAdminsResponse {
                        admins: self
                            .store
                            .admins(l.include_removed)
                            .await?
                            .iter()
                            .map(admin_to_wire)
                            .collect(),
                    })
                })
                .await?;
                (Commit::Queued, Answer::ListAdminsResponse(answer))
            }
            Op::CreateKey(c) => {
                let answer = answer::<pb::KeyMetadata>(async {
                    let row = self.create_key(new_key_from_wire(c)?, audit).await?;
                    Ok(key_metadata(&row))
                })
                .await?;
                (Commit::InTransaction, Answer::KeyMetadata(answer))
            }
            Op::DescribeKey(d) => {
                let answer = answer::<pb::KeyMetadata>(async {
                    self.seal.require_initialized()?;
                    let key = self.keys.resolve(&d.key).await?;
                    audit.key(&key.id);
                    Ok(key_metadata(&key))
                })
                .await?;
                (Commit::Queued, Answer::KeyMetadata(answer))
            }
            Op::ListKeys(l) => {
                let answer = answer::<pb::ListKeysResponse>(async {
                    self.seal.require_initialized()?;
                    let size = crate::wire::page_size(l.page_size)?;
                    let after = crate::wire::page_after(&l.page_token)?;
                    let page = self.store.list_keys(&after, size).await?;
                    Ok(pb::ListKeysResponse {
                        keys: page.rows.iter().map(key_metadata).collect(),
                        next_page_token: crate::wire::page_token(page.next),
                    })
                })
                .await?;
                (Commit::Queued, Answer::ListKeysResponse(answer))
            }
            Op::RotateKey(r) => {
                let answer = answer::<pb::KeyMetadata>(async {
                    let row = self.rotate_key(&r.key, audit).await?;
                    Ok(key_metadata(&row))
                })
                .await?;
                (Commit::InTransaction, Answer::KeyMetadata(answer))
            }
            Op::EnableKey(e) => {
                let answer = answer::<pb::KeyMetadata>(async {
                    self.change_state(&e.key, Transition::Enable, None, None, audit)
                        .await
                        .map(|k| key_metadata(&k))
                })
                .await?;
                (Commit::InTransaction, Answer::KeyMetadata(answer))
            }
            Op::DisableKey(d) => {
                let answer = answer::<pb::KeyMetadata>(async {
                    self.change_state(&d.key, Transition::Disable, None, None, audit)
                        .await
                        .map(|k| key_metadata(&k))
                })
                .await?;
                (Commit::InTransaction, Answer::KeyMetadata(answer))
            }
            Op::ScheduleKeyDeletion(s) => {
                let answer = answer::<pb::KeyMetadata>(async {
                    let bytes = canonical(QOp::ScheduleKeyDeletion(s));
                    match self
                        .direct(admin, signed, "schedule_key_deletion", bytes, audit)
                        .await?
                    {
                        Outcome::Key(k) => Ok(key_metadata(&k)),
                        _ => Err(ApiError::new(Reason::QuorumResult, "unexpected result")),
                    }
                })
                .await?;
                (Commit::InTransaction, Answer::KeyMetadata(answer))
            }
            Op::CancelKeyDeletion(c) => {
                let answer = answer::<pb::KeyMetadata>(async {
                    self.change_state(&c.key, Transition::CancelDeletion, None, None, audit)
                        .await
                        .map(|k| key_metadata(&k))
                })
                .await?;
                (Commit::InTransaction, Answer::KeyMetadata(answer))
            }
            Op::SetReleasePolicy(p) => {
                let answer = answer::<pb::KeyMetadata>(async {
                    let bytes = canonical(QOp::SetReleasePolicy(p));
                    match self.direct(admin, signed, "set_release_policy", bytes, audit).await? {
                        Outcome::Key(k) => Ok(key_metadata(&k)),
                        _ => Err(ApiError::new(Reason::QuorumResult, "unexpected result")),
                    }
                })
                .await?;
                (Commit::InTransaction, Answer::KeyMetadata(answer))
            }
            Op::EnrollHardware(e) => {
                let answer = answer::<pb::Hardware>(async {
                    let bytes = canonical(QOp::EnrollHardware(e));
                    match self.direct(admin, signed, "enroll_hardware", bytes, audit).await? {
                        Outcome::Hardware(h) => Ok(hardware_to_wire(&h)),
                        _ => Err(ApiError::new(Reason::QuorumResult, "unexpected result")),
                    }
                })
                .await?;
                (Commit::InTransaction, Answer::Hardware(answer))
            }
            Op::DescribeHardware(d) => {
                let answer = answer::<pb::Hardware>(async {
                    self.describe_hardware(&d.hardware_id, audit)
                        .await
                        .map(|h| hardware_to_wire(&h))
                })
                .await?;
                (Commit::Queued, Answer::Hardware(answer))
            }
            Op::ListHardware(l) => {
                let answer = answer::<pb::ListHardwareResponse>(async {
                    self.list_hardware(l.page_size, &l.page_token)
                        .await
                        .map(hardware_page_to_wire)
                })
                .await?;
                (Commit::Queued, Answer::ListHardwareResponse(answer))
            }
            Op::RevokeHardware(r) => {
                let answer = answer::<pb::Hardware>(async {
                    self.revoke_hardware(admin, &r.hardware_id, &r.reason, audit)
                        .await
                        .map(|h| hardware_to_wire(&h))
                })
                .await?;
                (Commit::InTransaction, Answer::Hardware(answer))
            }
            Op::Propose(p) => {
                let answer = answer::<pb::Proposal>(async {
                    self.submit(admin, signed, p.operation, p.ttl_secs, audit)
                        .await
                        .map(proposal_to_wire)
                })
                .await?;
                (Commit::InTransaction, Answer::Proposal(answer))
            }
            Op::Approve(a) => {
                let answer = answer::<pb::Proposal>(async {
                    self.approve(admin, signed, &a.proposal_id, &a.operation_sha256, audit)
                        .await
                        .map(proposal_to_wire)
                })
                .await?;
                (Commit::InTransaction, Answer::Proposal(answer))
            }
            Op::Reject(r) => {
                let answer = answer::<pb::Proposal>(async {
                    self.reject(admin, signed, &r.proposal_id, r.reason, audit)
                        .await
                        .map(proposal_to_wire)
                })
                .await?;
                (Commit::InTransaction, Answer::Proposal(answer))
            }
            Op::DescribeProposal(d) => {
                let answer = answer::<pb::Proposal>(async {
                    self.describe_proposal(&d.proposal_id, audit)
                        .await
                        .map(proposal_to_wire)
                })
                .await?;
                (Commit::Queued, Answer::Proposal(answer))
            }
            Op::ListProposals(l) => {
                let answer = answer::<pb::ListProposalsResponse>(async {
                    self.list_proposals(l.include_closed, l.page_size, &l.page_token)
                        .await
                        .map(proposals_to_wire)
                })
                .await?;
                (Commit::Queued, Answer::ListProposalsResponse(answer))
            }
        })
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminPlane {
    async fn get_seal_status(
        &self,
        request: Request<pb::GetSealStatusRequest>,
    ) -> Result<Response<pb::SealStatus>, Status> {
        self.callers.limit(&request)?;
        self.status()
            .await
            .map(|s| Response::new(status_to_wire(s)))
            .map_err(|e| e.to_status())
    }

    async fn init(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::InitResponse>, Status> {
        self.call(request, "init").await
    }

    async fn get_encrypted_share(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::EncryptedShare>, Status> {
        self.call(request, "get_encrypted_share").await
    }

    async fn unseal(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::SealStatus>, Status> {
        self.call(request, "unseal").await
    }

    async fn seal(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::SealStatus>, Status> {
        self.call(request, "seal").await
    }

    async fn add_admin(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Admin>, Status> {
        self.call(request, "add_admin").await
    }

    async fn list_admins(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ListAdminsResponse>, Status> {
        self.call(request, "list_admins").await
    }

    async fn create_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.call(request, "create_key").await
    }

    async fn describe_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.call(request, "describe_key").await
    }

    async fn list_keys(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.call(request, "list_keys").await
    }

    async fn rotate_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.call(request, "rotate_key").await
    }

    async fn enable_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.call(request, "enable_key").await
    }

    async fn disable_key(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::KeyMetadata>, Status> {
        self.call(request, "disable_key").await
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        self.call(request, "schedule_key_deletion").await
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        self.call(request, "cancel_key_deletion").await
    }

    async fn set_release_policy(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        self.call(request, "set_release_policy").await
    }

    async fn enroll_hardware(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Hardware>, Status> {
        self.call(request, "enroll_hardware").await
    }

    async fn describe_hardware(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Hardware>, Status> {
        self.call(request, "describe_hardware").await
    }

    async fn list_hardware(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ListHardwareResponse>, Status> {
        self.call(request, "list_hardware").await
    }

    async fn revoke_hardware(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Hardware>, Status> {
        self.call(request, "revoke_hardware").await
    }

    async fn propose(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Proposal>, Status> {
        self.call(request, "propose").await
    }

    async fn approve(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Proposal>, Status> {
        self.call(request, "approve").await
    }

    async fn reject(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Proposal>, Status> {
        self.call(request, "reject").await
    }

    async fn describe_proposal(&self, request: Request<pb::SignedRequest>) -> Result<Response<pb::Proposal>, Status> {
        self.call(request, "describe_proposal").await
    }

    async fn list_proposals(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ListProposalsResponse>, Status> {
        self.call(request, "list_proposals").await
    }

    async fn get_audit_checkpoint_keys(
        &self,
        request: Request<pb::GetAuditCheckpointKeysRequest>,
    ) -> Result<Response<pb::AuditCheckpointKeys>, Status> {
        self.callers.limit(&request)?;
        let nonce = request.into_inner().nonce;
        crate::grpc::optional_nonce(&nonce)?;
        let keys = crate::workers::checkpoint::published_keys(&self.store, &self.seal)
            .await
            .map_err(|e| e.to_status())?;
        let keys: Vec<pb::AuditCheckpointKey> = keys
            .iter()
            .map(|k| checkpoint_key_to_wire(&k.key, k.created_unix_ms, k.retired_unix_ms))
            .collect();
        Ok(Response::new(pb::AuditCheckpointKeys {
            node_public_key: self.node.public_key().to_vec(),
            node_signature: self
                .node
                .sign_checkpoint_keys(&kms_node::message::checkpoint_keys(&nonce, &keys)),
            keys,
        }))
    }
}
