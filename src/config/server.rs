//! The `server:` section: listeners, limits, timeouts, the destination
//! policy, TLS and users, validated into [`Server`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::scalar::{Dur, Listen};
use super::users::{User, Users, server_users};
use super::{
    ConfigError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_SEND_TIMEOUT, Source, default_max_connections,
};
use crate::acl::{Acl, Rule};

/// KiB of kernel buffers a tunnel may hold per direction.
const DEFAULT_TUNNEL_BUFFER_KIB: usize = 512;

/// How long a destination's first bytes wait for the client's (see
/// [`Server::banner_hold`]).
const DEFAULT_BANNER_HOLD: Duration = Duration::from_millis(50);
/// The longest `banner_hold` allowed: beyond this it is a delay, not a
/// separation.
const MAX_BANNER_HOLD: Duration = Duration::from_secs(1);

/// Loopback, link-local (with the cloud metadata address 169.254.169.254 and
/// AWS's fd00:ec2::254), "this network" and the unspecified address: what a
/// public proxy must never let a client reach by default.
pub(crate) const DEFAULT_DENY: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    "fd00:ec2::254/128",
];

/// The server's configuration after loading and validation.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub listen: Vec<SocketAddr>,
    pub users: Users,
    pub timeouts: ServerTimeouts,
    pub max_connections: usize,
    /// Budget of connections still authenticating, in total and per source.
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
    /// Bytes of kernel buffers per tunnel direction (0: unbounded).
    pub tunnel_buffer: usize,
    /// Destination bytes that come before the client's first byte (a
    /// banner: SSH, SMTP, FTP, MySQL speak first) are held this long at
    /// most after the SOCKS5 reply, so the reply reaches the client in a
    /// read of its own: strict clients (the reference agent) take anything
    /// after the reply in the same read for an error. Zero: not held.
    /// Clients that offer `data-with-reply` (our agent) are never held.
    pub banner_hold: Duration,
    pub acl: Acl,
    pub reply_address: ReplyAddress,
    pub health_path: Option<String>,
    /// TLS, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The server's deadlines, each longer than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerTimeouts {
    /// From accept to a complete SOCKS5 request.
    pub handshake: Duration,
    /// Resolving and connecting to the destination.
    pub connect: Duration,
    /// A tunnel with no byte either way for this long is closed.
    pub idle: Duration,
    /// A write in a tunnel that makes no progress for this long (the side
    /// it goes to stopped reading) ends the tunnel with a reset.
    pub send: Duration,
}

/// What the server puts in BND.ADDR/BND.PORT of a success reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReplyAddress {
    /// `0.0.0.0` and the requested port, byte for byte what the reference
    /// server sends; reveals nothing about the server's network.
    #[default]
    Hidden,
    /// The local address of the connection to the destination (RFC 1928
    /// section 6).
    Local,
}

/// The `server:` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct ServerConfig")]
pub(super) struct RawServer {
    /// Addresses to listen on.
    listen: Vec<Listen>,
    /// Users written in this file.
    #[serde(default)]
    users: Vec<User>,
    /// A YAML file holding a list of users, read at start (and on reload).
    #[serde(default)]
    users_file: Option<PathBuf>,
    #[serde(default)]
    timeouts: RawServerTimeouts,
    /// Connections served at once; more are closed at accept.
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    /// Connections not yet authenticated, at once (default: half of
    /// `max_connections`); more are closed at accept.
    #[serde(default)]
    max_handshakes: Option<usize>,
    /// KiB of kernel buffers a tunnel may hold per direction (0: kernel
    /// autotuning, unbounded).
    #[serde(default = "default_tunnel_buffer_kib")]
    tunnel_buffer_kib: usize,
    /// How long a destination's first bytes wait for the client's, at most
    /// (0: not at all).
    #[serde(default = "default_banner_hold")]
    banner_hold: Dur,
    /// Connections not yet authenticated from one address (an IPv6 /64),
    /// at once (default: a quarter of `max_handshakes`, at most 64).
    #[serde(default)]
    max_handshakes_per_source: Option<usize>,
    #[serde(default)]
    destinations: RawDestinations,
    #[serde(default)]
    socks_reply_address: ReplyAddress,
    /// Path that answers a plain `GET` (no upgrade) with `200`, for load
    /// balancer health checks. Off by default.
    #[serde(default)]
    health_path: Option<String>,
    /// Serve TLS (wss://) on every listener.
    #[serde(default)]
    tls: Option<RawTls>,
}

fn default_tunnel_buffer_kib() -> usize {
    DEFAULT_TUNNEL_BUFFER_KIB
}

fn default_banner_hold() -> Dur {
    Dur(DEFAULT_BANNER_HOLD)
}

/// PEM files for the server's TLS, re-read on reload.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct TlsFiles")]
struct RawTls {
    /// Certificate chain, leaf first.
    cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "struct Timeouts")]
struct RawServerTimeouts {
    handshake: Dur,
    connect: Dur,
    idle: Dur,
    send: Dur,
}

impl Default for RawServerTimeouts {
    fn default() -> Self {
        RawServerTimeouts {
            handshake: Dur(DEFAULT_HANDSHAKE_TIMEOUT),
            connect: Dur(DEFAULT_CONNECT_TIMEOUT),
            idle: Dur(DEFAULT_IDLE_TIMEOUT),
            send: Dur(DEFAULT_SEND_TIMEOUT),
        }
    }
}

/// Destination access control. `allow` is checked first, then `deny`, then
/// `default` decides.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct Destinations")]
struct RawDestinations {
    #[serde(default)]
    allow: Vec<Rule>,
    #[serde(default = "default_deny")]
    deny: Vec<Rule>,
    #[serde(default)]
    default: DefaultPolicy,
}

/// What `destinations.default` decides for an address no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DefaultPolicy {
    #[default]
    Allow,
    Deny,
}

fn default_deny() -> Vec<Rule> {
    DEFAULT_DENY
        .iter()
        .map(|s| s.parse().expect("built-in rule"))
        .collect()
}

impl Default for RawDestinations {
    fn default() -> Self {
        RawDestinations {
            allow: Vec::new(),
            deny: default_deny(),
            default: DefaultPolicy::Allow,
        }
    }
}

/// Checks the `server:` section, in the order its keys are reported.
pub(super) fn validate(s: RawServer, src: &Source) -> Result<Server, ConfigError> {
    let listen = listen(&s.listen, src)?;
    let (max_handshakes, max_handshakes_per_source) = handshake_budgets(&s, src)?;
    let tunnel_buffer = tunnel_buffer(s.tunnel_buffer_kib, src)?;
    if s.banner_hold.0 > MAX_BANNER_HOLD {
        return Err(src.err(
            "server.banner_hold",
            "must be at most 1s (0 turns it off)".into(),
        ));
    }
    let timeouts = timeouts(&s.timeouts, src)?;
    if let Some(p) = &s.health_path
        && !p.starts_with('/')
    {
        return Err(src.err("server.health_path", format!("`{p}` must start with /")));
    }
    let tls = match &s.tls {
        None => None,
        Some(t) => Some(
            crate::tls::server_config(&src.base.join(&t.cert), &src.base.join(&t.key))
                .map_err(|m| src.err("server.tls", m))?,
        ),
    };
    let users_file = s.users_file.as_ref().map(|f| src.base.join(f));
    let users = server_users(&s.users, users_file.as_deref(), src)?;
    Ok(Server {
        listen,
        users,
        timeouts,
        max_connections: s.max_connections,
        max_handshakes,
        max_handshakes_per_source,
        tunnel_buffer,
        banner_hold: s.banner_hold.0,
        acl: Acl {
            allow: s.destinations.allow,
            deny: s.destinations.deny,
            default_allow: s.destinations.default == DefaultPolicy::Allow,
        },
        reply_address: s.socks_reply_address,
        health_path: s.health_path,
        tls,
    })
}

/// At least one address, none twice (port 0 may repeat: each binds anew).
fn listen(listen: &[Listen], src: &Source) -> Result<Vec<SocketAddr>, ConfigError> {
    if listen.is_empty() {
        return Err(src.err("server.listen", "at least one address is required".into()));
    }
    let mut seen = HashSet::new();
    for l in listen {
        if l.0.port() != 0 && !seen.insert(l.0) {
            return Err(src.err("server.listen", format!("{} is listed twice", l.0)));
        }
    }
    Ok(listen.iter().map(|l| l.0).collect())
}

/// `max_connections`, and the budgets of connections still authenticating
/// in total and per source, each within the one above it.
fn handshake_budgets(s: &RawServer, src: &Source) -> Result<(usize, usize), ConfigError> {
    if s.max_connections == 0 {
        return Err(src.err("server.max_connections", "must be at least 1".into()));
    }
    let max_handshakes = s.max_handshakes.unwrap_or((s.max_connections / 2).max(1));
    if max_handshakes == 0 || max_handshakes > s.max_connections {
        return Err(src.err(
            "server.max_handshakes",
            format!(
                "must be from 1 to max_connections ({}), so authenticated tunnels keep room",
                s.max_connections
            ),
        ));
    }
    let per_source = s
        .max_handshakes_per_source
        .unwrap_or((max_handshakes / 4).clamp(1, 64));
    if per_source == 0 || per_source > max_handshakes {
        return Err(src.err(
            "server.max_handshakes_per_source",
            format!("must be from 1 to max_handshakes ({max_handshakes})"),
        ));
    }
    Ok((max_handshakes, per_source))
}

/// KiB as written, bytes as used.
fn tunnel_buffer(kib: usize, src: &Source) -> Result<usize, ConfigError> {
    if kib != 0 && !(64..=65536).contains(&kib) {
        return Err(src.err(
            "server.tunnel_buffer_kib",
            "must be 0 (kernel autotuning) or from 64 to 65536".into(),
        ));
    }
    Ok(kib.saturating_mul(1024))
}

fn timeouts(t: &RawServerTimeouts, src: &Source) -> Result<ServerTimeouts, ConfigError> {
    Ok(ServerTimeouts {
        handshake: src.nonzero("server.timeouts.handshake", t.handshake)?,
        connect: src.nonzero("server.timeouts.connect", t.connect)?,
        idle: src.nonzero("server.timeouts.idle", t.idle)?,
        send: src.nonzero("server.timeouts.send", t.send)?,
    })
}
