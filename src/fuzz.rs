//! The fuzz door: the smallest public entry points the fuzz targets in
//! `fuzz/` need into the private configuration code. It exists for
//! fuzzing only (hidden from the docs); the daemon never calls it.

use std::path::Path;
use std::time::Duration;

/// Validates `text` as `websocks check` would validate a file holding it
/// (`config::load` after the read), without reading the text from or
/// writing anything to disk. Errors are the messages `check` prints.
/// Paths named in the text (users files, certificates) are read as `check`
/// reads them, relative ones from a directory that does not exist.
pub fn check_config(text: &str) -> Result<(), String> {
    let path = Path::new("/nonexistent-websocks-fuzz/websocks.yaml");
    crate::config::load_text(path, text)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Parses a destination rule (`server.allow` / `server.deny` entries), and
/// answers whether it matches `addr`.
pub fn parse_rule(s: &str, addr: std::net::SocketAddr) -> Result<bool, String> {
    s.parse::<crate::acl::Rule>().map(|r| r.matches(addr))
}

/// Parses a duration as the configuration writes one.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}
