//! SOCKS Protocol Version 5 (RFC 1928) and its username/password
//! sub-negotiation (RFC 1929): both sides of the greeting, the request and
//! the reply.
//!
//! ```text
//! greeting  VER NMETHODS METHODS...        05 n m1..mn          RFC 1928 s.3
//! choice    VER METHOD                     05 00 | 05 FF
//! request   VER CMD RSV ATYP DST.ADDR DST.PORT                  RFC 1928 s.4
//! reply     VER REP RSV ATYP BND.ADDR BND.PORT                  RFC 1928 s.6
//! ATYP      01 = 4-byte IPv4, 03 = 1-byte length + name, 04 = 16-byte IPv6
//! login     VER ULEN UNAME PLEN PASSWD     01 n user m pass     RFC 1929 s.2
//! status    VER STATUS                     01 00 | 01 01
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Parse;

pub const VERSION: u8 = 0x05;

/// Methods (RFC 1928 section 3).
pub const METHOD_NO_AUTH: u8 = 0x00;
pub const METHOD_USER_PASS: u8 = 0x02;
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;

/// Commands (RFC 1928 section 4).
pub const CMD_CONNECT: u8 = 0x01;
pub const CMD_BIND: u8 = 0x02;
pub const CMD_UDP_ASSOCIATE: u8 = 0x03;

/// Address types.
pub const ATYP_IPV4: u8 = 0x01;
pub const ATYP_DOMAIN: u8 = 0x03;
pub const ATYP_IPV6: u8 = 0x04;

/// Reply codes (RFC 1928 section 6).
pub const REP_SUCCEEDED: u8 = 0x00; // succeeded
pub const REP_GENERAL_FAILURE: u8 = 0x01; // general SOCKS server failure
pub const REP_NOT_ALLOWED: u8 = 0x02; // connection not allowed by ruleset
pub const REP_NETWORK_UNREACHABLE: u8 = 0x03; // Network unreachable
pub const REP_HOST_UNREACHABLE: u8 = 0x04; // Host unreachable
pub const REP_CONNECTION_REFUSED: u8 = 0x05; // Connection refused
pub const REP_TTL_EXPIRED: u8 = 0x06; // TTL expired (used for timeouts)
pub const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07; // Command not supported
pub const REP_ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08; // Address type not supported

/// Username/password sub-negotiation (RFC 1929 section 2).
pub const USER_PASS_VERSION: u8 = 0x01;
pub const USER_PASS_SUCCESS: u8 = 0x00; // any other status is a failure
pub const USER_PASS_FAILURE: u8 = 0x01; // and the server closes

/// A reply code (RFC 1928 section 6): what a server answers a request
/// with. Every failure in websocks is answered with exactly one of these,
/// chosen by `reply()` on its error type ([`SocksError::reply`] here,
/// `DialError::reply` for a connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    Succeeded,
    GeneralFailure,
    NotAllowed,
    NetworkUnreachable,
    HostUnreachable,
    ConnectionRefused,
    /// Also every timeout: the RFC has no better word for one.
    TtlExpired,
    CommandNotSupported,
    AddressTypeNotSupported,
    /// A code RFC 1928 leaves unassigned (09 to FF), as a server sent it:
    /// passed on as it is, never a panic.
    Unassigned(u8),
}

impl Reply {
    /// The code on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Reply::Succeeded => REP_SUCCEEDED,
            Reply::GeneralFailure => REP_GENERAL_FAILURE,
            Reply::NotAllowed => REP_NOT_ALLOWED,
            Reply::NetworkUnreachable => REP_NETWORK_UNREACHABLE,
            Reply::HostUnreachable => REP_HOST_UNREACHABLE,
            Reply::ConnectionRefused => REP_CONNECTION_REFUSED,
            Reply::TtlExpired => REP_TTL_EXPIRED,
            Reply::CommandNotSupported => REP_COMMAND_NOT_SUPPORTED,
            Reply::AddressTypeNotSupported => REP_ADDRESS_TYPE_NOT_SUPPORTED,
            Reply::Unassigned(code) => code,
        }
    }
}

impl From<u8> for Reply {
    fn from(code: u8) -> Reply {
        match code {
            REP_SUCCEEDED => Reply::Succeeded,
            REP_GENERAL_FAILURE => Reply::GeneralFailure,
            REP_NOT_ALLOWED => Reply::NotAllowed,
            REP_NETWORK_UNREACHABLE => Reply::NetworkUnreachable,
            REP_HOST_UNREACHABLE => Reply::HostUnreachable,
            REP_CONNECTION_REFUSED => Reply::ConnectionRefused,
            REP_TTL_EXPIRED => Reply::TtlExpired,
            REP_COMMAND_NOT_SUPPORTED => Reply::CommandNotSupported,
            REP_ADDRESS_TYPE_NOT_SUPPORTED => Reply::AddressTypeNotSupported,
            other => Reply::Unassigned(other),
        }
    }
}

/// Why SOCKS bytes are not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksError {
    /// VER is not 5 (or, in RFC 1929, not 1).
    Version(u8),
    /// A greeting that lists no method.
    NoMethods,
    /// ATYP is not 1, 3 or 4.
    AddressType(u8),
    /// A domain of length 0.
    EmptyDomain,
    /// A reply or method choice that is not well-formed.
    Malformed,
}

impl SocksError {
    /// The reply to a request that failed to parse. A bad greeting has no
    /// reply: it is answered with the method choice `FF`.
    pub fn reply(&self) -> Reply {
        match self {
            SocksError::AddressType(_) => Reply::AddressTypeNotSupported,
            // A name that cannot be looked up.
            SocksError::EmptyDomain => Reply::HostUnreachable,
            SocksError::Version(_) | SocksError::NoMethods | SocksError::Malformed => {
                Reply::GeneralFailure
            }
        }
    }
}

/// A destination as SOCKS5 carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Ip(SocketAddr),
    /// A name, as sent (not necessarily UTF-8), and a port.
    Domain(Vec<u8>, u16),
}

impl Addr {
    pub fn port(&self) -> u16 {
        match self {
            Addr::Ip(sa) => sa.port(),
            Addr::Domain(_, p) => *p,
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Ip(sa) => write!(f, "{sa}"),
            Addr::Domain(name, port) => {
                // Peer-supplied names are shown escaped, never raw: anything
                // but printable ASCII (space included) becomes \xNN, so a
                // log line stays one line of key=value words.
                for &b in name {
                    if b.is_ascii_graphic() && b != b'\\' {
                        write!(f, "{}", b as char)?;
                    } else {
                        write!(f, "\\x{b:02x}")?;
                    }
                }
                write!(f, ":{port}")
            }
        }
    }
}

/// The methods a client offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub methods: Vec<u8>,
}

/// Parses a client greeting.
pub fn parse_greeting(buf: &[u8]) -> Result<Parse<Greeting>, SocksError> {
    let Some(&ver) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    if ver != VERSION {
        return Err(SocksError::Version(ver));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(Parse::Incomplete);
    };
    if n == 0 {
        return Err(SocksError::NoMethods);
    }
    let end = 2 + n as usize;
    match buf.get(2..end) {
        None => Ok(Parse::Incomplete),
        Some(m) => Ok(Parse::Done(
            Greeting {
                methods: m.to_vec(),
            },
            end,
        )),
    }
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cmd: u8,
    pub addr: Addr,
}

/// Parses an address (ATYP onwards); `Done(addr, used)`.
fn parse_addr(buf: &[u8]) -> Result<Parse<Addr>, SocksError> {
    let Some(&atyp) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    let (ip_len, start) = match atyp {
        ATYP_IPV4 => (4, 1),
        ATYP_IPV6 => (16, 1),
        ATYP_DOMAIN => match buf.get(1) {
            None => return Ok(Parse::Incomplete),
            Some(0) => return Err(SocksError::EmptyDomain),
            Some(&n) => (n as usize, 2),
        },
        other => return Err(SocksError::AddressType(other)),
    };
    let end = start + ip_len + 2;
    let Some(body) = buf.get(start..end) else {
        return Ok(Parse::Incomplete);
    };
    let (host, port) = body.split_at(ip_len);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let addr = match atyp {
        ATYP_IPV4 => {
            let o: [u8; 4] = host.try_into().map_err(|_| SocksError::Malformed)?;
            Addr::Ip(SocketAddr::new(Ipv4Addr::from(o).into(), port))
        }
        ATYP_IPV6 => {
            let o: [u8; 16] = host.try_into().map_err(|_| SocksError::Malformed)?;
            Addr::Ip(SocketAddr::new(Ipv6Addr::from(o).into(), port))
        }
        _ => Addr::Domain(host.to_vec(), port),
    };
    Ok(Parse::Done(addr, end))
}

/// Parses a client request. Any command is returned; the caller answers
/// `07` for those it does not support.
pub fn parse_request(buf: &[u8]) -> Result<Parse<Request>, SocksError> {
    let Some(&ver) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    if ver != VERSION {
        return Err(SocksError::Version(ver));
    }
    let Some(&cmd) = buf.get(1) else {
        return Ok(Parse::Incomplete);
    };
    // buf[2] is RSV; RFC 1928 gives it no meaning, so it is not checked.
    if buf.len() < 4 {
        return Ok(Parse::Incomplete);
    }
    Ok(parse_addr(&buf[3..])?.map_used(3, |addr| Request { cmd, addr }))
}

impl<T> Parse<T> {
    fn map_used<U>(self, offset: usize, f: impl FnOnce(T) -> U) -> Parse<U> {
        match self {
            Parse::Incomplete => Parse::Incomplete,
            Parse::Done(t, n) => Parse::Done(f(t), n + offset),
        }
    }
}

/// Appends an address (ATYP onwards).
fn write_addr(out: &mut Vec<u8>, addr: &Addr) {
    match addr {
        Addr::Ip(SocketAddr::V4(a)) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.ip().octets());
        }
        Addr::Ip(SocketAddr::V6(a)) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.ip().octets());
        }
        Addr::Domain(name, _) => {
            out.push(ATYP_DOMAIN);
            // A name longer than 255 cannot be carried; callers validate.
            let n = name.len().min(255);
            out.push(n as u8);
            out.extend_from_slice(&name[..n]);
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Appends a greeting offering `methods`.
pub fn write_greeting(out: &mut Vec<u8>, methods: &[u8]) {
    out.push(VERSION);
    out.push(methods.len() as u8);
    out.extend_from_slice(methods);
}

/// Appends a method choice.
pub fn write_choice(out: &mut Vec<u8>, method: u8) {
    out.extend_from_slice(&[VERSION, method]);
}

/// Appends a CONNECT request.
pub fn write_connect(out: &mut Vec<u8>, addr: &Addr) {
    out.extend_from_slice(&[VERSION, CMD_CONNECT, 0x00]);
    write_addr(out, addr);
}

/// Appends a reply with the bound address: an IP address, or a name (the
/// agent passes on what its server bound, which may be one).
pub fn write_reply(out: &mut Vec<u8>, rep: Reply, bound: &Addr) {
    out.extend_from_slice(&[VERSION, rep.code(), 0x00]);
    write_addr(out, bound);
}

/// Appends a failure reply: its bound address means nothing, so it is
/// [`UNSPECIFIED`].
pub fn write_failure(out: &mut Vec<u8>, rep: Reply) {
    write_reply(out, rep, &Addr::Ip(UNSPECIFIED));
}

/// The bound address used in failure replies: `0.0.0.0:0`.
pub const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Appends an RFC 1929 status: [`USER_PASS_SUCCESS`] or
/// [`USER_PASS_FAILURE`].
pub fn write_user_pass_status(out: &mut Vec<u8>, status: u8) {
    out.extend_from_slice(&[USER_PASS_VERSION, status]);
}

/// Parses a server's method choice: `Done(method, 2)`.
pub fn parse_choice(buf: &[u8]) -> Result<Parse<u8>, SocksError> {
    match buf {
        [] | [VERSION] => Ok(Parse::Incomplete),
        [VERSION, m, ..] => Ok(Parse::Done(*m, 2)),
        [v, ..] => Err(SocksError::Version(*v)),
    }
}

/// A server's reply: the code as sent and the bound address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub rep: u8,
    pub bound: Addr,
}

impl ServerReply {
    /// The code, as a [`Reply`].
    pub fn reply(&self) -> Reply {
        Reply::from(self.rep)
    }
}

/// Parses a server's reply to a request.
pub fn parse_reply(buf: &[u8]) -> Result<Parse<ServerReply>, SocksError> {
    let Some(&ver) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    if ver != VERSION {
        return Err(SocksError::Version(ver));
    }
    let Some(&rep) = buf.get(1) else {
        return Ok(Parse::Incomplete);
    };
    if buf.len() < 4 {
        return Ok(Parse::Incomplete);
    }
    Ok(parse_addr(&buf[3..])?.map_used(3, |bound| ServerReply { rep, bound }))
}

/// RFC 1929 username/password request: `01 ULEN UNAME PLEN PASSWD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPass {
    pub user: Vec<u8>,
    pub pass: Vec<u8>,
}

/// Parses an RFC 1929 request.
pub fn parse_user_pass(buf: &[u8]) -> Result<Parse<UserPass>, SocksError> {
    let Some(&ver) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    if ver != USER_PASS_VERSION {
        return Err(SocksError::Version(ver));
    }
    let Some(&ulen) = buf.get(1) else {
        return Ok(Parse::Incomplete);
    };
    let uend = 2 + ulen as usize;
    let Some(&plen) = buf.get(uend) else {
        return Ok(Parse::Incomplete);
    };
    let pend = uend + 1 + plen as usize;
    if buf.len() < pend {
        return Ok(Parse::Incomplete);
    }
    Ok(Parse::Done(
        UserPass {
            user: buf[2..uend].to_vec(),
            pass: buf[uend + 1..pend].to_vec(),
        },
        pend,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_kinds() {
        let v4 = [5, 1, 0, 1, 127, 0, 0, 1, 0x46, 0x50];
        let dom = [
            5, 1, 0, 3, 9, b'l', b'o', b'c', b'a', b'l', b'h', b'o', b's', b't', 0x46, 0x50,
        ];
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80]);
        for (msg, want) in [
            (&v4[..], Addr::Ip("127.0.0.1:18000".parse().unwrap())),
            (&dom[..], Addr::Domain(b"localhost".to_vec(), 18000)),
            (&v6[..], Addr::Ip("[::1]:80".parse().unwrap())),
        ] {
            for n in 0..msg.len() {
                assert_eq!(parse_request(&msg[..n]), Ok(Parse::Incomplete));
            }
            let Parse::Done(r, used) = parse_request(msg).unwrap() else {
                panic!()
            };
            assert_eq!((r.cmd, &r.addr, used), (1, &want, msg.len()));
            let mut out = Vec::new();
            write_connect(&mut out, &want);
            assert_eq!(out, msg);
        }
        assert_eq!(
            parse_request(&[5, 1, 0, 5]),
            Err(SocksError::AddressType(5))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0]),
            Err(SocksError::EmptyDomain)
        );
        assert_eq!(parse_request(&[4, 1]), Err(SocksError::Version(4)));
    }

    #[test]
    fn greeting_and_reply() {
        assert_eq!(parse_greeting(&[5, 0]), Err(SocksError::NoMethods));
        assert_eq!(parse_greeting(&[5, 2, 2]), Ok(Parse::Incomplete));
        assert_eq!(
            parse_greeting(&[5, 2, 2, 0, 9]),
            Ok(Parse::Done(
                Greeting {
                    methods: vec![2, 0]
                },
                4
            ))
        );
        let mut out = Vec::new();
        write_reply(
            &mut out,
            Reply::Succeeded,
            &Addr::Ip("0.0.0.0:18000".parse().unwrap()),
        );
        assert_eq!(out, [5, 0, 0, 1, 0, 0, 0, 0, 0x46, 0x50]);
        assert!(matches!(
            parse_reply(&out),
            Ok(Parse::Done(ServerReply { rep: 0, .. }, 10))
        ));
        assert_eq!(parse_choice(&[5]), Ok(Parse::Incomplete));
        assert_eq!(parse_choice(&[5, 0xff]), Ok(Parse::Done(0xff, 2)));
        assert_eq!(parse_choice(&[4]), Err(SocksError::Version(4)));
        assert_eq!(
            parse_user_pass(&[1, 1, b'a', 2, b'p', b'w']),
            Ok(Parse::Done(
                UserPass {
                    user: b"a".to_vec(),
                    pass: b"pw".to_vec()
                },
                6
            ))
        );
    }

    /// Replies byte for byte. The IPv4 one is the reference transcripts'
    /// (`connect-ipv4.txt`: vproxy's server answers `0.0.0.0` and the
    /// requested port); the domain one carries its name as the request in
    /// `connect-domain.txt` does, with REP where CMD was.
    #[test]
    fn replies_with_every_address_type() {
        let reply = |rep, bound: Addr| {
            let mut out = Vec::new();
            write_reply(&mut out, rep, &bound);
            out
        };
        assert_eq!(
            reply(Reply::Succeeded, Addr::Ip("0.0.0.0:18000".parse().unwrap())),
            [0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0x46, 0x50]
        );
        assert_eq!(
            reply(Reply::Succeeded, Addr::Domain(b"localhost".to_vec(), 18000)),
            [
                0x05, 0x00, 0x00, 0x03, 0x09, b'l', b'o', b'c', b'a', b'l', b'h', b'o', b's', b't',
                0x46, 0x50
            ]
        );
        assert_eq!(
            reply(
                Reply::Succeeded,
                Addr::Ip("[2001:db8::1]:443".parse().unwrap())
            ),
            [
                0x05, 0x00, 0x00, 0x04, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0x01, 0x01, 0xbb
            ]
        );
        let mut out = Vec::new();
        write_failure(&mut out, Reply::ConnectionRefused);
        assert_eq!(out, [0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
        // What is written parses back, whatever the address type.
        for bound in [
            Addr::Domain(b"localhost".to_vec(), 18000),
            Addr::Ip("[::1]:80".parse().unwrap()),
        ] {
            let out = reply(Reply::HostUnreachable, bound.clone());
            let want = ServerReply { rep: 4, bound };
            assert_eq!(parse_reply(&out), Ok(Parse::Done(want, out.len())));
        }
    }

    #[test]
    fn reply_codes_round_trip() {
        let named = [
            (Reply::Succeeded, 0x00),
            (Reply::GeneralFailure, 0x01),
            (Reply::NotAllowed, 0x02),
            (Reply::NetworkUnreachable, 0x03),
            (Reply::HostUnreachable, 0x04),
            (Reply::ConnectionRefused, 0x05),
            (Reply::TtlExpired, 0x06),
            (Reply::CommandNotSupported, 0x07),
            (Reply::AddressTypeNotSupported, 0x08),
        ];
        for (rep, code) in named {
            assert_eq!((rep.code(), Reply::from(code)), (code, rep));
        }
        for code in 0x09..=0xff {
            assert_eq!(Reply::from(code), Reply::Unassigned(code));
            assert_eq!(Reply::from(code).code(), code);
        }
        let r = ServerReply {
            rep: 0x02,
            bound: Addr::Ip(UNSPECIFIED),
        };
        assert_eq!(r.reply(), Reply::NotAllowed);
    }

    #[test]
    fn request_errors_map_to_one_reply_each() {
        for (e, want) in [
            (SocksError::AddressType(5), Reply::AddressTypeNotSupported),
            (SocksError::EmptyDomain, Reply::HostUnreachable),
            (SocksError::Version(4), Reply::GeneralFailure),
            (SocksError::NoMethods, Reply::GeneralFailure),
            (SocksError::Malformed, Reply::GeneralFailure),
        ] {
            assert_eq!(e.reply(), want, "{e:?}");
        }
    }

    #[test]
    fn user_pass_status() {
        let mut out = Vec::new();
        write_user_pass_status(&mut out, USER_PASS_SUCCESS);
        write_user_pass_status(&mut out, USER_PASS_FAILURE);
        assert_eq!(out, [0x01, 0x00, 0x01, 0x01]);
    }
}
