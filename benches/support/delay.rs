//! The delay relay of the benchmark's rtt phase: a TCP forwarder that holds
//! each chunk for a one-way delay in each direction, in order, optionally
//! through a token bucket per direction, so that the two ends talk as
//! across a path whose round trip is twice the delay (plus loopback's).
//!
//! What it emulates: the delay both ways; the round trip of TCP's own
//! handshake (the target is connected one delay after the accept, when a
//! SYN would arrive, and the client's first bytes are due as if sent when
//! its connect would have returned, one round trip after the accept); a
//! bottleneck rate. What it cannot: acknowledgements. Each leg is a
//! loopback TCP connection whose window, congestion control and buffer
//! autotuning see loopback's round trip, so a receive window bounded per
//! round trip does not slow a leg here as it would across a real path.
//!
//! A thread per direction reads and stamps each chunk with the time it is
//! due; another sleeps until then and writes it (TCP_NODELAY on both legs,
//! so nothing waits for Nagle).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// What the relay puts between its two ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    /// One way.
    pub delay: Duration,
    /// Bytes per second each way; `None`: as fast as the relay copies.
    pub rate: Option<f64>,
}

impl Link {
    /// One read: about a millisecond of the rate, so that a capped link
    /// releases bytes smoothly rather than in large lumps.
    fn read_size(self) -> usize {
        const MAX: usize = 256 * 1024;
        #[allow(
            clippy::cast_sign_loss,
            reason = "a positive rate, checked when parsed"
        )]
        self.rate
            .map_or(MAX, |r| ((r / 1000.0) as usize).clamp(4096, MAX))
    }

    /// Bytes one direction may hold: what the link has in flight plus 50
    /// ms of queue at its rate, or 64 MiB uncapped (which bounds an
    /// uncapped direction at 64 MiB per delay).
    fn limit(self) -> usize {
        #[allow(clippy::cast_sign_loss, reason = "a positive rate")]
        self.rate.map_or(64 << 20, |r| {
            ((r * (self.delay.as_secs_f64() + 0.05)) as usize).max(256 * 1024)
        })
    }
}

/// The bytes one direction holds. While it holds its limit, its intake
/// reads nothing, and the sender feels TCP's backpressure.
#[derive(Default)]
struct Held {
    /// Bytes held, and whether the release has ended.
    state: Mutex<(usize, bool)>,
    freed: Condvar,
}

impl Held {
    /// Waits while `limit` bytes or more are held; false once the release
    /// has ended.
    fn room(&self, limit: usize) -> bool {
        let mut s = self.state.lock().unwrap();
        while s.0 >= limit && !s.1 {
            s = self.freed.wait(s).unwrap();
        }
        !s.1
    }

    fn add(&self, n: usize) {
        self.state.lock().unwrap().0 += n;
    }

    fn sub(&self, n: usize) {
        self.state.lock().unwrap().0 -= n;
        self.freed.notify_one();
    }

    fn end(&self) {
        self.state.lock().unwrap().1 = true;
        self.freed.notify_one();
    }
}

/// A token bucket: `rate` bytes per second, at most `depth` saved up.
pub(crate) struct Bucket {
    rate: f64,
    depth: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64, depth: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            depth,
            tokens: depth,
            at: now,
        }
    }

    /// When `n` bytes handed over at `now` have left: at once while the
    /// bucket holds them, else when the rate has paid off the debt. Bytes
    /// leave in the order they were handed over.
    pub(crate) fn take(&mut self, n: usize, now: Instant) -> Instant {
        let now = now.max(self.at);
        self.tokens =
            (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.depth) - n as f64;
        self.at = now;
        if self.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Bytes read at one end and when they are due at the other; empty: the
/// end of the stream.
struct Chunk {
    due: Instant,
    bytes: Vec<u8>,
}

/// Serves `l`: each connection is carried to `target` across `link`.
pub(crate) fn serve(l: &TcpListener, target: SocketAddr, link: Link) {
    // Accepts are timed here and carried from another thread: spawning
    // takes tens of µs, and in a burst of connections the last one's clock
    // must not wait for the others' spawns.
    let (tx, rx) = mpsc::channel::<(TcpStream, Instant)>();
    thread::spawn(move || {
        for (c, accepted) in rx {
            thread::spawn(move || carry(&c, accepted, target, link));
        }
    });
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        if tx.send((c, Instant::now())).is_err() {
            return;
        }
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// Waits until `t`: sleeps, then, if `exact`, spins the last stretch. A
/// sleep here wakes up to about 100 µs late plus 0.4 % of its length (50
/// µs of timer slack, a VM's timer), which a lone chunk must not pay.
fn wait_until(t: Instant, exact: bool) {
    let left = t.saturating_duration_since(Instant::now());
    let nap = if exact {
        left.saturating_sub(Duration::from_micros(250) + left / 100)
    } else {
        left
    };
    if !nap.is_zero() {
        thread::sleep(nap);
    }
    while exact && Instant::now() < t {
        thread::yield_now();
    }
}

/// One connection, accepted at `accepted`, both ways.
fn carry(client: &TcpStream, accepted: Instant, target: SocketAddr, link: Link) {
    let _ = client.set_nodelay(true);
    let (up_tx, up_rx) = mpsc::channel();
    let up = Arc::new(Held::default());
    let Ok(from_client) = client.try_clone() else {
        return;
    };
    // Across a real path the client's connect returns one round trip after
    // its SYN left: whatever it sends is due one delay after that.
    let held = up.clone();
    thread::spawn(move || {
        intake(from_client, &up_tx, &held, link, accepted + 2 * link.delay);
    });
    // The SYN reaches the target after one delay.
    sleep_until(accepted + link.delay);
    let Ok(server) = TcpStream::connect(target) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = server.set_nodelay(true);
    let Ok(to_server) = server.try_clone() else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    thread::spawn(move || release(&to_server, &up_rx, &up));
    let (down_tx, down_rx) = mpsc::channel();
    let down = Arc::new(Held::default());
    let held = down.clone();
    thread::spawn(move || intake(server, &down_tx, &held, link, accepted));
    release(client, &down_rx, &down);
}

/// Reads `from` until EOF (or an error, taken as one) and queues each read
/// with the time it is due at the other end: one delay after it has left
/// the bucket, never sent before `not_before`.
fn intake(
    mut from: TcpStream,
    tx: &mpsc::Sender<Chunk>,
    held: &Held,
    link: Link,
    not_before: Instant,
) {
    let (size, limit) = (link.read_size(), link.limit());
    let mut bucket = link
        .rate
        .map(|r| Bucket::new(r, size as f64, Instant::now()));
    let mut buf = vec![0u8; size];
    while held.room(limit) {
        let n = from.read(&mut buf).unwrap_or(0);
        held.add(n);
        let sent = Instant::now().max(not_before);
        let left = bucket.as_mut().map_or(sent, |b| b.take(n, sent));
        let chunk = Chunk {
            due: left + link.delay,
            bytes: buf[..n].to_vec(),
        };
        // The other end is gone when the receiver is.
        if tx.send(chunk).is_err() || n == 0 {
            return;
        }
    }
}

/// Writes each queued chunk to `to` when it is due; then passes the FIN on.
/// A chunk with another queued behind it (a bulk flow) is released after a
/// plain sleep; a lone one (a request, a reply) to the microsecond.
fn release(mut to: &TcpStream, rx: &mpsc::Receiver<Chunk>, held: &Held) {
    let mut next = rx.recv().ok();
    while let Some(c) = next.take() {
        next = rx.try_recv().ok();
        wait_until(c.due, next.is_none());
        if c.bytes.is_empty() || to.write_all(&c.bytes).is_err() {
            break;
        }
        held.sub(c.bytes.len());
        if next.is_none() {
            next = rx.recv().ok();
        }
    }
    held.end();
    let _ = to.shutdown(Shutdown::Write);
}
