//! `check_upgrade` on parsed request heads (proto::ws): an accepted upgrade
//! has a 16-byte key, and our 101 for it parses back with the right
//! `Sec-WebSocket-Accept`; the agent's own upgrade request for a key made
//! from fuzz bytes passes the server's check.
#![no_main]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use websocks::proto::Parse;
use websocks::proto::http;
use websocks::proto::ws;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Done(head, _)) = http::parse_request(data) {
        if let Ok(up) = ws::check_upgrade(&head) {
            assert_eq!(STANDARD.decode(&up.key).map(|k| k.len()), Ok(16));
            let mut out = Vec::new();
            let options: &[&str] = if up.options { &[ws::PIPELINING] } else { &[] };
            ws::write_switching(&mut out, &up.key, options);
            let Ok(Parse::Done(r, used)) = common::prefixes(&out, http::parse_response) else {
                panic!("our own 101 does not parse");
            };
            assert_eq!(used, out.len());
            assert_eq!(r.second, "101");
            assert_eq!(
                r.one("Sec-WebSocket-Accept"),
                Some(ws::accept(&up.key).as_str())
            );
            assert_eq!(r.has_token(ws::OPTIONS, ws::PIPELINING), up.options);
        }
    }

    let mut key = [0u8; 16];
    let n = data.len().min(16);
    key[..n].copy_from_slice(&data[..n]);
    let key = ws::key_from(key);
    let mut req = Vec::new();
    // Our options header, when the first byte is odd.
    let with = data.first().is_some_and(|b| b & 1 == 1);
    let options: &[&str] = if with { &[ws::DATA_WITH_REPLY] } else { &[] };
    http::write_upgrade_request(&mut req, "/", "example.com:80", &key, "Basic eDp5", options);
    let Ok(Parse::Done(head, _)) = http::parse_request(&req) else {
        panic!("our own upgrade request does not parse");
    };
    let up = ws::check_upgrade(&head).expect("our own upgrade request");
    assert_eq!(up.key, key);
    assert!(up.socks5_offered);
    assert_eq!(up.data_with_reply, with);
    assert_eq!(up.authorization.as_deref(), Some("Basic eDp5"));
});
