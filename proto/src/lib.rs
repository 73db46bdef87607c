//! The kms.v1 wire types and gRPC stubs, generated from `kms/v1/kms.proto` at build time.
//!
//! Protobuf types stop at the server's handlers and the clients' call sites: domain code in
//! `kms-core` never sees them.
#![allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]

/// Package `kms.v1`.
pub mod v1 {
    tonic::include_proto!("kms.v1");

    /// The encoded `FileDescriptorSet`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kms_v1_descriptor");
}
