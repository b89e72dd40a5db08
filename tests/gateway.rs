//! The customws protocol over real sockets with two shards: every rule of spec section 5.
//! With two shards, user 1 lives on shard 1 and user 2 on shard 0 (home = id % shards), so
//! a message between them crosses shards; `users_live_on_their_home_shards` proves it.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn shard_gauge(server: &customws::Server, shard: usize) -> u64 {
    let text = server.metrics_text();
    let prefix = format!("customws_users{{shard=\"{shard}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn users_live_on_their_home_shards() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let _a = User::connect(addr, 1, "alice");
    assert!(wait_until(Duration::from_secs(5), || shard_gauge(
        &server, 1
    ) == 1
        && shard_gauge(&server, 0) == 0));
    let _b = User::connect(addr, 2, "bob");
    assert!(wait_until(Duration::from_secs(5), || shard_gauge(
        &server, 1
    ) == 1
        && shard_gauge(&server, 0) == 1));
}

#[test]
fn p2p_across_shards_with_server_fields_and_ack() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let mut bob = User::connect(addr, 2, "bob");
    let mut alice = User::connect(addr, 1, "alice");
    let rfc3339 = |ms: u128| {
        let mut out = Vec::new();
        customws::proto::envelope::format_rfc3339_millis(ms as u64, &mut out);
        String::from_utf8(out).unwrap()
    };
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let sent = rfc3339(unix_ms());
    alice.send(json!({
        "pid": "m1", "type": "data_request", "targetUserId": 2,
        "payload": {"action": "send_message", "resource": "chat", "data": {"text": "hi"},
                    "senderName": "mallory", "timestamp": "1999", "messageId": "fake"}
    }));
    let ev = bob.recv_type("data_event");
    let received = rfc3339(unix_ms());
    assert_eq!(ev["fromUserId"], 1);
    let p = &ev["payload"];
    assert_eq!(p["data"]["text"], "hi");
    assert_eq!(p["action"], "send_message");
    assert_eq!(
        p["senderName"], "alice",
        "server overrides client-supplied senderName"
    );
    assert_ne!(p["messageId"], "fake");
    assert!(p["messageId"].as_str().unwrap().len() > 3);
    let ts = p["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "RFC 3339 with milliseconds: {ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    // The server's clock at the time of the message (fixed-width RFC 3339 sorts as text).
    assert!(
        sent.as_str() <= ts && ts <= received.as_str(),
        "{sent} <= {ts} <= {received}"
    );
    let ack = alice.recv_type("server_ack");
    assert_eq!(ack["payload"]["acknowledgedPid"], "m1");
    assert_eq!(ack["payload"]["status"], "delivered");
}

#[test]
fn p2p_reaches_every_connection_of_the_target() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let mut b1 = User::connect(addr, 2, "bob");
    let mut b2 = User::connect(addr, 2, "bob");
    let mut alice = User::connect(addr, 1, "alice");
    alice.send(json!({"type": "data_request", "targetUserId": 2, "payload": {"n": 1}}));
    assert_eq!(b1.recv_type("data_event")["payload"]["n"], 1);
    assert_eq!(b2.recv_type("data_event")["payload"]["n"], 1);
}

#[test]
fn p2p_to_an_offline_user_is_404_with_original_pid() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let mut alice = User::connect(addr, 1, "alice");
    for target in [2, 3] {
        alice.send(json!({"pid": format!("x{target}"), "type": "data_request", "targetUserId": target, "payload": {}}));
        let err = alice.recv_type("error_notification");
        assert_eq!(err["error"]["code"], 404);
        assert_eq!(err["error"]["originalPid"], format!("x{target}"));
    }
}

#[test]
fn broadcast_reaches_everyone_but_the_sending_connection() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let mut a1 = User::connect(addr, 1, "alice");
    let mut a2 = User::connect(addr, 1, "alice");
    let mut bob = User::connect(addr, 2, "bob");
    let mut carol = User::connect(addr, 3, "carol");
    a1.send(json!({"pid": "b", "type": "data_request", "payload": {"hello": "all"}}));
    for u in [&mut a2, &mut bob, &mut carol] {
        let ev = u.recv_type("data_event");
        assert_eq!(ev["payload"]["hello"], "all");
        assert_eq!(ev["fromUserId"], 1);
    }
    assert_eq!(
        a1.recv_type("server_ack")["payload"]["acknowledgedPid"],
        "b"
    );
    // The sender's connection got no copy of its own broadcast.
    a1.send(json!({"pid": "p", "type": "generic_request", "payload": {"action": "ping"}}));
    let next = a1.recv();
    assert_eq!(next["type"], "generic_response", "got {next}");
}

#[test]
fn notification_multicast_reaches_only_the_listed_users() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let mut bob = User::connect(addr, 2, "bob");
    let mut carol = User::connect(addr, 3, "carol");
    let mut dave = User::connect(addr, 4, "dave");
    let mut alice = User::connect(addr, 1, "alice");
    alice.send(json!({"pid": "n", "type": "data_request",
        "payload": {"resource": "notification", "data": {"targetUsers": [2, 3], "title": "t"}}}));
    assert_eq!(bob.recv_type("data_event")["payload"]["data"]["title"], "t");
    assert_eq!(
        carol.recv_type("data_event")["payload"]["data"]["title"],
        "t"
    );
    assert_eq!(
        alice.recv_type("server_ack")["payload"]["acknowledgedPid"],
        "n"
    );
    // Dave gets nothing: his next data_event is the probe below, not the notification.
    bob.send(json!({"type": "data_request", "targetUserId": 4, "payload": {"probe": true}}));
    assert_eq!(dave.recv_type("data_event")["payload"]["probe"], true);
}

#[test]
fn notification_target_list_is_capped() {
    let mut cfg = gateway_config(2);
    cfg.max_notification_targets = 3;
    let server = gateway(cfg);
    let mut alice = User::connect(server.local_addr(), 1, "alice");
    alice.send(json!({"pid": "n", "type": "data_request",
        "payload": {"resource": "notification", "data": {"targetUsers": [2, 3, 4, 5]}}}));
    let err = alice.recv_type("error_notification");
    assert_eq!(err["error"]["code"], 413);
    assert_eq!(err["error"]["originalPid"], "n");
}

#[test]
fn presence_fanout_off_keeps_get_presence_and_targeted_updates_only() {
    let mut cfg = gateway_config(2);
    cfg.presence_fanout = false;
    let server = gateway(cfg);
    let addr = server.local_addr();
    let mut alice = User::connect(addr, 1, "alice");
    let mut bob = User::connect(addr, 2, "bob");
    // No online event, but the replica on alice's shard knows bob (other shard).
    alice.expect_silence(Duration::from_millis(300));
    alice.send(
        json!({"pid": "g", "type": "generic_request", "payload": {"action": "get_presence"}}),
    );
    let users = alice.recv_type("generic_response")["payload"]["users"].clone();
    let ids: Vec<u64> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
    // A public status change is silent; a targeted one still reaches its target.
    bob.send(json!({"type": "presence_update", "payload": {"status": "away"}}));
    alice.expect_silence(Duration::from_millis(300));
    bob.send(
        json!({"type": "presence_update", "targetUserId": 1, "payload": {"status": "typing"}}),
    );
    assert_eq!(alice.recv_presence_of(2)["payload"]["status"], "typing");
    // Offline is silent too, and get_presence drops bob.
    drop(bob);
    alice.expect_silence(Duration::from_millis(300));
    alice.send(
        json!({"pid": "g2", "type": "generic_request", "payload": {"action": "get_presence"}}),
    );
    let users = alice.recv_type("generic_response")["payload"]["users"].clone();
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
}

#[test]
fn presence_online_offline_updates_and_get_presence() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let mut alice = User::connect(addr, 1, "alice");
    let mut bob = User::connect(addr, 2, "bob");
    // Alice sees Bob come online (Bob lives on the other shard).
    let ev = alice.recv_presence_of(2);
    assert_eq!(ev["fromUserId"], 2);
    assert_eq!(ev["payload"]["userId"], 2);
    assert_eq!(ev["payload"]["username"], "bob");
    assert_eq!(ev["payload"]["status"], "online");
    assert!(ev["payload"]["timestamp"].is_string());

    bob.send(json!({"type": "presence_update", "payload": {"status": "typing", "context": {"chatWith": 1}}}));
    let ev = alice.recv_presence_of(2);
    assert_eq!(ev["payload"]["status"], "typing");
    assert_eq!(ev["payload"]["context"]["chatWith"], 1);

    // get_presence sees both, with the latest status and context.
    alice.send(
        json!({"pid": "g", "type": "generic_request", "payload": {"action": "get_presence"}}),
    );
    let resp = alice.recv_type("generic_response");
    assert_eq!(resp["pid"], "g");
    let users = resp["payload"]["users"].as_array().unwrap();
    assert_eq!(users.len(), 2, "{resp}");
    let b = users.iter().find(|u| u["userId"] == 2).unwrap();
    assert_eq!(b["status"], "typing");
    assert_eq!(b["username"], "bob");
    assert!(b["since"].is_string() || b["since"].is_number());
    // Filtered by userIds.
    alice.send(json!({"pid": "g2", "type": "generic_request", "payload": {"action": "get_presence", "data": {"userIds": [2, 99]}}}));
    let resp = alice.recv_type("generic_response");
    let users = resp["payload"]["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["userId"], 2);

    // Bob's last connection closes: Alice sees offline, and get_presence forgets him.
    drop(bob);
    let ev = alice.recv_presence_of(2);
    assert_eq!(ev["payload"]["userId"], 2);
    assert_eq!(ev["payload"]["status"], "offline");
    alice.send(
        json!({"pid": "g3", "type": "generic_request", "payload": {"action": "get_presence"}}),
    );
    let resp = alice.recv_type("generic_response");
    let users = resp["payload"]["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["userId"], 1);
}

/// `get_presence` shows the last *announced* record, asked on the user's home shard (answered
/// from the registry) or on another shard (answered from the replica): a coalesced status
/// and a second connection's new `name` claim appear only with the next announcement.
#[test]
fn get_presence_shows_the_announced_record_on_every_shard() {
    let mut cfg = gateway_config(2);
    cfg.presence_min_interval = Duration::from_millis(600);
    let server = gateway(cfg);
    let addr = server.local_addr();
    let mut alice = User::connect(addr, 1, "alice");
    let mut bob = User::connect(addr, 2, "bob");
    alice.recv_presence_of(2);
    fn presence_of_bob(u: &mut User, pid: &str) -> serde_json::Value {
        u.send(json!({"pid": pid, "type": "generic_request",
                      "payload": {"action": "get_presence", "data": {"userIds": [2]}}}));
        let resp = u.recv_type("generic_response");
        resp["payload"]["users"][0].clone()
    }
    bob.send(json!({"type": "presence_update", "payload": {"status": "away"}}));
    assert_eq!(alice.recv_presence_of(2)["payload"]["status"], "away");
    // Within the interval: coalesced, not announced yet.
    bob.send(
        json!({"type": "presence_update", "payload": {"status": "busy", "context": {"n": 1}}}),
    );
    // Bob's second connection, with another name in its token.
    let mut robert = User::connect(addr, 2, "robert");
    for (who, pid) in [(&mut alice, "a1"), (&mut bob, "b1"), (&mut robert, "r1")] {
        let b = presence_of_bob(who, pid);
        assert_eq!(b["status"], "away", "{pid}: {b}");
        assert_eq!(b["username"], "bob", "{pid}: {b}");
        assert!(b["context"].is_null(), "{pid}: {b}");
    }
    robert.send(json!({"pid": "w", "type": "generic_request", "payload": {"action": "whoami"}}));
    assert_eq!(
        robert.recv_type("generic_response")["payload"]["username"],
        "robert"
    );
    let ev = alice.recv_presence_of(2);
    assert_eq!(ev["payload"]["status"], "busy");
    assert_eq!(ev["payload"]["username"], "robert");
    for (who, pid) in [(&mut alice, "a2"), (&mut bob, "b2")] {
        let b = presence_of_bob(who, pid);
        assert_eq!(b["status"], "busy", "{pid}: {b}");
        assert_eq!(b["username"], "robert", "{pid}: {b}");
        assert_eq!(b["context"]["n"], 1, "{pid}: {b}");
    }
}

#[test]
fn a_user_stays_online_until_the_last_connection_closes() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let mut alice = User::connect(addr, 1, "alice");
    assert_eq!(alice.recv_presence_of(1)["payload"]["status"], "online");
    let b1 = User::connect(addr, 2, "bob");
    assert_eq!(alice.recv_presence_of(2)["payload"]["status"], "online");
    let b2 = User::connect(addr, 2, "bob");
    drop(b1);
    // No offline while b2 is open (and no second "online").
    alice.expect_silence(Duration::from_millis(300));
    drop(b2);
    assert_eq!(alice.recv_presence_of(2)["payload"]["status"], "offline");
}

#[test]
fn targeted_presence_goes_to_the_target_only_and_updates_coalesce() {
    let mut cfg = gateway_config(2);
    cfg.presence_min_interval = Duration::from_millis(300);
    let server = gateway(cfg);
    let addr = server.local_addr();
    let mut alice = User::connect(addr, 1, "alice");
    let mut carol = User::connect(addr, 3, "carol");
    let mut bob = User::connect(addr, 2, "bob");
    alice.recv_presence_of(2);
    carol.recv_presence_of(2);
    alice.drain(Duration::from_millis(200));
    carol.drain(Duration::from_millis(10));
    // A burst of typing updates aimed at Alice: the first goes out, the rest coalesce into
    // one (latest wins).
    for i in 0..10 {
        bob.send(json!({"type": "presence_update", "targetUserId": 1, "payload": {"status": "typing", "context": {"i": i}}}));
    }
    let first = alice.recv_presence_of(2);
    assert_eq!(first["payload"]["context"]["i"], 0);
    let second = alice.recv_presence_of(2);
    assert_eq!(
        second["payload"]["context"]["i"], 9,
        "latest wins: {second}"
    );
    alice.expect_silence(Duration::from_millis(500));
    // Carol was not the target.
    carol.expect_silence(Duration::from_millis(100));
}

#[test]
fn generic_requests_builtin_actions() {
    let server = gateway(gateway_config(2));
    let mut alice = User::connect(server.local_addr(), 1, "alice");
    alice.send(json!({"pid": "w", "type": "generic_request", "payload": {"action": "whoami"}}));
    let r = alice.recv_type("generic_response");
    assert_eq!(r["pid"], "w");
    assert_eq!(
        r["payload"],
        json!({"userId": 1, "username": "alice", "roles": []})
    );
    alice.send(json!({"pid": "p", "type": "generic_request", "payload": {"action": "ping"}}));
    let r = alice.recv_type("generic_response");
    assert_eq!(r["pid"], "p");
    assert!(r["payload"]["serverTime"].as_str().unwrap().ends_with('Z'));
    alice.send(
        json!({"pid": "u", "type": "generic_request", "payload": {"action": "launch_rockets"}}),
    );
    let e = alice.recv_type("error_notification");
    assert_eq!(e["error"]["code"], 501);
    assert_eq!(e["error"]["originalPid"], "u");
    alice.send(json!({"type": "generic_request", "payload": {"action": "ping"}}));
    assert_eq!(alice.recv_type("error_notification")["error"]["code"], 400);
}

#[test]
fn whoami_reports_roles() {
    let server = gateway(gateway_config(1));
    let t = token_with_roles(5, "eve", &["admin", "ops"]);
    let ws = connect(
        server.local_addr(),
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .unwrap();
    let mut eve = User { ws, id: 5 };
    eve.send(json!({"pid": "w", "type": "generic_request", "payload": {"action": "whoami"}}));
    assert_eq!(
        eve.recv_type("generic_response")["payload"]["roles"],
        json!(["admin", "ops"])
    );
}

#[test]
fn malformed_and_unknown_messages_get_error_notifications_and_the_connection_stays() {
    let server = gateway(gateway_config(2));
    let mut alice = User::connect(server.local_addr(), 1, "alice");
    alice.send_raw(r#"{"pid":"bad1","type":"data_request","payload":{"#);
    let e = alice.recv_type("error_notification");
    assert_eq!(e["error"]["code"], 400);
    assert_eq!(e["error"]["originalPid"], "bad1");
    alice.send_raw("not json at all");
    let e = alice.recv_type("error_notification");
    assert_eq!(e["error"]["code"], 400);
    assert!(e["error"].get("originalPid").is_none());
    alice.send(json!({"pid": "t", "type": "teleport", "payload": {}}));
    let e = alice.recv_type("error_notification");
    assert_eq!(e["error"]["code"], 400);
    assert_eq!(e["error"]["originalPid"], "t");
    alice.send(json!({"pid": "np", "type": "data_request", "targetUserId": 2, "payload": [1, 2]}));
    assert_eq!(alice.recv_type("error_notification")["error"]["code"], 422);
    alice.send(json!({"pid": "neg", "type": "data_request", "targetUserId": -4, "payload": {}}));
    let e = alice.recv_type("error_notification");
    assert_eq!(e["error"]["code"], 422);
    assert_eq!(e["error"]["originalPid"], "neg");
    let deep = "[".repeat(10_000);
    alice.send_raw(&format!(
        r#"{{"pid":"deep","type":"data_request","payload":{deep}}}"#
    ));
    let e = alice.recv_type("error_notification");
    assert_eq!(e["error"]["code"], 413);
    alice.send_raw(
        r#"{"pid":"num","type":"data_request","targetUserId":2,"payload":{"x":1e999999}}"#,
    );
    assert_eq!(alice.recv_type("error_notification")["error"]["code"], 400);
    // Still open.
    alice.send(json!({"pid": "ok", "type": "generic_request", "payload": {"action": "ping"}}));
    assert_eq!(alice.recv_type("generic_response")["pid"], "ok");
}

#[test]
fn binary_messages_close_with_1003() {
    let server = gateway(gateway_config(1));
    let mut alice = User::connect(server.local_addr(), 1, "alice");
    alice
        .ws
        .send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .unwrap();
    assert_eq!(alice.expect_close(), Some(1003));
}

#[test]
fn roles_gate_p2p_and_broadcast() {
    let mut cfg = gateway_config(2);
    cfg.p2p_roles = vec!["chat".into()];
    cfg.broadcast_roles = vec!["admin".into()];
    let server = gateway(cfg);
    let addr = server.local_addr();
    let _bob = User::connect(addr, 2, "bob");
    let mut alice = User::connect(addr, 1, "alice");
    alice.send(json!({"pid": "a", "type": "data_request", "targetUserId": 2, "payload": {}}));
    assert_eq!(alice.recv_type("error_notification")["error"]["code"], 403);
    alice.send(json!({"pid": "b", "type": "data_request", "payload": {}}));
    assert_eq!(alice.recv_type("error_notification")["error"]["code"], 403);
    let t = token_with_roles(3, "carol", &["chat"]);
    let ws = connect(addr, &[("Authorization", &format!("Bearer {t}"))]).unwrap();
    let mut carol = User { ws, id: 3 };
    carol.send(json!({"pid": "c", "type": "data_request", "targetUserId": 2, "payload": {}}));
    assert_eq!(
        carol.recv_type("server_ack")["payload"]["acknowledgedPid"],
        "c"
    );
}

#[test]
fn flood_of_100k_p2p_messages_across_shards_exactly_once_in_order() {
    flood(gateway_config(2), 100_000);
}

#[test]
fn flood_with_tiny_cross_shard_queues_exercises_back_pressure() {
    let mut cfg = gateway_config(2);
    cfg.cross_shard_queue_capacity = 4;
    let server_text = flood(cfg, 20_000);
    let full: u64 = server_text
        .lines()
        .find_map(|l| l.strip_prefix("customws_cross_shard_queue_full_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        full > 0,
        "the tiny queues never filled up; back-pressure was not exercised"
    );
}

/// Users 1 and 3 (shard 1) send `n` messages in total to users 2 and 4 (shard 0); every
/// message arrives exactly once and in order per sender-receiver pair. Returns the metrics.
fn flood(mut cfg: customws::Config, n: usize) -> String {
    cfg.rate_limit = 10_000_000;
    cfg.rate_burst = 1_000_000;
    cfg.outbound_queue_limit = 256 << 20;
    let server = gateway(cfg);
    let addr = server.local_addr();
    let receivers: Vec<u64> = vec![2, 4];
    let senders: Vec<u64> = vec![1, 3];
    let mut rx: Vec<User> = receivers
        .iter()
        .map(|&id| User::connect(addr, id, "r"))
        .collect();
    let per_pair = n / (senders.len() * receivers.len());
    let mut handles = Vec::new();
    for &s in &senders {
        let receivers = receivers.clone();
        handles.push(std::thread::spawn(move || {
            let mut u = User::connect(addr, s, "s");
            for seq in 0..per_pair {
                for &r in &receivers {
                    let text = format!(r#"{{"type":"data_request","targetUserId":{r},"payload":{{"s":{s},"q":{seq}}}}}"#);
                    u.ws.write(tungstenite::Message::text(text)).unwrap();
                }
                if seq % 64 == 0 {
                    u.ws.flush().unwrap();
                }
            }
            u.ws.flush().unwrap();
            // Keep the sender open until its messages are certainly routed.
            std::thread::sleep(Duration::from_millis(200));
            u
        }));
    }
    for r in rx.iter_mut() {
        let mut next = std::collections::HashMap::new();
        let mut got = 0;
        while got < per_pair * senders.len() {
            let v = r.recv();
            if v["type"] != "data_event" {
                continue;
            }
            let s = v["payload"]["s"].as_u64().unwrap();
            let q = v["payload"]["q"].as_u64().unwrap();
            let e = next.entry(s).or_insert(0u64);
            assert_eq!(
                q, *e,
                "receiver {} from {s}: out of order or duplicated",
                r.id
            );
            *e += 1;
            got += 1;
        }
        for s in &senders {
            assert_eq!(next[s], per_pair as u64);
        }
        r.expect_silence(Duration::from_millis(100));
    }
    for h in handles {
        drop(h.join().unwrap());
    }
    server.metrics_text()
}
