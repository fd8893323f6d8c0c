//! The chunked-body scanner (proto::proxy::ChunkedBody): the same verdict
//! and end offset whether the bytes arrive at once, in pieces cut where
//! the fuzz bytes say, or one byte at a time; an error stays an error;
//! after the end nothing more is body. A body encoded from the fuzz bytes
//! ends exactly at its last byte and every strict prefix of it is `More`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use websocks::proto::proxy::{ChunkError, ChunkedBody, Scan};

#[derive(Debug, PartialEq)]
enum Verdict {
    End(usize),
    Failed(ChunkError),
    More,
}

fn run(pieces: &[&[u8]]) -> Verdict {
    let mut c = ChunkedBody::new();
    let mut at = 0;
    for p in pieces {
        match c.feed(p) {
            Ok(Scan::More) => {
                assert!(!c.done());
                at += p.len();
            }
            Ok(Scan::End(n)) => {
                assert!(n <= p.len());
                assert!(c.done());
                assert_eq!(c.feed(b"more"), Ok(Scan::End(0)));
                return Verdict::End(at + n);
            }
            Err(e) => {
                assert_eq!(c.feed(b"0\r\n\r\n"), Err(e), "an error must stay");
                return Verdict::Failed(e);
            }
        }
    }
    Verdict::More
}

fuzz_target!(|data: &[u8]| {
    let (ctl, msg) = common::control(data);
    let whole = run(&[msg]);
    let split = run(&common::pieces(msg, &common::cuts(ctl, msg.len())));
    assert_eq!(whole, split);
    let bytes: Vec<&[u8]> = msg.chunks(1).collect();
    assert_eq!(whole, run(&bytes));

    // Encode msg as a chunked body, chunk sizes from ctl.
    let mut enc = Vec::new();
    let mut rest = msg;
    let mut sizes = ctl.iter().map(|&b| usize::from(b) + 1).cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let ext = if n % 3 == 0 { ";a=b" } else { "" };
        enc.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
        enc.extend_from_slice(&rest[..n]);
        enc.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    enc.extend_from_slice(b"0\r\n");
    if ctl.first().is_some_and(|b| b & 1 == 1) {
        enc.extend_from_slice(b"X-Trailer: y\r\n");
    }
    enc.extend_from_slice(b"\r\n");
    let total = enc.len();
    enc.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(run(&[&enc]), Verdict::End(total));
    assert_eq!(
        run(&common::pieces(&enc, &common::cuts(msg, enc.len()))),
        Verdict::End(total)
    );
    for n in [0, 1, total / 2, total - 1] {
        assert_eq!(run(&[&enc[..n]]), Verdict::More, "prefix {n}");
    }
});
