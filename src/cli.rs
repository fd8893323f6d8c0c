//! The command line (argh) and exit codes (sysexits.h).

use std::io::BufRead;
use std::path::PathBuf;

use argh::FromArgs;

use crate::{config, daemon, proto::auth};

/// Exit codes, from sysexits.h.
pub const EX_OK: i32 = 0;
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_OSERR: i32 = 71;
pub const EX_IOERR: i32 = 74;
pub const EX_CONFIG: i32 = 78;

#[derive(FromArgs)]
/// websocks: SOCKS5 carried inside a WebSocket upgrade.
struct Top {
    /// print the version and exit
    #[argh(switch)]
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
}

#[derive(FromArgs)]
/// Run the WebSocks server.
#[argh(subcommand, name = "server")]
struct ServerCmd {
    /// configuration file (YAML)
    #[argh(option, short = 'c')]
    config: PathBuf,
}

#[derive(FromArgs)]
/// Run the WebSocks agent (local SOCKS5/HTTP proxy).
#[argh(subcommand, name = "agent")]
struct AgentCmd {
    /// configuration file (YAML)
    #[argh(option, short = 'c')]
    config: PathBuf,
}

#[derive(FromArgs)]
/// Run every section of the file (server and agent) in one process.
#[argh(subcommand, name = "run")]
struct RunCmd {
    /// configuration file (YAML)
    #[argh(option, short = 'c')]
    config: PathBuf,
}

#[derive(FromArgs)]
/// Validate a configuration file and exit: 0 if valid, 78 if not.
#[argh(subcommand, name = "check")]
struct CheckCmd {
    /// configuration file (YAML)
    #[argh(option, short = 'c')]
    config: PathBuf,
}

#[derive(FromArgs)]
/// Read a password on stdin and print its stored digest for `password_hash`.
#[argh(subcommand, name = "hash-password")]
struct HashCmd {}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let top = match Top::from_args(&["websocks"], strs.get(1..).unwrap_or(&[])) {
        Ok(t) => t,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    EX_OK
                }
                Err(()) => {
                    eprintln!("{}", early.output);
                    eprintln!("Run websocks --help for usage.");
                    EX_USAGE
                }
            };
        }
    };
    if top.version {
        println!("websocks {}", env!("CARGO_PKG_VERSION"));
        return EX_OK;
    }
    match top.cmd {
        None => {
            eprintln!(
                "websocks: a command is required (server, agent, run, check, hash-password); see --help"
            );
            EX_USAGE
        }
        Some(Cmd::HashPassword(_)) => hash_password(),
        Some(Cmd::Check(c)) => match config::load(&c.config) {
            Ok(cfg) => {
                let mut parts = Vec::new();
                if let Some(s) = &cfg.server {
                    parts.push(format!("{} users", s.users.0.len()));
                }
                if let Some(a) = &cfg.agent {
                    parts.push(format!("{} servers", a.servers.len()));
                }
                println!("{}: ok ({})", c.config.display(), parts.join(", "));
                EX_OK
            }
            Err(e) => {
                eprintln!("{e}");
                EX_CONFIG
            }
        },
        Some(Cmd::Server(c)) => run(&c.config, true, false),
        Some(Cmd::Agent(c)) => run(&c.config, false, true),
        Some(Cmd::Run(c)) => run(&c.config, true, true),
    }
}

/// Loads `path` and runs the wanted sections; a wanted section that is
/// missing is a configuration error.
fn run(path: &std::path::Path, want_server: bool, want_agent: bool) -> i32 {
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
            log::error!("{e}");
            eprintln!("websocks: {e}");
            match e {
                daemon::StartError::Config(_) => EX_CONFIG,
                daemon::StartError::Os(_) => EX_OSERR,
            }
        }
    }
}

/// `hash-password`: one line from stdin (without its line end) to digest.
fn hash_password() -> i32 {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("websocks: cannot read stdin: {e}");
        return EX_IOERR;
    }
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        eprintln!("websocks: empty password");
        return EX_DATAERR;
    }
    println!("{}", auth::stored_digest(pw.as_bytes()));
    EX_OK
}
