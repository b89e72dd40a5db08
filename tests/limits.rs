//! Connection life and limits over real sockets (spec section 6): keepalive, replaced
//! connections, message size, slow consumers, rate limits, persistent garbage, the total
//! connection cap, a reconnect storm, and the metrics exposition.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tungstenite::Message;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn keepalive_pings_and_drops_a_silent_peer() {
    let mut cfg = gateway_config(1);
    cfg.ping_interval = Duration::from_millis(200);
    cfg.pong_wait = Duration::from_millis(600);
    let server = gateway(cfg);
    let addr = server.local_addr();

    // A peer that upgrades and then never answers anything.
    let mut silent = TcpStream::connect(addr).unwrap();
    let t = token(1, "mute");
    silent
        .write_all(upgrade_request("/ws", &format!("Authorization: Bearer {t}\r\n")).as_bytes())
        .unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match silent.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(550),
        "dropped too early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "not dropped: {elapsed:?}");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let frames = &got[head_end..];
    assert!(
        frames.windows(2).any(|w| w == [0x89, 0x00]),
        "the server pinged: {frames:?}"
    );
    assert!(
        !frames.windows(1).any(|w| w == [0x88]),
        "dropped without a close frame (the peer is gone)"
    );

    // A peer that answers pings (tungstenite does) stays connected.
    let mut alive = User::connect(addr, 2, "alive");
    alive
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while Instant::now() < until {
        match alive.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                alive.ws.flush().unwrap();
            }
            Err(e) => panic!("the live connection was closed: {e:?}"),
        }
    }
    assert!(pings >= 3, "pings seen: {pings}");
    alive
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    alive.send(json!({"pid": "p", "type": "generic_request", "payload": {"action": "ping"}}));
    assert_eq!(alive.recv_type("generic_response")["pid"], "p");
}

#[test]
fn the_oldest_connection_is_replaced_past_the_per_user_limit() {
    let mut cfg = gateway_config(2);
    cfg.max_connections_per_user = std::num::NonZeroUsize::new(2).unwrap();
    let server = gateway(cfg);
    let addr = server.local_addr();
    let mut first = User::connect(addr, 1, "alice");
    let mut second = User::connect(addr, 1, "alice");
    let _third = User::connect(addr, 1, "alice");
    assert_eq!(first.expect_close(), Some(4000));
    second.send(json!({"pid": "p", "type": "generic_request", "payload": {"action": "ping"}}));
    assert_eq!(second.recv_type("generic_response")["pid"], "p");
}

#[test]
fn a_message_over_the_size_limit_closes_with_1009() {
    let mut cfg = gateway_config(1);
    cfg.max_message_size = 4096;
    let server = gateway(cfg);
    let mut alice = User::connect(server.local_addr(), 1, "alice");
    let big = format!(
        r#"{{"type":"data_request","payload":{{"x":"{}"}}}}"#,
        "a".repeat(5000)
    );
    alice.send_raw(&big);
    assert_eq!(alice.expect_close(), Some(1009));
}

/// How the flood reaches the slow consumer (each takes its own path into the outbound queue).
#[derive(Clone, Copy, PartialEq)]
enum Flood {
    /// P2P from another shard: a shared frame through the cross-shard queue.
    P2pCrossShard,
    /// P2P on one shard: the event is framed straight into the target's buffer.
    P2pSameShard,
    /// Broadcast: one shared frame queued on every connection in one pass.
    Broadcast,
}

#[test]
fn a_slow_consumer_is_closed_and_memory_stays_bounded() {
    slow_consumer_case(Flood::P2pCrossShard);
}

#[test]
fn a_slow_consumer_of_same_shard_p2p_is_closed() {
    slow_consumer_case(Flood::P2pSameShard);
}

#[test]
fn a_slow_consumer_of_broadcasts_is_closed() {
    slow_consumer_case(Flood::Broadcast);
}

fn slow_consumer_case(flood: Flood) {
    let shards = if flood == Flood::P2pCrossShard { 2 } else { 1 };
    let mut cfg = gateway_config(shards);
    cfg.outbound_queue_limit = 256 * 1024;
    cfg.rate_limit = 1_000_000;
    cfg.rate_burst = 1_000_000;
    let server = gateway(cfg);
    let addr = server.local_addr();
    // The slow consumer upgrades and never reads again.
    let mut slow = TcpStream::connect(addr).unwrap();
    let t = token(2, "slow");
    slow.write_all(upgrade_request("/ws", &format!("Authorization: Bearer {t}\r\n")).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // A bystander would receive the broadcasts too; it only checks P2P isolation.
    let mut bystander = (flood != Flood::Broadcast).then(|| User::connect(addr, 3, "carol"));
    let mut flooder = User::connect(addr, 1, "alice");
    let before = rss_kib();
    // ~200 MiB aimed at the slow consumer.
    let chunk = "z".repeat(16 * 1024);
    let target = if flood == Flood::Broadcast {
        String::new()
    } else {
        r#""targetUserId":2,"#.to_string()
    };
    let msg = format!(r#"{{"type":"data_request",{target}"payload":{{"x":"{chunk}"}}}}"#);
    for i in 0..12_800 {
        flooder.ws.write(Message::text(msg.clone())).unwrap();
        if i % 32 == 0 {
            flooder.ws.flush().unwrap();
        }
    }
    flooder.ws.flush().unwrap();
    // Once the slow consumer is gone, P2P to it answers 404 (after a broadcast flood too:
    // the broadcast pass dropped it).
    flooder.send(json!({"pid": "probe", "type": "data_request", "targetUserId": 2, "payload": {}}));
    loop {
        let v = flooder.recv();
        if v["type"] == "error_notification" && v["error"]["originalPid"] == "probe" {
            assert_eq!(v["error"]["code"], 404);
            break;
        }
    }
    let after = rss_kib();
    let grown = after.saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB while flooding a slow consumer (before {before}, after {after})"
    );
    // The slow consumer saw 1013 or a dropped connection.
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    let _ = slow.read_to_end(&mut all);
    // Other users are unaffected.
    if let Some(bystander) = bystander.as_mut() {
        flooder.send(
            json!({"pid": "ok", "type": "data_request", "targetUserId": 3, "payload": {"hi": 1}}),
        );
        assert_eq!(bystander.recv_type("data_event")["payload"]["hi"], 1);
    }
    let text = server.metrics_text();
    assert!(
        text.contains("customws_closes_total{reason=\"slow_consumer\"} 1"),
        "{text}"
    );
}

#[test]
fn rate_limit_answers_429_then_closes_with_1008() {
    let mut cfg = gateway_config(1);
    cfg.rate_limit = 1;
    cfg.rate_burst = 5;
    cfg.rate_abuse_threshold = 10;
    let server = gateway(cfg);
    let mut alice = User::connect(server.local_addr(), 1, "alice");
    for i in 0..40 {
        alice.send(json!({"pid": format!("r{i}"), "type": "generic_request", "payload": {"action": "ping"}}));
    }
    let mut ok = 0;
    let mut limited = 0;
    let code = loop {
        match next_data(&mut alice.ws) {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str().unwrap() {
                    "generic_response" => ok += 1,
                    "error_notification" => {
                        assert_eq!(v["error"]["code"], 429);
                        assert!(v["error"]["originalPid"].is_string());
                        limited += 1;
                    }
                    _ => {}
                }
            }
            Message::Close(f) => break f.map(|f| u16::from(f.code)),
            _ => {}
        }
    };
    assert_eq!(ok, 5, "the burst passes");
    assert_eq!(limited, 11, "429s until the abuse threshold");
    assert_eq!(code, Some(1008));
}

#[test]
fn persistent_garbage_closes_with_1008() {
    let mut cfg = gateway_config(1);
    cfg.garbage_threshold = 5;
    let server = gateway(cfg);
    let mut alice = User::connect(server.local_addr(), 1, "alice");
    for _ in 0..6 {
        alice.send_raw("{nope");
    }
    let mut errors = 0;
    let code = loop {
        match next_data(&mut alice.ws) {
            Message::Text(t) if t.as_str().contains("error_notification") => errors += 1,
            Message::Text(_) => {}
            Message::Close(f) => break f.map(|f| u16::from(f.code)),
            _ => {}
        }
    };
    assert_eq!(errors, 6);
    assert_eq!(code, Some(1008));
}

#[test]
fn total_connections_are_capped_with_503() {
    let mut cfg = gateway_config(2);
    cfg.max_connections = 3;
    let server = gateway(cfg);
    let addr = server.local_addr();
    let users: Vec<User> = (1..=3).map(|i| User::connect(addr, i, "u")).collect();
    let t = token(9, "late");
    let resp = raw_exchange(
        addr,
        upgrade_request("/ws", &format!("Authorization: Bearer {t}\r\n")).as_bytes(),
        Duration::from_secs(3),
    );
    assert_eq!(status_of(&resp), 503);
    assert_eq!(body_of(&resp)["error"]["code"], 503);
    drop(users);
    assert!(wait_until(Duration::from_secs(5), || server
        .open_connections()
        == 0));
    let _again = User::connect(addr, 9, "late");
}

#[test]
fn a_reconnect_storm_does_not_stall_accepts() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let old: Vec<User> = (0..1500)
        .map(|i| User::connect(addr, 1000 + i, "old"))
        .collect();
    assert!(wait_until(Duration::from_secs(10), || server
        .open_connections()
        == 1500));
    // Close them all at once while new connections arrive.
    let closer = std::thread::spawn(move || drop(old));
    let fresh: Vec<User> = (0..500)
        .map(|i| User::connect(addr, 5000 + i, "new"))
        .collect();
    closer.join().unwrap();
    assert!(wait_until(Duration::from_secs(10), || server
        .open_connections()
        == 500));
    drop(fresh);
}

#[test]
fn handshake_header_limits_are_configurable() {
    let mut cfg = gateway_config(1);
    cfg.max_header_bytes = 1024;
    cfg.max_headers = 10;
    let server = gateway(cfg);
    let addr = server.local_addr();
    let resp = raw_exchange(
        addr,
        upgrade_request("/ws", &format!("X-Pad: {}\r\n", "p".repeat(1100))).as_bytes(),
        Duration::from_secs(3),
    );
    assert_eq!(status_of(&resp), 431);
    let resp = raw_exchange(
        addr,
        upgrade_request("/ws", &"X-A: 1\r\n".repeat(11)).as_bytes(),
        Duration::from_secs(3),
    );
    assert_eq!(status_of(&resp), 431);
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let mut a = User::connect(addr, 1, "alice");
    let mut b = User::connect(addr, 2, "bob");
    a.send(json!({"pid": "m", "type": "data_request", "targetUserId": 2, "payload": {}}));
    b.recv_type("data_event");
    a.recv_type("server_ack");
    // Through the admin listener, as an operator scrapes it.
    let admin =
        customws::admin::spawn("127.0.0.1:0".parse().unwrap(), server.metrics_handles()).unwrap();
    let resp = raw_exchange(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert_eq!(status_of(&resp), 200);
    let text = String::from_utf8(resp).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(value("customws_deliveries_total", None) >= 1.0);
    assert_eq!(
        value("customws_messages_in_total", Some(("type", "data_request"))),
        1.0
    );
    assert_eq!(
        value("customws_messages_out_total", Some(("type", "server_ack"))),
        1.0
    );
    assert_eq!(
        value("customws_handshakes_total", Some(("result", "ok"))),
        2.0
    );
    assert_eq!(value("customws_connections", None), 2.0);
    assert!(scrape.docs.contains_key("customws_bytes_in_total"));
    // The public listener does not serve metrics.
    let resp = raw_exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert_eq!(status_of(&resp), 404);
}
