//! A new user's first try: curl, through a small SOCKS5-to-WebSocks bridge
//! written here (the agent comes later), through the real server, to a
//! local web server. Skipped, saying why, when curl is not installed.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;

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
