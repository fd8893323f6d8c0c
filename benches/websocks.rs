//! Benchmark of `websocks` against direct connections, on loopback.
//!
//! Run: `cargo bench --bench websocks` (about two minutes on 2 cores),
//! `cargo bench --bench websocks -- --quick` (shorter transfers and
//! fewer connections), `-- --only bulk,setup,idle,banner,rtt` to choose
//! phases, `-- --conns 2000,10000` to choose the idle-tunnel counts and
//! `-- --rtt 20,80` the round trips (ms) of the rtt phase.
//!
//! Starts the bench-profile `websocks` binary as a server and as two agents
//! (pool 64 and pool 0), all on 127.0.0.1 port 0; a source and a sink run
//! in threads here, an echo in a helper process (a re-exec of this program:
//! the idle-tunnel figure needs more descriptors than one process may hold).
//! Each tunnelled figure is printed next to the same figure for a direct
//! connection measured in the same run: the ratios are what count, the
//! absolute figures depend on the machine. Rows marked "bare relays" run
//! the same traffic through two minimal relays instead (this program as
//! `--relay-helper`: splice(2) in a blocking thread per direction, no
//! protocol): the floor a two-hop tunnel can reach on the machine. Rows
//! marked "senders reno" (on a host whose default congestion control is
//! BBR) repeat the downloads with the destination's sender on reno, as
//! every sender would be on a reno host: BBR's pacing slows the direct
//! baseline on loopback, and websocks' own legs use reno there. The CPU
//! row's direct column is what both ends of the direct transfers (this
//! program) used per byte.
//!
//! The rtt phase puts a delay relay between agent and server: this program
//! as `--delay-helper TARGET DELAY_MS [RATE_MBIT]` (`support/delay.rs`),
//! which holds each chunk DELAY_MS in each direction (and a client's first
//! bytes a TCP handshake's round trip longer), each direction capped at
//! RATE_MBIT Mbit/s if given. The destinations stay next to the server on
//! loopback. Times from the SOCKS5 CONNECT to its reply are printed in round
//! trips next to the least the protocol allows: pooled, in bursts of 32
//! against the default pool, unpooled. One bulk stream through the tunnel
//! is compared with one direct connection across the same link (a relay in
//! front of the destination), capped at 100 Mbit/s and not. First rows:
//! the relay alone, to the echo, so that what it adds shows.

// The test suite's harness, shared rather than copied: `Daemon` runs
// websocks, `watch_log` reads a helper's output; `support` (shared with
// the soak) builds on it for the destinations and the SOCKS5 client side.
#[path = "../tests/common/mod.rs"]
mod common;
// The helpers this bench shares with the soak (`benches/soak.rs`).
mod support;
// The delay relay of the rtt phase (`--delay-helper`).
#[path = "support/delay.rs"]
mod delay;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{Daemon, PASS, USER, watch_log};

use support::{
    CHUNK, IO_TIMEOUT, agent_yaml, agent_yaml_with, echo_conn, err, expected, fd_count, last_lines,
    listener, nofile, open, open_async, pattern, ping_async, raise_nofile, serve_each,
    socks_connect, status_kib, timeout, websocks,
};

/// One bulk transfer may take at most this long.
const TRANSFER_LIMIT: Duration = Duration::from_secs(120);
/// Opening one idle tunnel may take at most this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed opens after which the idle figure stops trying.
const GIVE_UP_AFTER: usize = 50;
const MIB: f64 = 1048576.0;

// ---------------------------------------------------------------- options

struct Opts {
    quick: bool,
    conns: Vec<usize>,
    /// Round trips of the rtt phase, in ms.
    rtts: Vec<f64>,
    /// Phases to run: bulk, setup, idle, banner, rtt.
    only: Vec<String>,
}

impl Opts {
    fn bulk(&self) -> u64 {
        if self.quick { 256 << 20 } else { 1 << 30 }
    }
    /// Rounds of each throughput figure (the median is reported).
    fn repeats(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }
    fn sequential(&self) -> usize {
        if self.quick { 500 } else { 2000 }
    }
    fn concurrent(&self) -> usize {
        if self.quick { 5000 } else { 20000 }
    }
    /// Connections timed one at a time in the rtt phase, per figure.
    fn rtt_sequential(&self) -> usize {
        if self.quick { 8 } else { 20 }
    }
    /// Bursts of [`BURST`] connections in the rtt phase.
    fn bursts(&self) -> usize {
        if self.quick { 2 } else { 5 }
    }
    /// Bytes of one transfer through the capped link of the rtt phase.
    fn capped_bulk(&self) -> u64 {
        if self.quick { 8 << 20 } else { 32 << 20 }
    }
    /// Bytes of one transfer through the uncapped link.
    fn uncapped_bulk(&self) -> u64 {
        if self.quick { 64 << 20 } else { 256 << 20 }
    }
}

fn parse_args(args: &[String]) -> Opts {
    let mut o = Opts {
        quick: false,
        conns: vec![2000, 10000],
        rtts: vec![20.0, 80.0],
        only: ["bulk", "setup", "idle", "banner", "rtt"]
            .map(String::from)
            .to_vec(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--only" => {
                let v = it.next().map(String::as_str).unwrap_or("");
                o.only = v.split(',').map(|x| x.trim().to_string()).collect();
            }
            "--conns" => {
                let v = it.next().map(String::as_str).unwrap_or("");
                let parsed: Result<Vec<usize>, _> =
                    v.split(',').map(|x| x.trim().parse::<usize>()).collect();
                match parsed {
                    Ok(c) if !c.is_empty() && c.iter().all(|&n| n > 0) => o.conns = c,
                    _ => {
                        eprintln!("--conns wants counts like 2000,10000; got {v:?}");
                        std::process::exit(2);
                    }
                }
            }
            "--rtt" => {
                let v = it.next().map(String::as_str).unwrap_or("");
                let parsed: Result<Vec<f64>, _> =
                    v.split(',').map(|x| x.trim().parse::<f64>()).collect();
                match parsed {
                    Ok(r) if !r.is_empty() && r.iter().all(|&ms| ms > 0.0 && ms <= 2000.0) => {
                        o.rtts = r;
                    }
                    _ => {
                        eprintln!("--rtt wants round trips in ms like 20,80; got {v:?}");
                        std::process::exit(2);
                    }
                }
            }
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo bench --bench websocks [-- [--quick] [--conns N[,N...]] \
                     [--rtt MS[,MS...]] [--only bulk,setup,idle,banner,rtt]]"
                );
                std::process::exit(0);
            }
            other => eprintln!("ignoring argument {other:?}"),
        }
    }
    o
}

// ---------------------------------------------------------------- processes

/// This program re-executed as a helper (`--echo-helper`, `--relay-helper
/// DEST`, `--delay-helper TARGET DELAY_MS [RATE_MBIT]`) with a listener;
/// killed on drop.
struct Helper {
    child: Child,
    addr: SocketAddr,
    /// The helper exits when this pipe closes (also if the bench dies).
    _stdin: Option<ChildStdin>,
}

impl Helper {
    /// Starts the helper and waits for its "listening on ADDR" line.
    fn start(args: &[&str]) -> Helper {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn helper");
        let (log, listening) = watch_log(child.stdout.take().expect("stdout pipe"));
        let _stdin = child.stdin.take();
        match listening.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Helper {
                child,
                addr,
                _stdin,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{args:?} did not start; its output: {:#?}",
                    log.lock().unwrap()
                );
            }
        }
    }

    /// This program as the echo destination.
    fn echo() -> Helper {
        Self::start(&["--echo-helper"])
    }

    /// This program as a bare relay to `dest`.
    fn relay(dest: SocketAddr) -> Helper {
        Self::start(&["--relay-helper", &dest.to_string()])
    }

    /// This program as a delay relay to `target`: round trip `rtt`, each
    /// direction capped at `mbit` Mbit/s if given.
    fn delay(target: SocketAddr, rtt: Duration, mbit: Option<f64>) -> Helper {
        let mut args = vec![
            "--delay-helper".to_string(),
            target.to_string(),
            (rtt.as_secs_f64() * 1e3 / 2.0).to_string(),
        ];
        args.extend(mbit.map(|m| m.to_string()));
        Self::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's configuration; `WEBSOCKS_BENCH_SERVER` adds lines to its
/// section (e.g. `  tunnel_buffer_kib: 0` to compare a setting side by
/// side: run the bench once with each).
fn server_yaml() -> String {
    server_yaml_with("")
}

/// [`server_yaml`] with `more` lines in its section.
fn server_yaml_with(more: &str) -> String {
    let extra = std::env::var("WEBSOCKS_BENCH_SERVER").unwrap_or_default();
    format!(
        "log_target: stderr\nlog_level: info\nserver:\n  listen: [\"127.0.0.1:0\"]\n  \
         users:\n    - {{name: {USER}, password: {PASS}}}\n  \
         destinations: {{allow: [\"127.0.0.0/8\"]}}\n  max_connections: 30000\n  \
         max_handshakes_per_source: 15000\n  \
         timeouts: {{idle: 3600s}}\n{more}{extra}\n"
    )
}

/// A server and an agent (pool `pool`) in front of it.
fn start_pair(pool: usize) -> (Daemon, Daemon) {
    let server = websocks("server", &server_yaml());
    let agent = websocks("agent", &agent_yaml(server.addr(), pool));
    (server, agent)
}

// ---------------------------------------------------------------- /proc

/// utime + stime, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15.
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Resets VmHWM to the current RSS.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------- destinations

struct SinkReport {
    bytes: u64,
    ok: bool,
    end: Instant,
}

#[derive(Clone)]
struct Dests {
    /// Reads an 8-byte length N, sends N pattern bytes, closes.
    source: SocketAddr,
    /// Reads to EOF, checks the pattern, reports, closes.
    sink: SocketAddr,
    sink_rx: Arc<Mutex<mpsc::Receiver<SinkReport>>>,
    /// How long a transfer waits after its connection is open before its
    /// clock starts: a connection across a delay relay carries bytes only
    /// from one round trip after its connect.
    settle: Duration,
}

impl Dests {
    /// The same destinations reached through other addresses (relays in
    /// front of them).
    fn through(&self, source: SocketAddr, sink: SocketAddr) -> Dests {
        Dests {
            source,
            sink,
            sink_rx: self.sink_rx.clone(),
            settle: self.settle,
        }
    }

    /// These destinations, each transfer waiting `settle` once open.
    fn settled(mut self, settle: Duration) -> Dests {
        self.settle = settle;
        self
    }
}

fn source_conn(mut s: TcpStream) {
    let mut n = [0u8; 8];
    if s.read_exact(&mut n).is_err() {
        return;
    }
    let total = u64::from_le_bytes(n);
    let mut off = 0u64;
    while off < total {
        let k = (total - off).min(CHUNK as u64) as usize;
        if s.write_all(expected(off, k)).is_err() {
            return;
        }
        off += k as u64;
    }
    let _ = s.shutdown(Shutdown::Write);
    // Wait for the client's close (bounded by the read timeout).
    let mut b = [0u8; 64];
    let _ = s.read(&mut b);
}

fn sink_conn(mut s: TcpStream, tx: &mpsc::Sender<SinkReport>) {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    let mut ok = true;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if ok && buf[..n] != *expected(off, n) {
                    ok = false;
                }
                off += n as u64;
            }
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    let _ = tx.send(SinkReport {
        bytes: off,
        ok,
        end: Instant::now(),
    });
}

fn start_dests() -> Dests {
    let (tx, sink_rx) = mpsc::channel();
    Dests {
        source: serve_each(source_conn),
        sink: serve_each(move |s| sink_conn(s, &tx)),
        sink_rx: Arc::new(Mutex::new(sink_rx)),
        settle: Duration::ZERO,
    }
}

/// A helper process ends when the bench does: its stdin closes.
fn exit_with_stdin() {
    thread::spawn(|| {
        let mut b = [0u8; 64];
        let mut i = io::stdin();
        while matches!(i.read(&mut b), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// `--relay-helper DEST`: the least a relay can do, for the floor of a
/// tunnel's two extra hops on this machine: accept, connect to DEST, and
/// splice(2) each direction in its own blocking thread (socket → 1 MiB
/// pipe → socket), passing FIN on. No protocol, no event loop.
fn relay_helper(dest: &str) {
    let dest: SocketAddr = dest.parse().expect("relay destination");
    let l = listener();
    println!("relay listening on {}", l.local_addr().unwrap());
    let _ = io::stdout().flush();
    exit_with_stdin();
    // The socket policy of websocks (src/dial.rs `tune`): reno on loopback
    // when the host default is BBR.
    let reno = default_cc().starts_with("bbr");
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        thread::spawn(move || {
            let Ok(u) = TcpStream::connect(dest) else {
                return;
            };
            let _ = (c.set_nodelay(true), u.set_nodelay(true));
            if reno {
                for s in [&c, &u] {
                    let _ = socket2::SockRef::from(s).set_tcp_congestion(b"reno");
                }
            }
            let (Ok(c2), Ok(u2)) = (c.try_clone(), u.try_clone()) else {
                return;
            };
            let up = thread::spawn(move || splice_all(&c2, &u2));
            splice_all(&u, &c);
            let _ = up.join();
        });
    }
}

/// `--delay-helper TARGET DELAY_MS [RATE_MBIT]`: the delay relay of the
/// rtt phase (`support/delay.rs`) in front of TARGET, DELAY_MS each way
/// (fractions allowed), each direction capped at RATE_MBIT Mbit/s if
/// given; prints its address and exits when its stdin closes.
fn delay_helper(args: &[String]) {
    let arg = |i: usize| args.get(i).map_or("", String::as_str);
    let target: SocketAddr = arg(0).parse().expect("TARGET: an IP:PORT");
    let ms: f64 = arg(1).parse().expect("DELAY_MS: a number");
    let rate = args.get(2).map(|m| {
        let mbit: f64 = m.parse().expect("RATE_MBIT: a number");
        assert!(mbit > 0.0, "RATE_MBIT must be positive");
        mbit * 1e6 / 8.0
    });
    let link = delay::Link {
        delay: Duration::from_secs_f64(ms / 1e3),
        rate,
    };
    let l = listener();
    println!("delay relay listening on {}", l.local_addr().unwrap());
    let _ = io::stdout().flush();
    exit_with_stdin();
    delay::serve(&l, target, link);
}

/// The host's default TCP congestion control.
fn default_cc() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Moves `from` to `to` through a pipe until EOF, then half-closes `to`.
fn splice_all(from: &TcpStream, to: &TcpStream) {
    use rustix::pipe::{SpliceFlags, fcntl_setpipe_size, pipe, splice};
    const MAX: usize = 1 << 20;
    let Ok((r, w)) = pipe() else { return };
    let _ = fcntl_setpipe_size(&w, MAX);
    loop {
        let n = match splice(from, None, &w, None, MAX, SpliceFlags::MOVE) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut left = n;
        while left > 0 {
            match splice(&r, None, to, None, left, SpliceFlags::MOVE) {
                Ok(0) | Err(_) => return,
                Ok(k) => left -= k,
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Two bare relays in a row in front of a destination: a tunnel's route
/// without its protocol.
struct Chain {
    near: Helper,
    far: Helper,
}

impl Chain {
    fn to(dest: SocketAddr) -> Chain {
        let far = Helper::relay(dest);
        let near = Helper::relay(far.addr);
        Chain { near, far }
    }

    fn addr(&self) -> SocketAddr {
        self.near.addr
    }

    fn ticks(&self) -> u64 {
        cpu_ticks(self.near.pid()) + cpu_ticks(self.far.pid())
    }
}

/// `--echo-helper`: an echo destination on smol; prints its address, and
/// exits when its stdin closes.
fn echo_helper() {
    let l = smol::net::TcpListener::try_from(listener()).expect("async listener");
    println!("echo listening on {}", l.local_addr().unwrap());
    let _ = io::stdout().flush();
    exit_with_stdin();
    let ex = Arc::new(smol::Executor::new());
    {
        let ex = ex.clone();
        thread::spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())));
    }
    smol::block_on(ex.run(async {
        loop {
            match l.accept().await {
                Ok((s, _)) => ex.spawn(echo_conn(s)).detach(),
                Err(_) => {
                    smol::Timer::after(Duration::from_millis(10)).await;
                }
            }
        }
    }));
}

// ---------------------------------------------------------------- measurements

/// Downloads `n` bytes from the source on `s` and checks them; returns
/// the end.
fn download(mut s: TcpStream, n: u64) -> Result<Instant, String> {
    let start = Instant::now();
    s.write_all(&n.to_le_bytes())
        .map_err(|e| format!("request: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let k = s
            .read(&mut buf)
            .map_err(|e| format!("read at {off}: {e}"))?;
        if k == 0 {
            break;
        }
        if buf[..k] != *expected(off, k) {
            return Err(format!("corrupt data at byte {off}"));
        }
        off += k as u64;
        if start.elapsed() > TRANSFER_LIMIT {
            return Err(format!("only {off} of {n} bytes in {TRANSFER_LIMIT:?}"));
        }
    }
    if off != n {
        return Err(format!("EOF after {off} of {n} bytes"));
    }
    Ok(Instant::now())
}

/// Uploads `n` pattern bytes to the sink on `s`, then waits for its
/// close.
fn upload(mut s: TcpStream, n: u64) -> Result<(), String> {
    let start = Instant::now();
    let mut off = 0u64;
    while off < n {
        let k = (n - off).min(CHUNK as u64) as usize;
        s.write_all(expected(off, k))
            .map_err(|e| format!("write at {off}: {e}"))?;
        off += k as u64;
        if start.elapsed() > TRANSFER_LIMIT {
            return Err(format!("only {off} of {n} bytes in {TRANSFER_LIMIT:?}"));
        }
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut b = [0u8; 64];
    let _ = s.read(&mut b);
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Down,
    Up,
}

/// `streams` parallel transfers of `total` bytes in all; aggregate MiB/s
/// from when every stream is open (and settled, see [`Dests::settle`]).
fn transfer(
    dir: Dir,
    streams: usize,
    total: u64,
    via: Option<SocketAddr>,
    d: &Dests,
) -> Result<f64, String> {
    let sink_rx = d.sink_rx.lock().unwrap();
    while sink_rx.try_recv().is_ok() {}
    let per = total / streams as u64;
    let dest = match dir {
        Dir::Down => d.source,
        Dir::Up => d.sink,
    };
    let settle = d.settle;
    let ready = Arc::new(Barrier::new(streams + 1));
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let ready = ready.clone();
            thread::spawn(move || {
                let s = open(via, dest).map_err(|e| format!("open: {e}"));
                if s.is_ok() {
                    thread::sleep(settle);
                }
                ready.wait();
                match dir {
                    Dir::Down => download(s?, per),
                    Dir::Up => upload(s?, per).map(|()| Instant::now()),
                }
            })
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    let mut end = start;
    let mut errs = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => {
                if dir == Dir::Down {
                    end = end.max(t);
                }
            }
            Ok(Err(e)) => errs.push(e),
            Err(_) => errs.push("client thread panicked".to_string()),
        }
    }
    if dir == Dir::Up {
        for _ in 0..streams {
            match sink_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(r) => {
                    if !r.ok {
                        errs.push("sink: corrupt data or read error".into());
                    } else if r.bytes != per {
                        errs.push(format!("sink got {} of {per} bytes", r.bytes));
                    }
                    end = end.max(r.end);
                }
                Err(_) => errs.push("no report from the sink".into()),
            }
        }
    }
    if !errs.is_empty() {
        errs.dedup();
        return Err(errs.join("; "));
    }
    Ok((per * streams as u64) as f64 / MIB / (end - start).as_secs_f64())
}

/// Connect (+ SOCKS5 through `via`) and a one-byte echo.
fn ping(via: Option<SocketAddr>, echo: SocketAddr) -> io::Result<()> {
    echo_byte(&mut open(via, echo)?)
}

/// One byte to the echo on `s` and back.
fn echo_byte(s: &mut TcpStream) -> io::Result<()> {
    s.write_all(&[0x5a])?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b[0] != 0x5a {
        return Err(err("echo returned a wrong byte"));
    }
    Ok(())
}

struct Latency {
    /// Completed pings per second of the whole sequential run.
    per_s: f64,
    median_us: f64,
    p99_us: f64,
    errors: usize,
    first_error: Option<String>,
}

#[allow(
    clippy::cast_sign_loss,
    reason = "quantiles of a non-empty sample: q in 0..=1"
)]
fn sequential(via: Option<SocketAddr>, echo: SocketAddr, n: usize) -> Latency {
    for _ in 0..20 {
        let _ = ping(via, echo);
    }
    let mut v = Vec::with_capacity(n);
    let mut errors = 0;
    let mut first_error = None;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    for _ in 0..n {
        let t = Instant::now();
        match ping(via, echo) {
            Ok(()) => v.push(t.elapsed().as_secs_f64() * 1e6),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
        if Instant::now() > deadline {
            errors += n - v.len() - errors;
            first_error.get_or_insert("60 s deadline passed".into());
            break;
        }
    }
    let per_s = v.len() as f64 / start.elapsed().as_secs_f64();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
        }
    };
    Latency {
        per_s,
        median_us: at(0.5),
        p99_us: at(0.99),
        errors,
        first_error,
    }
}

struct Rate {
    per_s: f64,
    errors: usize,
    first_error: Option<String>,
}

/// `total` pings from `threads` threads; completed pings per second.
fn concurrent(via: Option<SocketAddr>, echo: SocketAddr, total: usize, threads: usize) -> Rate {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Mutex::new(None::<String>));
    let deadline = Instant::now() + Duration::from_secs(90);
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (next, ok, errors, first) =
                (next.clone(), ok.clone(), errors.clone(), first.clone());
            thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                    match ping(via, echo) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            first.lock().unwrap().get_or_insert(e.to_string());
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let done = ok.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed)
        + total.saturating_sub(done + errors.load(Ordering::Relaxed));
    Rate {
        per_s: done as f64 / secs,
        errors,
        first_error: first.lock().unwrap().clone(),
    }
}

struct Idle {
    n: usize,
    opened: usize,
    held: usize,
    kib_per: f64,
    open_secs: f64,
    errors: BTreeMap<String, usize>,
    alive: bool,
    /// Open descriptors of (server, agent) with the tunnels established.
    fds: (usize, usize),
}

/// `n` idle tunnels through a fresh server and pooled agent: RSS growth of
/// both per tunnel, and whether every tunnel still echoes afterwards.
#[allow(clippy::too_many_lines, reason = "one measurement, start to finish")]
fn idle_tunnels(n: usize, echo: SocketAddr) -> Idle {
    let (mut server, mut agent) = start_pair(64);
    thread::sleep(Duration::from_millis(1500)); // the pool fills
    let (server_pid, agent_pid) = (server.child.id(), agent.child.id());
    let rss = || status_kib(server_pid, "VmRSS") + status_kib(agent_pid, "VmRSS");
    let before = rss();
    let (before_server, before_agent) = (
        status_kib(server_pid, "VmRSS"),
        status_kib(agent_pid, "VmRSS"),
    );
    let via = agent.addr();
    let mut errors = BTreeMap::new();
    let start = Instant::now();

    let sem = smol::lock::Semaphore::new(256);
    // Once opens fail, the rest would mostly wait out their timeouts: give
    // up after a few failures or two minutes.
    let failed = AtomicUsize::new(0);
    let give_up = start + Duration::from_secs(120);
    let ex = smol::LocalExecutor::new();
    let results: Vec<io::Result<smol::net::TcpStream>> = smol::block_on(ex.run(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                ex.spawn(async {
                    let _g = sem.acquire().await;
                    if failed.load(Ordering::Relaxed) >= GIVE_UP_AFTER || Instant::now() > give_up {
                        return Err(err("not tried: gave up after failures or 120 s"));
                    }
                    let r = timeout(OPEN_TIMEOUT, open_async(via, echo)).await;
                    if r.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await);
        }
        out
    }));
    let open_secs = start.elapsed().as_secs_f64();
    let mut streams = Vec::with_capacity(n);
    for r in results {
        match r {
            Ok(s) => streams.push(s),
            Err(e) => *errors.entry(format!("open: {e}")).or_insert(0) += 1,
        }
    }
    let opened = streams.len();
    let fds = (fd_count(server_pid), fd_count(agent_pid));
    thread::sleep(Duration::from_secs(1));
    let after = rss();
    eprintln!(
        "  idle @{n}: server {} KiB, agent {} KiB (RSS after minus before, whole process)",
        status_kib(server_pid, "VmRSS").saturating_sub(before_server),
        status_kib(agent_pid, "VmRSS").saturating_sub(before_agent)
    );

    // Every tunnel must still carry a byte each way.
    let ex = smol::LocalExecutor::new();
    let pinged: Vec<(smol::net::TcpStream, io::Result<()>)> = smol::block_on(ex.run(async {
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                ex.spawn(async {
                    let _g = sem.acquire().await;
                    let r = timeout(IO_TIMEOUT, ping_async(&mut s)).await;
                    (s, r)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await);
        }
        out
    }));
    let mut held = 0;
    for (_, r) in &pinged {
        match r {
            Ok(()) => held += 1,
            Err(e) => *errors.entry(format!("held tunnel: {e}")).or_insert(0) += 1,
        }
    }
    let alive =
        matches!(server.child.try_wait(), Ok(None)) && matches!(agent.child.try_wait(), Ok(None));
    if !errors.is_empty() {
        for (name, d) in [("server", &server), ("agent (pool 64)", &agent)] {
            eprintln!("  last log lines of {name}:");
            for l in last_lines(d, 5) {
                eprintln!("    {l}");
            }
        }
    }
    drop(pinged);
    Idle {
        n,
        opened,
        held,
        kib_per: after.saturating_sub(before) as f64 / opened.max(1) as f64,
        open_secs,
        errors,
        alive,
        fds,
    }
}

// ---------------------------------------------------------------- report

struct Row {
    /// What the three figures below are.
    cols: [&'static str; 3],
    name: String,
    tunnel: String,
    direct: String,
    ratio: String,
    target: String,
    pass: Option<bool>,
}

/// The columns of most rows: the figure through the tunnel, the same for a
/// direct connection, and their ratio.
const TUNNEL_COLS: [&str; 3] = ["tunnel", "direct", "ratio"];
/// The columns of a time across the delay relay: in round trips, the least
/// the protocol allows (in round trips), and in ms.
const RTT_COLS: [&str; 3] = ["RTTs", "floor", "ms"];

struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    t0: Instant,
}

impl Report {
    fn row(
        &mut self,
        name: &str,
        tunnel: String,
        direct: String,
        ratio: String,
        target: &str,
        pass: Option<bool>,
    ) {
        self.row_of(TUNNEL_COLS, name, [tunnel, direct, ratio], target, pass);
    }

    /// A row whose three figures are `cols`.
    fn row_of(
        &mut self,
        cols: [&'static str; 3],
        name: &str,
        [tunnel, direct, ratio]: [String; 3],
        target: &str,
        pass: Option<bool>,
    ) {
        eprintln!(
            "[{:6.1}s] {name}: {} {tunnel}, {} {direct}, {} {ratio}",
            self.t0.elapsed().as_secs_f64(),
            cols[0],
            cols[1],
            cols[2]
        );
        self.rows.push(Row {
            cols,
            name: name.to_string(),
            tunnel,
            direct,
            ratio,
            target: target.to_string(),
            pass,
        });
    }

    fn note(&mut self, n: String) {
        eprintln!("  note: {n}");
        self.notes.push(n);
    }

    /// A CPU-per-byte row: `ns` (or "error" when the transfer failed),
    /// next to `against` when there is a figure to compare with.
    fn cpu(
        &mut self,
        name: &str,
        ok: bool,
        ns: f64,
        against: Option<f64>,
        target: &str,
        pass: Option<bool>,
    ) {
        self.row(
            name,
            if ok {
                format!("{ns:.3}")
            } else {
                "error".into()
            },
            against.map_or_else(|| "-".into(), |a| format!("{a:.3}")),
            against.map_or_else(|| "-".into(), |a| format!("{:.2}x", ns / a.max(1e-9))),
            target,
            pass.map(|p| ok && p),
        );
    }

    /// A throughput pair; `min_ratio` is the target, if any.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "each call site hands over a fresh result"
    )]
    fn throughput(
        &mut self,
        name: &str,
        t: Result<f64, String>,
        d: Result<f64, String>,
        min_ratio: Option<f64>,
    ) {
        let show = |r: &Result<f64, String>| match r {
            Ok(v) if *v < 100.0 => format!("{v:.1}"),
            Ok(v) => format!("{v:.0}"),
            Err(_) => "error".into(),
        };
        let (ratio, pass) = match (&t, &d) {
            (Ok(t), Ok(d)) => (format!("{:.2}x", t / d), min_ratio.map(|m| t / d >= m)),
            _ => ("-".into(), min_ratio.map(|_| false)),
        };
        for (what, r) in [("tunnel", &t), ("direct", &d)] {
            if let Err(e) = r {
                self.note(format!("{name}, {what}: {e}"));
            }
        }
        self.row(
            name,
            show(&t),
            show(&d),
            ratio,
            &min_ratio.map_or(String::new(), |m| format!(">= {m:.2}x")),
            pass,
        );
    }

    fn print(&self, header: &str) {
        println!();
        println!("{header}");
        let mut cols = None;
        for r in &self.rows {
            if cols != Some(r.cols) {
                let [a, b, c] = r.cols;
                println!(
                    "{:<38} {a:>10} {b:>10} {c:>8}   {:<14} result",
                    "figure", "target"
                );
                cols = Some(r.cols);
            }
            let verdict = match r.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "",
            };
            println!(
                "{:<38} {:>10} {:>10} {:>8}   {:<14} {verdict}",
                r.name, r.tunnel, r.direct, r.ratio, r.target
            );
        }
        let fails = self.rows.iter().filter(|r| r.pass == Some(false)).count();
        let graded = self.rows.iter().filter(|r| r.pass.is_some()).count();
        println!("{} of {graded} targets met.", graded - fails);
        println!(
            "Ratios are what count: tunnel and direct were measured in the same run on this \
             machine; absolute figures depend on it."
        );
        for n in &self.notes {
            println!("note: {n}");
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC`, from humantime's RFC 3339 form.
fn utc_now() -> String {
    let t = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    format!("{} {} UTC", &t[..10], &t[11..16])
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn latency_text(l: &Latency, p99: bool) -> String {
    let v = if p99 { l.p99_us } else { l.median_us };
    if v.is_nan() {
        "error".into()
    } else {
        format!("{v:.0}")
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--echo-helper") {
        echo_helper();
        return;
    }
    if args.first().map(String::as_str) == Some("--relay-helper") {
        relay_helper(args.get(1).map_or("", String::as_str));
        return;
    }
    if args.first().map(String::as_str) == Some("--delay-helper") {
        delay_helper(&args[1..]);
        return;
    }
    raise_nofile(&args);
    let o = parse_args(&args);
    let header = format!(
        "websocks bench — {}, {} cores, {}, congestion control {}{}",
        utc_now(),
        thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(1),
        cpu_model(),
        default_cc(),
        if o.quick { " (--quick)" } else { "" }
    );
    eprintln!("{header}");
    let mut rep = Report {
        rows: Vec::new(),
        notes: Vec::new(),
        t0: Instant::now(),
    };
    let (soft, hard) = nofile();
    eprintln!(
        "fd limit: {soft} (hard {hard}); binary: {}",
        env!("CARGO_BIN_EXE_websocks")
    );

    let dests = start_dests();
    pattern();
    let echo = Helper::echo();
    let want = |p: &str| o.only.iter().any(|x| x == p);
    if want("bulk") {
        bulk_phase(&mut rep, &o, &dests);
    }
    if want("setup") {
        setup_phase(&mut rep, &o, echo.addr);
    }
    if want("idle") {
        idle_phase(&mut rep, &o, echo.addr);
    }
    if want("banner") {
        banner_phase(&mut rep, &o);
    }
    if want("rtt") {
        rtt_phase(&mut rep, &o, &dests, echo.addr);
    }
    drop(echo);
    eprintln!("total {:.0} s", rep.t0.elapsed().as_secs_f64());
    rep.print(&header);
}

/// `reps` rounds of (direct, tunnel) transfers: the median MiB/s of each,
/// the agent's and server's CPU ticks during the tunnelled ones and this
/// program's (both ends) during the direct ones.
fn pair(
    dir: Dir,
    streams: usize,
    total: u64,
    via: Option<SocketAddr>,
    d: &Dests,
    reps: usize,
    ticks: &dyn Fn() -> u64,
) -> (Result<f64, String>, Result<f64, String>, u64, u64) {
    pair_through(dir, streams, total, via, d, d, reps, ticks)
}

/// [`pair`], with the measured route reaching the destinations at `route`
/// (relays in front of them) instead of `direct`.
#[allow(clippy::too_many_arguments)]
fn pair_through(
    dir: Dir,
    streams: usize,
    total: u64,
    via: Option<SocketAddr>,
    direct: &Dests,
    route: &Dests,
    reps: usize,
    ticks: &dyn Fn() -> u64,
) -> (Result<f64, String>, Result<f64, String>, u64, u64) {
    let (mut tv, mut dv, mut used, mut direct_used) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..reps {
        let c0 = cpu_ticks(std::process::id());
        dv.push(transfer(dir, streams, total, None, direct));
        direct_used += cpu_ticks(std::process::id()) - c0;
        let c0 = ticks();
        tv.push(transfer(dir, streams, total, via, route));
        used += ticks() - c0;
    }
    let median = |v: Vec<Result<f64, String>>| -> Result<f64, String> {
        let mut ok = v.into_iter().collect::<Result<Vec<f64>, String>>()?;
        ok.sort_by(f64::total_cmp);
        Ok(ok[ok.len() / 2])
    };
    (median(tv), median(dv), used, direct_used)
}

/// Figures 1 to 3 and 6: single-stream throughput, CPU per byte, eight
/// streams and the peak RSS under them.
fn bulk_phase(rep: &mut Report, o: &Opts, dests: &Dests) {
    let tck = clk_tck();
    let (server, pooled) = start_pair(64);
    thread::sleep(Duration::from_millis(1500)); // the pool fills
    let via = Some(pooled.addr());
    let bulk = o.bulk();
    let (server_pid, agent_pid) = (server.child.id(), pooled.child.id());
    let agent_server_ticks = || cpu_ticks(server_pid) + cpu_ticks(agent_pid);

    // Warm-up: page in both paths.
    let _ = transfer(Dir::Down, 1, 64 << 20, None, dests);
    let _ = transfer(Dir::Down, 1, 64 << 20, via, dests);

    let reps = o.repeats();
    let (t, d, ticks, direct_ticks) =
        pair(Dir::Down, 1, bulk, via, dests, reps, &agent_server_ticks);
    rep.throughput("single-stream down (MiB/s)", t.clone(), d, Some(0.80));
    let ns_per_byte = |ticks: u64| ticks as f64 / tck * 1e9 / (bulk * reps as u64) as f64;
    let (cpu_ns, direct_ns) = (ns_per_byte(ticks), ns_per_byte(direct_ticks));
    // The direct column: what both ends of the direct transfers (source and
    // client, this process) used per byte, for scale.
    rep.cpu(
        "CPU agent+server, down (ns/byte)",
        t.is_ok(),
        cpu_ns,
        Some(direct_ns),
        "<= 0.15",
        Some(cpu_ns <= 0.15),
    );
    let (t, d, _, _) = pair(Dir::Up, 1, bulk, via, dests, reps, &agent_server_ticks);
    rep.throughput("single-stream up (MiB/s)", t, d, Some(0.80));

    if !(reset_peak(server_pid) && reset_peak(agent_pid)) {
        rep.note("could not reset VmHWM (clear_refs): the peak covers the whole phase".into());
    }
    let (t, d, ticks, _) = pair(Dir::Down, 8, bulk, via, dests, reps, &agent_server_ticks);
    rep.throughput("8 streams down (MiB/s)", t.clone(), d, Some(0.60));
    // The same bytes in 8 streams against one: how much more each byte
    // costs the daemons when streams share their thread.
    let cpu8 = ns_per_byte(ticks);
    rep.cpu(
        "CPU agent+server, 8 streams down (ns/byte)",
        t.is_ok(),
        cpu8,
        Some(cpu_ns),
        "<= 1.3x 1 stream",
        Some(cpu8 <= 1.3 * cpu_ns),
    );
    let (t, d, _, _) = pair(Dir::Up, 8, bulk, via, dests, reps, &agent_server_ticks);
    rep.throughput("8 streams up (MiB/s)", t, d, Some(0.60));
    let peak_mib =
        (status_kib(server_pid, "VmHWM") + status_kib(agent_pid, "VmHWM")) as f64 / 1024.0;
    rep.row(
        "peak RSS agent+server, 8 streams (MiB)",
        format!("{peak_mib:.1}"),
        "-".into(),
        "-".into(),
        "<= 32",
        Some(peak_mib <= 32.0),
    );

    // The floor: the same route through two bare splice relays (no
    // protocol, a blocking thread per direction), what the kernel allows a
    // two-hop tunnel on this machine.
    let (to_source, to_sink) = (Chain::to(dests.source), Chain::to(dests.sink));
    let bare = dests.through(to_source.addr(), to_sink.addr());
    let bare_ticks = || to_source.ticks() + to_sink.ticks();
    let _ = transfer(Dir::Down, 1, 64 << 20, None, &bare);
    let (t, d, ticks, _) = pair_through(Dir::Down, 1, bulk, None, dests, &bare, reps, &bare_ticks);
    rep.throughput(
        "single-stream down, bare relays (MiB/s)",
        t.clone(),
        d,
        None,
    );
    let cpu_ns = ns_per_byte(ticks);
    rep.cpu(
        "CPU bare relays, down (ns/byte)",
        t.is_ok(),
        cpu_ns,
        None,
        "",
        None,
    );
    let (t, d, _, _) = pair_through(Dir::Up, 1, bulk, None, dests, &bare, reps, &bare_ticks);
    rep.throughput("single-stream up, bare relays (MiB/s)", t, d, None);
    let (t, d, _, _) = pair_through(Dir::Down, 8, bulk, None, dests, &bare, reps, &bare_ticks);
    rep.throughput("8 streams down, bare relays (MiB/s)", t, d, None);

    // On a BBR host the direct baseline above is paced by BBR, which costs
    // on loopback; websocks' own legs use reno there. Both again with the
    // destination's sender on reno (every sender reno): the ratio a reno
    // host would see.
    if default_cc().starts_with("bbr") {
        let reno_source = serve_each(|s| {
            let _ = socket2::SockRef::from(&s).set_tcp_congestion(b"reno");
            source_conn(s);
        });
        let reno = dests.through(reno_source, dests.sink);
        let _ = transfer(Dir::Down, 1, 64 << 20, None, &reno);
        let (t, d, _, _) = pair(Dir::Down, 1, bulk, via, &reno, reps, &|| 0);
        rep.throughput("single-stream down, senders reno (MiB/s)", t, d, None);
        let (t, d, _, _) = pair(Dir::Down, 8, bulk, via, &reno, reps, &|| 0);
        rep.throughput("8 streams down, senders reno (MiB/s)", t, d, None);
    }
}

/// Figure 4, connection setup: sequential latency, then the rate at
/// concurrency 32; pooled agent, unpooled agent, direct.
fn setup_phase(rep: &mut Report, o: &Opts, echo: SocketAddr) {
    let (server, pooled) = start_pair(64);
    let unpooled = websocks("agent", &agent_yaml(server.addr(), 0));
    thread::sleep(Duration::from_millis(1500)); // the pool fills
    let n = o.sequential();
    let ld = sequential(None, echo, n);
    for (name, agent) in [("pooled", &pooled), ("unpooled", &unpooled)] {
        let lt = sequential(Some(agent.addr()), echo, n);
        for (q, p99) in [("median", false), ("p99", true)] {
            let (tv, dv) = if p99 {
                (lt.p99_us, ld.p99_us)
            } else {
                (lt.median_us, ld.median_us)
            };
            let ratio = tv / dv;
            let graded = name == "pooled" && !p99;
            rep.row(
                &format!("setup {name}, {q} (us)"),
                latency_text(&lt, p99),
                latency_text(&ld, p99),
                if ratio.is_nan() {
                    "-".into()
                } else {
                    format!("{ratio:.2}x")
                },
                if graded { "<= 3x direct" } else { "" },
                graded.then_some(ratio <= 3.0 && lt.errors == 0),
            );
        }
        rep.row(
            &format!("conn/s sequential, {name}"),
            format!("{:.0}", lt.per_s),
            format!("{:.0}", ld.per_s),
            format!("{:.2}x", lt.per_s / ld.per_s),
            "",
            None,
        );
        if lt.errors > 0 {
            rep.note(format!(
                "setup {name}: {} of {n} failed, first: {}",
                lt.errors,
                lt.first_error.unwrap_or_default()
            ));
        }
    }
    // The floor: two bare relays (a thread per connection, no protocol).
    let chain = Chain::to(echo);
    let lb = sequential(None, chain.addr(), n);
    rep.row(
        "setup through bare relays, median (us)",
        latency_text(&lb, false),
        latency_text(&ld, false),
        format!("{:.2}x", lb.median_us / ld.median_us),
        "",
        None,
    );
    if ld.errors > 0 {
        rep.note(format!(
            "setup direct: {} of {n} failed, first: {}",
            ld.errors,
            ld.first_error.unwrap_or_default()
        ));
    }
    let total = o.concurrent();
    let rd = concurrent(None, echo, total, 32);
    for (name, agent) in [("pooled", &pooled), ("unpooled", &unpooled)] {
        let rt = concurrent(Some(agent.addr()), echo, total, 32);
        let graded = name == "pooled";
        rep.row(
            &format!("conn/s at concurrency 32, {name}"),
            format!("{:.0}", rt.per_s),
            format!("{:.0}", rd.per_s),
            format!("{:.2}x", rt.per_s / rd.per_s),
            if graded { ">= 10000/s" } else { "" },
            graded.then_some(rt.per_s >= 10_000.0 && rt.errors == 0),
        );
        if rt.errors > 0 {
            rep.note(format!(
                "concurrency 32 {name}: {} of {total} failed, first: {}",
                rt.errors,
                rt.first_error.unwrap_or_default()
            ));
        }
    }
    let rb = concurrent(None, chain.addr(), total, 32);
    rep.row(
        "conn/s at concurrency 32, bare relays",
        format!("{:.0}", rb.per_s),
        format!("{:.0}", rd.per_s),
        format!("{:.2}x", rb.per_s / rd.per_s),
        "",
        None,
    );
    if rd.errors > 0 {
        rep.note(format!(
            "concurrency 32 direct: {} of {total} failed, first: {}",
            rd.errors,
            rd.first_error.unwrap_or_default()
        ));
    }
}

/// Figure 5: idle tunnels, each count through a fresh server and pooled agent.
#[allow(
    clippy::cast_sign_loss,
    reason = "descriptor counts from non-negative rates"
)]
fn idle_phase(rep: &mut Report, o: &Opts, echo: SocketAddr) {
    let (soft, _) = nofile();
    for &n in &o.conns {
        let r = idle_tunnels(n, echo);
        rep.row(
            &format!("RSS per idle tunnel @{} (KiB)", r.n),
            format!("{:.1}", r.kib_per),
            "-".into(),
            "-".into(),
            "<= 12",
            Some(r.kib_per <= 12.0 && r.opened > 0),
        );
        rep.row(
            &format!("tunnels held @{}", r.n),
            format!("{}", r.held),
            "-".into(),
            "-".into(),
            &format!("all {}", r.n),
            Some(r.held == r.n && r.alive),
        );
        let per = |fds: usize| fds as f64 / r.opened.max(1) as f64;
        let (fs, fa) = (per(r.fds.0), per(r.fds.1));
        rep.row(
            &format!("fds per tunnel @{}, agent / server", r.n),
            format!("{fa:.1} / {fs:.1}"),
            "-".into(),
            "-".into(),
            "",
            None,
        );
        eprintln!(
            "  {} of {n} opened in {:.1} s, {} held{}",
            r.opened,
            r.open_secs,
            r.held,
            if r.alive { "" } else { "; a daemon died" }
        );
        for (e, c) in &r.errors {
            rep.note(format!("idle @{n}: {c} x {e}"));
        }
        if !r.alive {
            rep.note(format!("idle @{n}: the agent or the server exited"));
        }
        let need = (fa.max(fs) * n as f64) as u64 + 100;
        if r.held < n && need > soft {
            rep.note(format!(
                "idle @{n}: at {:.1} descriptors per tunnel the agent or server needs about \
                 {need}, above the fd limit of {soft} here (a hard limit this container \
                 cannot raise)",
                fa.max(fs)
            ));
        }
    }
}

// ---------------------------------------------------------------- banners

/// What a server-first destination says on accept.
const BANNER: &[u8] = b"220 bench ESMTP\r\n";

/// Milliseconds from `t` until the banner has come in on `s`, after
/// `have`.
fn banner_ms(s: &mut TcpStream, mut have: Vec<u8>, t: Instant) -> io::Result<f64> {
    let mut b = [0u8; 64];
    while have.len() < BANNER.len() {
        let n = s.read(&mut b)?;
        if n == 0 {
            return Err(err("EOF before the banner"));
        }
        have.extend_from_slice(&b[..n]);
    }
    if have != BANNER {
        return Err(err("not the banner"));
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// A client as strict as the reference agent (each step after the answer
/// to the one before) opening a tunnel to `dest` through `server`: ms from
/// its CONNECT to the banner, when it waits for the banner (`speak`
/// false, SMTP) or sends its own first (`speak`, SSH).
fn strict_banner(server: SocketAddr, dest: SocketAddr, speak: bool) -> io::Result<f64> {
    use websocks::proto::{socks5, ws};
    let mut s = common::try_connect(server, IO_TIMEOUT)?;
    s.write_all(&common::upgrade_request())?;
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b[..1])?;
        if n == 0 {
            return Err(err("EOF in the 101"));
        }
        head.push(b[0]);
    }
    s.write_all(&ws::FRAME)?;
    s.read_exact(&mut b[..10])?;
    s.write_all(&[5, 1, socks5::METHOD_NO_AUTH])?;
    s.read_exact(&mut b[..2])?;
    let mut req = Vec::new();
    socks5::write_connect(&mut req, &socks5::Addr::Ip(dest));
    let t = Instant::now();
    s.write_all(&req)?;
    s.read_exact(&mut b[..10])?;
    if b[1] != 0 {
        return Err(err("CONNECT refused"));
    }
    if speak {
        s.write_all(b"SSH-2.0-bench\r\n")?;
    }
    banner_ms(&mut s, Vec::new(), t)
}

/// Through an agent: ms from the SOCKS5 CONNECT to the banner.
fn agent_banner(agent: SocketAddr, dest: SocketAddr) -> io::Result<f64> {
    let t = Instant::now();
    let mut s = open(Some(agent), dest)?;
    banner_ms(&mut s, Vec::new(), t)
}

/// One way to time a banner: through `via` to `dest`, in ms.
type Probe = dyn Fn(SocketAddr, SocketAddr) -> io::Result<f64>;

/// Median of `n` runs of `f` (ms), and how many failed.
fn median_ms(n: usize, mut f: impl FnMut() -> io::Result<f64>) -> (f64, usize) {
    let (mut v, mut failed) = (Vec::with_capacity(n), 0);
    for _ in 0..n {
        match f() {
            Ok(ms) => v.push(ms),
            Err(_) => failed += 1,
        }
    }
    v.sort_by(f64::total_cmp);
    (v.get(v.len() / 2).copied().unwrap_or(f64::NAN), failed)
}

/// The price of `server.banner_hold` for server-first protocols: the time
/// from CONNECT to a destination's banner with the default hold against
/// the same server with the hold off, for a strict client that waits for
/// the banner, one that speaks first, and our agent (which offers
/// `data-with-reply` and is never held).
fn banner_phase(rep: &mut Report, o: &Opts) {
    let dest = serve_each(|mut s| {
        let _ = s.set_nodelay(true);
        if s.write_all(BANNER).is_ok() {
            let mut b = [0u8; 256];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        }
    });
    let held = websocks("server", &server_yaml());
    let open = websocks("server", &server_yaml_with("  banner_hold: 0ms\n"));
    let agents = [&held, &open].map(|s| websocks("agent", &agent_yaml(s.addr(), 4)));
    thread::sleep(Duration::from_millis(1000)); // the pools fill
    let n = if o.quick { 50 } else { 200 };
    let cases: [(&str, &Probe, [SocketAddr; 2]); 3] = [
        (
            "strict client, waits for the banner",
            &|s, d| strict_banner(s, d, false),
            [held.addr(), open.addr()],
        ),
        (
            "strict client, speaks first",
            &|s, d| strict_banner(s, d, true),
            [held.addr(), open.addr()],
        ),
        (
            "our agent, pooled",
            &agent_banner,
            [agents[0].addr(), agents[1].addr()],
        ),
    ];
    for (name, f, [with, without]) in cases {
        let (mw, fw) = median_ms(n, || f(with, dest));
        let (mo, fo) = median_ms(n, || f(without, dest));
        rep.row(
            &format!("banner after CONNECT, {name}: hold 50 ms vs off (ms)"),
            format!("{mw:.2}"),
            format!("{mo:.2}"),
            format!("{:+.2} ms", mw - mo),
            "",
            None,
        );
        if fw + fo > 0 {
            rep.note(format!("banner {name}: {fw} + {fo} of {n} failed"));
        }
    }
}

// ---------------------------------------------------------------- round trips

/// Connections opened at once in a burst.
const BURST: usize = 32;
/// The capped link's rate each way, in Mbit/s.
const CAP_MBIT: f64 = 100.0;

/// The value at quantile `q` of a sorted, non-empty sample.
#[allow(
    clippy::cast_sign_loss,
    reason = "quantiles of a non-empty sample: q in 0..=1"
)]
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// On a connection to `agent`: the time from the SOCKS5 CONNECT
/// (greeting and request in one write) to the end of the agent's reply.
fn connect_reply(agent: SocketAddr, dest: SocketAddr) -> io::Result<Duration> {
    let mut s = common::try_connect(agent, IO_TIMEOUT)?;
    let t = Instant::now();
    socks_connect(&mut s, dest)?;
    Ok(t.elapsed())
}

/// [`BURST`] threads, each of which runs `before`, waits for all the
/// others, then runs `timed` on what `before` gave: each one's time of
/// `timed`.
fn at_once<S: 'static>(
    before: impl Fn() -> S + Clone + Send + 'static,
    timed: impl Fn(S) -> io::Result<()> + Clone + Send + 'static,
) -> Vec<io::Result<Duration>> {
    let go = Arc::new(Barrier::new(BURST));
    let hs: Vec<_> = (0..BURST)
        .map(|_| {
            let (go, before, timed) = (go.clone(), before.clone(), timed.clone());
            thread::spawn(move || {
                let s = before();
                go.wait();
                let t = Instant::now();
                timed(s)?;
                Ok(t.elapsed())
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(err("client thread panicked")))
        })
        .collect()
}

/// [`BURST`] connections to `agent`, then their CONNECTs at once: each
/// one's time to its reply.
fn burst(agent: SocketAddr, dest: SocketAddr) -> Vec<io::Result<Duration>> {
    at_once(
        move || common::try_connect(agent, IO_TIMEOUT),
        move |s| socks_connect(&mut s?, dest),
    )
}

/// [`BURST`] connects across a delay relay straight to the echo at once:
/// each one's time to its first echo.
fn relay_burst(relay: SocketAddr) -> Vec<io::Result<Duration>> {
    at_once(
        || (),
        move |()| echo_byte(&mut common::try_connect(relay, IO_TIMEOUT)?),
    )
}

/// Across a delay relay straight to the echo: the time of the connect and
/// the first echo, then the median of `n` more echoes on that connection.
fn relay_echo(relay: SocketAddr, n: usize) -> io::Result<(Duration, Duration)> {
    let t = Instant::now();
    let mut s = common::try_connect(relay, IO_TIMEOUT)?;
    echo_byte(&mut s)?;
    let first = t.elapsed();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        echo_byte(&mut s)?;
        v.push(t.elapsed());
    }
    v.sort();
    Ok((first, quantile(&v, 0.5)))
}

/// The successes of `v`, sorted; the failures counted into a note.
fn sorted_times(rep: &mut Report, what: &str, v: Vec<io::Result<Duration>>) -> Vec<Duration> {
    let n = v.len();
    let mut first = None;
    let mut ok: Vec<Duration> = v
        .into_iter()
        .filter_map(|r| {
            r.map_err(|e| first.get_or_insert(e.to_string()).clone())
                .ok()
        })
        .collect();
    if ok.len() < n {
        rep.note(format!(
            "{what}: {} of {n} failed, first: {}",
            n - ok.len(),
            first.unwrap_or_default()
        ));
    }
    ok.sort();
    ok
}

/// A time across the relay: in round trips next to the least the
/// protocol allows, and in ms; `max` (round trips) is the target.
fn rtt_row(
    rep: &mut Report,
    name: &str,
    t: Option<Duration>,
    rtt: Duration,
    floor: u32,
    max: Option<f64>,
) {
    let x = t.map(|t| t.as_secs_f64() / rtt.as_secs_f64());
    rep.row_of(
        RTT_COLS,
        name,
        [
            x.map_or("error".into(), |x| format!("{x:.2}")),
            floor.to_string(),
            t.map_or("-".into(), |t| format!("{:.1}", t.as_secs_f64() * 1e3)),
        ],
        &max.map_or(String::new(), |m| format!("<= {m:.2} RTT")),
        max.map(|m| x.is_some_and(|x| x <= m)),
    );
}

/// Across a link of round trip `rtt` between agent and server (this
/// program as `--delay-helper` in front of the server), for each `--rtt`:
/// the relay alone, CONNECT to reply pooled, in a burst and unpooled, and
/// bulk transfers against direct ones across the same link.
fn rtt_phase(rep: &mut Report, o: &Opts, dests: &Dests, echo: SocketAddr) {
    let server = websocks("server", &server_yaml());
    for &ms in &o.rtts {
        let rtt = Duration::from_secs_f64(ms / 1e3);
        rtt_times(rep, o, &format!("rtt {ms} ms"), server.addr(), echo, rtt);
        rtt_bulk(rep, o, &format!("rtt {ms} ms"), server.addr(), dests, rtt);
    }
}

/// The times of one round trip `rtt`; rows named after `label`.
fn rtt_times(
    rep: &mut Report,
    o: &Opts,
    label: &str,
    server: SocketAddr,
    echo: SocketAddr,
    rtt: Duration,
) {
    let n = o.rtt_sequential();
    // The relay alone, to the echo: the connect's round trip, then one
    // per echo; what it adds of its own is the excess over that.
    let alone = Helper::delay(echo, rtt, None);
    match relay_echo(alone.addr, n.max(20)) {
        Ok((first, each)) => {
            rtt_row(
                rep,
                &format!("{label}: connect+echo, relay alone"),
                Some(first),
                rtt,
                2,
                None,
            );
            let limit = rtt + Duration::from_millis(1);
            rep.row_of(
                RTT_COLS,
                &format!("{label}: echo, relay alone"),
                [
                    format!("{:.3}", each.as_secs_f64() / rtt.as_secs_f64()),
                    "1".into(),
                    format!("{:.2}", each.as_secs_f64() * 1e3),
                ],
                &format!("< {:.1} ms", limit.as_secs_f64() * 1e3),
                Some(each < limit),
            );
        }
        Err(e) => rep.note(format!("{label}: echo across the relay alone: {e}")),
    }
    // The same in bursts: what the relay adds when 32 connections come at
    // once, as the bursts below bring them.
    let mut all = Vec::new();
    for _ in 0..o.bursts() {
        all.extend(relay_burst(alone.addr));
    }
    let v = sorted_times(rep, &format!("{label}, relay alone, bursts"), all);
    let p99 = (!v.is_empty()).then(|| quantile(&v, 0.99));
    rtt_row(
        rep,
        &format!("{label}: relay alone, burst p99"),
        p99,
        rtt,
        2,
        None,
    );
    drop(alone);

    let link = Helper::delay(server, rtt, None);
    let pooled = websocks("agent", &agent_yaml_with(link.addr, ""));
    let unpooled = websocks("agent", &agent_yaml(link.addr, 0));
    // Each pooled connection is a connect and an upgrade, two round trips:
    // the default pool of 2 refilled one after the other takes four (a
    // pool that grows refills in parallel). The pauses leave room to spare.
    let refill_one = 3 * rtt + Duration::from_millis(100);
    let refill_all = 6 * rtt + Duration::from_millis(300);
    thread::sleep(refill_all);

    let v = (0..n)
        .map(|_| {
            let r = connect_reply(pooled.addr(), echo);
            thread::sleep(refill_one);
            r
        })
        .collect();
    let v = sorted_times(rep, &format!("{label}, pooled"), v);
    rtt_row(
        rep,
        &format!("{label}: CONNECT, pooled"),
        v.get(v.len() / 2).copied(),
        rtt,
        1,
        Some(1.1),
    );

    // Bursts against a fresh agent (its pool full at its default size),
    // then again once the pool has refilled after the first burst (a pool
    // that adapts to demand has grown by then).
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for _ in 0..o.bursts() {
        let fresh = websocks("agent", &agent_yaml_with(link.addr, ""));
        thread::sleep(refill_all);
        first.extend(burst(fresh.addr(), echo));
        thread::sleep(refill_all);
        again.extend(burst(fresh.addr(), echo));
    }
    burst_rows(
        rep,
        o,
        &format!("{label}: CONNECT, burst"),
        first,
        rtt,
        Some(2.25),
    );
    burst_rows(
        rep,
        o,
        &format!("{label}: CONNECT, 2nd burst"),
        again,
        rtt,
        None,
    );

    let v = (0..n)
        .map(|_| connect_reply(unpooled.addr(), echo))
        .collect();
    let v = sorted_times(rep, &format!("{label}, unpooled"), v);
    rtt_row(
        rep,
        &format!("{label}: CONNECT, unpooled"),
        v.get(v.len() / 2).copied(),
        rtt,
        1,
        Some(2.1),
    );
}

/// Median and p99 (`max`: its target, in round trips) of the CONNECT
/// times of [`Opts::bursts`] bursts; how many came from the pool (within
/// 1.5 round trips) as a note.
fn burst_rows(
    rep: &mut Report,
    o: &Opts,
    name: &str,
    times: Vec<io::Result<Duration>>,
    rtt: Duration,
    max: Option<f64>,
) {
    let v = sorted_times(rep, name, times);
    let pooled = v.iter().filter(|&&t| t < rtt * 3 / 2).count();
    rep.note(format!(
        "{name}: {pooled} of {} in {} bursts of {BURST} within 1.5 RTT",
        v.len(),
        o.bursts()
    ));
    let at = |q| (!v.is_empty()).then(|| quantile(&v, q));
    rtt_row(rep, &format!("{name} median"), at(0.5), rtt, 1, None);
    rtt_row(rep, &format!("{name} p99"), at(0.99), rtt, 1, max);
}

/// Bulk across a link of round trip `rtt`, capped at [`CAP_MBIT`] and
/// not: one stream through the tunnel against one direct connection
/// across the same link (a delay relay in front of each destination).
fn rtt_bulk(
    rep: &mut Report,
    o: &Opts,
    label: &str,
    server: SocketAddr,
    dests: &Dests,
    rtt: Duration,
) {
    for mbit in [Some(CAP_MBIT), None] {
        let link = Helper::delay(server, rtt, mbit);
        let to_source = Helper::delay(dests.source, rtt, mbit);
        let to_sink = Helper::delay(dests.sink, rtt, mbit);
        let across = dests.through(to_source.addr, to_sink.addr).settled(rtt);
        let agent = websocks("agent", &agent_yaml_with(link.addr, ""));
        thread::sleep(6 * rtt + Duration::from_millis(300)); // the pool fills
        // Uncapped, the copying of four processes on shared cores is the
        // bottleneck, and it varies: the median of a few rounds.
        let (total, reps, what) = match mbit {
            Some(m) => (o.capped_bulk(), 1, format!("{m} Mbit/s")),
            None => (o.uncapped_bulk(), o.repeats(), "uncapped".into()),
        };
        // Where the link is the bottleneck, the tunnel should fill it.
        let target = mbit.map(|_| 0.95);
        for (dir, name) in [(Dir::Down, "down"), (Dir::Up, "up")] {
            let (t, d, _, _) = pair_through(
                dir,
                1,
                total,
                Some(agent.addr()),
                &across,
                dests,
                reps,
                &|| 0,
            );
            rep.throughput(&format!("{label}, {what}: {name} (MiB/s)"), t, d, target);
        }
    }
}
