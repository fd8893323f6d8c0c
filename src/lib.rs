//! websocks: SOCKS5 carried inside a WebSocket upgrade (the WebSocks
//! protocol): the server and the agent.
//!
//! Layers, dependencies pointing down: a module imports only from the
//! floors below its own (tests aside).
//!
//! ```text
//! cli   fuzz                   the command line, exit codes (main calls
//!                              it); the hidden door for `fuzz/`
//! daemon                       listeners, signals, reload, drain
//! server   agent   exporter    one connection each; siblings: none
//!                              imports another (exporter: the metrics
//!                              endpoint's one request)
//! admission   relay   dial     below them: admission, the relay,
//! wire   log   systemd         connecting, buffered reads and the graceful
//! shutdown   metrics           close; logging, sd_notify; the stop handle
//!                              every serve loop and relay is given; the
//!                              counters and their exposition
//! config                       the configuration: a private serde schema
//!                              checked into the types above use
//! acl   tls   deadline         destination policy, TLS, the timeout helper
//!                              and the queue its deadlines wait in
//! proto                        sans-I/O codecs; imports nothing else
//!
//! Only `proto` (for the tests and fuzz targets), `main` and the hidden
//! `fuzz` door (config, rules, durations for `fuzz/`) are public;
//! `unsafe` is denied everywhere but `systemd` (Cargo.toml `[lints]`).
//! ```

// What the binary and the tests use: the command line and the sans-I/O
// codecs. Everything else is private to the crate.
pub mod proto;

mod acl;
mod admission;
mod agent;
mod cli;
mod config;
mod daemon;
mod deadline;
mod dial;
mod exporter;
// Entry points for the fuzz targets in `fuzz/` (the config loader, rules,
// durations); not an API.
#[doc(hidden)]
pub mod fuzz;
mod log;
mod metrics;
mod relay;
mod server;
mod shutdown;
// The one place that needs `unsafe`: taking ownership of the descriptors
// systemd passes (LISTEN_FDS).
#[allow(unsafe_code)]
mod systemd;
mod tls;
mod wire;

pub use cli::main;
