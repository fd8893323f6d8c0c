//! Sans-I/O codecs for everything WebSocks puts on the wire.
//!
//! Every parser takes the bytes received so far and answers
//! `Ok(Parse::Incomplete)` ("need more"), `Ok(Parse::Done(msg, used))` or a
//! typed error. Nothing here touches a socket, a clock or an executor; the
//! caller passes the current minute in. No parser panics on any input.

pub mod auth;
pub mod http;
pub mod proxy;
pub mod socks5;
pub mod ws;

/// The outcome of feeding bytes to a parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// Not enough bytes yet; call again with more.
    Incomplete,
    /// A whole message, and how many bytes of the input it used.
    Done(T, usize),
}

impl<T> Parse<T> {
    /// Maps the message, keeping the byte count.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Parse<U> {
        match self {
            Parse::Incomplete => Parse::Incomplete,
            Parse::Done(t, n) => Parse::Done(f(t), n),
        }
    }
}
