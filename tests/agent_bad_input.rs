//! Bad input from local clients to the agent: every malformed SOCKS5 and
//! HTTP step answered cleanly (or just closed), then the agent still
//! serves. All on loopback; every socket operation is bounded by a timeout
//! (helpers in `common/agent.rs`).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::agent::*;
use common::*;
use websocks::proto::socks5::{self, Addr};

// ---------------------------------------------------------- bad input

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn bad_local_input_is_answered_cleanly() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let mut d = simple_agent(server.addr(), "  timeouts: {handshake: 1s}\n");
    let (socks_l, http_l, mixed_l) = (d.addrs[0], d.addrs[1], d.addrs[2]);
    let ff = [5u8, 0xff];
    let reply = |rep: u8| [5u8, 0, 5, rep, 0, 1, 0, 0, 0, 0, 0, 0];

    for l in [socks_l, mixed_l] {
        // Greetings that are SOCKS5 but wrong.
        assert_eq!(raw_exchange(l, &[5, 0]), ff, "no methods");
        assert_eq!(
            raw_exchange(l, &[5, 3, 1, 2, 0x80]),
            ff,
            "no acceptable method"
        );
        // Requests.
        let mut bind = vec![5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80];
        assert_eq!(raw_exchange(l, &bind), reply(7), "BIND");
        bind[4] = 3;
        assert_eq!(raw_exchange(l, &bind), reply(7), "UDP ASSOCIATE");
        bind[4] = 9;
        assert_eq!(raw_exchange(l, &bind), reply(7), "unknown command");
        assert_eq!(
            raw_exchange(l, &[5, 1, 0, 5, 1, 0, 5, 1, 2, 3, 4, 0, 80]),
            reply(8),
            "ATYP 05"
        );
        assert_eq!(
            raw_exchange(l, &[5, 1, 0, 5, 1, 0, 0, 1, 2, 3, 4, 0, 80]),
            reply(8),
            "ATYP 00"
        );
        assert_eq!(
            raw_exchange(l, &[5, 1, 0, 5, 1, 0, 3, 0, 0, 80]),
            reply(4),
            "empty domain"
        );
        assert_eq!(
            raw_exchange(l, &[5, 1, 0, 4, 1, 0, 1, 127, 0, 0, 1, 0, 80]),
            reply(1),
            "request version 04"
        );
    }
    // Refused by the agent itself, not by a server.
    d.wait_log(&[
        "via=socks5",
        "end=rejected: unsupported SOCKS5 command 0x02",
    ]);
    d.wait_log(&["end=rejected: bad SOCKS5 request: AddressType(5)"]);

    // Truncated at every offset, then EOF: a clean close, never a reply.
    let echo = sink_then_echo("127.0.0.1:0");
    let mut full = vec![5, 1, 0];
    socks5::write_connect(&mut full, &Addr::Domain(b"localhost".to_vec(), echo.port()));
    for l in [socks_l, mixed_l] {
        for k in 0..full.len() {
            let got = raw_exchange(l, &full[..k]);
            let want: &[u8] = if k >= 3 { &[5, 0] } else { &[] };
            assert_eq!(got, want, "truncated after {k} bytes");
        }
    }
    d.wait_log(&["end=rejected: closed during handshake"]);

    // HTTP listeners (and the mixed one when the first byte is not 05).
    for l in [http_l, mixed_l] {
        let big = format!(
            "GET http://127.0.0.1:1/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9000)
        );
        for (req, want) in [
            (&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], "400"),
            (b"NOT A REQUEST\r\n\r\n", "400"),
            (b"GET / HTTP/9.9\r\n\r\n", "400"),
            (b"GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
            (b"GET ftp://x/ HTTP/1.1\r\n\r\n", "400"),
            (b"GET http:///nohost HTTP/1.1\r\n\r\n", "400"),
            (b"CONNECT host-without-port HTTP/1.1\r\n\r\n", "400"),
            (b"CONNECT [::1] HTTP/1.1\r\n\r\n", "400"),
            (b"CONNECT localhost:99999 HTTP/1.1\r\n\r\n", "400"),
            (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
            (big.as_bytes(), "400"),
        ] {
            let got = raw_exchange(l, req);
            assert_eq!(
                status_of(&got),
                want,
                "{:?}",
                String::from_utf8_lossy(&req[..req.len().min(60)])
            );
        }
        // A truncated head, then EOF: closed without an answer.
        assert_eq!(raw_exchange(l, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n"), b"");
    }

    // Silent or stalled clients are dropped at the handshake deadline.
    let t = Instant::now();
    let stalled: Vec<TcpStream> = [
        (socks_l, &b""[..]),
        (socks_l, &[5, 1][..]),
        (http_l, b"CONNECT 127.0.0.1:1 HTT"),
        (mixed_l, b""),
    ]
    .iter()
    .map(|(l, b)| {
        let mut s = dial(*l);
        s.write_all(b).unwrap();
        s
    })
    .collect();
    for mut s in stalled {
        let got = read_to_end(&mut s);
        assert!(got.is_empty(), "{got:02x?}");
    }
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    d.wait_log(&["end=rejected: handshake timed out"]);

    // Still serving, on every listener.
    d.assert_alive();
    socks_echo_ok(socks_l, b"still serving");
    socks_echo_ok(mixed_l, b"still serving");
    let (h, _) = http_connect(http_l, &echo.to_string(), "", b"");
    assert_eq!(h.second, "200");
}

#[test]
fn non_socks_bytes_on_the_socks5_port_are_just_closed() {
    let d = simple_agent(closed_port(), "  pool: {size: 0}\n");
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[4, 1, 0, 80, 127, 0, 0, 1, 0],
        &[0],
    ] {
        assert_eq!(raw_exchange(d.addrs[0], junk), b"", "{junk:02x?}");
    }
}
