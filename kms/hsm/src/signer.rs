//! Admin signing keys: ECDSA P-256 key pairs generated in the token, whose private half never
//! leaves it. Hashing is done in software and the token signs the digest with plain `CKM_ECDSA`,
//! which every EC-capable module offers (unlike `CKM_ECDSA_SHA256`).

use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use kms_core::admin::{signed_message, AdminPublicKey, AdminSigner};

use crate::token::Token;
use crate::{Hsm, HsmError};

const KIND: &str = "ECDSA P-256 signing key";

/// An ECDSA P-256 signing key in a token. `Send + Sync`; signing from several threads runs in
/// parallel sessions.
pub struct HsmSigner {
    token: Arc<Token>,
    private: ObjectHandle,
    public: AdminPublicKey,
    label: String,
}

impl std::fmt::Debug for HsmSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSigner")
            .field("token", &self.token.label())
            .field("label", &self.label)
            .finish()
    }
}

/// Template of a P-256 key pair: (public, private) attributes shared by signing and share keys.
pub(crate) fn ec_templates(label: &str, id: &[u8], token: bool) -> (Vec<Attribute>, Vec<Attribute>) {
    let mut public = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::EcParams(crate::der::P256_PARAMS.to_vec()),
        Attribute::Token(token),
        Attribute::Private(false),
    ];
    let mut private = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ];
    if !label.is_empty() {
        for t in [&mut public, &mut private] {
            t.push(Attribute::Label(label.as_bytes().to_vec()));
            t.push(Attribute::Id(id.to_vec()));
        }
    }
    (public, private)
}

impl Hsm {
    /// Generates an ECDSA P-256 key pair labelled `label` (private key sensitive, non-extractable,
    /// sign-only). Refuses if any object already has that label.
    pub fn generate_signing_key(&self, label: &str) -> Result<HsmSigner, HsmError> {
        let t = &self.token;
        let id = t.new_id()?;
        let (mut public, mut private) = ec_templates(label, &id, true);
        public.extend([Attribute::Verify(true), Attribute::Derive(false)]);
        private.extend([
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::Decrypt(false),
        ]);
        t.with_object_store(|s| {
            t.ensure_free(s, label)?;
            let (pub_h, priv_h) = s
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(|e| t.err(format!("generating signing key '{label}'"), &e))?;
            let point = t.ec_point(s, pub_h)?;
            HsmSigner::new(t, priv_h, &point, label)
        })
    }

    /// The signing key labelled `label`.
    pub fn signing_key(&self, label: &str) -> Result<HsmSigner, HsmError> {
        let t = &self.token;
        t.with_session(|s| {
            let ec = [Attribute::KeyType(KeyType::EC)];
            let private = t.find_one(
                s,
                KIND,
                label,
                &[
                    &ec[..],
                    &[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Sign(true)],
                ]
                .concat(),
            )?;
            let public = t.find_one(
                s,
                "ECDSA P-256 public key",
                label,
                &[&ec[..], &[Attribute::Class(ObjectClass::PUBLIC_KEY)]].concat(),
            )?;
            let point = t.ec_point(s, public)?;
            HsmSigner::new(t, private, &point, label)
        })
    }
}

impl HsmSigner {
    fn new(token: &Arc<Token>, private: ObjectHandle, point: &[u8], label: &str) -> Result<Self, HsmError> {
        Ok(Self {
            token: Arc::clone(token),
            private,
            public: AdminPublicKey::parse(point)?,
            label: label.to_owned(),
        })
    }

    /// The key's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The public key, SEC1 uncompressed (65 bytes).
    pub fn public_key_bytes(&self) -> &[u8] {
        self.public.as_bytes()
    }

    /// Signs `message` (any context: admin requests go through [`AdminSigner::sign`], which adds
    /// the admin context label): SHA-256 in software, `CKM_ECDSA` in the token. Returns an ASN.1
    /// DER signature that verifies with ring's `ECDSA_P256_SHA256_ASN1`.
    pub fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let t = &self.token;
        let raw = t.with_session(|s| {
            s.sign(&Mechanism::Ecdsa, self.private, digest.as_ref())
                .map_err(|e| t.err(format!("signing with '{}'", self.label), &e))
        })?;
        crate::der::ecdsa_der(&raw).ok_or_else(|| HsmError::Malformed {
            token: t.label().to_owned(),
            what: "ECDSA signature (expected 64 bytes r || s)",
        })
    }
}

impl AdminSigner for HsmSigner {
    fn public_key(&self) -> AdminPublicKey {
        self.public.clone()
    }

    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, kms_core::Error> {
        self.sign_raw(&signed_message(payload))
            .map_err(|e| kms_core::Error::Signer(e.to_string()))
    }
}
