//! Quorum (M-of-N) operations. A proposal stores the exact bytes of a `QuorumOperation`; the
//! proposer's signed request is the first approval, and each further approval is a signed
//! request carrying the SHA-256 of those bytes, so every approval is an HSM signature over the
//! operation itself. The operation is checked when proposed (a bad one is refused at once) and
//! run, checked again, in the transaction of the approval that reaches M (see
//! `storage::quorum`): exactly once, on any number of replicas.
//!
//! M lives in `seal_config.approval_quorum`; it is set at init and changed only by a quorum.
//! With M = 1 a proposal executes at once, and the operation's own RPC (AddAdmin,
//! EnrollHardware, ...) works as a proposal that executes at once; with M > 1 those RPCs check the
//! operation as a proposal is checked (so it is refused for its own fault first) and then refuse
//! with `quorum_required`.

use kms_core::admin::AdminPublicKey;
use kms_core::ids::AdminId;

use crate::audit::Audit;
use crate::error::ApiError;
use crate::ops::admin::AdminPlane;
use crate::request::{Approves, EnrollIdentity, Outcome, Page, ProposalView, QuorumOp, Signed};
use crate::seal::SealKind;
use crate::storage::{
    AdminRow, ApprovalAdded, ApprovalRow, ProposalRow, ProposalStatus, QuorumClose, RejectionAdded, RejectionRow,
    SealConfigRow,
};
use kms_proto::Reason;

/// How a quorum operation is run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Exec<'a> {
    /// Validate only (when proposed): nothing is written.
    Check,
    /// Run it, closing the proposal (if any) in the same transaction.
    Run(Option<&'a QuorumClose>),
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec()
}

impl AdminPlane {
    /// Runs (or, with [`Exec::Check`], validates) a quorum operation.
    pub(crate) async fn execute(
        &self,
        admin: &AdminId,
        op: QuorumOp,
        audit: &mut Audit,
        exec: Exec<'_>,
    ) -> Result<Option<Outcome>, ApiError> {
        Ok(match op {
            QuorumOp::AddAdmin(a) => self.add_admin_op(a, audit, exec).await?.map(Outcome::Admin),
            QuorumOp::RemoveAdmin { admin_id, reason } => self
                .remove_admin_op(admin, &admin_id, &reason, audit, exec)
                .await?
                .map(Outcome::Admin),
            QuorumOp::SetQuorum { approval_quorum } => self
                .set_quorum_op(approval_quorum, audit, exec)
                .await?
                .map(Outcome::SealStatus),
            QuorumOp::EnrollHardware(e) => self
                .enroll_hardware(admin, e, audit, exec)
                .await?
                .map(|h| Outcome::Hardware(Box::new(h))),
            QuorumOp::SetReleasePolicy { key, release_policy } => self
                .set_release_policy(&key, &release_policy, audit, exec)
                .await?
                .map(Outcome::Key),
            QuorumOp::ScheduleKeyDeletion {
                key,
                pending_window_days,
            } => self
                .schedule_deletion_op(&key, pending_window_days, audit, exec)
                .await?
                .map(Outcome::Key),
            QuorumOp::RotateRoot(r) => self
                .rotate_root_op(admin, r, audit, exec)
                .await?
                .map(Outcome::SealStatus),
        })
    }

    /// A quorum operation called through its own RPC (`name`, in its canonical encoding
    /// `bytes`): with M = 1 it runs at once (recorded as a proposal executed at once); otherwise
    /// it is checked and, if it could run, refused with `quorum_required`: it must be proposed.
    pub(crate) async fn direct(
        &self,
        admin: &AdminId,
        signed: Signed<'_>,
        name: &'static str,
        bytes: Vec<u8>,
        audit: &mut Audit,
    ) -> Result<Outcome, ApiError> {
        self.seal.require_initialized()?;
        let quorum = self.store.approval_quorum().await?;
        if quorum > 1 {
            // Checked as a proposal would be first, so an operation that could never run is
            // refused for what is wrong with it (an admin's country, a bad policy), not sent off
            // to be proposed.
            let op = crate::wire::quorum::decode(&bytes)?;
            let mut scratch = Audit::new(audit.caller.clone(), "admin.propose");
            self.execute(admin, op, &mut scratch, Exec::Check).await?;
            return Err(ApiError::new(
                Reason::QuorumRequired,
                format!(
                    "{name} needs the approval of {quorum} admins: propose it (kmsctl ... --propose, or the Propose RPC) and have the others approve"
                ),
            ));
        }
        let proposal = self.submit(admin, signed, bytes, 0, audit).await?;
        proposal
            .result
            .ok_or_else(|| ApiError::new(Reason::QuorumNoResult, "the operation ran but returned nothing"))
    }

    /// Proposes an operation: checks it, records it with the proposer's approval, and runs it
    /// at once if M = 1.
    pub(crate) async fn submit(
        &self,
        admin: &AdminId,
        signed: Signed<'_>,
        bytes: Vec<u8>,
        ttl_secs: u32,
        audit: &mut Audit,
    ) -> Result<ProposalView, ApiError> {
        self.seal.require_initialized()?;
        let op = crate::wire::quorum::decode(&bytes)?;
        let name = op.name();
        audit.detail("operation", name);
        let max = self.proposal_ttl.as_secs();
        let ttl = match u64::from(ttl_secs) {
            0 => max,
            t if t < 60 || t > max => {
                return Err(ApiError::new(
                    Reason::BadTtl,
                    format!("ttl_secs {t}: must be between 60 and {max} (admin.proposal_ttl_secs)"),
                ))
            }
            t => t,
        };
        // With M > 1, checked now, so a bad operation never waits for approvals (and checked
        // again when it runs); with M = 1 it runs at once, and running checks it.
        let quorum = self.store.approval_quorum().await?;
        if quorum > 1 {
            let mut scratch = Audit::new(audit.caller.clone(), "admin.propose");
            self.execute(admin, op.clone(), &mut scratch, Exec::Check).await?;
        }
        let summary = self.summarize(&op).await;
        let now = kms_core::now_unix_ms();
        let id = format!("prop-{}", hex::encode(kms_core::random_array::<16>()?));
        audit.detail("proposal", id.as_str());
        audit.detail("summary", summary.as_str());
        let digest = sha256(&bytes);
        audit.detail("operation_sha256", hex::encode(&digest));
        let row = ProposalRow {
            id: id.clone(),
            operation: name.to_owned(),
            payload: bytes,
            digest,
            summary,
            proposed_by: admin.clone(),
            created_unix_ms: now,
            expires_unix_ms: now + i64::try_from(ttl).unwrap_or(i64::MAX / 2) * 1000,
            approvals: 1,
            status: ProposalStatus::Pending,
            closed_unix_ms: None,
            closed_by: None,
            outcome: String::new(),
        };
        let approval = ApprovalRow {
            proposal_id: id.clone(),
            admin_id: admin.clone(),
            signed_payload: signed.payload.to_vec(),
            signature: signed.signature.to_vec(),
            approved_unix_ms: now,
        };
        if quorum <= 1 {
            audit.set_operation(op.audit_operation());
            audit.detail("approved_by", vec![admin.to_string()]);
            let close = QuorumClose::Immediate {
                proposal: Box::new(row.clone()),
                approval,
            };
            let result = self.execute(admin, op, audit, Exec::Run(Some(&close))).await?;
            let mut executed = row;
            executed.status = ProposalStatus::Executed;
            executed.closed_unix_ms = Some(now);
            executed.closed_by = Some(admin.to_string());
            executed.outcome = "executed".into();
            let mut view = self.view(executed, quorum).await?;
            view.result = result;
            return Ok(view);
        }
        self.store
            .insert_proposal(&row, &approval, Audit::clone_allowed(audit))
            .await
            .map_err(ApiError::from)?;
        self.view(row, quorum).await
    }

    /// Approves a proposal; the approval that reaches M runs the operation.
    pub(crate) async fn approve(
        &self,
        admin: &AdminId,
        signed: Signed<'_>,
        proposal_id: &str,
        operation_sha256: &[u8],
        audit: &mut Audit,
    ) -> Result<ProposalView, ApiError> {
        let proposal = self.open_proposal(proposal_id, audit).await?;
        if operation_sha256 != proposal.digest {
            return Err(ApiError::new(
                Reason::DigestMismatch,
                format!(
                    "the approval is for operation sha256 {} but proposal {} is sha256 {}: check what you approve (kmsctl proposal show)",
                    hex::encode(operation_sha256),
                    proposal.id,
                    hex::encode(&proposal.digest)
                ),
            ));
        }
        let qop = crate::wire::quorum::decode(&proposal.payload)?;
        audit.detail("operation", proposal.operation.as_str());
        let now = kms_core::now_unix_ms();
        let approval = ApprovalRow {
            proposal_id: proposal.id.clone(),
            admin_id: admin.clone(),
            signed_payload: signed.payload.to_vec(),
            signature: signed.signature.to_vec(),
            approved_unix_ms: now,
        };
        let quorum = self.store.approval_quorum().await?;
        // Counted inside the transaction (active admins only, M under its lock): either the
        // approval is recorded, or it reaches M and the operation runs below.
        match self
            .store
            .add_approval(&approval, Audit::clone_allowed(audit))
            .await
            .map_err(ApiError::from)?
        {
            ApprovalAdded::Recorded(_) => {
                let row = self.proposal_row(&proposal.id).await?;
                return self.view(row, quorum).await;
            }
            ApprovalAdded::QuorumReached => {}
        }
        // This approval reaches M: run the operation, closing the proposal in its transaction,
        // whose audit record names the approvals counted there (`approved_by`).
        audit.set_operation(qop.audit_operation());
        let close = QuorumClose::Final {
            approval,
            payload: proposal.payload.clone(),
            check: approval_check,
        };
        let result = match self.execute(admin, qop, audit, Exec::Run(Some(&close))).await {
            Ok(r) => r,
            // Transient or caller-side refusals leave the proposal pending (approve again).
            Err(e)
                if e.is_refusal()
                    && !matches!(
                        e.reason,
                        Reason::ProposalClosed
                            | Reason::AlreadyApproved
                            | Reason::AlreadyRejected
                            | Reason::QuorumNotReached
                            | Reason::ApprovalInvalid
                            | Reason::QuorumRequired
                            | Reason::AdminRemoved
                            | Reason::Conflict
                    ) =>
            {
                // The quorum was reached but the operation is refused now (e.g. the key was
                // destroyed meanwhile): the proposal fails, for good, with this approval.
                let QuorumClose::Final { approval, .. } = close else {
                    unreachable!("built above")
                };
                let record = Audit::clone_failed(audit, &e);
                let outcome = format!("{}: {}", e.reason, e.message);
                let closed = self
                    .store
                    .fail_proposal(&approval, approval_check, &outcome, record)
                    .await
                    .map_err(ApiError::from)?;
                if !closed {
                    return Err(ApiError::new(
                        Reason::ProposalClosed,
                        format!("proposal {} was closed meanwhile (by another replica)", proposal.id),
                    ));
                }
                let row = self.proposal_row(&proposal.id).await?;
                return self.view(row, quorum).await;
            }
            Err(e) => return Err(e),
        };
        let row = self.proposal_row(&proposal.id).await?;
        let mut view = self.view(row, quorum).await?;
        view.result = result;
        Ok(view)
    }

    /// Rejects a pending proposal: the proposer withdraws it; others' rejections close it once M
    /// approvals can no longer be reached, so no single admin can veto (e.g. their own removal).
    pub(crate) async fn reject(
        &self,
        admin: &AdminId,
        signed: Signed<'_>,
        proposal_id: &str,
        reason: String,
        audit: &mut Audit,
    ) -> Result<ProposalView, ApiError> {
        let proposal = self.open_proposal(proposal_id, audit).await?;
        if reason.trim().is_empty() || reason.len() > 1024 {
            return Err(ApiError::new(
                Reason::BadReason,
                "reason: 1 to 1024 characters, required",
            ));
        }
        audit.detail("operation", proposal.operation.as_str());
        audit.detail("reason", reason.as_str());
        let rejection = RejectionRow {
            proposal_id: proposal.id.clone(),
            admin_id: admin.clone(),
            reason,
            signed_payload: signed.payload.to_vec(),
            signature: signed.signature.to_vec(),
            rejected_unix_ms: kms_core::now_unix_ms(),
        };
        let added = self
            .store
            .add_rejection(&rejection, Audit::clone_allowed(audit))
            .await
            .map_err(ApiError::from)?;
        if let RejectionAdded::Recorded(n) = added {
            tracing::info!(proposal = %proposal.id, rejections = n, "proposal rejection recorded; still pending");
        }
        let row = self.proposal_row(&proposal.id).await?;
        self.view(row, self.store.approval_quorum().await?).await
    }

    /// One proposal with its approvals.
    pub(crate) async fn describe_proposal(&self, id: &str, audit: &mut Audit) -> Result<ProposalView, ApiError> {
        audit.detail("proposal", id);
        let row = self.proposal_row(id).await?;
        self.view(row, self.store.approval_quorum().await?).await
    }

    /// Proposals, pending ones unless `include_closed`.
    pub(crate) async fn list_proposals(
        &self,
        include_closed: bool,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<ProposalView>, ApiError> {
        self.seal.require_initialized()?;
        let size = crate::wire::page_size(page_size)?;
        let now = kms_core::now_unix_ms();
        let after = crate::wire::page_after(page_token)?;
        let page = self.store.list_proposals(include_closed, now, &after, size).await?;
        let quorum = self.store.approval_quorum().await?;
        let mut votes = match (page.rows.first(), page.rows.last()) {
            (Some(first), Some(last)) => self.store.votes_between(&first.id, &last.id).await?,
            _ => Default::default(),
        };
        let next_page_token = crate::wire::page_token(page.next);
        let items = page
            .rows
            .into_iter()
            .map(|row| ProposalView {
                votes: votes.remove(&row.id).unwrap_or_default(),
                row,
                approvals_required: quorum,
                result: None,
            })
            .collect();
        Ok(Page { items, next_page_token })
    }

    /// A proposal that can still be approved or rejected.
    pub(crate) async fn open_proposal(&self, id: &str, audit: &mut Audit) -> Result<ProposalRow, ApiError> {
        self.seal.require_initialized()?;
        audit.detail("proposal", id);
        let row = self.proposal_row(id).await?;
        let now = kms_core::now_unix_ms();
        match row.status_at(now) {
            ProposalStatus::Pending => Ok(row),
            ProposalStatus::Expired => {
                // Recorded as expired for good, audited (the housekeeping would do it soon).
                if let Err(e) = self.store.expire_proposals(now).await {
                    tracing::warn!(error = %e, "cannot mark expired proposals");
                }
                Err(ApiError::new(
                    Reason::ProposalExpired,
                    format!(
                        "proposal {id} expired at {} without reaching the quorum: propose it again",
                        kms_core::rfc3339_utc(row.expires_unix_ms)
                    ),
                ))
            }
            other => Err(ApiError::new(
                Reason::ProposalClosed,
                format!("proposal {id} is {} ({})", other.as_str(), row.outcome),
            )),
        }
    }

    pub(crate) async fn proposal_row(&self, id: &str) -> Result<ProposalRow, ApiError> {
        if !id.starts_with("prop-") || id.len() != 37 || !id[5..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::new(
                Reason::BadProposalId,
                format!("{id:?} is not a proposal id (prop- and 32 hex digits)"),
            ));
        }
        self.store
            .proposal(id)
            .await?
            .ok_or_else(|| ApiError::new(Reason::ProposalNotFound, format!("no proposal {id}")))
    }

    /// A proposal with its votes.
    pub(crate) async fn view(&self, row: ProposalRow, quorum: u32) -> Result<ProposalView, ApiError> {
        let votes = self
            .store
            .votes_between(&row.id, &row.id)
            .await?
            .remove(&row.id)
            .unwrap_or_default();
        Ok(ProposalView {
            row,
            approvals_required: quorum,
            votes,
            result: None,
        })
    }

    /// A one-line description of an operation for approvers (they should also read the
    /// operation itself: `kmsctl proposal show` decodes it locally).
    pub(crate) async fn summarize(&self, op: &QuorumOp) -> String {
        match op {
            QuorumOp::AddAdmin(n) => format!(
                "add admin {} ({}), signing key sha256:{}",
                n.id,
                n.country,
                hex::encode(&sha256(n.signing_key.as_bytes())[..8])
            ),
            QuorumOp::RemoveAdmin { admin_id, reason } => format!("remove admin {admin_id}: {reason}"),
            QuorumOp::SetQuorum { approval_quorum } => format!("set the approval quorum to {approval_quorum}"),
            QuorumOp::EnrollHardware(e) => {
                let what = match &e.identity {
                    Some(EnrollIdentity::Snp { .. }) => "SEV-SNP machine".to_owned(),
                    Some(EnrollIdentity::Tpm {
                        expected_ek_digest,
                        expected_ak_name,
                        ..
                    }) => format!("TPM machine (EK {expected_ek_digest}, AK {expected_ak_name})"),
                    None => "machine".to_owned(),
                };
                format!(
                    "enrol {what} in {}, site {:?}, operator {:?}",
                    e.country, e.site, e.operator
                )
            }
            QuorumOp::SetReleasePolicy { key, release_policy } => {
                format!("set the release policy of key {key} to {release_policy}")
            }
            QuorumOp::ScheduleKeyDeletion {
                key,
                pending_window_days,
            } => format!("schedule deletion of key {key} in {pending_window_days} days"),
            QuorumOp::RotateRoot(r) => {
                let seal = match r.seal {
                    Some(SealKind::Shamir) => "shamir",
                    Some(SealKind::Pkcs11) => "pkcs11",
                    _ => "?",
                };
                if r.custodians.is_empty() {
                    format!("rotate the root key (new seal: {seal}, threshold {})", r.threshold)
                } else {
                    format!(
                        "rotate the root key (new seal: {seal}, {}-of-{} custodians {})",
                        r.threshold,
                        r.custodians.len(),
                        r.custodians.join(", ")
                    )
                }
            }
        }
    }
}

/// Re-verifies a stored approval when its proposal executes: the stored request decodes, is
/// the approving admin's, for this deployment, signed by the admin's key, and approves exactly
/// this proposal's operation: an Approve naming the proposal and the SHA-256 of its stored bytes,
/// or the proposer's own Propose (or direct call) of those very bytes.
pub(crate) fn approval_check(
    proposal: &ProposalRow,
    approval: &ApprovalRow,
    admin: &AdminRow,
    seal: &SealConfigRow,
) -> Result<(), String> {
    let req = crate::wire::quorum::stored_request(&approval.signed_payload)?;
    if req.admin_id != approval.admin_id.as_str() || admin.id != approval.admin_id {
        return Err(format!(
            "its stored request is signed as {}, not {}",
            req.admin_id, approval.admin_id
        ));
    }
    if req.deployment_id != seal.deployment_id {
        return Err("its stored request is for another deployment".into());
    }
    AdminPublicKey::parse(&admin.signing_public_key)
        .and_then(|k| k.verify(&approval.signed_payload, &approval.signature))
        .map_err(|_| format!("its signature does not verify under {}'s key", admin.id))?;
    let digest = sha256(&proposal.payload);
    let approves = match req.approves {
        Approves::Proposal { id, operation_sha256 } => id == proposal.id && operation_sha256 == digest,
        // The proposer's own Propose, or (M = 1) the operation's own RPC, of these very bytes.
        Approves::Operation(bytes) => approval.admin_id == proposal.proposed_by && bytes == proposal.payload,
        Approves::Nothing => false,
    };
    if !approves {
        return Err("its stored request does not approve this proposal's operation".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kms_core::ids::AdminId;
    use kms_core::jurisdiction::Country;
    use kms_core::keyfile::AdminKeyFile;

    use kms_proto::v1 as pb;
    use kms_proto::v1::admin_request::Operation as Op;
    use kms_proto::v1::quorum_operation::Operation as QOp;
    use prost::Message;

    use super::*;
    use crate::storage::{AdminRow, ProposalStatus};

    fn key(id: &str) -> AdminKeyFile {
        AdminKeyFile::generate(AdminId::parse(id).unwrap(), Country::parse("DE").unwrap()).unwrap()
    }

    fn row(k: &AdminKeyFile) -> AdminRow {
        let p = k.public();
        AdminRow {
            id: AdminId::parse(&p.admin_id).unwrap(),
            country: Country::parse(&p.country).unwrap(),
            signing_public_key: hex::decode(&p.signing_public_key).unwrap(),
            encryption_public_key: hex::decode(&p.encryption_public_key).unwrap(),
            custodian: true,
            created_unix_ms: 0,
            removed_unix_ms: None,
            removed_by: None,
        }
    }

    fn seal(deployment: &str) -> SealConfigRow {
        SealConfigRow {
            kind: "shamir".into(),
            threshold: 2,
            kcv: vec![0; 16],
            created_unix_ms: 0,
            approval_quorum: 2,
            root_generation: 1,
            deployment_id: deployment.into(),
        }
    }

    fn request(k: &AdminKeyFile, deployment: &str, op: Op) -> (Vec<u8>, Vec<u8>) {
        use kms_core::admin::AdminSigner as _;
        let payload = pb::AdminRequest {
            admin_id: k.admin_id.to_string(),
            timestamp_unix_ms: 1,
            nonce: vec![7; 16],
            operation: Some(op),
            deployment_id: deployment.into(),
        }
        .encode_to_vec();
        let signature = k.signer().sign(&payload).unwrap();
        (payload, signature)
    }

    fn approval(k: &AdminKeyFile, proposal: &str, (signed_payload, signature): (Vec<u8>, Vec<u8>)) -> ApprovalRow {
        ApprovalRow {
            proposal_id: proposal.into(),
            admin_id: k.admin_id.clone(),
            signed_payload,
            signature,
            approved_unix_ms: 1,
        }
    }

    /// What runs is what every counted approval signed: the stored bytes, their digest, this
    /// proposal, this deployment, the approver's own key.
    #[test]
    fn approvals_are_checked_against_the_stored_operation() {
        let (alice, bob, mallory) = (key("alice"), key("bob"), key("mallory"));
        let op = pb::QuorumOperation {
            operation: Some(QOp::SetQuorum(pb::SetQuorumOp { approval_quorum: 1 })),
        }
        .encode_to_vec();
        let proposal = ProposalRow {
            id: format!("prop-{}", "a".repeat(32)),
            operation: "set_quorum".into(),
            payload: op.clone(),
            digest: sha256(&op),
            summary: String::new(),
            proposed_by: AdminId::parse("alice").unwrap(),
            created_unix_ms: 0,
            expires_unix_ms: i64::MAX,
            approvals: 1,
            status: ProposalStatus::Pending,
            closed_unix_ms: None,
            closed_by: None,
            outcome: String::new(),
        };
        let dep = "dep-1";
        let approve_op = |id: &str, digest: Vec<u8>| {
            Op::Approve(pb::ApproveOp {
                proposal_id: id.into(),
                operation_sha256: digest,
            })
        };
        let propose_op = |bytes: Vec<u8>| {
            Op::Propose(pb::ProposeOp {
                operation: bytes,
                ttl_secs: 0,
            })
        };
        let good = approval(
            &bob,
            &proposal.id,
            request(&bob, dep, approve_op(&proposal.id, sha256(&op))),
        );
        approval_check(&proposal, &good, &row(&bob), &seal(dep)).unwrap();
        let proposer = approval(&alice, &proposal.id, request(&alice, dep, propose_op(op.clone())));
        approval_check(&proposal, &proposer, &row(&alice), &seal(dep)).unwrap();

        let refused =
            |a: &ApprovalRow, admin: &AdminRow, s: &SealConfigRow| approval_check(&proposal, a, admin, s).unwrap_err();
        // The stored operation changed after the approvals: the digest they signed differs.
        let mut swapped = proposal.clone();
        swapped.payload = pb::QuorumOperation {
            operation: Some(QOp::SetQuorum(pb::SetQuorumOp { approval_quorum: 5 })),
        }
        .encode_to_vec();
        swapped.digest = sha256(&swapped.payload);
        assert!(approval_check(&swapped, &good, &row(&bob), &seal(dep))
            .unwrap_err()
            .contains("does not approve"));
        assert!(approval_check(&swapped, &proposer, &row(&alice), &seal(dep)).is_err());
        // An approval of another proposal, for another deployment, signed by someone else, or
        // a Propose by someone who did not propose.
        let other = approval(
            &bob,
            &proposal.id,
            request(&bob, dep, approve_op("prop-other", sha256(&op))),
        );
        assert!(refused(&other, &row(&bob), &seal(dep)).contains("does not approve"));
        assert!(refused(&good, &row(&bob), &seal("dep-2")).contains("another deployment"));
        let mut forged = good.clone();
        forged.signature = request(&mallory, dep, approve_op(&proposal.id, sha256(&op))).1;
        assert!(refused(&forged, &row(&bob), &seal(dep)).contains("signature"));
        assert!(refused(&good, &row(&mallory), &seal(dep)).contains("signed as"));
        let not_proposer = approval(&bob, &proposal.id, request(&bob, dep, propose_op(op.clone())));
        assert!(refused(&not_proposer, &row(&bob), &seal(dep)).contains("does not approve"));
        let garbage = ApprovalRow {
            signed_payload: vec![0xff; 4],
            ..good.clone()
        };
        assert!(refused(&garbage, &row(&bob), &seal(dep)).contains("not an AdminRequest"));
    }
}
