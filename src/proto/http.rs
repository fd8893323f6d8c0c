//! HTTP/1.1 heads: the client's upgrade request and the server's answer
//! (RFC 9112 message syntax, RFC 6455 section 4 opening handshake).
//!
//! Only the head is parsed; WebSocks never carries an HTTP body. The head is
//! capped at [`MAX_HEAD`] bytes. Header names are compared without regard to
//! case; repeated headers are kept in order so the caller can decide.

use super::Parse;

/// Largest request or response head accepted, terminator included.
pub const MAX_HEAD: usize = 8 * 1024;

/// Why a head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// No end of head within [`MAX_HEAD`] bytes.
    TooLarge,
    /// The first line is not `METHOD SP target SP HTTP/1.x` (or the status
    /// line is not `HTTP/1.x SP code ...`).
    BadStartLine,
    /// A header line without a valid name and colon, or a folded line.
    BadHeader,
}

/// A parsed head: start line parts and the header fields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request: the method. Response: the version, e.g. `HTTP/1.1`.
    pub first: String,
    /// Request: the request target. Response: the status code digits.
    pub second: String,
    /// Request: the version. Response: the reason phrase (may be empty).
    pub third: String,
    /// Header fields as (name, value), value trimmed of surrounding blanks.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// All values of header `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times header `name` occurs.
    pub fn count<'a>(&'a self, name: &'a str) -> usize {
        self.all(name).count()
    }

    /// The value of header `name` when it occurs exactly once.
    pub fn one<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let mut it = self.all(name);
        let first = it.next()?;
        match it.next() {
            Some(_) => None,
            None => Some(first),
        }
    }

    /// True when any value of `name`, read as a comma-separated list, holds
    /// `token` (case-insensitive), as RFC 9110 section 5.6.1 lists work.
    pub fn has_token<'a>(&'a self, name: &'a str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// RFC 9110 `tchar`: what a method or header name may be made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Finds the end of the head: the index just past the empty line. Accepts
/// CRLF and, leniently (RFC 9112 section 2.2), bare LF line ends.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        // The line just ended is empty if it is "\n" or "\r\n" at line start.
        let line_start = i;
        let line = &buf[line_start..nl];
        if (line.is_empty() || line == b"\r") && line_start > 0 {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    None
}

/// Splits a head into lines without their terminators.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// Early rejection: a request line whose first bytes cannot start
/// `METHOD SP`, so garbage is answered at once instead of after a timeout.
fn plausible_request_prefix(buf: &[u8]) -> bool {
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' {
            return i > 0;
        }
        if !is_tchar(b) {
            return false;
        }
    }
    true
}

fn parse_headers(
    mut it: impl Iterator<Item = Vec<u8>>,
) -> Result<Vec<(String, String)>, HeadError> {
    let mut headers = Vec::new();
    for line in it.by_ref() {
        if line.is_empty() {
            break;
        }
        // Obsolete line folding (RFC 9112 section 5.2) is refused.
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HeadError::BadHeader);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HeadError::BadHeader)?;
        let (name, rest) = line.split_at(colon);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HeadError::BadHeader);
        }
        let value = rest.get(1..).unwrap_or(&[]);
        if value.iter().any(|&b| b == 0 || b == b'\r') {
            return Err(HeadError::BadHeader);
        }
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_string();
        headers.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    Ok(headers)
}

fn parse_head(buf: &[u8], request: bool) -> Result<Parse<Head>, HeadError> {
    if request && !plausible_request_prefix(&buf[..buf.len().min(64)]) {
        return Err(HeadError::BadStartLine);
    }
    let end = match head_end(&buf[..buf.len().min(MAX_HEAD)]) {
        Some(end) => end,
        None if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        None => return Ok(Parse::Incomplete),
    };
    let mut it = lines(&buf[..end]).map(|l| l.to_vec());
    let start = it.next().unwrap_or_default();
    let start = std::str::from_utf8(&start).map_err(|_| HeadError::BadStartLine)?;
    let (first, second, third) = if request {
        let mut parts = start.split(' ');
        let (m, t, v) = (parts.next(), parts.next(), parts.next());
        match (m, t, v, parts.next()) {
            (Some(m), Some(t), Some(v), None)
                if !m.is_empty()
                    && m.bytes().all(is_tchar)
                    && !t.is_empty()
                    && t.bytes().all(|b| b.is_ascii_graphic())
                    && is_http1(v) =>
            {
                (m, t, v)
            }
            _ => return Err(HeadError::BadStartLine),
        }
    } else {
        let mut parts = start.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next().unwrap_or("")) {
            (Some(v), Some(code), reason)
                if is_http1(v) && code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (v, code, reason)
            }
            _ => return Err(HeadError::BadStartLine),
        }
    };
    let headers = parse_headers(it)?;
    Ok(Parse::Done(
        Head {
            first: first.to_string(),
            second: second.to_string(),
            third: third.to_string(),
            headers,
        },
        end,
    ))
}

fn is_http1(v: &str) -> bool {
    v == "HTTP/1.1" || v == "HTTP/1.0"
}

/// Parses a request head (`GET / HTTP/1.1` ...). `first` is the method,
/// `second` the target, `third` the version.
pub fn parse_request(buf: &[u8]) -> Result<Parse<Head>, HeadError> {
    parse_head(buf, true)
}

/// Parses a response head (`HTTP/1.1 101 Switching Protocols` ...). `first`
/// is the version, `second` the status code, `third` the reason.
pub fn parse_response(buf: &[u8]) -> Result<Parse<Head>, HeadError> {
    parse_head(buf, false)
}

/// Appends a complete response: status line, the given headers, and either a
/// short text body with `Content-Length` and `Connection: close` (errors) or
/// nothing (101).
pub fn write_response(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
    out.extend_from_slice(format!("HTTP/1.1 {code} {reason}\r\n").as_bytes());
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if code != 101 {
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("Content-Type"))
        {
            out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n");
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Appends a client upgrade request as the spec's "Client Upgrade" shows it,
/// plus our [`OPTIONS`](super::ws::OPTIONS) header when `options` is not
/// empty.
pub fn write_upgrade_request(
    out: &mut Vec<u8>,
    path: &str,
    host: &str,
    key: &str,
    authorization: &str,
    options: &[&str],
) {
    out.extend_from_slice(
        format!(
            "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nHost: {host}\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: socks5\r\nAuthorization: {authorization}\r\n"
        )
        .as_bytes(),
    );
    if !options.is_empty() {
        out.extend_from_slice(
            format!("{}: {}\r\n", super::ws::OPTIONS, options.join(", ")).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] =
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nHost: null\r\n\
Sec-WebSocket-Protocol: chat\r\nsec-websocket-protocol: socks5\r\n\r\nLEFT";

    #[test]
    fn request_with_leftover() {
        let Parse::Done(h, used) = parse_request(REQ).unwrap() else {
            panic!()
        };
        assert_eq!(&REQ[used..], b"LEFT");
        assert_eq!(
            (h.first.as_str(), h.second.as_str(), h.third.as_str()),
            ("GET", "/", "HTTP/1.1")
        );
        assert_eq!(
            h.all("Sec-WebSocket-Protocol").collect::<Vec<_>>(),
            ["chat", "socks5"]
        );
        assert_eq!(h.one("host"), Some("null"));
        assert!(h.has_token("connection", "upgrade"));
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let full = REQ.len() - 4;
        for n in 0..full {
            assert_eq!(parse_request(&REQ[..n]), Ok(Parse::Incomplete), "at {n}");
        }
    }

    #[test]
    fn bare_lf_and_errors() {
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\nA: b\n\n"),
            Ok(Parse::Done(_, 21))
        ));
        assert_eq!(parse_request(b"\x16\x03\x01"), Err(HeadError::BadStartLine));
        assert_eq!(
            parse_request(b"GET / HTTP/2\r\n\r\n"),
            Err(HeadError::BadStartLine)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nNo colon\r\n\r\n"),
            Err(HeadError::BadHeader)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"),
            Err(HeadError::BadHeader)
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse_request(&big), Err(HeadError::TooLarge));
        assert_eq!(parse_request(&big[..MAX_HEAD - 1]), Ok(Parse::Incomplete));
    }

    #[test]
    fn response_roundtrip() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            101,
            "Switching Protocols",
            &[("Upgrade", "websocket")],
            "",
        );
        let Parse::Done(h, used) = parse_response(&out).unwrap() else {
            panic!()
        };
        assert_eq!(used, out.len());
        assert_eq!(h.second, "101");
        assert_eq!(h.one("upgrade"), Some("websocket"));
    }
}
