//! A new user's first try: curl, through a small SOCKS5-to-WebSocks bridge
//! written here, through the real server, to a local web server; then curl
//! through the agent's SOCKS5 and HTTP listeners and the server. Skipped,
//! saying why, when curl is not installed.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use common::agent::*;
use common::*;
use websocks::proto::{Parse, socks5, ws};

/// Serves one SOCKS5 client: local handshake, then the WebSocks handshake
/// with `server`, pass the server's reply on, relay.
fn bridge_one(mut local: TcpStream, server: SocketAddr) {
    local.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    };
    let used = loop {
        match socks5::parse_greeting(&buf).unwrap() {
            Parse::Done(_, used) => break used,
            Parse::Incomplete => fill(&mut local, &mut buf),
        }
    };
    buf.drain(..used);
    local.write_all(&[5, 0]).unwrap();
    let req = loop {
        match socks5::parse_request(&buf).unwrap() {
            Parse::Done(r, used) => {
                buf.drain(..used);
                break r;
            }
            Parse::Incomplete => fill(&mut local, &mut buf),
        }
    };
    let mut up = connect(server);
    up.write_all(&upgrade_request()).unwrap();
    let (head, rest) = read_head(&mut up);
    assert_eq!(head.second, "101");
    let mut out = ws::FRAME.to_vec();
    socks5::write_greeting(&mut out, &[0]);
    socks5::write_connect(&mut out, &req.addr);
    up.write_all(&out).unwrap();
    let got = read_exact_after(&mut up, rest, 12 + 10);
    local.write_all(&got[12..]).unwrap();
    let (mut a, mut b) = (local.try_clone().unwrap(), up.try_clone().unwrap());
    let t = thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut up, &mut local);
    let _ = local.shutdown(Shutdown::Write);
    let _ = t.join();
}

#[test]
fn curl_through_socks5_bridge_and_server() {
    let Some(curl) = need_tool("curl", "curl") else {
        return;
    };
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let page = serve_each(|mut s| {
        let mut req = Vec::new();
        let mut chunk = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).unwrap();
            if n == 0 {
                return;
            }
            req.extend_from_slice(&chunk[..n]);
        }
        let body = "<html><body>hello through websocks</body></html>\n";
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let socks = TcpListener::bind("127.0.0.1:0").unwrap();
    let socks_addr = socks.local_addr().unwrap();
    let server = d.addr();
    thread::spawn(move || {
        for s in socks.incoming().flatten() {
            thread::spawn(move || bridge_one(s, server));
        }
    });
    for (flag, host) in [
        ("--socks5-hostname", "localhost"),
        ("--socks5", "127.0.0.1"),
    ] {
        let out = Command::new(&curl)
            .args(["-sS", "--max-time", "10", flag, &socks_addr.to_string()])
            .arg(format!("http://{host}:{}/", page.port()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "<html><body>hello through websocks</body></html>\n"
        );
    }
    d.wait_log(&["user=alice", "dst=localhost:", "end=closed"]);
    d.wait_log(&["user=alice", "dst=127.0.0.1:", "end=closed"]);
}

// ---------------------------------------------------------------- curl

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn curl_through_agent_and_server() {
    let Some(curl_bin) = need_tool("curl", "curl") else {
        return;
    };
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    let page = serve_on("127.0.0.1:0", move |mut s| {
        let mut req = Vec::new();
        let mut chunk = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&chunk[..n]),
            }
        }
        hits2.fetch_add(1, Ordering::Relaxed);
        let path = String::from_utf8_lossy(&req)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let body = format!("<html><body>hello {path} through websocks</body></html>\n");
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let open = simple_agent(server.addr(), "");
    let authed = simple_agent(server.addr(), "  users: [{name: me, password: pw}]\n");
    let curl = |args: &[String], url: String| {
        let mut c = Command::new(&curl_bin);
        for v in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
        ] {
            c.env_remove(v);
        }
        c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url)
            .output()
            .unwrap()
    };
    let p = page.port();
    let (os, oh, om) = (open.addrs[0], open.addrs[1], open.addrs[2]);
    let (as_, ah) = (authed.addrs[0], authed.addrs[1]);
    let cases: Vec<(Vec<String>, String, &Daemon, &str)> = vec![
        (
            vec!["--socks5-hostname".into(), os.to_string()],
            format!("http://localhost:{p}/socks"),
            &open,
            "via=socks5 dst=localhost:",
        ),
        (
            vec!["--proxy".into(), format!("http://{oh}")],
            format!("http://127.0.0.1:{p}/forward"),
            &open,
            "via=http dst=127.0.0.1:",
        ),
        (
            vec!["-p".into(), "--proxy".into(), format!("http://{oh}")],
            format!("http://localhost:{p}/connect"),
            &open,
            "via=http dst=localhost:",
        ),
        (
            vec!["--proxy".into(), format!("socks5h://{om}")],
            format!("http://localhost:{p}/mixed-socks"),
            &open,
            "via=socks5 dst=localhost:",
        ),
        (
            vec!["--proxy".into(), format!("http://{om}")],
            format!("http://127.0.0.1:{p}/mixed-http"),
            &open,
            "via=http dst=127.0.0.1:",
        ),
        (
            vec!["--proxy".into(), format!("socks5h://me:pw@{as_}")],
            format!("http://localhost:{p}/auth-socks"),
            &authed,
            "via=socks5 dst=localhost:",
        ),
        (
            vec!["--proxy".into(), format!("http://me:pw@{ah}")],
            format!("http://127.0.0.1:{p}/auth-forward"),
            &authed,
            "via=http dst=127.0.0.1:",
        ),
        (
            vec!["-p".into(), "--proxy".into(), format!("http://me:pw@{ah}")],
            format!("http://127.0.0.1:{p}/auth-connect"),
            &authed,
            "via=http dst=127.0.0.1:",
        ),
    ];
    for (i, (args, url, d, want)) in cases.iter().enumerate() {
        let out = curl(args, url.clone());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = url.rsplit('/').next().unwrap();
        assert!(
            out.status.success(),
            "curl {args:?} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout,
            format!("<html><body>hello /{path} through websocks</body></html>\n\n200"),
            "curl {args:?} {url}"
        );
        assert_eq!(hits.load(Ordering::Relaxed), i + 1);
        d.wait_log(&[
            want,
            &format!(":{p} "),
            "route=proxy:default server=s",
            "end=closed",
        ]);
    }
    // Without credentials: 407 from the HTTP proxy, no page fetched.
    let out = curl(
        &["--proxy".into(), format!("http://{ah}")],
        format!("http://127.0.0.1:{p}/nope"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("407"));
    assert_eq!(hits.load(Ordering::Relaxed), cases.len());
    server.wait_log(&["user=alice", &format!("dst=localhost:{p} "), "end=closed"]);
}
