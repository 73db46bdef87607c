//! tokio `AsyncWrite`/`AsyncRead` adapters, on the same cores as the blocking ones (feature
//! `tokio`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

use crate::context::EncryptionContext;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::header::{Header, Limits};
use crate::message::BodyReader;
use crate::stream::{HeaderBuf, PlainOut, Progress, SealOut};

/// Encrypts what is written into a message written to the inner writer;
/// `shutdown()` ends the message (final frame, signature) and shuts the inner writer down.
pub struct AsyncEncryptingWriter<W> {
    inner: W,
    core: SealOut,
}

/// Decrypts a message read from the inner reader; end-of-file only once all of it verified
/// (see [`crate::DecryptingReader`]).
pub struct AsyncDecryptingReader<R> {
    inner: R,
    header: Header,
    core: PlainOut,
}

impl Envelope {
    /// As [`Envelope::encrypting_writer`], for a tokio writer.
    pub async fn async_encrypting_writer<W: AsyncWrite + Unpin>(
        &self,
        inner: W,
        context: &EncryptionContext,
        plaintext_len: Option<u64>,
    ) -> Result<AsyncEncryptingWriter<W>, Error> {
        let (sealer, header) = self.start(context, plaintext_len).await?;
        Ok(AsyncEncryptingWriter {
            inner,
            core: SealOut::new(sealer, header, plaintext_len),
        })
    }

    /// As [`Envelope::decrypting_reader`], for a tokio reader.
    pub async fn async_decrypting_reader<R: AsyncRead + Unpin>(
        &self,
        mut inner: R,
        expected: &EncryptionContext,
    ) -> Result<AsyncDecryptingReader<R>, Error> {
        let (header, rest) = read_header(&mut inner, self.limits()).await?;
        let opened = self.open(&header, expected).await?;
        let mut body = BodyReader::new(&header, opened.key, self.limits())?;
        body.feed(&rest);
        Ok(AsyncDecryptingReader {
            inner,
            header,
            core: PlainOut::new(body, self.allows_unverified_signed_frames()),
        })
    }
}

async fn read_header<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<(Header, Vec<u8>), Error> {
    let mut header = HeaderBuf::default();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::Truncated("header"));
        }
        if let Some(done) = header.push(&chunk[..n], limits)? {
            return Ok(done);
        }
    }
}

impl<W> AsyncEncryptingWriter<W> {
    /// The inner writer (after `shutdown`).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncEncryptingWriter<W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.core.pending().is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, self.core.pending()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.core.written(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AsyncEncryptingWriter<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_drain(cx))?;
            let n = this.core.push(buf).map_err(Error::into_io)?;
            if n > 0 || buf.is_empty() {
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.core.finish().map_err(Error::into_io)?;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<R> AsyncDecryptingReader<R> {
    /// The message's header.
    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncDecryptingReader<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.core.step(buf.initialize_unfilled())? {
                Progress::Read(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Progress::NeedInput => {
                    let mut rb = ReadBuf::new(this.core.spare());
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            this.core.commit(n);
                        }
                        Poll::Ready(Err(e)) => {
                            this.core.cancel();
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            this.core.cancel();
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }
}
