//! The PKCS#11 layer: admins' signing keys ([`HsmSigner`]), custodians' share keys
//! ([`HsmShareKey`]) and the server's root key ([`HsmRoot`]) live in a token and never leave it.
//! It uses only standard mechanisms, so any PKCS#11 module with EC and AES works; SoftHSM2
//! stands in for a real HSM in tests.
//!
//! | key            | mechanisms                                                     |
//! |----------------|----------------------------------------------------------------|
//! | signing key    | `CKM_EC_KEY_PAIR_GEN` (P-256); SHA-256 in software + `CKM_ECDSA` |
//! | share key      | `CKM_EC_KEY_PAIR_GEN`; `CKM_ECDH1_DERIVE` (`CKD_NULL`); `CKM_AES_KEY_WRAP_PAD` |
//! | root key       | `CKM_AES_KEY_GEN` (256); `CKM_AES_GCM` (IV from the OS, 128-bit tag) |
//! | anchor         | a private `CKO_DATA` object (the last audit checkpoint kmsd signed) |
//!
//! Facts about SoftHSM2 2.6.1 (and cryptoki 0.12) this crate is built on, found by experiment:
//! - SoftHSM2 scans its token directory only in `C_Initialize`: a token initialised (e.g. by
//!   `softhsm2-util`) after the process loaded the module is not seen until the process restarts.
//!   Tests therefore make all their tokens before opening the first one.
//! - Login belongs to the application, not the session: once one session is logged in, `C_Login`
//!   on any session of the same token returns `CKR_USER_ALREADY_LOGGED_IN`, whatever the PIN.
//!   [`Hsm::open`] therefore checks a second PIN for the same token itself.
//! - `CKM_ECDH1_DERIVE` with `CKD_NULL` and `CKA_VALUE_LEN` 32 yields exactly the 32-byte
//!   x-coordinate Z; a shorter `CKA_VALUE_LEN` takes the *rightmost* bytes of Z. Only `CKD_NULL`
//!   is supported. The peer's public key is accepted both as the raw SEC1 point and as a DER OCTET
//!   STRING; this crate passes the raw point, which the standard requires every token to accept.
//! - `CKM_AES_KEY_WRAP_PAD` (RFC 5649) is available for `C_WrapKey`/`C_UnwrapKey`, and is
//!   byte-compatible with the `aes-kw` crate's `wrap_with_padding` (used by `kms_core::share_wrap`).
//!   But `C_UnwrapKey` keeps the padding zeros: a 54-byte plaintext unwraps to a 56-byte object.
//!   So share plaintexts are whole 8-byte blocks (no padding), which `kms_core::share_wrap`
//!   enforces.
//! - A failed integrity check returns `CKR_GENERAL_ERROR`, not the standard code, both for
//!   `CKM_AES_KEY_WRAP_PAD` unwrap (standard: `CKR_WRAPPED_KEY_INVALID`) and for `CKM_AES_GCM`
//!   decrypt (standard: `CKR_ENCRYPTED_DATA_INVALID`); both are reported as an envelope or
//!   decryption failure, with the return code in the message.
//! - `CKA_EC_POINT` is a DER OCTET STRING (`04 41 04 ‖ x ‖ y`) around the SEC1 point.
//! - `CKM_AES_GCM` single-part `C_Encrypt` returns ciphertext ‖ tag, and takes the IV from the
//!   caller's `CK_GCM_PARAMS`.
//! - A sensitive attribute (`CKA_VALUE` of a sensitive key) makes `C_GetAttributeValue` return
//!   `CKR_ATTRIBUTE_SENSITIVE`; cryptoki's `get_attributes` then silently leaves it out.
//! - cryptoki's `Session` is `Send` but not `Sync`, and closes (never logs out) on drop; `Pkcs11`
//!   is a cheap `Arc` clone.
//!
//! This crate must never log or print a PIN or key material, and never makes a key extractable
//! except the share content inside [`HsmShareKey::rewrap`], a session object that can only be
//! wrapped and is destroyed before it returns.
#![warn(missing_docs)]

mod data;
mod der;
mod error;
mod pin;
mod root;
mod share;
mod signer;
mod token;

pub use error::HsmError;
pub use pin::{Pin, PinSource};
pub use root::HsmRoot;
pub use share::HsmShareKey;
pub use signer::HsmSigner;
pub use token::{Hsm, KeyInfo, TokenSelector};
