//! Process glue: bind the listeners, run the accept loops on a small smol
//! executor, bound the number of connections, survive accept errors.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_io::Timer;
use async_net::TcpListener;
use smol::Executor;

use crate::config::Server;
use crate::server;

/// Counts live connections; a slot is released when its guard drops.
pub struct Slots {
    live: AtomicUsize,
}

pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new() -> Slots {
        Slots {
            live: AtomicUsize::new(0),
        }
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Takes a slot unless `max` are in use.
    pub fn take(self: &Arc<Self>, max: usize) -> Option<Slot> {
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

/// Accept errors that mean "out of a resource for now" rather than "this
/// one connection failed": back off instead of spinning.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            23 /* ENFILE */ | 24 /* EMFILE */ | 12 /* ENOMEM */ | 105 /* ENOBUFS */
        )
    )
}

/// Accepts on `listener` forever, spawning one task per connection.
pub async fn accept_loop(
    ex: Arc<Executor<'static>>,
    listener: TcpListener,
    cfg: Arc<Server>,
    slots: Arc<Slots>,
) {
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                if is_resource_error(&e) {
                    log::warn!("accept: {e}; pausing 100 ms");
                    Timer::after(Duration::from_millis(100)).await;
                } else {
                    log::debug!("accept: {e}");
                }
                continue;
            }
        };
        let max = cfg.max_connections;
        let Some(slot) = slots.take(max) else {
            // Over the limit: close at once; log at most once a second.
            if refused_logged.elapsed() >= Duration::from_secs(1) {
                log::warn!("max_connections ({max}) reached: closing new connection from {peer}");
                refused_logged = std::time::Instant::now();
            }
            drop(stream);
            continue;
        };
        let cfg = cfg.clone();
        ex.spawn(async move {
            let _slot = slot;
            server::serve(stream, peer, cfg).await;
        })
        .detach();
    }
}

/// Binds every configured address, or fails naming the one that did not.
pub async fn bind_all(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        out.push(l);
    }
    Ok(out)
}

/// Runs the server until the process is killed.
pub fn run_server(cfg: Server) -> io::Result<()> {
    let ex = Arc::new(Executor::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for i in 1..threads {
        let ex = ex.clone();
        std::thread::Builder::new()
            .name(format!("websocks-{i}"))
            .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))?;
    }
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Slots::new());
    smol::block_on(ex.run(async {
        let listeners = bind_all(&cfg.listen).await?;
        for l in &listeners {
            log::info!("server listening on {}", l.local_addr()?);
        }
        let loops: Vec<_> = listeners
            .into_iter()
            .map(|l| ex.spawn(accept_loop(ex.clone(), l, cfg.clone(), slots.clone())))
            .collect();
        for t in loops {
            t.await;
        }
        Ok(())
    }))
}
