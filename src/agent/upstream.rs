//! The agent's side of WebSocks: upgrading a connection to a server, the
//! pool of upgraded connections kept alive with PONGs, health checks, and
//! choosing a server of a group with failover.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_io::Timer;
use futures_lite::{AsyncReadExt, FutureExt, future};
use smol::channel::{Receiver, Sender};

use crate::acl::Acl;
use crate::config::agent::{Agent, UpstreamServer};
use crate::dial::{Asker, DialError};
use crate::proto::socks5::{self, Addr, Reply};
use crate::proto::{Parse, auth, http, ws};
use crate::tls::{self, Stream};

/// Why a server could not be used.
#[derive(Debug)]
pub enum UpError {
    /// TCP connect (or name resolution) failed.
    Connect(io::Error),
    /// The deadline passed.
    Timeout,
    /// The server's HTTP answer was not a valid WebSocks 101.
    Upgrade(String),
    /// The server broke the protocol after the 101, or closed.
    Protocol(String),
    /// The server took the request but did not answer in time: the
    /// destination is slow, the server is fine.
    ReplyTimeout,
}

impl std::fmt::Display for UpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpError::Connect(e) => write!(f, "connect failed: {e}"),
            UpError::Timeout => f.write_str("timed out"),
            UpError::Upgrade(m) => write!(f, "upgrade refused: {m}"),
            UpError::Protocol(m) => write!(f, "protocol error: {m}"),
            UpError::ReplyTimeout => f.write_str("no SOCKS5 reply in time (destination slow)"),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `f` under a deadline.
async fn within<T>(
    deadline: Instant,
    f: impl Future<Output = Result<T, UpError>>,
) -> Result<T, UpError> {
    f.or(async {
        Timer::at(deadline).await;
        Err(UpError::Timeout)
    })
    .await
}

/// Reads into `buf` until `parse` completes; returns the message and drains
/// the bytes it used.
async fn read_msg<T, E: std::fmt::Debug>(
    s: &mut Stream,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Parse<T>, E>,
    what: &str,
) -> Result<T, UpError> {
    let mut chunk = [0u8; 4096];
    loop {
        match parse(buf) {
            Ok(Parse::Done(t, used)) => {
                buf.drain(..used);
                return Ok(t);
            }
            Ok(Parse::Incomplete) => {}
            Err(e) => return Err(UpError::Protocol(format!("bad {what}: {e:?}"))),
        }
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| UpError::Protocol(format!("reading {what}: {e}")))?;
        if n == 0 {
            return Err(UpError::Protocol(format!("server closed before {what}")));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An upgraded connection: the 101 is in, nothing else sent yet.
pub struct Upgraded {
    pub stream: Stream,
    /// Bytes the server sent after its 101 head (none from a conforming one).
    pub extra: Vec<u8>,
}

/// Connects to `server` and performs the upgrade: random key, the spec's
/// request, and a strict check of the answer (101, `Upgrade: websocket`,
/// `Connection: upgrade`, the accept value, exactly one `socks5`). Sends
/// nothing more: the reference server drops bytes pipelined behind the
/// request, so the frame waits for the 101.
pub async fn upgrade(server: &UpstreamServer, timeout: Duration) -> Result<Upgraded, UpError> {
    within(Instant::now() + timeout, async {
        let url = &server.url;
        // The same connect as everywhere: every resolved address in turn,
        // each with its share of the deadline, TCP_NODELAY set.
        let target = Addr::Domain(url.host.as_bytes().to_vec(), url.port);
        let tcp = crate::dial::dial(&target, &Acl::any(), timeout, Asker::Agent)
            .await
            .map_err(|e| match e {
                // The deadline passing during the lookup is still a timeout
                // here (a server that cannot be reached in time).
                DialError::Timeout => UpError::Timeout,
                DialError::Resolve(e) if e.kind() == io::ErrorKind::TimedOut => UpError::Timeout,
                DialError::Resolve(e) | DialError::Connect(e) => UpError::Connect(e),
                DialError::Denied => UpError::Connect(io::Error::other("denied")),
            })?;
        let mut s = match &server.tls {
            None => Stream::Plain(tcp),
            Some((cfg, name)) => tls::connect(tcp, cfg.clone(), name.clone())
                .await
                .map_err(|e| UpError::Connect(io::Error::new(e.kind(), format!("TLS: {e}"))))?,
        };
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| UpError::Connect(io::Error::other(e.to_string())))?;
        let key = ws::key_from(raw);
        let authz = auth::authorization(
            &server.user,
            server.digest.expose(),
            auth::minute_of(now_ms()),
        );
        let mut req = Vec::with_capacity(300);
        http::write_upgrade_request(&mut req, &url.path, &server.host_header, &key, &authz);
        s.send_all(&req).await.map_err(UpError::Connect)?;
        let mut buf = Vec::new();
        let head = read_msg(&mut s, &mut buf, http::parse_response, "HTTP response").await?;
        if head.second != "101" {
            return Err(UpError::Upgrade(format!(
                "HTTP {} {}",
                head.second, head.third
            )));
        }
        let accept = ws::accept(&key);
        let protocols: Vec<&str> = head.all("Sec-WebSocket-Protocol").collect();
        if !head.has_token("Upgrade", "websocket") || !head.has_token("Connection", "upgrade") {
            return Err(UpError::Upgrade(
                "101 without Upgrade: websocket / Connection: upgrade".into(),
            ));
        }
        if head.one("Sec-WebSocket-Accept") != Some(accept.as_str()) {
            return Err(UpError::Upgrade("wrong Sec-WebSocket-Accept".into()));
        }
        if protocols != [ws::PROTOCOL] {
            return Err(UpError::Upgrade(format!(
                "Sec-WebSocket-Protocol is {protocols:?}, not [\"socks5\"]"
            )));
        }
        Ok(Upgraded {
            stream: s,
            extra: buf,
        })
    })
    .await
}

/// A tunnel the server answered: its reply, and the stream when it
/// succeeded. `early` holds destination bytes that came with the reply.
pub struct Tunnel {
    pub reply: Reply,
    pub stream: Stream,
    pub early: Vec<u8>,
}

/// Sends frame + greeting + CONNECT in one write and reads the server's
/// frame, method choice and reply.
/// Sends frame + greeting + CONNECT in one write and reads the server's
/// frame and method choice within `timeout` (they come at once from a live
/// server, so silence means a dead connection), then its reply within
/// `reply_timeout` (the server is connecting to the destination meanwhile;
/// silence then means a slow destination, not a bad server).
pub async fn open(
    up: Upgraded,
    dest: &Addr,
    timeout: Duration,
    reply_timeout: Duration,
) -> Result<Tunnel, UpError> {
    let Upgraded { mut stream, extra } = up;
    let mut buf = extra;
    within(Instant::now() + timeout, async {
        let mut out = ws::FRAME.to_vec();
        socks5::write_greeting(&mut out, &[socks5::METHOD_NO_AUTH]);
        socks5::write_connect(&mut out, dest);
        stream
            .send_all(&out)
            .await
            .map_err(|e| UpError::Protocol(format!("writing request: {e}")))?;
        read_msg(&mut stream, &mut buf, ws::check_frame, "frame").await?;
        let method = read_msg(&mut stream, &mut buf, socks5::parse_choice, "method choice").await?;
        if method != socks5::METHOD_NO_AUTH {
            return Err(UpError::Protocol(format!(
                "server chose method {method:#04x}"
            )));
        }
        Ok(())
    })
    .await?;
    let reply = read_msg(&mut stream, &mut buf, socks5::parse_reply, "reply")
        .or(async {
            Timer::after(reply_timeout).await;
            Err(UpError::ReplyTimeout)
        })
        .await?;
    Ok(Tunnel {
        reply,
        stream,
        early: buf,
    })
}

/// A pooled connection and when it last sent a PONG.
struct Pooled {
    up: Upgraded,
    last_pong: Instant,
}

/// Is a pooled connection still open? A conforming server sends nothing
/// before our frame, so anything readable (data, EOF, error) means dead.
fn still_open(s: &mut Stream) -> bool {
    // A read that would block means nothing arrived: alive. TLS records
    // without data (session tickets) are consumed by rustls and block too.
    let mut b = [0u8; 1];
    future::block_on(future::poll_once(s.read(&mut b))).is_none()
}

/// One server: its pool and health.
pub struct Upstream {
    pub server: UpstreamServer,
    healthy: AtomicBool,
    /// Set when a reload replaced this server: its tasks end.
    retired: AtomicBool,
    pool: Mutex<VecDeque<Pooled>>,
    wake: Sender<()>,
    woken: Receiver<()>,
}

impl Upstream {
    pub fn new(server: UpstreamServer) -> Upstream {
        let (wake, woken) = smol::channel::bounded(1);
        Upstream {
            server,
            healthy: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            pool: Mutex::new(VecDeque::new()),
            wake,
            woken,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Stops the pool and health tasks and closes pooled connections.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let _ = self.wake.try_send(());
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Records a health state; logs changes.
    pub fn set_health(&self, ok: bool, why: &str) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        let s = &self.server;
        match (was, ok) {
            (true, false) => log::warn!("server {} ({}) is down: {why}", s.name, s.host_header),
            (false, true) => log::info!("server {} ({}) is up again", s.name, s.host_header),
            _ => {}
        }
    }

    /// A live pooled connection, if any; wakes the refiller.
    fn take_pooled(&self) -> Option<Upgraded> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        while let Some(mut p) = pool.pop_front() {
            if still_open(&mut p.up.stream) {
                found = Some(p.up);
                break;
            }
        }
        drop(pool);
        let _ = self.wake.try_send(());
        found
    }

    fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Keeps the pool at `size`, sends PONGs every `keepalive`, drops dead
    /// entries. Runs forever.
    pub async fn maintain_pool(
        self: Arc<Self>,
        size: usize,
        keepalive: Duration,
        timeout: Duration,
    ) {
        let tick = keepalive.min(Duration::from_secs(5)) / 2;
        let mut backoff = Duration::from_millis(250);
        // When the pool was last swept. A take wakes this loop to refill;
        // sweeping every pooled connection then too would cost a syscall
        // per entry on every new tunnel.
        let mut swept: Option<Instant> = None;
        while !self.is_retired() {
            if swept.is_none_or(|t| t.elapsed() >= tick) {
                self.sweep(keepalive, timeout).await;
                swept = Some(Instant::now());
            }
            let mut failed = false;
            while self.pooled() < size && !self.is_retired() {
                match upgrade(&self.server, timeout).await {
                    Ok(up) => {
                        self.set_health(true, "");
                        backoff = Duration::from_millis(250);
                        self.pool
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push_back(Pooled {
                                up,
                                last_pong: Instant::now(),
                            });
                    }
                    Err(e) => {
                        self.set_health(false, &e.to_string());
                        failed = true;
                        break;
                    }
                }
            }
            let wait = if failed {
                backoff = (backoff * 2).min(Duration::from_secs(30));
                backoff
            } else {
                tick
            };
            let _ = self
                .woken
                .recv()
                .or(async {
                    Timer::after(wait).await;
                    Ok(())
                })
                .await;
            if failed {
                // A take should not hammer a down server: honour the backoff.
                Timer::after(Duration::from_millis(50)).await;
            }
        }
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// PONGs for pooled connections that are due; drops the dead.
    async fn sweep(&self, keepalive: Duration, timeout: Duration) {
        let due: Vec<Pooled> = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let all: Vec<Pooled> = pool.drain(..).collect();
            let (due, fresh): (Vec<_>, Vec<_>) = all
                .into_iter()
                .partition(|p| p.last_pong.elapsed() >= keepalive);
            pool.extend(
                fresh
                    .into_iter()
                    .filter_map(|mut p| still_open(&mut p.up.stream).then_some(p)),
            );
            due
        };
        for mut p in due {
            let ok = still_open(&mut p.up.stream)
                && p.up
                    .stream
                    .send_all(&ws::PONG)
                    .or(async {
                        Timer::after(timeout).await;
                        Err(io::ErrorKind::TimedOut.into())
                    })
                    .await
                    .is_ok();
            if ok {
                p.last_pong = Instant::now();
                self.pool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(p);
            }
        }
    }

    /// Checks health with a real upgrade every `interval`. Runs forever.
    pub async fn health_loop(self: Arc<Self>, interval: Duration, timeout: Duration) {
        while !self.is_retired() {
            match upgrade(&self.server, timeout).await {
                Ok(_) => self.set_health(true, ""),
                Err(e) => self.set_health(false, &format!("health check: {e}")),
            }
            Timer::after(interval).await;
        }
    }

    /// Pooled connections ready now.
    pub fn ready(&self) -> usize {
        self.pooled()
    }
}

/// Servers of one group, used round-robin.
pub struct Group {
    pub members: Vec<Arc<Upstream>>,
    next: AtomicUsize,
}

/// Why no server of a group could open the tunnel.
#[derive(Debug)]
pub struct GroupError {
    pub last: UpError,
}

/// Which server answered, and its tunnel.
pub struct Opened {
    pub server: String,
    pub pooled: bool,
    pub tunnel: Tunnel,
}

impl Group {
    pub fn new(members: Vec<Arc<Upstream>>) -> Group {
        Group {
            members,
            next: AtomicUsize::new(0),
        }
    }

    /// Opens a tunnel to `dest` through the group: healthy servers first,
    /// round-robin, failing over on connect/upgrade errors. A pooled
    /// connection that turns out dead is retried once on a fresh one.
    /// A SOCKS5 error reply from a server is a result, not a failure.
    pub async fn open(
        &self,
        dest: &Addr,
        timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Opened, GroupError> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<&Arc<Upstream>> =
            (0..n).map(|i| &self.members[(start + i) % n]).collect();
        order.sort_by_key(|u| !u.is_healthy());
        let mut last = UpError::Upgrade("no server".into());
        for up in order {
            if let Some(p) = up.take_pooled() {
                match open(p, dest, timeout, reply_timeout).await {
                    Ok(tunnel) => {
                        return Ok(Opened {
                            server: up.server.name.clone(),
                            pooled: true,
                            tunnel,
                        });
                    }
                    // The server answered the frame: it is alive, the
                    // destination is slow. No retry, no failover.
                    Err(UpError::ReplyTimeout) => {
                        return Err(GroupError {
                            last: UpError::ReplyTimeout,
                        });
                    }
                    Err(e) => log::debug!(
                        "pooled connection to {} was dead ({e}); trying a fresh one",
                        up.server.name
                    ),
                }
            }
            let fresh = match upgrade(&up.server, timeout).await {
                Ok(u) => u,
                Err(e) => {
                    up.set_health(false, &e.to_string());
                    last = e;
                    continue;
                }
            };
            match open(fresh, dest, timeout, reply_timeout).await {
                Ok(tunnel) => {
                    up.set_health(true, "");
                    return Ok(Opened {
                        server: up.server.name.clone(),
                        pooled: false,
                        tunnel,
                    });
                }
                Err(UpError::ReplyTimeout) => {
                    return Err(GroupError {
                        last: UpError::ReplyTimeout,
                    });
                }
                Err(e) => {
                    up.set_health(false, &e.to_string());
                    last = e;
                }
            }
        }
        Err(GroupError { last })
    }
}

/// Upstreams and groups of one configuration generation.
pub struct Upstreams {
    pub all: Vec<Arc<Upstream>>,
    pub groups: std::collections::HashMap<String, Arc<Group>>,
}

impl Upstreams {
    /// Healthy servers and all servers, for STATUS=.
    pub fn health(&self) -> (usize, usize) {
        (
            self.all.iter().filter(|u| u.is_healthy()).count(),
            self.all.len(),
        )
    }

    /// Ends this generation's background tasks (after a reload).
    pub fn retire(&self) {
        for u in &self.all {
            u.retire();
        }
    }
}

/// Builds upstreams and groups, and starts pool and health tasks on `ex`.
pub fn start(cfg: &Agent, ex: &smol::Executor<'static>) -> Upstreams {
    for s in cfg.servers.iter().filter(|s| s.insecure) {
        log::warn!(
            "server {}: insecure_skip_verify is on: its TLS certificate is NOT checked; \
             anyone on the path can read and change this traffic",
            s.name
        );
    }
    let all: Vec<Arc<Upstream>> = cfg
        .servers
        .iter()
        .cloned()
        .map(|s| Arc::new(Upstream::new(s)))
        .collect();
    for up in &all {
        if cfg.pool.size > 0 {
            ex.spawn(up.clone().maintain_pool(
                cfg.pool.size,
                cfg.pool.keepalive,
                cfg.timeouts.connect,
            ))
            .detach();
        }
        ex.spawn(
            up.clone()
                .health_loop(cfg.health.interval, cfg.health.timeout),
        )
        .detach();
    }
    let groups = cfg
        .groups
        .iter()
        .map(|(name, idx)| {
            (
                name.clone(),
                Arc::new(Group::new(idx.iter().map(|&i| all[i].clone()).collect())),
            )
        })
        .collect();
    Upstreams { all, groups }
}
