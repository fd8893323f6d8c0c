//! The agent's server groups: health checked with real upgrades, used
//! round-robin (healthy servers first), failing over to the next server
//! when one cannot be used.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_io::Timer;

use super::handshake::{Tunnel, UpError, open};
use super::pool::Upstream;
use crate::config::agent::Agent;
use crate::proto::socks5::Addr;

/// Checks `up`'s health with a real upgrade every `interval`, each within
/// `limit`. Runs until retired.
async fn check_health(up: Arc<Upstream>, interval: Duration, limit: Duration) {
    while !up.is_retired() {
        let began = std::time::Instant::now();
        // The upgraded connection is closed at once: `map` drops it.
        let r = up.upgrade(limit).await.map(drop);
        up.stats.health.observe(began.elapsed());
        match r {
            Ok(()) => up.set_health(true, ""),
            Err(e) => {
                up.stats.health_failures.inc();
                up.set_health(false, &format!("health check: {e}"));
            }
        }
        Timer::after(interval).await;
    }
}

/// Servers of one group, used round-robin.
pub(crate) struct Group {
    pub members: Vec<Arc<Upstream>>,
    next: AtomicUsize,
}

/// Why no server of a group could open the tunnel.
#[derive(Debug)]
pub(crate) struct GroupError {
    pub last: UpError,
}

/// Which server answered, and its tunnel.
pub(crate) struct Opened {
    pub server: String,
    pub pooled: bool,
    pub tunnel: Tunnel,
}

impl Group {
    pub(crate) fn new(members: Vec<Arc<Upstream>>) -> Group {
        Group {
            members,
            next: AtomicUsize::new(0),
        }
    }

    /// Opens a tunnel to `dest` through the group: healthy servers first,
    /// round-robin, failing over on connect/upgrade errors. A pooled
    /// connection that turns out dead is retried once on a fresh one.
    /// A SOCKS5 error reply from a server is a result, not a failure.
    pub(crate) async fn open(
        &self,
        dest: &Addr,
        limit: Duration,
        reply_limit: Duration,
    ) -> Result<Opened, GroupError> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<&Arc<Upstream>> =
            (0..n).map(|i| &self.members[(start + i) % n]).collect();
        order.sort_by_key(|u| !u.is_healthy());
        let mut last = UpError::Upgrade("no server".into());
        for up in order {
            if let Some(p) = up.take_pooled() {
                match open(p, dest, limit, reply_limit).await {
                    Ok(tunnel) => {
                        up.stats.tunnels.inc();
                        return Ok(Opened {
                            server: up.server.name.clone(),
                            pooled: true,
                            tunnel,
                        });
                    }
                    // The server answered the frame: it is alive, the
                    // destination is slow. No retry, no failover.
                    Err(UpError::ReplyTimeout) => {
                        return Err(GroupError {
                            last: UpError::ReplyTimeout,
                        });
                    }
                    Err(e) => log::debug!(
                        "pooled connection to {} was dead ({e}); trying a fresh one",
                        up.server.name
                    ),
                }
            }
            match up.open_fresh(dest, limit, reply_limit).await {
                Ok(tunnel) => {
                    up.stats.tunnels.inc();
                    up.set_health(true, "");
                    return Ok(Opened {
                        server: up.server.name.clone(),
                        pooled: false,
                        tunnel,
                    });
                }
                Err(UpError::ReplyTimeout) => {
                    return Err(GroupError {
                        last: UpError::ReplyTimeout,
                    });
                }
                Err(e) => {
                    up.stats.failovers.inc();
                    up.set_health(false, &e.to_string());
                    last = e;
                }
            }
        }
        Err(GroupError { last })
    }
}

/// Upstreams and groups of one configuration generation.
pub(crate) struct Upstreams {
    pub all: Vec<Arc<Upstream>>,
    pub groups: HashMap<String, Arc<Group>>,
}

impl Upstreams {
    /// Healthy servers and all servers, for STATUS=.
    pub(crate) fn health(&self) -> (usize, usize) {
        (
            self.all.iter().filter(|u| u.is_healthy()).count(),
            self.all.len(),
        )
    }

    /// Ends this generation's background tasks (after a reload).
    pub(crate) fn retire(&self) {
        for u in &self.all {
            u.retire();
        }
    }
}

/// Builds upstreams and groups, and starts pool and health tasks on `ex`.
pub(crate) fn start(cfg: &Agent, ex: &smol::Executor<'static>) -> Upstreams {
    for s in cfg.servers.iter().filter(|s| s.insecure) {
        log::warn!(
            "server {}: insecure_skip_verify is on: its TLS certificate is NOT checked; \
             anyone on the path can read and change this traffic",
            s.name
        );
    }
    let all: Vec<Arc<Upstream>> = cfg
        .servers
        .iter()
        .cloned()
        .map(|s| Arc::new(Upstream::new(s)))
        .collect();
    for up in &all {
        if cfg.pool.size > 0 {
            ex.spawn(up.clone().maintain_pool(
                cfg.pool.size,
                cfg.pool.max,
                cfg.pool.keepalive,
                cfg.timeouts.connect,
            ))
            .detach();
        }
        ex.spawn(check_health(
            up.clone(),
            cfg.health.interval,
            cfg.health.timeout,
        ))
        .detach();
    }
    let groups = cfg
        .groups
        .iter()
        .map(|(name, idx)| {
            (
                name.clone(),
                Arc::new(Group::new(idx.iter().map(|&i| all[i].clone()).collect())),
            )
        })
        .collect();
    Upstreams { all, groups }
}
