//! The agent end to end, every way in: local clients (SOCKS5, HTTP CONNECT,
//! HTTP absolute-form forwarding, the mixed port) → `websocks agent` →
//! `websocks server` → destinations by IPv4, name and IPv6, pooled and
//! unpooled, all on loopback (127.0.0.1, and ::1 when it can be bound); and
//! the server's real result passed on to each kind of client. Every socket
//! operation is bounded by a timeout (helpers in `common/agent.rs`).

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::*;
use common::*;
use websocks::proto::socks5::Addr;

// ---------------------------------------------------- the whole matrix

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

// ---------------------------------------------- the server's real result

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
