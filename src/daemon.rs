//! Process glue: listeners (from systemd by name, or bound), accept loops
//! on a small smol executor, connection limits, readiness and status
//! notification, SIGHUP reload (all or nothing), SIGTERM/SIGINT drain.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use async_net::TcpStream;
use async_signal::{Signal, Signals};
use futures_lite::{FutureExt, StreamExt};
use smol::{Executor, Task};

use crate::admission::{Handshakes, Handshaking, Slots};
use crate::config::agent::Agent;
use crate::config::{self, Config};
use crate::dial::{self, Inherited};
use crate::log::NOTICE;
use crate::shutdown::{Shutdown, Stage};
use crate::systemd::{self, Activated};
use crate::{agent, exporter, metrics, server};

/// Why the daemon could not start; each maps to one exit code in `cli`.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The configuration or the systemd units do not fit (EX_CONFIG).
    Config(String),
    /// The OS refused, e.g. an address could not be bound (EX_OSERR).
    Os(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(m) => f.write_str(m),
            StartError::Os(e) => write!(f, "{e}"),
        }
    }
}

/// The configuration in force for each section this process serves (which
/// ones is fixed at start); a reload swaps whole snapshots, and each
/// connection keeps the snapshot it started with.
struct Live {
    server: Option<Arc<server::Current>>,
    agent: Option<Arc<AgentLive>>,
    /// `shutdown_grace` in milliseconds, reloadable.
    grace_ms: std::sync::atomic::AtomicU64,
    /// Executor threads started; a restart applies a new count.
    threads: usize,
    /// The metrics endpoint's settings (its users and `per_user` reload;
    /// its listeners do not), when it serves.
    metrics: RwLock<Option<Arc<config::metrics::Metrics>>>,
}

impl Live {
    /// What a listener for `role` serves: `listeners` makes sockets only
    /// for the sections in the file, and so in `Live`.
    fn service(self: &Arc<Self>, role: Role) -> Option<Service> {
        match role {
            Role::Server => self.server.clone().map(Service::Server),
            Role::Agent(kind) => self.agent.clone().map(|a| Service::Agent(kind, a)),
            Role::Metrics => Some(Service::Metrics(self.clone())),
        }
    }

    /// Whether per-user series are asked for.
    fn per_user(&self) -> bool {
        self.metrics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|m| m.per_user)
    }

    /// Starts each configured user's series at zero (`metrics.per_user`),
    /// so a rate over them works from the first use.
    fn register_users(&self) {
        if let Some(s) = &self.server {
            for name in s.get().users.names() {
                let _ = metrics::user(name);
            }
        }
    }

    /// What the figures need from the running daemon, now.
    fn view(&self) -> metrics::View {
        metrics::View {
            users: self.server.as_ref().map(|s| s.get().users.len()),
            agent: self.agent.as_ref().map(|a| {
                a.get()
                    .upstreams
                    .all
                    .iter()
                    .map(|u| metrics::ServerView {
                        name: u.server.name.clone(),
                        healthy: u.is_healthy(),
                        ready: u.ready(),
                        stats: u.stats.clone(),
                    })
                    .collect()
            }),
        }
    }
}

/// The agent's state in force; a reload swaps it whole.
struct AgentLive(RwLock<Arc<agent::State>>);

impl AgentLive {
    fn get(&self) -> Arc<agent::State> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `st` in force and retires the old state's pools.
    fn set(&self, st: Arc<agent::State>) {
        let old = std::mem::replace(&mut *self.0.write().unwrap_or_else(|e| e.into_inner()), st);
        old.upstreams.retire();
    }
}

/// What a listener is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Agent(agent::Kind),
    Metrics,
}

/// What a listener serves, with the configuration its connections read.
enum Service {
    Server(Arc<server::Current>),
    Agent(agent::Kind, Arc<AgentLive>),
    Metrics(Arc<Live>),
}

impl Service {
    /// What a new connection starts with: the server reads its
    /// configuration as each stage needs it; an agent connection keeps the
    /// snapshot in force now to its end.
    fn session(&self) -> Session {
        match self {
            Service::Server(cur) => Session::Server(cur.clone()),
            Service::Agent(kind, a) => Session::Agent(*kind, a.get()),
            Service::Metrics(live) => Session::Metrics(live.clone()),
        }
    }
}

/// One accepted connection's service and configuration.
enum Session {
    Server(Arc<server::Current>),
    Agent(agent::Kind, Arc<agent::State>),
    Metrics(Arc<Live>),
}

impl Session {
    /// `max_connections`, and for the server its handshake budget (in
    /// total, per source).
    fn limits(&self) -> (usize, Option<(usize, usize)>) {
        match self {
            Session::Server(cur) => {
                let s = cur.get();
                (
                    s.max_connections,
                    Some((s.max_handshakes, s.max_handshakes_per_source)),
                )
            }
            Session::Agent(_, st) => (st.cfg.max_connections, None),
            Session::Metrics(_) => (METRICS_CONNECTIONS, None),
        }
    }

    /// Counts an accepted connection in the metrics, and one closed at
    /// once for a limit (`refused`).
    fn count(&self, refused: bool) {
        match self {
            Session::Server(_) => {
                metrics::SERVER.accepted.inc();
                if refused {
                    metrics::SERVER.ended.at("rejected").inc();
                    metrics::SERVER.rejected.at("limit").inc();
                }
            }
            Session::Agent(kind, _) => {
                metrics::AGENT
                    .accepted
                    .at(socket_name(Role::Agent(*kind)))
                    .inc();
                if refused {
                    metrics::AGENT.ended.at("rejected").inc();
                }
            }
            Session::Metrics(_) => {}
        }
    }

    async fn serve(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        has: Inherited,
        admitted: Handshaking,
        stop: Shutdown,
    ) {
        match self {
            Session::Server(cur) => server::serve(stream, peer, has, cur, admitted, stop).await,
            Session::Agent(kind, st) => agent::serve(stream, peer, has, kind, st, stop).await,
            Session::Metrics(live) => {
                let cfg = live
                    .metrics
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(cfg) = cfg {
                    exporter::serve(stream, peer, &cfg, || live.view(), &stop).await;
                }
            }
        }
    }
}

/// Scrapes served at once; more are closed at accept.
const METRICS_CONNECTIONS: usize = 16;

/// Accept errors that mean "out of a resource for now" rather than "this
/// one connection failed": back off instead of spinning.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            23 /* ENFILE */ | 24 /* EMFILE */ | 12 /* ENOMEM */ | 105 /* ENOBUFS */
        )
    )
}

/// A peer as the logs show it: an IPv4 client of a dual-stack `[::]`
/// listener arrives as `::ffff:a.b.c.d` (RFC 4291 section 2.5.5.2) and is
/// written `a.b.c.d`, as it would be through an IPv4 listener.
fn unmapped(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

/// Accepts on `listener` until `stop` reaches [`Stage::Closed`], one task
/// per connection, each handed `stop`. The peer is handed on unmapped (see
/// [`unmapped`]) to every log line. `from` is what the listener passes on
/// to its connections, and whether systemd passed it.
async fn accept_loop(
    ex: Arc<Executor<'static>>,
    listener: Async<std::net::TcpListener>,
    from: (Inherited, bool),
    service: Service,
    slots: Arc<Slots>,
    handshakes: Arc<Handshakes>,
    stop: Shutdown,
) {
    stop.until(Stage::Closed)
        .or(accept_each(
            ex, listener, from, service, slots, handshakes, &stop,
        ))
        .await;
}

/// The next connection on `l`, non-blocking from accept4(2) on (no
/// fcntl after it). `empty` is set once the listener's queue was found
/// empty.
async fn accept(
    l: &Async<std::net::TcpListener>,
    empty: &mut bool,
) -> io::Result<(TcpStream, SocketAddr)> {
    use rustix::net::{SocketFlags, acceptfrom_with};
    loop {
        match acceptfrom_with(l.get_ref(), SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok((fd, addr)) => {
                let peer = addr
                    .and_then(|a| SocketAddr::try_from(a).ok())
                    .ok_or_else(|| io::Error::other("accepted a peer without an IP address"))?;
                let s = Async::new_nonblocking(std::net::TcpStream::from(fd))?;
                return Ok((TcpStream::from(s), peer));
            }
            Err(rustix::io::Errno::AGAIN) => {
                *empty = true;
                l.readable().await?;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// [`accept_loop`]'s loop.
async fn accept_each(
    ex: Arc<Executor<'static>>,
    listener: Async<std::net::TcpListener>,
    (has, from_systemd): (Inherited, bool),
    service: Service,
    slots: Arc<Slots>,
    handshakes: Arc<Handshakes>,
    stop: &Shutdown,
) {
    // Connections a socket-activated daemon finds queued were made before
    // it set the listener's options, and inherited none. The queue is
    // first come, first served: once it has been found empty, every later
    // connection was made after.
    let mut empty = !from_systemd;
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    // Refusals are logged at most once a second, with how many since.
    let mut refused = 0usize;
    let mut refuse = |why: String, peer: SocketAddr| {
        refused += 1;
        if refused_logged.elapsed() >= Duration::from_secs(1) {
            log::warn!(
                "{why}: closing new connection from {peer} ({refused} refused since the last such line)"
            );
            refused_logged = Instant::now();
            refused = 0;
        }
    };
    // Checked before each accept too: a flood of connections, each ready
    // at once, must not keep the listener open past the stop.
    while !stop.reached(Stage::Closed) {
        let (stream, peer) = match accept(&listener, &mut empty).await {
            Ok((s, peer)) => (s, unmapped(peer)),
            Err(e) => {
                if is_resource_error(&e) {
                    log::warn!("accept: {e}; pausing 100 ms");
                    Timer::after(Duration::from_millis(100)).await;
                } else {
                    log::debug!("accept: {e}");
                }
                continue;
            }
        };
        let session = service.session();
        let (max, budget) = session.limits();
        // Over a limit: close at once.
        let admitted = match budget {
            None => Handshaking::none(),
            Some((max, per_source)) => match handshakes.take(peer.ip(), max, per_source) {
                Ok(h) => h,
                Err(full) => {
                    session.count(true);
                    refuse(full.to_string(), peer);
                    continue;
                }
            },
        };
        let Some(slot) = slots.take(max) else {
            session.count(true);
            refuse(format!("max_connections ({max}) reached"), peer);
            continue;
        };
        session.count(false);
        let stop = stop.clone();
        let has = if empty { has } else { Inherited::NONE };
        ex.spawn(async move {
            let _slot = slot;
            session.serve(stream, peer, has, admitted, stop).await
        })
        .detach();
    }
}

/// One listening socket, what it serves, and what its connections
/// inherit from it.
struct Listener {
    role: Role,
    socket: std::net::TcpListener,
    from_systemd: bool,
    has: Inherited,
}

/// The systemd socket name for each role (`FileDescriptorName=`).
fn socket_name(role: Role) -> &'static str {
    match role {
        Role::Server => "websocks",
        Role::Agent(agent::Kind::Socks5) => "socks5",
        Role::Agent(agent::Kind::Http) => "http",
        Role::Agent(agent::Kind::Mixed) => "mixed",
        Role::Metrics => "metrics",
    }
}

/// Takes each role's sockets from systemd by name, or binds its configured
/// addresses.
fn listeners(cfg: &Config, act: &mut Activated) -> Result<Vec<Listener>, StartError> {
    let mut wanted: Vec<(Role, Vec<SocketAddr>)> = Vec::new();
    if let Some(s) = &cfg.server {
        wanted.push((Role::Server, s.listen.clone()));
    }
    if let Some(a) = &cfg.agent {
        wanted.push((Role::Agent(agent::Kind::Socks5), a.socks5.clone()));
        wanted.push((Role::Agent(agent::Kind::Http), a.http.clone()));
        wanted.push((Role::Agent(agent::Kind::Mixed), a.mixed.clone()));
    }
    if let Some(m) = &cfg.metrics {
        wanted.push((Role::Metrics, m.listen.clone()));
    }
    let mut out = Vec::new();
    for (role, addrs) in wanted {
        // Connections of a tunnel's legs get their socket options from
        // their listener (see `dial::Inherited`); metrics scrapes none.
        let tune = match role {
            Role::Server => cfg.server.as_ref().map(|s| s.tunnel_buffer),
            Role::Agent(_) => Some(0),
            Role::Metrics => None,
        };
        let inherit = |socket: &std::os::fd::BorrowedFd<'_>, addr| match tune {
            Some(buffer) => dial::tune_listener(socket, addr, buffer),
            None => Inherited::NONE,
        };
        let passed = act.take(socket_name(role));
        if !passed.is_empty() {
            let got: Vec<SocketAddr> = passed.iter().filter_map(|s| s.local_addr().ok()).collect();
            if let Some(line) = listen_mismatch(role, &got, &addrs) {
                log::info!(target: NOTICE, "{line}");
            }
            for socket in passed {
                let has = match socket.local_addr() {
                    Ok(addr) => inherit(&socket.as_fd(), addr),
                    Err(_) => Inherited::NONE,
                };
                out.push(Listener {
                    role,
                    socket,
                    from_systemd: true,
                    has,
                });
            }
            continue;
        }
        for a in addrs {
            let (socket, has) = bind(a, inherit).map_err(|e| {
                StartError::Os(io::Error::new(
                    e.kind(),
                    format!("cannot listen on {a}: {e}"),
                ))
            })?;
            out.push(Listener {
                role,
                socket,
                from_systemd: false,
                has,
            });
        }
    }
    if !act.is_empty() {
        return Err(StartError::Config(format!(
            "systemd passed sockets named {:?} that no configured section uses; name them \
             (FileDescriptorName=) websocks for the server, socks5, http or mixed for the agent, \
             metrics for the metrics endpoint",
            act.leftover()
        )));
    }
    // Whether it came from the config or from systemd.
    let bound = out
        .iter()
        .filter_map(|l| Some((l.role, l.socket.local_addr().ok()?)));
    if let Some(addr) = open_agent(cfg.agent.as_ref(), bound) {
        return Err(StartError::Config(format!(
            "agent listener {addr} is reachable beyond loopback: add `agent.users`"
        )));
    }
    // systemd's metrics sockets beyond loopback need the same consent as
    // configured ones.
    if let Some(m) = &cfg.metrics
        && m.users.is_none()
        && !m.allow_remote
    {
        let got: Vec<SocketAddr> = out
            .iter()
            .filter(|l| l.role == Role::Metrics)
            .filter_map(|l| l.socket.local_addr().ok())
            .collect();
        if let Some(addr) = config::metrics::remote(&got) {
            return Err(StartError::Config(format!(
                "metrics listener {addr} is reachable beyond loopback: add `metrics.users` or \
                 `metrics.allow_remote: true`"
            )));
        }
    }
    Ok(out)
}

/// Binds `addr` the way a daemon should: SO_REUSEADDR, IPv6 sockets
/// dual-stack unless the address is a specific one, non-blocking; `inherit`
/// sets what its connections inherit, before any can be made.
fn bind(
    addr: SocketAddr,
    inherit: impl Fn(&std::os::fd::BorrowedFd<'_>, SocketAddr) -> Inherited,
) -> io::Result<(std::net::TcpListener, Inherited)> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too; a specific IPv6 address only itself.
        sock.set_only_v6(!addr.ip().is_unspecified())?;
    }
    sock.bind(&addr.into())?;
    let has = inherit(&sock.as_fd(), addr);
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok((sock.into(), has))
}

/// When systemd's sockets for `role` are not the addresses its `listen`
/// names, the line that says so (systemd's sockets are used; the
/// configured addresses are not bound).
fn listen_mismatch(role: Role, got: &[SocketAddr], configured: &[SocketAddr]) -> Option<String> {
    let mut a = got.to_vec();
    let mut b = configured.to_vec();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    if a == b {
        return None;
    }
    let key = match role {
        Role::Server => "server.listen",
        Role::Agent(agent::Kind::Socks5) => "agent.socks5.listen",
        Role::Agent(agent::Kind::Http) => "agent.http.listen",
        Role::Agent(agent::Kind::Mixed) => "agent.mixed.listen",
        Role::Metrics => "metrics.listen",
    };
    let list = |v: &[SocketAddr]| {
        if v.is_empty() {
            "nothing".to_string()
        } else {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    Some(format!(
        "systemd passed sockets on {} while {key} says {}: the sockets from systemd are used and {key} is not bound",
        list(&a),
        list(&b)
    ))
}

/// An agent listener reachable beyond loopback while the agent has no
/// local users: that would be a proxy open to the network.
fn open_agent(
    agent: Option<&Agent>,
    bound: impl IntoIterator<Item = (Role, SocketAddr)>,
) -> Option<SocketAddr> {
    if agent?.users.is_some() {
        return None;
    }
    bound
        .into_iter()
        .find(|(role, a)| {
            matches!(role, Role::Agent(_)) && !crate::acl::canonical(a.ip()).is_loopback()
        })
        .map(|(_, a)| a)
}

/// A one-line status for STATUS= and logs.
fn status_line(live: &Live, slots: &[Arc<Slots>]) -> String {
    let conns: usize = slots.iter().map(|s| s.live()).sum();
    let mut parts = vec![format!("{conns} connections")];
    if let Some(s) = &live.server {
        parts.push(format!("{} users", s.get().users.len()));
    }
    if let Some(a) = &live.agent {
        let (up, all) = a.get().upstreams.health();
        parts.push(format!("{up}/{all} servers healthy"));
    }
    parts.join(", ")
}

/// Re-reads the file; applies all of it or nothing.
fn reload(
    path: &std::path::Path,
    live: &Live,
    ex: &Executor<'static>,
    bound: &[(Role, SocketAddr, bool)],
) -> Result<String, String> {
    let mut new = config::load(path).map_err(|e| e.to_string())?;
    let mut changes = Vec::new();
    // Only the sections this process serves (`server`, `agent` or `run`),
    // and each of them.
    if live.server.is_none() {
        new.server = None;
    }
    if live.agent.is_none() {
        new.agent = None;
    }
    let threads = new.thread_count();
    let gone = "a section this process serves is gone from the file: restart to apply";
    let server = match (&live.server, new.server) {
        (Some(cur), Some(s)) => Some((cur, s)),
        (Some(_), None) => return Err(gone.into()),
        (None, _) => None,
    };
    let agent = match (&live.agent, new.agent) {
        (Some(cur), Some(a)) => Some((cur, a)),
        (Some(_), None) => return Err(gone.into()),
        (None, _) => None,
    };
    // Listeners stay as bound until a restart, so the rule is checked
    // against them, not the file.
    let open = open_agent(
        agent.as_ref().map(|a| &a.1),
        bound.iter().map(|b| (b.0, b.1)),
    );
    if let Some(addr) = open {
        return Err(format!(
            "agent listener {addr} is reachable beyond loopback: the file must keep agent.users"
        ));
    }
    // Applied at once: level and grace. Where logs go, and listeners, are
    // kept until a restart.
    crate::log::set_level(new.log_level);
    if threads != live.threads {
        log::warn!("reload: threads changes take effect at the next restart");
    }
    live.grace_ms
        .store(new.shutdown_grace.as_millis() as u64, Ordering::Relaxed);
    if let Some((cur, s)) = server {
        if cur.get().listen != s.listen && bound.iter().any(|b| b.0 == Role::Server && !b.2) {
            log::warn!("reload: server.listen changes take effect at the next restart");
        }
        changes.push(format!("{} users", s.users.len()));
        cur.set(s);
    }
    if let Some((cur, a)) = agent {
        let old = cur.get();
        if old.cfg.socks5 != a.socks5 || old.cfg.http != a.http || old.cfg.mixed != a.mixed {
            log::warn!("reload: agent listener changes take effect at the next restart");
        }
        let st = agent::State::start(a, ex);
        changes.push(format!(
            "{} servers, {} rules",
            st.cfg.servers.len(),
            st.cfg.routes.len()
        ));
        cur.set(st);
    }
    reload_metrics(live, new.metrics, bound);
    live.register_users();
    Ok(changes.join(", "))
}

/// Applies a reloaded `metrics:` section: its users and `per_user`; a
/// section added, removed or listening elsewhere waits for a restart.
fn reload_metrics(
    live: &Live,
    new: Option<config::metrics::Metrics>,
    bound: &[(Role, SocketAddr, bool)],
) {
    let serving = bound.iter().any(|b| b.0 == Role::Metrics);
    let mut cur = live.metrics.write().unwrap_or_else(|e| e.into_inner());
    match (cur.as_ref(), new) {
        (None, None) => {}
        (Some(_), None) => log::warn!(
            "reload: metrics section removed: the endpoint keeps serving until the next restart"
        ),
        (None, Some(_)) => {
            log::warn!("reload: metrics section added: the endpoint starts at the next restart");
        }
        (Some(old), Some(m)) => {
            if old.listen != m.listen && bound.iter().any(|b| b.0 == Role::Metrics && !b.2) {
                log::warn!("reload: metrics.listen changes take effect at the next restart");
            }
            if serving {
                metrics::set_per_user(m.per_user);
                *cur = Some(Arc::new(m));
            }
        }
    }
}

/// Raises the soft descriptor limit to the hard one: each tunnel holds two
/// sockets per process (more while splicing), and the default soft limit
/// (often 1024) would cap a daemon at a few hundred tunnels.
fn raise_nofile(cfg: &Config) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let r = getrlimit(Resource::Nofile);
    let target = r.maximum.unwrap_or(1 << 20);
    if r.current.is_some_and(|c| c < target) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: r.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let want = cfg.server.as_ref().map_or(0, |s| s.max_connections) as u64 * 2
        + cfg.agent.as_ref().map_or(0, |a| a.max_connections) as u64 * 2
        + 64;
    if now < want {
        log::warn!(
            "descriptor limit {now} is below what max_connections may need ({want}); raise LimitNOFILE"
        );
    } else {
        log::debug!("descriptor limit {now}");
    }
}

/// A started daemon: what it serves, and what its drain needs.
struct Running {
    ex: Arc<Executor<'static>>,
    path: PathBuf,
    live: Arc<Live>,
    /// The server's and the agent's connections: each side counts its own
    /// against its own limit.
    slots: [Arc<Slots>; 2],
    /// Each listener's role, address, and whether systemd passed it.
    bound: Vec<(Role, SocketAddr, bool)>,
    stop: Shutdown,
    loops: Vec<Task<()>>,
    /// Keeps STATUS= current.
    status: Task<()>,
    /// Feeds the watchdog, when systemd asked for it.
    watchdog: Option<Task<()>>,
    /// `shutdown_grace` as the file said at start, for the stopping line.
    grace_at_start: Duration,
}

/// Runs the loaded sections until SIGTERM or SIGINT, then drains.
pub(crate) fn run(cfg: Config, mut act: Activated) -> Result<(), StartError> {
    raise_nofile(&cfg);
    let ls = listeners(&cfg, &mut act)?;
    let mut signals =
        Signals::new([Signal::Hup, Signal::Term, Signal::Int]).map_err(StartError::Os)?;
    let ex = Arc::new(Executor::new());
    let threads = cfg.thread_count();
    for i in 1..threads {
        let ex = ex.clone();
        std::thread::Builder::new()
            .name(format!("websocks-{i}"))
            .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))
            .map_err(StartError::Os)?;
    }
    // A task of its own, not the future `block_on` polls: that one is
    // polled again at every wake-up of this thread, and would ask the
    // signal socket each time (a recvfrom per wake-up, EAGAIN).
    let main = ex.spawn({
        let ex = ex.clone();
        async move {
            let d = start(cfg, ls, &ex, threads)?;
            serve_until_signal(&d, &mut signals).await;
            drain(d, &mut signals).await;
            Ok(())
        }
    });
    smol::block_on(ex.run(main))
}

/// Puts each section's configuration in force, spawns an accept loop per
/// listener, and tells systemd the daemon is ready.
fn start(
    cfg: Config,
    ls: Vec<Listener>,
    ex: &Arc<Executor<'static>>,
    threads: usize,
) -> Result<Running, StartError> {
    let live = Arc::new(Live {
        server: cfg.server.map(server::Current::new),
        agent: cfg
            .agent
            .map(|a| Arc::new(AgentLive(RwLock::new(agent::State::start(a, ex))))),
        grace_ms: (cfg.shutdown_grace.as_millis() as u64).into(),
        threads,
        metrics: RwLock::new(cfg.metrics.map(Arc::new)),
    });
    metrics::started();
    metrics::set_per_user(live.per_user());
    live.register_users();
    let slots = [Arc::new(Slots::new()), Arc::new(Slots::new())];
    // Scrapes are not connections the drain waits for.
    let scrapes = Arc::new(Slots::new());
    let handshakes = Arc::new(Handshakes::new());
    let stop = Shutdown::new();
    let mut loops = Vec::new();
    let mut bound = Vec::new();
    for l in ls {
        let addr = l.socket.local_addr().map_err(StartError::Os)?;
        let what = match l.role {
            Role::Server => "server",
            Role::Agent(agent::Kind::Socks5) => "agent socks5",
            Role::Agent(agent::Kind::Http) => "agent http",
            Role::Agent(agent::Kind::Mixed) => "agent mixed",
            Role::Metrics => "metrics",
        };
        let how = if l.from_systemd {
            " (socket from systemd)"
        } else {
            ""
        };
        log::info!("{what} listening on {addr}{how}");
        bound.push((l.role, addr, l.from_systemd));
        let slots = match l.role {
            Role::Server => &slots[0],
            Role::Agent(_) => &slots[1],
            Role::Metrics => &scrapes,
        };
        let Some(service) = live.service(l.role) else {
            continue;
        };
        let from = (l.has, l.from_systemd);
        let listener = Async::new(l.socket).map_err(StartError::Os)?;
        loops.push(ex.spawn(accept_loop(
            ex.clone(),
            listener,
            from,
            service,
            slots.clone(),
            handshakes.clone(),
            stop.clone(),
        )));
    }
    let first = status_line(&live, &slots);
    systemd::ready(&first);
    let status = ex.spawn(keep_status(first, live.clone(), slots.clone()));
    let watchdog = systemd::watchdog_interval().map(|every| ex.spawn(feed_watchdog(every)));
    Ok(Running {
        ex: ex.clone(),
        path: cfg.path,
        live,
        slots,
        bound,
        stop,
        loops,
        status,
        watchdog,
        grace_at_start: cfg.shutdown_grace,
    })
}

/// Keeps STATUS= current, starting from the line sent with READY=1.
async fn keep_status(first: String, live: Arc<Live>, slots: [Arc<Slots>; 2]) {
    let mut last = first;
    loop {
        Timer::after(Duration::from_secs(2)).await;
        let now = status_line(&live, &slots);
        if now != last {
            systemd::status(&now);
            last = now;
        }
    }
}

/// Sends WATCHDOG=1 once every `every`.
async fn feed_watchdog(every: Duration) {
    loop {
        systemd::watchdog();
        Timer::after(every).await;
    }
}

/// Serves, reloading on each SIGHUP, until SIGTERM or SIGINT.
async fn serve_until_signal(d: &Running, signals: &mut Signals) {
    while let Some(sig) = signals.next().await {
        match sig {
            Ok(Signal::Hup) => {
                systemd::reloading();
                let r = reload(&d.path, &d.live, &d.ex, &d.bound);
                metrics::reloaded(r.is_ok());
                match r {
                    Ok(what) => {
                        log::info!("reloaded {}: {what}", d.path.display());
                        systemd::ready(&status_line(&d.live, &d.slots));
                    }
                    Err(e) => {
                        log::error!("reload failed, keeping the running configuration: {e}");
                        systemd::ready(&format!(
                            "reload failed, running the old configuration: {e}"
                        ));
                    }
                }
            }
            Ok(_) => return,
            Err(e) => log::warn!("signal: {e}"),
        }
    }
}

/// Stops accepting, closes connections that carry no tunnel yet, lets live
/// tunnels finish for the grace period (or until a second stop signal),
/// then cuts what is left.
async fn drain(d: Running, signals: &mut Signals) {
    let Running {
        live,
        slots,
        stop,
        loops,
        status,
        watchdog: _watchdog,
        grace_at_start,
        ..
    } = d;
    stop.enter(Stage::Closed);
    for l in loops {
        l.await;
    }
    // Counted before they go: connections that wait for their frame
    // close at once and are not part of the drain.
    let open = || slots.iter().map(|s| s.live()).sum::<usize>();
    let draining = open().saturating_sub(stop.waiting_for_frame());
    stop.enter(Stage::Draining);
    drop(status);
    log::info!(
        "stopping: no longer accepting; draining {draining} connections for up to {grace_at_start:?}"
    );
    systemd::stopping(&format!("stopping: draining {draining} connections"));
    let grace = Duration::from_millis(live.grace_ms.load(Ordering::Relaxed));
    let deadline = Instant::now() + grace;
    let drained = async {
        while open() > 0 && Instant::now() < deadline {
            Timer::after(Duration::from_millis(50)).await;
        }
    };
    // A second SIGTERM or SIGINT ends the wait at once.
    let again = async {
        loop {
            if let Some(Ok(Signal::Term | Signal::Int)) = signals.next().await {
                log::warn!("second stop signal: not waiting any longer");
                return;
            }
        }
    };
    drained.or(again).await;
    match open() {
        0 => log::info!("stopped"),
        n => {
            // Tunnels still open are cut with a reset on both sides (a
            // FIN would pass a truncated transfer off as complete),
            // each logging its line; give them a moment to do so.
            log::warn!("shutdown grace over: cutting {n} connections still open");
            stop.enter(Stage::Cut);
            let until = Instant::now() + Duration::from_secs(1);
            while open() > 0 && Instant::now() < until {
                Timer::after(Duration::from_millis(10)).await;
            }
            log::warn!("stopped after {grace:?}; cut {n} connections");
        }
    }
}
