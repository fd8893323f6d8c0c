//! The destination policy under attack: IPv4 reached through IPv6 forms
//! that embed it, as addresses and as names that resolve to them.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;
use websocks::proto::socks5::Addr;

/// IPv6 forms of denied IPv4 addresses (loopback, metadata): mapped,
/// compatible, SIIT, NAT64 (well-known and local-use), 6to4, Teredo.
const EMBEDDED: &[&str] = &[
    "::127.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:0:127.0.0.1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::7f00:1",
    "64:ff9b:1::169.254.169.254",
    "64:ff9b:1:a9fe:a9:fe00::",
    "2002:7f00:1::",
    "2002:a9fe:a9fe::1",
    "2001:0:7f00:1::1",
    "2001:0:4136:e378:8000:63bf:5601:5601",
];

#[test]
fn ipv6_forms_of_denied_ipv4_are_refused_02() {
    // The default policy: no allow list, the built-in deny list.
    let d = Daemon::server(&server_yaml(""));
    for a in EMBEDDED {
        let ip: std::net::Ipv6Addr = a.parse().unwrap();
        let (rep, _, _) = tunnel_reply(d.addr(), &Addr::Ip((ip, 80).into()));
        assert_eq!(rep, 0x02, "{a} as an address");
        // Written as a name (an IP literal in domain form).
        let (rep, _, _) = tunnel_reply(d.addr(), &Addr::Domain(a.as_bytes().to_vec(), 80));
        assert_eq!(rep, 0x02, "{a} as a literal name");
    }
    d.wait_log(&[
        "dst=[64:ff9b::a9fe:a9fe]:80",
        "denied by destinations policy",
    ]);
}

/// Runs the server in a mount namespace whose /etc/hosts maps names to the
/// embedded forms; `None` when namespaces are not available here.
fn server_with_hosts(hosts: &str) -> Option<Daemon> {
    let ok = Command::new(find_tool("unshare")?)
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let dir = temp_dir();
    let file = dir.join("hosts");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(hosts.as_bytes())
        .unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && exec \"$0\" \"$@\"",
        file.display()
    );
    Some(Daemon::start_via(
        &["unshare", "-m", "sh", "-c", &script],
        &["server"],
        &server_yaml(""),
        1,
    ))
}

#[test]
fn names_resolving_to_ipv6_forms_of_denied_ipv4_are_refused_02() {
    let mut hosts = String::new();
    for (i, a) in EMBEDDED.iter().enumerate() {
        hosts.push_str(&format!("{a} embedded{i}.test\n"));
    }
    let Some(d) = server_with_hosts(&hosts) else {
        skip("needs mount namespaces: unshare -m (util-linux), as root");
        return;
    };
    for (i, a) in EMBEDDED.iter().enumerate() {
        let name = format!("embedded{i}.test");
        let (rep, _, _) = tunnel_reply(d.addr(), &Addr::Domain(name.clone().into_bytes(), 80));
        assert_eq!(rep, 0x02, "{name} -> {a}");
    }
}
