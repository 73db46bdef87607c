//! An attested session: the token the server issued for this workload's evidence, and the HPKE
//! private key the token names. Released keys arrive HPKE-sealed to that key and are opened here,
//! after the answer has been checked: no plaintext on the wire, a sealed key present, the key id
//! and version the blob names, the HPKE `info` of this operation, key version and token.
//!
//! The HPKE private key never leaves this module: no accessor, no `Debug`, no `Clone`, and it is
//! zeroized on drop. The token is a bearer credential bound to that key; it is not logged either.

use std::collections::BTreeMap;

use kms_core::blob::Blob;
use kms_core::context::EncryptionContext;
use kms_core::hpke_seal::{release_info, release_request, ReleaseKey, Sealed};
use kms_core::ids::KeyId;
use kms_core::secret::SecretBytes;
use kms_proto::v1 as pb;
use zeroize::{Zeroize as _, Zeroizing};

use crate::client::Client;
use crate::error::Error;
use crate::evidence::{EvidenceRequest, EvidenceSource};
use kms_node::VerifiedNode;

/// The length of a data key.
pub const DATA_KEY_LEN: usize = 32;

/// The operations that release a secret, as the HPKE `info` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseOperation {
    /// GenerateDataKey.
    GenerateDataKey,
    /// Decrypt.
    Decrypt,
}

impl ReleaseOperation {
    /// The name bound into the HPKE `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GenerateDataKey => "generate_data_key",
            Self::Decrypt => "decrypt",
        }
    }
}

impl Client {
    /// Attests this workload: asks for a challenge, makes a fresh X25519 HPKE key pair, has
    /// `source` produce evidence over their binding, and exchanges it for a token (Attest).
    pub async fn attest(&self, source: &mut dyn EvidenceSource) -> Result<Session, Error> {
        let key = ReleaseKey::generate();
        let hpke_public_key = key.public_key();
        let challenge = self.challenge().await?;
        let evidence = source.evidence(&EvidenceRequest {
            nonce: &challenge.nonce,
            hpke_public_key: &hpke_public_key,
        })?;
        let r = self
            .attestation()
            .attest(pb::AttestRequest {
                nonce: challenge.nonce.clone(),
                hpke_public_key: hpke_public_key.clone(),
                evidence: Some(evidence),
            })
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        // The answer must come from a node this agent verified, and the token say what was
        // asked for: else a proxy could hand the workload a token of its own.
        let node = self.node(&r.node_public_key).await?;
        node.check(
            "the Attest answer",
            &kms_node::message::AttestAnswer {
                nonce: &challenge.nonce,
                hpke_public_key: &hpke_public_key,
                token: &r.token,
                token_id: &r.token_id,
                expires_unix_ms: r.expires_unix_ms,
                claims_json: &r.claims_json,
                hardware_id: &r.hardware_id,
            }
            .encode(),
            &r.node_signature,
        )?;
        check_token(&r, &hpke_public_key)?;
        Session::new(self.clone(), key, r)
    }
}

/// The token of a signed Attest answer says what the answer says: this workload's HPKE key, the
/// token id, hardware and expiry.
fn check_token(r: &pb::AttestResponse, hpke_public_key: &[u8]) -> Result<(), Error> {
    let claims = kms_core::token::TokenClaims::read_unverified(&r.token)
        .map_err(|e| Error::bad_response(format!("the token is not a token: {e}")))?;
    let key = claims
        .hpke_public_key()
        .map_err(|e| Error::bad_response(format!("the token's cnf: {e}")))?;
    if key[..] != *hpke_public_key {
        return Err(Error::bad_response(
            "the token names another HPKE key than this workload's",
        ));
    }
    if claims.jti != r.token_id || claims.sub != r.hardware_id || claims.exp.saturating_mul(1000) != r.expires_unix_ms {
        return Err(Error::bad_response(
            "the token's id, hardware or expiry is not the answer's",
        ));
    }
    Ok(())
}

/// A token and the HPKE key it names: what the workload needs to receive keys. Valid until the
/// token expires (at most 10 minutes); then attest again.
pub struct Session {
    client: Client,
    key: ReleaseKey,
    token: Zeroizing<String>,
    token_id: String,
    expires_unix_ms: i64,
    hardware_id: String,
    claims: serde_json::Value,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token_id", &self.token_id)
            .field("hardware_id", &self.hardware_id)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(client: Client, key: ReleaseKey, r: pb::AttestResponse) -> Result<Self, Error> {
        if r.token.is_empty() || r.token_id.is_empty() {
            return Err(Error::bad_response(
                "the attestation answer has no token or no token id",
            ));
        }
        let claims: serde_json::Value = serde_json::from_str(&r.claims_json)
            .map_err(|e| Error::bad_response(format!("the token's claims are not JSON: {e}")))?;
        if !claims.is_object() {
            return Err(Error::bad_response("the token's claims are not a JSON object"));
        }
        Ok(Self {
            client,
            key,
            token: Zeroizing::new(r.token),
            token_id: r.token_id,
            expires_unix_ms: r.expires_unix_ms,
            hardware_id: r.hardware_id,
            claims,
        })
    }

    /// The connection this session was made on.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The token's id (its `jti`), which every release under it binds.
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// When the token expires, in milliseconds since the Unix epoch (server clock).
    pub fn expires_unix_ms(&self) -> i64 {
        self.expires_unix_ms
    }

    /// Whether the token has expired by this machine's clock.
    pub fn is_expired(&self) -> bool {
        kms_core::now_unix_ms() >= self.expires_unix_ms
    }

    /// The registry entry of the machine that attested (`hw-…`).
    pub fn hardware_id(&self) -> &str {
        &self.hardware_id
    }

    /// The claims release policies see (tee, hardware_id, country, jurisdiction, site,
    /// operator, and the evidence's claims).
    pub fn claims(&self) -> &serde_json::Value {
        &self.claims
    }

    /// The HPKE public key the token names.
    pub fn hpke_public_key(&self) -> Vec<u8> {
        self.key.public_key()
    }

    /// The token itself: a bearer credential, useless without this session's HPKE key, but not
    /// to be logged or printed.
    pub fn expose_token(&self) -> &str {
        &self.token
    }

    /// Generates a data key under `key` (id or name) bound to `context`: the ciphertext blob to
    /// store, and the data key itself, opened from its HPKE seal.
    pub async fn generate_data_key(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<GeneratedKey, Error> {
        let request = requested(key, context)?;
        let client_nonce = client_nonce()?;
        let mut r = self
            .client
            .keys()
            .generate_data_key(pb::GenerateDataKeyRequest {
                key: key.to_owned(),
                encryption_context: context.clone().into_iter().collect(),
                attestation_token: self.token.to_string(),
                client_nonce: client_nonce.to_vec(),
            })
            .await
            .map_err(|s| self.client.failed(s))?
            .into_inner();
        let node = self.releasing_node(r.sealed_plaintext.as_ref()).await?;
        let data_key = open_release(
            &node,
            &self.key,
            ReleaseOperation::GenerateDataKey,
            &self.token_id,
            Answer {
                blob: &r.ciphertext_blob,
                request: &request,
                client_nonce: &client_nonce,
                key_id: &r.key_id,
                key_version: r.key_version,
                plaintext: &mut r.plaintext,
                sealed: r.sealed_plaintext.as_ref(),
            },
        )?;
        if data_key.len() != DATA_KEY_LEN {
            return Err(Error::bad_response(format!(
                "the released data key is {} bytes, not {DATA_KEY_LEN}",
                data_key.len()
            )));
        }
        Ok(GeneratedKey {
            ciphertext_blob: r.ciphertext_blob,
            key_id: r.key_id,
            key_version: r.key_version,
            data_key,
        })
    }

    /// Decrypts `ciphertext_blob` made with `context`; with `expected_key` (id or name) the
    /// server refuses a blob under any other key.
    pub async fn decrypt(
        &self,
        ciphertext_blob: &[u8],
        context: &BTreeMap<String, String>,
        expected_key: Option<&str>,
    ) -> Result<SecretBytes, Error> {
        let blob = Blob::parse(ciphertext_blob)
            .map_err(|e| Error::Input(format!("this is not a KMS ciphertext blob: {e}")))?;
        if let Some(expected) = expected_key.filter(|k| KeyId::looks_like_id(k)) {
            if blob.key_id().to_string() != expected {
                return Err(Error::Input(format!(
                    "the blob is under key {}, not {expected}",
                    blob.key_id()
                )));
            }
        }
        let request = requested(expected_key.unwrap_or_default(), context)?;
        let client_nonce = client_nonce()?;
        let mut r = self
            .client
            .keys()
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: ciphertext_blob.to_vec(),
                encryption_context: context.clone().into_iter().collect(),
                key: expected_key.unwrap_or_default().to_owned(),
                attestation_token: self.token.to_string(),
                client_nonce: client_nonce.to_vec(),
            })
            .await
            .map_err(|s| self.client.failed(s))?
            .into_inner();
        let node = self.releasing_node(r.sealed_plaintext.as_ref()).await?;
        open_release(
            &node,
            &self.key,
            ReleaseOperation::Decrypt,
            &self.token_id,
            Answer {
                blob: ciphertext_blob,
                request: &request,
                client_nonce: &client_nonce,
                key_id: &r.key_id,
                key_version: r.key_version,
                plaintext: &mut r.plaintext,
                sealed: r.sealed_plaintext.as_ref(),
            },
        )
    }
}

impl Session {
    /// The verified node that signed `sealed`.
    async fn releasing_node(&self, sealed: Option<&pb::SealedKey>) -> Result<VerifiedNode, Error> {
        let sealed = sealed.ok_or_else(|| Error::bad_response("it carries no sealed secret"))?;
        self.client.node(&sealed.node_public_key).await
    }
}

/// A data key from GenerateDataKey: the blob to store with the data, and the key to encrypt it
/// with (zeroized on drop).
pub struct GeneratedKey {
    /// The data key encrypted under `key_id`/`key_version`; Decrypt gives the data key back.
    pub ciphertext_blob: Vec<u8>,
    /// The id of the key that encrypted the data key.
    pub key_id: String,
    /// Its version.
    pub key_version: u32,
    /// The 32-byte data key.
    pub data_key: SecretBytes,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key_id", &self.key_id)
            .field("key_version", &self.key_version)
            .field("ciphertext_blob_len", &self.ciphertext_blob.len())
            .finish_non_exhaustive()
    }
}

/// The release-relevant parts of a GenerateDataKey or Decrypt answer.
struct Answer<'a> {
    /// The blob the released secret belongs to (the answer's for GenerateDataKey, the request's
    /// for Decrypt): the HPKE `aad`.
    blob: &'a [u8],
    /// What this request asked for (`release_request` of its key and context), bound into the
    /// HPKE `info`: an answer to a request changed on its way does not open.
    request: &'a [u8; 32],
    /// The random value this request carried, bound into the HPKE `info`.
    client_nonce: &'a [u8],
    key_id: &'a str,
    key_version: u32,
    plaintext: &'a mut Vec<u8>,
    sealed: Option<&'a pb::SealedKey>,
}

/// The release-request digest of a request naming `key` (as sent) with `context`.
fn requested(key: &str, context: &BTreeMap<String, String>) -> Result<[u8; 32], Error> {
    let context =
        EncryptionContext::new(context.clone()).map_err(|e| Error::Input(format!("the encryption context: {e}")))?;
    Ok(release_request(key, &context))
}

/// 16 random bytes for one request: the server binds them into the sealed answer, so an earlier
/// answer replayed by anything in between does not open.
fn client_nonce() -> Result<[u8; 16], Error> {
    kms_core::random_array::<16>().map_err(|e| Error::Input(format!("random number generator: {e}")))
}

/// Checks an answer (signed by `node`) and opens its sealed secret.
fn open_release(
    node: &VerifiedNode,
    key: &ReleaseKey,
    operation: ReleaseOperation,
    token_id: &str,
    answer: Answer<'_>,
) -> Result<SecretBytes, Error> {
    if !answer.plaintext.is_empty() {
        answer.plaintext.zeroize();
        return Err(Error::bad_response(
            "it carries the secret in plaintext, where an attested release must be HPKE-sealed; it was discarded unread (report this: the server or something between it and this workload is misbehaving)",
        ));
    }
    let sealed = answer
        .sealed
        .ok_or_else(|| Error::bad_response("it carries no sealed secret"))?;
    let blob = Blob::parse(answer.blob).map_err(|e| Error::bad_response(format!("the ciphertext blob: {e}")))?;
    let blob_key = blob.key_id().to_string();
    if blob_key != answer.key_id || blob.version().get() != answer.key_version {
        return Err(Error::bad_response(format!(
            "it names key {} version {}, the blob {blob_key} version {}",
            answer.key_id,
            answer.key_version,
            blob.version()
        )));
    }
    let info = release_info(
        operation.as_str(),
        &blob_key,
        blob.version().get(),
        token_id,
        answer.request,
        answer.client_nonce,
    );
    node.check(
        "the sealed release",
        &kms_node::message::release(&info, answer.blob, &sealed.encapsulated_key, &sealed.ciphertext),
        &sealed.node_signature,
    )?;
    key.open_release(
        &Sealed {
            encapsulated_key: sealed.encapsulated_key.clone(),
            ciphertext: sealed.ciphertext.clone(),
        },
        &info,
        answer.blob,
    )
    .map_err(|_| {
        Error::bad_response(
            "the sealed secret does not open with this session's HPKE key for this operation, key version and token",
        )
    })
}

#[cfg(test)]
mod tests {
    use kms_core::blob::Kek;
    use kms_core::hpke_seal::{seal, X25519};
    use kms_core::ids::KeyVersion;

    use super::*;

    const TOKEN_ID: &str = "tok-1";
    const NONCE: &[u8] = &[9; 16];
    const REQUEST: &[u8; 32] = &[7; 32];

    /// The releasing kmsd's node key, as the agent verified it.
    fn node_key() -> &'static kms_node::NodeKey {
        static KEY: std::sync::OnceLock<kms_node::NodeKey> = std::sync::OnceLock::new();
        KEY.get_or_init(|| kms_node::NodeKey::generate().unwrap())
    }

    fn verified_node() -> VerifiedNode {
        let k = node_key();
        VerifiedNode {
            public_key: k.public_key(),
            id: k.id(),
            statement: kms_node::NodeStatement {
                node_public_key: k.public_key(),
                unseal_public_key: vec![4; 65],
                tls_spki_sha256: [0; 32],
                hpke_public_key: [0; 32],
            },
            claims: None,
        }
    }

    fn blob(version: u32) -> (KeyId, Vec<u8>) {
        let id = KeyId::generate().unwrap();
        let kek = Kek::generate().unwrap();
        let blob = kms_core::blob::seal(
            &kek,
            id,
            KeyVersion::new(version).unwrap(),
            &EncryptionContext::empty(),
            &[5; 32],
        )
        .unwrap();
        (id, blob)
    }

    /// What the server does: seal `secret` to the session key for `op` on `blob`.
    fn sealed_for(key: &ReleaseKey, op: ReleaseOperation, blob: &[u8], token_id: &str) -> pb::SealedKey {
        sealed_answering(key, op, blob, token_id, REQUEST)
    }

    /// The same, for a request that asked for `request`.
    fn sealed_answering(
        key: &ReleaseKey,
        op: ReleaseOperation,
        blob: &[u8],
        token_id: &str,
        request: &[u8; 32],
    ) -> pb::SealedKey {
        let parsed = Blob::parse(blob).unwrap();
        let info = release_info(
            op.as_str(),
            &parsed.key_id().to_string(),
            parsed.version().get(),
            token_id,
            request,
            NONCE,
        );
        let s = seal::<X25519>(&key.public_key(), &info, blob, &[0x42; 32]).unwrap();
        let signature = node_key().sign(&kms_node::message::release(
            &info,
            blob,
            &s.encapsulated_key,
            &s.ciphertext,
        ));
        pb::SealedKey {
            encapsulated_key: s.encapsulated_key,
            ciphertext: s.ciphertext,
            node_public_key: node_key().public_key().to_vec(),
            node_signature: signature.to_vec(),
        }
    }

    fn open(
        key: &ReleaseKey,
        op: ReleaseOperation,
        blob: &[u8],
        key_id: &str,
        version: u32,
        plaintext: &mut Vec<u8>,
        sealed: Option<&pb::SealedKey>,
    ) -> Result<SecretBytes, Error> {
        open_release(
            &verified_node(),
            key,
            op,
            TOKEN_ID,
            Answer {
                blob,
                request: REQUEST,
                client_nonce: NONCE,
                key_id,
                key_version: version,
                plaintext,
                sealed,
            },
        )
    }

    #[test]
    fn sealed_keys_open_with_the_right_binding() {
        let key = ReleaseKey::generate();
        let (id, blob) = blob(3);
        let op = ReleaseOperation::GenerateDataKey;
        let sealed = sealed_for(&key, op, &blob, TOKEN_ID);
        let k = open(&key, op, &blob, &id.to_string(), 3, &mut Vec::new(), Some(&sealed)).unwrap();
        assert_eq!(k.expose_secret(), &[0x42; 32]);

        // Another operation, token, session key or blob: it does not open.
        let other = open(
            &key,
            ReleaseOperation::Decrypt,
            &blob,
            &id.to_string(),
            3,
            &mut Vec::new(),
            Some(&sealed),
        );
        // (its signature covers the HPKE info, so it fails there first)
        assert!(matches!(other, Err(Error::Node(_))));
        // An answer to a request that asked for another key (as named) or context: a proxy
        // changed the request on its way to the server.
        for other in [
            release_request("payroll", &EncryptionContext::empty()),
            release_request(&id.to_string(), &EncryptionContext::empty()),
        ] {
            let changed = sealed_answering(&key, op, &blob, TOKEN_ID, &other);
            let e = open(&key, op, &blob, &id.to_string(), 3, &mut Vec::new(), Some(&changed))
                .err()
                .unwrap();
            assert!(matches!(&e, Error::Node(n) if n.reason() == "node_signature"), "{e}");
        }
        let other_token = sealed_for(&key, op, &blob, "tok-2");
        assert!(open(&key, op, &blob, &id.to_string(), 3, &mut Vec::new(), Some(&other_token)).is_err());
        let stranger = ReleaseKey::generate();
        assert!(open(&stranger, op, &blob, &id.to_string(), 3, &mut Vec::new(), Some(&sealed)).is_err());
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(open(&key, op, &blob, &id.to_string(), 3, &mut Vec::new(), Some(&tampered)).is_err());
    }

    /// A key sealed to this session's HPKE key with the right info, by someone who is not the
    /// verified node (a proxy choosing the data key): refused before it is opened.
    #[test]
    fn releases_not_signed_by_the_verified_node_are_refused() {
        let key = ReleaseKey::generate();
        let (id, blob) = blob(1);
        let op = ReleaseOperation::GenerateDataKey;
        let mut forged = sealed_for(&key, op, &blob, TOKEN_ID);
        let proxy = kms_node::NodeKey::generate().unwrap();
        let info = release_info(op.as_str(), &id.to_string(), 1, TOKEN_ID, REQUEST, NONCE);
        forged.node_signature = proxy
            .sign(&kms_node::message::release(
                &info,
                &blob,
                &forged.encapsulated_key,
                &forged.ciphertext,
            ))
            .to_vec();
        let e = open(&key, op, &blob, &id.to_string(), 1, &mut Vec::new(), Some(&forged))
            .err()
            .unwrap();
        assert!(matches!(&e, Error::Node(n) if n.reason() == "node_signature"), "{e}");
        forged.node_signature.clear();
        assert!(matches!(
            open(&key, op, &blob, &id.to_string(), 1, &mut Vec::new(), Some(&forged)),
            Err(Error::Node(_))
        ));
    }

    #[test]
    fn plaintext_in_an_attested_answer_is_refused_and_wiped() {
        let key = ReleaseKey::generate();
        let (id, blob) = blob(1);
        let op = ReleaseOperation::GenerateDataKey;
        let sealed = sealed_for(&key, op, &blob, TOKEN_ID);
        let mut plaintext = vec![0x42; 32];
        let e = open(&key, op, &blob, &id.to_string(), 1, &mut plaintext, Some(&sealed))
            .err()
            .unwrap();
        assert!(matches!(&e, Error::BadResponse(m) if m.contains("plaintext")), "{e}");
        assert!(plaintext.is_empty(), "the plaintext is wiped");
        // Without anything sealed either.
        let e = open(&key, op, &blob, &id.to_string(), 1, &mut vec![1], None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("plaintext"), "{e}");
    }

    #[test]
    fn answers_must_carry_a_sealed_key_for_the_blobs_key() {
        let key = ReleaseKey::generate();
        let (id, blob) = blob(2);
        let op = ReleaseOperation::Decrypt;
        let sealed = sealed_for(&key, op, &blob, TOKEN_ID);
        let e = open(&key, op, &blob, &id.to_string(), 2, &mut Vec::new(), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no sealed secret"), "{e}");
        let e = open(&key, op, &blob, &id.to_string(), 1, &mut Vec::new(), Some(&sealed))
            .err()
            .unwrap();
        assert!(e.to_string().contains("version"), "{e}");
        let other = KeyId::generate().unwrap().to_string();
        let e = open(&key, op, &blob, &other, 2, &mut Vec::new(), Some(&sealed))
            .err()
            .unwrap();
        assert!(e.to_string().contains(&other), "{e}");
        let e = open(
            &key,
            op,
            b"not a blob",
            &id.to_string(),
            2,
            &mut Vec::new(),
            Some(&sealed),
        )
        .err()
        .unwrap();
        assert!(matches!(e, Error::BadResponse(_)));
    }
}
