//! What the benchmark (`benches/websocks.rs`) and the soak
//! (`benches/soak.rs`) share on top of the test harness (`tests/common`):
//! the fd-limit re-exec, `websocks` under it, the SOCKS5 client side, the
//! data pattern, deep-backlog destinations and /proc readings.
// Each bench program uses a part of it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{Daemon, PASS, USER, serve_listener, socks_request, try_connect};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use websocks::proto::socks5::Addr;

/// Set once this program has re-executed itself with a raised fd limit.
pub(crate) const GUARD: &str = "WEBSOCKS_BENCH_NOFILE";
/// Raises the soft descriptor limit (to the hard one if 65536 is refused),
/// then runs `"$0" "$@"`.
pub(crate) const RAISE: &str =
    r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#;
/// Every socket operation of the bench is bounded by this.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Read and write size of the bulk transfers.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Period of the data pattern: a prime, so that misplaced chunks show.
pub(crate) const PERIOD: usize = 1_048_573;

/// The soft and hard `RLIMIT_NOFILE` of this process.
pub(crate) fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    for l in limits.lines() {
        if let Some(rest) = l.strip_prefix("Max open files") {
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() >= 2 {
                return (v[0], v[1]);
            }
        }
    }
    (1024, 1024)
}

/// Re-executes this program under a shell that raised the fd limit, once.
pub(crate) fn raise_nofile(args: &[String]) {
    if nofile().0 >= 65536 || std::env::var_os(GUARD).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let e = Command::new("sh")
        .arg("-c")
        .arg(RAISE)
        .arg(exe)
        .args(args)
        .env(GUARD, "1")
        .exec();
    eprintln!("could not re-execute to raise the fd limit: {e}");
}

/// `PERIOD` pattern bytes followed by the first `CHUNK` again, so that any
/// chunk of the endless pattern is one slice.
pub(crate) fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut v = Vec::with_capacity(PERIOD + CHUNK + 8);
        let mut k: u64 = 0;
        while v.len() < PERIOD {
            let w = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k >> 7);
            v.extend_from_slice(&w.to_le_bytes());
            k += 1;
        }
        v.truncate(PERIOD);
        let head = v[..CHUNK].to_vec();
        v.extend_from_slice(&head);
        v
    })
}

/// Pattern bytes `off..off + n` (n <= CHUNK).
pub(crate) fn expected(off: u64, n: usize) -> &'static [u8] {
    let s = (off % PERIOD as u64) as usize;
    &pattern()[s..s + n]
}

pub(crate) fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

// ---------------------------------------------------------------- SOCKS5

pub(crate) fn check_method(m: [u8; 2]) -> io::Result<()> {
    if m == [5, 0] {
        Ok(())
    } else {
        Err(err(format!("SOCKS5 method answer {m:02x?}")))
    }
}

/// Bytes of the reply after its first 4, or `None` if more must be read
/// first (domain: one length byte).
pub(crate) fn reply_rest(h: [u8; 4]) -> io::Result<Option<usize>> {
    if h[0] != 5 {
        return Err(err(format!("SOCKS5 reply version {:02x}", h[0])));
    }
    if h[1] != 0 {
        return Err(err(format!("SOCKS5 reply {:02x}", h[1])));
    }
    match h[3] {
        1 => Ok(Some(6)),
        4 => Ok(Some(18)),
        3 => Ok(None),
        t => Err(err(format!("SOCKS5 reply address type {t:02x}"))),
    }
}

/// A connection to `dest`: straight, or through the SOCKS5 agent `via`.
pub(crate) fn open(via: Option<SocketAddr>, dest: SocketAddr) -> io::Result<TcpStream> {
    let mut s = try_connect(via.unwrap_or(dest), IO_TIMEOUT)?;
    if via.is_some() {
        socks_connect(&mut s, dest)?;
    }
    Ok(s)
}

/// Greeting and CONNECT to `dest` in one write on `s`, a connection to a
/// SOCKS5 agent; returns past the whole reply, which must be a success.
pub(crate) fn socks_connect(s: &mut TcpStream, dest: SocketAddr) -> io::Result<()> {
    s.write_all(&socks_request(&Addr::Ip(dest)))?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m)?;
    check_method(m)?;
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let rest = match reply_rest(h)? {
        Some(n) => n,
        None => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l)?;
            l[0] as usize + 2
        }
    };
    let mut r = vec![0u8; rest];
    s.read_exact(&mut r)
}

pub(crate) async fn timeout<T>(
    d: Duration,
    f: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    smol::future::or(f, async {
        smol::Timer::after(d).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    })
    .await
}

/// A SOCKS5 CONNECT to `dest` through `via`: the reply code, and the
/// stream (past the whole reply when the code is 00, which alone carries
/// data after it).
pub(crate) async fn socks_async(
    via: SocketAddr,
    dest: SocketAddr,
) -> io::Result<(u8, smol::net::TcpStream)> {
    let mut s = smol::net::TcpStream::connect(via).await?;
    s.set_nodelay(true)?;
    s.write_all(&socks_request(&Addr::Ip(dest))).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await?;
    check_method(m)?;
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    if h[0] == 5 && h[1] != 0 {
        return Ok((h[1], s));
    }
    let rest = match reply_rest(h)? {
        Some(n) => n,
        None => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).await?;
            l[0] as usize + 2
        }
    };
    let mut r = vec![0u8; rest];
    s.read_exact(&mut r).await?;
    Ok((0, s))
}

/// Opens a tunnel through `via` to the echo `dest` and checks it with one
/// byte.
pub(crate) async fn open_async(
    via: SocketAddr,
    dest: SocketAddr,
) -> io::Result<smol::net::TcpStream> {
    match socks_async(via, dest).await? {
        (0, mut s) => {
            ping_async(&mut s).await?;
            Ok(s)
        }
        (code, _) => Err(err(format!("SOCKS5 reply {code:02x}"))),
    }
}

pub(crate) async fn ping_async(s: &mut smol::net::TcpStream) -> io::Result<()> {
    s.write_all(&[0x5a]).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    if b[0] != 0x5a {
        return Err(err("echo returned a wrong byte"));
    }
    Ok(())
}

/// `websocks MODE -c CONFIG` under the fd-raising shell.
pub(crate) fn websocks(mode: &str, yaml: &str) -> Daemon {
    Daemon::start_via(&["sh", "-c", RAISE], &[mode], yaml, 1)
}

/// Last lines of a daemon's log, for error reports.
pub(crate) fn last_lines(d: &Daemon, n: usize) -> Vec<String> {
    let log = d.log.lock().unwrap();
    log.iter()
        .skip(log.len().saturating_sub(n))
        .cloned()
        .collect()
}

/// A `kB` line of /proc/PID/status, e.g. `VmRSS`.
pub(crate) fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a process.
pub(crate) fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(std::iter::Iterator::count)
        .unwrap_or(0)
}

/// A listener with a deep backlog (std's is 128).
pub(crate) fn listener() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&a.into()).expect("bind");
    s.listen(4096).expect("listen");
    s.into()
}

/// Runs `f` on each accepted connection in its own thread, for the life of
/// the process.
pub(crate) fn serve_each(f: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    serve_listener(listener(), IO_TIMEOUT, f)
}

/// An agent on loopback port 0 with one server and a pool of `pool`.
pub(crate) fn agent_yaml(server: SocketAddr, pool: usize) -> String {
    agent_yaml_with(server, &format!("  pool: {{size: {pool}}}\n"))
}

/// An agent on loopback port 0 with one server and `more` lines in its
/// section (none: the default pool).
pub(crate) fn agent_yaml_with(server: SocketAddr, more: &str) -> String {
    format!(
        "log_target: stderr\nlog_level: info\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  \
         servers:\n    - {{name: s, url: \"ws://{server}/\", user: {USER}, password: {PASS}}}\n\
         {more}  max_connections: 30000\n  timeouts: {{idle: 3600s}}\n"
    )
}

/// An echo destination's connection (1 KiB buffer: cheap to hold
/// thousands idle).
pub(crate) async fn echo_conn(mut s: smol::net::TcpStream) {
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&b[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}
