//! Cluster mode against real processes: a Redis server (`redis-server`, started per test on
//! a free loopback port, no persistence) and three `customws serve` nodes, each with two
//! shards, talking to test clients over real sockets.
//!
//! Needs `redis-server` >= 7 on the PATH (`.ci/run` installs Debian's).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const HEARTBEAT_MS: u64 = 200;

/// A `redis-server` on a loopback port; killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let mut r = Redis { port, child: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // The flood test may outrun a subscriber briefly; the default pub/sub
                // output limit (32 MiB hard) would cut the link (which the bridge reports,
                // but this test is about delivery).
                "--client-output-buffer-limit",
                "pubsub 0 0 0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || redis_ping(addr)),
            "redis-server did not come up"
        );
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `customws serve --cluster-redis` process; killed (SIGKILL) on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(redis: &Redis, id: &str, extra: &[&str]) -> Node {
        let url = redis.url();
        let heartbeat = format!("{HEARTBEAT_MS}ms");
        let mut args = vec![
            "--admin-listen",
            "off",
            "--shards",
            "2",
            "--cluster-redis",
            &url,
            "--node-id",
            id,
            "--presence-heartbeat",
            &heartbeat,
            "--presence-min-interval",
            "0",
        ];
        args.extend_from_slice(extra);
        let (child, addr) = spawn_serve_binary(&args);
        let node = Node { child, addr };
        assert!(
            wait_until(Duration::from_secs(10), || node.health() == 200),
            "node {id} did not report healthy"
        );
        node
    }

    fn health(&self) -> u16 {
        let resp = raw_exchange(
            self.addr,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            Duration::from_secs(2),
        );
        if resp.is_empty() {
            0
        } else {
            status_of(&resp)
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn cluster(redis: &Redis, extra: &[&str]) -> Vec<Node> {
    ["n1", "n2", "n3"]
        .iter()
        .map(|id| Node::start(redis, id, extra))
        .collect()
}

fn get_presence(u: &mut User) -> Vec<u64> {
    let pid = format!("gp-{}", Instant::now().elapsed().as_nanos());
    u.send(json!({"type": "generic_request", "pid": pid, "payload": {"action": "get_presence"}}));
    loop {
        let v = u.recv_type("generic_response");
        if v["pid"] == pid.as_str() {
            let mut ids: Vec<u64> = v["payload"]["users"]
                .as_array()
                .expect("users")
                .iter()
                .map(|e| e["userId"].as_u64().expect("userId"))
                .collect();
            ids.sort_unstable();
            return ids;
        }
    }
}

/// Waits until `u`'s node lists exactly `want` as online.
fn await_presence(u: &mut User, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = get_presence(u);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "presence never became {want:?} (last {got:?})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn p2p(from: &mut User, to: u64, pid: &str, text: &str) {
    from.send(json!({
        "type": "data_request", "pid": pid, "targetUserId": to,
        "payload": {"text": text}
    }));
}

/// The answer to `pid`: `server_ack` or `error_notification`.
fn answer_to(u: &mut User, pid: &str) -> serde_json::Value {
    loop {
        let v = u.recv();
        let about = match v["type"].as_str() {
            Some("server_ack") => v["payload"]["acknowledgedPid"].clone(),
            Some("error_notification") => v["error"]["originalPid"].clone(),
            _ => continue,
        };
        if about == pid {
            return v;
        }
    }
}

#[test]
fn p2p_with_ack_between_every_pair_of_nodes_and_404_for_a_user_online_nowhere() {
    let redis = Redis::start();
    let nodes = cluster(&redis, &[]);
    // Two users per node, on both shards of each node (home shard = id % 2).
    let ids: [u64; 6] = [10, 11, 20, 21, 30, 31];
    let mut users: Vec<User> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| User::connect(nodes[i / 2].addr, id, &format!("u{id}")))
        .collect();
    for u in users.iter_mut() {
        await_presence(u, &ids);
    }
    for i in 0..users.len() {
        for j in 0..users.len() {
            if i / 2 == j / 2 {
                continue; // same node: covered by the single-node tests
            }
            let (from_id, to_id) = (ids[i], ids[j]);
            let pid = format!("p-{from_id}-{to_id}");
            p2p(&mut users[i], to_id, &pid, &pid);
            let ack = answer_to(&mut users[i], &pid);
            assert_eq!(ack["type"], "server_ack", "{pid}: {ack}");
            let ev = users[j].recv_type("data_event");
            assert_eq!(ev["fromUserId"], from_id);
            assert_eq!(ev["payload"]["text"], pid.as_str());
            assert_eq!(ev["payload"]["senderName"], format!("u{from_id}"));
            assert!(ev["payload"]["messageId"].is_string(), "{ev}");
        }
    }
    p2p(&mut users[0], 999, "nobody", "hello?");
    let err = answer_to(&mut users[0], "nobody");
    assert_eq!(err["type"], "error_notification");
    assert_eq!(err["error"]["code"], 404);
    for u in users.iter_mut() {
        u.expect_silence(Duration::from_millis(300));
    }
}

#[test]
fn broadcast_reaches_every_connection_of_every_node_once_and_multicast_only_its_targets() {
    let redis = Redis::start();
    let nodes = cluster(&redis, &[]);
    let ids: [u64; 6] = [1, 2, 3, 4, 5, 6];
    let mut users: Vec<User> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| User::connect(nodes[i % 3].addr, id, "u"))
        .collect();
    // A second connection of user 2 on another node receives its own copy.
    let mut second = User::connect(nodes[2].addr, 2, "u");
    for u in users.iter_mut() {
        await_presence(u, &ids);
    }
    await_presence(&mut second, &ids);
    for u in users.iter_mut().chain(std::iter::once(&mut second)) {
        u.drain(Duration::from_millis(300));
    }

    users[0].send(json!({"type": "data_request", "pid": "b1", "payload": {"text": "to all"}}));
    assert_eq!(answer_to(&mut users[0], "b1")["type"], "server_ack");
    for u in users[1..].iter_mut().chain(std::iter::once(&mut second)) {
        let ev = u.recv_type("data_event");
        assert_eq!(ev["payload"]["text"], "to all");
        assert_eq!(ev["fromUserId"], 1);
    }
    users[0].send(json!({
        "type": "data_request", "pid": "m1",
        "payload": {"resource": "notification", "text": "some", "data": {"targetUsers": [2, 6]}}
    }));
    assert_eq!(answer_to(&mut users[0], "m1")["type"], "server_ack");
    for u in [1usize, 5] {
        let ev = users[u].recv_type("data_event");
        assert_eq!(ev["payload"]["text"], "some");
    }
    assert_eq!(second.recv_type("data_event")["payload"]["text"], "some");
    // Exactly once: nothing else for anyone (the sender never hears its own broadcast).
    for u in users.iter_mut().chain(std::iter::once(&mut second)) {
        u.expect_silence(Duration::from_millis(400));
    }
}

#[test]
fn presence_online_typing_status_and_offline_are_seen_cluster_wide() {
    let redis = Redis::start();
    let nodes = cluster(&redis, &[]);
    let mut watcher = User::connect(nodes[0].addr, 100, "watcher");
    await_presence(&mut watcher, &[100]);
    let mut far = User::connect(nodes[1].addr, 201, "far");
    let online = watcher.recv_presence_of(201);
    assert_eq!(online["payload"]["status"], "online");
    assert_eq!(online["payload"]["username"], "far");
    let mut third = User::connect(nodes[2].addr, 300, "third");
    await_presence(&mut third, &[100, 201, 300]);

    // Typing, targeted: only the watcher hears it.
    far.send(json!({"type": "presence_update", "targetUserId": 100,
                    "payload": {"status": "typing"}}));
    let typing = watcher.recv_presence_of(201);
    assert_eq!(typing["payload"]["status"], "typing");
    // A public status change reaches everyone and get_presence everywhere.
    far.send(json!({"type": "presence_update", "payload": {"status": "away"}}));
    assert_eq!(watcher.recv_presence_of(201)["payload"]["status"], "away");
    assert_eq!(third.recv_presence_of(201)["payload"]["status"], "away");

    // The same user on a second node: closing one connection keeps it online.
    let mut far_again = User::connect(nodes[2].addr, 201, "far");
    std::thread::sleep(Duration::from_millis(300));
    drop(far);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get_presence(&mut watcher), vec![100, 201, 300]);
    // Closing the last one: offline, once, on every node.
    far_again.ws.close(None).unwrap();
    let _ = far_again.expect_close();
    for u in [&mut watcher, &mut third] {
        assert_eq!(u.recv_presence_of(201)["payload"]["status"], "offline");
    }
    await_presence(&mut watcher, &[100, 300]);
    await_presence(&mut third, &[100, 300]);
    for u in [&mut watcher, &mut third] {
        let deadline = Instant::now() + Duration::from_millis(500);
        u.ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while Instant::now() < deadline {
            if let Ok(tungstenite::Message::Text(t)) = u.ws.read() {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert!(
                    !(v["type"] == "presence_event" && v["payload"]["userId"] == 201),
                    "second presence event for 201: {v}"
                );
            }
        }
        u.ws.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    drop(nodes);
}

#[test]
fn a_100k_message_cross_node_flood_arrives_exactly_once_and_in_order() {
    let redis = Redis::start();
    let flood = [
        "--rate-limit",
        "10000000",
        "--rate-burst",
        "10000000",
        "--outbound-queue-limit",
        "256MiB",
    ];
    let a = Node::start(&redis, "flood-a", &flood);
    let b = Node::start(&redis, "flood-b", &flood);
    let mut receiver = User::connect(b.addr, 2, "receiver");
    let mut sender = User::connect(a.addr, 1, "sender");
    await_presence(&mut sender, &[1, 2]);
    await_presence(&mut receiver, &[1, 2]);
    receiver.drain(Duration::from_millis(200));
    const N: u64 = 100_000;
    let send = std::thread::spawn(move || {
        for i in 0..N {
            // No pid: acks would pile up unread in the sender's socket.
            sender.send_raw(&format!(
                r#"{{"type":"data_request","targetUserId":2,"payload":{{"seq":{i}}}}}"#
            ));
        }
        sender
    });
    receiver
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut next = 0u64;
    while next < N {
        let v = receiver.recv();
        if v["type"] != "data_event" {
            continue;
        }
        let seq = v["payload"]["seq"].as_u64().expect("seq");
        assert_eq!(seq, next, "out of order or duplicated");
        next += 1;
    }
    let _sender = send.join().unwrap();
    receiver.expect_silence(Duration::from_millis(500));
}

#[test]
fn kill_9_of_a_node_takes_its_users_offline_once_within_three_heartbeats() {
    let redis = Redis::start();
    let mut nodes = cluster(&redis, &[]);
    let mut watch_a = User::connect(nodes[0].addr, 1, "a");
    let mut watch_b = User::connect(nodes[1].addr, 2, "b");
    let doomed_ids = [31u64, 32, 33];
    let _doomed: Vec<User> = doomed_ids
        .iter()
        .map(|&id| User::connect(nodes[2].addr, id, "doomed"))
        .collect();
    // User 4 is on the doomed node and on node 1: it must stay online.
    let _survivor_there = User::connect(nodes[2].addr, 4, "both");
    let _survivor_here = User::connect(nodes[0].addr, 4, "both");
    let all = [1, 2, 4, 31, 32, 33];
    await_presence(&mut watch_a, &all);
    await_presence(&mut watch_b, &all);
    watch_a.drain(Duration::from_millis(300));
    watch_b.drain(Duration::from_millis(300));

    let killed = Instant::now();
    nodes[2].kill9();
    for w in [&mut watch_a, &mut watch_b] {
        let mut offline = Vec::new();
        while offline.len() < doomed_ids.len() {
            let v = w.recv_type("presence_event");
            let user = v["payload"]["userId"].as_u64().unwrap();
            assert_ne!(user, 4, "user 4 still has a connection: {v}");
            if v["payload"]["status"] == "offline" {
                assert!(!offline.contains(&user), "second offline event for {user}");
                offline.push(user);
            }
        }
        offline.sort_unstable();
        assert_eq!(offline, doomed_ids);
    }
    let took = killed.elapsed();
    // Detection is bounded by 3 heartbeats (2.5 + a quarter of check granularity, see
    // cluster::membership); the margin only guards against a machine stalled by other work.
    assert!(
        took < Duration::from_millis(HEARTBEAT_MS * 3) + Duration::from_secs(1),
        "offline after {took:?}"
    );
    eprintln!("offline events after kill -9: {took:?}");
    // Exactly once: no repeat, and presence agrees everywhere.
    watch_a.expect_silence(Duration::from_millis(HEARTBEAT_MS * 4));
    watch_b.expect_silence(Duration::from_millis(100));
    await_presence(&mut watch_a, &[1, 2, 4]);
    await_presence(&mut watch_b, &[1, 2, 4]);
}

#[test]
fn redis_down_turns_health_503_and_cross_node_sends_503_then_everything_recovers() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, &[]);
    let mut a1 = User::connect(nodes[0].addr, 1, "a1");
    let mut a3 = User::connect(nodes[0].addr, 3, "a3");
    let mut b2 = User::connect(nodes[1].addr, 2, "b2");
    await_presence(&mut a1, &[1, 2, 3]);
    await_presence(&mut b2, &[1, 2, 3]);

    redis.kill();
    assert!(
        wait_until(Duration::from_secs(10), || nodes
            .iter()
            .all(|n| n.health() == 503)),
        "health never went 503"
    );
    // Cross-node: an honest 503 (the user may be elsewhere), never a silent drop.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p2p(&mut a1, 2, "x1", "lost?");
        let v = answer_to(&mut a1, "x1");
        assert_eq!(v["type"], "error_notification", "{v}");
        if v["error"]["code"] == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "no 503: {v}");
    }
    // Local delivery keeps working.
    p2p(&mut a1, 3, "l1", "local");
    assert_eq!(answer_to(&mut a1, "l1")["type"], "server_ack");
    assert_eq!(a3.recv_type("data_event")["payload"]["text"], "local");

    redis.spawn();
    assert!(
        wait_until(Duration::from_secs(20), || nodes
            .iter()
            .all(|n| n.health() == 200)),
        "health never came back"
    );
    // Presence is re-announced and cross-node traffic flows again, no node restarted.
    await_presence(&mut a1, &[1, 2, 3]);
    await_presence(&mut b2, &[1, 2, 3]);
    p2p(&mut a1, 2, "x2", "back");
    assert_eq!(answer_to(&mut a1, "x2")["type"], "server_ack");
    let ev = b2.recv_type("data_event");
    assert_eq!(ev["payload"]["text"], "back");
}

/// A library handler that greets user 1 from whichever node a user connects to.
struct Greeter;

impl customws::gateway::Handler for Greeter {
    fn on_connect(
        &mut self,
        ctx: &mut customws::gateway::Ctx<'_, Self>,
        conn: customws::gateway::ConnRef,
    ) {
        if conn.user.0 != 1 {
            let json = json!({"type": "data_event", "payload": {"hello": conn.user.0}});
            ctx.send_to_user(customws::auth::UserId(1), json.to_string().as_bytes());
        }
    }
}

fn in_process_node(
    redis: &Redis,
    id: &str,
) -> (customws::Server, customws::cluster::Bridge, SocketAddr) {
    let mut cfg = gateway_config(2);
    cfg.cluster = Some(customws::config::ClusterConfig {
        redis: customws::cli::parse_redis_url(&redis.url()).unwrap(),
        node_id: id.into(),
        heartbeat: Duration::from_millis(HEARTBEAT_MS),
    });
    let factory = customws::gateway::GatewayFactory::with_handler(&cfg, |_| Greeter).unwrap();
    let (server, bridge) = customws::cluster::start_gateway(cfg, factory).unwrap();
    let bridge = bridge.expect("cluster mode starts a bridge");
    let admin = customws::admin::spawn_with(
        "127.0.0.1:0".parse().unwrap(),
        customws::admin::Sources {
            shards: server.metrics_handles(),
            shared: Some(server.shared()),
            cluster: Some(bridge.metrics()),
        },
    )
    .unwrap();
    (server, bridge, admin)
}

fn scrape(admin: SocketAddr, metric: &str) -> u64 {
    let resp = raw_exchange(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(2),
    );
    let text = String::from_utf8_lossy(&resp);
    text.lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{metric} missing from /metrics"))
}

#[test]
fn library_send_to_user_crosses_nodes_and_the_bridge_reports_metrics() {
    let redis = Redis::start();
    let (a, _bridge_a, admin_a) = in_process_node(&redis, "lib-a");
    let (b, _bridge_b, admin_b) = in_process_node(&redis, "lib-b");
    assert!(wait_until(Duration::from_secs(10), || {
        scrape(admin_a, "customws_cluster_link_up") == 1
            && scrape(admin_b, "customws_cluster_link_up") == 1
    }));
    let mut one = User::connect(a.local_addr(), 1, "one");
    await_presence(&mut one, &[1]);
    let mut two = User::connect(b.local_addr(), 2, "two");
    await_presence(&mut two, &[1, 2]);
    let hello = one.recv_type("data_event");
    assert_eq!(hello["payload"]["hello"], 2);
    assert!(scrape(admin_b, "customws_cluster_publishes_total") >= 1);
    assert!(scrape(admin_a, "customws_cluster_received_total") >= 1);
    assert_eq!(scrape(admin_a, "customws_cluster_remote_nodes"), 1);
    assert_eq!(scrape(admin_a, "customws_cluster_decode_errors_total"), 0);
    // Health through the admin listener as well.
    let resp = raw_exchange(
        admin_a,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&resp), 200);
    drop(redis);
    assert!(wait_until(Duration::from_secs(10), || {
        let resp = raw_exchange(
            admin_a,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            Duration::from_secs(2),
        );
        status_of(&resp) == 503 && scrape(admin_a, "customws_cluster_link_up") == 0
    }));
}
