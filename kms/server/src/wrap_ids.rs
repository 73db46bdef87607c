//! The reserved key ids under which kmsd wraps its own secrets with the root key: the id and a
//! version are the AAD of the wrap, so a secret cannot be swapped for another. Kept in one table
//! so no two collide; customer key ids are random, so none is one of these.

/// Token signing seeds (the version is the token key's).
pub const TOKEN_KEY: [u8; 16] = [0; 16];

/// Audit checkpoint signing seeds (the version is `checkpoint::CHECKPOINT_KEY_WRAP_VERSION`).
pub const CHECKPOINT_KEY: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Each generation's row-integrity key, wrapped by that generation's root (the version is the
/// generation number).
pub const INTEGRITY_KEY: [u8; 16] = [0xfd; 16];

/// The pkcs11 root's check value: a fixed value encrypted at init and decrypted at every start,
/// so the wrong key (or token) is noticed before anything is served.
pub const PKCS11_CANARY: [u8; 16] = [0xfe; 16];

/// A software next root, wrapped by the current root during a rotation (the version is the next
/// generation number).
pub const NEXT_ROOT: [u8; 16] = [0xff; 16];

#[cfg(test)]
mod tests {
    #[test]
    fn reserved_ids_are_distinct() {
        let all = [
            super::TOKEN_KEY,
            super::CHECKPOINT_KEY,
            super::INTEGRITY_KEY,
            super::PKCS11_CANARY,
            super::NEXT_ROOT,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
