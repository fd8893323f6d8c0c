//! A real nginx in front of the server, as in a typical deployment:
//! client → `websocks agent` → wss:// → nginx (TLS, WebSocket proxy) →
//! ws:// → `websocks server` → destination. Skipped through `common::skip`
//! when nginx is not installed (a failure under `CI=true`). All on
//! loopback; everything is bounded.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use websocks::proto::Parse;
use websocks::proto::socks5::{self, Addr};

/// The `location` block for a websocks server behind nginx, as in the
/// README: the upgrade headers passed on, long timeouts (an active tunnel
/// is one endless WebSocket frame), no buffering. The test replaces
/// `127.0.0.1:8080` with its server's address.
const NGINX_LOCATION: &str = "\
location / {
    proxy_pass http://127.0.0.1:8080;
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection \"upgrade\";
    proxy_set_header Host $host;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
    proxy_buffering off;
}
";

fn nginx_missing() -> bool {
    need_tool("nginx", "nginx-light").is_none()
}

/// The recipe the README and websocks(8) give is the one tested here.
#[test]
fn the_documented_location_is_the_tested_one() {
    for doc in ["README.md", "man/websocks.8"] {
        let text =
            std::fs::read_to_string(format!("{}/{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(
            text.contains(NGINX_LOCATION),
            "{doc} lacks the tested location block:\n{NGINX_LOCATION}"
        );
    }
}

// ------------------------------------------------------------- test PKI

/// A CA (PEM) and a certificate + key (PEM) it signed for `localhost`.
fn pki() -> (String, String, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "websocks gateway test CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = p.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(p, ca_key);

    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

// ----------------------------------------------------------------- nginx

/// nginx running in the foreground from its own directory; stopped on
/// drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Starts nginx on a free loopback port with TLS (`cert`, `key` PEM),
    /// proxying to `upstream` with `location` (NGINX_LOCATION or a
    /// variant). Retries when the port was taken in the meantime.
    fn start(upstream: SocketAddr, location: &str, cert: &str, key: &str) -> Nginx {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = temp_dir();
            std::fs::write(dir.join("cert.pem"), cert).unwrap();
            std::fs::write(dir.join("key.pem"), key).unwrap();
            let port = {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let d = dir.display();
            // As root, the workers would otherwise switch to `nobody`.
            let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
            let conf = format!(
                "{user}worker_processes 1;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n\
                 access_log off;\n\
                 client_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 server {{\n\
                 listen 127.0.0.1:{port} ssl;\n\
                 server_name localhost;\n\
                 ssl_certificate {d}/cert.pem;\n\
                 ssl_certificate_key {d}/key.pem;\n\
                 {loc}\
                 }}\n\
                 }}\n",
                user = if root { "user root;\n" } else { "" },
                loc = location.replace("127.0.0.1:8080", &upstream.to_string()),
            );
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
            let child = Command::new(find_tool("nginx").expect("nginx_missing"))
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-g")
                .arg(format!(
                    "daemon off; pid {d}/nginx.pid; error_log {d}/error.log;"
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(dir.join("stderr.log")).unwrap())
                .spawn()
                .expect("spawn nginx");
            let mut n = Nginx { child, dir, port };
            // The pid file is written after the listener is bound.
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if n.child.try_wait().unwrap().is_some() {
                    break;
                }
                if n.dir.join("nginx.pid").exists()
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    return n;
                }
                thread::sleep(Duration::from_millis(20));
            }
            last = n.logs();
            if !last.contains("Address already in use") {
                break;
            }
        }
        panic!("nginx did not start: {last}");
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM lets the master stop its worker too; KILL only as a last
        // resort (it would orphan the worker).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------- helpers

/// A plain server, nginx in front with `location`, and an agent using
/// nginx over wss:// with `rest` agent keys.
struct Chain {
    server: Daemon,
    nginx: Nginx,
    agent: Daemon,
    _files: PathBuf,
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._files);
    }
}

fn chain(location: &str, rest: &str) -> Chain {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let (ca, cert, key) = pki();
    let nginx = Nginx::start(server.addr(), location, &cert, &key);
    let files = temp_dir();
    let ca_file = files.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let agent = Daemon::start(
        &["agent"],
        &format!(
            "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    \
             - {{name: s, url: \"wss://localhost:{}/\", user: {USER}, password: {PASS}, \
             ca_file: \"{}\"}}\n{rest}",
            nginx.port,
            ca_file.display()
        ),
        1,
    );
    Chain {
        server,
        nginx,
        agent,
        _files: files,
    }
}

/// A successful SOCKS5 CONNECT to `dest` through `proxy`.
fn socks_open(proxy: SocketAddr, dest: SocketAddr) -> TcpStream {
    let mut s = connect(proxy);
    let mut out = Vec::new();
    socks5::write_greeting(&mut out, &[socks5::METHOD_NO_AUTH]);
    socks5::write_connect(&mut out, &Addr::Ip(dest));
    s.write_all(&out).unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 2), [5, 0]);
    // Read the reply exactly (the server's hidden address, 0.0.0.0:0, makes
    // it 10 bytes): a destination that speaks first may have its bytes
    // arrive in the same segment, and they belong to the caller.
    let reply = read_exact_after(&mut s, Vec::new(), 10);
    match socks5::parse_reply(&reply) {
        Ok(Parse::Done(r, 10)) => assert_eq!(r.rep, 0, "SOCKS5 reply"),
        other => panic!("not a 10-byte SOCKS5 reply: {reply:02x?} ({other:?})"),
    }
    s
}

/// A deterministic byte stream (xorshift64 from `seed`), `total` bytes,
/// handed out in 256 KiB chunks.
fn stream(seed: u64, total: usize, mut f: impl FnMut(&[u8])) {
    let mut x = seed | 1;
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len());
        for w in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        f(&buf[..n]);
        left -= n;
    }
}

fn stream_hash(seed: u64, total: usize) -> Vec<u8> {
    let mut h = Sha256::new();
    stream(seed, total, |b| h.update(b));
    h.finalize().to_vec()
}

/// SHA-256 of the next `n` bytes of `s`.
fn hash_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut h = Sha256::new();
    let mut left = n;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = left.min(buf.len());
        let k = s.read(&mut buf[..want]).expect("read");
        assert!(k > 0, "EOF after {} of {n} bytes", n - left);
        h.update(&buf[..k]);
        left -= k;
    }
    h.finalize().to_vec()
}

/// Sends stream `seed` while hashing `BIG` bytes from the other side, at
/// the same time; closes only when both are done (see `echo_once` on
/// half-close); returns the hash of what arrived.
fn both_ways(s: &mut TcpStream, seed: u64) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let got = thread::scope(|sc| {
        sc.spawn(|| stream(seed, BIG, |b| w.write_all(b).unwrap()));
        hash_exact(s, BIG)
    });
    s.shutdown(Shutdown::Write).unwrap();
    got
}

/// The value of `duration=` in a log line, in seconds.
fn duration(line: &str) -> f64 {
    secs(line, "duration=")
}

/// The value of `waited=` (a pooled connection's wait for its frame) in a
/// server log line, in seconds.
fn waited(line: &str) -> f64 {
    secs(line, "waited=")
}

fn secs(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// Does the agent's line for a tunnel through nginx end as it should? nginx
/// ends an upgraded connection at the first FIN from either side, and when
/// that was the agent's close_notify it closes without sending its own; the
/// relay takes that unexpected EOF as the FIN it is, so the line says
/// `closed`.
fn agent_end_ok(line: &str) -> bool {
    line.ends_with("end=closed")
}

/// Echo round trip of `payload` through `proxy`; returns the client's and
/// the destination's address (to find the log lines). The client closes
/// only after the whole echo is back: nginx does not pass a half-close on
/// (the first FIN ends the upgraded connection once its buffers are out).
fn echo_once(proxy: SocketAddr, payload: &[u8]) -> (SocketAddr, SocketAddr) {
    let dest = echo_server();
    let mut s = socks_open(proxy, dest);
    s.write_all(payload).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), payload.len());
    assert!(got == payload, "the echo differs");
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut s).is_empty());
    (s.local_addr().unwrap(), dest)
}

// ----------------------------------------------------------------- tests

const BIG: usize = 64 << 20;

/// 64 MiB each way at the same time, through TLS at nginx, intact.
#[test]
fn big_transfer_both_ways_through_nginx() {
    if nginx_missing() {
        return;
    }
    let c = chain(NGINX_LOCATION, "  pool: {size: 0}\n");
    // The destination sends its stream while hashing what arrives.
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let dest = serve_each(move |mut s| {
        let got = both_ways(&mut s, 2);
        let rest = read_to_end(&mut s);
        let _ = tx.lock().unwrap().send((got, rest.len()));
    });
    let start = Instant::now();
    let mut s = socks_open(c.agent.addr(), dest);
    let peer = s.local_addr().unwrap();
    let down = both_ways(&mut s, 1);
    assert!(read_to_end(&mut s).is_empty(), "bytes after the stream");
    let up = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let took = start.elapsed();
    println!("2 x 64 MiB through agent, nginx (TLS) and server: {took:?}");
    assert!(up.0 == stream_hash(1, BIG), "upstream data differs");
    assert_eq!(up.1, 0, "bytes after the stream");
    assert!(down == stream_hash(2, BIG), "downstream data differs");

    let line = c.agent.wait_log(&[&format!("agent peer={peer} "), " end="]);
    assert!(line.contains(&format!("up={BIG} down={BIG} ")), "{line}");
    assert!(agent_end_ok(&line), "{line}");
    let line = c.server.wait_log(&[&format!("dst={dest} "), " end="]);
    assert!(line.contains(&format!("up={BIG} down={BIG} ")), "{line}");
    assert!(line.ends_with("end=closed"), "{line}");
    assert!(
        !c.nginx.logs().contains("[error]"),
        "nginx: {}",
        c.nginx.logs()
    );
}

/// A pooled connection waits through nginx, kept alive by PONGs, and
/// then carries a tunnel.
#[test]
fn pooled_connection_survives_keepalive_through_nginx() {
    if nginx_missing() {
        return;
    }
    let c = chain(NGINX_LOCATION, "  pool: {size: 1, keepalive: 500ms}\n");
    thread::sleep(Duration::from_secs(2));
    let (peer, dest) = echo_once(c.agent.addr(), &vec![7u8; 100_000]);
    let line = c.agent.wait_log(&[&format!("agent peer={peer} "), " end="]);
    assert!(line.contains(" server=s(pooled) "), "{line}");
    assert!(agent_end_ok(&line), "{line}");
    // The server's connection for it is the one pooled 2 s ago.
    let line = c.server.wait_log(&[&format!("dst={dest} "), " end="]);
    assert!(waited(&line) >= 1.9, "{line}");
    assert!(line.ends_with("end=closed"), "{line}");
}

/// With nginx's idle timeout at 1 s, the PONGs (every 300 ms) are what
/// keeps a pooled connection: it outlives the timeout several times over.
/// Without them (keepalive 20 s), nginx cuts pooled connections at 1 s.
#[test]
fn pongs_beat_the_gateway_idle_timeout() {
    if nginx_missing() {
        return;
    }
    let short = NGINX_LOCATION.replace("proxy_read_timeout 3600s", "proxy_read_timeout 1s");
    assert_ne!(short, NGINX_LOCATION);
    let cut = |c: &Chain| {
        c.server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("user=alice dst=- ") && l.contains("client gone"))
            .filter(|l| duration(l) >= 0.9)
            .count()
    };

    let c = chain(&short, "  pool: {size: 1, keepalive: 300ms}\n");
    thread::sleep(Duration::from_millis(2500));
    let (peer, dest) = echo_once(c.agent.addr(), b"kept alive");
    let line = c.agent.wait_log(&[&format!("agent peer={peer} "), " end="]);
    assert!(line.contains(" server=s(pooled) "), "{line}");
    let line = c.server.wait_log(&[&format!("dst={dest} "), " end="]);
    assert!(waited(&line) >= 2.4, "{line}");
    assert_eq!(cut(&c), 0, "{:#?}", c.server.log.lock().unwrap());
    drop(c);

    // The control: no PONG within nginx's timeout, the connection is cut.
    let c = chain(&short, "  pool: {size: 1, keepalive: 20s}\n");
    let end = Instant::now() + Duration::from_secs(5);
    while cut(&c) == 0 {
        assert!(
            Instant::now() < end,
            "nginx never cut the silent pooled connection: {:#?}",
            c.server.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
}
