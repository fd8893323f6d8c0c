//! Properties every target shares: prefixes of the input, and cut points
//! derived from the fuzz bytes for feeding a state machine in pieces.

#![allow(dead_code)]

use std::fmt::Debug;

use websocks::proto::Parse;

/// Prefix lengths to try: every one for short inputs, else a spread.
fn prefix_lengths(len: usize) -> Vec<usize> {
    if len <= 40 {
        return (0..=len).collect();
    }
    let mut v: Vec<usize> = (0..=16).collect();
    v.extend((len - 16)..=len);
    let step = len / 16 + 1;
    v.extend((16..len - 16).step_by(step));
    v
}

/// Runs `parse` on `buf` and its prefixes; checks that
/// - `Done(_, used)` uses between 1 byte and all of the input,
/// - the message depends only on the bytes it used,
/// - every strict prefix of a whole message is `Incomplete`,
/// - any prefix that is not `Incomplete` answers what the whole input does
///   (an error stays the same error when more bytes arrive).
///
/// Returns the verdict on the whole input.
pub fn prefixes<T, E, F>(buf: &[u8], parse: F) -> Result<Parse<T>, E>
where
    T: Debug + PartialEq,
    E: Debug + PartialEq,
    F: Fn(&[u8]) -> Result<Parse<T>, E>,
{
    let full = parse(buf);
    if let Ok(Parse::Done(_, used)) = &full {
        let used = *used;
        assert!(
            used >= 1 && used <= buf.len(),
            "used {used} of {}",
            buf.len()
        );
        assert_eq!(parse(&buf[..used]), full, "depends on bytes after `used`");
    }
    let end = match &full {
        Ok(Parse::Done(_, used)) => *used,
        _ => buf.len(),
    };
    for n in prefix_lengths(end) {
        if n == buf.len() {
            continue;
        }
        let r = parse(&buf[..n]);
        match &full {
            Ok(Parse::Done(_, used)) if n < *used => {
                assert_eq!(
                    r,
                    Ok(Parse::Incomplete),
                    "prefix {n} of a message of {used}"
                )
            }
            _ if r != Ok(Parse::Incomplete) => {
                assert_eq!(r, full, "prefix {n} answers otherwise than the whole")
            }
            _ => {}
        }
    }
    full
}

/// Cut points in `0..len`, ascending, derived from `seed`: where the bytes
/// of one read end and the next begin.
pub fn cuts(seed: &[u8], len: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut v: Vec<usize> = seed
        .chunks(2)
        .map(|c| {
            let x = usize::from(c[0]) << 8 | usize::from(*c.get(1).unwrap_or(&0));
            x % len
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `buf` split at `cuts` into consecutive pieces.
pub fn pieces<'a>(buf: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        if c > at && c < buf.len() {
            out.push(&buf[at..c]);
            at = c;
        }
    }
    out.push(&buf[at..]);
    out
}

/// Splits the fuzz input into a control part (its first byte says how many
/// following bytes) and the message.
pub fn control(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = usize::from(n % 16).min(rest.len());
    rest.split_at(n)
}

/// A header value the parser gives back as written: no CR, LF or NUL, and
/// no leading or trailing blanks.
pub fn clean_value(v: &str) -> bool {
    !v.contains(['\r', '\n', '\0']) && v == v.trim_matches([' ', '\t'])
}
