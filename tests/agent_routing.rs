//! The agent's routing rules: first match wins, `proxy` to a group,
//! `direct`, `reject`, and the default. All on loopback; every socket
//! operation is bounded by a timeout (helpers in `common/agent.rs`).

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::Duration;

use common::agent::*;
use common::*;
use websocks::proto::socks5::Addr;

// --------------------------------------------------------------- routing

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
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
