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
//! It is the measuring instrument, so what it costs and adds of its own
//! must stay small however many connections it carries: one thread runs
//! them all, a loop on epoll(7) with one timerfd for every timer, level
//! triggered, one read per readable leg per turn. Accepts are taken first
//! in a turn and timed as each returns. A read is stamped with the time it
//! is due at the other end and queued; the chunk is written when due
//! (`TCP_NODELAY` on both legs, so nothing waits for Nagle), or, if the
//! socket is full, when epoll says it has room. A direction holding its
//! limit drops out of epoll's read set until its release frees room.
//!
//! Waking an idle thread on a timer costs 0.05–0.2 ms on this VM. For a
//! chunk alone in the relay (a request, a reply: what the latency rows
//! time) the loop sets its timer [`SPIN`] early and polls epoll without
//! blocking until the chunk is due, yielding the core between polls; with
//! more than one chunk queued (a burst, a bulk flow) each waits on the
//! timer alone, and polling stops, since it would then take a core from
//! the processes measured. Timers due together fire in the order they are
//! due (in a burst the writes queue up). Not an async executor: with
//! async-io's `block_on`, its reactor passes to async-io's own thread
//! after some 20 ms idle, and each event then wakes both threads, about
//! 0.7 ms per round trip at 80 ms.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::fd::OwnedFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

/// How early the loop wakes for a lone chunk, to poll until it is due.
const SPIN: Duration = Duration::from_micros(300);

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

/// One direction of a connection: what its intake has read and its
/// release not yet written. While it holds its limit its intake reads
/// nothing, and the sender feels TCP's backpressure.
struct Dir {
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    written: usize,
    /// Bytes queued.
    held: usize,
    /// The intake has queued the end of the stream (EOF, or an error
    /// taken as one).
    read_all: bool,
    /// The release has passed the FIN on, or failed to write: the
    /// direction is over.
    done: bool,
    /// The front chunk is due and waits for room in the socket.
    blocked: bool,
    /// The due time a timer is set for.
    timer: Option<Instant>,
    /// Nothing read is sent before this.
    not_before: Instant,
    bucket: Option<Bucket>,
}

impl Dir {
    fn new(link: Link, not_before: Instant, now: Instant) -> Dir {
        Dir {
            queue: VecDeque::new(),
            written: 0,
            held: 0,
            read_all: false,
            done: false,
            blocked: false,
            timer: None,
            not_before,
            bucket: link
                .rate
                .map(|r| Bucket::new(r, link.read_size() as f64, now)),
        }
    }
}

/// Client and server sides of a connection.
const CLIENT: usize = 0;
const SERVER: usize = 1;

/// One connection. Direction `d` reads leg `d` and writes the other:
/// `dirs[CLIENT]` is the way up.
struct Conn {
    legs: [Option<TcpStream>; 2],
    /// The server leg's connect has completed.
    connected: bool,
    dirs: [Dir; 2],
    /// What each leg is registered for with epoll.
    interest: [Option<EventFlags>; 2],
}

impl Conn {
    /// Chunks queued both ways.
    fn chunks(&self) -> usize {
        self.dirs.iter().map(|d| d.queue.len()).sum()
    }

    /// Whether direction `d` reads now.
    fn reads(&self, d: usize, limit: usize) -> bool {
        let dir = &self.dirs[d];
        (d == CLIENT || self.connected) && !dir.read_all && !dir.done && dir.held < limit
    }
}

/// What a timer is for.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// The server leg's connect: when a SYN would arrive.
    Connect,
    /// Direction `d`'s front chunk.
    Release(usize),
}

/// A timer: when the loop wakes for it, when it fires, the connection.
type Timer = Reverse<(Instant, Instant, u64, Due)>;

const LISTENER: u64 = u64::MAX;
const TIMERFD: u64 = u64::MAX - 1;

fn token(id: u64, leg: usize) -> EventData {
    EventData::new_u64(id << 1 | leg as u64)
}

/// The relay: its connections, its timers, its epoll.
struct Relay {
    ep: OwnedFd,
    timerfd: OwnedFd,
    /// The time the timerfd is set for.
    armed: Option<Instant>,
    timers: BinaryHeap<Timer>,
    /// Timers whose wake-up has passed and which are not yet due: while
    /// any is, the loop polls.
    spinning: Vec<(Instant, u64, Due)>,
    conns: HashMap<u64, Conn>,
    /// Chunks queued in all of them.
    queued: usize,
    next_id: u64,
    target: SocketAddr,
    link: Link,
    buffers: Buffers,
}

/// Read buffers of one read's size, reused: a read lands in one, which
/// becomes the chunk (a short read is copied out and the buffer kept).
struct Buffers {
    size: usize,
    free: Vec<Vec<u8>>,
}

impl Buffers {
    fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    fn give(&mut self, mut b: Vec<u8>) {
        if b.capacity() >= self.size && self.free.len() < 16 {
            b.clear();
            self.free.push(b);
        }
    }
}

/// Serves `l`: each connection is carried to `target` across `link`, all
/// of them on this thread.
pub(crate) fn serve(l: &TcpListener, target: SocketAddr, link: Link) {
    let mut r = Relay::new(target, link).expect("the delay relay's epoll");
    l.set_nonblocking(true).expect("a non-blocking listener");
    epoll::add(&r.ep, l, EventData::new_u64(LISTENER), EventFlags::IN)
        .expect("the listener in epoll");
    r.run(l);
}

impl Relay {
    fn new(target: SocketAddr, link: Link) -> io::Result<Relay> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let timerfd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        epoll::add(&ep, &timerfd, EventData::new_u64(TIMERFD), EventFlags::IN)?;
        Ok(Relay {
            ep,
            timerfd,
            armed: None,
            timers: BinaryHeap::new(),
            spinning: Vec::new(),
            conns: HashMap::new(),
            queued: 0,
            next_id: 0,
            target,
            link,
            buffers: Buffers {
                size: link.read_size(),
                free: Vec::new(),
            },
        })
    }

    fn run(&mut self, l: &TcpListener) {
        let mut events = Vec::with_capacity(256);
        loop {
            self.fire_timers();
            let poll = !self.spinning.is_empty();
            if poll {
                // Polling: let whatever else waits for this core run.
                thread::yield_now();
            } else {
                self.arm();
            }
            events.clear();
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if epoll::wait(&self.ep, spare_capacity(&mut events), poll.then_some(&zero)).is_err() {
                continue;
            }
            // Accepts first, so that their time is taken before the work.
            if events.iter().any(|e| e.data.u64() == LISTENER) {
                self.accept(l);
            }
            for e in &events {
                match e.data.u64() {
                    LISTENER => {}
                    TIMERFD => {
                        let mut b = [0u8; 8];
                        let _ = rustix::io::read(&self.timerfd, &mut b);
                        self.armed = None;
                    }
                    t => self.on_leg(t >> 1, (t & 1) as usize, e.flags),
                }
            }
        }
    }

    /// Sets the timerfd for the next wake-up, if it is not set for it.
    fn arm(&mut self) {
        let next = self.timers.peek().map(|Reverse((wake, ..))| *wake);
        if next == self.armed {
            return;
        }
        let left = next.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1))
        });
        #[allow(
            clippy::cast_possible_wrap,
            reason = "a delay's seconds fit an i64 many times over"
        )]
        let value = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos().into(),
        };
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: value,
        };
        if timerfd_settime(&self.timerfd, TimerfdTimerFlags::empty(), &spec).is_ok() {
            self.armed = next;
        }
    }

    /// Moves the timers whose wake-up has passed to `spinning`, and fires
    /// those due.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((wake, at, id, what))) = self.timers.peek() {
            if wake > now {
                break;
            }
            self.timers.pop();
            self.spinning.push((at, id, what));
        }
        // Polling is for a chunk alone in the relay; once others are queued
        // (a burst has come), it waits on the timer like them.
        let alone = self.queued <= 1;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.spinning.len() {
            let (at, id, what) = self.spinning[i];
            if at <= now {
                due.push(self.spinning.swap_remove(i));
            } else if alone {
                i += 1;
            } else {
                self.spinning.swap_remove(i);
                self.timers.push(Reverse((at, at, id, what)));
            }
        }
        // In the order they are due: in a burst the writes queue up.
        due.sort_unstable();
        for (at, id, what) in due {
            match what {
                Due::Connect => self.connect(id),
                Due::Release(d) => {
                    if let Some(c) = self.conns.get_mut(&id)
                        && c.dirs[d].timer == Some(at)
                    {
                        c.dirs[d].timer = None;
                    }
                    self.settle(id);
                }
            }
        }
    }

    fn timer(&mut self, at: Instant, exact: bool, id: u64, what: Due) {
        let wake = if exact {
            at.checked_sub(SPIN).unwrap_or(at)
        } else {
            at
        };
        self.timers.push(Reverse((wake, at, id, what)));
    }

    /// Takes every connection waiting, each timed as it is taken.
    fn accept(&mut self, l: &TcpListener) {
        while let Ok((c, _)) = l.accept() {
            let accepted = Instant::now();
            let _ = c.set_nodelay(true);
            if c.set_nonblocking(true).is_err() {
                continue;
            }
            let (id, link) = (self.next_id, self.link);
            self.next_id += 1;
            let conn = Conn {
                legs: [Some(c), None],
                connected: false,
                // Across a real path the client's connect returns one round
                // trip after its SYN left: whatever it sends is due one
                // delay after that.
                dirs: [
                    Dir::new(link, accepted + 2 * link.delay, accepted),
                    Dir::new(link, accepted, accepted),
                ],
                interest: [None, None],
            };
            self.conns.insert(id, conn);
            self.settle(id);
            // The SYN reaches the target after one delay.
            self.timer(accepted + link.delay, false, id, Due::Connect);
        }
    }

    /// Starts the server leg's connect.
    fn connect(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let target = self.target;
        let s = rustix::net::socket_with(
            match target {
                SocketAddr::V4(_) => rustix::net::AddressFamily::INET,
                SocketAddr::V6(_) => rustix::net::AddressFamily::INET6,
            },
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            None,
        );
        let Ok(s) = s else {
            self.fail(id);
            return;
        };
        match rustix::net::connect(&s, &target) {
            Ok(()) => c.connected = true,
            Err(rustix::io::Errno::INPROGRESS) => {}
            Err(_) => {
                self.fail(id);
                return;
            }
        }
        let s = TcpStream::from(s);
        let _ = s.set_nodelay(true);
        c.legs[SERVER] = Some(s);
        self.settle(id);
    }

    /// The target could not be reached: the client is closed.
    fn fail(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            self.queued -= c.chunks();
            if let Some(client) = &c.legs[CLIENT] {
                let _ = client.shutdown(Shutdown::Both);
            }
        }
    }

    /// Leg `leg` of connection `id` is ready for what `flags` say.
    fn on_leg(&mut self, id: u64, leg: usize, flags: EventFlags) {
        let (limit, delay) = (self.link.limit(), self.link.delay);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if leg == SERVER && !c.connected {
            let ok = c.legs[SERVER]
                .as_ref()
                .is_some_and(|s| matches!(s.take_error(), Ok(None)) && s.peer_addr().is_ok());
            if !ok {
                self.fail(id);
                return;
            }
            c.connected = true;
        } else {
            if flags.intersects(EventFlags::IN | EventFlags::ERR | EventFlags::HUP)
                && c.reads(leg, limit)
                && let Some(from) = &c.legs[leg]
                && intake(from, &mut c.dirs[leg], &mut self.buffers, delay)
            {
                self.queued += 1;
            }
            if flags.intersects(EventFlags::OUT | EventFlags::ERR | EventFlags::HUP) {
                c.dirs[1 - leg].blocked = false;
            }
        }
        self.settle(id);
    }

    /// Writes what is due in both directions of connection `id`, sets
    /// the timers for what is not yet, and registers its legs for what
    /// they wait for; drops the connection once both directions are over.
    fn settle(&mut self, id: u64) {
        let limit = self.link.limit();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut timers = Vec::new();
        if c.connected {
            let before = c.chunks();
            for d in [CLIENT, SERVER] {
                if let (Some(to), dir) = (&c.legs[1 - d], &mut c.dirs[d])
                    && let Some(at) = release(to, dir, &mut self.buffers)
                {
                    timers.push((at, d));
                }
            }
            self.queued -= before - c.chunks();
        }
        if c.dirs.iter().all(|d| d.done) {
            self.conns.remove(&id);
            return;
        }
        for leg in [CLIENT, SERVER] {
            let Some(s) = &c.legs[leg] else { continue };
            let mut want = EventFlags::empty();
            if leg == SERVER && !c.connected {
                want |= EventFlags::OUT;
            }
            if c.reads(leg, limit) {
                want |= EventFlags::IN;
            }
            if c.dirs[1 - leg].blocked {
                want |= EventFlags::OUT;
            }
            let want = (!want.is_empty()).then_some(want);
            let r = match (c.interest[leg], want) {
                (a, b) if a == b => Ok(()),
                (None, Some(w)) => epoll::add(&self.ep, s, token(id, leg), w),
                (Some(_), Some(w)) => epoll::modify(&self.ep, s, token(id, leg), w),
                (Some(_), None) => epoll::delete(&self.ep, s),
                (None, None) => Ok(()),
            };
            if r.is_ok() {
                c.interest[leg] = want;
            }
        }
        // A chunk alone in the relay (a request, a reply) is released to
        // the microsecond; in a burst or a bulk flow, polling would take a
        // core from what is measured, and each chunk waits on the timer.
        let exact = self.queued == 1;
        for (at, d) in timers {
            self.timer(at, exact, id, Due::Release(d));
        }
    }
}

/// Reads `from` once and queues what it read with the time it is due at
/// the other end: one `delay` after it has left the bucket, never sent
/// before `not_before`. EOF, or an error taken as one, queues the end.
/// False if there was nothing to read.
fn intake(from: &TcpStream, dir: &mut Dir, buffers: &mut Buffers, delay: Duration) -> bool {
    let mut b = buffers.take();
    match rustix::io::read(from, spare_capacity(&mut b)) {
        Ok(_) => {}
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
            buffers.give(b);
            return false;
        }
        // Taken as EOF.
        Err(_) => b.clear(),
    }
    let n = b.len();
    let bytes = if n < buffers.size / 8 {
        let small = b.clone();
        buffers.give(b);
        small
    } else {
        b
    };
    let sent = Instant::now().max(dir.not_before);
    let left = dir.bucket.as_mut().map_or(sent, |b| b.take(n, sent));
    dir.queue.push_back(Chunk {
        due: left + delay,
        bytes,
    });
    dir.held += n;
    dir.read_all = n == 0;
    true
}

/// Writes to `to` what `dir` holds that is due, passing the FIN on after
/// the last chunk; returns when the next chunk is due if it needs a timer
/// not yet set.
fn release(mut to: &TcpStream, dir: &mut Dir, buffers: &mut Buffers) -> Option<Instant> {
    if dir.done {
        return None;
    }
    let now = Instant::now();
    while !dir.done && !dir.blocked {
        let c = dir.queue.front()?;
        if c.due > now {
            if dir.timer == Some(c.due) {
                return None;
            }
            dir.timer = Some(c.due);
            return Some(c.due);
        }
        if c.bytes.is_empty() {
            dir.done = true;
            break;
        }
        match to.write(&c.bytes[dir.written..]) {
            Ok(n) => {
                dir.written += n;
                if dir.written == c.bytes.len() {
                    dir.held -= c.bytes.len();
                    dir.written = 0;
                    if let Some(c) = dir.queue.pop_front() {
                        buffers.give(c.bytes);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dir.blocked = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => dir.done = true,
        }
    }
    if dir.done {
        dir.queue.clear();
        let _ = to.shutdown(Shutdown::Write);
    }
    None
}
