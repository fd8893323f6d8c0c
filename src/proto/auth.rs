//! The spec's minute-salted Basic credential (chapter "Auth").
//!
//! ```text
//! stored  = base64(sha256(real_password))          what `hash-password` prints
//! field   = base64(sha256(stored + decimal(minute_ms)))
//! header  = "Basic " + base64(user + ":" + field)
//! ```
//!
//! `minute_ms` is Unix time in milliseconds rounded down to a whole minute.
//! A server accepts the field for the minute before, the current and the next.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One minute in milliseconds, the salt's unit.
pub const MINUTE_MS: u64 = 60_000;

/// Why an `Authorization` value is not a usable credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Not `Basic <token>`.
    NotBasic,
    /// The token is not base64, not UTF-8, or has no `:`.
    Malformed,
}

/// The stored form of a password: `base64(sha256(password))`.
pub fn stored_digest(password: &[u8]) -> String {
    STANDARD.encode(Sha256::digest(password))
}

/// Rounds Unix milliseconds down to the minute.
pub fn minute_of(unix_ms: u64) -> u64 {
    unix_ms - unix_ms % MINUTE_MS
}

/// The hashed password field for `minute_ms`, from the stored digest.
pub fn password_field(stored: &str, minute_ms: u64) -> String {
    let mut h = Sha256::new();
    h.update(stored.as_bytes());
    h.update(minute_ms.to_string().as_bytes());
    STANDARD.encode(h.finalize())
}

/// The whole header value a client sends: `Basic base64(user:field)`.
pub fn authorization(user: &str, stored: &str, minute_ms: u64) -> String {
    let field = password_field(stored, minute_ms);
    format!("Basic {}", STANDARD.encode(format!("{user}:{field}")))
}

/// A decoded Basic credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    pub field: String,
}

/// Decodes `Basic <token>`. The scheme is matched without regard to case
/// (RFC 7617 section 2; RFC 9110 section 11.1) and the token may omit its
/// `=` padding, as the reference server allows. The user is everything before
/// the first `:` (RFC 7617: a user-id cannot contain a colon).
pub fn parse_basic(value: &str) -> Result<Credential, AuthError> {
    let value = value.trim();
    let (scheme, token) = value.split_once([' ', '\t']).ok_or(AuthError::NotBasic)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::NotBasic);
    }
    let token = token.trim();
    let raw = STANDARD
        .decode(token)
        .or_else(|_| STANDARD_NO_PAD.decode(token))
        .map_err(|_| AuthError::Malformed)?;
    let text = String::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
    let (user, field) = text.split_once(':').ok_or(AuthError::Malformed)?;
    Ok(Credential {
        user: user.to_string(),
        field: field.to_string(),
    })
}

/// True when `field` is the hash of `stored` for the minute before, the
/// current one or the next, as seen from `now_ms`. All three are computed and
/// compared in constant time, so timing says nothing about which matched.
/// The window saturates at both ends of the clock's range (found by the
/// `auth` fuzz target: `m + MINUTE_MS` overflowed within a minute of
/// `u64::MAX`).
pub fn verify(field: &str, stored: &str, now_ms: u64) -> bool {
    let m = minute_of(now_ms);
    let mut ok = subtle::Choice::from(0);
    for minute in [m.saturating_sub(MINUTE_MS), m, m.saturating_add(MINUTE_MS)] {
        ok |= password_field(stored, minute)
            .as_bytes()
            .ct_eq(field.as_bytes());
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline() {
        let stored = stored_digest(b"pasSw0rD");
        assert_eq!(stored, "AUiBnFUd+h5Wy2jsmdfmwRdKqTMBVNPuxZcRy3PYkxk=");
        assert_eq!(
            password_field(&stored, 1569643260000),
            "kdIeonbE6ghFPyVAb+3etmOHIhCaByiP2Tibq7tnjP4="
        );
    }

    #[test]
    fn windows() {
        let stored = stored_digest(b"x");
        let m = 1_700_000_040_000;
        let f = password_field(&stored, m);
        assert!(verify(&f, &stored, m - 1));
        assert!(verify(&f, &stored, m));
        assert!(verify(&f, &stored, m + 119_999));
        assert!(!verify(&f, &stored, m - 60_001));
        assert!(!verify(&f, &stored, m + 120_000));
    }

    #[test]
    fn window_at_the_ends_of_the_clock() {
        // fuzz/regressions/auth-verify-overflow: this panicked (overflow).
        let stored = stored_digest(b"x");
        let last = minute_of(u64::MAX);
        assert!(verify(&password_field(&stored, last), &stored, u64::MAX));
        assert!(verify(
            &password_field(&stored, last - MINUTE_MS),
            &stored,
            u64::MAX
        ));
        assert!(verify(&password_field(&stored, 0), &stored, 0));
        assert!(!verify(&password_field(&stored, MINUTE_MS * 2), &stored, 0));
    }

    #[test]
    fn basic_parsing() {
        assert_eq!(parse_basic("Token abc"), Err(AuthError::NotBasic));
        assert_eq!(parse_basic("Basic"), Err(AuthError::NotBasic));
        assert_eq!(parse_basic("Basic !!!"), Err(AuthError::Malformed));
        assert_eq!(parse_basic("Basic YWxpY2U="), Err(AuthError::Malformed));
        let c = parse_basic("  basic   YWxpY2U6Yjpj  ").unwrap();
        assert_eq!((c.user.as_str(), c.field.as_str()), ("alice", "b:c"));
    }
}
