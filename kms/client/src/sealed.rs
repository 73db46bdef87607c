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

/// `plaintext` sealed to `node` for an `Encrypt` of `key` (exactly as the request names it)
/// under `context`.
pub fn encrypt_input(
    node: &VerifiedNode,
    key: &str,
    context: &BTreeMap<String, String>,
    plaintext: &[u8],
) -> Result<pb::SealedPlaintext, kms_core::Error> {
    let context = EncryptionContext::new(context.clone())?;
    let recipient = &node.statement.hpke_public_key;
    let sealed = hpke_seal::seal_encrypt_input(recipient, key, &context, plaintext)?;
    Ok(pb::SealedPlaintext {
        node_hpke_public_key: recipient.to_vec(),
        encapsulated_key: sealed.encapsulated_key,
        ciphertext: sealed.ciphertext,
    })
}
