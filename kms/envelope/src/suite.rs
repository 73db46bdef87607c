//! Algorithm suites of the message format (ESDK `framework/algorithm-suites.md`) and the
//! commitment policy that decides which of them a reader accepts.

/// An algorithm suite: the data key's length, how the content key is derived from it, whether
/// the key is committed in the header, and whether a footer signs the message.
///
/// We write only the two committing suites; the others are read (legacy messages, with
/// [`CommitmentPolicy::RequireEncryptAllowDecrypt`]) so that data written by the ESDK before
/// version 2.0 can be migrated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// 0x0014: AES-128-GCM, the data key used directly (legacy).
    Aes128GcmNoKdf,
    /// 0x0046: AES-192-GCM, no key derivation (legacy).
    Aes192GcmNoKdf,
    /// 0x0078: AES-256-GCM, no key derivation (legacy).
    Aes256GcmNoKdf,
    /// 0x0114: AES-128-GCM, HKDF-SHA-256 (legacy).
    Aes128GcmHkdfSha256,
    /// 0x0146: AES-192-GCM, HKDF-SHA-256 (legacy).
    Aes192GcmHkdfSha256,
    /// 0x0178: AES-256-GCM, HKDF-SHA-256 (legacy).
    Aes256GcmHkdfSha256,
    /// 0x0214: AES-128-GCM, HKDF-SHA-256, ECDSA P-256 footer (legacy).
    Aes128GcmHkdfSha256EcdsaP256,
    /// 0x0346: AES-192-GCM, HKDF-SHA-384, ECDSA P-384 footer (legacy).
    Aes192GcmHkdfSha384EcdsaP384,
    /// 0x0378: AES-256-GCM, HKDF-SHA-384, ECDSA P-384 footer (legacy).
    Aes256GcmHkdfSha384EcdsaP384,
    /// 0x0478: AES-256-GCM, HKDF-SHA-512, key commitment (message format 2).
    Aes256GcmHkdfSha512CommitKey,
    /// 0x0578: AES-256-GCM, HKDF-SHA-512, key commitment, ECDSA P-384 footer (message format 2;
    /// the ESDK's default).
    Aes256GcmHkdfSha512CommitKeyEcdsaP384,
}

/// How the content key comes from the data key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kdf {
    /// The data key is the content key.
    Identity,
    HkdfSha256,
    HkdfSha384,
    HkdfSha512,
}

/// The footer's signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// ECDSA on P-256 over SHA-256.
    EcdsaP256Sha256,
    /// ECDSA on P-384 over SHA-384.
    EcdsaP384Sha384,
}

impl Suite {
    /// Every suite, in id order.
    pub const ALL: [Suite; 11] = [
        Suite::Aes128GcmNoKdf,
        Suite::Aes192GcmNoKdf,
        Suite::Aes256GcmNoKdf,
        Suite::Aes128GcmHkdfSha256,
        Suite::Aes192GcmHkdfSha256,
        Suite::Aes256GcmHkdfSha256,
        Suite::Aes128GcmHkdfSha256EcdsaP256,
        Suite::Aes192GcmHkdfSha384EcdsaP384,
        Suite::Aes256GcmHkdfSha384EcdsaP384,
        Suite::Aes256GcmHkdfSha512CommitKey,
        Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ];

    /// The two-byte id written in the header.
    pub const fn id(self) -> u16 {
        match self {
            Suite::Aes128GcmNoKdf => 0x0014,
            Suite::Aes192GcmNoKdf => 0x0046,
            Suite::Aes256GcmNoKdf => 0x0078,
            Suite::Aes128GcmHkdfSha256 => 0x0114,
            Suite::Aes192GcmHkdfSha256 => 0x0146,
            Suite::Aes256GcmHkdfSha256 => 0x0178,
            Suite::Aes128GcmHkdfSha256EcdsaP256 => 0x0214,
            Suite::Aes192GcmHkdfSha384EcdsaP384 => 0x0346,
            Suite::Aes256GcmHkdfSha384EcdsaP384 => 0x0378,
            Suite::Aes256GcmHkdfSha512CommitKey => 0x0478,
            Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384 => 0x0578,
        }
    }

    /// The suite with this id.
    pub fn from_id(id: u16) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.id() == id)
    }

    /// Parses `0x0478`, `0478` or the ESDK name (`AES_256_GCM_HKDF_SHA512_COMMIT_KEY`).
    pub fn parse(text: &str) -> Option<Suite> {
        let hex = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        if let Ok(id) = u16::from_str_radix(hex, 16) {
            return Suite::from_id(id);
        }
        Suite::ALL.into_iter().find(|s| s.name().eq_ignore_ascii_case(text))
    }

    /// The ESDK's name for it.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::Aes128GcmNoKdf => "AES_128_GCM_IV12_TAG16_NO_KDF",
            Suite::Aes192GcmNoKdf => "AES_192_GCM_IV12_TAG16_NO_KDF",
            Suite::Aes256GcmNoKdf => "AES_256_GCM_IV12_TAG16_NO_KDF",
            Suite::Aes128GcmHkdfSha256 => "AES_128_GCM_IV12_TAG16_HKDF_SHA256",
            Suite::Aes192GcmHkdfSha256 => "AES_192_GCM_IV12_TAG16_HKDF_SHA256",
            Suite::Aes256GcmHkdfSha256 => "AES_256_GCM_IV12_TAG16_HKDF_SHA256",
            Suite::Aes128GcmHkdfSha256EcdsaP256 => "AES_128_GCM_IV12_TAG16_HKDF_SHA256_ECDSA_P256",
            Suite::Aes192GcmHkdfSha384EcdsaP384 => "AES_192_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384",
            Suite::Aes256GcmHkdfSha384EcdsaP384 => "AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384",
            Suite::Aes256GcmHkdfSha512CommitKey => "AES_256_GCM_HKDF_SHA512_COMMIT_KEY",
            Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384 => "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384",
        }
    }

    /// The message format version this suite is written in: 2 for the committing suites.
    pub const fn message_version(self) -> u8 {
        if self.is_committing() {
            2
        } else {
            1
        }
    }

    /// Whether the header commits to the data key (so one message cannot open to two
    /// plaintexts under two keys).
    pub const fn is_committing(self) -> bool {
        matches!(
            self,
            Suite::Aes256GcmHkdfSha512CommitKey | Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384
        )
    }

    /// The data key's (and content key's) length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Suite::Aes128GcmNoKdf | Suite::Aes128GcmHkdfSha256 | Suite::Aes128GcmHkdfSha256EcdsaP256 => 16,
            Suite::Aes192GcmNoKdf | Suite::Aes192GcmHkdfSha256 | Suite::Aes192GcmHkdfSha384EcdsaP384 => 24,
            _ => 32,
        }
    }

    /// The message id's length: 16 bytes in format 1, 32 in format 2.
    pub const fn message_id_len(self) -> usize {
        if self.is_committing() {
            32
        } else {
            16
        }
    }

    /// The footer's signature algorithm, if the suite signs.
    pub const fn signature(self) -> Option<SignatureAlgorithm> {
        match self {
            Suite::Aes128GcmHkdfSha256EcdsaP256 => Some(SignatureAlgorithm::EcdsaP256Sha256),
            Suite::Aes192GcmHkdfSha384EcdsaP384
            | Suite::Aes256GcmHkdfSha384EcdsaP384
            | Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384 => Some(SignatureAlgorithm::EcdsaP384Sha384),
            _ => None,
        }
    }

    pub(crate) const fn kdf(self) -> Kdf {
        match self {
            Suite::Aes128GcmNoKdf | Suite::Aes192GcmNoKdf | Suite::Aes256GcmNoKdf => Kdf::Identity,
            Suite::Aes128GcmHkdfSha256
            | Suite::Aes192GcmHkdfSha256
            | Suite::Aes256GcmHkdfSha256
            | Suite::Aes128GcmHkdfSha256EcdsaP256 => Kdf::HkdfSha256,
            Suite::Aes192GcmHkdfSha384EcdsaP384 | Suite::Aes256GcmHkdfSha384EcdsaP384 => Kdf::HkdfSha384,
            Suite::Aes256GcmHkdfSha512CommitKey | Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384 => Kdf::HkdfSha512,
        }
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:04X} ({})", self.id(), self.name())
    }
}

/// Which suites a reader accepts (we always write committing suites).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CommitmentPolicy {
    /// Only key-committing suites are read (the default; the ESDK's
    /// `REQUIRE_ENCRYPT_REQUIRE_DECRYPT`).
    #[default]
    RequireEncryptRequireDecrypt,
    /// Messages of the legacy, non-committing suites are read too (for migrating data written
    /// by ESDK 1.x; the ESDK's `REQUIRE_ENCRYPT_ALLOW_DECRYPT`). Such a message can open to
    /// different plaintexts for holders of different wrapping keys.
    RequireEncryptAllowDecrypt,
}

impl CommitmentPolicy {
    /// Whether a message of `suite` may be read.
    pub fn allows_decrypt(self, suite: Suite) -> bool {
        suite.is_committing() || self == CommitmentPolicy::RequireEncryptAllowDecrypt
    }

    pub(crate) fn cache_tag(self) -> u8 {
        match self {
            CommitmentPolicy::RequireEncryptRequireDecrypt => 1,
            CommitmentPolicy::RequireEncryptAllowDecrypt => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_round_trip_and_parse() {
        for s in Suite::ALL {
            assert_eq!(Suite::from_id(s.id()), Some(s));
            assert_eq!(Suite::parse(&format!("0x{:04x}", s.id())), Some(s));
            assert_eq!(Suite::parse(s.name()), Some(s));
        }
        assert_eq!(Suite::from_id(0x0479), None);
        assert_eq!(Suite::parse("AES"), None);
    }

    #[test]
    fn only_committing_suites_by_default() {
        let p = CommitmentPolicy::default();
        let read: Vec<u16> = Suite::ALL
            .into_iter()
            .filter(|s| p.allows_decrypt(*s))
            .map(Suite::id)
            .collect();
        assert_eq!(read, [0x0478, 0x0578]);
    }
}
