//! Local users on the agent's listeners: RFC 1929 for SOCKS5 and
//! `Proxy-Authorization: Basic` for HTTP. All on loopback; every socket
//! operation is bounded by a timeout (helpers in `common/agent.rs`).

mod common;

use std::io::Write;
use std::net::Shutdown;

use common::agent::*;
use common::*;
use websocks::proto::socks5::{self, Addr};

// ------------------------------------------------------------ local auth

fn user_pass(user: &[u8], pass: &[u8]) -> Vec<u8> {
    let mut v = vec![0x01, user.len() as u8];
    v.extend_from_slice(user);
    v.push(pass.len() as u8);
    v.extend_from_slice(pass);
    v
}

const BASIC_ME_PW: &str = "Proxy-Authorization: Basic bWU6cHc=\r\n"; // me:pw

#[test]
fn local_users_are_required_when_configured() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(
        server.addr(),
        "  users: [{name: me, password: pw}, {name: you, password: other}]\n",
    );
    let (socks_l, http_l, mixed_l) = (d.addrs[0], d.addrs[1], d.addrs[2]);
    let dest = sink_then_echo("127.0.0.1:0");

    for l in [socks_l, mixed_l] {
        // Method 02 and the right password: through.
        let mut s = dial(l);
        s.write_all(&[5, 2, 0, 2]).unwrap();
        assert_eq!(read_exact_after(&mut s, Vec::new(), 2), [5, 2]);
        s.write_all(&user_pass(b"me", b"pw")).unwrap();
        assert_eq!(read_exact_after(&mut s, Vec::new(), 2), [1, 0]);
        let mut req = Vec::new();
        socks5::write_connect(&mut req, &Addr::Ip(dest));
        req.extend_from_slice(b"authed");
        s.write_all(&req).unwrap();
        let (r, rest) = read_socks_reply(&mut s, Vec::new());
        assert_eq!((r.rep, rest.len()), (0, 0));
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), b"authed");
        // Wrong password, unknown user, another user's password: 01 01, close.
        for (u, p) in [
            (&b"me"[..], &b"wrong"[..]),
            (b"nobody", b"pw"),
            (b"me", b"other"),
            (b"", b""),
        ] {
            let mut s = dial(l);
            let mut out = vec![5, 1, 2];
            out.extend_from_slice(&user_pass(u, p));
            s.write_all(&out).unwrap();
            let got = read_to_end(&mut s);
            assert_eq!(got, [5, 2, 1, 1], "user {u:?} password {p:?}");
        }
        // Only no-auth offered: 05 ff and close.
        assert_eq!(raw_exchange(l, &[5, 1, 0]), [5, 0xff]);
    }
    d.wait_log(&["end=rejected: SOCKS5 username/password refused"]);
    d.wait_log(&["end=rejected: no acceptable SOCKS5 method offered"]);

    for l in [http_l, mixed_l] {
        let req = |auth: &str| format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n{auth}\r\n");
        for bad in [
            "",
            "Proxy-Authorization: Basic bWU6d3Jvbmc=\r\n", // me:wrong
            "Proxy-Authorization: Bearer bWU6cHc=\r\n",
            "Authorization: Basic bWU6cHc=\r\n",
        ] {
            let (h, _, _, _) = http_exchange(l, req(bad).as_bytes());
            assert_eq!(h.second, "407", "{bad:?}");
            assert_eq!(
                h.one("Proxy-Authenticate"),
                Some("Basic realm=\"websocks\""),
                "{bad:?}"
            );
        }
        let (h, mut s) = http_connect(l, &dest.to_string(), BASIC_ME_PW, b"");
        assert_eq!(h.second, "200");
        s.write_all(b"http authed").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), b"http authed");
        // Forwarding: the credential is for the proxy, never forwarded.
        let o = origin("127.0.0.1:0");
        let (h, body, _, _) = http_exchange(
            l,
            format!(
                "GET http://{}/auth HTTP/1.1\r\nHost: {}\r\n{BASIC_ME_PW}\r\n",
                o.addr, o.addr
            )
            .as_bytes(),
        );
        assert_eq!(h.second, "200");
        assert_eq!(body, b"path=/auth\n");
        let seen = String::from_utf8(o.seen.lock().unwrap()[0].clone()).unwrap();
        assert!(
            !seen.to_ascii_lowercase().contains("proxy-authorization"),
            "{seen}"
        );
        let (h, _, _, _) = http_exchange(
            l,
            format!("GET http://{}/auth HTTP/1.1\r\n\r\n", o.addr).as_bytes(),
        );
        assert_eq!(h.second, "407");
    }
}
