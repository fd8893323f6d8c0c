//! HTTP proxy requests as the agent's HTTP listener receives them
//! (RFC 9110 section 9.3.6 CONNECT, RFC 9112 section 3.2.2 absolute-form),
//! and `ws://` URLs for the agent's servers.

use super::http::Head;
use super::socks5::Addr;

/// What an HTTP proxy client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port HTTP/1.1`: a raw tunnel.
    Connect(Addr),
    /// `GET http://host[:port]/path HTTP/1.1`: forward one request. `head`
    /// is the request rewritten for the origin server: origin-form target,
    /// hop-by-hop proxy headers removed, `Connection: close`.
    Forward { addr: Addr, head: Vec<u8> },
    /// An origin-form request to the proxy itself (e.g. `/proxy.pac`).
    Local { path: String },
}

/// Why a request cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The target is not `host:port` (CONNECT) or an `http://` URL.
    BadTarget,
    /// An absolute URL with a scheme other than `http` (e.g. `https://` not
    /// through CONNECT, or `ftp://`).
    Scheme,
}

/// Splits `host:port`, `[v6]:port` or `host` (with `default_port`).
pub fn parse_authority(s: &str, default_port: Option<u16>) -> Option<Addr> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => default_port?,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        let ip: std::net::Ipv6Addr = h.parse().ok()?;
        return Some(Addr::Ip((ip, port).into()));
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (s, default_port?),
        }
    };
    if host.is_empty() || host.len() > 255 || host.contains(['/', '@', ' ', ':']) {
        return None;
    }
    Some(match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => Addr::Ip((ip, port).into()),
        Err(_) => Addr::Domain(host.as_bytes().to_vec(), port),
    })
}

/// Headers that belong to the client-proxy hop only (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Interprets a request head received by the HTTP listener.
pub fn interpret(head: &Head) -> Result<ProxyRequest, ProxyError> {
    if head.first == "CONNECT" {
        return parse_authority(&head.second, None)
            .map(ProxyRequest::Connect)
            .ok_or(ProxyError::BadTarget);
    }
    if head.second.starts_with('/') {
        return Ok(ProxyRequest::Local {
            path: head.second.clone(),
        });
    }
    let (scheme, rest) = head.second.split_once("://").ok_or(ProxyError::BadTarget)?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(ProxyError::Scheme);
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    // Userinfo in the URL is not forwarded (RFC 9110 4.2.4).
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let addr = parse_authority(authority, Some(80)).ok_or(ProxyError::BadTarget)?;
    // Named hop-by-hop headers are removed too (RFC 9110 7.6.1).
    let named: Vec<String> = head
        .all("Connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    // The Host header is the URL's authority (RFC 9112 section 3.2.2), whatever
    // the client sent.
    let mut out = format!(
        "{} {} {}\r\nHost: {authority}\r\n",
        head.first, path, head.third
    )
    .into_bytes();
    for (n, v) in &head.headers {
        let lower = n.to_ascii_lowercase();
        if lower == "host" || HOP_BY_HOP.contains(&lower.as_str()) || named.contains(&lower) {
            continue;
        }
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    // One request per tunnel: the origin closes after answering, so the
    // response needs no parsing here to find its end.
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(ProxyRequest::Forward { addr, head: out })
}

/// A `ws://host[:port][/path]` (or `wss://`) server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses a server URL; `Err` says why.
pub fn parse_ws_url(s: &str) -> Result<WsUrl, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("`{s}` is not a URL like ws://host:port/path"))?;
    let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "ws" => (false, 80),
        "wss" => (true, 443),
        _ => return Err(format!("`{s}`: the scheme must be ws:// or wss://")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(format!(
            "`{s}`: put the user and password in `user:` and `password:`, not the URL"
        ));
    }
    let addr = parse_authority(authority, Some(default_port))
        .ok_or_else(|| format!("`{s}`: bad host or port"))?;
    let host = match &addr {
        Addr::Ip(sa) => sa.ip().to_string(),
        Addr::Domain(d, _) => String::from_utf8_lossy(d).into_owned(),
    };
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{s}`: the path has spaces or control characters"));
    }
    Ok(WsUrl {
        tls,
        host,
        port: addr.port(),
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Parse, http};

    fn parse(req: &str) -> Head {
        match http::parse_request(req.as_bytes()).unwrap() {
            Parse::Done(h, _) => h,
            Parse::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn connect_targets() {
        let h = parse("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert_eq!(
            interpret(&h),
            Ok(ProxyRequest::Connect(Addr::Domain(
                b"example.com".to_vec(),
                443
            )))
        );
        let h = parse("CONNECT [::1]:22 HTTP/1.1\r\n\r\n");
        assert_eq!(
            interpret(&h),
            Ok(ProxyRequest::Connect(Addr::Ip("[::1]:22".parse().unwrap())))
        );
        let h = parse("CONNECT 10.0.0.1:22 HTTP/1.1\r\n\r\n");
        assert_eq!(
            interpret(&h),
            Ok(ProxyRequest::Connect(Addr::Ip(
                "10.0.0.1:22".parse().unwrap()
            )))
        );
        assert_eq!(
            interpret(&parse("CONNECT example.com HTTP/1.1\r\n\r\n")),
            Err(ProxyError::BadTarget)
        );
    }

    #[test]
    fn forward_rewrites_the_head() {
        let h = parse(
            "GET http://example.com:8080/a?b=1 HTTP/1.1\r\nHost: other.example\r\n\
             Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nAccept: */*\r\n\r\n",
        );
        let Ok(ProxyRequest::Forward { addr, head }) = interpret(&h) else {
            panic!()
        };
        assert_eq!(addr, Addr::Domain(b"example.com".to_vec(), 8080));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let h = parse("GET http://1.2.3.4 HTTP/1.0\r\n\r\n");
        let Ok(ProxyRequest::Forward { addr, head }) = interpret(&h) else {
            panic!()
        };
        assert_eq!(addr, Addr::Ip("1.2.3.4:80".parse().unwrap()));
        assert!(head.starts_with(b"GET / HTTP/1.0\r\nHost: 1.2.3.4\r\n"));
        assert_eq!(
            interpret(&parse("GET https://x/ HTTP/1.1\r\n\r\n")),
            Err(ProxyError::Scheme)
        );
        assert_eq!(
            interpret(&parse("GET /proxy.pac HTTP/1.1\r\n\r\n")),
            Ok(ProxyRequest::Local {
                path: "/proxy.pac".into()
            })
        );
    }

    #[test]
    fn ws_urls() {
        let u = parse_ws_url("ws://example.com/ws/x").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "example.com", 80, "/ws/x")
        );
        let u = parse_ws_url("wss://[::1]:8443").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "::1", 8443, "/")
        );
        assert!(parse_ws_url("http://x/").is_err());
        assert!(parse_ws_url("ws://u:p@x/").is_err());
        assert!(parse_ws_url("ws://x:99999/").is_err());
    }
}
