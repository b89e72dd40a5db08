//! The cluster's two decoders on bytes that come from Redis: the RESP2 reply parser (fed in
//! chunks the fuzzer chooses, which must not change the result) and the node-to-node
//! message decoder (anything it accepts must re-encode to the same bytes).
#![no_main]

use bytes::{Bytes, BytesMut};
use customws::cluster::{resp, wire};
use libfuzzer_sys::fuzz_target;

fn parse_all(chunks: &[&[u8]]) -> (Vec<resp::Value>, Option<resp::RespError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match resp::parse(&mut buf) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    // RESP: whole vs two chunks at a fuzzer-chosen point.
    let cut = (split as usize * rest.len()) / 255;
    let (whole, whole_err) = parse_all(&[rest]);
    let (parts, parts_err) = parse_all(&[&rest[..cut], &rest[cut..]]);
    assert_eq!(whole, parts, "chunking changed the parse");
    assert_eq!(whole_err, parts_err);
    // Node messages: a pub/sub payload is arbitrary bytes.
    let bytes = Bytes::copy_from_slice(rest);
    if let Ok(env) = wire::decode(&bytes) {
        let mut again = Vec::new();
        wire::encode(&mut again, &env);
        assert_eq!(
            wire::decode(&Bytes::from(again)).as_ref(),
            Ok(&env),
            "re-encoding changed the message"
        );
    }
    for v in whole {
        if let resp::Value::Array(items) = v {
            if let Some(resp::Value::Bulk(payload)) = items.get(2) {
                let _ = wire::decode(payload);
            }
        }
    }
});
