//! The agent, one connection: a local SOCKS5 or HTTP proxy client is routed
//! (proxy through a server group, direct, or reject), answered with the
//! real result, then relayed. The WebSocks side: `handshake` (the client
//! side of the server's handshake), `pool` (a server and its upgraded
//! connections), `group` (health, round-robin, failover); `route` decides
//! and `pac` writes the same decisions as a browser's PAC file.

pub(crate) mod group;
pub(crate) mod handshake;
mod pac;
pub(crate) mod pool;
pub(crate) mod route;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_net::TcpStream;
use futures_lite::AsyncWriteExt;

use crate::acl::Acl;
use crate::config::agent::{Action, Agent};
use crate::dial::{self, DialError};
use crate::metrics;
use crate::proto::http::{self, HeadError};
use crate::proto::proxy::{self, Body, Framing, FramingError, ProxyError, ProxyRequest, Scan};
use crate::proto::socks5::{self, Addr, Reply, SocksError};
use crate::proto::{Parse, auth};
use crate::relay;
use crate::shutdown::Shutdown;
use crate::tls::Stream;
use crate::wire::{Gone, Wire, close_gracefully};
use handshake::UpError;

/// Which local protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Socks5,
    Http,
    /// Either, told apart by the first byte (`05` is SOCKS5).
    Mixed,
}

/// What every agent connection shares.
pub(crate) struct State {
    pub cfg: Agent,
    pub upstreams: group::Upstreams,
}

impl State {
    /// The state for `cfg`, its upstream pools and health checks running on
    /// `ex` (at start, and for each reload).
    pub(crate) fn start(cfg: Agent, ex: &smol::Executor<'static>) -> Arc<State> {
        let upstreams = group::start(&cfg, ex);
        Arc::new(State { cfg, upstreams })
    }
}

/// Why a destination is not reached. Each maps to one SOCKS5 reply and one
/// HTTP status, in [`Refusal::reply`] and [`Refusal::http`].
#[derive(Debug)]
enum Refusal {
    /// A `reject` rule.
    Rejected,
    /// A numeric host name that is not a standard IP literal.
    BadName,
    /// The server answered the CONNECT with this SOCKS5 reply.
    Server(Reply),
    /// No server of the group could be used.
    NoServer(UpError),
    /// A direct connection failed.
    Direct(DialError),
}

impl Refusal {
    fn reply(&self) -> Reply {
        match self {
            Refusal::Rejected => Reply::NotAllowed,
            Refusal::BadName => Reply::HostUnreachable,
            Refusal::Server(rep) => *rep,
            Refusal::NoServer(UpError::Timeout | UpError::ReplyTimeout) => Reply::TtlExpired,
            Refusal::NoServer(_) => Reply::GeneralFailure,
            Refusal::Direct(e) => e.reply(),
        }
    }

    fn http(&self) -> (u16, &'static str) {
        match self.reply() {
            Reply::NotAllowed => (403, "Forbidden"),
            Reply::TtlExpired => (504, "Gateway Timeout"),
            _ => (502, "Bad Gateway"),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Rejected => f.write_str("rejected by rule"),
            Refusal::BadName => f.write_str("numeric host name that is not an IP literal"),
            Refusal::Server(rep) => write!(f, "server replied {:#04x}", rep.code()),
            Refusal::NoServer(e) => write!(f, "no server usable: {e}"),
            Refusal::Direct(e) => write!(f, "direct: {e}"),
        }
    }
}

/// An open path to the destination.
struct Reached {
    remote: Stream,
    /// Destination bytes already received.
    early: Vec<u8>,
    /// BND.ADDR for a SOCKS5 reply.
    bound: Addr,
}

/// Routes `dest` and opens the path. `route` is filled for the log line.
async fn reach(st: &State, dest: &Addr, route: &mut String) -> Result<Reached, Refusal> {
    let began = Instant::now();
    let r = reach_as_routed(st, dest, route).await;
    if r.is_ok() {
        metrics::AGENT.connect.observe(began.elapsed());
    }
    r
}

/// [`reach`], untimed.
async fn reach_as_routed(st: &State, dest: &Addr, route: &mut String) -> Result<Reached, Refusal> {
    let Some((dest, action, group, _)) = route::choose(&st.cfg, dest) else {
        *route = "refused".into();
        return Err(Refusal::BadName);
    };
    let dest = &dest;
    let timeout = st.cfg.timeouts.connect;
    match action {
        Action::Reject => {
            *route = "reject".into();
            Err(Refusal::Rejected)
        }
        Action::Direct => {
            *route = "direct".into();
            let remote = dial::dial(dest, &Acl::any(), timeout, dial::Asker::Agent, 0)
                .await
                .map_err(Refusal::Direct)?;
            let bound = Addr::Ip(remote.local_addr().unwrap_or(socks5::UNSPECIFIED));
            Ok(Reached {
                remote: Stream::Plain(remote),
                early: Vec::new(),
                bound,
            })
        }
        Action::Proxy => {
            *route = format!("proxy:{group}");
            let g = st
                .upstreams
                .groups
                .get(group)
                .ok_or(Refusal::NoServer(UpError::Upgrade(format!(
                    "no group {group}"
                ))))?;
            let opened = g
                .open(dest, timeout, st.cfg.timeouts.reply)
                .await
                .map_err(|e| Refusal::NoServer(e.last))?;
            route.push_str(&format!(
                " server={}{}",
                opened.server,
                if opened.pooled { "(pooled)" } else { "" }
            ));
            let t = opened.tunnel;
            match t.reply.reply() {
                Reply::Succeeded => {}
                rep => return Err(Refusal::Server(rep)),
            }
            Ok(Reached {
                remote: t.stream,
                early: t.early,
                bound: t.reply.bound,
            })
        }
    }
}

/// A local client's bytes in, with the handshake deadline.
type Local = Wire<TcpStream>;

/// Why a local session ended before relaying. Each variant is answered on
/// the wire in exactly one way, chosen in [`Reject::answer`].
#[derive(Debug)]
enum Reject {
    /// The client went away or was too slow: nothing to answer.
    Gone(&'static str),
    /// Not SOCKS5 at all (an HTTP request, SOCKS4): closed, no answer.
    NotSocks5(SocksError),
    /// No acceptable method offered (or none at all).
    NoMethod,
    /// RFC 1929 username/password wrong.
    BadLogin,
    /// A malformed SOCKS5 request.
    BadRequest(SocksError),
    /// BIND, UDP ASSOCIATE or an unknown command.
    Command(u8),
    /// A malformed HTTP request head.
    BadHttp(HeadError),
    /// No or wrong `Proxy-Authorization`.
    ProxyAuth,
    /// A request target the proxy cannot serve.
    BadTarget(ProxyError),
    /// A forwarded request whose body has no single, unambiguous end
    /// (RFC 9112 section 6.3): refused before connecting anywhere.
    BadFraming(FramingError),
    /// A request to the proxy itself other than `GET /proxy.pac`.
    NotFound,
    /// Routing or the server refused the destination.
    Refused(Refusal),
}

impl Reject {
    /// The single place where a local failure becomes bytes on the wire.
    fn answer(&self, via: Kind) -> Vec<u8> {
        let reply = |rep| {
            let mut v = Vec::new();
            socks5::write_failure(&mut v, rep);
            v
        };
        let page = |code, reason, headers: &[(&str, &str)], body: &str| {
            let mut v = Vec::new();
            http::write_response(&mut v, code, reason, headers, body);
            v
        };
        const BAD: &str = "Bad Request";
        match self {
            Reject::Gone(_) | Reject::NotSocks5(_) => Vec::new(),
            Reject::NoMethod => {
                let mut v = Vec::new();
                socks5::write_choice(&mut v, socks5::METHOD_NONE_ACCEPTABLE);
                v
            }
            // RFC 1929 section 2: anything but success fails, and we close.
            Reject::BadLogin => {
                let mut v = Vec::new();
                socks5::write_user_pass_status(&mut v, socks5::USER_PASS_FAILURE);
                v
            }
            Reject::BadRequest(e) => reply(e.reply()),
            Reject::Command(_) => reply(Reply::CommandNotSupported),
            Reject::BadHttp(_) => page(400, BAD, &[], "malformed HTTP request\n"),
            Reject::ProxyAuth => page(
                407,
                "Proxy Authentication Required",
                &[("Proxy-Authenticate", "Basic realm=\"websocks\"")],
                "proxy authentication required\n",
            ),
            Reject::BadTarget(ProxyError::Scheme) => page(
                400,
                BAD,
                &[],
                "only http:// URLs are forwarded; use CONNECT for others\n",
            ),
            Reject::BadTarget(ProxyError::BadTarget) => page(400, BAD, &[], "bad request target\n"),
            Reject::BadFraming(FramingError::Both) => {
                page(400, BAD, &[], "both Content-Length and Transfer-Encoding\n")
            }
            Reject::BadFraming(FramingError::DuplicateLength) => {
                page(400, BAD, &[], "more than one Content-Length\n")
            }
            Reject::BadFraming(FramingError::BadLength) => {
                page(400, BAD, &[], "Content-Length is not a decimal number\n")
            }
            Reject::BadFraming(FramingError::BadCoding) => page(
                400,
                BAD,
                &[],
                "Transfer-Encoding must end in chunked, named once\n",
            ),
            Reject::BadFraming(FramingError::Http10Coding) => {
                page(400, BAD, &[], "Transfer-Encoding in an HTTP/1.0 request\n")
            }
            Reject::NotFound => page(404, "Not Found", &[], "this is a proxy; see /proxy.pac\n"),
            Reject::Refused(r) => match via {
                Kind::Socks5 => reply(r.reply()),
                _ => {
                    let (code, reason) = r.http();
                    page(code, reason, &[], &format!("{r}\n"))
                }
            },
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Gone(why) => f.write_str(why),
            Reject::NotSocks5(e) => write!(f, "not SOCKS5: {e:?}"),
            Reject::NoMethod => f.write_str("no acceptable SOCKS5 method offered"),
            Reject::BadLogin => f.write_str("SOCKS5 username/password refused"),
            Reject::BadRequest(e) => write!(f, "bad SOCKS5 request: {e:?}"),
            Reject::Command(c) => write!(f, "unsupported SOCKS5 command {c:#04x}"),
            Reject::BadHttp(e) => write!(f, "bad HTTP request: {e:?}"),
            Reject::ProxyAuth => f.write_str("proxy authentication required"),
            Reject::BadTarget(e) => write!(f, "bad proxy request: {e:?}"),
            Reject::BadFraming(e) => write!(f, "ambiguous request body framing: {e:?}"),
            Reject::NotFound => f.write_str("request to the proxy itself: 404"),
            Reject::Refused(r) => write!(f, "{r}"),
        }
    }
}

impl From<Gone> for Reject {
    fn from(g: Gone) -> Reject {
        Reject::Gone(g.why())
    }
}

/// Serves one accepted local connection to the end and logs one line; its
/// relay is cut when `stop` says so. `has` is what it inherited from its
/// listener.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    has: dial::Inherited,
    kind: Kind,
    st: Arc<State>,
    stop: Shutdown,
) {
    let start = Instant::now();
    dial::tune(&stream, peer, has);
    let mut local = Local::new(stream.clone(), start + st.cfg.timeouts.handshake);
    let kind = match kind {
        Kind::Mixed => match local.more().await {
            Ok(()) if local.buf.first() == Some(&socks5::VERSION) => Kind::Socks5,
            Ok(()) => Kind::Http,
            Err(e) => {
                metrics::AGENT.ended.at("rejected").inc();
                log::debug!("agent peer={peer} via=mixed end=rejected: {}", e.why());
                return;
            }
        },
        k => k,
    };
    let mut dest = None;
    let mut route = String::from("-");
    // The handshake's state is boxed and freed before the relay, so an idle
    // tunnel's task stays small.
    // A tunnel cut short resets the client (set in the relay): no
    // graceful FIN after it, or the cut would look like a clean end. One
    // that closed both ways has nothing left to say or hear.
    let mut over = false;
    let opened = match kind {
        Kind::Socks5 => Box::pin(socks_session(&mut local, &st, &mut dest, &mut route)).await,
        _ => Box::pin(http_session(&mut local, &st, &mut dest, &mut route)).await,
    };
    let via = if kind == Kind::Socks5 {
        "socks5"
    } else {
        "http"
    };
    let dst = dest
        .map(|d: Addr| d.to_string())
        .unwrap_or_else(|| "-".into());
    let action = route.split([':', ' ']).next().unwrap_or("-");
    if let "proxy" | "direct" | "reject" | "local" = action {
        metrics::AGENT.routes.at(action).inc();
    }
    match opened {
        Ok(Done::Pac(pac)) => {
            let secs = start.elapsed().as_secs_f64();
            log::info!(
                "agent peer={peer} via={via} dst={dst} route={route} up=0 down=0 duration={secs:.3}s end=local: served /proxy.pac"
            );
            let mut page = Vec::new();
            http::write_response(
                &mut page,
                200,
                "OK",
                &[("Content-Type", "application/x-ns-proxy-autoconfig")],
                &pac,
            );
            let _ = local.send(&page).await;
            metrics::AGENT.ended.at("closed").inc();
        }
        Ok(Done::Relay(r, to_remote, framing)) => {
            let limits = relay::Limits {
                idle: st.cfg.timeouts.idle,
                send: st.cfg.timeouts.send,
                // The agent's legs are its own host's programs and its
                // servers: kernel autotuning, for the WAN leg's sake.
                buffer: 0,
                // Its clients get the reply before the tunnel exists.
                hold: Duration::ZERO,
            };
            let tunnel = metrics::AGENT.tunnels.hold();
            let t = finish(&mut local, r, limits, to_remote, framing, &stop).await;
            drop(tunnel);
            metrics::AGENT.ended.at(t.end.label()).inc();
            over = t.end.truncated() || t.end == relay::End::Closed;
            let secs = start.elapsed().as_secs_f64();
            log::info!(
                "agent peer={peer} via={via} dst={dst} route={route} up={} down={} duration={secs:.3}s end={}",
                t.up,
                t.down,
                t.end
            );
        }
        Err(e) => {
            metrics::AGENT.ended.at("rejected").inc();
            let secs = start.elapsed().as_secs_f64();
            let end = match &e {
                Reject::Refused(_) => "refused",
                Reject::NotFound => "local",
                _ => "rejected",
            };
            log::info!(
                "agent peer={peer} via={via} dst={dst} route={route} up=0 down=0 duration={secs:.3}s end={end}: {e}"
            );
            let bytes = e.answer(kind);
            if !bytes.is_empty() {
                let _ = local.send(&bytes).await;
            }
        }
    }
    if over {
        return;
    }
    let mut stream = stream;
    Box::pin(close_gracefully(&mut stream, &[], Duration::from_secs(1))).await;
}

/// Relays after a successful open: destination bytes already here go to the
/// client, client bytes already here go to the destination.
async fn finish(
    local: &mut Local,
    r: Reached,
    limits: relay::Limits,
    mut to_remote: Vec<u8>,
    framing: Option<Framing>,
    stop: &Shutdown,
) -> relay::Totals {
    let Reached {
        mut remote, early, ..
    } = r;
    // A forwarded request's body may already be here, and with it the
    // start of a pipelined next request, which must not go to this origin:
    // the buffered bytes go through the same framing as the rest.
    let rest = match framing.map(Body::new) {
        None => {
            to_remote.append(&mut local.buf);
            None
        }
        Some(mut body) => {
            match body.feed(&local.buf) {
                Ok(Scan::More) => to_remote.extend_from_slice(&local.buf),
                Ok(Scan::End(n)) => to_remote.extend_from_slice(&local.buf[..n]),
                // A malformed chunk: the request does not reach the origin.
                Err(_) => {
                    return relay::Totals {
                        up: 0,
                        down: 0,
                        end: relay::End::ClientError(io::ErrorKind::InvalidData),
                    };
                }
            }
            Some(body)
        }
    };
    local.buf = Vec::new();
    let (early_down, early_up) = (early.len() as u64, to_remote.len() as u64);
    if (!early.is_empty() && local.stream.write_all(&early).await.is_err())
        || (!to_remote.is_empty() && remote.send_all(&to_remote).await.is_err())
    {
        relay::reset_on_close(&local.stream);
        relay::reset_on_close(remote.tcp());
        return relay::Totals {
            up: 0,
            down: 0,
            end: relay::End::DestError(io::ErrorKind::BrokenPipe),
        };
    }
    drop((early, to_remote));
    let meter = metrics::Meter {
        bytes: &metrics::AGENT.bytes,
        user: None,
    };
    meter.add(early_up, early_down);
    let mut t = relay::relay_up_to(
        Stream::Plain(local.stream.clone()),
        remote,
        limits,
        rest,
        stop,
        &meter,
    )
    .await;
    t.up += early_up;
    t.down += early_down;
    t
}

/// How a local session that did not fail ends.
enum Done {
    /// An open path to relay: the path, bytes for the destination, and for
    /// a forwarded request the framing of the body, beyond which nothing
    /// the client sends is relayed.
    Relay(Reached, Vec<u8>, Option<Framing>),
    /// `GET /proxy.pac`, answered here with this file.
    Pac(String),
}

/// A local session up to the open path (or the PAC file), or why not
/// (answered by the caller).
type Session = Result<Done, Reject>;

/// SOCKS5 (RFC 1928), with RFC 1929 when local users are configured.
async fn socks_session(
    local: &mut Local,
    st: &State,
    dest: &mut Option<Addr>,
    route: &mut String,
) -> Session {
    let greeting = local
        .next(socks5::parse_greeting, |e| match e {
            SocksError::NoMethods => Reject::NoMethod,
            e => Reject::NotSocks5(e),
        })
        .await?;
    let method = if st.cfg.users.is_some() {
        socks5::METHOD_USER_PASS
    } else {
        socks5::METHOD_NO_AUTH
    };
    if !greeting.methods.contains(&method) {
        return Err(Reject::NoMethod);
    }
    let mut out = Vec::new();
    socks5::write_choice(&mut out, method);
    if st.cfg.users.is_none() && matches!(socks5::parse_request(&local.buf), Ok(Parse::Done(..))) {
        // A client that sent its request with its greeting waits for the
        // reply, not the choice: the choice goes in the reply's write (or
        // the refusal's).
        local.owed = std::mem::take(&mut out);
    } else {
        local.send(&out).await?;
    }
    if let Some(users) = &st.cfg.users {
        let up = local
            .next(socks5::parse_user_pass, |_| Reject::BadLogin)
            .await?;
        if !users.accepts(&up.user, &up.pass) {
            return Err(Reject::BadLogin);
        }
        out.clear();
        socks5::write_user_pass_status(&mut out, socks5::USER_PASS_SUCCESS);
        local.send(&out).await?;
    }
    let req = local
        .next(socks5::parse_request, Reject::BadRequest)
        .await?;
    *dest = Some(req.addr.clone());
    if req.cmd != socks5::CMD_CONNECT {
        return Err(Reject::Command(req.cmd));
    }
    let reached = reach(st, &req.addr, route).await;
    // The answer gets its own time: reaching may take the connect and
    // reply timeouts.
    local.deadline = Instant::now() + st.cfg.timeouts.handshake;
    let r = reached.map_err(Reject::Refused)?;
    out.clear();
    socks5::write_reply(&mut out, Reply::Succeeded, &r.bound);
    local.send(&out).await?;
    Ok(Done::Relay(r, Vec::new(), None))
}

/// HTTP proxy: CONNECT tunnels, absolute-form forwarding, `/proxy.pac`.
async fn http_session(
    local: &mut Local,
    st: &State,
    dest: &mut Option<Addr>,
    route: &mut String,
) -> Session {
    let head = local.next(http::parse_request, Reject::BadHttp).await?;
    if let Some(users) = &st.cfg.users {
        let ok = head
            .one("Proxy-Authorization")
            .and_then(|v| auth::parse_basic(v).ok())
            .is_some_and(|c| users.accepts(c.user.as_bytes(), c.field.as_bytes()));
        if !ok {
            return Err(Reject::ProxyAuth);
        }
    }
    let (addr, forward) = match proxy::interpret(&head).map_err(Reject::BadTarget)? {
        ProxyRequest::Local { path } => {
            *route = "local".into();
            if path == "/proxy.pac" && head.first == "GET" {
                // The Host header is the client's text and becomes the
                // proxy the PAC names (quoted there as well): only a plain
                // host:port is used, else the address the client actually
                // connected to.
                let me = head
                    .one("Host")
                    .and_then(proxy::plain_authority)
                    .map(str::to_string)
                    .or_else(|| local.stream.local_addr().ok().map(|a| a.to_string()))
                    .unwrap_or_default();
                return Ok(Done::Pac(pac::file(&st.cfg, &me)));
            }
            return Err(Reject::NotFound);
        }
        ProxyRequest::Connect(a) => (a, None),
        ProxyRequest::Forward { addr, head: fwd } => {
            // One request per connection, forwarded up to its body's end;
            // framing the origin could read otherwise is refused before
            // anything is routed or dialled (RFC 9112 section 6.3).
            let framing = proxy::body_framing(&head).map_err(Reject::BadFraming)?;
            (addr, Some((fwd, framing)))
        }
    };
    *dest = Some(addr.clone());
    let reached = reach(st, &addr, route).await;
    local.deadline = Instant::now() + st.cfg.timeouts.handshake;
    let r = reached.map_err(Reject::Refused)?;
    let (to_remote, framing) = match forward {
        Some((h, framing)) => (h, Some(framing)),
        None => {
            local.send(proxy::CONNECT_ESTABLISHED).await?;
            (Vec::new(), None)
        }
    };
    Ok(Done::Relay(r, to_remote, framing))
}
