//! Whole tunnels through the real server: success paths, half-close, large
//! transfers, destination failures and their SOCKS5 reply codes.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;

use common::*;
use websocks::proto::socks5::Addr;

#[test]
fn echo_through_tunnel_and_log_line() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let echo = echo_server();
    let mut s = tunnel(d.addr(), echo);
    s.write_all(b"hello websocks").unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 14), b"hello websocks");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"");
    let line = d.wait_log(&["user=alice", &format!("dst={echo}"), "up=14", "down=14", "end=closed"]);
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}
