//! The tonic service implementations, and nothing else: identify or authenticate the caller,
//! decode the message (with [`crate::wire`]; INVALID_ARGUMENT if that fails), call the operation
//! in [`crate::ops`], encode the answer, finish the call's audit record and map the error.

pub mod admin;
pub mod attestation;
pub mod key;
pub mod metered;

use crate::audit::{Audit, AuditLog};
use crate::error::ApiError;

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
