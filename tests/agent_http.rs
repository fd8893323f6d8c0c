//! The agent's HTTP proxy beyond CONNECT: absolute-form forwarding
//! rewritten for the origin (RFC 9112), and the PAC file on HTTP listeners.
//! All on loopback; every socket operation is bounded by a timeout (helpers
//! in `common/agent.rs`).

mod common;

use common::agent::*;
use common::*;

/// Forwarding details: origin-form targets, the URL's authority as Host,
/// userinfo never forwarded.
#[test]
fn forwarding_rewrites_the_request_for_the_origin() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 0}\n");
    for (target, line) in [
        ("http://{A}", "GET / HTTP/1.1"),
        ("http://{A}?x=1", "GET /?x=1 HTTP/1.1"),
        ("HTTP://{A}/p/q?r", "GET /p/q?r HTTP/1.1"),
        ("http://user:pw@{A}/u", "GET /u HTTP/1.1"),
    ] {
        let o = origin("127.0.0.1:0");
        let target = target.replace("{A}", &o.addr.to_string());
        let (h, _, _, _) = http_exchange(
            d.addrs[1],
            format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes(),
        );
        assert_eq!(h.second, "200", "{target}");
        let seen = String::from_utf8(o.seen.lock().unwrap()[0].clone()).unwrap();
        assert!(
            seen.starts_with(&format!("{line}\r\n")),
            "{target}: {seen:?}"
        );
        assert!(
            seen.contains(&format!("\r\nHost: {}\r\n", o.addr)),
            "{seen:?}"
        );
        assert!(!seen.contains("user") && !seen.contains("pw"), "{seen:?}");
    }
}

/// RFC 9112 section 3.2.2: a proxy forwarding an absolute-form request MUST
/// generate Host from the request target, not forward the received one.
#[test]
fn forwarding_replaces_a_mismatched_host_header() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let d = simple_agent(server.addr(), "  pool: {size: 0}\n");
    let o = origin("127.0.0.1:0");
    let (h, _, _, _) = http_exchange(
        d.addrs[1],
        format!(
            "GET http://{}/ HTTP/1.1\r\nHost: other.example\r\n\r\n",
            o.addr
        )
        .as_bytes(),
    );
    assert_eq!(h.second, "200");
    let seen = String::from_utf8(o.seen.lock().unwrap()[0].clone()).unwrap();
    assert!(
        seen.contains(&format!("\r\nHost: {}\r\n", o.addr)),
        "{seen:?}"
    );
    assert!(!seen.contains("other.example"), "{seen:?}");
}

// ---------------------------------------------------------------- the PAC

#[test]
fn proxy_pac_is_served_on_http_listeners() {
    let d = simple_agent(closed_port(), "  pool: {size: 0}\n");
    for l in [d.addrs[1], d.addrs[2]] {
        let (h, body, _, _) = http_exchange(
            l,
            format!("GET /proxy.pac HTTP/1.1\r\nHost: {l}\r\n\r\n").as_bytes(),
        );
        assert_eq!(h.second, "200");
        assert!(
            h.all("Content-Type")
                .any(|v| v == "application/x-ns-proxy-autoconfig"),
            "{h:?}"
        );
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("FindProxyForURL"), "{body}");
        assert!(body.contains(&format!("return \"PROXY {l}\";")), "{body}");
        // As a browser configured with http://127.0.0.1:PORT/proxy.pac asks.
        let named = format!("127.0.0.1:{}", l.port());
        let (h, body, _, _) = http_exchange(
            l,
            format!("GET /proxy.pac HTTP/1.1\r\nHost: {named}\r\n\r\n").as_bytes(),
        );
        assert_eq!(h.second, "200");
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains(&format!("PROXY {named}"))
        );
        // Without a Host header: the address the client reached.
        let (h, body, _, _) = http_exchange(l, b"GET /proxy.pac HTTP/1.0\r\n\r\n");
        assert_eq!(h.second, "200");
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains(&format!("PROXY {l}"))
        );
        let (h, _, _, _) = http_exchange(l, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.second, "404");
    }
}

#[test]
fn proxy_pac_has_one_content_type() {
    let d = simple_agent(closed_port(), "  pool: {size: 0}\n");
    let l = d.addrs[1];
    let (h, _, _, _) = http_exchange(
        l,
        format!("GET /proxy.pac HTTP/1.1\r\nHost: {l}\r\n\r\n").as_bytes(),
    );
    assert_eq!(h.second, "200");
    assert_eq!(
        h.all("Content-Type").collect::<Vec<_>>(),
        ["application/x-ns-proxy-autoconfig"]
    );
}
