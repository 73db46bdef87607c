//! Proposals and approvals of quorum operations, and how a quorum operation's transaction
//! closes its proposal. Every closing transaction reads the proposal, M, the admins and every
//! approval inside the state lock, from rows that verify, and re-verifies every counted approval
//! (the approver's signature over its stored request, and that the request approves exactly the
//! stored operation bytes, whose digest is recomputed) before the operation's own writes commit
//! with it. A proposal leaves `pending` exactly once; an approval is one row per (proposal,
//! admin), so no admin counts twice.

use std::collections::BTreeMap;

use kms_core::audit::Record;
use kms_core::ids::AdminId;
use kms_core::integrity::Value;

use super::row;
use super::tables::{AdminRow, ApprovalRow, ProposalRow, ProposalStatus, RejectionRow, SealConfigRow};
use super::{seal_in, Listing, Refusal, Store, StoreError, Stored, Tx};

/// Checks one stored approval at execution: that `approval.signed_payload` is a request signed
/// by `admin` (its signature verifies under the admin's key, for deployment `deployment_id`)
/// that approves `proposal` (its id and the SHA-256 of its operation bytes, or those bytes
/// themselves). Given by the admin plane, which knows the request format.
pub(crate) type ApprovalCheck = fn(&ProposalRow, &ApprovalRow, &AdminRow, &SealConfigRow) -> Result<(), String>;

/// How a quorum operation's transaction closes its proposal.
#[derive(Debug)]
pub enum QuorumClose {
    /// Proposed while the quorum is one: the proposal is recorded as executed at once.
    Immediate {
        /// The proposal (status is written as executed).
        proposal: Box<ProposalRow>,
        /// The proposer's approval.
        approval: ApprovalRow,
    },
    /// The approval that reaches the quorum.
    Final {
        /// The approval.
        approval: ApprovalRow,
        /// The operation bytes the caller decoded and runs: they must be the proposal's.
        payload: Vec<u8>,
        /// How a stored approval is re-verified.
        check: ApprovalCheck,
    },
}

/// What a rejection did.
#[derive(Debug)]
pub enum RejectionAdded {
    /// Recorded; this many rejections by active admins now; still pending.
    Recorded(u32),
    /// The proposal is closed as rejected.
    Closed,
}

/// What adding a non-final approval did.
#[derive(Debug)]
pub enum ApprovalAdded {
    /// Recorded; this many approvals now.
    Recorded(u32),
    /// Nothing recorded: with this approval the quorum is reached (another approval arrived
    /// meanwhile), so the caller must execute the operation instead.
    QuorumReached,
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

/// The proposal, pending at `now`, read and verified inside the transaction.
async fn pending(tx: &mut Tx, id: &str, now: i64) -> Result<Stored<ProposalRow>, StoreError> {
    match tx.get::<ProposalRow>(&[Value::text(id)]).await? {
        Some(p) if p.status == ProposalStatus::Pending && p.expires_unix_ms > now => Ok(p),
        _ => Err(Refusal::ProposalClosed(id.to_owned()).into()),
    }
}

/// The admin's row, which must be active.
async fn active_admin(tx: &mut Tx, id: &AdminId) -> Result<AdminRow, StoreError> {
    match tx.get::<AdminRow>(&[Value::text(id.as_str())]).await? {
        Some(a) if a.removed_unix_ms.is_none() => Ok(a.row),
        _ => Err(Refusal::AdminRemoved(id.clone()).into()),
    }
}

/// An admin who rejected a proposal cannot approve it (or count on both sides).
async fn refuse_if_rejected(tx: &mut Tx, approval: &ApprovalRow) -> Result<(), StoreError> {
    if tx
        .get::<RejectionRow>(&[
            Value::text(&approval.proposal_id),
            Value::text(approval.admin_id.as_str()),
        ])
        .await?
        .is_some()
    {
        return Err(Refusal::AlreadyRejected {
            admin: approval.admin_id.clone(),
            proposal: approval.proposal_id.clone(),
            approving: true,
        }
        .into());
    }
    Ok(())
}

/// Inserts an approval; a second one by the same admin is refused.
async fn insert_new_approval(tx: &mut Tx, a: &ApprovalRow) -> Result<(), StoreError> {
    if tx
        .get::<ApprovalRow>(&[Value::text(&a.proposal_id), Value::text(a.admin_id.as_str())])
        .await?
        .is_some()
    {
        return Err(Refusal::AlreadyApproved {
            admin: a.admin_id.clone(),
            proposal: a.proposal_id.clone(),
            rejecting: false,
        }
        .into());
    }
    tx.insert(a).await.map_err(|e| match e {
        StoreError::Conflict => StoreError::Refused(Refusal::AlreadyApproved {
            admin: a.admin_id.clone(),
            proposal: a.proposal_id.clone(),
            rejecting: false,
        }),
        other => other,
    })
}

/// The admins whose approvals count: active admins, each once, with an approval row that
/// verifies (with `check`, whose signed request verifies too, else the whole count is refused).
async fn counted_approvals(
    tx: &mut Tx,
    proposal: &ProposalRow,
    seal: &SealConfigRow,
    check: Option<ApprovalCheck>,
) -> Result<Vec<AdminId>, StoreError> {
    let approvals = tx
        .all::<ApprovalRow>("WHERE proposal_id = $1", &[Value::text(&proposal.id)], |a| {
            a.proposal_id == proposal.id
        })
        .await?;
    let admins = tx
        .all::<AdminRow>("WHERE removed_unix_ms IS NULL", &[], |a| a.removed_unix_ms.is_none())
        .await?;
    let mut n = Vec::new();
    // Each admin counts once, for this proposal only: every copy of a genuine row verifies, so a
    // row the database returns twice (its primary key dropped and the row copied) or for another
    // proposal must not count again.
    let mut counted = std::collections::BTreeSet::new();
    for a in &approvals {
        if a.proposal_id != proposal.id || !counted.insert(a.admin_id.as_str()) {
            continue;
        }
        let Some(admin) = admins.iter().find(|d| d.id == a.admin_id) else {
            continue;
        };
        if let Some(check) = check {
            check(proposal, a, admin, seal).map_err(|what| Refusal::ApprovalInvalid {
                proposal: proposal.id.clone(),
                admin: a.admin_id.clone(),
                what,
            })?;
        }
        n.push(a.admin_id.clone());
    }
    Ok(n)
}

/// Records `approval` (the one that reaches M) and closes `proposal` with `status` and
/// `outcome`, once the approvals of active admins, re-verified with `check` under the locks,
/// reach M.
async fn close_with_quorum(
    tx: &mut Tx,
    proposal: &Stored<ProposalRow>,
    approval: &ApprovalRow,
    check: ApprovalCheck,
    status: ProposalStatus,
    outcome: &str,
) -> Result<(), StoreError> {
    let seal = seal_in(tx).await?;
    active_admin(tx, &approval.admin_id).await?;
    refuse_if_rejected(tx, approval).await?;
    insert_new_approval(tx, approval).await?;
    let approvers = counted_approvals(tx, proposal, &seal, Some(check)).await?;
    let approvals = i64::try_from(approvers.len()).unwrap_or(i64::MAX);
    if approvals < i64::from(seal.approval_quorum) {
        return Err(Refusal::QuorumNotReached {
            proposal: proposal.id.clone(),
            approvals,
            quorum: seal.approval_quorum,
        }
        .into());
    }
    let mut closed = proposal.row.clone();
    closed.status = status;
    closed.approvals = u32::try_from(approvals).unwrap_or(u32::MAX);
    closed.closed_unix_ms = Some(approval.approved_unix_ms);
    closed.closed_by = Some(approval.admin_id.to_string());
    closed.outcome = outcome.to_owned();
    tx.update(proposal, &closed).await?;
    // The operation's audit record names the approvals counted here, not a read outside.
    let mut approved_by: Vec<String> = approvers.iter().map(ToString::to_string).collect();
    approved_by.sort();
    tx.set_approved_by(approved_by);
    Ok(())
}

impl Store {
    /// Begins a write transaction; with `close`, first closes the proposal (recording the
    /// approval) so the operation's statements and the proposal's execution commit together or
    /// not at all. A proposal that is no longer pending, or is past its expiry, refuses; so does
    /// one whose counted approvals (re-verified here) no longer reach M.
    pub(crate) async fn begin_write(&self, close: Option<&QuorumClose>) -> Result<Tx, StoreError> {
        let mut tx = Tx::begin(self).await?;
        match close {
            None => {}
            Some(QuorumClose::Immediate { proposal, approval }) => {
                let seal = seal_in(&mut tx).await?;
                active_admin(&mut tx, &approval.admin_id).await?;
                if seal.approval_quorum > 1 {
                    return Err(Refusal::QuorumRequired(seal.approval_quorum).into());
                }
                let mut executed = proposal.as_ref().clone();
                executed.status = ProposalStatus::Executed;
                executed.approvals = 1;
                executed.closed_unix_ms = Some(proposal.created_unix_ms);
                executed.closed_by = Some(approval.admin_id.to_string());
                executed.outcome = "executed".into();
                tx.insert(&executed).await?;
                tx.insert(approval).await?;
            }
            Some(QuorumClose::Final {
                approval,
                payload,
                check,
            }) => {
                let now = approval.approved_unix_ms;
                let proposal = pending(&mut tx, &approval.proposal_id, now).await?;
                // What runs is what was proposed and approved: the stored bytes, their digest
                // recomputed, and every approval checked against them below.
                if &proposal.payload != payload || sha256(&proposal.payload) != proposal.digest {
                    return Err(Refusal::ApprovalInvalid {
                        proposal: proposal.id.clone(),
                        admin: approval.admin_id.clone(),
                        what: "the stored operation is not the one whose digest the approvals sign".into(),
                    }
                    .into());
                }
                close_with_quorum(
                    &mut tx,
                    &proposal,
                    approval,
                    *check,
                    ProposalStatus::Executed,
                    "executed",
                )
                .await?;
            }
        }
        Ok(tx)
    }

    /// Records a proposal with its proposer's approval (not yet executable).
    pub async fn insert_proposal(
        &self,
        proposal: &ProposalRow,
        approval: &ApprovalRow,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = Tx::begin(self).await?;
        tx.insert(proposal).await?;
        tx.insert(approval).await?;
        tx.audit(vec![record]).await?;
        tx.commit().await
    }

    /// Adds an approval that should not reach the quorum. If, counted inside the transaction,
    /// it does (approvals arrived concurrently), nothing is written and the caller executes.
    pub async fn add_approval(&self, approval: &ApprovalRow, record: Record) -> Result<ApprovalAdded, StoreError> {
        let mut tx = Tx::begin(self).await?;
        let proposal = pending(&mut tx, &approval.proposal_id, approval.approved_unix_ms).await?;
        let seal = seal_in(&mut tx).await?;
        active_admin(&mut tx, &approval.admin_id).await?;
        refuse_if_rejected(&mut tx, approval).await?;
        insert_new_approval(&mut tx, approval).await?;
        let approvals =
            i64::try_from(counted_approvals(&mut tx, &proposal, &seal, None).await?.len()).unwrap_or(i64::MAX);
        if approvals >= i64::from(seal.approval_quorum) {
            // Rolled back: the caller runs the operation instead.
            return Ok(ApprovalAdded::QuorumReached);
        }
        let mut counted = proposal.row.clone();
        counted.approvals = u32::try_from(approvals).unwrap_or(u32::MAX);
        tx.update(&proposal, &counted).await?;
        tx.audit(vec![record]).await?;
        tx.commit().await?;
        Ok(ApprovalAdded::Recorded(u32::try_from(approvals).unwrap_or(u32::MAX)))
    }

    /// Records a rejection. The proposal closes as rejected when its proposer withdraws it or
    /// when M approvals from active admins can no longer be reached (more than N - M active
    /// admins rejected it); otherwise it stays pending, so one admin alone cannot veto. An admin
    /// who approved cannot reject.
    pub async fn add_rejection(&self, rejection: &RejectionRow, record: Record) -> Result<RejectionAdded, StoreError> {
        let mut tx = Tx::begin(self).await?;
        let proposal = pending(&mut tx, &rejection.proposal_id, rejection.rejected_unix_ms).await?;
        let seal = seal_in(&mut tx).await?;
        active_admin(&mut tx, &rejection.admin_id).await?;
        let withdrawn = rejection.admin_id == proposal.proposed_by;
        if !withdrawn
            && tx
                .get::<ApprovalRow>(&[
                    Value::text(&rejection.proposal_id),
                    Value::text(rejection.admin_id.as_str()),
                ])
                .await?
                .is_some()
        {
            return Err(Refusal::AlreadyApproved {
                admin: rejection.admin_id.clone(),
                proposal: rejection.proposal_id.clone(),
                rejecting: true,
            }
            .into());
        }
        if tx
            .get::<RejectionRow>(&[
                Value::text(&rejection.proposal_id),
                Value::text(rejection.admin_id.as_str()),
            ])
            .await?
            .is_some()
        {
            return Err(Refusal::AlreadyRejected {
                admin: rejection.admin_id.clone(),
                proposal: rejection.proposal_id.clone(),
                approving: false,
            }
            .into());
        }
        tx.insert(rejection).await?;
        // Every admin, complete and once: `active` bounds what a rejection closes.
        let admins: Vec<Stored<AdminRow>> = tx
            .every::<AdminRow>()
            .await?
            .into_iter()
            .filter(|a| a.removed_unix_ms.is_none())
            .collect();
        let rejections = tx
            .all::<RejectionRow>("WHERE proposal_id = $1", &[Value::text(&rejection.proposal_id)], |r| {
                r.proposal_id == rejection.proposal_id
            })
            .await?
            .iter()
            .filter(|r| admins.iter().any(|a| a.id == r.admin_id))
            .count();
        let rejections = i64::try_from(rejections).unwrap_or(i64::MAX);
        let active = i64::try_from(admins.len()).unwrap_or(i64::MAX);
        let quorum = i64::from(seal.approval_quorum);
        let closes = withdrawn || rejections > active - quorum;
        if closes {
            let mut closed = proposal.row.clone();
            closed.status = ProposalStatus::Rejected;
            closed.closed_unix_ms = Some(rejection.rejected_unix_ms);
            closed.closed_by = Some(rejection.admin_id.to_string());
            closed.outcome = if withdrawn {
                format!("withdrawn by {}: {}", rejection.admin_id, rejection.reason)
            } else {
                format!(
                    "rejected: {rejections} of {active} admins rejected it, so {quorum} approvals can no longer be reached (last: {}: {})",
                    rejection.admin_id, rejection.reason
                )
            };
            tx.update(&proposal, &closed).await?;
        }
        tx.audit(vec![record]).await?;
        tx.commit().await?;
        Ok(if closes {
            RejectionAdded::Closed
        } else {
            RejectionAdded::Recorded(u32::try_from(rejections).unwrap_or(u32::MAX))
        })
    }

    /// A proposal's rejections by active admins, oldest first.
    pub async fn rejections(&self, proposal_id: &str) -> Result<Vec<RejectionRow>, StoreError> {
        let admins = self.admins(false).await?;
        let mut rows: Vec<RejectionRow> = self
            .all::<RejectionRow>("WHERE proposal_id = $1", &[Value::text(proposal_id)], |r| {
                r.proposal_id == proposal_id
            })
            .await?
            .into_iter()
            .map(|s| s.row)
            .filter(|r| admins.iter().any(|a| a.id == r.admin_id))
            .collect();
        rows.sort_by(|a, b| (a.rejected_unix_ms, &a.admin_id).cmp(&(b.rejected_unix_ms, &b.admin_id)));
        Ok(rows)
    }

    /// The approvals and rejections of every proposal whose id lies in `first..=last`, by
    /// proposal id, each list ordered as [`Store::approvals`] and [`Store::rejections`] order it:
    /// three queries for a page of proposals instead of three per proposal.
    pub async fn votes_between(&self, first: &str, last: &str) -> Result<BTreeMap<String, Votes>, StoreError> {
        let range = [Value::text(first), Value::text(last)];
        let mut votes: BTreeMap<String, Votes> = BTreeMap::new();
        for a in self
            .all::<ApprovalRow>(
                "WHERE proposal_id >= $1 AND proposal_id <= $2 ORDER BY approved_unix_ms, admin_id",
                &range,
                // A range of text: restating it would need the database's collation. Each vote
                // is filed under the proposal its own row names, so a row outside the range
                // only lists a vote where it was cast.
                row::every,
            )
            .await?
        {
            votes
                .entry(a.row.proposal_id.clone())
                .or_default()
                .approvals
                .push(a.row);
        }
        let admins = self.admins(false).await?;
        for r in self
            .all::<RejectionRow>("WHERE proposal_id >= $1 AND proposal_id <= $2", &range, row::every)
            .await?
        {
            if admins.iter().any(|a| a.id == r.row.admin_id) {
                votes
                    .entry(r.row.proposal_id.clone())
                    .or_default()
                    .rejections
                    .push(r.row);
            }
        }
        for v in votes.values_mut() {
            v.rejections
                .sort_by(|a, b| (a.rejected_unix_ms, &a.admin_id).cmp(&(b.rejected_unix_ms, &b.admin_id)));
        }
        Ok(votes)
    }

    /// Closes a pending proposal as failed: its quorum was reached (`approval` is the one that
    /// reached it, recorded too; every counted approval re-verified) but the operation was
    /// refused. `false` if it was not pending.
    pub async fn fail_proposal(
        &self,
        approval: &ApprovalRow,
        check: ApprovalCheck,
        outcome: &str,
        record: Record,
    ) -> Result<bool, StoreError> {
        let mut tx = Tx::begin(self).await?;
        let proposal = match pending(&mut tx, &approval.proposal_id, approval.approved_unix_ms).await {
            Ok(p) => p,
            Err(StoreError::Refused(Refusal::ProposalClosed(_))) => return Ok(false),
            Err(e) => return Err(e),
        };
        // Only a quorum can fail a proposal, as only a quorum can execute it.
        close_with_quorum(&mut tx, &proposal, approval, check, ProposalStatus::Failed, outcome).await?;
        tx.audit(vec![record]).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One proposal.
    pub async fn proposal(&self, id: &str) -> Result<Option<ProposalRow>, StoreError> {
        Ok(self.get::<ProposalRow>(&[Value::text(id)]).await?.map(|s| s.row))
    }

    /// A page of proposals (see [`Store::page`]): pending ones (still open at `now`) only, or
    /// all.
    pub async fn list_proposals(
        &self,
        include_closed: bool,
        now: i64,
        after: &str,
        size: u32,
    ) -> Result<Listing<ProposalRow>, StoreError> {
        if include_closed {
            return self.page("", &[], row::every, after, size).await;
        }
        self.page(
            "AND status = 'pending' AND expires_unix_ms > $3",
            &[Value::int(now)],
            |p: &Stored<ProposalRow>| p.status == ProposalStatus::Pending && p.expires_unix_ms > now,
            after,
            size,
        )
        .await
    }

    /// The pending proposals (still open at `now`) of `operation` that verify.
    pub async fn pending_proposals(&self, operation: &str, now: i64) -> Result<Vec<ProposalRow>, StoreError> {
        let rows = self
            .all::<ProposalRow>(
                "WHERE operation = $1 AND status = 'pending' AND expires_unix_ms > $2",
                &[Value::text(operation), Value::int(now)],
                |p| p.operation == operation && p.status == ProposalStatus::Pending && p.expires_unix_ms > now,
            )
            .await?;
        Ok(rows.into_iter().map(|s| s.row).collect())
    }

    /// A proposal's approvals that verify, oldest first.
    pub async fn approvals(&self, proposal_id: &str) -> Result<Vec<ApprovalRow>, StoreError> {
        Ok(self
            .all::<ApprovalRow>(
                "WHERE proposal_id = $1 ORDER BY approved_unix_ms, admin_id",
                &[Value::text(proposal_id)],
                |a| a.proposal_id == proposal_id,
            )
            .await?
            .into_iter()
            .map(|s| s.row)
            .collect())
    }

    /// Marks pending proposals past their expiry as expired, each with an audit record, in one
    /// transaction. Returns how many.
    pub async fn expire_proposals(&self, now: i64) -> Result<usize, StoreError> {
        // Most of the time there is nothing to expire: look before taking the state lock.
        if self
            .all::<ProposalRow>(
                "WHERE status = 'pending' AND expires_unix_ms <= $1",
                &[Value::int(now)],
                |p| p.status == ProposalStatus::Pending && p.expires_unix_ms <= now,
            )
            .await?
            .is_empty()
        {
            return Ok(0);
        }
        let mut tx = Tx::begin(self).await?;
        let due = tx
            .all::<ProposalRow>(
                "WHERE status = 'pending' AND expires_unix_ms <= $1",
                &[Value::int(now)],
                |p| p.status == ProposalStatus::Pending && p.expires_unix_ms <= now,
            )
            .await?;
        let mut records = Vec::new();
        for p in &due {
            let mut expired = p.row.clone();
            expired.status = ProposalStatus::Expired;
            expired.closed_unix_ms = Some(p.expires_unix_ms);
            expired.closed_by = Some("system".into());
            expired.outcome = "expired".into();
            tx.update(p, &expired).await?;
            records.push(Record {
                time_unix_ms: now,
                caller: "system:proposals".into(),
                operation: "admin.proposal_expired".into(),
                key_id: None,
                outcome: kms_core::audit::Outcome::Allowed.as_str().to_owned(),
                reason: String::new(),
                detail: serde_json::json!({ "proposal": p.id, "operation": p.operation, "proposed_by": p.proposed_by.as_str() })
                    .to_string(),
            });
        }
        let n = records.len();
        tx.audit(records).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// M, the approval quorum (1 before Init).
    pub async fn approval_quorum(&self) -> Result<u32, StoreError> {
        Ok(self.seal_config().await?.map_or(1, |s| s.approval_quorum))
    }
}

/// A proposal's approvals and rejections (see [`Store::votes_between`]).
#[derive(Clone, Debug, Default)]
pub struct Votes {
    /// Its approvals that verify, oldest first.
    pub approvals: Vec<ApprovalRow>,
    /// Its rejections by active admins, oldest first.
    pub rejections: Vec<RejectionRow>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::storage::test_store;

    fn record() -> Record {
        Record {
            time_unix_ms: 1,
            caller: "test".into(),
            operation: "admin.approve".into(),
            key_id: None,
            outcome: "allowed".into(),
            reason: String::new(),
            detail: "{}".into(),
        }
    }

    fn refuse_all(_: &ProposalRow, a: &ApprovalRow, _: &AdminRow, _: &SealConfigRow) -> Result<(), String> {
        Err(format!("{}'s signature does not verify", a.admin_id))
    }

    fn accept_all(_: &ProposalRow, _: &ApprovalRow, _: &AdminRow, _: &SealConfigRow) -> Result<(), String> {
        Ok(())
    }

    /// The approval that reaches M runs the operation only if every counted approval, as stored,
    /// passes the re-verification inside the executing transaction: rows that authenticate are
    /// not enough. A refusal leaves the proposal pending and the approval unrecorded.
    #[tokio::test]
    async fn execution_re_verifies_every_counted_approval() {
        let (store, _dir) = test_store().await;
        let mut tx = Tx::begin(&store).await.unwrap();
        let bob = AdminRow {
            id: AdminId::parse("bob").unwrap(),
            ..store.admin(&AdminId::parse("alice").unwrap()).await.unwrap().unwrap()
        };
        tx.insert(&bob).await.unwrap();
        tx.commit().await.unwrap();
        let payload = b"the operation".to_vec();
        let proposal = ProposalRow {
            id: format!("prop-{}", "b".repeat(32)),
            operation: "set_quorum".into(),
            payload: payload.clone(),
            digest: sha256(&payload),
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
        let approval = |admin: &str| ApprovalRow {
            proposal_id: proposal.id.clone(),
            admin_id: AdminId::parse(admin).unwrap(),
            signed_payload: vec![1],
            signature: vec![2],
            approved_unix_ms: 1,
        };
        store
            .insert_proposal(&proposal, &approval("alice"), record())
            .await
            .unwrap();
        let close = |check: ApprovalCheck, payload: Vec<u8>| QuorumClose::Final {
            approval: approval("bob"),
            payload,
            check,
        };

        let Err(StoreError::Refused(Refusal::ApprovalInvalid { admin, what, .. })) =
            store.begin_write(Some(&close(refuse_all, payload.clone()))).await
        else {
            panic!("a counted approval that does not verify must stop the execution")
        };
        assert_eq!(
            (admin.as_str(), what.as_str()),
            ("alice", "alice's signature does not verify")
        );
        // Other bytes than the stored ones are never run either.
        let Err(StoreError::Refused(Refusal::ApprovalInvalid { .. })) = store
            .begin_write(Some(&close(accept_all, b"other bytes".to_vec())))
            .await
        else {
            panic!("bytes other than the proposal's must not run")
        };
        let stored = store.proposal(&proposal.id).await.unwrap().unwrap();
        assert_eq!(stored.status, ProposalStatus::Pending);
        assert_eq!(store.approvals(&proposal.id).await.unwrap().len(), 1);

        // The same approval, every stored one verifying: the proposal executes.
        let mut tx = store.begin_write(Some(&close(accept_all, payload))).await.unwrap();
        tx.audit(vec![record()]).await.unwrap();
        tx.commit().await.unwrap();
        let stored = store.proposal(&proposal.id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.approvals), (ProposalStatus::Executed, 2));
    }
}
