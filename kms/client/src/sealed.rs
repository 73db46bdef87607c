//! Plaintext sent to `kmsd` sealed to the answering node's HPKE key
//! (`EncryptRequest.sealed_plaintext`, `kms_core::hpke_seal::seal_encrypt_input`): a
//! TLS-terminating relay sees only HPKE ciphertext, and the sealed plaintext opens only in a
//! request for the same key (as named) and encryption context. The node must be one the caller
//! verified: its evidence binds the HPKE key ([`kms_node::NodeStatement::hpke_public_key`]).

use std::collections::BTreeMap;

use kms_core::context::EncryptionContext;
use kms_core::hpke_seal;
use kms_node::VerifiedNode;
use kms_proto::v1 as pb;

use crate::{Reason, Refusal};

/// The request's encryption context, as the seal binds it: a context `kmsd` would refuse is
/// refused here as `kmsd` refuses it (`INVALID_ARGUMENT` / `invalid_context`), before anything
/// is sent.
pub fn context(pairs: &BTreeMap<String, String>) -> Result<EncryptionContext, Refusal> {
    EncryptionContext::new(pairs.clone()).map_err(|e| {
        Refusal::new(Reason::InvalidContext.code(), format!("the encryption context: {e}"))
            .with_reason_name(Reason::InvalidContext.as_str())
    })
}

/// `plaintext` sealed to `node` for an `Encrypt` of `key` (exactly as the request names it)
/// under `context`.
pub fn encrypt_input(
    node: &VerifiedNode,
    key: &str,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<pb::SealedPlaintext, kms_core::Error> {
    let recipient = &node.statement.hpke_public_key;
    let sealed = hpke_seal::seal_encrypt_input(recipient, key, context, plaintext)?;
    Ok(pb::SealedPlaintext {
        node_hpke_public_key: recipient.to_vec(),
        encapsulated_key: sealed.encapsulated_key,
        ciphertext: sealed.ciphertext,
    })
}
