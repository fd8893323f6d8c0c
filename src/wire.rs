//! Reading a peer's handshake under a deadline, for the server and the
//! agent alike. A read is not a message: every stage parses what is
//! buffered, reads more only when the parser needs it, and leaves what it
//! did not use for the next stage (spec "Combine Packets").

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Async;
use async_net::TcpStream;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::deadline::timeout;
use crate::proto::Parse;
use crate::tls::Stream;

/// Bytes asked for per read; the buffer grows only as parsers need.
const READ: usize = 2048;

/// Why no more bytes came (or could be sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    Closed,
    TimedOut,
    /// A read or write failed, with this kind of error.
    Failed(io::ErrorKind),
    /// The daemon is stopping and the connection carries no tunnel yet.
    Stopping,
}

impl Gone {
    pub(crate) fn why(self) -> &'static str {
        match self {
            Gone::Closed => "closed during handshake",
            Gone::TimedOut => "handshake timed out",
            Gone::Failed(_) => "read or write error during handshake",
            Gone::Stopping => "server stopping: idle pooled connection closed",
        }
    }
}

impl From<io::Error> for Gone {
    fn from(e: io::Error) -> Gone {
        match e.kind() {
            io::ErrorKind::TimedOut => Gone::TimedOut,
            kind => Gone::Failed(kind),
        }
    }
}

/// A stream whose readiness can be waited for without reading.
pub(crate) trait Socket {
    /// The TCP socket that holds every byte a read would return: none for
    /// TLS, where rustls may hold bytes the socket no longer shows.
    fn socket(&self) -> Option<&TcpStream>;
}

impl Socket for TcpStream {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Socket for Stream {
    fn socket(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }
}

/// A stream, what was read from it and not used yet, and the deadline.
pub(crate) struct Wire<S> {
    pub stream: S,
    pub buf: Vec<u8>,
    pub deadline: Instant,
    /// The socket had nothing more to read when last asked (a read
    /// returned less than it could take, or the connection is ours and
    /// the peer speaks only when spoken to): the next read waits for
    /// readiness first instead of asking again for an EAGAIN. Bytes that
    /// came meanwhile make the socket ready at once.
    pub drained: bool,
    /// Bytes owed to the peer, held back to go out in the same write as
    /// the next [`send`](Wire::send) (or alone, by [`pay`](Wire::pay)).
    pub owed: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Socket + Unpin> Wire<S> {
    pub(crate) fn new(stream: S, deadline: Instant) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
            deadline,
            drained: false,
            owed: Vec::new(),
        }
    }

    /// Reads more bytes into `buf` (straight into its spare room: no
    /// separate chunk lives in the future), or fails on EOF, error or the
    /// deadline. Cancel-safe: dropped before it completes, it leaves `buf`
    /// as it was (a waiting connection races it with reloads).
    pub(crate) async fn more(&mut self) -> Result<(), Gone> {
        /// Cuts `buf` back to the bytes really read, however the read ends.
        struct Keep<'a>(&'a mut Vec<u8>, usize);
        impl Drop for Keep<'_> {
            fn drop(&mut self) {
                self.0.truncate(self.1);
            }
        }
        let Wire {
            stream,
            buf,
            deadline,
            drained,
            ..
        } = self;
        let len = buf.len();
        buf.resize(len + READ, 0);
        let mut keep = Keep(buf, len);
        let wait = match stream.socket() {
            Some(s) if *drained => Some(Arc::<Async<std::net::TcpStream>>::from(s.clone())),
            _ => None,
        };
        let read = async {
            if let Some(s) = &wait {
                s.readable().await?;
            }
            stream.read(&mut keep.0[len..]).await
        };
        let r = timeout(*deadline, read)
            .await
            .unwrap_or_else(|late| Err(late.into()));
        let n = *r.as_ref().unwrap_or(&0);
        keep.1 = len + n;
        drop(keep);
        *drained = n < READ;
        match r {
            Ok(0) => Err(Gone::Closed),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `parse` over the buffer until it completes, reading as needed;
    /// consumes the bytes it used. `wrap` turns a parse error into `F`.
    pub(crate) async fn next<T, E, F: From<Gone>>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Parse<T>, E>,
        wrap: impl Fn(E) -> F,
    ) -> Result<T, F> {
        loop {
            match parse(&self.buf).map_err(&wrap)? {
                Parse::Done(t, used) => {
                    self.buf.drain(..used);
                    return Ok(t);
                }
                Parse::Incomplete => self.more().await?,
            }
        }
    }

    /// Writes what is owed and `bytes`, in one write, before the deadline.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        if !self.owed.is_empty() {
            let mut all = std::mem::take(&mut self.owed);
            all.extend_from_slice(bytes);
            return self.write(&all).await;
        }
        self.write(bytes).await
    }

    /// Writes what is owed, if anything.
    pub(crate) async fn pay(&mut self) -> Result<(), Gone> {
        match self.owed.is_empty() {
            true => Ok(()),
            false => self.send(&[]).await,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        let stream = &mut self.stream;
        let sent = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        timeout(self.deadline, sent)
            .await
            .unwrap_or_else(|late| Err(late.into()))
            .map_err(Gone::from)
    }
}

/// Sends a last answer, then half-closes and drains what the peer still
/// sends (at most 256 KiB, for at most `wait`), so closing with unread input
/// does not turn into a reset that destroys the answer before the peer
/// reads it.
pub(crate) async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    last: &[u8],
    wait: Duration,
) {
    let work = async {
        if !last.is_empty() {
            s.write_all(last).await?;
            s.flush().await?;
        }
        s.close().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            let n = s.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        io::Result::Ok(())
    };
    let _ = timeout(Instant::now() + wait, work).await;
}
