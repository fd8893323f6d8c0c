//! systemd glue: socket activation (sd_listen_fds(3)), readiness and status
//! notification (sd_notify(3)) and the watchdog. Every function is a no-op
//! when the process was not started by systemd.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;

/// Listening sockets handed over by systemd, by `FileDescriptorName=`.
#[derive(Debug, Default)]
pub(crate) struct Activated {
    by_name: HashMap<String, Vec<std::net::TcpListener>>,
}

impl Activated {
    /// Takes the sockets named `name` (several sockets may share a name,
    /// e.g. an IPv4 and an IPv6 one).
    pub(crate) fn take(&mut self, name: &str) -> Vec<std::net::TcpListener> {
        self.by_name.remove(name).unwrap_or_default()
    }

    /// Names passed but not taken by any section.
    pub(crate) fn leftover(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_name.keys().cloned().collect();
        v.sort();
        v
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Why the passed sockets cannot be used.
#[derive(Debug)]
pub(crate) struct ActivationError(pub String);

impl std::fmt::Display for ActivationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks one passed descriptor: it must be a listening TCP socket.
fn tcp_listener(
    fd: OwnedFd,
    name: &str,
    raw: RawFd,
) -> Result<std::net::TcpListener, ActivationError> {
    let sock = socket2::Socket::from(fd);
    let bad = |what: &str| {
        ActivationError(format!(
            "socket `{name}` (fd {raw}) {what}: websocks needs listening TCP sockets (ListenStream=)"
        ))
    };
    match sock.r#type() {
        Ok(t) if t == socket2::Type::STREAM => {}
        Ok(_) => return Err(bad("is not a stream socket")),
        Err(e) => return Err(bad(&format!("cannot be inspected ({e})"))),
    }
    match sock.domain() {
        Ok(d) if d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6 => {}
        _ => return Err(bad("is not an IPv4/IPv6 socket")),
    }
    if !sock.is_listener().unwrap_or(false) {
        return Err(bad("is not listening"));
    }
    sock.set_nonblocking(true)
        .map_err(|e| bad(&format!("cannot be made non-blocking ({e})")))?;
    Ok(sock.into())
}

/// Takes the sockets systemd passed (LISTEN_PID, LISTEN_FDS,
/// LISTEN_FDNAMES) and clears those variables so children do not inherit
/// them. Must run before any thread is started.
pub(crate) fn take_activated() -> Result<Activated, ActivationError> {
    // SAFETY: called once from `main` before any other thread exists, so
    // removing environment variables cannot race a reader; and each
    // descriptor from 3 to 3+LISTEN_FDS was passed to this very process
    // (LISTEN_PID checked by sd_notify) for it to own, and is wrapped in an
    // `OwnedFd` exactly once, here.
    let fds: Vec<(RawFd, String)> = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|e| ActivationError(format!("socket activation: {e}")))?
        .collect();
    let mut out = Activated::default();
    for (raw, name) in fds {
        // SAFETY: see above; `raw` is one of the passed descriptors.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let l = tcp_listener(fd, &name, raw)?;
        out.by_name.entry(name).or_default().push(l);
    }
    Ok(out)
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify: {e}");
    }
}

/// READY=1 with a status line.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// RELOADING=1 with MONOTONIC_USEC, as systemd 253+ wants before a reload.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

/// STOPPING=1 with a status line.
pub(crate) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// STATUS= only.
pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// How often to send WATCHDOG=1, when systemd asked for it: half the
/// interval, as sd_watchdog_enabled(3) recommends.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// WATCHDOG=1.
pub(crate) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
