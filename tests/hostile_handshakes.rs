//! The server's front door under attack: slow handshakes cannot lock
//! others out, a grant is always the current configuration's, and PONG
//! floods are cut short.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use websocks::proto::socks5::{self, Addr};
use websocks::proto::ws;

/// A connection from `from` (a 127.0.0.0/8 address) to `to`.
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Opens `n` connections from 127.0.0.1 that send an HTTP head one byte a
/// second and never finish it; returns a flag that stops the dribbling.
fn slow_handshakes(server: SocketAddr, n: usize) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut held = Vec::new();
    for _ in 0..n {
        if let Ok(s) = connect_from("127.0.0.1", server) {
            let _ = s.set_nonblocking(true);
            held.push(s);
        }
    }
    let stop2 = stop.clone();
    thread::spawn(move || {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
        let mut i = 0;
        while !stop2.load(Ordering::Relaxed) {
            for s in &mut held {
                let _ = s.write(&head[i % head.len()..][..1]);
            }
            i += 1;
            thread::sleep(Duration::from_secs(1));
        }
    });
    stop
}

/// Opens a tunnel to `echo` from `from` and checks it echoes; how long the
/// tunnel took to open, or why it failed.
fn timed_tunnel(from: &str, server: SocketAddr, echo: SocketAddr) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut s = connect_from(from, server).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(&upgrade_request()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let want = b"HTTP/1.1 101";
    while buf.len() < want.len() {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(format!("no 101: {:?}", String::from_utf8_lossy(&buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let (_, rest) = {
        // The rest of the head.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return Err("head cut".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (buf[..end].to_vec(), buf[end..].to_vec())
    };
    s.write_all(&socks_preamble(&Addr::Ip(echo)))
        .map_err(|e| e.to_string())?;
    let got = read_exact_after(&mut s, rest, 22);
    if got[12..14] != [5, 0] {
        return Err(format!("reply {:02x?}", &got[12..]));
    }
    let took = t0.elapsed();
    s.write_all(b"ping").map_err(|e| e.to_string())?;
    let echoed = read_exact_after(&mut s, Vec::new(), 4);
    if echoed != b"ping" {
        return Err("no echo".into());
    }
    Ok(took)
}

/// Ten tunnels from 127.0.0.2 while `slow` slow handshakes from 127.0.0.1
/// are held: at least nine open, each within 2 s.
fn legitimate_clients_get_through(extra: &str, slow: usize) {
    let d = Daemon::server(&server_yaml(&format!("{ALLOW_LOOPBACK}{extra}")));
    let echo = echo_server();
    let stop = slow_handshakes(d.addr(), slow);
    // Let the server take in (or refuse) the whole flood first.
    thread::sleep(Duration::from_millis(500));
    let mut ok = 0;
    let mut failures = Vec::new();
    for _ in 0..10 {
        match timed_tunnel("127.0.0.2", d.addr(), echo) {
            Ok(t) if t <= Duration::from_secs(2) => ok += 1,
            Ok(t) => failures.push(format!("took {t:?}")),
            Err(e) => failures.push(e),
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(ok >= 9, "{ok} of 10 got through: {failures:?}");
    d.wait_log(&["max_handshakes_per_source", "reached", "127.0.0.1"]);
}

#[test]
fn slow_handshakes_from_one_address_cannot_lock_out_others() {
    legitimate_clients_get_through("  max_connections: 200\n", 400);
}

#[test]
fn slow_handshakes_cannot_lock_out_others_with_the_defaults() {
    legitimate_clients_get_through("", 4100);
}

#[test]
fn the_whole_handshake_budget_is_below_max_connections() {
    // One source may take the whole handshake budget here, and still the
    // tunnels keep their room: an authenticated pooled connection opens.
    let d = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  max_connections: 20\n  max_handshakes: 5\n  max_handshakes_per_source: 5\n"
    )));
    let echo = echo_server();
    let stop = slow_handshakes(d.addr(), 30);
    thread::sleep(Duration::from_millis(300));
    // Handshakes are full: a new one is refused at once (closed).
    let mut s = connect_from("127.0.0.3", d.addr()).unwrap();
    let _ = s.write_all(&upgrade_request());
    let mut b = [0u8; 16];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    d.wait_log(&["max_handshakes (5) reached"]);
    stop.store(true, Ordering::Relaxed);
    // Once they end (here: the handshake timeout), tunnels open again.
    drop(stop);
    let end = Instant::now() + Duration::from_secs(15);
    while timed_tunnel("127.0.0.3", d.addr(), echo).is_err() {
        assert!(Instant::now() < end, "handshake budget never came back");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn handshake_limits_are_checked() {
    for (extra, key) in [
        (
            "  max_connections: 10\n  max_handshakes: 11\n",
            "server.max_handshakes",
        ),
        ("  max_handshakes: 0\n", "server.max_handshakes"),
        (
            "  max_handshakes: 10\n  max_handshakes_per_source: 11\n",
            "server.max_handshakes_per_source",
        ),
    ] {
        let dir = temp_dir();
        let f = dir.join("c.yaml");
        std::fs::write(&f, server_yaml(extra)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_websocks"))
            .args(["check", "-c"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{extra}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains("c.yaml:"), "{err}");
    }
}

/// Upgrades as `user`, sends one PONG and waits: a pooled connection.
fn pooled(server: SocketAddr, user: &str, pass: &str) -> (TcpStream, Vec<u8>) {
    let mut s = connect(server);
    s.write_all(&upgrade_request_as(user, pass)).unwrap();
    let (h, rest) = read_head(&mut s);
    assert_eq!(h.second, "101", "{user}");
    s.write_all(&ws::PONG).unwrap();
    (s, rest)
}

/// True when the server closed `s` within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    let end = Instant::now() + within;
    while Instant::now() < end {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn reload_closes_waiting_connections_of_removed_or_changed_users() {
    let d0 = temp_dir();
    let users = d0.join("users.yaml");
    let write_users = |body: &str| std::fs::write(&users, body).unwrap();
    write_users("- {name: bob, password: bobpw}\n- {name: carol, password: old}\n");
    let d = Daemon::server(&format!(
        "log_level: debug\nserver:\n  listen: [\"127.0.0.1:0\"]\n  users: [{{name: {USER}, password: {PASS}}}]\n  users_file: {}\n{ALLOW_LOOPBACK}",
        users.display()
    ));
    let echo = echo_server();
    let (mut bob, _) = pooled(d.addr(), "bob", "bobpw");
    let (mut carol, _) = pooled(d.addr(), "carol", "old");
    let (mut alice, rest) = pooled(d.addr(), USER, PASS);
    // Bob is removed, carol's password changes, alice is untouched; and
    // loopback destinations are now denied.
    write_users("- {name: carol, password: new}\n");
    let cfg = d.dir.join("websocks.yaml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(ALLOW_LOOPBACK, "");
    std::fs::write(&cfg, text).unwrap();
    signal(d.child.id(), "HUP");
    d.wait_log(&["reloaded", "2 users"]);
    assert!(
        closed_within(&mut bob, Duration::from_secs(2)),
        "bob's connection still open"
    );
    assert!(
        closed_within(&mut carol, Duration::from_secs(2)),
        "carol's connection still open"
    );
    d.wait_log(&["user=bob", "user removed or password changed by a reload"]);
    // Alice's waiting connection lives on, under today's policy: 02.
    alice.write_all(&socks_preamble(&Addr::Ip(echo))).unwrap();
    let got = read_exact_after(&mut alice, rest, 12 + 2);
    assert_eq!(&got[10..12], &[5, 0]);
    let (reply, _) = read_socks_reply(&mut alice, got[12..].to_vec());
    assert_eq!(reply.rep, socks5::REP_NOT_ALLOWED);
}

#[test]
fn a_grant_revoked_between_frame_and_request_is_refused() {
    // The frame is sent before the reload, the request after: the
    // request is answered 02, not dialled.
    let d0 = temp_dir();
    let users = d0.join("users.yaml");
    std::fs::write(&users, "- {name: bob, password: bobpw}\n").unwrap();
    let d = Daemon::server(&format!(
        "log_level: debug\nserver:\n  listen: [\"127.0.0.1:0\"]\n  users: [{{name: {USER}, password: {PASS}}}]\n  users_file: {}\n{ALLOW_LOOPBACK}",
        users.display()
    ));
    let echo = echo_server();
    let (mut bob, rest) = pooled(d.addr(), "bob", "bobpw");
    let mut greet = ws::FRAME.to_vec();
    socks5::write_greeting(&mut greet, &[socks5::METHOD_NO_AUTH]);
    bob.write_all(&greet).unwrap();
    let got = read_exact_after(&mut bob, rest, 12);
    assert_eq!(&got[10..12], &[5, 0]);
    std::fs::write(&users, "[]\n").unwrap();
    signal(d.child.id(), "HUP");
    d.wait_log(&["reloaded", "1 users"]);
    let mut req = Vec::new();
    socks5::write_connect(&mut req, &Addr::Ip(echo));
    bob.write_all(&req).unwrap();
    let (reply, _) = read_socks_reply(&mut bob, got[12..].to_vec());
    assert_eq!(reply.rep, socks5::REP_NOT_ALLOWED);
}

#[test]
fn pong_floods_are_cut_and_keepalives_are_not() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let echo = echo_server();
    // A flood: 10,000 PONGs in one write.
    let (mut flood, _) = pooled(d.addr(), USER, PASS);
    let _ = flood.write_all(&ws::PONG.repeat(10_000));
    assert!(
        closed_within(&mut flood, Duration::from_secs(2)),
        "flood not cut"
    );
    d.wait_log(&["PONG flood"]);
    // A keepalive: 30 PONGs over 1.5 s, then a tunnel.
    let (mut keep, rest) = pooled(d.addr(), USER, PASS);
    for _ in 0..30 {
        keep.write_all(&ws::PONG).unwrap();
        thread::sleep(Duration::from_millis(50));
    }
    // A burst within the budget, as after a stall, is fine too.
    keep.write_all(&ws::PONG.repeat(50)).unwrap();
    keep.write_all(&socks_preamble(&Addr::Ip(echo))).unwrap();
    let got = read_exact_after(&mut keep, rest, 22);
    assert_eq!(got[12..14], [5, 0]);
}
