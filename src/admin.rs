//! The admin listener (`--admin-listen`, loopback by default): `GET /metrics` in the
//! Prometheus text format. It runs on its own small thread with blocking I/O, away from the
//! shards; a scrape reads the shards' counters with relaxed atomic loads and never stalls them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::cluster::ClusterMetrics;
use crate::metrics::{self, ShardMetrics};
use crate::shard::Shared;

/// Binds the admin listener and serves it on a background thread. Returns the bound address.
pub fn spawn(addr: SocketAddr, shards: Vec<Arc<ShardMetrics>>) -> io::Result<SocketAddr> {
    spawn_with(
        addr,
        Sources {
            shards,
            shared: None,
            cluster: None,
        },
    )
}

/// What the admin listener reports on.
pub struct Sources {
    pub shards: Vec<Arc<ShardMetrics>>,
    /// Drain and health flags: `/healthz` answers 503 while draining or degraded.
    pub shared: Option<Arc<Shared>>,
    /// The cluster bridge's metrics, appended to `/metrics`.
    pub cluster: Option<Arc<ClusterMetrics>>,
}

/// Like [`spawn`], with health flags and cluster metrics.
pub fn spawn_with(addr: SocketAddr, sources: Sources) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("customws-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = serve_one(&mut stream, &sources);
            }
        })?;
    Ok(bound)
}

fn serve_one(stream: &mut std::net::TcpStream, sources: &Sources) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let k = stream.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = &buf[..n];
    let (status, ctype, body) =
        if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
            let mut text = metrics::render(&sources.shards);
            if let Some(cluster) = &sources.cluster {
                cluster.render(&mut text);
            }
            (200, "text/plain; version=0.0.4; charset=utf-8", text)
        } else if head.starts_with(b"GET /healthz ") {
            let flag = |f: fn(&Shared) -> &AtomicBool| {
                sources
                    .shared
                    .as_ref()
                    .is_some_and(|s| f(s).load(Ordering::Relaxed))
            };
            if flag(|s| &s.draining) {
                (
                    503,
                    "application/json",
                    r#"{"status":"draining"}"#.to_string(),
                )
            } else if flag(|s| &s.degraded) {
                (
                    503,
                    "application/json",
                    r#"{"status":"degraded"}"#.to_string(),
                )
            } else {
                (200, "application/json", r#"{"status":"ok"}"#.to_string())
            }
        } else {
            (
                404,
                "application/json",
                r#"{"error":{"code":404,"message":"not found"}}"#.to_string(),
            )
        };
    let reason = match status {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
