//! An idiomatic tokio gateway implementing the customws P2P subset: the reference point for
//! `customws serve` in `benches/compare.sh`.
//!
//! The usual shape of such a server, written carefully:
//! - `tokio-tungstenite` with the token checked in the handshake callback
//!   (`Authorization: Bearer <jwt>`, HS256 via `jsonwebtoken`); `401` otherwise;
//! - one reader task and one writer task per connection; the writer owns the sink and drains
//!   a bounded `mpsc` channel, feeding everything queued before one flush (one `write` per
//!   burst, not per message);
//! - `DashMap<user id, Vec<(connection id, Sender)>>` as the routing table;
//! - `serde_json` envelopes: `data_request` with `targetUserId` → `data_event` (payload with
//!   server-set `senderName`, `timestamp`, `messageId`) to every connection of the target,
//!   `server_ack` to the sender when it gave a `pid`, `error_notification` 404 when the target
//!   is offline; without `targetUserId` → broadcast to every other connection.
//! - The serialized event is built once and shared (`Utf8Bytes` clones are reference counts).
//!
//! Runtime: `current_thread`, because the comparison pins every server to one core (see the
//! echo peer for why a multi-thread runtime only costs there).
//!
//! Usage: `tokio-gateway ADDR SECRET`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// Per-connection outbound queue length; a consumer this far behind loses messages.
const OUTBOUND_CAPACITY: usize = 4096;

type Outbound = mpsc::Sender<Message>;

struct State {
    users: DashMap<u64, Vec<(u64, Outbound)>>,
    key: DecodingKey,
    validation: Validation,
    next_conn: AtomicU64,
    next_message: AtomicU64,
}

#[derive(Deserialize)]
struct Claims {
    sub: Value,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    pid: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "targetUserId", default)]
    target: Option<u64>,
    #[serde(default)]
    payload: Value,
}

struct Identity {
    user: u64,
    name: String,
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9002".to_string());
    let secret = args.next().unwrap_or_else(|| "bench-secret".to_string());
    let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 30;
    let state = Arc::new(State {
        users: DashMap::new(),
        key: DecodingKey::from_secret(secret.as_bytes()),
        validation,
        next_conn: AtomicU64::new(1),
        next_message: AtomicU64::new(1),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("tokio-gateway listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            tokio::spawn(serve(state.clone(), stream));
        }
    })
}

fn authenticate(state: &State, req: &Request) -> Option<Identity> {
    let header = req.headers().get("authorization")?.to_str().ok()?;
    let token = header.strip_prefix("Bearer ")?;
    let data = jsonwebtoken::decode::<Claims>(token, &state.key, &state.validation).ok()?;
    let user = match &data.claims.sub {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    (user > 0).then(|| Identity {
        user,
        name: data.claims.name.unwrap_or_default(),
    })
}

async fn serve(state: Arc<State>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut identity = None;
    // The Err type is tungstenite's API, not ours.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match authenticate(&state, req) {
            Some(id) => {
                identity = Some(id);
                Ok(resp)
            }
            None => {
                let mut err = ErrorResponse::new(Some(
                    r#"{"error":{"code":401,"message":"unauthenticated"}}"#.to_string(),
                ));
                *err.status_mut() = StatusCode::UNAUTHORIZED;
                Err(err)
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Some(me) = identity else { return };
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(OUTBOUND_CAPACITY);
    state
        .users
        .entry(me.user)
        .or_default()
        .push((conn, tx.clone()));

    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(msg) = rx.try_recv() {
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });

    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(text) => handle_text(&state, &me, conn, &tx, text.as_str()),
            Message::Close(_) => break,
            _ => {}
        }
    }

    state.users.remove_if_mut(&me.user, |_, conns| {
        conns.retain(|(id, _)| *id != conn);
        conns.is_empty()
    });
    drop(tx);
    let _ = writer.await;
}

fn handle_text(state: &State, me: &Identity, conn: u64, tx: &Outbound, text: &str) {
    let msg: Incoming = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(_) => {
            reply(tx, error(None, 400, "malformed message"));
            return;
        }
    };
    if msg.kind != "data_request" {
        reply(tx, error(msg.pid.as_deref(), 400, "unknown type"));
        return;
    }
    let mut payload = match msg.payload {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    payload.insert("senderName".into(), Value::String(me.name.clone()));
    payload.insert(
        "timestamp".into(),
        Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    let id = state.next_message.fetch_add(1, Ordering::Relaxed);
    payload.insert("messageId".into(), Value::String(format!("m{id}")));
    let event = json!({"type": "data_event", "fromUserId": me.user, "payload": payload});
    let event = Message::text(event.to_string());

    match msg.target {
        Some(target) => {
            let delivered = match state.users.get(&target) {
                Some(conns) if !conns.is_empty() => {
                    for (_, out) in conns.iter() {
                        let _ = out.try_send(event.clone());
                    }
                    true
                }
                _ => false,
            };
            if !delivered {
                reply(
                    tx,
                    error(msg.pid.as_deref(), 404, "target user not connected"),
                );
                return;
            }
        }
        None => {
            for entry in state.users.iter() {
                for (id, out) in entry.value() {
                    if *id != conn {
                        let _ = out.try_send(event.clone());
                    }
                }
            }
        }
    }
    if let Some(pid) = msg.pid {
        let ack = json!({"type": "server_ack",
            "payload": {"acknowledgedPid": pid, "status": "delivered"}});
        reply(tx, ack);
    }
}

fn reply(tx: &Outbound, value: Value) {
    let _ = tx.try_send(Message::text(value.to_string()));
}

fn error(pid: Option<&str>, code: u16, message: &str) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(pid) = pid {
        err["originalPid"] = Value::String(pid.to_string());
    }
    json!({"type": "error_notification", "error": err})
}
