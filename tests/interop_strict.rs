//! Clients as strict as the reference agent: after its CONNECT it reads
//! once and takes any byte beyond the 10-byte reply for an error
//! (`INVALID_EXTERNAL_DATA - still got data after the connection
//! response`). Destinations that speak first (SSH, SMTP, FTP, MySQL) must
//! not have their banner in that read: the server holds the banner back
//! (`server.banner_hold`) until the client speaks or the hold runs out,
//! except for clients that offer `data-with-reply` (our agent).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::{dial, simple_agent};
use common::*;
use websocks::proto::socks5::{self, Addr};
use websocks::proto::ws;

const BANNER: &[u8] = b"220 smtp.example ESMTP ready\r\n";

/// A destination that greets at once, then echoes.
fn banner_server() -> SocketAddr {
    serve_each(|mut s| {
        if s.write_all(BANNER).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// Opens a tunnel the way the reference agent does in strict mode: the
/// upgrade, the frame, the greeting and the CONNECT each in a write of its
/// own, each after the answer to the one before. After the CONNECT it
/// waits `pause` (a busy agent's read comes late), then reads once; returns
/// the stream and what that one read got.
fn strict_open(server: SocketAddr, dest: SocketAddr, pause: Duration) -> (TcpStream, Vec<u8>) {
    let mut s = connect(server);
    s.write_all(&upgrade_request()).unwrap();
    let (h, rest) = read_head(&mut s);
    assert_eq!(h.second, "101");
    assert!(rest.is_empty(), "bytes after the 101: {rest:02x?}");
    s.write_all(&ws::FRAME).unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 10), ws::FRAME);
    let mut greeting = Vec::new();
    socks5::write_greeting(&mut greeting, &[socks5::METHOD_NO_AUTH]);
    s.write_all(&greeting).unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 2), [5, 0]);
    let mut req = Vec::new();
    socks5::write_connect(&mut req, &Addr::Ip(dest));
    s.write_all(&req).unwrap();
    thread::sleep(pause);
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("the CONNECT reply");
    (s, buf[..n].to_vec())
}

/// The success reply our server sends for `dest` (the default
/// `socks_reply_address: hidden`).
fn reply_for(dest: SocketAddr) -> Vec<u8> {
    let mut v = vec![5, 0, 0, 1, 0, 0, 0, 0];
    v.extend_from_slice(&dest.port().to_be_bytes());
    v
}

#[test]
fn strict_agent_reads_the_reply_alone_before_a_banner_every_time() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let dest = banner_server();
    for i in 0..60 {
        // 10 ms: the banner is sent within a millisecond of the connect.
        let (mut s, first) = strict_open(d.addr(), dest, Duration::from_millis(10));
        assert_eq!(first, reply_for(dest), "tunnel {i}: the reply's read");
        // The banner follows once the hold runs out; the tunnel works.
        assert_eq!(read_exact_after(&mut s, Vec::new(), BANNER.len()), BANNER);
        s.write_all(b"EHLO x\r\n").unwrap();
        assert_eq!(read_exact_after(&mut s, Vec::new(), 8), b"EHLO x\r\n");
    }
    d.wait_log(&["end=closed"]);
}

/// With the hold off, the same client sees the banner in its read: the
/// test above would fail without the hold.
#[test]
fn without_the_hold_the_banner_joins_the_reply() {
    let d = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  banner_hold: 0ms\n"
    )));
    let dest = banner_server();
    for i in 0..3 {
        let (_s, first) = strict_open(d.addr(), dest, Duration::from_millis(300));
        let mut want = reply_for(dest);
        want.extend_from_slice(BANNER);
        assert_eq!(first, want, "tunnel {i}");
    }
}

/// Reads the banner; returns how long it took.
fn banner_after(s: &mut TcpStream, have: Vec<u8>) -> Duration {
    let t = Instant::now();
    assert_eq!(read_exact_after(s, have, BANNER.len()), BANNER);
    t.elapsed()
}

/// A hold of 1 s (the most allowed) against clients that speak: the
/// client's first byte releases the banner, long before the hold's end.
#[test]
fn a_client_that_speaks_releases_the_banner_at_once() {
    let d = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  banner_hold: 1s\n"
    )));
    let dest = banner_server();
    // Speaks after the reply (SSH clients send their version at once).
    let (mut s, first) = strict_open(d.addr(), dest, Duration::ZERO);
    assert_eq!(first, reply_for(dest));
    s.write_all(b"SSH-2.0-x\r\n").unwrap();
    let waited = banner_after(&mut s, Vec::new());
    assert!(waited < Duration::from_millis(700), "{waited:?}");
    assert_eq!(read_exact_after(&mut s, Vec::new(), 11), b"SSH-2.0-x\r\n");

    // Sends its data with the CONNECT (spec "Combine Packets"): nothing to
    // separate, nothing held.
    let mut s = connect(d.addr());
    s.write_all(&upgrade_request()).unwrap();
    let (h, rest) = read_head(&mut s);
    assert_eq!(h.second, "101");
    let mut out = socks_preamble(&Addr::Ip(dest));
    out.extend_from_slice(b"early");
    s.write_all(&out).unwrap();
    let got = read_exact_after(&mut s, rest, 12 + 10);
    assert_eq!(got[12..], reply_for(dest));
    let waited = banner_after(&mut s, Vec::new());
    assert!(waited < Duration::from_millis(700), "{waited:?}");
    assert_eq!(read_exact_after(&mut s, Vec::new(), 5), b"early");
}

/// A client that waits for the greeting (SMTP, FTP, POP3, MySQL) gets it
/// when the hold runs out, not before.
#[test]
fn a_silent_client_gets_the_banner_after_the_hold() {
    let d = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  banner_hold: 1s\n"
    )));
    let dest = banner_server();
    let (mut s, first) = strict_open(d.addr(), dest, Duration::ZERO);
    assert_eq!(first, reply_for(dest));
    let waited = banner_after(&mut s, Vec::new());
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    s.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 6), b"QUIT\r\n");
}

/// Our agent offers `data-with-reply` in its upgrade, so its tunnels are
/// never held, pooled or not: a server-first protocol pays nothing.
#[test]
fn our_agent_is_not_held() {
    let d = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  banner_hold: 1s\n"
    )));
    let dest = banner_server();
    for pool in [0, 2] {
        let a = simple_agent(d.addr(), &format!("  pool: {{size: {pool}}}\n"));
        let proxy = a.addrs[0];
        for _ in 0..3 {
            let mut s = dial(proxy);
            let mut out = socks_request(&Addr::Ip(dest));
            let t = Instant::now();
            s.write_all(&out).unwrap();
            out.clear();
            assert_eq!(read_exact_after(&mut s, Vec::new(), 2), [5, 0]);
            let (reply, rest) = read_socks_reply(&mut s, Vec::new());
            assert_eq!(reply.rep, 0);
            assert_eq!(read_exact_after(&mut s, rest, BANNER.len()), BANNER);
            let took = t.elapsed();
            assert!(took < Duration::from_millis(700), "pool {pool}: {took:?}");
        }
    }
}
