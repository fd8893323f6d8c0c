//! The daemon's stop as a value: one handle, cloned into every accept loop,
//! connection and relay, that the daemon moves through its stages (stop
//! accepting, drain, cut what is left) and that each of them awaits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use event_listener::Event;

/// How far the stop has come; each stage includes the ones before it. A
/// new handle (serving) has reached none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// The accept loops return, closing their listeners.
    Closed = 1,
    /// Connections that carry no tunnel yet (an agent's pooled connections
    /// waiting for their frame) end at once instead of holding the drain
    /// for the whole grace period; tunnels are left to finish.
    Draining = 2,
    /// The shutdown grace has run out: every relay still open ends with
    /// [`crate::relay::End::Cut`] and resets both sides.
    Cut = 3,
}

/// A handle on the daemon's stop; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    stage: AtomicU8,
    moved: Event,
    /// Connections now waiting for their frame (pooled, not yet tunnels).
    waiting: AtomicUsize,
}

impl Shutdown {
    pub(crate) fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Moves the stop on to `stage` (never back) and wakes whoever waits.
    pub(crate) fn enter(&self, stage: Stage) {
        self.0.stage.fetch_max(stage as u8, Ordering::SeqCst);
        self.0.moved.notify(usize::MAX);
    }

    /// Whether the stop has reached `stage`.
    pub(crate) fn reached(&self, stage: Stage) -> bool {
        self.0.stage.load(Ordering::SeqCst) >= stage as u8
    }

    /// Resolves once the stop has reached `stage`.
    pub(crate) async fn until(&self, stage: Stage) {
        loop {
            if self.reached(stage) {
                return;
            }
            // Listen before checking again, so a move between the two is
            // not missed.
            let l = self.0.moved.listen();
            if self.reached(stage) {
                return;
            }
            l.await;
        }
    }

    /// Counts a connection as waiting for its frame while the guard lives:
    /// such connections end at once at [`Stage::Draining`] and are not
    /// part of the drain.
    pub(crate) fn waiting(&self) -> Waiting {
        self.0.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self.clone())
    }

    /// How many connections wait for their frame.
    pub(crate) fn waiting_for_frame(&self) -> usize {
        self.0.waiting.load(Ordering::SeqCst)
    }
}

/// One connection waiting for its frame (see [`Shutdown::waiting`]).
pub(crate) struct Waiting(Shutdown);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}
