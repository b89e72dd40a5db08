//! The HTTP upgrade parser, fed like a slowloris: arbitrary bytes in arbitrary reads, parsed
//! the way the shard parses (the cheap `request_complete_hint` on the new bytes, the full
//! parse only when it says so or the size limit is reached).
//!
//! Input layout: byte 0 picks the limits, bytes 1..=4 the read sizes (cycled, 0 = the rest),
//! the remainder is the request.
//!
//! Invariants: no panic; `consumed` within the buffer and the size limit; at most
//! `max_headers` headers; the hint never hides a complete head (else the shard would stall
//! until the timeout); a head that parses from a prefix parses the same from the full input
//! (and an error on a prefix stays the same error); `route`/`route_any_path`, the 101/error
//! writers, token extraction and the origin check never panic, and a routed upgrade carries a
//! valid 24-byte key.
#![no_main]

use customws::auth::{extract_token, offered_customws_v1, OriginPolicy};
use customws::proto::handshake::{
    parse_request, request_complete_hint, route, route_any_path, write_error,
    write_switching_protocols, HandshakeLimits, Request, Route,
};
use customws_fuzz::Reads;
use libfuzzer_sys::fuzz_target;

fn check_route(req: &Request<'_>) {
    for routed in [route(req), route_any_path(req)] {
        match routed {
            Ok(Route::Upgrade(up)) => {
                assert_eq!(up.key.len(), 24, "upgrade key not 24 bytes");
                let mut out = Vec::new();
                write_switching_protocols(&mut out, up.key, Some("customws.v1"));
                assert!(out.starts_with(b"HTTP/1.1 101 ") && out.ends_with(b"\r\n\r\n"));
                let _ = offered_customws_v1(up.protocols());
                let _ = extract_token(up.authorization, up.protocols(), up.cookie, up.query, true);
                let _ = OriginPolicy::new(&["https://app.example".into()]).allows(up.origin);
            }
            Ok(_) => {}
            Err(e) => {
                assert!(
                    matches!(e.status(), 400 | 426 | 431),
                    "status {}",
                    e.status()
                );
                let mut out = Vec::new();
                write_error(&mut out, e.status(), &e.to_string());
                assert!(!e.reason_label().is_empty());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let limits = HandshakeLimits {
        max_header_bytes: [64usize, 300, 2048, 8192][usize::from(select & 3)],
        max_headers: [1usize, 4, 64, 500][usize::from((select >> 2) & 3)],
    };
    let reads = Reads::new(rest, 4);
    let input = reads.stream();
    let full = parse_request(input, &limits);

    let mut buf: Vec<u8> = Vec::new();
    for read in reads {
        let before = buf.len();
        buf.extend_from_slice(read);
        let parsed = parse_request(&buf, &limits);
        let settled = !matches!(parsed, Ok(None));
        if settled {
            // These bytes are a prefix of the full input: the result cannot change.
            assert_eq!(
                format!("{parsed:?}"),
                format!("{full:?}"),
                "a prefix parsed differently from the full input"
            );
        }
        match &parsed {
            Ok(Some((req, consumed))) => {
                assert!(*consumed <= buf.len() && *consumed <= limits.max_header_bytes);
                assert!(req.headers.len() <= limits.max_headers);
            }
            Ok(None) => assert!(
                buf.len() < limits.max_header_bytes,
                "partial past the limit"
            ),
            Err(_) => {}
        }
        // What the shard does: scan only the new bytes, parse when they end the head.
        let shard_parses =
            request_complete_hint(&buf, before) || buf.len() >= limits.max_header_bytes;
        if !shard_parses {
            assert!(
                !matches!(parsed, Ok(Some(_))),
                "complete head after {} bytes but the hint said incomplete",
                buf.len()
            );
            continue;
        }
        if settled {
            if let Ok(Some((req, _))) = &parsed {
                check_route(req);
            }
            // The shard stops reading once the head is settled.
            return;
        }
    }
    assert!(
        !matches!(full, Ok(Some(_))),
        "a complete head was never parsed"
    );
});
