//! The PAC file served at `/proxy.pac`: the routing rules (`route.rs`) as a
//! `FindProxyForURL` the browser runs, so that it goes direct where the
//! agent would and comes to the agent for everything else.
//!
//! The script takes the agent's decision exactly where JavaScript can: the
//! host text as `route.rs` sees it (names lower-cased without trailing
//! dots, IP literals as Rust prints them), never a DNS lookup (`isInNet`
//! only ever sees IPv4 literals). An IPv6 network is not expressed: an
//! IPv6 host such a rule may match goes to the agent, which decides; so
//! does a URL without a port and of a scheme with no default port, when a
//! rule has a port condition. A reject goes to the agent too: it answers
//! `403` with the reason, which an address that merely refuses could not.
//! The agent is named as the HTTP listener the browser reached, with no
//! `SOCKS5` fallback: that would be the same process.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use crate::config::agent::{Action, Agent, Route};

/// The whole file when neither a rule nor the default is `direct`.
const ALL_TO_AGENT: &str = "\
// websocks agent: nothing is routed direct, so every request goes to this
// agent, which applies its rules (a reject is answered 403 with the reason).
";

/// Above the function of the full file.
const HEAD: &str = "\
// websocks agent: agent.rules in order, the first whose every condition
// holds decides, else agent.default, exactly as the agent decides. Host
// names are compared as text and never resolved. \"PROXY\" is this agent,
// which applies the same rules to what it gets: a reject rule sends the
// browser there too, to be refused with 403 and the reason. IPv6 networks
// (cidr) are left to the agent: an IPv6 host such a rule may match goes to
// the proxy, whatever the rule's action.
";

/// The functions the generated code calls, the same in every file.
const HELPERS: &str = r#"// The host as the agent matches it, and its kind. An IP literal (IPv6
// with or without brackets) as Rust's parser reads it and prints it, an
// IPv4-mapped IPv6 address as IPv4; "numeric": up to four labels of
// decimal or 0x digits that are no literal, which the agent refuses; else
// a "name", lower-cased (ASCII only) without trailing dots.
function websocksHost(host) {
  var bare = host.replace(/^\[(.*)\]$/, "$1"), g = websocksV6(bare);
  var name = host.replace(/\.+$/, ""), labels = name.split("."), i;
  if (websocksV4(bare)) return [bare, "ipv4"];
  if (g && g[0] + g[1] + g[2] + g[3] + g[4] == 0 && g[5] == 65535)
    return [(g[6] >> 8) + "." + (g[6] & 255) + "." + (g[7] >> 8) + "." + (g[7] & 255), "ipv4"];
  if (g) return [websocksV6Text(g), "ipv6"];
  for (i = 0; i < labels.length; i++)
    if (!/^(0[xX][0-9a-fA-F]*|[0-9]+)$/.test(labels[i])) break;
  if (i == labels.length && i <= 4) return [name, "numeric"];
  return [name.replace(/[A-Z]+/g, function (s) { return s.toLowerCase(); }), "name"];
}

// A dotted IPv4 literal as Rust's Ipv4Addr parses it: no leading zeros.
function websocksV4(s) {
  var o = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  return new RegExp("^" + o + "(\\." + o + "){3}$").test(s);
}

// The eight groups of an IPv6 literal as Rust's Ipv6Addr parses it (one to
// four hex digits each, at most one "::", a dotted IPv4 only last), or null.
function websocksV6(s) {
  var halves = s.split("::"), i, j, p, q;
  if (halves.length > 2) return null;
  for (i = 0; i < halves.length; i++) {
    p = halves[i] == "" ? [] : halves[i].split(":");
    for (j = 0; j < p.length; j++) {
      if (i == halves.length - 1 && j == p.length - 1 && websocksV4(p[j])) {
        q = p[j].split(".");
        p.splice(j, 1, q[0] * 256 + +q[1], q[2] * 256 + +q[3]);
        break;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(p[j])) return null;
      p[j] = parseInt(p[j], 16);
    }
    halves[i] = p;
  }
  if (halves.length == 1) return halves[0].length == 8 ? halves[0] : null;
  if (halves[0].length + halves[1].length > 7) return null;
  while (halves[0].length + halves[1].length < 8) halves[0].push(0);
  return halves[0].concat(halves[1]);
}

// IPv6 text as Rust prints it (RFC 5952): lower-case hex, the first longest
// run of two or more zero groups as "::".
function websocksV6Text(g) {
  var at = -1, len = 1, i, j, s = "";
  for (i = 0; i < 8; i = j + 1) {
    for (j = i; j < 8 && g[j] == 0; j++) {}
    if (j - i > len) { at = i; len = j - i; }
  }
  for (i = 0; i < 8; i++) {
    if (i == at) { s += "::"; i += len - 1; continue; }
    s += (s == "" || s.charAt(s.length - 1) == ":" ? "" : ":") + g[i].toString(16);
  }
  return s;
}

// The port the browser will connect to: the URL's, else its scheme's
// default; -1 when neither is known.
function websocksPort(url) {
  var i = url.indexOf("://"), scheme, a, m;
  if (i < 0) return -1;
  scheme = url.substring(0, i).toLowerCase();
  a = url.substring(i + 3).split(/[\/?#]/)[0];
  a = a.substring(a.lastIndexOf("@") + 1);
  a = a.substring(a.lastIndexOf("]") + 1);
  m = /:([0-9]{1,5})$/.exec(a);
  if (m) return parseInt(m[1], 10);
  if (scheme == "http" || scheme == "ws") return 80;
  if (scheme == "https" || scheme == "wss") return 443;
  if (scheme == "ftp") return 21;
  return -1;
}
"#;

/// The PAC file for `cfg`; `proxy` is the HTTP listener the browser
/// reached (`host:port`), where it is sent whenever the agent is needed.
pub(crate) fn file(cfg: &Agent, proxy: &str) -> String {
    let agent = js_string(&format!("PROXY {proxy}"));
    let mut out = String::new();
    let direct =
        cfg.default == Action::Direct || cfg.routes.iter().any(|r| r.action == Action::Direct);
    if !direct {
        out.push_str(ALL_TO_AGENT);
        let _ = write!(
            out,
            "function FindProxyForURL(url, host) {{\n  return {agent};\n}}\n"
        );
        return out;
    }
    out.push_str(HEAD);
    out.push_str("function FindProxyForURL(url, host) {\n");
    out.push_str(
        "  var t = websocksHost(host), h = t[0], kind = t[1], port = websocksPort(url);\n",
    );
    let _ = writeln!(
        out,
        "  // Digits that are no IP literal: the agent refuses them.\n  if (kind == \"numeric\") return {agent};"
    );
    let ports = |r: &Route| !r.port.is_empty() || r.cidr.iter().any(|c| c.ports().is_some());
    if cfg.routes.iter().any(ports) {
        let _ = writeln!(
            out,
            "  // No port in the URL and none known for its scheme: the agent decides.\n  if (port < 0) return {agent};"
        );
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        rule(&mut out, i, r, &agent);
    }
    let _ = writeln!(
        out,
        "  // agent.default: {}\n  return {};\n}}\n",
        describe(cfg.default, &cfg.default_group),
        answer(cfg.default, &agent),
    );
    out.push_str(HELPERS);
    out
}

/// One rule: an `if` returning its answer where it surely matches, and,
/// when it has an IPv6 network, one returning the agent where it may.
fn rule(out: &mut String, i: usize, r: &Route, agent: &str) {
    let conds = conditions(r);
    let unsure = conds.iter().any(|c| c.unsure.is_some());
    let _ = writeln!(
        out,
        "  // agent.rules[{i}]: {}{}",
        describe(r.action, &r.group),
        if unsure {
            "; its IPv6 networks are left to the agent"
        } else {
            ""
        }
    );
    let exact: Option<Vec<Js>> = conds.iter().map(|c| c.exact.clone()).collect();
    let direct = r.action == Action::Direct;
    if let Some(exact) = exact.filter(|_| !unsure || direct) {
        let _ = writeln!(
            out,
            "  if ({}) return {};",
            all(exact).text,
            answer(r.action, agent)
        );
    }
    if unsure {
        // Only the cidr condition can be unsure. After a direct rule's
        // exact `if`, what is left of it is its unsure part; otherwise the
        // rule may match where either part holds.
        let may = conds.into_iter().map(|c| match (c.exact, c.unsure) {
            (Some(e), Some(u)) if !direct => any([e, u]),
            (e, u) => u.or(e).unwrap_or_else(|| Js::atom("false".into())),
        });
        let _ = writeln!(out, "  if ({}) return {agent};", all(may).text);
    }
}

/// A JavaScript expression; `and` when its top operator is `&&`, so that
/// it needs parentheses inside an `||` (for the reader: `&&` binds
/// tighter).
#[derive(Clone)]
struct Js {
    text: String,
    and: bool,
}

impl Js {
    fn atom(text: String) -> Js {
        Js { text, and: false }
    }
}

/// `a || b || …`, in parentheses when more than one.
fn any(parts: impl IntoIterator<Item = Js>) -> Js {
    let mut parts: Vec<Js> = parts.into_iter().collect();
    if parts.len() == 1 {
        return parts.remove(0);
    }
    let texts: Vec<String> = parts
        .into_iter()
        .map(|p| {
            if p.and {
                format!("({})", p.text)
            } else {
                p.text
            }
        })
        .collect();
    Js::atom(format!("({})", texts.join(" || ")))
}

/// `a && b && …`.
fn all(parts: impl IntoIterator<Item = Js>) -> Js {
    let parts: Vec<Js> = parts.into_iter().collect();
    let and = parts.len() > 1 || parts.iter().any(|p| p.and);
    let texts: Vec<String> = parts.into_iter().map(|p| p.text).collect();
    Js {
        text: texts.join(" && "),
        and,
    }
}

/// One condition of a rule in JavaScript, over `h`, `kind` and `port`.
struct Cond {
    /// Where the agent's condition holds; `None`: nowhere this file can
    /// tell.
    exact: Option<Js>,
    /// Where it may hold but this file cannot tell: an IPv6 host and an
    /// IPv6 network.
    unsure: Option<Js>,
}

/// The rule's conditions (`route::matches`), each given one.
fn conditions(r: &Route) -> Vec<Cond> {
    let sure = |e: Js| Cond {
        exact: Some(e),
        unsure: None,
    };
    let is = |t: &str| Js::atom(format!("kind == \"{t}\""));
    let mut out = Vec::new();
    if !r.domain_suffix.is_empty() {
        // dnsDomainIs is a plain "ends with": the dot keeps `notcorp.example`
        // out of `corp.example`.
        let each = r.domain_suffix.iter().flat_map(|s| {
            [
                Js::atom(format!("h == {}", js_string(s))),
                Js::atom(format!("dnsDomainIs(h, {})", js_string(&format!(".{s}")))),
            ]
        });
        out.push(sure(all([is("name"), any(each)])));
    }
    if !r.host.is_empty() {
        out.push(sure(any(r
            .host
            .iter()
            .map(|h| Js::atom(format!("h == {}", js_string(h)))))));
    }
    if !r.cidr.is_empty() {
        let (mut exact, mut unsure) = (Vec::new(), Vec::new());
        for c in &r.cidr {
            let ports = c.ports().map(|(a, b)| port_range(a, b));
            match c.net() {
                None => exact.push(all([any([is("ipv4"), is("ipv6")])]
                    .into_iter()
                    .chain(ports))),
                // isInNet only ever sees an IPv4 literal: on a name it would
                // ask DNS.
                Some((IpAddr::V4(net), len)) => {
                    let mask =
                        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0));
                    let net = Ipv4Addr::from(u32::from(net) & u32::from(mask));
                    let in_net = Js::atom(format!(
                        "isInNet(h, {}, {})",
                        js_string(&net.to_string()),
                        js_string(&mask.to_string())
                    ));
                    exact.push(all([is("ipv4"), in_net].into_iter().chain(ports)));
                }
                Some((IpAddr::V6(_), _)) => unsure.push(all([is("ipv6")].into_iter().chain(ports))),
            }
        }
        out.push(Cond {
            exact: (!exact.is_empty()).then(|| any(exact)),
            unsure: (!unsure.is_empty()).then(|| any(unsure)),
        });
    }
    if !r.port.is_empty() {
        out.push(sure(any(r
            .port
            .iter()
            .map(|p| port_range(*p.start(), *p.end())))));
    }
    out
}

fn port_range(a: u16, b: u16) -> Js {
    if a == b {
        Js::atom(format!("port == {a}"))
    } else {
        Js {
            text: format!("port >= {a} && port <= {b}"),
            and: true,
        }
    }
}

/// What the browser is told for `action`.
fn answer(action: Action, agent: &str) -> String {
    match action {
        Action::Direct => "\"DIRECT\"".into(),
        Action::Proxy | Action::Reject => agent.into(),
    }
}

/// A rule's action in its comment.
fn describe(action: Action, group: &str) -> String {
    match action {
        Action::Direct => "direct".into(),
        Action::Proxy => format!("proxy, group {}", js_string(group)),
        Action::Reject => "reject, by the agent (403 and the reason)".into(),
    }
}

/// `s` as a JavaScript string literal (JSON's escapes) of printable ASCII:
/// quotes, backslashes, line ends (U+2028 and U+2029 too), `<`, `>`, `&`
/// and all beyond ASCII escaped, so no configured text can end the string,
/// a `//` comment it is written in, or a surrounding `<script>`.
fn js_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' | '>' | '&' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            ' '..='~' => out.push(c),
            _ => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::agent::route;
    use crate::proto::proxy::parse_authority;
    use crate::proto::socks5::Addr;

    /// The configuration and table `tests/agent_pac.rs` evaluates the PAC
    /// file of with node; here, what the agent decides for the same rows.
    const RULES: &str = include_str!("../../tests/data/pac-rules.yaml");
    const TABLE: &str = include_str!("../../tests/data/pac-table.txt");

    fn agent(yaml: &str) -> Agent {
        crate::config::load_text(Path::new("websocks.yaml"), yaml)
            .unwrap()
            .agent
            .unwrap()
    }

    /// The authority a browser sends the proxy for `url` (`CONNECT
    /// host:port`, or the absolute form's), with the scheme's default port;
    /// `None` when there is none.
    fn authority(url: &str) -> Option<String> {
        let (scheme, rest) = url.split_once("://").unwrap();
        let a = rest.split(['/', '?', '#']).next().unwrap();
        let a = a.rsplit('@').next().unwrap();
        let port = match scheme.to_ascii_lowercase().as_str() {
            _ if a.rsplit(']').next().unwrap().contains(':') => return Some(a.to_string()),
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            "ftp" => 21,
            _ => return None,
        };
        Some(format!("{a}:{port}"))
    }

    #[test]
    fn the_table_is_what_the_agent_decides() {
        let cfg = agent(RULES);
        let rows = TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
        let mut n = 0;
        for line in rows {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [url, _host, pac, want] = cols[..] else {
                panic!("{line:?}: not url host pac agent");
            };
            let mut v6 = false;
            let got = match authority(url) {
                None => "-".to_string(),
                Some(a) => {
                    let addr = parse_authority(&a, None).unwrap_or_else(|| panic!("{a}"));
                    match route::choose(&cfg, &addr) {
                        None => "refused".to_string(),
                        Some((dest, action, _, rule)) => {
                            v6 = matches!(dest, Addr::Ip(sa) if crate::acl::canonical(sa.ip()).is_ipv6());
                            let rule = rule.map_or("default".to_string(), |i| i.to_string());
                            format!("{action:?}:{rule}").to_ascii_lowercase()
                        }
                    }
                }
            };
            assert_eq!(got, want, "{line}");
            // The browser goes direct only where the agent would; it comes
            // to the agent otherwise, and where the agent would go direct
            // only for what the file leaves to it (IPv6 networks).
            let action = want.split(':').next().unwrap();
            match (pac, action) {
                ("DIRECT", "direct") | ("PROXY", "proxy" | "reject" | "refused" | "-") => {}
                ("PROXY", "direct") => assert!(v6, "{line}: PROXY where the agent goes direct"),
                _ => panic!("{line}: the PAC and the agent disagree"),
            }
            n += 1;
        }
        assert!(n > 50, "{n} rows");
    }

    #[test]
    fn a_small_file() {
        let cfg = agent(
            "agent:\n  http: {listen: [\"127.0.0.1:0\"]}\n  \
             servers: [{name: s, url: \"ws://127.0.0.1:9/\", user: u, password: p}]\n  rules:\n\
             \x20   - {domain_suffix: [corp.example], action: direct}\n\
             \x20   - {host: [ads.example], action: reject}\n\
             \x20   - {cidr: [\"10.0.0.0/8\", \"2001:db8::/32\"], port: [22, \"8000-8999\"], action: direct}\n",
        );
        let want = r#"function FindProxyForURL(url, host) {
  var t = websocksHost(host), h = t[0], kind = t[1], port = websocksPort(url);
  // Digits that are no IP literal: the agent refuses them.
  if (kind == "numeric") return "PROXY 127.0.0.1:8080";
  // No port in the URL and none known for its scheme: the agent decides.
  if (port < 0) return "PROXY 127.0.0.1:8080";
  // agent.rules[0]: direct
  if (kind == "name" && (h == "corp.example" || dnsDomainIs(h, ".corp.example"))) return "DIRECT";
  // agent.rules[1]: reject, by the agent (403 and the reason)
  if (h == "ads.example") return "PROXY 127.0.0.1:8080";
  // agent.rules[2]: direct; its IPv6 networks are left to the agent
  if (kind == "ipv4" && isInNet(h, "10.0.0.0", "255.0.0.0") && (port == 22 || (port >= 8000 && port <= 8999))) return "DIRECT";
  if (kind == "ipv6" && (port == 22 || (port >= 8000 && port <= 8999))) return "PROXY 127.0.0.1:8080";
  // agent.default: proxy, group "default"
  return "PROXY 127.0.0.1:8080";
}
"#;
        assert_eq!(
            file(&cfg, "127.0.0.1:8080"),
            format!("{HEAD}{want}\n{HELPERS}")
        );
    }

    #[test]
    fn without_direct_everything_goes_to_the_agent() {
        let cfg = agent(
            "agent:\n  http: {listen: [\"127.0.0.1:0\"]}\n  \
             servers: [{name: s, url: \"ws://127.0.0.1:9/\", user: u, password: p}]\n  rules:\n\
             \x20   - {domain_suffix: [ads.example], action: reject}\n",
        );
        assert_eq!(
            file(&cfg, "[::1]:8080"),
            format!(
                "{ALL_TO_AGENT}function FindProxyForURL(url, host) {{\n  return \"PROXY [::1]:8080\";\n}}\n"
            )
        );
    }

    #[test]
    fn configured_text_stays_inside_its_string() {
        assert_eq!(js_string("corp.example"), r#""corp.example""#);
        assert_eq!(
            js_string("a\"b\\c\n\r\t\u{0}\u{7f}</script>&'"),
            r#""a\"b\\c\u000a\u000d\u0009\u0000\u007f\u003c/script\u003e\u0026'""#
        );
        // Line ends for JavaScript, and a character beyond the BMP as a
        // surrogate pair, as JSON writes them.
        assert_eq!(
            js_string("\u{2028}\u{2029}é😀"),
            r#""\u2028\u2029\u00e9\ud83d\ude00""#
        );
        let cfg = agent(RULES);
        let pac = file(&cfg, "127.0.0.1:8080");
        assert!(
            pac.contains(r#"h == "x\"; return \"direct\"; //\u000a\u003c/script\u003e\u2028'""#),
            "{pac}"
        );
        assert!(!pac.contains("</script>") && !pac.contains('\u{2028}'));
        assert!(
            pac.bytes()
                .all(|b| b == b'\n' || (b' '..=b'~').contains(&b))
        );
    }
}
