//! What a SOCKS5 client (the agent, from its server) reads: the method
//! choice and the reply (proto::socks5). Prefixes and `used`; a reply
//! re-encoded with `write_reply` parses back to the same code and bound
//! address; reply codes round-trip through `Reply`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use websocks::proto::Parse;
use websocks::proto::socks5::{self, Reply};

fuzz_target!(|data: &[u8]| {
    let _ = common::prefixes(data, socks5::parse_choice);
    let mut rest = data;
    if let Ok(Parse::Done(_, used)) = socks5::parse_choice(rest) {
        rest = &rest[used..];
    }
    for buf in [data, rest] {
        let Ok(Parse::Done(r, used)) = common::prefixes(buf, socks5::parse_reply) else {
            continue;
        };
        assert_eq!(r.reply().code(), r.rep);
        assert_eq!(Reply::from(r.rep), r.reply());
        let mut out = Vec::new();
        socks5::write_reply(&mut out, r.reply(), &r.bound);
        assert_eq!(out.len(), used);
        assert_eq!(socks5::parse_reply(&out), Ok(Parse::Done(r.clone(), used)));
        let mut fail = Vec::new();
        socks5::write_failure(&mut fail, r.reply());
        let Ok(Parse::Done(f, n)) = socks5::parse_reply(&fail) else {
            panic!("our own failure reply");
        };
        assert_eq!((f.rep, n), (r.rep, 10));
        assert_eq!(f.bound, socks5::Addr::Ip(socks5::UNSPECIFIED));
    }
});
