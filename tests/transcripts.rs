//! The six reference transcripts (vproxy agent ↔ vproxy server, copied to
//! `tests/data/`) replayed against OUR server: every client block in order,
//! with a fresh `Authorization` and the SOCKS5 port rewritten to a local
//! destination that answers the transcript's tunnelled bytes. Everything our
//! server sends after its 101 must equal, byte for byte, what vproxy's
//! server sent (TCP segmentation aside), and both FINs must pass.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use websocks::proto::{Parse, http};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// `C>`: agent to server.
    Client,
    /// `S<`: server to agent.
    Server,
}

impl Dir {
    fn parse(s: &str) -> Dir {
        match s {
            "C>" => Dir::Client,
            "S<" => Dir::Server,
            _ => panic!("direction {s:?}"),
        }
    }
}

/// One `# ---- block`: a read() at the relay, with its byte-range labels.
#[derive(Debug, Clone)]
struct Block {
    dir: Dir,
    /// Seconds since the connection opened.
    t: f64,
    bytes: Vec<u8>,
    /// `[a..b) label` lines.
    labels: Vec<(usize, usize, String)>,
}

impl Block {
    /// The range labelled with a label starting `prefix`, if any.
    fn range(&self, prefix: &str) -> Option<(usize, usize)> {
        self.labels
            .iter()
            .find(|(_, _, l)| l.starts_with(prefix))
            .map(|&(a, b, _)| (a, b))
    }

    fn is(&self, prefix: &str) -> bool {
        self.range(prefix).is_some()
    }
}

#[derive(Debug, Clone)]
enum Event {
    Block(Block),
    /// A FIN from that side.
    Eof(Dir),
}

/// Parses a transcript: blocks (checked against their announced length)
/// and EOF events, in order.
fn parse(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let mut cur: Option<(Block, usize)> = None;
    let flush = |cur: &mut Option<(Block, usize)>, events: &mut Vec<Event>| {
        if let Some((b, len)) = cur.take() {
            assert_eq!(
                b.bytes.len(),
                len,
                "block at t={} has the wrong length",
                b.t
            );
            events.push(Event::Block(b));
        }
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ---- block ") {
            flush(&mut cur, &mut events);
            // `N  t=+S  DIR LEN bytes`
            let w: Vec<&str> = rest.split_whitespace().collect();
            let t = w[1].strip_prefix("t=+").unwrap().strip_suffix('s').unwrap();
            assert_eq!(w[4], "bytes", "{line}");
            let block = Block {
                dir: Dir::parse(w[2]),
                t: t.parse().unwrap(),
                bytes: Vec::new(),
                labels: Vec::new(),
            };
            cur = Some((block, w[3].parse().unwrap()));
        } else if let Some(rest) = line.strip_prefix("# ---- event ") {
            flush(&mut cur, &mut events);
            let w: Vec<&str> = rest.split_whitespace().collect();
            if w.get(2) == Some(&"EOF") {
                events.push(Event::Eof(Dir::parse(w[1])));
            }
        } else if let Some(rest) = line.strip_prefix("#   [") {
            let (range, label) = rest.split_once(") ").unwrap();
            let (a, b) = range.split_once("..").unwrap();
            let (_, len) = cur.as_ref().expect("label outside a block");
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            assert!(a < b && b <= *len, "{line}");
            cur.as_mut()
                .unwrap()
                .0
                .labels
                .push((a, b, label.to_string()));
        } else if line.starts_with("C> ") || line.starts_with("S< ") {
            let (block, _) = cur.as_mut().expect("data outside a block");
            assert_eq!(Dir::parse(&line[..2]), block.dir, "{line}");
            // The hex sits in characters 10 to 58 (1-based).
            let hex: String = line[9..58.min(line.len())]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            for i in (0..hex.len()).step_by(2) {
                block
                    .bytes
                    .push(u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
            }
        }
    }
    flush(&mut cur, &mut events);
    events
}

fn blocks(events: &[Event]) -> impl Iterator<Item = &Block> {
    events.iter().filter_map(|e| match e {
        Event::Block(b) => Some(b),
        Event::Eof(_) => None,
    })
}

/// The captured port, 18000, as the transcripts carry it.
const CAPTURED_PORT: [u8; 2] = [0x46, 0x50];

/// The transcript made ready for our server: fresh credentials in the HTTP
/// request, `port` in the SOCKS5 request and reply.
fn prepare(events: &mut [Event], port: u16) {
    for e in events.iter_mut() {
        let Event::Block(b) = e else { continue };
        if b.is("HTTP upgrade request") {
            let text = String::from_utf8(b.bytes.clone()).unwrap();
            let start = text.find("\r\nAuthorization: Basic ").unwrap() + 2;
            let end = start + text[start..].find("\r\n").unwrap();
            let fresh = format!("Authorization: {}", authorization(USER, PASS, 0));
            b.bytes = format!("{}{fresh}{}", &text[..start], &text[end..]).into_bytes();
        }
        for label in ["SOCKS5 request", "SOCKS5 reply"] {
            if let Some((_, end)) = b.range(label) {
                assert_eq!(b.bytes[end - 2..end], CAPTURED_PORT, "{label}");
                b.bytes[end - 2..end].copy_from_slice(&port.to_be_bytes());
            }
        }
    }
}

/// Tunnelled application data in one direction, concatenated.
fn tunnelled(events: &[Event], dir: Dir) -> Vec<u8> {
    blocks(events)
        .filter(|b| b.dir == dir && b.is("tunnelled application data"))
        .flat_map(|b| b.bytes.clone())
        .collect()
}

/// What the destination saw: the request bytes, and what followed them
/// up to the FIN.
type Seen = (Vec<u8>, Vec<u8>);

/// The target of the transcript: accepts one connection, reads the
/// tunnelled request (as many bytes as the transcript's), answers exactly
/// the transcript's tunnelled response blocks, sends FIN, then reads to the
/// client's FIN passed on by the server.
fn destination(request_len: usize, response: Vec<Vec<u8>>) -> (u16, mpsc::Receiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let req = read_exact_after(&mut s, Vec::new(), request_len);
        for part in &response {
            s.write_all(part).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        let rest = read_to_end(&mut s);
        let _ = tx.send((req, rest));
    });
    (port, rx)
}

/// Reads a response head; returns its raw bytes and what followed.
fn read_raw_head(s: &mut TcpStream) -> (Vec<u8>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Parse::Done(_, used) = http::parse_response(&buf).unwrap() {
            let rest = buf.split_off(used);
            return (buf, rest);
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "EOF before the 101: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How to send the client's blocks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Block by block as captured: before each client block, wait for every
    /// server byte the transcript shows before it (lock-step for the strict
    /// transcripts); a pause of 200 ms stands for the captured seconds
    /// between a pooled connection's PONGs.
    AsCaptured,
    /// The HTTP request and every later client block (PONGs, frame,
    /// greeting, SOCKS5 request, tunnelled GET) in one write, before the 101.
    OneWrite,
}

/// Checks our 101 head against the transcript's.
fn check_101(ours: &[u8], theirs: &[u8]) {
    let Parse::Done(h, _) = http::parse_response(ours).unwrap() else {
        panic!("incomplete head")
    };
    assert_eq!(h.second, "101", "{}", String::from_utf8_lossy(ours));
    // vproxy spells it Sec-Websocket-Accept, we Sec-WebSocket-Accept: the
    // name is compared without regard to case.
    assert_eq!(
        h.one("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(h.one("Sec-WebSocket-Protocol"), Some("socks5"));
    assert_eq!(h.one("upgrade"), Some("websocket"));
    // Beyond that, the same head up to the case of header names.
    assert_eq!(
        String::from_utf8_lossy(ours).to_ascii_lowercase(),
        String::from_utf8_lossy(theirs).to_ascii_lowercase()
    );
}

/// Asserts equal byte strings; on a difference, shows where, in hex.
fn assert_bytes_eq(ours: &[u8], theirs: &[u8], what: &str) {
    if ours == theirs {
        return;
    }
    let at = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    let hex = |b: &[u8]| {
        let end = b.len().min(at + 16);
        b[at.saturating_sub(8).min(end)..end]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    panic!(
        "{what}: ours ({} bytes) and the transcript's ({} bytes) differ at offset {at}\n  \
         ours:   ..{}\n  theirs: ..{}",
        ours.len(),
        theirs.len(),
        hex(ours),
        hex(theirs)
    );
}

fn replay(text: &str, mode: Mode) {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let mut events = parse(text);
    let response: Vec<Vec<u8>> = blocks(&events)
        .filter(|b| b.dir == Dir::Server && b.is("tunnelled application data"))
        .map(|b| b.bytes.clone())
        .collect();
    let request = tunnelled(&events, Dir::Client);
    let (port, seen) = destination(request.len(), response);
    prepare(&mut events, port);

    let theirs_101 = blocks(&events)
        .find(|b| b.is("HTTP upgrade response"))
        .expect("a 101 block")
        .bytes
        .clone();
    // Everything the transcript's server sent after its 101.
    let expected: Vec<u8> = blocks(&events)
        .filter(|b| b.dir == Dir::Server && !b.is("HTTP upgrade response"))
        .flat_map(|b| b.bytes.clone())
        .collect();

    let mut s = connect(d.addr());
    let mut head: Option<Vec<u8>> = None;
    let mut got = Vec::new();
    // Server bytes after the 101 that the transcript shows so far.
    let mut due = 0;
    let mut last_t = 0.0;
    let mut saw_101 = false;

    let one_write: Vec<u8> = blocks(&events)
        .filter(|b| b.dir == Dir::Client)
        .flat_map(|b| b.bytes.clone())
        .collect();

    for e in &events {
        match e {
            Event::Block(b) if b.dir == Dir::Client => {
                if b.is("HTTP upgrade request") {
                    let first = match mode {
                        Mode::AsCaptured => b.bytes.clone(),
                        Mode::OneWrite => one_write.clone(),
                    };
                    s.write_all(&first).unwrap();
                } else if mode == Mode::AsCaptured {
                    if saw_101 && head.is_none() {
                        let (h, rest) = read_raw_head(&mut s);
                        head = Some(h);
                        got = rest;
                    }
                    got = read_exact_after(&mut s, got, due);
                    if b.t - last_t > 1.0 {
                        thread::sleep(Duration::from_millis(200));
                    }
                    s.write_all(&b.bytes).unwrap();
                }
                last_t = b.t;
            }
            Event::Block(b) => {
                if b.is("HTTP upgrade response") {
                    saw_101 = true;
                } else {
                    due += b.bytes.len();
                }
            }
            Event::Eof(Dir::Server) => {
                if head.is_none() {
                    let (h, rest) = read_raw_head(&mut s);
                    head = Some(h);
                    got = rest;
                }
                // The destination's FIN is passed on: the stream ends, and
                // with exactly the transcript's bytes.
                got = read_exact_after(&mut s, got, due);
                got.extend(read_to_end(&mut s));
            }
            Event::Eof(Dir::Client) => s.shutdown(Shutdown::Write).unwrap(),
        }
    }
    check_101(head.as_ref().expect("a 101"), &theirs_101);
    assert_bytes_eq(&got, &expected, "after the 101");
    // The destination got the tunnelled request, then our client's FIN.
    let (req, rest) = seen.recv_timeout(IO_TIMEOUT).expect("destination done");
    assert_eq!(req, request);
    assert_eq!(rest, b"");
    let down = tunnelled(&events, Dir::Server).len();
    d.wait_log(&[
        "user=alice",
        &format!(":{port} "),
        &format!("up={} ", request.len()),
        &format!("down={down} "),
        "end=closed",
    ]);
}

const CONNECT_DOMAIN: &str = include_str!("data/connect-domain.txt");
const CONNECT_IPV4: &str = include_str!("data/connect-ipv4.txt");
const POOLED_DOMAIN: &str = include_str!("data/pooled-connect-domain.txt");
const POOLED_IPV4: &str = include_str!("data/pooled-connect-ipv4.txt");
const STRICT_DOMAIN: &str = include_str!("data/strict-connect-domain.txt");
const STRICT_IPV4: &str = include_str!("data/strict-connect-ipv4.txt");

#[test]
fn transcripts_parse_as_indexed() {
    // `blocks` of the transcripts' index.json, and the shape every one has.
    for (text, n) in [
        (CONNECT_DOMAIN, 8),
        (CONNECT_IPV4, 9),
        (POOLED_DOMAIN, 11),
        (POOLED_IPV4, 10),
        (STRICT_DOMAIN, 11),
        (STRICT_IPV4, 10),
    ] {
        let events = parse(text);
        let b: Vec<&Block> = blocks(&events).collect();
        assert_eq!(b.len(), n);
        assert!(b[0].dir == Dir::Client && b[0].is("HTTP upgrade request"));
        assert!(b[1].dir == Dir::Server && b[1].is("HTTP upgrade response"));
        assert_eq!(b[1].bytes.len(), 161);
        assert_eq!(tunnelled(&events, Dir::Client).len(), 79);
        assert_eq!(tunnelled(&events, Dir::Server).len(), 185 + 58);
        let eofs: Vec<Dir> = events
            .iter()
            .filter_map(|e| match e {
                Event::Eof(d) => Some(*d),
                Event::Block(_) => None,
            })
            .collect();
        assert_eq!(eofs, [Dir::Server, Dir::Client]);
        // After the 101: frame, method choice, reply for port 18000, page.
        let after: Vec<u8> = b[2..]
            .iter()
            .filter(|b| b.dir == Dir::Server)
            .flat_map(|b| b.bytes.clone())
            .collect();
        assert_eq!(
            after[..22],
            [
                0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x05, 0x00, 0x05, 0x00,
                0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x46, 0x50
            ]
        );
        assert_eq!(after.len(), 22 + 243);
    }
    // The PONGs of the pooled transcripts.
    let pongs = |t| {
        blocks(&parse(t))
            .filter(|b| b.is("WebSocket PONG"))
            .map(|b| b.bytes.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(pongs(POOLED_DOMAIN), [[0x8a, 0x00], [0x8a, 0x00]]);
    assert_eq!(pongs(POOLED_IPV4), [[0x8a, 0x00]]);
}

#[test]
fn connect_domain() {
    replay(CONNECT_DOMAIN, Mode::AsCaptured);
}

#[test]
fn connect_ipv4() {
    replay(CONNECT_IPV4, Mode::AsCaptured);
}

#[test]
fn pooled_connect_domain() {
    replay(POOLED_DOMAIN, Mode::AsCaptured);
}

#[test]
fn pooled_connect_ipv4() {
    replay(POOLED_IPV4, Mode::AsCaptured);
}

#[test]
fn strict_connect_domain() {
    replay(STRICT_DOMAIN, Mode::AsCaptured);
}

#[test]
fn strict_connect_ipv4() {
    replay(STRICT_IPV4, Mode::AsCaptured);
}

#[test]
fn connect_domain_in_one_write() {
    replay(CONNECT_DOMAIN, Mode::OneWrite);
}

#[test]
fn connect_ipv4_in_one_write() {
    replay(CONNECT_IPV4, Mode::OneWrite);
}

#[test]
fn pooled_connect_domain_in_one_write() {
    replay(POOLED_DOMAIN, Mode::OneWrite);
}

#[test]
fn pooled_connect_ipv4_in_one_write() {
    replay(POOLED_IPV4, Mode::OneWrite);
}

#[test]
fn strict_connect_domain_in_one_write() {
    replay(STRICT_DOMAIN, Mode::OneWrite);
}

#[test]
fn strict_connect_ipv4_in_one_write() {
    replay(STRICT_IPV4, Mode::OneWrite);
}
