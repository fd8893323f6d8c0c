//! Bad input against the real server over loopback: garbage, malformed and
//! refused upgrades, bad frames, refused SOCKS5 steps, every truncation of a
//! valid stream, slow and pipelined clients, and the handshake deadline.
//! Each case asserts the exact answer bytes; each group then checks that the
//! daemon is alive and still serves a whole tunnel.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use websocks::proto::{Parse, http};

/// The server's 101 for the RFC 6455 example key (RFC 6455 section 1.3:
/// accept = base64(sha1(key + GUID)); spec chapter "Server Upgrade").
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: socks5\r\n\
\r\n";
/// The spec's "maximum payload length frame", both ways.
const FRAME: [u8; 10] = [0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
/// The spec's keepalive PONG.
const PONG: [u8; 2] = [0x8a, 0x00];
/// Greeting offering only NO AUTHENTICATION REQUIRED.
const GREETING: [u8; 3] = [0x05, 0x01, 0x00];
/// Method choices (RFC 1928 section 3).
const CHOSE_NO_AUTH: [u8; 2] = [0x05, 0x00];
const NONE_ACCEPTABLE: [u8; 2] = [0x05, 0xff];
/// The reference agent's fixed key.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The start of a TLS 1.0 record carrying a ClientHello.
const TLS_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x9b\x1d\x5c\x70";

/// A CONNECT request to an IPv4 destination (RFC 1928 section 4).
fn connect_v4(dest: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(a) = dest else {
        panic!("IPv4 only")
    };
    let mut v = vec![0x05, 0x01, 0x00, 0x01];
    v.extend_from_slice(&a.ip().octets());
    v.extend_from_slice(&a.port().to_be_bytes());
    v
}

/// The success reply: `0.0.0.0` and the requested port (reply address
/// "hidden", the default, as the reference server answers).
fn success(port: u16) -> Vec<u8> {
    let p = port.to_be_bytes();
    vec![0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, p[0], p[1]]
}

/// A failure reply: always `05 REP 00 01 0.0.0.0 :0`.
fn failure(rep: u8) -> Vec<u8> {
    vec![0x05, rep, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// One change to the reference agent's upgrade request.
#[derive(Clone, Copy)]
enum Edit<'a> {
    /// Replace the request line.
    Start(&'a str),
    /// Remove every header of this name.
    Without(&'a str),
    /// Give the (first) header of this name a new value, or append it.
    Set(&'a str, &'a str),
    /// Append one more header line.
    Add(&'a str, &'a str),
}
use Edit::*;

/// The reference agent's upgrade request (fresh credential) with `edits`.
fn request(edits: &[Edit]) -> Vec<u8> {
    let auth = authorization(USER, PASS, 0);
    let mut start = "GET / HTTP/1.1".to_string();
    let mut h: Vec<(String, String)> = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Host", "null"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "socks5"),
        ("Authorization", auth.as_str()),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    for e in edits {
        match *e {
            Start(s) => start = s.to_string(),
            Without(name) => h.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            Set(name, value) => match h.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some(slot) => slot.1 = value.to_string(),
                None => h.push((name.to_string(), value.to_string())),
            },
            Add(name, value) => h.push((name.to_string(), value.to_string())),
        }
    }
    let mut out = format!("{start}\r\n");
    for (n, v) in h {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Sends `bytes` on a fresh connection and reads everything until the
/// server closes; also returns how long the answer took.
fn answer(server: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let mut s = connect(server);
    let t = Instant::now();
    s.write_all(bytes).unwrap();
    let got = read_to_end(&mut s);
    (got, t.elapsed())
}

/// Asserts `got` is exactly one error response with status line
/// `HTTP/1.1 {status}`, `Connection: close` and a `Content-Length` equal to
/// the body that follows; returns the head.
fn assert_error(got: &[u8], status: &str, case: &str) -> http::Head {
    let line = format!("HTTP/1.1 {status}\r\n");
    assert!(
        got.starts_with(line.as_bytes()),
        "{case}: got {}",
        show(got)
    );
    let Ok(Parse::Done(head, used)) = http::parse_response(got) else {
        panic!("{case}: not one response head: {}", show(got));
    };
    assert_eq!(
        head.one("Connection"),
        Some("close"),
        "{case}: {}",
        show(got)
    );
    let body = got.len() - used;
    assert_eq!(
        head.one("Content-Length"),
        Some(body.to_string().as_str()),
        "{case}: {}",
        show(got)
    );
    head
}

/// `bytes` are answered at once (well before the 10 s handshake deadline)
/// with a 400, then the server closes.
fn expect_400(server: SocketAddr, bytes: &[u8], case: &str) -> http::Head {
    let (got, took) = answer(server, bytes);
    assert!(
        took < Duration::from_secs(3),
        "{case}: answered after {took:?}"
    );
    assert_error(&got, "400 Bad Request", case)
}

/// `bytes` are answered at once with the 401 and its Basic challenge.
fn expect_401(server: SocketAddr, bytes: &[u8], case: &str) {
    let (got, took) = answer(server, bytes);
    assert!(
        took < Duration::from_secs(3),
        "{case}: answered after {took:?}"
    );
    let head = assert_error(&got, "401 Unauthorized", case);
    assert_eq!(
        head.one("WWW-Authenticate"),
        Some("Basic realm=\"websocks\""),
        "{case}"
    );
}

/// `bytes` are accepted: the exact 101, then a whole tunnel works on the
/// same connection.
fn expect_101(server: SocketAddr, bytes: &[u8], case: &str) {
    let mut s = connect(server);
    s.write_all(bytes).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), SWITCHING.len());
    assert_eq!(show(&got), show(SWITCHING), "{case}");
    finish_tunnel(s, case);
}

/// After the 101: frame, greeting, CONNECT to a fresh echo server; asserts
/// the exact answers and that data comes back.
fn finish_tunnel(mut s: TcpStream, case: &str) {
    let echo = echo_server();
    s.write_all(&cat(&[&FRAME, &GREETING, &connect_v4(echo)]))
        .unwrap();
    let want = cat(&[&FRAME, &CHOSE_NO_AUTH, &success(echo.port())]);
    let got = read_exact_after(&mut s, Vec::new(), want.len());
    assert_eq!(got, want, "{case}");
    s.write_all(b"ping").unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 4), b"ping", "{case}");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"", "{case}");
}

/// A connection that got its 101 for the reference request.
fn upgraded(server: SocketAddr) -> TcpStream {
    let mut s = connect(server);
    s.write_all(&upgrade_request()).unwrap();
    let got = read_exact_after(&mut s, Vec::new(), SWITCHING.len());
    assert_eq!(show(&got), show(SWITCHING));
    s
}

/// Waits out the last seconds of a UTC minute, so that a credential made
/// for "this minute + k" is still "+ k" when the server checks it.
fn away_from_minute_edge() {
    let into = now_ms() % 60_000;
    if into > 57_000 {
        thread::sleep(Duration::from_millis(60_000 - into + 200));
    }
}

/// xorshift64: seeded garbage.
fn garbage(mut seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

fn still_fine(d: &mut Daemon) {
    assert_still_serving(d.addr());
    d.assert_alive();
}

#[test]
fn garbage_first_bytes_get_400_at_once() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("TLS ClientHello".into(), TLS_HELLO.to_vec()),
        ("zeros".into(), vec![0; 32]),
        ("0xff".into(), vec![0xff; 32]),
        ("raw SOCKS5 greeting".into(), GREETING.to_vec()),
        ("the 10-byte frame first".into(), FRAME.to_vec()),
        ("SSH banner".into(), b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        ("empty lines".into(), b"\r\n\r\n".to_vec()),
        ("space first".into(), b" GET / HTTP/1.1\r\n".to_vec()),
    ];
    for seed in 1..=8u64 {
        // A non-ASCII first byte can never start a method.
        let mut g = garbage(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 200);
        g[0] |= 0x80;
        cases.push((format!("random binary seed {seed}"), g));
    }
    for (case, bytes) in &cases {
        expect_400(d.addr(), bytes, case);
    }
    still_fine(&mut d);
}

#[test]
fn malformed_and_oversized_heads_get_400() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    // More than 8 KiB and no blank line: refused once 8 KiB are in.
    let mut pad = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    pad.resize(9000, b'a');
    expect_400(a, &pad, "one long header line");
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    while many.len() < 9000 {
        many.extend_from_slice(b"X-Filler: 0123456789abcdef\r\n");
    }
    expect_400(a, &many, "many headers, no end");
    expect_400(a, &[b'a'; 9000], "a 9000-byte method");
    // A complete head larger than 8 KiB is refused too.
    let mut big = request(&[]);
    big.splice(
        16..16,
        b"X-Pad: "
            .iter()
            .chain(&[b'b'; 8200])
            .chain(b"\r\n")
            .copied(),
    );
    expect_400(a, &big, "complete 8.2 KiB head");
    for (case, bytes) in [
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n".to_vec(),
        ),
        ("folded header", request(&[Add("X-A", "b\r\n folded")])),
        ("NUL in a value", request(&[Add("X-A", "b\0c")])),
        ("space in a name", request(&[Add("X A", "b")])),
        ("no target", b"GET HTTP/1.1\r\n\r\n".to_vec()),
        ("two spaces", b"GET  / HTTP/1.1\r\n\r\n".to_vec()),
    ] {
        expect_400(a, &bytes, case);
    }
    still_fine(&mut d);
}

#[test]
fn request_line_and_upgrade_headers() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    for (case, bytes) in [
        ("POST", request(&[Start("POST / HTTP/1.1")])),
        (
            "plain GET",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
        ),
        ("HTTP/2", request(&[Start("GET / HTTP/2")])),
        ("HTTP/2.0", request(&[Start("GET / HTTP/2.0")])),
        ("HTTP/0.9 style", b"GET /\r\n\r\n".to_vec()),
        ("missing Upgrade", request(&[Without("Upgrade")])),
        ("missing Connection", request(&[Without("Connection")])),
        ("Upgrade: h2c", request(&[Set("Upgrade", "h2c")])),
        (
            "Connection: keep-alive",
            request(&[Set("Connection", "keep-alive")]),
        ),
    ] {
        expect_400(a, &bytes, case);
    }
    // Tolerant on purpose: token lists and case (RFC 9110 sections 5.6.1,
    // 7.8; RFC 6455 section 4.2.1 items 3-4).
    for (case, bytes) in [
        (
            "Connection: keep-alive, Upgrade",
            request(&[Set("Connection", "keep-alive, Upgrade")]),
        ),
        (
            "Upgrade: WebSocket",
            request(&[Set("Upgrade", "WebSocket")]),
        ),
        (
            "lower-case names",
            request(&[
                Without("Upgrade"),
                Without("Connection"),
                Add("upgrade", "websocket"),
                Add("connection", "upgrade"),
            ]),
        ),
    ] {
        expect_101(a, &bytes, case);
    }
    still_fine(&mut d);
}

#[test]
fn key_version_duplicates_and_body() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    let auth = authorization(USER, PASS, 0);
    for (case, bytes) in [
        ("missing key", request(&[Without("Sec-WebSocket-Key")])),
        (
            "key not base64",
            request(&[Set("Sec-WebSocket-Key", "not base64!!")]),
        ),
        (
            "key of 3 bytes",
            request(&[Set("Sec-WebSocket-Key", "AAAA")]),
        ),
        (
            "key of 17 bytes",
            request(&[Set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA=")]),
        ),
        ("duplicate key", request(&[Add("Sec-WebSocket-Key", KEY)])),
        (
            "duplicate Authorization",
            request(&[Add("Authorization", &auth)]),
        ),
        ("duplicate Host", request(&[Add("Host", "null")])),
        (
            "duplicate version",
            request(&[Add("Sec-WebSocket-Version", "13")]),
        ),
        (
            "Content-Length: 5",
            cat(&[&request(&[Add("Content-Length", "5")]), b"hello"]),
        ),
        (
            "Transfer-Encoding: chunked",
            request(&[Add("Transfer-Encoding", "chunked")]),
        ),
    ] {
        expect_400(a, &bytes, case);
    }
    // RFC 6455 section 4.4: a version we do not speak is answered with the
    // one we do.
    let head = expect_400(
        a,
        &request(&[Set("Sec-WebSocket-Version", "8")]),
        "version 8",
    );
    assert_eq!(head.one("Sec-WebSocket-Version"), Some("13"));
    for (case, bytes) in [
        (
            "no version header",
            request(&[Without("Sec-WebSocket-Version")]),
        ),
        ("Content-Length: 0", request(&[Add("Content-Length", "0")])),
    ] {
        expect_101(a, &bytes, case);
    }
    still_fine(&mut d);
}

#[test]
fn credentials_401_and_the_minute_window() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    away_from_minute_edge();
    let wrong = authorization(USER, "wrong password", 0);
    let before2 = authorization(USER, PASS, -2);
    let after2 = authorization(USER, PASS, 2);
    let mallory = authorization("mallory", PASS, 0);
    let no_colon = "Basic YWxpY2U="; // base64("alice")
    for (case, bytes) in [
        ("no Authorization", request(&[Without("Authorization")])),
        ("Bearer", request(&[Set("Authorization", "Bearer x")])),
        (
            "garbage base64",
            request(&[Set("Authorization", "Basic !!!not-base64!!!")]),
        ),
        ("no colon", request(&[Set("Authorization", no_colon)])),
        ("wrong password", request(&[Set("Authorization", &wrong)])),
        ("minute -2", request(&[Set("Authorization", &before2)])),
        ("minute +2", request(&[Set("Authorization", &after2)])),
        ("unknown user", request(&[Set("Authorization", &mallory)])),
    ] {
        expect_401(a, &bytes, case);
    }
    away_from_minute_edge();
    let before1 = authorization(USER, PASS, -1);
    let after1 = authorization(USER, PASS, 1);
    let now = authorization(USER, PASS, 0);
    let lower = now.replacen("Basic", "basic", 1);
    let unpadded = now.trim_end_matches('=').to_string();
    assert_ne!(unpadded, now, "the outer token must have had padding");
    for (case, bytes) in [
        ("minute -1", request(&[Set("Authorization", &before1)])),
        ("minute +1", request(&[Set("Authorization", &after1)])),
        ("scheme basic", request(&[Set("Authorization", &lower)])),
        (
            "unpadded token",
            request(&[Set("Authorization", &unpadded)]),
        ),
    ] {
        expect_101(a, &bytes, case);
    }
    still_fine(&mut d);
}

#[test]
fn socks5_subprotocol_is_required() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    for (case, bytes) in [
        (
            "no subprotocol",
            request(&[Without("Sec-WebSocket-Protocol")]),
        ),
        (
            "socks4",
            request(&[Set("Sec-WebSocket-Protocol", "socks4")]),
        ),
    ] {
        expect_400(a, &bytes, case);
    }
    for (case, bytes) in [
        (
            "one list",
            request(&[Set("Sec-WebSocket-Protocol", "chat, socks5")]),
        ),
        (
            "two headers",
            request(&[
                Set("Sec-WebSocket-Protocol", "chat"),
                Add("Sec-WebSocket-Protocol", "socks5"),
            ]),
        ),
    ] {
        expect_101(a, &bytes, case);
    }
    still_fine(&mut d);
}

#[test]
fn error_answers_survive_pipelined_bytes() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    let junk = garbage(7, 64 * 1024);
    let post = cat(&[&request(&[Start("POST / HTTP/1.1")]), &junk]);
    let (got, _) = answer(a, &post);
    assert_error(&got, "400 Bad Request", "POST + 64 KiB");
    let (got, _) = answer(a, &cat(&[TLS_HELLO, &junk]));
    assert_error(&got, "400 Bad Request", "TLS + 64 KiB");
    let anon = cat(&[
        &request(&[Without("Authorization")]),
        &FRAME,
        &GREETING,
        &junk,
    ]);
    let (got, _) = answer(a, &anon);
    assert_error(&got, "401 Unauthorized", "401 + frame + 64 KiB");
    // SOCKS5 refusals too: the whole answer arrives, no reset.
    let socks4 = cat(&[&upgrade_request(), &FRAME, &[0x04, 0x01, 0x00], &junk]);
    let (got, _) = answer(a, &socks4);
    assert_eq!(
        show(&got),
        show(&cat(&[SWITCHING, &FRAME, &NONE_ACCEPTABLE]))
    );
    let bind = cat(&[
        &upgrade_request(),
        &FRAME,
        &GREETING,
        &[5, 2, 0, 1, 127, 0, 0, 1, 0, 80],
        &junk,
    ]);
    let (got, _) = answer(a, &bind);
    assert_eq!(
        show(&got),
        show(&cat(&[SWITCHING, &FRAME, &CHOSE_NO_AUTH, &failure(0x07)]))
    );
    still_fine(&mut d);
}

#[test]
fn bad_frames_after_101_get_nothing() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    let f = |b: &[u8]| b.to_vec();
    for (case, bad) in [
        ("10 zero bytes", f(&[0; 10])),
        (
            "text opcode",
            f(&[0x81, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ),
        (
            "masked",
            f(&[0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ),
        (
            "FIN clear",
            f(&[0x02, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ),
        ("16-bit length", f(&[0x82, 0x7e, 0xff, 0xff])),
        (
            "length below 2^62",
            f(&[0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10]),
        ),
        ("PONG with payload", f(&[0x8a, 0x01, 0x41])),
        ("PONG without FIN", f(&[0x0a, 0x00])),
        ("PING", f(&[0x89, 0x00])),
        ("CLOSE", f(&[0x88, 0x00])),
        ("PONG then garbage", f(&[0x8a, 0x00, 0x00, 0x00])),
    ] {
        // Sent after the 101 was read...
        let mut s = upgraded(a);
        s.write_all(&bad).unwrap();
        assert_eq!(show(&read_to_end(&mut s)), "", "{case}");
        // ... and in the same write as the request.
        let (got, _) = answer(a, &cat(&[&upgrade_request(), &bad]));
        assert_eq!(show(&got), show(SWITCHING), "{case}, one write");
    }
    still_fine(&mut d);
}

#[test]
fn pongs_before_the_frame_are_skipped() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    // One PONG per write, then the rest.
    let mut s = upgraded(a);
    for _ in 0..3 {
        s.write_all(&PONG).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    finish_tunnel(s, "PONGs in their own writes");
    // PONGs in the same write as the frame.
    let echo = echo_server();
    let mut s = upgraded(a);
    s.write_all(&cat(&[
        &PONG,
        &PONG,
        &PONG,
        &FRAME,
        &GREETING,
        &connect_v4(echo),
        b"data",
    ]))
    .unwrap();
    let want = cat(&[&FRAME, &CHOSE_NO_AUTH, &success(echo.port()), b"data"]);
    assert_eq!(read_exact_after(&mut s, Vec::new(), want.len()), want);
    // PONGs in the same write as the upgrade request.
    expect_101(
        a,
        &cat(&[&upgrade_request(), &PONG, &PONG]),
        "PONGs right behind the request",
    );
    still_fine(&mut d);
}

#[test]
fn socks5_greeting_refusals() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    for (case, greeting) in [
        ("version 4", vec![0x04, 0x01, 0x00]),
        ("zero methods", vec![0x05, 0x00]),
        ("only user/pass", vec![0x05, 0x01, 0x02]),
        ("only GSSAPI and 0x80", vec![0x05, 0x02, 0x01, 0x80]),
    ] {
        let want = cat(&[&FRAME, &NONE_ACCEPTABLE]);
        // With the frame in one write...
        let mut s = upgraded(a);
        s.write_all(&cat(&[&FRAME, &greeting])).unwrap();
        assert_eq!(show(&read_to_end(&mut s)), show(&want), "{case}");
        // ... and after it.
        let mut s = upgraded(a);
        s.write_all(&FRAME).unwrap();
        assert_eq!(read_exact_after(&mut s, Vec::new(), 10), FRAME, "{case}");
        s.write_all(&greeting).unwrap();
        assert_eq!(
            show(&read_to_end(&mut s)),
            show(&NONE_ACCEPTABLE),
            "{case}, separate"
        );
    }
    // User/password offered next to no-auth: no-auth is chosen.
    let echo = echo_server();
    let mut s = upgraded(a);
    s.write_all(&cat(&[
        &FRAME,
        &[0x05, 0x02, 0x02, 0x00],
        &connect_v4(echo),
    ]))
    .unwrap();
    let want = cat(&[&FRAME, &CHOSE_NO_AUTH, &success(echo.port())]);
    assert_eq!(read_exact_after(&mut s, Vec::new(), want.len()), want);
    still_fine(&mut d);
}

#[test]
fn socks5_request_refusals() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    let lo = [127, 0, 0, 1, 0x00, 0x50];
    for (case, req, rep) in [
        ("version 4", cat(&[&[0x04, 0x01, 0x00, 0x01], &lo]), 0x01),
        ("BIND", cat(&[&[0x05, 0x02, 0x00, 0x01], &lo]), 0x07),
        (
            "UDP ASSOCIATE",
            cat(&[&[0x05, 0x03, 0x00, 0x01], &lo]),
            0x07,
        ),
        ("command 0x09", cat(&[&[0x05, 0x09, 0x00, 0x01], &lo]), 0x07),
        ("ATYP 5", cat(&[&[0x05, 0x01, 0x00, 0x05], &lo]), 0x08),
        ("ATYP 0", cat(&[&[0x05, 0x01, 0x00, 0x00], &lo]), 0x08),
        (
            "empty domain",
            vec![0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x50],
            0x04,
        ),
    ] {
        let mut s = upgraded(a);
        s.write_all(&cat(&[&FRAME, &GREETING, &req])).unwrap();
        let want = cat(&[&FRAME, &CHOSE_NO_AUTH, &failure(rep)]);
        assert_eq!(show(&read_to_end(&mut s)), show(&want), "{case}");
    }
    still_fine(&mut d);
}

#[test]
fn every_truncation_of_a_valid_stream() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    let echo = echo_server();
    let head = upgrade_request();
    let stream = cat(&[&head, &FRAME, &GREETING, &connect_v4(echo)]);
    // Where each stage's message ends, and what the server has said by then.
    let stages: [(usize, Vec<u8>); 5] = [
        (0, Vec::new()),
        (head.len(), SWITCHING.to_vec()),
        (head.len() + 10, cat(&[SWITCHING, &FRAME])),
        (head.len() + 13, cat(&[SWITCHING, &FRAME, &CHOSE_NO_AUTH])),
        (
            stream.len(),
            cat(&[SWITCHING, &FRAME, &CHOSE_NO_AUTH, &success(echo.port())]),
        ),
    ];
    let expected = |n: usize| &stages.iter().rev().find(|(end, _)| *end <= n).unwrap().1;
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    thread::scope(|sc| {
        for _ in 0..8 {
            sc.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n > stream.len() {
                        break;
                    }
                    let mut s = connect(a);
                    s.write_all(&stream[..n]).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                    let got = read_to_end(&mut s);
                    if &got != expected(n) {
                        failures.lock().unwrap().push(format!(
                            "prefix {n}: got {} want {}",
                            show(&got),
                            show(expected(n))
                        ));
                    }
                }
            });
        }
    });
    let f = failures.into_inner().unwrap();
    assert!(
        f.is_empty(),
        "{} of {} prefixes wrong:\n{}",
        f.len(),
        stream.len() + 1,
        f.join("\n")
    );
    still_fine(&mut d);
}

#[test]
fn one_byte_per_write() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let echo = echo_server();
    let mut s = connect(d.addr());
    let stream = cat(&[&upgrade_request(), &FRAME, &GREETING, &connect_v4(echo)]);
    for b in &stream {
        s.write_all(&[*b]).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    let want = cat(&[SWITCHING, &FRAME, &CHOSE_NO_AUTH, &success(echo.port())]);
    assert_eq!(
        show(&read_exact_after(&mut s, Vec::new(), want.len())),
        show(&want)
    );
    for b in b"slowly" {
        s.write_all(&[*b]).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_exact_after(&mut s, Vec::new(), 6), b"slowly");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"");
    still_fine(&mut d);
}

#[test]
fn everything_in_one_write() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let echo = echo_server();
    let mut s = connect(d.addr());
    let early = b"early data, before any answer";
    s.write_all(&cat(&[
        &upgrade_request(),
        &FRAME,
        &GREETING,
        &connect_v4(echo),
        early,
    ]))
    .unwrap();
    let want = cat(&[
        SWITCHING,
        &FRAME,
        &CHOSE_NO_AUTH,
        &success(echo.port()),
        early,
    ]);
    assert_eq!(
        show(&read_exact_after(&mut s, Vec::new(), want.len())),
        show(&want)
    );
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"", "nothing more, then EOF");
    still_fine(&mut d);
}

#[test]
fn garbage_crowd_does_not_block_a_tunnel() {
    let mut d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let a = d.addr();
    let crowd: Vec<thread::JoinHandle<(usize, TcpStream)>> = (0..50)
        .map(|i| {
            thread::spawn(move || {
                let mut s = connect(a);
                // Even: answered at once. Odd: a head that never ends,
                // held until the handshake deadline.
                let bytes = match i % 2 {
                    0 => cat(&[TLS_HELLO, &garbage(i as u64 + 1, 100)]),
                    _ => b"GET / HTTP/1.1\r\nHost: crowd\r\n".to_vec(),
                };
                s.write_all(&bytes).unwrap();
                (i, s)
            })
        })
        .collect();
    // The good tunnel runs while the crowd is connecting and connected.
    let echo = echo_server();
    let mut t = tunnel(a, echo);
    t.write_all(b"through the crowd").unwrap();
    assert_eq!(
        read_exact_after(&mut t, Vec::new(), 17),
        b"through the crowd"
    );
    for h in crowd {
        let (i, mut s) = h.join().unwrap();
        if i % 2 == 0 {
            assert_error(&read_to_end(&mut s), "400 Bad Request", "crowd");
        }
    }
    still_fine(&mut d);
}

#[test]
fn handshake_deadline() {
    let mut d = Daemon::server(&server_yaml(&format!(
        "{ALLOW_LOOPBACK}  timeouts:\n    handshake: 1s\n"
    )));
    let a = d.addr();
    let bounded = |case: &str, took: Duration| {
        assert!(
            took >= Duration::from_millis(800) && took <= Duration::from_secs(3),
            "{case}: closed after {took:?}, want about 1 s"
        );
    };
    thread::scope(|sc| {
        sc.spawn(|| {
            let mut s = connect(a);
            let t = Instant::now();
            s.write_all(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConn")
                .unwrap();
            assert_eq!(show(&read_to_end(&mut s)), "", "half a head");
            bounded("half a head", t.elapsed());
        });
        sc.spawn(|| {
            let mut s = connect(a);
            let t = Instant::now();
            assert_eq!(show(&read_to_end(&mut s)), "", "silent client");
            bounded("silent client", t.elapsed());
        });
        // After the frame, the greeting is due within the deadline too.
        sc.spawn(|| {
            let mut s = upgraded(a);
            s.write_all(&FRAME).unwrap();
            let t = Instant::now();
            assert_eq!(show(&read_to_end(&mut s)), show(&FRAME), "no greeting");
            bounded("no greeting", t.elapsed());
        });
        // A pooled connection waiting for its frame is kept by PONGs beyond
        // the handshake deadline (the idle timeout bounds that wait).
        sc.spawn(|| {
            let mut s = upgraded(a);
            for _ in 0..5 {
                thread::sleep(Duration::from_millis(400));
                s.write_all(&PONG).unwrap();
            }
            finish_tunnel(s, "pooled past the deadline");
        });
    });
    still_fine(&mut d);
}
