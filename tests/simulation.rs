//! The deterministic simulation (`customws::sim`): seeded random routing and presence
//! sequences through the reference model (the same oracle as the `routing` fuzz target),
//! and hand-written scenarios.

use std::time::Duration;

use customws::sim::model::{self, Op, Setup};
use customws::sim::Sim;
use serde_json::Value;

/// splitmix64: a fixed, dependency-free generator, so every seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn random_input(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let len = 16 + (rng.next() % 600) as usize;
    (0..len).map(|_| rng.next() as u8).collect()
}

#[test]
fn random_sequences_keep_every_routing_and_presence_invariant() {
    let mut totals = model::Stats::default();
    for seed in 0..300 {
        let input = random_input(seed);
        match model::run(&input) {
            Ok(s) => {
                totals.connects += s.connects;
                totals.p2p_delivered += s.p2p_delivered;
                totals.p2p_offline += s.p2p_offline;
                totals.broadcast_delivered += s.broadcast_delivered;
                totals.offline_events += s.offline_events;
                totals.settles += s.settles;
            }
            Err(e) => panic!("seed {seed}: {e}\ninput: {input:?}"),
        }
    }
    // The sequences must actually exercise what they check.
    assert!(totals.connects > 1000, "{totals:?}");
    assert!(totals.p2p_delivered > 500, "{totals:?}");
    assert!(totals.p2p_offline > 100, "{totals:?}");
    assert!(totals.broadcast_delivered > 1000, "{totals:?}");
    assert!(totals.offline_events > 500, "{totals:?}");
}

/// Every server text message a client received since the last look, as JSON.
fn received(sim: &mut Sim<customws::gateway::Gateway>, c: customws::sim::ClientId) -> Vec<Value> {
    sim.take_received(c)
        .iter()
        .map(|t| serde_json::from_str(t).expect("server JSON"))
        .collect()
}

fn statuses_of(events: &[Value], user: u64) -> Vec<String> {
    events
        .iter()
        .filter(|v| v["type"] == "presence_event" && v["payload"]["userId"] == user)
        .map(|v| v["payload"]["status"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn online_users(
    sim: &mut Sim<customws::gateway::Gateway>,
    asker: customws::sim::ClientId,
) -> Vec<u64> {
    sim.send_text(
        asker,
        r#"{"pid":"gp","type":"generic_request","payload":{"action":"get_presence"}}"#,
    );
    sim.run_until_idle();
    let answer = received(sim, asker)
        .into_iter()
        .find(|v| v["pid"] == "gp")
        .expect("get_presence answer");
    answer["payload"]["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["userId"].as_u64())
        .collect()
}

/// A user with connections on two shards' listeners (both handed to its home shard)
/// stays online when one closes and goes offline exactly once when the last one does.
#[test]
fn user_with_two_connections_goes_offline_once_after_the_last() {
    let setup = Setup::from_byte(1); // 3 shards
    let mut sim = Sim::gateway(setup.config(), 3).expect("sim");
    let watcher = sim.connect_on(2, 1);
    let phone = sim.connect_on(0, 5);
    let laptop = sim.connect_on(1, 5);
    sim.run_until_idle();
    assert!(sim.is_open(phone) && sim.is_open(laptop) && sim.is_open(watcher));
    assert_eq!(statuses_of(&received(&mut sim, watcher), 5), ["online"]);

    sim.disconnect(phone);
    sim.run_until_idle();
    assert!(sim.is_closed(phone));
    assert!(statuses_of(&received(&mut sim, watcher), 5).is_empty());
    assert_eq!(online_users(&mut sim, watcher), [1, 5]);

    sim.disconnect(laptop);
    sim.run_until_idle();
    assert_eq!(statuses_of(&received(&mut sim, watcher), 5), ["offline"]);
    assert_eq!(online_users(&mut sim, watcher), [1]);
    // Nothing trails behind, not even after the timers ran.
    sim.advance(Duration::from_secs(60));
    assert!(statuses_of(&received(&mut sim, watcher), 5).is_empty());
    assert!(
        sim.is_open(watcher),
        "keepalive: the simulated client answers pings"
    );
}

/// P2P across shards reaches every connection of the target once and is acked once;
/// to a user with no connection it is a 404.
#[test]
fn p2p_reaches_every_connection_of_the_target_once() {
    let setup = Setup::from_byte(2); // 4 shards
    let mut sim = Sim::gateway(setup.config(), 4).expect("sim");
    let sender = sim.connect_on(0, 1);
    let targets = [
        sim.connect_on(1, 2),
        sim.connect_on(2, 2),
        sim.connect_on(3, 2),
    ];
    sim.run_until_idle();
    for c in [sender, targets[0], targets[1], targets[2]] {
        received(&mut sim, c);
    }
    sim.send_text(
        sender,
        r#"{"pid":"p","type":"data_request","targetUserId":2,"payload":{"n":7}}"#,
    );
    sim.send_text(
        sender,
        r#"{"pid":"q","type":"data_request","targetUserId":9,"payload":{"n":8}}"#,
    );
    sim.run_until_idle();
    for t in targets {
        let got = received(&mut sim, t);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["type"], "data_event");
        assert_eq!(got[0]["fromUserId"], 1);
        assert_eq!(got[0]["payload"]["n"], 7);
    }
    let replies = received(&mut sim, sender);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies
        .iter()
        .any(|v| v["type"] == "server_ack" && v["payload"]["acknowledgedPid"] == "p"));
    assert!(replies.iter().any(|v| v["type"] == "error_notification"
        && v["error"]["code"] == 404
        && v["error"]["originalPid"] == "q"));
}

/// A ring of one slot forces the back-pressure backlog on every cross-shard message; the
/// model still holds (nothing lost, reordered into a duplicate, or stuck).
#[test]
fn one_slot_rings_lose_nothing() {
    let mut ops = Vec::new();
    for user in 1..=6 {
        ops.push(Op::Connect { user, shard: user });
    }
    ops.push(Op::Settle);
    for round in 0..20u8 {
        ops.push(Op::Broadcast {
            from: round,
            pid: true,
        });
        ops.push(Op::P2p {
            from: round + 1,
            to: round % 7 + 1,
            pid: round % 2 == 0,
        });
        ops.push(Op::Presence {
            from: round + 2,
            to: None,
        });
        ops.push(Op::GetPresence { from: round + 3 });
        if round % 5 == 4 {
            ops.push(Op::Disconnect { conn: round });
            ops.push(Op::Connect {
                user: round % 6 + 1,
                shard: round,
            });
        }
        if round % 2 == 1 {
            ops.push(Op::Settle);
        }
    }
    ops.push(Op::Settle);
    // Setup byte 0: 2 shards, ring capacity 1, no coalescing.
    let input = model::encode(0, &ops);
    assert_eq!(model::decode(&input).1, ops);
    let stats = model::run(&input).expect("model holds");
    assert!(stats.broadcast_delivered >= 20 * 4, "{stats:?}");
}

#[test]
#[ignore]
fn dump_seed() {
    let seed: u64 = std::env::var("SEED").unwrap().parse().unwrap();
    let input = random_input(seed);
    let (setup, ops) = model::decode(&input);
    println!("{setup:?}");
    for (i, op) in ops.iter().enumerate() {
        println!("{i}: {op:?}");
    }
}

/// The committed seeds of the `routing` fuzz target replay here, so `cargo test` covers
/// them without the nightly toolchain.
#[test]
fn routing_fuzz_seeds_hold() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/routing");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/routing") {
        let path = entry.expect("entry").path();
        let input = std::fs::read(&path).expect("seed");
        if let Err(e) = model::run(&input) {
            panic!("{}: {e}", path.display());
        }
        n += 1;
    }
    assert!(n >= 5, "only {n} seeds");
}

/// Replays every input in `$ROUTING_DIR` (a fuzz corpus or artifacts) and prints the
/// slowest: `ROUTING_DIR=fuzz/corpus/routing cargo test --test simulation replay -- --ignored --nocapture`.
#[test]
#[ignore]
fn replay_dir() {
    let dir = std::env::var("ROUTING_DIR").expect("ROUTING_DIR");
    let mut times = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        let input = std::fs::read(&path).expect("input");
        let start = std::time::Instant::now();
        if let Err(e) = model::run(&input) {
            panic!("{}: {e}", path.display());
        }
        times.push((start.elapsed(), path));
    }
    times.sort();
    let total: Duration = times.iter().map(|(t, _)| *t).sum();
    println!("{} inputs, {total:?}", times.len());
    for (t, p) in times.iter().rev().take(5) {
        println!("{t:?} {}", p.display());
    }
}
