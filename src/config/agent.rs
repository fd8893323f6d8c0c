//! The `agent:` section: local listeners, WebSocks servers and groups, the
//! pool, health checks and routing rules.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::Deserializer;

use super::{Dur, Listen, Secret, User, Users, digest_of, from_str};
use crate::acl::Rule;
use crate::proto::proxy::{WsUrl, parse_ws_url};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// SOCKS5 listener.
    #[serde(default)]
    pub socks5: Option<ListenerConfig>,
    /// HTTP proxy listener (CONNECT, absolute-form forwarding, /proxy.pac).
    #[serde(default)]
    pub http: Option<ListenerConfig>,
    /// One port for both, told apart by the first byte.
    #[serde(default)]
    pub mixed: Option<ListenerConfig>,
    /// Local users; when given, every listener requires them (RFC 1929 for
    /// SOCKS5, `Proxy-Authorization: Basic` for HTTP). Required when any
    /// listener is reachable beyond loopback.
    #[serde(default)]
    pub users: Vec<User>,
    /// WebSocks servers.
    #[serde(default)]
    pub servers: Vec<ServerEntry>,
    /// Named groups of server names. Without any, one group `default` holds
    /// every server.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// First match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What no rule matches.
    #[serde(default)]
    pub default: Action,
    /// Group for `proxy` when a rule names none.
    #[serde(default = "default_group")]
    pub default_group: String,
    #[serde(default)]
    pub timeouts: AgentTimeouts,
    /// Local connections served at once; more are closed at accept.
    #[serde(default = "super::default_max_connections")]
    pub max_connections: usize,
}

fn default_group() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: Vec<Listen>,
}

/// One WebSocks server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub name: String,
    pub url: Url,
    pub user: String,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_hash: Option<Secret>,
    /// `Host` header to send instead of the URL's host (e.g. a PaaS app name
    /// when connecting by address).
    #[serde(default)]
    pub host: Option<String>,
    /// wss://: extra trusted CA certificates (PEM), besides the system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// wss://: the name sent as SNI and verified, instead of the URL's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// wss://: accept any certificate. Off by default; logged loudly.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A parsed `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url(pub WsUrl);

impl FromStr for Url {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Url(parse_ws_url(s)?))
    }
}

impl<'de> Deserialize<'de> for Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Upgraded connections kept ready per server; 0 disables the pool.
    #[serde(default = "default_pool_size")]
    pub size: usize,
    /// How often a pooled connection sends the `8A 00` PONG; shorter than
    /// common gateway idle timeouts (nginx 60 s, Heroku 55 s).
    #[serde(default = "default_keepalive")]
    pub keepalive: Dur,
}

fn default_pool_size() -> usize {
    2
}
fn default_keepalive() -> Dur {
    Dur(Duration::from_secs(20))
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: default_pool_size(),
            keepalive: default_keepalive(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between checks of each server (a real upgrade).
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    /// How long a check may take.
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
}

fn default_health_interval() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_health_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentTimeouts {
    /// A local client's SOCKS5 or HTTP request must arrive within this.
    #[serde(default = "d10")]
    pub handshake: Dur,
    /// Connect + upgrade to a server (each try), or a direct connect; and
    /// the server's SOCKS5 answer.
    #[serde(default = "d10")]
    pub connect: Dur,
    /// No byte either way for this long closes the tunnel.
    #[serde(default = "d300")]
    pub idle: Dur,
    /// After a server took a CONNECT, how long its reply may take (it is
    /// connecting to the destination meanwhile; keep this above the
    /// server's own connect timeout so its real answer, e.g. 06, arrives).
    #[serde(default = "d30")]
    pub reply: Dur,
    /// A write in a tunnel that makes no progress for this long (the side
    /// it goes to stopped reading) ends the tunnel with a reset.
    #[serde(default = "d60")]
    pub send: Dur,
}

fn d60() -> Dur {
    Dur(Duration::from_secs(60))
}

fn d30() -> Dur {
    Dur(Duration::from_secs(30))
}

fn d10() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d300() -> Dur {
    Dur(Duration::from_secs(300))
}

impl Default for AgentTimeouts {
    fn default() -> Self {
        AgentTimeouts {
            handshake: d10(),
            connect: d10(),
            idle: d300(),
            reply: d30(),
            send: d60(),
        }
    }
}

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Through a WebSocks server group.
    #[default]
    Proxy,
    /// Straight from the agent.
    Direct,
    /// Refused (SOCKS5 `02`, HTTP `403`).
    Reject,
}

/// A port or an inclusive range: `22` or `"8000-8999"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

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
        Ok(PortRange(a, b))
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// One routing rule: every condition given must hold; within a condition,
/// any listed value may match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `example.com` matches `example.com` and `*.example.com`.
    #[serde(default)]
    pub domain_suffix: Vec<String>,
    /// Exact host name or IP literal, as the client asked.
    #[serde(default)]
    pub host: Vec<String>,
    /// Networks; match IP destinations only (names are not resolved
    /// locally, so proxied names never leak to the local DNS).
    #[serde(default)]
    pub cidr: Vec<Rule>,
    #[serde(default)]
    pub port: Vec<PortRange>,
    pub action: Action,
    /// Group for `proxy`; default `default_group`.
    #[serde(default)]
    pub group: Option<String>,
}

/// A server ready to use: where, and the credential's digest.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub url: WsUrl,
    pub user: String,
    pub digest: Secret,
    pub host_header: String,
    /// wss:// without certificate verification.
    pub insecure: bool,
    /// For wss://: the client configuration and the name to verify.
    pub tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

/// A validated routing rule.
#[derive(Debug, Clone)]
pub struct Route {
    pub domain_suffix: Vec<String>,
    pub host: Vec<String>,
    pub cidr: Vec<Rule>,
    pub port: Vec<PortRange>,
    pub action: Action,
    pub group: String,
}

/// The agent's configuration after validation.
#[derive(Debug, Clone)]
pub struct Agent {
    pub socks5: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub mixed: Vec<SocketAddr>,
    pub users: Option<Users>,
    pub servers: Vec<Server>,
    /// Group name → indexes into `servers`.
    pub groups: BTreeMap<String, Vec<usize>>,
    pub pool: PoolConfig,
    pub health: HealthConfig,
    pub routes: Vec<Route>,
    pub default: Action,
    pub default_group: String,
    pub timeouts: AgentTimeouts,
    pub max_connections: usize,
}

fn is_loopback(a: &SocketAddr) -> bool {
    match crate::acl::canonical(a.ip()) {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Checks the agent section; `err(key, msg)` builds a located error.
pub fn validate(
    a: AgentConfig,
    base: &std::path::Path,
    err: &dyn Fn(&str, String) -> super::ConfigError,
) -> Result<Agent, super::ConfigError> {
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
                return Err(err(key, "at least one address is required".into()));
            }
            for addr in &l.listen {
                if addr.0.port() != 0 && !seen.insert(addr.0) {
                    return Err(err(key, format!("{} is listed twice", addr.0)));
                }
                if !is_loopback(&addr.0) && open.is_none() {
                    open = Some((key, addr.0));
                }
            }
            any = true;
        }
    }
    if !any {
        return Err(err(
            "agent",
            "no listener: add `socks5:`, `http:` or `mixed:` with `listen:`".into(),
        ));
    }
    let mut users = HashMap::new();
    for (i, u) in a.users.iter().enumerate() {
        if users.insert(u.name.clone(), u.digest.clone()).is_some() {
            return Err(err(
                &format!("agent.users[{i}]"),
                format!("user `{}` is defined twice", u.name),
            ));
        }
    }
    if let (Some((key, addr)), true) = (open, users.is_empty()) {
        return Err(err(
            key,
            format!(
                "{addr} is reachable beyond loopback: add `agent.users` so clients must authenticate"
            ),
        ));
    }
    if a.servers.is_empty()
        && (a.default == Action::Proxy || a.rules.iter().any(|r| r.action == Action::Proxy))
    {
        return Err(err(
            "agent.servers",
            "at least one server is required to proxy".into(),
        ));
    }
    let mut servers = Vec::new();
    let mut index = HashMap::new();
    for (i, s) in a.servers.iter().enumerate() {
        let key = format!("agent.servers[{i}]");
        if s.name.is_empty() || index.insert(s.name.clone(), i).is_some() {
            return Err(err(
                &key,
                format!("server name `{}` is empty or used twice", s.name),
            ));
        }
        if s.user.is_empty() || s.user.contains(':') {
            return Err(err(
                &key,
                format!("server `{}`: user must be non-empty, without `:`", s.name),
            ));
        }
        let digest = digest_of(
            &format!("server `{}`", s.name),
            s.password.as_ref(),
            s.password_hash.as_ref(),
        )
        .map_err(|m| err(&key, m))?;
        let url = s.url.0.clone();
        let default_port = if url.tls { 443 } else { 80 };
        let host_header = match &s.host {
            Some(h) => h.clone(),
            None if url.port == default_port => bracket(&url.host),
            None => format!("{}:{}", bracket(&url.host), url.port),
        };
        let tls = if url.tls {
            let ca = s.ca_file.as_ref().map(|f| base.join(f));
            let cfg = crate::tls::client_config(ca.as_deref(), s.insecure_skip_verify)
                .map_err(|m| err(&key, format!("server `{}`: {m}", s.name)))?;
            let name = crate::tls::server_name(s.sni.as_deref().unwrap_or(&url.host))
                .map_err(|m| err(&key, format!("server `{}`: {m}", s.name)))?;
            Some((cfg, name))
        } else {
            if s.ca_file.is_some() || s.sni.is_some() || s.insecure_skip_verify {
                return Err(err(
                    &key,
                    format!(
                        "server `{}`: ca_file, sni and insecure_skip_verify need a wss:// url",
                        s.name
                    ),
                ));
            }
            None
        };
        servers.push(Server {
            tls,
            insecure: s.insecure_skip_verify,
            name: s.name.clone(),
            url,
            user: s.user.clone(),
            digest: Secret(digest),
            host_header,
        });
    }
    let mut groups = BTreeMap::new();
    for (g, names) in &a.groups {
        let key = format!("agent.groups.{g}");
        if names.is_empty() {
            return Err(err(&key, format!("group `{g}` is empty")));
        }
        let mut idx = Vec::new();
        for n in names {
            let i = index
                .get(n)
                .ok_or_else(|| err(&key, format!("group `{g}` names unknown server `{n}`")))?;
            idx.push(*i);
        }
        groups.insert(g.clone(), idx);
    }
    if !groups.contains_key("default") && !servers.is_empty() {
        groups.insert("default".into(), (0..servers.len()).collect());
    }
    let check_group = |key: &str, g: &str| {
        if groups.contains_key(g) {
            Ok(())
        } else {
            Err(err(key, format!("unknown group `{g}`")))
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
            return Err(err(
                &key,
                "a rule needs domain_suffix, host, cidr or port".into(),
            ));
        }
        let group = r.group.clone().unwrap_or_else(|| a.default_group.clone());
        if r.action == Action::Proxy {
            check_group(&key, &group)?;
        } else if r.group.is_some() {
            return Err(err(&key, "`group` only goes with action: proxy".into()));
        }
        routes.push(Route {
            domain_suffix: r
                .domain_suffix
                .iter()
                .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            host: r.host.iter().map(|h| h.to_ascii_lowercase()).collect(),
            cidr: r.cidr.clone(),
            port: r.port.clone(),
            action: r.action,
            group,
        });
    }
    for (k, d) in [
        ("agent.timeouts.handshake", a.timeouts.handshake),
        ("agent.timeouts.connect", a.timeouts.connect),
        ("agent.timeouts.idle", a.timeouts.idle),
        ("agent.timeouts.reply", a.timeouts.reply),
        ("agent.timeouts.send", a.timeouts.send),
        ("agent.pool.keepalive", a.pool.keepalive),
        ("agent.health.interval", a.health.interval),
        ("agent.health.timeout", a.health.timeout),
    ] {
        if d.0.is_zero() {
            return Err(err(k, "must be longer than zero".into()));
        }
    }
    if a.max_connections == 0 {
        return Err(err("agent.max_connections", "must be at least 1".into()));
    }
    let addrs = |l: &Option<ListenerConfig>| {
        l.as_ref()
            .map(|l| l.listen.iter().map(|a| a.0).collect())
            .unwrap_or_default()
    };
    Ok(Agent {
        socks5: addrs(&a.socks5),
        http: addrs(&a.http),
        mixed: addrs(&a.mixed),
        users: (!users.is_empty()).then_some(Users(users)),
        servers,
        groups,
        pool: a.pool,
        health: a.health,
        routes,
        default: a.default,
        default_group: a.default_group,
        timeouts: a.timeouts,
        max_connections: a.max_connections,
    })
}

/// An IPv6 literal in a Host header needs brackets.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
