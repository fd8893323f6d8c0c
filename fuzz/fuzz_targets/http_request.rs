//! HTTP request heads (proto::http::parse_request): prefixes, `used`, and
//! a parse of `write_upgrade_request` round-trips its fields.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use websocks::proto::Parse;
use websocks::proto::http::{self, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let _ = common::prefixes(data, http::parse_request);
    roundtrip(data);
});

fn roundtrip(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let (Some(path), Some(host), Some(key), Some(auth)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return;
    }
    if ![host, key, auth].iter().all(|v| common::clean_value(v)) {
        return;
    }
    let mut out = Vec::new();
    http::write_upgrade_request(&mut out, path, host, key, auth, &[]);
    if out.len() > MAX_HEAD {
        return;
    }
    let Ok(Parse::Done(h, used)) = common::prefixes(&out, http::parse_request) else {
        panic!("our own upgrade request does not parse: {out:?}");
    };
    assert_eq!(used, out.len());
    assert_eq!((h.first.as_str(), h.second.as_str()), ("GET", path));
    assert_eq!(h.third, "HTTP/1.1");
    assert_eq!(h.one("Host"), Some(host));
    assert_eq!(h.one("Sec-WebSocket-Key"), Some(key));
    assert_eq!(h.one("Authorization"), Some(auth));
    assert_eq!(h.headers.len(), 7);
}
