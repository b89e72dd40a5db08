//! The shard runtime over real loopback sockets, in echo mode: upgrade success and every
//! upgrade error status, slowloris, many connections over two shards, the close handshake.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use customws::echo::Echo;
use customws::Server;
use support::*;
use tungstenite::Message;

fn echo_server(shards: usize) -> Server {
    Server::start(echo_config(shards), |_| Echo).unwrap()
}

#[test]
fn upgrade_and_echo_text_and_binary() {
    let server = echo_server(2);
    let mut ws = connect(server.local_addr(), &[]).unwrap();
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(next_data(&mut ws), Message::binary(vec![0u8, 1, 2, 255]));
    let big = "x".repeat(300_000);
    ws.send(Message::text(big.clone())).unwrap();
    assert_eq!(next_data(&mut ws), Message::text(big));
}

#[test]
fn accept_key_is_correct() {
    let server = echo_server(1);
    let resp = raw_exchange(
        server.local_addr(),
        upgrade_request("/ws", "").as_bytes(),
        Duration::from_millis(300),
    );
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
}

#[test]
fn upgrade_errors_have_statuses_and_json_bodies() {
    let server = echo_server(1);
    let addr = server.local_addr();
    let cases: Vec<(String, u16)> = vec![
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".into(), 404),
        ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        (
            upgrade_request("/ws", "").replace("Upgrade: websocket", "Upgrade: h2c"),
            400,
        ),
        (
            upgrade_request("/ws", "").replace("Connection: Upgrade", "Connection: keep-alive"),
            400,
        ),
        (
            upgrade_request("/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            400,
        ),
        (
            upgrade_request("/ws", "").replace("Version: 13", "Version: 8"),
            426,
        ),
        (upgrade_request("/ws", "").replace("GET", "POST"), 400),
        ("garbage\r\n\r\n".into(), 400),
        (
            upgrade_request("/ws", &format!("X-Big: {}\r\n", "a".repeat(10_000))),
            431,
        ),
        (upgrade_request("/ws", &"X-A: b\r\n".repeat(200)), 431),
    ];
    for (req, want) in cases {
        let resp = raw_exchange(addr, req.as_bytes(), Duration::from_secs(2));
        assert_eq!(
            status_of(&resp),
            want,
            "request {req:?} got {}",
            String::from_utf8_lossy(&resp)
        );
        let body = body_of(&resp);
        assert_eq!(body["error"]["code"], want, "body of {want}: {body}");
        assert!(body["error"]["message"].is_string());
        if want == 426 {
            assert!(String::from_utf8_lossy(&resp).contains("Sec-WebSocket-Version: 13"));
        }
    }
}

#[test]
fn healthz_answers_200() {
    let server = echo_server(1);
    let resp = raw_exchange(
        server.local_addr(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&resp), 200);
    assert_eq!(body_of(&resp)["status"], "ok");
}

#[test]
fn slowloris_is_dropped_after_the_handshake_timeout() {
    let mut cfg = echo_config(1);
    cfg.handshake_timeout = Duration::from_millis(300);
    let server = Server::start(cfg, |_| Echo).unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    // One header byte every 50 ms: never completes within the timeout.
    let req = upgrade_request("/ws", "");
    let mut closed = false;
    for b in req.as_bytes().iter().take(40) {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !closed {
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the server must close the connection, not answer");
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed too early: {elapsed:?}"
    );
}

#[test]
fn many_connections_spread_over_two_shards() {
    let server = echo_server(2);
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..200).map(|_| connect(addr, &[]).unwrap()).collect();
    assert!(wait_until(Duration::from_secs(5), || server
        .open_connections()
        == 200));
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("m{i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(next_data(ws), Message::text(format!("m{i}")));
    }
    // SO_REUSEPORT spread them: both shards hold connections.
    let text = server.metrics_text();
    for shard in 0..2 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("customws_connections{{shard=\"{shard}\"}}")))
            .unwrap();
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 0, "shard {shard} holds no connection: {text}");
    }
    drop(clients);
    assert!(wait_until(Duration::from_secs(5), || server
        .open_connections()
        == 0));
}

#[test]
fn close_handshake_echoes_code_and_server_closes_tcp() {
    let server = echo_server(1);
    let mut ws = connect(server.local_addr(), &[]).unwrap();
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "bye".into(),
    }))
    .unwrap();
    let got = expect_close(&mut ws);
    assert_eq!(got.map(|g| g.0), Some(1001));
    // The server closes the TCP connection: the next read sees EOF.
    loop {
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(tungstenite::Error::AlreadyClosed) => break,
            Ok(_) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}

#[test]
fn protocol_error_closes_with_1002() {
    let server = echo_server(1);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    // An unmasked client frame is a protocol error.
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let resp = read_to_close(&mut s, Duration::from_secs(5));
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let frame = &resp[at..];
    assert_eq!(frame[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1002);
}

#[test]
fn message_over_the_limit_closes_with_1009() {
    let mut cfg = echo_config(1);
    cfg.max_message_size = 1000;
    let server = Server::start(cfg, |_| Echo).unwrap();
    let mut ws = connect(server.local_addr(), &[]).unwrap();
    ws.send(Message::text("a".repeat(1000))).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("a".repeat(1000)));
    ws.send(Message::text("a".repeat(1001))).unwrap();
    assert_eq!(expect_close(&mut ws).map(|c| c.0), Some(1009));
}

#[test]
fn too_many_fragments_closes_the_connection() {
    let mut cfg = echo_config(1);
    cfg.max_fragments = 8;
    let server = Server::start(cfg, |_| Echo).unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let mut frames = Vec::new();
    for i in 0..20 {
        let opcode = if i == 0 { 0x01 } else { 0x00 };
        frames.extend_from_slice(&[opcode, 0x81, 0, 0, 0, 0, b'a']);
    }
    s.write_all(&frames).unwrap();
    let resp = read_to_close(&mut s, Duration::from_secs(5));
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let frame = &resp[at..];
    assert_eq!(frame[0], 0x88, "a close frame, got {frame:?}");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1009);
}

#[test]
fn pipelined_frames_behind_the_request_are_processed() {
    let server = echo_server(1);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = upgrade_request("/ws", "").into_bytes();
    // Masked "hi" with a zero mask.
    req.extend_from_slice(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !got.ends_with(&[0x81, 0x02, b'h', b'i']) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.ends_with(&[0x81, 0x02, b'h', b'i']));
}

#[test]
fn stop_path_ends_every_shard() {
    let server = echo_server(2);
    let _ws = connect(server.local_addr(), &[]).unwrap();
    server.stop();
    server.join().unwrap();
}

/// The syscall counters count the socket reads and writes: ten frames that arrive in one
/// segment are read together and echoed with far fewer than ten writes.
#[test]
fn socket_syscalls_are_counted_and_batched() {
    let server = echo_server(1);
    let mut ws = connect(server.local_addr(), &[]).unwrap();
    for i in 0..10 {
        ws.write(Message::text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap(); // one write: the ten frames travel in one segment
    for i in 0..10 {
        assert_eq!(next_data(&mut ws), Message::text(format!("m{i}")));
    }
    let text = server.metrics_text();
    let value = |op: &str| -> u64 {
        let prefix = format!("customws_socket_syscalls_total{{op=\"{op}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&prefix));
        line.unwrap_or_else(|| panic!("no {prefix}: {text}"))[prefix.len()..]
            .parse()
            .unwrap()
    };
    let (reads, writes) = (value("read"), value("write"));
    // The request, then the frames (a short read ends each: no read that says EAGAIN).
    assert!((2..=4).contains(&reads), "reads {reads}");
    // The 101, then the echoes of one read in one write.
    assert!((2..=4).contains(&writes), "writes {writes}");
}

/// Keepalive is a sweep over the slab in slices: with hundreds of silent peers spread over
/// every slice, each is pinged and then dropped (not one left behind, none early), and the
/// metric counts each once.
#[test]
fn keepalive_sweep_pings_and_drops_every_silent_peer() {
    let mut cfg = echo_config(1);
    cfg.ping_interval = Duration::from_millis(100);
    cfg.pong_wait = Duration::from_millis(400);
    let server = Server::start(cfg, |_| Echo).unwrap();
    let addr = server.local_addr();
    let start = Instant::now();
    let mut silent: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
            s
        })
        .collect();
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(
            got[head_end..].windows(2).any(|w| w == [0x89, 0x00]),
            "pinged before the drop"
        );
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "too early: {elapsed:?}"
    );
    assert!(wait_until(Duration::from_secs(2), || server
        .open_connections()
        == 0));
    let text = server.metrics_text();
    assert!(
        text.contains("customws_closes_total{reason=\"keepalive_timeout\"} 300"),
        "{text}"
    );
}
