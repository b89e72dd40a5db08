//! Starting and stopping a server: one thread per shard, plus the admin listener.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::{Poll, Waker};

use crate::config::Config;
use crate::metrics::{self, ShardMetrics};
use crate::queue::{self, ShardLinks};
use crate::shard::{self, listener, App, Shard, ShardParts, Shared};

/// A running server. Dropping it stops the shards (immediately); call [`Server::drain`]
/// and [`Server::join`] for a graceful stop.
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    wakers: Vec<Arc<Waker>>,
    metrics: Vec<Arc<ShardMetrics>>,
    threads: Mutex<Vec<JoinHandle<io::Result<()>>>>,
}

impl Server {
    /// Binds `config.listen` once per shard (`SO_REUSEPORT`) and starts the shard threads.
    /// `make_app(shard_id)` runs on each shard's own thread.
    pub fn start<A, F>(config: Config, make_app: F) -> io::Result<Server>
    where
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        Self::start_with_peers(config, make_app, Vec::new()).map(|(server, _)| server)
    }

    /// Like [`Server::start`], with extra endpoints in the queue mesh for threads that are not
    /// shards (the cluster bridge). `peer_wakers[i]` must be registered on that thread's own
    /// `Poll`; its [`ShardLinks`] is returned, and shards reach it as shard `shards + i`.
    pub fn start_with_peers<A, F>(
        config: Config,
        make_app: F,
        peer_wakers: Vec<Arc<Waker>>,
    ) -> io::Result<(Server, Vec<ShardLinks<shard::Cross<A>>>)>
    where
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        let shards = config.shards.get();
        let config = Arc::new(config);
        let (local_addr, listeners) = listener::bind_all(config.listen, shards)?;
        let mut polls = Vec::with_capacity(shards);
        let mut wakers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let poll = Poll::new()?;
            wakers.push(shard::new_waker(&poll)?);
            polls.push(poll);
        }
        let peers = peer_wakers.len();
        let mut mesh_wakers = wakers.clone();
        mesh_wakers.extend(peer_wakers);
        let mut links = queue::mesh::<shard::Cross<A>>(
            shards + peers,
            config.cross_shard_queue_capacity,
            mesh_wakers,
        );
        let peer_links = links.split_off(shards);
        let shared = Arc::new(Shared::default());
        let metrics: Vec<Arc<ShardMetrics>> = (0..shards)
            .map(|_| Arc::new(ShardMetrics::new(shards)))
            .collect();
        let make_app = Arc::new(make_app);
        let mut threads = Vec::with_capacity(shards);
        for (shard_id, ((poll, listener), links)) in
            polls.into_iter().zip(listeners).zip(links).enumerate()
        {
            let parts = ShardParts {
                shard_id,
                shards,
                poll,
                listener: Some(listener),
                links,
                config: config.clone(),
                shared: shared.clone(),
                metrics: metrics[shard_id].clone(),
            };
            let make_app = make_app.clone();
            let handle = std::thread::Builder::new()
                .name(format!("customws-shard-{shard_id}"))
                .spawn(move || {
                    let app = make_app(shard_id);
                    let shard = Shard::new(parts, app)?;
                    shard.run()
                })?;
            threads.push(handle);
        }
        let server = Server {
            local_addr,
            shared,
            wakers,
            metrics,
            threads: Mutex::new(threads),
        };
        Ok((server, peer_links))
    }

    /// State shared with the shards (drain and health flags).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The bound address (with the kernel's port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts a graceful drain: upgrades refused with 503, `/healthz` 503, every client
    /// closed with 1001; shards exit when their connections are gone or after the drain
    /// timeout.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Whether a drain was requested.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Stops every shard at its next turn, dropping connections.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake_all();
    }

    fn wake_all(&self) {
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Open WebSocket connections over all shards.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every shard's metrics.
    pub fn metrics_text(&self) -> String {
        metrics::render(&self.metrics)
    }

    /// Per-shard metrics handles (for the admin listener).
    pub fn metrics_handles(&self) -> Vec<Arc<ShardMetrics>> {
        self.metrics.clone()
    }

    /// Waits for every shard thread (they end after `stop`, or after a drain); returns the
    /// first error.
    pub fn wait(&self) -> io::Result<()> {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let mut result = Ok(());
        for t in threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                Err(_) => {
                    if result.is_ok() {
                        result = Err(io::Error::other("a shard thread panicked"));
                    }
                }
            }
        }
        result
    }

    /// Waits for every shard thread, consuming the server.
    pub fn join(self) -> io::Result<()> {
        self.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        if !threads.is_empty() {
            self.stop();
            for t in threads {
                let _ = t.join();
            }
        }
    }
}
