//! Streaming: `Write` and `Read` adapters (and their cores, shared with the async adapters).
//! Memory is one frame and one read buffer, whatever the message size.

use std::io::{self, Read, Write};

use zeroize::Zeroizing;

use crate::error::Error;
use crate::header::{Header, Limits};
use crate::message::{BodyReader, Sealer, Unit};

/// How much is read from the source at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reads a header from `r`: the header and the bytes read past it.
pub(crate) fn read_header<R: Read>(r: &mut R, limits: &Limits) -> Result<(Header, Vec<u8>), Error> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        match Header::parse(&buf, limits) {
            Ok((header, used)) => return Ok((header, buf.split_off(used))),
            Err(e) if Header::is_incomplete(&e) => {}
            Err(e) => return Err(e),
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

/// The writer's core: plaintext in, message bytes out.
pub(crate) struct SealOut {
    sealer: Option<Sealer>,
    /// Message bytes not written yet, from `pos`.
    pub(crate) out: Vec<u8>,
    pub(crate) pos: usize,
    remaining: Option<u64>,
}

impl SealOut {
    pub(crate) fn new(sealer: Sealer, header: Vec<u8>, plaintext_len: Option<u64>) -> Self {
        Self {
            sealer: Some(sealer),
            out: header,
            pos: 0,
            remaining: plaintext_len,
        }
    }

    pub(crate) fn pending(&self) -> &[u8] {
        &self.out[self.pos..]
    }

    pub(crate) fn written(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.out.len() {
            self.out.clear();
            self.pos = 0;
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), Error> {
        let sealer = self
            .sealer
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("the message is finished".into()))?;
        if let Some(r) = &mut self.remaining {
            *r = r.checked_sub(data.len() as u64).ok_or_else(|| {
                Error::InvalidArgument("more plaintext than the length given when the message was started".into())
            })?;
        }
        sealer.push(data, &mut self.out)
    }

    /// Ends the message (once); later calls do nothing.
    pub(crate) fn finish(&mut self) -> Result<(), Error> {
        let Some(sealer) = self.sealer.take() else {
            return Ok(());
        };
        if let Some(r) = self.remaining.filter(|r| *r != 0) {
            return Err(Error::InvalidArgument(format!(
                "{r} bytes fewer plaintext than the length given when the message was started"
            )));
        }
        sealer.finish(&mut self.out)
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
        self.inner.write_all(self.core.pending())?;
        let n = self.core.pending().len();
        self.core.written(n);
        Ok(())
    }

    /// Writes the final frame and the signature, flushes, and gives the inner writer back.
    pub fn finish(mut self) -> Result<W, Error> {
        self.core.finish()?;
        self.drain()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.core.push(buf).map_err(Error::into_io)?;
        self.drain()?;
        Ok(buf.len())
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

/// The reader's core: message bytes in, authenticated plaintext out, the final frame held
/// until the end verifies.
pub(crate) struct PlainOut {
    body: BodyReader,
    ready: Zeroizing<Vec<u8>>,
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
            ready: Zeroizing::new(Vec::new()),
            pos: 0,
            held: None,
            eof: false,
            ended: false,
            failed: None,
            allow_unverified_signed,
        }
    }

    /// Input read from the source; empty at its end.
    pub(crate) fn input(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            self.eof = true;
        } else {
            self.body.feed(bytes);
        }
    }

    pub(crate) fn read_size(&self) -> usize {
        self.body.wants().min(READ_CHUNK)
    }

    fn fail(&mut self, e: Error) -> io::Error {
        self.failed = Some(e.to_string());
        self.ready.clear();
        self.held = None;
        e.into_io()
    }

    pub(crate) fn step(&mut self, buf: &mut [u8]) -> io::Result<Progress> {
        loop {
            if self.pos < self.ready.len() {
                let n = (self.ready.len() - self.pos).min(buf.len());
                buf[..n].copy_from_slice(&self.ready[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(Progress::Read(n));
            }
            if let Some(reason) = &self.failed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, reason.clone()));
            }
            if self.ended {
                match self.held.take() {
                    Some(last) => {
                        self.ready = last;
                        self.pos = 0;
                        continue;
                    }
                    None => return Ok(Progress::Read(0)),
                }
            }
            match self.body.next(self.eof) {
                Err(e) => return Err(self.fail(e)),
                Ok(None) => return Ok(Progress::NeedInput),
                Ok(Some(Unit::End)) => self.ended = true,
                Ok(Some(Unit::Plaintext { plaintext, last: true })) => self.held = Some(plaintext),
                Ok(Some(Unit::Plaintext { plaintext, last: false })) => {
                    if self.body.is_signed() && !self.allow_unverified_signed {
                        return Err(self.fail(Error::SignedStreaming));
                    }
                    self.ready = plaintext;
                    self.pos = 0;
                }
            }
        }
    }
}

/// Decrypts a message read from the inner reader. End-of-file (`Ok(0)`) comes only after the
/// final frame, the signature and the absence of trailing bytes verified; an error means what
/// was read so far must be discarded. The final frame is released only then.
pub struct DecryptingReader<R: Read> {
    inner: R,
    header: Header,
    core: PlainOut,
    chunk: Vec<u8>,
}

impl<R: Read> DecryptingReader<R> {
    pub(crate) fn new(inner: R, header: Header, body: BodyReader, allow_unverified_signed: bool) -> Self {
        Self {
            inner,
            header,
            core: PlainOut::new(body, allow_unverified_signed),
            chunk: Vec::new(),
        }
    }

    /// The message's header (its stored context, suite, wrapped keys).
    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.core.step(buf)? {
                Progress::Read(n) => return Ok(n),
                Progress::NeedInput => {
                    self.chunk.resize(self.core.read_size(), 0);
                    let n = match self.inner.read(&mut self.chunk) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    self.core.input(&self.chunk[..n]);
                }
            }
        }
    }
}
