//! The `metrics:` section: where the Prometheus endpoint listens, who may
//! reach it, and whether per-user series are kept.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::Deserialize;

use super::scalar::Listen;
use super::users::{User, Users};
use super::{ConfigError, Source};

/// The endpoint's configuration after validation.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub listen: Vec<SocketAddr>,
    /// Per-user series (`metrics.per_user`): one set per configured user.
    pub per_user: bool,
    /// Listeners beyond loopback without users were allowed.
    pub allow_remote: bool,
    /// When given, a scrape must authenticate as one of them (Basic).
    pub users: Option<Users>,
}

/// The `metrics:` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct MetricsConfig")]
pub(super) struct RawMetrics {
    listen: Vec<Listen>,
    /// A listener beyond loopback without `users`.
    #[serde(default)]
    allow_remote: bool,
    #[serde(default)]
    per_user: bool,
    #[serde(default)]
    users: Vec<User>,
}

/// At least one address, none twice; beyond loopback only with users or
/// `allow_remote: true` (the figures name users and servers).
pub(super) fn validate(m: &RawMetrics, src: &Source) -> Result<Metrics, ConfigError> {
    if m.listen.is_empty() {
        return Err(src.err(
            "metrics.listen",
            "at least one address is required (leave out `metrics:` to turn the endpoint off)"
                .into(),
        ));
    }
    let mut seen = HashSet::new();
    for l in &m.listen {
        if l.0.port() != 0 && !seen.insert(l.0) {
            return Err(src.err("metrics.listen", format!("{} is listed twice", l.0)));
        }
    }
    let mut users = Users::default();
    for (i, u) in m.users.iter().enumerate() {
        if !users.insert(u) {
            return Err(src.err(
                &format!("metrics.users[{i}]"),
                format!("user `{}` is defined twice", u.name),
            ));
        }
    }
    let listen: Vec<SocketAddr> = m.listen.iter().map(|l| l.0).collect();
    if let Some(a) = remote(&listen)
        && users.is_empty()
        && !m.allow_remote
    {
        return Err(src.err(
            "metrics.listen",
            format!(
                "{a} is reachable beyond loopback: add `metrics.users` so scrapes must \
                 authenticate, or `metrics.allow_remote: true`"
            ),
        ));
    }
    Ok(Metrics {
        listen,
        per_user: m.per_user,
        allow_remote: m.allow_remote,
        users: (!users.is_empty()).then_some(users),
    })
}

/// The first address beyond loopback.
pub(crate) fn remote(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .find(|a| !crate::acl::canonical(a.ip()).is_loopback())
        .copied()
}
