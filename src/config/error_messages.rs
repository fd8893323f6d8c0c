//! Every message `load` gives, exactly: file, line, key and words. The
//! integration tests check the same through `websocks check`; these pin
//! each validation rule's text so a reshape of the config code cannot
//! change one unseen.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::load;

/// A fresh directory for one case.
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "websocks-config-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Loads `yaml` (with `users.yaml` holding `users` when given) and returns
/// the error as `check` prints it, the directory written `DIR`.
fn error_of(yaml: &str, users: Option<&str>) -> String {
    let dir = temp_dir();
    if let Some(u) = users {
        std::fs::write(dir.join("users.yaml"), u).unwrap();
    }
    let path = dir.join("websocks.yaml");
    std::fs::write(&path, yaml).unwrap();
    let got = match load(&path) {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string().replace(dir.to_str().unwrap(), "DIR"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    got
}

const SERVER: &str =
    "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: alice, password: pw}]\n";

const SERVER_CASES: &[(&str, &str)] = &[
    (
        "  timeouts: {idle: 5 parsecs}\n",
        "DIR/websocks.yaml:4: server.timeouts.idle: `5 parsecs` has an unknown unit (use ms, s, m or h)",
    ),
    (
        "  timeouts: {idle: x}\n",
        "DIR/websocks.yaml:4: server.timeouts.idle: `x` is not a duration like 10s, 500ms, 5m or 1h",
    ),
    (
        "  timeouts: {idle: 9999999999999h}\n",
        "DIR/websocks.yaml:4: server.timeouts.idle: `9999999999999h` is longer than a year",
    ),
    (
        "  timeouts: {handshake: 0s}\n",
        "DIR/websocks.yaml: server.timeouts.handshake: must be longer than zero",
    ),
    (
        "  timeouts: {connect: 0}\n",
        "DIR/websocks.yaml: server.timeouts.connect: must be longer than zero",
    ),
    (
        "  timeouts: {idle: 0ms}\n",
        "DIR/websocks.yaml: server.timeouts.idle: must be longer than zero",
    ),
    (
        "  timeouts: {send: 0m}\n",
        "DIR/websocks.yaml: server.timeouts.send: must be longer than zero",
    ),
    (
        "  max_connections: 0\n",
        "DIR/websocks.yaml:4: server.max_connections: must be at least 1",
    ),
    (
        "  max_connections: 10\n  max_handshakes: 11\n",
        "DIR/websocks.yaml:5: server.max_handshakes: must be from 1 to max_connections (10), so authenticated tunnels keep room",
    ),
    (
        "  max_handshakes: 0\n",
        "DIR/websocks.yaml:4: server.max_handshakes: must be from 1 to max_connections (4096), so authenticated tunnels keep room",
    ),
    (
        "  max_handshakes: 8\n  max_handshakes_per_source: 9\n",
        "DIR/websocks.yaml:5: server.max_handshakes_per_source: must be from 1 to max_handshakes (8)",
    ),
    (
        "  max_handshakes_per_source: 0\n",
        "DIR/websocks.yaml:4: server.max_handshakes_per_source: must be from 1 to max_handshakes (2048)",
    ),
    (
        "  tunnel_buffer_kib: 63\n",
        "DIR/websocks.yaml:4: server.tunnel_buffer_kib: must be 0 (kernel autotuning) or from 64 to 65536",
    ),
    (
        "  tunnel_buffer_kib: 65537\n",
        "DIR/websocks.yaml:4: server.tunnel_buffer_kib: must be 0 (kernel autotuning) or from 64 to 65536",
    ),
    (
        "  banner_hold: 1001ms\n",
        "DIR/websocks.yaml:4: server.banner_hold: must be at most 1s (0 turns it off)",
    ),
    (
        "  banner_hold: soon\n",
        "DIR/websocks.yaml:4: server.banner_hold: `soon` is not a duration like 10s, 500ms, 5m or 1h",
    ),
    (
        "  health_path: healthz\n",
        "DIR/websocks.yaml:4: server.health_path: `healthz` must start with /",
    ),
    (
        "  tls: {cert: nope.pem, key: nope.key}\n",
        "DIR/websocks.yaml:4: server.tls: DIR/nope.pem: I/O error: No such file or directory (os error 2)",
    ),
    (
        "  destinations: {allow: [\"::ffff:10.0.0.0/64\"]}\n",
        "DIR/websocks.yaml:4: server.destinations.allow[0]: `::ffff:10.0.0.0/64`: an IPv4-mapped network needs a prefix of /96 or longer",
    ),
    (
        "  destinations: {deny: [\"x\"]}\n",
        "DIR/websocks.yaml:4: server.destinations.deny[0]: `x` is not a rule like 10.0.0.0/8, 10.0.0.0/8:22, [fe80::/10]:443, *:25 or *:6000-6063",
    ),
    (
        "  destinations: {default: maybe}\n",
        "DIR/websocks.yaml:4: server.destinations.default: unknown variant `maybe`, expected `allow` or `deny`",
    ),
    (
        "  socks_reply_address: public\n",
        "DIR/websocks.yaml:4: server.socks_reply_address: unknown variant `public`, expected `hidden` or `local`",
    ),
    (
        "  users_file: nope.yaml\n",
        "DIR/websocks.yaml:4: server.users_file: cannot read DIR/nope.yaml: No such file or directory (os error 2)",
    ),
    // Wrong YAML types: serde's messages name the schema's types.
    (
        "  tls: 5\n",
        "DIR/websocks.yaml:4: server.tls: invalid type: integer `5`, expected struct TlsFiles",
    ),
    (
        "  timeouts: 5\n",
        "DIR/websocks.yaml:4: server.timeouts: invalid type: integer `5`, expected struct Timeouts",
    ),
    (
        "  destinations: 5\n",
        "DIR/websocks.yaml:4: server.destinations: invalid type: integer `5`, expected struct Destinations",
    ),
    (
        "  destinations: {default: [1]}\n",
        "DIR/websocks.yaml:4: server.destinations.default: invalid type: sequence, expected a YAML tag starting with '!'",
    ),
    (
        "  socks_reply_address: [1]\n",
        "DIR/websocks.yaml:4: server.socks_reply_address: invalid type: sequence, expected a YAML tag starting with '!'",
    ),
];

#[test]
fn server_section_messages() {
    let wrong: Vec<String> = SERVER_CASES
        .iter()
        .filter_map(|(extra, want)| {
            let got = error_of(&format!("{SERVER}{extra}"), None);
            (got != *want).then(|| format!("{extra:?}\n  want {want}\n  got  {got}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Whole files: the users rules, the agent section, the top level.
const FILE_CASES: &[(&str, Option<&str>, &str)] = &[
    // Users.
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users:\n    - {name: alice, password: a}\n    - {name: alice, password: b}\n",
        None,
        "DIR/websocks.yaml: server.users[1].name: user `alice` is defined twice",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users_file: users.yaml\n",
        Some(
            "- {name: bob, password: a}\n- {name: carol, password: b}\n- {name: bob, password: c}\n",
        ),
        "DIR/users.yaml: [2].name: user `bob` is defined twice",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: bob, password: x}]\n  users_file: users.yaml\n",
        Some("- {name: bob, password: a}\n"),
        "DIR/users.yaml: [0].name: user `bob` is defined twice",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n",
        None,
        "DIR/websocks.yaml:1: server.users: no users: add `users:` or `users_file:` (websocks never runs an open proxy)",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users_file: users.yaml\n",
        Some("# no one yet\n---\n"),
        "DIR/websocks.yaml:1: server.users: no users yet: add one to DIR/users.yaml (`websocks hash-password` prints its password_hash); websocks never runs an open proxy",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users_file: users.yaml\n",
        Some("- {name: bob}\n"),
        "DIR/users.yaml:1: user `bob`: password or password_hash is required",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: \"a:b\", password: x}]\n",
        None,
        "DIR/websocks.yaml:3: server.users: user name `a:b` must be non-empty, without `:` or control characters",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: \"\", password: x}]\n",
        None,
        "DIR/websocks.yaml:3: server.users: user name `` must be non-empty, without `:` or control characters",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: a, password: \"\"}]\n",
        None,
        "DIR/websocks.yaml:3: server.users: user `a`: password is empty",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: a}]\n",
        None,
        "DIR/websocks.yaml:3: server.users: user `a`: password or password_hash is required",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: a, password_hash: short}]\n",
        None,
        "DIR/websocks.yaml:3: server.users: user `a`: password_hash must be the 44-character output of `websocks hash-password`",
    ),
    (
        "server:\n  listen: []\n  users: [{name: a, password: x}]\n",
        None,
        "DIR/websocks.yaml:2: server.listen: at least one address is required",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n  users: [{name: a, password: x}]\n",
        None,
        "DIR/websocks.yaml:2: server.listen: 127.0.0.1:1 is listed twice",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n  users: [{name: a, password: x}]\n",
        None,
        "ok",
    ),
    // The agent.
    (
        "agent:\n  socks5: {listen: []}\n",
        None,
        "DIR/websocks.yaml: agent.socks5.listen: at least one address is required",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:1\"]}\n  http: {listen: [\"127.0.0.1:1\"]}\n",
        None,
        "DIR/websocks.yaml: agent.http.listen: 127.0.0.1:1 is listed twice",
    ),
    (
        "agent:\n  default: direct\n",
        None,
        "DIR/websocks.yaml:1: agent: no listener: add `socks5:`, `http:` or `mixed:` with `listen:`",
    ),
    (
        "agent:\n  mixed: {listen: [\"127.0.0.1:0\"]}\n  users: [{name: a, password: x}, {name: a, password: y}]\n",
        None,
        "DIR/websocks.yaml:3: agent.users[1]: user `a` is defined twice",
    ),
    (
        "agent:\n  http: {listen: [\"0.0.0.0:0\"]}\n  default: direct\n",
        None,
        "DIR/websocks.yaml: agent.http.listen: 0.0.0.0:0 is reachable beyond loopback: add `agent.users` so clients must authenticate",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n",
        None,
        "DIR/websocks.yaml: agent.servers: at least one server is required to proxy",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  rules: [{port: [22], action: proxy}]\n  default: direct\n",
        None,
        "DIR/websocks.yaml: agent.servers: at least one server is required to proxy",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: \"\", url: \"ws://h/\", user: u, password: pw}\n",
        None,
        "DIR/websocks.yaml:4: agent.servers[0]: server name `` is empty or used twice",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n",
        None,
        "DIR/websocks.yaml:5: agent.servers[1]: server name `s` is empty or used twice",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: \"u:v\", password: pw}\n",
        None,
        "DIR/websocks.yaml:4: agent.servers[0]: server `s`: user must be non-empty, without `:`",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u}\n",
        None,
        "DIR/websocks.yaml:4: agent.servers[0]: server `s`: password or password_hash is required",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw, password_hash: pw}\n",
        None,
        "DIR/websocks.yaml:4: agent.servers[0]: server `s`: give password or password_hash, not both",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"http://h/\", user: u, password: pw}\n",
        None,
        "DIR/websocks.yaml:4: agent.servers[0].url: `http://h/`: the scheme must be ws:// or wss://",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw, insecure_skip_verify: true}\n",
        None,
        "DIR/websocks.yaml:4: agent.servers[0]: server `s`: ca_file, sni and insecure_skip_verify need a wss:// url",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"wss://h/\", user: u, password: pw, ca_file: nope.pem}\n",
        None,
        "DIR/websocks.yaml:4: agent.servers[0]: server `s`: DIR/nope.pem: I/O error: No such file or directory (os error 2)",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"wss://h/\", user: u, password: pw, sni: \"bad name!\"}\n",
        None,
        "DIR/websocks.yaml:4: agent.servers[0]: server `s`: `bad name!` is not a valid TLS server name",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  groups: {g: []}\n",
        None,
        "DIR/websocks.yaml: agent.groups.g: group `g` is empty",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  groups: {g: [s, t]}\n",
        None,
        "DIR/websocks.yaml: agent.groups.g: group `g` names unknown server `t`",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  groups: {g: [s]}\n",
        None,
        "ok",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  default_group: g\n",
        None,
        "DIR/websocks.yaml:5: agent.default_group: unknown group `g`",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  rules:\n    - {host: [a], action: direct}\n    - {action: direct}\n",
        None,
        "DIR/websocks.yaml:7: agent.rules[1]: a rule needs domain_suffix, host, cidr or port",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  rules:\n    - {host: [a], action: proxy, group: g}\n",
        None,
        "DIR/websocks.yaml:6: agent.rules[0]: unknown group `g`",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  rules:\n    - {host: [a], action: reject, group: default}\n",
        None,
        "DIR/websocks.yaml:6: agent.rules[0]: `group` only goes with action: proxy",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  rules:\n    - {port: [\"9-1\"], action: direct}\n",
        None,
        "DIR/websocks.yaml:6: agent.rules[0].port[0]: `9-1` is not a port or a range like 8000-8999",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  rules:\n    - {cidr: [\"10.0.0.0/33\"], action: direct}\n",
        None,
        "DIR/websocks.yaml:6: agent.rules[0].cidr[0]: `10.0.0.0/33` is not a rule like 10.0.0.0/8, 10.0.0.0/8:22, [fe80::/10]:443, *:25 or *:6000-6063",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  rules:\n    - {host: [a], action: allow}\n",
        None,
        "DIR/websocks.yaml:6: agent.rules[0].action: unknown variant `allow`, expected one of `proxy`, `direct`, `reject`",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  timeouts: {handshake: 0s}\n",
        None,
        "DIR/websocks.yaml: agent.timeouts.handshake: must be longer than zero",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  timeouts: {connect: 0s}\n",
        None,
        "DIR/websocks.yaml: agent.timeouts.connect: must be longer than zero",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  timeouts: {idle: 0s}\n",
        None,
        "DIR/websocks.yaml: agent.timeouts.idle: must be longer than zero",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  timeouts: {reply: 0s}\n",
        None,
        "DIR/websocks.yaml: agent.timeouts.reply: must be longer than zero",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  timeouts: {send: 0s}\n",
        None,
        "DIR/websocks.yaml: agent.timeouts.send: must be longer than zero",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  pool: {keepalive: 0s}\n",
        None,
        "DIR/websocks.yaml: agent.pool.keepalive: must be longer than zero",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  health: {interval: 0s}\n",
        None,
        "DIR/websocks.yaml: agent.health.interval: must be longer than zero",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  health: {timeout: 0s}\n",
        None,
        "DIR/websocks.yaml: agent.health.timeout: must be longer than zero",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  max_connections: 0\n",
        None,
        "DIR/websocks.yaml:5: agent.max_connections: must be at least 1",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  pool: {size: 4, max: 3}\n",
        None,
        "DIR/websocks.yaml: agent.pool.max: must be from pool.size (4) to 1024",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  pool: {size: 1025}\n",
        None,
        "DIR/websocks.yaml: agent.pool.size: must be at most 1024",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers:\n    - {name: s, url: \"ws://h/\", user: u, password: pw}\n  pool: {size: 1, sise: 2}\n",
        None,
        "DIR/websocks.yaml:5: agent.pool: unknown field `sise`, expected one of `size`, `max`, `keepalive`",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [5]\n",
        None,
        "DIR/websocks.yaml:3: server.users[0]: invalid type: integer `5`, expected struct RawUser",
    ),
    (
        "server: 5\n",
        None,
        "DIR/websocks.yaml:1: server: invalid type: integer `5`, expected struct ServerConfig",
    ),
    (
        "agent: 5\n",
        None,
        "DIR/websocks.yaml:1: agent: invalid type: integer `5`, expected struct AgentConfig",
    ),
    (
        "- 1\n",
        None,
        "DIR/websocks.yaml:1: invalid type: sequence, expected struct File",
    ),
    (
        "agent:\n  socks5: 5\n",
        None,
        "DIR/websocks.yaml:2: agent.socks5: invalid type: integer `5`, expected struct ListenerConfig",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  servers: [5]\n",
        None,
        "DIR/websocks.yaml:3: agent.servers[0]: invalid type: integer `5`, expected struct ServerEntry",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  pool: 5\n",
        None,
        "DIR/websocks.yaml:3: agent.pool: invalid type: integer `5`, expected struct PoolConfig",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  health: 5\n",
        None,
        "DIR/websocks.yaml:3: agent.health: invalid type: integer `5`, expected struct HealthConfig",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  timeouts: 5\n",
        None,
        "DIR/websocks.yaml:3: agent.timeouts: invalid type: integer `5`, expected struct AgentTimeouts",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  rules: [5]\n",
        None,
        "DIR/websocks.yaml:3: agent.rules[0]: invalid type: integer `5`, expected struct RuleConfig",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  default: [1]\n",
        None,
        "DIR/websocks.yaml:3: agent.default: invalid type: sequence, expected a YAML tag starting with '!'",
    ),
    (
        "agent:\n  socks5: {listen: [\"127.0.0.1:0\"]}\n  groups: 5\n",
        None,
        "DIR/websocks.yaml:3: agent.groups: invalid type: integer `5`, expected a map",
    ),
    (
        "log_target: [1]\n",
        None,
        "DIR/websocks.yaml:1: log_target: invalid type: sequence, expected a YAML tag starting with '!'",
    ),
    // The metrics section.
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: u, password: p}]\nmetrics:\n  listen: []\n",
        None,
        "DIR/websocks.yaml:5: metrics.listen: at least one address is required (leave out `metrics:` to turn the endpoint off)",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: u, password: p}]\nmetrics:\n  listen: [\"127.0.0.1:9100\", \"127.0.0.1:9100\"]\n",
        None,
        "DIR/websocks.yaml:5: metrics.listen: 127.0.0.1:9100 is listed twice",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: u, password: p}]\nmetrics:\n  listen: [\"[::]:9100\"]\n",
        None,
        "DIR/websocks.yaml:5: metrics.listen: [::]:9100 is reachable beyond loopback: add `metrics.users` so scrapes must authenticate, or `metrics.allow_remote: true`",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: u, password: p}]\nmetrics:\n  listen: [\"127.0.0.1:9100\"]\n  users: [{name: a, password: b}, {name: a, password: c}]\n",
        None,
        "DIR/websocks.yaml:6: metrics.users[1]: user `a` is defined twice",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: u, password: p}]\nmetrics:\n  listen: [\"127.0.0.1:9100\"]\n  per_users: true\n",
        None,
        "DIR/websocks.yaml:6: metrics: unknown field `per_users`, expected one of `listen`, `allow_remote`, `per_user`, `users`",
    ),
    (
        "server:\n  listen: [\"127.0.0.1:0\"]\n  users: [{name: u, password: p}]\nmetrics: 5\n",
        None,
        "DIR/websocks.yaml:4: metrics: invalid type: integer `5`, expected struct MetricsConfig",
    ),
    // The top level.
    (
        "log_level: info\n",
        None,
        "DIR/websocks.yaml: nothing to run: add a `server:` or an `agent:` section",
    ),
    (
        "log_level: loud\n",
        None,
        "DIR/websocks.yaml:1: log_level: unknown variant `loud`, expected one of `error`, `warn`, `info`, `debug`",
    ),
    (
        "threads: many\n",
        None,
        "DIR/websocks.yaml:1: threads: `many` is not `auto` or a number from 1 to 256",
    ),
    (
        "shutdown_grace: 1y\n",
        None,
        "DIR/websocks.yaml:1: shutdown_grace: `1y` has an unknown unit (use ms, s, m or h)",
    ),
    (
        "server: [unclosed\n",
        None,
        "DIR/websocks.yaml:1: server: invalid type: sequence, expected struct ServerConfig",
    ),
];

#[test]
fn whole_file_messages() {
    let wrong: Vec<String> = FILE_CASES
        .iter()
        .filter_map(|(yaml, users, want)| {
            let got = error_of(yaml, *users);
            (got != *want).then(|| format!("{yaml:?}\n  want {want}\n  got  {got}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn unreadable_file() {
    let e = load(std::path::Path::new("/nonexistent/websocks.yaml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/websocks.yaml: cannot read: No such file or directory (os error 2)"
    );
}
