//! The agent pipelines upgrade, frame, greeting and CONNECT in one write to
//! a server whose 101 says `WebSocks-Options: pipelining` (ours), one
//! round trip less per fresh tunnel; never to a server that has not said
//! so (the reference drops such bytes); and when a server stops saying so,
//! the tunnel is opened again the careful way.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::agent::{socks_open, wait_until};
use common::*;
use websocks::proto::socks5::Addr;
use websocks::proto::{Parse, http, socks5, ws};

/// What the fake saw on one connection: whether bytes came in the same
/// segment as the upgrade request, and whether it became a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    pipelined: bool,
    tunnel: bool,
}

/// A WebSocks server in a few lines: announces pipelining while
/// `announce` is set; when it does not, it drops bytes that came behind
/// the request, as the reference server does.
struct Fake {
    addr: SocketAddr,
    announce: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    /// Waits for `n` connections to have ended; returns what was seen.
    fn all(&self, n: usize) -> Vec<Seen> {
        wait_until(Duration::from_secs(5), "the connections' ends", || {
            self.seen.lock().unwrap().len() >= n
        });
        self.seen.lock().unwrap().clone()
    }
}

fn fake() -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let announce = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (a, s) = (announce.clone(), seen.clone());
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let (a, s) = (a.clone(), s.clone());
            thread::spawn(move || {
                if let Some(seen) = handle(c, a.load(Ordering::SeqCst)) {
                    s.lock().unwrap().push(seen);
                }
            });
        }
    });
    Fake {
        addr,
        announce,
        seen,
    }
}

fn handle(mut c: TcpStream, announce: bool) -> Option<Seen> {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, used) = loop {
        let n = c.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(Parse::Done(h, used)) = http::parse_request(&buf) {
            break (h, used);
        }
    };
    let pipelined = buf.len() > used;
    let key = ws::check_upgrade(&head).unwrap().key;
    let mut out = Vec::new();
    let options: &[&str] = if announce { &[ws::PIPELINING] } else { &[] };
    ws::write_switching(&mut out, &key, options);
    c.write_all(&out).unwrap();
    let mut rest = if announce {
        buf[used..].to_vec()
    } else {
        Vec::new()
    };
    // Frame, greeting, CONNECT (IPv4 in these tests: 10 + 3 + 10 bytes).
    while rest.len() < 23 {
        match c.read(&mut chunk) {
            Ok(n) if n > 0 => rest.extend_from_slice(&chunk[..n]),
            _ => {
                return Some(Seen {
                    pipelined,
                    tunnel: false,
                });
            }
        }
    }
    assert_eq!(rest[..10], ws::FRAME);
    assert_eq!(rest[10..13], [5, 1, 0]);
    let Ok(Parse::Done(req, _)) = socks5::parse_request(&rest[13..]) else {
        panic!("{rest:02x?}")
    };
    let Addr::Ip(dest) = req.addr else { panic!() };
    let mut d = TcpStream::connect(dest).unwrap();
    let mut answer = ws::FRAME.to_vec();
    answer.extend_from_slice(&[5, 0]);
    socks5::write_reply(&mut answer, socks5::Reply::Succeeded, &req.addr);
    c.write_all(&answer).unwrap();
    let (mut c2, mut d2) = (c.try_clone().unwrap(), d.try_clone().unwrap());
    thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut d2);
        let _ = d2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut d, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Write);
    Some(Seen {
        pipelined,
        tunnel: true,
    })
}

fn agent_for(server: SocketAddr) -> Daemon {
    Daemon::start(
        &["agent"],
        &format!(
            "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    \
             - {{name: s, url: \"ws://{server}/\", user: {USER}, password: {PASS}}}\n  \
             pool: {{size: 0}}\n  health: {{interval: 1h, timeout: 5s}}\n"
        ),
        1,
    )
}

/// One echo round trip through the agent.
fn echo_through(proxy: SocketAddr, echo: SocketAddr, text: &[u8]) {
    let (rep, mut s) = socks_open(proxy, &Addr::Ip(echo), b"");
    assert_eq!(rep, 0);
    s.write_all(text).unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), text.len()), text);
}

#[test]
fn pipelines_to_a_server_that_says_it_keeps_the_bytes() {
    let f = fake();
    let a = agent_for(f.addr);
    let echo = echo_server();
    // The start-up health check learns it (a plain upgrade).
    wait_until(Duration::from_secs(5), "the health check", || {
        f.seen.lock().unwrap().len() == 1
    });
    assert!(!f.seen.lock().unwrap()[0].pipelined);
    for i in 0..3 {
        echo_through(a.addr(), echo, format!("tunnel {i}").as_bytes());
    }
    let seen = f.all(4);
    assert_eq!(
        seen[1..],
        [Seen {
            pipelined: true,
            tunnel: true
        }; 3],
        "{seen:?}"
    );
}

#[test]
fn a_server_that_stops_saying_so_gets_the_careful_way() {
    let f = fake();
    let a = agent_for(f.addr);
    let echo = echo_server();
    wait_until(Duration::from_secs(5), "the health check", || {
        f.seen.lock().unwrap().len() == 1
    });
    // Another server now answers at that address, one that drops what
    // was pipelined.
    f.announce.store(false, Ordering::SeqCst);
    echo_through(a.addr(), echo, b"after the change");
    echo_through(a.addr(), echo, b"and after that");
    // In the order they ended: the one given up may end last.
    let seen = f.all(4);
    let count = |pipelined, tunnel| {
        seen[1..]
            .iter()
            .filter(|s| **s == Seen { pipelined, tunnel })
            .count()
    };
    // Pipelined, answered without the word: given up unused; then the
    // careful way, for this tunnel and the next.
    assert_eq!(count(true, false), 1, "{seen:?}");
    assert_eq!(count(false, true), 2, "{seen:?}");
    a.wait_log(&["no longer announces pipelining"]);
}

/// Our own server announces it to our agent, and keeps what comes behind
/// the request: tunnels through it work pipelined (the server's log shows
/// the tunnel), and the reference agent's 101 stays the reference's.
#[test]
fn our_server_announces_pipelining_only_to_our_dialect() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let mut s = connect(d.addr());
    s.write_all(&upgrade_request()).unwrap();
    let (h, _) = read_head(&mut s);
    assert_eq!(h.count(ws::OPTIONS), 0, "no header for a plain client");
    let mut req = Vec::new();
    http::write_upgrade_request(
        &mut req,
        "/",
        "x",
        "dGhlIHNhbXBsZSBub25jZQ==",
        &authorization(USER, PASS, 0),
        &[ws::DATA_WITH_REPLY],
    );
    let echo = echo_server();
    // Everything in one write, as the agent sends it.
    req.extend_from_slice(&socks_preamble(&Addr::Ip(echo)));
    req.extend_from_slice(b"early");
    let mut s = connect(d.addr());
    s.write_all(&req).unwrap();
    let (h, rest) = read_head(&mut s);
    assert!(h.has_token(ws::OPTIONS, ws::PIPELINING), "{h:?}");
    let got = read_exact_after(&mut s, rest, 12 + 10 + 5);
    assert_eq!(got[10..14], [5, 0, 5, 0]);
    assert_eq!(&got[22..], b"early");
}
