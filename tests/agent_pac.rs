//! The PAC file follows the routing rules: `/proxy.pac` from a running
//! agent, evaluated by node with PAC helper functions of this test's own
//! whose DNS lookups are recorded (none may happen), against
//! `data/pac-table.txt` (src/agent/pac.rs checks the same table against
//! the agent's own decisions); a reject answered by the agent; a reload.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent::*;
use common::*;

const RULES: &str = include_str!("data/pac-rules.yaml");
const TABLE: &str = include_str!("data/pac-table.txt");

/// The standard PAC functions, as browsers define them (Mozilla's
/// `ascii_pac_utils.js`, which Chromium's matches), except that the DNS
/// ones record each name and answer an address inside rule 5's network:
/// a lookup would show, and change the answer.
const PAC_LIBRARY: &str = r#"
var resolved = [];
function dnsResolve(host) { resolved.push(host); return "172.16.0.1"; }
function dnsResolveEx(host) { resolved.push(host); return "172.16.0.1"; }
function isResolvable(host) { resolved.push(host); return true; }
function isResolvableEx(host) { resolved.push(host); return true; }
function myIpAddress() { return "192.168.1.2"; }
function myIpAddressEx() { return "192.168.1.2"; }
function isValidIpAddress(s) {
  var m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  return m != null && m[1] <= 255 && m[2] <= 255 && m[3] <= 255 && m[4] <= 255;
}
function convert_addr(s) {
  var b = s.split(".");
  return ((b[0] & 0xff) << 24) | ((b[1] & 0xff) << 16) | ((b[2] & 0xff) << 8) | (b[3] & 0xff);
}
function isInNet(ipaddr, pattern, maskstr) {
  if (!isValidIpAddress(pattern) || !isValidIpAddress(maskstr)) return false;
  if (!isValidIpAddress(ipaddr)) {
    ipaddr = dnsResolve(ipaddr);
    if (ipaddr == null) return false;
  }
  var host = convert_addr(ipaddr), pat = convert_addr(pattern), mask = convert_addr(maskstr);
  return (host & mask) == (pat & mask);
}
function isPlainHostName(host) { return host.search("\\.") == -1; }
function dnsDomainIs(host, domain) {
  return host.length >= domain.length && host.substring(host.length - domain.length) == domain;
}
function localHostOrDomainIs(host, hostdom) {
  return host == hostdom || hostdom.lastIndexOf(host + ".", 0) == 0;
}
function dnsDomainLevels(host) { return host.split(".").length - 1; }
function shExpMatch(url, pattern) {
  pattern = pattern.replace(/\./g, "\\.").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp("^" + pattern + "$").test(url);
}
"#;

/// `s` as a JSON string.
fn json(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {
                for u in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// Runs `pac` in node after [`PAC_LIBRARY`], then `call(args)` for each
/// argument list in `calls`; answers each result as JSON, and the names
/// looked up. `None` when node is not installed.
fn node(pac: &str, call: &str, calls: &[Vec<String>]) -> Option<(Vec<String>, Vec<String>)> {
    let node = find_tool("node")?;
    let calls: Vec<String> = calls
        .iter()
        .map(|args| {
            let args: Vec<String> = args.iter().map(|a| json(a)).collect();
            format!("[{}]", args.join(","))
        })
        .collect();
    // Standard input: the calls as one JSON line, then the PAC file.
    let script = format!(
        "const vm = require('vm'); const input = require('fs').readFileSync(0, 'utf8');\
         const nl = input.indexOf('\\n'); const calls = JSON.parse(input.slice(0, nl));\
         const ctx = {{}}; vm.runInNewContext({lib} + input.slice(nl + 1), ctx, {{timeout: 5000}});\
         for (const args of calls) \
           process.stdout.write(JSON.stringify(ctx.{call}.apply(null, args)) + '\\n');\
         process.stdout.write('resolved ' + JSON.stringify(ctx.resolved) + '\\n');",
        lib = json(PAC_LIBRARY),
    );
    let mut child = Command::new(node)
        .args(["-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("[{}]\n{pac}", calls.join(","));
    let mut stdin = child.stdin.take().unwrap();
    // Written from a thread: node's answers may fill the pipe before it
    // has read all of this.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    // Read while it runs: its answers may fill the pipe.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let Ok(out) = rx.recv_timeout(Duration::from_secs(30)) else {
        signal(pid, "KILL");
        panic!("node did not finish");
    };
    let out = out.unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let resolved = lines.pop().unwrap();
    let resolved = resolved.strip_prefix("resolved ").unwrap();
    let resolved = resolved
        .trim_matches(['[', ']'])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    Some((lines, resolved))
}

/// The PAC file the agent's HTTP listener `http` serves a browser told
/// `http://HTTP/proxy.pac`.
fn fetch_pac(http: SocketAddr) -> String {
    let (h, body, _, _) = http_exchange(
        http,
        format!("GET /proxy.pac HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes(),
    );
    assert_eq!(h.second, "200");
    String::from_utf8(body).unwrap()
}

/// `FindProxyForURL(url, host)` for each row, in node; `None` (after
/// `skip`) without node. No name may have been looked up.
fn find_proxy(pac: &str, rows: &[(&str, &str)]) -> Option<Vec<String>> {
    let calls: Vec<Vec<String>> = rows
        .iter()
        .map(|(u, h)| vec![u.to_string(), h.to_string()])
        .collect();
    let Some((answers, resolved)) = node(pac, "FindProxyForURL", &calls) else {
        skip("needs node (apt-get install nodejs)");
        return None;
    };
    assert!(resolved.is_empty(), "names looked up: {resolved:?}");
    Some(answers)
}

#[test]
fn pac_follows_the_routing_rules() {
    let agent = Daemon::start(&["agent"], RULES, 1);
    let http = agent.addrs[0];
    let pac = fetch_pac(http);
    for i in 0..=10 {
        assert!(pac.contains(&format!("  // agent.rules[{i}]: ")), "{pac}");
    }
    assert_eq!(
        pac.matches("; its IPv6 networks are left to the agent\n")
            .count(),
        2,
        "{pac}"
    );
    assert!(pac.contains("  // agent.default: direct\n  return \"DIRECT\";\n}\n"));
    let rows: Vec<(&str, &str, &str)> = TABLE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 4, "{l:?}");
            (c[0], c[1], c[2])
        })
        .collect();
    let args: Vec<(&str, &str)> = rows.iter().map(|(u, h, _)| (*u, *h)).collect();
    let Some(answers) = find_proxy(&pac, &args) else {
        return;
    };
    let mut wrong = Vec::new();
    for ((url, host, want), got) in rows.iter().zip(&answers) {
        let want = match *want {
            "DIRECT" => json("DIRECT"),
            _ => json(&format!("PROXY {http}")),
        };
        if *got != want {
            wrong.push(format!("{url} {host}: {got}, not {want}"));
        }
    }
    assert_eq!(answers.len(), rows.len());
    assert!(wrong.is_empty(), "{wrong:#?}\n{pac}");
}

/// Host texts to read as IP literals or not: listed forms (RFC 5952's
/// shortening, an embedded IPv4 address, near misses), then seeded random
/// ones (the same every run), then each in brackets.
fn literal_inputs() -> Vec<String> {
    let mut inputs: Vec<String> = [
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8",
        "1:0:0:1:0:0:0:1",
        "1:0:0:0:1:0:0:0",
        "0:0:1:0:0:1:0:0",
        "1:0:1:1:1:1:1:1",
        "::ffff:1.2.3.4",
        "::FFFF:A01:204",
        "::1.2.3.4",
        "64:ff9b::1.2.3.4",
        "1:2:3:4:5:6:1.2.3.4",
        "0000:0000:0000:0000:0000:ffff:0102:0304",
        "2001:DB8::0:1",
        "fe80::1%eth0",
        "1:2:3:4:5:6:7:1.2.3.4",
        "1::2::3",
        ":::",
        "1:::2",
        "12345::",
        "::1.2.3.04",
        "::256.1.1.1",
        "g::1",
        "1:2:3:4:5:6:7",
        "1:2:3:4:5:6:7:8:9",
        "::1:2:3:4:5:6:7:8",
        "1.2.3.4::",
        ":1::",
        "1::2:",
        "1.2.3.4",
        "0.0.0.0",
        "255.255.255.255",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.",
        " ::1",
        "::1 ",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let tokens = [
        "0", "1", "a", "F", "ffff", "00000", "::", ":", ".", "1.2.3.4", "255", "256", "01",
    ];
    let mut seed: u64 = 15;
    for _ in 0..3000 {
        let mut s = String::new();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        for _ in 0..1 + (seed >> 60) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push_str(tokens[(seed >> 33) as usize % tokens.len()]);
        }
        inputs.push(s);
    }
    let with_brackets: Vec<String> = inputs.iter().map(|s| format!("[{s}]")).collect();
    inputs.extend(with_brackets);
    inputs
}

/// The host text the PAC file compares is the agent's: IP literals as
/// std parses and prints them (an IPv4-mapped address as IPv4), with or
/// without brackets, and anything std does not read as an IP literal not
/// taken for one.
#[test]
fn pac_reads_ip_literals_as_the_agent() {
    let agent = Daemon::start(&["agent"], RULES, 1);
    let pac = fetch_pac(agent.addrs[0]);
    let inputs = literal_inputs();
    let calls: Vec<Vec<String>> = inputs.iter().map(|s| vec![s.clone()]).collect();
    let Some((got, _)) = node(&pac, "websocksHost", &calls) else {
        skip("needs node (apt-get install nodejs)");
        return;
    };
    let mut ips = 0;
    for (input, got) in inputs.iter().zip(&got) {
        let bare = input
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(input);
        match bare.parse::<IpAddr>() {
            Ok(ip) => {
                let (text, kind) = match ip {
                    IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                        Some(v4) => (v4.to_string(), "ipv4"),
                        None => (v6.to_string(), "ipv6"),
                    },
                    IpAddr::V4(v4) => (v4.to_string(), "ipv4"),
                };
                assert_eq!(
                    *got,
                    format!("[{},{}]", json(&text), json(kind)),
                    "{input:?}"
                );
                ips += 1;
            }
            Err(_) => assert!(
                !got.ends_with(",\"ipv4\"]") && !got.ends_with(",\"ipv6\"]"),
                "{input:?}: {got}"
            ),
        }
    }
    assert_eq!(got.len(), inputs.len());
    assert!(ips > 200, "only {ips} of the inputs are IP literals");
}

/// A reject rule's PROXY answer: the agent refuses, with 403 and the
/// reason, for a CONNECT and for a forwarded request; a numeric name the
/// PAC sends there is refused too.
#[test]
fn rejected_destinations_get_403_and_the_reason() {
    let agent = Daemon::start(&["agent"], RULES, 1);
    let http = agent.addrs[0];
    for req in [
        "CONNECT ads.example:443 HTTP/1.1\r\nHost: ads.example:443\r\n\r\n",
        "GET http://x.ads.example/ HTTP/1.1\r\nHost: x.ads.example\r\n\r\n",
        "CONNECT 172.16.0.1:443 HTTP/1.1\r\n\r\n",
        "CONNECT [fd00::1]:80 HTTP/1.1\r\n\r\n",
        "GET http://mail.test:25/ HTTP/1.1\r\n\r\n",
    ] {
        let (h, body, _, peer) = http_exchange(http, req.as_bytes());
        assert_eq!(h.second, "403", "{req:?}");
        assert_eq!(body, b"rejected by rule\n", "{req:?}");
        let line = line_of(&agent, peer);
        assert!(line.contains(" route=reject "), "{line}");
    }
    let (h, body, _, _) = http_exchange(http, b"CONNECT 1.2.3:443 HTTP/1.1\r\n\r\n");
    assert_eq!(h.second, "502");
    assert_eq!(body, b"numeric host name that is not an IP literal\n");
}

/// A reload (SIGHUP) serves the new rules' PAC file.
#[test]
fn a_reload_changes_the_pac() {
    let yaml = |rules: &str, default: &str| {
        format!(
            "log_target: stderr\nagent:\n  http: {{listen: [\"127.0.0.1:0\"]}}\n  \
             servers: [{{name: s, url: \"ws://127.0.0.1:9/\", user: u, password: p}}]\n  \
             pool: {{size: 0}}\n  rules: [{rules}]\n  default: {default}\n"
        )
    };
    let before = yaml("{domain_suffix: [corp.example], action: direct}", "proxy");
    let agent = Daemon::start(&["agent"], &before, 1);
    let http = agent.addrs[0];
    let rows = [
        ("https://git.corp.example/", "git.corp.example"),
        ("https://www.test/", "www.test"),
    ];
    let (direct, proxy) = (json("DIRECT"), json(&format!("PROXY {http}")));
    let pac = fetch_pac(http);
    let Some(got) = find_proxy(&pac, &rows) else {
        return;
    };
    assert_eq!(got, [direct.clone(), proxy.clone()], "{pac}");
    let after = yaml("{domain_suffix: [corp.example], action: reject}", "direct");
    std::fs::write(agent.dir.join("websocks.yaml"), after).unwrap();
    signal(agent.child.id(), "HUP");
    agent.wait_log(&["reloaded"]);
    let pac = fetch_pac(http);
    let Some(got) = find_proxy(&pac, &rows) else {
        return;
    };
    assert_eq!(got, [proxy, direct], "{pac}");
}
