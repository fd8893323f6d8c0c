//! Operations, with the real binary and the shipped files: exit codes,
//! logging to a syslog socket (RFC 3164, facility daemon, reconnect), the
//! manual pages (`mandoc -Tlint`, `man -l`) and the systemd units
//! (`systemd-analyze verify` and `security`).
//!
//! A check whose tool is missing is skipped through `common::skip`: a
//! failure under `CI=true`, a visible SKIPPED line elsewhere.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use websocks::proto::auth;

const BIN: &str = env!("CARGO_BIN_EXE_websocks");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs the binary with `args` and a config holding `yaml` (when given);
/// returns (exit code, stderr).
fn run(args: &[&str], yaml: Option<&str>) -> (i32, String) {
    let dir = temp_dir();
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(y) = yaml {
        let cfg = dir.join("websocks.yaml");
        std::fs::write(&cfg, y).unwrap();
        cmd.arg("-c").arg(&cfg);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = exit_within(
        &mut child,
        Duration::from_secs(10),
        &format!("websocks {args:?}"),
    )
    .code()
    .unwrap_or(-1);
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (code, err)
}

// -------------------------------------------------------------- exit codes

#[test]
fn exit_code_64_for_usage_errors() {
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["server"][..],
        &["server", "--bogus"][..],
    ] {
        let (code, err) = run(args, None);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(!err.is_empty(), "{args:?} says why");
    }
}

#[test]
fn exit_code_78_for_bad_config() {
    let unknown = format!("{}no_such_key: 1\n", server_yaml(""));
    for (what, yaml) in [
        ("unknown key", unknown.as_str()),
        ("bad yaml", "server: [unclosed\n"),
        ("no users", "server:\n  listen: [\"127.0.0.1:0\"]\n"),
        ("bad log_target", "log_target: journal\nserver: {}\n"),
    ] {
        for cmd in ["server", "check"] {
            let (code, err) = run(&[cmd], Some(yaml));
            assert_eq!(code, 78, "{what} ({cmd}): {err}");
            assert!(err.contains("websocks.yaml"), "names the file: {err}");
        }
    }
    let (code, err) = run(&["server", "-c", "/nonexistent/websocks.yaml"], None);
    assert_eq!(code, 78, "{err}");
    // A `server` command on a file without a server section.
    let agent_only = format!(
        "agent:\n  socks5: {{listen: [\"127.0.0.1:0\"]}}\n  servers:\n    - {{name: s, url: \"ws://127.0.0.1:1/\", user: {USER}, password: {PASS}}}\n"
    );
    let (code, err) = run(&["server"], Some(&agent_only));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("server"), "{err}");
    assert!(!err.contains(PASS));
}

#[test]
fn exit_code_71_when_the_address_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let yaml = format!("log_target: stderr\n{}", server_yaml(""))
        .replace("127.0.0.1:0", &addr.to_string());
    let (code, err) = run(&["server"], Some(&yaml));
    assert_eq!(code, 71, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")),
        "names the address: {err}"
    );
    drop(taken);
}

// ------------------------------------------------------------------ syslog

/// A test-bound syslog socket.
struct LogSock {
    path: PathBuf,
    sock: Option<UnixDatagram>,
    got: Vec<String>,
}

impl LogSock {
    fn bind(path: &Path) -> LogSock {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        LogSock {
            path: path.to_path_buf(),
            sock: Some(sock),
            got: Vec::new(),
        }
    }

    /// Receives until a line holds every one of `parts` (10 s at most).
    fn wait(&mut self, parts: &[&str]) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65536];
        loop {
            if let Some(l) = self
                .got
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < end,
                "no syslog line with {parts:?}; got {:#?}",
                self.got
            );
            if let Ok(n) = self.sock.as_ref().unwrap().recv(&mut buf) {
                self.got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// Closes and unlinks the socket (as when journald goes away).
    fn close(&mut self) {
        self.sock = None;
        std::fs::remove_file(&self.path).unwrap();
    }

    fn rebind(&mut self) {
        let s = UnixDatagram::bind(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        self.sock = Some(s);
    }
}

/// Checks one RFC 3164 line: `<PRI>Mmm dd hh:mm:ss websocks[PID]: MSG`.
fn check_3164(line: &str, pri: u8, pid: u32) {
    let prefix = format!("<{pri}>");
    assert!(line.starts_with(&prefix), "{line}");
    let rest = &line[prefix.len()..];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    assert!(months.contains(&&rest[..3]), "timestamp: {line}");
    let b = rest.as_bytes();
    assert!(
        b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[12] == b':' && b[15] == b' ',
        "timestamp `Mmm dd hh:mm:ss `: {line}"
    );
    assert!(
        rest[16..].starts_with(&format!("websocks[{pid}]: ")),
        "ident websocks[{pid}]: {line}"
    );
}

/// `log_target: syslog` sends RFC 3164 lines, facility daemon, to the
/// configured socket; when the socket goes away the lines go to stderr, and
/// once it is back (unlinked and bound anew) logging reconnects.
#[test]
fn syslog_lines_facility_daemon_and_reconnect() {
    let dir = temp_dir();
    let path = dir.join("log.sock");
    let mut ls = LogSock::bind(&path);
    let cfg = dir.join("websocks.yaml");
    let good = format!(
        "log_target: syslog\nsyslog_socket: {}\n{}",
        path.display(),
        server_yaml(ALLOW_LOOPBACK)
    );
    std::fs::write(&cfg, &good).unwrap();
    let mut child: Child = Command::new(BIN)
        .args(["server", "-c"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (e, s) = (child.stderr.take().unwrap(), stderr.clone());
        thread::spawn(move || {
            for l in BufReader::new(e).lines().map_while(Result::ok) {
                s.lock().unwrap().push(l);
            }
        });
    }
    let kill = Guard(child);

    // Info: <30> = daemon (3) * 8 + info (6).
    let l = ls.wait(&["server listening on "]);
    check_3164(&l, 30, pid);
    let addr: SocketAddr = l.split("listening on ").nth(1).unwrap().parse().unwrap();
    let echo = echo_server();
    let t = tunnel(addr, echo);
    drop(t);
    let l = ls.wait(&[&format!("user={USER}"), "end="]);
    check_3164(&l, 30, pid);

    // Error: <27> = daemon * 8 + err (3).
    std::fs::write(&cfg, format!("{good}no_such_key: 1\n")).unwrap();
    signal(pid, "HUP");
    let l = ls.wait(&["reload failed"]);
    check_3164(&l, 27, pid);

    // The socket is recreated between two lines: the next line arrives.
    ls.close();
    ls.rebind();
    std::fs::write(&cfg, &good).unwrap();
    signal(pid, "HUP");
    let l = ls.wait(&["reloaded"]);
    check_3164(&l, 30, pid);

    // Gone for a while: lines fall back to stderr; then back on the socket.
    ls.close();
    signal(pid, "HUP");
    let end = Instant::now() + Duration::from_secs(10);
    while !stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("reloaded"))
    {
        assert!(Instant::now() < end, "no fallback to stderr");
        thread::sleep(Duration::from_millis(10));
    }
    ls.rebind();
    let t = tunnel(addr, echo);
    drop(t);
    ls.got.clear();
    let l = ls.wait(&[&format!("user={USER}"), "end="]);
    check_3164(&l, 30, pid);

    // Nothing went to stderr while the socket was there.
    let err = stderr.lock().unwrap().join("\n");
    assert!(!err.contains("listening on"), "{err}");
    let all = ls.got.join("\n") + &err;
    assert!(!all.contains(PASS));
    assert!(!all.contains(&auth::stored_digest(PASS.as_bytes())));
    drop(kill);
    let _ = std::fs::remove_dir_all(&dir);
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------- man pages

const PAGES: [(&str, &str); 2] = [("websocks.8", "man8"), ("websocks.yaml.5", "man5")];

/// A man tree (man8/, man5/) holding our pages, indexed by makewhatis when
/// it is there.
fn man_tree() -> PathBuf {
    let d = temp_dir();
    for (page, sect) in PAGES {
        std::fs::create_dir_all(d.join(sect)).unwrap();
        std::fs::copy(
            Path::new(REPO).join("man").join(page),
            d.join(sect).join(page),
        )
        .unwrap();
    }
    if let Some(mw) = find_tool("makewhatis") {
        let _ = Command::new(mw).arg(&d).status();
    }
    d
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// `mandoc -Tlint`: no WARNING, ERROR or worse, no STYLE message but
/// cross-references to manuals that are not installed. mandoc 1.14 looks
/// those up only in its built-in base path (not MANPATH, -M or -m), so
/// the pages are laid over /usr/share/man in a private mount namespace
/// (unshare; as root, or in a user namespace) for the two to find each
/// other; where that is impossible, the STYLE lines about each other are
/// accepted and reported.
#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn man_pages_lint_clean_and_render() {
    let Some(mandoc) = need_tool("mandoc", "mandoc") else {
        return;
    };
    let tree = man_tree();
    let files: Vec<String> = PAGES
        .iter()
        .map(|(p, _)| format!("{REPO}/man/{p}"))
        .collect();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={}:/usr/share/man /usr/share/man || exit 97; \
         echo OVERLAID; exec {} -Tlint -W all {}",
        tree.display(),
        mandoc.display(),
        files.join(" ")
    );
    let userns = if is_root() { "-m" } else { "-rm" };
    let overlaid = find_tool("unshare").and_then(|u| {
        let o = Command::new(u)
            .args([userns, "sh", "-c", &script])
            .output()
            .ok()?;
        let t = text(&o);
        t.contains("OVERLAID").then_some(t)
    });
    let (lint, resolved) = match overlaid {
        Some(t) => (t, true),
        None => {
            skip(
                "part: the pages' references to each other: cannot lay them over \
                 /usr/share/man (needs unshare from util-linux, and root or user namespaces)",
            );
            let o = Command::new(&mandoc)
                .args(["-Tlint", "-W", "all"])
                .args(&files)
                .output()
                .unwrap();
            (text(&o), false)
        }
    };
    let ours = ["Xr websocks 8", "Xr websocks.yaml 5"];
    let mut bad = Vec::new();
    for l in lint.lines().filter(|l| l.contains(": ")) {
        let level = ["STYLE", "WARNING", "ERROR", "UNSUPP", "BADARG", "SYSERR"]
            .into_iter()
            .find(|lv| l.contains(&format!(": {lv}: ")));
        match level {
            None => {} // e.g. "outdated mandoc.db lacks ..." notes
            // mandoc's advice for BSD base pages, whose build fills in
            // the system; man-db's groff prints "BSD" for an empty `.Os`,
            // so ours names the package (checked below).
            Some("STYLE") if l.contains("operating system explicitly specified: Os websocks") => {
                println!("accepted: {l}");
            }
            Some("STYLE") if l.contains("referenced manual not found") => {
                let about_ours = ours.iter().any(|x| l.contains(x));
                if about_ours && resolved {
                    bad.push(l);
                } else {
                    println!("accepted: {l}");
                }
            }
            Some(_) => bad.push(l),
        }
    }
    assert!(bad.is_empty(), "mandoc -Tlint:\n{}", bad.join("\n"));

    // Rendered by mandoc: the footer names the package, quotes balance.
    for f in &files {
        let o = Command::new(&mandoc)
            .args(["-Tutf8"])
            .arg(f)
            .output()
            .unwrap();
        assert!(o.status.success(), "mandoc -Tutf8 {f}: {}", text(&o));
        check_rendered(f, &String::from_utf8_lossy(&o.stdout));
    }

    // Rendering with man(1).
    match need_tool("man", "man-db") {
        None => {}
        Some(man) => {
            for (page, title, sections) in [
                (
                    "websocks.8",
                    "WEBSOCKS(8)",
                    &[
                        "NAME",
                        "SYNOPSIS",
                        "SYSTEMD",
                        "BEHIND NGINX OR A PAAS ROUTER",
                        "FILES",
                        "EXIT STATUS",
                        "SEE ALSO",
                    ][..],
                ),
                (
                    "websocks.yaml.5",
                    "WEBSOCKS.YAML(5)",
                    &["NAME", "DESCRIPTION", "EXAMPLES"][..],
                ),
            ] {
                let o = Command::new(&man)
                    .args(["--warnings", "-l"])
                    .arg(format!("{REPO}/man/{page}"))
                    .env("MANPAGER", "cat")
                    .env("MANWIDTH", "80")
                    .env("LANG", "C.UTF-8")
                    .output()
                    .unwrap();
                let out = String::from_utf8_lossy(&o.stdout);
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(o.status.success(), "man -l {page}: {err}");
                assert!(err.trim().is_empty(), "man --warnings -l {page}: {err}");
                assert!(out.contains(title), "{page}: {out}");
                for s in sections {
                    assert!(
                        out.lines().any(|l| l.trim_end() == *s),
                        "{page} has no {s}: {out}"
                    );
                }
                let widest = out.lines().map(|l| l.chars().count()).max().unwrap();
                assert!(widest <= 80, "{page}: a line of {widest} columns");
                check_rendered(page, &out);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tree);
}

/// What `.Os` must say: the package and its version, as the footer of a
/// Linux page names its source (groff prints "BSD" for an empty `.Os`).
fn os_line() -> String {
    format!(".Os websocks {}", env!("CARGO_PKG_VERSION"))
}

/// A rendered page: its footer (the last line with text) names the
/// package and its version and not BSD; every quote closes before the
/// next opens and nothing closes what was not opened (single quotes are
/// `Ql`, double quotes `Dq`; apostrophes stay ASCII).
fn check_rendered(page: &str, out: &str) {
    let footer = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let want = format!("websocks {}", env!("CARGO_PKG_VERSION"));
    assert!(
        footer.trim_start().starts_with(&want) && !footer.contains("BSD"),
        "{page}: footer {footer:?}, want {want:?} and no BSD"
    );
    // groff 1.22 puts "BSD" before the volume name in the header unless the
    // page names the system (`.ds doc-volume-operating-system`).
    let header = out.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(!header.contains("BSD"), "{page}: header {header:?}");
    let chars: Vec<char> = out.chars().collect();
    for (open, close) in [('‘', '’'), ('“', '”')] {
        let mut opened: Option<usize> = None;
        for (i, &c) in chars.iter().enumerate() {
            let here = || {
                chars[i.saturating_sub(60)..(i + 20).min(chars.len())]
                    .iter()
                    .collect::<String>()
            };
            if c == open {
                assert!(
                    opened.is_none(),
                    "{page}: {open} inside a quote: {:?}",
                    here()
                );
                opened = Some(i);
            } else if c == close {
                assert!(
                    opened.take().is_some(),
                    "{page}: {close} closes nothing: {:?}",
                    here()
                );
            }
        }
        assert!(opened.is_none(), "{page}: a {open} never closed");
    }
}

/// The pages' sources: `.Os` names the package and its version, and no
/// in-line quote (`Ql`, `Dq`, `Sq`, `Qq`) is followed on its line by `No`
/// or another quote. Such a quote runs to the end of the line (or to the
/// row's end in groff's tables), so the words meant to follow it end up
/// inside it: `.Pq Ql auto No or number` renders (‘auto or number’).
#[test]
fn man_page_sources_name_the_os_and_close_their_quotes() {
    let quotes = ["Ql", "Dq", "Sq", "Qq"];
    for (page, _) in PAGES {
        let src = std::fs::read_to_string(format!("{REPO}/man/{page}")).unwrap();
        assert!(
            src.lines().any(|l| l == os_line()),
            "{page}: no `{}` line",
            os_line()
        );
        for (n, line) in src.lines().enumerate() {
            if !line.starts_with('.') {
                continue;
            }
            let words: Vec<&str> = line[1..].split_whitespace().collect();
            if let Some(q) = words.iter().position(|w| quotes.contains(w)) {
                let after = &words[q + 1..];
                assert!(
                    !after.iter().any(|w| *w == "No" || quotes.contains(w)),
                    "{page}:{}: `{line}`: the {} quote swallows what follows it",
                    n + 1,
                    words[q]
                );
            }
        }
    }
}

// ---------------------------------------------------------- systemd units

fn units() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(Path::new(REPO).join("contrib/systemd"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".service") || p.ends_with(".socket"))
        .collect();
    v.sort();
    v
}

/// The socket units name their sockets as the binary expects, and each
/// points at its service.
#[test]
fn socket_units_use_the_names_the_daemon_takes() {
    let read = |u: &str| std::fs::read_to_string(format!("{REPO}/contrib/systemd/{u}")).unwrap();
    let has = |u: &str, line: &str| {
        assert!(
            read(u).lines().any(|l| l.trim() == line),
            "{u} lacks `{line}`"
        );
    };
    has("websocks-server.socket", "FileDescriptorName=websocks");
    has("websocks-agent.socket", "FileDescriptorName=socks5");
    has("websocks-agent.socket", "Service=websocks-agent.service");
    has("websocks-agent-http.socket", "FileDescriptorName=http");
    has(
        "websocks-agent-http.socket",
        "Service=websocks-agent.service",
    );
    for s in ["websocks-server.service", "websocks-agent.service"] {
        has(s, "Type=notify");
        has(s, "ExecReload=/bin/kill -HUP $MAINPID");
    }
    assert_eq!(units().len(), 5, "{:?}", units());
}

/// websocks(8) lists every unit under FILES where the package installs it.
#[test]
fn man_page_lists_the_units() {
    let page = std::fs::read_to_string(format!("{REPO}/man/websocks.8")).unwrap();
    let files = page
        .split(".Sh FILES\n")
        .nth(1)
        .and_then(|s| s.split("\n.Sh ").next())
        .expect("websocks.8 has FILES");
    for u in units() {
        let name = Path::new(&u).file_name().unwrap().to_str().unwrap();
        let want = format!(".It Pa /lib/systemd/system/{name}\n");
        assert!(files.contains(&want), "FILES lacks `{}`", want.trim());
    }
}

/// `systemd-analyze verify` on every unit, with the man pages on MANPATH
/// (Documentation=) and, as root only, the binary at /usr/bin/websocks
/// (laid over /usr/bin in a private mount namespace: nothing on the host
/// changes).
#[test]
fn systemd_analyze_verify_units() {
    let Some(sa) = need_tool("systemd-analyze", "systemd") else {
        return;
    };
    if !is_root() {
        skip("needs root: systemd-analyze verify needs /usr/bin/websocks");
        return;
    }
    let Some(unshare) = need_tool("unshare", "util-linux") else {
        return;
    };
    let tree = man_tree();
    let bin = temp_dir();
    std::fs::copy(BIN, bin.join("websocks")).unwrap();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={}:/usr/bin /usr/bin || exit 97; \
         exec {} verify {}",
        bin.display(),
        sa.display(),
        units().join(" ")
    );
    let o = Command::new(unshare)
        .args(["-m", "sh", "-c", &script])
        .env("MANPATH", &tree)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let out = text(&o);
    assert_ne!(o.status.code(), Some(97), "overlay mount failed: {out}");
    let ours: Vec<&str> = out.lines().filter(|l| l.contains("websocks")).collect();
    assert!(
        o.status.success() && ours.is_empty(),
        "systemd-analyze verify ({:?}):\n{out}",
        o.status
    );
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_dir_all(&bin);
}

/// `systemd-analyze security --offline=true`: exposure at most 1.5 for
/// both services.
#[test]
fn systemd_analyze_security_exposure() {
    let Some(sa) = need_tool("systemd-analyze", "systemd") else {
        return;
    };
    for svc in ["websocks-server.service", "websocks-agent.service"] {
        let o = Command::new(&sa)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("{REPO}/contrib/systemd/{svc}"))
            .env("SYSTEMD_COLORS", "0")
            .output()
            .unwrap();
        let out = text(&o);
        if out.contains("unrecognized option") {
            skip(&format!(
                "needs systemd-analyze --offline (systemd 250 or later): {out}"
            ));
            return;
        }
        let key = format!("Overall exposure level for {svc}: ");
        let level: f64 = out
            .lines()
            .find_map(|l| l.split(&key).nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {svc}:\n{out}"));
        println!("{svc}: exposure {level}");
        assert!(level <= 1.5, "{svc}: exposure {level} > 1.5\n{out}");
    }
}

/// The example configurations shipped in contrib/ pass `websocks check`.
#[test]
fn contrib_examples_validate() {
    for f in ["server.example.yaml", "agent.example.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib")
            .join(f);
        let out = Command::new(env!("CARGO_BIN_EXE_websocks"))
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ------------------------------------------------ the packaged configuration

/// The files the Debian package installs in /etc/websocks, as shipped.
fn shipped(name: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join("contrib/deb").join(name)).unwrap()
}

#[test]
fn shipped_server_config_refuses_to_start_until_a_user_is_added() {
    let dir = temp_dir();
    std::fs::write(dir.join("server.yaml"), shipped("server.yaml")).unwrap();
    std::fs::write(dir.join("users.yaml"), shipped("users.yaml")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(dir.join("server.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("server.users: no users yet: add one to"),
        "{err}"
    );
    assert!(err.contains("users.yaml"), "{err}");
    assert!(err.contains("websocks hash-password"), "{err}");
    // The README's step: append an entry with the digest to users.yaml.
    let digest = auth::stored_digest(PASS.as_bytes());
    let mut users = shipped("users.yaml");
    users.push_str(&format!("- name: {USER}\n  password_hash: \"{digest}\"\n"));
    std::fs::write(dir.join("users.yaml"), &users).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(dir.join("server.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 users)"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shipped_server_config_keeps_the_default_deny_list() {
    let dir = temp_dir();
    let digest = auth::stored_digest(PASS.as_bytes());
    let users = dir.join("users.yaml");
    let text = format!(
        "{}- name: {USER}\n  password_hash: \"{digest}\"\n",
        shipped("users.yaml")
    );
    std::fs::write(&users, text).unwrap();
    let cfg = shipped("server.yaml")
        .replace("listen: [\"[::]:8080\"]", "listen: [\"127.0.0.1:0\"]")
        .replace(
            "users_file: users.yaml",
            &format!("users_file: {}", users.display()),
        );
    assert!(cfg.contains("127.0.0.1:0") && cfg.contains(&*users.to_string_lossy()));
    let d = Daemon::server(&cfg);
    let echo = echo_server();
    let (code, _, _) = tunnel_reply(d.addr(), &websocks::proto::socks5::Addr::Ip(echo));
    assert_eq!(code, 2, "this host's loopback is refused as shipped");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shipped_agent_config_refuses_to_start_until_a_server_is_added() {
    let dir = temp_dir();
    std::fs::write(dir.join("agent.yaml"), shipped("agent.yaml")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(dir.join("agent.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("agent.servers: at least one server"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The socket units and the packaged configuration name the same addresses,
/// so the daemon has no mismatch to report (see websocks(8)).
#[test]
fn shipped_sockets_match_the_shipped_listen_addresses() {
    let unit =
        |n: &str| std::fs::read_to_string(Path::new(REPO).join("contrib/systemd").join(n)).unwrap();
    let streams = |text: String| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("ListenStream="))
            .map(|v| format!("\"{v}\""))
            .collect()
    };
    let server = shipped("server.yaml");
    assert_eq!(streams(unit("websocks-server.socket")), ["\"[::]:8080\""]);
    assert!(server.contains("listen: [\"[::]:8080\"]"), "{server}");
    let agent = shipped("agent.yaml");
    let socks = streams(unit("websocks-agent.socket")).join(", ");
    assert!(
        agent.contains(&format!("listen: [{socks}]")),
        "{socks} / {agent}"
    );
    let http = streams(unit("websocks-agent-http.socket")).join(", ");
    assert!(
        agent.contains(&format!("listen: [{http}]")),
        "{http} / {agent}"
    );
    for f in [
        "websocks-server.socket",
        "websocks-agent.socket",
        "websocks-agent-http.socket",
    ] {
        assert!(unit(f).contains("\nFlushPending=yes\n"), "{f}");
    }
    for (f, side) in [
        ("websocks-server.service", "server"),
        ("websocks-agent.service", "agent"),
    ] {
        let u = unit(f);
        let check = format!("/usr/bin/websocks check -c /etc/websocks/{side}.yaml");
        assert!(u.contains(&format!("\nExecStartPre={check}\n")), "{f}");
        // The check runs before the signal, so a bad file fails the reload.
        let reload: Vec<&str> = u.lines().filter(|l| l.starts_with("ExecReload=")).collect();
        assert_eq!(
            reload,
            [
                format!("ExecReload={check}").as_str(),
                "ExecReload=/bin/kill -HUP $MAINPID"
            ]
        );
    }
}
