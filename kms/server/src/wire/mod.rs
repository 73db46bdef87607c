//! The only place protobuf messages become domain types and back (with [`crate::grpc`], which
//! only moves them): one module per service.

pub mod admin;
pub mod attestation;
pub mod hardware;
pub mod key;
pub mod quorum;

use crate::error::ApiError;
use kms_core::context::EncryptionContext;
use kms_proto::Reason;
use std::collections::BTreeMap;

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
