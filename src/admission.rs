//! Who gets in at accept: a count of live connections against
//! `max_connections`, and for the server a separate, smaller budget for
//! connections that have not authenticated yet, in total and per source
//! address (sshd's `MaxStartups` and `PerSourceMaxStartups`, nginx's
//! `limit_conn`). Slow or silent handshakes then cannot take the room that
//! authenticated tunnels need: they run into their own budget first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Counts live connections; a slot is released when its guard drops.
pub(crate) struct Slots {
    live: AtomicUsize,
}

/// One live connection.
pub(crate) struct Slot(Arc<Slots>);

impl Slots {
    pub(crate) fn new() -> Slots {
        Slots {
            live: AtomicUsize::new(0),
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Takes a slot unless `max` are in use.
    pub(crate) fn take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Default for Slots {
    fn default() -> Self {
        Slots::new()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The source a per-source limit counts: an IPv4 address, or the /64 of an
/// IPv6 address (one host commonly holds a whole /64, so counting single
/// IPv6 addresses would let it open 2^64 budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(u128);

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match crate::acl::canonical(ip) {
            IpAddr::V4(v4) => Source(u32::from(v4) as u128),
            IpAddr::V6(v6) => Source((u128::from(v6) >> 64) | 1 << 127),
        }
    }
}

/// Connections still in their handshake (not yet authenticated), in total
/// and by source.
#[derive(Default)]
pub(crate) struct Handshakes {
    open: Mutex<(usize, HashMap<Source, usize>)>,
}

/// Why a handshake was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `max_handshakes` connections are authenticating.
    Total(usize),
    /// This source has `max_handshakes_per_source` authenticating.
    Source(usize),
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Total(n) => write!(f, "max_handshakes ({n}) reached"),
            Full::Source(n) => write!(f, "max_handshakes_per_source ({n}) reached"),
        }
    }
}

/// One connection's place in the handshake budget, held until it has
/// authenticated (then [`Handshaking::done`]) or ends.
pub(crate) struct Handshaking {
    gate: Option<(Arc<Handshakes>, Source)>,
}

impl Handshakes {
    pub(crate) fn new() -> Handshakes {
        Handshakes::default()
    }

    /// Admits a handshake from `from` unless `max` are open in total or
    /// `per_source` from that source.
    pub(crate) fn take(
        self: &Arc<Self>,
        from: IpAddr,
        max: usize,
        per_source: usize,
    ) -> Result<Handshaking, Full> {
        let src = Source::of(from);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= max {
            return Err(Full::Total(max));
        }
        let mine = open.1.entry(src).or_insert(0);
        if *mine >= per_source {
            return Err(Full::Source(per_source));
        }
        *mine += 1;
        open.0 += 1;
        Ok(Handshaking {
            gate: Some((self.clone(), src)),
        })
    }
}

#[cfg(test)]
impl Handshakes {
    /// Connections in their handshake now.
    fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Handshaking {
    /// A connection admitted without a budget (the agent's listeners).
    pub(crate) fn none() -> Handshaking {
        Handshaking { gate: None }
    }

    /// The connection authenticated: its place goes to the next one.
    pub(crate) fn done(&mut self) {
        let Some((gate, src)) = self.gate.take() else {
            return;
        };
        let mut open = gate.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&src) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&src);
            }
        }
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        let h = Arc::new(Handshakes::new());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let x = h.take(a, 3, 2).unwrap();
        let mut y = h.take(a, 3, 2).unwrap();
        assert_eq!(h.take(a, 3, 2).err(), Some(Full::Source(2)));
        let z = h.take(b, 3, 2).unwrap();
        assert_eq!(h.take(b, 3, 2).err(), Some(Full::Total(3)));
        y.done();
        assert_eq!(h.open(), 2);
        let _w = h.take(a, 3, 2).unwrap();
        drop((x, y, z));
        assert_eq!(h.open(), 1);
        // An IPv6 /64 is one source; mapped IPv4 is the IPv4 address.
        let v6 = |s: &str| Source::of(s.parse().unwrap());
        assert_eq!(v6("2001:db8::1"), v6("2001:db8::ffff:1"));
        assert_ne!(v6("2001:db8::1"), v6("2001:db8:0:1::1"));
        assert_eq!(v6("::ffff:127.0.0.1"), v6("127.0.0.1"));
        assert_ne!(v6("::7f00:1"), v6("127.0.0.1"));
    }
}
