//! The one place that maps domain errors to gRPC statuses. Every refusal carries a stable reason
//! code in the `kms-reason` response metadata (and in the audit log); messages are for humans and
//! never carry key material.

use tonic::{Code, Status};

/// Metadata key of the stable reason code.
pub use kms_proto::status::REASON_METADATA;

/// A refusal or failure, with its gRPC code and stable reason.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The gRPC code.
    pub code: Code,
    /// Stable, machine-readable reason (snake_case).
    pub reason: &'static str,
    /// For humans.
    pub message: String,
    /// More than the caller is told, for the audit log only (e.g. which values failed a policy
    /// condition, the verifier's full refusal).
    pub audit_detail: Option<String>,
}

impl ApiError {
    fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            audit_detail: None,
        }
    }

    /// Adds a detail for the audit log that the caller does not see.
    pub fn with_audit_detail(mut self, detail: impl Into<String>) -> Self {
        self.audit_detail = Some(detail.into());
        self
    }

    /// INVALID_ARGUMENT.
    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, reason, message)
    }

    /// PERMISSION_DENIED.
    pub fn denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, reason, message)
    }

    /// FAILED_PRECONDITION.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, reason, message)
    }

    /// NOT_FOUND.
    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason, message)
    }

    /// ALREADY_EXISTS.
    pub fn exists(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, reason, message)
    }

    /// RESOURCE_EXHAUSTED: a per-caller limit.
    pub fn exhausted(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, reason, message)
    }

    /// UNAVAILABLE with reason `sealed`.
    pub fn sealed() -> Self {
        Self::new(
            Code::Unavailable,
            "sealed",
            "the server is sealed: custodians must submit their shares (kmsctl unseal)",
        )
    }

    /// UNAVAILABLE: a dependency (database, audit) failed; the operation did not take effect or
    /// was not acknowledged.
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, reason, message)
    }

    /// INTERNAL: a bug or corrupted state. The message is logged, not sent.
    pub fn internal(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Internal, reason, message)
    }

    /// Whether this is a refusal of the caller's request (as opposed to a server failure).
    pub fn is_refusal(&self) -> bool {
        !matches!(self.code, Code::Internal | Code::Unavailable | Code::Unknown)
    }

    /// The status sent to the caller.
    pub fn to_status(&self) -> Status {
        let message = if self.code == Code::Internal {
            "internal error (see the server log)".to_owned()
        } else {
            self.message.clone()
        };
        let mut status = Status::new(self.code, message);
        if let Ok(v) = self.reason.parse() {
            status.metadata_mut().insert(REASON_METADATA, v);
        }
        status
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        Self::unavailable("database_unavailable", "the database is unavailable")
    }
}

impl From<crate::storage::StoreError> for ApiError {
    fn from(e: crate::storage::StoreError) -> Self {
        use crate::storage::StoreError as E;
        match e {
            E::Conflict => Self::exists("conflict", "a concurrent change conflicts with this one; retry"),
            E::Db(d) => d.into(),
            E::Sealed => Self::sealed(),
            E::Integrity(v) => Self::precondition(
                "row_integrity",
                format!(
                    "the {} row {} in the database is not as kmsd wrote it, so it is not used (an operator must look: see the audit log)",
                    v.table, v.key
                ),
            )
            .with_audit_detail(v.detail),
            E::Rollback(v) => {
                let message = match v.kind {
                    crate::storage::ViolationKind::StateRollback => format!(
                        "the database went back behind a state this server saw ({}): nothing is served until an operator restores it and restarts kmsd",
                        v.detail
                    ),
                    _ => format!(
                        "the {} row {} in the database is an older version than kmsd last wrote, or was removed, so it is not used (an operator must look: see the audit log)",
                        v.table, v.key
                    ),
                };
                Self::precondition(v.kind.reason(), message).with_audit_detail(v.detail)
            }
            E::Refused(r) => refusal(r),
            E::Crypto(c) => c.into(),
        }
    }
}

/// The wire form of a refusal decided inside a transaction.
fn refusal(r: crate::storage::Refusal) -> ApiError {
    use crate::storage::Refusal as R;
    match r {
        R::NotInitialized => ApiError::precondition("not_initialized", "the server is not initialized (kmsctl init)"),
        R::AdminNotFound(id) => ApiError::not_found("admin_not_found", format!("no active admin {id}")),
        R::AdminRemoved(id) => ApiError::denied("admin_removed", format!("admin {id} was removed")),
        R::QuorumUnreachable {
            admins,
            quorum,
            removing: Some(id),
        } => ApiError::precondition(
            "quorum_unreachable",
            format!("removing {id} would leave {admins} admins for an approval quorum of {quorum}: lower the quorum first"),
        ),
        R::QuorumUnreachable { admins, quorum, .. } => ApiError::precondition(
            "quorum_unreachable",
            format!("there are {admins} admins: a quorum of {quorum} could never be reached"),
        ),
        R::TooFewCustodians {
            removing,
            custodians,
            threshold,
        } => ApiError::precondition(
            "too_few_custodians",
            format!("removing {removing} would leave {custodians} custodians for an unseal threshold of {threshold}: rotate the root key to other custodians first"),
        ),
        R::RotationInProgress => ApiError::precondition(
            "rotation_in_progress",
            "a root key rotation is in progress: wait for it to complete (kmsctl status)",
        ),
        R::GenerationChanged => ApiError::unavailable(
            "generation_changed",
            "the root key was rotated and this replica still holds the previous generation; retry in a moment",
        ),
        R::RotationRaced => ApiError::precondition(
            "generation_changed",
            "the root key generation changed meanwhile: propose the rotation again",
        ),
        R::TpmEnrollmentUsed => ApiError::precondition(
            "tpm_enrollment_used",
            "the credential challenge was used meanwhile (by another enrolment): the machine must start again (BeginTpmEnrollment)",
        ),
        R::QuorumRequired(quorum) => ApiError::precondition(
            "quorum_required",
            format!("the approval quorum is now {quorum}: propose the operation"),
        ),
        R::ProposalClosed(id) => ApiError::precondition(
            "proposal_closed",
            format!("proposal {id} is no longer pending (executed, rejected or expired meanwhile)"),
        ),
        R::QuorumNotReached {
            proposal,
            approvals,
            quorum,
        } => ApiError::precondition(
            "quorum_not_reached",
            format!("proposal {proposal} has {approvals} of {quorum} approvals from active admins (M or the admins changed meanwhile): approve again"),
        ),
        R::AlreadyApproved {
            admin,
            proposal,
            rejecting: true,
        } => ApiError::precondition(
            "already_approved",
            format!("admin {admin} approved proposal {proposal}: an approval cannot be turned into a rejection"),
        ),
        R::AlreadyApproved { admin, proposal, .. } => ApiError::precondition(
            "already_approved",
            format!("admin {admin} has already approved proposal {proposal}"),
        ),
        R::AlreadyRejected {
            admin,
            proposal,
            approving: true,
        } => ApiError::precondition(
            "already_rejected",
            format!("admin {admin} rejected proposal {proposal}: a rejection cannot be turned into an approval"),
        ),
        R::AlreadyRejected { .. } => {
            ApiError::precondition("already_rejected", "this admin has already rejected this proposal")
        }
        R::ApprovalInvalid { proposal, admin, what } => ApiError::precondition(
            "approval_invalid",
            format!("proposal {proposal} cannot run: the stored approval of {admin} does not verify ({what})"),
        ),
        R::VersionOverflow => ApiError::internal("version_overflow", "version out of range"),
        R::Internal(what) => ApiError::internal("storage_invariant", what),
    }
}

impl From<kms_core::Error> for ApiError {
    fn from(e: kms_core::Error) -> Self {
        use kms_core::Error as E;
        match e {
            E::MalformedBlob(_) => Self::invalid("malformed_blob", e.to_string()),
            E::DecryptFailed => Self::invalid("decrypt_failed", e.to_string()),
            E::InvalidContext(_) => Self::invalid("invalid_context", e.to_string()),
            E::InvalidId { .. } => Self::invalid("invalid_argument", e.to_string()),
            E::InvalidPolicy { .. } => Self::invalid("invalid_policy", e.to_string()),
            E::InvalidPublicKey(_) => Self::invalid("invalid_public_key", e.to_string()),
            E::BadSignature => Self::denied("bad_signature", e.to_string()),
            E::Shamir(_) => Self::invalid("invalid_share", e.to_string()),
            E::KeyCheckMismatch => Self::invalid("wrong_share_set", e.to_string()),
            E::InvalidTransition { .. } => Self::precondition("invalid_state_transition", e.to_string()),
            E::Hpke(_) => Self::internal("hpke_failed", e.to_string()),
            E::UnwrapFailed => Self::internal("kek_unwrap_failed", e.to_string()),
            E::ShareEnvelope(_) => Self::internal("share_envelope", e.to_string()),
            E::Hsm(_) => Self::unavailable("hsm_unavailable", e.to_string()),
            _ => Self::internal("internal", e.to_string()),
        }
    }
}
