//! The one place that maps domain errors to gRPC statuses. Every refusal carries a stable reason
//! code in the `kms-reason` response metadata (and in the audit log); messages are for humans and
//! never carry key material.

use kms_proto::Reason;
use tonic::{Code, Status};

/// Metadata key of the stable reason code.
pub use kms_proto::status::REASON_METADATA;

/// A refusal or failure: its stable reason (which decides the gRPC code), a message for
/// humans, and what only the audit log is told.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable, machine-readable reason; its [`Reason::code`] is the status code.
    pub reason: Reason,
    /// For humans.
    pub message: String,
    /// More than the caller is told, for the audit log only (e.g. which values failed a policy
    /// condition, the verifier's full refusal).
    pub audit_detail: Option<String>,
}

impl ApiError {
    /// A refusal or failure for `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
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

    /// UNAVAILABLE with reason `sealed`.
    pub fn sealed() -> Self {
        Self::new(
            Reason::Sealed,
            "the server is sealed: custodians must submit their shares (kmsctl unseal)",
        )
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.reason.code()
    }

    /// Whether this is a refusal of the caller's request (as opposed to a server failure).
    pub fn is_refusal(&self) -> bool {
        self.reason.is_refusal()
    }

    /// The status sent to the caller.
    pub fn to_status(&self) -> Status {
        let code = self.code();
        let message = if code == Code::Internal {
            "internal error (see the server log)".to_owned()
        } else {
            self.message.clone()
        };
        let mut status = Status::new(code, message);
        status.metadata_mut().insert(
            REASON_METADATA,
            tonic::metadata::MetadataValue::from_static(self.reason.as_str()),
        );
        status
    }
}

/// The reason for a refused attestation token.
pub fn token_reason(e: &kms_core::token::TokenError) -> Reason {
    use kms_core::token::TokenError as E;
    match e {
        E::Malformed => Reason::TokenMalformed,
        E::UnknownKey => Reason::TokenUnknownKey,
        E::BadSignature => Reason::TokenBadSignature,
        E::Expired => Reason::TokenExpired,
        E::NotYetValid => Reason::TokenNotYetValid,
        E::WrongIssuerOrAudience => Reason::TokenWrongAudience,
        _ => Reason::TokenMalformed,
    }
}

/// The reason for a row or state that is not what `kmsd` wrote.
pub fn violation_reason(kind: crate::storage::ViolationKind) -> Reason {
    use crate::storage::ViolationKind as K;
    match kind {
        K::Integrity => Reason::RowIntegrity,
        K::Rollback => Reason::RowRollback,
        K::StateRollback => Reason::StateRollback,
        K::Substituted => Reason::RowSubstituted,
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
        Self::new(Reason::DatabaseUnavailable, "the database is unavailable")
    }
}

impl From<crate::storage::StoreError> for ApiError {
    fn from(e: crate::storage::StoreError) -> Self {
        use crate::storage::StoreError as E;
        match e {
            E::Conflict => Self::new(Reason::Conflict, "a concurrent change conflicts with this one; retry"),
            E::Db(d) => d.into(),
            E::Sealed => Self::sealed(),
            E::Integrity(v) if v.kind == crate::storage::ViolationKind::Substituted => Self::new(
                Reason::RowSubstituted,
                format!(
                    "the database answered a read with the {} row {}, which the read does not select, so it is not used (an operator must look: see the audit log)",
                    v.table, v.key
                ),
            )
            .with_audit_detail(v.detail),
            E::Integrity(v) => Self::new(
                Reason::RowIntegrity,
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
                Self::new(violation_reason(v.kind), message).with_audit_detail(v.detail)
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
        R::NotInitialized => ApiError::new(Reason::NotInitialized, "the server is not initialized (kmsctl init)"),
        R::AdminNotFound(id) => ApiError::new(Reason::AdminNotFound, format!("no active admin {id}")),
        R::AdminRemoved(id) => ApiError::new(Reason::AdminRemoved, format!("admin {id} was removed")),
        R::QuorumUnreachable {
            admins,
            quorum,
            removing: Some(id),
        } => ApiError::new(
            Reason::QuorumUnreachable,
            format!("removing {id} would leave {admins} admins for an approval quorum of {quorum}: lower the quorum first"),
        ),
        R::QuorumUnreachable { admins, quorum, .. } => ApiError::new(
            Reason::QuorumUnreachable,
            format!("there are {admins} admins: a quorum of {quorum} could never be reached"),
        ),
        R::TooFewCustodians {
            removing,
            custodians,
            threshold,
        } => ApiError::new(
            Reason::TooFewCustodians,
            format!("removing {removing} would leave {custodians} custodians for an unseal threshold of {threshold}: rotate the root key to other custodians first"),
        ),
        R::RotationInProgress => ApiError::new(
            Reason::RotationInProgress,
            "a root key rotation is in progress: wait for it to complete (kmsctl status)",
        ),
        R::GenerationChanged => ApiError::new(
            Reason::RootGenerationBehind,
            "the root key was rotated and this replica still holds the previous generation; retry in a moment",
        ),
        R::RotationRaced => ApiError::new(
            Reason::GenerationChanged,
            "the root key generation changed meanwhile: propose the rotation again",
        ),
        R::TpmEnrollmentUsed => ApiError::new(
            Reason::TpmEnrollmentUsed,
            "the credential challenge was used meanwhile (by another enrolment): the machine must start again (BeginTpmEnrollment)",
        ),
        R::QuorumRequired(quorum) => ApiError::new(
            Reason::QuorumRequired,
            format!("the approval quorum is now {quorum}: propose the operation"),
        ),
        R::ProposalClosed(id) => ApiError::new(
            Reason::ProposalClosed,
            format!("proposal {id} is no longer pending (executed, rejected or expired meanwhile)"),
        ),
        R::QuorumNotReached {
            proposal,
            approvals,
            quorum,
        } => ApiError::new(
            Reason::QuorumNotReached,
            format!("proposal {proposal} has {approvals} of {quorum} approvals from active admins (M or the admins changed meanwhile): approve again"),
        ),
        R::AlreadyApproved {
            admin,
            proposal,
            rejecting: true,
        } => ApiError::new(
            Reason::AlreadyApproved,
            format!("admin {admin} approved proposal {proposal}: an approval cannot be turned into a rejection"),
        ),
        R::AlreadyApproved { admin, proposal, .. } => ApiError::new(
            Reason::AlreadyApproved,
            format!("admin {admin} has already approved proposal {proposal}"),
        ),
        R::AlreadyRejected {
            admin,
            proposal,
            approving: true,
        } => ApiError::new(
            Reason::AlreadyRejected,
            format!("admin {admin} rejected proposal {proposal}: a rejection cannot be turned into an approval"),
        ),
        R::AlreadyRejected { .. } => {
            ApiError::new(Reason::AlreadyRejected, "this admin has already rejected this proposal")
        }
        R::ApprovalInvalid { proposal, admin, what } => ApiError::new(
            Reason::ApprovalInvalid,
            format!("proposal {proposal} cannot run: the stored approval of {admin} does not verify ({what})"),
        ),
        R::VersionOverflow => ApiError::new(Reason::VersionOverflow, "version out of range"),
        R::Internal(what) => ApiError::new(Reason::StorageInvariant, what),
    }
}

impl From<kms_core::Error> for ApiError {
    fn from(e: kms_core::Error) -> Self {
        use kms_core::Error as E;
        match e {
            E::MalformedBlob(_) => Self::new(Reason::MalformedBlob, e.to_string()),
            E::DecryptFailed => Self::new(Reason::DecryptFailed, e.to_string()),
            E::InvalidContext(_) => Self::new(Reason::InvalidContext, e.to_string()),
            E::InvalidId { .. } => Self::new(Reason::InvalidArgument, e.to_string()),
            E::InvalidPolicy { .. } => Self::new(Reason::InvalidPolicy, e.to_string()),
            E::InvalidPublicKey(_) => Self::new(Reason::InvalidPublicKey, e.to_string()),
            E::BadSignature => Self::new(Reason::BadSignature, e.to_string()),
            E::Shamir(_) => Self::new(Reason::InvalidShare, e.to_string()),
            E::KeyCheckMismatch => Self::new(Reason::WrongShareSet, e.to_string()),
            E::InvalidTransition { .. } => Self::new(Reason::InvalidStateTransition, e.to_string()),
            E::Hpke(_) => Self::new(Reason::HpkeFailed, e.to_string()),
            E::UnwrapFailed => Self::new(Reason::KekUnwrapFailed, e.to_string()),
            E::ShareEnvelope(_) => Self::new(Reason::ShareEnvelope, e.to_string()),
            E::Hsm(_) => Self::new(Reason::HsmUnavailable, e.to_string()),
            _ => Self::new(Reason::Internal, e.to_string()),
        }
    }
}
