//! The agent's servers going away: failover within a group, health checks
//! marking a server down and up again, dead pooled connections replaced
//! invisibly (through a switchable proxy in front of the server), and a
//! destination timeout that is not a server failure. All on loopback;
//! every socket operation is bounded by a timeout (helpers in
//! `common/agent.rs`).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::*;
use common::*;
use websocks::proto::socks5::Addr;

// ------------------------------------------------------ a toggle proxy

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
                thread::spawn(move || toggle_up(c2, s2, epoch, &st3));
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

fn toggle_up(mut c: TcpStream, mut s: TcpStream, epoch: u64, st: &Mutex<ToggleState>) {
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

/// Our server behind a [`Toggle`], and an agent (3 listeners) whose one
/// server, `a`, is reached through the toggle; `settings` are the agent's
/// lines after `servers` (pool, health).
fn through_toggle(settings: &str) -> (Daemon, Toggle, Daemon) {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let t = Toggle::new(server.addr());
    let d = agent(
        &format!(
            "{}  servers:\n{}{settings}",
            all_listeners(),
            server_entry("a", t.addr, PASS)
        ),
        3,
    );
    (server, t, d)
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
    let (_server, t, d) =
        through_toggle("  pool: {size: 0}\n  health: {interval: 300ms, timeout: 1s}\n");
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
    let (_server, t, d) =
        through_toggle("  pool: {size: 2, keepalive: 300ms}\n  health: {interval: 30s}\n");
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

/// A pooled connection that its server closed is passed over when taken,
/// at no cost: the agent watches each one from when it is pooled (a
/// readiness interest left armed, no system call per tunnel), so the
/// tunnel goes out on a fresh connection at once instead of failing on the
/// dead one first ("was dead" in the log, a round trip lost).
#[test]
fn closed_pooled_connections_are_passed_over_without_a_try() {
    let (_server, t, d) =
        through_toggle("  pool: {size: 4, keepalive: 60s}\n  health: {interval: 60s}\n");
    for round in 0..3 {
        wait_until(Duration::from_secs(5), "a full pool", || {
            t.st.lock().unwrap().conns.len() >= 4
        });
        thread::sleep(Duration::from_millis(100));
        // Every pooled connection closed under the agent, as a restarting
        // server or a proxy's idle timeout closes them.
        t.kill_existing();
        thread::sleep(Duration::from_millis(200));
        for i in 0..3 {
            socks_echo_ok(d.addrs[0], &pattern(100, round * 3 + i));
        }
    }
    let log = d.log.lock().unwrap();
    assert!(
        !log.iter()
            .any(|l| l.contains("was dead") || l.contains("is down")),
        "{log:#?}"
    );
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
