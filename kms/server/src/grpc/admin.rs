//! AdminService over gRPC: authenticate the signed request, decode it, run the operation, encode
//! the answer; one audit record per call.

use crate::audit::Audit;
use crate::error::ApiError;
use crate::grpc::finish;
use crate::ops::admin::*;
use crate::seal::SealKind;
use crate::wire::admin::*;
use kms_core::blob::Kek;
use kms_core::ids::{KeyId, KeyVersion};
use kms_core::key::Transition;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::quorum_operation::Operation as QOp;
use kms_proto::Reason;
use tonic::{Request, Response, Status};

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
                let row = self.create_key(new_key_from_wire(c)?, &mut audit).await?;
                Ok(key_metadata(&row))
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
                Ok(key_metadata(&key))
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
                let size = crate::wire::page_size(l.page_size)?;
                if !l.page_token.is_empty() {
                    KeyId::parse(&l.page_token).map_err(|_| {
                        ApiError::new(Reason::BadPageToken, "page_token is not one this server returned")
                    })?;
                }
                let rows = self.store.list_keys(&l.page_token, size + 1).await?;
                let more = rows.len() > size as usize;
                let keys: Vec<pb::KeyMetadata> = rows.iter().take(size as usize).map(key_metadata).collect();
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
                    .map_err(ApiError::from)?;
                match rotated {
                    Some(row) => Ok(key_metadata(&self.keys.remember(row))),
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
        let keys = crate::workers::checkpoint::published_keys(&self.store, &self.seal)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::AuditCheckpointKeys {
            keys: keys
                .iter()
                .map(|k| checkpoint_key_to_wire(&k.key, k.created_unix_ms, k.retired_unix_ms))
                .collect(),
        }))
    }
}
