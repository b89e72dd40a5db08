//! One regression test per known attack class (field notes, "Known attacks"), over real
//! loopback sockets where the behaviour is on the wire, at the library level otherwise; plus
//! every input the fuzzers (`fuzz/`) found, named after what it broke.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use customws::auth::{mint, mint_hs256, AuthError, Verifier};
use customws::config::{AuthConfig, Config, JwtKey};
use customws::echo::Echo;
use customws::proto::envelope::{parse_client, EnvelopeLimits, EnvelopeRule};
use customws::Server;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use support::*;
use tungstenite::Message;

const SECRET: &[u8] = b"regression-secret-regression-sec";

const RSA_SPKI: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnkGwc0x13IuuBzzqn8g9
DKqr7TyEQ0LQWzqeUaTSGFoUV7JjstE8OE0EqrHz1QwiwOuaXmeH2ZTD7pN56K2J
BtHmy1OsBaRvZv1wMMfoyrmi88HrzN/GXknGnIE7D2YHABXIA6s1rhVJT25FA4Xb
xFL39mSLgP6S+8sTTumqXLSXUggymMkvcR9STfR9gUDqcxqdlzLt4sX5mfRX3bT6
fkav70B+yujXbW8n+8DqHS7XZmHzMa8Gve9nWz47EGOpAxEIlPr4tmPBsw0Q/YUa
a/3NSoEkiEAh2o9cIWwTlSWz3wEKMYWtiWHtrnngIUl3AHf55nlPHbkyHgF8CfTY
tQIDAQAB
-----END PUBLIC KEY-----
";

fn echo_server(config: Config) -> Server {
    Server::start(config, |_| Echo).unwrap()
}

/// A raw client past the 101 (the answer is read and dropped).
fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed during upgrade"
        );
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    s
}

/// A masked client frame (zero mask: the payload goes as is).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Reads until the server's Close frame arrives and returns its code; answers it with a
/// Close so the server drops the TCP connection, and checks that it does.
fn close_code_after(s: &mut TcpStream, timeout: Duration) -> Option<u16> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let code = loop {
        if let Some(at) = got.windows(2).position(|w| w[0] == 0x88 && w[1] <= 125) {
            if let Some(c) = got.get(at + 2..at + 4) {
                break u16::from_be_bytes([c[0], c[1]]);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let _ = s.write_all(&client_frame(0x88, &code.to_be_bytes()));
    let rest = read_to_close(s, timeout);
    assert!(rest.len() < 4096, "server kept sending after its Close");
    Some(code)
}

/// This process's resident memory (the server runs in-process).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

// ---------------------------------------------------------------- handshake (on the wire)

/// tungstenite CVE-2023-43669: a huge header cost minutes of CPU. Refused with 431 at the
/// byte cap, promptly, however much more the client would send.
#[test]
fn huge_header_is_refused_with_431_promptly() {
    let server = echo_server(echo_config(1));
    let start = Instant::now();
    let req = upgrade_request("/ws", &format!("X-Big: {}\r\n", "a".repeat(1 << 20)));
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may close before all of it is written; that is the point.
    let _ = s.write_all(req.as_bytes());
    let resp = read_to_close(&mut s, Duration::from_secs(5));
    assert_eq!(status_of(&resp), 431, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(body_of(&resp)["error"]["code"], 431);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

/// ws CVE-2024-37890: too many headers crashed the server. Refused with 431.
#[test]
fn many_headers_are_refused_with_431() {
    let server = echo_server(echo_config(1));
    // Small headers: well under the byte cap, over the count cap (64).
    let req = upgrade_request("/ws", &"A: b\r\n".repeat(1000));
    let resp = raw_exchange(server.local_addr(), req.as_bytes(), Duration::from_secs(5));
    assert_eq!(status_of(&resp), 431, "{}", String::from_utf8_lossy(&resp));
    // The server is still healthy afterwards.
    let mut ws = connect(server.local_addr(), &[]).unwrap();
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("still here"));
}

// ---------------------------------------------------------------- frames (on the wire)

/// gorilla CVE-2020-27813: a 64-bit length overflowed the read limit. 2^63 − 1 is over any
/// limit (1009); 2^63 has the reserved most significant bit (1002). Either way the connection
/// is closed promptly and nothing is allocated on the peer's word.
#[test]
fn frame_length_2_pow_63_closes_without_allocating() {
    let server = echo_server(echo_config(1));
    let addr = server.local_addr();
    let rss_before = rss_bytes();
    for (len, want) in [(u64::MAX >> 1, 1009), (1u64 << 63, 1002), (u64::MAX, 1002)] {
        let mut s = upgraded(addr);
        let start = Instant::now();
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        s.write_all(&frame).unwrap();
        assert_eq!(
            close_code_after(&mut s, Duration::from_secs(5)),
            Some(want),
            "{len:#x}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    // Thirty-two peers each declare a frame just under the 16 MiB echo limit and send nothing
    // more: memory is committed as bytes arrive, so RSS stays far below 32 × 16 MiB.
    let idle: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut s = upgraded(addr);
            let mut frame = vec![0x82, 0x80 | 127];
            frame.extend_from_slice(&((16u64 << 20) - 1).to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0, 9]);
            s.write_all(&frame).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 128 << 20, "RSS grew by {} MiB", grown >> 20);
    drop(idle);
}

fn one_byte_fragments(n: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(n * 7);
    for i in 0..n {
        let fin = if i + 1 == n { 0x80 } else { 0 };
        let opcode = if i == 0 { 0x2 } else { 0x0 };
        bytes.extend(client_frame(fin | opcode, &[i as u8]));
    }
    bytes
}

/// ws: many tiny fragments exhausted memory. 65,536 one-byte fragments are one message within
/// the echo limits (Autobahn 9.x needs them) and a close 1009 over `max_fragments`.
#[test]
fn many_one_byte_fragments_within_and_over_the_limit() {
    const N: usize = 65_536;
    let expected: Vec<u8> = (0..N).map(|i| i as u8).collect();

    let server = echo_server(echo_config(1));
    let mut ws = connect(server.local_addr(), &[]).unwrap();
    ws.get_mut().write_all(&one_byte_fragments(N)).unwrap();
    assert_eq!(next_data(&mut ws), Message::binary(expected));

    let mut cfg = echo_config(1);
    cfg.max_fragments = 1024;
    let server = echo_server(cfg);
    let mut s = upgraded(server.local_addr());
    // The server closes after fragment 1025; the rest may not be accepted by the socket.
    let _ = s.write_all(&one_byte_fragments(N));
    assert_eq!(close_code_after(&mut s, Duration::from_secs(5)), Some(1009));
}

// ---------------------------------------------------------------- envelopes (library)

/// simd-json once recursed without bound on deep nesting. The pre-scan refuses anything
/// deeper than the cap with 413 before simd-json runs, even 1 MiB of brackets.
#[test]
fn deeply_nested_json_is_refused_with_413() {
    let limits = EnvelopeLimits::default();
    for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
        let depth = 1 << 20;
        let mut text = format!(
            r#"{{"pid":"deep","type":"t","payload":{}"#,
            open.repeat(depth)
        );
        text.push_str(&close.repeat(depth));
        text.push('}');
        let mut buf = text.into_bytes();
        let err = parse_client(&mut buf, &limits).unwrap_err();
        assert_eq!(err.rule, EnvelopeRule::TooDeep);
        assert_eq!(err.code, 413);
        assert_eq!(err.original_pid.as_deref(), Some("deep"));
    }
    // Unterminated nesting too.
    let mut buf = "[".repeat(100_000).into_bytes();
    assert_eq!(parse_client(&mut buf, &limits).unwrap_err().code, 413);
    // Exactly at the cap is fine.
    let inner = limits.max_depth - 1;
    let text = format!(
        r#"{{"type":"t","payload":{}{}}}"#,
        "[".repeat(inner),
        "]".repeat(inner)
    );
    assert!(parse_client(&mut text.into_bytes(), &limits).is_ok());
}

// ---------------------------------------------------------------- tokens (library)

fn hs_verifier() -> Verifier {
    Verifier::new(&auth_config(JwtKey::Hmac(SECRET.to_vec()))).unwrap()
}

fn auth_config(key: JwtKey) -> AuthConfig {
    AuthConfig {
        key,
        leeway: Duration::from_secs(30),
        issuer: None,
        audience: None,
        allow_query_token: true,
        allowed_origins: Vec::new(),
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: serde_json::Value) -> String {
    mint(&EncodingKey::from_secret(SECRET), Algorithm::HS256, &claims).unwrap()
}

/// jsonwebtoken CVE-2026-25537: `exp`/`nbf` of the wrong JSON type skipped validation.
#[test]
fn wrong_typed_exp_and_nbf_are_refused() {
    let v = hs_verifier();
    let future = now() + 3600;
    // Sanity: the well-typed token passes.
    assert!(v.verify(&hs256(json!({"sub": 1, "exp": future}))).is_ok());
    for exp in [
        json!(future.to_string()),
        json!(true),
        json!(null),
        json!([future]),
        json!({"t": future}),
    ] {
        let token = hs256(json!({"sub": 1, "exp": exp}));
        assert!(v.verify(&token).is_err(), "exp {exp} accepted");
    }
    for nbf in [
        json!((future + 86_400).to_string()),
        json!(true),
        json!([future + 86_400]),
        json!({"t": 1}),
        json!("0"),
    ] {
        let token = hs256(json!({"sub": 1, "exp": future, "nbf": nbf}));
        assert!(v.verify(&token).is_err(), "nbf {nbf} accepted");
    }
    // A numeric future nbf is refused too.
    let token = hs256(json!({"sub": 1, "exp": future, "nbf": future}));
    assert_eq!(v.verify(&token).unwrap_err(), AuthError::NotYetValid);
}

/// `alg: none` (any spelling) never verifies, with or without a signature part.
#[test]
fn alg_none_is_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let v = hs_verifier();
    let claims = URL_SAFE_NO_PAD.encode(json!({"sub": 1, "exp": now() + 3600}).to_string());
    let genuine = hs256(json!({"sub": 1, "exp": now() + 3600}));
    let genuine_sig = genuine.rsplit('.').next().unwrap();
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        for sig in ["", genuine_sig] {
            let token = format!("{header}.{claims}.{sig}");
            let err = v.verify(&token).unwrap_err();
            assert!(
                matches!(err, AuthError::WrongAlgorithm | AuthError::Malformed),
                "alg {alg:?}: {err:?}"
            );
        }
    }
}

/// RS/HS confusion: an HS256 token keyed with the RSA public key's PEM must not pass a
/// verifier configured with that RSA key.
#[test]
fn hs_token_against_rsa_key_is_refused() {
    let v = Verifier::new(&auth_config(JwtKey::RsaPem(RSA_SPKI.as_bytes().to_vec()))).unwrap();
    let claims = json!({"sub": 1, "exp": now() + 3600});
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = mint(&EncodingKey::from_secret(RSA_SPKI.as_bytes()), alg, &claims).unwrap();
        assert_eq!(
            v.verify(&token).unwrap_err(),
            AuthError::WrongAlgorithm,
            "{alg:?}"
        );
    }
    let token = mint_hs256(RSA_SPKI.as_bytes(), 1, None, &[], Duration::from_secs(60));
    assert!(v.verify(&token).is_err());
}

// ---------------------------------------------------------------- found by fuzzing

/// `envelope` target: simd-json keeps repeated keys only in objects of up to 32 keys (larger
/// ones are hash-backed, last value wins), so a repeated `type` hidden among 32 other keys
/// passed the duplicate rule (or was reported as the wrong rule). Input: 50 keys, `"type":"t"`
/// first and `"type":1e-5` later. Fixed in the envelope pre-scan.
#[test]
fn repeated_envelope_key_among_many_keys_is_refused() {
    let limits = EnvelopeLimits::default();
    let filler: String = (0..40).map(|i| format!(r#""k{i}":{i},"#)).collect();
    for (first, second) in [
        (r#""type":"a""#, r#""type":"b""#),
        (r#""type":"a""#, r#""type":0.1e-4"#),
        (r#""pid":"p1""#, r#""pid":"p2""#),
        (r#""payload":{}"#, r#""payload":[]"#),
        (r#""targetUserId":1"#, r#""targetUserId":2"#),
        // An escaped key is the same key.
        (r#""type":"a""#, r#""t\u0079pe":"b""#),
    ] {
        let text = format!(r#"{{{first},{filler}"type2":0,{second},"payload":null,"type":"c"}}"#);
        let err = parse_client(&mut text.into_bytes(), &limits).unwrap_err();
        assert_eq!(err.rule, EnvelopeRule::DuplicateField, "{first} / {second}");
        // Few keys: same verdict.
        let text = format!(r#"{{{first},{second},"payload":null,"type":"c"}}"#);
        let err = parse_client(&mut text.into_bytes(), &limits).unwrap_err();
        assert_eq!(err.rule, EnvelopeRule::DuplicateField, "{first} / {second}");
    }
    // Many distinct keys are fine.
    let text = format!(r#"{{"type":"t",{filler}"payload":{{}}}}"#);
    assert!(parse_client(&mut text.into_bytes(), &limits).is_ok());
}

/// Found by the routing simulation (`fuzz/fuzz_targets/routing.rs`): a targeted
/// `presence_update` coalesced behind a public one replaced it, so the public status was
/// never announced and every replica answered `get_presence` with the older status.
#[test]
fn targeted_presence_update_does_not_cancel_a_coalesced_public_one() {
    use customws::sim::model::Setup;
    use customws::sim::Sim;

    // 2 shards, presence coalescing at 100 ms.
    let setup = Setup::from_byte(0x10);
    assert_eq!(setup.presence_interval, Duration::from_millis(100));
    let mut sim = Sim::gateway(setup.config(), 2).expect("sim");
    let alice = sim.connect_on(0, 2);
    let bob = sim.connect_on(1, 3);
    sim.run_until_idle();
    sim.send_text(
        alice,
        r#"{"type":"presence_update","payload":{"status":"one"}}"#,
    );
    sim.run_until_idle();
    sim.advance(Duration::from_millis(10));
    // Both inside the interval: coalesced.
    sim.send_text(
        alice,
        r#"{"type":"presence_update","payload":{"status":"two"}}"#,
    );
    sim.send_text(
        alice,
        r#"{"type":"presence_update","targetUserId":3,"payload":{"status":"dm"}}"#,
    );
    sim.run_until_idle();
    sim.advance(Duration::from_millis(200));
    sim.send_text(
        bob,
        r#"{"pid":"g","type":"generic_request","payload":{"action":"get_presence"}}"#,
    );
    sim.run_until_idle();
    let got: Vec<serde_json::Value> = sim
        .take_received(bob)
        .iter()
        .map(|t| serde_json::from_str(t).expect("json"))
        .collect();
    let statuses: Vec<&str> = got
        .iter()
        .filter(|v| v["type"] == "presence_event" && v["fromUserId"] == 2)
        .filter_map(|v| v["payload"]["status"].as_str())
        .collect();
    assert!(
        statuses.contains(&"two"),
        "public update never announced: {statuses:?}"
    );
    assert!(
        statuses.contains(&"dm"),
        "targeted update lost: {statuses:?}"
    );
    let answer = got.last().expect("get_presence answer");
    let alice_entry = answer["payload"]["users"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["userId"] == 2))
        .expect("alice listed");
    assert_eq!(alice_entry["status"], "two", "{answer}");
}

/// Two targeted updates to different users inside one coalescing interval: the user has one
/// targeted slot, and the second update used to overwrite the first before it went out, so
/// the first target never saw it (a typing indicator to Bob lost because one to Carol
/// followed within 100 ms). Each target must get its own update.
#[test]
fn targeted_presence_updates_to_two_users_in_one_interval_both_arrive() {
    use customws::sim::model::Setup;
    use customws::sim::Sim;

    let setup = Setup::from_byte(0x10);
    assert_eq!(setup.presence_interval, Duration::from_millis(100));
    let mut sim = Sim::gateway(setup.config(), 2).expect("sim");
    let alice = sim.connect_on(0, 2);
    let bob = sim.connect_on(1, 3);
    let carol = sim.connect_on(0, 4);
    let dave = sim.connect_on(1, 5);
    sim.run_until_idle();
    // The first update goes out at once and starts the interval...
    sim.send_text(
        alice,
        r#"{"type":"presence_update","targetUserId":3,"payload":{"status":"typing-bob"}}"#,
    );
    sim.run_until_idle();
    sim.advance(Duration::from_millis(10));
    // ... these two are inside it, for two different users.
    sim.send_text(
        alice,
        r#"{"type":"presence_update","targetUserId":4,"payload":{"status":"typing-carol"}}"#,
    );
    sim.send_text(
        alice,
        r#"{"type":"presence_update","targetUserId":5,"payload":{"status":"typing-dave"}}"#,
    );
    sim.run_until_idle();
    sim.advance(Duration::from_millis(200));
    sim.run_until_idle();
    let mut statuses = |conn| -> Vec<String> {
        sim.take_received(conn)
            .iter()
            .map(|t| serde_json::from_str::<serde_json::Value>(t).expect("json"))
            .filter(|v| v["type"] == "presence_event" && v["fromUserId"] == 2)
            .filter_map(|v| v["payload"]["status"].as_str().map(String::from))
            .filter(|s| s.starts_with("typing")) // not the automatic "online"
            .collect()
    };
    assert_eq!(statuses(bob), ["typing-bob"]);
    assert_eq!(statuses(carol), ["typing-carol"]);
    assert_eq!(statuses(dave), ["typing-dave"]);
}
