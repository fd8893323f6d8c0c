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
use crate::config::agent::Agent;
use crate::{agent, server};

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

/// What a listener serves.
#[derive(Clone)]
pub enum Service {
    Server(Arc<Server>),
    Agent(Arc<agent::State>, agent::Kind),
}

impl Service {
    fn max_connections(&self) -> usize {
        match self {
            Service::Server(c) => c.max_connections,
            Service::Agent(st, _) => st.cfg.max_connections,
        }
    }
}

/// Accepts on `listener` forever, spawning one task per connection.
pub async fn accept_loop(
    ex: Arc<Executor<'static>>,
    listener: TcpListener,
    service: Service,
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
        let max = service.max_connections();
        let Some(slot) = slots.take(max) else {
            // Over the limit: close at once; log at most once a second.
            if refused_logged.elapsed() >= Duration::from_secs(1) {
                log::warn!("max_connections ({max}) reached: closing new connection from {peer}");
                refused_logged = std::time::Instant::now();
            }
            drop(stream);
            continue;
        };
        let service = service.clone();
        ex.spawn(async move {
            let _slot = slot;
            match service {
                Service::Server(cfg) => server::serve(stream, peer, cfg).await,
                Service::Agent(st, kind) => agent::serve(stream, peer, kind, st).await,
            }
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

/// Runs the server and/or the agent until the process is killed.
pub fn run(server: Option<Server>, agent: Option<Agent>) -> io::Result<()> {
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
    smol::block_on(ex.run(async {
        // Each side counts its own connections against its own limit.
        let mut plan: Vec<(&str, Vec<SocketAddr>, Service, Arc<Slots>)> = Vec::new();
        if let Some(cfg) = server {
            let listen = cfg.listen.clone();
            plan.push((
                "server",
                listen,
                Service::Server(Arc::new(cfg)),
                Arc::new(Slots::new()),
            ));
        }
        if let Some(cfg) = agent {
            let groups = agent::upstream::start(&cfg, &ex);
            let lists = [
                ("agent socks5", cfg.socks5.clone(), agent::Kind::Socks5),
                ("agent http", cfg.http.clone(), agent::Kind::Http),
                ("agent mixed", cfg.mixed.clone(), agent::Kind::Mixed),
            ];
            let st = Arc::new(agent::State { cfg, groups });
            let slots = Arc::new(Slots::new());
            for (name, addrs, kind) in lists {
                if !addrs.is_empty() {
                    plan.push((name, addrs, Service::Agent(st.clone(), kind), slots.clone()));
                }
            }
        }
        let mut loops = Vec::new();
        for (name, addrs, service, slots) in plan {
            for l in bind_all(&addrs).await? {
                log::info!("{name} listening on {}", l.local_addr()?);
                loops.push(ex.spawn(accept_loop(ex.clone(), l, service.clone(), slots.clone())));
            }
        }
        for t in loops {
            t.await;
        }
        Ok(())
    }))
}
