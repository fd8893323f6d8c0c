//! The Authorization header and the credential check (proto::auth):
//! `parse_basic` of any text, re-encoding a parsed credential, a header we
//! make verifies in its own minute, and `verify` accepts only the three
//! fields of its window, at any clock value.
#![no_main]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use websocks::proto::auth;

fuzz_target!(|data: &[u8]| {
    let (ctl, msg) = common::control(data);
    let mut now = [0u8; 8];
    now[..ctl.len().min(8)].copy_from_slice(&ctl[..ctl.len().min(8)]);
    let now_ms = u64::from_be_bytes(now);
    let text = String::from_utf8_lossy(msg);

    if let Ok(c) = auth::parse_basic(&text) {
        assert!(!c.user.contains(':'));
        let again = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", c.user, c.field))
        );
        assert_eq!(auth::parse_basic(&again), Ok(c.clone()));
        let stored = auth::stored_digest(msg);
        if auth::verify(&c.field, &stored, now_ms) {
            let m = auth::minute_of(now_ms);
            let window = [
                m.saturating_sub(auth::MINUTE_MS),
                m,
                m.saturating_add(auth::MINUTE_MS),
            ];
            assert!(
                window
                    .iter()
                    .any(|&w| auth::password_field(&stored, w) == c.field)
            );
        }
    }

    // A header we make parses back and verifies for its minute.
    let user: String = text.chars().filter(|&c| c != ':').take(64).collect();
    let stored = auth::stored_digest(msg);
    let minute = auth::minute_of(now_ms);
    let header = auth::authorization(&user, &stored, minute);
    let c = auth::parse_basic(&header).expect("our own header");
    assert_eq!(c.user, user);
    assert_eq!(c.field, auth::password_field(&stored, minute));
    assert!(auth::verify(&c.field, &stored, now_ms));
    assert!(!auth::verify(&c.field, &auth::stored_digest(b"other"), now_ms) || msg == b"other");
});
