//! Several servers at once (cluster nodes): target lists, lining up load processes, and the
//! figures that only exist with several nodes (Redis CPU, cross-node share of P2P sends).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::procfs::Sample;
use crate::Shared;

/// Longest wait for `--wait-file`.
const WAIT_FILE_LIMIT: Duration = Duration::from_secs(3600);

/// `--targets` when given, else `--addr`; never empty.
pub fn resolve_targets(addr: &str, targets: &[String]) -> Result<Vec<SocketAddr>, String> {
    let names: Vec<&str> = if targets.is_empty() {
        vec![addr]
    } else {
        targets.iter().map(String::as_str).collect()
    };
    names
        .into_iter()
        .map(|name| {
            name.to_socket_addrs()
                .map_err(|e| format!("target {name}: {e}"))?
                .next()
                .ok_or_else(|| format!("target {name}: no address"))
        })
        .collect()
}

/// Waits until `path` exists (at most an hour); returns at once without a path.
pub fn wait_for_file(path: Option<&Path>) {
    let Some(path) = path else { return };
    let deadline = Instant::now() + WAIT_FILE_LIMIT;
    while !path.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Redis's CPU over the window, total and per message, printed and put in the JSON line.
pub fn report_redis(
    out: &mut Value,
    (a, b): (Option<Sample>, Option<Sample>),
    messages: u64,
    window: Duration,
) {
    let (Some(a), Some(b)) = (a, b) else { return };
    let cpu = b.cpu_ns.saturating_sub(a.cpu_ns);
    let sched = b.sched_ns.saturating_sub(a.sched_ns);
    let util = cpu as f64 / window.as_nanos().max(1) as f64;
    let per = cpu as f64 / messages.max(1) as f64;
    let per_sched = sched as f64 / messages.max(1) as f64;
    println!(
        "  redis CPU: {:.1} ms ({:.0}% of one core), {per:.0} ns per delivery (schedstat: {per_sched:.0} ns)",
        cpu as f64 / 1e6,
        util * 100.0
    );
    out["redis_cpu_ns"] = json!(cpu);
    out["redis_cpu_util"] = json!(util);
    out["redis_cpu_ns_per_msg"] = json!(per);
    out["redis_sched_ns_per_msg"] = json!(per_sched);
}

/// Share of the window's P2P sends addressed to a user served by another target.
pub fn report_cross(out: &mut Value, shared: &Shared, window_sent: u64) {
    let cross = shared.cross_target.load(Ordering::Relaxed);
    let fraction = cross as f64 / window_sent.max(1) as f64;
    println!(
        "  cross-node sends: {cross} of {window_sent} ({:.1}%)",
        fraction * 100.0
    );
    out["cross_node_sent"] = json!(cross);
    out["cross_node_fraction"] = json!(fraction);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_fall_back_to_addr() {
        let t = resolve_targets("127.0.0.1:9000", &[]).unwrap();
        assert_eq!(t, vec!["127.0.0.1:9000".parse().unwrap()]);
        let t = resolve_targets(
            "127.0.0.1:9000",
            &["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()],
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].port(), 2);
    }
}
