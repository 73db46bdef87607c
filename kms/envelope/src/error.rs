//! Errors. Each says what is wrong with the message or the call, never a key or plaintext.

use crate::suite::Suite;

/// Why a message could not be read (inside the parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormatError {
    /// More input is needed: at least `needed` bytes in all.
    Incomplete {
        needed: usize,
    },
    Malformed(&'static str),
    UnsupportedVersion(u8),
    UnsupportedSuite(u16),
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The message is not well-formed (names the field).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message ends before its final frame (or its footer).
    #[error("the message is truncated: it ends before its {0}")]
    Truncated(&'static str),
    /// Bytes follow the end of the message.
    #[error("the message is followed by other data")]
    TrailingData,
    /// The message format version is not 1 or 2.
    #[error("message format version {0} is not supported")]
    UnsupportedVersion(u8),
    /// The algorithm suite id is unknown.
    #[error("algorithm suite 0x{0:04X} is not supported")]
    UnsupportedSuite(u16),
    /// The suite does not commit to its key, and the commitment policy requires one.
    #[error("the message uses {0}, which does not commit to its data key; the commitment policy requires a committing suite (RequireEncryptAllowDecrypt reads legacy messages)")]
    NonCommittingSuite(Suite),
    /// More wrapped data keys than allowed (checked before any key is unwrapped).
    #[error("the message carries {count} wrapped data keys; at most {max} are accepted")]
    TooManyWrappedKeys { count: usize, max: usize },
    /// The header is larger than allowed (checked before any key is unwrapped).
    #[error("the message header exceeds {max} bytes")]
    HeaderTooLarge { max: usize },
    /// The header's authentication tag does not verify: the header was changed, or the
    /// encryption context given is not the one the message was written with.
    #[error("the message header does not authenticate (it was altered, or the encryption context differs)")]
    HeaderAuthentication,
    /// A frame does not authenticate.
    #[error("frame {sequence} does not authenticate (altered, reordered or from another message)")]
    FrameAuthentication { sequence: u32 },
    /// The data key does not match the header's key commitment.
    #[error("the data key does not match the message's key commitment")]
    Commitment,
    /// The footer's signature does not verify.
    #[error("the message signature does not verify")]
    Signature,
    /// A pair of the expected encryption context is missing or different in the message.
    #[error("the encryption context does not match: {0}")]
    ContextMismatch(String),
    /// No wrapped data key could be opened by any keyring; each attempt's error is kept.
    #[error("no wrapped data key could be opened: {}", if .0.is_empty() { "none is for these keyrings".to_owned() } else { .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ") })]
    NoDataKey(Vec<Error>),
    /// A keyring failed (making, wrapping or opening a data key); its own error is the source
    /// (e.g. a `kms_agent::Error` with kmsd's refusal).
    #[error("keyring {keyring}: {source}")]
    Keyring {
        keyring: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The encryption context is not usable.
    #[error("invalid encryption context: {0}")]
    InvalidContext(String),
    /// A setting or argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A signed message of more than one frame is being streamed, which would release
    /// plaintext before the signature is checked.
    #[error("streaming a signed message of more than one frame releases plaintext before its signature is verified; decrypt it in one piece, or opt in with danger_stream_unverified_signed_frames")]
    SignedStreaming,
    /// Reading or writing the underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The random number generator or a primitive failed.
    #[error("crypto: {0}")]
    Crypto(&'static str),
}

impl Error {
    /// A stable, short name for the error (for exit messages and metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "malformed",
            Error::Truncated(_) => "truncated",
            Error::TrailingData => "trailing_data",
            Error::UnsupportedVersion(_) => "unsupported_version",
            Error::UnsupportedSuite(_) => "unsupported_suite",
            Error::NonCommittingSuite(_) => "non_committing_suite",
            Error::TooManyWrappedKeys { .. } => "too_many_wrapped_keys",
            Error::HeaderTooLarge { .. } => "header_too_large",
            Error::HeaderAuthentication => "header_authentication",
            Error::FrameAuthentication { .. } => "frame_authentication",
            Error::Commitment => "key_commitment",
            Error::Signature => "signature",
            Error::ContextMismatch(_) => "context_mismatch",
            Error::NoDataKey(_) => "no_data_key",
            Error::Keyring { .. } => "keyring",
            Error::InvalidContext(_) => "invalid_context",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::SignedStreaming => "signed_streaming",
            Error::Io(_) => "io",
            Error::Crypto(_) => "crypto",
        }
    }

    pub(crate) fn from_format(e: FormatError, truncated_in: &'static str) -> Self {
        match e {
            FormatError::Incomplete { .. } => Error::Truncated(truncated_in),
            FormatError::Malformed(m) => Error::Malformed(m.to_owned()),
            FormatError::UnsupportedVersion(v) => Error::UnsupportedVersion(v),
            FormatError::UnsupportedSuite(s) => Error::UnsupportedSuite(s),
        }
    }

    /// As an `io::Error` for the Read/Write adapters (kind InvalidData, this error inside).
    pub(crate) fn into_io(self) -> std::io::Error {
        match self {
            Error::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        e.into_io()
    }
}
