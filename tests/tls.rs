//! TLS on both sides: `websocks agent` → `wss://` → `websocks server` with
//! a test CA made here with rcgen; certificate failures seen by the agent;
//! bad TLS input to the server; certificate reload on SIGHUP. All on
//! loopback; every socket operation is bounded by a timeout.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use websocks::proto::socks5::{self, Addr};

// ------------------------------------------------------------- test PKI

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn new_ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A server certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

/// A server certificate for `names` (DNS names or IP literals) signed by
/// `ca`; `expired` puts its validity in 2000.
fn leaf(ca: &Ca, names: &[&str], cn: &str, serial: u64, expired: bool) -> Leaf {
    let mut p = CertificateParams::new(
        names
            .iter()
            .map(std::string::ToString::to_string)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(serial.into());
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        p.not_before = date_time_ymd(2000, 1, 1);
        p.not_after = date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// A directory of PEM files for one test, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new() -> Files {
        Files(temp_dir())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes `leaf` as `NAME.crt` / `NAME.key`.
    fn pair(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), &leaf.cert_pem),
            self.write(&format!("{name}.key"), &leaf.key_pem),
        )
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------- daemons

/// A TLS server with loopback destinations allowed; `extra` goes under
/// `server:`.
fn tls_server(cert: &Path, key: &Path, extra: &str) -> Daemon {
    Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  tls: {{cert: \"{}\", key: \"{}\"}}\n{extra}",
        cert.display(),
        key.display()
    )))
}

/// An agent with a SOCKS5 listener and one server `s` at `url`; `opts`
/// are extra keys of the server entry (`ca_file: ..., sni: ...`), `rest`
/// further agent keys (pool, ...).
fn agent(url: &str, opts: &str, rest: &str) -> Daemon {
    Daemon::start(
        &["agent"],
        &format!(
            "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    \
             - {{name: s, url: \"{url}\", user: {USER}, password: {PASS}{opts}}}\n{rest}"
        ),
        1,
    )
}

fn ca_opt(path: &Path) -> String {
    format!(", ca_file: \"{}\"", path.display())
}

// ------------------------------------------------------- SOCKS5 client

/// No-auth greeting and CONNECT to `dest`; the reply code and the stream.
fn socks_open(proxy: SocketAddr, dest: SocketAddr) -> (u8, TcpStream) {
    let mut s = connect(proxy);
    let mut out = Vec::new();
    socks5::write_greeting(&mut out, &[socks5::METHOD_NO_AUTH]);
    socks5::write_connect(&mut out, &Addr::Ip(dest));
    s.write_all(&out).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), 2);
    assert_eq!(got, [5, 0], "method choice");
    let (reply, rest) = read_socks_reply(&mut s, Vec::new());
    assert!(rest.is_empty(), "bytes after the reply: {rest:02x?}");
    (reply.rep, s)
}

fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

/// Sends `n` bytes through a tunnel to an echo destination while reading
/// the echo at the same time, then half-closes; everything must come back
/// intact, followed by the echo's FIN. Returns the client's address.
fn echo_through(proxy: SocketAddr, n: usize, seed: usize) -> SocketAddr {
    let (rep, s) = socks_open(proxy, echo_server());
    assert_eq!(rep, 0, "SOCKS5 reply");
    echo_on(s, n, seed)
}

/// A destination that reads to EOF, then sends it all back and closes:
/// data flowing back after the client's FIN is half-close at work.
fn sink_then_echo() -> SocketAddr {
    serve_each(|mut s| {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).is_ok() {
            let _ = s.write_all(&all);
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

fn echo_on(mut s: TcpStream, n: usize, seed: usize) -> SocketAddr {
    let peer = s.local_addr().unwrap();
    let data = pattern(n, seed);
    let mut w = s.try_clone().unwrap();
    let got = thread::scope(|sc| {
        sc.spawn(|| {
            w.write_all(&data).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        read_to_end(&mut s)
    });
    assert!(got == data, "{} of {n} bytes came back", got.len());
    peer
}

/// The agent's last log line for a connection from `peer`.
fn agent_line(d: &Daemon, peer: SocketAddr) -> String {
    let key = format!("agent peer={peer} ");
    d.wait_log(&[&key, " end="]);
    d.log
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|l| l.contains(&key) && l.contains(" end="))
        .unwrap()
        .clone()
}

/// The server's log line for a connection from `peer`.
fn server_line(d: &Daemon, peer: SocketAddr) -> String {
    d.wait_log(&[&format!("peer={peer} "), " end="])
}

// ----------------------------------------------------- a TLS client here

fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Completes a verified handshake with `localhost` at `addr` and returns
/// the certificate the server presented.
fn peer_cert(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    let mut conn = ClientConnection::new(
        client_config(ca_pem),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut tcp = connect(addr);
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("TLS handshake");
    }
    conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// A real ClientHello for `localhost`.
fn client_hello(ca_pem: &str) -> Vec<u8> {
    let mut conn = ClientConnection::new(
        client_config(ca_pem),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a handshake record");
    out
}

/// Reads until the server closes (EOF or reset); returns what came and
/// how long it took. Fails after 5 s.
fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "server did not close within {:?}: got {all:02x?}",
                    start.elapsed()
                )
            }
            Err(_) => break, // reset: closed as well
        }
    }
    (all, start.elapsed())
}

// ---------------------------------------------------------------- tests

/// wss:// with the test CA, by name and by IP (IP SAN), unpooled and with
/// a PONG-kept pool: tunnels carry data both ways, half-close included.
#[test]
fn tunnels_over_tls_with_the_test_ca() {
    let ca = new_ca("websocks test CA");
    let f = Files::new();
    let ca_file = f.write("ca.pem", &ca.pem);
    let (cert, key) = f.pair(
        "server",
        &leaf(&ca, &["localhost", "127.0.0.1"], "localhost", 1, false),
    );
    let server = tls_server(&cert, &key, "");
    let port = server.addr().port();
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("wss://{host}:{port}/");
        // No pool: each tunnel makes its own TLS connection.
        let d = agent(&url, &ca_opt(&ca_file), "  pool: {size: 0}\n");
        for (i, n) in [1, 100_000, 3_000_000].into_iter().enumerate() {
            let peer = echo_through(d.addr(), n, i);
            let line = agent_line(&d, peer);
            assert!(line.contains(" server=s "), "{line}");
            assert!(line.contains(&format!("up={n} down={n} ")), "{line}");
            assert!(line.ends_with("end=closed"), "{line}");
        }
        // Half-close: everything goes up, then FIN; the answer comes back.
        // TLS on both sides: `threads: auto` is one executor thread per
        // core.
        let cores = thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(executor_threads(server.child.id()), cores);
        assert_eq!(executor_threads(d.child.id()), cores);
        let (rep, mut s) = socks_open(d.addr(), sink_then_echo());
        assert_eq!(rep, 0);
        let data = pattern(500_000, 7);
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_end(&mut s) == data, "after the FIN");
        drop(d);

        // Pooled TLS connections kept alive by PONGs, then used.
        let d = agent(
            &url,
            &ca_opt(&ca_file),
            "  pool: {size: 2, keepalive: 300ms}\n",
        );
        thread::sleep(Duration::from_secs(1));
        for i in 0..3 {
            let dest = echo_server();
            let (rep, s) = socks_open(d.addr(), dest);
            assert_eq!(rep, 0);
            let peer = echo_on(s, 200_000, i);
            let line = agent_line(&d, peer);
            assert!(line.ends_with("end=closed"), "{line}");
            if i < 2 {
                assert!(line.contains(" server=s(pooled) "), "{line}");
                // The server's side is the connection pooled 1 s ago: it
                // waited that long for its frame.
                let line = server.wait_log(&[&format!("dst={dest} "), " end="]);
                let waited: f64 = line
                    .split("waited=")
                    .nth(1)
                    .and_then(|v| v.split('s').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap();
                assert!(waited >= 0.9, "{line}");
            }
        }
        assert!(
            !d.log.lock().unwrap().iter().any(|l| l.contains("is down")),
            "{url}: {:#?}",
            d.log.lock().unwrap()
        );
    }
    // The server saw TLS tunnels end normally, and nothing broken.
    server.wait_log(&["user=alice", "up=3000000 down=3000000", "end=closed"]);
    assert!(
        !server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("TLS handshake")),
        "{:#?}",
        server.log.lock().unwrap()
    );
}

/// Opens a tunnel that must fail with `05 01`; returns the agent's line
/// for it.
fn refused(d: &Daemon) -> String {
    let (rep, mut s) = socks_open(d.addr(), echo_server());
    assert_eq!(rep, socks5::REP_GENERAL_FAILURE, "SOCKS5 reply");
    let peer = s.local_addr().unwrap();
    let _ = read_to_end(&mut s);
    let line = agent_line(d, peer);
    assert!(line.contains("end=refused: no server usable"), "{line}");
    line
}

/// Certificates the agent must not accept: another CA, another name, an
/// expired one. The client gets `05 01`; the agent names the server and
/// the TLS reason. `sni:` fixes the name case; `insecure_skip_verify`
/// accepts anything, loudly.
#[test]
fn bad_certificates_are_refused_with_a_clear_reason() {
    let ca = new_ca("websocks test CA");
    let other_ca = new_ca("unrelated CA");
    let f = Files::new();
    let ca_file = f.write("ca.pem", &ca.pem);
    let ca_o = ca_opt(&ca_file);
    let no_pool = "  pool: {size: 0}\n";

    let cases: [(&str, Leaf, &str); 3] = [
        (
            "wrong CA",
            leaf(&other_ca, &["localhost"], "localhost", 2, false),
            "UnknownIssuer",
        ),
        (
            "wrong name",
            leaf(&ca, &["other.example"], "other.example", 3, false),
            "not valid for name \"localhost\"",
        ),
        (
            "expired",
            leaf(&ca, &["localhost"], "localhost", 4, true),
            "certificate expired",
        ),
    ];
    for (what, cert, reason) in cases {
        let (c, k) = f.pair(what.replace(' ', "-").as_str(), &cert);
        let server = tls_server(&c, &k, "");
        let port = server.addr().port();
        let d = agent(&format!("wss://localhost:{port}/"), &ca_o, no_pool);
        let line = refused(&d);
        assert!(
            line.contains("TLS") && line.contains(reason),
            "{what}: {line}"
        );
        // The state change names the server, its address and the reason.
        let down = d.wait_log(&[&format!("server s (localhost:{port}) is down"), "TLS"]);
        assert!(down.contains(reason), "{what}: {down}");
        // The server saw a failed handshake, not a tunnel.
        server.wait_log(&["end=rejected: TLS handshake"]);

        match what {
            "wrong name" => {
                // The name the certificate is for, sent as SNI: fine.
                let d = agent(
                    &format!("wss://localhost:{port}/"),
                    &format!("{ca_o}, sni: other.example"),
                    no_pool,
                );
                let peer = echo_through(d.addr(), 10_000, 1);
                assert!(agent_line(&d, peer).ends_with("end=closed"));
            }
            "wrong CA" => {
                // No verification at all: connects, and says so.
                let d = agent(
                    &format!("wss://localhost:{port}/"),
                    ", insecure_skip_verify: true",
                    no_pool,
                );
                let warn = d.wait_log(&["insecure_skip_verify"]);
                assert!(warn.contains("server s"), "{warn}");
                let peer = echo_through(d.addr(), 10_000, 2);
                assert!(agent_line(&d, peer).ends_with("end=closed"));
            }
            _ => {}
        }
    }
}

/// Garbage, plain HTTP, a ClientHello then silence, a handshake abandoned
/// halfway: each costs its connection only, ends within bounded time with
/// `end=rejected: TLS handshake: ...`, while a TLS tunnel keeps working.
#[test]
fn bad_tls_input_costs_one_connection() {
    let ca = new_ca("websocks test CA");
    let f = Files::new();
    let ca_file = f.write("ca.pem", &ca.pem);
    let (cert, key) = f.pair(
        "server",
        &leaf(&ca, &["localhost", "127.0.0.1"], "localhost", 1, false),
    );
    let mut server = tls_server(&cert, &key, "  timeouts: {handshake: 1s}\n");
    let port = server.addr().port();
    let d = agent(
        &format!("wss://localhost:{port}/"),
        &ca_opt(&ca_file),
        "  pool: {size: 0}\n",
    );

    // A tunnel that stays open through all of it.
    let (rep, mut long) = socks_open(d.addr(), echo_server());
    assert_eq!(rep, 0);
    long.write_all(b"before").unwrap();
    assert_eq!(read_exact_after(&mut long, Vec::new(), 6), b"before");

    // Garbage and a plain HTTP upgrade on the TLS port: closed at once.
    let mut garbage = b"\x00\x01\x02garbage that is no TLS record\r\n\r\n".to_vec();
    garbage.extend(pattern(5000, 9));
    for (what, bytes) in [("garbage", garbage), ("plain HTTP", upgrade_request())] {
        let mut s = connect(server.addr());
        let peer = s.local_addr().unwrap();
        s.write_all(&bytes).unwrap();
        let (got, took) = until_closed(&mut s);
        assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
        // At most a TLS alert, never a plain HTTP answer.
        assert!(
            got.is_empty() || got[0] == 0x15,
            "{what}: answered {got:02x?}"
        );
        let line = server_line(&server, peer);
        assert!(
            line.contains("end=rejected: TLS handshake: "),
            "{what}: {line}"
        );
        echo_through(d.addr(), 50_000, 1);
    }

    // A ClientHello, then silence: the handshake timeout (1 s) ends it;
    // meanwhile new tunnels are served.
    let hello = client_hello(&ca.pem);
    let mut silent = connect(server.addr());
    let silent_peer = silent.local_addr().unwrap();
    silent.write_all(&hello).unwrap();
    let t0 = Instant::now();
    for i in 0..3 {
        echo_through(d.addr(), 50_000, i);
    }
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "tunnels took {:?}",
        t0.elapsed()
    );
    let (got, _) = until_closed(&mut silent);
    let took = t0.elapsed();
    assert!(
        got.first() == Some(&0x16),
        "the server answered the hello: {got:02x?}"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    let line = server_line(&server, silent_peer);
    assert!(
        line.contains("end=rejected: TLS handshake: ") && line.contains("timed out"),
        "{line}"
    );

    // Abandoned halfway: half a hello, then FIN; the whole hello, part of
    // the answer, then gone (a reset, with the answer unread).
    for cut in [true, false] {
        let mut s = connect(server.addr());
        let peer = s.local_addr().unwrap();
        let t0 = Instant::now();
        if cut {
            s.write_all(&hello[..hello.len() / 2]).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let (got, took) = until_closed(&mut s);
            assert!(took < Duration::from_millis(900), "closed after {took:?}");
            assert!(got.is_empty() || got[0] == 0x15, "{got:02x?}");
        } else {
            s.write_all(&hello).unwrap();
            let mut one = [0u8; 1];
            assert_eq!(s.read(&mut one).unwrap(), 1);
            drop(s);
        }
        let line = server_line(&server, peer);
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "noticed after {:?}",
            t0.elapsed()
        );
        assert!(
            line.contains("end=rejected: TLS handshake: ") && !line.contains("timed out"),
            "cut={cut}: {line}"
        );
    }

    // The long tunnel never noticed; new ones still work.
    long.write_all(b"after").unwrap();
    assert_eq!(read_exact_after(&mut long, Vec::new(), 5), b"after");
    echo_on(long, 10_000, 4);
    echo_through(d.addr(), 1_000_000, 5);
    server.assert_alive();
}

/// SIGHUP re-reads the certificate: new connections get the new one; a
/// broken key keeps the running one.
#[test]
fn sighup_reloads_the_certificate() {
    let ca = new_ca("websocks test CA");
    let f = Files::new();
    let a = leaf(&ca, &["localhost"], "cert A", 100, false);
    let b = leaf(&ca, &["localhost"], "cert B", 200, false);
    let (cert, key) = f.pair("server", &a);
    let mut server = tls_server(&cert, &key, "");
    let ca_file = f.write("ca.pem", &ca.pem);
    let d = agent(
        &format!("wss://localhost:{}/", server.addr().port()),
        &ca_opt(&ca_file),
        "  pool: {size: 0}\n",
    );
    assert!(peer_cert(server.addr(), &ca.pem) == a.der, "cert A first");
    // A tunnel open across the reloads.
    let (rep, mut long) = socks_open(d.addr(), echo_server());
    assert_eq!(rep, 0);

    let hup = |server: &Daemon| {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    f.pair("server", &b);
    hup(&server);
    server.wait_log(&["reloaded"]);
    assert!(
        peer_cert(server.addr(), &ca.pem) == b.der,
        "cert B after reload"
    );
    echo_through(d.addr(), 100_000, 1);

    // A key that does not parse (PEM around junk; no PEM at all): the
    // reload fails, says why, and cert B stays.
    for (i, junk) in [
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        "not a key\n",
    ]
    .into_iter()
    .enumerate()
    {
        f.write("server.key", junk);
        let before = server.log.lock().unwrap().len();
        hup(&server);
        let end = Instant::now() + Duration::from_secs(5);
        let failed = loop {
            let log = server.log.lock().unwrap();
            if let Some(l) = log[before..].iter().find(|l| l.contains("reload")) {
                break l.clone();
            }
            assert!(Instant::now() < end, "no reload line: {:#?}", *log);
            drop(log);
            thread::sleep(Duration::from_millis(20));
        };
        assert!(
            failed.contains("reload failed") && failed.contains("server.tls"),
            "{failed}"
        );
        assert!(peer_cert(server.addr(), &ca.pem) == b.der, "still cert B");
        echo_through(d.addr(), 100_000, 2 + i);
    }

    long.write_all(b"still here").unwrap();
    assert_eq!(read_exact_after(&mut long, Vec::new(), 10), b"still here");
    server.assert_alive();
}

/// Failover and health work the same over TLS: a group whose first server
/// presents a certificate from another CA and whose second is good serves
/// every request through the second, marks the first down, and keeps doing
/// so with a pool.
#[test]
fn failover_over_tls_skips_a_server_with_a_bad_certificate() {
    let ca = new_ca("websocks test CA");
    let other_ca = new_ca("unrelated CA");
    let f = Files::new();
    let ca_o = ca_opt(&f.write("ca.pem", &ca.pem));
    let (bc, bk) = f.pair(
        "bad",
        &leaf(&other_ca, &["localhost"], "localhost", 7, false),
    );
    let (gc, gk) = f.pair("good", &leaf(&ca, &["localhost"], "localhost", 8, false));
    let (bad, good) = (tls_server(&bc, &bk, ""), tls_server(&gc, &gk, ""));
    for pool in [
        "  pool: {size: 0}\n",
        "  pool: {size: 2, keepalive: 300ms}\n",
    ] {
        let d = Daemon::start(
            &["agent"],
            &format!(
                "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    \
                 - {{name: bad, url: \"wss://localhost:{}/\", user: {USER}, password: {PASS}{ca_o}}}\n    \
                 - {{name: good, url: \"wss://localhost:{}/\", user: {USER}, password: {PASS}{ca_o}}}\n\
                 {pool}  health: {{interval: 300ms, timeout: 2s}}\n",
                bad.addr().port(),
                good.addr().port()
            ),
            1,
        );
        for i in 0..4 {
            let peer = echo_through(d.addr(), 5_000, i);
            let line = agent_line(&d, peer);
            assert!(
                line.contains("server=good") && line.ends_with("end=closed"),
                "{pool}: {line}"
            );
        }
        let down = d.wait_log(&["server bad (localhost:", "is down", "TLS"]);
        assert!(down.contains("UnknownIssuer"), "{down}");
        assert!(
            !d.log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("server good") && l.contains("is down")),
            "{:#?}",
            d.log.lock().unwrap()
        );
    }
}

/// Every byte of a burst arrives even when the destination then falls
/// silent: TLS writes are flushed (rustls may keep encrypted bytes after a
/// write that reported success, and the relay must push them out).
#[test]
fn tls_burst_then_silence_arrives_whole() {
    const TOTAL: usize = 8 * 1024 * 1024;
    let ca = new_ca("websocks test CA");
    let f = Files::new();
    let ca_o = ca_opt(&f.write("ca.pem", &ca.pem));
    let (c, k) = f.pair("srv", &leaf(&ca, &["localhost"], "localhost", 9, false));
    let server = tls_server(&c, &k, "");
    let d = agent(
        &format!("wss://localhost:{}/", server.addr().port()),
        &ca_o,
        "  pool: {size: 0}\n",
    );
    // The destination sends a burst, then stays open and silent.
    let dest = serve_each(|mut s| {
        let _ = s.write_all(&pattern(TOTAL, 3));
        std::thread::sleep(Duration::from_secs(20));
    });
    let (rep, mut s) = socks_open(d.addr(), dest);
    assert_eq!(rep, 0);
    // Read slowly at first, so every buffer on the way fills up.
    std::thread::sleep(Duration::from_millis(500));
    let mut got = Vec::with_capacity(TOTAL);
    let mut chunk = vec![0u8; 64 * 1024];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while got.len() < TOTAL {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("after {} of {TOTAL} bytes: {e}", got.len()),
        }
    }
    assert!(
        got == pattern(TOTAL, 3),
        "{} of {TOTAL} bytes, or corrupted",
        got.len()
    );
}
