//! `threads:`: how many executor threads the daemon runs, seen in
//! /proc/PID/task (named `websocks*`); tunnels served by several threads at once; a bad value
//! named by file, line and key; a reload that changes it says a restart is
//! needed.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_websocks");

#[test]
fn auto_runs_one_executor_thread_without_tls() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    // One tunnel first: the reactor's helper thread exists by then.
    let echo = echo_server();
    let mut t = tunnel(d.addr(), echo);
    t.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    t.read_exact(&mut b).unwrap();
    assert_eq!(executor_threads(d.child.id()), 1);
}

#[test]
fn three_threads_serve_many_tunnels_at_once() {
    let yaml = server_yaml(ALLOW_LOOPBACK).replacen("server:", "threads: 3\nserver:", 1);
    let d = Daemon::server(&yaml);
    let echo = echo_server();
    let addr = d.addr();
    // 24 tunnels open together, each echoing its own 64 KiB.
    let hs: Vec<_> = (0..24u8)
        .map(|i| {
            thread::spawn(move || {
                let mut t = tunnel(addr, echo);
                t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let data: Vec<u8> = (0..65536u32).map(|k| (k as u8) ^ i).collect();
                let mut w = t.try_clone().unwrap();
                let sent = data.clone();
                let writer = thread::spawn(move || w.write_all(&sent).unwrap());
                let mut got = vec![0u8; data.len()];
                t.read_exact(&mut got).unwrap();
                writer.join().unwrap();
                assert!(got == data, "tunnel {i}: echo differs");
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(executor_threads(d.child.id()), 3);
}

#[test]
fn bad_threads_value_names_file_line_and_key() {
    let dir = temp_dir();
    let cfg = dir.join("websocks.yaml");
    for bad in ["0", "257", "many"] {
        let yaml = server_yaml("").replacen("server:", &format!("threads: {bad}\nserver:"), 1);
        std::fs::write(&cfg, &yaml).unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{bad}: {err}");
        // `threads:` is on line 2, after log_level.
        assert!(
            err.starts_with(&format!("{}:2: threads: ", cfg.display())),
            "{bad}: {err}"
        );
        assert!(err.contains(bad), "{bad}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_that_changes_threads_says_restart() {
    let d = Daemon::server(&server_yaml(ALLOW_LOOPBACK));
    let cfg = d.dir.join("websocks.yaml");
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, yaml.replacen("server:", "threads: 2\nserver:", 1)).unwrap();
    signal(d.child.id(), "HUP");
    d.wait_log(&["threads changes take effect at the next restart"]);
    d.wait_log(&["reloaded"]);
    // Still one executor thread, and still serving.
    assert_eq!(executor_threads(d.child.id()), 1);
    assert_still_serving(d.addr());
}
