//! The agent's HTTP proxy requests (proto::proxy over proto::http): the head
//! (prefixes, `used`), `interpret` (CONNECT, absolute-form, local paths),
//! and the body's framing. A forwarded head parses back with one `Host`
//! (the URL's authority), no hop-by-hop field, `Connection: close` and the
//! same body framing as the client's (no smuggling by the rewrite); the
//! body's end is found at the same byte whether it arrives at once or in
//! pieces.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use websocks::proto::Parse;
use websocks::proto::http::{self, MAX_HEAD};
use websocks::proto::proxy::{self, Body, ChunkError, ProxyRequest, Scan};

fuzz_target!(|data: &[u8]| {
    let (ctl, msg) = common::control(data);
    let Ok(Parse::Done(head, used)) = common::prefixes(msg, http::parse_request) else {
        return;
    };
    let framing = proxy::body_framing(&head);
    match proxy::interpret(&head) {
        Ok(ProxyRequest::Connect(addr)) => {
            assert_eq!(head.first, "CONNECT");
            let _ = addr.to_string();
        }
        Ok(ProxyRequest::Local { path }) => assert!(path.starts_with('/')),
        Ok(ProxyRequest::Forward { addr, head: out }) => {
            let _ = addr.to_string();
            if out.len() <= MAX_HEAD {
                forwarded(&head, &out, framing);
            }
        }
        Err(_) => {}
    }
    let Ok(framing) = framing else { return };
    let body = &msg[used..];
    let whole = feed(Body::new(framing), &[body]);
    let split = feed(
        Body::new(framing),
        &common::pieces(body, &common::cuts(ctl, body.len())),
    );
    assert_eq!(whole, split);
});

fn forwarded(
    client: &http::Head,
    out: &[u8],
    framing: Result<proxy::Framing, proxy::FramingError>,
) {
    let r = http::parse_request(out);
    let Ok(Parse::Done(h, used)) = r else {
        panic!("the forwarded head does not parse: {r:?} {out:?}");
    };
    assert_eq!(used, out.len());
    assert_eq!((&h.first, &h.third), (&client.first, &client.third));
    assert!(h.second.starts_with('/'));
    assert_eq!(h.count("Host"), 1);
    for name in [
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(h.count(name), 0, "{name} forwarded");
    }
    assert_eq!(h.all("Connection").collect::<Vec<_>>(), ["close"]);
    assert_eq!(proxy::body_framing(&h), framing);
}

/// Feeds `pieces`: where the body ended (from its start), `None` if it goes
/// on, or the error.
fn feed(mut body: Body, pieces: &[&[u8]]) -> Result<Option<usize>, ChunkError> {
    let mut at = 0;
    for p in pieces {
        match body.feed(p)? {
            Scan::More => {
                assert!(!body.done());
                at += p.len();
            }
            Scan::End(n) => {
                assert!(n <= p.len());
                assert!(body.done());
                return Ok(Some(at + n));
            }
        }
    }
    Ok(None)
}
