//! Streaming: `Write` and `Read` adapters (and their cores, shared with the async adapters).
//! Memory is one frame and one read buffer, whatever the message size.

use std::io::{self, Read, Write};

use zeroize::Zeroizing;

use crate::error::Error;
use crate::header::{Header, Limits};
use crate::message::{BodyReader, Sealer, Unit};

/// The bytes of a header being read: the header and the bytes read past it once all of it is
/// there (shared by the blocking and the async readers).
pub(crate) fn header_done(buf: &mut Vec<u8>, limits: &Limits) -> Result<Option<(Header, Vec<u8>)>, Error> {
    match Header::parse(buf, limits) {
        Ok((header, used)) => Ok(Some((header, buf.split_off(used)))),
        Err(e) if Header::is_incomplete(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a header from `r`: the header and the bytes read past it.
pub(crate) fn read_header<R: Read>(r: &mut R, limits: &Limits) -> Result<(Header, Vec<u8>), Error> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(done) = header_done(&mut buf, limits)? {
            return Ok(done);
        }
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
        buf.extend_from_slice(&chunk[..n]);
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
