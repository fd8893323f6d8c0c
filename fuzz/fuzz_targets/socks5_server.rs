//! What a SOCKS5 server reads (proto::socks5): the greeting, the RFC 1929
//! username/password request and the request, each on the leftover of the
//! one before (a read may hold several steps). Prefixes and `used` for
//! each; re-encoding a parsed greeting, RFC 1929 request and CONNECT gives
//! back the bytes parsed (RSV aside).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use websocks::proto::Parse;
use websocks::proto::socks5::{self, Addr};

fuzz_target!(|data: &[u8]| {
    // Each parser on the whole input as well, whatever comes first.
    let _ = common::prefixes(data, socks5::parse_greeting);
    let _ = common::prefixes(data, socks5::parse_user_pass);
    request(data);

    // The steps in order, each on what the one before left.
    let mut rest = data;
    if let Ok(Parse::Done(g, used)) = socks5::parse_greeting(rest) {
        let mut out = Vec::new();
        socks5::write_greeting(&mut out, &g.methods);
        assert_eq!(out, &rest[..used]);
        rest = &rest[used..];
        if g.methods.contains(&socks5::METHOD_USER_PASS) {
            if let Ok(Parse::Done(up, used)) = common::prefixes(rest, socks5::parse_user_pass) {
                let mut out = vec![socks5::USER_PASS_VERSION, up.user.len() as u8];
                out.extend_from_slice(&up.user);
                out.push(up.pass.len() as u8);
                out.extend_from_slice(&up.pass);
                assert_eq!(out, &rest[..used]);
                rest = &rest[used..];
            }
        }
        request(rest);
    }
});

fn request(buf: &[u8]) {
    let Ok(Parse::Done(req, used)) = common::prefixes(buf, socks5::parse_request) else {
        return;
    };
    if let Addr::Domain(name, _) = &req.addr {
        assert!(!name.is_empty() && name.len() <= 255);
    }
    // Display escapes: one line of printable ASCII.
    let shown = req.addr.to_string();
    assert!(shown.bytes().all(|b| b.is_ascii_graphic()), "{shown:?}");

    let mut out = Vec::new();
    socks5::write_connect(&mut out, &req.addr);
    assert_eq!(out.len(), used);
    assert_eq!(out[3..], buf[3..used]);
    let again = socks5::parse_request(&out);
    assert_eq!(
        again,
        Ok(Parse::Done(
            socks5::Request {
                cmd: socks5::CMD_CONNECT,
                addr: req.addr
            },
            used
        ))
    );
}
