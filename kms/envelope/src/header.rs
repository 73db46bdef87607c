//! The message header (ESDK `data-format/message-header.md`), formats 1 and 2: parsed from a
//! byte slice that may not hold all of it yet, with the reader's limits checked as soon as the
//! fields they bound are read (before any wrapped key is opened).

use crate::context::EncryptionContext;
use crate::error::{Error, FormatError};
use crate::suite::Suite;
use crate::wire::{put_u16_prefixed, Cursor, Short};

/// The IV length every suite uses.
pub(crate) const IV_LEN: usize = 12;
/// The GCM tag length every suite uses.
pub(crate) const TAG_LEN: usize = 16;
/// The key commitment's length (format 2).
pub(crate) const COMMITMENT_LEN: usize = 32;

/// One wrapped copy of the data key: who can open it (provider id and info) and the wrapped
/// bytes (a kmsd ciphertext blob, or a raw AES-GCM wrap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedDataKey {
    /// Names the key provider: `kmsd` for our kmsd keyring, the namespace for a raw AES key.
    pub provider_id: String,
    /// The provider's own data: key id and version for kmsd; key name and IV for raw AES.
    pub provider_info: Vec<u8>,
    /// The wrapped data key.
    pub ciphertext: Vec<u8>,
}

/// How the body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// One AES-GCM block (legacy; read only).
    NonFramed,
    /// Frames of `frame_length` bytes, then a final frame.
    Framed,
}

/// What a reader accepts before it opens a wrapped key; each bounds memory or work an untrusted
/// message can cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// At most this many wrapped data keys (default 8); more is refused before any key is
    /// opened, so a message cannot make the reader call kmsd many times.
    pub max_wrapped_keys: usize,
    /// At most this many header bytes (default 64 KiB).
    pub max_header_len: usize,
    /// At most this frame length (default 16 MiB): a reader holds one frame.
    pub max_frame_length: u32,
    /// At most this many bytes in a non-framed (legacy) body (default 64 MiB), held whole.
    pub max_non_framed_len: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_wrapped_keys: 8,
            max_header_len: 64 * 1024,
            max_frame_length: 16 * 1024 * 1024,
            max_non_framed_len: 64 * 1024 * 1024,
        }
    }
}

/// A parsed header.
#[derive(Clone, Debug)]
pub struct Header {
    pub(crate) suite: Suite,
    pub(crate) message_id: Vec<u8>,
    pub(crate) context: EncryptionContext,
    pub(crate) edks: Vec<EncryptedDataKey>,
    pub(crate) content_type: ContentType,
    pub(crate) frame_length: u32,
    pub(crate) commitment: Option<[u8; COMMITMENT_LEN]>,
    /// Format 1: the header authentication's IV; format 2: zeros.
    pub(crate) auth_iv: [u8; IV_LEN],
    pub(crate) auth_tag: [u8; TAG_LEN],
    /// The whole header as serialized (body, then authentication): the signature covers it.
    pub(crate) raw: Vec<u8>,
    /// The body's length in `raw` (what the authentication tag covers).
    pub(crate) body_len: usize,
}

impl Header {
    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The message id (16 or 32 bytes).
    pub fn message_id(&self) -> &[u8] {
        &self.message_id
    }

    /// The encryption context stored in the header (for a signed message it includes
    /// `aws-crypto-public-key`).
    pub fn context(&self) -> &EncryptionContext {
        &self.context
    }

    /// The wrapped data keys.
    pub fn encrypted_data_keys(&self) -> &[EncryptedDataKey] {
        &self.edks
    }

    /// The frame length (0 for a non-framed body).
    pub fn frame_length(&self) -> u32 {
        self.frame_length
    }

    /// Framed or not.
    pub fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// Parses a header from the start of `buf`: the header and the number of bytes it took, or
    /// `Truncated` if `buf` ends inside it.
    pub(crate) fn parse(buf: &[u8], limits: &Limits) -> Result<(Header, usize), Error> {
        match Self::parse_partial(buf, limits)? {
            Partial::Done(header, used) => Ok((header, used)),
            Partial::Needs(_) => Err(Error::Truncated("header")),
        }
    }

    /// As [`Header::parse`], for a reader that may not have all of the header yet: if `buf`
    /// ends inside it, how many bytes it has at least. A parse of a longer prefix makes the same
    /// decisions up to that field, so a reader need not parse again before that many arrived.
    pub(crate) fn parse_partial(buf: &[u8], limits: &Limits) -> Result<Partial, Error> {
        let too_large = Error::HeaderTooLarge {
            max: limits.max_header_len,
        };
        match parse_inner(buf, limits) {
            Ok((_, n)) if n > limits.max_header_len => Err(too_large),
            Ok((header, n)) => Ok(Partial::Done(header, n)),
            // The header is at least `needed` bytes: known too large before it is all read.
            Err(Parse::Format(FormatError::Incomplete { needed })) if needed > limits.max_header_len => Err(too_large),
            Err(Parse::Format(FormatError::Incomplete { needed })) => Ok(Partial::Needs(needed)),
            Err(Parse::Format(e)) => Err(Error::from_format(e, "header")),
            Err(Parse::Limit(e)) => Err(e),
        }
    }

    /// The body part of the header (what its authentication covers).
    pub(crate) fn body(&self) -> &[u8] {
        &self.raw[..self.body_len]
    }
}

/// What a prefix of a message gave.
pub(crate) enum Partial {
    /// The header, and the number of bytes it took.
    Done(Header, usize),
    /// `buf` ends inside the header, which is at least this many bytes.
    Needs(usize),
}

enum Parse {
    Format(FormatError),
    Limit(Error),
}

impl From<Short> for Parse {
    fn from(short: Short) -> Self {
        Parse::Format(FormatError::Incomplete { needed: short.needed })
    }
}

fn malformed(what: &'static str) -> Parse {
    Parse::Format(FormatError::Malformed(what))
}

fn parse_inner(buf: &[u8], limits: &Limits) -> Result<(Header, usize), Parse> {
    let mut c = Cursor::new(buf);
    let version = c.u8()?;
    if version != 1 && version != 2 {
        return Err(Parse::Format(FormatError::UnsupportedVersion(version)));
    }
    if version == 1 && c.u8()? != 0x80 {
        return Err(malformed(
            "header: the type is not 0x80 (customer authenticated encrypted data)",
        ));
    }
    let suite_id = c.u16()?;
    let suite = Suite::from_id(suite_id).ok_or(Parse::Format(FormatError::UnsupportedSuite(suite_id)))?;
    if suite.message_version() != version {
        return Err(malformed(
            "header: the suite does not belong to this message format version",
        ));
    }
    let message_id = c.take(suite.message_id_len())?.to_vec();
    let aad = c.u16_prefixed()?;
    let context = EncryptionContext::parse(aad).map_err(Parse::Format)?;
    let count = usize::from(c.u16()?);
    if count == 0 {
        return Err(malformed("header: no wrapped data key"));
    }
    if count > limits.max_wrapped_keys {
        return Err(Parse::Limit(Error::TooManyWrappedKeys {
            count,
            max: limits.max_wrapped_keys,
        }));
    }
    let mut edks = Vec::with_capacity(count);
    for _ in 0..count {
        let provider_id = String::from_utf8(c.u16_prefixed()?.to_vec())
            .map_err(|_| malformed("header: a key provider id is not UTF-8"))?;
        let provider_info = c.u16_prefixed()?.to_vec();
        let ciphertext = c.u16_prefixed()?.to_vec();
        edks.push(EncryptedDataKey {
            provider_id,
            provider_info,
            ciphertext,
        });
    }
    let content_type = match c.u8()? {
        1 => ContentType::NonFramed,
        2 => ContentType::Framed,
        _ => return Err(malformed("header: unknown content type")),
    };
    if version == 1 {
        if c.u32()? != 0 {
            return Err(malformed("header: the reserved field is not zero"));
        }
        if usize::from(c.u8()?) != IV_LEN {
            return Err(malformed("header: the IV length is not 12"));
        }
    }
    let frame_length = c.u32()?;
    match content_type {
        ContentType::NonFramed if frame_length != 0 => {
            return Err(malformed("header: a non-framed message with a frame length"))
        }
        ContentType::Framed if frame_length == 0 => return Err(malformed("header: a frame length of zero")),
        ContentType::Framed if frame_length > limits.max_frame_length => {
            return Err(Parse::Limit(Error::InvalidArgument(format!(
                "the message's frame length {frame_length} exceeds this reader's limit of {}",
                limits.max_frame_length
            ))))
        }
        _ => {}
    }
    let commitment = if version == 2 {
        Some(c.array::<COMMITMENT_LEN>()?)
    } else {
        None
    };
    let body_len = c.position();
    let auth_iv = if version == 1 {
        c.array::<IV_LEN>()?
    } else {
        [0u8; IV_LEN]
    };
    let auth_tag = c.array::<TAG_LEN>()?;
    let header = Header {
        suite,
        message_id,
        context,
        edks,
        content_type,
        frame_length,
        commitment,
        auth_iv,
        auth_tag,
        raw: buf[..c.position()].to_vec(),
        body_len,
    };
    Ok((header, c.position()))
}

/// Serializes a format-2 header body (we write only format 2).
pub(crate) fn serialize_v2_body(
    suite: Suite,
    message_id: &[u8],
    context: &EncryptionContext,
    edks: &[EncryptedDataKey],
    frame_length: u32,
    commitment: &[u8; COMMITMENT_LEN],
) -> Result<Vec<u8>, Error> {
    debug_assert!(suite.is_committing() && message_id.len() == 32);
    let mut out = Vec::with_capacity(256);
    out.push(2);
    out.extend_from_slice(&suite.id().to_be_bytes());
    out.extend_from_slice(message_id);
    put_u16_prefixed(&mut out, &context.serialize()?, "the encryption context")?;
    let count = u16::try_from(edks.len())
        .map_err(|_| Error::InvalidArgument(format!("{} wrapped keys; at most 65535", edks.len())))?;
    out.extend_from_slice(&count.to_be_bytes());
    for edk in edks {
        put_u16_prefixed(&mut out, edk.provider_id.as_bytes(), "a key provider id")?;
        put_u16_prefixed(&mut out, &edk.provider_info, "a key provider's info")?;
        put_u16_prefixed(&mut out, &edk.ciphertext, "a wrapped data key")?;
    }
    out.push(2); // framed
    out.extend_from_slice(&frame_length.to_be_bytes());
    out.extend_from_slice(commitment);
    Ok(out)
}
