//! Every parser in `websocks::proto` against seeded garbage, every
//! truncation of every valid message, and byte mutations of them: nothing
//! panics, `Done` uses between one byte and all of the input, a message
//! depends only on the bytes it used, and an error stays an error when more
//! bytes arrive (the server refuses early only what can never become valid).

use std::fmt::Debug;

use websocks::proto::http::{self, Head};
use websocks::proto::{Parse, auth, socks5, ws};

/// The reference agent's upgrade request (spec "Client Upgrade"; transcript
/// `tests/data/connect-ipv4.txt`, minute_ms 1795554300000).
const REF_REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Host: null\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: socks5\r\n\
Authorization: Basic YWxpY2U6Zkhmc0w4N001bnFSVHJRcEU5Rk8xdjBSTXMza1Jmc0lNVmpXdkFVaEJFVT0=\r\n\
\r\n";
/// The reference server's 101, as captured (note `Sec-Websocket-Accept`).
const REF_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-Websocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: socks5\r\n\
\r\n";
/// Our 401 head (the body follows it).
const HEAD_401: &[u8] = b"HTTP/1.1 401 Unauthorized\r\n\
WWW-Authenticate: Basic realm=\"websocks\"\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Connection: close\r\n\
Content-Length: 24\r\n\
\r\n";
/// A request with bare LF line ends (RFC 9112 section 2.2 leniency).
const LF_REQUEST: &[u8] = b"GET /?a=b HTTP/1.0\nUpgrade: websocket\nConnection: Upgrade\n\n";
const FRAME: [u8; 10] = [0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
const PONG: [u8; 2] = [0x8a, 0x00];
/// What follows a message in the tests that check leftovers are kept.
const TRAILING: &[u8] = b"\x82\x7f\x05\x01\x00\r\n\r\ntrailing";

/// xorshift64 (Marsaglia 2003): tiny, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len())]
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Runs `parse` on `input` and checks what every parser promises:
/// `Done(msg, used)` has `0 < used <= len`; the same `Done` comes back for
/// `input[..used]` and for `input` followed by more bytes; with `deep`,
/// every strict prefix of the message is `Incomplete`. An error stays an
/// error with more bytes behind it. Returns the message, if any.
fn check<T, E>(
    name: &str,
    parse: impl Fn(&[u8]) -> Result<Parse<T>, E>,
    input: &[u8],
    deep: bool,
) -> Option<T>
where
    T: PartialEq + Debug,
    E: PartialEq + Debug,
{
    let r = parse(input);
    let longer = [input, TRAILING].concat();
    match &r {
        Ok(Parse::Done(_, used)) => {
            let used = *used;
            assert!(
                used > 0 && used <= input.len(),
                "{name}: used {used} of {} in {input:02x?}",
                input.len()
            );
            assert_eq!(
                parse(&input[..used]),
                r,
                "{name}: not the same message from its own bytes: {input:02x?}"
            );
            assert_eq!(
                parse(&longer),
                r,
                "{name}: more bytes changed the message: {input:02x?}"
            );
            if deep {
                for k in 0..used {
                    assert_eq!(
                        parse(&input[..k]),
                        Ok(Parse::Incomplete),
                        "{name}: prefix {k} of {input:02x?}"
                    );
                }
            }
        }
        Ok(Parse::Incomplete) => {}
        Err(_) => assert!(
            parse(&longer).is_err(),
            "{name}: error undone by more bytes: {input:02x?}"
        ),
    }
    match r {
        Ok(Parse::Done(m, _)) => Some(m),
        _ => None,
    }
}

/// Every byte parser in `websocks::proto`, plus `check_upgrade` on any head
/// that parses and `parse_basic` on the bytes as text.
fn every_parser(input: &[u8], deep: bool) {
    let head_deep = deep && input.len() <= 1024;
    if let Some(h) = check("http::parse_request", http::parse_request, input, head_deep) {
        check_upgrade_invariants(&h);
    }
    if let Some(h) = check(
        "http::parse_response",
        http::parse_response,
        input,
        head_deep,
    ) {
        check_upgrade_invariants(&h);
    }
    check("ws::parse_preamble", ws::parse_preamble, input, deep);
    check("ws::check_frame", ws::check_frame, input, deep);
    check(
        "socks5::parse_greeting",
        socks5::parse_greeting,
        input,
        deep,
    );
    check("socks5::parse_request", socks5::parse_request, input, deep);
    check("socks5::parse_choice", socks5::parse_choice, input, deep);
    check("socks5::parse_reply", socks5::parse_reply, input, deep);
    check(
        "socks5::parse_user_pass",
        socks5::parse_user_pass,
        input,
        deep,
    );
    basic_invariants(&String::from_utf8_lossy(input));
}

/// The 16-byte keys among the generated values.
const GOOD_KEYS: [&str; 2] = ["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA=="];

/// `check_upgrade` never panics, and what it accepts is an upgrade.
fn check_upgrade_invariants(h: &Head) {
    if let Ok(up) = ws::check_upgrade(h) {
        assert_eq!(h.first, "GET", "{h:?}");
        // base64 of 16 bytes is 24 characters, padding included.
        assert_eq!(up.key.len(), 24, "{h:?}");
        assert!(
            h.has_token("Upgrade", "websocket") && h.has_token("Connection", "upgrade"),
            "{h:?}"
        );
        for name in [
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Authorization",
            "Host",
        ] {
            assert!(h.count(name) <= 1, "{name} twice accepted: {h:?}");
        }
        assert_eq!(up.authorization.as_deref(), h.one("Authorization"));
    }
}

/// `parse_basic` never panics, and a user never holds a colon (RFC 7617).
fn basic_invariants(s: &str) {
    if let Ok(c) = auth::parse_basic(s) {
        assert!(!c.user.contains(':'), "{s:?} -> {c:?}");
    }
}

#[test]
fn random_bytes_through_every_parser() {
    let mut rng = Rng::new(1);
    for _ in 0..20_000 {
        let len = rng.below(600);
        let input = rng.bytes(len);
        every_parser(&input, true);
    }
}

#[test]
fn socks_shaped_garbage_through_every_parser() {
    // Small values in small messages reach far more of the SOCKS5 and
    // frame parsers than uniform bytes do.
    let mut rng = Rng::new(2);
    let firsts = [0x05, 0x05, 0x05, 0x01, 0x04, 0x00, 0x82, 0x8a, 0x0a];
    let smalls = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x7f, 0xff];
    for _ in 0..20_000 {
        let len = rng.below(40);
        let mut input = vec![firsts[rng.below(firsts.len())]];
        for _ in 0..len {
            let b = if rng.chance(3) {
                rng.byte()
            } else {
                smalls[rng.below(smalls.len())]
            };
            input.push(b);
        }
        every_parser(&input, true);
    }
}

/// A head made of plausible and implausible pieces.
fn random_head(rng: &mut Rng) -> Vec<u8> {
    let starts: [&str; 10] = [
        "GET / HTTP/1.1",
        "GET / HTTP/1.1",
        "POST / HTTP/1.1",
        "GET /x?y HTTP/1.0",
        "GET / HTTP/2",
        "get / HTTP/1.1",
        "GET  / HTTP/1.1",
        "HTTP/1.1 101 Switching Protocols",
        "HTTP/1.1 401",
        "HTTP/1.0 2000 OK",
    ];
    let names: [&str; 16] = [
        "Upgrade",
        "Connection",
        "Host",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Authorization",
        "Content-Length",
        "Transfer-Encoding",
        "upgrade",
        "CONNECTION",
        "sec-websocket-key",
        "X-Pad",
        "X A",
        "",
        " folded",
    ];
    let values: [&str; 22] = [
        "websocket",
        "WebSocket",
        "Upgrade",
        "keep-alive, Upgrade",
        "",
        " , ,",
        "13",
        "8",
        "dGhlIHNhbXBsZSBub25jZQ==",
        "AAAAAAAAAAAAAAAAAAAAAA==",
        "AAAA",
        "not base64!",
        "socks5",
        "chat, socks5",
        "socks4",
        "0",
        "5",
        "chunked",
        "Basic YWxpY2U6Yg==",
        "basic YWxpY2U6Yg",
        "Basic",
        "Bearer x",
    ];
    let eols: [&str; 5] = ["\r\n", "\r\n", "\r\n", "\n", "\r"];
    // Half the heads keep to well-formed pieces (the first start lines,
    // the first names, CRLF), so that many reach `check_upgrade`.
    let clean = rng.chance(2);
    let (starts, names, eols) = if clean {
        (&starts[..4], &names[..12], &eols[..1])
    } else {
        (&starts[..], &names[..], &eols[..])
    };
    let mut out = Vec::new();
    out.extend_from_slice(rng.pick(starts).as_bytes());
    out.extend_from_slice(rng.pick(eols).as_bytes());
    if clean && rng.chance(2) {
        // The three headers an upgrade needs, then a few random ones.
        out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
        out.extend_from_slice(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    }
    for _ in 0..rng.below(if clean { 5 } else { 14 }) {
        out.extend_from_slice(rng.pick(names).as_bytes());
        if clean || !rng.chance(20) {
            out.extend_from_slice(b": ");
        }
        if !clean && rng.chance(8) {
            let n = rng.below(20);
            out.extend(rng.bytes(n).into_iter().filter(|b| !b"\r\n".contains(b)));
        } else {
            out.extend_from_slice(rng.pick(&values).as_bytes());
        }
        out.extend_from_slice(rng.pick(eols).as_bytes());
    }
    if clean || !rng.chance(10) {
        out.extend_from_slice(rng.pick(eols).as_bytes());
    }
    out
}

#[test]
fn http_shaped_garbage_through_every_parser() {
    let mut rng = Rng::new(3);
    let (mut parsed, mut upgrades) = (0, 0);
    for i in 0..5_000 {
        let head = random_head(&mut rng);
        if let Ok(Parse::Done(h, _)) = http::parse_request(&head) {
            parsed += 1;
            upgrades += usize::from(ws::check_upgrade(&h).is_ok());
        }
        every_parser(&head, i % 4 == 0);
    }
    // The generator must reach check_upgrade, and get past it sometimes.
    assert!(
        parsed > 1_000 && upgrades > 10,
        "{parsed} heads parsed, {upgrades} upgrades"
    );
}

#[test]
fn check_upgrade_on_random_heads() {
    let mut rng = Rng::new(4);
    let methods: [&str; 4] = ["GET", "GET", "POST", "get"];
    let names: [&str; 12] = [
        "Upgrade",
        "Connection",
        "Host",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Authorization",
        "Content-Length",
        "Transfer-Encoding",
        "upgrade",
        "connection",
        "SEC-WEBSOCKET-KEY",
    ];
    let values: [&str; 16] = [
        "websocket",
        "upgrade",
        "Upgrade, keep-alive",
        "",
        ",",
        "13",
        "8",
        GOOD_KEYS[0],
        GOOD_KEYS[1],
        "AAAA",
        "=",
        "socks5",
        "chat,socks5",
        "0",
        "00",
        "Basic YWxpY2U6Yg==",
    ];
    let mut accepted = 0;
    for _ in 0..20_000 {
        let headers = (0..rng.below(12))
            .map(|_| (rng.pick(&names).to_string(), rng.pick(&values).to_string()))
            .collect();
        let h = Head {
            first: rng.pick(&methods).to_string(),
            second: "/".to_string(),
            third: "HTTP/1.1".to_string(),
            headers,
        };
        check_upgrade_invariants(&h);
        if ws::check_upgrade(&h).is_ok() {
            accepted += 1;
        }
    }
    assert!(
        accepted > 0,
        "the generator never built an acceptable upgrade"
    );
}

#[test]
fn random_authorization_values() {
    let mut rng = Rng::new(5);
    let schemes: [&str; 7] = ["Basic", "basic", "BASIC", "Bearer", "", "Basic:", "Digest"];
    let seps: [&str; 5] = [" ", "  ", "\t", "", " \t "];
    let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
    for i in 0..20_000u64 {
        let token = match rng.below(4) {
            0 => {
                let n = rng.below(80);
                (0..n)
                    .map(|_| b64[rng.below(b64.len())] as char)
                    .collect::<String>()
            }
            1 => {
                let n = rng.below(12);
                let user = String::from_utf8_lossy(&rng.bytes(n)).into_owned();
                let stored = auth::stored_digest(&rng.bytes(8));
                let v = auth::authorization(&user, &stored, i * auth::MINUTE_MS);
                let token = v.trim_start_matches("Basic ").to_string();
                match rng.below(3) {
                    0 => token.trim_end_matches('=').to_string(),
                    1 => {
                        let n = rng.below(token.len() + 1);
                        token[..n].to_string()
                    }
                    _ => token,
                }
            }
            2 => {
                let n = rng.below(60);
                String::from_utf8_lossy(&rng.bytes(n)).into_owned()
            }
            _ => String::new(),
        };
        let value = format!("{}{}{}", rng.pick(&schemes), rng.pick(&seps), token);
        basic_invariants(&value);
    }
}

/// Valid messages for one parser.
struct Valid<'a> {
    name: &'a str,
    msgs: Vec<Vec<u8>>,
}

fn socks5_requests() -> Vec<Vec<u8>> {
    let mut v6 = vec![0x05, 0x01, 0x00, 0x04];
    v6.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0x00, 0x50]);
    let mut long = vec![0x05, 0x01, 0x00, 0x03, 0xff];
    long.extend_from_slice(&[b'a'; 255]);
    long.extend_from_slice(&[0xff, 0xff]);
    vec![
        // Transcripts: 127.0.0.1:18000 and localhost:18000.
        vec![0x05, 0x01, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01, 0x46, 0x50],
        b"\x05\x01\x00\x03\x09localhost\x46\x50".to_vec(),
        v6,
        long,
        // Other commands parse; the server answers them 07.
        vec![0x05, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        vec![0x05, 0x03, 0xff, 0x03, 0x01, b'x', 0x00, 0x01],
    ]
}

fn socks5_replies() -> Vec<Vec<u8>> {
    let mut v = vec![
        // Transcripts: success, 0.0.0.0 and the requested port.
        vec![0x05, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x46, 0x50],
        b"\x05\x00\x00\x03\x09localhost\x00\x50".to_vec(),
    ];
    for rep in 1..=8 {
        v.push(vec![0x05, rep, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
    }
    let mut v6 = vec![0x05, 0x00, 0x00, 0x04];
    v6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0x1f, 0x90]);
    v.push(v6);
    v
}

fn valid_messages() -> Vec<Valid<'static>> {
    let mut many_methods = vec![0x05, 0xff];
    many_methods.extend(0..=0xfe);
    let mut long_user_pass = vec![0x01, 0xff];
    long_user_pass.extend_from_slice(&[b'u'; 255]);
    long_user_pass.push(0xff);
    long_user_pass.extend_from_slice(&[b'p'; 255]);
    let mut ours = Vec::new();
    ws::write_switching(&mut ours, "dGhlIHNhbXBsZSBub25jZQ==", &[]);
    vec![
        Valid {
            name: "http::parse_request",
            msgs: vec![REF_REQUEST.to_vec(), LF_REQUEST.to_vec()],
        },
        Valid {
            name: "http::parse_response",
            msgs: vec![REF_101.to_vec(), ours, HEAD_401.to_vec()],
        },
        Valid {
            name: "ws::parse_preamble",
            msgs: vec![FRAME.to_vec(), PONG.to_vec()],
        },
        Valid {
            name: "ws::check_frame",
            msgs: vec![FRAME.to_vec()],
        },
        Valid {
            name: "socks5::parse_greeting",
            msgs: vec![
                vec![0x05, 0x01, 0x00],
                vec![0x05, 0x02, 0x00, 0x02],
                many_methods,
            ],
        },
        Valid {
            name: "socks5::parse_request",
            msgs: socks5_requests(),
        },
        Valid {
            name: "socks5::parse_choice",
            msgs: vec![vec![0x05, 0x00], vec![0x05, 0xff]],
        },
        Valid {
            name: "socks5::parse_reply",
            msgs: socks5_replies(),
        },
        Valid {
            name: "socks5::parse_user_pass",
            msgs: vec![
                b"\x01\x05alice\x08pasSw0rD".to_vec(),
                vec![0x01, 0x00, 0x00],
                long_user_pass,
            ],
        },
    ]
}

/// Every strict prefix is `Incomplete`, the whole is `Done` with all its
/// bytes, and bytes behind it are left alone.
fn truncations<T, E>(name: &str, parse: impl Fn(&[u8]) -> Result<Parse<T>, E>, msg: &[u8])
where
    T: PartialEq + Debug,
    E: PartialEq + Debug,
{
    for n in 0..msg.len() {
        assert_eq!(
            parse(&msg[..n]),
            Ok(Parse::Incomplete),
            "{name}: prefix {n} of {msg:02x?}"
        );
    }
    let whole = parse(msg);
    let Ok(Parse::Done(m, used)) = whole else {
        panic!("{name}: {msg:02x?} -> {whole:?}");
    };
    assert_eq!(used, msg.len(), "{name}: {msg:02x?}");
    let longer = [msg, TRAILING].concat();
    let Ok(Parse::Done(m2, used2)) = parse(&longer) else {
        panic!("{name}: message + trailing bytes: {longer:02x?}");
    };
    assert_eq!((m2, used2), (m, used), "{name}");
    assert_eq!(&longer[used2..], TRAILING, "{name}");
}

#[test]
fn every_truncation_of_every_valid_message() {
    for v in valid_messages() {
        for m in &v.msgs {
            match v.name {
                "http::parse_request" => truncations(v.name, http::parse_request, m),
                "http::parse_response" => truncations(v.name, http::parse_response, m),
                "ws::parse_preamble" => truncations(v.name, ws::parse_preamble, m),
                "ws::check_frame" => truncations(v.name, ws::check_frame, m),
                "socks5::parse_greeting" => truncations(v.name, socks5::parse_greeting, m),
                "socks5::parse_request" => truncations(v.name, socks5::parse_request, m),
                "socks5::parse_choice" => truncations(v.name, socks5::parse_choice, m),
                "socks5::parse_reply" => truncations(v.name, socks5::parse_reply, m),
                "socks5::parse_user_pass" => truncations(v.name, socks5::parse_user_pass, m),
                other => panic!("no parser named {other}"),
            }
        }
    }
}

#[test]
fn the_reference_request_is_a_valid_upgrade() {
    let Ok(Parse::Done(h, used)) = http::parse_request(REF_REQUEST) else {
        panic!()
    };
    assert_eq!(used, REF_REQUEST.len());
    let up = ws::check_upgrade(&h).unwrap();
    assert_eq!(up.key, "dGhlIHNhbXBsZSBub25jZQ==");
    assert!(up.socks5_offered);
    let cred = auth::parse_basic(up.authorization.as_deref().unwrap()).unwrap();
    assert_eq!(cred.user, "alice");
    assert_eq!(cred.field, "fHfsL87M5nqRTrQpE9FO1v0RMs3kRfsIMVjWvAUhBEU=");
    assert!(auth::verify(
        &cred.field,
        &auth::stored_digest(b"pasSw0rD"),
        1_795_554_300_000
    ));
}

#[test]
fn mutations_of_valid_messages() {
    let mut all: Vec<Vec<u8>> = valid_messages().into_iter().flat_map(|v| v.msgs).collect();
    // Whole client streams too: the stages behind one another.
    all.push(
        [
            REF_REQUEST,
            &FRAME,
            &[0x05, 0x01, 0x00],
            &socks5_requests()[0],
        ]
        .concat(),
    );
    for msg in &all {
        for i in 0..msg.len() {
            let b = msg[i];
            for v in [
                0x00,
                0x01,
                0x05,
                0x7f,
                0x80,
                0xff,
                b ^ 0x01,
                b ^ 0x20,
                b ^ 0x80,
                b'\r',
                b'\n',
                b' ',
                b':',
            ] {
                let mut m = msg.clone();
                m[i] = v;
                every_parser(&m, false);
            }
            // Deleting a byte, and inserting one.
            let mut m = msg.clone();
            m.remove(i);
            every_parser(&m, false);
            let mut m = msg.clone();
            m.insert(i, 0xff);
            every_parser(&m, false);
        }
    }
    // The Authorization value, character by character.
    let value = "Basic YWxpY2U6Zkhmc0w4N001bnFSVHJRcEU5Rk8xdjBSTXMza1Jmc0lNVmpXdkFVaEJFVT0=";
    for i in 0..value.len() {
        for c in ["", ":", "=", " ", "\t", "é", "A", "\0"] {
            let mut s = value.to_string();
            s.replace_range(i..i + 1, c);
            basic_invariants(&s);
        }
    }
}
