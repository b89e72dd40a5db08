//! Shared helpers for the integration tests: servers on port 0, raw HTTP, and WebSocket
//! clients (tungstenite as the reference client).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use customws::config::Config;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

pub type Client = WebSocket<TcpStream>;

/// Echo-mode config on 127.0.0.1:0 with `shards` shards and no admin listener.
pub fn echo_config(shards: usize) -> Config {
    let mut c = Config::echo();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.admin_listen = None;
    c.shards = NonZeroUsize::new(shards).unwrap();
    c
}

/// Sends raw bytes and reads until the server closes (or `timeout`).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(request).unwrap();
    read_until(&mut s, timeout, true)
}

/// Reads until the server closes the connection (or `timeout`).
pub fn read_to_close(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    read_until(s, timeout, false)
}

/// Reads until EOF, the timeout, or (with `stop_after_101`) the end of a 101 response head.
fn read_until(s: &mut TcpStream, timeout: Duration, stop_after_101: bool) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        // A 101 answer is complete at the end of its head (the socket stays open).
        if stop_after_101
            && out.starts_with(b"HTTP/1.1 101")
            && out.windows(4).any(|w| w == b"\r\n\r\n")
        {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(_) => break,
        }
    }
    out
}

/// Status code of a raw HTTP response.
pub fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// JSON body of a raw HTTP response.
pub fn body_of(resp: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(resp);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Connects a tungstenite client to `ws://addr/ws` with extra headers.
pub fn connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Client, tungstenite::Error> {
    connect_path(addr, "/ws", headers)
}

pub fn connect_path(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    match tungstenite::client(req, stream) {
        Ok((ws, _resp)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            panic!("blocking handshake interrupted")
        }
    }
}

/// Reads the next text or binary message (skipping pings/pongs), with the socket's timeout.
pub fn next_data(ws: &mut Client) -> Message {
    loop {
        if let m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)) =
            ws.read().expect("read")
        {
            return m;
        }
    }
}

/// Reads until a close frame arrives; returns its code (and reason).
pub fn expect_close(ws: &mut Client) -> Option<(u16, String)> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                return None
            }
            Err(e) => panic!("expected a close frame, got error {e:?}"),
        }
    }
}

/// Polls `f` until it returns true or the deadline passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

/// Gateway config on 127.0.0.1:0 with an HS256 secret, `shards` shards, all origins.
pub fn gateway_config(shards: usize) -> Config {
    let auth = customws::config::AuthConfig {
        key: customws::config::JwtKey::Hmac(SECRET.to_vec()),
        leeway: Duration::from_secs(0),
        issuer: None,
        audience: None,
        allow_query_token: true,
        allowed_origins: vec!["https://app.example".into()],
    };
    let mut c = Config::gateway(auth);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.admin_listen = None;
    c.shards = NonZeroUsize::new(shards).unwrap();
    c
}

pub fn gateway(config: Config) -> customws::Server {
    let factory = customws::gateway::GatewayFactory::new(&config).unwrap();
    customws::Server::start(config, move |s| {
        factory.build::<customws::gateway::BuiltIn>(s)
    })
    .unwrap()
}

pub fn token(sub: u64, name: &str) -> String {
    customws::auth::mint_hs256(SECRET, sub, Some(name), &[], Duration::from_secs(3600))
}

pub fn token_with_roles(sub: u64, name: &str, roles: &[&str]) -> String {
    customws::auth::mint_hs256(SECRET, sub, Some(name), roles, Duration::from_secs(3600))
}

/// A JSON-speaking test client.
pub struct User {
    pub ws: Client,
    pub id: u64,
}

impl User {
    pub fn connect(addr: SocketAddr, id: u64, name: &str) -> User {
        let t = token(id, name);
        let ws = connect(addr, &[("Authorization", &format!("Bearer {t}"))]).expect("upgrade");
        User { ws, id }
    }

    pub fn send(&mut self, v: serde_json::Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_raw(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_string())).unwrap();
    }

    /// Next JSON message (panics on close or timeout).
    pub fn recv(&mut self) -> serde_json::Value {
        match next_data(&mut self.ws) {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("json"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Next message of the given type, skipping others (presence chatter).
    pub fn recv_type(&mut self, ty: &str) -> serde_json::Value {
        loop {
            let v = self.recv();
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Next presence event about `user` (skipping other messages and other users' presence).
    pub fn recv_presence_of(&mut self, user: u64) -> serde_json::Value {
        loop {
            let v = self.recv_type("presence_event");
            if v["payload"]["userId"] == user {
                return v;
            }
        }
    }

    /// Reads and discards whatever arrives within `wait`.
    pub fn drain(&mut self, wait: Duration) {
        self.ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            let _ = self.ws.read();
        }
        self.ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }

    /// Asserts nothing arrives within `wait` (other than pings).
    pub fn expect_silence(&mut self, wait: Duration) {
        let s = self.ws.get_ref();
        s.set_read_timeout(Some(wait)).unwrap();
        let r = self.ws.read();
        self.ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match r {
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Reads messages until the close frame; returns its code.
    pub fn expect_close(&mut self) -> Option<u16> {
        expect_close(&mut self.ws).map(|c| c.0)
    }
}

/// Starts `customws serve` (the real binary) with a test secret on an ephemeral port plus
/// `args`; returns the child and the address it logged ("listening addr=…").
pub fn spawn_serve_binary(args: &[&str]) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let secret = String::from_utf8(SECRET.to_vec()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_customws"))
        .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", &secret])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if !line.contains("listening") {
                continue;
            }
            if let Some(rest) = line.split("addr=").nth(1) {
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server logged its address");
    (child, addr.parse().unwrap())
}
