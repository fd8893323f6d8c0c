//! The server, one connection: HTTP upgrade, authentication, the 10-byte
//! frame, SOCKS5, connecting to the destination, relaying, one log line.
//!
//! Every stage keeps the bytes it did not use: a client may send the frame,
//! greeting, request and first data right behind its HTTP request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_net::TcpStream;
use futures_lite::{AsyncWriteExt, FutureExt};

use crate::admission::Handshaking;
use crate::config::{ReplyAddress, Secret, Server};
use crate::deadline::timeout;
use crate::dial::{self, Asker, DialError, Inherited, dial};
use crate::metrics::{self, Held, Meter};
use crate::proto::http::{self, HeadError};
use crate::proto::socks5::{self, Addr, Reply, SocksError};
use crate::proto::ws::{self, FrameError, UpgradeError};
use crate::proto::{Parse, auth};
use crate::relay::{self, Totals};
use crate::shutdown::{Shutdown, Stage};
use crate::tls::{self, Stream};
use crate::wire::{Gone, Wire, close_gracefully};

/// How a connection ended before relaying, for the log line. Each variant
/// is answered on the wire in exactly one way, chosen in [`Failure::answer`].
#[derive(Debug)]
enum Failure {
    /// Client went away or sent nothing in time; nothing to answer.
    Gone(&'static str),
    /// Bad HTTP head.
    Head(HeadError),
    /// Not a WebSocks upgrade.
    Upgrade(UpgradeError),
    /// No or bad credentials.
    Unauthorized(&'static str, Option<String>),
    /// Bytes after the 101 are not PONGs and the frame.
    Frame(FrameError),
    /// More PONGs in a second than a keepalive needs.
    PongFlood,
    /// The user was removed or their password changed by a reload while
    /// the connection waited; `true` once a SOCKS5 request is answered.
    Revoked(bool),
    /// A bad greeting, or no acceptable method.
    Greeting(Option<SocksError>),
    /// A bad request.
    Request(SocksError),
    /// BIND, UDP ASSOCIATE or an unknown command.
    Command(u8),
    /// The destination could not be reached.
    Dial(DialError),
}

impl Failure {
    /// The single place where failures become bytes on the wire: what to
    /// send before closing (maybe nothing).
    fn answer(&self) -> Vec<u8> {
        const BAD: &str = "Bad Request";
        let mut v = Vec::new();
        let mut page = |code, reason, headers: &[(&str, &str)], body| {
            http::write_response(&mut v, code, reason, headers, body);
        };
        match self {
            Failure::Gone(_) | Failure::Frame(_) | Failure::PongFlood => {}
            Failure::Revoked(false) => {}
            Failure::Head(HeadError::TooLarge) => {
                page(400, BAD, &[], "request head larger than 8 KiB\n")
            }
            Failure::Head(_) => page(400, BAD, &[], "malformed HTTP request\n"),
            Failure::Upgrade(UpgradeError::Version) => page(
                400,
                BAD,
                &[("Sec-WebSocket-Version", "13")],
                "unsupported WebSocket version\n",
            ),
            Failure::Upgrade(UpgradeError::Protocol) => page(
                400,
                BAD,
                &[],
                "the socks5 WebSocket subprotocol is required\n",
            ),
            Failure::Upgrade(_) => page(400, BAD, &[], "a WebSocket upgrade is required\n"),
            Failure::Unauthorized(..) => page(
                401,
                "Unauthorized",
                &[("WWW-Authenticate", "Basic realm=\"websocks\"")],
                "authentication required\n",
            ),
            Failure::Greeting(_) => socks5::write_choice(&mut v, socks5::METHOD_NONE_ACCEPTABLE),
            Failure::Revoked(true) => socks5::write_failure(&mut v, Reply::NotAllowed),
            Failure::Request(e) => socks5::write_failure(&mut v, e.reply()),
            Failure::Command(_) => socks5::write_failure(&mut v, Reply::CommandNotSupported),
            Failure::Dial(e) => socks5::write_failure(&mut v, e.reply()),
        }
        v
    }
}

impl Failure {
    /// The `reason` label of `websocks_server_rejections_total`.
    fn label(&self) -> &'static str {
        match self {
            Failure::Gone(_) => "client_gone",
            Failure::Head(_) => "bad_http",
            Failure::Upgrade(UpgradeError::Protocol) | Failure::Upgrade(_) => "not_upgrade",
            Failure::Unauthorized(..) => "unauthorized",
            Failure::Frame(_) => "frame",
            Failure::PongFlood => "pong_flood",
            Failure::Revoked(_) => "revoked",
            Failure::Greeting(_) => "greeting",
            Failure::Request(_) => "request",
            Failure::Command(_) => "command",
            Failure::Dial(_) => "dial",
        }
    }

    /// Counts this failure in the metrics.
    fn count(&self) {
        let m = &metrics::SERVER;
        m.ended.at("rejected").inc();
        m.rejected.at(self.label()).inc();
        match self {
            Failure::Unauthorized(why, user) => {
                let reason = match *why {
                    NO_AUTHORIZATION => "missing",
                    MALFORMED => "malformed",
                    UNKNOWN_USER => "unknown_user",
                    _ => "bad_credential",
                };
                m.auth_failures.at(reason).inc();
                // Only a configured user's name becomes a label.
                if reason == "bad_credential"
                    && let Some(u) = user.as_deref().and_then(metrics::user)
                {
                    u.auth_failures.inc();
                }
            }
            Failure::Dial(e) => {
                let code = format!("{:02x}", e.reply().code());
                let known = metrics::REPLY_CODES.contains(&code.as_str());
                m.dial_errors.at(if known { &code } else { "other" }).inc();
            }
            _ => {}
        }
    }
}

/// Why credentials were refused, as logged.
const NO_AUTHORIZATION: &str = "no Authorization header";
const MALFORMED: &str = "malformed Authorization";
const UNKNOWN_USER: &str = "unknown user";

/// What a connection came for, when its handshake did not fail.
enum Granted {
    /// A tunnel: the connected destination, and the relay limits in force
    /// at the CONNECT.
    Tunnel(TcpStream, relay::Limits),
    /// A plain GET of the health path, answered `200 ok`.
    Health,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Gone(why) => write!(f, "client gone: {why}"),
            Failure::Head(e) => write!(f, "bad HTTP head: {e:?}"),
            Failure::Upgrade(e) => write!(f, "not a WebSocks upgrade: {e:?}"),
            Failure::Unauthorized(why, user) => match user {
                Some(u) => write!(f, "unauthorized: {why} (user {})", u.escape_default()),
                None => write!(f, "unauthorized: {why}"),
            },
            Failure::Frame(e) => write!(f, "bad WebSocket frame: {e:?}"),
            Failure::PongFlood => write!(
                f,
                "PONG flood (more than {PONGS_PER_SECOND} in a second while waiting)"
            ),
            Failure::Revoked(_) => f.write_str("user removed or password changed by a reload"),
            Failure::Greeting(e) => write!(f, "SOCKS5 greeting refused: {e:?}"),
            Failure::Request(e) => write!(f, "bad SOCKS5 request: {e:?}"),
            Failure::Command(c) => write!(f, "unsupported SOCKS5 command {c:#04x}"),
            Failure::Dial(e) => write!(f, "{e}"),
        }
    }
}

/// PONGs a waiting connection may send in one second. A keepalive needs
/// one every few seconds at most; a burst after a stall may bring a few
/// dozen at once. More is a flood: the connection is closed.
pub(crate) const PONGS_PER_SECOND: usize = 100;

/// The server configuration in force. A reload swaps it whole and wakes
/// every connection still waiting for its frame, so a grant made under the
/// old configuration is checked against the new one at once.
pub(crate) struct Current {
    cfg: std::sync::RwLock<Arc<Server>>,
    swapped: event_listener::Event,
}

impl Current {
    pub(crate) fn new(cfg: Server) -> Arc<Current> {
        Arc::new(Current {
            cfg: std::sync::RwLock::new(Arc::new(cfg)),
            swapped: event_listener::Event::new(),
        })
    }

    /// The snapshot in force now.
    pub(crate) fn get(&self) -> Arc<Server> {
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `cfg` in force and tells the waiting connections.
    pub(crate) fn set(&self, cfg: Server) {
        *self.cfg.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
        self.swapped.notify(usize::MAX);
    }
}

/// A connection's bytes in, with the handshake deadline.
type Conn = Wire<Stream>;

impl From<Gone> for Failure {
    fn from(g: Gone) -> Failure {
        Failure::Gone(g.why())
    }
}

/// What we know of a connection, for its log line.
struct Record {
    /// When the connection was accepted.
    start: Instant,
    user: Option<String>,
    dest: Option<Addr>,
    /// When the 101 went out and when the frame came: an agent's pooled
    /// connection waits between the two for as long as it stays unused.
    waiting: Option<(Instant, Option<Instant>)>,
    /// When the SOCKS5 request was read: `duration=` counts from there, so
    /// a tunnel's line says how long the tunnel lasted, not the pool wait.
    request: Option<Instant>,
    /// The gauge that counts this connection now: handshaking, waiting
    /// for its frame, or a tunnel.
    gauge: Option<Held>,
}

impl Record {
    /// `waited=` and `duration=` values (seconds) for the line, at `now`:
    /// `waited` is `None` before the 101; `duration` counts from accept
    /// (`start`) when the connection ended before its request.
    fn times(&self, start: Instant, now: Instant) -> (Option<f64>, f64) {
        let waited = self.waiting.map(|(from, to)| {
            to.unwrap_or(now)
                .saturating_duration_since(from)
                .as_secs_f64()
        });
        let from = self.request.unwrap_or(start);
        (waited, now.saturating_duration_since(from).as_secs_f64())
    }
}

/// A `waited=` value: seconds, or `-` when the connection never got a 101.
struct Waited(Option<f64>);

impl std::fmt::Display for Waited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(s) => write!(f, "{s:.3}s"),
            None => f.write_str("-"),
        }
    }
}

/// Serves one accepted connection to the end and logs one line: TLS first
/// when configured, then the handshake, then the relay. `admitted` is its
/// place in the handshake budget, given up once it has authenticated;
/// `stop` ends it early when the daemon stops (see [`Stage`]); `has` is
/// what it inherited from its listener.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    has: Inherited,
    current: Arc<Current>,
    mut admitted: Handshaking,
    stop: Shutdown,
) {
    let start = Instant::now();
    let cfg = current.get();
    dial::tune(&tcp, peer, has);
    let deadline = start + cfg.timeouts.handshake;
    let stream = match &cfg.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            // Boxed, like the handshake below: its state is freed before the
            // relay, so an idle tunnel's task stays small.
            let accepted = timeout(deadline, Box::pin(tls::accept(tcp, tls.clone())))
                .await
                .unwrap_or_else(|late| Err(late.into()));
            match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Garbage, plain HTTP on the TLS port, an abandoned
                    // handshake: this connection only.
                    metrics::SERVER.ended.at("rejected").inc();
                    metrics::SERVER.rejected.at("tls").inc();
                    log::info!(
                        "peer={peer} user=- dst=- up=0 down=0 waited=- duration={:.3}s end=rejected: TLS handshake: {e}",
                        start.elapsed().as_secs_f64()
                    );
                    return;
                }
            }
        }
    };
    let mut rec = Record {
        start,
        user: None,
        dest: None,
        waiting: None,
        request: None,
        gauge: Some(metrics::SERVER.handshaking.hold()),
    };
    let mut c = Conn::new(stream, deadline);
    // Relayed, or to be answered (maybe with nothing) and closed: the log
    // level, the reason for the line and the answer.
    let result = match Box::pin(handshake(
        &mut c,
        &cfg,
        &current,
        &mut admitted,
        &stop,
        &mut rec,
    ))
    .await
    {
        Ok(Granted::Tunnel(dest, t)) => {
            // The bound in force at the CONNECT, unless the client's leg
            // has it from its listener (a reload may have changed it
            // since; one to 0 cannot lift a bound already inherited).
            if t.buffer != has.buffer {
                dial::bound(c.stream.tcp(), t.buffer);
            }
            Ok(tunnel(c, dest, t, &stop, &mut rec).await)
        }
        Ok(Granted::Health) => {
            metrics::SERVER.health_checks.inc();
            let mut ok = Vec::new();
            http::write_response(&mut ok, 200, "OK", &[], "ok\n");
            // Logged quietly, as a client gone during the handshake is.
            Err((log::Level::Debug, "health check".to_string(), ok, c))
        }
        Err(f) => {
            f.count();
            let level = match f {
                Failure::Gone(_) => log::Level::Debug,
                _ => log::Level::Info,
            };
            Err((level, f.to_string(), f.answer(), c))
        }
    };
    rec.gauge = None;
    let user = rec.user.as_deref().unwrap_or("-");
    let dest = rec
        .dest
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_else(|| "-".into());
    let (waited, secs) = rec.times(start, Instant::now());
    let waited = Waited(waited);
    match result {
        Ok(t) => log::info!(
            "peer={peer} user={user} dst={dest} up={} down={} waited={waited} duration={secs:.3}s end={}",
            t.up,
            t.down,
            t.end
        ),
        Err((level, why, bytes, mut c)) => {
            log::log!(
                level,
                "peer={peer} user={user} dst={dest} up=0 down=0 waited={waited} duration={secs:.3}s end=rejected: {why}"
            );
            // Anything the handshake still owes goes first, in the same
            // write.
            let mut last = std::mem::take(&mut c.owed);
            last.extend_from_slice(&bytes);
            Box::pin(close_gracefully(
                &mut c.stream,
                &last,
                Duration::from_secs(2),
            ))
            .await;
        }
    }
}

/// A granted tunnel, counted in the metrics.
async fn tunnel(
    c: Conn,
    dest: TcpStream,
    t: relay::Limits,
    stop: &Shutdown,
    rec: &mut Record,
) -> Totals {
    rec.gauge = Some(metrics::SERVER.tunnels.hold());
    let user = rec.user.as_deref().and_then(metrics::user);
    if let Some(u) = &user {
        u.tunnels.inc();
    }
    let meter = Meter {
        bytes: &metrics::SERVER.bytes,
        user,
    };
    let t = relay_after(c, dest, t, stop, &meter).await;
    metrics::SERVER.ended.at(t.end.label()).inc();
    t
}

/// Relays, starting with whatever the client sent early.
async fn relay_after(
    c: Conn,
    mut dest: TcpStream,
    t: relay::Limits,
    stop: &Shutdown,
    meter: &Meter,
) -> Totals {
    let early = c.buf;
    let sent = early.len() as u64;
    if !early.is_empty()
        && let Err(e) = dest.write_all(&early).await
    {
        relay::reset_on_close(c.stream.tcp());
        return Totals {
            up: 0,
            down: 0,
            end: relay::End::DestError(e.kind()),
        };
    }
    drop(early);
    meter.add(sent, 0);
    let mut t = relay::relay(c.stream, Stream::Plain(dest), t, stop, meter).await;
    t.up += sent;
    t
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a waiting connection woke for.
enum Woke {
    Bytes(Result<(), Gone>),
    Reloaded,
}

/// The handshake, up to the success reply (or the health check's answer):
/// returns what the connection came for. `cfg` is the
/// snapshot at accept, for the stages before the grant; every later
/// decision reads `current` again (a reload may come while a pooled
/// connection waits).
async fn handshake(
    c: &mut Conn,
    cfg: &Server,
    current: &Current,
    admitted: &mut Handshaking,
    stop: &Shutdown,
    rec: &mut Record,
) -> Result<Granted, Failure> {
    // 1. HTTP head.
    let head = c.next(http::parse_request, Failure::Head).await?;
    if head.count("Upgrade") == 0
        && head.first == "GET"
        && cfg.health_path.as_deref() == Some(head.second.split('?').next().unwrap_or(""))
    {
        return Ok(Granted::Health);
    }
    let up = ws::check_upgrade(&head).map_err(Failure::Upgrade)?;

    // 2. Credentials (spec chapter "Auth"), then the subprotocol.
    let grant = authenticate(up.authorization.as_deref(), cfg)?;
    rec.user = Some(grant.user.clone());
    // Authenticated: its place in the handshake budget goes to the next.
    admitted.done();
    if !up.socks5_offered {
        return Err(Failure::Upgrade(UpgradeError::Protocol));
    }
    let mut out = Vec::with_capacity(256);
    // Ours only to a client of our dialect: the reference agent gets the
    // reference server's head, byte for byte.
    let options: &[&str] = if up.options { &[ws::PIPELINING] } else { &[] };
    ws::write_switching(&mut out, &up.key, options);
    c.send(&out).await?;
    rec.waiting = Some((Instant::now(), None));

    // 3. PONGs, then the 10-byte frame.
    rec.gauge = Some(metrics::SERVER.waiting.hold());
    wait_for_frame(c, cfg, current, stop, &grant).await?;
    rec.gauge = Some(metrics::SERVER.handshaking.hold());
    rec.waiting = rec.waiting.map(|(from, _)| (from, Some(Instant::now())));
    c.deadline = Instant::now() + cfg.timeouts.handshake;

    // 4. SOCKS5 greeting: no authentication (the upgrade authenticated).
    greet(c, up.data_with_reply).await?;

    // 5. The request.
    let req = c.next(socks5::parse_request, Failure::Request).await?;
    rec.request = Some(Instant::now());
    if let (Some((sent, Some(frame))), Some(request)) = (rec.waiting, rec.request) {
        metrics::SERVER
            .handshake
            .observe(sent.saturating_duration_since(rec.start) + (request - frame));
    }
    rec.dest = Some(req.addr.clone());
    if req.cmd != socks5::CMD_CONNECT {
        return Err(Failure::Command(req.cmd));
    }

    // 6. Connect, and only then answer.
    connect(c, current, &req.addr, &grant, up.data_with_reply).await
}

/// Who a connection authenticated as, and the digest that let it in (a
/// reload that changes it revokes the grant).
struct Grant {
    user: String,
    digest: Secret,
}

/// Checks the `Authorization` value against the users of `cfg`.
fn authenticate(value: Option<&str>, cfg: &Server) -> Result<Grant, Failure> {
    let value = value.ok_or(Failure::Unauthorized(NO_AUTHORIZATION, None))?;
    let cred = auth::parse_basic(value).map_err(|_| Failure::Unauthorized(MALFORMED, None))?;
    let known = cfg.users.get(&cred.user);
    // An unknown user costs the same hashing as a known one.
    let digest = known
        .map(|s| s.expose())
        .unwrap_or("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let ok = auth::verify(&cred.field, digest, now_ms());
    match (known, ok) {
        (Some(d), true) => Ok(Grant {
            user: cred.user,
            digest: d.clone(),
        }),
        (None, _) => Err(Failure::Unauthorized(UNKNOWN_USER, Some(cred.user))),
        (Some(_), false) => Err(Failure::Unauthorized(
            "wrong or expired password hash",
            Some(cred.user),
        )),
    }
}

/// Consumes PONGs until the 10-byte frame. A pooled connection may sit
/// here for long, kept alive by a PONG now and then: each wait is bounded
/// by the idle timeout, not the handshake's. PONGs are consumed in bulk,
/// at most PONGS_PER_SECOND a second; a reload that removes the user (or
/// changes the password) closes the connection at once, and so does the
/// start of a drain.
async fn wait_for_frame(
    c: &mut Conn,
    cfg: &Server,
    current: &Current,
    stop: &Shutdown,
    grant: &Grant,
) -> Result<(), Failure> {
    let _waiting = stop.waiting();
    let mut window = (Instant::now(), 0usize);
    c.deadline = Instant::now() + cfg.timeouts.idle;
    loop {
        let pongs = ws::leading_pongs(&c.buf);
        if pongs > 0 {
            c.buf.drain(..pongs * ws::PONG.len());
            if window.0.elapsed() >= Duration::from_secs(1) {
                window = (Instant::now(), 0);
            }
            window.1 += pongs;
            if window.1 > PONGS_PER_SECOND {
                return Err(Failure::PongFlood);
            }
            c.deadline = Instant::now() + current.get().timeouts.idle;
        }
        match ws::parse_preamble(&c.buf).map_err(Failure::Frame)? {
            Parse::Done(ws::Preamble::Frame, used) => {
                c.buf.drain(..used);
                return Ok(());
            }
            Parse::Done(ws::Preamble::Pong, _) => continue,
            Parse::Incomplete => {}
        }
        // Listen before checking, so a swap between the two is not missed.
        let swapped = current.swapped.listen();
        if !current.get().users.grants(&grant.user, &grant.digest) {
            return Err(Failure::Revoked(false));
        }
        let woke = async { Woke::Bytes(c.more().await) }
            .or(async {
                swapped.await;
                Woke::Reloaded
            })
            .or(async {
                stop.until(Stage::Draining).await;
                Woke::Bytes(Err(Gone::Stopping))
            })
            .await;
        if let Woke::Bytes(r) = woke {
            r?;
        }
    }
}

/// Answers with our frame (and the method choice too when the greeting is
/// already here, as the reference does), then takes the greeting: no
/// authentication, since the upgrade authenticated. To a client that takes
/// data behind the reply (`together`: ours), whose request is already here
/// too, frame and choice are owed instead: they may go with the answer to
/// the request in one write (see [`connect`]).
async fn greet(c: &mut Conn, together: bool) -> Result<(), Failure> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&ws::FRAME);
    if matches!(socks5::parse_greeting(&c.buf), Ok(Parse::Incomplete)) {
        c.send(&out).await?;
        out.clear();
    }
    let greeting = c
        .next(socks5::parse_greeting, |e| Failure::Greeting(Some(e)))
        .await;
    let greeting = match greeting {
        Ok(g) => g,
        Err(f) => {
            c.send(&out).await?;
            return Err(f);
        }
    };
    if !greeting.methods.contains(&socks5::METHOD_NO_AUTH) {
        c.send(&out).await?;
        return Err(Failure::Greeting(None));
    }
    socks5::write_choice(&mut out, socks5::METHOD_NO_AUTH);
    if together && matches!(socks5::parse_request(&c.buf), Ok(Parse::Done(..))) {
        c.owed = out;
        return Ok(());
    }
    c.send(&out).await?;
    Ok(())
}

/// Connects to `addr` and only then answers, under the configuration in
/// force now: the grant must still hold, and its policy is today's. A name
/// is looked up in one of this user's lookup slots, so one user's hanging
/// DNS cannot take them all. What the greeting owes goes with the answer
/// when the connect is done at once (loopback), else out before the wait:
/// a client bounds its wait for frame and choice more tightly than for the
/// reply (the agent's `timeouts.connect`).
async fn connect(
    c: &mut Conn,
    current: &Current,
    addr: &Addr,
    grant: &Grant,
    data_with_reply: bool,
) -> Result<Granted, Failure> {
    let cfg = current.get();
    if !cfg.users.grants(&grant.user, &grant.digest) {
        return Err(Failure::Revoked(true));
    }
    let began = Instant::now();
    let mut dialing = std::pin::pin!(dial(
        addr,
        &cfg.acl,
        cfg.timeouts.connect,
        Asker::User(&grant.user),
        cfg.tunnel_buffer,
    ));
    let dialled = match futures_lite::future::poll_once(&mut dialing).await {
        Some(r) => r,
        None => {
            c.pay().await?;
            dialing.await
        }
    };
    let dest = dialled.map_err(Failure::Dial)?;
    metrics::SERVER.connect.observe(began.elapsed());
    let bound = match cfg.reply_address {
        ReplyAddress::Hidden => SocketAddr::new(socks5::UNSPECIFIED.ip(), addr.port()),
        ReplyAddress::Local => dest.local_addr().unwrap_or(socks5::UNSPECIFIED),
    };
    // The reply goes in a write of its own (after frame and choice when
    // they are owed); the relay then holds the destination's first bytes
    // for `banner_hold` unless the client speaks first or takes data
    // behind the reply.
    let mut out = Vec::with_capacity(32);
    socks5::write_reply(&mut out, Reply::Succeeded, &Addr::Ip(bound));
    c.deadline = Instant::now() + cfg.timeouts.handshake;
    c.send(&out).await?;
    let t = relay::Limits {
        idle: cfg.timeouts.idle,
        send: cfg.timeouts.send,
        buffer: cfg.tunnel_buffer,
        hold: if data_with_reply || !c.buf.is_empty() {
            Duration::ZERO
        } else {
            cfg.banner_hold
        },
    };
    Ok(Granted::Tunnel(dest, t))
}
