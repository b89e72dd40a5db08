//! Cluster mode: several `customws serve` nodes behave as one gateway, through Redis.
//!
//! ```text
//!  shard 0 ─┐  SPSC ring  ┌──────────── bridge thread (mio) ────────────┐
//!  shard 1 ─┼──────────▶  │ cmd conn: SPUBLISH batches, SET heartbeat key │ ──▶ Redis
//!  shard N ─┘ ◀────────── │ sub conn: SSUBSCRIBE cws:all + cws:u:<user>   │ ◀── (pub/sub)
//!                         └────────────────────────────────────────────────┘
//! ```
//!
//! * **Interest-based routing.** A node subscribes (Redis 7 sharded pub/sub) to the channel
//!   `cws:u:<id>` of every user it holds a connection of, and to `cws:all`. A P2P message for
//!   a user who is not (only) local is published on the user's channel; the receiver count
//!   Redis returns answers "is this user online anywhere" for the 404.
//! * **Presence** deltas, heartbeats and snapshots travel on `cws:all`; see
//!   [`membership`] for how a node learns the others' users and declares a silent node dead
//!   within three heartbeats. The user's home shard on each node combines local connections
//!   with the remote nodes holding the user, so each node emits one online and one offline
//!   event per user to its own clients.
//! * **A shard never waits on Redis**: it pushes to the bridge through the same lock-free
//!   rings as between shards; the bridge batches every publish of a loop turn into one write
//!   (pipelining) and answers acks, 404s and 503s back through the rings.
//! * **Failure is never silent.** The bridge publishes a heartbeat on `cws:all` and expects to
//!   hear its own heartbeat back; a broken or stalled link turns `/healthz` 503, makes
//!   cross-node sends answer `error_notification` 503, and the bridge reconnects with
//!   backoff, re-subscribes and re-announces its users by itself.

pub mod bridge;
pub mod membership;
pub mod resp;
pub mod wire;

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::gateway::{GatewayFactory, Handler};
use crate::server::Server;

/// The shared channel: broadcasts, presence deltas, heartbeats, snapshots.
pub const ALL_CHANNEL: &[u8] = b"cws:all";

/// Appends the channel of one user (`cws:u:<id>`).
pub fn user_channel(out: &mut Vec<u8>, user: u64) {
    out.extend_from_slice(b"cws:u:");
    out.extend_from_slice(itoa::Buffer::new().format(user).as_bytes());
}

/// What every gateway shard knows about the cluster: where the bridge is and whether it is
/// connected. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClusterLink {
    up: Arc<AtomicBool>,
    /// The bridge's endpoint in the queue mesh (= the number of shards).
    pub endpoint: usize,
}

impl ClusterLink {
    pub fn new(endpoint: usize) -> Self {
        ClusterLink {
            up: Arc::new(AtomicBool::new(false)),
            endpoint,
        }
    }

    /// Whether the bridge is connected to Redis and hears its own heartbeats.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Relaxed);
    }
}

/// The running bridge thread.
pub struct Bridge {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    metrics: Arc<ClusterMetrics>,
}

impl Bridge {
    pub fn metrics(&self) -> Arc<ClusterMetrics> {
        self.metrics.clone()
    }

    /// Tells the other nodes this node is leaving (best effort) and stops the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts the gateway: its shards and, when `config.cluster` is set, the bridge to Redis.
pub fn start_gateway<H, F>(
    config: Config,
    factory: GatewayFactory<F>,
) -> io::Result<(Server, Option<Bridge>)>
where
    H: Handler,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    let Some(cluster) = config.cluster.clone() else {
        let server = Server::start(config, move |shard| factory.build::<H>(shard))?;
        return Ok((server, None));
    };
    let shards = config.shards.get();
    let poll = mio::Poll::new()?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), bridge::WAKE_TOKEN)?);
    let link = ClusterLink::new(shards);
    let factory = factory.with_cluster(link.clone());
    let (server, mut peers) = Server::start_with_peers(
        config,
        move |shard| factory.build::<H>(shard),
        vec![waker.clone()],
    )?;
    let links = peers
        .pop()
        .ok_or_else(|| io::Error::other("no bridge endpoint"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(ClusterMetrics::default());
    let parts = bridge::BridgeParts {
        poll,
        links,
        shards,
        config: cluster,
        link,
        shared: server.shared(),
        metrics: metrics.clone(),
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("customws-cluster".into())
        .spawn(move || bridge::run(parts))?;
    Ok((
        server,
        Some(Bridge {
            thread: Some(thread),
            stop,
            waker,
            metrics,
        }),
    ))
}

/// Counters of the bridge, rendered after the shards' metrics.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub publishes: AtomicU64,
    pub publish_batches: AtomicU64,
    pub publish_bytes: AtomicU64,
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    pub decode_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub link_up: AtomicU64,
    pub remote_nodes: AtomicU64,
    pub remote_presence_entries: AtomicU64,
    pub pending_replies: AtomicU64,
    pub unavailable: AtomicU64,
    pub nodes_declared_dead: AtomicU64,
    pub sync_requests: AtomicU64,
    pub snapshots_sent: AtomicU64,
    /// Round trip of the bridge's own heartbeat through Redis, in microseconds.
    pub heartbeat_rtt_us: AtomicU64,
}

impl ClusterMetrics {
    /// Appends the Prometheus text of the bridge's metrics.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 16] = [
            (
                "customws_cluster_publishes_total",
                "counter",
                "Messages published to Redis",
                &self.publishes,
            ),
            (
                "customws_cluster_publish_batches_total",
                "counter",
                "Pipelined writes of publishes (publishes / batches = mean batch size)",
                &self.publish_batches,
            ),
            (
                "customws_cluster_publish_bytes_total",
                "counter",
                "Bytes of published messages",
                &self.publish_bytes,
            ),
            (
                "customws_cluster_received_total",
                "counter",
                "Messages received from Redis pub/sub",
                &self.received,
            ),
            (
                "customws_cluster_received_bytes_total",
                "counter",
                "Bytes of received messages",
                &self.received_bytes,
            ),
            (
                "customws_cluster_decode_errors_total",
                "counter",
                "Received messages dropped as malformed",
                &self.decode_errors,
            ),
            (
                "customws_cluster_reconnects_total",
                "counter",
                "Connections (re)established to Redis",
                &self.reconnects,
            ),
            (
                "customws_cluster_link_up",
                "gauge",
                "1 while the Redis link works (own heartbeat heard back)",
                &self.link_up,
            ),
            (
                "customws_cluster_remote_nodes",
                "gauge",
                "Other nodes considered alive",
                &self.remote_nodes,
            ),
            (
                "customws_cluster_remote_presence_entries",
                "gauge",
                "Users online on other nodes (per node holding them)",
                &self.remote_presence_entries,
            ),
            (
                "customws_cluster_pending_replies",
                "gauge",
                "Commands sent to Redis and not answered yet (lag)",
                &self.pending_replies,
            ),
            (
                "customws_cluster_unavailable_total",
                "counter",
                "Cross-node sends answered 503 because the link was down",
                &self.unavailable,
            ),
            (
                "customws_cluster_nodes_declared_dead_total",
                "counter",
                "Nodes declared dead after missed heartbeats",
                &self.nodes_declared_dead,
            ),
            (
                "customws_cluster_sync_requests_total",
                "counter",
                "Snapshots requested from other nodes",
                &self.sync_requests,
            ),
            (
                "customws_cluster_snapshots_sent_total",
                "counter",
                "Presence snapshots published",
                &self.snapshots_sent,
            ),
            (
                "customws_cluster_heartbeat_rtt_microseconds",
                "gauge",
                "Last round trip of this node's heartbeat through Redis",
                &self.heartbeat_rtt_us,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", value.load(Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_metrics_text() {
        let mut ch = Vec::new();
        user_channel(&mut ch, 42);
        assert_eq!(ch, b"cws:u:42");
        let m = ClusterMetrics::default();
        m.publishes.store(3, Relaxed);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("\ncustomws_cluster_publishes_total 3\n"));
        assert_eq!(out.lines().filter(|l| l.starts_with("# TYPE")).count(), 16);
    }
}
