//! HTTP response heads (proto::http::parse_response): prefixes, `used`, and
//! a parse of `write_response` round-trips code, reason, headers and the
//! body's length.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use websocks::proto::Parse;
use websocks::proto::http::{self, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let _ = common::prefixes(data, http::parse_response);
    roundtrip(data);
});

fn roundtrip(data: &[u8]) {
    let [a, b, rest @ ..] = data else { return };
    let code = u16::from_be_bytes([*a, *b]) % 1000;
    let text = String::from_utf8_lossy(rest);
    let parts: Vec<&str> = text.split('\n').collect();
    let reason = parts[0];
    if reason.contains(['\r', '\n']) {
        return;
    }
    let pairs: Vec<(&str, &str)> = parts[1..]
        .chunks_exact(2)
        .take(4)
        .map(|p| (p[0], p[1]))
        .collect();
    let body = if parts.len() % 2 == 0 {
        parts[parts.len() - 1]
    } else {
        ""
    };
    for (n, v) in &pairs {
        let name_ok = !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !name_ok || !common::clean_value(v) {
            return;
        }
    }
    let mut out = Vec::new();
    http::write_response(&mut out, code, reason, &pairs, body);
    let head_len = out.len() - body.len();
    if head_len > MAX_HEAD {
        return;
    }
    let r = common::prefixes(&out, http::parse_response);
    if code < 100 {
        // Fewer than three digits: not a status line.
        assert_eq!(r, Err(http::HeadError::BadStartLine));
        return;
    }
    let Ok(Parse::Done(h, used)) = r else {
        panic!("our own response does not parse: {r:?} {out:?}");
    };
    assert_eq!(used, head_len);
    assert_eq!(h.second, code.to_string());
    assert_eq!(h.third, reason);
    assert_eq!(
        &h.headers[..pairs.len()],
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    );
    if code != 101 {
        assert_eq!(
            h.all("Content-Length").last(),
            Some(body.len().to_string().as_str())
        );
    }
}
