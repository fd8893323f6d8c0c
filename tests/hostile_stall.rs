//! Tunnels cut short: a destination that resets, or one that never reads.
//! A truncated stream reaches the client as a reset, never as a clean end,
//! and a write that makes no progress ends the tunnel.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use websocks::proto::socks5::{self, Addr};

/// A destination that sends `first` and then resets the connection.
fn resetting_destination(first: &'static [u8]) -> SocketAddr {
    serve_each(move |mut s| {
        let _ = s.write_all(first);
        thread::sleep(Duration::from_millis(100));
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    })
}

/// Reads until the stream ends; the bytes and how it ended.
fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, Result<(), ErrorKind>) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => return (got, Err(e.kind())),
        }
    }
}

#[test]
fn a_destination_reset_reaches_the_client_as_a_reset() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let dest = resetting_destination(b"partial");
    let mut t = tunnel(d.addr(), dest);
    let (got, end) = read_until_end(&mut t);
    assert!(b"partial".starts_with(&got), "{got:?}");
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "a clean FIN after {got:?}"
    );
    d.wait_log(&["end=destination-error(connection reset)"]);
}

fn agent_yaml(server: SocketAddr, extra: &str) -> String {
    format!(
        "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  http: {{listen: [\"127.0.0.1:0\"]}}\n  \
         servers: [{{name: s, url: \"ws://{server}/\", user: {USER}, password: {PASS}}}]\n  pool: {{size: 0}}\n{extra}"
    )
}

#[test]
fn a_destination_reset_reaches_the_agents_clients_as_a_reset() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let agent = Daemon::start(&["agent"], &agent_yaml(server.addr(), ""), 2);
    // SOCKS5 through agent and server.
    let dest = resetting_destination(b"partial");
    let mut s = connect(agent.addrs[0]);
    let mut out = Vec::new();
    socks5::write_greeting(&mut out, &[socks5::METHOD_NO_AUTH]);
    socks5::write_connect(&mut out, &Addr::Ip(dest));
    s.write_all(&out).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), 2);
    let (reply, rest) = read_socks_reply(&mut s, got[2..].to_vec());
    assert_eq!(reply.rep, 0);
    let (more, end) = read_until_end(&mut s);
    let got = [rest, more].concat();
    assert!(b"partial".starts_with(&got), "{got:?}");
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "SOCKS5: clean FIN after {got:?}"
    );
    // An HTTP-forwarded response cut short.
    let dest = resetting_destination(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial");
    let mut c = connect(agent.addrs[1]);
    c.write_all(
        format!(
            "GET http://127.0.0.1:{}/ HTTP/1.1\r\nHost: x\r\n\r\n",
            dest.port()
        )
        .as_bytes(),
    )
    .unwrap();
    let (got, end) = read_until_end(&mut c);
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "HTTP: clean FIN after {got:?}"
    );
}

/// A destination that accepts and never reads (holds each socket open).
fn never_reading_destination() -> SocketAddr {
    serve_each(|s| {
        thread::sleep(Duration::from_secs(60));
        drop(s);
    })
}

/// Writes into `s` until the tunnel pushes back (a write blocks for
/// 300 ms); returns how much went in.
fn fill(s: &mut TcpStream) -> usize {
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn a_destination_that_never_reads_is_cut_after_the_send_timeout() {
    let d = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  timeouts: {{send: 2s}}\n"
    )));
    let dest = never_reading_destination();
    // The client stays: after 2 s without progress, a reset.
    let mut t = tunnel(d.addr(), dest);
    let t0 = Instant::now();
    fill(&mut t);
    t.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let (_, end) = read_until_end(&mut t);
    assert_eq!(end, Err(ErrorKind::ConnectionReset));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    d.wait_log(&["end=send-timeout"]);
    // The client leaves: released about a second after, not after 2 s of
    // idling plus the send timeout.
    let mut t = tunnel(d.addr(), dest);
    fill(&mut t);
    thread::sleep(Duration::from_millis(200));
    let left = Instant::now();
    drop(t);
    let end = Instant::now() + Duration::from_secs(5);
    while d
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("end=send-timeout"))
        .count()
        < 2
    {
        assert!(Instant::now() < end, "not released after the client left");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "{:?}",
        left.elapsed()
    );
}

/// Kernel memory held by process `pid`: the sum of `ss -tmp` skmem (receive
/// queue, write queue, forward allocation, options) of its TCP sockets, and
/// the bytes in its pipes. `None` without `ss`.
fn kernel_memory(pid: u32) -> Option<(u64, u64)> {
    let out = std::process::Command::new(find_tool("ss")?)
        .args(["-tmpnH"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let me = format!("pid={pid},");
    let mut sockets = 0;
    let mut mine = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            mine = line.contains(&me);
        }
        if let Some(i) = line.find("skmem:(")
            && mine
        {
            let inner = &line[i + 7..];
            let inner = &inner[..inner.find(')').unwrap_or(inner.len())];
            for field in inner.split(',') {
                let (k, v) = field.split_at(field.find(|c: char| c.is_ascii_digit()).unwrap_or(0));
                if ["r", "w", "f", "o"].contains(&k) {
                    sockets += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    let mut pipes = 0;
    let mut seen = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy().into_owned();
        if !t.starts_with("pipe:") || !seen.insert(t) {
            continue;
        }
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
            .open(e.path())
        {
            pipes += rustix::io::ioctl_fionread(&f).unwrap_or(0);
        }
    }
    Some((sockets, pipes))
}

#[test]
fn tunnels_into_a_never_reading_destination_hold_little_kernel_memory() {
    if need_tool("ss", "iproute2").is_none() {
        return;
    }
    let d = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  timeouts: {{send: 4s}}\n"
    )));
    let dest = never_reading_destination();
    const N: usize = 100;
    let tunnels: Vec<TcpStream> = (0..N).map(|_| tunnel(d.addr(), dest)).collect();
    let filled: Vec<(TcpStream, usize)> = thread::scope(|sc| {
        let hs: Vec<_> = tunnels
            .into_iter()
            .map(|mut t| {
                sc.spawn(move || {
                    let n = fill(&mut t);
                    (t, n)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let pushed: usize = filled.iter().map(|f| f.1).sum();
    let (sockets, pipes) = kernel_memory(d.child.id()).unwrap();
    let per = (sockets + pipes) / N as u64;
    eprintln!(
        "{N} stalled tunnels: {} KiB pushed each, server holds {} KiB in sockets + {} KiB in pipes = {} KiB each",
        pushed / N / 1024,
        sockets / 1024,
        pipes / 1024,
        per / 1024
    );
    assert!(per <= 1024 * 1024, "{} KiB per tunnel", per / 1024);
    // The clients leave: everything is released within the send timeout.
    drop(filled);
    let end = Instant::now() + Duration::from_secs(6);
    loop {
        let (s, p) = kernel_memory(d.child.id()).unwrap();
        if s + p < 64 * 1024 {
            break;
        }
        assert!(Instant::now() < end, "still {} KiB held", (s + p) / 1024);
        thread::sleep(Duration::from_millis(200));
    }
}
