//! Two users talk peer-to-peer through a running gateway: Bob listens, Alice sends him a
//! `data_request`, Bob prints the `data_event` he receives and Alice prints her `server_ack`.
//!
//! ```text
//! customws serve --dev          # prints the exact command below, tokens filled in
//! cargo run --release --example p2p_demo -- ws://127.0.0.1:8082/ws <alice-token> <bob-token>
//! ```
//!
//! ```text
//!  bob ──upgrade──▶ gateway ◀──upgrade── alice
//!  bob ── whoami ─▶ (proves bob is registered on his home shard before alice sends)
//!                   gateway ◀── data_request {pid, targetUserId: bob} ── alice
//!  bob ◀─ data_event {fromUserId: alice, payload + senderName/timestamp/messageId}
//!                   gateway ── server_ack {acknowledgedPid: pid, status: delivered} ─▶ alice
//! ```
//!
//! Bob's user id comes from the `sub` claim of his token (the JWT payload is decoded, not
//! verified: the gateway verifies it; the demo only needs the number), or from `--bob-id`.
//! Exits 0 when the message was delivered and acknowledged; otherwise prints why and exits 1
//! (any step taking longer than 10 s in total counts as a failure).

use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// The whole exchange must finish within this.
const DEADLINE: Duration = Duration::from_secs(10);

/// The pid Alice's message carries; the ack must name it.
const PID: &str = "p2p-demo-1";

const USAGE: &str = "usage: p2p_demo ws://HOST:PORT/ws ALICE_TOKEN BOB_TOKEN [--bob-id N]";

/// Why the demo failed (each is one line on stderr).
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("{USAGE}\n{0}")]
    Usage(String),
    #[error("bob's token: {0} (pass --bob-id N to skip decoding it)")]
    BadToken(&'static str),
    #[error("bad URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("{who}: cannot connect to {addr}: {source}")]
    Connect {
        who: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{who}: the gateway refused the upgrade: {detail}")]
    Upgrade { who: &'static str, detail: String },
    #[error("{who}: timed out after {}s waiting for {waiting_for}", DEADLINE.as_secs())]
    Timeout {
        who: &'static str,
        waiting_for: &'static str,
    },
    #[error("{who}: connection failed while waiting for {waiting_for}: {source}")]
    Socket {
        who: &'static str,
        waiting_for: &'static str,
        source: tungstenite::Error,
    },
    #[error("{who}: the gateway answered with an error: {message}")]
    Gateway { who: &'static str, message: String },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2p_demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    url: String,
    alice_token: String,
    bob_token: String,
    bob_id: Option<u64>,
}

fn parse_args() -> Result<Args, DemoError> {
    let mut positional = Vec::new();
    let mut bob_id = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--bob-id" => {
                let v = args
                    .next()
                    .ok_or_else(|| DemoError::Usage("--bob-id needs a value".into()))?;
                bob_id = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| DemoError::Usage(format!("bad --bob-id {v:?}")))?,
                );
            }
            _ => positional.push(arg),
        }
    }
    let [url, alice_token, bob_token]: [String; 3] =
        positional.try_into().map_err(|p: Vec<String>| {
            DemoError::Usage(format!("expected 3 arguments, got {}", p.len()))
        })?;
    Ok(Args {
        url,
        alice_token,
        bob_token,
        bob_id,
    })
}

fn run() -> Result<(), DemoError> {
    let args = parse_args()?;
    let started = Instant::now();
    let deadline = started + DEADLINE;
    let bob_id = match args.bob_id {
        Some(id) => id,
        None => jwt_sub(&args.bob_token)?,
    };

    let mut bob = Peer::connect("bob", &args.url, &args.bob_token, deadline)?;
    let bob_me = bob.whoami()?;
    println!(
        "bob:   connected as user {} ({})",
        bob_me["userId"],
        bob_me["username"].as_str().unwrap_or("no name")
    );
    if bob_me["userId"].as_u64() != Some(bob_id) {
        println!(
            "note:  addressing user {bob_id}, but bob's connection is user {}",
            bob_me["userId"]
        );
    }
    let mut alice = Peer::connect("alice", &args.url, &args.alice_token, deadline)?;
    let alice_me = alice.whoami()?;
    println!(
        "alice: connected as user {} ({})",
        alice_me["userId"],
        alice_me["username"].as_str().unwrap_or("no name")
    );

    let request = json!({
        "pid": PID,
        "type": "data_request",
        "targetUserId": bob_id,
        "payload": {
            "action": "send_message",
            "resource": "chat",
            "data": {"text": "Hi Bob, this is Alice."}
        }
    });
    println!("alice: sends {request}");
    alice.send(&request)?;

    // Alice's answer first: a 404 (Bob not connected) or 403 fails fast instead of
    // leaving Bob waiting for the deadline. The gateway acks only once the event is queued
    // on Bob's connections, so it is already on its way to him.
    let ack = alice.recv_until("the server_ack", |m| {
        m["type"] == "server_ack" && m["payload"]["acknowledgedPid"] == PID
    })?;
    let alice_id = alice_me["userId"].clone();
    let event = bob.recv_until("the data_event", |m| {
        m["type"] == "data_event" && m["fromUserId"] == alice_id
    })?;
    println!("bob:   received data_event {event}");
    println!("alice: received server_ack {ack}");

    bob.close();
    alice.close();
    println!(
        "ok: delivered and acknowledged in {} ms",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// The `sub` claim of a JWT, read without verifying the signature (the gateway verifies;
/// the demo only needs to know whom to address). `sub` may be a number or a decimal string.
fn jwt_sub(token: &str) -> Result<u64, DemoError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or(DemoError::BadToken("not a JWT (no '.')"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| DemoError::BadToken("payload is not base64url"))?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| DemoError::BadToken("payload is not JSON"))?;
    let sub = match &claims["sub"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    sub.filter(|&n| n > 0)
        .ok_or(DemoError::BadToken("no positive integer `sub` claim"))
}

/// One user's WebSocket connection, sharing the demo's deadline.
struct Peer {
    who: &'static str,
    ws: WebSocket<TcpStream>,
    deadline: Instant,
    next_pid: u32,
}

impl Peer {
    /// Connects with `Authorization: Bearer <token>` (non-browser clients send the header;
    /// browsers use the subprotocol or the query parameter instead).
    fn connect(
        who: &'static str,
        url: &str,
        token: &str,
        deadline: Instant,
    ) -> Result<Peer, DemoError> {
        let bad_url = |why: &str| DemoError::BadUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let mut request = url
            .into_client_request()
            .map_err(|e| bad_url(&e.to_string()))?;
        match request.uri().scheme_str() {
            Some("ws") => {}
            Some("wss") => return Err(bad_url("wss:// needs TLS; this demo speaks plain ws://")),
            _ => return Err(bad_url("expected ws://HOST:PORT/PATH")),
        }
        let host = request.uri().host().ok_or_else(|| bad_url("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = request.uri().port_u16().unwrap_or(80);
        let addr = format!("{host}:{port}");
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            DemoError::Usage(format!("{who}'s token has characters a header can't carry"))
        })?;
        request.headers_mut().insert("Authorization", value);

        let connect_err = |source| DemoError::Connect {
            who,
            addr: addr.clone(),
            source,
        };
        let sock_addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| connect_err(std::io::ErrorKind::NotFound.into()))?;
        let remaining = remaining(deadline).ok_or(DemoError::Timeout {
            who,
            waiting_for: "the connection",
        })?;
        let stream = TcpStream::connect_timeout(&sock_addr, remaining).map_err(connect_err)?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(remaining))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(remaining))
            .map_err(connect_err)?;
        let (ws, _response) = tungstenite::client(request, stream).map_err(|e| {
            let detail = match e {
                tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
                    let body = resp
                        .body()
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    format!("HTTP {} {}", resp.status(), body.trim())
                }
                tungstenite::HandshakeError::Failure(e) => e.to_string(),
                tungstenite::HandshakeError::Interrupted(_) => "handshake timed out".into(),
            };
            DemoError::Upgrade { who, detail }
        })?;
        Ok(Peer {
            who,
            ws,
            deadline,
            next_pid: 0,
        })
    }

    fn send(&mut self, msg: &Value) -> Result<(), DemoError> {
        self.ws
            .send(Message::text(msg.to_string()))
            .map_err(|source| DemoError::Socket {
                who: self.who,
                waiting_for: "a send",
                source,
            })
    }

    /// Asks the gateway who this connection is. The answer also proves the connection is
    /// registered on its home shard, so a message addressed to it from now on is delivered.
    fn whoami(&mut self) -> Result<Value, DemoError> {
        self.next_pid += 1;
        let pid = format!("{}-whoami-{}", self.who, self.next_pid);
        self.send(
            &json!({"pid": pid, "type": "generic_request", "payload": {"action": "whoami"}}),
        )?;
        let resp = self.recv_until("the whoami answer", |m| m["pid"] == pid.as_str())?;
        Ok(resp["payload"].clone())
    }

    /// Reads JSON messages until `wanted` matches one, skipping others (presence events);
    /// an `error_notification` ends the demo with its message.
    fn recv_until(
        &mut self,
        waiting_for: &'static str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value, DemoError> {
        let (who, deadline) = (self.who, self.deadline);
        loop {
            let left = remaining(deadline).ok_or(DemoError::Timeout { who, waiting_for })?;
            let _ = self.ws.get_ref().set_read_timeout(Some(left));
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => {
                    return Err(DemoError::Gateway {
                        who,
                        message: format!("connection closed ({frame:?})"),
                    })
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(DemoError::Timeout { who, waiting_for })
                }
                Err(source) => {
                    return Err(DemoError::Socket {
                        who,
                        waiting_for,
                        source,
                    })
                }
            };
            let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if msg["type"] == "error_notification" {
                return Err(DemoError::Gateway {
                    who,
                    message: msg["error"].to_string(),
                });
            }
            if wanted(&msg) {
                return Ok(msg);
            }
        }
    }

    /// Best-effort close handshake (the demo's result does not depend on it).
    fn close(mut self) {
        let _ = self
            .ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(500)));
        if self.ws.close(None).is_ok() {
            while self.ws.read().is_ok() {}
        }
    }
}

/// Time left before `deadline`, or `None` once it passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}
