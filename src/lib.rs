//! websocks: SOCKS5 inside a WebSocket upgrade.
pub mod proto;
