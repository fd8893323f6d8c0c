//! The process under a service manager, with the real binary: socket
//! activation by name (through systemd-socket-activate), sd_notify
//! readiness / reload / stop messages on a test-bound NOTIFY_SOCKET, SIGHUP
//! reloads while a tunnel carries data, and the SIGTERM drain.
//!
//! Tests that need `systemd-socket-activate` (package systemd) are skipped
//! through `common::skip` when it is missing: a failure under `CI=true`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use websocks::proto::{auth, socks5};

// ------------------------------------------------------------------ helpers

/// Waits up to `limit` for `cond`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A process whose stderr lines are collected; killed on drop. Unlike the
/// shared `Daemon`, it waits for nothing, so it can be started behind
/// systemd-socket-activate (which only execs on the first connection).
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, dir: PathBuf) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line);
            }
        });
        Proc { child, log, dir }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn find(&self, parts: &[&str]) -> Option<String> {
        self.lines()
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
    }

    fn wait_log(&self, parts: &[&str]) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.find(parts) {
                return l;
            }
            assert!(
                Instant::now() < end,
                "no log line with {parts:?}; log: {:#?}",
                self.lines()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit; returns the code and the whole log.
    fn exit_code(&mut self, limit: Duration) -> (i32, String) {
        let st = wait_exit(&mut self.child, limit)
            .unwrap_or_else(|| panic!("still running; log: {:#?}", self.lines()));
        // Let the reader thread drain the pipe.
        thread::sleep(Duration::from_millis(50));
        (st.code().unwrap_or(-1), self.lines().join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SOCKET_ACTIVATE: &str = "systemd-socket-activate";

fn have_socket_activate() -> bool {
    need_tool(SOCKET_ACTIVATE, "systemd").is_some()
}

/// Writes the config (stderr logging unless the yaml says otherwise).
fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let cfg = dir.join("websocks.yaml");
    let yaml = if yaml.contains("log_target") {
        yaml.to_string()
    } else {
        format!("log_target: stderr\n{yaml}")
    };
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

/// Runs `websocks ARGS -c CONFIG` behind systemd-socket-activate with one
/// loopback socket per name in `names` (TCP, or UDP with `datagram`), on
/// ports picked just before use; retries on a port collision. Returns the
/// process (not yet exec'd: it waits for a first connection) and the
/// addresses, in the order of `names`. `yaml` may refer to the addresses
/// as {0}, {1}, ... (replaced before writing).
fn activate(
    names: &[&str],
    datagram: bool,
    env: &[(&str, &str)],
    args: &[&str],
    yaml: &str,
) -> (Proc, Vec<SocketAddr>) {
    for attempt in 0..8 {
        let addrs: Vec<SocketAddr> = if datagram {
            let held: Vec<UdpSocket> = names
                .iter()
                .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            held.iter().map(|s| s.local_addr().unwrap()).collect()
        } else {
            let held: Vec<TcpListener> = names
                .iter()
                .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            held.iter().map(|s| s.local_addr().unwrap()).collect()
        };
        let mut text = yaml.to_string();
        for (i, a) in addrs.iter().enumerate() {
            text = text.replace(&format!("{{{i}}}"), &a.to_string());
        }
        let dir = temp_dir();
        let cfg = write_config(&dir, &text);
        let mut cmd = Command::new(find_tool(SOCKET_ACTIVATE).expect("have_socket_activate"));
        if datagram {
            cmd.arg("--datagram");
        }
        for (name, a) in names.iter().zip(&addrs) {
            cmd.arg(format!("--listen={a}"))
                .arg(format!("--fdname={name}"));
        }
        for (k, v) in env {
            cmd.arg(format!("--setenv={k}={v}"));
        }
        cmd.arg(env!("CARGO_BIN_EXE_websocks"))
            .args(args)
            .arg("-c")
            .arg(&cfg);
        let mut p = Proc::spawn(cmd, dir);
        // systemd-socket-activate says "Listening on ADDR as FD." per socket.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = p.lines();
            let listening = lines.iter().filter(|l| l.contains("Listening on")).count();
            if listening == names.len() {
                return (p, addrs);
            }
            let exited = p.child.try_wait().unwrap().is_some();
            if exited || lines.iter().any(|l| l.contains("in use")) {
                assert!(
                    lines.iter().any(|l| l.contains("in use")) && attempt < 7,
                    "systemd-socket-activate failed: {lines:#?}"
                );
                break; // a port was taken meanwhile: pick new ones
            }
            assert!(
                Instant::now() < end,
                "systemd-socket-activate did not listen: {lines:#?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
    unreachable!()
}

/// The status code the server answers an upgrade for `user` with.
fn upgrade_status(server: SocketAddr, user: &str, pass: &str) -> String {
    let mut s = connect(server);
    s.write_all(&upgrade_request_as(user, pass)).unwrap();
    let (h, _) = read_head(&mut s);
    h.second
}

/// Sends `data` and expects it back (through an echo destination).
fn echo_roundtrip(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let got = read_exact_after(s, Vec::new(), data.len());
    assert_eq!(got, data);
}

/// A SOCKS5 CONNECT (no auth) to an IPv4 `dest` through `proxy`.
fn socks5_connect(proxy: SocketAddr, dest: SocketAddr) -> TcpStream {
    let mut s = connect(proxy);
    let mut req = Vec::new();
    socks5::write_greeting(&mut req, &[socks5::METHOD_NO_AUTH]);
    s.write_all(&req).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), 2);
    assert_eq!(got, [5, 0], "method choice");
    let mut req = Vec::new();
    socks5::write_connect(&mut req, &socks5::Addr::Ip(dest));
    s.write_all(&req).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), 10);
    assert_eq!(&got[..2], &[5, 0], "reply {got:02x?}");
    s
}

/// An HTTP CONNECT to `dest` through `proxy`.
fn http_connect(proxy: SocketAddr, dest: SocketAddr) -> TcpStream {
    let mut s = connect(proxy);
    s.write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n").as_bytes())
        .unwrap();
    let (h, rest) = read_head(&mut s);
    assert_eq!(h.second, "200");
    assert!(rest.is_empty());
    s
}

/// Asserts the log holds no password or digest of `users`.
fn assert_no_secrets(log: &str, users: &[(&str, &str)]) {
    for (_, pass) in users {
        let digest = auth::stored_digest(pass.as_bytes());
        assert!(!log.contains(pass), "password {pass} in the log:\n{log}");
        assert!(!log.contains(&digest), "digest {digest} in the log:\n{log}");
    }
}

// ------------------------------------------------------- socket activation

/// Server and agent in one process; the server's socket, two agent SOCKS5
/// sockets sharing the name `socks5` and the agent HTTP socket all come
/// from systemd-socket-activate; the agent's `mixed` listener, for which no
/// socket is passed, binds its configured address. The first connection
/// (which makes systemd-socket-activate exec the daemon) is served.
#[test]
fn socket_activation_by_name_server_and_agent() {
    if !have_socket_activate() {
        return;
    }
    let echo = echo_server();
    // The configured socks5/http/server addresses are never bound: those
    // listeners come from systemd. Port 9/10/11 would fail if they were.
    let yaml = format!(
        "log_level: debug\nserver:\n  listen: [\"127.0.0.1:11\"]\n  users:\n    - {{name: {USER}, password: {PASS}}}\n{ALLOW_LOOPBACK}\
         agent:\n  socks5: {{listen: [\"127.0.0.1:9\"]}}\n  http: {{listen: [\"127.0.0.1:10\"]}}\n  mixed: {{listen: [\"127.0.0.1:0\"]}}\n\
         \x20 pool: {{size: 0}}\n  servers:\n    - {{name: s, url: \"ws://{{0}}/\", user: {USER}, password: {PASS}}}\n"
    );
    let (mut p, a) = activate(
        &["websocks", "socks5", "socks5", "http"],
        false,
        &[],
        &["run"],
        &yaml,
    );
    assert!(p.find(&["websocks listening"]).is_none(), "not exec'd yet");
    // The first connection triggers the exec and is served in full.
    let server = a[0];
    let first = thread::spawn(move || {
        let mut s = tunnel(server, echo);
        echo_roundtrip(&mut s, b"first connection");
    });
    first.join().expect("the activating connection is served");
    p.wait_log(&[&format!(
        "server listening on {server} (socket from systemd)"
    )]);
    for s in &a[1..3] {
        p.wait_log(&[&format!(
            "agent socks5 listening on {s} (socket from systemd)"
        )]);
    }
    p.wait_log(&[&format!(
        "agent http listening on {} (socket from systemd)",
        a[3]
    )]);
    let mixed = p.wait_log(&["agent mixed listening on "]);
    assert!(!mixed.contains("systemd"), "{mixed}");
    // Each role whose sockets differ from its `listen` says so, once.
    p.wait_log(&[&format!(
        "systemd passed sockets on {server} while server.listen says 127.0.0.1:11: \
         the sockets from systemd are used and server.listen is not bound"
    )]);
    let mut socks = [a[1], a[2]];
    socks.sort();
    p.wait_log(&[&format!(
        "systemd passed sockets on {}, {} while agent.socks5.listen says 127.0.0.1:9",
        socks[0], socks[1]
    )]);
    p.wait_log(&[&format!(
        "systemd passed sockets on {} while agent.http.listen says 127.0.0.1:10",
        a[3]
    )]);
    assert_eq!(
        p.lines()
            .iter()
            .filter(|l| l.contains("systemd passed sockets"))
            .count(),
        3,
        "{:#?}",
        p.lines()
    );
    let mixed: SocketAddr = mixed
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for (i, s) in a[1..3].iter().enumerate() {
        let mut c = socks5_connect(*s, echo);
        echo_roundtrip(&mut c, format!("via socks5 socket {i}").as_bytes());
    }
    let mut c = http_connect(a[3], echo);
    echo_roundtrip(&mut c, b"via the http socket");
    drop(c);
    let mut c = socks5_connect(mixed, echo);
    echo_roundtrip(&mut c, b"via the bound mixed listener");
    drop(c);
    signal(p.child.id(), "TERM");
    let (code, log) = p.exit_code(Duration::from_secs(10));
    assert_eq!(code, 0, "{log}");
    assert_no_secrets(&log, &[(USER, PASS)]);
}

/// Sockets on the addresses the configuration names are used without a
/// word about it.
#[test]
fn socket_activation_matching_listen_logs_no_notice() {
    if !have_socket_activate() {
        return;
    }
    let echo = echo_server();
    let yaml = format!(
        "server:\n  listen: [\"{{0}}\"]\n  users:\n    - {{name: {USER}, password: {PASS}}}\n{ALLOW_LOOPBACK}"
    );
    let (mut p, a) = activate(&["websocks"], false, &[], &["server"], &yaml);
    let mut s = tunnel(a[0], echo);
    echo_roundtrip(&mut s, b"activating");
    p.wait_log(&[&format!(
        "server listening on {} (socket from systemd)",
        a[0]
    )]);
    drop(s);
    signal(p.child.id(), "TERM");
    let (code, log) = p.exit_code(Duration::from_secs(10));
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("systemd passed sockets"), "{log}");
}

/// The metrics endpoint takes the socket named `metrics`; a scrape can be
/// the connection that starts the daemon.
#[test]
fn socket_activation_metrics_by_name() {
    if !have_socket_activate() {
        return;
    }
    let yaml = format!(
        "server:\n  listen: [\"{{0}}\"]\n  users:\n    - {{name: {USER}, password: {PASS}}}\n\
         metrics:\n  listen: [\"127.0.0.1:12\"]\n"
    );
    let (mut p, a) = activate(&["websocks", "metrics"], false, &[], &["server"], &yaml);
    let mut s = connect(a[1]);
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let answer = String::from_utf8(read_to_end(&mut s)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\nwebsocks_server_users 1\n"), "{answer}");
    p.wait_log(&[&format!(
        "metrics listening on {} (socket from systemd)",
        a[1]
    )]);
    p.wait_log(&[&format!(
        "systemd passed sockets on {} while metrics.listen says 127.0.0.1:12",
        a[1]
    )]);
    signal(p.child.id(), "TERM");
    let (code, log) = p.exit_code(Duration::from_secs(10));
    assert_eq!(code, 0, "{log}");
}

/// A passed socket whose name no section uses is a configuration error
/// (78) that names it, for `server` and for `agent` (which leaves the
/// server's `websocks` socket unused).
#[test]
fn socket_activation_unused_name_is_config_error() {
    if !have_socket_activate() {
        return;
    }
    let server_only = server_yaml("");
    let (mut p, a) = activate(
        &["websocks", "admin"],
        false,
        &[],
        &["server"],
        &server_only,
    );
    let _c = TcpStream::connect(a[0]).unwrap();
    let (code, log) = p.exit_code(Duration::from_secs(10));
    assert_eq!(code, 78, "{log}");
    assert!(
        log.contains("\"admin\"") && log.contains("FileDescriptorName"),
        "names the socket and the fix: {log}"
    );
    assert!(!log.contains("listening on"), "{log}");

    let both = format!(
        "{}agent:\n  socks5: {{listen: [\"127.0.0.1:9\"]}}\n  servers:\n    - {{name: s, url: \"ws://127.0.0.1:1/\", user: {USER}, password: {PASS}}}\n",
        server_yaml("")
    );
    let (mut p, a) = activate(&["socks5", "websocks"], false, &[], &["agent"], &both);
    let _c = TcpStream::connect(a[0]).unwrap();
    let (code, log) = p.exit_code(Duration::from_secs(10));
    assert_eq!(code, 78, "{log}");
    assert!(log.contains("\"websocks\""), "names the socket: {log}");
}

/// A datagram socket cannot serve WebSocks: exit 78 with a clear message.
#[test]
fn socket_activation_datagram_socket_is_config_error() {
    if !have_socket_activate() {
        return;
    }
    let (mut p, a) = activate(&["websocks"], true, &[], &["server"], &server_yaml(""));
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"wake up", a[0]).unwrap();
    let (code, log) = p.exit_code(Duration::from_secs(10));
    assert_eq!(code, 78, "{log}");
    assert!(
        log.contains("socket `websocks`")
            && log.contains("not a stream socket")
            && log.contains("ListenStream="),
        "{log}"
    );
}

/// Socket activation and NOTIFY_SOCKET together, as systemd does it:
/// READY=1 comes once the passed socket serves.
#[test]
fn socket_activation_with_notify() {
    if !have_socket_activate() {
        return;
    }
    let n = Notify::bind();
    let path = n.path.to_str().unwrap().to_string();
    let (mut p, a) = activate(
        &["websocks"],
        false,
        &[("NOTIFY_SOCKET", &path)],
        &["server"],
        &server_yaml(ALLOW_LOOPBACK),
    );
    let echo = echo_server();
    let mut t = tunnel(a[0], echo);
    // The activating connection may already count in the first STATUS=.
    let ready = n.wait(&["READY=1\n", "STATUS="]);
    assert!(ready.contains(" connections, 1 users"), "{ready:?}");
    echo_roundtrip(&mut t, b"served");
    p.wait_log(&["(socket from systemd)"]);
    drop(t);
    signal(p.child.id(), "TERM");
    n.wait(&["STOPPING=1"]);
    assert_eq!(p.exit_code(Duration::from_secs(10)).0, 0);
}

// ---------------------------------------------------------------- sd_notify

/// A NOTIFY_SOCKET bound by the test, collecting every datagram.
struct Notify {
    path: PathBuf,
    msgs: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Notify {
    fn bind() -> Notify {
        let dir = temp_dir();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m2, s2) = (msgs.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    m2.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        Notify { path, msgs, stop }
    }

    fn all(&self) -> Vec<String> {
        self.msgs.lock().unwrap().clone()
    }

    /// Waits for a message (after index `from`) holding every one of
    /// `parts`; returns its index.
    fn wait_from(&self, from: usize, parts: &[&str], limit: Duration) -> (usize, String) {
        let end = Instant::now() + limit;
        loop {
            let all = self.all();
            if let Some((i, m)) = all
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, m)| parts.iter().all(|p| m.contains(p)))
            {
                return (i, m.clone());
            }
            assert!(
                Instant::now() < end,
                "no notification with {parts:?} after #{from}; got {all:#?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait(&self, parts: &[&str]) -> String {
        self.wait_from(0, parts, Duration::from_secs(10)).1
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap());
    }
}

/// CLOCK_MONOTONIC now in µs, read from `Instant`'s Debug form (Linux:
/// `Instant { tv_sec: S, tv_nsec: N }`); None if that form ever changes.
fn monotonic_usec() -> Option<u64> {
    let s = format!("{:?}", Instant::now());
    let num = |key: &str| -> Option<u64> {
        let rest = s.split(key).nth(1)?;
        rest.trim_start_matches([':', ' '])
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some(num("tv_sec")? * 1_000_000 + num("tv_nsec")? / 1000)
}

/// The value of `KEY=` in a notification.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key))
}

/// READY=1 with a status, STATUS= updates as connections come and go,
/// WATCHDOG=1 at half the interval, RELOADING=1 + MONOTONIC_USEC then
/// READY=1 on SIGHUP (good and broken files), STOPPING=1 on SIGTERM, in
/// this order.
#[test]
fn notify_ready_status_watchdog_reload_stopping() {
    let n = Notify::bind();
    let env_notify = format!("NOTIFY_SOCKET={}", n.path.display());
    let yaml = server_yaml(ALLOW_LOOPBACK);
    let mut d = Daemon::start_via(
        &["env", env_notify.as_str(), "WATCHDOG_USEC=400000"],
        &["server"],
        &yaml,
        1,
    );
    let pid = d.child.id();
    let (ready_at, ready) = n.wait_from(0, &["READY=1", "STATUS="], Duration::from_secs(10));
    assert_eq!(field(&ready, "STATUS="), Some("0 connections, 1 users"));
    // The listener serves by the time READY=1 is sent.
    let echo = echo_server();
    let t0 = Instant::now();
    let mut t = tunnel(d.addr(), echo);
    echo_roundtrip(&mut t, b"x");
    // WATCHDOG=1 every 200 ms (half of 400 ms).
    thread::sleep(Duration::from_millis(700));
    let dogs = n.all().iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(dogs >= 3, "WATCHDOG=1 sent {dogs} times in ~0.7 s");
    // STATUS= follows the live count within about 2 s.
    let (i, _) = n.wait_from(
        ready_at,
        &["STATUS=1 connections, 1 users"],
        Duration::from_secs(5),
    );
    assert!(t0.elapsed() < Duration::from_secs(4));

    // Reload with one more user.
    let cfg = d.dir.join("websocks.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let grown = text.replace(
        "  users:\n",
        "  users:\n    - {name: bob, password: b0bsecret}\n",
    );
    assert_ne!(grown, text);
    std::fs::write(&cfg, grown).unwrap();
    let before = monotonic_usec();
    signal(pid, "HUP");
    let (r1, reloading) = n.wait_from(i, &["RELOADING=1"], Duration::from_secs(5));
    let after = monotonic_usec();
    let usec: u64 = field(&reloading, "MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    if let (Some(b), Some(a)) = (before, after) {
        assert!(b <= usec && usec <= a, "{b} <= {usec} <= {a}");
    }
    let (r2, ready2) = n.wait_from(r1 + 1, &["READY=1"], Duration::from_secs(5));
    assert_eq!(field(&ready2, "STATUS="), Some("1 connections, 2 users"));
    d.wait_log(&["reloaded", "2 users"]);
    assert_eq!(upgrade_status(d.addr(), "bob", "b0bsecret"), "101");

    // A broken file: RELOADING=1, then READY=1 saying the reload failed.
    std::fs::write(&cfg, format!("{text}bogus_key: 1\n")).unwrap();
    signal(pid, "HUP");
    let (r3, _) = n.wait_from(r2 + 1, &["RELOADING=1"], Duration::from_secs(5));
    let (r4, failed) = n.wait_from(r3 + 1, &["READY=1"], Duration::from_secs(5));
    let status = field(&failed, "STATUS=").unwrap();
    assert!(
        status.starts_with("reload failed, running the old configuration: ")
            && status.contains("bogus_key"),
        "{status}"
    );
    d.wait_log(&["reload failed, keeping the running configuration: "]);
    assert_eq!(upgrade_status(d.addr(), "bob", "b0bsecret"), "101");

    // SIGTERM: STOPPING=1, after everything else.
    signal(pid, "TERM");
    let (r5, stopping) = n.wait_from(r4 + 1, &["STOPPING=1"], Duration::from_secs(5));
    assert_eq!(
        field(&stopping, "STATUS="),
        Some("stopping: draining 1 connections")
    );
    let all = n.all();
    assert!(
        all[..r5].iter().all(|m| !m.contains("STOPPING=1")),
        "{all:#?}"
    );
    drop(t);
    let st = wait_exit(&mut d.child, Duration::from_secs(10)).expect("exits");
    assert_eq!(st.code(), Some(0));
    // Nothing but WATCHDOG=1 or STATUS= may come between the READY/RELOADING
    // pairs: check the order of the state changes.
    let states: Vec<&str> = all
        .iter()
        .filter_map(|m| {
            ["READY=1", "RELOADING=1", "STOPPING=1"]
                .into_iter()
                .find(|s| m.lines().any(|l| l == *s))
        })
        .collect();
    assert_eq!(
        states,
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ]
    );
    let log = d.log.lock().unwrap().join("\n");
    assert_no_secrets(&log, &[(USER, PASS), ("bob", "b0bsecret")]);
}

// ------------------------------------------------------------------ reload

/// A tunnel through an echo destination carrying a steady stream: a writer
/// sends a counted pattern, a reader checks every byte it gets back.
struct Stream {
    sent: Arc<AtomicU64>,
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    writer: thread::JoinHandle<TcpStream>,
    reader: thread::JoinHandle<()>,
}

fn byte_at(i: u64) -> u8 {
    (i % 251) as u8
}

impl Stream {
    fn start(s: TcpStream) -> Stream {
        let (sent, got) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut rd = s.try_clone().unwrap();
        let (sent2, stop2) = (sent.clone(), stop.clone());
        let writer = thread::spawn(move || {
            let mut s = s;
            let mut at = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let chunk: Vec<u8> = (at..at + 8192).map(byte_at).collect();
                s.write_all(&chunk).expect("the tunnel keeps taking data");
                at += chunk.len() as u64;
                sent2.store(at, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
            }
            s
        });
        let got2 = got.clone();
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut at = 0u64;
            loop {
                let n = rd.read(&mut buf).expect("the tunnel keeps echoing");
                if n == 0 {
                    break;
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, byte_at(at + k as u64), "byte {}", at + k as u64);
                }
                at += n as u64;
                got2.store(at, Ordering::Relaxed);
            }
        });
        Stream {
            sent,
            got,
            stop,
            writer,
            reader,
        }
    }

    /// Waits until at least `more` further bytes came back.
    fn flows(&self, more: u64) {
        let base = self.got.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(5), "the stream to flow", || {
            self.got.load(Ordering::Relaxed) >= base + more
        });
    }

    /// Stops writing, half-closes and waits for every byte to come back.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let s = self.writer.join().expect("writer");
        s.shutdown(Shutdown::Write).unwrap();
        self.reader.join().expect("reader");
        let (sent, got) = (
            self.sent.load(Ordering::Relaxed),
            self.got.load(Ordering::Relaxed),
        );
        assert_eq!(sent, got, "every byte sent came back");
        got
    }
}

/// SIGHUP re-reads the users file while a tunnel carries a steady stream:
/// a removed user gets 401, an added one 101; a broken users file or an
/// unknown key keeps the old state; the stream is never cut.
#[test]
fn sighup_reload_users_file_while_streaming() {
    let dir = temp_dir();
    let users = dir.join("users.yaml");
    std::fs::write(&users, format!("- name: {USER}\n  password: {PASS}\n")).unwrap();
    let base = format!(
        "log_level: debug\nserver:\n  listen: [\"127.0.0.1:0\"]\n  users_file: {}\n{ALLOW_LOOPBACK}",
        users.display()
    );
    let mut d = Daemon::start(&["server"], &base, 1);
    let pid = d.child.id();
    let cfg = d.dir.join("websocks.yaml");
    let echo = echo_server();
    let stream = Stream::start(tunnel(d.addr(), echo));
    stream.flows(64 * 1024);

    // alice out, bob in.
    std::fs::write(&users, "- name: bob\n  password: b0bsecret\n").unwrap();
    signal(pid, "HUP");
    d.wait_log(&["reloaded", "1 users"]);
    stream.flows(64 * 1024);
    assert_eq!(upgrade_status(d.addr(), USER, PASS), "401");
    assert_eq!(upgrade_status(d.addr(), "bob", "b0bsecret"), "101");

    // A broken users file: nothing changes.
    std::fs::write(&users, "- name: carol\n  password: [unclosed\n").unwrap();
    signal(pid, "HUP");
    let l = d.wait_log(&["reload failed, keeping the running configuration: "]);
    assert!(l.contains("users.yaml"), "names the file: {l}");
    stream.flows(64 * 1024);
    assert_eq!(upgrade_status(d.addr(), "bob", "b0bsecret"), "101");
    assert_eq!(upgrade_status(d.addr(), USER, PASS), "401");
    assert_eq!(upgrade_status(d.addr(), "carol", "c4rol"), "401");

    // An unknown key in the main file: nothing changes either, even with a
    // good users file beside it.
    std::fs::write(&users, format!("- name: {USER}\n  password: {PASS}\n")).unwrap();
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{good}no_such_key: 1\n")).unwrap();
    signal(pid, "HUP");
    let n_failed = || {
        d.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("reload failed"))
            .count()
    };
    wait_until(Duration::from_secs(5), "the second failed reload", || {
        n_failed() == 2
    });
    assert!(d.wait_log(&["no_such_key"]).contains("reload failed"));
    assert_eq!(upgrade_status(d.addr(), USER, PASS), "401");
    assert_eq!(upgrade_status(d.addr(), "bob", "b0bsecret"), "101");

    // Fixed again: alice is back, bob is gone.
    std::fs::write(&cfg, &good).unwrap();
    signal(pid, "HUP");
    wait_until(Duration::from_secs(5), "the third reload", || {
        d.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("reloaded"))
            .count()
            == 2
    });
    assert_eq!(upgrade_status(d.addr(), USER, PASS), "101");
    assert_eq!(upgrade_status(d.addr(), "bob", "b0bsecret"), "401");

    let total = stream.finish();
    assert!(total >= 4 * 64 * 1024, "{total}");
    d.assert_alive();
    let log = d.log.lock().unwrap().join("\n");
    assert_no_secrets(
        &log,
        &[(USER, PASS), ("bob", "b0bsecret"), ("carol", "c4rol")],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------- drain

fn drain_server(grace: &str) -> Daemon {
    Daemon::server(&format!(
        "shutdown_grace: {grace}\n{}",
        server_yaml(ALLOW_LOOPBACK)
    ))
}

/// SIGTERM: new connections are refused at once, a live tunnel keeps
/// working, and the process exits 0 as soon as that tunnel closes.
#[test]
fn sigterm_drains_live_tunnels_then_exits_0() {
    let mut d = drain_server("20s");
    let echo = echo_server();
    let mut t = tunnel(d.addr(), echo);
    echo_roundtrip(&mut t, b"before");
    signal(d.child.id(), "TERM");
    d.wait_log(&["stopping: no longer accepting; draining 1 connections"]);
    let e = TcpStream::connect_timeout(&d.addr(), IO_TIMEOUT).expect_err("refused while draining");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    for i in 0..5 {
        echo_roundtrip(&mut t, format!("during the drain {i}").as_bytes());
        thread::sleep(Duration::from_millis(50));
    }
    d.assert_alive();
    let t0 = Instant::now();
    t.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut t).is_empty());
    drop(t);
    let st = wait_exit(&mut d.child, Duration::from_secs(5)).expect("exits once drained");
    assert_eq!(st.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    d.wait_log(&["stopped"]);
}

/// With the tunnel still open, the process exits 0 after shutdown_grace
/// and says how many connections it left.
#[test]
fn sigterm_grace_expires_with_tunnel_open() {
    let mut d = drain_server("1s");
    let echo = echo_server();
    let mut t = tunnel(d.addr(), echo);
    echo_roundtrip(&mut t, b"open");
    let t0 = Instant::now();
    signal(d.child.id(), "TERM");
    let st = wait_exit(&mut d.child, Duration::from_secs(5)).expect("exits after the grace");
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    d.wait_log(&["shutdown grace over: cutting 1 connections"]);
    d.wait_log(&["stopped after 1s; cut 1 connections"]);
    // The cut tunnel logged its line, and its client sees a reset, not a
    // clean end (a truncated transfer must not look complete).
    d.wait_log(&["up=4 down=4", "end=cut-at-shutdown"]);
    let mut rest = Vec::new();
    let err = t.read_to_end(&mut rest).expect_err("a reset, not EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// A second SIGTERM (or a SIGINT) ends the wait at once.
#[test]
fn second_stop_signal_ends_the_drain() {
    for second in ["TERM", "INT"] {
        let mut d = drain_server("30s");
        let echo = echo_server();
        let mut t = tunnel(d.addr(), echo);
        echo_roundtrip(&mut t, b"open");
        signal(d.child.id(), "TERM");
        d.wait_log(&["stopping: no longer accepting"]);
        thread::sleep(Duration::from_millis(100));
        d.assert_alive();
        let t0 = Instant::now();
        signal(d.child.id(), second);
        let st = wait_exit(&mut d.child, Duration::from_secs(5)).expect("exits");
        assert_eq!(st.code(), Some(0), "second {second}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        d.wait_log(&["second stop signal"]);
        d.wait_log(&["cutting 1 connections"]);
    }
}

/// SIGINT alone drains like SIGTERM and exits 0.
#[test]
fn sigint_stops_cleanly() {
    let mut d = drain_server("5s");
    signal(d.child.id(), "INT");
    let st = wait_exit(&mut d.child, Duration::from_secs(5)).expect("exits");
    assert_eq!(st.code(), Some(0));
    d.wait_log(&["draining 0 connections"]);
    d.wait_log(&["stopped"]);
}

// ------------------------------------------------- reload: top-level keys

/// Connects and closes without a handshake: the server logs that at debug.
fn handshake_less_connection(server: SocketAddr) {
    let s = connect(server);
    drop(s);
}

/// SIGHUP re-reads the whole file: a changed `log_level` applies.
#[test]
fn sighup_applies_log_level() {
    let yaml = server_yaml(ALLOW_LOOPBACK).replace("log_level: debug", "log_level: info");
    let d = Daemon::server(&yaml);
    let cfg = d.dir.join("websocks.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("log_level: info", "log_level: debug")).unwrap();
    signal(d.child.id(), "HUP");
    d.wait_log(&["reloaded"]);
    handshake_less_connection(d.addr());
    d.wait_log(&["websocks debug: ", "end=rejected"]);
}

/// SIGHUP re-reads the whole file: a changed `shutdown_grace` applies.
#[test]
fn sighup_applies_shutdown_grace() {
    let mut d = drain_server("30s");
    let cfg = d.dir.join("websocks.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("shutdown_grace: 30s", "shutdown_grace: 1s"),
    )
    .unwrap();
    signal(d.child.id(), "HUP");
    d.wait_log(&["reloaded"]);
    let echo = echo_server();
    let _t = tunnel(d.addr(), echo);
    signal(d.child.id(), "TERM");
    let st = wait_exit(&mut d.child, Duration::from_secs(4));
    assert!(
        st.is_some(),
        "still draining after 4 s with shutdown_grace: 1s"
    );
}

/// A reload of an unchanged file warns about nothing, with a fixed port.
#[test]
fn sighup_unchanged_listen_does_not_warn() {
    let port = closed_port();
    let yaml = server_yaml(ALLOW_LOOPBACK).replace("127.0.0.1:0", &port.to_string());
    let d = Daemon::server(&yaml);
    signal(d.child.id(), "HUP");
    d.wait_log(&["reloaded"]);
    let log = d.log.lock().unwrap().join("\n");
    assert!(!log.contains("take effect at the next restart"), "{log}");
}

/// Same with `listen: 127.0.0.1:0`: the listen list did not change.
#[test]
fn sighup_unchanged_port_zero_listen_does_not_warn() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    signal(d.child.id(), "HUP");
    d.wait_log(&["reloaded"]);
    let log = d.log.lock().unwrap().join("\n");
    assert!(!log.contains("take effect at the next restart"), "{log}");
}
