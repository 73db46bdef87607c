//! Proposals and approvals of quorum operations, and how a quorum operation's transaction
//! closes its proposal. A proposal leaves `pending` exactly once, by a conditional UPDATE that is
//! the first statement of the closing transaction, so on any number of replicas one transaction
//! wins and the others roll back; an approval is one row per (proposal, admin) so no admin
//! counts twice.

use kms_core::audit::Record;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{append_in_tx, Store, StoreError};
use crate::error::ApiError;

/// Where a proposal is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProposalStatus {
    /// Waiting for approvals.
    Pending,
    /// The quorum was reached and the operation ran.
    Executed,
    /// An admin rejected it.
    Rejected,
    /// It was not approved in time.
    Expired,
    /// The quorum was reached but the operation was refused.
    Failed,
}

impl ProposalStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Executed => "executed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "executed" => Self::Executed,
            "rejected" => Self::Rejected,
            "expired" => Self::Expired,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A stored proposal.
#[derive(Clone, Debug)]
pub struct ProposalRow {
    /// Id ("prop-" and 32 hex digits).
    pub id: String,
    /// The operation's name.
    pub operation: String,
    /// The serialized QuorumOperation.
    pub payload: Vec<u8>,
    /// SHA-256 of `payload`.
    pub digest: Vec<u8>,
    /// Human-readable summary.
    pub summary: String,
    /// Who proposed it.
    pub proposed_by: String,
    /// When.
    pub created_unix_ms: i64,
    /// Until when it can be approved.
    pub expires_unix_ms: i64,
    /// Approvals so far.
    pub approvals: u32,
    /// Status.
    pub status: ProposalStatus,
    /// When it was closed.
    pub closed_unix_ms: Option<i64>,
    /// Who closed it (the approver who reached the quorum, or the rejecter).
    pub closed_by: Option<String>,
    /// The outcome text.
    pub outcome: String,
}

impl ProposalRow {
    /// The status as seen at `now`: a pending proposal past its expiry is expired.
    pub fn status_at(&self, now: i64) -> ProposalStatus {
        if self.status == ProposalStatus::Pending && self.expires_unix_ms <= now {
            ProposalStatus::Expired
        } else {
            self.status
        }
    }
}

/// One approval: the approver's signed request and its signature.
#[derive(Clone, Debug)]
pub struct ApprovalRow {
    /// The proposal.
    pub proposal_id: String,
    /// The approving admin.
    pub admin_id: String,
    /// The signed AdminRequest bytes (a Propose, an Approve carrying the digest, or a direct
    /// call of the operation).
    pub signed_payload: Vec<u8>,
    /// The admin's signature over them.
    pub signature: Vec<u8>,
    /// When.
    pub approved_unix_ms: i64,
}

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
    },
}

/// One rejection: the admin's signed request and its signature.
#[derive(Clone, Debug)]
pub struct RejectionRow {
    /// The proposal.
    pub proposal_id: String,
    /// The rejecting admin.
    pub admin_id: String,
    /// Why.
    pub reason: String,
    /// The signed AdminRequest bytes.
    pub signed_payload: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// When.
    pub rejected_unix_ms: i64,
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

const PROPOSAL_COLUMNS: &str =
    "id, operation, payload, digest, summary, proposed_by, created_unix_ms, expires_unix_ms, \
     approvals, status, closed_unix_ms, closed_by, outcome";

fn closed(reason: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Api(ApiError::precondition(reason, message))
}

impl Store {
    /// Begins a write transaction; with `close`, first closes the proposal (recording the
    /// approval) so the operation's statements and the proposal's execution commit together or
    /// not at all. A proposal that is no longer pending, or is past its expiry, refuses.
    pub(crate) async fn begin_write(
        &self,
        close: Option<&QuorumClose>,
    ) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        match close {
            None => {}
            Some(QuorumClose::Immediate { proposal, approval }) => {
                insert_proposal(&mut tx, proposal, ProposalStatus::Executed, Some(&approval.admin_id)).await?;
                // Lock order everywhere: proposal row, seal record, admin rows.
                // M is read (and locked) here: a quorum raised meanwhile refuses the call.
                let quorum = locked_quorum(&mut tx).await?;
                lock_active_admin(&mut tx, &approval.admin_id).await?;
                if quorum > 1 {
                    return Err(closed(
                        "quorum_required",
                        format!("the approval quorum is now {quorum}: propose the operation"),
                    ));
                }
                insert_approval(&mut tx, approval).await?;
            }
            Some(QuorumClose::Final { approval }) => {
                let now = approval.approved_unix_ms;
                let done = sqlx::query(
                    "UPDATE proposals SET status = 'executed', approvals = approvals + 1, closed_unix_ms = $2, closed_by = $3, \
                     outcome = 'executed' WHERE id = $1 AND status = 'pending' AND expires_unix_ms > $2",
                )
                .bind(&approval.proposal_id)
                .bind(now)
                .bind(&approval.admin_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done != 1 {
                    return Err(closed(
                        "proposal_closed",
                        format!(
                            "proposal {} is no longer pending (executed, rejected or expired meanwhile)",
                            approval.proposal_id
                        ),
                    ));
                }
                // Seal record first (M, and the lock every admin change takes), then the
                // approver's row; counted after both: approvals of admins removed meanwhile do
                // not count, and M is the one committed now.
                let quorum = locked_quorum(&mut tx).await?;
                lock_active_admin(&mut tx, &approval.admin_id).await?;
                refuse_if_rejected(&mut tx, approval).await?;
                insert_new_approval(&mut tx, approval).await?;
                let approvals = active_approvals(&mut tx, &approval.proposal_id).await?;
                if approvals < i64::from(quorum) {
                    return Err(closed(
                        "quorum_not_reached",
                        format!(
                            "proposal {} has {approvals} of {quorum} approvals from active admins (M or the admins changed meanwhile): approve again",
                            approval.proposal_id
                        ),
                    ));
                }
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
        let mut tx = self.pool.begin().await?;
        insert_proposal(&mut tx, proposal, ProposalStatus::Pending, None).await?;
        insert_approval(&mut tx, approval).await?;
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds an approval that should not reach the quorum. If, counted inside the transaction,
    /// it does (approvals arrived concurrently), nothing is written and the caller executes.
    pub async fn add_approval(&self, approval: &ApprovalRow, record: Record) -> Result<ApprovalAdded, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE proposals SET approvals = approvals + 1 WHERE id = $1 AND status = 'pending' AND expires_unix_ms > $2",
        )
        .bind(&approval.proposal_id)
        .bind(approval.approved_unix_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done != 1 {
            return Err(closed(
                "proposal_closed",
                format!("proposal {} is no longer pending", approval.proposal_id),
            ));
        }
        let quorum = locked_quorum(&mut tx).await?;
        lock_active_admin(&mut tx, &approval.admin_id).await?;
        refuse_if_rejected(&mut tx, approval).await?;
        insert_new_approval(&mut tx, approval).await?;
        let approvals = active_approvals(&mut tx, &approval.proposal_id).await?;
        if approvals >= i64::from(quorum) {
            // Rolled back: the caller runs the operation instead.
            return Ok(ApprovalAdded::QuorumReached);
        }
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(ApprovalAdded::Recorded(u32::try_from(approvals).unwrap_or(u32::MAX)))
    }

    /// Records a rejection. The proposal closes as rejected when its proposer withdraws it or
    /// when M approvals from active admins can no longer be reached (more than N - M active
    /// admins rejected it); otherwise it stays pending, so one admin alone cannot veto. An admin
    /// who approved cannot reject.
    pub async fn add_rejection(&self, rejection: &RejectionRow, record: Record) -> Result<RejectionAdded, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE proposals SET status = status WHERE id = $1 AND status = 'pending' AND expires_unix_ms > $2 \
             RETURNING proposed_by",
        )
        .bind(&rejection.proposal_id)
        .bind(rejection.rejected_unix_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(closed(
                "proposal_closed",
                format!("proposal {} is no longer pending", rejection.proposal_id),
            ));
        };
        let proposer: String = row.try_get("proposed_by")?;
        let quorum = i64::from(locked_quorum(&mut tx).await?);
        lock_active_admin(&mut tx, &rejection.admin_id).await?;
        let withdrawn = rejection.admin_id == proposer;
        if !withdrawn {
            let approved: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM approvals WHERE proposal_id = $1 AND admin_id = $2")
                    .bind(&rejection.proposal_id)
                    .bind(&rejection.admin_id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if approved > 0 {
                return Err(closed(
                    "already_approved",
                    format!(
                        "admin {} approved proposal {}: an approval cannot be turned into a rejection",
                        rejection.admin_id, rejection.proposal_id
                    ),
                ));
            }
        }
        match sqlx::query(
            "INSERT INTO rejections (proposal_id, admin_id, reason, signed_payload, signature, rejected_unix_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&rejection.proposal_id)
        .bind(&rejection.admin_id)
        .bind(&rejection.reason)
        .bind(&rejection.signed_payload)
        .bind(&rejection.signature)
        .bind(rejection.rejected_unix_ms)
        .execute(&mut *tx)
        .await
        {
            Ok(_) => {}
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                return Err(closed(
                    "already_rejected",
                    "this admin has already rejected this proposal",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let rejections: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM rejections r JOIN admins d ON d.id = r.admin_id \
             WHERE r.proposal_id = $1 AND d.removed_unix_ms IS NULL",
        )
        .bind(&rejection.proposal_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let admins: i64 = sqlx::query("SELECT COUNT(*) AS n FROM admins WHERE removed_unix_ms IS NULL")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let closes = withdrawn || rejections > admins - quorum;
        if closes {
            let outcome = if withdrawn {
                format!("withdrawn by {}: {}", rejection.admin_id, rejection.reason)
            } else {
                format!(
                    "rejected: {rejections} of {admins} admins rejected it, so {quorum} approvals can no longer be reached (last: {}: {})",
                    rejection.admin_id, rejection.reason
                )
            };
            sqlx::query(
                "UPDATE proposals SET status = 'rejected', closed_unix_ms = $2, closed_by = $3, outcome = $4 WHERE id = $1",
            )
            .bind(&rejection.proposal_id)
            .bind(rejection.rejected_unix_ms)
            .bind(&rejection.admin_id)
            .bind(outcome)
            .execute(&mut *tx)
            .await?;
        }
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(if closes {
            RejectionAdded::Closed
        } else {
            RejectionAdded::Recorded(u32::try_from(rejections).unwrap_or(u32::MAX))
        })
    }

    /// A proposal's rejections by active admins: (admin, reason, when).
    pub async fn rejections(&self, proposal_id: &str) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
        sqlx::query(
            "SELECT r.admin_id, r.reason, r.rejected_unix_ms FROM rejections r JOIN admins d ON d.id = r.admin_id \
             WHERE r.proposal_id = $1 AND d.removed_unix_ms IS NULL ORDER BY r.rejected_unix_ms, r.admin_id",
        )
        .bind(proposal_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("admin_id")?,
                r.try_get("reason")?,
                r.try_get("rejected_unix_ms")?,
            ))
        })
        .collect()
    }

    /// Closes a pending proposal as failed: its quorum was reached (`approval` is the one that
    /// reached it, recorded too) but the operation was refused. `false` if it was not pending.
    pub async fn fail_proposal(
        &self,
        approval: &ApprovalRow,
        outcome: &str,
        record: Record,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE proposals SET status = 'failed', closed_unix_ms = $2, closed_by = $3, outcome = $4, \
             approvals = approvals + 1 WHERE id = $1 AND status = 'pending' AND expires_unix_ms > $2",
        )
        .bind(&approval.proposal_id)
        .bind(approval.approved_unix_ms)
        .bind(&approval.admin_id)
        .bind(outcome)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !done {
            return Ok(false);
        }
        // Only a quorum can fail a proposal, as only a quorum can execute it.
        let quorum = locked_quorum(&mut tx).await?;
        lock_active_admin(&mut tx, &approval.admin_id).await?;
        refuse_if_rejected(&mut tx, approval).await?;
        insert_new_approval(&mut tx, approval).await?;
        if active_approvals(&mut tx, &approval.proposal_id).await? < i64::from(quorum) {
            return Err(closed(
                "quorum_not_reached",
                format!(
                    "proposal {} no longer has {quorum} approvals from active admins: approve again",
                    approval.proposal_id
                ),
            ));
        }
        append_in_tx(&mut tx, vec![record]).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One proposal.
    pub async fn proposal(&self, id: &str) -> Result<Option<ProposalRow>, sqlx::Error> {
        sqlx::query(&format!("SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| proposal_row(&r))
            .transpose()
    }

    /// Proposals by id after `after`: pending ones (still open at `now`) only, or all.
    pub async fn list_proposals(
        &self,
        include_closed: bool,
        now: i64,
        after: &str,
        limit: u32,
    ) -> Result<Vec<ProposalRow>, sqlx::Error> {
        let filter = if include_closed {
            ""
        } else {
            "AND status = 'pending' AND expires_unix_ms > $3"
        };
        sqlx::query(&format!(
            "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id > $1 {filter} ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(proposal_row)
        .collect()
    }

    /// A proposal's approvals, oldest first.
    pub async fn approvals(&self, proposal_id: &str) -> Result<Vec<ApprovalRow>, sqlx::Error> {
        sqlx::query(
            "SELECT proposal_id, admin_id, signed_payload, signature, approved_unix_ms FROM approvals \
             WHERE proposal_id = $1 ORDER BY approved_unix_ms, admin_id",
        )
        .bind(proposal_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ApprovalRow {
                proposal_id: r.try_get("proposal_id")?,
                admin_id: r.try_get("admin_id")?,
                signed_payload: r.try_get("signed_payload")?,
                signature: r.try_get("signature")?,
                approved_unix_ms: r.try_get("approved_unix_ms")?,
            })
        })
        .collect()
    }

    /// Marks pending proposals past their expiry as expired, each with an audit record, in one
    /// transaction. Returns how many.
    pub async fn expire_proposals(&self, now: i64) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE proposals SET status = 'expired', closed_unix_ms = expires_unix_ms, closed_by = 'system', outcome = 'expired' \
             WHERE status = 'pending' AND expires_unix_ms <= $1 RETURNING id, operation, proposed_by",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut records = Vec::new();
        for r in &rows {
            let id: String = r.try_get("id")?;
            let operation: String = r.try_get("operation")?;
            let proposed_by: String = r.try_get("proposed_by")?;
            records.push(Record {
                time_unix_ms: now,
                caller: "system:proposals".into(),
                operation: "admin.proposal_expired".into(),
                key_id: None,
                outcome: kms_core::audit::Outcome::Allowed.as_str().to_owned(),
                reason: String::new(),
                detail: serde_json::json!({ "proposal": id, "operation": operation, "proposed_by": proposed_by })
                    .to_string(),
            });
        }
        let n = records.len();
        if n > 0 {
            append_in_tx(&mut tx, records).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// M, the approval quorum.
    pub async fn approval_quorum(&self) -> Result<u32, sqlx::Error> {
        let row = sqlx::query("SELECT approval_quorum FROM seal_config WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => u32::try_from(r.try_get::<i64, _>("approval_quorum")?).unwrap_or(u32::MAX),
            None => 1,
        })
    }
}

/// M, read with the seal record's row lock (a concurrent SetQuorum waits or is waited for).
async fn locked_quorum(tx: &mut Transaction<'static, Any>) -> Result<u32, sqlx::Error> {
    let row =
        sqlx::query("UPDATE seal_config SET approval_quorum = approval_quorum WHERE id = 1 RETURNING approval_quorum")
            .fetch_one(&mut **tx)
            .await?;
    Ok(u32::try_from(row.try_get::<i64, _>("approval_quorum")?).unwrap_or(u32::MAX))
}

/// Locks the admin's row and requires it active: a removal that commits first makes this
/// approval (or rejection) fail; one that comes later waits for it.
async fn lock_active_admin(tx: &mut Transaction<'static, Any>, admin_id: &str) -> Result<(), StoreError> {
    let n = sqlx::query("UPDATE admins SET id = id WHERE id = $1 AND removed_unix_ms IS NULL")
        .bind(admin_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if n != 1 {
        return Err(StoreError::Api(ApiError::denied(
            "admin_removed",
            format!("admin {admin_id} was removed"),
        )));
    }
    Ok(())
}

/// An admin who rejected a proposal cannot approve it (or count on both sides).
async fn refuse_if_rejected(tx: &mut Transaction<'static, Any>, approval: &ApprovalRow) -> Result<(), StoreError> {
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM rejections WHERE proposal_id = $1 AND admin_id = $2")
        .bind(&approval.proposal_id)
        .bind(&approval.admin_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    if n > 0 {
        return Err(StoreError::Api(ApiError::precondition(
            "already_rejected",
            format!(
                "admin {} rejected proposal {}: a rejection cannot be turned into an approval",
                approval.admin_id, approval.proposal_id
            ),
        )));
    }
    Ok(())
}

/// Approvals of a proposal by admins who are still active.
async fn active_approvals(tx: &mut Transaction<'static, Any>, proposal_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "SELECT COUNT(*) AS n FROM approvals a JOIN admins d ON d.id = a.admin_id \
         WHERE a.proposal_id = $1 AND d.removed_unix_ms IS NULL",
    )
    .bind(proposal_id)
    .fetch_one(&mut **tx)
    .await?
    .try_get("n")
}

/// Inserts an approval; the primary key on (proposal, admin) refuses a second one.
async fn insert_new_approval(tx: &mut Transaction<'static, Any>, a: &ApprovalRow) -> Result<(), StoreError> {
    insert_approval(tx, a).await.map_err(|e| match StoreError::from(e) {
        StoreError::Conflict => StoreError::Api(ApiError::precondition(
            "already_approved",
            format!("admin {} has already approved proposal {}", a.admin_id, a.proposal_id),
        )),
        other => other,
    })
}

async fn insert_proposal(
    tx: &mut Transaction<'static, Any>,
    p: &ProposalRow,
    status: ProposalStatus,
    closed_by: Option<&str>,
) -> Result<(), sqlx::Error> {
    let executed = status == ProposalStatus::Executed;
    sqlx::query(&format!(
        "INSERT INTO proposals ({PROPOSAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10, $11, $12)"
    ))
    .bind(&p.id)
    .bind(&p.operation)
    .bind(&p.payload)
    .bind(&p.digest)
    .bind(&p.summary)
    .bind(&p.proposed_by)
    .bind(p.created_unix_ms)
    .bind(p.expires_unix_ms)
    .bind(status.as_str())
    .bind(executed.then_some(p.created_unix_ms))
    .bind(closed_by)
    .bind(if executed { "executed" } else { "" })
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_approval(tx: &mut Transaction<'static, Any>, a: &ApprovalRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO approvals (proposal_id, admin_id, signed_payload, signature, approved_unix_ms) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&a.proposal_id)
    .bind(&a.admin_id)
    .bind(&a.signed_payload)
    .bind(&a.signature)
    .bind(a.approved_unix_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn proposal_row(r: &AnyRow) -> Result<ProposalRow, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(ProposalRow {
        id: r.try_get("id")?,
        operation: r.try_get("operation")?,
        payload: r.try_get("payload")?,
        digest: r.try_get("digest")?,
        summary: r.try_get("summary")?,
        proposed_by: r.try_get("proposed_by")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        expires_unix_ms: r.try_get("expires_unix_ms")?,
        approvals: u32::try_from(r.try_get::<i64, _>("approvals")?).unwrap_or(u32::MAX),
        status: ProposalStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Protocol(format!("corrupt proposals row: status {status:?}")))?,
        closed_unix_ms: r.try_get("closed_unix_ms")?,
        closed_by: r.try_get("closed_by")?,
        outcome: r.try_get("outcome")?,
    })
}
