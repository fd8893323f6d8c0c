//! The command line (argh) and exit codes (sysexits.h).

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use argh::FromArgs;

use crate::{config, daemon, proto::auth};

/// Exit codes, from sysexits.h.
pub(crate) const EX_OK: i32 = 0;
pub(crate) const EX_USAGE: i32 = 64;
pub(crate) const EX_DATAERR: i32 = 65;
pub(crate) const EX_OSERR: i32 = 71;
pub(crate) const EX_IOERR: i32 = 74;
pub(crate) const EX_CONFIG: i32 = 78;

/// The completion scripts, the same bytes as the files in
/// contrib/completions/ that a package installs.
pub(crate) const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", include_str!("../contrib/completions/websocks.bash")),
    ("zsh", include_str!("../contrib/completions/_websocks")),
    ("fish", include_str!("../contrib/completions/websocks.fish")),
];

#[derive(FromArgs)]
/// websocks: SOCKS5 carried inside a WebSocket upgrade.
#[argh(help_triggers("-h", "--help", "help"))]
struct Top {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
    #[argh(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Server(ServerCmd),
    Agent(AgentCmd),
    Run(RunCmd),
    Check(CheckCmd),
    HashPassword(HashCmd),
    Completions(CompletionsCmd),
}

#[derive(FromArgs)]
/// Run the WebSocks server.
#[argh(
    subcommand,
    name = "server",
    help_triggers("-h", "--help", "help"),
    note = "Logs go to stderr, or to syslog when systemd runs websocks\n  (see log_target in websocks.yaml(5))."
)]
struct ServerCmd {
    /// configuration file (YAML)
    #[argh(option, short = 'c')]
    config: PathBuf,
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
}

#[derive(FromArgs)]
/// Run the WebSocks agent (local SOCKS5/HTTP proxy).
#[argh(
    subcommand,
    name = "agent",
    help_triggers("-h", "--help", "help"),
    note = "Logs go to stderr, or to syslog when systemd runs websocks\n  (see log_target in websocks.yaml(5))."
)]
struct AgentCmd {
    /// configuration file (YAML)
    #[argh(option, short = 'c')]
    config: PathBuf,
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
}

#[derive(FromArgs)]
/// Run every section of the file (server and agent) in one process.
#[argh(subcommand, name = "run", help_triggers("-h", "--help", "help"))]
struct RunCmd {
    /// configuration file (YAML)
    #[argh(option, short = 'c')]
    config: PathBuf,
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
}

#[derive(FromArgs)]
/// Validate a configuration file and exit: 0 if valid, 78 if not.
#[argh(
    subcommand,
    name = "check",
    help_triggers("-h", "--help", "help"),
    note = "A users file (the list that server.users_file names) is recognized\n  and reported as such, with exit status 78."
)]
struct CheckCmd {
    /// configuration file (YAML)
    #[argh(option, short = 'c')]
    config: PathBuf,
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
}

#[derive(FromArgs)]
/// Print the stored digest of a password, for `password_hash`.
#[argh(
    subcommand,
    name = "hash-password",
    help_triggers("-h", "--help", "help"),
    note = "On a terminal, asks for the password twice without echo; exit 65\n  if the two differ. Otherwise the whole of standard input is the\n  password, less one trailing line end (\\n or \\r\\n): other line ends,\n  spaces and any bytes are part of it (a password spanning lines is\n  reported on stderr). An empty password is refused (exit 65).",
    example = "printf '%s' 'secret' | websocks hash-password"
)]
struct HashCmd {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
}

#[derive(FromArgs)]
/// Print a completion script for bash, zsh or fish.
#[argh(
    subcommand,
    name = "completions",
    help_triggers("-h", "--help", "help"),
    example = "websocks completions bash > /usr/share/bash-completion/completions/websocks",
    example = "websocks completions zsh > /usr/share/zsh/vendor-completions/_websocks",
    example = "websocks completions fish > ~/.config/fish/completions/websocks.fish"
)]
struct CompletionsCmd {
    /// the shell: bash, zsh or fish
    #[argh(positional)]
    shell: String,
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
}

impl Cmd {
    fn version(&self) -> bool {
        match self {
            Cmd::Server(c) => c.version,
            Cmd::Agent(c) => c.version,
            Cmd::Run(c) => c.version,
            Cmd::Check(c) => c.version,
            Cmd::HashPassword(c) => c.version,
            Cmd::Completions(c) => c.version,
        }
    }
}

/// Whether `-V` or `--version` is among `args` as a switch (not the value
/// of `-c`, not after `--`). argh answers a missing `-c` before it looks at
/// the switch, yet `websocks server -V` should print the version.
fn asks_version(args: &[&str]) -> bool {
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        match a {
            "--" => return false,
            "-c" | "--config" => {
                it.next();
            }
            "-V" | "--version" => return true,
            _ => {}
        }
    }
    false
}

fn print_version() -> i32 {
    println!("websocks {}", env!("CARGO_PKG_VERSION"));
    EX_OK
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let rest = strs.get(1..).unwrap_or(&[]);
    let top = match Top::from_args(&["websocks"], rest) {
        Ok(t) => t,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    EX_OK
                }
                Err(()) if asks_version(rest) => print_version(),
                Err(()) => {
                    eprintln!("{}", early.output);
                    eprintln!("Run websocks --help for usage.");
                    EX_USAGE
                }
            };
        }
    };
    if top.version || top.cmd.as_ref().is_some_and(Cmd::version) {
        return print_version();
    }
    match top.cmd {
        None => {
            eprintln!(
                "websocks: a command is required (server, agent, run, check, hash-password, completions); see --help"
            );
            EX_USAGE
        }
        Some(Cmd::HashPassword(_)) => hash_password(),
        Some(Cmd::Completions(c)) => completions(&c.shell),
        Some(Cmd::Check(c)) => check(&c.config),
        Some(Cmd::Server(c)) => run(&c.config, true, false),
        Some(Cmd::Agent(c)) => run(&c.config, false, true),
        Some(Cmd::Run(c)) => run(&c.config, true, true),
    }
}

/// `completions SHELL`: the script for that shell on stdout.
fn completions(shell: &str) -> i32 {
    match COMPLETIONS.iter().find(|(name, _)| *name == shell) {
        Some((_, script)) => {
            print!("{script}");
            EX_OK
        }
        None => {
            eprintln!(
                "websocks: no completions for `{}`: bash, zsh or fish",
                shell.escape_default()
            );
            EX_USAGE
        }
    }
}

/// `check -c FILE`: validates; a users file given by mistake is named as
/// such (and checked as one) rather than reported as a YAML type error.
fn check(path: &Path) -> i32 {
    match config::load(path) {
        Ok(cfg) => {
            let mut parts = Vec::new();
            if let Some(s) = &cfg.server {
                parts.push(format!("{} users", s.users.len()));
            }
            if let Some(a) = &cfg.agent {
                parts.push(format!("{} servers", a.servers.len()));
            }
            println!("{}: ok ({})", path.display(), parts.join(", "));
            EX_OK
        }
        Err(e) => {
            let users_file = std::fs::read_to_string(path)
                .ok()
                .is_some_and(|t| config::looks_like_users_file(&t));
            if !users_file {
                eprintln!("{e}");
                return EX_CONFIG;
            }
            let p = path.display();
            match config::load_users_file(path) {
                Ok((users, _)) => eprintln!(
                    "{p} looks like a users file (for server.users_file), not a configuration; as a users file it is valid ({} user{})",
                    users.len(),
                    if users.len() == 1 { "" } else { "s" }
                ),
                Err(e) => eprintln!(
                    "{p} looks like a users file (for server.users_file), not a configuration; as a users file: {e}"
                ),
            }
            EX_CONFIG
        }
    }
}

/// Loads `path` and runs the wanted sections; a wanted section that is
/// missing is a configuration error.
fn run(path: &Path, want_server: bool, want_agent: bool) -> i32 {
    // Sockets from systemd are taken first, before any thread exists.
    let act = match crate::systemd::take_activated() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("websocks: {e}");
            return EX_CONFIG;
        }
    };
    let mut cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return EX_CONFIG;
        }
    };
    crate::log::init(cfg.log_level, cfg.log_target, &cfg.syslog_socket);
    if !want_server {
        cfg.server = None;
    }
    if !want_agent {
        cfg.agent = None;
    }
    let missing = match (want_server, want_agent) {
        (true, false) if cfg.server.is_none() => Some("server"),
        (false, true) if cfg.agent.is_none() => Some("agent"),
        _ => None,
    };
    if let Some(section) = missing {
        eprintln!("{}: no `{section}:` section", path.display());
        return EX_CONFIG;
    }
    match daemon::run(cfg, act) {
        Ok(()) => EX_OK,
        Err(e) => {
            // Logged (syslog, the journal); on stderr as well only when
            // the log does not show there already.
            log::error!("{e}");
            if !crate::log::reaches_stderr() {
                eprintln!("websocks: {e}");
            }
            match e {
                daemon::StartError::Config(_) => EX_CONFIG,
                daemon::StartError::Os(_) => EX_OSERR,
            }
        }
    }
}

/// `hash-password`: the password from the terminal (asked twice, no
/// echo) or the whole of stdin, to its stored digest on stdout.
fn hash_password() -> i32 {
    let stdin = io::stdin();
    let pw = if stdin.is_terminal() {
        let both =
            read_hidden("Password: ").and_then(|a| Ok((a, read_hidden("Retype password: ")?)));
        match both {
            Ok((a, b)) if a == b => a,
            Ok(_) => {
                eprintln!("websocks: the passwords do not match");
                return EX_DATAERR;
            }
            Err(e) => {
                eprintln!("websocks: cannot read the terminal: {e}");
                return EX_IOERR;
            }
        }
    } else {
        let mut all = Vec::new();
        if let Err(e) = stdin.lock().read_to_end(&mut all) {
            eprintln!("websocks: cannot read stdin: {e}");
            return EX_IOERR;
        }
        let pw = strip_line_end(all);
        if pw.contains(&b'\n') {
            eprintln!(
                "websocks: note: the password spans {} lines: all of stdin is the password, less one trailing line end",
                pw.split(|&b| b == b'\n').count()
            );
        }
        pw
    };
    if pw.is_empty() {
        eprintln!("websocks: empty password");
        return EX_DATAERR;
    }
    println!("{}", auth::stored_digest(&pw));
    EX_OK
}

/// `v` less one trailing `\n` or `\r\n`.
fn strip_line_end(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    v
}

/// The terminal's settings, put back when dropped (an error or a panic
/// included).
struct Restore(rustix::termios::Termios);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ =
            rustix::termios::tcsetattr(io::stdin(), rustix::termios::OptionalActions::Now, &self.0);
    }
}

/// Reads one line from the terminal on stdin with echo off (but the line
/// end echoed, so the next prompt starts on its own line), after `prompt`
/// on stderr; without the line end.
fn read_hidden(prompt: &str) -> io::Result<Vec<u8>> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    // As getpass(3): what was typed ahead of the prompt is discarded.
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)?;
    let _restore = Restore(saved);
    let mut err = io::stderr().lock();
    err.write_all(prompt.as_bytes())?;
    err.flush()?;
    let mut line = Vec::new();
    stdin.lock().read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        // End of input (^D): no line end was echoed.
        err.write_all(b"\n")?;
    }
    Ok(strip_line_end(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_switch_not_config_value() {
        assert!(asks_version(&["server", "-V"]));
        assert!(asks_version(&["--version"]));
        assert!(asks_version(&["check", "--version", "-c", "x"]));
        assert!(!asks_version(&["server", "-c", "-V"]));
        assert!(!asks_version(&["server", "--", "-V"]));
        assert!(!asks_version(&["server", "-c", "x"]));
    }

    #[test]
    fn one_line_end_is_stripped() {
        assert_eq!(strip_line_end(b"pw\n".to_vec()), b"pw");
        assert_eq!(strip_line_end(b"pw\r\n".to_vec()), b"pw");
        assert_eq!(strip_line_end(b"pw\n\n".to_vec()), b"pw\n");
        assert_eq!(strip_line_end(b"pw\r".to_vec()), b"pw\r");
        assert_eq!(strip_line_end(b"a\nb".to_vec()), b"a\nb");
        assert_eq!(strip_line_end(Vec::new()), b"");
    }
}
