//! HTTP proxy requests as the agent's HTTP listener receives them
//! (RFC 9110 section 9.3.6 CONNECT, RFC 9112 section 3.2.2 absolute-form),
//! and `ws://` URLs for the agent's servers.

use super::http::Head;
use super::socks5::Addr;

/// The answer to a CONNECT once the destination has answered (RFC 9110
/// section 9.3.6: a 2xx, no body); the tunnel starts right after it.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

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

/// `host` when it is a plain `host:port`: a name of letters, digits, `.`
/// and `-`, an IPv4 literal or a bracketed IPv6 literal, and a decimal
/// port. Such a value can be written into a PAC file's JavaScript string as
/// it is; anything else (quotes, backslashes, `</script>`) cannot.
pub fn plain_authority(host: &str) -> Option<&str> {
    let (name, port) = host.rsplit_once(':')?;
    let port_ok = (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok();
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            (1..=253).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    (port_ok && name_ok).then_some(host)
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
    // Named hop-by-hop headers are removed too (RFC 9110 7.6.1), except the
    // body's framing: the body is forwarded as received, so the origin must
    // read its end where the agent did (`Connection: Transfer-Encoding`
    // would otherwise turn a chunked body into a request of its own).
    let named: Vec<String> = head
        .all("Connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| t != "content-length" && t != "transfer-encoding")
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

/// How a forwarded request's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes: the `Content-Length`, or 0 when the request
    /// has neither `Content-Length` nor `Transfer-Encoding` (rule 6).
    Length(u64),
    /// The chunked coding, up to the last chunk and the trailer section's
    /// empty line (rule 4).
    Chunked,
}

/// Why a request's body has no single, unambiguous end. A proxy that
/// guessed would let the origin read the boundary differently: request
/// smuggling (RFC 9112 section 11.2). Each is answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 section 6.1:
    /// "ought to be handled as an error").
    Both,
    /// More than one `Content-Length` field, or a list in one, even of
    /// equal values (section 6.3 rule 5 allows refusing them).
    DuplicateLength,
    /// A `Content-Length` that is not 1*DIGIT fitting 64 bits (a sign,
    /// hex, inner blanks).
    BadLength,
    /// A `Transfer-Encoding` whose final coding is not `chunked`, that
    /// names `chunked` twice, or has an empty element (section 6.3 rule 4:
    /// the length of such a request cannot be determined).
    BadCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request, whose framing RFC 9112
    /// section 6.1 says to treat as faulty.
    Http10Coding,
}

/// The body framing of a request head, or why it is ambiguous.
pub fn body_framing(head: &Head) -> Result<Framing, FramingError> {
    let lengths = head.count("Content-Length");
    let codings = head.count("Transfer-Encoding");
    if lengths > 0 && codings > 0 {
        return Err(FramingError::Both);
    }
    if codings > 0 {
        if head.third == "HTTP/1.0" {
            return Err(FramingError::Http10Coding);
        }
        // All fields of the name are one list (RFC 9110 section 5.3).
        let list: Vec<String> = head
            .all("Transfer-Encoding")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim_matches([' ', '\t']).to_ascii_lowercase())
            .collect();
        let chunked = list.iter().filter(|t| *t == "chunked").count();
        let last_chunked = list.last().is_some_and(|t| t == "chunked");
        if chunked != 1 || !last_chunked || list.iter().any(String::is_empty) {
            return Err(FramingError::BadCoding);
        }
        return Ok(Framing::Chunked);
    }
    let Some(value) = head.one("Content-Length") else {
        return match lengths {
            0 => Ok(Framing::Length(0)),
            _ => Err(FramingError::DuplicateLength),
        };
    };
    if value.contains(',') {
        return Err(FramingError::DuplicateLength);
    }
    // `u64::from_str` takes a leading `+`: check the digits first.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FramingError::BadLength);
    }
    value
        .parse()
        .map(Framing::Length)
        .map_err(|_| FramingError::BadLength)
}

/// Largest chunk extension, and largest trailer section, accepted: a
/// client may not stream metadata without end (compare CVE-2024-22019).
pub const MAX_CHUNK_META: usize = 8 * 1024;

/// Why a chunked body is malformed (RFC 9112 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk size that is not 1 to 16 hex digits, or is followed by
    /// something other than `;` or CRLF.
    Size,
    /// A line not ended by CRLF: a bare LF, a CR not followed by LF, or
    /// chunk data not followed by CRLF.
    LineEnd,
    /// A chunk extension or the trailer section beyond [`MAX_CHUNK_META`].
    TooLong,
}

/// Where a [`ChunkedBody`] is in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In the hex chunk size; how many digits so far, and their value.
    Size { digits: u8, size: u64 },
    /// In a chunk extension, after `;`, up to CR.
    Ext { size: u64 },
    /// After the size line's CR: LF must follow.
    SizeLf { size: u64 },
    /// In chunk data: this many bytes to go.
    Data { left: u64 },
    /// After chunk data: CR must follow.
    DataCr,
    /// After chunk data and CR: LF must follow.
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    LineStart,
    /// In a trailer field line, up to CR.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final empty line's CR.
    EndLf,
    /// The body has ended.
    Done,
    /// The body was malformed; it stays so.
    Failed(ChunkError),
}

/// A streaming scanner for a chunked body (RFC 9112 section 7.1): fed any
/// slices of the bytes that follow the head, it says how many belong to
/// the body. It decides framing only; data is not decoded.
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// last-chunk   = 1*("0") [ chunk-ext ] CRLF
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedBody {
    state: ChunkState,
    /// Bytes of the current extension, or of the trailer section so far.
    meta: usize,
}

impl Default for ChunkedBody {
    fn default() -> Self {
        Self::new()
    }
}

/// What a fed slice held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// All of it is body, and the body goes on.
    More,
    /// The body ended after this many bytes of it; the rest is not body.
    End(usize),
}

impl ChunkedBody {
    pub fn new() -> Self {
        ChunkedBody {
            state: ChunkState::Size { digits: 0, size: 0 },
            meta: 0,
        }
    }

    /// Feeds the next bytes. After an error the scanner stays failed.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Scan, ChunkError> {
        use ChunkState as S;
        if let S::Failed(e) = self.state {
            return Err(e);
        }
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                S::Done => return Ok(Scan::End(i)),
                S::Failed(e) => return Err(e),
                S::Data { left } => {
                    // Data is skipped whole, not byte by byte.
                    let take = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        S::DataCr
                    } else {
                        S::Data { left }
                    };
                    continue;
                }
                S::Size { digits, size } => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => S::Size {
                        digits: digits + 1,
                        size: size << 4 | u64::from(d),
                    },
                    None if digits > 0 && b == b';' => {
                        self.meta = 0;
                        S::Ext { size }
                    }
                    None if digits > 0 && b == b'\r' => S::SizeLf { size },
                    None if digits > 0 && b == b'\n' => return self.fail(ChunkError::LineEnd),
                    _ => return self.fail(ChunkError::Size),
                },
                S::Ext { size } => match b {
                    b'\r' => S::SizeLf { size },
                    b'\n' => return self.fail(ChunkError::LineEnd),
                    _ if self.meta >= MAX_CHUNK_META => return self.fail(ChunkError::TooLong),
                    _ => {
                        self.meta += 1;
                        S::Ext { size }
                    }
                },
                S::SizeLf { size } => match b {
                    b'\n' if size == 0 => {
                        self.meta = 0;
                        S::LineStart
                    }
                    b'\n' => S::Data { left: size },
                    _ => return self.fail(ChunkError::LineEnd),
                },
                S::DataCr => match b {
                    b'\r' => S::DataLf,
                    _ => return self.fail(ChunkError::LineEnd),
                },
                S::DataLf => match b {
                    b'\n' => S::Size { digits: 0, size: 0 },
                    _ => return self.fail(ChunkError::LineEnd),
                },
                S::LineStart | S::Trailer | S::TrailerLf if self.meta >= MAX_CHUNK_META => {
                    return self.fail(ChunkError::TooLong);
                }
                S::LineStart => {
                    self.meta += 1;
                    match b {
                        b'\r' => S::EndLf,
                        b'\n' => return self.fail(ChunkError::LineEnd),
                        _ => S::Trailer,
                    }
                }
                S::Trailer => {
                    self.meta += 1;
                    match b {
                        b'\r' => S::TrailerLf,
                        b'\n' => return self.fail(ChunkError::LineEnd),
                        _ => S::Trailer,
                    }
                }
                S::TrailerLf => {
                    self.meta += 1;
                    match b {
                        b'\n' => S::LineStart,
                        _ => return self.fail(ChunkError::LineEnd),
                    }
                }
                S::EndLf => match b {
                    b'\n' => {
                        self.state = S::Done;
                        return Ok(Scan::End(i + 1));
                    }
                    _ => return self.fail(ChunkError::LineEnd),
                },
            };
            i += 1;
        }
        Ok(match self.state {
            S::Done => Scan::End(0),
            _ => Scan::More,
        })
    }

    fn fail(&mut self, e: ChunkError) -> Result<Scan, ChunkError> {
        self.state = ChunkState::Failed(e);
        Err(e)
    }
}

impl ChunkedBody {
    /// True once the whole body, trailers included, has been fed.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// A forwarded request's body in progress: which of the client's next
/// bytes still belong to it. Nothing after its end may reach the origin: it
/// would be a request the origin reads but the proxy never saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// This many bytes to go.
    Length(u64),
    Chunked(ChunkedBody),
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        match framing {
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(ChunkedBody::new()),
        }
    }

    /// Feeds the client's next bytes; see [`ChunkedBody::feed`].
    pub fn feed(&mut self, buf: &[u8]) -> Result<Scan, ChunkError> {
        match self {
            Body::Length(left) => {
                let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                Ok(match *left {
                    0 => Scan::End(take),
                    _ => Scan::More,
                })
            }
            Body::Chunked(c) => c.feed(buf),
        }
    }

    /// True once the whole body has been fed.
    pub fn done(&self) -> bool {
        match self {
            Body::Length(left) => *left == 0,
            Body::Chunked(c) => c.done(),
        }
    }
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

    fn framing(headers: &str) -> Result<Framing, FramingError> {
        body_framing(&parse(&format!(
            "POST http://x/ HTTP/1.1\r\nHost: x\r\n{headers}\r\n"
        )))
    }

    #[test]
    fn body_framing_follows_rfc9112_6_3() {
        use FramingError::*;
        let cases: &[(&str, Result<Framing, FramingError>)] = &[
            ("", Ok(Framing::Length(0))),
            ("Content-Length: 0\r\n", Ok(Framing::Length(0))),
            ("Content-Length: 5\r\n", Ok(Framing::Length(5))),
            ("content-length:  007 \r\n", Ok(Framing::Length(7))),
            (
                "Content-Length: 18446744073709551615\r\n",
                Ok(Framing::Length(u64::MAX)),
            ),
            ("Content-Length: 18446744073709551616\r\n", Err(BadLength)),
            ("Content-Length: +5\r\n", Err(BadLength)),
            ("Content-Length: -1\r\n", Err(BadLength)),
            ("Content-Length: 0x5\r\n", Err(BadLength)),
            ("Content-Length: 1 2\r\n", Err(BadLength)),
            ("Content-Length:\r\n", Err(BadLength)),
            ("Content-Length: 5\u{b2}\r\n", Err(BadLength)),
            ("Content-Length: 5, 5\r\n", Err(DuplicateLength)),
            (
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                Err(DuplicateLength),
            ),
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                Err(DuplicateLength),
            ),
            ("Transfer-Encoding: chunked\r\n", Ok(Framing::Chunked)),
            ("Transfer-Encoding: CHUNKED\r\n", Ok(Framing::Chunked)),
            ("Transfer-Encoding: gzip, chunked\r\n", Ok(Framing::Chunked)),
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                Ok(Framing::Chunked),
            ),
            ("Transfer-Encoding: xchunked\r\n", Err(BadCoding)),
            ("Transfer-Encoding: chunked, identity\r\n", Err(BadCoding)),
            ("Transfer-Encoding: identity\r\n", Err(BadCoding)),
            ("Transfer-Encoding:\r\n", Err(BadCoding)),
            ("Transfer-Encoding: chunked, chunked\r\n", Err(BadCoding)),
            ("Transfer-Encoding: , chunked\r\n", Err(BadCoding)),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
                Err(BadCoding),
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n",
                Err(BadCoding),
            ),
            ("Transfer-Encoding: \"chunked\"\r\n", Err(BadCoding)),
            (
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                Err(Both),
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
                Err(Both),
            ),
            ("Transfer-Encoding: x\r\nContent-Length: +6\r\n", Err(Both)),
        ];
        for (headers, want) in cases {
            assert_eq!(framing(headers), *want, "{headers:?}");
        }
        let h = parse("POST http://x/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(body_framing(&h), Err(Http10Coding));
        let h = parse("POST http://x/ HTTP/1.0\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(body_framing(&h), Ok(Framing::Length(3)));
    }

    /// Feeds `pieces` in order; the body's end as an offset into their
    /// concatenation, `None` when it has not ended.
    fn scan(pieces: &[&[u8]]) -> Result<Option<usize>, ChunkError> {
        let mut c = ChunkedBody::new();
        let mut at = 0;
        for p in pieces {
            match c.feed(p)? {
                Scan::More => at += p.len(),
                Scan::End(n) => {
                    assert!(c.done());
                    return Ok(Some(at + n));
                }
            }
        }
        assert!(!c.done());
        Ok(None)
    }

    const VALID: &[&[u8]] = &[
        b"0\r\n\r\n",
        b"000\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"5;name=value\r\nhello\r\n0;last\r\n\r\n",
        b"A\r\n0123456789\r\na\r\n\r\n\r\n\r\n\r\n\r\n\r\n0\r\n\r\n",
        b"3\r\n\r\n\n\r\n0\r\nX-Trailer: 1\r\nY: \"2\"\r\n\r\n",
        b"0000000000000001\r\nx\r\n0\r\n\r\n",
    ];

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let next = b"GET http://other/ HTTP/1.1\r\n\r\n";
        for body in VALID {
            let mut msg = body.to_vec();
            msg.extend_from_slice(next);
            let want = Ok(Some(body.len()));
            assert_eq!(scan(&[&msg]), want, "{:?}", String::from_utf8_lossy(body));
            // One byte at a time.
            let bytes: Vec<&[u8]> = msg.chunks(1).collect();
            assert_eq!(scan(&bytes), want);
            // Every split in two, and every truncation.
            for i in 0..=msg.len() {
                assert_eq!(scan(&[&msg[..i], &msg[i..]]), want, "split at {i}");
                if i < body.len() {
                    assert_eq!(scan(&[&msg[..i]]), Ok(None), "truncated at {i}");
                }
            }
            // Fed again after the end: nothing more is body.
            let mut c = ChunkedBody::new();
            assert_eq!(c.feed(body), Ok(Scan::End(body.len())));
            assert_eq!(c.feed(next), Ok(Scan::End(0)));
            assert_eq!(c.feed(b""), Ok(Scan::End(0)));
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        use ChunkError::*;
        let long_ext = [
            &b"1;"[..],
            &[b'x'; MAX_CHUNK_META + 1],
            b"\r\nx\r\n0\r\n\r\n",
        ]
        .concat();
        let long_trailer = [&b"0\r\nX: "[..], &[b'x'; MAX_CHUNK_META], b"\r\n\r\n"].concat();
        let cases: &[(&[u8], ChunkError)] = &[
            (b"\r\n", Size),
            (b"g\r\n", Size),
            (b" 5\r\nhello\r\n", Size),
            (b"5 \r\nhello\r\n", Size),
            (b"+5\r\nhello\r\n", Size),
            (b"0x5\r\nhello\r\n", Size),
            (b"-1\r\n", Size),
            (b"00000000000000001\r\nx\r\n", Size),
            (b"5\nhello\r\n0\r\n\r\n", LineEnd),
            (b"5;x\nhello\r\n", LineEnd),
            (b"5\rhello\r\n", LineEnd),
            (b"5\r\nhello\n0\r\n\r\n", LineEnd),
            (b"5\r\nhelloX\r\n", LineEnd),
            (b"5\r\nhello\r\r", LineEnd),
            (b"0\r\n\n", LineEnd),
            (b"0\r\nX: 1\n\r\n", LineEnd),
            (b"0\r\nX: 1\r\r\n", LineEnd),
            (b"0\r\n\r\r", LineEnd),
            (&long_ext, TooLong),
            (&long_trailer, TooLong),
        ];
        for (msg, want) in cases {
            let what = String::from_utf8_lossy(&msg[..msg.len().min(40)]);
            assert_eq!(scan(&[msg]), Err(*want), "{what:?}");
            let bytes: Vec<&[u8]> = msg.chunks(1).collect();
            assert_eq!(scan(&bytes), Err(*want), "{what:?} byte by byte");
            // A failed scanner stays failed.
            let mut c = ChunkedBody::new();
            assert_eq!(c.feed(msg), Err(*want));
            assert_eq!(c.feed(b"0\r\n\r\n"), Err(*want));
        }
        // The caps are inclusive.
        let ext = [
            &b"1;"[..],
            &[b'x'; MAX_CHUNK_META - 1],
            b"\r\nx\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(scan(&[&ext]), Ok(Some(ext.len())));
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut b = Body::new(Framing::Length(0));
        assert!(b.done());
        assert_eq!(b.feed(b"GET"), Ok(Scan::End(0)));
        let mut b = Body::new(Framing::Length(5));
        assert_eq!(b.feed(b""), Ok(Scan::More));
        assert_eq!(b.feed(b"hel"), Ok(Scan::More));
        assert!(!b.done());
        assert_eq!(b.feed(b"loGET"), Ok(Scan::End(2)));
        assert!(b.done());
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(b.feed(b"0\r\n\r\nGET"), Ok(Scan::End(5)));
        assert!(b.done());
    }

    #[test]
    fn connection_cannot_drop_the_framing_headers() {
        let h = parse(
            "POST http://x/ HTTP/1.1\r\nConnection: Transfer-Encoding, content-length, X\r\n\
             Transfer-Encoding: chunked\r\nX: 1\r\n\r\n",
        );
        let Ok(ProxyRequest::Forward { head, .. }) = interpret(&h) else {
            panic!()
        };
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let h = parse(
            "POST http://x/ HTTP/1.1\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\n",
        );
        let Ok(ProxyRequest::Forward { head, .. }) = interpret(&h) else {
            panic!()
        };
        assert!(head.windows(19).any(|w| w == b"Content-Length: 2\r\n"));
    }

    #[test]
    fn plain_authorities() {
        for ok in [
            "localhost:8118",
            "127.0.0.1:1",
            "proxy.example-1.net:65535",
            "[::1]:8118",
            "[2001:db8::1]:80",
        ] {
            assert_eq!(plain_authority(ok), Some(ok));
        }
        for bad in [
            "",
            "localhost",
            "localhost:",
            ":80",
            "x\":80",
            "x:80\"; return \"DIRECT\"; var y=\"",
            "x\"; return \"DIRECT\"; var y=\":80",
            "a\\b:80",
            "</script>:80",
            "a b:80",
            "a_b:80",
            "x:+80",
            "x:65536",
            "x:080000",
            "[::1]",
            "::1:80",
            "[::1%lo]:80",
            "[x]:80",
            "[::1]]:80",
            "\u{e9}:80",
        ] {
            assert_eq!(plain_authority(bad), None, "{bad:?}");
        }
        assert_eq!(plain_authority(&format!("{}:80", "a".repeat(254))), None);
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
