//! The WebSocket frame/PONG reader (proto::ws): prefixes of
//! `parse_preamble` and `check_frame`, `leading_pongs` counts exactly the
//! leading `8A 00` pairs, and the server's reading loop (drain PONGs in bulk,
//! then parse; `server::wait_for_frame`) reaches the same verdict whether
//! the bytes arrive at once, one parse at a time or in pieces.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use websocks::proto::Parse;
use websocks::proto::ws::{self, FrameError, Preamble};

#[derive(Debug, PartialEq)]
enum Verdict {
    /// The frame ended after this many bytes of the stream.
    Frame(usize),
    Failed(FrameError),
    Waiting,
}

/// The server's loop over what has arrived so far; `consumed` counts the
/// bytes drained before `buf`.
fn server_loop(buf: &mut Vec<u8>, consumed: &mut usize) -> Verdict {
    let mut spins = 0;
    loop {
        let pongs = ws::leading_pongs(buf);
        assert!(pongs * 2 <= buf.len());
        assert!(buf[..pongs * 2].chunks(2).all(|c| c == ws::PONG));
        buf.drain(..pongs * 2);
        *consumed += pongs * 2;
        match ws::parse_preamble(buf) {
            Err(e) => return Verdict::Failed(e),
            Ok(Parse::Done(Preamble::Frame, used)) => {
                buf.drain(..used);
                return Verdict::Frame(*consumed + used);
            }
            Ok(Parse::Done(Preamble::Pong, _)) => {
                // The loop relies on leading_pongs draining this PONG.
                spins += 1;
                assert!(spins < 2, "a PONG leading_pongs does not drain");
            }
            Ok(Parse::Incomplete) => return Verdict::Waiting,
        }
    }
}

/// One `parse_preamble` per item, no bulk drain.
fn one_by_one(data: &[u8]) -> Verdict {
    let mut at = 0;
    loop {
        match ws::parse_preamble(&data[at..]) {
            Err(e) => return Verdict::Failed(e),
            Ok(Parse::Done(Preamble::Frame, used)) => return Verdict::Frame(at + used),
            Ok(Parse::Done(Preamble::Pong, used)) => {
                assert_eq!(used, 2);
                at += used;
            }
            Ok(Parse::Incomplete) => return Verdict::Waiting,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (ctl, msg) = common::control(data);
    let _ = common::prefixes(msg, ws::parse_preamble);
    let _ = common::prefixes(msg, ws::check_frame);

    let n = ws::leading_pongs(msg);
    assert!(msg[n * 2..].get(..2) != Some(&ws::PONG[..]));

    let whole = {
        let mut buf = msg.to_vec();
        server_loop(&mut buf, &mut 0)
    };
    assert_eq!(whole, one_by_one(msg));

    // The same bytes in pieces: a verdict other than Waiting is final.
    let mut buf = Vec::new();
    let mut consumed = 0;
    let mut seen = Verdict::Waiting;
    for piece in common::pieces(msg, &common::cuts(ctl, msg.len())) {
        buf.extend_from_slice(piece);
        seen = server_loop(&mut buf, &mut consumed);
        if seen != Verdict::Waiting {
            break;
        }
    }
    assert_eq!(seen, whole);
});
