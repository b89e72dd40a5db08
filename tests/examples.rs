//! The examples as a user runs them: real processes over loopback.
//!
//! - `chat_history`: the custom-`Handler` example keeps the last 50 messages of a
//!   conversation, still delivers every message through the built-in P2P rules, and leaves
//!   unknown actions to the gateway's 501.
//! - the README quick start: `customws serve --dev` prints a `p2p_demo` command line; running
//!   exactly those arguments delivers a message and gets it acknowledged.
//!
//! The example binaries are (re)built once per run with the same cargo, profile and target
//! directory as this test (a no-op when `cargo test` already built them), and found next to
//! the `customws` binary cargo built for this test.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// A child process killed (and reaped) when the test ends, panicking or not.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/<profile>`: where cargo put the `customws` binary built for this test.
fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_customws"))
        .parent()
        .expect("the binary lives in a directory")
        .to_path_buf()
}

/// Builds the examples (once per test process) and returns the path of `name`.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let dir = profile_dir();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "--example",
            "chat_history",
            "--example",
            "p2p_demo",
        ]);
        // The target directory is the parent of the profile directory; the profile is its
        // name (`debug` is cargo's directory for the `dev` profile).
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of the examples failed: {s}")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    let path = profile_dir()
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if let Err(e) = built {
        // An already-built binary still lets the test run (it may be stale).
        assert!(path.exists(), "{e}");
        eprintln!("warning: {e}; using the existing {}", path.display());
    }
    path
}

/// Spawns `cmd` with stdout piped and returns the first stdout line for which `pick`
/// returns a value. Stdout keeps being drained afterwards, so a chatty child never blocks
/// on a full pipe.
fn spawn_and_read<T: Send + 'static>(
    mut cmd: Command,
    timeout: Duration,
    pick: impl Fn(&str) -> Option<T> + Send + 'static,
) -> (ChildGuard, T) {
    let mut child = ChildGuard(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !found {
                if let Some(v) = pick(&line) {
                    found = true;
                    let _ = tx.send(v);
                }
            }
        }
    });
    let value = rx
        .recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("{cmd:?} printed no expected line within {timeout:?}"));
    (child, value)
}

/// Connects and waits for the `whoami` answer, which proves the connection is registered
/// (a message addressed to it from now on is delivered).
fn ready_user(addr: std::net::SocketAddr, id: u64, name: &str) -> User {
    let mut u = User::connect(addr, id, name);
    u.send(json!({"pid": "w", "type": "generic_request", "payload": {"action": "whoami"}}));
    let r = u.recv_type("generic_response");
    assert_eq!(r["payload"]["userId"], id);
    u
}

#[test]
fn chat_history_keeps_the_last_50_messages_and_still_delivers() {
    let started = Instant::now();
    let mut cmd = Command::new(example("chat_history"));
    cmd.args(["--listen", "127.0.0.1:0", "--secret"])
        .arg(std::str::from_utf8(SECRET).expect("ASCII secret"));
    let (_server, addr) = spawn_and_read(cmd, Duration::from_secs(30), |line| {
        line.strip_prefix("listening on ")
            .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
    });
    let mut alice = ready_user(addr, 1, "alice");
    let mut bob = ready_user(addr, 2, "bob");

    for i in 0..60u64 {
        let (from, to, from_id, to_id) = if i % 2 == 0 {
            (&mut alice, &mut bob, 1, 2)
        } else {
            (&mut bob, &mut alice, 2, 1)
        };
        let pid = format!("c{i}");
        from.send(
            json!({"pid": pid, "type": "data_request", "targetUserId": to_id,
            "payload": {"action": "send_message", "resource": "chat",
                        "data": {"text": format!("msg {i}")}}}),
        );
        let ev = to.recv_type("data_event");
        assert_eq!(ev["fromUserId"], from_id, "message {i}: {ev}");
        assert_eq!(ev["payload"]["data"]["text"], format!("msg {i}"));
        let ack = from.recv_type("server_ack");
        assert_eq!(ack["payload"]["acknowledgedPid"], pid);
    }

    // Both sides see the same conversation; `withUserId` may be a number or a string.
    for (user, with) in [(&mut alice, json!(2)), (&mut bob, json!("1"))] {
        user.send(json!({"pid": "h", "type": "generic_request",
            "payload": {"action": "get_history", "data": {"withUserId": with}}}));
        let r = user.recv_type("generic_response");
        assert_eq!(r["pid"], "h");
        let messages = r["payload"]["messages"].as_array().expect("messages array");
        assert_eq!(messages.len(), 50, "{r}");
        let mut last_at = String::new();
        for (m, i) in messages.iter().zip(10u64..) {
            assert_eq!(m["text"], format!("msg {i}"), "oldest first: {m}");
            let (from, to) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
            assert_eq!(
                (m["from"].as_u64(), m["to"].as_u64()),
                (Some(from), Some(to))
            );
            let at = m["at"].as_str().expect("at").to_owned();
            assert!(at.len() == 24 && at.ends_with('Z'), "RFC 3339 ms: {at}");
            assert!(at >= last_at, "timestamps in order");
            last_at = at;
        }
    }

    // A message to an offline user is refused (404) and not recorded.
    alice.send(
        json!({"pid": "off", "type": "data_request", "targetUserId": 3,
        "payload": {"resource": "chat", "data": {"text": "anyone?"}}}),
    );
    let err = alice.recv_type("error_notification");
    assert_eq!(err["error"]["code"], 404);
    alice.send(json!({"pid": "h3", "type": "generic_request",
        "payload": {"action": "get_history", "data": {"withUserId": 3}}}));
    let r = alice.recv_type("generic_response");
    assert_eq!(r["payload"], json!({"messages": []}));

    // Bad arguments are the handler's 422; unknown actions still reach the gateway's 501.
    alice.send(json!({"pid": "bad", "type": "generic_request",
        "payload": {"action": "get_history", "data": {}}}));
    let err = alice.recv_type("error_notification");
    assert_eq!(err["error"]["code"], 422);
    assert_eq!(err["error"]["originalPid"], "bad");
    alice.send(json!({"pid": "u", "type": "generic_request", "payload": {"action": "nope"}}));
    let err = alice.recv_type("error_notification");
    assert_eq!(err["error"]["code"], 501);
    assert_eq!(err["error"]["originalPid"], "u");
    eprintln!("chat_history test took {:?}", started.elapsed());
}

#[test]
fn dev_banner_p2p_demo_command_works() {
    let started = Instant::now();
    let p2p_demo = example("p2p_demo");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_customws"));
    cmd.args([
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
    ]);
    const MARKER: &str = "cargo run --release --example p2p_demo -- ";
    let (_server, args) = spawn_and_read(cmd, Duration::from_secs(30), |line| {
        line.split_once(MARKER).map(|(_, rest)| {
            rest.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(args.len(), 3, "URL and two tokens: {args:?}");
    assert!(args[0].starts_with("ws://127.0.0.1:") && args[0].ends_with("/ws"));

    let out = Command::new(&p2p_demo)
        .args(&args)
        .output()
        .expect("run p2p_demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "p2p_demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("bob:   received data_event") && stdout.contains("Hi Bob, this is Alice."),
        "{stdout}"
    );
    assert!(stdout.contains(r#""fromUserId":1"#), "{stdout}");
    assert!(
        stdout.contains("alice: received server_ack")
            && stdout.contains(r#""acknowledgedPid":"p2p-demo-1","status":"delivered""#),
        "{stdout}"
    );
    eprintln!("dev banner + p2p_demo test took {:?}", started.elapsed());
}
