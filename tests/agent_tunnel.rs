//! An agent tunnel once it is open, and many of them: half-close from the
//! destination, the idle timeout, clients sharing the pool, the
//! `max_connections` limit, and reno on loopback legs. All on loopback;
//! every socket operation is bounded by a timeout (helpers in
//! `common/agent.rs`).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::agent::*;
use common::*;
use websocks::proto::socks5::Addr;

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

/// The pool grows with demand: after a burst of 12 at once, it holds 12
/// (up to `pool.max`), refilled in parallel; a burst of that size then
/// finds them all ready.
#[test]
fn the_pool_grows_with_a_burst() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = Daemon::start(
        &["agent"],
        &format!(
            "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n{}  \
             pool: {{size: 2, max: 12}}\nmetrics:\n  listen: [\"127.0.0.1:0\"]\n",
            server_entry("s", server.addr(), PASS)
        ),
        2,
    );
    let (proxy, metrics) = (d.addrs[0], d.addrs[1]);
    let ready = || -> usize {
        let mut s = dial(metrics);
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let text = String::from_utf8(read_to_end(&mut s)).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("websocks_agent_pool_ready{server=\"s\"} "))
            .unwrap_or_else(|| panic!("{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    wait_until(Duration::from_secs(5), "the first 2", || ready() == 2);
    let echo = echo_server();
    let burst = |n: usize| {
        let workers: Vec<_> = (0..n)
            .map(|i| {
                thread::spawn(move || {
                    let (rep, mut s) = socks_open(proxy, &Addr::Ip(echo), b"");
                    assert_eq!(rep, 0);
                    let text = format!("client {i}");
                    s.write_all(text.as_bytes()).unwrap();
                    assert_eq!(
                        read_exact_after(&mut s, Vec::new(), text.len()),
                        text.as_bytes()
                    );
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    };
    burst(12);
    wait_until(Duration::from_secs(5), "a pool of 12", || ready() == 12);
    // Never beyond max, however big the burst.
    burst(20);
    wait_until(Duration::from_secs(5), "a pool of 12 again", || {
        ready() == 12
    });
    thread::sleep(Duration::from_millis(300));
    assert_eq!(ready(), 12);
    let pooled = d
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("server=s(pooled)"))
        .count();
    assert!(pooled >= 12 + 2, "{pooled} pooled tunnels");
}

/// A big pool fills a few upgrades at a time: never over the server's
/// handshake budget for one source (64 by default), so no upgrade, health
/// check or fresh tunnel is refused meanwhile.
#[test]
fn a_big_pool_fills_within_the_servers_budget_per_source() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 100}\n");
    let echo = echo_server();
    for _ in 0..5 {
        let (rep, mut s) = socks_open(d.addrs[0], &Addr::Ip(echo), b"");
        assert_eq!(rep, 0);
        s.write_all(b"x").unwrap();
        assert_eq!(read_exact_after(&mut s, Vec::new(), 1), b"x");
    }
    thread::sleep(Duration::from_millis(500));
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("reached"), "{log}");
    let log = d.log.lock().unwrap().join("\n");
    assert!(!log.contains("is down"), "{log}");
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
