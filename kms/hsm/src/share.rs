//! Custodian share keys: P-256 key pairs in the token that open [`ShareEnvelope`]s sealed to
//! them and re-seal the content to another public key, with the share only ever in the token's
//! memory as a sensitive session object. The construction is `kms_core::share_wrap`'s: the token
//! side uses `CKM_ECDH1_DERIVE` with `CKD_NULL` (the x-coordinate as a 256-bit AES key) and
//! `CKM_AES_KEY_WRAP_PAD` (RFC 5649).

use std::sync::Arc;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use kms_core::share_wrap::ShareEnvelope;

use crate::signer::ec_templates;
use crate::token::Token;
use crate::{Hsm, HsmError};

const KIND: &str = "P-256 share key";

/// A custodian's P-256 share key in a token. `Send + Sync`.
pub struct HsmShareKey {
    token: Arc<Token>,
    private: ObjectHandle,
    public: Vec<u8>,
    label: String,
}

impl std::fmt::Debug for HsmShareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmShareKey")
            .field("token", &self.token.label())
            .field("label", &self.label)
            .finish()
    }
}

impl Hsm {
    /// Generates a P-256 key pair labelled `label` for opening share envelopes (private key
    /// derive-only, sensitive, non-extractable). Refuses if any object already has that label.
    pub fn generate_share_key(&self, label: &str) -> Result<HsmShareKey, HsmError> {
        let t = &self.token;
        let id = t.new_id()?;
        let (mut public, mut private) = ec_templates(label, &id, true);
        public.extend([Attribute::Verify(false), Attribute::Derive(true)]);
        private.extend([
            Attribute::Derive(true),
            Attribute::Sign(false),
            Attribute::Decrypt(false),
        ]);
        t.with_object_store(|s| {
            t.ensure_free(s, label)?;
            let (pub_h, priv_h) = s
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(|e| t.err(format!("generating share key '{label}'"), &e))?;
            let point = t.ec_point(s, pub_h)?;
            Ok(HsmShareKey {
                token: Arc::clone(t),
                private: priv_h,
                public: point,
                label: label.to_owned(),
            })
        })
    }

    /// The share key labelled `label`.
    pub fn share_key(&self, label: &str) -> Result<HsmShareKey, HsmError> {
        let t = &self.token;
        t.with_session(|s| {
            let mut private_t = vec![
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
            ];
            private_t.push(Attribute::Derive(true));
            let private = t.find_one(s, KIND, label, &private_t)?;
            let public_t = [
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
            ];
            let public = t.find_one(s, "P-256 share public key", label, &public_t)?;
            let point = t.ec_point(s, public)?;
            Ok(HsmShareKey {
                token: Arc::clone(t),
                private,
                public: point,
                label: label.to_owned(),
            })
        })
    }
}

/// Template of the AES-256 key `CKM_ECDH1_DERIVE` makes: a session object that can only `usage`.
fn derived_aes_template(usage: Attribute) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        usage,
    ]
}

/// Session objects to destroy when the rewrap ends, successfully or not.
struct Scratch<'a> {
    session: &'a Session,
    objects: Vec<ObjectHandle>,
}

impl Scratch<'_> {
    fn keep(&mut self, o: ObjectHandle) -> ObjectHandle {
        self.objects.push(o);
        o
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        // Newest first. A failure is harmless: the session is closed right after, which destroys
        // its session objects anyway.
        for o in self.objects.drain(..).rev() {
            let _ = self.session.destroy_object(o);
        }
    }
}

impl HsmShareKey {
    /// The key's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The public key envelopes are sealed to: SEC1 uncompressed, 65 bytes.
    pub fn public_key(&self) -> Vec<u8> {
        self.public.clone()
    }

    /// Opens `envelope` (sealed to this key) inside the token and re-seals its content to
    /// `server_public_key` (SEC1 uncompressed P-256), in the same envelope format. The content
    /// exists only as a sensitive session object in the token, destroyed before returning.
    pub fn rewrap(&self, envelope: &ShareEnvelope, server_public_key: &[u8]) -> Result<ShareEnvelope, HsmError> {
        envelope.check()?;
        kms_core::share_wrap::check_public_key(server_public_key)?;
        let t = &self.token;
        let err = |what: &str, e: &CkError| t.err(format!("re-wrapping with share key '{}': {what}", self.label), e);
        t.with_fresh_session(|s| {
            let mut scratch = Scratch {
                session: s,
                objects: Vec::new(),
            };
            // (1) Z = ECDH(share key, sender's ephemeral key) as an AES-256 unwrapping key.
            let params = Ecdh1DeriveParams::new(EcKdf::null(), &envelope.ephemeral_public_key);
            let kek_in = s
                .derive_key(
                    &Mechanism::Ecdh1Derive(params),
                    self.private,
                    &derived_aes_template(Attribute::Unwrap(true)),
                )
                .map_err(|e| err("deriving the envelope key (CKM_ECDH1_DERIVE)", &e))?;
            let kek_in = scratch.keep(kek_in);
            // (2) The content, as a sensitive session secret that can only be wrapped.
            let content_t = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Derive(false),
            ];
            let content = match s.unwrap_key(&Mechanism::AesKeyWrapPad, kek_in, &envelope.wrapped, &content_t) {
                Ok(h) => scratch.keep(h),
                // SoftHSM2 2.6.1 reports an integrity failure as CKR_GENERAL_ERROR; the standard
                // code is CKR_WRAPPED_KEY_INVALID.
                Err(
                    e @ CkError::Pkcs11(
                        RvError::WrappedKeyInvalid
                        | RvError::WrappedKeyLenRange
                        | RvError::EncryptedDataInvalid
                        | RvError::EncryptedDataLenRange
                        | RvError::GeneralError,
                        _,
                    ),
                ) => {
                    return Err(HsmError::ShareOpen {
                        token: t.label().to_owned(),
                        label: self.label.clone(),
                        call: crate::error::describe(&e),
                    })
                }
                Err(e) => return Err(err("unwrapping the share (CKM_AES_KEY_WRAP_PAD)", &e)),
            };
            // (3) A fresh ephemeral key pair and Z' = ECDH(ephemeral, server key).
            let (mut eph_pub_t, mut eph_priv_t) = ec_templates("", &[], false);
            eph_pub_t.push(Attribute::Derive(true));
            eph_priv_t.push(Attribute::Derive(true));
            let (eph_pub, eph_priv) = s
                .generate_key_pair(&Mechanism::EccKeyPairGen, &eph_pub_t, &eph_priv_t)
                .map_err(|e| err("generating the ephemeral key", &e))?;
            scratch.keep(eph_pub);
            scratch.keep(eph_priv);
            let ephemeral_public_key = t.ec_point(s, eph_pub)?;
            let params = Ecdh1DeriveParams::new(EcKdf::null(), server_public_key);
            let kek_out = s
                .derive_key(
                    &Mechanism::Ecdh1Derive(params),
                    eph_priv,
                    &derived_aes_template(Attribute::Wrap(true)),
                )
                .map_err(|e| err("deriving the server envelope key (CKM_ECDH1_DERIVE)", &e))?;
            let kek_out = scratch.keep(kek_out);
            // (4) The new envelope.
            let wrapped = s
                .wrap_key(&Mechanism::AesKeyWrapPad, kek_out, content)
                .map_err(|e| err("wrapping the share (CKM_AES_KEY_WRAP_PAD)", &e))?;
            // (5) `scratch` destroys every session object here, and on every early return above.
            drop(scratch);
            Ok(ShareEnvelope {
                ephemeral_public_key,
                wrapped,
            })
        })
    }
}
