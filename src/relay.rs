//! The data path: copy bytes both ways until both sides have finished, with
//! half-close (a FIN one way is passed on and the other way keeps flowing)
//! and an idle timeout over both directions.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, future};

use crate::tls::Stream;

/// Size of each direction's buffer.
const BUF: usize = 64 * 1024;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides sent FIN.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// The client's connection failed (reset, ...).
    ClientError(io::ErrorKind),
    /// The destination's connection failed.
    DestError(io::ErrorKind),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Idle => f.write_str("idle-timeout"),
            End::ClientError(k) => write!(f, "client-error({k})"),
            End::DestError(k) => write!(f, "destination-error({k})"),
        }
    }
}

/// Byte counts and the way the tunnel ended.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// Client to destination.
    pub up: u64,
    /// Destination to client.
    pub down: u64,
    pub end: End,
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// A stream as separate read and write halves. Plain TCP uses two handles
/// of the same socket (no lock); TLS is split around a lock.
fn halves(s: Stream) -> (Reader, Writer) {
    match s {
        Stream::Plain(t) => (Box::new(t.clone()), Box::new(t)),
        Stream::Tls(t) => {
            let (r, w) = futures_lite::io::split(*t);
            (Box::new(r), Box::new(w))
        }
    }
}

/// Which side an I/O error came from.
enum Side {
    Reader,
    Writer,
}

/// Copies `from` to `to` until EOF, then half-closes `to`. Counts bytes into
/// `count` and stamps `last` (ms since `epoch`) on every chunk.
async fn pump(
    mut from: Reader,
    mut to: Writer,
    count: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> Result<(), (Side, io::Error)> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await.map_err(|e| (Side::Reader, e))?;
        if n == 0 {
            // Pass the FIN on (TLS: close_notify, then FIN); the other
            // direction keeps going.
            let _ = to.close().await;
            return Ok(());
        }
        to.write_all(&buf[..n])
            .await
            .map_err(|e| (Side::Writer, e))?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Relays between `client` and `dest` until both directions are done, one
/// fails (then both are dropped, closing the sockets), or nothing moves for
/// `idle`.
pub async fn relay(client: Stream, dest: Stream, idle: Duration) -> Totals {
    let epoch = Instant::now();
    let (up, down, last) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let (cr, cw) = halves(client);
    let (dr, dw) = halves(dest);
    let both = async {
        let mut a = pin!(async {
            pump(cr, dw, &up, &last, epoch)
                .await
                .map_err(|(side, e)| match side {
                    Side::Reader => End::ClientError(e.kind()),
                    Side::Writer => End::DestError(e.kind()),
                })
        });
        let mut b = pin!(async {
            pump(dr, cw, &down, &last, epoch)
                .await
                .map_err(|(side, e)| match side {
                    Side::Reader => End::DestError(e.kind()),
                    Side::Writer => End::ClientError(e.kind()),
                })
        });
        let (mut a_done, mut b_done) = (false, false);
        future::poll_fn(|cx| {
            if !a_done && let Poll::Ready(r) = a.as_mut().poll(cx) {
                if let Err(e) = r {
                    return Poll::Ready(e);
                }
                a_done = true;
            }
            if !b_done && let Poll::Ready(r) = b.as_mut().poll(cx) {
                if let Err(e) = r {
                    return Poll::Ready(e);
                }
                b_done = true;
            }
            if a_done && b_done {
                Poll::Ready(End::Closed)
            } else {
                Poll::Pending
            }
        })
        .await
    };
    let watchdog = async {
        loop {
            let quiet = epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return End::Idle;
            }
            Timer::after(idle - quiet).await;
        }
    };
    let end = both.or(watchdog).await;
    Totals {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        end,
    }
}
