//! Where logs go and how their lines read, with the real binary: `auto`
//! picks stderr unless systemd runs it, stderr lines carry an RFC 3339
//! time unless stderr is the journal, a tunnel's `duration=` leaves out
//! the pooled wait (`waited=`), and IPv4 peers of a `[::]` listener show
//! as IPv4. The environment is set on the child only.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use websocks::proto::{socks5, ws};

const BIN: &str = env!("CARGO_BIN_EXE_websocks");

/// A bound syslog socket that collects datagrams.
struct LogSock {
    sock: UnixDatagram,
    got: Vec<String>,
}

impl LogSock {
    fn bind(path: &Path) -> LogSock {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        LogSock {
            sock,
            got: Vec::new(),
        }
    }

    /// Receives until a line holds `part` (10 s at most).
    fn wait(&mut self, part: &str) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65536];
        loop {
            if let Some(l) = self.got.iter().find(|l| l.contains(part)) {
                return l.clone();
            }
            assert!(
                Instant::now() < end,
                "no syslog line with {part:?}: {:#?}",
                self.got
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

/// Asserts `line` is `<RFC 3339 UTC millis> websocks <level>: ...` with a
/// time within a minute of now.
fn assert_stamped(line: &str) {
    let (stamp, rest) = line.split_once(' ').unwrap_or(("", ""));
    assert!(
        stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
        "RFC 3339 UTC with milliseconds: {line}"
    );
    let t = humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{e}: {line}"));
    let off = SystemTime::now()
        .duration_since(t)
        .unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(60), "{line}");
    assert!(rest.starts_with("websocks "), "{line}");
}

/// The value of `key=` (seconds, `1.234s`) in a log line.
fn secs(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// A `log_target: auto` server whose syslog socket exists, started from a
/// pipe (`websocks server -c x 2>&1 | cat`) outside systemd, logs to that
/// pipe, each line stamped; the syslog socket gets nothing. So does a
/// shell that inherited systemd's variables from a terminal emulator
/// running as a user service, whose stderr is not the journal.
#[test]
fn auto_logs_to_a_pipe_with_rfc3339_stamps() {
    for inherited in [false, true] {
        let dir = temp_dir();
        let path = dir.join("log.sock");
        let mut ls = LogSock::bind(&path);
        let yaml = format!(
            "log_target: auto\nsyslog_socket: {}\n{}",
            path.display(),
            server_yaml(ALLOW_LOOPBACK)
        );
        let d = Daemon::start_with(&[], &["server"], &yaml, 1, |c| {
            c.env_remove("INVOCATION_ID").env_remove("JOURNAL_STREAM");
            if inherited {
                c.env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
                    .env("JOURNAL_STREAM", "8:12345");
            }
        });
        let l = d.wait_log(&["listening on"]);
        assert_stamped(&l);
        drop(tunnel(d.addr(), echo_server()));
        let l = d.wait_log(&["user=alice", "end="]);
        assert_stamped(&l);
        assert!(l.contains(" websocks info: peer=127.0.0.1:"), "{l}");
        let mut buf = [0u8; 4096];
        assert!(
            ls.sock.recv(&mut buf).is_err(),
            "nothing goes to syslog (inherited: {inherited})"
        );
        ls.got.clear();
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Spawns `websocks server` with stderr on a pipe made here and
/// `JOURNAL_STREAM` naming that pipe's device and inode, as systemd does
/// for `StandardError=journal`; returns the child and its stderr lines.
fn under_journal(yaml: &str, dir: &Path) -> (Child, Arc<Mutex<Vec<String>>>) {
    let (reader, writer) = std::io::pipe().unwrap();
    let st = rustix::fs::fstat(&reader).unwrap();
    let cfg = dir.join("websocks.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let child = Command::new(BIN)
        .args(["server", "-c"])
        .arg(&cfg)
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    thread::spawn(move || {
        for l in BufReader::new(reader).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(l);
        }
    });
    (child, lines)
}

fn wait_line(lines: &Mutex<Vec<String>>, part: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| l.contains(part)) {
            return l.clone();
        }
        assert!(
            Instant::now() < end,
            "no line with {part:?}: {:#?}",
            lines.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// When stderr is the journal (`JOURNAL_STREAM` names fd 2), lines carry
/// no time of their own: journald stamps them. With `auto` there, the
/// records go to syslog instead, and nothing to stderr.
#[test]
fn journal_stderr_lines_carry_no_stamp_and_auto_picks_syslog() {
    let dir = temp_dir();
    let yaml = format!("log_target: stderr\n{}", server_yaml(""));
    let (mut child, lines) = under_journal(&yaml, &dir);
    let l = wait_line(&lines, "listening on");
    assert!(l.starts_with("websocks info: server listening on "), "{l}");
    let _ = child.kill();
    let _ = child.wait();

    let path = dir.join("log.sock");
    let mut ls = LogSock::bind(&path);
    let yaml = format!(
        "log_target: auto\nsyslog_socket: {}\n{}",
        path.display(),
        server_yaml("")
    );
    let (mut child, lines) = under_journal(&yaml, &dir);
    ls.wait("listening on");
    let _ = child.kill();
    let _ = child.wait();
    thread::sleep(Duration::from_millis(100));
    assert!(
        lines.lock().unwrap().is_empty(),
        "{:#?}",
        lines.lock().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection that sits upgraded (as an agent's pooled one does) for
/// 1.5 s before its frame and CONNECT: `waited=` says so, and `duration=`
/// counts from the request, so the tunnel's own time is under a second.
#[test]
fn duration_counts_from_the_request_not_the_pooled_wait() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let echo = echo_server();
    let mut s = connect(d.addr());
    s.write_all(&upgrade_request()).unwrap();
    let (h, rest) = read_head(&mut s);
    assert_eq!(h.second, "101");
    assert!(rest.is_empty());
    thread::sleep(Duration::from_millis(1500));
    s.write_all(&socks_preamble(&socks5::Addr::Ip(echo)))
        .unwrap();
    let got = read_exact_after(&mut s, Vec::new(), ws::FRAME.len() + 2 + 10);
    assert_eq!(got[ws::FRAME.len() + 2..][..2], [5, 0]);
    s.write_all(b"ping").unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 4), b"ping");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"");
    let line = d.wait_log(&[&format!("dst={echo} "), "end=closed"]);
    assert!(secs(&line, "waited=") >= 1.0, "{line}");
    assert!(secs(&line, "duration=") < 1.0, "{line}");

    // A connection that never got its 101 has no wait; its duration
    // counts from accept.
    let mut s = connect(d.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let _ = read_to_end(&mut s);
    let line = d.wait_log(&["user=- ", "end=rejected"]);
    assert!(line.contains(" waited=- duration="), "{line}");
}

/// Whether this host can bind a dual-stack `[::]` listener.
fn dual_stack() -> bool {
    TcpListener::bind("[::]:0").is_ok()
}

/// An IPv4 client of a `[::]` listener arrives as `::ffff:127.0.0.1`; the
/// server's and the agent's lines name it `127.0.0.1`.
#[test]
fn ipv4_peers_of_a_dual_stack_listener_log_as_ipv4() {
    if !dual_stack() {
        skip("no IPv6: cannot bind [::]");
        return;
    }
    let yaml = server_yaml(ALLOW_LOOPBACK).replace("127.0.0.1:0", "[::]:0");
    let d = Daemon::server(&yaml);
    let v4 = SocketAddr::from(([127, 0, 0, 1], d.addr().port()));
    let echo = echo_server();
    drop(tunnel(v4, echo));
    let line = d.wait_log(&[&format!("dst={echo} "), "end="]);
    assert!(line.contains(" peer=127.0.0.1:"), "{line}");

    let a = Daemon::start(
        &["agent"],
        &format!(
            "log_level: debug\nagent:\n  http: {{listen: [\"[::]:0\"]}}\n  users:\n    - {{name: {USER}, password: {PASS}}}\n  default: direct\n"
        ),
        1,
    );
    let v4 = SocketAddr::from(([127, 0, 0, 1], a.addr().port()));
    let mut s = connect(v4);
    s.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
        .unwrap();
    let (h, _) = read_head(&mut s);
    assert_eq!(h.second, "407");
    let line = a.wait_log(&["agent peer=", "via=http"]);
    assert!(line.contains("agent peer=127.0.0.1:"), "{line}");
    for l in d
        .log
        .lock()
        .unwrap()
        .iter()
        .chain(a.log.lock().unwrap().iter())
    {
        assert!(!l.contains("::ffff:"), "{l}");
    }
}
