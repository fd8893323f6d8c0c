//! Helpers of the agent tests (`agent_*.rs`, `curl.rs`): destinations,
//! agent configurations, local SOCKS5 and HTTP clients, and finding a
//! connection's line in the agent's log.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use websocks::proto::socks5::Addr;
use websocks::proto::{Parse, http};

/// Can a socket be bound on `::1`?
pub fn v6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// Like `serve_each`, on any bind address (`127.0.0.1:0`, `[::1]:0`).
pub fn serve_on(bind: &str, f: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    serve_listener(TcpListener::bind(bind).unwrap(), IO_TIMEOUT, f)
}

/// A destination that reads to EOF first, then sends everything back and
/// closes: getting the bytes back proves the client's FIN went through and
/// that data still flows the other way after it (half-close).
pub fn sink_then_echo(bind: &str) -> SocketAddr {
    serve_on(bind, |mut s| {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).is_ok() {
            let _ = s.write_all(&all);
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// An HTTP origin: reads one request (head and `Content-Length` body),
/// records its raw bytes, answers `200` with `path=...\n` + the body, closes.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

pub fn origin(bind: &str) -> Origin {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let addr = serve_on(bind, move |mut s| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head, used) = loop {
            if let Ok(Parse::Done(h, used)) = http::parse_request(&buf) {
                break (h, used);
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let len: usize = head
            .one("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < used + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        seen2.lock().unwrap().push(buf.clone());
        let mut body = format!("path={}\n", head.second).into_bytes();
        body.extend_from_slice(&buf[used..]);
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\nX-Origin: yes\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        let _ = s.write_all(&out);
        let _ = s.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    Origin { addr, seen }
}

pub fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

/// The value of `key=` (e.g. `up=`) in a log line, as a number.
pub fn num(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} number in {line:?}"))
}

/// Every client connection made here: (local address, address dialed).
static DIALED: Mutex<Vec<(SocketAddr, SocketAddr)>> = Mutex::new(Vec::new());

/// `connect`, remembering the connection so `line_of` can tell it from an
/// earlier one that happened to use the same local port.
pub fn dial(addr: SocketAddr) -> TcpStream {
    let s = connect(addr);
    DIALED.lock().unwrap().push((s.local_addr().unwrap(), addr));
    s
}

/// The agent's log line for the latest connection from `peer`: waits until
/// `d` has logged as many lines for `peer` as connections were dialed from
/// it to `d`, and returns the last.
pub fn line_of(d: &Daemon, peer: SocketAddr) -> String {
    let want = DIALED
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, to)| *p == peer && d.addrs.contains(to))
        .count()
        .max(1);
    let key = format!("peer={peer} ");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        {
            let log = d.log.lock().unwrap();
            let lines: Vec<&String> = log
                .iter()
                .filter(|l| l.contains("agent ") && l.contains(&key) && l.contains(" end="))
                .collect();
            if lines.len() >= want {
                return lines[lines.len() - 1].clone();
            }
            assert!(
                Instant::now() < end,
                "no log line for connection {want} from {peer}; log: {:#?}",
                *log
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for `cond`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// One `servers:` entry.
pub fn server_entry(name: &str, addr: SocketAddr, password: &str) -> String {
    format!("    - {{name: {name}, url: \"ws://{addr}/\", user: {USER}, password: {password}}}\n")
}

/// Listen addresses for the socks5, http and mixed listeners. The agent's
/// config check refuses the same `127.0.0.1:0` twice (see
/// `listeners_may_share_port_zero`), so they get distinct loopback
/// addresses, or, where only 127.0.0.1 exists, ports picked here.
pub fn listen_addrs() -> [String; 3] {
    let spare =
        TcpListener::bind("127.0.0.2:0").is_ok() && TcpListener::bind("127.0.0.3:0").is_ok();
    let picked = || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    if spare {
        ["127.0.0.1:0", "127.0.0.2:0", "127.0.0.3:0"].map(String::from)
    } else {
        ["127.0.0.1:0".to_string(), picked(), picked()]
    }
}

/// Socks5 + http + mixed listeners (3 "listening on" lines, in that order).
pub fn all_listeners() -> String {
    let [s, h, m] = listen_addrs();
    format!(
        "  socks5: {{listen: [\"{s}\"]}}\n  http: {{listen: [\"{h}\"]}}\n  mixed: {{listen: [\"{m}\"]}}\n"
    )
}

pub fn agent(yaml_body: &str, listeners: usize) -> Daemon {
    Daemon::start(
        &["agent"],
        &format!("log_level: debug\nagent:\n{yaml_body}"),
        listeners,
    )
}

/// An agent with every listener and one server `s`.
pub fn simple_agent(server: SocketAddr, extra: &str) -> Daemon {
    agent(
        &format!(
            "{}  servers:\n{}{extra}",
            all_listeners(),
            server_entry("s", server, PASS)
        ),
        3,
    )
}

/// No-auth greeting and CONNECT to `dest` (with `early` data in the same
/// write); returns the reply code, the stream and any bytes that came
/// right behind the reply.
pub fn socks_open_rest(proxy: SocketAddr, dest: &Addr, early: &[u8]) -> (u8, TcpStream, Vec<u8>) {
    let mut s = dial(proxy);
    let mut out = socks_request(dest);
    out.extend_from_slice(early);
    s.write_all(&out).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), 2);
    assert_eq!(got, [5, 0], "method choice");
    let (reply, rest) = read_socks_reply(&mut s, Vec::new());
    (reply.rep, s, rest)
}

/// Like `socks_open_rest` for destinations that do not speak first.
pub fn socks_open(proxy: SocketAddr, dest: &Addr, early: &[u8]) -> (u8, TcpStream) {
    let (rep, s, rest) = socks_open_rest(proxy, dest, early);
    assert!(
        rest.is_empty(),
        "bytes before any data was asked: {rest:02x?}"
    );
    (rep, s)
}

/// A full SOCKS5 echo round trip through `proxy` to a fresh destination;
/// returns the agent-side peer address of the client.
pub fn socks_echo_ok(proxy: SocketAddr, payload: &[u8]) -> SocketAddr {
    let dest = sink_then_echo("127.0.0.1:0");
    let (rep, mut s) = socks_open(proxy, &Addr::Ip(dest), b"");
    assert_eq!(rep, 0, "SOCKS5 reply");
    s.write_all(payload).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), payload);
    s.local_addr().unwrap()
}

/// Sends `req`, half-closes, reads the whole answer: (head, body, raw length).
pub fn http_exchange(proxy: SocketAddr, req: &[u8]) -> (http::Head, Vec<u8>, usize, SocketAddr) {
    let mut s = dial(proxy);
    let peer = s.local_addr().unwrap();
    s.write_all(req).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let raw = read_to_end(&mut s);
    match http::parse_response(&raw) {
        Ok(Parse::Done(h, used)) => (h, raw[used..].to_vec(), raw.len(), peer),
        other => panic!(
            "no complete response ({other:?}): {:?}",
            String::from_utf8_lossy(&raw)
        ),
    }
}

/// `CONNECT authority` with `headers` and `early` data in the same write;
/// returns the response head and the stream (the head's leftover must be
/// empty).
pub fn http_connect(
    proxy: SocketAddr,
    authority: &str,
    headers: &str,
    early: &[u8],
) -> (http::Head, TcpStream) {
    let mut s = dial(proxy);
    let mut req =
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{headers}\r\n").into_bytes();
    req.extend_from_slice(early);
    s.write_all(&req).unwrap();
    let (h, rest) = read_head(&mut s);
    assert!(
        rest.is_empty(),
        "bytes after the CONNECT answer: {rest:02x?}"
    );
    (h, s)
}

/// Sends raw bytes, half-closes, returns everything until EOF.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = dial(addr);
    if !bytes.is_empty() {
        s.write_all(bytes).unwrap();
    }
    let _ = s.shutdown(Shutdown::Write);
    read_to_end(&mut s)
}

pub fn status_of(raw: &[u8]) -> String {
    match http::parse_response(raw) {
        Ok(Parse::Done(h, _)) => h.second,
        _ => panic!("not an HTTP response: {:?}", String::from_utf8_lossy(raw)),
    }
}

/// How a local client reaches a destination through the agent: SOCKS5,
/// HTTP CONNECT, or HTTP absolute-form forwarding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Via {
    Socks,
    Connect,
    Forward,
}
