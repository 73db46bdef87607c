//! The tonic service implementations, and nothing else: identify or authenticate the caller,
//! decode the message (with [`crate::wire`]; INVALID_ARGUMENT if that fails), call the operation
//! in [`crate::ops`], encode the answer, finish the call's audit record and map the error.

pub mod admin;
pub mod attestation;
pub mod key;
pub mod metered;

use crate::audit::{Audit, AuditLog};
use crate::error::ApiError;
use crate::node::Node;
use kms_proto::answer::{NODE_KEY_METADATA, NONCE_METADATA, SIGNATURE_METADATA};
use kms_proto::Reason;
use tonic::metadata::MetadataValue;

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

/// `response` with the node's signature (`kms_proto::answer`) over `message(answer bytes)`: the
/// answer's bytes as tonic will send them (prost writes a message one way every time).
pub(crate) fn signed<T: prost::Message>(
    node: &Node,
    mut response: tonic::Response<T>,
    message: impl FnOnce(&[u8]) -> Vec<u8>,
) -> tonic::Response<T> {
    let signature = node.sign_answer(&message(&response.get_ref().encode_to_vec()));
    let metadata = response.metadata_mut();
    metadata.insert_bin(NODE_KEY_METADATA, MetadataValue::from_bytes(&node.public_key()));
    metadata.insert_bin(SIGNATURE_METADATA, MetadataValue::from_bytes(&signature));
    response
}

/// What a `KeyService` caller asked its answer to be signed over: its nonce
/// (`kms-answer-nonce-bin`) and its request, as decoded here and encoded again.
pub(crate) struct SignFor {
    nonce: Vec<u8>,
    request: Vec<u8>,
}

impl SignFor {
    /// `None` without a nonce; `bad_nonce` for one that is not 16 to 64 bytes.
    pub(crate) fn asked<T: prost::Message>(request: &tonic::Request<T>) -> Result<Option<Self>, ApiError> {
        let Some(value) = request.metadata().get_bin(NONCE_METADATA) else {
            return Ok(None);
        };
        let nonce = value
            .to_bytes()
            .ok()
            .filter(|n| (16..=64).contains(&n.len()))
            .ok_or_else(|| {
                ApiError::new(
                    Reason::BadNonce,
                    format!("{NONCE_METADATA}: 16 to 64 random bytes, base64 as gRPC binary metadata"),
                )
            })?;
        Ok(Some(Self {
            nonce: nonce.to_vec(),
            request: request.get_ref().encode_to_vec(),
        }))
    }

    /// `response`, signed over `method` (as audit records name it) if the caller asked.
    pub(crate) fn answer<T: prost::Message>(
        this: Option<Self>,
        node: &Node,
        method: &str,
        response: tonic::Response<T>,
    ) -> tonic::Response<T> {
        match this {
            None => response,
            Some(s) => signed(node, response, |answer| {
                kms_node::message::data_answer(method, &s.request, &s.nonce, answer)
            }),
        }
    }
}

/// The nonce of an unauthenticated read whose answer the node signs (`GetTokenKeys`,
/// `GetAuditCheckpointKeys`): empty, or 16 to 64 bytes (`bad_nonce`).
pub(crate) fn optional_nonce(nonce: &[u8]) -> Result<(), tonic::Status> {
    if nonce.is_empty() || (16..=64).contains(&nonce.len()) {
        Ok(())
    } else {
        Err(ApiError::new(Reason::BadNonce, "nonce: empty, or 16 to 64 random bytes").to_status())
    }
}
