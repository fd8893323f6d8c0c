//! Our agent against the REFERENCE server: a scripted fake that plays the
//! server side of the six vproxy transcripts (`tests/data/*.txt`) byte for
//! byte, including its segmentation, and checks everything our agent sends
//! the way the reference server sees it.
//!
//! Each test runs the real `websocks agent` with one server pointing at the
//! fake, a local HTTP responder standing in for the transcripts' Python
//! `http.server`, and a SOCKS5 client (std socket) on the agent's listener.
//! The agent's start-up health check (an upgrade closed right after the 101)
//! is expected and recorded as an idle connection.

mod common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Daemon, PASS, USER, now_ms};
use websocks::proto::socks5::Addr;
use websocks::proto::{Parse, auth, http, socks5, ws};

/// The 10-byte frame both sides send (transcripts, blocks 3/4).
const FRAME: [u8; 10] = [0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
/// The PONG keepalive of pooled connections.
const PONG: [u8; 2] = [0x8a, 0x00];
/// How long the fake waits after the request before its 101, checking that
/// nothing was pipelined (the reference server would lose those bytes).
const QUIET: Duration = Duration::from_millis(200);
/// The transcripts' 58-byte page.
const PAGE: &[u8] = b"<html><body>hello from vproxy-ref test page</body></html>\n";
/// The transcripts' response head from `python3 -m http.server` (185 bytes).
const PAGE_HEAD: &[u8] = b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.7\r\n\
Date: Tue, 24 Nov 2026 21:05:41 GMT\r\nContent-type: text/html\r\nContent-Length: 58\r\n\
Last-Modified: Tue, 24 Nov 2026 21:03:15 GMT\r\n\r\n";
/// A server-speaks-first destination's greeting.
const BANNER: &[u8] = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n";

// ---------------------------------------------------------------------------
// The fake reference server.

/// How the fake answers after a good 101 (segmentation of its bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    /// As the transcripts: frame, `05 00`, reply, each its own write.
    Transcript,
    /// Frame and `05 00` in one write.
    Joined,
    /// Frame, a pause, then `05 00`.
    FramePause,
    /// The reply in two writes with a pause between.
    ReplySplit,
    /// The reply and the destination's first bytes in one write.
    ReplyWithBanner,
}

/// What the fake does with the next connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Good(Seg),
    /// `401` with vproxy's headers; the connection stays open.
    Unauthorized,
    /// A 101 whose accept belongs to another key.
    WrongAccept,
    /// A 101 without `Sec-WebSocket-Protocol`.
    NoProtocol,
    /// A 101 with `Sec-WebSocket-Protocol: socks5` twice.
    DupProtocol,
    /// A good 101, then the connection is closed.
    CloseAfter101,
    /// A good 101, frame and `05 00`, then reply `05 05`.
    SocksRefused,
    /// A good 101, frame, `05 00` and a success reply, then the connection
    /// is closed: what vproxy's server does when the destination refuses,
    /// since it replies before it connects.
    SuccessThenClose,
}

/// What happened on one connection, as the fake saw it.
#[derive(Debug, Clone)]
enum Outcome {
    /// A 101, then the agent closed (health check) or stayed silent (pool);
    /// with the PONG times after the 101.
    Idle { pongs: Vec<Duration> },
    /// A full tunnel.
    Tunnel {
        dest: Addr,
        pongs: Vec<Duration>,
        up: u64,
        down: u64,
    },
    /// A refusal played; what the agent sent after our answer.
    Refused { mode: Mode, after: Vec<u8> },
    /// The agent broke a rule.
    Error(String),
}

struct Fake {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    upgrades: Arc<AtomicUsize>,
}

/// What a connection handler needs.
#[derive(Clone)]
struct Ctx {
    path: &'static str,
    host: String,
    keys: Arc<Mutex<HashSet<String>>>,
    upgrades: Arc<AtomicUsize>,
}

impl Fake {
    fn start(path: &'static str) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Good(Seg::Transcript)));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let upgrades = Arc::new(AtomicUsize::new(0));
        let ctx = Ctx {
            path,
            host: format!("127.0.0.1:{}", addr.port()),
            keys: Arc::new(Mutex::new(HashSet::new())),
            upgrades: upgrades.clone(),
        };
        let (m, o) = (mode.clone(), outcomes.clone());
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let mode = *m.lock().unwrap();
                let (o, ctx) = (o.clone(), ctx.clone());
                thread::spawn(move || {
                    let r = handle(s, mode, &ctx).unwrap_or_else(Outcome::Error);
                    o.lock().unwrap().push(r);
                });
            }
        });
        Fake {
            addr,
            mode,
            outcomes,
            upgrades,
        }
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Waits up to 10 s for an outcome matching `f`; fails on any error.
    fn wait(&self, what: &str, f: impl Fn(&Outcome) -> bool) -> Outcome {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.outcomes();
            self.assert_no_errors_in(&all);
            if let Some(o) = all.iter().find(|o| f(o)) {
                return o.clone();
            }
            assert!(Instant::now() < end, "no {what} outcome; have {all:#?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the n-th tunnel (1-based) and returns it.
    fn wait_tunnels(&self, n: usize) -> Outcome {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.outcomes();
            self.assert_no_errors_in(&all);
            let t: Vec<&Outcome> = all
                .iter()
                .filter(|o| matches!(o, Outcome::Tunnel { .. }))
                .collect();
            if t.len() >= n {
                return t[n - 1].clone();
            }
            assert!(Instant::now() < end, "no tunnel #{n}; have {all:#?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_no_errors_in(&self, all: &[Outcome]) {
        let errs: Vec<&String> = all
            .iter()
            .filter_map(|o| match o {
                Outcome::Error(e) => Some(e),
                _ => None,
            })
            .collect();
        assert!(errs.is_empty(), "the fake reference server saw: {errs:#?}");
    }

    fn assert_no_errors(&self) {
        self.assert_no_errors_in(&self.outcomes());
    }

    /// Waits for the start-up health check (a 101, then the agent closes).
    fn wait_health(&self) {
        match self.wait("health-check (idle)", |o| matches!(o, Outcome::Idle { .. })) {
            Outcome::Idle { pongs } => assert!(pongs.is_empty(), "health check sent PONGs"),
            o => unreachable!("{o:?}"),
        }
    }
}

/// Reads the request head; returns it and any bytes behind it.
fn read_request(s: &mut TcpStream) -> Result<(http::Head, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match http::parse_request(&buf) {
            Ok(Parse::Done(h, used)) => return Ok((h, buf[used..].to_vec())),
            Ok(Parse::Incomplete) => {}
            Err(e) => return Err(format!("bad upgrade request {e:?}: {buf:02x?}")),
        }
        match s.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err("agent connected and closed silently".into()),
            Ok(0) => return Err(format!("EOF inside the request: {buf:02x?}")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
}

/// The checks vproxy's server makes, and a few it should: returns the key.
fn check_request(h: &http::Head, ctx: &Ctx) -> Result<String, String> {
    let fail = |m: String| Err(format!("{m}; request {h:#?}"));
    if (h.first.as_str(), h.second.as_str(), h.third.as_str()) != ("GET", ctx.path, "HTTP/1.1") {
        return fail(format!("start line is not `GET {} HTTP/1.1`", ctx.path));
    }
    let want = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "socks5"),
        ("Host", ctx.host.as_str()),
    ];
    for (name, value) in want {
        if h.count(name) != 1 || h.one(name) != Some(value) {
            return fail(format!("want exactly one `{name}: {value}`"));
        }
    }
    let Some(key) = h.one("Sec-WebSocket-Key") else {
        return fail("no single Sec-WebSocket-Key".into());
    };
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return fail(format!(
                "Sec-WebSocket-Key `{key}` is not base64 of 16 bytes"
            ));
        }
    }
    if !ctx.keys.lock().unwrap().insert(key.to_string()) {
        return fail(format!("Sec-WebSocket-Key `{key}` reused (must be random)"));
    }
    let Some(authz) = h.one("Authorization") else {
        return fail("no single Authorization".into());
    };
    if !authz.starts_with("Basic ") {
        return fail("Authorization is not `Basic ...`".into());
    }
    let cred = auth::parse_basic(authz).map_err(|e| format!("Authorization {e:?}"))?;
    let stored = auth::stored_digest(PASS.as_bytes());
    if cred.user != USER || !auth::verify(&cred.field, &stored, now_ms()) {
        return fail(format!("credential {cred:?} does not verify for {USER}"));
    }
    Ok(key.to_string())
}

/// vproxy's 101, header spelling included.
fn switching(accept: &str, protocols: &[&str]) -> Vec<u8> {
    let mut v = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-Websocket-Accept: {accept}\r\n"
    );
    for p in protocols {
        v.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    v.push_str("\r\n");
    v.into_bytes()
}

/// vproxy's 401 (server_probes.json `auth_*`): it keeps the connection open.
fn unauthorized() -> Vec<u8> {
    let body = "<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n\
                <center><h1>401 Authorization Required</h1></center>\r\n\
                <hr><center>nginx/1.14.2</center>\r\n</body>\r\n</html>\r\n";
    format!(
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\nServer: nginx/1.14.2\r\n\
         Date: Tue Nov 24 21:08:11 UTC 2026\r\nContent-Type: text/html\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// Reads until EOF (a reset counts) or `limit`; returns the bytes.
fn drain(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut v = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(v),
            Ok(n) => v.extend_from_slice(&chunk[..n]),
            Err(e) if is_reset(&e) => return Ok(v),
            Err(e) => {
                return Err(format!(
                    "agent did not close within {limit:?} ({e}); sent {v:02x?}"
                ));
            }
        }
    }
}

#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn handle(mut s: TcpStream, mode: Mode, ctx: &Ctx) -> Result<Outcome, String> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    let (head, rest) = read_request(&mut s)?;
    if !rest.is_empty() {
        return Err(format!(
            "bytes pipelined behind the upgrade request (lost by vproxy): {rest:02x?}"
        ));
    }
    let key = check_request(&head, ctx)?;
    // Nothing may follow before the 101.
    thread::sleep(QUIET);
    s.set_nonblocking(true).unwrap();
    let mut probe = [0u8; 64];
    let early = s.read(&mut probe);
    s.set_nonblocking(false).unwrap();
    match early {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok(0) => return Err("agent closed before the 101".into()),
        Ok(n) => {
            return Err(format!(
                "agent sent {:02x?} before the 101 (lost by vproxy)",
                &probe[..n]
            ));
        }
        Err(e) => return Err(format!("probing before the 101: {e}")),
    }
    let accept = ws::accept(&key);
    let answer = match mode {
        Mode::Unauthorized => Some(unauthorized()),
        // The accept of vproxy's fixed key: right value, wrong key.
        Mode::WrongAccept => Some(switching(
            &ws::accept("dGhlIHNhbXBsZSBub25jZQ=="),
            &["socks5"],
        )),
        Mode::NoProtocol => Some(switching(&accept, &[])),
        Mode::DupProtocol => Some(switching(&accept, &["socks5", "socks5"])),
        _ => None,
    };
    if let Some(a) = answer {
        s.write_all(&a)
            .map_err(|e| format!("writing refusal: {e}"))?;
        // Like vproxy, keep the connection open: the agent must give up.
        let after = drain(&mut s, Duration::from_secs(5))?;
        return Ok(Outcome::Refused { mode, after });
    }
    s.write_all(&switching(&accept, &["socks5"]))
        .map_err(|e| format!("writing 101: {e}"))?;
    let t101 = Instant::now();
    ctx.upgrades.fetch_add(1, Ordering::SeqCst);
    if mode == Mode::CloseAfter101 {
        let _ = s.shutdown(Shutdown::Both);
        return Ok(Outcome::Refused {
            mode,
            after: Vec::new(),
        });
    }
    // PONGs (pooled), then frame + greeting + CONNECT in one write.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut pongs = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while buf.starts_with(&PONG) {
            pongs.push(t101.elapsed());
            buf.drain(..2);
        }
        if !buf.is_empty() && buf != [PONG[0]] {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) => return Ok(Outcome::Idle { pongs }),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_reset(&e) => return Ok(Outcome::Idle { pongs }),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Outcome::Idle { pongs });
            }
            Err(e) => return Err(format!("reading after the 101: {e}")),
        }
    }
    if buf.len() < 13 || buf[..10] != FRAME || buf[10..13] != [5, 1, 0] {
        return Err(format!(
            "after the 101 (and {} PONGs) want frame {FRAME:02x?} + greeting 05 01 00 + CONNECT \
             in one write; first read: {buf:02x?}",
            pongs.len()
        ));
    }
    let (req, used) = match socks5::parse_request(&buf[13..]) {
        Ok(Parse::Done(r, used)) => (r, used),
        other => {
            return Err(format!(
                "no whole CONNECT in the write with the frame ({other:?}): {buf:02x?}"
            ));
        }
    };
    if req.cmd != socks5::CMD_CONNECT || 13 + used != buf.len() {
        return Err(format!(
            "want exactly one CONNECT after the greeting: {buf:02x?}"
        ));
    }
    let Mode::Good(seg) = mode else {
        // SocksRefused: vproxy's frame, method, then the failure reply;
        // SuccessThenClose: the success it sends before connecting.
        s.write_all(&FRAME).map_err(|e| e.to_string())?;
        s.write_all(&[5, 0]).map_err(|e| e.to_string())?;
        let port = req.addr.port().to_be_bytes();
        let rep = if mode == Mode::SuccessThenClose { 0 } else { 5 };
        s.write_all(&[5, rep, 0, 1, 0, 0, 0, 0, port[0], port[1]])
            .map_err(|e| e.to_string())?;
        if mode == Mode::SuccessThenClose {
            let _ = s.shutdown(Shutdown::Both);
            return Ok(Outcome::Refused {
                mode,
                after: Vec::new(),
            });
        }
        let _ = s.shutdown(Shutdown::Write);
        let after = drain(&mut s, Duration::from_secs(5))?;
        return Ok(Outcome::Refused { mode, after });
    };
    let w = |s: &mut TcpStream, b: &[u8]| s.write_all(b).map_err(|e| format!("write: {e}"));
    match seg {
        Seg::Joined => w(&mut s, &[&FRAME[..], &[5, 0]].concat())?,
        Seg::FramePause => {
            w(&mut s, &FRAME)?;
            thread::sleep(Duration::from_millis(150));
            w(&mut s, &[5, 0])?;
        }
        _ => {
            w(&mut s, &FRAME)?;
            w(&mut s, &[5, 0])?;
        }
    }
    let mut dest = connect_dest(&req.addr)?;
    let port = req.addr.port().to_be_bytes();
    let reply = [5, 0, 0, 1, 0, 0, 0, 0, port[0], port[1]];
    let mut down = 0u64;
    match seg {
        Seg::ReplySplit => {
            w(&mut s, &reply[..5])?;
            thread::sleep(Duration::from_millis(150));
            w(&mut s, &reply[5..])?;
        }
        Seg::ReplyWithBanner => {
            let n = dest
                .read(&mut chunk)
                .map_err(|e| format!("reading the banner: {e}"))?;
            w(&mut s, &[&reply[..], &chunk[..n]].concat())?;
            down += n as u64;
        }
        _ => w(&mut s, &reply)?,
    }
    // Relay both ways until both EOFs.
    let (mut s2, mut d2) = (s.try_clone().unwrap(), dest.try_clone().unwrap());
    let upward = thread::spawn(move || {
        let n = std::io::copy(&mut s2, &mut d2);
        let _ = d2.shutdown(Shutdown::Write);
        n
    });
    let n = std::io::copy(&mut dest, &mut s).map_err(|e| format!("relay down: {e}"))?;
    let _ = s.shutdown(Shutdown::Write);
    down += n;
    let up = upward
        .join()
        .unwrap()
        .map_err(|e| format!("relay up: {e}"))?;
    Ok(Outcome::Tunnel {
        dest: req.addr,
        pongs,
        up,
        down,
    })
}

/// Connects to a requested destination (names resolved like vproxy does).
fn connect_dest(a: &Addr) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match a {
        Addr::Ip(sa) => vec![*sa],
        Addr::Domain(name, port) => (String::from_utf8_lossy(name).as_ref(), *port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {a}: {e}"))?
            .collect(),
    };
    for sa in addrs {
        if let Ok(d) = TcpStream::connect_timeout(&sa, Duration::from_secs(2)) {
            d.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            d.set_nodelay(true).unwrap();
            return Ok(d);
        }
    }
    Err(format!("cannot connect to {a}"))
}

// ---------------------------------------------------------------------------
// Destinations and the local client.

/// The transcripts' HTTP server: one request, the 185-byte head and the
/// 58-byte page in two writes, then EOF. Each request received goes to `rx`.
fn http_responder() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let a = common::serve_each(move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = Vec::new();
        let mut chunk = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = tx.lock().unwrap().send(req);
        let _ = s.write_all(PAGE_HEAD);
        let _ = s.write_all(PAGE);
        let _ = s.shutdown(Shutdown::Write);
        while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
    });
    (a, rx)
}

/// A server-speaks-first destination: banner, then one line back as
/// `got: LINE`, then EOF.
fn banner_server() -> SocketAddr {
    common::serve_each(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(BANNER);
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") {
            match s.read(&mut b) {
                Ok(1) => line.push(b[0]),
                _ => return,
            }
        }
        let _ = s.write_all(&[b"got: ", &line[..]].concat());
        let _ = s.shutdown(Shutdown::Write);
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    })
}

/// SOCKS5 greeting and CONNECT through the agent, like curl; returns the
/// whole reply and the stream.
fn socks_connect(agent: SocketAddr, dest: &Addr) -> (Vec<u8>, TcpStream) {
    let mut s = common::connect(agent);
    s.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).unwrap();
    assert_eq!(choice, [5, 0], "agent's method choice");
    let mut req = Vec::new();
    socks5::write_connect(&mut req, dest);
    s.write_all(&req).unwrap();
    let mut reply = vec![0u8; 5];
    s.read_exact(&mut reply)
        .unwrap_or_else(|e| panic!("reading the agent's reply: {e}"));
    let rest = match reply[3] {
        socks5::ATYP_IPV4 => 3 + 2,
        socks5::ATYP_IPV6 => 15 + 2,
        socks5::ATYP_DOMAIN => reply[4] as usize + 2,
        t => panic!("agent's reply has ATYP {t}: {reply:02x?}"),
    };
    let mut more = vec![0u8; rest];
    s.read_exact(&mut more).unwrap();
    reply.extend_from_slice(&more);
    (reply, s)
}

fn dest_addr(port: u16, by_name: bool) -> Addr {
    if by_name {
        Addr::Domain(b"localhost".to_vec(), port)
    } else {
        Addr::Ip(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

/// curl's request for the page (transcript block 7).
fn curl_request(host: &str, port: u16) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

/// The transcripts' exchange through the agent; asserts every byte.
fn fetch_page(
    agent: SocketAddr,
    responder: SocketAddr,
    by_name: bool,
    rx: &mpsc::Receiver<Vec<u8>>,
) {
    let port = responder.port();
    let (reply, mut s) = socks_connect(agent, &dest_addr(port, by_name));
    let p = port.to_be_bytes();
    assert_eq!(
        reply,
        [5, 0, 0, 1, 0, 0, 0, 0, p[0], p[1]],
        "agent's SOCKS5 reply (the server's, passed on)"
    );
    let req = curl_request(if by_name { "localhost" } else { "127.0.0.1" }, port);
    s.write_all(&req).unwrap();
    let got = common::read_to_end(&mut s);
    assert_eq!(
        got,
        [PAGE_HEAD, PAGE].concat(),
        "page through the agent:\n{}",
        String::from_utf8_lossy(&got)
    );
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen, req, "request as the destination saw it");
}

// ---------------------------------------------------------------------------
// Set-up.

fn agent_yaml(server: SocketAddr, path: &str, pool: &str) -> String {
    format!(
        "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers: [{{name: ref, \
         url: \"ws://127.0.0.1:{}{path}\", user: {USER}, password: {PASS}}}]\n  pool: {pool}\n  \
         health: {{interval: 1h, timeout: 5s}}\n  timeouts: {{connect: 5s}}\n",
        server.port()
    )
}

fn start(path: &'static str, pool: &str) -> (Fake, Daemon) {
    let fake = Fake::start(path);
    let d = Daemon::start(&["agent"], &agent_yaml(fake.addr, path, pool), 1);
    (fake, d)
}

/// Waits until exactly `n` tunnels to `port` are complete.
fn wait_tunnels_to(fake: &Fake, port: u16, n: usize) {
    let count = || {
        fake.outcomes()
            .iter()
            .filter(|o| matches!(o, Outcome::Tunnel { dest, .. } if dest.port() == port))
            .count()
    };
    let end = Instant::now() + Duration::from_secs(10);
    while count() < n {
        assert!(
            Instant::now() < end,
            "want {n} tunnels: {:#?}",
            fake.outcomes()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count(), n, "{:#?}", fake.outcomes());
}

/// One on-demand transcript: `connect-ipv4.txt` / `connect-domain.txt`.
fn on_demand(by_name: bool, seg: Seg) {
    let (fake, d) = start("/", "{size: 0}");
    fake.wait_health();
    fake.set(Mode::Good(seg));
    let (responder, rx) = http_responder();
    fetch_page(d.addr(), responder, by_name, &rx);
    match fake.wait_tunnels(1) {
        Outcome::Tunnel {
            dest,
            pongs,
            up,
            down,
        } => {
            assert_eq!(dest, dest_addr(responder.port(), by_name), "CONNECT target");
            assert!(
                pongs.is_empty(),
                "on-demand connection sent PONGs: {pongs:?}"
            );
            let host = if by_name { "localhost" } else { "127.0.0.1" };
            assert_eq!(up, curl_request(host, responder.port()).len() as u64);
            assert_eq!(down, (PAGE_HEAD.len() + PAGE.len()) as u64);
        }
        o => unreachable!("{o:?}"),
    }
    d.wait_log(&["via=socks5", "route=proxy:default server=ref ", "end="]);
    fake.assert_no_errors();
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn page_constants_match_the_transcripts() {
    assert_eq!(PAGE.len(), 58);
    assert_eq!(PAGE_HEAD.len(), 185);
    assert_eq!(curl_request("127.0.0.1", 18000).len(), 79);
    assert_eq!(curl_request("localhost", 18000).len(), 79);
    assert_eq!(FRAME, ws::FRAME);
    assert_eq!(PONG, ws::PONG);
    assert_eq!(
        switching("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", &["socks5"]).len(),
        161,
        "vproxy's 101 (transcript block 2)"
    );
}

/// `connect-ipv4.txt`: on demand, ATYP 1.
#[test]
fn connect_ipv4_on_demand() {
    on_demand(false, Seg::Transcript);
}

/// `connect-domain.txt`: on demand, ATYP 3 `localhost`.
#[test]
fn connect_domain_on_demand() {
    on_demand(true, Seg::Transcript);
}

/// The server's frame and `05 00` in one write.
#[test]
fn frame_and_method_in_one_write() {
    on_demand(false, Seg::Joined);
}

/// The server's frame, a pause, then `05 00`.
#[test]
fn frame_and_method_with_a_pause() {
    on_demand(true, Seg::FramePause);
}

/// The reply split in two writes with a pause.
#[test]
fn reply_in_two_writes() {
    on_demand(false, Seg::ReplySplit);
}

/// `pooled-connect-*.txt`: upgrade at pool fill, PONGs at the keepalive
/// interval, then frame + SOCKS5 in one write when a client comes.
fn pooled(by_name: bool) {
    let (fake, d) = start("/ws/socks", "{size: 1, keepalive: 300ms}");
    // Health check + the pooled connection.
    let end = Instant::now() + Duration::from_secs(10);
    while fake.upgrades.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < end,
            "pool never filled: {:#?}",
            fake.outcomes()
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(1000));
    let (responder, rx) = http_responder();
    fetch_page(d.addr(), responder, by_name, &rx);
    match fake.wait_tunnels(1) {
        Outcome::Tunnel { dest, pongs, .. } => {
            assert_eq!(dest, dest_addr(responder.port(), by_name));
            assert!(
                !pongs.is_empty(),
                "no PONG before the frame on a pooled connection"
            );
            // Roughly every 300 ms: not a flood, not missing.
            let mut prev = Duration::ZERO;
            for p in &pongs {
                let gap = *p - prev;
                assert!(
                    gap >= Duration::from_millis(250) && gap <= Duration::from_millis(1000),
                    "PONG gaps not ~300 ms: {pongs:?}"
                );
                prev = *p;
            }
        }
        o => unreachable!("{o:?}"),
    }
    d.wait_log(&["via=socks5", "server=ref(pooled)"]);
    // The pool refills and serves again.
    let end = Instant::now() + Duration::from_secs(10);
    while fake.upgrades.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < end, "pool never refilled");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(100));
    fetch_page(d.addr(), responder, !by_name, &rx);
    wait_tunnels_to(&fake, responder.port(), 2);
    fake.assert_no_errors();
}

#[test]
fn pooled_connect_ipv4() {
    pooled(false);
}

#[test]
fn pooled_connect_domain() {
    pooled(true);
}

/// The reply and the destination's first bytes in one segment: the agent
/// must pass the banner on, not drop it with the handshake bytes.
#[test]
fn reply_followed_by_banner_in_one_write() {
    let (fake, d) = start("/", "{size: 0}");
    fake.wait_health();
    fake.set(Mode::Good(Seg::ReplyWithBanner));
    let dest = banner_server();
    let (reply, mut s) = socks_connect(d.addr(), &dest_addr(dest.port(), false));
    assert_eq!(reply[..2], [5, 0], "reply {reply:02x?}");
    let mut banner = vec![0u8; BANNER.len()];
    s.read_exact(&mut banner)
        .unwrap_or_else(|e| panic!("banner lost by the agent: {e}"));
    assert_eq!(banner, BANNER);
    s.write_all(b"SSH-2.0-client\r\n").unwrap();
    assert_eq!(common::read_to_end(&mut s), b"got: SSH-2.0-client\r\n");
    drop(s);
    match fake.wait_tunnels(1) {
        Outcome::Tunnel { up, down, .. } => {
            assert_eq!(up, 16);
            assert_eq!(down, BANNER.len() as u64 + 21);
        }
        o => unreachable!("{o:?}"),
    }
    fake.assert_no_errors();
}

/// One refusal, then a good request on the same agent.
fn refusal(mode: Mode, want_rep: u8) {
    let (fake, d) = start("/", "{size: 0}");
    fake.wait_health();
    fake.set(mode);
    let (responder, rx) = http_responder();
    let t = Instant::now();
    let (reply, mut s) = socks_connect(d.addr(), &dest_addr(responder.port(), false));
    assert_eq!(
        reply[..2],
        [5, want_rep],
        "{mode:?}: the client must get {want_rep:#04x}; reply {reply:02x?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "{mode:?}: refusal took {:?}",
        t.elapsed()
    );
    assert_eq!(
        common::read_to_end(&mut s),
        b"",
        "{mode:?}: data after a refusal"
    );
    match fake.wait("refused", |o| matches!(o, Outcome::Refused { .. })) {
        Outcome::Refused { mode: m, after } => {
            assert_eq!(m, mode);
            if mode != Mode::SocksRefused {
                assert!(
                    after.is_empty(),
                    "{mode:?}: agent kept talking after a bad upgrade answer: {after:02x?}"
                );
            }
        }
        o => unreachable!("{o:?}"),
    }
    wait_tunnels_to(&fake, responder.port(), 0);
    fake.set(Mode::Good(Seg::Transcript));
    fetch_page(d.addr(), responder, false, &rx);
    wait_tunnels_to(&fake, responder.port(), 1);
    fake.assert_no_errors();
}

#[test]
fn refused_401_gives_general_failure() {
    refusal(Mode::Unauthorized, socks5::REP_GENERAL_FAILURE);
}

#[test]
fn wrong_accept_gives_general_failure() {
    refusal(Mode::WrongAccept, socks5::REP_GENERAL_FAILURE);
}

#[test]
fn missing_protocol_gives_general_failure() {
    refusal(Mode::NoProtocol, socks5::REP_GENERAL_FAILURE);
}

#[test]
fn duplicated_protocol_gives_general_failure() {
    refusal(Mode::DupProtocol, socks5::REP_GENERAL_FAILURE);
}

#[test]
fn close_after_101_gives_general_failure() {
    refusal(Mode::CloseAfter101, socks5::REP_GENERAL_FAILURE);
}

#[test]
fn server_reply_05_reaches_the_client() {
    refusal(Mode::SocksRefused, socks5::REP_CONNECTION_REFUSED);
}

/// vproxy's server answers success before it connects, so a destination
/// that refuses shows up as a success followed by a close. Our agent
/// passes on what the server said, then the close: the SOCKS5 client gets
/// `05 00` and EOF, and the log line says `up=0 down=0 end=closed`. The
/// agent serves the next request as usual.
#[test]
fn reference_success_then_close_reaches_the_client_as_a_close() {
    let (fake, d) = start("/", "{size: 0}");
    fake.wait_health();
    fake.set(Mode::SuccessThenClose);
    let refused = common::closed_port();
    let (reply, mut s) = socks_connect(d.addr(), &dest_addr(refused.port(), false));
    assert_eq!(reply[..2], [5, 0], "reply {reply:02x?}");
    assert_eq!(common::read_to_end(&mut s), b"");
    drop(s);
    let line = d.wait_log(&["via=socks5", &format!(":{}", refused.port())]);
    assert!(
        line.contains("up=0 down=0") && line.contains("end=closed"),
        "{line}"
    );
    match fake.wait("refused", |o| matches!(o, Outcome::Refused { .. })) {
        Outcome::Refused { mode, .. } => assert_eq!(mode, Mode::SuccessThenClose),
        o => unreachable!("{o:?}"),
    }
    let (responder, rx) = http_responder();
    fake.set(Mode::Good(Seg::Transcript));
    fetch_page(d.addr(), responder, false, &rx);
    fake.assert_no_errors();
}
