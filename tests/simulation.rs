//! The deterministic simulation (`customws::sim`): seeded random routing and presence
//! sequences through the reference model (the same oracle as the `routing` fuzz target),
//! and hand-written scenarios.

use std::time::Duration;

use customws::sim::model::{self, Op, Setup};
use customws::sim::Sim;

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

#[test]
fn probe_targeted_after_public() {
    let setup = Setup::from_byte(0x10); // 2 shards, 100 ms interval
    let mut sim = Sim::gateway(setup.config(), 2).unwrap();
    let a = sim.connect_on(0, 2);
    let b = sim.connect_on(1, 3);
    sim.run_until_idle();
    sim.send_text(a, r#"{"type":"presence_update","payload":{"status":"one"}}"#);
    sim.run_until_idle();
    sim.advance(Duration::from_millis(10));
    sim.send_text(a, r#"{"type":"presence_update","payload":{"status":"two"}}"#);
    sim.send_text(a, r#"{"type":"presence_update","targetUserId":3,"payload":{"status":"dm"}}"#);
    sim.run_until_idle();
    sim.advance(Duration::from_millis(200));
    sim.send_text(b, r#"{"pid":"g","type":"generic_request","payload":{"action":"get_presence"}}"#);
    sim.run_until_idle();
    println!("{:#?}", sim.take_received(b));
}
