//! Defects found in review, each pinned by the input that showed it:
//! reloads that would open an agent to the network or fail on a file that
//! holds both sections, routing rules dodged with names, pipelined HTTP
//! requests reaching the wrong origin.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use websocks::proto::socks5::{self, Addr};

fn agent_yaml(server: SocketAddr, listen: &str, extra: &str) -> String {
    format!(
        "log_level: debug\nagent:\n  socks5: {{listen: [\"{listen}\"]}}\n  http: {{listen: [\"127.0.0.1:0\"]}}\n  \
         servers: [{{name: s, url: \"ws://{server}/\", user: {USER}, password: {PASS}}}]\n  pool: {{size: 0}}\n{extra}"
    )
}

/// SOCKS5 no-auth CONNECT; the reply code and the stream.
fn socks_connect(proxy: SocketAddr, dest: &Addr) -> (u8, TcpStream) {
    let mut s = connect(proxy);
    let mut out = Vec::new();
    socks5::write_greeting(&mut out, &[socks5::METHOD_NO_AUTH]);
    socks5::write_connect(&mut out, dest);
    s.write_all(&out).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), 2);
    assert_eq!(got, [5, 0], "method choice");
    let (reply, _) = read_socks_reply(&mut s, Vec::new());
    (reply.rep, s)
}

#[test]
fn reload_cannot_drop_users_while_bound_beyond_loopback() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    // Listening on every address: users are required.
    let users = "  users: [{name: me, password: pw}]\n";
    let d = Daemon::start(
        &["agent"],
        &agent_yaml(server.addr(), "0.0.0.0:0", users),
        2,
    );
    let socks = SocketAddr::from(([127, 0, 0, 1], d.addrs[0].port()));
    // The edited file listens on loopback only and has no users; the
    // socket stays bound to 0.0.0.0 until a restart, so this must fail.
    let cfg = d.dir.join("websocks.yaml");
    std::fs::write(
        &cfg,
        format!(
            "log_target: stderr\n{}",
            agent_yaml(server.addr(), "127.0.0.1:0", "")
        ),
    )
    .unwrap();
    signal(d.child.id(), "HUP");
    let line = d.wait_log(&["reload failed", "beyond loopback", "agent.users"]);
    assert!(line.contains("0.0.0.0:"), "{line}");
    // Still asks for a password.
    let mut s = connect(socks);
    s.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 2), [5, 0xff]);
}

#[test]
fn reload_of_a_file_with_both_sections_serves_only_its_own() {
    let yaml = format!(
        "{}agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers: [{{name: s, url: \"ws://127.0.0.1:9/\", user: a, password: b}}]\n",
        server_yaml(ALLOW_LOOPBACK)
    );
    let d = Daemon::server(&yaml);
    signal(d.child.id(), "HUP");
    d.wait_log(&["reloaded", "1 users"]);
    assert!(
        !d.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reload failed")),
        "{:#?}",
        d.log.lock().unwrap()
    );
}

#[test]
fn names_cannot_dodge_cidr_rules() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let echo = echo_server();
    let rules = format!(
        "  rules:\n    - {{cidr: [\"127.0.0.0/8\"], port: [{}], action: reject}}\n",
        echo.port()
    );
    let d = Daemon::start(
        &["agent"],
        &agent_yaml(server.addr(), "127.0.0.1:0", &rules),
        2,
    );
    let port = echo.port();
    // The IP literal written as a name is the IP: rejected (02).
    let (rep, _) = socks_connect(d.addr(), &Addr::Domain(b"127.0.0.1".to_vec(), port));
    assert_eq!(rep, 0x02);
    // A numeric form getaddrinfo would take for 127.0.0.1: refused (04).
    for name in ["2130706433", "0x7f.1", "0177.0.0.1"] {
        let (rep, _) = socks_connect(d.addr(), &Addr::Domain(name.as_bytes().to_vec(), port));
        assert_eq!(rep, 0x04, "{name}");
    }
    d.wait_log(&["numeric host name"]);
    // The IP itself: rejected too, and a real name still goes through.
    let (rep, _) = socks_connect(d.addr(), &Addr::Ip(echo));
    assert_eq!(rep, 0x02);
    let (rep, _) = socks_connect(d.addr(), &Addr::Domain(b"localhost".to_vec(), port));
    assert_eq!(rep, 0x00);
}

#[test]
fn pipelined_forward_requests_do_not_reach_the_first_origin() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = Daemon::start(&["agent"], &agent_yaml(server.addr(), "127.0.0.1:0", ""), 2);
    let http = d.addrs[1];
    // The origin records everything it receives on its connection.
    let (tx, rx) = mpsc::channel();
    let origin = serve_each(move |mut s| {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        while !got.windows(7).any(|w| w == b"payload") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        // Anything that arrives after the first request's body.
        loop {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = tx.send(got);
    });
    let mut c = connect(http);
    let first = format!(
        "POST http://127.0.0.1:{}/a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 7\r\n\r\npayload",
        origin.port()
    );
    let second =
        "GET http://other.example/b HTTP/1.1\r\nHost: other.example\r\nCookie: secret=1\r\n\r\n";
    c.write_all(format!("{first}{second}").as_bytes()).unwrap();
    let answer = String::from_utf8(read_to_end(&mut c)).unwrap();
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    let got = String::from_utf8(rx.recv_timeout(IO_TIMEOUT).unwrap()).unwrap();
    assert!(got.ends_with("\r\n\r\npayload"), "{got:?}");
    assert!(
        !got.contains("other.example") && !got.contains("secret"),
        "{got:?}"
    );
    let _ = c.shutdown(Shutdown::Both);
}

/// An agent's pooled connections are not tunnels: a stopping server closes
/// them at once instead of waiting out shutdown_grace for them.
#[test]
fn stop_does_not_wait_for_idle_pooled_connections() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK).replace(
        "log_level: debug\n",
        "log_level: debug\nshutdown_grace: 20s\n",
    ));
    let yaml =
        agent_yaml(server.addr(), "127.0.0.1:0", "").replace("pool: {size: 0}", "pool: {size: 3}");
    let _agent = Daemon::start(&["agent"], &yaml, 2);
    // Wait until the pool is in place on the server side: its STATUS would
    // say so; the log shows nothing for pooled connections, so give it time.
    std::thread::sleep(Duration::from_millis(800));
    let mut server = server;
    let pid = server.child.id();
    let t = std::time::Instant::now();
    signal(pid, "TERM");
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still draining after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    server.wait_log(&["stopped"]);
}
