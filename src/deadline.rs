//! Deadlines: the one way a stage bounds a future in time (async-io's
//! documented idiom, a timer raced with `.or()`, written once), and the one
//! queue every deadline of the process waits in.
//!
//! Registering an async-io `Timer` wakes the reactor (an eventfd write, then
//! a spare round of epoll: five system calls), and a connection sets a
//! deadline at nearly every stage. Here the deadlines wait in one ordered
//! queue, and only its earliest is armed on a single async-io timer. A new
//! deadline later than that (the usual case: stages with the same timeout
//! begin in order) costs a lock and a map insert, no system call; dropping
//! one costs a map removal. When the timer fires, the deadlines that have
//! passed are woken and it is armed for the next; a deadline dropped before
//! it came leaves the timer armed for it (one spare wake-up, no harm).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use async_io::Timer;
use futures_lite::FutureExt;

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl From<Elapsed> for io::Error {
    fn from(_: Elapsed) -> io::Error {
        io::ErrorKind::TimedOut.into()
    }
}

/// Runs `fut` until `deadline`: its output, or [`Elapsed`] once the
/// deadline has passed (at once if it already has). `fut` is polled first,
/// so an output ready at the deadline still wins; dropped unfinished when
/// the deadline passes.
pub(crate) async fn timeout<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Elapsed> {
    async { Ok(fut.await) }
        .or(async {
            at(deadline).await;
            Err(Elapsed)
        })
        .await
}

/// A future that completes at `when` (at once if it has passed).
pub(crate) fn at(when: Instant) -> At {
    At { when, id: None }
}

/// See [`at`]. Unpin, so a loop may poll it in place.
pub(crate) struct At {
    when: Instant,
    /// Its place in the queue, while it waits there.
    id: Option<u64>,
}

impl Future for At {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.when {
            self.leave();
            return Poll::Ready(());
        }
        let when = self.when;
        let mut due = Vec::new();
        let mut q = queue();
        match self.id.and_then(|id| q.waiting.get_mut(&(when, id))) {
            Some(w) => {
                if !w.will_wake(cx.waker()) {
                    w.clone_from(cx.waker());
                }
            }
            // New, or taken as due an instant before `now` was read above.
            None => {
                let id = q.next_id;
                q.next_id += 1;
                q.waiting.insert((when, id), cx.waker().clone());
                self.id = Some(id);
                q.arm(&mut due);
            }
        }
        drop(q);
        due.into_iter().for_each(Waker::wake);
        Poll::Pending
    }
}

impl At {
    /// Leaves the queue, if waiting there.
    fn leave(&mut self) {
        if let Some(id) = self.id.take() {
            queue().waiting.remove(&(self.when, id));
        }
    }
}

impl Drop for At {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The process's deadlines, earliest first, and the one timer armed for
/// the earliest.
struct Queue {
    waiting: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
    timer: Timer,
    /// When `timer` is armed for, while it is.
    armed: Option<Instant>,
    /// What the timer wakes: [`Fire`].
    fire: Waker,
}

static QUEUE: LazyLock<Mutex<Queue>> = LazyLock::new(|| {
    Mutex::new(Queue {
        waiting: BTreeMap::new(),
        next_id: 0,
        timer: Timer::never(),
        armed: None,
        fire: Waker::from(Arc::new(Fire)),
    })
});

fn queue() -> MutexGuard<'static, Queue> {
    // Nothing panics while holding it; a poisoned queue is still consistent.
    QUEUE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The timer's waker: it fired, so the earliest deadlines are due.
struct Fire;

impl Wake for Fire {
    fn wake(self: Arc<Self>) {
        let mut due = Vec::new();
        let mut q = queue();
        q.armed = None;
        q.arm(&mut due);
        drop(q);
        due.into_iter().for_each(Waker::wake);
    }
}

impl Queue {
    /// Takes out the deadlines that have passed (their wakers into `due`)
    /// and arms the timer for the earliest left, unless it is armed for
    /// that or sooner already.
    fn arm(&mut self, due: &mut Vec<Waker>) {
        loop {
            let now = Instant::now();
            while let Some(first) = self.waiting.first_entry() {
                if first.key().0 > now {
                    break;
                }
                due.push(first.remove());
            }
            let Some(&(next, _)) = self.waiting.keys().next() else {
                return;
            };
            if self.armed.is_some_and(|a| a <= next) {
                return;
            }
            self.timer.set_at(next);
            self.armed = Some(next);
            let cx = &mut Context::from_waker(&self.fire);
            if Pin::new(&mut self.timer).poll(cx).is_pending() {
                return;
            }
            // It passed meanwhile: due now, and the timer is not armed.
            self.armed = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use std::time::Duration;

    #[test]
    fn output_or_elapsed() {
        let past = Instant::now();
        let soon = Instant::now() + Duration::from_millis(20);
        smol::block_on(async {
            // Ready at once: the output, even with the deadline passed.
            assert_eq!(timeout(past, future::ready(7)).await, Ok(7));
            // Never ready: Elapsed, once the deadline comes.
            assert_eq!(timeout(soon, future::pending::<()>()).await, Err(Elapsed));
            assert!(Instant::now() >= soon);
        });
        let e: io::Error = Elapsed.into();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    /// Deadlines set in any order each come on time, none early, whatever
    /// the timer was armed for when they were set.
    #[test]
    fn each_deadline_on_time_in_any_order() {
        let start = Instant::now();
        let ms = move |n| start + Duration::from_millis(n);
        smol::block_on(async {
            // A far one arms the timer; nearer ones must re-arm it.
            let far = smol::spawn(async move { timeout(ms(400), future::pending::<()>()).await });
            let mut tasks = Vec::new();
            for n in [150u64, 60, 90, 60, 30, 120] {
                tasks.push(smol::spawn(async move {
                    at(ms(n)).await;
                    (n, start.elapsed())
                }));
            }
            for t in tasks {
                let (n, took) = t.await;
                assert!(took >= Duration::from_millis(n), "{n} ms came at {took:?}");
                assert!(
                    took < Duration::from_millis(n + 500),
                    "{n} ms came at {took:?}"
                );
            }
            assert_eq!(far.await, Err(Elapsed));
            assert!(start.elapsed() >= Duration::from_millis(400));
        });
    }

    #[test]
    fn a_deadline_leaves_the_queue_when_dropped() {
        let when = Instant::now() + Duration::from_secs(60);
        let mut a = at(when);
        assert!(smol::block_on(future::poll_once(&mut a)).is_none());
        let key = (when, a.id.unwrap());
        assert!(queue().waiting.contains_key(&key));
        drop(a);
        assert!(!queue().waiting.contains_key(&key));
    }
}
