//! The client side of the WebSocks handshake, the mirror of the server's:
//! connect and upgrade (random key, a strict check of the 101), then frame,
//! greeting and CONNECT in one write and the server's answers to them.
//! Reads go through [`Wire`] under a deadline, as on the server.

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::acl::Acl;
use crate::config::agent::UpstreamServer;
use crate::deadline::timeout;
use crate::dial::{Asker, DialError};
use crate::proto::socks5::{self, Addr, ServerReply};
use crate::proto::{Parse, auth, http, ws};
use crate::tls::{self, Stream};
use crate::wire::{Gone, Wire};

/// Why a server could not be used.
#[derive(Debug)]
pub(crate) enum UpError {
    /// TCP connect (or name resolution) failed.
    Connect(io::Error),
    /// The deadline passed.
    Timeout,
    /// The server's HTTP answer was not a valid WebSocks 101.
    Upgrade(String),
    /// The server broke the protocol after the 101, or closed.
    Protocol(String),
    /// The server took the request but did not answer in time: the
    /// destination is slow, the server is fine.
    ReplyTimeout,
}

impl std::fmt::Display for UpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpError::Connect(e) => write!(f, "connect failed: {e}"),
            UpError::Timeout => f.write_str("timed out"),
            UpError::Upgrade(m) => write!(f, "upgrade refused: {m}"),
            UpError::Protocol(m) => write!(f, "protocol error: {m}"),
            UpError::ReplyTimeout => f.write_str("no SOCKS5 reply in time (destination slow)"),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An upgraded connection: the 101 is in, nothing else sent yet. Its
/// buffer holds what the server sent after its 101 head (nothing, from a
/// conforming one).
pub(crate) type Upgraded = Wire<Stream>;

/// A fresh 16-byte nonce for `Sec-WebSocket-Key` (RFC 6455 section 4.1:
/// random, new for each connection): SHA-256 of a 32-byte seed drawn from
/// the OS once and a counter, so a connection costs no getrandom(2).
fn nonce() -> Result<[u8; 16], getrandom::Error> {
    use sha2::{Digest, Sha256};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: OnceLock<[u8; 32]> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let seed = match SEED.get() {
        Some(s) => s,
        None => {
            let mut s = [0u8; 32];
            getrandom::fill(&mut s)?;
            SEED.get_or_init(|| s)
        }
    };
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let h = Sha256::new()
        .chain_update(seed)
        .chain_update(n.to_le_bytes())
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[..16]);
    Ok(out)
}

/// Reads the server's next `what`, named in the error.
async fn read<T, E: std::fmt::Debug>(
    c: &mut Upgraded,
    parse: impl Fn(&[u8]) -> Result<Parse<T>, E>,
    what: &str,
) -> Result<T, UpError> {
    /// A parse error, or why no more bytes came.
    enum Step<E> {
        Bad(E),
        Gone(Gone),
    }
    impl<E> From<Gone> for Step<E> {
        fn from(g: Gone) -> Step<E> {
            Step::Gone(g)
        }
    }
    c.next(parse, Step::Bad).await.map_err(|step| match step {
        Step::Bad(e) => UpError::Protocol(format!("bad {what}: {e:?}")),
        Step::Gone(Gone::TimedOut) => UpError::Timeout,
        Step::Gone(Gone::Closed) => UpError::Protocol(format!("server closed before {what}")),
        Step::Gone(Gone::Failed(kind)) => UpError::Protocol(format!("reading {what}: {kind}")),
        Step::Gone(g) => UpError::Protocol(format!("reading {what}: {}", g.why())),
    })
}

/// An upgraded connection, and whether its server said it keeps bytes
/// pipelined behind the upgrade request (`WebSocks-Options: pipelining`).
pub(crate) struct Upgrade {
    pub conn: Upgraded,
    pub pipelining: bool,
}

/// Connects to `server` and performs the upgrade within `limit`: random
/// key, the spec's request, and a strict check of the answer (101,
/// `Upgrade: websocket`, `Connection: upgrade`, the accept value, exactly
/// one `socks5`). `pipelined` goes in the same write as the request: only
/// for a server known to keep such bytes (the reference server drops
/// them); empty, the frame waits for the 101.
pub(crate) async fn upgrade(
    server: &UpstreamServer,
    limit: Duration,
    pipelined: &[u8],
) -> Result<Upgrade, UpError> {
    let deadline = Instant::now() + limit;
    let url = &server.url;
    // The same connect as everywhere: every resolved address in turn,
    // each with its share of the deadline, TCP_NODELAY set.
    let target = Addr::Domain(url.host.as_bytes().to_vec(), url.port);
    let tcp = crate::dial::dial(&target, &Acl::any(), limit, Asker::Agent, 0)
        .await
        .map_err(|e| match e {
            // The deadline passing during the lookup is still a timeout
            // here (a server that cannot be reached in time).
            DialError::Timeout => UpError::Timeout,
            DialError::Resolve(e) if e.kind() == io::ErrorKind::TimedOut => UpError::Timeout,
            DialError::Resolve(e) | DialError::Connect(e) => UpError::Connect(e),
            DialError::Denied => UpError::Connect(io::Error::other("denied")),
        })?;
    let stream = match &server.tls {
        None => Stream::Plain(tcp),
        Some((cfg, name)) => timeout(deadline, tls::connect(tcp, cfg.clone(), name.clone()))
            .await
            .map_err(|_| UpError::Timeout)?
            .map_err(|e| UpError::Connect(io::Error::new(e.kind(), format!("TLS: {e}"))))?,
    };
    let mut c = Upgraded::new(stream, deadline);
    // Nothing comes before our request: its answer is waited for, not
    // asked for first.
    c.drained = true;
    let key = ws::key_from(nonce().map_err(|e| UpError::Connect(io::Error::other(e.to_string())))?);
    let authz = auth::authorization(
        &server.user,
        server.digest.expose(),
        auth::minute_of(now_ms()),
    );
    let mut req = Vec::with_capacity(300);
    // Our servers need not hold a banner back for us (see
    // `server.banner_hold`); others ignore the header.
    http::write_upgrade_request(
        &mut req,
        &url.path,
        &server.host_header,
        &key,
        &authz,
        &[ws::DATA_WITH_REPLY],
    );
    req.extend_from_slice(pipelined);
    c.send(&req).await.map_err(|g| match g {
        Gone::TimedOut => UpError::Timeout,
        Gone::Failed(kind) => UpError::Connect(kind.into()),
        g => UpError::Connect(io::Error::other(g.why())),
    })?;
    let head = read(&mut c, http::parse_response, "HTTP response").await?;
    if head.second != "101" {
        return Err(UpError::Upgrade(format!(
            "HTTP {} {}",
            head.second, head.third
        )));
    }
    let accept = ws::accept(&key);
    let protocols: Vec<&str> = head.all("Sec-WebSocket-Protocol").collect();
    if !head.has_token("Upgrade", "websocket") || !head.has_token("Connection", "upgrade") {
        return Err(UpError::Upgrade(
            "101 without Upgrade: websocket / Connection: upgrade".into(),
        ));
    }
    if head.one("Sec-WebSocket-Accept") != Some(accept.as_str()) {
        return Err(UpError::Upgrade("wrong Sec-WebSocket-Accept".into()));
    }
    if protocols != [ws::PROTOCOL] {
        return Err(UpError::Upgrade(format!(
            "Sec-WebSocket-Protocol is {protocols:?}, not [\"socks5\"]"
        )));
    }
    Ok(Upgrade {
        pipelining: head.has_token(ws::OPTIONS, ws::PIPELINING),
        conn: c,
    })
}

/// Frame, greeting and CONNECT for `dest`, as one write.
pub(crate) fn request(dest: &Addr) -> Vec<u8> {
    let mut out = ws::FRAME.to_vec();
    socks5::write_greeting(&mut out, &[socks5::METHOD_NO_AUTH]);
    socks5::write_connect(&mut out, dest);
    out
}

/// A tunnel the server answered: its reply, and the stream when it
/// succeeded. `early` holds destination bytes that came with the reply.
pub(crate) struct Tunnel {
    pub reply: ServerReply,
    pub stream: Stream,
    pub early: Vec<u8>,
}

/// Sends frame + greeting + CONNECT in one write and reads the server's
/// frame and method choice within `limit` (they come at once from a live
/// server, so silence means a dead connection), then its reply within
/// `reply_limit` (the server is connecting to the destination meanwhile;
/// silence then means a slow destination, not a bad server).
pub(crate) async fn open(
    mut c: Upgraded,
    dest: &Addr,
    limit: Duration,
    reply_limit: Duration,
) -> Result<Tunnel, UpError> {
    c.deadline = Instant::now() + limit;
    c.send(&request(dest)).await.map_err(|g| match g {
        Gone::TimedOut => UpError::Timeout,
        Gone::Failed(kind) => UpError::Protocol(format!("writing request: {kind}")),
        g => UpError::Protocol(format!("writing request: {}", g.why())),
    })?;
    answers(c, limit, reply_limit).await
}

/// Reads the server's frame and method choice within `limit`, then its
/// reply within `reply_limit` (see [`open`]); the request went out
/// already (with the upgrade, when pipelined).
pub(crate) async fn answers(
    mut c: Upgraded,
    limit: Duration,
    reply_limit: Duration,
) -> Result<Tunnel, UpError> {
    c.deadline = Instant::now() + limit;
    read(&mut c, ws::check_frame, "frame").await?;
    let method = read(&mut c, socks5::parse_choice, "method choice").await?;
    if method != socks5::METHOD_NO_AUTH {
        return Err(UpError::Protocol(format!(
            "server chose method {method:#04x}"
        )));
    }
    c.deadline = Instant::now() + reply_limit;
    let reply = read(&mut c, socks5::parse_reply, "reply")
        .await
        .map_err(|e| match e {
            UpError::Timeout => UpError::ReplyTimeout,
            e => e,
        })?;
    Ok(Tunnel {
        reply,
        stream: c.stream,
        early: c.buf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ() {
        let all: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| nonce().unwrap()).collect();
        assert_eq!(all.len(), 1000);
    }
}
