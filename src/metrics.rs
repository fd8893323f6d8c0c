//! What the `metrics:` endpoint serves: process-wide counters, gauges and
//! histograms (relaxed atomics, so counting costs the data path one
//! uncontended add per relay wake-up), and their rendering in the
//! Prometheus text exposition format 0.0.4.
//!
//! Every label value is either fixed here or comes from the configuration
//! (server names, user names): nothing a client sends becomes a label.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A monotonically increasing count.
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub(crate) fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Relaxed);
        }
    }
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down (connections in a state).
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    pub(crate) const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }
    fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
    /// Counts one until the guard drops.
    pub(crate) fn hold(&'static self) -> Held {
        self.0.fetch_add(1, Relaxed);
        Held(self)
    }
}

/// One unit of a [`Gauge`], given back on drop.
pub(crate) struct Held(&'static Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Relaxed);
    }
}

/// Upper bounds (seconds) of every histogram's buckets: from a loopback
/// handshake (well under a millisecond) to a connect timeout.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Durations, counted into [`BUCKETS`] (each count is of its own bucket;
/// the rendering accumulates them).
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    /// Observations beyond the last bound.
    over: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            over: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match BUCKETS.iter().position(|&b| s <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.over.fetch_add(1, Relaxed),
        };
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// A counter per value of one fixed label.
pub(crate) struct Labeled<const N: usize> {
    pub values: [&'static str; N],
    counts: [Counter; N],
}

impl<const N: usize> Labeled<N> {
    pub(crate) const fn new(values: [&'static str; N]) -> Labeled<N> {
        Labeled {
            values,
            counts: [const { Counter::new() }; N],
        }
    }
    /// The counter for `value`, which must be one of the fixed values.
    pub(crate) fn at(&self, value: &str) -> &Counter {
        let i = self.values.iter().position(|v| *v == value);
        debug_assert!(i.is_some(), "unknown label value {value}");
        &self.counts[i.unwrap_or(N - 1)]
    }
}

/// How a connection ended, the `end=` of its log line.
pub(crate) const ENDS: [&str; 7] = [
    "closed",
    "idle_timeout",
    "send_timeout",
    "client_error",
    "destination_error",
    "cut",
    "rejected",
];

/// Bytes through tunnels, client to destination and back.
pub(crate) struct Bytes {
    pub up: Counter,
    pub down: Counter,
}

impl Bytes {
    const fn new() -> Bytes {
        Bytes {
            up: Counter::new(),
            down: Counter::new(),
        }
    }
}

/// The server's figures.
pub(crate) struct ServerMetrics {
    pub accepted: Counter,
    pub ended: Labeled<7>,
    pub rejected: Labeled<14>,
    pub auth_failures: Labeled<4>,
    pub dial_errors: Labeled<9>,
    pub health_checks: Counter,
    pub handshaking: Gauge,
    pub waiting: Gauge,
    pub tunnels: Gauge,
    pub bytes: Bytes,
    pub handshake: Histogram,
    pub connect: Histogram,
}

/// Why the server refused or dropped a connection before its tunnel.
pub(crate) const REJECT_REASONS: [&str; 14] = [
    "limit",
    "tls",
    "client_gone",
    "bad_http",
    "not_upgrade",
    "unauthorized",
    "frame",
    "pong_flood",
    "revoked",
    "greeting",
    "request",
    "command",
    "dial",
    "other",
];

/// Why an upgrade's credentials were refused.
pub(crate) const AUTH_REASONS: [&str; 4] =
    ["missing", "malformed", "unknown_user", "bad_credential"];

/// SOCKS5 reply codes a failed destination connect is answered with.
pub(crate) const REPLY_CODES: [&str; 9] = ["01", "02", "03", "04", "05", "06", "07", "08", "other"];

pub(crate) static SERVER: ServerMetrics = ServerMetrics {
    accepted: Counter::new(),
    ended: Labeled::new(ENDS),
    rejected: Labeled::new(REJECT_REASONS),
    auth_failures: Labeled::new(AUTH_REASONS),
    dial_errors: Labeled::new(REPLY_CODES),
    health_checks: Counter::new(),
    handshaking: Gauge::new(),
    waiting: Gauge::new(),
    tunnels: Gauge::new(),
    bytes: Bytes::new(),
    handshake: Histogram::new(),
    connect: Histogram::new(),
};

/// The agent's figures (per server ones are in [`ServerStats`]).
pub(crate) struct AgentMetrics {
    pub accepted: Labeled<3>,
    pub ended: Labeled<7>,
    pub routes: Labeled<4>,
    pub tunnels: Gauge,
    pub bytes: Bytes,
    pub connect: Histogram,
}

pub(crate) static AGENT: AgentMetrics = AgentMetrics {
    accepted: Labeled::new(["socks5", "http", "mixed"]),
    ended: Labeled::new(ENDS),
    routes: Labeled::new(["proxy", "direct", "reject", "local"]),
    tunnels: Gauge::new(),
    bytes: Bytes::new(),
    connect: Histogram::new(),
};

/// One of the agent's servers, by its configured name; kept across
/// reloads so its counters do not restart.
pub(crate) struct ServerStats {
    pub tunnels: Counter,
    pub failovers: Counter,
    pub health_failures: Counter,
    pub health: Histogram,
}

/// Process-wide figures.
struct Process {
    reloads_ok: Counter,
    reloads_failed: Counter,
    /// Unix seconds of the last good (re)load, as f64 bits.
    last_reload: AtomicU64,
    start: AtomicU64,
}

static PROCESS: Process = Process {
    reloads_ok: Counter::new(),
    reloads_failed: Counter::new(),
    last_reload: AtomicU64::new(0),
    start: AtomicU64::new(0),
};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Marks the process start (also the first good load).
pub(crate) fn started() {
    let now = unix_now().to_bits();
    PROCESS.start.store(now, Relaxed);
    PROCESS.last_reload.store(now, Relaxed);
}

/// Counts a reload.
pub(crate) fn reloaded(ok: bool) {
    if ok {
        PROCESS.reloads_ok.inc();
        PROCESS.last_reload.store(unix_now().to_bits(), Relaxed);
    } else {
        PROCESS.reloads_failed.inc();
    }
}

/// Whether per-user series are kept (`metrics.per_user`).
static PER_USER: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_per_user(on: bool) {
    PER_USER.store(on, Relaxed);
}

/// One configured user's figures on the server.
pub(crate) struct UserStats {
    pub tunnels: Counter,
    pub auth_failures: Counter,
    pub bytes: Bytes,
}

/// Per-user figures, by configured name (only names the users file holds
/// ever get here: an unknown user is never a label).
static USERS: Mutex<Option<HashMap<String, Arc<UserStats>>>> = Mutex::new(None);

/// The figures of `user`, a configured user, when `metrics.per_user` is on.
pub(crate) fn user(user: &str) -> Option<Arc<UserStats>> {
    if !PER_USER.load(Relaxed) {
        return None;
    }
    let mut m = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let map = m.get_or_insert_with(HashMap::new);
    Some(
        map.entry(user.to_string())
            .or_insert_with(|| {
                Arc::new(UserStats {
                    tunnels: Counter::new(),
                    auth_failures: Counter::new(),
                    bytes: Bytes::new(),
                })
            })
            .clone(),
    )
}

static SERVERS: Mutex<Option<HashMap<String, Arc<ServerStats>>>> = Mutex::new(None);

/// The figures of the agent's server `name` (from its configuration).
pub(crate) fn server_stats(name: &str) -> Arc<ServerStats> {
    let mut m = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    m.get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(ServerStats {
                tunnels: Counter::new(),
                failovers: Counter::new(),
                health_failures: Counter::new(),
                health: Histogram::new(),
            })
        })
        .clone()
}

/// Where a relay's bytes are counted besides the tunnel's own totals: the
/// role's counters and, with `metrics.per_user`, the user's.
pub(crate) struct Meter {
    pub bytes: &'static Bytes,
    pub user: Option<Arc<UserStats>>,
}

impl Meter {
    pub(crate) fn add(&self, up: u64, down: u64) {
        self.bytes.up.add(up);
        self.bytes.down.add(down);
        if let Some(u) = &self.user {
            u.bytes.up.add(up);
            u.bytes.down.add(down);
        }
    }
}

/// What only the running daemon knows at scrape time.
pub(crate) struct View {
    /// Users loaded, when this process runs the server.
    pub users: Option<usize>,
    /// Whether this process runs an agent, and its servers.
    pub agent: Option<Vec<ServerView>>,
}

/// One of the agent's servers at scrape time.
pub(crate) struct ServerView {
    pub name: String,
    pub healthy: bool,
    /// Pooled connections ready.
    pub ready: usize,
    pub stats: Arc<ServerStats>,
}

/// Text exposition, one metric family at a time.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn counter(&mut self, name: &str, help: &str, c: &Counter) {
        self.family(name, "counter", help);
        self.sample(name, &[], c.get());
    }
    fn gauge(&mut self, name: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], v);
    }
    fn labeled<const N: usize>(&mut self, name: &str, label: &str, help: &str, l: &Labeled<N>) {
        self.family(name, "counter", help);
        for (v, c) in l.values.iter().zip(&l.counts) {
            self.sample(name, &[(label, v)], c.get());
        }
    }
    fn bytes(&mut self, name: &str, help: &str, rows: &[(&[(&str, &str)], &Bytes)]) {
        self.family(name, "counter", help);
        for (labels, b) in rows {
            for (dir, c) in [("up", &b.up), ("down", &b.down)] {
                let mut l = labels.to_vec();
                l.push(("direction", dir));
                self.sample(name, &l, c.get());
            }
        }
    }
    fn histogram(&mut self, name: &str, help: &str, rows: &[(&[(&str, &str)], &Histogram)]) {
        self.family(name, "histogram", help);
        for (labels, h) in rows {
            let mut total = 0;
            for (bound, c) in BUCKETS.iter().zip(&h.buckets) {
                total += c.load(Relaxed);
                let le = bound.to_string();
                let mut l = labels.to_vec();
                l.push(("le", &le));
                self.sample(&format!("{name}_bucket"), &l, total);
            }
            total += h.over.load(Relaxed);
            let mut l = labels.to_vec();
            l.push(("le", "+Inf"));
            self.sample(&format!("{name}_bucket"), &l, total);
            let sum = h.sum_ns.load(Relaxed) as f64 / 1e9;
            self.sample(&format!("{name}_sum"), labels, sum);
            self.sample(&format!("{name}_count"), labels, total);
        }
    }
}

/// A label value as the format wants it: backslash, quote and newline
/// escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The whole exposition.
pub(crate) fn render(view: &View) -> String {
    let mut t = Text(String::with_capacity(16 * 1024));
    t.family(
        "websocks_build_info",
        "gauge",
        "Always 1; the version of the running binary.",
    );
    t.sample(
        "websocks_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    t.gauge(
        "websocks_start_time_seconds",
        "When the process started, in seconds since the Unix epoch.",
        f64::from_bits(PROCESS.start.load(Relaxed)),
    );
    t.family(
        "websocks_reloads_total",
        "counter",
        "Reloads (SIGHUP), by result.",
    );
    t.sample(
        "websocks_reloads_total",
        &[("result", "ok")],
        PROCESS.reloads_ok.get(),
    );
    t.sample(
        "websocks_reloads_total",
        &[("result", "failed")],
        PROCESS.reloads_failed.get(),
    );
    t.gauge(
        "websocks_last_reload_success_timestamp_seconds",
        "When the configuration in force was loaded (start or reload), in seconds since the Unix epoch.",
        f64::from_bits(PROCESS.last_reload.load(Relaxed)),
    );
    if let Some(users) = view.users {
        render_server(&mut t, users);
    }
    if let Some(servers) = &view.agent {
        render_agent(&mut t, servers);
    }
    t.0
}

fn render_server(t: &mut Text, users: usize) {
    let s = &SERVER;
    t.gauge(
        "websocks_server_users",
        "Users in the configuration in force.",
        users,
    );
    t.counter(
        "websocks_server_connections_accepted_total",
        "Connections the server accepted (including those closed at once for a limit).",
        &s.accepted,
    );
    t.labeled(
        "websocks_server_connections_ended_total",
        "end",
        "Server connections ended, by the end= of their log line (rejected: before a tunnel).",
        &s.ended,
    );
    t.labeled(
        "websocks_server_rejections_total",
        "reason",
        "Server connections ended before a tunnel, by class of reason.",
        &s.rejected,
    );
    t.labeled(
        "websocks_server_auth_failures_total",
        "reason",
        "Upgrades refused with 401, by reason.",
        &s.auth_failures,
    );
    t.labeled(
        "websocks_server_dial_errors_total",
        "reply",
        "Destination connects that failed, by the SOCKS5 reply code sent.",
        &s.dial_errors,
    );
    t.counter(
        "websocks_server_health_checks_total",
        "Plain GETs of server.health_path answered 200.",
        &s.health_checks,
    );
    t.gauge(
        "websocks_server_handshakes",
        "Connections in their handshake now (not waiting for the frame, not yet a tunnel).",
        s.handshaking.get(),
    );
    t.gauge(
        "websocks_server_waiting_connections",
        "Upgraded connections waiting for their frame now (agents' pools).",
        s.waiting.get(),
    );
    t.gauge(
        "websocks_server_tunnels",
        "Tunnels open now.",
        s.tunnels.get(),
    );
    t.bytes(
        "websocks_server_tunnel_bytes_total",
        "Bytes relayed by the server's tunnels: up is client to destination.",
        &[(&[], &s.bytes)],
    );
    t.histogram(
        "websocks_server_handshake_duration_seconds",
        "Time in the handshake: accept to the 101, plus the frame to the SOCKS5 request (a pooled connection's wait is not counted).",
        &[(&[], &s.handshake)],
    );
    t.histogram(
        "websocks_server_connect_duration_seconds",
        "Time to reach a destination (name lookup and TCP connect), successful connects.",
        &[(&[], &s.connect)],
    );
    if PER_USER.load(Relaxed) {
        render_users(t);
    }
}

/// The per-user series (`metrics.per_user`).
fn render_users(t: &mut Text) {
    {
        let m = USERS.lock().unwrap_or_else(|e| e.into_inner());
        let mut users: Vec<(&String, &Arc<UserStats>)> =
            m.as_ref().map(|m| m.iter().collect()).unwrap_or_default();
        users.sort_by(|a, b| a.0.cmp(b.0));
        t.family(
            "websocks_server_user_tunnels_total",
            "counter",
            "Tunnels opened, per configured user (metrics.per_user).",
        );
        for (name, u) in &users {
            t.sample(
                "websocks_server_user_tunnels_total",
                &[("user", name)],
                u.tunnels.get(),
            );
        }
        t.family(
            "websocks_server_user_auth_failures_total",
            "counter",
            "Upgrades refused for a configured user's wrong or expired credential (metrics.per_user).",
        );
        for (name, u) in &users {
            t.sample(
                "websocks_server_user_auth_failures_total",
                &[("user", name)],
                u.auth_failures.get(),
            );
        }
        let rows: Vec<([(&str, &str); 1], &Bytes)> = users
            .iter()
            .map(|(n, u)| ([("user", n.as_str())], &u.bytes))
            .collect();
        let rows: Vec<(&[(&str, &str)], &Bytes)> = rows.iter().map(|(l, b)| (&l[..], *b)).collect();
        t.bytes(
            "websocks_server_user_tunnel_bytes_total",
            "Bytes relayed per configured user (metrics.per_user).",
            &rows,
        );
    }
}

fn render_agent(t: &mut Text, servers: &[ServerView]) {
    let a = &AGENT;
    t.labeled(
        "websocks_agent_connections_accepted_total",
        "listener",
        "Connections the agent accepted, by listener kind.",
        &a.accepted,
    );
    t.labeled(
        "websocks_agent_connections_ended_total",
        "end",
        "Agent connections ended, by the end= of their log line (rejected: refused before a tunnel).",
        &a.ended,
    );
    t.labeled(
        "websocks_agent_routes_total",
        "action",
        "Requests by the route taken (local: the agent's own pages, e.g. /proxy.pac).",
        &a.routes,
    );
    t.gauge(
        "websocks_agent_tunnels",
        "Agent tunnels open now.",
        a.tunnels.get(),
    );
    t.bytes(
        "websocks_agent_tunnel_bytes_total",
        "Bytes relayed by the agent's tunnels: up is client to destination.",
        &[(&[], &a.bytes)],
    );
    t.histogram(
        "websocks_agent_connect_duration_seconds",
        "Time from a client's request to its tunnel being open (the server's reply, or a direct connect).",
        &[(&[], &a.connect)],
    );
    t.family(
        "websocks_agent_server_up",
        "gauge",
        "1 while the server is healthy (last health check or use succeeded).",
    );
    for s in servers {
        t.sample(
            "websocks_agent_server_up",
            &[("server", &s.name)],
            u8::from(s.healthy),
        );
    }
    t.family(
        "websocks_agent_pool_ready",
        "gauge",
        "Upgraded connections waiting in the server's pool.",
    );
    for s in servers {
        t.sample("websocks_agent_pool_ready", &[("server", &s.name)], s.ready);
    }
    for (metric, help, pick) in [
        (
            "websocks_agent_server_tunnels_total",
            "Tunnels opened through the server.",
            (|s: &ServerStats| s.tunnels.get()) as fn(&ServerStats) -> u64,
        ),
        (
            "websocks_agent_failovers_total",
            "Times the server could not be used and the next one of its group was tried.",
            |s: &ServerStats| s.failovers.get(),
        ),
        (
            "websocks_agent_health_check_failures_total",
            "Health checks of the server that failed.",
            |s: &ServerStats| s.health_failures.get(),
        ),
    ] {
        t.family(metric, "counter", help);
        for s in servers {
            t.sample(metric, &[("server", &s.name)], pick(&s.stats));
        }
    }
    let labels: Vec<[(&str, &str); 1]> = servers
        .iter()
        .map(|s| [("server", s.name.as_str())])
        .collect();
    let rows: Vec<(&[(&str, &str)], &Histogram)> = labels
        .iter()
        .zip(servers)
        .map(|(l, s)| (&l[..], &s.stats.health))
        .collect();
    t.histogram(
        "websocks_agent_health_check_duration_seconds",
        "Time a health check (a real upgrade) took, successful or not.",
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_accumulate() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(30));
        let mut t = Text(String::new());
        t.histogram("x_seconds", "x", &[(&[("server", "a\"b")], &h)]);
        let text = t.0;
        assert!(
            text.contains("x_seconds_bucket{server=\"a\\\"b\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 3\n"), "{text}");
        assert!(
            text.contains("x_seconds_count{server=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_sum{server=\"a\\\"b\"} 30.0031\n"),
            "{text}"
        );
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
