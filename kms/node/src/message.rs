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

#[cfg(test)]
mod tests {
    use super::*;

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
