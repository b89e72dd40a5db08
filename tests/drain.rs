//! Drain on SIGTERM, against the real binary: new upgrades and `/healthz` answer 503, every
//! client is closed with 1001, and the process exits 0 within the drain timeout.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::*;

struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `customws serve` on an ephemeral port and returns it with its address.
fn spawn_serve(extra: &[&str]) -> (Killer, SocketAddr) {
    let mut args = vec!["--admin-listen", "off", "--shards", "2"];
    args.extend_from_slice(extra);
    let (child, addr) = spawn_serve_binary(&args);
    (Killer(child), addr)
}

#[test]
fn sigterm_drains_clients_with_1001_and_exits_zero() {
    let drain_timeout = Duration::from_secs(4);
    let (mut child, addr) = spawn_serve(&["--drain-timeout", "4s"]);
    let mut users: Vec<User> = (1..=20).map(|i| User::connect(addr, i, "u")).collect();
    // A peer that never answers the close keeps the drain going until the linger expires,
    // so the draining state can be observed.
    let mut stuck = TcpStream::connect(addr).unwrap();
    let t = token(99, "stuck");
    stuck
        .write_all(upgrade_request("/ws", &format!("Authorization: Bearer {t}\r\n")).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let start = Instant::now();
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);

    for u in users.iter_mut() {
        assert_eq!(u.expect_close(), Some(1001), "user {}", u.id);
    }
    // While draining: /healthz and new upgrades answer 503.
    let resp = raw_exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&resp), 503, "{}", String::from_utf8_lossy(&resp));
    let t = token(50, "late");
    let resp = raw_exchange(
        addr,
        upgrade_request("/ws", &format!("Authorization: Bearer {t}\r\n")).as_bytes(),
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&resp), 503);

    // The process exits 0 within the drain timeout (plus scheduling slack).
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < drain_timeout + Duration::from_secs(2),
            "still running after the drain timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(start.elapsed() <= drain_timeout + Duration::from_secs(2));
    drop(stuck);
}

#[test]
fn bad_flags_and_a_missing_key_exit_non_zero_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_customws"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("JWT"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_customws"))
        .args(["serve", "--dev", "--pong-wait", "abc"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pong-wait"));
}

#[test]
fn token_subcommand_mints_a_token_the_gateway_accepts() {
    let secret = String::from_utf8(SECRET.to_vec()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_customws"))
        .args([
            "token", "--sub", "42", "--name", "alice", "--roles", "a,b", "--ttl", "1h", "--secret",
            &secret,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = gateway(gateway_config(1));
    let ws = connect(
        server.local_addr(),
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .unwrap();
    let mut u = User { ws, id: 42 };
    u.send(
        serde_json::json!({"pid": "w", "type": "generic_request", "payload": {"action": "whoami"}}),
    );
    let r = u.recv_type("generic_response");
    assert_eq!(
        r["payload"],
        serde_json::json!({"userId": 42, "username": "alice", "roles": ["a", "b"]})
    );
}
