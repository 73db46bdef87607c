//! Data-plane messages: domain results to protobuf.

use kms_proto::v1 as pb;

use kms_core::hpke_seal::Sealed;
use kms_proto::Reason;

use crate::attest::SealedRelease;
use crate::error::ApiError;
use crate::keys::{EncryptInput, Plaintext, ReEncrypted, Released, Wrapped};

/// What an `EncryptRequest` asks to wrap: `plaintext`, or `sealed_plaintext` (not both; taken
/// from the request, not copied).
pub(crate) fn encrypt_input(
    plaintext: &[u8],
    sealed: Option<pb::SealedPlaintext>,
) -> Result<EncryptInput<'_>, ApiError> {
    let Some(s) = sealed else {
        return Ok(EncryptInput::Clear(plaintext));
    };
    let bad = |m: String| ApiError::new(Reason::BadSealedPlaintext, m);
    if !plaintext.is_empty() {
        return Err(bad("plaintext and sealed_plaintext are both set: send one".to_owned()));
    }
    let recipient: [u8; 32] = s.node_hpke_public_key.as_slice().try_into().map_err(|_| {
        bad(format!(
            "sealed_plaintext.node_hpke_public_key is {} bytes, not 32",
            s.node_hpke_public_key.len()
        ))
    })?;
    if s.encapsulated_key.len() != 32 {
        return Err(bad(format!(
            "sealed_plaintext.encapsulated_key is {} bytes, not 32",
            s.encapsulated_key.len()
        )));
    }
    // AES-256-GCM adds its 16-byte tag: a longer seal holds more than may be encrypted, and is
    // refused before anything is opened, as a long plaintext is before its key is looked up.
    if s.ciphertext.len() > kms_core::blob::MAX_PLAINTEXT + 16 {
        return Err(ApiError::new(
            Reason::PlaintextTooLong,
            format!(
                "sealed_plaintext.ciphertext is {} bytes: it holds more than the {} bytes that may be encrypted",
                s.ciphertext.len(),
                kms_core::blob::MAX_PLAINTEXT
            ),
        ));
    }
    Ok(EncryptInput::Sealed {
        recipient,
        sealed: Sealed {
            encapsulated_key: s.encapsulated_key,
            ciphertext: s.ciphertext,
        },
    })
}

/// An attested release as sent.
pub(crate) fn sealed_to_wire(s: SealedRelease) -> pb::SealedKey {
    pb::SealedKey {
        encapsulated_key: s.encapsulated_key,
        ciphertext: s.ciphertext,
        node_public_key: s.node_public_key,
        node_signature: s.node_signature,
    }
}

/// Plaintext as the two response fields carry it: in the clear, or sealed (never both).
fn plaintext_to_wire(p: Plaintext) -> (Vec<u8>, Option<pb::SealedKey>) {
    match p {
        Plaintext::Clear(p) => (p.into_exposed(), None),
        Plaintext::Sealed(s) => (Vec::new(), Some(sealed_to_wire(s))),
    }
}

pub(crate) fn generate_data_key_to_wire((wrapped, released): (Wrapped, Released)) -> pb::GenerateDataKeyResponse {
    let (plaintext, sealed_plaintext) = plaintext_to_wire(released.plaintext);
    pb::GenerateDataKeyResponse {
        ciphertext_blob: wrapped.blob,
        plaintext,
        key_id: wrapped.key_id.to_string(),
        key_version: wrapped.version.get(),
        sealed_plaintext,
    }
}

pub(crate) fn without_plaintext_to_wire(w: Wrapped) -> pb::GenerateDataKeyWithoutPlaintextResponse {
    pb::GenerateDataKeyWithoutPlaintextResponse {
        ciphertext_blob: w.blob,
        key_id: w.key_id.to_string(),
        key_version: w.version.get(),
    }
}

pub(crate) fn encrypt_to_wire(w: Wrapped) -> pb::EncryptResponse {
    pb::EncryptResponse {
        ciphertext_blob: w.blob,
        key_id: w.key_id.to_string(),
        key_version: w.version.get(),
    }
}

pub(crate) fn decrypt_to_wire(r: Released) -> pb::DecryptResponse {
    let (plaintext, sealed_plaintext) = plaintext_to_wire(r.plaintext);
    pb::DecryptResponse {
        plaintext,
        key_id: r.key_id.to_string(),
        key_version: r.version.get(),
        sealed_plaintext,
    }
}

pub(crate) fn re_encrypt_to_wire(r: ReEncrypted) -> pb::ReEncryptResponse {
    pb::ReEncryptResponse {
        ciphertext_blob: r.wrapped.blob,
        source_key_id: r.source_key_id.to_string(),
        source_key_version: r.source_version.get(),
        key_id: r.wrapped.key_id.to_string(),
        key_version: r.wrapped.version.get(),
    }
}
