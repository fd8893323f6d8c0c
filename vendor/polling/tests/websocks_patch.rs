//! The websocks patch to the epoll backend (see vendor/README.md in websocks): the
//! timerfd is set only when no earlier expiry is armed, and the notifier is
//! read and re-armed only after a wait reported it. What must still hold:
//! no wait outlives its deadline, no notification is lost, a notification
//! is not delivered forever, and a fired timer does not keep waking waits.

#![cfg(any(target_os = "linux", target_os = "android"))]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use polling::{Event, Events, Poller};

/// Slack for a wait to end after its deadline on a loaded 2-core machine.
const LATE: Duration = Duration::from_millis(150);

/// Waits with `timeout` until the deadline has passed (a wait may end
/// early, with no events); returns when the last wait returned.
fn wait_out(p: &Poller, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    let mut ev = Events::new();
    loop {
        ev.clear();
        let left = deadline.saturating_duration_since(Instant::now());
        p.wait(&mut ev, Some(left)).unwrap();
        let now = Instant::now();
        if now >= deadline {
            return now;
        }
    }
}

/// A socket pair whose `a` end is registered readable (oneshot) as key 7.
fn readable_pair(p: &Poller) -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    unsafe { p.add(&a, Event::readable(7)).unwrap() };
    (a, b)
}

#[test]
fn an_earlier_deadline_after_a_later_one_is_kept() {
    let p = Poller::new().unwrap();
    let (a, mut b) = readable_pair(&p);
    // A wait for 2 s (the timer armed for it) ended by I/O after 10 ms...
    let w = thread::spawn(move || {
        thread::sleep(Duration::from_millis(10));
        b.write_all(b"x").unwrap();
        b
    });
    let mut ev = Events::new();
    let t = Instant::now();
    p.wait(&mut ev, Some(Duration::from_secs(2))).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(ev.iter().next().map(|e| e.key), Some(7));
    let _b = w.join().unwrap();
    drop(a);
    // ...then a wait for 50 ms must end at 50 ms, not at the 2 s expiry.
    let t = Instant::now();
    let end = wait_out(&p, Duration::from_millis(50));
    let took = end - t;
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(50) + LATE,
        "{took:?}"
    );
}

#[test]
fn a_later_deadline_after_an_earlier_one_is_reached() {
    let p = Poller::new().unwrap();
    let (_a, mut b) = readable_pair(&p);
    let mut ev = Events::new();
    // Armed for 30 ms, ended at once by I/O: the 30 ms expiry stays armed.
    b.write_all(b"x").unwrap();
    p.wait(&mut ev, Some(Duration::from_millis(30))).unwrap();
    assert_eq!(ev.len(), 1);
    // A wait for 200 ms may end early at that expiry, but a loop of waits
    // reaches 200 ms on time.
    let t = Instant::now();
    let took = wait_out(&p, Duration::from_millis(200)) - t;
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(200) + LATE,
        "{took:?}"
    );
}

#[test]
fn a_fired_timer_does_not_keep_waking() {
    let p = Poller::new().unwrap();
    let mut ev = Events::new();
    // The timer fires.
    let t = Instant::now();
    p.wait(&mut ev, Some(Duration::from_millis(10))).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(10));
    // A wait without a deadline now sleeps until notified (not woken at
    // once, again and again, by the fired timerfd).
    let p = Arc::new(p);
    let q = p.clone();
    let n = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        q.notify().unwrap();
    });
    let t = Instant::now();
    let mut returns = 0;
    while t.elapsed() < Duration::from_millis(100) {
        ev.clear();
        p.wait(&mut ev, None).unwrap();
        returns += 1;
    }
    n.join().unwrap();
    assert!(returns <= 2, "{returns} returns within 100 ms");
    // And a wait with a deadline after it ends on time.
    let t = Instant::now();
    let took = wait_out(&p, Duration::from_millis(40)) - t;
    assert!(took < Duration::from_millis(40) + LATE, "{took:?}");
}

#[test]
fn a_notification_is_delivered_once() {
    let p = Poller::new().unwrap();
    let mut ev = Events::new();
    // Before the wait: it ends at once.
    p.notify().unwrap();
    let t = Instant::now();
    p.wait(&mut ev, Some(Duration::from_secs(5))).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Consumed: the next wait sleeps its whole timeout (bar one early end
    // at the expiry the first wait armed, 5 s away: not within this one).
    let t = Instant::now();
    p.wait(&mut ev, Some(Duration::from_millis(60))).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(60), "{:?}", t.elapsed());
}

#[test]
fn notifications_between_io_events_are_never_lost() {
    // A notifier thread races the waits, with an I/O event before every
    // third notification, so that some land while a wait is returning
    // with it. Every wait must end well before its 10 s timeout: a lost
    // notification would leave one sleeping it out.
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let p = Arc::new(Poller::new().unwrap());
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    unsafe { p.add(&a, Event::readable(7)).unwrap() };
    let rounds = 2000;
    let sent = Arc::new(AtomicUsize::new(0));
    let (ack, acked) = std::sync::mpsc::sync_channel::<()>(0);
    let notifier = {
        let (p, sent) = (p.clone(), sent.clone());
        thread::spawn(move || {
            for i in 0..rounds {
                if i % 3 == 0 {
                    b.write_all(b"x").unwrap();
                }
                sent.fetch_add(1, Ordering::SeqCst);
                p.notify().unwrap();
                // Until the waiter has seen this round.
                acked.recv().unwrap();
            }
        })
    };
    let mut ev = Events::new();
    let mut buf = [0u8; 64];
    let mut seen = 0;
    while seen < rounds {
        ev.clear();
        let t = Instant::now();
        p.wait(&mut ev, Some(Duration::from_secs(10))).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(9),
            "a wait slept {:?} after round {seen}",
            t.elapsed()
        );
        if !ev.is_empty() {
            while (&a).read(&mut buf).is_ok() {}
            p.modify(&a, Event::readable(7)).unwrap();
        }
        let now = sent.load(Ordering::SeqCst);
        if now > seen {
            seen = now;
            ack.send(()).unwrap();
        }
    }
    notifier.join().unwrap();
}
