//! Deadlines: the one way a stage bounds a future in time (async-io's
//! documented idiom, a timer raced with `.or()`, written once).

use std::io;
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
            Timer::at(deadline).await;
            Err(Elapsed)
        })
        .await
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
}
