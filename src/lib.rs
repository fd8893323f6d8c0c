//! websocks: SOCKS5 carried inside a WebSocket upgrade (the WebSocks
//! protocol): the server and the agent.
//!
//! Layers, dependencies pointing down: a module imports only from the
//! floors below its own (tests aside).
//!
//! ```text
//! cli                          the command line, exit codes (main calls it)
//! daemon                       listeners, signals, reload, drain
//! server      agent            one connection each; siblings: neither
//!                              imports the other
//! admission   relay   dial     below both: admission, the relay,
//! wire   log   systemd         connecting, buffered reads and the graceful
//!                              close; logging, sd_notify
//! config                       the configuration
//! acl   tls   deadline         destination policy, TLS, the timeout helper
//! proto                        sans-I/O codecs; imports nothing else
//! ```

pub mod acl;
pub mod admission;
pub mod agent;
pub mod cli;
pub mod config;
pub mod daemon;
mod deadline;
pub mod dial;
pub mod log;
pub mod proto;
pub mod relay;
pub mod server;
mod shutdown;
pub mod systemd;
pub mod tls;
pub mod wire;
