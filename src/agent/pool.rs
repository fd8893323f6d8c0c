//! One server of the agent and its pool of upgraded connections, waiting
//! for a tunnel: refilled in the background and kept alive with the
//! spec's PONG (`8A 00`) before their frame is sent; the dead are swept out.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{AsyncRead, future};
use smol::channel::{Receiver, Sender};

use super::handshake::{self, Tunnel, UpError, Upgraded, answers, open, request};
use crate::config::agent::UpstreamServer;
use crate::deadline::timeout;
use crate::metrics;
use crate::proto::socks5::Addr;
use crate::proto::ws;
use crate::tls::Stream;

/// A pooled connection and when it last sent a PONG.
struct Pooled {
    up: Upgraded,
    last_pong: Instant,
}

/// Is a pooled connection still open? A conforming server sends nothing
/// before our frame, so anything readable (data, EOF, error) means dead.
///
/// The first look registers interest in the socket's readability with the
/// reactor (one `epoll_ctl`, which the tunnel's wait for the server's
/// answer then reuses) and leaves it armed: until the reactor reports an
/// event, nothing arrived and the connection is taken as open without a
/// system call. Only after an event does it read, as a TLS session ticket
/// is an event but no data (rustls consumes it and the read blocks). So
/// the pool calls this as a connection enters it, and a server's close is
/// noticed from then on at no cost per tunnel. A close that the reactor
/// has not reported yet is missed; the tunnel then fails on it before any
/// byte of the client's went out, and [`super::group::Group::open`] retries
/// on a fresh connection.
fn still_open(s: &mut Stream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let tcp = Arc::<Async<std::net::TcpStream>>::from(s.tcp().clone());
    if tcp.poll_readable(&mut cx).is_pending() {
        return true;
    }
    // A read that would block means nothing arrived: alive (and interest
    // is armed again, for the next look).
    let mut b = [0u8; 1];
    Pin::new(s).poll_read(&mut cx, &mut b).is_pending()
}

/// Recent takes from the pool (hits and misses), for its size: the pool
/// grows to the most takes seen within one second over the last minute.
struct Demand {
    takes: VecDeque<Instant>,
}

/// Upgrades a refill runs at once.
const REFILL_AT_ONCE: usize = 8;

/// How far back demand is remembered.
const DEMAND_WINDOW: Duration = Duration::from_secs(60);
/// Takes remembered at most (a flood of takes costs bounded memory).
const DEMAND_KEPT: usize = 4096;

impl Demand {
    fn note(&mut self, now: Instant) {
        if self.takes.len() == DEMAND_KEPT {
            self.takes.pop_front();
        }
        self.takes.push_back(now);
    }

    /// The most takes within one second, over the window before `now`.
    fn peak(&mut self, now: Instant) -> usize {
        while self
            .takes
            .front()
            .is_some_and(|t| now.duration_since(*t) > DEMAND_WINDOW)
        {
            self.takes.pop_front();
        }
        let mut best = 0;
        let mut from = 0;
        for (i, t) in self.takes.iter().enumerate() {
            while t.duration_since(self.takes[from]) >= Duration::from_secs(1) {
                from += 1;
            }
            best = best.max(i + 1 - from);
        }
        best
    }
}

/// One server: its pool and health.
pub(crate) struct Upstream {
    pub server: UpstreamServer,
    /// Its figures for the metrics, kept across reloads by name.
    pub stats: Arc<metrics::ServerStats>,
    healthy: AtomicBool,
    /// Its last 101 said it keeps bytes pipelined behind the upgrade
    /// request (`WebSocks-Options: pipelining`): a fresh tunnel then sends
    /// upgrade, frame, greeting and CONNECT in one write.
    pipelining: AtomicBool,
    /// Set when a reload replaced this server: its tasks end.
    retired: AtomicBool,
    pool: Mutex<VecDeque<Pooled>>,
    demand: Mutex<Demand>,
    wake: Sender<()>,
    woken: Receiver<()>,
}

impl Upstream {
    pub(crate) fn new(server: UpstreamServer) -> Upstream {
        let (wake, woken) = smol::channel::bounded(1);
        Upstream {
            stats: metrics::server_stats(&server.name),
            server,
            healthy: AtomicBool::new(true),
            pipelining: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            pool: Mutex::new(VecDeque::new()),
            demand: Mutex::new(Demand {
                takes: VecDeque::new(),
            }),
            wake,
            woken,
        }
    }

    /// Upgrades a fresh connection within `limit`, and learns from the 101
    /// whether this server keeps pipelined bytes.
    pub(crate) async fn upgrade(&self, limit: Duration) -> Result<Upgraded, UpError> {
        let u = handshake::upgrade(&self.server, limit, &[]).await?;
        self.pipelining.store(u.pipelining, Ordering::Relaxed);
        Ok(u.conn)
    }

    /// Opens a tunnel to `dest` on a fresh connection (see
    /// [`handshake::open`] for the limits). To a server known to keep
    /// pipelined bytes the request goes with the upgrade, one round trip
    /// less; to any other, after the 101.
    pub(crate) async fn open_fresh(
        &self,
        dest: &Addr,
        limit: Duration,
        reply_limit: Duration,
    ) -> Result<Tunnel, UpError> {
        if self.pipelining.load(Ordering::Relaxed) {
            let u = handshake::upgrade(&self.server, limit, &request(dest)).await?;
            if u.pipelining {
                return answers(u.conn, limit, reply_limit).await;
            }
            // It no longer says so (another server behind the same URL):
            // whether it kept this request is unknown, so this connection
            // is dropped and the request goes again the careful way.
            self.pipelining.store(false, Ordering::Relaxed);
            log::info!(
                "server {} no longer announces pipelining: requests wait for the 101 again",
                self.server.name
            );
        }
        let conn = self.upgrade(limit).await?;
        open(conn, dest, limit, reply_limit).await
    }

    /// Upgraded connections waiting in the pool now.
    pub(crate) fn ready(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Stops the pool and health tasks and closes pooled connections.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let _ = self.wake.try_send(());
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Records a health state; logs changes.
    pub(crate) fn set_health(&self, ok: bool, why: &str) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        let s = &self.server;
        match (was, ok) {
            (true, false) => log::warn!("server {} ({}) is down: {why}", s.name, s.host_header),
            (false, true) => log::info!("server {} ({}) is up again", s.name, s.host_header),
            _ => {}
        }
    }

    /// A live pooled connection, if any; wakes the refiller.
    pub(crate) fn take_pooled(&self) -> Option<Upgraded> {
        self.demand
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(Instant::now());
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        while let Some(mut p) = pool.pop_front() {
            if still_open(&mut p.up.stream) {
                found = Some(p.up);
                break;
            }
        }
        drop(pool);
        let _ = self.wake.try_send(());
        found
    }

    fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many connections the pool should hold now: the busiest
    /// second's takes over the last minute, from `size` to `max`.
    fn target(&self, size: usize, max: usize) -> usize {
        let peak = self
            .demand
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peak(Instant::now());
        peak.clamp(size, max)
    }

    /// Closes the oldest pooled connections beyond `target`.
    fn trim(&self, target: usize) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        while pool.len() > target {
            pool.pop_front();
        }
    }

    /// Upgrades `n` connections at once, each into the pool as soon as it
    /// is ready (a take need not wait for the rest); false when one failed.
    async fn refill(&self, n: usize, limit: Duration) -> bool {
        let mut pending: Vec<_> = (0..n)
            .map(|_| Some(Box::pin(self.upgrade(limit))))
            .collect();
        let mut ok = true;
        future::poll_fn(|cx| {
            for slot in &mut pending {
                if let Some(f) = slot
                    && let std::task::Poll::Ready(r) = f.as_mut().poll(cx)
                {
                    *slot = None;
                    match r {
                        Ok(mut up) => {
                            self.set_health(true, "");
                            // Registers the watch for the server's close
                            // (see `still_open`); just upgraded, it is open.
                            still_open(&mut up.stream);
                            self.pool
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push_back(Pooled {
                                    up,
                                    last_pong: Instant::now(),
                                });
                        }
                        Err(e) => {
                            if ok {
                                self.set_health(false, &e.to_string());
                            }
                            ok = false;
                        }
                    }
                }
            }
            if pending.iter().all(Option::is_none) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        ok
    }

    /// Keeps the pool at its target (`size`, growing with demand up to
    /// `max`; see [`Self::target`]), refilled in parallel; sends PONGs
    /// every `keepalive`, drops dead entries; upgrades and PONGs each get
    /// `limit`. Runs until retired.
    pub(crate) async fn maintain_pool(
        self: Arc<Self>,
        size: usize,
        max: usize,
        keepalive: Duration,
        limit: Duration,
    ) {
        let tick = keepalive.min(Duration::from_secs(5)) / 2;
        let mut backoff = Duration::from_millis(250);
        // When the pool was last swept. A take wakes this loop to refill;
        // sweeping every pooled connection then too would cost a syscall
        // per entry on every new tunnel.
        let mut swept: Option<Instant> = None;
        while !self.is_retired() {
            if swept.is_none_or(|t| t.elapsed() >= tick) {
                self.sweep(keepalive, limit).await;
                swept = Some(Instant::now());
            }
            let target = self.target(size, max);
            self.trim(target);
            // A few at a time: a server counts handshakes per source
            // (`max_handshakes_per_source`, 64 at most by default), and
            // a health check or a client's fresh tunnel must still fit.
            let missing = target.saturating_sub(self.pooled()).min(REFILL_AT_ONCE);
            let failed = missing > 0 && !self.refill(missing, limit).await;
            if missing > 0 && !failed {
                backoff = Duration::from_millis(250);
            }
            let wait = if failed {
                backoff = (backoff * 2).min(Duration::from_secs(30));
                backoff
            } else if self.pooled() < target {
                // The next few at once.
                continue;
            } else {
                tick
            };
            // Until a take wakes us, or the wait is over.
            let _ = timeout(Instant::now() + wait, self.woken.recv()).await;
            if failed {
                // A take should not hammer a down server: honour the backoff.
                Timer::after(Duration::from_millis(50)).await;
            }
        }
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// PONGs for pooled connections that are due, each sent within
    /// `limit`; drops the dead.
    async fn sweep(&self, keepalive: Duration, limit: Duration) {
        let due: Vec<Pooled> = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let all: Vec<Pooled> = pool.drain(..).collect();
            let (due, fresh): (Vec<_>, Vec<_>) = all
                .into_iter()
                .partition(|p| p.last_pong.elapsed() >= keepalive);
            pool.extend(
                fresh
                    .into_iter()
                    .filter_map(|mut p| still_open(&mut p.up.stream).then_some(p)),
            );
            due
        };
        for mut p in due {
            p.up.deadline = Instant::now() + limit;
            let ok = still_open(&mut p.up.stream) && p.up.send(&ws::PONG).await.is_ok();
            if ok {
                p.last_pong = Instant::now();
                self.pool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_is_the_busiest_second_of_the_last_minute() {
        let t0 = Instant::now();
        let mut d = Demand {
            takes: VecDeque::new(),
        };
        assert_eq!(d.peak(t0), 0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // A burst of 5 within 100 ms, then 3 spread over 3 s.
        for i in 0..5 {
            d.note(ms(i * 20));
        }
        for i in 0..3 {
            d.note(ms(2000 + i * 1000));
        }
        assert_eq!(d.peak(ms(5000)), 5);
        // A burst across a second boundary counts whole.
        for i in 0..7 {
            d.note(ms(10_900 + i * 20));
        }
        assert_eq!(d.peak(ms(12_000)), 7);
        // A minute later the first burst is forgotten, then the second.
        assert_eq!(d.peak(ms(65_000)), 7);
        assert_eq!(d.peak(ms(72_000)), 0);
        assert!(d.takes.is_empty());
    }

    #[test]
    fn demand_is_bounded() {
        let t0 = Instant::now();
        let mut d = Demand {
            takes: VecDeque::new(),
        };
        for _ in 0..DEMAND_KEPT * 2 {
            d.note(t0);
        }
        assert_eq!(d.takes.len(), DEMAND_KEPT);
        assert_eq!(d.peak(t0), DEMAND_KEPT);
    }
}
