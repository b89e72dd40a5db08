//! Authentication and origin checks over real sockets: every token carrier, every refusal
//! (401 with the JSON body before the upgrade), expiry on an open connection (4001) and the
//! in-band refresh.

mod support;

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs(claims: serde_json::Value) -> String {
    customws::auth::mint(&EncodingKey::from_secret(SECRET), Algorithm::HS256, &claims).unwrap()
}

/// A token with an arbitrary header, signed with HS256 over the secret (so only the header
/// lies).
fn with_header(header: serde_json::Value, claims: serde_json::Value) -> String {
    use hmac_sign::sign;
    let h = B64.encode(header.to_string());
    let c = B64.encode(claims.to_string());
    let input = format!("{h}.{c}");
    let sig = B64.encode(sign(SECRET, input.as_bytes()));
    format!("{input}.{sig}")
}

mod hmac_sign {
    /// HMAC-SHA256 via jsonwebtoken's own signer (no extra crates).
    pub fn sign(secret: &[u8], msg: &[u8]) -> Vec<u8> {
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let s = jsonwebtoken::crypto::sign(msg, &key, jsonwebtoken::Algorithm::HS256).unwrap();
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s).unwrap()
    }
}

fn upgrade_status(
    addr: std::net::SocketAddr,
    extra_headers: &str,
    path: &str,
) -> (u16, serde_json::Value, String) {
    let resp = raw_exchange(
        addr,
        upgrade_request(path, extra_headers).as_bytes(),
        Duration::from_secs(3),
    );
    (
        status_of(&resp),
        body_of(&resp),
        String::from_utf8_lossy(&resp).into_owned(),
    )
}

#[test]
fn every_carrier_is_accepted_in_order() {
    let server = gateway(gateway_config(2));
    let addr = server.local_addr();
    let t = token(7, "gus");
    // Header.
    let (s, _, _) = upgrade_status(addr, &format!("Authorization: Bearer {t}\r\n"), "/ws");
    assert_eq!(s, 101);
    // Subprotocol: customws.v1 selected, the token never echoed.
    let (s, _, text) = upgrade_status(
        addr,
        &format!("Sec-WebSocket-Protocol: customws.v1, bearer.{t}\r\n"),
        "/ws",
    );
    assert_eq!(s, 101);
    assert!(
        text.contains("Sec-WebSocket-Protocol: customws.v1\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("bearer."),
        "the token must never be echoed: {text}"
    );
    // Cookie.
    let (s, _, _) = upgrade_status(
        addr,
        &format!("Cookie: theme=dark; auth_token={t}\r\n"),
        "/ws",
    );
    assert_eq!(s, 101);
    // Query.
    let (s, _, _) = upgrade_status(addr, "", &format!("/ws?x=1&token={t}"));
    assert_eq!(s, 101);
    // The header wins over a bad cookie.
    let (s, _, _) = upgrade_status(
        addr,
        &format!("Authorization: Bearer {t}\r\nCookie: auth_token=junk\r\n"),
        "/ws",
    );
    assert_eq!(s, 101);
}

#[test]
fn the_query_carrier_can_be_switched_off() {
    let mut cfg = gateway_config(1);
    cfg.auth.as_mut().unwrap().allow_query_token = false;
    let server = gateway(cfg);
    let t = token(7, "gus");
    let (s, body, _) = upgrade_status(server.local_addr(), "", &format!("/ws?token={t}"));
    assert_eq!(s, 401);
    assert_eq!(body["error"]["code"], 401);
}

#[test]
fn refused_tokens_get_401_with_a_json_body() {
    let mut cfg = gateway_config(1);
    let server = gateway(cfg.clone());
    let addr = server.local_addr();
    let n = now();
    let wrong_key = customws::auth::mint(
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        Algorithm::HS256,
        &json!({"sub": 1, "exp": n + 600}),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(json!({"sub": 1, "exp": n + 600}).to_string())
    );
    let rs_header = with_header(
        json!({"alg": "RS256", "typ": "JWT"}),
        json!({"sub": 1, "exp": n + 600}),
    );
    let cases: Vec<(&str, String)> = vec![
        ("missing", String::new()),
        ("bad signature", wrong_key),
        ("alg none", none),
        ("header names another family", rs_header),
        ("expired", hs(json!({"sub": 1, "exp": n - 120}))),
        ("missing exp", hs(json!({"sub": 1}))),
        (
            "wrong-typed exp",
            hs(json!({"sub": 1, "exp": "9999999999"})),
        ),
        ("object exp", hs(json!({"sub": 1, "exp": {"a": 1}}))),
        (
            "nbf in the future",
            hs(json!({"sub": 1, "exp": n + 600, "nbf": n + 300})),
        ),
        ("sub zero", hs(json!({"sub": 0, "exp": n + 600}))),
        ("sub negative", hs(json!({"sub": -3, "exp": n + 600}))),
        (
            "sub too big",
            hs(json!({"sub": 9_007_199_254_740_992u64, "exp": n + 600})),
        ),
        (
            "sub not numeric",
            hs(json!({"sub": "alice", "exp": n + 600})),
        ),
        ("garbage", "not.a.jwt".into()),
    ];
    for (what, t) in cases {
        let hdr = if t.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {t}\r\n")
        };
        let (s, body, text) = upgrade_status(addr, &hdr, "/ws");
        assert_eq!(s, 401, "{what}: {text}");
        assert_eq!(body["error"]["code"], 401, "{what}");
        assert!(
            body["error"]["message"].as_str().unwrap().len() > 3,
            "{what}"
        );
    }
    // A string sub is accepted.
    let (s, _, _) = upgrade_status(
        addr,
        &format!(
            "Authorization: Bearer {}\r\n",
            hs(json!({"sub": "12", "exp": n + 600}))
        ),
        "/ws",
    );
    assert_eq!(s, 101);

    // Issuer and audience, when configured, are required and checked.
    let auth = cfg.auth.as_mut().unwrap();
    auth.issuer = Some("https://issuer.example".into());
    auth.audience = Some("customws".into());
    let server = gateway(cfg);
    let addr = server.local_addr();
    let good =
        hs(json!({"sub": 1, "exp": n + 600, "iss": "https://issuer.example", "aud": "customws"}));
    let bad_iss =
        hs(json!({"sub": 1, "exp": n + 600, "iss": "https://evil.example", "aud": "customws"}));
    let bad_aud =
        hs(json!({"sub": 1, "exp": n + 600, "iss": "https://issuer.example", "aud": "other"}));
    assert_eq!(
        upgrade_status(addr, &format!("Authorization: Bearer {good}\r\n"), "/ws").0,
        101
    );
    assert_eq!(
        upgrade_status(addr, &format!("Authorization: Bearer {bad_iss}\r\n"), "/ws").0,
        401
    );
    assert_eq!(
        upgrade_status(addr, &format!("Authorization: Bearer {bad_aud}\r\n"), "/ws").0,
        401
    );
}

#[test]
fn origins_are_checked() {
    let server = gateway(gateway_config(1));
    let addr = server.local_addr();
    let t = token(7, "gus");
    let auth = format!("Authorization: Bearer {t}\r\n");
    assert_eq!(
        upgrade_status(
            addr,
            &format!("{auth}Origin: https://app.example\r\n"),
            "/ws"
        )
        .0,
        101
    );
    let (s, body, _) = upgrade_status(
        addr,
        &format!("{auth}Origin: https://evil.example\r\n"),
        "/ws",
    );
    assert_eq!(s, 403);
    assert_eq!(body["error"]["code"], 403);
    // No Origin: a non-browser client.
    assert_eq!(upgrade_status(addr, &auth, "/ws").0, 101);
    // No list configured: browsers refused.
    let mut cfg = gateway_config(1);
    cfg.auth.as_mut().unwrap().allowed_origins.clear();
    let server = gateway(cfg);
    assert_eq!(
        upgrade_status(
            server.local_addr(),
            &format!("{auth}Origin: https://app.example\r\n"),
            "/ws"
        )
        .0,
        403
    );
    // `*` allows all.
    let mut cfg = gateway_config(1);
    cfg.auth.as_mut().unwrap().allowed_origins = vec!["*".into()];
    let server = gateway(cfg);
    assert_eq!(
        upgrade_status(
            server.local_addr(),
            &format!("{auth}Origin: https://any.example\r\n"),
            "/ws"
        )
        .0,
        101
    );
}

#[test]
fn expiry_closes_with_4001_after_an_error_notification() {
    let server = gateway(gateway_config(2));
    let t = hs(json!({"sub": 1, "name": "alice", "exp": now() + 2}));
    let ws = connect(
        server.local_addr(),
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .unwrap();
    let mut alice = User { ws, id: 1 };
    let err = alice.recv_type("error_notification");
    assert_eq!(err["error"]["code"], 401);
    assert_eq!(alice.expect_close(), Some(4001));
}

#[test]
fn refresh_token_moves_the_expiry() {
    let server = gateway(gateway_config(2));
    let n = now();
    let t = hs(json!({"sub": 1, "name": "alice", "exp": n + 2}));
    let ws = connect(
        server.local_addr(),
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .unwrap();
    let mut alice = User { ws, id: 1 };
    // Someone else's token is refused, the connection stays.
    let other = hs(json!({"sub": 2, "exp": n + 600}));
    alice.send(json!({"pid": "r0", "type": "generic_request", "payload": {"action": "refresh_token", "data": {"token": other}}}));
    let e = alice.recv_type("error_notification");
    assert_eq!(e["error"]["originalPid"], "r0");
    let fresh = hs(json!({"sub": 1, "exp": n + 600}));
    alice.send(json!({"pid": "r1", "type": "generic_request", "payload": {"action": "refresh_token", "data": {"token": fresh}}}));
    let r = alice.recv_type("generic_response");
    assert_eq!(r["pid"], "r1");
    assert_eq!(r["payload"], json!({"ok": true, "exp": n + 600}));
    // Past the old expiry, still open.
    std::thread::sleep(Duration::from_millis(3500));
    alice.send(json!({"pid": "p", "type": "generic_request", "payload": {"action": "ping"}}));
    let r = alice.recv();
    assert_eq!(r["type"], "generic_response", "{r}");
}

/// Tokens expiring in the same second, on one shard, one refreshed and one already gone:
/// each connection is checked on its own (users 1, 3, 5 and 7 all live on shard 1 of 2).
#[test]
fn tokens_expiring_in_the_same_second_close_each_connection_once() {
    let server = gateway(gateway_config(2));
    let n = now();
    let open = |id: u64| {
        let t = hs(json!({"sub": id, "exp": n + 2}));
        let ws = connect(
            server.local_addr(),
            &[("Authorization", &format!("Bearer {t}"))],
        )
        .unwrap();
        User { ws, id }
    };
    let mut a = open(1);
    let mut b = open(3);
    let mut refreshed = open(5);
    let gone = open(7);
    drop(gone);
    let fresh = hs(json!({"sub": 5, "exp": n + 600}));
    refreshed.send(json!({"pid": "r", "type": "generic_request", "payload": {"action": "refresh_token", "data": {"token": fresh}}}));
    assert_eq!(refreshed.recv_type("generic_response")["pid"], "r");
    for u in [&mut a, &mut b] {
        assert_eq!(u.recv_type("error_notification")["error"]["code"], 401);
        assert_eq!(u.expect_close(), Some(4001));
    }
    refreshed.send(json!({"pid": "p", "type": "generic_request", "payload": {"action": "ping"}}));
    assert_eq!(refreshed.recv_type("generic_response")["pid"], "p");
}
