//! One user's hanging DNS does not stall everyone: the server runs in a
//! mount namespace whose resolv.conf names this test's own DNS server,
//! which answers `fast.test` at once and never answers `*.slow.test`.
//! Mallory keeps hundreds of such lookups pending; alice's CONNECT by name
//! must still succeed at once, and the server's threads stay few.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use websocks::proto::socks5::Addr;
use websocks::proto::ws;

const MALLORY: &str = "mallory";
const MALLORY_PASS: &str = "m4ll0ry-pw";

/// The fake DNS server's address. resolv.conf cannot name a port, so it
/// must be port 53; an address in 127/8 that nothing else uses keeps it
/// off the host's own resolver (systemd-resolved is 127.0.0.53/54).
const DNS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 1);

/// Pending CONNECTs mallory opens: more than the `blocking` crate's 500
/// threads, so that without a bound on lookups its pool is full of them.
const PENDING: usize = 600;

/// The server's `timeouts.connect` in this test.
const CONNECT: Duration = Duration::from_secs(3);

/// A DNS server on `DNS_IP`:53 speaking RFC 1035 over UDP; records the
/// names under `slow.test` it was asked about (and never answered).
struct FakeDns {
    slow: Arc<Mutex<HashSet<String>>>,
}

impl FakeDns {
    /// `None` when the address cannot be bound here (not root, or taken).
    fn start() -> Option<FakeDns> {
        let sock = UdpSocket::bind((DNS_IP, 53)).ok()?;
        let slow = Arc::new(Mutex::new(HashSet::new()));
        let seen = slow.clone();
        // The thread (and its socket) end with the test process.
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some((name, qtype, end)) = question(&buf[..n]) else {
                    continue;
                };
                if name.ends_with(".slow.test") {
                    seen.lock().unwrap().insert(name);
                    continue;
                }
                let _ = sock.send_to(&answer(&buf[..end], &name, qtype), from);
            }
        });
        Some(FakeDns { slow })
    }

    fn slow_names_asked(&self) -> usize {
        self.slow.lock().unwrap().len()
    }
}

/// The question of a query (RFC 1035 4.1.1, 4.1.2): the lower-cased name,
/// QTYPE, and where the question ends. `None` for anything unexpected.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let qdcount = u16::from_be_bytes([*q.get(4)?, *q.get(5)?]);
    if q.get(2)? & 0x80 != 0 || qdcount != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        // A query's single question has no compression pointers (0xC0).
        if len > 63 {
            return None;
        }
        labels.push(
            std::str::from_utf8(q.get(i..i + len)?)
                .ok()?
                .to_ascii_lowercase(),
        );
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    q.get(i + 3)?;
    Some((labels.join("."), qtype, i + 4))
}

/// The response to header + question `q`: `fast.test` has one A record,
/// 127.0.0.1, and no other type (NOERROR, no answer, so an AAAA query
/// does not wait); every other name is NXDOMAIN.
fn answer(q: &[u8], name: &str, qtype: u16) -> Vec<u8> {
    const A: u16 = 1;
    let fast = name == "fast.test";
    let with_a = fast && qtype == A;
    let mut r = q[..2].to_vec(); // ID
    // QR, opcode QUERY, AA, RD copied; RA, RCODE 0 or 3 (NXDOMAIN).
    r.push(0x80 | 0x04 | (q[2] & 0x01));
    r.push(0x80 | if fast { 0 } else { 3 });
    r.extend_from_slice(&[0, 1, 0, with_a as u8, 0, 0, 0, 0]);
    r.extend_from_slice(&q[12..]);
    if with_a {
        // Name: pointer to the question's (offset 12); A, IN, TTL 0, 4 bytes.
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
    }
    r
}

/// Runs the server in a mount namespace where /etc/resolv.conf names the
/// fake DNS server (waiting longer than the connect deadline, so lookups
/// really hang), /etc/hosts knows none of the test names and nsswitch
/// asks files then DNS. `None` when namespaces are not available here.
fn server_with_fake_dns(yaml: &str) -> Option<Daemon> {
    let dir = temp_dir();
    let files = [
        (
            "resolv.conf",
            format!("nameserver {DNS_IP}\noptions timeout:8 attempts:1\n"),
            "/etc/resolv.conf",
        ),
        ("hosts", "127.0.0.1 localhost\n".into(), "/etc/hosts"),
        (
            "nsswitch.conf",
            "hosts: files dns\n".into(),
            "/etc/nsswitch.conf",
        ),
    ];
    let mut script = String::new();
    for (name, text, target) in &files {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        script.push_str(&format!("mount --bind {} {target} && ", file.display()));
    }
    let ok = Command::new(find_tool("unshare")?)
        .args(["-m", "sh", "-c", &format!("{script}true")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    script.push_str("exec \"$0\" \"$@\"");
    let d = Daemon::start_via(
        &["unshare", "-m", "sh", "-c", &script],
        &["server"],
        yaml,
        1,
    );
    // Listening, so mounted: the mounts keep the files, not their names.
    let _ = std::fs::remove_dir_all(&dir);
    Some(d)
}

/// Upgrade request for `user`, then frame, greeting and CONNECT `dest`,
/// all in one write (the server keeps what each stage did not use).
fn send_connect(server: SocketAddr, user: &str, pass: &str, dest: &Addr) -> TcpStream {
    let mut req = upgrade_request_as(user, pass);
    req.extend_from_slice(&socks_preamble(dest));
    let mut s = connect(server);
    s.write_all(&req).unwrap();
    s
}

/// Reads the 101, the server's frame and method choice, and the 10-byte
/// CONNECT reply (an IPv4 BND.ADDR: the server's hidden reply address).
fn read_reply(s: &mut TcpStream) -> Vec<u8> {
    let (head, rest) = read_head(s);
    assert_eq!(head.second, "101");
    let got = read_exact_after(s, rest, 12 + 10);
    let mut frame_and_choice = ws::FRAME.to_vec();
    frame_and_choice.extend_from_slice(&[5, 0]);
    assert_eq!(got[..12], frame_and_choice[..]);
    got[12..].to_vec()
}

/// The reply to a CONNECT for `port` that succeeded (hidden BND.ADDR).
fn succeeded(port: u16) -> Vec<u8> {
    let mut v = vec![5, 0, 0, 1, 0, 0, 0, 0];
    v.extend_from_slice(&port.to_be_bytes());
    v
}

/// A CONNECT through `user` to `dest` (the echo destination): asserts
/// success and an echoed message; returns how long the reply took.
fn echo_through(server: SocketAddr, user: &str, pass: &str, dest: &Addr) -> Duration {
    let t = Instant::now();
    let mut s = send_connect(server, user, pass, dest);
    let reply = read_reply(&mut s);
    let took = t.elapsed();
    assert_eq!(reply, succeeded(dest.port()), "{user} to {dest:?}");
    s.write_all(b"ping").unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 4), b"ping");
    took
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(std::iter::Iterator::count)
        .unwrap_or(0)
}

#[test]
fn one_users_hanging_lookups_do_not_delay_another_users() {
    let Some(dns) = FakeDns::start() else {
        skip("needs root: cannot bind UDP 127.0.53.1:53");
        return;
    };
    let yaml = server_yaml(&format!(
        "    - name: {MALLORY}\n      password: {MALLORY_PASS}\n\
         {ALLOW_LOOPBACK}  timeouts:\n    connect: {}s\n\
         # Mallory's hundreds of handshakes all come from 127.0.0.1.\n  \
         max_handshakes_per_source: 2048\n",
        CONNECT.as_secs()
    ));
    let Some(d) = server_with_fake_dns(&yaml) else {
        skip("needs mount namespaces: unshare -m (util-linux), as root");
        return;
    };
    let pid = d.child.id();
    let echo = echo_server();
    let fast = Addr::Domain(b"fast.test".to_vec(), echo.port());
    let took = echo_through(d.addr(), USER, PASS, &fast);
    assert!(took < Duration::from_secs(1), "alice alone: {took:?}");

    // Mallory: hundreds of CONNECTs to distinct names nobody answers.
    let mut pending = Vec::new();
    for i in 0..PENDING {
        let dest = Addr::Domain(format!("{i}.slow.test").into_bytes(), 80);
        let s = send_connect(d.addr(), MALLORY, MALLORY_PASS, &dest);
        pending.push((s, Instant::now()));
    }
    let end = Instant::now() + Duration::from_secs(5);
    while dns.slow_names_asked() < 8 {
        assert!(Instant::now() < end, "mallory's lookups never reached DNS");
        thread::sleep(Duration::from_millis(20));
    }

    // While they hang: alice by name, repeatedly; mallory by IP literal
    // (no lookup, so her full share of lookups does not hold her back).
    let mut most_threads = threads(pid);
    for i in 0..5 {
        let took = echo_through(d.addr(), USER, PASS, &fast);
        assert!(took < Duration::from_secs(1), "alice, try {i}: {took:?}");
        most_threads = most_threads.max(threads(pid));
        thread::sleep(Duration::from_millis(100));
    }
    let literal = Addr::Domain(b"127.0.0.1".to_vec(), echo.port());
    for dest in [Addr::Ip(echo), literal] {
        let took = echo_through(d.addr(), MALLORY, MALLORY_PASS, &dest);
        assert!(
            took < Duration::from_secs(1),
            "mallory to {dest:?}: {took:?}"
        );
    }
    most_threads = most_threads.max(threads(pid));

    // Mallory's lookups end at the connect deadline, as host unreachable
    // (whether waiting for a slot or stuck in getaddrinfo).
    for (i, (mut s, sent)) in pending.into_iter().enumerate() {
        let reply = read_reply(&mut s);
        let took = sent.elapsed();
        assert_eq!(reply, [5, 4, 0, 1, 0, 0, 0, 0, 0, 0], "{i}.slow.test");
        assert!(
            took < CONNECT + Duration::from_millis(1500),
            "{i}.slow.test answered after {took:?}"
        );
        most_threads = most_threads.max(threads(pid));
    }
    // Each hanging getaddrinfo holds a thread and its slot well past the
    // deadline (resolv.conf waits 8 s): the cap is what bounds both.
    assert!(most_threads < 100, "{most_threads} threads");
    let asked = dns.slow_names_asked();
    assert!(asked <= 64, "{asked} slow names asked at once");
    d.wait_log(&[
        "user=mallory",
        "dst=0.slow.test:80",
        "name resolution failed",
    ]);
    eprintln!("most threads {most_threads}, slow names asked {asked}");
}
