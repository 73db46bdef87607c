//! [`Envelope`]: the configured library. It gets a data key from its keyrings (or the cache),
//! writes and reads messages in one piece or streaming.

use std::io::{Read, Write};
use std::sync::Arc;

use kms_core::secret::SecretBytes;

use crate::cache::{CacheId, DataKeyCache, EncryptionEntry};
use crate::context::{EncryptionContext, PUBLIC_KEY_KEY};
use crate::crypto::{ContentKey, DataKey, Signer};
use crate::error::Error;
use crate::header::{Header, Limits};
use crate::keyring::{Keyring, KeyringRequest};
use crate::message::{self, BodyReader, Sealer};
use crate::stream::{DecryptingReader, EncryptingWriter};
use crate::suite::{CommitmentPolicy, Suite};

/// The default frame length: 64 KiB.
pub const DEFAULT_FRAME_LENGTH: u32 = 64 * 1024;
/// The largest frame length we write (16 MiB; the default reader limit).
pub const MAX_FRAME_LENGTH: u32 = 16 * 1024 * 1024;

/// Envelope encryption with one or more keyrings. Cheap to clone.
#[derive(Clone)]
pub struct Envelope {
    keyrings: Vec<Arc<dyn Keyring>>,
    suite: Suite,
    frame_length: u32,
    policy: CommitmentPolicy,
    limits: Limits,
    cache: Option<Arc<DataKeyCache>>,
    danger_stream_unverified_signed_frames: bool,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("keyrings", &self.keyring_names())
            .field("suite", &self.suite)
            .field("frame_length", &self.frame_length)
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// A decrypted message: its plaintext (zeroized on drop) and header.
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: SecretBytes,
    /// The header: the context it stores, its suite, its wrapped keys.
    pub header: Header,
}

/// What the header's data key gave: the content key, and the full context.
pub(crate) struct Opened {
    pub(crate) key: ContentKey,
}

impl Envelope {
    /// Envelope encryption whose data keys come from `keyring` (it makes them; further
    /// keyrings added with [`Envelope::with_keyring`] wrap them too). Defaults: suite 0x0578
    /// (key commitment and an ECDSA P-384 signature, as the ESDK), 64 KiB frames, only
    /// committing suites read, [`Limits::default`], no cache.
    pub fn new(keyring: impl Keyring + 'static) -> Self {
        Self::from_arc(Arc::new(keyring))
    }

    /// As [`Envelope::new`] with a shared keyring.
    pub fn from_arc(keyring: Arc<dyn Keyring>) -> Self {
        Self {
            keyrings: vec![keyring],
            suite: Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
            frame_length: DEFAULT_FRAME_LENGTH,
            policy: CommitmentPolicy::default(),
            limits: Limits::default(),
            cache: None,
            danger_stream_unverified_signed_frames: false,
        }
    }

    /// Adds a keyring: messages carry the data key wrapped by it too (every keyring must
    /// succeed to encrypt); to decrypt, any one of them is enough.
    pub fn with_keyring(mut self, keyring: impl Keyring + 'static) -> Self {
        self.keyrings.push(Arc::new(keyring));
        self
    }

    /// Adds a shared keyring (see [`Envelope::with_keyring`]).
    pub fn with_keyring_arc(mut self, keyring: Arc<dyn Keyring>) -> Self {
        self.keyrings.push(keyring);
        self
    }

    /// The suite messages are written with: 0x0478 or 0x0578 (only committing suites are
    /// written). 0x0478 has no signature: anyone who can decrypt could also forge a message;
    /// choose it when every reader is also a trusted writer, or to stream large messages.
    pub fn with_suite(mut self, suite: Suite) -> Result<Self, Error> {
        if !suite.is_committing() {
            return Err(Error::InvalidArgument(format!(
                "{suite} does not commit to its key; messages are written with 0x0478 or 0x0578"
            )));
        }
        self.suite = suite;
        Ok(self)
    }

    /// The frame length messages are written with: 1 byte to 16 MiB.
    pub fn with_frame_length(mut self, frame_length: u32) -> Result<Self, Error> {
        if !(1..=MAX_FRAME_LENGTH).contains(&frame_length) {
            return Err(Error::InvalidArgument(format!(
                "the frame length {frame_length} is not between 1 and {MAX_FRAME_LENGTH}"
            )));
        }
        self.frame_length = frame_length;
        Ok(self)
    }

    /// Which suites are read.
    pub fn with_commitment_policy(mut self, policy: CommitmentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// What a reader accepts before opening a wrapped key.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Caches data keys (see [`DataKeyCache`]).
    pub fn with_cache(mut self, cache: Arc<DataKeyCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Lets the streaming reader release the frames of a signed, multi-frame message before
    /// the signature at its end is verified. Dangerous: until the end, a holder of any wrapping
    /// key could have written those frames. The final frame is still held until the signature
    /// verifies. Use it only when the output is not acted on before the reader reports the end
    /// (e.g. written to a temporary file that is renamed afterwards).
    pub fn danger_stream_unverified_signed_frames(mut self) -> Self {
        self.danger_stream_unverified_signed_frames = true;
        self
    }

    /// The suite messages are written with.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The limits readers apply; encrypt refuses to write a message they would refuse (more
    /// wrapped keys, a longer header).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn allows_unverified_signed_frames(&self) -> bool {
        self.danger_stream_unverified_signed_frames
    }

    fn keyring_names(&self) -> Vec<String> {
        self.keyrings.iter().map(|k| k.name()).collect()
    }

    fn cache_identities(&self) -> Vec<Vec<u8>> {
        self.keyrings.iter().map(|k| k.cache_identity()).collect()
    }

    /// Encrypts `plaintext` in one message bound to `context`.
    pub async fn encrypt(&self, plaintext: &[u8], context: &EncryptionContext) -> Result<Vec<u8>, Error> {
        let (sealer, header) = self.start(context, Some(plaintext.len() as u64)).await?;
        let mut out = Vec::with_capacity(
            header.len() + plaintext.len() + plaintext.len() / self.frame_length as usize * 36 + 256,
        );
        let mut core = crate::stream::SealOut::new(sealer, header, Some(plaintext.len() as u64));
        let mut rest = plaintext;
        while !rest.is_empty() {
            core.drain_into(&mut out);
            let n = core.push(rest)?;
            rest = &rest[n..];
        }
        core.drain_into(&mut out);
        core.finish()?;
        core.drain_into(&mut out);
        Ok(out)
    }

    /// Decrypts a whole message. Every pair of `expected` must be in the message's context (or,
    /// for pairs the header does not store, authenticated by it); nothing is returned unless
    /// every frame and the signature verify.
    pub async fn decrypt(&self, message: &[u8], expected: &EncryptionContext) -> Result<Decrypted, Error> {
        let (header, used) = Header::parse(message, &self.limits)?;
        let opened = self.open(&header, expected).await?;
        read_whole(header, opened.key, &self.limits, &message[used..])
    }

    /// Starts a streamed message to `inner` bound to `context`: write the plaintext, then call
    /// [`EncryptingWriter::finish`]. `plaintext_len`, if known, lets the cache count bytes
    /// (without it the cache is not used; with it, writing more is refused).
    pub async fn encrypting_writer<W: Write>(
        &self,
        inner: W,
        context: &EncryptionContext,
        plaintext_len: Option<u64>,
    ) -> Result<EncryptingWriter<W>, Error> {
        let (sealer, header) = self.start(context, plaintext_len).await?;
        Ok(EncryptingWriter::new(inner, sealer, header, plaintext_len))
    }

    /// Reads a streamed message from `inner`: the header now (it blocks on `inner`), the
    /// body as the reader is read. The reader returns end-of-file only after the final frame,
    /// the signature and the absence of trailing bytes are checked; an error before that means
    /// what was read must be discarded. A signed message of more than one frame is refused
    /// (`SignedStreaming`) unless [`Envelope::danger_stream_unverified_signed_frames`].
    pub async fn decrypting_reader<R: Read>(
        &self,
        mut inner: R,
        expected: &EncryptionContext,
    ) -> Result<DecryptingReader<R>, Error> {
        let (header, rest) = crate::stream::read_header(&mut inner, &self.limits)?;
        let opened = self.open(&header, expected).await?;
        let mut body = BodyReader::new(&header, opened.key, &self.limits)?;
        body.feed(&rest);
        Ok(DecryptingReader::new(
            inner,
            header,
            body,
            self.allows_unverified_signed_frames(),
        ))
    }

    /// Encryption materials (cached, or from the keyrings), and the header.
    pub(crate) async fn start(
        &self,
        context: &EncryptionContext,
        plaintext_len: Option<u64>,
    ) -> Result<(Sealer, Vec<u8>), Error> {
        context.check_caller_keys()?;
        let cache = self.cache.as_ref().zip(plaintext_len);
        let id = cache.map(|_| {
            let mut id = CacheId::new("encrypt", self.suite, self.policy, &self.cache_identities());
            id.context(context);
            id.finish()
        });
        let cached = match (cache, &id) {
            (Some((c, len)), Some(id)) => c.take_encryption(id, len),
            _ => None,
        };
        let entry = match cached {
            Some(e) => e,
            None => {
                let e = Arc::new(self.materials(context).await?);
                if let (Some((c, len)), Some(id)) = (cache, id) {
                    c.put_encryption(id, e.clone(), len);
                }
                e
            }
        };
        let (sealer, header) = Sealer::start(
            self.suite,
            &entry.data_key,
            &entry.edks,
            &entry.context,
            entry.signer.clone(),
            self.frame_length,
        )?;
        // What this envelope's own reader would refuse is not written (the ESDK's encrypt MUST
        // refuse more wrapped keys than its maximum).
        if header.len() > self.limits.max_header_len {
            return Err(Error::HeaderTooLarge {
                max: self.limits.max_header_len,
            });
        }
        Ok((sealer, header))
    }

    async fn materials(&self, context: &EncryptionContext) -> Result<EncryptionEntry, Error> {
        // One wrapped key per keyring: checked before any keyring is asked for one.
        if self.keyrings.len() > self.limits.max_wrapped_keys {
            return Err(Error::TooManyWrappedKeys {
                count: self.keyrings.len(),
                max: self.limits.max_wrapped_keys,
            });
        }
        let mut context = context.clone();
        let signer = match self.suite.signature() {
            Some(alg) => {
                let s = Signer::generate(alg)?;
                context.insert(PUBLIC_KEY_KEY.to_owned(), s.public_key_b64());
                Some(Arc::new(s))
            }
            None => None,
        };
        let request = KeyringRequest {
            suite: self.suite,
            context: &context,
        };
        let (generator, others) = self
            .keyrings
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("no keyring".into()))?;
        let (data_key, first) = generator.generate(request).await?;
        if data_key.len() != self.suite.key_len() {
            return Err(crate::keyring::keyring_error(
                generator.as_ref(),
                format!(
                    "made a {}-byte data key; {} needs {}",
                    data_key.len(),
                    self.suite,
                    self.suite.key_len()
                ),
            ));
        }
        let mut edks = vec![first];
        for k in others {
            edks.push(k.wrap(&data_key, request).await?);
        }
        Ok(EncryptionEntry {
            data_key,
            edks,
            context,
            signer,
        })
    }

    /// Checks the suite against the commitment policy, finds a data key for the header (the
    /// cache, then each wrapped key with each keyring that recognizes it), and verifies it
    /// against the header.
    pub(crate) async fn open(&self, header: &Header, expected: &EncryptionContext) -> Result<Opened, Error> {
        let only = precheck(self.policy, header, expected)?;
        let full = message::full_context(header, &only);
        let id = self.cache.as_ref().map(|_| {
            let mut id = CacheId::new("decrypt", header.suite, self.policy, &self.cache_identities());
            id.context(&full);
            id.field(&(header.edks.len() as u64).to_be_bytes());
            for e in &header.edks {
                id.field(e.provider_id.as_bytes());
                id.field(&e.provider_info);
                id.field(&e.ciphertext);
            }
            id.finish()
        });
        if let (Some(cache), Some(id)) = (&self.cache, &id) {
            if let Some(key) = cache.take_decryption(id) {
                return Ok(Opened {
                    key: message::open_header(header, &key, &only)?,
                });
            }
        }
        let request = KeyringRequest {
            suite: header.suite,
            context: &full,
        };
        let mut attempts = Vec::new();
        for edk in &header.edks {
            for keyring in self.keyrings.iter().filter(|k| k.recognizes(edk)) {
                let key = match keyring.unwrap(edk, request).await {
                    Ok(key) => key,
                    Err(e) => {
                        attempts.push(e);
                        continue;
                    }
                };
                if key.len() != header.suite.key_len() {
                    attempts.push(crate::keyring::keyring_error(
                        keyring.as_ref(),
                        format!(
                            "opened a {}-byte data key; {} needs {}",
                            key.len(),
                            header.suite,
                            header.suite.key_len()
                        ),
                    ));
                    continue;
                }
                // A wrapped key that opens but does not match the header is an attack (or a
                // corrupt message), not a reason to try the next one.
                let content_key = message::open_header(header, &key, &only)?;
                if let (Some(cache), Some(id)) = (&self.cache, id) {
                    cache.put_decryption(id, &key);
                }
                return Ok(Opened { key: content_key });
            }
        }
        Err(Error::NoDataKey(attempts))
    }
}

/// A data key, exactly as a keyring would give it: for tests of the format (the ESDK's
/// commitment vectors come with their data keys).
#[doc(hidden)]
pub fn danger_open_with_data_key(
    message: &[u8],
    data_key: Vec<u8>,
    policy: CommitmentPolicy,
    expected: &EncryptionContext,
) -> Result<Decrypted, Error> {
    let limits = Limits::default();
    let (header, used) = Header::parse(message, &limits)?;
    let only = precheck(policy, &header, expected)?;
    let key = message::open_header(&header, &DataKey::new(data_key), &only)?;
    read_whole(header, key, &limits, &message[used..])
}

/// What is checked before any keyring is asked: the commitment policy, the signing key, and
/// the expected context against the stored one; gives the authenticated-only pairs.
fn precheck(
    policy: CommitmentPolicy,
    header: &Header,
    expected: &EncryptionContext,
) -> Result<EncryptionContext, Error> {
    if !policy.allows_decrypt(header.suite) {
        return Err(Error::NonCommittingSuite(header.suite));
    }
    message::check_public_key(header)?;
    message::authenticated_only(header, expected)
}

/// Decrypts a whole body held in memory; the plaintext only if everything verifies.
fn read_whole(header: Header, key: ContentKey, limits: &Limits, body: &[u8]) -> Result<Decrypted, Error> {
    let mut reader = BodyReader::new(&header, key, limits)?;
    reader.feed(body);
    Ok(Decrypted {
        plaintext: reader.read_to_end()?,
        header,
    })
}
