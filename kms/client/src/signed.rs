//! Calls whose answer the answering node signs ([`kms_proto::answer`]): the request goes out and
//! the answer comes back as bytes (a raw codec), so the signature is checked over exactly what
//! arrived, before anything decodes it. Which node keys are trusted is the caller's to decide
//! (kmsctl and kms-agent each keep the nodes they verified); [`SignedAnswer::check`] does the
//! rest.

use kms_node::{NodeError, VerifiedNode};
use kms_proto::answer::{NODE_KEY_METADATA, NONCE_METADATA, SIGNATURE_METADATA};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// An answer as received: its bytes, and the node key and signature that came with it.
pub struct SignedAnswer {
    message: Vec<u8>,
    node_key: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
}

impl SignedAnswer {
    /// The key of the node that says it signed the answer; [`NodeError::Unsigned`] if the
    /// answer carries no key or no signature.
    pub fn node_key(&self) -> Result<&[u8], NodeError> {
        match (&self.node_key, &self.signature) {
            (Some(k), Some(_)) => Ok(k),
            _ => Err(NodeError::Unsigned("the answer")),
        }
    }

    /// The answer's bytes, once `node` (the verified node holding [`SignedAnswer::node_key`])
    /// signed `message(answer bytes)`.
    pub fn check(&self, node: &VerifiedNode, message: impl FnOnce(&[u8]) -> Vec<u8>) -> Result<&[u8], NodeError> {
        let signature = self.signature.as_deref().ok_or(NodeError::Unsigned("the answer"))?;
        if self.node_key.as_deref() != Some(&node.public_key[..]) {
            return Err(NodeError::UnknownNode(kms_node::node_id(
                self.node_key.as_deref().unwrap_or_default(),
            )));
        }
        node.check("the answer", &message(&self.message), signature)?;
        Ok(&self.message)
    }
}

/// Sends the encoded `request` to the gRPC method at `path` (`/kms.v1.AdminService/Seal`), with
/// `nonce` as `kms-answer-nonce-bin` when given (a `KeyService` call signs its answer only then).
pub async fn call(
    channel: &Channel,
    path: &'static str,
    request: Vec<u8>,
    nonce: Option<&[u8]>,
) -> Result<SignedAnswer, tonic::Status> {
    let mut call = tonic::Request::new(request);
    if let Some(nonce) = nonce {
        call.metadata_mut()
            .insert_bin(NONCE_METADATA, MetadataValue::from_bytes(nonce));
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the connection is not ready: {e}")))?;
    let response = grpc
        .unary(call, PathAndQuery::from_static(path), kms_proto::codec::RawCodec)
        .await?;
    let bin = |key: &str| {
        response
            .metadata()
            .get_bin(key)
            .and_then(|v| v.to_bytes().ok())
            .map(|b| b.to_vec())
    };
    let (node_key, signature) = (bin(NODE_KEY_METADATA), bin(SIGNATURE_METADATA));
    Ok(SignedAnswer {
        message: response.into_inner(),
        node_key,
        signature,
    })
}
