//! The library API over real sockets: a custom `Handler` asks the client questions
//! (`Ctx::request` → `generic_response`) and sends messages that need an ack
//! (`Ctx::send_with_ack` → `client_ack`), each with a timeout and a callback.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use customws::gateway::{AckOutcome, ConnRef, Ctx, GatewayFactory, Handler, ResponseOutcome};
use serde_json::json;
use support::*;

#[derive(Debug)]
enum Seen {
    Response(ResponseOutcome),
    Ack(AckOutcome),
}

struct Asker {
    tx: mpsc::Sender<(u64, Seen)>,
}

impl Handler for Asker {
    fn on_connect(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnRef) {
        let user = conn.user.0;
        let timeout = Duration::from_millis(if user == 3 { 300 } else { 5000 });
        ctx.request(
            conn.key,
            "get_client_info",
            Some(br#"{"fields":["version"]}"#),
            timeout,
            Box::new(move |h: &mut Asker, _ctx, outcome| {
                let _ = h.tx.send((user, Seen::Response(outcome)));
            }),
        );
        ctx.send_with_ack(
            conn.key,
            "data_event",
            br#"{"notice":"terms changed"}"#,
            timeout,
            Box::new(move |h: &mut Asker, _ctx, outcome| {
                let _ = h.tx.send((user, Seen::Ack(outcome)));
            }),
        );
    }
}

#[test]
fn requests_and_acks_complete_or_time_out() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let cfg = gateway_config(2);
    let factory = GatewayFactory::with_handler(&cfg, move |_shard| Asker {
        tx: tx.lock().unwrap().clone(),
    })
    .unwrap();
    let server = customws::Server::start(cfg, move |s| factory.build::<Asker>(s)).unwrap();
    let addr = server.local_addr();

    // User 1 answers both.
    let mut u = User::connect(addr, 1, "alice");
    let req = u.recv_type("generic_request");
    assert_eq!(req["payload"]["action"], "get_client_info");
    assert_eq!(req["payload"]["data"]["fields"][0], "version");
    let pid = req["pid"].as_str().unwrap().to_string();
    let notice = u.recv_type("data_event");
    let ack_pid = notice["pid"].as_str().unwrap().to_string();
    assert_eq!(notice["payload"]["notice"], "terms changed");
    u.send(json!({"pid": pid, "type": "generic_response", "payload": {"version": "1.2.3"}}));
    u.send(
        json!({"type": "client_ack", "payload": {"acknowledgedPid": ack_pid, "status": "read"}}),
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    assert!(got.iter().any(|(id, s)| *id == 1
        && matches!(s, Seen::Response(ResponseOutcome::Response(v)) if v["version"] == "1.2.3")), "{got:?}");
    assert!(
        got.iter().any(|(id, s)| *id == 1
            && matches!(s, Seen::Ack(AckOutcome::Acked { status: Some(st), .. }) if st == "read")),
        "{got:?}"
    );

    // User 3 answers neither: both callbacks report a timeout.
    let _silent = User::connect(addr, 3, "carol");
    let mut timeouts = Vec::new();
    for _ in 0..2 {
        timeouts.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    assert!(
        timeouts
            .iter()
            .any(|(id, s)| *id == 3 && matches!(s, Seen::Response(ResponseOutcome::TimedOut))),
        "{timeouts:?}"
    );
    assert!(
        timeouts
            .iter()
            .any(|(id, s)| *id == 3 && matches!(s, Seen::Ack(AckOutcome::TimedOut))),
        "{timeouts:?}"
    );

    // A late or forged answer for an unknown pid is ignored (no callback, no error).
    u.send(json!({"pid": "nope", "type": "generic_response", "payload": {}}));
    u.send(json!({"type": "client_ack", "payload": {"acknowledgedPid": "nope"}}));
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}
