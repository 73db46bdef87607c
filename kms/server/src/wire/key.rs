//! Data-plane messages: domain results to protobuf.

use kms_proto::v1 as pb;

use crate::attest::SealedRelease;

/// An attested release as sent.
pub(crate) fn sealed_to_wire(s: SealedRelease) -> pb::SealedKey {
    pb::SealedKey {
        encapsulated_key: s.encapsulated_key,
        ciphertext: s.ciphertext,
        node_public_key: s.node_public_key,
        node_signature: s.node_signature,
    }
}
