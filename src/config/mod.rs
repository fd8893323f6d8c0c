//! The YAML configuration: serde structs, named defaults, one `validate()`,
//! and errors that name the file, line and key.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::acl::{Acl, Rule};
use crate::proto::auth;

pub mod agent;
#[cfg(test)]
mod error_messages;

/// A configuration error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `server.users[1].password`.
    pub key: String,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.msg)
        } else {
            write!(f, ": {}: {}", self.key, self.msg)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A password or digest: never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A duration written `250ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 10s, 500ms, 5m or 1h"))?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(format!("`{s}` has an unknown unit (use ms, s, m or h)")),
        };
        // Deadlines are computed as now + duration: keep them sane.
        if d > Duration::from_secs(365 * 24 * 3600) {
            return Err(format!("`{s}` is longer than a year"));
        }
        Ok(Dur(d))
    }
}

/// Parses a YAML scalar with `FromStr` inside the deserializer's visit, so
/// an error carries the scalar's own line and key path. Integers are taken
/// as their decimal text (`idle: 30` is 30 seconds).
struct FromStrVisitor<T>(std::marker::PhantomData<T>);

impl<T: FromStr<Err = String>> de::Visitor<'_> for FromStrVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

pub(crate) fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    d.deserialize_any(FromStrVisitor(std::marker::PhantomData))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// A listen address: `127.0.0.1:8080`, `[::1]:8080`, `[::]:8080`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub SocketAddr);

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map(Listen)
            .map_err(|_| format!("`{s}` is not an address like 0.0.0.0:8080 or [::]:8080"))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// The whole file. One file may hold several sections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `error`, `warn`, `info` (default) or `debug`.
    #[serde(default)]
    pub log_level: Option<LogLevel>,
    /// `auto` (default), `stderr` or `syslog`.
    #[serde(default)]
    pub log_target: LogTarget,
    /// The syslog socket, default `/dev/log`.
    #[serde(default = "default_syslog_socket")]
    pub syslog_socket: PathBuf,
    /// On SIGTERM, how long live tunnels may finish before the process
    /// exits anyway.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Executor threads: `auto` (default) or a number from 1 to 256.
    #[serde(default)]
    pub threads: Threads,
    pub server: Option<ServerConfig>,
    pub agent: Option<agent::AgentConfig>,
}

fn default_syslog_socket() -> PathBuf {
    PathBuf::from("/dev/log")
}

fn default_grace() -> Dur {
    Dur(Duration::from_secs(30))
}

/// How many threads run the daemon's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// One thread when no TLS is served or dialled (the relay is spliced:
    /// the kernel does the work, and one thread wakes fewer times than
    /// several); one per core when TLS is, as encryption is CPU work.
    #[default]
    Auto,
    Fixed(usize),
}

impl FromStr for Threads {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Threads::Auto),
            n => match n.parse::<usize>() {
                Ok(n @ 1..=256) => Ok(Threads::Fixed(n)),
                _ => Err(format!("`{s}` is not `auto` or a number from 1 to 256")),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// stderr on a terminal; otherwise syslog when its socket exists.
    #[default]
    Auto,
    Stderr,
    Syslog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// What the server puts in BND.ADDR/BND.PORT of a success reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyAddress {
    /// `0.0.0.0` and the requested port, byte for byte what the reference
    /// server sends; reveals nothing about the server's network.
    #[default]
    Hidden,
    /// The local address of the connection to the destination (RFC 1928
    /// section 6).
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to listen on.
    pub listen: Vec<Listen>,
    /// Users written in this file.
    #[serde(default)]
    pub users: Vec<User>,
    /// A YAML file holding a list of users, read at start (and on reload).
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Connections served at once; more are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections not yet authenticated, at once (default: half of
    /// `max_connections`); more are closed at accept.
    #[serde(default)]
    pub max_handshakes: Option<usize>,
    /// KiB of kernel buffers a tunnel may hold per direction (0: kernel
    /// autotuning, unbounded).
    #[serde(default = "default_tunnel_buffer_kib")]
    pub tunnel_buffer_kib: usize,
    /// Connections not yet authenticated from one address (an IPv6 /64),
    /// at once (default: a quarter of `max_handshakes`, at most 64).
    #[serde(default)]
    pub max_handshakes_per_source: Option<usize>,
    #[serde(default)]
    pub destinations: Destinations,
    #[serde(default)]
    pub socks_reply_address: ReplyAddress,
    /// Path that answers a plain `GET` (no upgrade) with `200`, for load
    /// balancer health checks. Off by default.
    #[serde(default)]
    pub health_path: Option<String>,
    /// Serve TLS (wss://) on every listener.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

/// PEM files for the server's TLS, re-read on reload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn default_tunnel_buffer_kib() -> usize {
    512
}

fn default_max_connections() -> usize {
    4096
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// From accept to a complete SOCKS5 request.
    #[serde(default = "default_handshake")]
    pub handshake: Dur,
    /// Resolving and connecting to the destination.
    #[serde(default = "default_connect")]
    pub connect: Dur,
    /// A tunnel with no byte either way for this long is closed.
    #[serde(default = "default_idle")]
    pub idle: Dur,
    /// A write in a tunnel that makes no progress for this long (the side
    /// it goes to stopped reading) ends the tunnel with a reset.
    #[serde(default = "default_send")]
    pub send: Dur,
}

fn default_send() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_handshake() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_connect() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_idle() -> Dur {
    Dur(Duration::from_secs(300))
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: default_handshake(),
            connect: default_connect(),
            idle: default_idle(),
            send: default_send(),
        }
    }
}

/// Destination access control. `allow` is checked first, then `deny`, then
/// `default` decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destinations {
    #[serde(default)]
    pub allow: Vec<Rule>,
    #[serde(default = "default_deny")]
    pub deny: Vec<Rule>,
    #[serde(default)]
    pub default: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// Loopback, link-local (with the cloud metadata address 169.254.169.254 and
/// AWS's fd00:ec2::254), "this network" and the unspecified address: what a
/// public proxy must never let a client reach by default.
pub const DEFAULT_DENY: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    "fd00:ec2::254/128",
];

fn default_deny() -> Vec<Rule> {
    DEFAULT_DENY
        .iter()
        .map(|s| s.parse().expect("built-in rule"))
        .collect()
}

impl Default for Destinations {
    fn default() -> Self {
        Destinations {
            allow: Vec::new(),
            deny: default_deny(),
            default: Action::Allow,
        }
    }
}

impl Destinations {
    pub fn acl(&self) -> Acl {
        Acl {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            default_allow: self.default == Action::Allow,
        }
    }
}

/// One user: a name and either the password or its stored digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawUser")]
pub struct User {
    pub name: String,
    /// `base64(sha256(password))`, what the auth hash is built on.
    pub digest: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    password_hash: Option<Secret>,
}

impl TryFrom<RawUser> for User {
    type Error = String;
    fn try_from(r: RawUser) -> Result<Self, String> {
        if r.name.is_empty() || r.name.contains(':') || r.name.chars().any(char::is_control) {
            return Err(format!(
                "user name `{}` must be non-empty, without `:` or control characters",
                r.name.escape_default()
            ));
        }
        let digest = digest_of(
            &format!("user `{}`", r.name),
            r.password.as_ref(),
            r.password_hash.as_ref(),
        )?;
        Ok(User {
            name: r.name,
            digest: Secret(digest),
        })
    }
}

/// The stored digest from exactly one of `password` (the real password)
/// and `password_hash` (what `hash-password` prints); `who` names the entry
/// in errors. Users and the agent's servers share this rule.
pub(crate) fn digest_of(
    who: &str,
    password: Option<&Secret>,
    hash: Option<&Secret>,
) -> Result<String, String> {
    match (password, hash) {
        (Some(p), None) if !p.0.is_empty() => Ok(auth::stored_digest(p.0.as_bytes())),
        (Some(_), None) => Err(format!("{who}: password is empty")),
        (None, Some(h)) if is_digest(h.0.trim()) => Ok(h.0.trim().to_string()),
        (None, Some(_)) => Err(format!(
            "{who}: password_hash must be the 44-character output of `websocks hash-password`"
        )),
        (Some(_), Some(_)) => Err(format!("{who}: give password or password_hash, not both")),
        (None, None) => Err(format!("{who}: password or password_hash is required")),
    }
}

/// Is `s` base64 of 32 bytes, as `hash-password` prints?
fn is_digest(s: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .is_ok_and(|b| b.len() == 32)
}

/// The users a server accepts, by name, as stored digests.
#[derive(Clone, Default)]
pub struct Users(pub HashMap<String, Secret>);

impl Users {
    /// Whether `user` still exists with this stored digest: a grant made
    /// under an older configuration holds only while this is true.
    pub fn grants(&self, user: &str, digest: &Secret) -> bool {
        self.0.get(user) == Some(digest)
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Users({} entries)", self.0.len())
    }
}

/// The server's configuration after loading and validation.
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub users: Users,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    /// Budget of connections still authenticating, in total and per source.
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
    /// Bytes of kernel buffers per tunnel direction (0: unbounded).
    pub tunnel_buffer: usize,
    pub acl: Acl,
    pub reply_address: ReplyAddress,
    pub health_path: Option<String>,
    /// Where users came from, for reloads.
    pub users_file: Option<PathBuf>,
    pub inline_users: Vec<User>,
    /// TLS, when configured.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// A loaded, validated file.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub log_level: LogLevel,
    pub log_target: LogTarget,
    pub syslog_socket: PathBuf,
    pub shutdown_grace: Duration,
    pub threads: Threads,
    pub server: Option<Server>,
    pub agent: Option<agent::Agent>,
}

impl Config {
    /// Executor threads to run: `threads`, with `auto` resolved against
    /// whether this file's sections use TLS.
    pub fn thread_count(&self) -> usize {
        match self.threads {
            Threads::Fixed(n) => n,
            Threads::Auto => {
                let tls = self.server.as_ref().is_some_and(|s| s.tls.is_some())
                    || self
                        .agent
                        .as_ref()
                        .is_some_and(|a| a.servers.iter().any(|s| s.tls.is_some()));
                if tls {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                } else {
                    1
                }
            }
        }
    }
}

/// Turns a serde_yaml error into file, line and key.
fn yaml_error(path: &Path, e: serde_yaml::Error) -> ConfigError {
    let text = e.to_string();
    // serde_yaml writes "path.to.key: message at line L column C".
    let text = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let (key, msg) = match text.split_once(": ") {
        Some((k, m)) if !k.contains(' ') => (k.to_string(), m.to_string()),
        _ => (String::new(), text),
    };
    ConfigError {
        file: path.to_path_buf(),
        line: e.location().map(|l| l.line()),
        key,
        msg,
    }
}

/// Finds the line of a dotted key path such as `server.users_file` in YAML
/// text, for errors found after parsing. Best effort: the line of the last
/// key's first occurrence after its parents.
fn locate(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut from = 0;
    let mut line = None;
    for part in key.split('.') {
        let name = part.split('[').next().unwrap_or(part);
        let i = (from..lines.len()).find(|&i| {
            lines[i]
                .trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{name}:"))
        })?;
        let mut at = i;
        // `name[N]` in block style: the Nth `- ` item below the key.
        if let Some(n) = part
            .split('[')
            .nth(1)
            .and_then(|r| r.trim_end_matches(']').parse::<usize>().ok())
        {
            let items: Vec<usize> = (i + 1..lines.len())
                .take_while(|&k| {
                    lines[k].trim().is_empty()
                        || indent(lines[k]) > indent(lines[i])
                        || lines[k].trim_start().starts_with("- ")
                })
                .filter(|&k| lines[k].trim_start().starts_with("- "))
                .collect();
            let depth = items.first().map(|&k| indent(lines[k]));
            let same: Vec<usize> = items
                .into_iter()
                .filter(|&k| Some(indent(lines[k])) == depth)
                .collect();
            if let Some(&k) = same.get(n) {
                at = k;
            }
        }
        from = at + 1;
        line = Some(at + 1);
    }
    line
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: String::new(),
        msg: format!("cannot read: {e}"),
    })
}

/// Reads a users file: a YAML list of `{name, password | password_hash}`.
pub fn load_users_file(path: &Path) -> Result<(Vec<User>, String), ConfigError> {
    let text = read(path)?;
    // A file of comments only (as the package ships it) lists no one yet.
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if blank {
        return Ok((Vec::new(), text));
    }
    let users = serde_yaml::from_str::<Vec<User>>(&text).map_err(|e| yaml_error(path, e))?;
    Ok((users, text))
}

/// Whether `text` has the shape of a users file: a YAML list whose entries
/// are maps with a `name`. A configuration's top level is a map, so `check`
/// can tell an operator who passed the users file instead.
pub fn looks_like_users_file(text: &str) -> bool {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(serde_yaml::Value::Sequence(entries)) => entries
            .iter()
            .all(|e| e.as_mapping().is_some_and(|m| m.contains_key("name"))),
        _ => false,
    }
}

/// The line of the `nth` (0-based) `name: <name>` entry in YAML text.
fn name_line(text: &str, name: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start().trim_start_matches("- ").trim_start();
            l.strip_prefix("name:")
                .map(|v| {
                    v.split(" #")
                        .next()
                        .unwrap_or("")
                        .trim()
                        .trim_matches(['"', '\''])
                        == name
                })
                .unwrap_or(false)
        })
        .nth(nth)
        .map(|(i, _)| i + 1)
}

/// Merges inline users and a users file into one table; names must be
/// unique across both. `file` is the users file as resolved.
pub fn build_users(
    inline: &[User],
    file: Option<&Path>,
    cfg_path: &Path,
    cfg_text: &str,
) -> Result<Users, ConfigError> {
    let (from_file, file_text) = match file {
        Some(f) => load_users_file(f).map_err(|e| match e.line {
            // Unreadable: point at the key that names it.
            None => ConfigError {
                file: cfg_path.to_path_buf(),
                line: locate(cfg_text, "server.users_file"),
                key: "server.users_file".into(),
                msg: format!(
                    "cannot read {}: {}",
                    f.display(),
                    e.msg.trim_start_matches("cannot read: ")
                ),
            },
            Some(_) => e,
        })?,
        None => (Vec::new(), String::new()),
    };
    let mut map = HashMap::new();
    let mut seen_in_cfg: HashMap<&str, usize> = HashMap::new();
    let entries = inline
        .iter()
        .enumerate()
        .map(|(i, u)| (u, i, true))
        .chain(from_file.iter().enumerate().map(|(i, u)| (u, i, false)));
    for (u, i, in_cfg) in entries {
        let n = if in_cfg {
            let c = seen_in_cfg.entry(&u.name).or_default();
            *c += 1;
            *c - 1
        } else {
            0
        };
        if map.insert(u.name.clone(), u.digest.clone()).is_some() {
            let (fpath, text, key, nth) = match (in_cfg, file) {
                (false, Some(f)) => {
                    let nth = from_file[..i].iter().filter(|o| o.name == u.name).count();
                    (f, file_text.as_str(), format!("[{i}].name"), nth)
                }
                _ => (cfg_path, cfg_text, format!("server.users[{i}].name"), n),
            };
            return Err(ConfigError {
                file: fpath.to_path_buf(),
                line: name_line(text, &u.name, nth),
                key,
                msg: format!("user `{}` is defined twice", u.name),
            });
        }
    }
    if map.is_empty() {
        let msg = match file {
            Some(f) => format!(
                "no users yet: add one to {} (`websocks hash-password` prints its password_hash); websocks never runs an open proxy",
                f.display()
            ),
            None => {
                "no users: add `users:` or `users_file:` (websocks never runs an open proxy)".into()
            }
        };
        return Err(ConfigError {
            file: cfg_path.to_path_buf(),
            line: locate(cfg_text, "server"),
            key: "server.users".into(),
            msg,
        });
    }
    Ok(Users(map))
}

/// Loads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    let file: File = serde_yaml::from_str(&text).map_err(|e| yaml_error(path, e))?;
    validate(path, &text, file)
}

fn validate(path: &Path, text: &str, file: File) -> Result<Config, ConfigError> {
    let err = |key: &str, msg: String| ConfigError {
        file: path.to_path_buf(),
        line: locate(text, key),
        key: key.to_string(),
        msg,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let server = match file.server {
        None => None,
        Some(s) => {
            if s.listen.is_empty() {
                return Err(err(
                    "server.listen",
                    "at least one address is required".into(),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for l in &s.listen {
                if l.0.port() != 0 && !seen.insert(l.0) {
                    return Err(err("server.listen", format!("{} is listed twice", l.0)));
                }
            }
            if s.max_connections == 0 {
                return Err(err("server.max_connections", "must be at least 1".into()));
            }
            let max_handshakes = s.max_handshakes.unwrap_or((s.max_connections / 2).max(1));
            if max_handshakes == 0 || max_handshakes > s.max_connections {
                return Err(err(
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
                return Err(err(
                    "server.max_handshakes_per_source",
                    format!("must be from 1 to max_handshakes ({max_handshakes})"),
                ));
            }
            if s.tunnel_buffer_kib != 0 && !(64..=65536).contains(&s.tunnel_buffer_kib) {
                return Err(err(
                    "server.tunnel_buffer_kib",
                    "must be 0 (kernel autotuning) or from 64 to 65536".into(),
                ));
            }
            for (k, d) in [
                ("server.timeouts.handshake", s.timeouts.handshake),
                ("server.timeouts.connect", s.timeouts.connect),
                ("server.timeouts.idle", s.timeouts.idle),
                ("server.timeouts.send", s.timeouts.send),
            ] {
                if d.0.is_zero() {
                    return Err(err(k, "must be longer than zero".into()));
                }
            }
            if let Some(p) = &s.health_path
                && !p.starts_with('/')
            {
                return Err(err(
                    "server.health_path",
                    format!("`{p}` must start with /"),
                ));
            }
            let tls = match &s.tls {
                None => None,
                Some(t) => Some(
                    crate::tls::server_config(&base.join(&t.cert), &base.join(&t.key))
                        .map_err(|m| err("server.tls", m))?,
                ),
            };
            let users_file = s.users_file.as_ref().map(|f| base.join(f));
            let users = build_users(&s.users, users_file.as_deref(), path, text)?;
            Some(Server {
                listen: s.listen.iter().map(|l| l.0).collect(),
                users,
                timeouts: s.timeouts,
                max_connections: s.max_connections,
                max_handshakes,
                max_handshakes_per_source: per_source,
                tunnel_buffer: s.tunnel_buffer_kib.saturating_mul(1024),
                acl: s.destinations.acl(),
                reply_address: s.socks_reply_address,
                health_path: s.health_path,
                users_file,
                inline_users: s.users,
                tls,
            })
        }
    };
    let agent = match file.agent {
        None => None,
        Some(a) => Some(agent::validate(a, base, &err)?),
    };
    if server.is_none() && agent.is_none() {
        return Err(ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            msg: "nothing to run: add a `server:` or an `agent:` section".into(),
        });
    }
    Ok(Config {
        path: path.to_path_buf(),
        log_level: file.log_level.unwrap_or(LogLevel::Info),
        log_target: file.log_target,
        syslog_socket: file.syslog_socket,
        shutdown_grace: file.shutdown_grace.0,
        threads: file.threads,
        server,
        agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "250ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("5m".parse::<Dur>().unwrap().0, Duration::from_secs(300));
        assert!("5 parsecs".parse::<Dur>().is_err());
        assert!("9999999999999h".parse::<Dur>().is_err());
    }

    #[test]
    fn locate_keys() {
        let t = "log_level: info\nserver:\n  listen: []\n  timeouts:\n    idle: 0s\n";
        assert_eq!(locate(t, "server.timeouts.idle"), Some(5));
        assert_eq!(locate(t, "server.listen"), Some(3));
        let t = "agent:\n  servers:\n    - name: a\n      url: x\n    - name: b\n      sni: y\n";
        assert_eq!(locate(t, "agent.servers[1]"), Some(5));
        assert_eq!(locate(t, "agent.servers[0]"), Some(3));
    }
}
