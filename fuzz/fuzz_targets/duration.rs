//! Durations as the configuration writes them (websocks::fuzz): any text;
//! a parsed duration is at most a year and reads back from its
//! milliseconds; a number with each unit parses to what it says, or is
//! refused as longer than a year.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use websocks::fuzz::parse_duration;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = parse_duration(s) {
            assert!(d <= YEAR);
            assert_eq!(parse_duration(&format!("{}ms", d.as_millis())), Ok(d));
        }
    }
    let mut n = [0u8; 8];
    let k = data.len().min(8);
    n[..k].copy_from_slice(&data[..k]);
    let n = u64::from_le_bytes(n) >> (data.first().copied().unwrap_or(0) % 64);
    for (unit, ms) in [
        ("ms", 1u128),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("", 1_000),
    ] {
        let want = u128::from(n) * ms;
        let r = parse_duration(&format!("{n}{unit}"));
        if want <= YEAR.as_millis() {
            assert_eq!(r.map(|d| d.as_millis()), Ok(want), "{n}{unit}");
        } else {
            assert!(r.is_err(), "{n}{unit}: {r:?}");
        }
    }
});
