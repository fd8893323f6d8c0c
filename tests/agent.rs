//! The agent end to end: local clients (SOCKS5, HTTP CONNECT, HTTP
//! absolute-form forwarding, the mixed port) → `websocks agent` → `websocks
//! server` → destinations, all on loopback (127.0.0.1, and ::1 when it can
//! be bound). Every socket operation is bounded by a timeout.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use websocks::proto::socks5::{self, Addr};
use websocks::proto::{Parse, http};

// ---------------------------------------------------------------- helpers

/// Can a socket be bound on `::1`?
fn v6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// Like `serve_each`, on any bind address (`127.0.0.1:0`, `[::1]:0`).
fn serve_on(bind: &str, f: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind(bind).unwrap();
    let a = l.local_addr().unwrap();
    let f = Arc::new(f);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
            let f = f.clone();
            thread::spawn(move || f(s));
        }
    });
    a
}

/// A destination that reads to EOF first, then sends everything back and
/// closes: getting the bytes back proves the client's FIN went through and
/// that data still flows the other way after it (half-close).
fn sink_then_echo(bind: &str) -> SocketAddr {
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
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn origin(bind: &str) -> Origin {
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

fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

/// The value of `key=` (e.g. `up=`) in a log line, as a number.
fn num(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} number in {line:?}"))
}

/// Every client connection made here: (local address, address dialed).
static DIALED: Mutex<Vec<(SocketAddr, SocketAddr)>> = Mutex::new(Vec::new());

/// `connect`, remembering the connection so `line_of` can tell it from an
/// earlier one that happened to use the same local port.
fn dial(addr: SocketAddr) -> TcpStream {
    let s = connect(addr);
    DIALED.lock().unwrap().push((s.local_addr().unwrap(), addr));
    s
}

/// The agent's log line for the latest connection from `peer`: waits until
/// `d` has logged as many lines for `peer` as connections were dialed from
/// it to `d`, and returns the last.
fn line_of(d: &Daemon, peer: SocketAddr) -> String {
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
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// One `servers:` entry.
fn server_entry(name: &str, addr: SocketAddr, password: &str) -> String {
    format!("    - {{name: {name}, url: \"ws://{addr}/\", user: {USER}, password: {password}}}\n")
}

/// Listen addresses for the socks5, http and mixed listeners. The agent's
/// config check refuses the same `127.0.0.1:0` twice (see
/// `listeners_may_share_port_zero`), so they get distinct loopback
/// addresses, or, where only 127.0.0.1 exists, ports picked here.
fn listen_addrs() -> [String; 3] {
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
fn all_listeners() -> String {
    let [s, h, m] = listen_addrs();
    format!(
        "  socks5: {{listen: [\"{s}\"]}}\n  http: {{listen: [\"{h}\"]}}\n  mixed: {{listen: [\"{m}\"]}}\n"
    )
}

fn agent(yaml_body: &str, listeners: usize) -> Daemon {
    Daemon::start(
        &["agent"],
        &format!("log_level: debug\nagent:\n{yaml_body}"),
        listeners,
    )
}

/// An agent with every listener and one server `s`.
fn simple_agent(server: SocketAddr, extra: &str) -> Daemon {
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
fn socks_open_rest(proxy: SocketAddr, dest: &Addr, early: &[u8]) -> (u8, TcpStream, Vec<u8>) {
    let mut s = dial(proxy);
    let mut out = Vec::new();
    socks5::write_greeting(&mut out, &[socks5::METHOD_NO_AUTH]);
    socks5::write_connect(&mut out, dest);
    out.extend_from_slice(early);
    s.write_all(&out).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), 2);
    assert_eq!(got, [5, 0], "method choice");
    let (reply, rest) = read_socks_reply(&mut s, Vec::new());
    (reply.rep, s, rest)
}

/// Like `socks_open_rest` for destinations that do not speak first.
fn socks_open(proxy: SocketAddr, dest: &Addr, early: &[u8]) -> (u8, TcpStream) {
    let (rep, s, rest) = socks_open_rest(proxy, dest, early);
    assert!(
        rest.is_empty(),
        "bytes before any data was asked: {rest:02x?}"
    );
    (rep, s)
}

/// A full SOCKS5 echo round trip through `proxy` to a fresh destination;
/// returns the agent-side peer address of the client.
fn socks_echo_ok(proxy: SocketAddr, payload: &[u8]) -> SocketAddr {
    let dest = sink_then_echo("127.0.0.1:0");
    let (rep, mut s) = socks_open(proxy, &Addr::Ip(dest), b"");
    assert_eq!(rep, 0, "SOCKS5 reply");
    s.write_all(payload).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), payload);
    s.local_addr().unwrap()
}

/// Sends `req`, half-closes, reads the whole answer: (head, body, raw length).
fn http_exchange(proxy: SocketAddr, req: &[u8]) -> (http::Head, Vec<u8>, usize, SocketAddr) {
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
fn http_connect(
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
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = dial(addr);
    if !bytes.is_empty() {
        s.write_all(bytes).unwrap();
    }
    let _ = s.shutdown(Shutdown::Write);
    read_to_end(&mut s)
}

fn status_of(raw: &[u8]) -> String {
    match http::parse_response(raw) {
        Ok(Parse::Done(h, _)) => h.second,
        _ => panic!("not an HTTP response: {:?}", String::from_utf8_lossy(raw)),
    }
}

// ------------------------------------------------- 1. the whole matrix

#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Socks,
    Connect,
    Forward,
}

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    Name,
    V6,
}

/// The destination as SOCKS5 carries it, as HTTP writes it, as logs show it.
fn dest_forms(fam: Family, port: u16) -> (Addr, String) {
    match fam {
        Family::V4 => (
            Addr::Ip(([127, 0, 0, 1], port).into()),
            format!("127.0.0.1:{port}"),
        ),
        Family::Name => (
            Addr::Domain(b"localhost".to_vec(), port),
            format!("localhost:{port}"),
        ),
        Family::V6 => (
            Addr::Ip((std::net::Ipv6Addr::LOCALHOST, port).into()),
            format!("[::1]:{port}"),
        ),
    }
}

/// Runs one case; returns whether the agent used a pooled connection.
fn run_case(
    agent: &Daemon,
    server: &Daemon,
    listener: SocketAddr,
    via: Via,
    fam: Family,
    seed: usize,
) -> bool {
    let bind = match fam {
        Family::V6 => "[::1]:0",
        _ => "127.0.0.1:0",
    };
    let what = format!("{via:?} via {listener} to {fam:?}");
    let pipelined = seed % 2 == 1;
    let (peer, dst, up, down) = match via {
        Via::Socks | Via::Connect => {
            let dest = sink_then_echo(bind);
            let (addr, authority) = dest_forms(fam, dest.port());
            let payload = pattern(64 * 1024 + seed, seed);
            let early: &[u8] = if pipelined { &payload[..1000] } else { b"" };
            let mut s = if via == Via::Socks {
                let (rep, s) = socks_open(listener, &addr, early);
                assert_eq!(rep, 0, "{what}: SOCKS5 reply");
                s
            } else {
                let (h, s) = http_connect(listener, &authority, "", early);
                assert_eq!(h.second, "200", "{what}: CONNECT answer");
                s
            };
            s.write_all(&payload[early.len()..]).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let back = read_to_end(&mut s);
            assert!(
                back == payload,
                "{what}: echo differs ({} bytes)",
                back.len()
            );
            let n = payload.len() as u64;
            (s.local_addr().unwrap(), authority, n, n)
        }
        Via::Forward => {
            let o = origin(bind);
            let (_, authority) = dest_forms(fam, o.addr.port());
            let body = pattern(8 * 1024 + seed, seed);
            let mut req = format!(
                "POST http://{authority}/fwd/{seed}?q=1 HTTP/1.1\r\nHost: {authority}\r\n\
                 Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\
                 User-Agent: agent-test\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(&body);
            let (h, got, total, peer) = http_exchange(listener, &req);
            assert_eq!(h.second, "200", "{what}: forwarded answer");
            assert_eq!(h.one("X-Origin"), Some("yes"), "{what}");
            let mut want = format!("path=/fwd/{seed}?q=1\n").into_bytes();
            want.extend_from_slice(&body);
            assert!(got == want, "{what}: forwarded body differs");
            let seen = o.seen.lock().unwrap()[0].clone();
            let text = String::from_utf8_lossy(&seen[..seen.len() - body.len()]).to_string();
            assert!(
                text.starts_with(&format!("POST /fwd/{seed}?q=1 HTTP/1.1\r\n")),
                "{what}: origin-form request line: {text:?}"
            );
            assert!(text.contains(&format!("Host: {authority}\r\n")), "{text:?}");
            assert!(text.contains("Connection: close\r\n"), "{text:?}");
            assert!(text.contains("User-Agent: agent-test\r\n"), "{text:?}");
            assert!(!text.contains("Proxy-Connection"), "{text:?}");
            assert!(!text.contains("keep-alive"), "{text:?}");
            assert!(!text.contains("X-Hop"), "named hop-by-hop header: {text:?}");
            assert!(seen.ends_with(&body), "{what}: body at the origin");
            (peer, authority, seen.len() as u64, total as u64)
        }
    };
    let line = line_of(agent, peer);
    let via_word = if via == Via::Socks { "socks5" } else { "http" };
    assert!(
        line.contains(&format!(" via={via_word} ")),
        "{what}: {line}"
    );
    assert!(line.contains(&format!(" dst={dst} ")), "{what}: {line}");
    assert!(
        line.contains(" route=proxy:default server=s"),
        "{what}: {line}"
    );
    assert!(line.ends_with("end=closed"), "{what}: {line}");
    assert_eq!(num(&line, "up="), up, "{what}: {line}");
    assert_eq!(num(&line, "down="), down, "{what}: {line}");
    // The server carried it, with the same counts.
    let sline = server.wait_log(&["user=alice", &format!(" dst={dst} ")]);
    assert_eq!(num(&sline, "up="), up, "{what}: {sline}");
    assert_eq!(num(&sline, "down="), down, "{what}: {sline}");
    line.contains("server=s(pooled)")
}

fn matrix(pool: usize) {
    let v6 = v6_available();
    if !v6 {
        skip("part: the IPv6 cases: ::1 cannot be bound here");
    }
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let socks_listen = if v6 {
        "[\"127.0.0.1:0\", \"[::1]:0\"]"
    } else {
        "[\"127.0.0.1:0\"]"
    };
    let [_, http_a, mixed_a] = listen_addrs();
    let yaml = format!(
        "  socks5: {{listen: {socks_listen}}}\n  http: {{listen: [\"{http_a}\"]}}\n  mixed: {{listen: [\"{mixed_a}\"]}}\n  servers:\n{}  pool: {{size: {pool}}}\n",
        server_entry("s", server.addr(), PASS)
    );
    let d = agent(&yaml, if v6 { 4 } else { 3 });
    let a = &d.addrs;
    let (http_l, mixed_l) = (a[a.len() - 2], a[a.len() - 1]);
    let mut listeners = vec![(a[0], Via::Socks)];
    if v6 {
        assert!(a[1].is_ipv6());
        listeners.push((a[1], Via::Socks));
    }
    listeners.extend([
        (http_l, Via::Connect),
        (http_l, Via::Forward),
        (mixed_l, Via::Socks),
        (mixed_l, Via::Connect),
        (mixed_l, Via::Forward),
    ]);
    let mut fams = vec![Family::V4, Family::Name];
    if v6 {
        fams.push(Family::V6);
    }
    if pool > 0 {
        thread::sleep(Duration::from_millis(300));
    }
    let (mut total, mut pooled) = (0, 0);
    for &(l, via) in &listeners {
        for &fam in &fams {
            total += 1;
            if run_case(&d, &server, l, via, fam, total) {
                pooled += 1;
            }
        }
    }
    eprintln!("pool size {pool}: {total} cases, {pooled} on pooled connections");
    if pool == 0 {
        assert_eq!(pooled, 0, "pool size 0 must never use a pooled connection");
    } else {
        assert!(
            pooled * 2 >= total,
            "only {pooled} of {total} used the pool of {pool}"
        );
    }
}

#[test]
fn every_listener_and_address_type_unpooled() {
    matrix(0);
}

#[test]
fn every_listener_and_address_type_pooled() {
    matrix(2);
}

// ------------------------------------------ 1b. the server's real result

#[test]
fn refusals_carry_the_servers_real_code() {
    let server = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  timeouts:\n    connect: 1s\n"
    )));
    let d = simple_agent(server.addr(), "  timeouts: {connect: 5s}\n");
    let [sa, ha, _] = listen_addrs();
    let direct = agent(
        &format!(
            "  socks5: {{listen: [\"{sa}\"]}}\n  http: {{listen: [\"{ha}\"]}}\n  default: direct\n  timeouts: {{connect: 1s}}\n"
        ),
        2,
    );
    let (socks_l, http_l, mixed_l) = (d.addrs[0], d.addrs[1], d.addrs[2]);
    let closed = closed_port();

    // Destination port closed: the server's 05, HTTP 502; never 00 first.
    for (l, name) in [(socks_l, "socks5"), (mixed_l, "mixed")] {
        for addr in [
            Addr::Ip(closed),
            Addr::Domain(b"localhost".to_vec(), closed.port()),
        ] {
            let (rep, mut s) = socks_open(l, &addr, b"");
            assert_eq!(rep, 0x05, "{name} to {addr}");
            assert_eq!(read_to_end(&mut s), b"", "nothing after a failure reply");
            let line = line_of(&d, s.local_addr().unwrap());
            assert!(line.contains("end=refused: server replied 0x05"), "{line}");
            assert!(line.contains(" route=proxy:default server=s"), "{line}");
        }
    }
    for l in [http_l, mixed_l] {
        let (h, body, _, peer) = http_exchange(
            l,
            format!("CONNECT {closed} HTTP/1.1\r\nHost: {closed}\r\n\r\n").as_bytes(),
        );
        assert_eq!(h.second, "502", "{}", String::from_utf8_lossy(&body));
        assert!(line_of(&d, peer).contains("end=refused: server replied 0x05"));
        let (h, _, _, peer) = http_exchange(
            l,
            format!("GET http://localhost:{}/ HTTP/1.1\r\n\r\n", closed.port()).as_bytes(),
        );
        assert_eq!(h.second, "502");
        assert!(line_of(&d, peer).contains("end=refused: server replied 0x05"));
    }
    // Direct: the agent's own connect result.
    let (rep, _) = socks_open(direct.addrs[0], &Addr::Ip(closed), b"");
    assert_eq!(rep, 0x05);
    let (h, _, _, peer) = http_exchange(
        direct.addrs[1],
        format!("CONNECT {closed} HTTP/1.1\r\n\r\n").as_bytes(),
    );
    assert_eq!(h.second, "502");
    assert!(line_of(&direct, peer).contains("route=direct"));

    // Destination timeout: the server gives up after 1 s → 06 / 504.
    let Some((_l, _held, hole)) = blackhole() else {
        skip("part: the destination timeout: the accept queue never filled here");
        return;
    };
    let t = Instant::now();
    let socks = thread::spawn(move || {
        let (rep, s) = socks_open(socks_l, &Addr::Ip(hole), b"");
        (rep, s.local_addr().unwrap())
    });
    let connect = thread::spawn(move || {
        http_exchange(
            http_l,
            format!("CONNECT {hole} HTTP/1.1\r\n\r\n").as_bytes(),
        )
    });
    let direct_socks = {
        let a = direct.addrs[0];
        thread::spawn(move || socks_open(a, &Addr::Ip(hole), b"").0)
    };
    let direct_http = {
        let a = direct.addrs[1];
        thread::spawn(move || {
            http_exchange(a, format!("CONNECT {hole} HTTP/1.1\r\n\r\n").as_bytes()).0
        })
    };
    let (rep, peer) = socks.join().unwrap();
    assert_eq!(rep, 0x06, "SOCKS5 reply for a destination timeout");
    assert!(line_of(&d, peer).contains("end=refused: server replied 0x06"));
    let (h, _, _, peer) = connect.join().unwrap();
    assert_eq!(h.second, "504");
    assert!(line_of(&d, peer).contains("end=refused: server replied 0x06"));
    assert_eq!(direct_socks.join().unwrap(), 0x06);
    assert_eq!(direct_http.join().unwrap().second, "504");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

// ------------------------------------------------- 2/3. a toggle proxy

/// A TCP proxy in front of a server that a test can switch: refuse (accept
/// and close at once, as a dead server), turn its existing connections into
/// zombies (they stay open, pass PONGs, but close on any other byte), or
/// close every existing connection while still accepting new ones.
#[derive(Default)]
struct ToggleState {
    refuse: bool,
    next_gen: u64,
    zombie_below: u64,
    conns: Vec<(TcpStream, TcpStream)>,
    pongs: usize,
}

struct Toggle {
    addr: SocketAddr,
    st: Arc<Mutex<ToggleState>>,
}

impl Toggle {
    fn new(target: SocketAddr) -> Toggle {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let st = Arc::new(Mutex::new(ToggleState::default()));
        let st2 = st.clone();
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                if st2.lock().unwrap().refuse {
                    drop(c);
                    continue;
                }
                let Ok(s) = TcpStream::connect(target) else {
                    continue;
                };
                let epoch = {
                    let mut g = st2.lock().unwrap();
                    g.conns
                        .push((c.try_clone().unwrap(), s.try_clone().unwrap()));
                    g.next_gen += 1;
                    g.next_gen - 1
                };
                let (c2, s2, st3) = (c.try_clone().unwrap(), s.try_clone().unwrap(), st2.clone());
                thread::spawn(move || toggle_up(c2, s2, epoch, st3));
                thread::spawn(move || {
                    let (mut s, mut c) = (s, c);
                    let _ = std::io::copy(&mut s, &mut c);
                    let _ = c.shutdown(Shutdown::Write);
                });
            }
        });
        Toggle { addr, st }
    }

    fn set_refuse(&self, on: bool) {
        self.st.lock().unwrap().refuse = on;
    }

    fn zombify(&self) {
        let mut g = self.st.lock().unwrap();
        g.zombie_below = g.next_gen;
    }

    fn kill_existing(&self) {
        for (c, s) in self.st.lock().unwrap().conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn pongs(&self) -> usize {
        self.st.lock().unwrap().pongs
    }
}

fn toggle_up(mut c: TcpStream, mut s: TcpStream, epoch: u64, st: Arc<Mutex<ToggleState>>) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let pong_only = n % 2 == 0 && chunk.chunks(2).all(|p| p == [0x8a, 0x00]);
        {
            let mut g = st.lock().unwrap();
            if pong_only {
                g.pongs += n / 2;
            }
            if epoch < g.zombie_below && !pong_only {
                let _ = c.shutdown(Shutdown::Both);
                let _ = s.shutdown(Shutdown::Both);
                return;
            }
        }
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

#[test]
fn failover_to_the_next_server_of_a_group() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let closed = closed_port();
    for pool in [0, 2] {
        // default: [a (closed port), b]; second: [c (401: wrong password), b].
        let yaml = format!(
            "{}  servers:\n{}{}{}  groups: {{default: [a, b], second: [c, b]}}\n  pool: {{size: {pool}}}\n  rules:\n    - {{host: [localhost], action: proxy, group: second}}\n",
            all_listeners(),
            server_entry("a", closed, PASS),
            server_entry("b", server.addr(), PASS),
            server_entry("c", server.addr(), "wrong-password"),
        );
        let d = agent(&yaml, 3);
        for i in 0..4 {
            let peer = socks_echo_ok(d.addrs[0], &pattern(3000, i));
            let line = line_of(&d, peer);
            assert!(
                line.contains("route=proxy:default server=b"),
                "pool {pool}: {line}"
            );
            let dest = sink_then_echo("127.0.0.1:0");
            let (h, mut s) =
                http_connect(d.addrs[1], &format!("localhost:{}", dest.port()), "", b"");
            assert_eq!(h.second, "200");
            s.write_all(b"via second").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_end(&mut s), b"via second");
            let line = line_of(&d, s.local_addr().unwrap());
            assert!(
                line.contains("route=proxy:second server=b"),
                "pool {pool}: {line}"
            );
        }
        d.wait_log(&[&format!("server a ({closed}) is down")]);
        d.wait_log(&[&format!("server c ({}) is down", server.addr()), "401"]);
    }
}

#[test]
fn health_checks_notice_down_and_up_again() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let t = Toggle::new(server.addr());
    let d = agent(
        &format!(
            "{}  servers:\n{}  pool: {{size: 0}}\n  health: {{interval: 300ms, timeout: 1s}}\n",
            all_listeners(),
            server_entry("a", t.addr, PASS)
        ),
        3,
    );
    let peer = socks_echo_ok(d.addrs[0], b"before");
    assert!(line_of(&d, peer).contains("server=a"));

    t.set_refuse(true);
    let down = d.wait_log(&[&format!("server a ({}) is down", t.addr)]);
    assert!(down.contains("health check"), "{down}");
    // The only server is down: a clean refusal, not a hang.
    let (rep, _) = socks_open(d.addrs[0], &Addr::Ip(closed_port()), b"");
    assert_eq!(rep, 0x01, "no usable server → general failure");
    let (h, _, _, peer) = http_exchange(d.addrs[1], b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n");
    assert_eq!(h.second, "502");
    assert!(line_of(&d, peer).contains("end=refused: no server usable"));

    t.set_refuse(false);
    d.wait_log(&[&format!("server a ({}) is up again", t.addr)]);
    let peer = socks_echo_ok(d.addrs[0], b"after");
    assert!(line_of(&d, peer).contains("server=a"));
}

#[test]
fn dead_pooled_connections_are_replaced_invisibly() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let t = Toggle::new(server.addr());
    let d = agent(
        &format!(
            "{}  servers:\n{}  pool: {{size: 2, keepalive: 300ms}}\n  health: {{interval: 30s}}\n",
            all_listeners(),
            server_entry("a", t.addr, PASS)
        ),
        3,
    );
    // Both pooled connections send their PONG keepalive...
    wait_until(
        Duration::from_secs(3),
        "PONGs on pooled connections",
        || t.pongs() >= 2,
    );
    // ...and a connection that sent PONGs still carries a tunnel.
    let peer = socks_echo_ok(d.addrs[0], b"after pongs");
    let line = line_of(&d, peer);
    assert!(line.contains("server=a(pooled)"), "{line}");

    // Zombies: look open, die on the first real byte. Retried on a fresh one.
    thread::sleep(Duration::from_millis(100));
    t.zombify();
    for i in 0..3 {
        let peer = socks_echo_ok(d.addrs[0], &pattern(5000, i));
        let line = line_of(&d, peer);
        assert!(line.contains("end=closed"), "{line}");
    }
    d.wait_log(&["pooled connection to a was dead"]);

    // Every existing connection closed under the agent; new ones accepted.
    thread::sleep(Duration::from_millis(100));
    t.kill_existing();
    for i in 0..3 {
        socks_echo_ok(d.addrs[0], &pattern(5000, i));
        let (h, mut s) = http_connect(
            d.addrs[1],
            &sink_then_echo("127.0.0.1:0").to_string(),
            "",
            b"",
        );
        assert_eq!(h.second, "200");
        s.write_all(b"x").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), b"x");
    }
    // Nothing the client could see made the server look down.
    assert!(
        !d.log.lock().unwrap().iter().any(|l| l.contains("is down")),
        "{:#?}",
        d.log.lock().unwrap()
    );
}

/// The destination closes its side first (a banner, then FIN): the client
/// sees the FIN and can still send; the destination gets every byte.
#[test]
fn destination_half_close_first() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 0}\n");
    for via in [Via::Socks, Via::Connect] {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let dest = serve_on("127.0.0.1:0", move |mut s| {
            s.write_all(b"banner").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut all = Vec::new();
            let _ = s.read_to_end(&mut all);
            let _ = tx.lock().unwrap().send(all);
        });
        let (mut s, mut got) = if via == Via::Socks {
            let (rep, s, rest) = socks_open_rest(d.addrs[0], &Addr::Ip(dest), b"");
            assert_eq!(rep, 0);
            (s, rest)
        } else {
            let mut s = dial(d.addrs[1]);
            write!(s, "CONNECT {dest} HTTP/1.1\r\n\r\n").unwrap();
            let (h, rest) = read_head(&mut s);
            assert_eq!(h.second, "200");
            (s, rest)
        };
        got.extend(read_to_end(&mut s));
        assert_eq!(got, b"banner", "{via:?}");
        let payload = pattern(100_000, 3);
        s.write_all(&payload).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = rx.recv_timeout(IO_TIMEOUT).unwrap();
        assert!(got == payload, "{via:?}: {} bytes arrived", got.len());
        let line = line_of(&d, s.local_addr().unwrap());
        assert!(line.contains("up=100000 down=6 "), "{line}");
        assert!(line.ends_with("end=closed"), "{line}");
    }
}

/// A quiet tunnel is closed at the agent's idle timeout.
#[test]
fn idle_tunnels_are_closed() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 0}\n  timeouts: {idle: 1s}\n");
    let echo = echo_server();
    let (rep, mut s) = socks_open(d.addrs[0], &Addr::Ip(echo), b"");
    assert_eq!(rep, 0);
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(400));
        s.write_all(b"x").unwrap();
        assert_eq!(read_exact_after(&mut s, Vec::new(), 1), b"x");
    }
    let t = Instant::now();
    assert_eq!(read_to_end(&mut s), b"");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let line = line_of(&d, s.local_addr().unwrap());
    assert!(line.contains("up=3 down=3 "), "{line}");
    assert!(line.ends_with("end=idle-timeout"), "{line}");
}

/// Forwarding details: origin-form targets, the URL's authority as Host,
/// userinfo never forwarded.
#[test]
fn forwarding_rewrites_the_request_for_the_origin() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 0}\n");
    for (target, line) in [
        ("http://{A}", "GET / HTTP/1.1"),
        ("http://{A}?x=1", "GET /?x=1 HTTP/1.1"),
        ("HTTP://{A}/p/q?r", "GET /p/q?r HTTP/1.1"),
        ("http://user:pw@{A}/u", "GET /u HTTP/1.1"),
    ] {
        let o = origin("127.0.0.1:0");
        let target = target.replace("{A}", &o.addr.to_string());
        let (h, _, _, _) = http_exchange(
            d.addrs[1],
            format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes(),
        );
        assert_eq!(h.second, "200", "{target}");
        let seen = String::from_utf8(o.seen.lock().unwrap()[0].clone()).unwrap();
        assert!(
            seen.starts_with(&format!("{line}\r\n")),
            "{target}: {seen:?}"
        );
        assert!(
            seen.contains(&format!("\r\nHost: {}\r\n", o.addr)),
            "{seen:?}"
        );
        assert!(!seen.contains("user") && !seen.contains("pw"), "{seen:?}");
    }
}

/// RFC 9112 section 3.2.2: a proxy forwarding an absolute-form request MUST
/// generate Host from the request target, not forward the received one.
#[test]
fn forwarding_replaces_a_mismatched_host_header() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 0}\n");
    let o = origin("127.0.0.1:0");
    let (h, _, _, _) = http_exchange(
        d.addrs[1],
        format!(
            "GET http://{}/ HTTP/1.1\r\nHost: other.example\r\n\r\n",
            o.addr
        )
        .as_bytes(),
    );
    assert_eq!(h.second, "200");
    let seen = String::from_utf8(o.seen.lock().unwrap()[0].clone()).unwrap();
    assert!(
        seen.contains(&format!("\r\nHost: {}\r\n", o.addr)),
        "{seen:?}"
    );
    assert!(!seen.contains("other.example"), "{seen:?}");
}

// ------------------------------------------------------------ 4. routing

#[test]
fn routing_rules_first_match_wins() {
    let s1 = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let s2 = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let e_default = sink_then_echo("127.0.0.1:0");
    let e_direct = sink_then_echo("127.0.0.1:0");
    let e_other = sink_then_echo("127.0.0.1:0");
    let e_first = sink_then_echo("127.0.0.1:0");
    let e_host = sink_then_echo("127.0.0.1:0");
    let e_rr = sink_then_echo("127.0.0.1:0");
    let yaml = format!(
        "{}  servers:\n{}{}  groups: {{default: [s1], other: [s2], both: [s1, s2]}}\n  pool: {{size: 0}}\n  rules:\n\
         \x20   - {{domain_suffix: [blocked.localhost], action: reject}}\n\
         \x20   - {{domain_suffix: [localhost], port: [{rr}], action: proxy, group: both}}\n\
         \x20   - {{domain_suffix: [localhost], port: [{first}], action: direct}}\n\
         \x20   - {{port: [{first}], action: reject}}\n\
         \x20   - {{cidr: [\"127.0.0.0/8\"], port: [{direct}], action: direct}}\n\
         \x20   - {{cidr: [\"127.0.0.0/8\"], port: [\"{other}-{other}\"], action: proxy, group: other}}\n\
         \x20   - {{host: [\"127.0.0.1\"], port: [{host}], action: proxy, group: other}}\n\
         \x20 default: proxy\n  default_group: default\n",
        all_listeners(),
        server_entry("s1", s1.addr(), PASS),
        server_entry("s2", s2.addr(), PASS),
        first = e_first.port(),
        direct = e_direct.port(),
        other = e_other.port(),
        host = e_host.port(),
        rr = e_rr.port(),
    );
    let d = agent(&yaml, 3);
    let (socks_l, http_l, mixed_l) = (d.addrs[0], d.addrs[1], d.addrs[2]);
    let ip = |p: u16| Addr::Ip(([127, 0, 0, 1], p).into());
    let name = |n: &str, p: u16| Addr::Domain(n.as_bytes().to_vec(), p);

    // Passes through; returns the agent log line.
    let through = |d: &Daemon, l: SocketAddr, addr: &Addr| {
        let (rep, mut s) = socks_open(l, addr, b"");
        assert_eq!(rep, 0, "{addr}");
        s.write_all(b"routed").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), b"routed");
        line_of(d, s.local_addr().unwrap())
    };
    let rejected = |l: SocketAddr, addr: &Addr| {
        let (rep, mut s) = socks_open(l, addr, b"");
        assert_eq!(rep, 0x02, "{addr} must be rejected");
        assert_eq!(read_to_end(&mut s), b"");
        let line = line_of(&d, s.local_addr().unwrap());
        assert!(line.contains("route=reject"), "{line}");
        assert!(line.contains("end=refused: rejected by rule"), "{line}");
    };

    // Default: proxy through the default group.
    let line = through(&d, socks_l, &ip(e_default.port()));
    assert!(line.contains("route=proxy:default server=s1 "), "{line}");
    s1.wait_log(&[&format!("dst=127.0.0.1:{} ", e_default.port())]);
    // cidr + port → direct: no server sees it.
    let line = through(&d, mixed_l, &ip(e_direct.port()));
    assert!(line.contains("route=direct "), "{line}");
    // cidr + port range → proxy through the named group.
    let line = through(&d, socks_l, &ip(e_other.port()));
    assert!(line.contains("route=proxy:other server=s2 "), "{line}");
    s2.wait_log(&[&format!("dst=127.0.0.1:{} ", e_other.port())]);
    // Exact host: the IP literal matches, the name does not (→ default).
    let line = through(&d, socks_l, &ip(e_host.port()));
    assert!(line.contains("route=proxy:other server=s2 "), "{line}");
    let line = through(&d, socks_l, &name("localhost", e_host.port()));
    assert!(line.contains("route=proxy:default server=s1 "), "{line}");
    s1.wait_log(&[&format!("dst=localhost:{} ", e_host.port())]);
    // First match wins: the name matches rule 2 (direct) before rule 3
    // (reject by port); the IP does not match rule 2, so rule 3 rejects.
    let line = through(&d, socks_l, &name("localhost", e_first.port()));
    assert!(line.contains("route=direct "), "{line}");
    rejected(socks_l, &ip(e_first.port()));
    rejected(mixed_l, &ip(e_first.port()));
    // Domain suffix: the name itself and its subdomains, any case, a
    // trailing dot; not resolved anywhere.
    for n in [
        "blocked.localhost",
        "www.BLOCKED.localhost.",
        "a.b.blocked.localhost",
    ] {
        rejected(socks_l, &name(n, 80));
    }
    // HTTP: reject is 403, for CONNECT and forwarding.
    let (h, _, _, _) = http_exchange(
        http_l,
        format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", e_first.port()).as_bytes(),
    );
    assert_eq!(h.second, "403");
    let (h, _, _, peer) = http_exchange(
        mixed_l,
        b"GET http://x.blocked.localhost/ HTTP/1.1\r\nHost: x.blocked.localhost\r\n\r\n",
    );
    assert_eq!(h.second, "403");
    assert!(line_of(&d, peer).contains("route=reject"));
    // HTTP direct.
    let (h, mut s) = http_connect(http_l, &format!("localhost:{}", e_first.port()), "", b"");
    assert_eq!(h.second, "200");
    s.write_all(b"direct http").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"direct http");
    assert!(line_of(&d, s.local_addr().unwrap()).contains("route=direct "));

    // A group of two healthy servers: both are used.
    let used: Vec<String> = (0..4)
        .map(|_| through(&d, socks_l, &name("localhost", e_rr.port())))
        .collect();
    for srv in ["server=s1 ", "server=s2 "] {
        assert!(
            used.iter().all(|l| l.contains("route=proxy:both server=s")),
            "{used:#?}"
        );
        assert!(used.iter().any(|l| l.contains(srv)), "{srv}: {used:#?}");
    }

    // Direct destinations never reached a server.
    thread::sleep(Duration::from_millis(200));
    for srv in [&s1, &s2] {
        for p in [e_direct.port(), e_first.port()] {
            assert!(
                !srv.log.lock().unwrap().iter().any(|l| {
                    l.contains(&format!("dst=127.0.0.1:{p} "))
                        || l.contains(&format!("dst=localhost:{p} "))
                }),
                "direct destination port {p} seen by a server"
            );
        }
    }

    // Other defaults: reject everything but what a rule lets through.
    let d2 = agent(
        &format!(
            "  socks5: {{listen: [\"{}\"]}}\n  http: {{listen: [\"{}\"]}}\n  servers:\n{}  pool: {{size: 0}}\n  rules:\n    - {{cidr: [\"127.0.0.0/8\"], port: [{}], action: proxy}}\n  default: reject\n",
            listen_addrs()[0],
            listen_addrs()[1],
            server_entry("s1", s1.addr(), PASS),
            e_default.port()
        ),
        2,
    );
    let (rep, _) = socks_open(d2.addrs[0], &ip(e_default.port()), b"");
    assert_eq!(rep, 0);
    let (rep, _) = socks_open(d2.addrs[0], &ip(e_direct.port()), b"");
    assert_eq!(rep, 0x02);
    let (rep, _) = socks_open(d2.addrs[0], &name("localhost", e_default.port()), b"");
    assert_eq!(rep, 0x02, "cidr rules never match names");
    let (h, _, _, _) = http_exchange(
        d2.addrs[1],
        format!("GET http://127.0.0.1:{}/ HTTP/1.1\r\n\r\n", e_direct.port()).as_bytes(),
    );
    assert_eq!(h.second, "403");
    // ...and default direct, with no server at all.
    let d3 = agent(
        "  socks5: {listen: [\"127.0.0.1:0\"]}\n  default: direct\n",
        1,
    );
    let line = through(&d3, d3.addrs[0], &ip(e_direct.port()));
    assert!(line.contains("route=direct "), "{line}");
}

// --------------------------------------------------------- 5. local auth

fn user_pass(user: &[u8], pass: &[u8]) -> Vec<u8> {
    let mut v = vec![0x01, user.len() as u8];
    v.extend_from_slice(user);
    v.push(pass.len() as u8);
    v.extend_from_slice(pass);
    v
}

const BASIC_ME_PW: &str = "Proxy-Authorization: Basic bWU6cHc=\r\n"; // me:pw

#[test]
fn local_users_are_required_when_configured() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(
        server.addr(),
        "  users: [{name: me, password: pw}, {name: you, password: other}]\n",
    );
    let (socks_l, http_l, mixed_l) = (d.addrs[0], d.addrs[1], d.addrs[2]);
    let dest = sink_then_echo("127.0.0.1:0");

    for l in [socks_l, mixed_l] {
        // Method 02 and the right password: through.
        let mut s = dial(l);
        s.write_all(&[5, 2, 0, 2]).unwrap();
        assert_eq!(read_exact_after(&mut s, Vec::new(), 2), [5, 2]);
        s.write_all(&user_pass(b"me", b"pw")).unwrap();
        assert_eq!(read_exact_after(&mut s, Vec::new(), 2), [1, 0]);
        let mut req = Vec::new();
        socks5::write_connect(&mut req, &Addr::Ip(dest));
        req.extend_from_slice(b"authed");
        s.write_all(&req).unwrap();
        let (r, rest) = read_socks_reply(&mut s, Vec::new());
        assert_eq!((r.rep, rest.len()), (0, 0));
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), b"authed");
        // Wrong password, unknown user, another user's password: 01 01, close.
        for (u, p) in [
            (&b"me"[..], &b"wrong"[..]),
            (b"nobody", b"pw"),
            (b"me", b"other"),
            (b"", b""),
        ] {
            let mut s = dial(l);
            let mut out = vec![5, 1, 2];
            out.extend_from_slice(&user_pass(u, p));
            s.write_all(&out).unwrap();
            let got = read_to_end(&mut s);
            assert_eq!(got, [5, 2, 1, 1], "user {u:?} password {p:?}");
        }
        // Only no-auth offered: 05 ff and close.
        assert_eq!(raw_exchange(l, &[5, 1, 0]), [5, 0xff]);
    }
    d.wait_log(&["end=rejected: SOCKS5 username/password refused"]);
    d.wait_log(&["end=rejected: no acceptable SOCKS5 method offered"]);

    for l in [http_l, mixed_l] {
        let req = |auth: &str| format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n{auth}\r\n");
        for bad in [
            "",
            "Proxy-Authorization: Basic bWU6d3Jvbmc=\r\n", // me:wrong
            "Proxy-Authorization: Bearer bWU6cHc=\r\n",
            "Authorization: Basic bWU6cHc=\r\n",
        ] {
            let (h, _, _, _) = http_exchange(l, req(bad).as_bytes());
            assert_eq!(h.second, "407", "{bad:?}");
            assert_eq!(
                h.one("Proxy-Authenticate"),
                Some("Basic realm=\"websocks\""),
                "{bad:?}"
            );
        }
        let (h, mut s) = http_connect(l, &dest.to_string(), BASIC_ME_PW, b"");
        assert_eq!(h.second, "200");
        s.write_all(b"http authed").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), b"http authed");
        // Forwarding: the credential is for the proxy, never forwarded.
        let o = origin("127.0.0.1:0");
        let (h, body, _, _) = http_exchange(
            l,
            format!(
                "GET http://{}/auth HTTP/1.1\r\nHost: {}\r\n{BASIC_ME_PW}\r\n",
                o.addr, o.addr
            )
            .as_bytes(),
        );
        assert_eq!(h.second, "200");
        assert_eq!(body, b"path=/auth\n");
        let seen = String::from_utf8(o.seen.lock().unwrap()[0].clone()).unwrap();
        assert!(
            !seen.to_ascii_lowercase().contains("proxy-authorization"),
            "{seen}"
        );
        let (h, _, _, _) = http_exchange(
            l,
            format!("GET http://{}/auth HTTP/1.1\r\n\r\n", o.addr).as_bytes(),
        );
        assert_eq!(h.second, "407");
    }
}

fn check(yaml: &str) -> (i32, String) {
    let dir = temp_dir();
    let cfg = dir.join("websocks.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_websocks"))
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_rejects_open_listeners_without_users_and_tls_options_on_ws() {
    let server = server_entry("s", "127.0.0.1:8080".parse().unwrap(), PASS);
    for (key, listen) in [
        ("socks5", "0.0.0.0:0"),
        ("http", "0.0.0.0:0"),
        ("mixed", "[::]:0"),
    ] {
        let (code, msg) = check(&format!(
            "agent:\n  {key}: {{listen: [\"127.0.0.1:0\", \"{listen}\"]}}\n  servers:\n{server}"
        ));
        assert_eq!(code, 78, "{msg}");
        assert!(msg.contains(&format!("agent.{key}.listen")), "{msg}");
        assert!(
            msg.contains("beyond loopback") && msg.contains("users"),
            "{msg}"
        );
        let (code, msg) = check(&format!(
            "agent:\n  {key}: {{listen: [\"{listen}\"]}}\n  users: [{{name: me, password: pw}}]\n  servers:\n{server}"
        ));
        assert_eq!(code, 0, "{msg}");
    }
    // wss:// is accepted; TLS options on a ws:// URL are a mistake.
    let (code, msg) = check(&format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    - name: t\n      url: \"wss://example.com/\"\n      user: {USER}\n      password: {PASS}\n"
    ));
    assert_eq!(code, 0, "{msg}");
    let (code, msg) = check(&format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    - name: t\n      url: \"ws://example.com/\"\n      sni: example.com\n      user: {USER}\n      password: {PASS}\n"
    ));
    assert_eq!(code, 78, "{msg}");
    assert!(msg.contains("need a wss:// url"), "{msg}");
    assert!(msg.contains("websocks.yaml:4"), "names the line: {msg}");
    let (code, msg) = check(&format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n{server}"
    ));
    assert_eq!(code, 0, "{msg}");
}

// ------------------------------------------------------------- 6. the PAC

#[test]
fn proxy_pac_is_served_on_http_listeners() {
    let d = simple_agent(closed_port(), "  pool: {size: 0}\n");
    for l in [d.addrs[1], d.addrs[2]] {
        let (h, body, _, _) = http_exchange(
            l,
            format!("GET /proxy.pac HTTP/1.1\r\nHost: {l}\r\n\r\n").as_bytes(),
        );
        assert_eq!(h.second, "200");
        assert!(
            h.all("Content-Type")
                .any(|v| v == "application/x-ns-proxy-autoconfig"),
            "{h:?}"
        );
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("FindProxyForURL"), "{body}");
        assert!(body.contains(&format!("return \"PROXY {l}\";")), "{body}");
        // As a browser configured with http://127.0.0.1:PORT/proxy.pac asks.
        let named = format!("127.0.0.1:{}", l.port());
        let (h, body, _, _) = http_exchange(
            l,
            format!("GET /proxy.pac HTTP/1.1\r\nHost: {named}\r\n\r\n").as_bytes(),
        );
        assert_eq!(h.second, "200");
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains(&format!("PROXY {named}"))
        );
        // Without a Host header: the address the client reached.
        let (h, body, _, _) = http_exchange(l, b"GET /proxy.pac HTTP/1.0\r\n\r\n");
        assert_eq!(h.second, "200");
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains(&format!("PROXY {l}"))
        );
        let (h, _, _, _) = http_exchange(l, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.second, "404");
    }
}

// ------------------------------------------------------------- 7. curl

#[test]
fn curl_through_agent_and_server() {
    let Some(curl_bin) = need_tool("curl", "curl") else {
        return;
    };
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    let page = serve_on("127.0.0.1:0", move |mut s| {
        let mut req = Vec::new();
        let mut chunk = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&chunk[..n]),
            }
        }
        hits2.fetch_add(1, Ordering::Relaxed);
        let path = String::from_utf8_lossy(&req)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let body = format!("<html><body>hello {path} through websocks</body></html>\n");
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let open = simple_agent(server.addr(), "");
    let authed = simple_agent(server.addr(), "  users: [{name: me, password: pw}]\n");
    let curl = |args: &[String], url: String| {
        let mut c = Command::new(&curl_bin);
        for v in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
        ] {
            c.env_remove(v);
        }
        c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url)
            .output()
            .unwrap()
    };
    let p = page.port();
    let (os, oh, om) = (open.addrs[0], open.addrs[1], open.addrs[2]);
    let (as_, ah) = (authed.addrs[0], authed.addrs[1]);
    let cases: Vec<(Vec<String>, String, &Daemon, &str)> = vec![
        (
            vec!["--socks5-hostname".into(), os.to_string()],
            format!("http://localhost:{p}/socks"),
            &open,
            "via=socks5 dst=localhost:",
        ),
        (
            vec!["--proxy".into(), format!("http://{oh}")],
            format!("http://127.0.0.1:{p}/forward"),
            &open,
            "via=http dst=127.0.0.1:",
        ),
        (
            vec!["-p".into(), "--proxy".into(), format!("http://{oh}")],
            format!("http://localhost:{p}/connect"),
            &open,
            "via=http dst=localhost:",
        ),
        (
            vec!["--proxy".into(), format!("socks5h://{om}")],
            format!("http://localhost:{p}/mixed-socks"),
            &open,
            "via=socks5 dst=localhost:",
        ),
        (
            vec!["--proxy".into(), format!("http://{om}")],
            format!("http://127.0.0.1:{p}/mixed-http"),
            &open,
            "via=http dst=127.0.0.1:",
        ),
        (
            vec!["--proxy".into(), format!("socks5h://me:pw@{as_}")],
            format!("http://localhost:{p}/auth-socks"),
            &authed,
            "via=socks5 dst=localhost:",
        ),
        (
            vec!["--proxy".into(), format!("http://me:pw@{ah}")],
            format!("http://127.0.0.1:{p}/auth-forward"),
            &authed,
            "via=http dst=127.0.0.1:",
        ),
        (
            vec!["-p".into(), "--proxy".into(), format!("http://me:pw@{ah}")],
            format!("http://127.0.0.1:{p}/auth-connect"),
            &authed,
            "via=http dst=127.0.0.1:",
        ),
    ];
    for (i, (args, url, d, want)) in cases.iter().enumerate() {
        let out = curl(args, url.clone());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = url.rsplit('/').next().unwrap();
        assert!(
            out.status.success(),
            "curl {args:?} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout,
            format!("<html><body>hello /{path} through websocks</body></html>\n\n200"),
            "curl {args:?} {url}"
        );
        assert_eq!(hits.load(Ordering::Relaxed), i + 1);
        d.wait_log(&[
            want,
            &format!(":{p} "),
            "route=proxy:default server=s",
            "end=closed",
        ]);
    }
    // Without credentials: 407 from the HTTP proxy, no page fetched.
    let out = curl(
        &["--proxy".into(), format!("http://{ah}")],
        format!("http://127.0.0.1:{p}/nope"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("407"));
    assert_eq!(hits.load(Ordering::Relaxed), cases.len());
    server.wait_log(&["user=alice", &format!("dst=localhost:{p} "), "end=closed"]);
}

// ------------------------------------------------------- 8. bad input

#[test]
fn bad_local_input_is_answered_cleanly() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let mut d = simple_agent(server.addr(), "  timeouts: {handshake: 1s}\n");
    let (socks_l, http_l, mixed_l) = (d.addrs[0], d.addrs[1], d.addrs[2]);
    let ff = [5u8, 0xff];
    let reply = |rep: u8| [5u8, 0, 5, rep, 0, 1, 0, 0, 0, 0, 0, 0];

    for l in [socks_l, mixed_l] {
        // Greetings that are SOCKS5 but wrong.
        assert_eq!(raw_exchange(l, &[5, 0]), ff, "no methods");
        assert_eq!(
            raw_exchange(l, &[5, 3, 1, 2, 0x80]),
            ff,
            "no acceptable method"
        );
        // Requests.
        let mut bind = vec![5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80];
        assert_eq!(raw_exchange(l, &bind), reply(7), "BIND");
        bind[4] = 3;
        assert_eq!(raw_exchange(l, &bind), reply(7), "UDP ASSOCIATE");
        bind[4] = 9;
        assert_eq!(raw_exchange(l, &bind), reply(7), "unknown command");
        assert_eq!(
            raw_exchange(l, &[5, 1, 0, 5, 1, 0, 5, 1, 2, 3, 4, 0, 80]),
            reply(8),
            "ATYP 05"
        );
        assert_eq!(
            raw_exchange(l, &[5, 1, 0, 5, 1, 0, 0, 1, 2, 3, 4, 0, 80]),
            reply(8),
            "ATYP 00"
        );
        assert_eq!(
            raw_exchange(l, &[5, 1, 0, 5, 1, 0, 3, 0, 0, 80]),
            reply(4),
            "empty domain"
        );
        assert_eq!(
            raw_exchange(l, &[5, 1, 0, 4, 1, 0, 1, 127, 0, 0, 1, 0, 80]),
            reply(1),
            "request version 04"
        );
    }
    // Refused by the agent itself, not by a server.
    d.wait_log(&[
        "via=socks5",
        "end=rejected: unsupported SOCKS5 command 0x02",
    ]);
    d.wait_log(&["end=rejected: bad SOCKS5 request: AddressType(5)"]);

    // Truncated at every offset, then EOF: a clean close, never a reply.
    let echo = sink_then_echo("127.0.0.1:0");
    let mut full = vec![5, 1, 0];
    socks5::write_connect(&mut full, &Addr::Domain(b"localhost".to_vec(), echo.port()));
    for l in [socks_l, mixed_l] {
        for k in 0..full.len() {
            let got = raw_exchange(l, &full[..k]);
            let want: &[u8] = if k >= 3 { &[5, 0] } else { &[] };
            assert_eq!(got, want, "truncated after {k} bytes");
        }
    }
    d.wait_log(&["end=rejected: closed during handshake"]);

    // HTTP listeners (and the mixed one when the first byte is not 05).
    for l in [http_l, mixed_l] {
        let big = format!(
            "GET http://127.0.0.1:1/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9000)
        );
        for (req, want) in [
            (&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], "400"),
            (b"NOT A REQUEST\r\n\r\n", "400"),
            (b"GET / HTTP/9.9\r\n\r\n", "400"),
            (b"GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
            (b"GET ftp://x/ HTTP/1.1\r\n\r\n", "400"),
            (b"GET http:///nohost HTTP/1.1\r\n\r\n", "400"),
            (b"CONNECT host-without-port HTTP/1.1\r\n\r\n", "400"),
            (b"CONNECT [::1] HTTP/1.1\r\n\r\n", "400"),
            (b"CONNECT localhost:99999 HTTP/1.1\r\n\r\n", "400"),
            (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
            (big.as_bytes(), "400"),
        ] {
            let got = raw_exchange(l, req);
            assert_eq!(
                status_of(&got),
                want,
                "{:?}",
                String::from_utf8_lossy(&req[..req.len().min(60)])
            );
        }
        // A truncated head, then EOF: closed without an answer.
        assert_eq!(raw_exchange(l, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n"), b"");
    }

    // Silent or stalled clients are dropped at the handshake deadline.
    let t = Instant::now();
    let stalled: Vec<TcpStream> = [
        (socks_l, &b""[..]),
        (socks_l, &[5, 1][..]),
        (http_l, b"CONNECT 127.0.0.1:1 HTT"),
        (mixed_l, b""),
    ]
    .iter()
    .map(|(l, b)| {
        let mut s = dial(*l);
        s.write_all(b).unwrap();
        s
    })
    .collect();
    for mut s in stalled {
        let got = read_to_end(&mut s);
        assert!(got.is_empty(), "{got:02x?}");
    }
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    d.wait_log(&["end=rejected: handshake timed out"]);

    // Still serving, on every listener.
    d.assert_alive();
    socks_echo_ok(socks_l, b"still serving");
    socks_echo_ok(mixed_l, b"still serving");
    let (h, _) = http_connect(http_l, &echo.to_string(), "", b"");
    assert_eq!(h.second, "200");
}

#[test]
fn proxy_pac_has_one_content_type() {
    let d = simple_agent(closed_port(), "  pool: {size: 0}\n");
    let l = d.addrs[1];
    let (h, _, _, _) = http_exchange(
        l,
        format!("GET /proxy.pac HTTP/1.1\r\nHost: {l}\r\n\r\n").as_bytes(),
    );
    assert_eq!(h.second, "200");
    assert_eq!(
        h.all("Content-Type").collect::<Vec<_>>(),
        ["application/x-ns-proxy-autoconfig"]
    );
}

#[test]
fn non_socks_bytes_on_the_socks5_port_are_just_closed() {
    let d = simple_agent(closed_port(), "  pool: {size: 0}\n");
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[4, 1, 0, 80, 127, 0, 0, 1, 0],
        &[0],
    ] {
        assert_eq!(raw_exchange(d.addrs[0], junk), b"", "{junk:02x?}");
    }
}

#[test]
fn listeners_may_share_port_zero() {
    let (code, msg) = check(&format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  http: {{listen: [\"127.0.0.1:0\"]}}\n  mixed: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n{}",
        server_entry("s", "127.0.0.1:8080".parse().unwrap(), PASS)
    ));
    assert_eq!(code, 0, "{msg}");
}

/// With the agent's connect timeout equal to the server's (both default to
/// 10 s), a destination that never answers must still be the server's
/// result (06), not a server failure: no server marked down, no failover
/// that tries the same dead destination through every server.
#[test]
fn destination_timeout_is_not_a_server_failure() {
    let yaml = server_yaml(&format!("{ALLOW_LOOPBACK}  timeouts:\n    connect: 1s\n"));
    let (s1, s2) = (Daemon::server(&yaml), Daemon::server(&yaml));
    let d = agent(
        &format!(
            "{}  servers:\n{}{}  pool: {{size: 0}}\n  timeouts: {{connect: 1s}}\n",
            all_listeners(),
            server_entry("s", s1.addr(), PASS),
            server_entry("t", s2.addr(), PASS)
        ),
        3,
    );
    let Some((_l, _held, hole)) = blackhole() else {
        skip("the accept queue never filled here");
        return;
    };
    let t = Instant::now();
    let (rep, s) = socks_open(d.addrs[0], &Addr::Ip(hole), b"");
    let took = t.elapsed();
    let line = line_of(&d, s.local_addr().unwrap());
    assert_eq!(rep, 0x06, "{line}");
    assert!(line.contains("end=refused: server replied 0x06"), "{line}");
    assert!(took < Duration::from_millis(1800), "{took:?}: {line}");
    assert!(
        !d.log.lock().unwrap().iter().any(|l| l.contains("is down")),
        "{:#?}",
        d.log.lock().unwrap()
    );
}

/// Many clients at once share a small pool.
#[test]
fn concurrent_clients_share_the_pool() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 2}\n");
    let (socks_l, http_l) = (d.addrs[0], d.addrs[1]);
    let workers: Vec<_> = (0..24)
        .map(|i| {
            thread::spawn(move || {
                let payload = pattern(20_000 + i, i);
                let dest = sink_then_echo("127.0.0.1:0");
                let mut s = if i % 2 == 0 {
                    let (rep, s) = socks_open(socks_l, &Addr::Ip(dest), b"");
                    assert_eq!(rep, 0);
                    s
                } else {
                    let (h, s) = http_connect(http_l, &dest.to_string(), "", b"");
                    assert_eq!(h.second, "200");
                    s
                };
                s.write_all(&payload).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                assert!(read_to_end(&mut s) == payload, "client {i}");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// Over `max_connections`, new local connections are closed at once; the
/// agent serves again when one ends.
#[test]
fn max_connections_is_enforced() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 0}\n  max_connections: 2\n");
    let echo = echo_server();
    let held: Vec<TcpStream> = (0..2)
        .map(|_| socks_open(d.addrs[0], &Addr::Ip(echo), b"").1)
        .collect();
    let mut s = dial(d.addrs[2]);
    let _ = s.write_all(&[5, 1, 0]);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "{got:02x?}");
    d.wait_log(&["max_connections (2) reached"]);
    drop(held);
    wait_until(Duration::from_secs(3), "a free slot", || {
        let mut s = dial(d.addrs[0]);
        let _ = s.write_all(&[5, 1, 0]);
        let mut b = [0u8; 2];
        s.read_exact(&mut b).is_ok() && b == [5, 0]
    });
    socks_echo_ok(d.addrs[0], b"served again");
}

/// The congestion control of established TCP sockets matching the `ss`
/// filter `filter` (the first word of each socket's `-i` line).
fn congestion_of(ss: &Path, filter: &str) -> Vec<String> {
    let out = Command::new(ss)
        .args(["-tinH", "state", "established"])
        .args(filter.split_whitespace())
        .output()
        .unwrap();
    assert!(out.status.success(), "ss {filter}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter(|l| l.starts_with(char::is_whitespace))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Every leg of a loopback tunnel (client → agent, agent → server, server
/// → destination) runs reno when the host's default congestion control is
/// BBR, which paces each send even where nothing can congest; on any other
/// host the default is left alone.
#[test]
fn loopback_legs_use_reno_when_the_default_is_bbr() {
    let Some(ss) = need_tool("ss", "iproute2") else {
        return;
    };
    let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .unwrap_or_default()
        .trim()
        .to_string();
    let want = if default.starts_with("bbr") {
        "reno"
    } else {
        default.as_str()
    };
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 1}\n");
    let echo = echo_server();
    let (rep, mut s) = socks_open(d.addrs[0], &Addr::Ip(echo), b"");
    assert_eq!(rep, 0);
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let legs = [
        (
            "agent's side of the client",
            format!("sport = :{}", d.addrs[0].port()),
        ),
        (
            "agent to server",
            format!("dport = :{}", server.addr().port()),
        ),
        (
            "server's side of the agent",
            format!("sport = :{}", server.addr().port()),
        ),
        ("server to destination", format!("dport = :{}", echo.port())),
    ];
    for (leg, filter) in legs {
        let ccs = congestion_of(&ss, &filter);
        assert!(!ccs.is_empty(), "{leg}: no socket matches {filter}");
        assert!(
            ccs.iter().all(|c| c == want),
            "{leg} ({filter}): {ccs:?}, want {want} (default {default})"
        );
    }
}
