//! The command line, with the real binary: help and version at every
//! level, a start error printed once, `hash-password` from a pipe and from
//! a terminal (a pseudo-terminal made here), `check` given a users file,
//! and the shell completions (the scripts' syntax, and bash completing).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use websocks::proto::auth;

const BIN: &str = env!("CARGO_BIN_EXE_websocks");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

const COMMANDS: [&str; 6] = [
    "server",
    "agent",
    "run",
    "check",
    "hash-password",
    "completions",
];

struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs the binary with `args`, `input` on stdin, and `env` set, for at
/// most 10 s.
fn run_with(args: &[&str], input: &[u8], env: &[(&str, Option<&str>)]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let outs = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let errs = thread::spawn(move || {
        let mut v = String::new();
        let _ = err.read_to_string(&mut v);
        v
    });
    let code = exit_within(
        &mut child,
        Duration::from_secs(10),
        &format!("websocks {args:?}"),
    )
    .code()
    .unwrap_or(-1);
    feeder.join().unwrap();
    Out {
        code,
        stdout: outs.join().unwrap(),
        stderr: errs.join().unwrap(),
    }
}

fn run(args: &[&str], input: &[u8]) -> Out {
    run_with(args, input, &[])
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

// ------------------------------------------------------ help and version

/// `-h`, `--help` and `help` print usage on stdout and exit 0, at the top
/// and for every command, even without the required `-c`.
#[test]
fn help_at_every_level() {
    let mut levels: Vec<Vec<&str>> = vec![vec![]];
    levels.extend(COMMANDS.iter().map(|c| vec![*c]));
    for level in &levels {
        for h in ["-h", "--help", "help"] {
            let args: Vec<&str> = level.iter().copied().chain([h]).collect();
            let out = run(&args, b"");
            assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
            let usage = format!("Usage: websocks {}", level.join(" "));
            assert!(text(&out.stdout).starts_with(usage.trim_end()), "{args:?}");
            assert!(text(&out.stdout).contains("-h, --help"), "{args:?}");
            assert!(text(&out.stdout).contains("-V, --version"), "{args:?}");
        }
    }
    // The top level lists every command.
    let top = text(&run(&["-h"], b"").stdout);
    for c in COMMANDS {
        assert!(top.contains(&format!("  {c} ")), "{c}: {top}");
    }
}

/// `-V` and `--version` print the version at every level, before any
/// required option is missed; a `-V` given as the value of `-c` is a file
/// name.
#[test]
fn version_at_every_level() {
    let want = format!("websocks {}\n", env!("CARGO_PKG_VERSION"));
    let mut levels: Vec<Vec<&str>> = vec![vec![]];
    levels.extend(COMMANDS.iter().map(|c| vec![*c]));
    levels.push(vec!["server", "-c", "/nonexistent.yaml"]);
    for level in &levels {
        for v in ["-V", "--version"] {
            let args: Vec<&str> = level.iter().copied().chain([v]).collect();
            let out = run(&args, b"");
            assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
            assert_eq!(text(&out.stdout), want, "{args:?}");
        }
    }
    let out = run(&["check", "-c", "-V"], b"");
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert!(out.stderr.contains("-V"), "{}", out.stderr);
}

// ------------------------------------------------------- start errors

/// A port in use is said once on stderr whatever the log target: logged
/// there (stderr, `auto` from a pipe) or logged to syslog and printed.
#[test]
fn port_in_use_is_said_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = temp_dir();
    let sock = dir.join("log.sock");
    let syslog = UnixDatagram::bind(&sock).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let cfg = dir.join("websocks.yaml");
    let want = format!("cannot listen on {addr}");
    for target in ["stderr", "auto", "syslog"] {
        let yaml = format!(
            "log_target: {target}\nsyslog_socket: {}\n{}",
            sock.display(),
            server_yaml("")
        )
        .replace("127.0.0.1:0", &addr.to_string());
        std::fs::write(&cfg, yaml).unwrap();
        let out = run_with(
            &["server", "-c", cfg.to_str().unwrap()],
            b"",
            &[("INVOCATION_ID", None), ("JOURNAL_STREAM", None)],
        );
        assert_eq!(out.code, 71, "{target}: {}", out.stderr);
        assert_eq!(
            out.stderr.matches(&want).count(),
            1,
            "{target}: {}",
            out.stderr
        );
        if target == "syslog" {
            let mut buf = vec![0u8; 65536];
            let mut seen = false;
            while let Ok(n) = syslog.recv(&mut buf) {
                if text(&buf[..n]).contains(&want) {
                    seen = true;
                    break;
                }
            }
            assert!(seen, "the error reaches syslog too");
        }
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------- hash-password

fn digest(pw: &[u8]) -> String {
    format!("{}\n", auth::stored_digest(pw))
}

/// From a pipe the whole of stdin is the password, less one trailing
/// `\n` or `\r\n`; a password spanning lines is said on stderr; an empty
/// one is refused.
#[test]
fn hash_password_from_a_pipe_takes_all_of_stdin() {
    for (input, pw) in [
        (&b"pasSw0rD\n"[..], &b"pasSw0rD"[..]),
        (b"pasSw0rD", b"pasSw0rD"),
        (b"pasSw0rD\r\n", b"pasSw0rD"),
        (b"pasSw0rD\n\n", b"pasSw0rD\n"),
        (b" spaced out \t\n", b" spaced out \t"),
        (b"two\nlines\n", b"two\nlines"),
        (b"\xff\x00bytes", b"\xff\x00bytes"),
    ] {
        let out = run(&["hash-password"], input);
        assert_eq!(out.code, 0, "{input:?}: {}", out.stderr);
        assert_eq!(text(&out.stdout), digest(pw), "{input:?}");
        assert_eq!(
            out.stderr.contains("spans 2 lines"),
            pw.contains(&b'\n'),
            "{input:?}: {}",
            out.stderr
        );
    }
    for input in [&b""[..], b"\n", b"\r\n"] {
        let out = run(&["hash-password"], input);
        assert_eq!(out.code, 65, "{input:?}");
        assert!(out.stdout.is_empty());
        assert!(out.stderr.contains("empty password"), "{}", out.stderr);
    }
}

/// A pseudo-terminal: the master side here, the child's stdin, stdout and
/// stderr on the slave. What the child writes (and the terminal echoes)
/// is collected from the master.
struct Pty {
    master: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn spawn(args: &[&str]) -> (Pty, std::process::Child) {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        let child = Command::new(BIN)
            .args(args)
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave)
            .spawn()
            .unwrap();
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every slave descriptor is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s2.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (Pty { master, seen }, child)
    }

    fn wait_for(&self, what: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while !text(&self.seen.lock().unwrap()).contains(what) {
            assert!(
                Instant::now() < end,
                "no {what:?} on the terminal: {:?}",
                text(&self.seen.lock().unwrap())
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_exit(child: &mut std::process::Child) -> i32 {
        exit_within(child, Duration::from_secs(10), "hash-password")
            .code()
            .unwrap_or(-1)
    }
}

/// On a terminal: asked twice, never echoed, the digest printed; the
/// terminal's echo is back on afterwards. Two different answers: exit 65
/// and no digest.
#[test]
fn hash_password_on_a_terminal_asks_twice_without_echo() {
    let (mut pty, mut child) = Pty::spawn(&["hash-password"]);
    pty.wait_for("Password: ");
    pty.master.write_all(b"pasSw0rD\n").unwrap();
    pty.wait_for("Retype password: ");
    pty.master.write_all(b"pasSw0rD\n").unwrap();
    assert_eq!(Pty::wait_exit(&mut child), 0);
    let want = auth::stored_digest(b"pasSw0rD");
    pty.wait_for(&want);
    let seen = text(&pty.seen.lock().unwrap());
    assert!(!seen.contains("pasSw0rD"), "echoed: {seen:?}");
    let t = rustix::termios::tcgetattr(&pty.master).unwrap();
    assert!(
        t.local_modes.contains(rustix::termios::LocalModes::ECHO),
        "echo restored"
    );

    let (mut pty, mut child) = Pty::spawn(&["hash-password"]);
    pty.wait_for("Password: ");
    pty.master.write_all(b"one\n").unwrap();
    pty.wait_for("Retype password: ");
    pty.master.write_all(b"two\n").unwrap();
    assert_eq!(Pty::wait_exit(&mut child), 65);
    pty.wait_for("do not match");
    let seen = text(&pty.seen.lock().unwrap());
    assert!(!seen.contains(&auth::stored_digest(b"one")), "{seen:?}");
    assert!(!seen.contains("one") && !seen.contains("two"), "{seen:?}");
}

// ------------------------------------------------------------- check

/// `check` given a users file says so and exits 78, whether the users
/// file itself is good or not.
#[test]
fn check_recognizes_a_users_file() {
    let example = Path::new(REPO).join("contrib/users.example.yaml");
    let out = run(&["check", "-c", example.to_str().unwrap()], b"");
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{} looks like a users file (for server.users_file), not a configuration",
            example.display()
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("valid (1 user)"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("rI26Tllh"),
        "no digest: {}",
        out.stderr
    );

    let dir = temp_dir();
    let bad = dir.join("users.yaml");
    std::fs::write(&bad, "- name: carol\n  password_hash: short\n").unwrap();
    let out = run(&["check", "-c", bad.to_str().unwrap()], b"");
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert!(
        out.stderr.contains("looks like a users file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("password_hash"), "{}", out.stderr);

    // A configuration that is merely wrong is not called a users file.
    let cfg = dir.join("websocks.yaml");
    std::fs::write(&cfg, "server: [1, 2]\n").unwrap();
    let out = run(&["check", "-c", cfg.to_str().unwrap()], b"");
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert!(!out.stderr.contains("users file"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

// -------------------------------------------------------- completions

const SCRIPTS: [(&str, &str); 3] = [
    ("bash", "websocks.bash"),
    ("zsh", "_websocks"),
    ("fish", "websocks.fish"),
];

fn script(file: &str) -> PathBuf {
    Path::new(REPO).join("contrib/completions").join(file)
}

/// `completions SHELL` prints exactly the file a package installs, naming
/// every command; an unknown shell is a usage error.
#[test]
fn completions_print_the_shipped_files() {
    for (shell, file) in SCRIPTS {
        let out = run(&["completions", shell], b"");
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert_eq!(out.stdout, std::fs::read(script(file)).unwrap(), "{shell}");
        let s = text(&out.stdout);
        for c in COMMANDS {
            assert!(s.contains(c), "{shell} lacks {c}");
        }
        for o in ["--config", "--help", "--version"] {
            assert!(
                s.contains(o) || s.contains(o.trim_start_matches('-')),
                "{shell} lacks {o}"
            );
        }
    }
    let out = run(&["completions", "tcsh"], b"");
    assert_eq!(out.code, 64);
    assert!(out.stdout.is_empty());
    let out = run(&["completions"], b"");
    assert_eq!(out.code, 64);
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Each script parses in its shell (`-n`); zsh and fish are checked only
/// where installed.
#[test]
fn completion_scripts_parse() {
    for (shell, file) in SCRIPTS {
        if !have(shell) {
            skip(&format!("{shell} is not installed: {file} unchecked"));
            continue;
        }
        let out = Command::new(shell)
            .arg("-n")
            .arg(script(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell} -n {file}: {}",
            text(&out.stderr)
        );
    }
}

/// Runs the bash completion function for `words` (the last one being
/// completed) in `cwd`; returns COMPREPLY.
fn bash_complete(words: &[&str], cwd: &Path) -> Vec<String> {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect();
    let prog = format!(
        "source '{}' || exit 9\ncomplete -p websocks >/dev/null || exit 8\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_websocks\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script("websocks.bash").display(),
        quoted.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &prog])
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(out.status.success(), "{words:?}: {}", text(&out.stderr));
    let mut got: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    got.sort();
    got
}

/// bash, really completing: commands first, then a command's options,
/// files after `-c`, shells after `completions`.
#[test]
fn bash_completes_commands_options_and_files() {
    if !have("bash") {
        skip("bash is not installed");
        return;
    }
    let dir = temp_dir();
    std::fs::write(dir.join("server.yaml"), "").unwrap();
    std::fs::write(dir.join("agent.yaml"), "").unwrap();
    let v = |s: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = s.iter().map(std::string::ToString::to_string).collect();
        v.sort();
        v
    };
    let got = bash_complete(&["websocks", ""], &dir);
    for c in COMMANDS {
        assert!(got.contains(&c.to_string()), "{c}: {got:?}");
    }
    assert_eq!(bash_complete(&["websocks", "ch"], &dir), v(&["check"]));
    assert_eq!(
        bash_complete(&["websocks", "h"], &dir),
        v(&["hash-password"])
    );
    assert_eq!(
        bash_complete(&["websocks", "server", "-"], &dir),
        v(&["-c", "--config", "-h", "--help", "-V", "--version"])
    );
    assert_eq!(
        bash_complete(&["websocks", "check", "-c", ""], &dir),
        v(&["agent.yaml", "server.yaml"])
    );
    assert_eq!(
        bash_complete(&["websocks", "run", "--config", "s"], &dir),
        v(&["server.yaml"])
    );
    assert_eq!(
        bash_complete(&["websocks", "completions", ""], &dir),
        v(&["bash", "zsh", "fish", "-h", "--help", "-V", "--version"])
    );
    assert_eq!(
        bash_complete(&["websocks", "completions", "zsh", ""], &dir),
        v(&["-h", "--help", "-V", "--version"])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// fish, really completing (`complete -C`), where installed: commands,
/// options, files after `-c`, shells after `completions`.
#[test]
fn fish_completes_commands_options_and_files() {
    if !have("fish") {
        skip("fish is not installed");
        return;
    }
    let dir = temp_dir();
    std::fs::write(dir.join("server.yaml"), "").unwrap();
    let complete = |line: &str| -> Vec<String> {
        let prog = format!(
            "source '{}'; complete -C '{line}'",
            script("websocks.fish").display()
        );
        let out = Command::new("fish")
            .args(["--no-config", "-c", &prog])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_string())
            .collect()
    };
    let got = complete("websocks ");
    for c in COMMANDS {
        assert!(got.contains(&c.to_string()), "{c}: {got:?}");
    }
    let got = complete("websocks agent -");
    for o in ["-c", "--config", "-h", "--help", "-V", "--version"] {
        assert!(got.contains(&o.to_string()), "{o}: {got:?}");
    }
    assert!(complete("websocks check -c ").contains(&"server.yaml".to_string()));
    let mut got = complete("websocks completions ");
    got.sort();
    assert_eq!(got, ["bash", "fish", "zsh"]);
    let _ = std::fs::remove_dir_all(&dir);
}
