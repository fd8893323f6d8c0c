//! The Prometheus endpoint (`metrics:`) of a running server and agent:
//! the figures move as real traffic says they should, the exposition
//! passes `promtool check metrics`, and the endpoint answers nothing but
//! `GET /metrics`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent::{dial, server_entry, socks_open, wait_until};
use common::*;
use websocks::proto::socks5::Addr;

/// Sends `request` and reads the whole answer.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    String::from_utf8(v).unwrap()
}

/// `GET /metrics`: the body, after checking the status and type.
fn scrape(addr: SocketAddr) -> String {
    scrape_as(addr, None)
}

fn scrape_as(addr: SocketAddr, authorization: Option<&str>) -> String {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let answer = exchange(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    body.to_string()
}

/// The value of the series written exactly `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// How the series written `series` moved from `before` to `after`.
fn moved(before: &str, after: &str, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

/// Asserts each of `series` moved by exactly `by`.
fn assert_moved(before: &str, after: &str, by: f64, series: &[&str]) {
    for s in series {
        assert_eq!(moved(before, after, s), by, "{s}:\n{after}");
    }
}

/// Runs `promtool check metrics` on `text`; false when promtool is
/// missing (the skip is reported).
fn promtool_accepts(text: &str) -> bool {
    let Some(promtool) = need_tool("promtool", "prometheus") else {
        return false;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn server_with_metrics(extra: &str) -> Daemon {
    Daemon::start(
        &["server"],
        &format!(
            "{}metrics:\n  listen: [\"127.0.0.1:0\"]\n{extra}",
            server_yaml(ALLOW_LOOPBACK)
        ),
        2,
    )
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn server_figures_follow_traffic_and_pass_promtool() {
    let d = server_with_metrics("  per_user: true\n");
    let m = d.addrs[1];
    let before = scrape(m);
    assert_eq!(value(&before, "websocks_server_users"), 1.0);
    assert_eq!(
        value(&before, "websocks_build_info{version=\"0.1.0\"}"),
        1.0
    );

    // One tunnel: 11 bytes up, echoed down.
    let echo = echo_server();
    let mut s = tunnel(d.addr(), echo);
    s.write_all(b"hello world").unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 11), b"hello world");
    let during = scrape(m);
    assert_eq!(value(&during, "websocks_server_tunnels"), 1.0);
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"");
    drop(s);
    d.wait_log(&["end=closed"]);

    // One bad password.
    let mut s = connect(d.addr());
    s.write_all(&upgrade_request_as(USER, "wrong")).unwrap();
    let (h, _) = read_head(&mut s);
    assert_eq!(h.second, "401");
    drop(s);
    d.wait_log(&["wrong or expired"]);

    // One refused destination.
    let (rep, _, s) = tunnel_reply(d.addr(), &Addr::Ip(closed_port()));
    assert_eq!(rep, 5);
    drop(s);
    d.wait_log(&["end=rejected: connect failed: Connection refused"]);

    let after = scrape(m);
    assert_moved(
        &before,
        &after,
        1.0,
        &[
            "websocks_server_connections_ended_total{end=\"closed\"}",
            "websocks_server_auth_failures_total{reason=\"bad_credential\"}",
            "websocks_server_rejections_total{reason=\"unauthorized\"}",
            "websocks_server_dial_errors_total{reply=\"05\"}",
            "websocks_server_rejections_total{reason=\"dial\"}",
            "websocks_server_connect_duration_seconds_count",
            "websocks_server_user_tunnels_total{user=\"alice\"}",
            "websocks_server_user_auth_failures_total{user=\"alice\"}",
        ],
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "websocks_server_connections_ended_total{end=\"rejected\"}"
        ),
        2.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "websocks_server_connections_accepted_total"
        ),
        3.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "websocks_server_handshake_duration_seconds_count"
        ),
        2.0,
        "the tunnel and the refused request got as far as their request"
    );
    for dir in ["up", "down"] {
        let series = format!("websocks_server_tunnel_bytes_total{{direction=\"{dir}\"}}");
        assert_eq!(moved(&before, &after, &series), 11.0, "{series}");
        let series = format!(
            "websocks_server_user_tunnel_bytes_total{{user=\"alice\",direction=\"{dir}\"}}"
        );
        assert_eq!(moved(&before, &after, &series), 11.0, "{series}");
    }
    assert_eq!(value(&after, "websocks_server_tunnels"), 0.0);
    assert_eq!(value(&after, "websocks_server_handshakes"), 0.0);

    // One reload, one failed reload.
    let stamp = value(&after, "websocks_last_reload_success_timestamp_seconds");
    std::thread::sleep(Duration::from_millis(20));
    signal(d.child.id(), "HUP");
    d.wait_log(&["reloaded"]);
    let reloaded = scrape(m);
    assert_eq!(
        moved(&after, &reloaded, "websocks_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert!(value(&reloaded, "websocks_last_reload_success_timestamp_seconds") > stamp);
    let cfg = d.dir.join("websocks.yaml");
    std::fs::write(&cfg, "server: [not a map]\n").unwrap();
    signal(d.child.id(), "HUP");
    d.wait_log(&["reload failed"]);
    let failed = scrape(m);
    assert_eq!(
        moved(
            &reloaded,
            &failed,
            "websocks_reloads_total{result=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&failed, "websocks_last_reload_success_timestamp_seconds"),
        value(&reloaded, "websocks_last_reload_success_timestamp_seconds")
    );
    promtool_accepts(&failed);
}

/// Per-user series only when asked for, and never a name a client made
/// up.
#[test]
fn per_user_series_only_when_asked_and_only_for_configured_users() {
    let d = server_with_metrics("");
    let mut s = connect(d.addr());
    s.write_all(&upgrade_request_as("mallory", "x")).unwrap();
    assert_eq!(read_head(&mut s).0.second, "401");
    drop(s);
    d.wait_log(&["unknown user"]);
    let text = scrape(d.addrs[1]);
    assert!(!text.contains("websocks_server_user_"), "{text}");
    assert_eq!(
        value(
            &text,
            "websocks_server_auth_failures_total{reason=\"unknown_user\"}"
        ),
        1.0
    );

    let d = server_with_metrics("  per_user: true\n");
    let mut s = connect(d.addr());
    s.write_all(&upgrade_request_as("mallory", "x")).unwrap();
    assert_eq!(read_head(&mut s).0.second, "401");
    drop(s);
    d.wait_log(&["unknown user"]);
    let text = scrape(d.addrs[1]);
    assert!(!text.contains("mallory"), "{text}");
}

/// Anything but `GET /metrics` is a 404; with `metrics.users`, the
/// figures need one of them.
#[test]
fn only_get_metrics_and_users_when_configured() {
    let mut d = server_with_metrics("  users:\n    - {name: prom, password: scrape-secret}\n");
    let m = d.addrs[1];
    for req in [
        "GET / HTTP/1.1\r\n\r\n",
        "GET /metricsx HTTP/1.1\r\n\r\n",
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "HEAD /metrics HTTP/1.1\r\n\r\n",
    ] {
        let answer = exchange(m, req);
        assert!(answer.starts_with("HTTP/1.1 404 "), "{req:?}: {answer}");
    }
    let answer = exchange(m, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(answer.contains("WWW-Authenticate: Basic"), "{answer}");
    let wrong = format!("Basic {}", b64("prom:nope"));
    let answer = exchange(
        m,
        &format!("GET /metrics HTTP/1.1\r\nAuthorization: {wrong}\r\n\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    let text = scrape_as(m, Some(&format!("Basic {}", b64("prom:scrape-secret"))));
    assert!(text.contains("websocks_server_users 1\n"), "{text}");
    let answer = exchange(m, "garbage\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    d.assert_alive();
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A metrics listener beyond loopback needs users or `allow_remote`.
#[test]
fn remote_metrics_listener_needs_consent() {
    let dir = temp_dir();
    let cfg = dir.join("websocks.yaml");
    let base = server_yaml(ALLOW_LOOPBACK);
    std::fs::write(
        &cfg,
        format!("{base}metrics:\n  listen: [\"0.0.0.0:9100\"]\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_websocks"))
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("metrics.listen: 0.0.0.0:9100 is reachable beyond loopback"),
        "{err}"
    );
    for consent in [
        "  allow_remote: true\n",
        "  users: [{name: prom, password: x}]\n",
    ] {
        std::fs::write(
            &cfg,
            format!("{base}metrics:\n  listen: [\"0.0.0.0:9100\"]\n{consent}"),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_websocks"))
            .args(["check", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{consent}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The agent's figures: listeners, routes, its server's health, pool and
/// tunnels.
#[test]
fn agent_figures_follow_traffic_and_pass_promtool() {
    let server = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let echo = echo_server();
    let refused = closed_port();
    let a = Daemon::start(
        &["agent"],
        &format!(
            "log_level: debug\nagent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n{}  \
             pool: {{size: 2}}\n  rules:\n    - {{port: [{}], action: reject}}\n\
             metrics:\n  listen: [\"127.0.0.1:0\"]\n",
            server_entry("s", server.addr(), PASS),
            refused.port(),
        ),
        2,
    );
    let (proxy, m) = (a.addrs[0], a.addrs[1]);
    wait_until(Duration::from_secs(10), "a full pool", || {
        value(&scrape(m), "websocks_agent_pool_ready{server=\"s\"}") == 2.0
    });
    let before = scrape(m);
    assert_eq!(
        value(&before, "websocks_agent_server_up{server=\"s\"}"),
        1.0
    );
    assert!(
        value(
            &before,
            "websocks_agent_health_check_duration_seconds_count{server=\"s\"}"
        ) >= 1.0
    );
    // Proxied, with bytes.
    let (rep, mut s) = socks_open(proxy, &Addr::Ip(echo), b"");
    assert_eq!(rep, 0);
    s.write_all(b"ping").unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 4), b"ping");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"");
    drop(s);
    a.wait_log(&["route=proxy:default", "end=closed"]);
    // Rejected by rule.
    assert_eq!(socks_open(proxy, &Addr::Ip(refused), b"").0, 2);
    a.wait_log(&["route=reject"]);
    let after = scrape(m);
    assert_moved(
        &before,
        &after,
        1.0,
        &[
            "websocks_agent_routes_total{action=\"proxy\"}",
            "websocks_agent_routes_total{action=\"reject\"}",
            "websocks_agent_connections_ended_total{end=\"closed\"}",
            "websocks_agent_connections_ended_total{end=\"rejected\"}",
            "websocks_agent_server_tunnels_total{server=\"s\"}",
            "websocks_agent_connect_duration_seconds_count",
        ],
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "websocks_agent_connections_accepted_total{listener=\"socks5\"}"
        ),
        2.0
    );
    for dir in ["up", "down"] {
        let series = format!("websocks_agent_tunnel_bytes_total{{direction=\"{dir}\"}}");
        assert_eq!(moved(&before, &after, &series), 4.0, "{series}");
    }
    assert_eq!(
        value(&after, "websocks_agent_failovers_total{server=\"s\"}"),
        0.0
    );
    // The server goes away: it is marked down, and its failures counted.
    drop(server);
    let mut s = dial(proxy);
    s.write_all(&socks_request(&Addr::Ip(echo))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    wait_until(Duration::from_secs(10), "the server marked down", || {
        value(&scrape(m), "websocks_agent_server_up{server=\"s\"}") == 0.0
    });
    let down = scrape(m);
    assert!(
        value(&down, "websocks_agent_failovers_total{server=\"s\"}") >= 1.0,
        "{down}"
    );
    promtool_accepts(&down);
}

/// `contrib/prometheus`: the scrape configuration and the alert rules are
/// valid, the rules' own unit tests pass, and every websocks series they
/// name is one a server serves.
#[test]
fn contrib_prometheus_config_and_alerts_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    let rules = std::fs::read_to_string(dir.join("websocks-alerts.yml")).unwrap();
    let d = server_with_metrics("");
    let text = scrape(d.addrs[1]);
    let named: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("websocks_"))
        .collect();
    assert!(!named.is_empty());
    for name in named {
        assert!(
            text.contains(&format!("\n# TYPE {name} ")),
            "{name} is not served"
        );
    }
    let Some(promtool) = need_tool("promtool", "prometheus") else {
        return;
    };
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "websocks-alerts.yml"],
        &["test", "rules", "websocks-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
