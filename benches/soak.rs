//! Soak of `websocks`: a server and a pooled agent under steady load for a
//! long while, watched for anything that grows.
//!
//! Run: `cargo bench --bench soak` (10 minutes), `-- --minutes N` for
//! another duration (fractions allowed), `-- --rate R` (tunnels opened and
//! closed per second, default 1000), `-- --idle N` (held tunnels, default
//! 2000), `-- --out DIR` (CSV and PNG; default `target/soak/`).
//!
//! Starts the bench-profile `websocks` binary as a server and as an agent
//! with a pool of 64 on 127.0.0.1 port 0, under the fd-raising shell of the
//! benchmark. Destinations run here: an echo, one that resets each
//! connection (SO_LINGER 0 close after accept), one that accepts and never
//! reads, a closed port, and a hashing sink and source for bulk transfers.
//! Through the agent it holds `--idle` echo tunnels for the whole run and
//! opens and closes `--rate` tunnels per second (85 % echo with a byte
//! checked, 5 % each reset, stall and refused); every 5 s it moves 16 to
//! 64 MiB up or down with SHA-256 compared end to end; every 30 s it rewrites
//! the server's users file (a user the load does not use comes and goes)
//! and sends SIGHUP.
//!
//! Every second it samples, for both processes, RSS (VmRSS), descriptors
//! (/proc/PID/fd), threads (Threads in /proc/PID/status) and tunnels,
//! counted two ways: `conns`, the daemon's own count of open connections
//! from the STATUS= line it sends to the NOTIFY_SOCKET the soak gives it
//! (as systemd would; sent when it changes, checked every 2 s), and
//! `tunnels`, from the kernel: the sockets on the process's listening port
//! (from `ss`, else /proc/net/tcp) whose inode is one of its descriptors,
//! in any state but LISTEN (the server: WebSocket connections from the
//! agent, pooled ones included; the agent: SOCKS5 clients). Verdict: FAIL (exit 1) when any of these trends
//! upward over the last half of the run (see `Bound`), when a transfer's
//! hash differs, when a daemon logs a panic or exits, when a reload fails,
//! when a held tunnel stops echoing, or when more than 0.1 % of the
//! churned tunnels fail.

#[path = "../tests/common/mod.rs"]
mod common;
// The helpers shared with the benchmark (`benches/websocks.rs`).
mod support;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    ALLOW_LOOPBACK, Daemon, PASS, USER, closed_port, connect, find_tool, read_head, signal,
    temp_dir, upgrade_request_as,
};
use sha2::{Digest, Sha256};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use support::{
    CHUNK, IO_TIMEOUT, RAISE, agent_yaml, echo_conn, expected, fd_count, listener, open,
    open_async, ping_async, raise_nofile, serve_each, socks_async, status_kib, timeout,
};

/// Between SIGHUPs to the server.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Between the starts of two bulk transfers.
const BULK_EVERY: Duration = Duration::from_secs(5);
/// One churned tunnel (open, check, close) may take at most this long.
const CHURN_LIMIT: Duration = Duration::from_secs(10);
/// Churn tasks in flight at once: enough to reach the rate with setup
/// latencies of tens of milliseconds under load.
const CHURN_TASKS: usize = 128;
/// Connections the never-reading destination holds before it drops the
/// oldest (it must not run this process out of descriptors).
const STALL_HOLD: usize = 256;
/// Fraction of churned tunnels that may fail before the soak fails.
const CHURN_ERROR_BUDGET: f64 = 0.001;
/// How long a big write into the never-reading destination goes on before
/// the client leaves.
const STALL_WRITE: Duration = Duration::from_millis(200);
const MIB: u64 = 1 << 20;
/// The user the users file adds and removes on alternate reloads; the load
/// never uses it.
const BOB: (&str, &str) = ("bob", "an0ther-Passw0rd");
/// After a SIGHUP, when the soak checks that bob's upgrade is answered as
/// the new users file says.
const RELOAD_CHECK_AFTER: Duration = Duration::from_secs(2);

struct Opts {
    minutes: f64,
    rate: f64,
    idle: usize,
    out: PathBuf,
}

fn parse_args(args: &[String]) -> Opts {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    let mut o = Opts {
        minutes: 10.0,
        rate: 1000.0,
        idle: 2000,
        out: target.join("soak"),
    };
    let mut it = args.iter();
    let usage =
        "usage: cargo bench --bench soak [-- [--minutes N] [--rate R] [--idle N] [--out DIR]]";
    let bad = |what: &str, v: Option<&String>| -> ! {
        eprintln!("{what} wants a positive number, got {v:?}\n{usage}");
        std::process::exit(2);
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" | "--rate" => {
                let v = it.next();
                match v.and_then(|x| x.parse::<f64>().ok()) {
                    Some(x) if x > 0.0 && a == "--minutes" => o.minutes = x,
                    Some(x) if x > 0.0 => o.rate = x,
                    _ => bad(a, v),
                }
            }
            "--idle" => {
                let v = it.next();
                match v.and_then(|x| x.parse::<usize>().ok()) {
                    Some(x) => o.idle = x,
                    None => bad(a, v),
                }
            }
            "--out" => match it.next() {
                Some(d) => o.out = d.into(),
                None => bad(a, None),
            },
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            "-h" | "--help" => {
                eprintln!("{usage}");
                std::process::exit(0);
            }
            other => eprintln!("ignoring argument {other:?}"),
        }
    }
    o
}

// ---------------------------------------------------------------- destinations

struct Dests {
    echo: SocketAddr,
    /// Accepts, then closes with SO_LINGER 0: the peer sees a RST.
    reset: SocketAddr,
    /// Accepts and never reads; holds the last `STALL_HOLD` connections.
    stall: SocketAddr,
    /// Nothing listens: the server's connect is refused.
    refused: SocketAddr,
    /// Reads to EOF, answers the SHA-256 of what it read.
    sink: SocketAddr,
    /// Reads a length N and a pattern offset (8 bytes LE each), sends N
    /// pattern bytes from that offset, then the SHA-256 of what it sent.
    source: SocketAddr,
}

fn start_dests(ex: &Arc<smol::Executor<'static>>) -> Dests {
    let l = smol::net::TcpListener::try_from(listener()).expect("async listener");
    let echo = l.local_addr().expect("echo address");
    let ex2 = ex.clone();
    ex.spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => ex2.spawn(echo_conn(s)).detach(),
                Err(_) => {
                    smol::Timer::after(Duration::from_millis(10)).await;
                }
            }
        }
    })
    .detach();

    let l = listener();
    let reset = l.local_addr().expect("reset address");
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });

    let l = listener();
    let stall = l.local_addr().expect("stall address");
    thread::spawn(move || {
        let mut held = VecDeque::with_capacity(STALL_HOLD);
        for s in l.incoming().flatten() {
            if held.len() == STALL_HOLD {
                held.pop_front();
            }
            held.push_back(s);
        }
    });

    Dests {
        echo,
        reset,
        stall,
        refused: closed_port(),
        sink: serve_each(sink_conn),
        source: serve_each(source_conn),
    }
}

fn sink_conn(mut s: TcpStream) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return,
        }
    }
    let _ = s.write_all(&h.finalize());
    let _ = s.shutdown(Shutdown::Write);
}

fn source_conn(mut s: TcpStream) {
    let mut req = [0u8; 16];
    if s.read_exact(&mut req).is_err() {
        return;
    }
    let (n, off) = split_request(req);
    let mut h = Sha256::new();
    let mut done = 0u64;
    while done < n {
        let k = chunk_len(n - done);
        let bytes = expected(off + done, k);
        h.update(bytes);
        if s.write_all(bytes).is_err() {
            return;
        }
        done += k as u64;
    }
    let _ = s.write_all(&h.finalize());
    let _ = s.shutdown(Shutdown::Write);
    let mut b = [0u8; 64];
    let _ = s.read(&mut b);
}

fn split_request(req: [u8; 16]) -> (u64, u64) {
    let mut n = [0u8; 8];
    let mut off = [0u8; 8];
    n.copy_from_slice(&req[..8]);
    off.copy_from_slice(&req[8..]);
    (u64::from_le_bytes(n), u64::from_le_bytes(off))
}

#[allow(clippy::cast_possible_truncation, reason = "at most CHUNK, a usize")]
fn chunk_len(left: u64) -> usize {
    left.min(CHUNK as u64) as usize
}

// ---------------------------------------------------------------- load

/// Counters the load keeps; the sampler reads them every second.
#[derive(Default)]
struct Load {
    churn_ok: AtomicU64,
    churn_err: AtomicU64,
    /// Failed churned tunnels by kind and error, for the report.
    churn_errors: Mutex<BTreeMap<String, u64>>,
    bulk_ok: AtomicU64,
    bulk_bytes: AtomicU64,
    bulk_bad: Mutex<Vec<String>>,
    reloads_sent: AtomicUsize,
    stop: AtomicBool,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Echo,
    Reset,
    /// `big`: write more than the buffers hold.
    Stall {
        big: bool,
    },
    Refused,
}

impl Kind {
    /// One in 20 of each odd kind (the stalls alternately small and big),
    /// the rest echo.
    fn of(slot: u64) -> Kind {
        match slot % 20 {
            5 => Kind::Reset,
            10 => Kind::Stall {
                big: (slot / 20).is_multiple_of(2),
            },
            15 => Kind::Refused,
            _ => Kind::Echo,
        }
    }
}

/// One churned tunnel through `via`, start to close.
async fn churn_one(via: SocketAddr, d: &Dests, kind: Kind) -> io::Result<()> {
    match kind {
        Kind::Echo => open_async(via, d.echo).await.map(drop),
        Kind::Refused => match socks_async(via, d.refused).await? {
            // RFC 1928 §6: X'05' connection refused.
            (5, _) => Ok(()),
            (code, _) => Err(support::err(format!("reply {code:02x}, wanted 05"))),
        },
        Kind::Reset => {
            let (_, mut s) = socks_async(via, d.reset).await?;
            // Success then EOF or RST, or a failure reply: either way the
            // tunnel must end, which the caller's deadline checks.
            let mut b = [0u8; 64];
            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
            Ok(())
        }
        Kind::Stall { big } => match socks_async(via, d.stall).await? {
            (0, mut s) if big => {
                // More than the tunnel's buffers hold: the writes block,
                // and the client leaves while the relay's write to the
                // destination is stuck (the relay's stall-after-close path).
                let more = async {
                    for _ in 0..4 {
                        s.write_all(expected(0, CHUNK)).await?;
                    }
                    Ok(())
                };
                match timeout(STALL_WRITE, more).await {
                    Err(e) if e.kind() != io::ErrorKind::TimedOut => Err(e),
                    _ => Ok(()),
                }
            }
            (0, mut s) => {
                // All of it fits in the buffers: the tunnel stays half
                // closed until the destination closes.
                s.write_all(&[0x5a; 16 * 1024]).await?;
                Ok(())
            }
            (code, _) => Err(support::err(format!("reply {code:02x}, wanted 00"))),
        },
    }
}

/// `CHURN_TASKS` tasks opening tunnels at `rate` per second in all, each
/// on its own slot of a shared schedule, until `end` or `stop`.
async fn churn(
    ex: Arc<smol::Executor<'static>>,
    via: SocketAddr,
    d: Arc<Dests>,
    load: Arc<Load>,
    rate: f64,
    end: Instant,
) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CHURN_TASKS)
        .map(|_| {
            let (d, load, next) = (d.clone(), load.clone(), next.clone());
            ex.spawn(async move {
                loop {
                    let slot = next.fetch_add(1, Ordering::Relaxed);
                    #[allow(
                        clippy::cast_precision_loss,
                        reason = "slot counts stay far below 2^52"
                    )]
                    let at = start + Duration::from_secs_f64(slot as f64 / rate);
                    if at >= end || load.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    smol::Timer::at(at).await;
                    let kind = Kind::of(slot);
                    match timeout(CHURN_LIMIT, churn_one(via, &d, kind)).await {
                        Ok(()) => {
                            load.churn_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            load.churn_err.fetch_add(1, Ordering::Relaxed);
                            *load
                                .churn_errors
                                .lock()
                                .unwrap()
                                .entry(format!("{kind:?}: {e}"))
                                .or_insert(0) += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
}

/// Bulk transfers every `BULK_EVERY` until `end`, alternately up and down,
/// 16 to 64 MiB, each compared by SHA-256 with what the other end saw.
fn bulk(via: SocketAddr, sink: SocketAddr, source: SocketAddr, load: &Load, end: Instant) {
    let mut k: u64 = 0;
    let mut next = Instant::now();
    while next < end && !load.stop.load(Ordering::Relaxed) {
        thread::sleep(next.saturating_duration_since(Instant::now()));
        next += BULK_EVERY;
        // A fixed LCG: sizes and offsets differ per transfer, the same per run.
        let r = k
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let n = 16 * MIB + (r >> 33) % (48 * MIB + 1);
        let off = (r >> 13) % (1 << 20);
        let up = k.is_multiple_of(2);
        k += 1;
        let r = if up {
            upload(via, sink, n, off)
        } else {
            download(via, source, n, off)
        };
        match r {
            Ok(()) => {
                load.bulk_ok.fetch_add(1, Ordering::Relaxed);
                load.bulk_bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let dir = if up { "up" } else { "down" };
                let msg = format!("{dir} {n} bytes: {e}");
                eprintln!("bulk transfer failed: {msg}");
                load.bulk_bad.lock().unwrap().push(msg);
            }
        }
    }
}

fn upload(via: SocketAddr, sink: SocketAddr, n: u64, off: u64) -> Result<(), String> {
    let mut s = open(Some(via), sink).map_err(|e| format!("open: {e}"))?;
    let mut h = Sha256::new();
    let mut done = 0u64;
    while done < n {
        let k = chunk_len(n - done);
        let bytes = expected(off + done, k);
        h.update(bytes);
        s.write_all(bytes)
            .map_err(|e| format!("write at {done}: {e}"))?;
        done += k as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut theirs = [0u8; 32];
    s.read_exact(&mut theirs)
        .map_err(|e| format!("sink's digest: {e}"))?;
    if theirs[..] != h.finalize()[..] {
        return Err("SHA-256 differs: the sink read other bytes than were sent".into());
    }
    Ok(())
}

fn download(via: SocketAddr, source: SocketAddr, n: u64, off: u64) -> Result<(), String> {
    let mut s = open(Some(via), source).map_err(|e| format!("open: {e}"))?;
    let mut req = [0u8; 16];
    req[..8].copy_from_slice(&n.to_le_bytes());
    req[8..].copy_from_slice(&off.to_le_bytes());
    s.write_all(&req).map_err(|e| format!("request: {e}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < n {
        let want = chunk_len(n - done);
        let k = s
            .read(&mut buf[..want])
            .map_err(|e| format!("read at {done}: {e}"))?;
        if k == 0 {
            return Err(format!("EOF after {done} of {n} bytes"));
        }
        h.update(&buf[..k]);
        done += k as u64;
    }
    let mut theirs = [0u8; 32];
    s.read_exact(&mut theirs)
        .map_err(|e| format!("source's digest: {e}"))?;
    if theirs[..] != h.finalize()[..] {
        return Err("SHA-256 differs: other bytes arrived than the source sent".into());
    }
    Ok(())
}

/// The users file: the load's user always, a second one on odd reloads.
fn write_users(path: &Path, with_bob: bool) {
    let mut y = format!("- {{name: {USER}, password: {PASS}}}\n");
    if with_bob {
        let _ = writeln!(y, "- {{name: {}, password: \"{}\"}}", BOB.0, BOB.1);
    }
    std::fs::write(path, y).expect("write users file");
}

/// The server's answer (status code) to an upgrade authorized as bob.
fn bob_upgrade(server: SocketAddr) -> String {
    let mut s = connect(server);
    if s.write_all(&upgrade_request_as(BOB.0, BOB.1)).is_err() {
        return "write failed".into();
    }
    read_head(&mut s).0.second.clone()
}

fn server_yaml(users: &Path) -> String {
    format!(
        "log_target: stderr\nlog_level: info\nserver:\n  listen: [\"127.0.0.1:0\"]\n  \
         users_file: {}\n{ALLOW_LOOPBACK}  max_connections: 30000\n  \
         max_handshakes_per_source: 15000\n  timeouts: {{idle: 3600s}}\n",
        users.display()
    )
}

// ---------------------------------------------------------------- sampling

/// TCP sockets of `pid` whose local port is `port` (its listener aside),
/// established or half closed: every accepted connection the process
/// still holds. The kernel lists them with their inode; those among the
/// process's descriptors (/proc/PID/fd) count. `ss` (iproute2) asks the
/// kernel for that port's sockets alone, over netlink; without it the
/// whole of /proc/net/tcp is read, which at 1,000 tunnels a second holds
/// some 70,000 TIME_WAIT entries and takes a tenth of a second or more.
fn tunnels(pid: u32, port: u16, ss: Option<&Path>) -> usize {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let l = link.to_str()?;
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let held = |inode: Option<u64>| inode.is_some_and(|i| inodes.contains(&i));
    if let Some(ss) = ss {
        let out = Command::new(ss)
            .args(["-Htne", "state", "connected", "exclude", "time-wait"])
            .arg(format!("( sport = :{port} )"))
            .output()
            .ok()
            .filter(|o| o.status.success());
        if let Some(o) = out {
            return String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| {
                    held(
                        l.split_whitespace()
                            .find_map(|f| f.strip_prefix("ino:")?.parse().ok()),
                    )
                })
                .count();
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            f.len() > 9
                && f[3] != "0A"
                && f[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
                && held(f[9].parse().ok())
        })
        .count()
}

/// One process's figures at one second.
#[derive(Clone, Copy, Default)]
struct Proc {
    rss_kib: u64,
    fds: u64,
    threads: u64,
    tunnels: u64,
    /// The daemon's own count of open connections, from its last STATUS=.
    conns: u64,
}

fn sample(pid: u32, port: u16, notify: &Notify, ss: Option<&Path>) -> Proc {
    Proc {
        rss_kib: status_kib(pid, "VmRSS"),
        fds: fd_count(pid) as u64,
        threads: status_kib(pid, "Threads"),
        tunnels: tunnels(pid, port, ss) as u64,
        conns: notify.conns(),
    }
}

/// A NOTIFY_SOCKET for one daemon: keeps the last STATUS= it sent
/// ("N connections, ..."; the daemon sends it when it changes, checked
/// every 2 s; src/daemon.rs `keep_status`).
struct Notify {
    path: PathBuf,
    status: Arc<Mutex<String>>,
}

impl Notify {
    fn bind(dir: &Path, name: &str) -> Notify {
        let path = dir.join(format!("{name}.notify"));
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        let status = Arc::new(Mutex::new(String::new()));
        let st = status.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(l) = msg.lines().find_map(|l| l.strip_prefix("STATUS=")) {
                    *st.lock().unwrap() = l.to_string();
                }
            }
        });
        Notify { path, status }
    }

    fn conns(&self) -> u64 {
        let s = self.status.lock().unwrap();
        s.split(" connections")
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `websocks MODE` under the fd-raising shell, telling `notify`.
fn daemon(mode: &str, yaml: &str, notify: &Notify) -> Daemon {
    Daemon::start_with(&["sh", "-c", RAISE], &[mode], yaml, 1, |c| {
        c.env("NOTIFY_SOCKET", &notify.path);
    })
}

struct Row {
    t: f64,
    server: Proc,
    agent: Proc,
    /// Churned tunnels closed since the previous sample, per second.
    churn_per_s: f64,
    churn_err: u64,
    bulk_ok: u64,
    reloads: usize,
}

/// What the daemons' logs said so far.
#[derive(Default)]
struct Logs {
    panics: Vec<String>,
    reloaded: usize,
    reload_failed: Vec<String>,
    lines: u64,
    /// Lines logged at warn or error level, by daemon (the first few kept).
    warnings: BTreeMap<&'static str, (u64, Vec<String>)>,
    /// The last lines of each daemon, for a failure's report.
    tail: BTreeMap<&'static str, VecDeque<String>>,
}

/// Takes the lines `d` logged since the last call (so that the harness's
/// in-memory log does not grow with the run) and notes what matters.
fn drain(d: &Daemon, name: &'static str, logs: &mut Logs) {
    let lines = std::mem::take(&mut *d.log.lock().unwrap());
    logs.lines += lines.len() as u64;
    let tail = logs.tail.entry(name).or_default();
    for l in lines {
        if tail.len() == 10 {
            tail.pop_front();
        }
        tail.push_back(l.clone());
        if l.contains("panicked") || l.contains("RUST_BACKTRACE") {
            logs.panics.push(format!("{name}: {l}"));
        } else if l.contains("reload failed") {
            logs.reload_failed.push(format!("{name}: {l}"));
        } else if l.contains("reloaded ") {
            logs.reloaded += 1;
        } else if l.contains("websocks warn") || l.contains("websocks error") {
            let w = logs.warnings.entry(name).or_default();
            w.0 += 1;
            if w.1.len() < 3 {
                w.1.push(l.clone());
            }
        }
    }
}

// ---------------------------------------------------------------- verdict

/// The most a series may grow over the analysed window (the last half of
/// the run), per minute: 1 % of its mean per minute, or what one step of
/// `step` in the middle of the window gives (a least-squares slope of
/// 1.5 x step / window), whichever is larger.
///
/// Why 1 % of the mean per minute: at the nominal 1,000 tunnels/s (60,000
/// a minute) with 2,000 held, it catches a leak of one descriptor per
/// ~1,500 tunnels or of a few bytes of RSS per tunnel, while the noise of
/// a few dozen tunnels in flight has no trend. Over the 5-minute window of
/// the default run a series may grow 5 % in all. Why a step: what is
/// discrete moves once and stays, and is not a leak: the allocator takes
/// memory in arenas and the relay's pipe cache fills to its cap (1 MiB of
/// RSS in all), a descriptor or thread comes once. A steady leak soon
/// exceeds one step; a short run, whose window is short, tolerates steps
/// best and judges slow leaks worst (the default 10 minutes: RSS may grow
/// by about 300 KiB/min; in a 1-minute run, 3 MiB/min).
struct Bound {
    name: &'static str,
    step: f64,
}

const BOUNDS: [Bound; 5] = [
    Bound {
        name: "rss_kib",
        step: 1024.0,
    },
    Bound {
        name: "fds",
        step: 16.0,
    },
    Bound {
        name: "threads",
        step: 1.0,
    },
    Bound {
        name: "tunnels",
        step: 16.0,
    },
    Bound {
        name: "conns",
        step: 16.0,
    },
];
const RELATIVE_PER_MIN: f64 = 0.01;

fn field(p: &Proc, name: &str) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    match name {
        "rss_kib" => p.rss_kib as f64,
        "fds" => p.fds as f64,
        "threads" => p.threads as f64,
        "tunnels" => p.tunnels as f64,
        _ => p.conns as f64,
    }
}

/// Least-squares slope (per minute) and mean of `(t seconds, y)`.
fn slope(points: &[(f64, f64)]) -> (f64, f64) {
    #[allow(clippy::cast_precision_loss, reason = "a few thousand samples")]
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let s = if sxx > 0.0 { sxy / sxx * 60.0 } else { 0.0 };
    (s, my)
}

/// One line per series (first, last, slope, bound) and the failures.
fn trends(rows: &[Row], report: &mut String) -> Vec<String> {
    let mut fails = Vec::new();
    let half = &rows[rows.len() / 2..];
    let _ = writeln!(
        report,
        "{:<18} {:>10} {:>10} {:>10} {:>14} {:>12}",
        "series", "start", "end", "mean(2nd)", "slope/min(2nd)", "bound/min"
    );
    for (who, get) in [
        ("server", (|r: &Row| r.server) as fn(&Row) -> Proc),
        ("agent", |r: &Row| r.agent),
    ] {
        for b in &BOUNDS {
            let pts: Vec<(f64, f64)> = half.iter().map(|r| (r.t, field(&get(r), b.name))).collect();
            let (s, mean) = slope(&pts);
            let window_min = (pts[pts.len() - 1].0 - pts[0].0).max(1.0) / 60.0;
            let bound = (mean * RELATIVE_PER_MIN).max(1.5 * b.step / window_min);
            let first = field(&get(&rows[0]), b.name);
            let last = field(&get(&rows[rows.len() - 1]), b.name);
            let name = format!("{who} {}", b.name);
            let _ = writeln!(
                report,
                "{name:<18} {first:>10.0} {last:>10.0} {mean:>10.1} {s:>14.2} {bound:>12.2}{}",
                if s > bound { "  TRENDS UP" } else { "" }
            );
            if s > bound {
                fails.push(format!(
                    "{name} grows {s:.2}/min over the last half (bound {bound:.2}/min, mean {mean:.1})"
                ));
            }
        }
    }
    fails
}

fn write_csv(path: &Path, rows: &[Row]) -> io::Result<()> {
    let mut s = String::from(
        "t_s,server_rss_kib,server_fds,server_threads,server_tunnels,\
         agent_rss_kib,agent_fds,agent_threads,agent_tunnels,churn_per_s,churn_errors,bulk_ok,reloads,\
         server_conns,agent_conns\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:.1},{},{},{},{},{},{},{},{},{:.0},{},{},{},{},{}",
            r.t,
            r.server.rss_kib,
            r.server.fds,
            r.server.threads,
            r.server.tunnels,
            r.agent.rss_kib,
            r.agent.fds,
            r.agent.threads,
            r.agent.tunnels,
            r.churn_per_s,
            r.churn_err,
            r.bulk_ok,
            r.reloads,
            r.server.conns,
            r.agent.conns
        );
    }
    std::fs::write(path, s)
}

/// Runs `benches/soak-plot.gp` on the CSV when gnuplot is installed.
fn plot(csv: &Path, png: &Path) -> String {
    let Some(gnuplot) = find_tool("gnuplot") else {
        return "no plot: gnuplot is not installed (apt-get install gnuplot-nox)".into();
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/soak-plot.gp");
    let st = Command::new(gnuplot)
        .arg("-e")
        .arg(format!("csv='{}'; png='{}'", csv.display(), png.display()))
        .arg(&script)
        .status();
    match st {
        Ok(s) if s.success() => format!("plot: {}", png.display()),
        Ok(s) => format!("no plot: gnuplot {} exited with {s}", script.display()),
        Err(e) => format!("no plot: gnuplot: {e}"),
    }
}

// ---------------------------------------------------------------- main

#[allow(clippy::too_many_lines, reason = "the run, start to finish, in order")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    raise_nofile(&args);
    let o = parse_args(&args);
    std::fs::create_dir_all(&o.out).expect("create the output directory");
    let run = Duration::from_secs_f64(o.minutes * 60.0);

    let ex: Arc<smol::Executor<'static>> = Arc::new(smol::Executor::new());
    for _ in 0..2 {
        let ex = ex.clone();
        thread::spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())));
    }
    let d = Arc::new(start_dests(&ex));

    let dir = temp_dir();
    let users = dir.join("users.yaml");
    write_users(&users, false);
    let (server_notify, agent_notify) = (Notify::bind(&dir, "server"), Notify::bind(&dir, "agent"));
    let mut server = daemon("server", &server_yaml(&users), &server_notify);
    let mut agent = daemon("agent", &agent_yaml(server.addr(), 64), &agent_notify);
    let (spid, apid) = (server.child.id(), agent.child.id());
    let (sport, aport) = (server.addr().port(), agent.addr().port());
    let via = agent.addr();
    eprintln!(
        "soak: server pid {spid} on {}, agent pid {apid} on {via} (pool 64); {} min, \
         {} tunnels/s, {} held; output in {}",
        server.addr(),
        o.minutes,
        o.rate,
        o.idle,
        o.out.display()
    );
    thread::sleep(Duration::from_millis(1500)); // the pool fills

    // The held tunnels, opened before the clock starts.
    let t0 = Instant::now();
    let held: Vec<io::Result<smol::net::TcpStream>> = smol::block_on(async {
        let sem = Arc::new(smol::lock::Semaphore::new(64));
        let tasks: Vec<_> = (0..o.idle)
            .map(|_| {
                let (sem, echo) = (sem.clone(), d.echo);
                ex.spawn(async move {
                    let _g = sem.acquire().await;
                    timeout(IO_TIMEOUT, open_async(via, echo)).await
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    let mut streams = Vec::with_capacity(o.idle);
    let mut open_errors = BTreeMap::new();
    for r in held {
        match r {
            Ok(s) => streams.push(s),
            Err(e) => *open_errors.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    eprintln!(
        "soak: {} of {} idle tunnels open in {:.1} s{}",
        streams.len(),
        o.idle,
        t0.elapsed().as_secs_f64(),
        if open_errors.is_empty() {
            String::new()
        } else {
            format!("; errors {open_errors:?}")
        }
    );

    let load = Arc::new(Load::default());
    let start = Instant::now();
    let end = start + run;
    let churner = ex.spawn(churn(ex.clone(), via, d.clone(), load.clone(), o.rate, end));
    let bulker = {
        let (load, d) = (load.clone(), d.clone());
        thread::spawn(move || bulk(via, d.sink, d.source, &load, end))
    };

    let mut rows: Vec<Row> = Vec::new();
    let mut logs = Logs::default();
    let mut fatal: Vec<String> = Vec::new();
    let mut last_ok = 0;
    let ss = find_tool("ss");
    if ss.is_none() {
        eprintln!("soak: no `ss` (apt-get install iproute2): tunnels counted from /proc/net/tcp");
    }
    let mut last_t = 0.0;
    // The longest one second's sampling took (it must stay well below 1 s).
    let mut slowest = Duration::ZERO;
    let mut next_reload = start + RELOAD_EVERY;
    let mut with_bob = false;
    let mut check_bob: Option<Instant> = None;
    let mut bob_checks = 0;
    let mut tick = start;
    while Instant::now() < end {
        tick += Duration::from_secs(1);
        thread::sleep(tick.saturating_duration_since(Instant::now()));
        if Instant::now() >= next_reload {
            next_reload += RELOAD_EVERY;
            with_bob = !with_bob;
            write_users(&users, with_bob);
            signal(spid, "HUP");
            load.reloads_sent.fetch_add(1, Ordering::Relaxed);
            check_bob = Some(Instant::now() + RELOAD_CHECK_AFTER);
        }
        if check_bob.is_some_and(|t| Instant::now() >= t) {
            check_bob = None;
            // The removed user is refused at once (STYLE 12), the added one
            // admitted.
            let got = bob_upgrade(server.addr());
            let want_101 = with_bob;
            if (got == "101") != want_101 {
                fatal.push(format!(
                    "after a reload that {} bob, bob's upgrade got {got}",
                    if with_bob { "added" } else { "removed" }
                ));
            }
            bob_checks += 1;
        }
        drain(&server, "server", &mut logs);
        drain(&agent, "agent", &mut logs);
        for (name, dm) in [("server", &mut server), ("agent", &mut agent)] {
            if let Ok(Some(st)) = dm.child.try_wait() {
                fatal.push(format!("{name} exited: {st}"));
            }
        }
        if !fatal.is_empty() {
            break;
        }
        let ok = load.churn_ok.load(Ordering::Relaxed);
        let t = start.elapsed().as_secs_f64();
        let began = Instant::now();
        let (server_now, agent_now) = (
            sample(spid, sport, &server_notify, ss.as_deref()),
            sample(apid, aport, &agent_notify, ss.as_deref()),
        );
        slowest = slowest.max(began.elapsed());
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let churn_per_s = (ok - last_ok) as f64 / (t - last_t).max(1e-3);
        last_t = t;
        let row = Row {
            t,
            server: server_now,
            agent: agent_now,
            churn_per_s,
            churn_err: load.churn_err.load(Ordering::Relaxed),
            bulk_ok: load.bulk_ok.load(Ordering::Relaxed),
            reloads: load.reloads_sent.load(Ordering::Relaxed),
        };
        last_ok = ok;
        if rows.len().is_multiple_of(30) {
            eprintln!(
                "  t={:>4.0}s server rss {} KiB fds {} thr {} tun {} conns {} | agent rss {} KiB fds {} thr {} tun {} conns {} | {:.0}/s churn, {} errors, {} bulk, {} reloads",
                row.t,
                row.server.rss_kib,
                row.server.fds,
                row.server.threads,
                row.server.tunnels,
                row.server.conns,
                row.agent.rss_kib,
                row.agent.fds,
                row.agent.threads,
                row.agent.tunnels,
                row.agent.conns,
                row.churn_per_s,
                row.churn_err,
                row.bulk_ok,
                row.reloads
            );
        }
        rows.push(row);
    }
    let elapsed = start.elapsed().as_secs_f64();
    load.stop.store(true, Ordering::Relaxed);
    smol::block_on(timeout(Duration::from_secs(30), async {
        churner.await;
        Ok(())
    }))
    .unwrap_or_else(|e| fatal.push(format!("churn did not stop: {e}")));
    let _ = bulker.join();

    // Every held tunnel must still echo.
    let pinged: Vec<io::Result<()>> = smol::block_on(async {
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| ex.spawn(async move { timeout(IO_TIMEOUT, ping_async(&mut s)).await }))
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    let held_ok = pinged.iter().filter(|r| r.is_ok()).count();
    thread::sleep(Duration::from_millis(500));
    drain(&server, "server", &mut logs);
    drain(&agent, "agent", &mut logs);

    // ------------------------------------------------ report
    let mut report = String::new();
    let churn_ok = load.churn_ok.load(Ordering::Relaxed);
    let churn_err = load.churn_err.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let (rate, err_frac) = (
        churn_ok as f64 / elapsed,
        churn_err as f64 / (churn_ok + churn_err).max(1) as f64,
    );
    let bulk_ok = load.bulk_ok.load(Ordering::Relaxed);
    let bulk_bad = load.bulk_bad.lock().unwrap().clone();
    let sent = load.reloads_sent.load(Ordering::Relaxed);
    let _ = writeln!(
        report,
        "soak: {:.1} min; churn {churn_ok} tunnels closed cleanly ({rate:.0}/s achieved of {} asked), \
         {churn_err} failed; {held_ok} of {} held tunnels still echo; {bulk_ok} bulk transfers \
         verified ({} MiB), {} failed; {sent} SIGHUPs, {} reloads logged, {} failed, \
         {bob_checks} checked (bob admitted or refused as the users file said); \
         {} log lines read, {} panics",
        elapsed / 60.0,
        o.rate,
        o.idle,
        load.bulk_bytes.load(Ordering::Relaxed) / MIB,
        bulk_bad.len(),
        logs.reloaded,
        logs.reload_failed.len(),
        logs.lines,
        logs.panics.len()
    );
    let _ = writeln!(
        report,
        "  {} samples; the slowest took {} ms",
        rows.len(),
        slowest.as_millis()
    );
    for (name, (n, first)) in &logs.warnings {
        let _ = writeln!(
            report,
            "  {name} logged {n} warnings/errors, first: {first:?}"
        );
    }
    for (e, n) in load.churn_errors.lock().unwrap().iter() {
        let _ = writeln!(report, "  churn error x{n}: {e}");
    }
    fatal.extend(bulk_bad.iter().map(|e| format!("bulk transfer: {e}")));
    fatal.extend(logs.panics.iter().map(|l| format!("panic logged: {l}")));
    fatal.extend(
        logs.reload_failed
            .iter()
            .map(|l| format!("reload failed: {l}")),
    );
    if logs.reloaded < sent {
        fatal.push(format!(
            "{sent} SIGHUPs sent, {} reloads logged",
            logs.reloaded
        ));
    }
    if held_ok < o.idle {
        fatal.push(format!(
            "{held_ok} of {} held tunnels echo at the end",
            o.idle
        ));
    }
    if err_frac > CHURN_ERROR_BUDGET {
        fatal.push(format!(
            "{churn_err} churned tunnels failed ({:.3} %, budget {:.1} %)",
            err_frac * 100.0,
            CHURN_ERROR_BUDGET * 100.0
        ));
    }
    if rows.len() >= 10 {
        fatal.extend(trends(&rows, &mut report));
    } else {
        fatal.push(format!(
            "only {} samples: too short to judge trends",
            rows.len()
        ));
    }

    let csv = o.out.join("soak.csv");
    match write_csv(&csv, &rows) {
        Ok(()) => {
            let _ = writeln!(report, "samples: {}", csv.display());
            let _ = writeln!(report, "{}", plot(&csv, &o.out.join("soak.png")));
        }
        Err(e) => {
            let _ = writeln!(report, "could not write {}: {e}", csv.display());
        }
    }
    eprint!("{report}");
    let _ = std::fs::remove_dir_all(&dir);
    if fatal.is_empty() {
        eprintln!("soak: PASS");
    } else {
        eprintln!("soak: FAIL");
        for f in &fatal {
            eprintln!("  {f}");
        }
        for (name, tail) in &logs.tail {
            eprintln!("  last log lines of {name}:");
            for l in tail {
                eprintln!("    {l}");
            }
        }
        // `exit` runs no destructors: stop the daemons first.
        drop((server, agent));
        std::process::exit(1);
    }
}
