//! The agent's HTTP side against a hostile client: Host headers that would
//! be served as PAC JavaScript, and request framing an origin could read
//! differently from the agent (RFC 9112 sections 6.1-6.3, request
//! smuggling). The real binary, a real server, origins on loopback.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::*;

fn agent_yaml(server: SocketAddr) -> String {
    format!(
        "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  http: {{listen: [\"127.0.0.1:0\"]}}\n  \
         servers: [{{name: s, url: \"ws://{server}/\", user: {USER}, password: {PASS}}}]\n  pool: {{size: 0}}\n"
    )
}

/// A server and an agent in front of it; the agent's HTTP listener.
fn agent_and_server() -> (Daemon, Daemon, SocketAddr) {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let agent = Daemon::start(&["agent"], &agent_yaml(server.addr()), 2);
    let http = agent.addrs[1];
    (server, agent, http)
}

/// Sends `req` in one write, half-closes, and reads the answer to EOF.
fn exchange(proxy: SocketAddr, req: &[u8]) -> String {
    let mut s = connect(proxy);
    s.write_all(req).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    String::from_utf8_lossy(&read_to_end(&mut s)).into_owned()
}

/// The body of an HTTP answer (after the head).
fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The PAC file of an agent that routes nothing direct: everything to
/// `proxy` (tests/agent_pac.rs has the rules' file).
fn pac_for(proxy: &str) -> String {
    format!(
        "// websocks agent: nothing is routed direct, so every request goes to this\n\
         // agent, which applies its rules (a reject is answered 403 with the reason).\n\
         function FindProxyForURL(url, host) {{\n  return \"PROXY {proxy}\";\n}}\n"
    )
}

/// Runs `FindProxyForURL("http://a/", "a")` from `pac` in node; `None`
/// when node is not installed.
fn node_find_proxy(pac: &str) -> Option<String> {
    let script = "const vm = require('vm'); const src = require('fs').readFileSync(0, 'utf8');\
                  const ctx = {}; vm.runInNewContext(src, ctx, {timeout: 2000});\
                  process.stdout.write(String(ctx.FindProxyForURL('http://a/', 'a')));";
    let mut child = Command::new(find_tool("node")?)
        .args(["-e", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pac.as_bytes())
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("node did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

// ------------------------------------------------------------- the PAC

#[test]
fn hostile_host_headers_never_reach_the_pac() {
    let agent = Daemon::start(&["agent"], &agent_yaml(closed_port()), 2);
    let http = agent.addrs[1];
    let own = pac_for(&http.to_string());
    let hostile = [
        r#"x"; return "DIRECT"; var y=""#.to_string(),
        r#"x:1"; return "DIRECT"; var y=""#.to_string(),
        r#"a"b:80"#.to_string(),
        r"a\b:80".to_string(),
        r"127.0.0.1:1\".to_string(),
        "'; return 'DIRECT'; '".to_string(),
        "x:1;FindProxyForURL=function(){return\"DIRECT\"}//".to_string(),
        "</script><script>alert(1)</script>".to_string(),
        "</script>:80".to_string(),
        "127.0.0.1:80 ".to_string() + "x",
        "[::1]:80\"".to_string(),
        "localhost:+80".to_string(),
        "localhost".to_string(),
        format!("{}:80", "a".repeat(4000)),
    ];
    let mut node_missing = false;
    for host in &hostile {
        let answer = exchange(
            http,
            format!("GET /proxy.pac HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 200 "), "{host:?}: {answer}");
        let body = body_of(&answer);
        assert_eq!(body, own, "{host:?}");
        assert!(!body.contains(host.as_str()), "{host:?}");
        match node_find_proxy(body) {
            Some(got) => assert_eq!(got, format!("PROXY {http}"), "{host:?}"),
            None => node_missing = true,
        }
    }
    // A valid Host is used as given: the name the browser was told.
    let named = format!("localhost:{}", http.port());
    let answer = exchange(
        http,
        format!("GET /proxy.pac HTTP/1.1\r\nHost: {named}\r\n\r\n").as_bytes(),
    );
    assert_eq!(body_of(&answer), pac_for(&named), "{answer}");
    // Two Host fields: neither is trusted.
    let answer = exchange(
        http,
        format!("GET /proxy.pac HTTP/1.1\r\nHost: {named}\r\nHost: {named}\r\n\r\n").as_bytes(),
    );
    assert_eq!(body_of(&answer), own, "{answer}");
    if node_missing {
        skip("part: evaluating the PAC: needs node (apt-get install nodejs)");
    }
}

// ------------------------------------------------------- request framing

/// An origin that counts the connections it accepts and answers each.
fn counting_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let origin = serve_each(move |mut s| {
        n2.fetch_add(1, Ordering::SeqCst);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    });
    (origin, n)
}

#[test]
fn ambiguous_framing_is_refused_before_any_connection() {
    let (_server, agent, http) = agent_and_server();
    let (origin, accepted) = counting_origin();
    let both = "both Content-Length and Transfer-Encoding\n";
    let coding = "Transfer-Encoding must end in chunked, named once\n";
    let decimal = "Content-Length is not a decimal number\n";
    let twice = "more than one Content-Length\n";
    let malformed = "malformed HTTP request\n";
    let corpus: &[(&str, &str, &str)] = &[
        // CL.TE and TE.CL: the classic desync pair.
        (
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\nG",
            both,
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
            "0\r\n\r\nG",
            both,
        ),
        ("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n", coding),
        (
            "Transfer-Encoding: chunked, identity\r\n",
            "0\r\n\r\n",
            coding,
        ),
        ("Transfer-Encoding: identity\r\n", "", coding),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
            "0\r\n\r\n",
            coding,
        ),
        ("Transfer-Encoding:\r\n", "", coding),
        (
            "Transfer-Encoding: chunked, chunked\r\n",
            "0\r\n\r\n",
            coding,
        ),
        ("Content-Length: +5\r\n", "hello", decimal),
        ("Content-Length: -1\r\n", "hello", decimal),
        ("Content-Length: 0x5\r\n", "hello", decimal),
        ("Content-Length: 1 2\r\n", "hello", decimal),
        ("Content-Length: 5, 5\r\n", "hello", twice),
        ("Content-Length: 5\r\nContent-Length: 5\r\n", "hello", twice),
        // The head parser already refuses a blank before the colon.
        ("Transfer-Encoding : chunked\r\n", "0\r\n\r\n", malformed),
        ("Content-Length : 5\r\n", "hello", malformed),
    ];
    let target = format!("http://{origin}/a");
    for (headers, body, why) in corpus {
        let answer = exchange(
            http,
            format!("POST {target} HTTP/1.1\r\nHost: {origin}\r\n{headers}\r\n{body}").as_bytes(),
        );
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{headers:?}: {answer}"
        );
        assert_eq!(body_of(&answer), *why, "{headers:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "{headers:?} reached the origin"
        );
    }
    // HTTP/1.0 has no chunked coding (RFC 9112 section 6.1).
    let answer = exchange(
        http,
        format!("POST {target} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // Refused before routing: no destination, no route in the log.
    agent.wait_log(&["dst=- route=-", "ambiguous request body framing: Both"]);
    // The origin is reachable all along: a clear request gets there.
    let answer = exchange(
        http,
        format!("POST {target} HTTP/1.1\r\nHost: {origin}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// What an origin connection received, and whether it ended with EOF.
struct Received {
    bytes: Vec<u8>,
    eof: bool,
}

/// An origin that records everything on its connection: up to `until` it
/// reads, then answers `ok`, then keeps reading until EOF or 700 ms of
/// silence (anything that arrives then came from after the body).
fn recording_origin(until: &'static [u8], answer: bool) -> (SocketAddr, mpsc::Receiver<Received>) {
    let (tx, rx) = mpsc::channel();
    let origin = serve_each(move |mut s| {
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut eof = false;
        while !got.ends_with(until) {
            match s.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        if answer {
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
        while !eof {
            match s.read(&mut chunk) {
                Ok(0) => eof = true,
                // A reset ends the connection too (a tunnel cut short
                // resets both sides).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => eof = true,
                Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = tx.send(Received { bytes: got, eof });
    });
    (origin, rx)
}

/// Reads until EOF or a reset: after a tunnel ends on bad input, either
/// may come.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return v,
            Ok(n) => v.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return v,
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&v)),
        }
    }
}

const CHUNKED: &str =
    "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";
const NEXT: &str =
    "GET http://other.example/b HTTP/1.1\r\nHost: other.example\r\nCookie: secret=1\r\n\r\n";

fn chunked_head(origin: SocketAddr) -> (String, String) {
    let sent = format!(
        "POST http://{origin}/a HTTP/1.1\r\nHost: {origin}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let forwarded = format!(
        "POST /a HTTP/1.1\r\nHost: {origin}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    (sent, forwarded)
}

#[test]
fn a_chunked_body_is_forwarded_to_its_end_and_no_further() {
    let (_server, _agent, http) = agent_and_server();
    // All in one write (the body and the next request are buffered with the
    // head), then in pieces split inside the framing, after the tunnel is
    // up (the relay's own reads find the end).
    let splits: [&[usize]; 2] = [&[], &[20, CHUNKED.len() - 3]];
    for split in splits {
        let (origin, rx) = recording_origin(b"X-Trailer: t\r\n\r\n", true);
        let (sent, forwarded) = chunked_head(origin);
        let msg = format!("{sent}{CHUNKED}{NEXT}");
        let mut c = connect(http);
        let mut at = 0;
        for &cut in split {
            let cut = sent.len() + cut;
            c.write_all(&msg.as_bytes()[at..cut]).unwrap();
            at = cut;
            std::thread::sleep(Duration::from_millis(200));
        }
        c.write_all(&msg.as_bytes()[at..]).unwrap();
        let answer = String::from_utf8(read_to_end(&mut c)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        let got = rx.recv_timeout(IO_TIMEOUT).unwrap();
        // Exactly the rewritten head and the body through its trailers:
        // nothing of the next request.
        assert_eq!(
            String::from_utf8_lossy(&got.bytes),
            format!("{forwarded}{CHUNKED}"),
            "split {split:?}"
        );
        let _ = c.shutdown(Shutdown::Both);
    }
}

#[test]
fn a_malformed_chunk_ends_the_tunnel() {
    let (_server, _agent, http) = agent_and_server();
    let bad_chunks = [
        "5\nworld\r\n0\r\n\r\n",
        "5\r\nworldX\r\n0\r\n\r\n",
        "zz\r\n0\r\n\r\n",
        "0\r\nX: 1\n\r\n",
    ];
    for bad in bad_chunks {
        // In the same write as the head: nothing beyond the good chunk (here:
        // nothing at all) reaches the origin.
        let (origin, rx) = recording_origin(b"never", false);
        let (sent, forwarded) = chunked_head(origin);
        let good = "5\r\nhello\r\n";
        let mut c = connect(http);
        c.write_all(format!("{sent}{good}{bad}{NEXT}").as_bytes())
            .unwrap();
        read_until_closed(&mut c);
        if let Ok(got) = rx.recv_timeout(Duration::from_secs(3)) {
            let allowed = format!("{forwarded}{good}");
            assert!(
                allowed.as_bytes().starts_with(&got.bytes),
                "{bad:?}: {:?}",
                String::from_utf8_lossy(&got.bytes)
            );
        }
        // After the good chunk has reached the origin: it gets exactly the
        // head and that chunk, then the tunnel ends (EOF, no pipelined bytes).
        let (origin, rx) = recording_origin(b"hello\r\n", false);
        let (sent, forwarded) = chunked_head(origin);
        let mut c = connect(http);
        c.write_all(format!("{sent}{good}").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c.write_all(format!("{bad}{NEXT}").as_bytes()).unwrap();
        read_until_closed(&mut c);
        let got = rx.recv_timeout(IO_TIMEOUT).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got.bytes),
            format!("{forwarded}{good}"),
            "{bad:?}"
        );
        assert!(got.eof, "{bad:?}: the origin's connection was not ended");
    }
}
