//! `websocks check` on agent configurations: open listeners without users,
//! TLS options on `ws://` servers, listeners sharing port 0.

mod common;

use std::process::Command;

use common::agent::*;
use common::*;

fn check(yaml: &str) -> (i32, String) {
    let dir = temp_dir();
    let cfg = dir.join("websocks.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_websocks"))
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_rejects_open_listeners_without_users_and_tls_options_on_ws() {
    let server = server_entry("s", "127.0.0.1:8080".parse().unwrap(), PASS);
    for (key, listen) in [
        ("socks5", "0.0.0.0:0"),
        ("http", "0.0.0.0:0"),
        ("mixed", "[::]:0"),
    ] {
        let (code, msg) = check(&format!(
            "agent:\n  {key}: {{listen: [\"127.0.0.1:0\", \"{listen}\"]}}\n  servers:\n{server}"
        ));
        assert_eq!(code, 78, "{msg}");
        assert!(msg.contains(&format!("agent.{key}.listen")), "{msg}");
        assert!(
            msg.contains("beyond loopback") && msg.contains("users"),
            "{msg}"
        );
        let (code, msg) = check(&format!(
            "agent:\n  {key}: {{listen: [\"{listen}\"]}}\n  users: [{{name: me, password: pw}}]\n  servers:\n{server}"
        ));
        assert_eq!(code, 0, "{msg}");
    }
    // wss:// is accepted; TLS options on a ws:// URL are a mistake.
    let (code, msg) = check(&format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    - name: t\n      url: \"wss://example.com/\"\n      user: {USER}\n      password: {PASS}\n"
    ));
    assert_eq!(code, 0, "{msg}");
    let (code, msg) = check(&format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    - name: t\n      url: \"ws://example.com/\"\n      sni: example.com\n      user: {USER}\n      password: {PASS}\n"
    ));
    assert_eq!(code, 78, "{msg}");
    assert!(msg.contains("need a wss:// url"), "{msg}");
    assert!(msg.contains("websocks.yaml:4"), "names the line: {msg}");
    let (code, msg) = check(&format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n{server}"
    ));
    assert_eq!(code, 0, "{msg}");
}

#[test]
fn listeners_may_share_port_zero() {
    let (code, msg) = check(&format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  http: {{listen: [\"127.0.0.1:0\"]}}\n  mixed: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n{}",
        server_entry("s", "127.0.0.1:8080".parse().unwrap(), PASS)
    ));
    assert_eq!(code, 0, "{msg}");
}
