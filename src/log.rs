//! Logging behind the `log` facade: one line per record, to syslog
//! (facility daemon, ident `websocks`) or to stderr.
//!
//! `auto` picks stderr on a terminal, syslog otherwise when its socket
//! exists (a daemon under systemd logs to the journal through it), and
//! stderr as the last resort. A syslog socket that goes away (journald
//! restarted) is reconnected on the next record; one that is full gets the
//! record on stderr instead (never a blocked thread).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::{Level, LevelFilter, Metadata, Record};
use syslog::{Facility, Formatter3164, LoggerBackend};

use crate::config::{LogLevel, LogTarget};

type Syslog = syslog::Logger<LoggerBackend, Formatter3164>;

/// The target of an info record that is a notice (syslog's level between
/// info and warning, which `log` lacks): `log::info!(target: NOTICE, ..)`.
pub const NOTICE: &str = "websocks::notice";

enum Sink {
    Stderr,
    Syslog {
        path: PathBuf,
        conn: Mutex<Option<Syslog>>,
    },
}

struct Logger {
    sink: Sink,
}

fn connect(path: &Path) -> Option<Syslog> {
    let f = Formatter3164 {
        facility: Facility::LOG_DAEMON,
        hostname: None,
        process: "websocks".into(),
        pid: std::process::id(),
    };
    // A non-blocking datagram socket: when the syslog daemon falls behind,
    // a record goes to stderr instead of stalling every thread that logs.
    let dgram = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|d| d.connect(path).map(|()| d))
        .and_then(|d| d.set_nonblocking(true).map(|()| d));
    match dgram {
        Ok(d) => Some(syslog::Logger::new(LoggerBackend::Unix(d), f)),
        Err(_) => syslog::unix_custom(f, path).ok(),
    }
}

fn send(s: &mut Syslog, level: Level, msg: &str) -> bool {
    match level {
        Level::Error => s.err(msg),
        Level::Warn => s.warning(msg),
        Level::Info => s.info(msg),
        Level::Debug | Level::Trace => s.debug(msg),
    }
    .is_ok()
}

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) || !r.target().starts_with("websocks") {
            return;
        }
        let msg = r.args().to_string();
        match &self.sink {
            Sink::Stderr if r.target() == NOTICE => eprintln!("websocks notice: {msg}"),
            Sink::Stderr => stderr_line(r.level(), &msg),
            Sink::Syslog { path, conn } => {
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                // Try the open connection, then one fresh one.
                for _ in 0..2 {
                    if conn.is_none() {
                        *conn = connect(path);
                    }
                    let Some(s) = conn.as_mut() else { break };
                    let sent = if r.target() == NOTICE && r.level() == Level::Info {
                        s.notice(&msg).is_ok()
                    } else {
                        send(s, r.level(), &msg)
                    };
                    if sent {
                        return;
                    }
                    *conn = None;
                }
                stderr_line(r.level(), &msg);
            }
        }
    }

    fn flush(&self) {}
}

fn stderr_line(level: Level, msg: &str) {
    let tag = match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug | Level::Trace => "debug",
    };
    eprintln!("websocks {tag}: {msg}");
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Installs the logger (once) and sets the level. Later calls only change
/// the level.
pub fn init(level: LogLevel, target: LogTarget, syslog_socket: &Path) {
    let logger = LOGGER.get_or_init(|| {
        let syslog = match target {
            LogTarget::Stderr => false,
            LogTarget::Syslog => true,
            LogTarget::Auto => !std::io::stderr().is_terminal() && syslog_socket.exists(),
        };
        Logger {
            sink: if syslog {
                Sink::Syslog {
                    path: syslog_socket.to_path_buf(),
                    conn: Mutex::new(connect(syslog_socket)),
                }
            } else {
                Sink::Stderr
            },
        }
    });
    let _ = log::set_logger(logger);
    set_level(level);
}

/// Changes the level (on reload).
pub fn set_level(level: LogLevel) {
    log::set_max_level(match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
    });
}
