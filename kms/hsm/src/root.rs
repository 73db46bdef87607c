//! The root key in a token: a non-extractable AES-256 key that encrypts and decrypts with
//! `CKM_AES_GCM`. Output is `IV (12) ‖ ciphertext ‖ tag (16)`, byte for byte the layout of
//! `kms_core::root::SoftwareRoot::wrap`, with the AAD of `kms_core::root::kek_wrap_aad` when it
//! wraps KEKs. The IV comes from the operating system, not the token, and is given to the token in
//! the GCM parameters (random 96-bit IVs: the root key wraps far fewer than 2^32 messages).

use std::sync::Arc;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use kms_core::secret::SecretBytes;

use crate::token::Token;
use crate::{Hsm, HsmError};

const KIND: &str = "AES-256 root key";
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
// `CK_ULONG` is C `unsigned long`.
const TAG_BITS: std::ffi::c_ulong = 128;

/// An AES-256 root key in a token. `Send + Sync`.
pub struct HsmRoot {
    token: Arc<Token>,
    key: ObjectHandle,
    label: String,
}

impl std::fmt::Debug for HsmRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmRoot")
            .field("token", &self.token.label())
            .field("label", &self.label)
            .finish()
    }
}

impl Hsm {
    /// Generates an AES-256 key labelled `label` in the token (sensitive, non-extractable,
    /// encrypt/decrypt only). Refuses if any object already has that label.
    pub fn generate_root_key(&self, label: &str) -> Result<HsmRoot, HsmError> {
        let t = &self.token;
        let id = t.new_id()?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id),
        ];
        t.with_object_store(|s| {
            t.ensure_free(s, label)?;
            let key = s
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| t.err(format!("generating root key '{label}'"), &e))?;
            Ok(HsmRoot {
                token: Arc::clone(t),
                key,
                label: label.to_owned(),
            })
        })
    }

    /// The root key labelled `label`. Only a key generated in the token and never extractable
    /// matches (`CKA_LOCAL`, `CKA_SENSITIVE`, `CKA_NEVER_EXTRACTABLE`, not `CKA_EXTRACTABLE`): a
    /// key someone imported under that label, whose value they know, is not found.
    pub fn root_key(&self, label: &str) -> Result<HsmRoot, HsmError> {
        let t = &self.token;
        t.with_session(|s| {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Local(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::NeverExtractable(true),
            ];
            let key = t.find_one(s, KIND, label, &template)?;
            Ok(HsmRoot {
                token: Arc::clone(t),
                key,
                label: label.to_owned(),
            })
        })
    }
}

impl HsmRoot {
    /// The key's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// AES-256-GCM under the root key with a fresh random IV: `IV (12) ‖ ciphertext ‖ tag (16)`.
    pub fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        let mut iv: [u8; IV_LEN] = kms_core::random_array()?;
        let t = &self.token;
        let body = t.with_session(|s| {
            let params =
                GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(|e| t.err("building GCM parameters", &e))?;
            s.encrypt(&Mechanism::AesGcm(params), self.key, plaintext)
                .map_err(|e| t.err(format!("encrypting with root key '{}' (CKM_AES_GCM)", self.label), &e))
        })?;
        if body.len() != plaintext.len() + TAG_LEN {
            return Err(HsmError::Malformed {
                token: t.label().to_owned(),
                what: "AES-GCM output (expected ciphertext followed by a 16-byte tag)",
            });
        }
        let mut out = Vec::with_capacity(IV_LEN + body.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts [`HsmRoot::encrypt`]'s output; a wrong key, AAD or any change fails.
    pub fn decrypt(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, HsmError> {
        let t = &self.token;
        let failed = |call: String| HsmError::DecryptFailed {
            token: t.label().to_owned(),
            label: self.label.clone(),
            call,
        };
        if wrapped.len() < IV_LEN + TAG_LEN {
            return Err(failed("shorter than IV and tag; not sent to the token".into()));
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&wrapped[..IV_LEN]);
        t.with_session(|s| {
            let params =
                GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(|e| t.err("building GCM parameters", &e))?;
            match s.decrypt(&Mechanism::AesGcm(params), self.key, &wrapped[IV_LEN..]) {
                Ok(plain) => Ok(SecretBytes::new(plain)),
                // SoftHSM2 2.6.1 reports a tag mismatch as CKR_GENERAL_ERROR; the standard code is
                // CKR_ENCRYPTED_DATA_INVALID.
                Err(
                    e @ CkError::Pkcs11(
                        RvError::EncryptedDataInvalid
                        | RvError::EncryptedDataLenRange
                        | RvError::DataInvalid
                        | RvError::GeneralError,
                        _,
                    ),
                ) => Err(failed(crate::error::describe(&e))),
                Err(e) => Err(t.err(format!("decrypting with root key '{}' (CKM_AES_GCM)", self.label), &e)),
            }
        })
    }
}
