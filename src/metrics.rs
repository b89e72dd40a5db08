//! Per-shard counters and the Prometheus text exposition.
//!
//! Each shard owns one `ShardMetrics` and is its only writer, so an increment is a relaxed
//! load + store (no locked read-modify-write on the hot path); the admin thread reads every
//! shard's counters with relaxed loads and sums them. A scrape may see a counter a few
//! increments behind, never a torn or decreasing value.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($( $variant:ident => ($name:literal, $labels:literal, $kind:literal, $help:literal) ),* $(,)?) => {
        /// Every counter and gauge a shard keeps. The metric name, its labels and its type
        /// are fixed here, so exposition needs no allocation per sample.
        #[derive(Copy, Clone, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Metric { $( $variant ),* }

        const METRICS: &[(Metric, &str, &str, &str, &str)] = &[
            $( (Metric::$variant, $name, $labels, $kind, $help) ),*
        ];
    };
}

counters! {
    Connections => ("customws_connections", "", "gauge", "Open WebSocket connections."),
    HandshakesOk => ("customws_handshakes_total", "result=\"ok\"", "counter", "HTTP upgrades by outcome."),
    HsFailBadRequest => ("customws_handshakes_total", "result=\"bad_request\"", "counter", ""),
    HsFailBadVersion => ("customws_handshakes_total", "result=\"bad_version\"", "counter", ""),
    HsFailTooLarge => ("customws_handshakes_total", "result=\"headers_too_large\"", "counter", ""),
    HsFailUnauthorized => ("customws_handshakes_total", "result=\"unauthorized\"", "counter", ""),
    HsFailForbidden => ("customws_handshakes_total", "result=\"forbidden\"", "counter", ""),
    HsFailOverCapacity => ("customws_handshakes_total", "result=\"over_capacity\"", "counter", ""),
    HsFailDraining => ("customws_handshakes_total", "result=\"draining\"", "counter", ""),
    HsFailTimeout => ("customws_handshakes_total", "result=\"timeout\"", "counter", ""),
    HsFailNotFound => ("customws_handshakes_total", "result=\"not_found\"", "counter", ""),
    HttpOther => ("customws_http_requests_total", "", "counter", "Plain HTTP requests answered (healthz, index)."),
    MsgInData => ("customws_messages_in_total", "type=\"data_request\"", "counter", "Client messages received by envelope type."),
    MsgInPresence => ("customws_messages_in_total", "type=\"presence_update\"", "counter", ""),
    MsgInClientAck => ("customws_messages_in_total", "type=\"client_ack\"", "counter", ""),
    MsgInGenericRequest => ("customws_messages_in_total", "type=\"generic_request\"", "counter", ""),
    MsgInGenericResponse => ("customws_messages_in_total", "type=\"generic_response\"", "counter", ""),
    MsgInOther => ("customws_messages_in_total", "type=\"other\"", "counter", ""),
    MsgOutDataEvent => ("customws_messages_out_total", "type=\"data_event\"", "counter", "Server messages queued by envelope type."),
    MsgOutServerAck => ("customws_messages_out_total", "type=\"server_ack\"", "counter", ""),
    MsgOutError => ("customws_messages_out_total", "type=\"error_notification\"", "counter", ""),
    MsgOutPresence => ("customws_messages_out_total", "type=\"presence_event\"", "counter", ""),
    MsgOutGenericResponse => ("customws_messages_out_total", "type=\"generic_response\"", "counter", ""),
    MsgOutGenericRequest => ("customws_messages_out_total", "type=\"generic_request\"", "counter", ""),
    MsgOutOther => ("customws_messages_out_total", "type=\"other\"", "counter", ""),
    BytesIn => ("customws_bytes_in_total", "", "counter", "Bytes read from client sockets."),
    BytesOut => ("customws_bytes_out_total", "", "counter", "Bytes written to client sockets."),
    Deliveries => ("customws_deliveries_total", "", "counter", "Events queued on a recipient connection (P2P, multicast, broadcast)."),
    OfflineTargets => ("customws_offline_targets_total", "", "counter", "P2P sends whose target had no open connection."),
    Broadcasts => ("customws_broadcasts_total", "", "counter", "Broadcasts started."),
    PresenceEvents => ("customws_presence_events_total", "", "counter", "Presence events emitted."),
    CloseSlowConsumer => ("customws_closes_total", "reason=\"slow_consumer\"", "counter", "Server-initiated closes by reason."),
    CloseRateLimit => ("customws_closes_total", "reason=\"rate_limit\"", "counter", ""),
    CloseGarbage => ("customws_closes_total", "reason=\"garbage\"", "counter", ""),
    CloseProtocol => ("customws_closes_total", "reason=\"protocol_error\"", "counter", ""),
    CloseTooBig => ("customws_closes_total", "reason=\"too_big\"", "counter", ""),
    CloseKeepalive => ("customws_closes_total", "reason=\"keepalive_timeout\"", "counter", ""),
    CloseReplaced => ("customws_closes_total", "reason=\"replaced\"", "counter", ""),
    CloseExpired => ("customws_closes_total", "reason=\"token_expired\"", "counter", ""),
    CloseShutdown => ("customws_closes_total", "reason=\"shutdown\"", "counter", ""),
    CloseUnsupported => ("customws_closes_total", "reason=\"unsupported_data\"", "counter", ""),
    IoErrors => ("customws_io_errors_total", "", "counter", "Connections dropped on a socket error (counted, not logged one by one)."),
    CrossShardFull => ("customws_cross_shard_queue_full_total", "", "counter", "Pushes refused by a full cross-shard queue (retried next loop turn)."),
    CrossShardSent => ("customws_cross_shard_messages_total", "", "counter", "Messages pushed to other shards."),
    CrossShardBacklog => ("customws_cross_shard_backlog", "", "gauge", "Messages waiting for room in a full cross-shard queue."),
    Err400 => ("customws_errors_total", "code=\"400\"", "counter", "error_notifications sent by code."),
    Err401 => ("customws_errors_total", "code=\"401\"", "counter", ""),
    Err403 => ("customws_errors_total", "code=\"403\"", "counter", ""),
    Err404 => ("customws_errors_total", "code=\"404\"", "counter", ""),
    Err408 => ("customws_errors_total", "code=\"408\"", "counter", ""),
    Err413 => ("customws_errors_total", "code=\"413\"", "counter", ""),
    Err422 => ("customws_errors_total", "code=\"422\"", "counter", ""),
    Err429 => ("customws_errors_total", "code=\"429\"", "counter", ""),
    Err500 => ("customws_errors_total", "code=\"500\"", "counter", ""),
    Err501 => ("customws_errors_total", "code=\"501\"", "counter", ""),
    Err503 => ("customws_errors_total", "code=\"503\"", "counter", ""),
    Users => ("customws_users", "", "gauge", "Distinct users with at least one open connection."),
    LoopTurns => ("customws_loop_turns_total", "", "counter", "Event loop iterations."),
    SocketReads => ("customws_socket_syscalls_total", "op=\"read\"", "counter", "Read and write system calls on client sockets (messages per syscall is the batching the loop achieves)."),
    SocketWrites => ("customws_socket_syscalls_total", "op=\"write\"", "counter", ""),
}

const N: usize = METRICS.len();

impl Metric {
    /// The counter for an `error_notification` code.
    pub fn for_error_code(code: u16) -> Metric {
        match code {
            400 => Metric::Err400,
            401 => Metric::Err401,
            403 => Metric::Err403,
            404 => Metric::Err404,
            408 => Metric::Err408,
            413 => Metric::Err413,
            422 => Metric::Err422,
            429 => Metric::Err429,
            501 => Metric::Err501,
            503 => Metric::Err503,
            _ => Metric::Err500,
        }
    }
}

/// One shard's counters. Written by that shard only.
#[derive(Debug)]
pub struct ShardMetrics {
    values: [AtomicU64; N],
    /// Depth of each outgoing cross-shard queue, indexed by destination shard.
    queue_depth: Box<[AtomicU64]>,
}

impl ShardMetrics {
    pub fn new(shards: usize) -> Self {
        ShardMetrics {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            queue_depth: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds to a counter. Single writer: a relaxed load + store, not an atomic RMW.
    #[inline]
    pub fn add(&self, m: Metric, n: u64) {
        let c = &self.values[m as usize];
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self, m: Metric) {
        self.add(m, 1);
    }

    /// Sets a gauge.
    #[inline]
    pub fn set(&self, m: Metric, v: u64) {
        self.values[m as usize].store(v, Relaxed);
    }

    #[inline]
    pub fn get(&self, m: Metric) -> u64 {
        self.values[m as usize].load(Relaxed)
    }

    pub fn set_queue_depth(&self, to: usize, depth: usize) {
        if let Some(d) = self.queue_depth.get(to) {
            d.store(depth as u64, Relaxed);
        }
    }
}

/// Renders every shard's metrics in the Prometheus text exposition format (version 0.0.4).
/// Per-shard gauges carry a `shard` label; counters are summed over shards.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let mut last_name = "";
    for &(metric, name, labels, kind, _) in METRICS {
        if name != last_name {
            let help = METRICS
                .iter()
                .find(|(_, n, _, _, h)| *n == name && !h.is_empty())
                .map_or("", |m| m.4);
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            last_name = name;
        }
        if kind == "gauge" {
            for (i, s) in shards.iter().enumerate() {
                let sep = if labels.is_empty() { "" } else { "," };
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{i}\"{sep}{labels}}} {}",
                    s.get(metric)
                );
            }
        } else {
            let total: u64 = shards.iter().map(|s| s.get(metric)).sum();
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {total}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {total}");
            }
        }
    }
    let name = "customws_cross_shard_queue_depth";
    let _ = writeln!(
        out,
        "# HELP {name} Messages waiting in each cross-shard queue."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (from, s) in shards.iter().enumerate() {
        for (to, d) in s.queue_depth.iter().enumerate() {
            if from != to {
                let _ = writeln!(
                    out,
                    "{name}{{from=\"{from}\",to=\"{to}\"}} {}",
                    d.load(Relaxed)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn families_are_contiguous() {
        // Prometheus requires all samples of a family to be grouped under one TYPE line.
        let mut seen = std::collections::HashSet::new();
        let mut last = "";
        for (_, name, _, _, _) in METRICS {
            if *name != last {
                assert!(seen.insert(*name), "{name} appears in two separate groups");
                last = name;
            }
        }
    }

    #[test]
    fn counters_sum_over_shards_and_gauges_are_per_shard() {
        let a = Arc::new(ShardMetrics::new(2));
        let b = Arc::new(ShardMetrics::new(2));
        a.add(Metric::BytesIn, 5);
        b.add(Metric::BytesIn, 7);
        a.set(Metric::Connections, 3);
        let text = render(&[a, b]);
        assert!(text.lines().any(|l| l == "customws_bytes_in_total 12"));
        assert!(text
            .lines()
            .any(|l| l == "customws_connections{shard=\"0\"} 3"));
        assert!(text
            .lines()
            .any(|l| l == "customws_connections{shard=\"1\"} 0"));
    }
}
