//! Connecting to a destination: resolve, filter through the ACL, then try
//! each permitted address in turn, all under one deadline.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use futures_lite::FutureExt;

use crate::acl::{Acl, canonical};
use crate::proto::socks5::Addr;

/// Why a destination could not be reached.
#[derive(Debug)]
pub enum DialError {
    /// Every resolved address is denied by the ACL.
    Denied,
    /// The name did not resolve (or is not a valid name).
    Resolve(io::Error),
    /// The deadline passed.
    Timeout,
    /// Connecting failed; the last address's error.
    Connect(io::Error),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Denied => f.write_str("denied by destinations policy"),
            DialError::Resolve(e) => write!(f, "name resolution failed: {e}"),
            DialError::Timeout => f.write_str("connect timed out"),
            DialError::Connect(e) => write!(f, "connect failed: {e}"),
        }
    }
}

/// Resolves `addr` to socket addresses. IP literals in domain form
/// (`"127.0.0.1"`, `"::1"`) are taken as IPs without a lookup.
pub async fn resolve(addr: &Addr) -> Result<Vec<SocketAddr>, DialError> {
    match addr {
        Addr::Ip(sa) => Ok(vec![*sa]),
        Addr::Domain(name, port) => {
            let name = std::str::from_utf8(name).map_err(|_| {
                DialError::Resolve(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "name is not UTF-8",
                ))
            })?;
            let bare = name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .unwrap_or(name);
            if let Ok(ip) = bare.parse() {
                return Ok(vec![SocketAddr::new(ip, *port)]);
            }
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(DialError::Resolve(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "invalid name",
                )));
            }
            let found = async_net::resolve((name, *port))
                .await
                .map_err(DialError::Resolve)?;
            if found.is_empty() {
                return Err(DialError::Resolve(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no addresses",
                )));
            }
            Ok(found)
        }
    }
}

/// Connects to `addr` within `timeout`, trying each resolved address the ACL
/// permits. Sets `TCP_NODELAY`: the tunnel forwards what it is given at once.
pub async fn dial(addr: &Addr, acl: &Acl, timeout: Duration) -> Result<TcpStream, DialError> {
    let deadline = Instant::now() + timeout;
    let attempt = async {
        let all = resolve(addr).await?;
        let permitted: Vec<SocketAddr> = all
            .into_iter()
            .map(|sa| SocketAddr::new(canonical(sa.ip()), sa.port()))
            .filter(|sa| acl.permits(*sa))
            .collect();
        if permitted.is_empty() {
            return Err(DialError::Denied);
        }
        let mut last = None;
        for sa in permitted {
            match TcpStream::connect(sa).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(DialError::Connect(
            last.unwrap_or_else(|| io::Error::other("no address")),
        ))
    };
    attempt
        .or(async {
            Timer::at(deadline).await;
            Err(DialError::Timeout)
        })
        .await
}
