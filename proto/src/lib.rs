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

pub mod reason;
pub use reason::Reason;

/// How `kmsd` refusals travel, for every client (kmsctl, kms-agent, tests) and the server alike.
pub mod status {
    /// The response metadata key that carries the server's stable reason code (`kms-reason`).
    pub const REASON_METADATA: &str = "kms-reason";

    /// The stable reason code of a refusal, if the server sent one (a status without it comes from
    /// the transport or TLS layer, not from `kmsd`).
    pub fn reason(status: &tonic::Status) -> Option<&str> {
        status.metadata().get(REASON_METADATA).and_then(|v| v.to_str().ok())
    }

    /// The canonical gRPC name of a status code, e.g. `PERMISSION_DENIED`.
    pub fn code_name(code: tonic::Code) -> &'static str {
        use tonic::Code as C;
        match code {
            C::Ok => "OK",
            C::Cancelled => "CANCELLED",
            C::Unknown => "UNKNOWN",
            C::InvalidArgument => "INVALID_ARGUMENT",
            C::DeadlineExceeded => "DEADLINE_EXCEEDED",
            C::NotFound => "NOT_FOUND",
            C::AlreadyExists => "ALREADY_EXISTS",
            C::PermissionDenied => "PERMISSION_DENIED",
            C::ResourceExhausted => "RESOURCE_EXHAUSTED",
            C::FailedPrecondition => "FAILED_PRECONDITION",
            C::Aborted => "ABORTED",
            C::OutOfRange => "OUT_OF_RANGE",
            C::Unimplemented => "UNIMPLEMENTED",
            C::Internal => "INTERNAL",
            C::Unavailable => "UNAVAILABLE",
            C::DataLoss => "DATA_LOSS",
            C::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// A status's message and its transport causes on one line.
    pub fn detail(status: &tonic::Status) -> String {
        let mut s = status.message().to_owned();
        let mut source = std::error::Error::source(status);
        while let Some(e) = source {
            let text = e.to_string();
            if !s.contains(&text) {
                if !s.is_empty() {
                    s.push_str(": ");
                }
                s.push_str(&text);
            }
            source = e.source();
        }
        s
    }

    /// An error and its causes on one line: transport errors hide the useful part (the OS error,
    /// the certificate problem) in their sources.
    pub fn error_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !s.contains(&text) {
                s.push_str(": ");
                s.push_str(&text);
            }
            source = cause.source();
        }
        s
    }
}
