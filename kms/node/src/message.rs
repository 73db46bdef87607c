//! The messages a node key signs. Each is a label naming what it is, then its fields, each as a
//! u32 big-endian length and the bytes (integers as 8 bytes big-endian), so no field can run
//! into the next and no message of one kind can be read as another.

fn encode(label: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + fields.iter().map(|f| f.len() + 4).sum::<usize>());
    out.extend_from_slice(label);
    for f in fields {
        out.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The seal status a node answers `GetNodeIdentity` with: `"kms-node-status-v1\0"`, the
/// statement's SHA-256, the caller's nonce, and the serialized `SealStatus` exactly as sent.
/// Proves the answer is fresh, comes from the node the statement names, and that this is its
/// status (unseal key, check value, deployment, generation).
pub fn status(statement_digest: &[u8; 32], nonce: &[u8], status: &[u8]) -> Vec<u8> {
    encode(b"kms-node-status-v1\0", &[statement_digest, nonce, status])
}

/// An Attest answer, as the workload asked for it and received it: `"kms-attest-answer-v1\0"`,
/// the challenge nonce and HPKE public key of the request, then the answer's token, token id,
/// expiry (i64), claims JSON and hardware id.
pub struct AttestAnswer<'a> {
    /// The request's challenge nonce.
    pub nonce: &'a [u8],
    /// The request's HPKE public key.
    pub hpke_public_key: &'a [u8],
    /// The token.
    pub token: &'a str,
    /// Its id.
    pub token_id: &'a str,
    /// Its expiry (ms since the Unix epoch).
    pub expires_unix_ms: i64,
    /// The claims JSON.
    pub claims_json: &'a str,
    /// The hardware id.
    pub hardware_id: &'a str,
}

impl AttestAnswer<'_> {
    /// The signed encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode(
            b"kms-attest-answer-v1\0",
            &[
                self.nonce,
                self.hpke_public_key,
                self.token.as_bytes(),
                self.token_id.as_bytes(),
                &self.expires_unix_ms.to_be_bytes(),
                self.claims_json.as_bytes(),
                self.hardware_id.as_bytes(),
            ],
        )
    }
}

/// A sealed release: `"kms-release-sig-v1\0"`, the HPKE `info` (which names the operation, key,
/// version, token and the workload's request nonce), the ciphertext blob (the HPKE `aad`), the
/// encapsulated key and the HPKE ciphertext. Someone else's data key sealed to the workload's
/// key, even with the right `info`, carries no such signature.
pub fn release(info: &[u8], blob: &[u8], encapsulated_key: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    encode(b"kms-release-sig-v1\0", &[info, blob, encapsulated_key, ciphertext])
}

/// The audit checkpoint keys a node publishes: `"kms-checkpoint-keys-v1\0"`, the caller's nonce
/// (empty if it sent none), the number of keys (u64), then for each its kid, algorithm, public
/// key, and creation and retirement times (i64, 0 while in use). An auditor pins keys only under
/// a verified node's signature over its own fresh nonce.
pub fn checkpoint_keys(nonce: &[u8], keys: &[kms_proto::v1::AuditCheckpointKey]) -> Vec<u8> {
    let count = u64::try_from(keys.len()).unwrap_or(u64::MAX).to_be_bytes();
    let times: Vec<([u8; 8], [u8; 8])> = keys
        .iter()
        .map(|k| (k.created_unix_ms.to_be_bytes(), k.retired_unix_ms.to_be_bytes()))
        .collect();
    let mut fields: Vec<&[u8]> = vec![nonce, &count];
    for (k, (created, retired)) in keys.iter().zip(&times) {
        fields.extend([
            k.kid.as_bytes(),
            k.algorithm.as_bytes(),
            &k.public_key,
            created,
            retired,
        ]);
    }
    encode(b"kms-checkpoint-keys-v1\0", &fields)
}

/// The token verification keys a node serves: `"kms-token-keys-v1\0"`, the caller's nonce (empty
/// if it sent none) and the JWKS exactly as sent. A relying party that verifies tokens with keys
/// a proxy chose would accept the proxy's tokens.
pub fn token_keys(nonce: &[u8], jwks_json: &str) -> Vec<u8> {
    encode(b"kms-token-keys-v1\0", &[nonce, jwks_json.as_bytes()])
}

/// The answer to a signed admin request: `"kms-admin-answer-v1\0"`, the method's name (as
/// `kms_proto::admin::method` gives it), the request's payload exactly as the admin signed it
/// (its fresh nonce makes the answer unreplayable) and the answer message exactly as sent. A
/// proxy can drop the answer or refuse in kmsd's name, but not claim that kmsd did something.
pub fn admin_answer(method: &str, request_payload: &[u8], answer: &[u8]) -> Vec<u8> {
    encode(b"kms-admin-answer-v1\0", &[method.as_bytes(), request_payload, answer])
}

/// A `KeyService` answer the caller asked to be signed: `"kms-data-answer-v1\0"`, the method's
/// name (as audit records name it: `encrypt`, `generate_data_key`, …), the SHA-256 of the
/// request message (as the client encoded it, and as kmsd re-encodes what it decoded: prost
/// writes a message one way, maps in key order), the caller's nonce, and the answer message
/// exactly as sent. A proxy cannot hand the caller another genuine answer (another request's,
/// or an older one) nor change the request it forwards.
pub fn data_answer(method: &str, request: &[u8], nonce: &[u8], answer: &[u8]) -> Vec<u8> {
    let request_sha256 = ring::digest::digest(&ring::digest::SHA256, request);
    encode(
        b"kms-data-answer-v1\0",
        &[method.as_bytes(), request_sha256.as_ref(), nonce, answer],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently by `test_data/release-signature.py` (pyca/cryptography's
    /// Ed25519, the encoding written out there); the vector of docs/attested-release.md.
    #[test]
    fn python_release_signature_vector() {
        let h = |s: &str| hex::decode(s).unwrap();
        let key = crate::NodeKey::from_seed(&[0x42; 32]);
        assert_eq!(
            key.public_key().to_vec(),
            h("2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12")
        );
        let info = kms_core::hpke_seal::release_info(
            "generate_data_key",
            "k-00112233445566778899aabbccddeeff",
            7,
            "0123456789abcdef0123456789abcdef",
            &[0x3c; 32],
            &[0x5d; 16],
        );
        let message = release(
            &info,
            b"blob: key id, version and encryption context",
            &[0x11; 32],
            &[0x22; 48],
        );
        assert_eq!(
            message,
            h(concat!(
                "6b6d732d72656c656173652d7369672d763100000000986b6d732d72656c656173652d76320067656e65",
                "726174655f646174615f6b6579006b2d3030313132323333343435353636373738383939616162626363",
                "646465656666000000000730313233343536373839616263646566303132333435363738396162636465",
                "663c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c5d5d5d5d5d5d5d5d5d",
                "5d5d5d5d5d5d5d0000002c626c6f623a206b65792069642c2076657273696f6e20616e6420656e637279",
                "7074696f6e20636f6e746578740000002011111111111111111111111111111111111111111111111111",
                "111111111111110000003022222222222222222222222222222222222222222222222222222222222222",
                "2222222222222222222222222222222222"
            ))
        );
        let signature = h(concat!(
            "d60fc339c8f40f7a8b574d39d45f6610553a4a9ec80d07940b1ccb887ec5a514",
            "c2420d93f7b3fe4966f4505d51a9d53fa62de5c7b838de899783f7835e559001"
        ));
        assert_eq!(key.sign(&message).to_vec(), signature);
        assert!(crate::verify_signature(&key.public_key(), &message, &signature));
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        assert_ne!(release(b"ab", b"c", b"", b""), release(b"a", b"bc", b"", b""));
        assert_ne!(status(&[0; 32], b"n", b""), status(&[0; 32], b"", b"n"));
        let a = AttestAnswer {
            nonce: b"n",
            hpke_public_key: b"k",
            token: "t",
            token_id: "i",
            expires_unix_ms: 1,
            claims_json: "{}",
            hardware_id: "hw",
        };
        let mut b = a.encode();
        assert_eq!(&b[..21], b"kms-attest-answer-v1\0");
        b[21 + 4] ^= 1;
        assert_ne!(a.encode(), b);
    }
}
