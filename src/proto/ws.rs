//! The WebSocket parts of WebSocks: the opening handshake's rules (RFC 6455
//! section 4), `Sec-WebSocket-Accept`, the 10-byte "maximum payload length
//! frame" and the 2-byte PONG keepalive (spec chapters "Handshake" and
//! "WebSocket PONG").
//!
//! ```text
//!  0                   1                   2
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 ...            RFC 6455 5.2
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (64)              |
//! |N|V|V|V|       |S|             |                               |
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! FRAME = 1 0 0 0  0010  0  1111111  0111 1111 ... 1111   (82 7F 7F FF*7)
//! PONG  = 1 0 0 0  1010  0  0000000                       (8A 00)
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

use super::Parse;
use super::http::Head;

/// RFC 6455 section 1.3: appended to the key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The only subprotocol WebSocks defines.
pub const PROTOCOL: &str = "socks5";
/// FIN, binary, unmasked, 64-bit length 2^63-1: the spec's frame.
pub const FRAME: [u8; 10] = [0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
/// FIN, PONG, unmasked, empty: the spec's keepalive.
pub const PONG: [u8; 2] = [0x8a, 0x00];
/// Our own header, outside the spec: what a peer of ours can do beyond
/// it, as comma-separated tokens. Peers that do not know it ignore it (the
/// reference server does), so it is only ever an offer.
pub const OPTIONS: &str = "WebSocks-Options";
/// A client's token in [`OPTIONS`]: it takes destination bytes that arrive
/// in the same read as the SOCKS5 reply (the reference agent does not), so
/// the server need not hold a banner back for it.
pub const DATA_WITH_REPLY: &str = "data-with-reply";
/// A server's token in [`OPTIONS`] on its 101: it keeps whatever the
/// client pipelines behind the upgrade request (frame, greeting, CONNECT),
/// so a client that knows it may send them all in one write (the
/// reference server drops such bytes).
pub const PIPELINING: &str = "pipelining";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(ACCEPT_GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// A random-looking key from 16 bytes, as a client sends it.
pub fn key_from(bytes: [u8; 16]) -> String {
    STANDARD.encode(bytes)
}

/// Why a request is not a WebSocks upgrade. Each maps to one HTTP status in
/// the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeError {
    /// Not `GET`.
    Method,
    /// No `Upgrade: websocket` / `Connection: upgrade` pair.
    NotUpgrade,
    /// `Sec-WebSocket-Key` absent, repeated, or not base64 of 16 bytes.
    Key,
    /// `Sec-WebSocket-Version` present but not 13.
    Version,
    /// A header that must appear at most once appears more often.
    Duplicate(&'static str),
    /// A request body was announced.
    Body,
    /// `socks5` not among the offered subprotocols.
    Protocol,
}

/// What the server needs from a valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    /// The `Authorization` value, if any.
    pub authorization: Option<String>,
    /// `socks5` was offered (checked after authentication, see the server).
    pub socks5_offered: bool,
    /// The client offered [`DATA_WITH_REPLY`] in [`OPTIONS`].
    pub data_with_reply: bool,
    /// The client sent [`OPTIONS`] at all: it speaks our dialect, and
    /// the 101 may carry ours.
    pub options: bool,
}

/// Checks a request head against RFC 6455 section 4.2.1, tolerating what the
/// reference agent sends (`Host: null`, no `Origin`) and what it omits.
pub fn check_upgrade(head: &Head) -> Result<Upgrade, UpgradeError> {
    for name in [
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Authorization",
        "Host",
    ] {
        if head.count(name) > 1 {
            return Err(UpgradeError::Duplicate(name));
        }
    }
    if !head.has_token("Upgrade", "websocket") || !head.has_token("Connection", "upgrade") {
        return Err(UpgradeError::NotUpgrade);
    }
    if head.first != "GET" {
        return Err(UpgradeError::Method);
    }
    if head.count("Transfer-Encoding") > 0 || head.all("Content-Length").any(|v| v != "0") {
        return Err(UpgradeError::Body);
    }
    if head.one("Sec-WebSocket-Version").is_some_and(|v| v != "13") {
        return Err(UpgradeError::Version);
    }
    let key = head.one("Sec-WebSocket-Key").ok_or(UpgradeError::Key)?;
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(UpgradeError::Key),
    }
    let socks5_offered = head
        .all("Sec-WebSocket-Protocol")
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL);
    Ok(Upgrade {
        key: key.to_string(),
        authorization: head.one("Authorization").map(str::to_string),
        socks5_offered,
        data_with_reply: head.has_token(OPTIONS, DATA_WITH_REPLY),
        options: head.count(OPTIONS) > 0,
    })
}

/// Appends the server's 101 answer (spec "Server Upgrade"), with our
/// [`OPTIONS`] header when `options` is not empty (for a client that sent
/// one: others get the reference server's head exactly).
pub fn write_switching(out: &mut Vec<u8>, key: &str, options: &[&str]) {
    let acc = accept(key);
    let joined = options.join(", ");
    let mut headers = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", acc.as_str()),
        ("Sec-WebSocket-Protocol", PROTOCOL),
    ];
    if !options.is_empty() {
        headers.push((OPTIONS, &joined));
    }
    super::http::write_response(out, 101, "Switching Protocols", &headers, "");
}

/// Why the client's bytes after the 101 are not PONGs and a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A control frame other than the exact `8A 00` PONG.
    BadPong,
    /// The 10 bytes are not FIN + binary + unmasked + 64-bit length with the
    /// top bit clear and the next set (spec items 1-5: at least 2^62).
    BadFrame,
}

/// One item of what a client sends between the 101 and SOCKS5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// The `8A 00` keepalive of a pooled connection.
    Pong,
    /// The 10-byte frame: SOCKS5 follows.
    Frame,
}

/// Parses one PONG or the frame. The caller repeats until `Frame`.
pub fn parse_preamble(buf: &[u8]) -> Result<Parse<Preamble>, FrameError> {
    let Some(&b0) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    if b0 & 0x08 != 0 {
        // Opcodes 8-15 are control frames (RFC 6455 5.5): only the spec's
        // fixed PONG is allowed.
        return match buf.get(1) {
            None => Ok(Parse::Incomplete),
            Some(&0x00) if b0 == 0x8a => Ok(Parse::Done(Preamble::Pong, 2)),
            Some(_) => Err(FrameError::BadPong),
        };
    }
    Ok(check_frame(buf)?.map(|()| Preamble::Frame))
}

/// How many whole PONGs lead `buf`, so a waiting connection's keepalives
/// are consumed in bulk (one pass and one drain per read, not one parse
/// and one buffer shift per two bytes).
pub fn leading_pongs(buf: &[u8]) -> usize {
    buf.chunks_exact(2).take_while(|c| *c == PONG).count()
}

/// Validates one 10-byte frame header, as the agent does with the server's.
pub fn check_frame(buf: &[u8]) -> Result<Parse<()>, FrameError> {
    // Reject as early as the bytes allow, so garbage is not waited on:
    // FIN + binary, no mask + 127, then length top bits 01 (>= 2^62).
    const MASKS: [(u8, u8); 3] = [(0xff, 0x82), (0xff, 0x7f), (0xc0, 0x40)];
    for (i, (mask, want)) in MASKS.into_iter().enumerate() {
        match buf.get(i) {
            None => return Ok(Parse::Incomplete),
            Some(&b) if b & mask != want => return Err(FrameError::BadFrame),
            Some(_) => {}
        }
    }
    if buf.len() < FRAME.len() {
        return Ok(Parse::Incomplete);
    }
    Ok(Parse::Done((), FRAME.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example() {
        assert_eq!(
            accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn preamble() {
        let mut b = PONG.to_vec();
        b.extend_from_slice(&FRAME);
        b.push(5);
        assert_eq!(parse_preamble(&b), Ok(Parse::Done(Preamble::Pong, 2)));
        assert_eq!(
            parse_preamble(&b[2..]),
            Ok(Parse::Done(Preamble::Frame, 10))
        );
        assert_eq!(parse_preamble(&b[..1]), Ok(Parse::Incomplete));
        for n in 2..12 {
            assert_eq!(parse_preamble(&b[2..n]), Ok(Parse::Incomplete), "at {n}");
        }
        assert_eq!(
            parse_preamble(&[0x8a, 0x01, 0x41]),
            Err(FrameError::BadPong)
        );
        assert_eq!(parse_preamble(&[0x0a, 0x00]), Err(FrameError::BadPong));
        assert_eq!(parse_preamble(&[0x81]), Err(FrameError::BadFrame));
        assert_eq!(parse_preamble(&[0x82, 0xff]), Err(FrameError::BadFrame));
        assert_eq!(parse_preamble(&[0; 10]), Err(FrameError::BadFrame));
    }

    #[test]
    fn pongs_in_bulk() {
        assert_eq!(leading_pongs(&[]), 0);
        assert_eq!(leading_pongs(&[0x8a]), 0);
        assert_eq!(leading_pongs(&[0x8a, 0x00, 0x8a]), 1);
        let mut b = PONG.repeat(3);
        b.extend_from_slice(&FRAME);
        assert_eq!(leading_pongs(&b), 3);
        assert_eq!(leading_pongs(&[0x8a, 0x00, 0x8a, 0x01]), 1);
    }

    #[test]
    fn options_offer_data_with_reply() {
        let offered = |extra: &str| {
            let text = format!(
                "GET / HTTP/1.1\r\nHost: null\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Protocol: socks5\r\n{extra}\r\n"
            );
            let Ok(Parse::Done(h, _)) = crate::proto::http::parse_request(text.as_bytes()) else {
                panic!("{text}")
            };
            check_upgrade(&h).unwrap().data_with_reply
        };
        assert!(!offered(""));
        assert!(offered("WebSocks-Options: data-with-reply\r\n"));
        assert!(offered("websocks-options: later, DATA-WITH-REPLY\r\n"));
        assert!(!offered("WebSocks-Options: data-with-replies\r\n"));
        assert!(!offered("X-Data-With-Reply: data-with-reply\r\n"));
        // Our own request carries it only when asked to.
        for (options, want) in [(&[][..], false), (&[DATA_WITH_REPLY][..], true)] {
            let mut req = Vec::new();
            crate::proto::http::write_upgrade_request(
                &mut req,
                "/",
                "null",
                "a2V5",
                "Basic eDp5",
                options,
            );
            let Ok(Parse::Done(h, used)) = crate::proto::http::parse_request(&req) else {
                panic!()
            };
            assert_eq!(used, req.len());
            assert_eq!(h.has_token(OPTIONS, DATA_WITH_REPLY), want);
        }
    }
}
