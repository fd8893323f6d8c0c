//! The daemon under resource pressure and operational extras: running out of
//! file descriptors, the health check path.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn accept_loop_survives_emfile() {
    // A descriptor limit so low that a handful of clients exhaust it.
    let d = Daemon::start_via(
        &["sh", "-c", "ulimit -n 40 && exec \"$0\" \"$@\""],
        &["server"],
        &server_yaml(ALLOW_LOOPBACK),
        1,
    );
    let mut hogs: Vec<TcpStream> = Vec::new();
    for _ in 0..60 {
        hogs.push(connect(d.addr()));
    }
    d.wait_log(&["accept:", "pausing"]);
    drop(hogs);
    // Once descriptors are free again, service resumes.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(d.addr());
        let _ = s.write_all(&upgrade_request());
        let mut first = [0u8; 12];
        if s.read_exact(&mut first).is_ok() && &first == b"HTTP/1.1 101" {
            break;
        }
        assert!(Instant::now() < end, "server did not recover from EMFILE");
        thread::sleep(Duration::from_millis(100));
    }
    assert_still_serving(d.addr());
}

#[test]
fn health_path_answers_200_and_others_400() {
    let d = Daemon::server(&server_yaml("  health_path: /healthz\n"));
    for (req, want) in [
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 200 OK",
        ),
        ("GET /healthz?probe=1 HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK"),
        (
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        ("HEAD /healthz HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ] {
        let mut s = connect(d.addr());
        s.write_all(req.as_bytes()).unwrap();
        let got = String::from_utf8(read_to_end(&mut s)).unwrap();
        assert!(got.starts_with(want), "{req:?} -> {got:?}");
        assert!(got.contains("Connection: close\r\n"), "{got:?}");
    }
}
