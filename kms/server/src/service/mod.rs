//! gRPC handlers. Handlers are thin: parse the wire message into domain types (INVALID_ARGUMENT
//! if that fails), call the domain, write the audit record, map the error. Protobuf types stop
//! here.

pub mod admin;
pub mod attestation;
pub mod data;
pub(crate) mod hardware;
pub(crate) mod quorum;

use std::collections::BTreeMap;

use kms_core::audit::{Outcome, Record};
use kms_core::context::EncryptionContext;

use crate::audit::AuditLog;
use crate::error::ApiError;
use kms_proto::Reason;

/// What one call's audit record will say, filled in as the call proceeds.
#[derive(Debug)]
pub struct Audit {
    pub(crate) caller: String,
    operation: &'static str,
    key_id: Option<String>,
    detail: serde_json::Map<String, serde_json::Value>,
}

impl Audit {
    /// For a call by `caller` to `operation`.
    pub fn new(caller: impl Into<String>, operation: &'static str) -> Self {
        Self {
            caller: caller.into(),
            operation,
            key_id: None,
            detail: serde_json::Map::new(),
        }
    }

    /// The operation recorded (a quorum call records the operation it runs).
    pub(crate) fn set_operation(&mut self, operation: &'static str) {
        self.operation = operation;
    }

    /// The key concerned.
    pub fn key(&mut self, id: &str) {
        self.key_id = Some(id.to_owned());
    }

    /// A detail (never key material).
    pub fn detail(&mut self, k: &str, v: impl Into<serde_json::Value>) {
        self.detail.insert(k.to_owned(), v.into());
    }

    fn into_record(mut self, outcome: Outcome, reason: &str, message: Option<&str>, extra: Option<&str>) -> Record {
        if let Some(m) = message {
            self.detail.insert("message".into(), m.into());
        }
        if let Some(d) = extra {
            self.detail.insert("refusal_detail".into(), d.into());
        }
        Record {
            time_unix_ms: kms_core::now_unix_ms(),
            caller: self.caller,
            operation: self.operation.to_owned(),
            key_id: self.key_id,
            outcome: outcome.as_str().to_owned(),
            reason: reason.to_owned(),
            detail: serde_json::Value::Object(self.detail).to_string(),
        }
    }

    /// The record of a success.
    pub fn allowed(self) -> Record {
        self.into_record(Outcome::Allowed, "", None, None)
    }

    /// The record of a refusal or failure.
    pub fn failed(self, e: &ApiError) -> Record {
        let outcome = if e.is_refusal() {
            Outcome::Refused
        } else {
            Outcome::Error
        };
        self.into_record(outcome, e.reason.as_str(), Some(&e.message), e.audit_detail.as_deref())
    }
}

/// Ends a call: on success the record is made durable before the response is released (an audit
/// failure turns the success into UNAVAILABLE); on failure the refusal is queued and the error
/// returned.
pub async fn finish<T>(
    log: &AuditLog,
    audit: Audit,
    result: Result<T, ApiError>,
    durable: bool,
) -> Result<tonic::Response<T>, tonic::Status> {
    match result {
        Ok(v) => {
            if durable {
                log.record_durable(audit.allowed()).await?;
            } else {
                log.record(audit.allowed()).await;
            }
            Ok(tonic::Response::new(v))
        }
        Err(e) => {
            if !e.is_refusal() {
                tracing::warn!(operation = audit.operation, reason = %e.reason, message = %e.message, "call failed");
            }
            log.record(audit.failed(&e)).await;
            Err(e.to_status())
        }
    }
}

/// The caller's principal from its client certificate; a call whose caller cannot be
/// identified is refused and audited as `unidentified`.
pub(crate) async fn identify<T>(
    identities: &crate::identity::Identities,
    audit: &AuditLog,
    request: &tonic::Request<T>,
    tls: bool,
    operation: &'static str,
) -> Result<kms_core::ids::Principal, tonic::Status> {
    match identities.principal(request, tls) {
        Ok(p) => Ok(p),
        Err(e) => {
            audit.record(Audit::new("unidentified", operation).failed(&e)).await;
            Err(e.to_status())
        }
    }
}

/// A page size: 1 to 1000, 0 meaning 100.
pub(crate) fn page_size(requested: u32) -> Result<u32, ApiError> {
    match requested {
        0 => Ok(100),
        n @ 1..=1000 => Ok(n),
        n => Err(ApiError::new(
            Reason::InvalidArgument,
            format!("page_size {n}: at most 1000"),
        )),
    }
}

/// Parses a wire encryption context.
pub fn context(map: BTreeMap<String, String>) -> Result<EncryptionContext, ApiError> {
    Ok(EncryptionContext::new(map)?)
}
