//! Connecting to a destination: resolve (within a bounded, fairly shared
//! number of lookups), filter through the ACL, then try each permitted
//! address in turn, all under one deadline.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_io::Async;
use async_net::TcpStream;
use smol::lock::{Semaphore, SemaphoreGuardArc};

use crate::acl::{Acl, canonical};
use crate::deadline::timeout;
use crate::proto::socks5::{Addr, Reply};

/// Why a destination could not be reached.
#[derive(Debug)]
pub(crate) enum DialError {
    /// Every resolved address is denied by the ACL.
    Denied,
    /// The name did not resolve in time (or is not a valid name).
    Resolve(io::Error),
    /// The deadline passed.
    Timeout,
    /// Connecting failed; the last address's error.
    Connect(io::Error),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Denied => f.write_str("denied by destinations policy"),
            DialError::Resolve(e) => write!(f, "name resolution failed: {e}"),
            DialError::Timeout => f.write_str("connect timed out"),
            DialError::Connect(e) => write!(f, "connect failed: {e}"),
        }
    }
}

impl DialError {
    /// The SOCKS5 reply for a failed connect (RFC 1928 section 6).
    pub(crate) fn reply(&self) -> Reply {
        match self {
            DialError::Denied => Reply::NotAllowed,
            DialError::Resolve(_) => Reply::HostUnreachable,
            DialError::Timeout => Reply::TtlExpired,
            DialError::Connect(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
                io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
                io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
                io::ErrorKind::TimedOut => Reply::TtlExpired,
                _ => Reply::GeneralFailure,
            },
        }
    }
}

/// What a destination name really is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    /// An IP literal written as a name (`"10.1.2.3"`, `"[::1]"`).
    Ip(SocketAddr),
    /// A number getaddrinfo would also take as an address (`167838211`,
    /// `0x7f.1`, `012.0.0.1`): refused, so rules cannot be dodged with it.
    Numeric,
    /// A host name.
    Host,
}

/// Classifies a destination; IP addresses pass as they are.
pub(crate) fn classify(addr: &Addr) -> Name {
    let Addr::Domain(name, port) = addr else {
        return match addr {
            Addr::Ip(sa) => Name::Ip(*sa),
            Addr::Domain(..) => Name::Host,
        };
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return Name::Host;
    };
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = bare.parse() {
        return Name::Ip(SocketAddr::new(ip, *port));
    }
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    let numeric = |l: &str| {
        let hex = l.strip_prefix("0x").or_else(|| l.strip_prefix("0X"));
        match hex {
            Some(h) => h.bytes().all(|b| b.is_ascii_hexdigit()),
            None => !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()),
        }
    };
    if labels.len() <= 4 && labels.iter().all(|l| numeric(l)) {
        Name::Numeric
    } else {
        Name::Host
    }
}

/// Name lookups in flight at once in the process. Each is a getaddrinfo
/// call blocking one thread of the `blocking` crate's pool (at most 500
/// threads; nothing else in websocks uses it); a resolver that never answers holds its
/// thread for its whole timeout (resolv.conf: 5 s times 2 tries by
/// default), so without a cap one user's names could fill the pool and
/// queue everyone else's lookups behind theirs.
pub(crate) const MAX_LOOKUPS: usize = 64;

/// Lookups in flight for one asker (one server user; the agent's own
/// lookups count as one asker of their own): a quarter of the cap, so one
/// user's hanging names leave three quarters to everyone else.
pub(crate) const MAX_LOOKUPS_PER_ASKER: usize = MAX_LOOKUPS / 4;

/// Whose lookup it is: each asker gets at most its share of the slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asker<'a> {
    /// A server user, by the name it authenticated with.
    User(&'a str),
    /// The agent's own lookups: direct routes and its servers' host names.
    Agent,
}

/// An asker as a table key (a user may well be called "agent").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Agent,
}

/// The lookup slots: one semaphore for the process, one per asker.
struct Slots {
    all: Arc<Semaphore>,
    per_asker: usize,
    askers: Arc<Mutex<HashMap<Key, Arc<Semaphore>>>>,
}

/// A held slot. Dropped only when the getaddrinfo call returns (it moves
/// into the blocking closure), so a stuck lookup keeps its thread *and*
/// its slot, and the cap bounds threads, not just waiting callers. Fields
/// drop in order: both permits first, then the table entry is pruned.
struct Slot {
    _all: SemaphoreGuardArc,
    _mine: SemaphoreGuardArc,
    _entry: Entry,
}

/// A reference to an asker's semaphore. The last one dropped (holder or
/// waiter, finished or given up) removes the asker from the table: it
/// holds only askers with lookups in flight or waiting, not every user
/// who ever looked a name up.
struct Entry {
    key: Key,
    sem: Arc<Semaphore>,
    askers: Arc<Mutex<HashMap<Key, Arc<Semaphore>>>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut askers = self.askers.lock().unwrap_or_else(|e| e.into_inner());
        // Every other reference is the table's or another Entry's (or a
        // permit inside a Slot, which drops before that Slot's Entry), and
        // new ones are only made under this lock.
        if Arc::strong_count(&self.sem) == 2 {
            askers.remove(&self.key);
        }
    }
}

impl Slots {
    fn new(all: usize, per_asker: usize) -> Slots {
        Slots {
            all: Arc::new(Semaphore::new(all)),
            per_asker,
            askers: Arc::default(),
        }
    }

    /// Waits for a slot: first one of `who`'s share, then one of the
    /// process's. In that order, so an asker over its share waits on its
    /// own semaphore and never queues ahead of others for the shared one.
    ///
    /// An asker over its share waits rather than being refused: a browser
    /// or a mail client resolves bursts of names, and refusing those past
    /// the share at once would fail lookups that take milliseconds. A waiter
    /// costs no thread, only its connection, which `max_connections` and
    /// the connect deadline already bound.
    async fn take(&self, who: Asker<'_>) -> Slot {
        let entry = {
            let key = match who {
                Asker::User(u) => Key::User(u.to_owned()),
                Asker::Agent => Key::Agent,
            };
            let mut askers = self.askers.lock().unwrap_or_else(|e| e.into_inner());
            let sem = askers
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_asker)))
                .clone();
            Entry {
                key,
                sem,
                askers: self.askers.clone(),
            }
        };
        let mine = entry.sem.acquire_arc().await;
        let all = self.all.acquire_arc().await;
        Slot {
            _all: all,
            _mine: mine,
            _entry: entry,
        }
    }
}

static LOOKUPS: LazyLock<Slots> = LazyLock::new(|| Slots::new(MAX_LOOKUPS, MAX_LOOKUPS_PER_ASKER));

/// A lookup that did not finish by the deadline is answered like one the
/// resolver gave up on (EAI_AGAIN), `Resolve`, so SOCKS5 `04` host
/// unreachable (RFC 1928 section 6): the answer says what failed, not
/// which clock noticed first. `06` stays for a TCP connect out of time.
fn lookup_late(why: &'static str) -> DialError {
    DialError::Resolve(io::Error::new(io::ErrorKind::TimedOut, why))
}

/// Resolves `addr` to socket addresses by `deadline`, in one of `who`'s
/// lookup slots. IP literals in domain form (`"127.0.0.1"`, `"::1"`) are
/// taken as IPs without a lookup (and without a slot).
pub(crate) async fn resolve(
    addr: &Addr,
    who: Asker<'_>,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, DialError> {
    match addr {
        Addr::Ip(sa) => Ok(vec![*sa]),
        Addr::Domain(name, port) => {
            let name = std::str::from_utf8(name).map_err(|_| {
                DialError::Resolve(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "name is not UTF-8",
                ))
            })?;
            if let Name::Ip(sa) = classify(addr) {
                return Ok(vec![sa]);
            }
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(DialError::Resolve(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "invalid name",
                )));
            }
            let slot = timeout(deadline, LOOKUPS.take(who)).await.map_err(|_| {
                lookup_late("no lookup slot free in time (too many lookups in flight)")
            })?;
            let (name, port) = (name.to_owned(), *port);
            let lookup = smol::unblock(move || {
                // Released when getaddrinfo returns, even if the caller has
                // given up by then (see `Slot`).
                let _slot = slot;
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(Vec::from_iter)
                    .map_err(DialError::Resolve)
            });
            let found = timeout(deadline, lookup)
                .await
                .map_err(|_| lookup_late("name lookup timed out"))??;
            if found.is_empty() {
                return Err(DialError::Resolve(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no addresses",
                )));
            }
            Ok(found)
        }
    }
}

/// Connects to `addr` within `limit`, trying each resolved address the ACL
/// permits, the connection [`tune`]d and [`bound`] to `buffer` (0: no
/// bound). A name is looked up in one of `who`'s slots (see [`resolve`]).
pub(crate) async fn dial(
    addr: &Addr,
    acl: &Acl,
    limit: Duration,
    who: Asker<'_>,
    buffer: usize,
) -> Result<TcpStream, DialError> {
    let deadline = Instant::now() + limit;
    let all = resolve(addr, who, deadline).await?;
    let permitted: Vec<SocketAddr> = all
        .into_iter()
        .map(|sa| SocketAddr::new(canonical(sa.ip()), sa.port()))
        .filter(|sa| acl.permits(*sa))
        .collect();
    if permitted.is_empty() {
        return Err(DialError::Denied);
    }
    let attempt = async {
        let mut last = None;
        let n = permitted.len();
        for (i, sa) in permitted.into_iter().enumerate() {
            // One silent address must not use up the whole deadline: each
            // try gets its share of what is left (at least 2 s, or all).
            let left = deadline.saturating_duration_since(Instant::now());
            let share = (left / (n - i) as u32).max(left.min(Duration::from_secs(2)));
            let tried = if i + 1 == n {
                connect(sa, buffer).await
            } else {
                timeout(Instant::now() + share, connect(sa, buffer))
                    .await
                    .unwrap_or_else(|late| Err(late.into()))
            };
            match tried {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(DialError::Connect(
            last.unwrap_or_else(|| io::Error::other("no address")),
        ))
    };
    timeout(deadline, attempt)
        .await
        .unwrap_or(Err(DialError::Timeout))
}

/// Connects to `sa`, the leg's options ([`tune`], [`bound`]) set before the
/// SYN. A connect that is complete when connect(2) returns (on loopback it
/// is: the kernel runs the handshake before returning) is taken as it is,
/// without a round through the reactor for its writability.
async fn connect(sa: SocketAddr, buffer: usize) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    // Non-blocking from the start; socket2 adds SOCK_CLOEXEC.
    let s = Socket::new(
        Domain::for_address(sa),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    tune(&s, sa, Inherited::NONE);
    bound(&s, buffer);
    match s.connect(&sa.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    let done = s.peer_addr().is_ok();
    let s = Async::new_nonblocking(std::net::TcpStream::from(s))?;
    if !done {
        // Writable once connected or failed; SO_ERROR says which.
        s.writable().await?;
        if let Some(e) = s.get_ref().take_error()? {
            return Err(e);
        }
    }
    Ok(TcpStream::from(s))
}

/// What a listening socket passes on to the connections it accepts: Linux
/// copies TCP_NODELAY, the congestion control, SO_RCVBUF (and its lock)
/// and TCP_NOTSENT_LOWAT from the listener to each connection it creates,
/// so options set there once cost nothing per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inherited {
    pub nodelay: bool,
    /// Reno, set on a loopback listener of a host that paces (every peer
    /// of such a listener is on loopback).
    pub reno: bool,
    /// The [`bound`] in bytes; 0: none.
    pub buffer: usize,
}

impl Inherited {
    /// Nothing: every option is set on the connection itself.
    pub(crate) const NONE: Inherited = Inherited {
        nodelay: false,
        reno: false,
        buffer: 0,
    };
}

/// Sets on the listening socket `l`, bound to `addr`, what [`tune`] and
/// [`bound`] (to `buffer`) would set on each connection, so that its
/// connections inherit them; says what was set. Connections already
/// established when this runs (queued before a socket-activated daemon
/// started) inherit nothing: see `daemon::accept_each`.
pub(crate) fn tune_listener(l: &impl AsFd, addr: SocketAddr, buffer: usize) -> Inherited {
    let s = socket2::SockRef::from(l);
    Inherited {
        nodelay: s.set_tcp_nodelay(true).is_ok(),
        reno: canonical(addr.ip()).is_loopback()
            && default_paces()
            && s.set_tcp_congestion(b"reno").is_ok(),
        buffer: if bound(l, buffer) { buffer } else { 0 },
    }
}

/// Socket options for every leg, accepted or dialled, less what the leg
/// inherited from its listener: `TCP_NODELAY` (the tunnel forwards what
/// it is given at once) and, on a loopback leg of a host whose default
/// congestion control is BBR, reno. BBR paces every send with a timer,
/// which on loopback (nothing to congest) only costs: measured on a 2-core
/// VM, a loopback transfer with BBR took twice the CPU per byte of the same
/// transfer with reno, and three loopback legs in a row halved a tunnel's
/// throughput. Reno is built into every kernel and open to unprivileged
/// processes; a failure leaves the default in place.
pub(crate) fn tune(s: &impl AsFd, peer: SocketAddr, has: Inherited) {
    let s = socket2::SockRef::from(s);
    if !has.nodelay {
        let _ = s.set_tcp_nodelay(true);
    }
    if !has.reno && canonical(peer.ip()).is_loopback() && default_paces() {
        let _ = s.set_tcp_congestion(b"reno");
    }
}

/// Bounds what a leg may hold in kernel buffers to `bytes` per direction
/// (see `relay::Limits::buffer`): its receive buffer (SO_RCVBUF) and the
/// unsent bytes of its send buffer (TCP_NOTSENT_LOWAT). Nothing for 0.
/// Whether it was set.
pub(crate) fn bound(s: &impl AsFd, bytes: usize) -> bool {
    if bytes == 0 {
        return false;
    }
    let s = socket2::SockRef::from(s);
    // The kernel doubles SO_RCVBUF for its bookkeeping: ask for half.
    let rcv = s.set_recv_buffer_size(bytes / 2);
    let lowat = s.set_tcp_notsent_lowat((bytes / 4) as u32);
    rcv.is_ok() && lowat.is_ok()
}

/// Whether the host's default congestion control is BBR (read once).
fn default_paces() -> bool {
    static PACES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PACES.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .is_ok_and(|cc| cc.trim().starts_with("bbr"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_errors_map_to_one_reply_each() {
        let connect = |k: io::ErrorKind| DialError::Connect(k.into());
        for (e, want) in [
            (DialError::Denied, Reply::NotAllowed),
            (
                DialError::Resolve(io::ErrorKind::TimedOut.into()),
                Reply::HostUnreachable,
            ),
            (DialError::Timeout, Reply::TtlExpired),
            (
                connect(io::ErrorKind::ConnectionRefused),
                Reply::ConnectionRefused,
            ),
            (
                connect(io::ErrorKind::NetworkUnreachable),
                Reply::NetworkUnreachable,
            ),
            (
                connect(io::ErrorKind::HostUnreachable),
                Reply::HostUnreachable,
            ),
            (connect(io::ErrorKind::TimedOut), Reply::TtlExpired),
            (
                connect(io::ErrorKind::PermissionDenied),
                Reply::GeneralFailure,
            ),
        ] {
            assert_eq!(e.reply(), want, "{e:?}");
        }
    }

    #[test]
    fn names() {
        let d = |n: &str| classify(&Addr::Domain(n.as_bytes().to_vec(), 22));
        assert_eq!(d("10.1.2.3"), Name::Ip("10.1.2.3:22".parse().unwrap()));
        assert_eq!(d("[::1]"), Name::Ip("[::1]:22".parse().unwrap()));
        for n in ["167838211", "0x7f.1", "012.0.0.1", "10.1.2.3.", "0XA.0"] {
            assert_eq!(d(n), Name::Numeric, "{n}");
        }
        for n in ["example.com", "1.example", "0x.example", "a1", "1.2.3.4.5"] {
            assert_eq!(d(n), Name::Host, "{n}");
        }
    }

    /// Whether `f` completes on its first poll.
    fn ready<T>(f: impl Future<Output = T>) -> Option<T> {
        smol::block_on(futures_lite::future::poll_once(f))
    }

    #[test]
    fn slots_are_shared_fairly_and_released() {
        let slots = Slots::new(4, 2);
        let mallory = Asker::User("mallory");
        let m1 = ready(slots.take(mallory)).unwrap();
        let m2 = ready(slots.take(mallory)).unwrap();
        // Over her share: she waits, and her waiting takes nothing shared.
        assert!(ready(slots.take(mallory)).is_none());
        let a1 = ready(slots.take(Asker::User("alice"))).unwrap();
        // The agent is an asker of its own, whatever the users are called.
        let _u = ready(slots.take(Asker::User("agent"))).unwrap();
        // The process's cap is reached: everyone waits.
        assert!(ready(slots.take(Asker::Agent)).is_none());
        drop(a1);
        let g = ready(slots.take(Asker::Agent)).unwrap();
        drop((m1, m2, g));
        assert!(ready(slots.take(mallory)).is_some());
    }

    #[test]
    fn askers_leave_the_table_with_their_last_lookup() {
        let slots = Slots::new(2, 1);
        let held = ready(slots.take(Asker::User("m"))).unwrap();
        // A waiter that gives up (its deadline passed) ...
        assert!(ready(slots.take(Asker::User("m"))).is_none());
        // ... and one waiting for the process's last slot.
        let _a = ready(slots.take(Asker::User("a"))).unwrap();
        assert!(ready(slots.take(Asker::User("b"))).is_none());
        drop(held);
        assert_eq!(slots.askers.lock().unwrap().len(), 1, "only a is left");
        drop(_a);
        assert!(slots.askers.lock().unwrap().is_empty());
    }

    #[test]
    fn ip_literals_take_no_slot() {
        let far = Instant::now() + Duration::from_secs(5);
        let name = Addr::Domain(b"[::1]".to_vec(), 22);
        let all = smol::block_on(resolve(&name, Asker::Agent, far)).unwrap();
        assert_eq!(all, ["[::1]:22".parse().unwrap()]);
        assert!(LOOKUPS.askers.lock().unwrap().is_empty());
    }
}
