//! Writing and reading a message body, independent of how bytes arrive: the [`Sealer`] turns
//! plaintext into header, frames and footer; the [`BodyReader`] turns buffered input into
//! authenticated plaintext, one frame at a time. The one-shot, `Read`/`Write` and async
//! front-ends all drive these two, so every rule (sequence, IV, final frame, footer, trailing
//! bytes) is checked in one place.

use std::ops::Range;
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

/// The longest non-framed body the format allows (`data-format/message-body.md`): AES-GCM
/// encrypts at most 2^36 - 32 bytes under one IV.
const MAX_NON_FRAMED_LEN: u64 = (1 << 36) - 32;

/// Room before a frame's plaintext for its header: a final frame's (end mark, sequence number,
/// IV, length) is the longest.
const FRAME_HEADER_ROOM: usize = 4 + 4 + IV_LEN + 4;

/// Turns plaintext into a message. It holds one frame: plaintext accumulates in its buffer
/// behind room for the frame header, is sealed there in place, and is written out from there,
/// so each byte is copied once on its way in.
pub(crate) struct Sealer {
    message_id: Vec<u8>,
    key: ContentKey,
    frame_length: usize,
    next_sequence: u32,
    signer: Option<(Arc<Signer>, Transcript)>,
    /// `FRAME_HEADER_ROOM` bytes, then the frame's plaintext; once sealed, the frame from
    /// `sealed_from`.
    frame: Zeroizing<Vec<u8>>,
    /// Where the sealed frame starts in `frame`, while one waits to be written.
    sealed_from: Option<usize>,
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
        let mut frame = Zeroizing::new(Vec::with_capacity(FRAME_HEADER_ROOM + frame_length + TAG_LEN));
        frame.resize(FRAME_HEADER_ROOM, 0);
        Ok((
            Self {
                message_id: message_id.to_vec(),
                key,
                frame_length,
                next_sequence: 1,
                signer,
                frame,
                sealed_from: None,
            },
            header,
        ))
    }

    fn held(&self) -> usize {
        self.frame.len() - FRAME_HEADER_ROOM
    }

    /// Takes plaintext while no sealed frame waits ([`Sealer::pending`] empty); returns how
    /// much it took. A full frame is held until more plaintext shows it is not the last; then
    /// it is sealed and waits to be written, and nothing more is taken.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<usize, Error> {
        if self.sealed_from.is_some() {
            return Ok(0);
        }
        let mut used = 0;
        while used < data.len() {
            if self.held() == self.frame_length {
                self.seal(false)?;
                return Ok(used);
            }
            let n = (self.frame_length - self.held()).min(data.len() - used);
            self.frame.extend_from_slice(&data[used..used + n]);
            used += n;
        }
        Ok(used)
    }

    /// The sealed frame waiting to be written (empty if none).
    pub(crate) fn pending(&self) -> &[u8] {
        match self.sealed_from {
            Some(from) => &self.frame[from..],
            None => &[],
        }
    }

    /// `n` bytes of [`Sealer::pending`] were written.
    pub(crate) fn written(&mut self, n: usize) {
        if let Some(from) = &mut self.sealed_from {
            *from += n;
            if *from == self.frame.len() {
                self.sealed_from = None;
                self.frame.truncate(FRAME_HEADER_ROOM);
            }
        }
    }

    /// Ends the message: seals the final frame (what is held, possibly empty; it is then
    /// [`Sealer::pending`]) and returns the footer to write after it.
    pub(crate) fn finish(&mut self) -> Result<Vec<u8>, Error> {
        if self.sealed_from.is_some() {
            return Err(Error::Crypto("finish with a frame not written"));
        }
        self.seal(true)?;
        let mut footer = Vec::new();
        if let Some((signer, mut transcript)) = self.signer.take() {
            transcript.update(self.pending());
            let signature = signer.sign(transcript)?;
            crate::wire::put_u16_prefixed(&mut footer, &signature, "the signature")?;
        }
        Ok(footer)
    }

    fn seal(&mut self, last: bool) -> Result<(), Error> {
        let sequence = self.next_sequence;
        if sequence == FINAL_FRAME_MARK {
            return Err(Error::InvalidArgument(
                "the message would need more than 2^32 - 2 frames; use a larger frame length".into(),
            ));
        }
        self.next_sequence += 1;
        let len = self.held();
        let iv = crypto::frame_iv(sequence);
        let (part, from) = if last {
            (BodyPart::FinalFrame, 0)
        } else {
            (BodyPart::Frame, FRAME_HEADER_ROOM - 4 - IV_LEN)
        };
        let mut h = from;
        if last {
            self.frame[h..h + 4].copy_from_slice(&FINAL_FRAME_MARK.to_be_bytes());
            h += 4;
        }
        self.frame[h..h + 4].copy_from_slice(&sequence.to_be_bytes());
        self.frame[h + 4..h + 4 + IV_LEN].copy_from_slice(&iv);
        if last {
            self.frame[h + 4 + IV_LEN..FRAME_HEADER_ROOM].copy_from_slice(&(len as u32).to_be_bytes());
        }
        let aad = crypto::frame_aad(&self.message_id, part, sequence, len as u64);
        let tag = self.key.seal(&iv, &aad, &mut self.frame[FRAME_HEADER_ROOM..])?;
        self.frame.extend_from_slice(&tag);
        if !last {
            if let Some((_, t)) = &mut self.signer {
                t.update(&self.frame[from..]);
            }
        }
        self.sealed_from = Some(from);
        Ok(())
    }
}

/// What the body reader produced.
pub(crate) enum Unit {
    /// A frame's authenticated plaintext, decrypted in place: `range` of
    /// [`BodyReader::plaintext`], valid until input is next added. `last` for the final frame
    /// (or a non-framed body).
    Plaintext { range: Range<usize>, last: bool },
    /// The message ended: final frame, footer verified, and no byte after it.
    End,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Body,
    Footer,
    Done,
}

/// Reads the body of a message whose header verified. Input goes in with
/// [`BodyReader::feed`] or [`BodyReader::spare`]/[`BodyReader::commit`] (read straight into the
/// buffer); [`BodyReader::next`] parses at most one unit and decrypts it in place.
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
    /// Input in `start..filled`; before it, consumed bytes (plaintext decrypted in place among
    /// them); after it, bytes zeroed (or left from earlier input) for reads to come. That tail
    /// is kept rather than truncated, so each byte of the buffer is zero-filled once, not at
    /// every read (a 16 MiB frame arriving 1 KiB at a time would otherwise cost 16 MiB of
    /// zeroing per read).
    input: Zeroizing<Vec<u8>>,
    start: usize,
    filled: usize,
    /// The end of the last [`BodyReader::spare`]: a commit never claims more.
    spare_end: usize,
    /// Bytes zero-filled so far (tests bound the reader's work with it).
    #[cfg(test)]
    zero_filled: usize,
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
            input: Zeroizing::new(Vec::new()),
            start: 0,
            filled: 0,
            spare_end: 0,
            #[cfg(test)]
            zero_filled: 0,
        })
    }

    /// Bytes zero-filled so far.
    #[cfg(test)]
    pub(crate) fn zero_filled(&self) -> usize {
        self.zero_filled
    }

    /// Whether the suite signs (the caller holds plaintext until [`Unit::End`]).
    pub(crate) fn is_signed(&self) -> bool {
        self.suite.signature().is_some()
    }

    /// Decrypted plaintext (a [`Unit::Plaintext`] range).
    pub(crate) fn plaintext(&self, range: Range<usize>) -> &[u8] {
        &self.input[range]
    }

    /// Reads the rest of the message, all of it already fed; the plaintext only if everything
    /// verifies.
    pub(crate) fn read_to_end(&mut self) -> Result<kms_core::secret::SecretBytes, Error> {
        let mut plaintext = Zeroizing::new(Vec::with_capacity(self.filled - self.start));
        loop {
            match self.next(true)? {
                Some(Unit::Plaintext { range, .. }) => plaintext.extend_from_slice(&self.input[range]),
                Some(Unit::End) => return Ok(kms_core::secret::SecretBytes::new(std::mem::take(&mut *plaintext))),
                None => return Err(Error::Truncated("final frame")),
            }
        }
    }

    /// The input not yet consumed.
    fn available(&self) -> &[u8] {
        &self.input[self.start..self.filled]
    }

    /// Drops consumed bytes (invalidating plaintext ranges): moves the unconsumed input to the
    /// front (part of one unit: input is asked for only once no whole unit is left).
    fn compact(&mut self) {
        if self.start > 0 {
            self.input.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
            self.spare_end = self.filled;
        }
    }

    /// Room for `additional` more bytes. The buffer holds decrypted plaintext, so it never
    /// reallocates in place: a larger one is made and the old one zeroized as it drops. Its
    /// capacity at least doubles, so zero-filling the new room costs at most twice the largest
    /// buffer in all.
    fn grow(&mut self, additional: usize) {
        let needed = self.filled.saturating_add(additional);
        if needed > self.input.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(self.input.capacity().saturating_mul(2))));
            bigger.extend_from_slice(&self.input[..self.filled]);
            self.input = bigger;
        }
    }

    /// Appends input.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.grow(bytes.len());
        // Into the kept tail first, then past it.
        let into_tail = (self.input.len() - self.filled).min(bytes.len());
        self.input[self.filled..self.filled + into_tail].copy_from_slice(&bytes[..into_tail]);
        self.input.extend_from_slice(&bytes[into_tail..]);
        self.filled += bytes.len();
        self.spare_end = self.filled;
    }

    /// Room for `n` bytes of input, to read into; then [`BodyReader::commit`] how many came.
    /// Only room never handed out before is zero-filled; the rest holds whatever it held (old
    /// input, consumed), which the read overwrites.
    pub(crate) fn spare(&mut self, n: usize) -> &mut [u8] {
        self.compact();
        self.grow(n);
        let end = self.filled.saturating_add(n);
        if self.input.len() < end {
            #[cfg(test)]
            {
                self.zero_filled += end - self.input.len();
            }
            self.input.resize(end, 0);
        }
        self.spare_end = end;
        &mut self.input[self.filled..end]
    }

    /// `n` bytes were read into the last [`BodyReader::spare`].
    pub(crate) fn commit(&mut self, n: usize) {
        self.filled = self.filled.saturating_add(n).min(self.spare_end);
        self.spare_end = self.filled;
    }

    /// How many bytes to read next: the rest of the next frame when its size is known (so a
    /// read ends where a frame does, and nothing is moved), else a frame's worth.
    pub(crate) fn wants(&self) -> usize {
        let available = self.available();
        let frame_total = 4 + IV_LEN + self.frame_length + TAG_LEN;
        let need = match (self.state, self.content_type) {
            (State::Done, _) => 1,
            (State::Footer, _) => match available {
                [a, b, ..] => 2 + usize::from(u16::from_be_bytes([*a, *b])),
                _ => 2 + 132,
            },
            (State::Body, ContentType::NonFramed) => match available.get(IV_LEN..IV_LEN + 8) {
                Some(l) => usize::try_from(u64::from_be_bytes(l.try_into().unwrap_or([0; 8])))
                    .unwrap_or(usize::MAX)
                    .saturating_add(IV_LEN + 8 + TAG_LEN),
                None => IV_LEN + 8,
            },
            (State::Body, ContentType::Framed) => match available.get(..4) {
                Some(m) if m == FINAL_FRAME_MARK.to_be_bytes() => match available.get(20..24) {
                    Some(l) => usize::try_from(u32::from_be_bytes(l.try_into().unwrap_or([0; 4])))
                        .unwrap_or(usize::MAX)
                        .saturating_add(24 + TAG_LEN),
                    None => 24,
                },
                _ => frame_total,
            },
        };
        // At least 64 KiB (small frames: fewer reads), at most a frame or 1 MiB (a length
        // field read before it is checked allocates nothing large).
        need.saturating_sub(available.len())
            .max(64 * 1024)
            .min(frame_total.max(1 << 20))
    }

    /// Parses the next unit from the input. `Ok(None)`: more input is needed; `eof` says there
    /// is none, and then a missing part is `Truncated`.
    pub(crate) fn next(&mut self, eof: bool) -> Result<Option<Unit>, Error> {
        let available = self.available();
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

    /// Consumes `n` bytes (after hashing them for the signature) whose `content` range
    /// (relative to the unit) is ciphertext to open in place with `iv`, `aad`, `tag`.
    fn open_unit(
        &mut self,
        n: usize,
        content: Range<usize>,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        tag: &[u8; TAG_LEN],
        sequence: u32,
    ) -> Result<Range<usize>, Step> {
        let base = self.start;
        if let Some((_, t)) = &mut self.verifier {
            t.update(&self.input[base..base + n]);
        }
        let range = base + content.start..base + content.end;
        if !self.key.open(iv, aad, &mut self.input[range.clone()], tag) {
            return Err(Step::Failed(Error::FrameAuthentication { sequence }));
        }
        self.start += n;
        Ok(range)
    }

    fn frame(&mut self) -> Result<Unit, Step> {
        let mut c = Cursor::new(self.available());
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
        let at = c.position();
        c.take(len)?;
        let tag = c.array::<TAG_LEN>()?;
        let n = c.position();
        let part = if last { BodyPart::FinalFrame } else { BodyPart::Frame };
        let aad = crypto::frame_aad(&self.message_id, part, sequence, len as u64);
        let range = self.open_unit(n, at..at + len, &iv, &aad, &tag, sequence)?;
        if last {
            self.state = self.after_body();
        } else if sequence == FINAL_FRAME_MARK - 1 {
            return Err(Step::Failed(Error::Malformed(
                "the last possible frame number is not a final frame".into(),
            )));
        } else {
            self.next_sequence += 1;
        }
        Ok(Unit::Plaintext { range, last })
    }

    fn single_block(&mut self) -> Result<Unit, Step> {
        let mut c = Cursor::new(self.available());
        let iv = c.array::<IV_LEN>()?;
        let len = c.u64()?;
        // The format's own cap (AES-GCM's limit for one IV), whatever the reader's limits say.
        if len > MAX_NON_FRAMED_LEN {
            return Err(Step::Failed(Error::Malformed(format!(
                "a non-framed body of {len} bytes; the format allows at most 2^36 - 32"
            ))));
        }
        if len > self.max_non_framed_len {
            return Err(Step::Failed(Error::InvalidArgument(format!(
                "a non-framed body of {len} bytes exceeds this reader's limit of {}",
                self.max_non_framed_len
            ))));
        }
        let size = usize::try_from(len).map_err(|_| {
            Step::Failed(Error::InvalidArgument(format!(
                "a non-framed body of {len} bytes does not fit in this machine's address space"
            )))
        })?;
        let at = c.position();
        c.take(size)?;
        let tag = c.array::<TAG_LEN>()?;
        let n = c.position();
        let aad = crypto::frame_aad(&self.message_id, BodyPart::SingleBlock, 1, len);
        let range = self.open_unit(n, at..at + size, &iv, &aad, &tag, 1)?;
        self.state = self.after_body();
        Ok(Unit::Plaintext { range, last: true })
    }

    fn after_body(&self) -> State {
        if self.verifier.is_some() {
            State::Footer
        } else {
            State::Done
        }
    }

    fn footer(&mut self) -> Result<(), Step> {
        let mut c = Cursor::new(self.available());
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

/// A signed suite's header must carry its verification key (and it must parse), an unsigned
/// one none (ESDK default CMM): checked before any keyring is asked.
pub(crate) fn check_public_key(header: &Header) -> Result<(), Error> {
    let key = header.context.get(crate::context::PUBLIC_KEY_KEY);
    match header.suite.signature() {
        Some(alg) => Verifier::from_header(alg, key).map(|_| ()),
        None if key.is_some() => Err(Error::Malformed(format!(
            "the header of an unsigned suite ({}) carries aws-crypto-public-key",
            header.suite
        ))),
        None => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A non-framed body's reader, under any key (nothing here gets as far as opening).
    fn non_framed(limits: &Limits) -> BodyReader {
        let header = Header {
            suite: Suite::Aes256GcmHkdfSha512CommitKey,
            message_id: vec![0; 32],
            context: EncryptionContext::new(),
            edks: Vec::new(),
            content_type: ContentType::NonFramed,
            frame_length: 0,
            commitment: None,
            auth_iv: [0; IV_LEN],
            auth_tag: [0; TAG_LEN],
            raw: Vec::new(),
            body_len: 0,
        };
        BodyReader::new(&header, ContentKey::from_slice(&[0; 32]).unwrap(), limits).unwrap()
    }

    fn claiming(len: u64) -> Vec<u8> {
        let mut body = vec![0u8; IV_LEN];
        body.extend_from_slice(&len.to_be_bytes());
        body
    }

    /// The format's cap on a non-framed body holds whatever the reader's limits allow; under it,
    /// the reader's own limit decides.
    #[test]
    fn a_non_framed_body_above_the_formats_cap_is_malformed() {
        let unlimited = Limits {
            max_non_framed_len: u64::MAX,
            ..Limits::default()
        };
        for len in [MAX_NON_FRAMED_LEN + 1, u64::MAX] {
            let mut r = non_framed(&unlimited);
            r.feed(&claiming(len));
            match r.next(false) {
                Err(Error::Malformed(m)) => assert!(m.contains("2^36 - 32"), "{m}"),
                Err(e) => panic!("{len}: {e}"),
                Ok(_) => panic!("{len}: accepted"),
            }
        }
        // At the cap the body is only incomplete (or, on a 32-bit host, too large to hold).
        let mut r = non_framed(&unlimited);
        r.feed(&claiming(MAX_NON_FRAMED_LEN));
        assert!(!matches!(r.next(false), Err(Error::Malformed(_))));
        // The default limit (64 MiB) refuses it as the reader's choice.
        let mut r = non_framed(&Limits::default());
        r.feed(&claiming(MAX_NON_FRAMED_LEN));
        assert!(matches!(r.next(false), Err(Error::InvalidArgument(_))));
    }
}
