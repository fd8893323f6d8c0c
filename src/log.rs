//! Logging behind the `log` facade: one line per record, to syslog
//! (facility daemon, ident `websocks`) or to stderr.
//!
//! `auto` picks syslog when systemd runs us (stderr is the journal, or a
//! unit sent stderr elsewhere) and its socket exists: the journal then
//! keeps each record's priority. Everywhere else (a terminal, a pipe, a
//! file) it picks stderr. Lines on stderr start with an RFC 3339 UTC time,
//! except when stderr is the journal, which stamps lines itself. A syslog
//! socket that goes away (journald restarted) is reconnected on the next
//! record; one that is full gets the record on stderr instead (never a
//! blocked thread).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::{Level, LevelFilter, Metadata, Record};
use syslog::{Facility, Formatter3164, LoggerBackend};

use crate::config::{LogLevel, LogTarget};

type Syslog = syslog::Logger<LoggerBackend, Formatter3164>;

/// The target of an info record that is a notice (syslog's level between
/// info and warning, which `log` lacks): `log::info!(target: NOTICE, ..)`.
pub(crate) const NOTICE: &str = "websocks::notice";

enum Sink {
    Stderr,
    Syslog {
        path: PathBuf,
        conn: Mutex<Option<Syslog>>,
    },
}

struct Logger {
    sink: Sink,
    /// Whether stderr lines carry a timestamp (not when stderr is the
    /// journal).
    stamp: bool,
    /// Whether stderr is the journal.
    journal: bool,
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
            Sink::Stderr => stderr_line(self.stamp, r, &msg),
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
                stderr_line(self.stamp, r, &msg);
            }
        }
    }

    fn flush(&self) {}
}

fn stderr_line(stamp: bool, r: &Record<'_>, msg: &str) {
    let tag = match r.level() {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info if r.target() == NOTICE => "notice",
        Level::Info => "info",
        Level::Debug | Level::Trace => "debug",
    };
    if stamp {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        eprintln!("{now} websocks {tag}: {msg}");
    } else {
        eprintln!("websocks {tag}: {msg}");
    }
}

/// Device and inode of whatever fd 2 is.
fn stderr_id() -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(std::io::stderr()).ok()?;
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// `JOURNAL_STREAM=DEV:INO`, set by systemd when it connects stdout or
/// stderr to the journal (systemd.exec(5), "Environment variables in
/// spawned processes").
fn journal_stream() -> Option<(u64, u64)> {
    let v = std::env::var("JOURNAL_STREAM").ok()?;
    let (dev, ino) = v.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Where `auto` sends records, from what the environment shows: syslog
/// when stderr is the journal, or when systemd started us
/// (`INVOCATION_ID`) with stderr neither the journal nor a terminal (a unit
/// with `StandardError=null`, say). A shell inherits both variables from
/// a terminal emulator that runs as a systemd user service, so their mere
/// presence is not enough: stderr must be the journal, or no journal
/// stream may be named at all.
fn auto_is_syslog(invocation: bool, journal: Option<(u64, u64)>, stderr: StderrIs) -> bool {
    match stderr {
        StderrIs::Journal => true,
        StderrIs::Terminal => false,
        StderrIs::Other => invocation && journal.is_none(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StderrIs {
    Journal,
    Terminal,
    Other,
}

fn stderr_is() -> StderrIs {
    if std::io::stderr().is_terminal() {
        StderrIs::Terminal
    } else if journal_stream().is_some_and(|j| stderr_id() == Some(j)) {
        StderrIs::Journal
    } else {
        StderrIs::Other
    }
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Installs the logger (once) and sets the level. Later calls only change
/// the level.
pub(crate) fn init(level: LogLevel, target: LogTarget, syslog_socket: &Path) {
    let logger = LOGGER.get_or_init(|| {
        let stderr = stderr_is();
        let syslog = match target {
            LogTarget::Stderr => false,
            LogTarget::Syslog => true,
            LogTarget::Auto => {
                let invocation = std::env::var_os("INVOCATION_ID").is_some();
                auto_is_syslog(invocation, journal_stream(), stderr) && syslog_socket.exists()
            }
        };
        Logger {
            stamp: stderr != StderrIs::Journal,
            journal: stderr == StderrIs::Journal,
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

/// Whether what is logged already shows where stderr goes: records go to
/// stderr, or to syslog while stderr is the journal. When not (syslog with
/// stderr on a terminal or a pipe), a fatal error is printed on stderr too.
pub(crate) fn reaches_stderr() -> bool {
    LOGGER
        .get()
        .is_some_and(|l| matches!(l.sink, Sink::Stderr) || l.journal)
}

/// Changes the level (on reload).
pub(crate) fn set_level(level: LogLevel) {
    log::set_max_level(match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_syslog_only_under_systemd() {
        let j = Some((1, 2));
        // A service whose stderr is the journal.
        assert!(auto_is_syslog(true, j, StderrIs::Journal));
        // A service with stderr sent nowhere.
        assert!(auto_is_syslog(true, None, StderrIs::Other));
        // A terminal, a pipe, a file: stderr.
        assert!(!auto_is_syslog(false, None, StderrIs::Terminal));
        assert!(!auto_is_syslog(false, None, StderrIs::Other));
        // A shell under a terminal emulator that systemd runs inherits
        // both variables; its pipes and terminals are not the journal.
        assert!(!auto_is_syslog(true, j, StderrIs::Terminal));
        assert!(!auto_is_syslog(true, j, StderrIs::Other));
    }
}
