//! Envelope encryption for files and records, in the AWS Encryption SDK message format.
//!
//! A message carries its data key wrapped by one or more keyrings (our kmsd, through the
//! attested `kms-agent` session; or a raw AES key) next to the ciphertext, so it decrypts
//! wherever one of them can be reached. The format is the ESDK's
//! ([message format](https://docs.aws.amazon.com/encryption-sdk/latest/developer-guide/message-format.html)),
//! byte for byte: version 2 with the key-committing suites 0x0478 and 0x0578 is written;
//! the official test vectors and the Python `aws-encryption-sdk` check it (`tests/`).
//!
//! What the library guarantees:
//! - **Key commitment**: only committing suites are written, and (by default,
//!   [`CommitmentPolicy::RequireEncryptRequireDecrypt`]) read: a message opens to one
//!   plaintext, whichever wrapped key is used.
//! - **The encryption context** is authenticated in the header and bound to every wrapped
//!   key (kmsd's policy and audit see it).
//! - **No unauthenticated plaintext**: [`Envelope::decrypt`] returns nothing unless the whole
//!   message verifies; the streaming reader releases a frame only once it authenticates, holds
//!   the final frame until the signature (and the absence of trailing data) verify, and refuses
//!   to stream a signed multi-frame message unless told otherwise
//!   ([`Envelope::danger_stream_unverified_signed_frames`]).
//! - **Bounded work before any key is opened**: [`Limits`] caps the wrapped keys, the header
//!   and the frame size.
//! - **Bounded memory**: the streaming adapters hold one frame.
//! - Data keys are zeroized on drop, have no `Debug` or `Clone`; the [`DataKeyCache`] keys its
//!   entries by everything that defines them.
//!
//! ```
//! # async fn demo() -> Result<(), kms_envelope::Error> {
//! use kms_envelope::{EncryptionContext, Envelope, RawAesKeyring};
//! let keyring = RawAesKeyring::new("escrow", "offline-key-1", &[7u8; 32])?;
//! let envelope = Envelope::new(keyring);
//! let context = EncryptionContext::new().with("tenant", "acme");
//! let message = envelope.encrypt(b"hello", &context).await?;
//! let decrypted = envelope.decrypt(&message, &context).await?;
//! assert_eq!(decrypted.plaintext.expose_secret(), b"hello");
//! # Ok(()) }
//! ```

#[cfg(feature = "tokio")]
mod async_io;
mod cache;
mod context;
mod crypto;
mod envelope;
mod error;
mod header;
mod keyring;
mod message;
mod stream;
mod suite;
mod wire;

#[cfg(feature = "tokio")]
pub use async_io::{AsyncDecryptingReader, AsyncEncryptingWriter};
pub use cache::{CacheLimits, DataKeyCache};
pub use context::{EncryptionContext, RESERVED_PREFIX};
pub use crypto::DataKey;
pub use envelope::{danger_open_with_data_key, Decrypted, Envelope, DEFAULT_FRAME_LENGTH, MAX_FRAME_LENGTH};
pub use error::Error;
pub use header::{ContentType, EncryptedDataKey, Header, Limits};
pub use keyring::{keyring_error, BoxFuture, Keyring, KeyringRequest, RawAesKeyring};
pub use stream::{DecryptingReader, EncryptingWriter};
pub use suite::{CommitmentPolicy, SignatureAlgorithm, Suite};

/// Parses a message's header alone (e.g. to see which keys can open it); at most
/// [`Limits`]' sizes are read.
pub fn parse_header(message: &[u8], limits: &Limits) -> Result<(Header, usize), Error> {
    Header::parse(message, limits)
}
