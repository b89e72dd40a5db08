//! The admin listener (`--admin-listen`, loopback by default): `GET /metrics` in the
//! Prometheus text format. It runs on its own small thread with blocking I/O, away from the
//! shards; a scrape reads the shards' counters with relaxed atomic loads and never stalls them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{self, ShardMetrics};

/// Binds the admin listener and serves it on a background thread. Returns the bound address.
pub fn spawn(addr: SocketAddr, shards: Vec<Arc<ShardMetrics>>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("customws-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = serve_one(&mut stream, &shards);
            }
        })?;
    Ok(bound)
}

fn serve_one(stream: &mut std::net::TcpStream, shards: &[Arc<ShardMetrics>]) -> io::Result<()> {
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
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(shards),
            )
        } else if head.starts_with(b"GET /healthz ") {
            (200, "application/json", r#"{"status":"ok"}"#.to_string())
        } else {
            (
                404,
                "application/json",
                r#"{"error":{"code":404,"message":"not found"}}"#.to_string(),
            )
        };
    let reason = if status == 200 { "OK" } else { "Not Found" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
