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

/// Answers signed by the answering node, carried as binary response metadata beside the message:
/// the node public key ([`NODE_KEY_METADATA`]) and its Ed25519 signature
/// ([`SIGNATURE_METADATA`]).
///
/// - Every successful answer to a `SignedRequest` (the admin plane) is signed, over
///   `kms_node::message::admin_answer`: the method, the request's payload exactly as the admin
///   signed it, and the answer message exactly as sent.
/// - A `KeyService` answer is signed when the request carries a nonce ([`NONCE_METADATA`], 16 to
///   64 bytes), over `kms_node::message::data_answer`: the method, the request as kmsd decoded
///   it, the nonce and the answer exactly as sent.
///
/// A client checks the signature over the bytes it received ([`crate::codec::RawCodec`]) before
/// it decodes them, under a node it verified (`GetNodeIdentity`).
pub mod answer {
    /// The response metadata key of the node key that signed the answer (32 bytes).
    pub const NODE_KEY_METADATA: &str = "kms-node-key-bin";
    /// The response metadata key of the node's signature over the answer (64 bytes).
    pub const SIGNATURE_METADATA: &str = "kms-node-signature-bin";
    /// The request metadata key of the nonce a `KeyService` caller wants its answer signed
    /// over (16 to 64 random bytes, else `bad_nonce`).
    pub const NONCE_METADATA: &str = "kms-answer-nonce-bin";
}

/// The signed admin plane, for the server and its clients alike: which method each operation
/// belongs to (its answer is signed: [`answer`]).
pub mod admin {
    use crate::v1::admin_request::Operation as Op;

    /// The `AdminService` method an operation must be sent to: its name (as audit records and
    /// signed answers name it) and its gRPC path.
    pub fn method(op: &Op) -> (&'static str, &'static str) {
        match op {
            Op::Init(_) => ("init", "/kms.v1.AdminService/Init"),
            Op::GetEncryptedShare(_) => ("get_encrypted_share", "/kms.v1.AdminService/GetEncryptedShare"),
            Op::Unseal(_) => ("unseal", "/kms.v1.AdminService/Unseal"),
            Op::Seal(_) => ("seal", "/kms.v1.AdminService/Seal"),
            Op::AddAdmin(_) => ("add_admin", "/kms.v1.AdminService/AddAdmin"),
            Op::ListAdmins(_) => ("list_admins", "/kms.v1.AdminService/ListAdmins"),
            Op::CreateKey(_) => ("create_key", "/kms.v1.AdminService/CreateKey"),
            Op::DescribeKey(_) => ("describe_key", "/kms.v1.AdminService/DescribeKey"),
            Op::ListKeys(_) => ("list_keys", "/kms.v1.AdminService/ListKeys"),
            Op::RotateKey(_) => ("rotate_key", "/kms.v1.AdminService/RotateKey"),
            Op::EnableKey(_) => ("enable_key", "/kms.v1.AdminService/EnableKey"),
            Op::DisableKey(_) => ("disable_key", "/kms.v1.AdminService/DisableKey"),
            Op::ScheduleKeyDeletion(_) => ("schedule_key_deletion", "/kms.v1.AdminService/ScheduleKeyDeletion"),
            Op::CancelKeyDeletion(_) => ("cancel_key_deletion", "/kms.v1.AdminService/CancelKeyDeletion"),
            Op::SetReleasePolicy(_) => ("set_release_policy", "/kms.v1.AdminService/SetReleasePolicy"),
            Op::EnrollHardware(_) => ("enroll_hardware", "/kms.v1.AdminService/EnrollHardware"),
            Op::DescribeHardware(_) => ("describe_hardware", "/kms.v1.AdminService/DescribeHardware"),
            Op::ListHardware(_) => ("list_hardware", "/kms.v1.AdminService/ListHardware"),
            Op::RevokeHardware(_) => ("revoke_hardware", "/kms.v1.AdminService/RevokeHardware"),
            Op::Propose(_) => ("propose", "/kms.v1.AdminService/Propose"),
            Op::Approve(_) => ("approve", "/kms.v1.AdminService/Approve"),
            Op::Reject(_) => ("reject", "/kms.v1.AdminService/Reject"),
            Op::DescribeProposal(_) => ("describe_proposal", "/kms.v1.AdminService/DescribeProposal"),
            Op::ListProposals(_) => ("list_proposals", "/kms.v1.AdminService/ListProposals"),
        }
    }
}

/// Codecs beside tonic-prost's.
pub mod codec {
    use prost::bytes::{Buf as _, BufMut as _};

    /// A gRPC codec that sends and receives messages as their encoded bytes, so a client can
    /// check a signature over an answer exactly as it arrived (a decoded and re-encoded message
    /// would lose the fields a newer server added), and a proxy can forward what it never decodes.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct RawCodec;

    /// [`RawCodec`]'s encoder and decoder.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct RawCoder;

    impl tonic::codec::Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawCoder;
        type Decoder = RawCoder;

        fn encoder(&mut self) -> RawCoder {
            RawCoder
        }

        fn decoder(&mut self) -> RawCoder {
            RawCoder
        }
    }

    impl tonic::codec::Encoder for RawCoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;

        fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl tonic::codec::Decoder for RawCoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;

        fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let mut out = vec![0; src.remaining()];
            src.copy_to_slice(&mut out);
            Ok(Some(out))
        }
    }
}
