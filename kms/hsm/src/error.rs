//! The one error type of this crate. Messages name the module, the token and what failed, say what
//! to do where there is something to do, and never carry a PIN or key material.

use std::path::PathBuf;

use cryptoki::error::Error as CkError;

/// Why an HSM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("PKCS#11 module {}: {reason}", module.display())]
    Module {
        /// The module path as given.
        module: PathBuf,
        /// What failed.
        reason: String,
    },
    /// No token matches the selector.
    #[error(
        "{selector} not found in PKCS#11 module {}; tokens present: {present}. Check the token \
         selector (label:NAME, slot:N or serial:S); a token initialised after this process loaded \
         the module may only be seen after a restart",
        module.display()
    )]
    TokenNotFound {
        /// The module searched.
        module: PathBuf,
        /// The selector, as text (e.g. `token label 'x'`).
        selector: String,
        /// The tokens that are present (label, serial, slot), or `none`.
        present: String,
    },
    /// A token selector could not be parsed.
    #[error("invalid token selector {0:?}: expected label:NAME, slot:N or serial:S")]
    InvalidSelector(String),
    /// The user PIN was rejected.
    #[error("PIN incorrect for token '{token}' ({reason}); check the PIN source")]
    PinIncorrect {
        /// The token label.
        token: String,
        /// The return code or why.
        reason: &'static str,
    },
    /// The user PIN is locked, or the token cannot log the user in.
    #[error("cannot log in to token '{token}': {reason}")]
    Login {
        /// The token label.
        token: String,
        /// What the token said, and what to do.
        reason: String,
    },
    /// The PIN could not be read from its source.
    #[error("cannot read the PIN: {0}")]
    PinSource(String),
    /// No key of the expected kind has this label.
    #[error("no {kind} labelled '{label}' on token '{token}'")]
    KeyNotFound {
        /// The token label.
        token: String,
        /// What kind of key was looked for.
        kind: &'static str,
        /// The key label.
        label: String,
    },
    /// An object with this label already exists, so a key is not generated over it.
    #[error("token '{token}' already has an object labelled '{label}'; choose another label or delete it first")]
    KeyExists {
        /// The token label.
        token: String,
        /// The key label.
        label: String,
    },
    /// Several keys of the expected kind have this label.
    #[error("{count} {kind}s labelled '{label}' on token '{token}': labels must be unique")]
    Ambiguous {
        /// The token label.
        token: String,
        /// What kind of key.
        kind: &'static str,
        /// The key label.
        label: String,
        /// How many were found.
        count: usize,
    },
    /// A PKCS#11 call failed.
    #[error("token '{token}': {what}: {call}")]
    Pkcs11 {
        /// The token label.
        token: String,
        /// What was being done.
        what: String,
        /// Which call failed with which return code.
        call: String,
    },
    /// The token returned something this crate cannot use (e.g. a malformed EC point).
    #[error("token '{token}' returned a malformed {what}")]
    Malformed {
        /// The token label.
        token: String,
        /// What was malformed.
        what: &'static str,
    },
    /// A share envelope was not sealed to this key, or was changed.
    #[error(
        "share key '{label}' on token '{token}' cannot open this envelope: it was sealed to another key or \
         tampered with ({call})"
    )]
    ShareOpen {
        /// The token label.
        token: String,
        /// The share key label.
        label: String,
        /// The call that failed and its return code.
        call: String,
    },
    /// Authenticated decryption under the root key failed.
    #[error(
        "decryption under root key '{label}' on token '{token}' failed: wrong key, wrong associated data or \
         tampered ciphertext ({call})"
    )]
    DecryptFailed {
        /// The token label.
        token: String,
        /// The root key label.
        label: String,
        /// The call that failed and its return code, or why it was not made.
        call: String,
    },
    /// An input was rejected by the domain (a bad public key or envelope).
    #[error(transparent)]
    Core(#[from] kms_core::Error),
}

/// `C_Login returned CKR_PIN_INCORRECT` for a PKCS#11 error, the error's text otherwise.
pub(crate) fn describe(err: &CkError) -> String {
    match err {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {}", ckr_name(rv)),
        other => other.to_string(),
    }
}

/// `CKR_PIN_INCORRECT` for `RvError::PinIncorrect`: the constant's name, as in the PKCS#11 spec.
pub(crate) fn ckr_name(rv: &cryptoki::error::RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;
    use cryptoki::error::RvError;

    #[test]
    fn return_codes_are_named_as_in_the_spec() {
        assert_eq!(ckr_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            describe(&CkError::Pkcs11(RvError::UserAlreadyLoggedIn, Function::Login)),
            "C_Login returned CKR_USER_ALREADY_LOGGED_IN"
        );
    }
}
