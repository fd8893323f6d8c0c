//! Shared test harness: spawn the real `websocks` binary on loopback port 0,
//! scripted WebSocks clients over blocking sockets, and small destinations.
//! Every socket operation is bounded by a timeout.
#![allow(dead_code)]
// Shared by many test binaries: `pub` here is how they reach it.
#![allow(unreachable_pub)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use websocks::proto::{Parse, auth, http, socks5, ws};

pub mod agent;

/// Per-operation timeout for test sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The transcripts' user.
pub const USER: &str = "alice";
pub const PASS: &str = "pasSw0rD";

/// A fresh directory under the system temp dir.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "websocks-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Server config for tests: loopback listener on port 0, user alice, and
/// loopback destinations allowed (the default policy denies them).
pub fn server_yaml(extra: &str) -> String {
    format!(
        "log_level: debug\nserver:\n  listen: [\"127.0.0.1:0\"]\n  users:\n    - name: {USER}\n      password: {PASS}\n\
         {extra}"
    )
}

pub const ALLOW_LOOPBACK: &str = "  destinations:\n    allow: [\"127.0.0.0/8\", \"::1\"]\n";

/// A running `websocks` process; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
    pub dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Writes `yaml` to a temp file and runs `websocks server -c` on it,
    /// waiting for every "listening on" line.
    pub fn server(yaml: &str) -> Daemon {
        Self::start(&["server"], yaml, 1)
    }

    pub fn start(args: &[&str], yaml: &str, listeners: usize) -> Daemon {
        Self::start_via(&[], args, yaml, listeners)
    }

    /// Like `start`, with the binary run through `wrapper` (e.g. a shell
    /// that lowers a limit first): `wrapper... BINARY args... -c CONFIG`.
    pub fn start_via(wrapper: &[&str], args: &[&str], yaml: &str, listeners: usize) -> Daemon {
        Self::start_with(wrapper, args, yaml, listeners, |_| {})
    }

    /// Like `start_via`, with `setup` applied to the command before it is
    /// spawned (environment, file descriptors).
    pub fn start_with(
        wrapper: &[&str],
        args: &[&str],
        yaml: &str,
        listeners: usize,
        setup: impl FnOnce(&mut Command),
    ) -> Daemon {
        let dir = temp_dir();
        let cfg = dir.join("websocks.yaml");
        // Tests read the log from stderr, whatever `auto` would pick here.
        let yaml = if yaml.contains("log_target") {
            yaml.to_string()
        } else {
            format!("log_target: stderr\n{yaml}")
        };
        std::fs::write(&cfg, yaml).unwrap();
        let bin = env!("CARGO_BIN_EXE_websocks");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("spawn websocks");
        let (log, rx) = watch_log(child.stderr.take().unwrap());
        let mut addrs = Vec::new();
        for _ in 0..listeners {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(a) => addrs.push(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!("websocks did not start; log: {:?}", log.lock().unwrap());
                }
            }
        }
        Daemon {
            child,
            addrs,
            dir,
            log,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Waits up to 5 s for a log line containing every one of `parts`.
    pub fn wait_log(&self, parts: &[&str]) -> String {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            if Instant::now() > end {
                panic!(
                    "no log line with {parts:?}; log: {:#?}",
                    self.log.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the process is still running.
    pub fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "websocks exited");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads a child's output `out` line by line in a thread, into the log
/// returned, and sends the address of each "listening on ADDR" line.
pub fn watch_log(
    out: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<SocketAddr>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let log2 = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.split("listening on ").nth(1) {
                // "ADDR" or "ADDR (socket from systemd)".
                let a = a.split_whitespace().next().unwrap_or("");
                let _ = tx.send(a.parse::<SocketAddr>().unwrap());
            }
            log2.lock().unwrap().push(line);
        }
    });
    (log, rx)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `Authorization` value for the current minute (plus `skew` minutes).
pub fn authorization(user: &str, pass: &str, skew: i64) -> String {
    let base = auth::minute_of(now_ms());
    let shift = skew.unsigned_abs() * auth::MINUTE_MS;
    let minute = if skew < 0 { base - shift } else { base + shift };
    auth::authorization(user, &auth::stored_digest(pass.as_bytes()), minute)
}

/// A valid upgrade request for alice, with the RFC 6455 example key.
pub fn upgrade_request() -> Vec<u8> {
    upgrade_request_as(USER, PASS)
}

/// A valid upgrade request for `user`, with the RFC 6455 example key.
pub fn upgrade_request_as(user: &str, pass: &str) -> Vec<u8> {
    let mut v = Vec::new();
    http::write_upgrade_request(
        &mut v,
        "/",
        "null",
        "dGhlIHNhbXBsZSBub25jZQ==",
        &authorization(user, pass, 0),
        &[],
    );
    v
}

/// Connects with timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr, IO_TIMEOUT).unwrap()
}

/// Connects within `timeout`, which then bounds each read and write;
/// `TCP_NODELAY` set.
pub fn try_connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads until EOF (or the timeout, which fails the test).
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read to EOF");
    v
}

/// Reads an HTTP response head; returns (head, leftover bytes).
pub fn read_head(s: &mut TcpStream) -> (http::Head, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Parse::Done(h, used) = http::parse_response(&buf).expect("valid response head") {
            return (h, buf[used..].to_vec());
        }
        let n = s.read(&mut chunk).expect("read response");
        assert!(
            n > 0,
            "EOF before response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads exactly `n` bytes, after `have`.
pub fn read_exact_after(s: &mut TcpStream, mut have: Vec<u8>, n: usize) -> Vec<u8> {
    while have.len() < n {
        let mut chunk = vec![0u8; n - have.len()];
        let k = s.read(&mut chunk).expect("read");
        assert!(k > 0, "EOF after {} of {n} bytes: {have:02x?}", have.len());
        have.extend_from_slice(&chunk[..k]);
    }
    have
}

/// The frame, method choice and a request for `dest`, as one write.
pub fn socks_preamble(dest: &socks5::Addr) -> Vec<u8> {
    let mut v = ws::FRAME.to_vec();
    v.extend_from_slice(&socks_request(dest));
    v
}

/// A SOCKS5 client's greeting (no authentication) and CONNECT to `dest`,
/// as one write.
pub fn socks_request(dest: &socks5::Addr) -> Vec<u8> {
    let mut v = Vec::new();
    socks5::write_greeting(&mut v, &[socks5::METHOD_NO_AUTH]);
    socks5::write_connect(&mut v, dest);
    v
}

/// Opens a whole tunnel to `dest` and asserts success; returns the stream.
pub fn tunnel(server: SocketAddr, dest: SocketAddr) -> TcpStream {
    let mut s = connect(server);
    s.write_all(&upgrade_request()).unwrap();
    let (h, rest) = read_head(&mut s);
    assert_eq!(h.second, "101");
    s.write_all(&socks_preamble(&socks5::Addr::Ip(dest)))
        .unwrap();
    let got = read_exact_after(&mut s, rest, 12 + 10);
    assert_eq!(
        &got[..12],
        &[
            0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 5, 0
        ]
    );
    assert_eq!(got[12..14], [5, 0], "reply {:02x?}", &got[12..]);
    assert_eq!(got.len(), 22, "no data may follow the reply yet");
    s
}

/// Runs the handshake for `dest` and returns the SOCKS5 reply code and
/// the stream.
pub fn tunnel_reply(server: SocketAddr, dest: &socks5::Addr) -> (u8, Vec<u8>, TcpStream) {
    let mut s = connect(server);
    s.write_all(&upgrade_request()).unwrap();
    let (h, rest) = read_head(&mut s);
    assert_eq!(h.second, "101");
    s.write_all(&socks_preamble(dest)).unwrap();
    let got = read_exact_after(&mut s, rest, 12 + 4);
    assert_eq!(&got[10..12], &[5, 0]);
    let mut reply = got[12..].to_vec();
    // Read the rest of the reply (IPv4 bound address in our replies).
    reply = read_exact_after(&mut s, reply, 10);
    (reply[1], reply, s)
}

/// An echo destination: every byte back, FIN after FIN.
pub fn echo_server() -> SocketAddr {
    serve_each(|mut s| {
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// A destination running `f` on each accepted connection in its own thread.
/// The listener thread ends with the test process.
pub fn serve_each(f: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    serve_listener(l, Duration::from_secs(60), f)
}

/// Runs `f` on each connection `l` accepts, in its own thread, with
/// `timeout` on each read and write; returns `l`'s address. The listener
/// thread ends with the process.
pub fn serve_listener(
    l: TcpListener,
    timeout: Duration,
    f: impl Fn(TcpStream) + Send + Sync + 'static,
) -> SocketAddr {
    let a = l.local_addr().unwrap();
    let f = Arc::new(f);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            s.set_read_timeout(Some(timeout)).unwrap();
            s.set_write_timeout(Some(timeout)).unwrap();
            let f = f.clone();
            thread::spawn(move || f(s));
        }
    });
    a
}

/// A loopback port with nothing listening (bound then closed).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Asserts the server still serves a full tunnel afterwards.
pub fn assert_still_serving(server: SocketAddr) {
    let echo = echo_server();
    let mut s = tunnel(server, echo);
    s.write_all(b"still alive").unwrap();
    let got = read_exact_after(&mut s, Vec::new(), 11);
    assert_eq!(got, b"still alive");
}

/// Reads a SOCKS5 reply after `have`; returns it and what followed.
pub fn read_socks_reply(s: &mut TcpStream, mut have: Vec<u8>) -> (socks5::ServerReply, Vec<u8>) {
    let mut chunk = [0u8; 512];
    loop {
        if let Parse::Done(r, used) = socks5::parse_reply(&have).expect("valid SOCKS5 reply") {
            return (r, have[used..].to_vec());
        }
        let n = s.read(&mut chunk).expect("read SOCKS5 reply");
        assert!(n > 0, "EOF inside the SOCKS5 reply: {have:02x?}");
        have.extend_from_slice(&chunk[..n]);
    }
}

/// A loopback address whose SYNs go unanswered: a listener that never
/// accepts, with its accept queue filled up. `None` when the queue never
/// filled (then a connect timeout cannot be provoked here).
pub fn blackhole() -> Option<(TcpListener, Vec<TcpStream>, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&a, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => return Some((l, held, a)),
        }
    }
    None
}

/// Sends `sig` (a name for kill(1): TERM, HUP, INT) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -s {sig} {pid}");
}

/// Executor threads of a `websocks` process: the main thread and those it
/// starts are named `websocks*`; async-io's reactor helper and the
/// resolver's blocking pool are not counted.
pub fn executor_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("websocks"))
        .count()
}

// ------------------------------------------------------------ skipped tests
//
// A test that needs something this machine lacks (a tool, root, ::1) goes
// through `skip`: under `CI=true` that is a failure, so CI never passes by
// skipping; elsewhere the skip is printed where `cargo test` shows it, and
// counted after the binary's `test result:` line.

/// Where `tool` is installed: the first executable `tool` in a directory of
/// `PATH`, else in the sbin directories (Debian puts daemons such as nginx
/// there, and a user's `PATH` lacks them).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The path of `tool`, or `None` after reporting the skip (see `skip`);
/// `package` is the Debian package that installs it.
pub fn need_tool(tool: &str, package: &str) -> Option<PathBuf> {
    let found = find_tool(tool);
    if found.is_none() {
        skip(&format!("needs {tool} (apt-get install {package})"));
    }
    found
}

/// Is this process root (the effective uid, from /proc: no libc here)?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The skips of this test binary, `test: why`.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The calling test, or the part of it that follows, cannot run here.
/// Under `CI=true` this panics: the test fails. Elsewhere it writes
/// `SKIPPED <test>: <why>` to standard error at once, and, after the
/// binary's `test result:` line, how many of its tests skipped what.
/// Both bypass libtest's output capture (which takes `print!` and
/// `eprint!`, not writes to `io::stderr()`), so they show in a plain
/// `cargo test`.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true, and this test cannot run: {why}");
    }
    // libtest runs each test in a thread named after it.
    let test = thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    let mut skipped = SKIPPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if skipped.is_empty() {
        atexit(report_skipped);
    }
    skipped.push(format!("{test}: {why}"));
}

// SAFETY: atexit(3), from the C library std links against, only stores
// the function pointer; the function it is given takes nothing, returns
// nothing and cannot unwind (a panic in an `extern "C"` fn aborts).
#[allow(unsafe_code)]
unsafe extern "C" {
    safe fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
}

/// Run by `exit(3)`, after libtest has printed its summary.
extern "C" fn report_skipped() {
    let skipped = SKIPPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut text = format!(
        "SKIPPED {} in {}, counted as passed above (under CI=true, each fails):\n",
        skipped.len(),
        env!("CARGO_CRATE_NAME"),
    );
    for s in skipped.iter() {
        text.push_str(&format!("    {s}\n"));
    }
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Waits up to `limit` for `child` to exit: its status, or None if it is
/// still running.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > end {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `limit` for `child` to exit; kills it and fails the test,
/// naming `what`, if it does not.
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    wait_exit(child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not exit within {limit:?}");
    })
}
