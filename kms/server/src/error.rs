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
