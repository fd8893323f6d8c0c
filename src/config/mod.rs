//! The YAML configuration: a serde schema per section (private to this
//! module) validated into the plain types the daemon uses, with errors that
//! name the file, line and key.
//!
//! This file loads a file, validates its top level and locates keys for
//! errors; `server`, `agent` and `users` own their sections, `scalar` the
//! YAML scalars (durations, addresses) parsed inside the deserializer.
//!
//! Schema types are named `Raw…`; each keeps, in `expecting`, the type name
//! serde has always printed in its `invalid type … expected struct X`
//! errors, so those messages read as before.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::Deserializer;

pub(crate) mod agent;
#[cfg(test)]
mod error_messages;
pub(crate) mod metrics;
mod scalar;
mod server;
mod users;

use scalar::Dur;
#[cfg(test)]
pub(crate) use server::DEFAULT_DENY;
pub(crate) use server::{ReplyAddress, Server};
pub(crate) use users::{Secret, load_users_file, looks_like_users_file};

/// Deadlines both sections share.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections a server or the agent serves at once.
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// How long live tunnels may finish after SIGTERM.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

/// A configuration error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
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

/// A loaded, validated file.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub path: PathBuf,
    pub log_level: LogLevel,
    pub log_target: LogTarget,
    pub syslog_socket: PathBuf,
    pub shutdown_grace: Duration,
    pub threads: Threads,
    pub server: Option<Server>,
    pub agent: Option<agent::Agent>,
    /// The Prometheus endpoint, when configured.
    pub metrics: Option<metrics::Metrics>,
}

impl Config {
    /// Executor threads to run: `threads`, with `auto` resolved against
    /// whether this file's sections use TLS.
    pub(crate) fn thread_count(&self) -> usize {
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

/// How many threads run the daemon's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Threads {
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
        scalar::from_str(d)
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogTarget {
    /// stderr on a terminal; otherwise syslog when its socket exists.
    #[default]
    Auto,
    Stderr,
    Syslog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// The whole file as written. One file may hold several sections.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct File")]
struct RawFile {
    /// `error`, `warn`, `info` (default) or `debug`.
    #[serde(default)]
    log_level: Option<LogLevel>,
    /// `auto` (default), `stderr` or `syslog`.
    #[serde(default)]
    log_target: LogTarget,
    /// The syslog socket, default `/dev/log`.
    #[serde(default = "default_syslog_socket")]
    syslog_socket: PathBuf,
    /// On SIGTERM, how long live tunnels may finish before the process
    /// exits anyway.
    #[serde(default = "default_shutdown_grace")]
    shutdown_grace: Dur,
    /// Executor threads: `auto` (default) or a number from 1 to 256.
    #[serde(default)]
    threads: Threads,
    server: Option<server::RawServer>,
    agent: Option<agent::RawAgent>,
    metrics: Option<metrics::RawMetrics>,
}

fn default_syslog_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SYSLOG_SOCKET)
}

fn default_shutdown_grace() -> Dur {
    Dur(DEFAULT_SHUTDOWN_GRACE)
}

/// Loads and validates a configuration file.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    load_text(path, &text)
}

/// Validates `text` as if read from `path`: errors name `path`, and relative
/// paths in it start from its directory. `load` and the fuzz door
/// (`crate::fuzz`) share it, so both see the same checks and messages.
pub(crate) fn load_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file: RawFile = serde_yaml::from_str(text).map_err(|e| yaml_error(path, &e))?;
    let src = Source {
        path,
        text,
        base: path.parent().unwrap_or(Path::new(".")),
    };
    validate(file, &src)
}

/// A duration as the file writes one (`250ms`, `10s`, `5m`, `1h`), for the
/// fuzz door (`crate::fuzz`): the same parser the deserializer uses.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<Dur>().map(|d| d.0)
}

/// The file under validation: errors name it and the line of their key;
/// relative paths in it start from its directory.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    base: &'a Path,
}

impl Source<'_> {
    /// An error at `key`, on the line where `key` is written.
    fn err(&self, key: &str, msg: String) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: locate(self.text, key),
            key: key.to_string(),
            msg,
        }
    }

    /// A duration that must be longer than zero.
    fn nonzero(&self, key: &str, d: Dur) -> Result<Duration, ConfigError> {
        if d.0.is_zero() {
            return Err(self.err(key, "must be longer than zero".into()));
        }
        Ok(d.0)
    }
}

fn validate(file: RawFile, src: &Source) -> Result<Config, ConfigError> {
    let server = match file.server {
        None => None,
        Some(s) => Some(server::validate(s, src)?),
    };
    let agent = match file.agent {
        None => None,
        Some(a) => Some(agent::validate(a, src)?),
    };
    if server.is_none() && agent.is_none() {
        return Err(ConfigError {
            file: src.path.to_path_buf(),
            line: None,
            key: String::new(),
            msg: "nothing to run: add a `server:` or an `agent:` section".into(),
        });
    }
    let metrics = match file.metrics {
        None => None,
        Some(m) => Some(metrics::validate(&m, src)?),
    };
    Ok(Config {
        path: src.path.to_path_buf(),
        log_level: file.log_level.unwrap_or(LogLevel::Info),
        log_target: file.log_target,
        syslog_socket: file.syslog_socket,
        shutdown_grace: file.shutdown_grace.0,
        threads: file.threads,
        server,
        agent,
        metrics,
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: String::new(),
        msg: format!("cannot read: {e}"),
    })
}

/// Turns a serde_yaml error into file, line and key.
fn yaml_error(path: &Path, e: &serde_yaml::Error) -> ConfigError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
