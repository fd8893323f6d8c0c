//! websocks: SOCKS5 carried inside a WebSocket upgrade (the WebSocks
//! protocol): the server and the agent.
//!
//! Layers, dependencies pointing down: `cli` → `daemon` → `server` →
//! `relay`, `dial`, `acl` → `config` → `proto` (sans-I/O codecs).

pub mod acl;
pub mod admission;
pub mod agent;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dial;
pub mod log;
pub mod proto;
pub mod relay;
pub mod server;
mod shutdown;
pub mod systemd;
pub mod tls;
pub mod wire;
