//! The use cases: what each call does once its message is decoded, on typed inputs, against the
//! store, the seal and the keys. The gRPC layer ([`crate::grpc`]) calls these; nothing here builds
//! a status.

pub mod admin;
pub mod attestation;
pub mod data;
pub(crate) mod hardware;
pub(crate) mod quorum;
pub(crate) mod rotation;

#[cfg(test)]
pub(crate) mod testkit;
