//! The `agent:` section: local listeners, WebSocks servers and groups, the
//! pool, health checks and routing rules, validated into [`Agent`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::Deserializer;

use super::scalar::{Dur, Listen, from_str};
use super::users::{Secret, User, Users, digest_of};
use super::{
    ConfigError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_SEND_TIMEOUT, Source, default_max_connections,
};
use crate::acl::Rule;
use crate::proto::proxy::{WsUrl, parse_ws_url};

/// Upgraded connections kept ready per server.
const DEFAULT_POOL_SIZE: usize = 2;
/// What a pool may grow to with demand: a browser's burst of connections
/// for one page.
const DEFAULT_POOL_MAX: usize = 32;
/// The largest `pool.max` accepted.
const POOL_MAX_LIMIT: usize = 1024;
/// Shorter than common gateway idle timeouts (nginx 60 s, Heroku 55 s).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Above the server's default connect timeout, so that its real answer
/// (e.g. 06) arrives.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The group every server is in when no `groups:` are written.
const DEFAULT_GROUP: &str = "default";

/// The agent's configuration after validation.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub socks5: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub mixed: Vec<SocketAddr>,
    pub users: Option<Users>,
    pub servers: Vec<UpstreamServer>,
    /// Group name → indexes into `servers`.
    pub groups: BTreeMap<String, Vec<usize>>,
    pub pool: Pool,
    pub health: HealthChecks,
    pub routes: Vec<Route>,
    pub default: Action,
    pub default_group: String,
    pub timeouts: AgentTimeouts,
    pub max_connections: usize,
}

/// A WebSocks server the agent tunnels through: where, and the
/// credential's digest.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamServer {
    pub name: String,
    pub url: WsUrl,
    pub user: String,
    pub digest: Secret,
    pub host_header: String,
    /// wss:// without certificate verification.
    pub insecure: bool,
    /// For wss://: the client configuration and the name to verify.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

/// The pool of upgraded connections kept ready per server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    /// Connections per server; 0 disables the pool.
    pub size: usize,
    /// What the pool may grow to with demand: the most takes in one
    /// second over the last minute, between `size` and this.
    pub max: usize,
    /// How often a pooled connection sends the `8A 00` PONG.
    pub keepalive: Duration,
}

/// Health checks of each server (a real upgrade).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HealthChecks {
    /// Time between checks of each server.
    pub interval: Duration,
    /// How long a check may take.
    pub timeout: Duration,
}

/// The agent's deadlines, each longer than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AgentTimeouts {
    /// A local client's SOCKS5 or HTTP request must arrive within this.
    pub handshake: Duration,
    /// Connect + upgrade to a server (each try), or a direct connect; and
    /// the server's SOCKS5 answer.
    pub connect: Duration,
    /// No byte either way for this long closes the tunnel.
    pub idle: Duration,
    /// After a server took a CONNECT, how long its reply may take (it is
    /// connecting to the destination meanwhile; keep this above the
    /// server's own connect timeout so its real answer, e.g. 06, arrives).
    pub reply: Duration,
    /// A write in a tunnel that makes no progress for this long (the side
    /// it goes to stopped reading) ends the tunnel with a reset.
    pub send: Duration,
}

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    /// Through a WebSocks server group.
    #[default]
    Proxy,
    /// Straight from the agent.
    Direct,
    /// Refused (SOCKS5 `02`, HTTP `403`).
    Reject,
}

/// A validated routing rule: every condition given must hold; within a
/// condition, any listed value may match.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Lowercase, without a leading dot.
    pub domain_suffix: Vec<String>,
    /// Lowercase.
    pub host: Vec<String>,
    pub cidr: Vec<Rule>,
    pub port: Vec<RangeInclusive<u16>>,
    pub action: Action,
    pub group: String,
}

/// The `agent:` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct AgentConfig")]
pub(super) struct RawAgent {
    /// SOCKS5 listener.
    #[serde(default)]
    socks5: Option<RawListener>,
    /// HTTP proxy listener (CONNECT, absolute-form forwarding, /proxy.pac).
    #[serde(default)]
    http: Option<RawListener>,
    /// One port for both, told apart by the first byte.
    #[serde(default)]
    mixed: Option<RawListener>,
    /// Local users; when given, every listener requires them (RFC 1929 for
    /// SOCKS5, `Proxy-Authorization: Basic` for HTTP). Required when any
    /// listener is reachable beyond loopback.
    #[serde(default)]
    users: Vec<User>,
    /// WebSocks servers.
    #[serde(default)]
    servers: Vec<RawUpstreamServer>,
    /// Named groups of server names. Without any, one group `default` holds
    /// every server.
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    health: RawHealthChecks,
    /// First match wins.
    #[serde(default)]
    rules: Vec<RawRoute>,
    /// What no rule matches.
    #[serde(default)]
    default: Action,
    /// Group for `proxy` when a rule names none.
    #[serde(default = "default_group")]
    default_group: String,
    #[serde(default)]
    timeouts: RawAgentTimeouts,
    /// Local connections served at once; more are closed at accept.
    #[serde(default = "default_max_connections")]
    max_connections: usize,
}

fn default_group() -> String {
    DEFAULT_GROUP.into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct ListenerConfig")]
struct RawListener {
    listen: Vec<Listen>,
}

/// One WebSocks server as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct ServerEntry")]
struct RawUpstreamServer {
    name: String,
    url: RawUrl,
    user: String,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    password_hash: Option<Secret>,
    /// `Host` header to send instead of the URL's host (e.g. a PaaS app name
    /// when connecting by address).
    #[serde(default)]
    host: Option<String>,
    /// wss://: extra trusted CA certificates (PEM), besides the system's.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// wss://: the name sent as SNI and verified, instead of the URL's host.
    #[serde(default)]
    sni: Option<String>,
    /// wss://: accept any certificate. Off by default; logged loudly.
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// A `ws://` or `wss://` URL.
struct RawUrl(WsUrl);

impl FromStr for RawUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(RawUrl(parse_ws_url(s)?))
    }
}

impl<'de> Deserialize<'de> for RawUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "struct PoolConfig")]
struct RawPool {
    size: usize,
    max: usize,
    keepalive: Dur,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            size: DEFAULT_POOL_SIZE,
            max: DEFAULT_POOL_MAX,
            keepalive: Dur(DEFAULT_KEEPALIVE),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "struct HealthConfig")]
struct RawHealthChecks {
    interval: Dur,
    timeout: Dur,
}

impl Default for RawHealthChecks {
    fn default() -> Self {
        RawHealthChecks {
            interval: Dur(DEFAULT_HEALTH_INTERVAL),
            timeout: Dur(DEFAULT_HEALTH_TIMEOUT),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "struct AgentTimeouts")]
struct RawAgentTimeouts {
    handshake: Dur,
    connect: Dur,
    idle: Dur,
    reply: Dur,
    send: Dur,
}

impl Default for RawAgentTimeouts {
    fn default() -> Self {
        RawAgentTimeouts {
            handshake: Dur(DEFAULT_HANDSHAKE_TIMEOUT),
            connect: Dur(DEFAULT_CONNECT_TIMEOUT),
            idle: Dur(DEFAULT_IDLE_TIMEOUT),
            reply: Dur(DEFAULT_REPLY_TIMEOUT),
            send: Dur(DEFAULT_SEND_TIMEOUT),
        }
    }
}

/// A port or an inclusive range: `22` or `"8000-8999"`.
struct PortRange(RangeInclusive<u16>);

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a port or a range like 8000-8999");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(bad());
        }
        Ok(PortRange(a..=b))
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// One routing rule as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct RuleConfig")]
struct RawRoute {
    /// `example.com` matches `example.com` and `*.example.com`.
    #[serde(default)]
    domain_suffix: Vec<String>,
    /// Exact host name or IP literal, as the client asked.
    #[serde(default)]
    host: Vec<String>,
    /// Networks; match IP destinations only (names are not resolved
    /// locally, so proxied names never leak to the local DNS).
    #[serde(default)]
    cidr: Vec<Rule>,
    #[serde(default)]
    port: Vec<PortRange>,
    action: Action,
    /// Group for `proxy`; default `default_group`.
    #[serde(default)]
    group: Option<String>,
}

/// Checks the `agent:` section, in the order its keys are reported.
pub(super) fn validate(a: RawAgent, src: &Source) -> Result<Agent, ConfigError> {
    let open = listeners(&a, src)?;
    let users = local_users(&a.users, src)?;
    if let (Some((key, addr)), true) = (open, users.is_empty()) {
        return Err(src.err(
            key,
            format!(
                "{addr} is reachable beyond loopback: add `agent.users` so clients must authenticate"
            ),
        ));
    }
    let (servers, index) = upstream_servers(&a, src)?;
    let groups = groups(&a.groups, &index, servers.len(), src)?;
    let routes = routes(&a, &groups, src)?;
    let timeouts = AgentTimeouts {
        handshake: src.nonzero("agent.timeouts.handshake", a.timeouts.handshake)?,
        connect: src.nonzero("agent.timeouts.connect", a.timeouts.connect)?,
        idle: src.nonzero("agent.timeouts.idle", a.timeouts.idle)?,
        reply: src.nonzero("agent.timeouts.reply", a.timeouts.reply)?,
        send: src.nonzero("agent.timeouts.send", a.timeouts.send)?,
    };
    if a.pool.size > POOL_MAX_LIMIT {
        return Err(src.err(
            "agent.pool.size",
            format!("must be at most {POOL_MAX_LIMIT}"),
        ));
    }
    // A `size` above the default `max` raises it: growth starts there.
    let max = if a.pool.max == DEFAULT_POOL_MAX {
        a.pool.max.max(a.pool.size)
    } else {
        a.pool.max
    };
    if max < a.pool.size || max > POOL_MAX_LIMIT {
        return Err(src.err(
            "agent.pool.max",
            format!(
                "must be from pool.size ({}) to {POOL_MAX_LIMIT}",
                a.pool.size
            ),
        ));
    }
    let pool = Pool {
        size: a.pool.size,
        max,
        keepalive: src.nonzero("agent.pool.keepalive", a.pool.keepalive)?,
    };
    let health = HealthChecks {
        interval: src.nonzero("agent.health.interval", a.health.interval)?,
        timeout: src.nonzero("agent.health.timeout", a.health.timeout)?,
    };
    if a.max_connections == 0 {
        return Err(src.err("agent.max_connections", "must be at least 1".into()));
    }
    let addrs = |l: &Option<RawListener>| {
        l.as_ref()
            .map(|l| l.listen.iter().map(|a| a.0).collect())
            .unwrap_or_default()
    };
    Ok(Agent {
        socks5: addrs(&a.socks5),
        http: addrs(&a.http),
        mixed: addrs(&a.mixed),
        users: (!users.is_empty()).then_some(users),
        servers,
        groups,
        pool,
        health,
        routes,
        default: a.default,
        default_group: a.default_group,
        timeouts,
        max_connections: a.max_connections,
    })
}

fn is_loopback(a: &SocketAddr) -> bool {
    match crate::acl::canonical(a.ip()) {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// At least one listener, each with addresses, none twice; answers the
/// first address beyond loopback with its key, which needs local users.
fn listeners(
    a: &RawAgent,
    src: &Source,
) -> Result<Option<(&'static str, SocketAddr)>, ConfigError> {
    let lists = [
        ("agent.socks5.listen", &a.socks5),
        ("agent.http.listen", &a.http),
        ("agent.mixed.listen", &a.mixed),
    ];
    let mut seen = HashSet::new();
    let mut any = false;
    let mut open = None;
    for (key, l) in lists {
        if let Some(l) = l {
            if l.listen.is_empty() {
                return Err(src.err(key, "at least one address is required".into()));
            }
            for addr in &l.listen {
                if addr.0.port() != 0 && !seen.insert(addr.0) {
                    return Err(src.err(key, format!("{} is listed twice", addr.0)));
                }
                if !is_loopback(&addr.0) && open.is_none() {
                    open = Some((key, addr.0));
                }
            }
            any = true;
        }
    }
    if !any {
        return Err(src.err(
            "agent",
            "no listener: add `socks5:`, `http:` or `mixed:` with `listen:`".into(),
        ));
    }
    Ok(open)
}

/// The local users, each name once.
fn local_users(list: &[User], src: &Source) -> Result<Users, ConfigError> {
    let mut users = Users::default();
    for (i, u) in list.iter().enumerate() {
        if !users.insert(u) {
            return Err(src.err(
                &format!("agent.users[{i}]"),
                format!("user `{}` is defined twice", u.name),
            ));
        }
    }
    Ok(users)
}

/// The servers, and their indexes by name; some are required when anything
/// is proxied.
fn upstream_servers(
    a: &RawAgent,
    src: &Source,
) -> Result<(Vec<UpstreamServer>, HashMap<String, usize>), ConfigError> {
    if a.servers.is_empty()
        && (a.default == Action::Proxy || a.rules.iter().any(|r| r.action == Action::Proxy))
    {
        return Err(src.err(
            "agent.servers",
            "at least one server is required to proxy".into(),
        ));
    }
    let mut servers = Vec::new();
    let mut index = HashMap::new();
    for (i, s) in a.servers.iter().enumerate() {
        let key = format!("agent.servers[{i}]");
        if s.name.is_empty() || index.insert(s.name.clone(), i).is_some() {
            return Err(src.err(
                &key,
                format!("server name `{}` is empty or used twice", s.name),
            ));
        }
        servers.push(upstream_server(s, &key, src)?);
    }
    Ok((servers, index))
}

/// One server: its credential, `Host` header and TLS.
fn upstream_server(
    s: &RawUpstreamServer,
    key: &str,
    src: &Source,
) -> Result<UpstreamServer, ConfigError> {
    if s.user.is_empty() || s.user.contains(':') {
        return Err(src.err(
            key,
            format!("server `{}`: user must be non-empty, without `:`", s.name),
        ));
    }
    let digest = digest_of(
        &format!("server `{}`", s.name),
        s.password.as_ref(),
        s.password_hash.as_ref(),
    )
    .map_err(|m| src.err(key, m))?;
    let url = s.url.0.clone();
    let default_port = if url.tls { 443 } else { 80 };
    let host_header = match &s.host {
        Some(h) => h.clone(),
        None if url.port == default_port => bracket(&url.host),
        None => format!("{}:{}", bracket(&url.host), url.port),
    };
    let tls = if url.tls {
        Some(client_tls(s, &url, src.base).map_err(|m| src.err(key, m))?)
    } else {
        if s.ca_file.is_some() || s.sni.is_some() || s.insecure_skip_verify {
            return Err(src.err(
                key,
                format!(
                    "server `{}`: ca_file, sni and insecure_skip_verify need a wss:// url",
                    s.name
                ),
            ));
        }
        None
    };
    Ok(UpstreamServer {
        tls,
        insecure: s.insecure_skip_verify,
        name: s.name.clone(),
        url,
        user: s.user.clone(),
        digest,
        host_header,
    })
}

/// The TLS client configuration and the name to verify, for a wss:// server.
fn client_tls(
    s: &RawUpstreamServer,
    url: &WsUrl,
    base: &Path,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    ),
    String,
> {
    let ca = s.ca_file.as_ref().map(|f| base.join(f));
    let cfg = crate::tls::client_config(ca.as_deref(), s.insecure_skip_verify)
        .map_err(|m| format!("server `{}`: {m}", s.name))?;
    let name = crate::tls::server_name(s.sni.as_deref().unwrap_or(&url.host))
        .map_err(|m| format!("server `{}`: {m}", s.name))?;
    Ok((cfg, name))
}

/// Group name → server indexes; without a `default` group, every server
/// is in one.
fn groups(
    written: &BTreeMap<String, Vec<String>>,
    index: &HashMap<String, usize>,
    servers: usize,
    src: &Source,
) -> Result<BTreeMap<String, Vec<usize>>, ConfigError> {
    let mut groups = BTreeMap::new();
    for (g, names) in written {
        let key = format!("agent.groups.{g}");
        if names.is_empty() {
            return Err(src.err(&key, format!("group `{g}` is empty")));
        }
        let mut idx = Vec::new();
        for n in names {
            let i = index
                .get(n)
                .ok_or_else(|| src.err(&key, format!("group `{g}` names unknown server `{n}`")))?;
            idx.push(*i);
        }
        groups.insert(g.clone(), idx);
    }
    if !groups.contains_key(DEFAULT_GROUP) && servers > 0 {
        groups.insert(DEFAULT_GROUP.into(), (0..servers).collect());
    }
    Ok(groups)
}

/// The rules, each with a condition and, for `proxy`, a known group.
fn routes(
    a: &RawAgent,
    groups: &BTreeMap<String, Vec<usize>>,
    src: &Source,
) -> Result<Vec<Route>, ConfigError> {
    let check_group = |key: &str, g: &str| {
        if groups.contains_key(g) {
            Ok(())
        } else {
            Err(src.err(key, format!("unknown group `{g}`")))
        }
    };
    if a.default == Action::Proxy {
        check_group("agent.default_group", &a.default_group)?;
    }
    let mut routes = Vec::new();
    for (i, r) in a.rules.iter().enumerate() {
        let key = format!("agent.rules[{i}]");
        if r.domain_suffix.is_empty() && r.host.is_empty() && r.cidr.is_empty() && r.port.is_empty()
        {
            return Err(src.err(
                &key,
                "a rule needs domain_suffix, host, cidr or port".into(),
            ));
        }
        let group = r.group.clone().unwrap_or_else(|| a.default_group.clone());
        if r.action == Action::Proxy {
            check_group(&key, &group)?;
        } else if r.group.is_some() {
            return Err(src.err(&key, "`group` only goes with action: proxy".into()));
        }
        routes.push(Route {
            domain_suffix: r
                .domain_suffix
                .iter()
                .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            host: r.host.iter().map(|h| h.to_ascii_lowercase()).collect(),
            cidr: r.cidr.clone(),
            port: r.port.iter().map(|p| p.0.clone()).collect(),
            action: r.action,
            group,
        });
    }
    Ok(routes)
}

/// An IPv6 literal in a Host header needs brackets.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
