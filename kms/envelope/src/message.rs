//! Writing and reading a message body, independent of how bytes arrive: the [`Sealer`] turns
//! plaintext into header, frames and footer; the [`BodyReader`] turns buffered input into
//! authenticated plaintext, one frame at a time. The one-shot, `Read`/`Write` and async
//! front-ends all drive these two, so every rule (sequence, IV, final frame, footer, trailing
//! bytes) is checked in one place.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::context::EncryptionContext;
use crate::crypto::{self, BodyPart, ContentKey, DataKey, Signer, Transcript, Verifier};
use crate::error::Error;
use crate::header::{self, ContentType, EncryptedDataKey, Header, Limits, IV_LEN, TAG_LEN};
use crate::suite::Suite;
use crate::wire::{Cursor, Short};

/// The sequence-number field of a final frame.
const FINAL_FRAME_MARK: u32 = 0xFFFF_FFFF;

/// Turns plaintext into a message. Holds at most one frame of plaintext (zeroized).
pub(crate) struct Sealer {
    message_id: Vec<u8>,
    key: ContentKey,
    frame_length: usize,
    next_sequence: u32,
    signer: Option<(Arc<Signer>, Transcript)>,
    frame: Zeroizing<Vec<u8>>,
}

impl Sealer {
    /// Starts a message: returns the sealer and the header bytes to write first.
    pub(crate) fn start(
        suite: Suite,
        data_key: &DataKey,
        edks: &[EncryptedDataKey],
        context: &EncryptionContext,
        signer: Option<Arc<Signer>>,
        frame_length: u32,
    ) -> Result<(Self, Vec<u8>), Error> {
        let message_id: [u8; 32] =
            kms_core::random_array().map_err(|_| Error::Crypto("the random number generator failed"))?;
        let (key, commitment) = crypto::derive(suite, data_key, &message_id)?;
        let commitment = commitment.ok_or(Error::Crypto("a committing suite gave no commitment"))?;
        let mut header = header::serialize_v2_body(suite, &message_id, context, edks, frame_length, &commitment)?;
        let tag = key.seal(&[0u8; IV_LEN], &header, &mut [])?;
        header.extend_from_slice(&tag);
        let signer = signer.map(|s| {
            let mut t = Transcript::new(suite.signature().unwrap_or(crate::SignatureAlgorithm::EcdsaP384Sha384));
            t.update(&header);
            (s, t)
        });
        let frame_length = frame_length as usize;
        Ok((
            Self {
                message_id: message_id.to_vec(),
                key,
                frame_length,
                next_sequence: 1,
                signer,
                frame: Zeroizing::new(Vec::with_capacity(frame_length)),
            },
            header,
        ))
    }

    /// Takes plaintext; appends every frame it completes to `out`. A full frame is held until
    /// more plaintext shows it is not the last.
    pub(crate) fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        while !data.is_empty() {
            if self.frame.len() == self.frame_length {
                self.emit(false, out)?;
            }
            let n = (self.frame_length - self.frame.len()).min(data.len());
            self.frame.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends the message: the final frame (what is held, possibly empty) and the footer.
    pub(crate) fn finish(mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.emit(true, out)?;
        if let Some((signer, transcript)) = self.signer.take() {
            let signature = signer.sign(transcript)?;
            crate::wire::put_u16_prefixed(out, &signature, "the signature")?;
        }
        Ok(())
    }

    fn emit(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), Error> {
        let sequence = self.next_sequence;
        if sequence == FINAL_FRAME_MARK {
            return Err(Error::InvalidArgument(
                "the message would need more than 2^32 - 2 frames; use a larger frame length".into(),
            ));
        }
        self.next_sequence += 1;
        let len = self.frame.len();
        let start = out.len();
        let part = if last {
            out.extend_from_slice(&FINAL_FRAME_MARK.to_be_bytes());
            BodyPart::FinalFrame
        } else {
            BodyPart::Frame
        };
        let iv = crypto::frame_iv(sequence);
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(&iv);
        if last {
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        let aad = crypto::frame_aad(&self.message_id, part, sequence, len as u64);
        let tag = self.key.seal(&iv, &aad, &mut self.frame)?;
        out.extend_from_slice(&self.frame);
        out.extend_from_slice(&tag);
        self.frame.clear();
        if let Some((_, t)) = &mut self.signer {
            t.update(&out[start..]);
        }
        Ok(())
    }
}

/// What the body reader produced.
pub(crate) enum Unit {
    /// A frame's authenticated plaintext; `last` for the final frame (or a non-framed body).
    Plaintext { plaintext: Zeroizing<Vec<u8>>, last: bool },
    /// The message ended: final frame, footer verified, and no byte after it.
    End,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Body,
    Footer,
    Done,
}

/// Reads the body of a message whose header verified. Input is appended with
/// [`BodyReader::feed`]; [`BodyReader::next`] parses at most one unit.
pub(crate) struct BodyReader {
    suite: Suite,
    message_id: Vec<u8>,
    content_type: ContentType,
    frame_length: usize,
    max_non_framed_len: u64,
    key: ContentKey,
    next_sequence: u32,
    verifier: Option<(Verifier, Transcript)>,
    state: State,
    input: Vec<u8>,
    start: usize,
}

impl BodyReader {
    /// After the header verified under `data_key` (see [`open_header`]).
    pub(crate) fn new(header: &Header, key: ContentKey, limits: &Limits) -> Result<Self, Error> {
        let verifier = match header.suite.signature() {
            Some(alg) => {
                let v = Verifier::from_header(alg, header.context.get(crate::context::PUBLIC_KEY_KEY))?;
                let mut t = Transcript::new(alg);
                t.update(&header.raw);
                Some((v, t))
            }
            None => None,
        };
        Ok(Self {
            suite: header.suite,
            message_id: header.message_id.clone(),
            content_type: header.content_type,
            frame_length: header.frame_length as usize,
            max_non_framed_len: limits.max_non_framed_len,
            key,
            next_sequence: 1,
            verifier,
            state: State::Body,
            input: Vec::new(),
            start: 0,
        })
    }

    /// Whether the suite signs (the caller holds plaintext until [`Unit::End`]).
    pub(crate) fn is_signed(&self) -> bool {
        self.suite.signature().is_some()
    }

    /// Reads the rest of the message, all of it already fed; the plaintext only if everything
    /// verifies.
    pub(crate) fn read_to_end(&mut self) -> Result<kms_core::secret::SecretBytes, Error> {
        let mut plaintext = Zeroizing::new(Vec::with_capacity(self.input.len() - self.start));
        loop {
            match self.next(true)? {
                Some(Unit::Plaintext { plaintext: p, .. }) => plaintext.extend_from_slice(&p),
                Some(Unit::End) => return Ok(kms_core::secret::SecretBytes::new(std::mem::take(&mut *plaintext))),
                None => return Err(Error::Truncated("final frame")),
            }
        }
    }

    /// Appends input.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.input.len() {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// How many more bytes would let [`BodyReader::next`] make progress, at least (a read
    /// size hint; bounded by one frame).
    pub(crate) fn wants(&self) -> usize {
        (self.frame_length + 64).clamp(4096, 1 << 20)
    }

    /// Parses the next unit from the input. `Ok(None)`: more input is needed; `eof` says there
    /// is none, and then a missing part is `Truncated`.
    pub(crate) fn next(&mut self, eof: bool) -> Result<Option<Unit>, Error> {
        let available = &self.input[self.start..];
        let parsed = match self.state {
            State::Done => {
                return if !available.is_empty() {
                    Err(Error::TrailingData)
                } else if eof {
                    Ok(Some(Unit::End))
                } else {
                    Ok(None)
                };
            }
            State::Body => match self.content_type {
                ContentType::Framed => self.frame(),
                ContentType::NonFramed => self.single_block(),
            },
            State::Footer => match self.footer() {
                // The footer is not plaintext: go on to the end (and the trailing check).
                Ok(()) => return self.next(eof),
                Err(e) => Err(e),
            },
        };
        match parsed {
            Ok(unit) => Ok(Some(unit)),
            Err(Step::Short) if eof => Err(Error::Truncated(match self.state {
                State::Footer => "signature",
                _ => "final frame",
            })),
            Err(Step::Short) => Ok(None),
            Err(Step::Failed(e)) => Err(e),
        }
    }

    fn consumed(&mut self, n: usize) {
        if let Some((_, t)) = &mut self.verifier {
            t.update(&self.input[self.start..self.start + n]);
        }
        self.start += n;
    }

    fn frame(&mut self) -> Result<Unit, Step> {
        let input = &self.input[self.start..];
        let mut c = Cursor::new(input);
        let mark = c.u32()?;
        let last = mark == FINAL_FRAME_MARK;
        let sequence = if last { c.u32()? } else { mark };
        if sequence != self.next_sequence {
            return Err(Step::Failed(Error::Malformed(format!(
                "frame {sequence} where frame {} belongs (frames reordered, dropped or spliced)",
                self.next_sequence
            ))));
        }
        // We write the sequence number as the IV; other writers need not (the Python ESDK's
        // commitment vectors include such messages, which must decrypt). The sequence number
        // is authenticated in the AAD either way.
        let iv = c.array::<IV_LEN>()?;
        let len = if last {
            let len = c.u32()? as usize;
            if len > self.frame_length {
                return Err(Step::Failed(Error::Malformed(format!(
                    "the final frame's length {len} exceeds the frame length {}",
                    self.frame_length
                ))));
            }
            len
        } else {
            self.frame_length
        };
        let mut plaintext = Zeroizing::new(c.take(len)?.to_vec());
        let tag = c.array::<TAG_LEN>()?;
        let part = if last { BodyPart::FinalFrame } else { BodyPart::Frame };
        let aad = crypto::frame_aad(&self.message_id, part, sequence, len as u64);
        if !self.key.open(&iv, &aad, &mut plaintext, &tag) {
            return Err(Step::Failed(Error::FrameAuthentication { sequence }));
        }
        let n = c.position();
        self.consumed(n);
        if last {
            self.state = self.after_body();
        } else if sequence == FINAL_FRAME_MARK - 1 {
            return Err(Step::Failed(Error::Malformed(
                "the last possible frame number is not a final frame".into(),
            )));
        } else {
            self.next_sequence += 1;
        }
        Ok(Unit::Plaintext { plaintext, last })
    }

    fn single_block(&mut self) -> Result<Unit, Step> {
        let input = &self.input[self.start..];
        let mut c = Cursor::new(input);
        let iv = c.array::<IV_LEN>()?;
        let len = c.u64()?;
        if len > self.max_non_framed_len {
            return Err(Step::Failed(Error::InvalidArgument(format!(
                "a non-framed body of {len} bytes exceeds this reader's limit of {}",
                self.max_non_framed_len
            ))));
        }
        let mut plaintext = Zeroizing::new(c.take(len as usize)?.to_vec());
        let tag = c.array::<TAG_LEN>()?;
        let aad = crypto::frame_aad(&self.message_id, BodyPart::SingleBlock, 1, len);
        if !self.key.open(&iv, &aad, &mut plaintext, &tag) {
            return Err(Step::Failed(Error::FrameAuthentication { sequence: 1 }));
        }
        let n = c.position();
        self.consumed(n);
        self.state = self.after_body();
        Ok(Unit::Plaintext { plaintext, last: true })
    }

    fn after_body(&self) -> State {
        if self.verifier.is_some() {
            State::Footer
        } else {
            State::Done
        }
    }

    fn footer(&mut self) -> Result<(), Step> {
        let input = &self.input[self.start..];
        let mut c = Cursor::new(input);
        let signature = c.u16_prefixed()?.to_vec();
        let n = c.position();
        self.start += n;
        let (verifier, transcript) = self
            .verifier
            .take()
            .ok_or(Step::Failed(Error::Crypto("footer without a verifier")))?;
        verifier.verify(transcript, &signature).map_err(Step::Failed)?;
        self.state = State::Done;
        Ok(())
    }
}

enum Step {
    Short,
    Failed(Error),
}

impl From<Short> for Step {
    fn from(_: Short) -> Self {
        Step::Short
    }
}

/// The context the header authentication covers beyond the stored one: pairs of `expected` the
/// header does not store (ESDK "required encryption context" keys, authenticated only). A pair
/// the header does store must have the same value.
pub(crate) fn authenticated_only(header: &Header, expected: &EncryptionContext) -> Result<EncryptionContext, Error> {
    let mut only = EncryptionContext::new();
    for (k, v) in expected.pairs() {
        match header.context.get(k) {
            Some(stored) if stored == v => {}
            Some(_) => {
                return Err(Error::ContextMismatch(format!(
                    "the message's context has another value for {k:?}"
                )))
            }
            None => only.insert(k.clone(), v.clone()),
        }
    }
    Ok(only)
}

/// The whole context a message's wrapped keys are bound to: stored pairs and authenticated-only
/// pairs.
pub(crate) fn full_context(header: &Header, only: &EncryptionContext) -> EncryptionContext {
    let mut full = header.context.clone();
    for (k, v) in only.pairs() {
        full.insert(k.clone(), v.clone());
    }
    full
}

/// Checks the data key against the header (commitment, then the authentication tag over the
/// header and the authenticated-only context) and gives the content key.
pub(crate) fn open_header(header: &Header, data_key: &DataKey, only: &EncryptionContext) -> Result<ContentKey, Error> {
    let (key, commitment) = crypto::derive(header.suite, data_key, &header.message_id)?;
    if let (Some(stored), Some(derived)) = (&header.commitment, &commitment) {
        if !crypto::commitment_matches(derived, stored) {
            return Err(Error::Commitment);
        }
    }
    let aad = crypto::header_aad(header.body(), &only.serialize()?);
    let mut empty = [0u8; 0];
    if !key.open(&header.auth_iv, &aad, &mut empty, &header.auth_tag) {
        return Err(Error::HeaderAuthentication);
    }
    Ok(key)
}
