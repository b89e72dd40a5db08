//! The whole sans-IO connection, as the shard drives it: an arbitrary client byte stream in
//! arbitrary reads → request head (size/count limits, slowloris hint) → route → auth carriers
//! and origin → 101 → frame decoder on whatever follows (including bytes pipelined behind the
//! request) → envelope parser on every text message → server envelopes written back.
//!
//! Input layout: byte 0 picks the configuration (gateway or echo limits, fragment cap), bytes
//! 1..=4 the read sizes (cycled, 0 = the rest), the remainder is what the client sends.
//!
//! Invariants: no panic; the handshake buffer stays under `max_header_bytes`; the tail kept
//! between reads stays under 140 bytes once upgraded; decoder memory is bounded by
//! `max_message_size`; every close code the server would send is allowed on the wire; every
//! HTTP error status is 400/426/431; every error envelope code is 400/413/422; every server
//! envelope written is valid JSON and a `data_event` carries the client's payload fields.
#![no_main]

use customws::auth::{extract_token, offered_customws_v1, OriginPolicy};
use customws::proto::close::CloseCode;
use customws::proto::codec::{Decoder, DecoderLimits, Message};
use customws::proto::envelope::{
    to_json_bytes, write_data_event, write_error_notification, write_server_ack, EnvelopeLimits,
    EnvelopeParser, RawJson,
};
use customws::proto::frame::encode_close;
use customws::proto::handshake::{
    parse_request, request_complete_hint, route, route_any_path, write_error,
    write_switching_protocols, HandshakeLimits, Route,
};
use customws_fuzz::frames::MAX_LEFTOVER;
use customws_fuzz::Reads;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

struct Setup {
    handshake: HandshakeLimits,
    decoder: DecoderLimits,
    echo: bool,
}

fn setup(select: u8) -> Setup {
    let echo = select & 1 == 1;
    Setup {
        handshake: HandshakeLimits {
            max_header_bytes: if select & 2 == 0 { 8192 } else { 512 },
            max_headers: if select & 4 == 0 { 64 } else { 8 },
        },
        decoder: DecoderLimits {
            max_message_size: [64 * 1024, 1024, 125, 16][usize::from((select >> 3) & 3)],
            max_fragments: [1024, 65_536, 3, 1][usize::from((select >> 5) & 3)],
        },
        echo,
    }
}

/// What the server sends to close, checked the way a peer would read it.
fn server_close(code: CloseCode, reason: &str) {
    assert!(code.is_allowed_on_wire(), "server would send close {code}");
    let mut frame = Vec::new();
    encode_close(&mut frame, code, reason);
    assert!(
        frame.len() <= 2 + 125,
        "close frame of {} bytes",
        frame.len()
    );
}

fn check_json(out: &[u8]) -> Value {
    match serde_json::from_slice(out) {
        Ok(v) => v,
        Err(e) => panic!(
            "server wrote invalid JSON ({e}): {}",
            String::from_utf8_lossy(out)
        ),
    }
}

fn to_serde(v: RawJson<'_>) -> Value {
    serde_json::from_slice(&to_json_bytes(v)).expect("to_json_bytes writes valid JSON")
}

/// The gateway's side of a text message: parse, answer, and check what is written.
fn handle_text(parser: &mut EnvelopeParser, payload: &mut [u8]) {
    let mut out = Vec::new();
    match parser.parse(payload) {
        Err(e) => {
            assert!(matches!(e.code, 400 | 413 | 422));
            write_error_notification(&mut out, e.original_pid.as_deref(), e.code, e.message);
            check_json(&out);
        }
        Ok(env) => {
            if let Some(pid) = env.pid {
                write_server_ack(&mut out, pid);
                check_json(&out);
                out.clear();
            }
            let mut ids = Vec::new();
            let _ = env.target_users(1000, &mut ids);
            let _ = env.user_ids(1000, &mut ids);
            let _ = env.presence_target_user_id();
            if write_data_event(
                &mut out,
                42,
                &env.payload(),
                "näme \"q\"",
                1_700_000_000_123,
                "m-1",
            )
            .is_ok()
            {
                let event = check_json(&out);
                let written = &event["payload"];
                if env.payload().is_object() {
                    // Repeated client keys stay repeated in the output; a JSON reader keeps
                    // the last one, and so does this expectation.
                    let mut expected = serde_json::Map::new();
                    for (k, v) in env.payload().members() {
                        let k = k.to_owned();
                        if !["senderName", "timestamp", "messageId"].contains(&k.as_str()) {
                            expected.insert(k, to_serde(v));
                        }
                    }
                    for (k, v) in &expected {
                        assert_eq!(&written[k.as_str()], v, "data_event field {k}");
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let cfg = setup(select);
    let mut reads = Reads::new(rest, 4);

    // Phase 1: the request head.
    let mut head: Vec<u8> = Vec::new();
    let mut pipelined: Option<Vec<u8>> = None;
    for read in reads.by_ref() {
        let before = head.len();
        head.extend_from_slice(read);
        let limits = &cfg.handshake;
        if !request_complete_hint(&head, before) && head.len() < limits.max_header_bytes {
            continue;
        }
        let (req, consumed) = match parse_request(&head, limits) {
            Ok(Some(r)) => r,
            Ok(None) => {
                assert!(
                    head.len() < limits.max_header_bytes,
                    "kept {} bytes",
                    head.len()
                );
                continue;
            }
            Err(e) => {
                assert!(
                    matches!(e.status(), 400 | 431),
                    "parse status {}",
                    e.status()
                );
                let mut out = Vec::new();
                write_error(&mut out, e.status(), &e.to_string());
                return;
            }
        };
        assert!(consumed <= head.len());
        let routed = if cfg.echo {
            route_any_path(&req)
        } else {
            route(&req)
        };
        let up = match routed {
            Ok(Route::Upgrade(up)) => up,
            Ok(_) => return, // a page or 404, then close
            Err(e) => {
                assert!(
                    matches!(e.status(), 400 | 426),
                    "route status {}",
                    e.status()
                );
                return;
            }
        };
        let _ = extract_token(up.authorization, up.protocols(), up.cookie, up.query, true);
        let _ = OriginPolicy::new(&["https://a.example".into()]).allows(up.origin);
        let mut out = Vec::new();
        let proto = offered_customws_v1(up.protocols()).then_some("customws.v1");
        write_switching_protocols(&mut out, up.key, proto);
        pipelined = Some(head[consumed..].to_vec());
        break;
    }
    let Some(pipelined) = pipelined else {
        return;
    };

    // Phase 2: frames, starting with what came in the same read as the head.
    let mut decoder = Decoder::new();
    let mut parser = EnvelopeParser::new(EnvelopeLimits::default());
    let mut pending: Vec<u8> = Vec::new();
    for read in std::iter::once(pipelined.as_slice()).chain(reads) {
        pending.extend_from_slice(read);
        let mut start = 0;
        loop {
            let len = pending.len() - start;
            match decoder.decode(&mut pending[start..], &cfg.decoder) {
                Err(e) => {
                    server_close(e.close_code(), &e.to_string());
                    return;
                }
                Ok(d) => {
                    assert!(d.consumed <= len);
                    let need_more = d.is_need_more();
                    start += d.consumed;
                    match d.message {
                        Some(Message::Text(t)) => {
                            assert!(t.len() <= cfg.decoder.max_message_size);
                            if !cfg.echo {
                                handle_text(&mut parser, t);
                            }
                        }
                        Some(Message::Binary(b)) => {
                            assert!(b.len() <= cfg.decoder.max_message_size);
                            if !cfg.echo {
                                // The gateway refuses binary messages.
                                server_close(CloseCode::UNSUPPORTED_DATA, "binary");
                                return;
                            }
                        }
                        Some(Message::Ping(p) | Message::Pong(p)) => assert!(p.len() <= 125),
                        Some(Message::Close(c)) => {
                            // Echo the peer's code, or send an empty Close.
                            if let Some((code, _)) = c {
                                server_close(code, "");
                            }
                            return;
                        }
                        None => {}
                    }
                    let bound = cfg
                        .decoder
                        .max_message_size
                        .saturating_mul(2)
                        .saturating_add(64 * 1024);
                    assert!(decoder.heap_bytes() <= bound, "{}", decoder.heap_bytes());
                    if need_more {
                        break;
                    }
                }
            }
        }
        pending.drain(..start);
        assert!(
            pending.len() <= MAX_LEFTOVER,
            "kept {} bytes",
            pending.len()
        );
    }
});
