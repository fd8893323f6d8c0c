//! Destination rules (acl::Rule's FromStr, through websocks::fuzz): any
//! text; surrounding blanks do not change the verdict; a rule written from fuzz numbers
//! (`*:A-B`, `a.b.c.d/len:A-B`) parses and matches exactly the addresses
//! and ports it names.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use websocks::fuzz::parse_rule;

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, rest @ ..] = data else {
        return;
    };
    let net = Ipv4Addr::new(*a, *b, *c, *d);
    let ip = Ipv4Addr::new(*e, *f, *g, *h);
    let lo = u16::from_be_bytes([*i, *j]);
    let hi = u16::from_be_bytes([*k, *l]);
    let len = *m % 33;
    let port = lo.wrapping_add(u16::from(*m));
    let addr = SocketAddr::from((ip, port));

    if let Ok(s) = std::str::from_utf8(rest) {
        // Blanks around do not change the verdict (the message quotes the
        // text as given, so only the verdict is compared).
        let r = parse_rule(s, addr).ok();
        assert_eq!(parse_rule(&format!(" {s}\t"), addr).ok(), r);
    }

    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let in_ports = (lo..=hi).contains(&port);
    assert_eq!(parse_rule(&format!("*:{lo}-{hi}"), addr), Ok(in_ports));
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let in_net = u32::from(net) & mask == u32::from(ip) & mask;
    assert_eq!(
        parse_rule(&format!("{net}/{len}:{lo}-{hi}"), addr),
        Ok(in_net && in_ports)
    );
    assert_eq!(parse_rule(&format!("{net}/{len}"), addr), Ok(in_net));
    let mapped = format!("[::ffff:{net}/{}]:{lo}-{hi}", u32::from(len) + 96);
    assert_eq!(
        parse_rule(&mapped, addr),
        Ok(in_net && in_ports),
        "{mapped}"
    );
});
