//! The data path: copy bytes both ways until both sides have finished, with
//! half-close (a FIN one way is passed on and the other way keeps flowing)
//! and an idle timeout over both directions.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, future};

use crate::deadline::{At, at};
use crate::metrics::{Counter, Meter};
use crate::proto::proxy::{Body, Scan};
use crate::shutdown::{Shutdown, Stage};
use crate::tls::Stream;

/// Size of each direction's buffer.
const BUF: usize = 64 * 1024;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides sent FIN.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// The client's connection failed (reset, ...).
    ClientError(io::ErrorKind),
    /// The destination's connection failed.
    DestError(io::ErrorKind),
    /// A write made no progress for the send timeout: the side it goes to
    /// stopped reading.
    Stalled,
    /// Still open when the daemon's shutdown grace ran out.
    Cut,
}

impl End {
    /// Whether the tunnel ended before both sides finished: then both sides
    /// get a reset, not a FIN, so neither takes a truncated stream for a
    /// complete one.
    pub(crate) fn truncated(self) -> bool {
        !matches!(self, End::Closed | End::Idle)
    }
}

/// What a tunnel may hold: how long it may sit still, with no byte either
/// way (`idle`) or one direction's writes blocked without progress (`send`,
/// like nginx's `proxy_send_timeout`), and how much kernel buffer
/// (`buffer`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub idle: Duration,
    pub send: Duration,
    /// Bytes a tunnel may hold per direction in kernel buffers (0: the
    /// kernel's autotuning decides). Bounds the receive buffer of each leg
    /// (SO_RCVBUF), unsent bytes in each send buffer (TCP_NOTSENT_LOWAT)
    /// and what one splice moves into a pipe, so a side that stops reading
    /// pins at most about this much per direction. The legs come bounded
    /// (`dial::bound`: the destination when dialled, the client by its
    /// listener or at the CONNECT); the relay sizes its splices by it.
    pub buffer: usize,
    /// How long destination-to-client bytes wait, at most, for the
    /// client's first byte (or its end) before they flow; zero: no wait.
    /// Keeps a destination's banner out of the client's read of the
    /// SOCKS5 reply (see `server.banner_hold`).
    pub hold: Duration,
}

/// Once one direction has finished, a blocked write in the other is all
/// that holds the tunnel: it gets this long without progress, not the
/// whole send timeout (a client that sent its last bytes and left into a
/// destination that does not read frees its buffers at once).
const STALL_AFTER_CLOSE: Duration = Duration::from_secs(1);

/// One direction's byte count: the tunnel's own total, and the shared
/// counters (the role's, and the user's with `metrics.per_user`), which
/// get what moved since the last flush once per relay wake-up rather than
/// an atomic add on a shared cache line per splice.
pub(crate) struct Tally<'a> {
    count: AtomicU64,
    flushed: AtomicU64,
    shared: &'a Counter,
    user: Option<&'a Counter>,
}

impl<'a> Tally<'a> {
    fn new(shared: &'a Counter, user: Option<&'a Counter>) -> Tally<'a> {
        Tally {
            count: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            shared,
            user,
        }
    }

    fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Passes what moved since the last flush on to the shared counters.
    fn flush(&self) {
        let now = self.get();
        let n = now - self.flushed.swap(now, Ordering::Relaxed);
        if n > 0 {
            self.shared.add(n);
            if let Some(u) = self.user {
                u.add(n);
            }
        }
    }
}

/// Resets `s` when it is closed (SO_LINGER 0): the peer sees
/// ECONNRESET instead of a clean end of stream.
pub(crate) fn reset_on_close(s: &async_net::TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// One direction's write stall: when its current blocked write began (ms
/// since the relay's epoch, plus one; 0 while not blocked).
struct Stall<'a> {
    since: AtomicU64,
    watch: &'a Watch,
}

/// The watchdog's schedule, shared by both directions: a stall that begins
/// wakes it only when it sleeps past the stall's deadline (bulk transfers
/// block many times a second; the watchdog wakes about once per send
/// timeout at most).
struct Watch {
    /// When the watchdog wakes next, ms since the epoch.
    wake_at: AtomicU64,
    /// The send timeout in ms.
    send_ms: u64,
    event: event_listener::Event,
}

impl Stall<'_> {
    fn new(watch: &Watch) -> Stall<'_> {
        Stall {
            since: AtomicU64::new(0),
            watch,
        }
    }

    /// A write is about to wait for the other side.
    fn blocked(&self, epoch: Instant) {
        if self.since.load(Ordering::Relaxed) == 0 {
            let now = epoch.elapsed().as_millis() as u64;
            self.since.store(now + 1, Ordering::Relaxed);
            if self.watch.wake_at.load(Ordering::Relaxed) > now + self.watch.send_ms {
                self.watch.event.notify(1);
            }
        }
    }

    /// The write moved bytes.
    fn moved(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// How long the current stall has lasted, if there is one.
    fn lasted(&self, epoch: Instant) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(epoch.elapsed().saturating_sub(Duration::from_millis(t - 1))),
        }
    }
}

impl End {
    /// The `end` label of the metrics (the log's `end=`, in the
    /// exposition's spelling).
    pub(crate) fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Stalled => "send_timeout",
            End::ClientError(_) => "client_error",
            End::DestError(_) => "destination_error",
            End::Cut => "cut",
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Idle => f.write_str("idle-timeout"),
            End::ClientError(k) => write!(f, "client-error({k})"),
            End::DestError(k) => write!(f, "destination-error({k})"),
            End::Stalled => f.write_str("send-timeout"),
            End::Cut => f.write_str("cut-at-shutdown"),
        }
    }
}

/// Byte counts and the way the tunnel ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Totals {
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

/// One direction of a relay.
type Dir<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), (Side, io::Error)>> + Send + 'a>>;

#[cfg(target_os = "linux")]
mod splice {
    //! splice(2): socket -> pipe -> socket, the bytes never enter user
    //! space. A pipe is held only while bytes move (taken from a small
    //! cache), so idle tunnels cost no descriptors beyond their sockets.

    use std::io::{self, Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;

    use async_io::Async;
    use std::os::fd::OwnedFd;
    use std::sync::Mutex;

    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};

    use super::{Side, Stall, Tally};

    /// Bytes moved per splice call, and the pipe size asked for.
    pub(super) const CHUNK: usize = 1024 * 1024;

    pub(super) type Sock = Arc<Async<std::net::TcpStream>>;

    fn flags() -> SpliceFlags {
        SpliceFlags::NONBLOCK | SpliceFlags::MOVE
    }

    /// Moves bytes until `from` ends, then passes the FIN on, unless the
    /// other direction (`done`) has finished already: the relay is over and
    /// closing both sockets sends that FIN anyway.
    #[allow(
        clippy::too_many_arguments,
        reason = "one direction's state, passed down once"
    )]
    pub(super) async fn pump(
        from: Sock,
        to: Sock,
        count: &Tally<'_>,
        last: &AtomicU64,
        stall: &Stall<'_>,
        epoch: Instant,
        chunk: usize,
        done: &AtomicBool,
    ) -> Result<(), (Side, io::Error)> {
        loop {
            // Wait first: at the start nothing is usually there yet (the
            // handshake read what the peer had sent), and after a burst the
            // socket was drained. Bytes already there make it ready at once.
            from.readable().await.map_err(|e| (Side::Reader, e))?;
            // Held only while bytes move; an idle direction holds no pipe.
            let pipe = take_pipe().map_err(|e| (Side::Reader, e))?;
            // Move data until the socket has none, then wait for more.
            loop {
                let n = match splice(from.get_ref(), None, &pipe.1, None, chunk, flags()) {
                    Ok(0) => {
                        // EOF: pass the FIN on; the other direction goes on.
                        if !done.load(Ordering::Relaxed) {
                            let _ = to.get_ref().shutdown(std::net::Shutdown::Write);
                        }
                        give_pipe(pipe);
                        count.flush();
                        return Ok(());
                    }
                    Ok(n) => n,
                    Err(rustix::io::Errno::AGAIN) => break,
                    // Not spliceable after all: copy through memory instead.
                    Err(rustix::io::Errno::INVAL) => {
                        return copy(from, to, count, last, stall, epoch).await;
                    }
                    Err(e) => return Err((Side::Reader, e.into())),
                };
                let mut left = n;
                while left > 0 {
                    match splice(&pipe.0, None, to.get_ref(), None, left, flags()) {
                        Ok(k) => {
                            left -= k;
                            stall.moved();
                        }
                        Err(rustix::io::Errno::AGAIN) => {
                            stall.blocked(epoch);
                            to.writable().await.map_err(|e| (Side::Writer, e))?
                        }
                        Err(e) => return Err((Side::Writer, e.into())),
                    }
                }
                count.add(n as u64);
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                if n < chunk {
                    // Less than asked for: the socket was drained. Wait
                    // for readiness rather than ask again for an EAGAIN
                    // (bytes that came meanwhile make it ready at once).
                    break;
                }
            }
            give_pipe(pipe);
            // Once per wake-up, not per splice: the shared counters.
            count.flush();
        }
    }

    type Pipe = (OwnedFd, OwnedFd);

    /// Empty pipes kept for the next burst, so a busy daemon does not make
    /// and close pipes all the time, and idle tunnels hold none.
    static PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
    const PIPES_KEPT: usize = 64;

    fn take_pipe() -> io::Result<Pipe> {
        if let Some(p) = PIPES.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(p);
        }
        let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // A bigger pipe moves more per call; the default is 64 KiB.
        let _ = fcntl_setpipe_size(&w, CHUNK);
        Ok((r, w))
    }

    /// Returns an empty pipe to the cache (or closes it when full).
    fn give_pipe(p: Pipe) {
        let mut kept = PIPES.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < PIPES_KEPT {
            kept.push(p);
        }
    }

    /// The fallback: read into a buffer that exists only while data flows,
    /// write it all, repeat.
    async fn copy(
        from: Sock,
        to: Sock,
        count: &Tally<'_>,
        last: &AtomicU64,
        stall: &Stall<'_>,
        epoch: Instant,
    ) -> Result<(), (Side, io::Error)> {
        loop {
            count.flush();
            from.readable().await.map_err(|e| (Side::Reader, e))?;
            let mut buf = vec![0u8; super::BUF];
            loop {
                let n = match from.get_ref().read(&mut buf) {
                    Ok(0) => {
                        let _ = to.get_ref().shutdown(std::net::Shutdown::Write);
                        return Ok(());
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err((Side::Reader, e)),
                };
                let mut at = 0;
                while at < n {
                    match to.get_ref().write(&buf[at..n]) {
                        Ok(k) => {
                            at += k;
                            stall.moved();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            stall.blocked(epoch);
                            to.writable().await.map_err(|e| (Side::Writer, e))?
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err((Side::Writer, e)),
                    }
                }
                count.add(n as u64);
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Copies `from` to `to` until EOF, then half-closes `to`. Counts bytes into
/// `count` and stamps `last` (ms since `epoch`) on every chunk.
async fn pump(
    mut from: Reader,
    mut to: Writer,
    count: &Tally<'_>,
    last: &AtomicU64,
    stall: &Stall<'_>,
    epoch: Instant,
) -> Result<(), (Side, io::Error)> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf).await {
            // A TLS peer that closes without close_notify (nginx does,
            // behind its proxy): for a byte tunnel that is a plain FIN.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            r => r.map_err(|e| (Side::Reader, e))?,
        };
        if n == 0 {
            // Pass the FIN on (TLS: close_notify, then FIN); the other
            // direction keeps going.
            let _ = to.close().await;
            return Ok(());
        }
        // Counted as blocked for as long as the write takes: a write that
        // cannot finish within the send timeout is a stall.
        stall.blocked(epoch);
        to.write_all(&buf[..n])
            .await
            .map_err(|e| (Side::Writer, e))?;
        // TLS keeps encrypted bytes buffered until flushed: a burst's tail
        // must not wait for the next burst.
        to.flush().await.map_err(|e| (Side::Writer, e))?;
        stall.moved();
        count.add(n as u64);
        count.flush();
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Relays between `client` and `dest` until both directions are done, one
/// fails (then both are dropped, closing the sockets), or nothing moves for
/// `idle`, or `stop` reaches [`Stage::Cut`]. Plain TCP on both sides goes
/// through the kernel with splice(2) on Linux: no user-space copy, and no
/// buffer held while a tunnel is idle.
pub(crate) async fn relay(
    client: Stream,
    dest: Stream,
    t: Limits,
    stop: &Shutdown,
    meter: &Meter,
) -> Totals {
    relay_up_to(client, dest, t, None, stop, meter).await
}

/// Copies a forwarded HTTP request's body from the client, up to the end
/// its framing gives (a `Content-Length` count or the chunked coding's last
/// chunk), then stops reading: no byte the client sends after the body (a
/// pipelined next request, meant for another host) reaches this origin. A
/// malformed chunk ends the tunnel. The origin gets no FIN; it answers and
/// closes (`Connection: close`).
async fn limited(
    mut from: Reader,
    mut to: Writer,
    mut body: Body,
    count: &Tally<'_>,
    last: &AtomicU64,
    epoch: Instant,
) -> Result<(), (Side, io::Error)> {
    let mut buf = vec![0u8; 16 * 1024];
    while !body.done() {
        // A counted body is read no further than its end.
        let want = match body {
            Body::Length(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            Body::Chunked(_) => buf.len(),
        };
        let n = from
            .read(&mut buf[..want])
            .await
            .map_err(|e| (Side::Reader, e))?;
        if n == 0 {
            return Ok(());
        }
        let n = match body.feed(&buf[..n]) {
            Ok(Scan::More) => n,
            Ok(Scan::End(k)) => k,
            Err(_) => return Err((Side::Reader, io::ErrorKind::InvalidData.into())),
        };
        to.write_all(&buf[..n])
            .await
            .map_err(|e| (Side::Writer, e))?;
        to.flush().await.map_err(|e| (Side::Writer, e))?;
        count.add(n as u64);
        count.flush();
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// [`relay`], with the client-to-destination direction limited to a
/// request body when given (then copied through memory, not spliced).
pub(crate) async fn relay_up_to(
    client: Stream,
    dest: Stream,
    t: Limits,
    up_limit: Option<Body>,
    stop: &Shutdown,
    meter: &Meter,
) -> Totals {
    let epoch = Instant::now();
    let user = meter.user.as_deref();
    let up = Tally::new(&meter.bytes.up, user.map(|u| &u.bytes.up));
    let down = Tally::new(&meter.bytes.down, user.map(|u| &u.bytes.down));
    let last = AtomicU64::new(0);
    let watch = Watch {
        wake_at: AtomicU64::new(u64::MAX),
        send_ms: t.send.as_millis() as u64,
        event: event_listener::Event::new(),
    };
    let (up_stall, down_stall) = (Stall::new(&watch), Stall::new(&watch));
    // Kept to reset both sides if the tunnel is cut short.
    let (client_tcp, dest_tcp) = (client.tcp().clone(), dest.tcp().clone());
    let chunk = match t.buffer {
        0 => splice::CHUNK,
        b => (b / 4).clamp(16 * 1024, splice::CHUNK),
    };
    let finished = AtomicBool::new(false);
    let (a, b): (Dir<'_>, Dir<'_>) = match (client, dest, up_limit) {
        (client, dest, Some(limit)) => {
            let (cr, cw) = halves(client);
            let (dr, dw) = halves(dest);
            (
                Box::pin(limited(cr, dw, limit, &up, &last, epoch)),
                Box::pin(pump(dr, cw, &down, &last, &down_stall, epoch)),
            )
        }
        #[cfg(target_os = "linux")]
        (Stream::Plain(c), Stream::Plain(d), None) => {
            let (c, d): (splice::Sock, splice::Sock) = (c.into(), d.into());
            (
                Box::pin(splice::pump(
                    c.clone(),
                    d.clone(),
                    &up,
                    &last,
                    &up_stall,
                    epoch,
                    chunk,
                    &finished,
                )),
                Box::pin(splice::pump(
                    d,
                    c,
                    &down,
                    &last,
                    &down_stall,
                    epoch,
                    chunk,
                    &finished,
                )),
            )
        }
        (client, dest, None) => {
            let (cr, cw) = halves(client);
            let (dr, dw) = halves(dest);
            (
                Box::pin(pump(cr, dw, &up, &last, &up_stall, epoch)),
                Box::pin(pump(dr, cw, &down, &last, &down_stall, epoch)),
            )
        }
    };
    let hold = (!t.hold.is_zero()).then(|| (at(Instant::now() + t.hold), &up));
    let both = both_directions(a, b, &finished, &watch, hold);
    let watchdog = watchdog(&watch, &last, &finished, [&up_stall, &down_stall], epoch, t);
    let end = both
        .or(watchdog)
        .or(async {
            stop.until(Stage::Cut).await;
            End::Cut
        })
        .await;
    if end.truncated() {
        reset_on_close(&client_tcp);
        reset_on_close(&dest_tcp);
    }
    up.flush();
    down.flush();
    Totals {
        up: up.get(),
        down: down.get(),
        end,
    }
}

/// Runs both directions (`a` client to destination, `b` back) until both
/// have finished, or one fails: the first error ends the tunnel. When one
/// finishes, `finished` is set and the watchdog woken (it then applies the
/// shorter stall limit). With `hold` (a timer and the up count), `b` does
/// not start until `a` has moved a byte or finished, or the timer fires:
/// both run in this one task, so `a`'s progress is seen at once.
async fn both_directions(
    a: Dir<'_>,
    b: Dir<'_>,
    finished: &AtomicBool,
    watch: &Watch,
    mut hold: Option<(At, &Tally<'_>)>,
) -> End {
    let mut a = pin!(async {
        a.await.map_err(|(side, e)| match side {
            Side::Reader => End::ClientError(e.kind()),
            Side::Writer => End::DestError(e.kind()),
        })
    });
    let mut b = pin!(async {
        b.await.map_err(|(side, e)| match side {
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
            finished.store(true, Ordering::Relaxed);
            watch.event.notify(1);
        }
        if let Some((timer, up)) = &mut hold {
            if a_done || up.get() > 0 || Pin::new(timer).poll(cx).is_ready() {
                hold = None;
            } else {
                return Poll::Pending;
            }
        }
        if !b_done && let Poll::Ready(r) = b.as_mut().poll(cx) {
            if let Err(e) = r {
                return Poll::Ready(e);
            }
            b_done = true;
            finished.store(true, Ordering::Relaxed);
            watch.event.notify(1);
        }
        if a_done && b_done {
            Poll::Ready(End::Closed)
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Sleeps until the idle timeout or the end of a stall, whichever is
/// first, and wakes early when a stall begins; returns why the tunnel ends.
async fn watchdog(
    watch: &Watch,
    last: &AtomicU64,
    finished: &AtomicBool,
    stalls: [&Stall<'_>; 2],
    epoch: Instant,
    t: Limits,
) -> End {
    loop {
        let woken = watch.event.listen();
        let quiet = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if quiet >= t.idle {
            return End::Idle;
        }
        let limit = if finished.load(Ordering::Relaxed) {
            t.send.min(STALL_AFTER_CLOSE)
        } else {
            t.send
        };
        let mut next = t.idle - quiet;
        for stall in stalls {
            if let Some(lasted) = stall.lasted(epoch) {
                if lasted >= limit {
                    return End::Stalled;
                }
                next = next.min(limit - lasted);
            }
        }
        watch.wake_at.store(
            (epoch.elapsed() + next).as_millis() as u64,
            Ordering::Relaxed,
        );
        at(Instant::now() + next).or(woken).await;
    }
}
