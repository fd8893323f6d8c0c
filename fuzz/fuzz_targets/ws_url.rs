//! Server URLs (proto::proxy::parse_ws_url): any text; a parsed URL written
//! back as `scheme://host:port/path` parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websocks::proto::proxy;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(u) = proxy::parse_ws_url(s) else {
        return;
    };
    assert!(u.path.starts_with('/'));
    let scheme = if u.tls { "wss" } else { "ws" };
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    let again = format!("{scheme}://{host}:{}{}", u.port, u.path);
    assert_eq!(proxy::parse_ws_url(&again), Ok(u), "{again}");
});
