//! Process glue: listeners (from systemd by name, or bound), accept loops
//! on a small smol executor, connection limits, readiness and status
//! notification, SIGHUP reload (all or nothing), SIGTERM/SIGINT drain.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpListener;
use async_signal::{Signal, Signals};
use futures_lite::{FutureExt, StreamExt};
use smol::Executor;

use crate::admission::{Handshakes, Handshaking, Slots};
use crate::config::agent::Agent;
use crate::config::{self, Config, Server};
use crate::log::NOTICE;
use crate::systemd::{self, Activated};
use crate::{agent, server};

/// Why the daemon could not start; each maps to one exit code in `cli`.
#[derive(Debug)]
pub enum StartError {
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

/// The configuration in force; a reload swaps whole snapshots, and each
/// connection keeps the snapshot it started with.
pub struct Live {
    /// The server's configuration; its presence is fixed at start.
    server: Option<Arc<server::Current>>,
    agent: RwLock<Option<Arc<agent::State>>>,
    /// `shutdown_grace` in milliseconds, reloadable.
    grace_ms: std::sync::atomic::AtomicU64,
    /// Executor threads started; a restart applies a new count.
    threads: usize,
}

impl Live {
    fn server(&self) -> Option<Arc<Server>> {
        self.server.as_ref().map(|c| c.get())
    }

    fn agent(&self) -> Option<Arc<agent::State>> {
        self.agent.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Agent(agent::Kind),
}

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

/// Accepts on `listener` until cancelled, one task per connection. The
/// peer is handed on unmapped (see [`unmapped`]) to every log line.
async fn accept_loop(
    ex: Arc<Executor<'static>>,
    listener: TcpListener,
    role: Role,
    live: Arc<Live>,
    slots: Arc<Slots>,
    handshakes: Arc<Handshakes>,
) {
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
    loop {
        let (stream, peer) = match listener.accept().await {
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
        // The server reads its configuration as each stage needs it; an
        // agent connection keeps the snapshot in force now to its end.
        let (server, agent) = match role {
            Role::Server => (live.server.clone(), None),
            Role::Agent(_) => (None, live.agent()),
        };
        let (max, budget) = match (&server, &agent) {
            (Some(s), _) => {
                let s = s.get();
                (
                    s.max_connections,
                    Some((s.max_handshakes, s.max_handshakes_per_source)),
                )
            }
            (_, Some(a)) => (a.cfg.max_connections, None),
            _ => continue,
        };
        // Over a limit: close at once.
        let admitted = match budget {
            None => Handshaking::none(),
            Some((max, per_source)) => match handshakes.take(peer.ip(), max, per_source) {
                Ok(h) => h,
                Err(full) => {
                    refuse(full.to_string(), peer);
                    continue;
                }
            },
        };
        let Some(slot) = slots.take(max) else {
            refuse(format!("max_connections ({max}) reached"), peer);
            continue;
        };
        ex.spawn(async move {
            let _slot = slot;
            match (role, server, agent) {
                (Role::Server, Some(cur), _) => server::serve(stream, peer, cur, admitted).await,
                (Role::Agent(kind), _, Some(st)) => agent::serve(stream, peer, kind, st).await,
                _ => {}
            }
        })
        .detach();
    }
}

/// One listening socket and what it serves.
struct Listener {
    role: Role,
    socket: std::net::TcpListener,
    from_systemd: bool,
}

/// The systemd socket name for each role (`FileDescriptorName=`).
fn socket_name(role: Role) -> &'static str {
    match role {
        Role::Server => "websocks",
        Role::Agent(agent::Kind::Socks5) => "socks5",
        Role::Agent(agent::Kind::Http) => "http",
        Role::Agent(agent::Kind::Mixed) => "mixed",
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
    let mut out = Vec::new();
    for (role, addrs) in wanted {
        let passed = act.take(socket_name(role));
        if !passed.is_empty() {
            let got: Vec<SocketAddr> = passed.iter().filter_map(|s| s.local_addr().ok()).collect();
            if let Some(line) = listen_mismatch(role, &got, &addrs) {
                log::info!(target: NOTICE, "{line}");
            }
            out.extend(passed.into_iter().map(|socket| Listener {
                role,
                socket,
                from_systemd: true,
            }));
            continue;
        }
        for a in addrs {
            let socket = systemd::bind(a).map_err(|e| {
                StartError::Os(io::Error::new(
                    e.kind(),
                    format!("cannot listen on {a}: {e}"),
                ))
            })?;
            out.push(Listener {
                role,
                socket,
                from_systemd: false,
            });
        }
    }
    if !act.is_empty() {
        return Err(StartError::Config(format!(
            "systemd passed sockets named {:?} that no configured section uses; name them \
             (FileDescriptorName=) websocks for the server, socks5, http or mixed for the agent",
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
    Ok(out)
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
    if let Some(s) = live.server() {
        parts.push(format!("{} users", s.users.len()));
    }
    if let Some(a) = live.agent() {
        let (up, all) = a.upstreams.health();
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
    // Only the sections this process serves (`server`, `agent` or `run`).
    let had_server = live.server().is_some();
    let had_agent = live.agent().is_some();
    if !had_server {
        new.server = None;
    }
    if !had_agent {
        new.agent = None;
    }
    if had_server != new.server.is_some() || had_agent != new.agent.is_some() {
        return Err("a section this process serves is gone from the file: restart to apply".into());
    }
    // Listeners stay as bound until a restart, so the rule is checked
    // against them, not the file.
    if let Some(addr) = open_agent(new.agent.as_ref(), bound.iter().map(|b| (b.0, b.1))) {
        return Err(format!(
            "agent listener {addr} is reachable beyond loopback: the file must keep agent.users"
        ));
    }
    // Applied at once: level and grace. Where logs go, and listeners, are
    // kept until a restart.
    crate::log::set_level(new.log_level);
    if new.thread_count() != live.threads {
        log::warn!("reload: threads changes take effect at the next restart");
    }
    live.grace_ms
        .store(new.shutdown_grace.as_millis() as u64, Ordering::Relaxed);
    if let Some(s) = new.server {
        let old = live.server().map(|o| o.listen.clone()).unwrap_or_default();
        if old != s.listen && bound.iter().any(|b| b.0 == Role::Server && !b.2) {
            log::warn!("reload: server.listen changes take effect at the next restart");
        }
        changes.push(format!("{} users", s.users.len()));
        if let Some(cur) = &live.server {
            cur.set(s);
        }
    }
    if let Some(a) = new.agent {
        if let Some(old) = live.agent()
            && (old.cfg.socks5 != a.socks5 || old.cfg.http != a.http || old.cfg.mixed != a.mixed)
        {
            log::warn!("reload: agent listener changes take effect at the next restart");
        }
        let upstreams = agent::upstream::start(&a, ex);
        changes.push(format!(
            "{} servers, {} rules",
            a.servers.len(),
            a.routes.len()
        ));
        let st = Arc::new(agent::State { cfg: a, upstreams });
        let old = live
            .agent
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(st);
        if let Some(old) = old {
            old.upstreams.retire();
        }
    }
    Ok(changes.join(", "))
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

/// Runs the loaded sections until SIGTERM or SIGINT, then drains.
pub fn run(cfg: Config, mut act: Activated) -> Result<(), StartError> {
    raise_nofile(&cfg);
    let ls = listeners(&cfg, &mut act)?;
    let signals = Signals::new([Signal::Hup, Signal::Term, Signal::Int]).map_err(StartError::Os)?;
    let ex = Arc::new(Executor::new());
    let threads = cfg.thread_count();
    for i in 1..threads {
        let ex = ex.clone();
        std::thread::Builder::new()
            .name(format!("websocks-{i}"))
            .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))
            .map_err(StartError::Os)?;
    }
    let path = cfg.path.clone();
    let grace = cfg.shutdown_grace;
    smol::block_on(ex.run(async {
        let live = Arc::new(Live {
            server: cfg.server.map(server::Current::new),
            agent: RwLock::new(None),
            grace_ms: (grace.as_millis() as u64).into(),
            threads,
        });
        if let Some(a) = cfg.agent {
            let upstreams = agent::upstream::start(&a, &ex);
            *live.agent.write().unwrap_or_else(|e| e.into_inner()) =
                Some(Arc::new(agent::State { cfg: a, upstreams }));
        }
        // Each side counts its own connections against its own limit.
        let (server_slots, agent_slots) = (Arc::new(Slots::new()), Arc::new(Slots::new()));
        let handshakes = Arc::new(Handshakes::new());
        let mut loops = Vec::new();
        let mut bound = Vec::new();
        for l in ls {
            let addr = l.socket.local_addr().map_err(StartError::Os)?;
            let what = match l.role {
                Role::Server => "server",
                Role::Agent(agent::Kind::Socks5) => "agent socks5",
                Role::Agent(agent::Kind::Http) => "agent http",
                Role::Agent(agent::Kind::Mixed) => "agent mixed",
            };
            let how = if l.from_systemd {
                " (socket from systemd)"
            } else {
                ""
            };
            log::info!("{what} listening on {addr}{how}");
            bound.push((l.role, addr, l.from_systemd));
            let slots = if l.role == Role::Server {
                &server_slots
            } else {
                &agent_slots
            };
            let listener = TcpListener::try_from(l.socket).map_err(StartError::Os)?;
            loops.push(ex.spawn(accept_loop(
                ex.clone(),
                listener,
                l.role,
                live.clone(),
                slots.clone(),
                handshakes.clone(),
            )));
        }
        let all_slots = [server_slots.clone(), agent_slots.clone()];
        let first = status_line(&live, &all_slots);
        systemd::ready(&first);

        // Keep STATUS= current and feed the watchdog.
        let status_task = {
            let (live, all_slots) = (live.clone(), all_slots.clone());
            ex.spawn(async move {
                let mut last = first;
                loop {
                    Timer::after(Duration::from_secs(2)).await;
                    let now = status_line(&live, &all_slots);
                    if now != last {
                        systemd::status(&now);
                        last = now;
                    }
                }
            })
        };
        let _watchdog = systemd::watchdog_interval().map(|every| {
            ex.spawn(async move {
                loop {
                    systemd::watchdog();
                    Timer::after(every).await;
                }
            })
        });

        let mut signals = signals;
        while let Some(sig) = signals.next().await {
            match sig {
                Ok(Signal::Hup) => {
                    systemd::reloading();
                    match reload(&path, &live, &ex, &bound) {
                        Ok(what) => {
                            log::info!("reloaded {}: {what}", path.display());
                            systemd::ready(&status_line(&live, &all_slots));
                        }
                        Err(e) => {
                            log::error!("reload failed, keeping the running configuration: {e}");
                            systemd::ready(&format!(
                                "reload failed, running the old configuration: {e}"
                            ));
                        }
                    }
                }
                Ok(_) => break,
                Err(e) => log::warn!("signal: {e}"),
            }
        }

        // Stop accepting, close connections that carry no tunnel yet, then
        // let live tunnels finish for the grace period.
        drop(loops);
        // Counted before they go: connections that wait for their frame
        // close at once and are not part of the drain.
        let draining =
            (server_slots.live() + agent_slots.live()).saturating_sub(server::waiting_for_frame());
        server::begin_drain();
        drop(status_task);
        let live_now = || server_slots.live() + agent_slots.live();
        log::info!(
            "stopping: no longer accepting; draining {draining} connections for up to {grace:?}"
        );
        systemd::stopping(&format!("stopping: draining {draining} connections"));
        let grace = Duration::from_millis(live.grace_ms.load(Ordering::Relaxed));
        let deadline = Instant::now() + grace;
        let drained = async {
            while live_now() > 0 && Instant::now() < deadline {
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
        match live_now() {
            0 => log::info!("stopped"),
            n => {
                // Tunnels still open are cut with a reset on both sides (a
                // FIN would pass a truncated transfer off as complete),
                // each logging its line; give them a moment to do so.
                log::warn!("shutdown grace over: cutting {n} connections still open");
                crate::relay::cut_all();
                let until = Instant::now() + Duration::from_secs(1);
                while live_now() > 0 && Instant::now() < until {
                    Timer::after(Duration::from_millis(10)).await;
                }
                log::warn!("stopped after {grace:?}; cut {n} connections");
            }
        }
        Ok(())
    }))
}
