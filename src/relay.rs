//! The data path: copy bytes both ways until both sides have finished, with
//! half-close (a FIN one way is passed on and the other way keeps flowing)
//! and an idle timeout over both directions.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt, future};

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

/// Which side an I/O error came from.
enum Side {
    Reader,
    Writer,
}

/// Copies `from` to `to` until EOF, then half-closes `to`. Counts bytes into
/// `count` and stamps `last` (ms since `epoch`) on every chunk.
async fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    count: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> Result<(), (Side, io::Error)> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await.map_err(|e| (Side::Reader, e))?;
        if n == 0 {
            // Pass the FIN on; the other direction keeps going.
            let _ = to.shutdown(Shutdown::Write);
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
/// fails, or nothing moves for `idle`.
pub async fn relay(client: &TcpStream, dest: &TcpStream, idle: Duration) -> Totals {
    // Each direction gets its own handles (clones share the socket).
    let epoch = Instant::now();
    let (up, down, last) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let kill = || {
        let _ = client.shutdown(Shutdown::Both);
        let _ = dest.shutdown(Shutdown::Both);
    };
    let both = async {
        let a = async {
            let r = pump(client.clone(), dest.clone(), &up, &last, epoch).await;
            if r.is_err() {
                kill();
            }
            r.map_err(|(side, e)| match side {
                Side::Reader => End::ClientError(e.kind()),
                Side::Writer => End::DestError(e.kind()),
            })
        };
        let b = async {
            let r = pump(dest.clone(), client.clone(), &down, &last, epoch).await;
            if r.is_err() {
                kill();
            }
            r.map_err(|(side, e)| match side {
                Side::Reader => End::DestError(e.kind()),
                Side::Writer => End::ClientError(e.kind()),
            })
        };
        match future::zip(a, b).await {
            (Err(e), _) | (_, Err(e)) => e,
            _ => End::Closed,
        }
    };
    let watchdog = async {
        loop {
            let quiet = epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                kill();
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
