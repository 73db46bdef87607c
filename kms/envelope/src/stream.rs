//! Streaming: `Write` and `Read` adapters (and their cores, shared with the async adapters).
//! Memory is one frame and one read buffer, whatever the message size.

use std::io::{self, Read, Write};

use zeroize::Zeroizing;

use crate::error::Error;
use crate::header::{Header, Limits, Partial};
use crate::message::{BodyReader, Sealer, Unit};

/// A header being read (shared by the blocking and the async readers): the bytes so far, and
/// the least the header needs as the last parse found. It is parsed again only once that many
/// bytes are there, so a header arriving a byte at a time is parsed at most once for each field
/// it ends inside (ten, and six per wrapped key: three lengths and what they prefix, which the
/// limits bound), then once whole; not once per byte.
#[derive(Default)]
pub(crate) struct HeaderBuf {
    buf: Vec<u8>,
    needed: usize,
    /// How many times the header was parsed (tests bound the work with it).
    #[cfg(test)]
    parses: usize,
}

impl HeaderBuf {
    /// Adds bytes read: the header and the bytes read past it once all of it is there.
    pub(crate) fn push(&mut self, bytes: &[u8], limits: &Limits) -> Result<Option<(Header, Vec<u8>)>, Error> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() < self.needed {
            return Ok(None);
        }
        #[cfg(test)]
        {
            self.parses += 1;
        }
        match Header::parse_partial(&self.buf, limits)? {
            Partial::Done(header, used) => Ok(Some((header, self.buf.split_off(used)))),
            Partial::Needs(needed) => {
                self.needed = needed;
                Ok(None)
            }
        }
    }
}

/// Reads a header from `r`: the header and the bytes read past it.
pub(crate) fn read_header<R: Read>(r: &mut R, limits: &Limits) -> Result<(Header, Vec<u8>), Error> {
    let mut header = HeaderBuf::default();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = loop {
            match r.read(&mut chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Io(e)),
            }
        };
        if n == 0 {
            return Err(Error::Truncated("header"));
        }
        if let Some(done) = header.push(&chunk[..n], limits)? {
            return Ok(done);
        }
    }
}

/// The writer's core: plaintext in, message bytes out (the header, each sealed frame from the
/// sealer's own buffer, the footer).
pub(crate) struct SealOut {
    sealer: Sealer,
    /// The message header, until written.
    head: Vec<u8>,
    head_pos: usize,
    /// The footer, once the message is finished.
    tail: Vec<u8>,
    tail_pos: usize,
    finished: bool,
    remaining: Option<u64>,
}

impl SealOut {
    pub(crate) fn new(sealer: Sealer, header: Vec<u8>, plaintext_len: Option<u64>) -> Self {
        Self {
            sealer,
            head: header,
            head_pos: 0,
            tail: Vec::new(),
            tail_pos: 0,
            finished: false,
            remaining: plaintext_len,
        }
    }

    /// Bytes to write now (empty: nothing waits).
    pub(crate) fn pending(&self) -> &[u8] {
        if self.head_pos < self.head.len() {
            &self.head[self.head_pos..]
        } else if !self.sealer.pending().is_empty() {
            self.sealer.pending()
        } else {
            &self.tail[self.tail_pos..]
        }
    }

    /// Appends everything pending to `out`.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<u8>) {
        loop {
            let pending = self.pending();
            if pending.is_empty() {
                return;
            }
            out.extend_from_slice(pending);
            let n = pending.len();
            self.written(n);
        }
    }

    pub(crate) fn written(&mut self, n: usize) {
        if self.head_pos < self.head.len() {
            self.head_pos += n;
        } else if !self.sealer.pending().is_empty() {
            self.sealer.written(n);
        } else {
            self.tail_pos += n;
        }
    }

    /// Takes plaintext once nothing is pending; returns how much (0 when a frame was sealed
    /// and waits: write [`SealOut::pending`] and push again).
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<usize, Error> {
        if self.finished {
            return Err(Error::InvalidArgument("the message is finished".into()));
        }
        if !self.pending().is_empty() {
            return Ok(0);
        }
        if self.remaining.is_some_and(|r| data.len() as u64 > r) {
            return Err(Error::InvalidArgument(
                "more plaintext than the length given when the message was started".into(),
            ));
        }
        let n = self.sealer.push(data)?;
        if let Some(r) = &mut self.remaining {
            *r -= n as u64;
        }
        Ok(n)
    }

    /// Ends the message (once; later calls do nothing): the final frame and footer become
    /// pending. Call when nothing is pending.
    pub(crate) fn finish(&mut self) -> Result<(), Error> {
        if self.finished {
            return Ok(());
        }
        if let Some(r) = self.remaining.filter(|r| *r != 0) {
            return Err(Error::InvalidArgument(format!(
                "{r} bytes fewer plaintext than the length given when the message was started"
            )));
        }
        self.tail = self.sealer.finish()?;
        self.finished = true;
        Ok(())
    }
}

/// Encrypts what is written to it into a message written to the inner writer. Call
/// [`EncryptingWriter::finish`] at the end: without it the message has no final frame, and
/// readers refuse it as truncated.
pub struct EncryptingWriter<W: Write> {
    inner: W,
    core: SealOut,
}

impl<W: Write> EncryptingWriter<W> {
    pub(crate) fn new(inner: W, sealer: Sealer, header: Vec<u8>, plaintext_len: Option<u64>) -> Self {
        Self {
            inner,
            core: SealOut::new(sealer, header, plaintext_len),
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        loop {
            let pending = self.core.pending();
            if pending.is_empty() {
                return Ok(());
            }
            self.inner.write_all(pending)?;
            let n = pending.len();
            self.core.written(n);
        }
    }

    /// Writes the final frame and the signature, flushes, and gives the inner writer back.
    pub fn finish(mut self) -> Result<W, Error> {
        self.drain()?;
        self.core.finish()?;
        self.drain()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.drain()?;
            let n = self.core.push(buf).map_err(Error::into_io)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
        }
    }

    /// Writes the frames completed so far (a frame is complete only when the next byte is
    /// written, or at [`EncryptingWriter::finish`]).
    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.inner.flush()
    }
}

/// What the reader's core needs next.
pub(crate) enum Progress {
    /// `n` plaintext bytes were copied out (0: the message ended, verified).
    Read(usize),
    /// Input is needed (then [`PlainOut::input`]).
    NeedInput,
}

/// Plaintext ready to be read.
enum Ready {
    None,
    /// In the body reader's buffer.
    Body(std::ops::Range<usize>),
    /// The final frame, held until the end verified.
    Held(Zeroizing<Vec<u8>>),
}

/// The reader's core: message bytes in, authenticated plaintext out, the final frame held
/// until the end verifies.
pub(crate) struct PlainOut {
    body: BodyReader,
    ready: Ready,
    pos: usize,
    held: Option<Zeroizing<Vec<u8>>>,
    eof: bool,
    ended: bool,
    failed: Option<String>,
    allow_unverified_signed: bool,
}

impl PlainOut {
    pub(crate) fn new(body: BodyReader, allow_unverified_signed: bool) -> Self {
        Self {
            body,
            ready: Ready::None,
            pos: 0,
            held: None,
            eof: false,
            ended: false,
            failed: None,
            allow_unverified_signed,
        }
    }

    /// Room to read input into (see [`BodyReader::spare`]); then [`PlainOut::commit`].
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        let n = self.body.wants();
        self.body.spare(n)
    }

    /// `n` bytes were read into [`PlainOut::spare`]; 0 at the end of the source.
    pub(crate) fn commit(&mut self, n: usize) {
        self.body.commit(n);
        if n == 0 {
            self.eof = true;
        }
    }

    /// The read into [`PlainOut::spare`] failed: nothing came.
    pub(crate) fn cancel(&mut self) {
        self.body.commit(0);
    }

    fn fail(&mut self, e: Error) -> io::Error {
        self.failed = Some(e.to_string());
        self.ready = Ready::None;
        self.held = None;
        e.into_io()
    }

    /// Unread plaintext (empty when [`PlainOut::advance`] did not say `Ready`).
    pub(crate) fn ready(&self) -> &[u8] {
        let all: &[u8] = match &self.ready {
            Ready::None => &[],
            Ready::Body(r) => self.body.plaintext(r.clone()),
            Ready::Held(v) => v,
        };
        all.get(self.pos..).unwrap_or_default()
    }

    /// `n` bytes of [`PlainOut::ready`] were used.
    pub(crate) fn consume(&mut self, n: usize) {
        self.pos += n;
    }

    /// Makes plaintext ready if it can.
    pub(crate) fn advance(&mut self) -> io::Result<Avail> {
        loop {
            if !self.ready().is_empty() {
                return Ok(Avail::Ready);
            }
            self.ready = Ready::None;
            self.pos = 0;
            if let Some(reason) = &self.failed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, reason.clone()));
            }
            if self.ended {
                match self.held.take() {
                    Some(last) => {
                        self.ready = Ready::Held(last);
                        continue;
                    }
                    None => return Ok(Avail::End),
                }
            }
            match self.body.next(self.eof) {
                Err(e) => return Err(self.fail(e)),
                Ok(None) => return Ok(Avail::NeedInput),
                Ok(Some(Unit::End)) => self.ended = true,
                Ok(Some(Unit::Plaintext { range, last: true })) => {
                    self.held = Some(Zeroizing::new(self.body.plaintext(range).to_vec()));
                }
                Ok(Some(Unit::Plaintext { range, last: false })) => {
                    if self.body.is_signed() && !self.allow_unverified_signed {
                        return Err(self.fail(Error::SignedStreaming));
                    }
                    self.ready = Ready::Body(range);
                }
            }
        }
    }

    pub(crate) fn step(&mut self, buf: &mut [u8]) -> io::Result<Progress> {
        match self.advance()? {
            Avail::End => Ok(Progress::Read(0)),
            Avail::NeedInput => Ok(Progress::NeedInput),
            Avail::Ready => {
                let ready = self.ready();
                let n = ready.len().min(buf.len());
                buf[..n].copy_from_slice(&ready[..n]);
                self.pos += n;
                Ok(Progress::Read(n))
            }
        }
    }
}

/// Whether plaintext is ready.
pub(crate) enum Avail {
    Ready,
    NeedInput,
    End,
}

/// Decrypts a message read from the inner reader. End-of-file (`Ok(0)`) comes only after the
/// final frame, the signature and the absence of trailing bytes verified; an error means what
/// was read so far must be discarded. The final frame is released only then.
pub struct DecryptingReader<R: Read> {
    inner: R,
    header: Header,
    core: PlainOut,
}

impl<R: Read> DecryptingReader<R> {
    pub(crate) fn new(inner: R, header: Header, body: BodyReader, allow_unverified_signed: bool) -> Self {
        Self {
            inner,
            header,
            core: PlainOut::new(body, allow_unverified_signed),
        }
    }

    /// The message's header (its stored context, suite, wrapped keys).
    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl<R: Read> DecryptingReader<R> {
    /// Reads from the source into the body buffer.
    fn fill(&mut self) -> io::Result<()> {
        loop {
            let spare = self.core.spare();
            match self.inner.read(spare) {
                Ok(n) => {
                    self.core.commit(n);
                    return Ok(());
                }
                Err(e) => {
                    self.core.cancel();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Plaintext without a copy: `fill_buf` lends the decrypted frame itself (the final frame only
/// once the end verified).
impl<R: Read> io::BufRead for DecryptingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            match self.core.advance()? {
                Avail::Ready => return Ok(self.core.ready()),
                Avail::End => return Ok(&[]),
                Avail::NeedInput => self.fill()?,
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.core.consume(n);
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.core.step(buf)? {
                Progress::Read(n) => return Ok(n),
                Progress::NeedInput => self.fill()?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::context::EncryptionContext;
    use crate::crypto::DataKey;
    use crate::header::EncryptedDataKey;
    use crate::suite::Suite;

    const SUITE: Suite = Suite::Aes256GcmHkdfSha512CommitKey;

    fn data_key() -> DataKey {
        DataKey::new(vec![0x42; 32])
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// A message under [`data_key`] (the wrapped key is a stand-in: these tests open the header
    /// with the data key itself).
    fn message(plain: &[u8], frame_length: u32, context: &EncryptionContext, edks: usize) -> Vec<u8> {
        let edks: Vec<_> = (0..edks)
            .map(|i| EncryptedDataKey {
                provider_id: format!("tests-{i}"),
                provider_info: b"info".to_vec(),
                ciphertext: vec![0; 48],
            })
            .collect();
        let (sealer, header) = Sealer::start(SUITE, &data_key(), &edks, context, None, frame_length).unwrap();
        let mut core = SealOut::new(sealer, header, Some(plain.len() as u64));
        let mut out = Vec::new();
        let mut rest = plain;
        while !rest.is_empty() {
            core.drain_into(&mut out);
            let n = core.push(rest).unwrap();
            rest = &rest[n..];
        }
        core.drain_into(&mut out);
        core.finish().unwrap();
        core.drain_into(&mut out);
        out
    }

    /// The reader's core over `message`, its header read `header_step` bytes at a time.
    fn open(message: &[u8], header_step: usize) -> (PlainOut, usize, usize) {
        let limits = Limits::default();
        let mut header = HeaderBuf::default();
        let mut fed = 0;
        let (h, rest) = loop {
            let end = (fed + header_step).min(message.len());
            if let Some(done) = header.push(&message[fed..end], &limits).unwrap() {
                fed = end;
                break done;
            }
            fed = end;
        };
        let key = crate::message::open_header(&h, &data_key(), &EncryptionContext::new()).unwrap();
        let mut body = BodyReader::new(&h, key, &limits).unwrap();
        body.feed(&rest);
        (PlainOut::new(body, false), fed, header.parses)
    }

    /// Frames of 4 MiB arriving 1 to 4 KiB per read, each read preceded by reads that came to
    /// nothing (as the async reader does on `Poll::Pending`): the buffer is zero-filled about
    /// once, not once per read (which was 4 MiB per read, gigabytes per frame).
    #[test]
    fn large_frames_in_small_reads_zero_fill_each_byte_once() {
        let frame = 4u32 << 20;
        let plain = plaintext(2 * frame as usize + 12_345);
        let m = message(&plain, frame, &EncryptionContext::new(), 1);
        let (mut core, mut pos, _) = open(&m, 4096);
        let sizes = [1024, 4096, 1, 3000, 2048];
        let (mut reads, mut out, mut buf) = (0usize, Vec::new(), vec![0u8; 8192]);
        loop {
            match core.step(&mut buf).unwrap() {
                Progress::Read(0) => break,
                Progress::Read(n) => out.extend_from_slice(&buf[..n]),
                Progress::NeedInput => {
                    for _ in 0..3 {
                        let _ = core.spare();
                        core.cancel();
                    }
                    let spare = core.spare();
                    let n = sizes[reads % sizes.len()].min(spare.len()).min(m.len() - pos);
                    spare[..n].copy_from_slice(&m[pos..pos + n]);
                    core.commit(n);
                    pos += n;
                    reads += 1;
                }
            }
        }
        assert!(out == plain, "the plaintext differs");
        assert!(reads > 4000, "{reads} reads");
        let frame_total = 4 + 12 + frame as usize + 16;
        let zeroed = core.body.zero_filled();
        assert!(
            zeroed <= 2 * frame_total,
            "{zeroed} bytes zero-filled for {reads} reads of a {frame_total}-byte frame"
        );
    }

    /// A header arriving one byte per read is parsed once per field it holds, not once per
    /// byte, and the message still decrypts.
    #[test]
    fn a_header_fed_a_byte_at_a_time_is_parsed_once_per_field() {
        let context: EncryptionContext = (0..20).map(|i| (format!("key-{i}"), "v".repeat(30))).collect();
        let plain = plaintext(1000);
        let edks = 3;
        let m = message(&plain, 256, &context, edks);
        let header_len = Header::parse(&m, &Limits::default()).unwrap().1;
        let (mut core, fed, parses) = open(&m, 1);
        assert_eq!(fed, header_len, "the header is taken as soon as all of it is there");
        // Version, suite, message id, context length and context, the key count, two fields per
        // part of each wrapped key, content type, frame length, commitment, tag; then the whole.
        assert!(
            parses <= 10 + 6 * edks + 1,
            "{parses} parses of a {header_len}-byte header"
        );
        assert!(
            header_len > 20 * parses,
            "{parses} parses of a {header_len}-byte header"
        );
        // The body a byte per read too.
        let mut pos = fed;
        let (mut out, mut buf) = (Vec::new(), [0u8; 64]);
        loop {
            match core.step(&mut buf).unwrap() {
                Progress::Read(0) => break,
                Progress::Read(n) => out.extend_from_slice(&buf[..n]),
                Progress::NeedInput => {
                    let n = usize::from(pos < m.len());
                    core.spare()[..n].copy_from_slice(&m[pos..pos + n]);
                    core.commit(n);
                    pos += n;
                }
            }
        }
        assert_eq!(out, plain);
    }

    /// A header whose fields already show it is longer than the limit is refused then, before
    /// the rest is read.
    #[test]
    fn a_header_known_too_large_is_refused_before_it_is_read() {
        let mut start = vec![2u8];
        start.extend_from_slice(&SUITE.id().to_be_bytes());
        start.extend_from_slice(&[0; 32]);
        start.extend_from_slice(&u16::MAX.to_be_bytes()); // the context: 65,535 bytes
        let limits = Limits {
            max_header_len: 1000,
            ..Limits::default()
        };
        let mut header = HeaderBuf::default();
        let e = header.push(&start, &limits).expect_err("refused");
        assert!(matches!(e, Error::HeaderTooLarge { max: 1000 }), "{e}");
    }
}
