//! Server → client envelopes, appended as JSON text to the caller's `Vec<u8>` (usually the
//! connection's outbound buffer, so nothing is copied twice). Field order and names follow
//! gateway.md §4–5 exactly; every writer's output is checked against serde_json in tests.

use super::tape::{write_nodes, write_tape_str, RawJson};
use super::time::format_rfc3339_millis;

/// `data_event` needs the client's payload to be an object to add server fields to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload must be a JSON object")]
pub struct NotAnObject;

/// Keys the server sets on every `data_event` payload; client values are dropped.
const SERVER_SET_KEYS: [&str; 3] = ["senderName", "timestamp", "messageId"];

/// Whether an unescaped key is one of [`SERVER_SET_KEYS`].
pub(super) fn is_server_set_key(raw: &[u8]) -> bool {
    SERVER_SET_KEYS.iter().any(|k| k.as_bytes() == raw)
}

/// `{"type":"data_event","fromUserId":N,"payload":{<client fields>,"senderName":…,
/// "timestamp":"<RFC 3339 ms>","messageId":…}}` (spec §5.1). Client fields named like a
/// server field are left out, so the output has no duplicate of them. Other client fields
/// are written from the payload's simd-json tape nodes, in their order (repeated client
/// keys stay repeated): the same JSON values, re-encoded (escapes, spacing and number
/// spelling are the server's).
///
/// # Errors
/// [`NotAnObject`] when `payload` is not an object; `out` is then unchanged.
pub fn write_data_event(
    out: &mut Vec<u8>,
    from_user: u64,
    payload: &RawJson<'_>,
    sender_name: &(impl JsonText + ?Sized),
    timestamp_ms: u64,
    message_id: &(impl JsonText + ?Sized),
) -> Result<(), NotAnObject> {
    if !payload.is_object() {
        return Err(NotAnObject);
    }
    out.extend_from_slice(br#"{"type":"data_event","fromUserId":"#);
    write_u64(out, from_user);
    out.extend_from_slice(br#","payload":{"#);
    for (key, value) in payload.members() {
        if is_server_set_key(key.as_bytes()) {
            continue;
        }
        write_tape_str(out, key, value.is_plain());
        out.push(b':');
        write_nodes(out, value.nodes(), value.is_plain());
        out.push(b',');
    }
    out.extend_from_slice(br#""senderName":"#);
    write_json_text(out, sender_name.utf8_bytes());
    out.extend_from_slice(br#","timestamp":""#);
    format_rfc3339_millis(timestamp_ms, out);
    out.extend_from_slice(br#"","messageId":"#);
    write_json_text(out, message_id.utf8_bytes());
    out.extend_from_slice(b"}}");
    Ok(())
}

/// `{"type":"server_ack","payload":{"acknowledgedPid":…,"status":"delivered"}}` (spec §5.1;
/// the guide reads only `payload`, so no top-level pid).
pub fn write_server_ack(out: &mut Vec<u8>, pid: &str) {
    out.extend_from_slice(br#"{"type":"server_ack","payload":{"acknowledgedPid":"#);
    write_json_str(out, pid);
    out.extend_from_slice(br#","status":"delivered"}}"#);
}

/// `{"type":"error_notification","error":{"originalPid":…,"code":N,"message":…}}`
/// (spec §4's `error` object; `originalPid` omitted when unknown; no `payload`, the guide's
/// client reads `error`).
pub fn write_error_notification(
    out: &mut Vec<u8>,
    original_pid: Option<&str>,
    code: u16,
    message: &str,
) {
    out.extend_from_slice(br#"{"type":"error_notification","error":{"#);
    if let Some(pid) = original_pid {
        out.extend_from_slice(br#""originalPid":"#);
        write_json_str(out, pid);
        out.push(b',');
    }
    out.extend_from_slice(br#""code":"#);
    write_u64(out, u64::from(code));
    out.extend_from_slice(br#","message":"#);
    write_json_str(out, message);
    out.extend_from_slice(b"}}");
}

/// `{"pid":…,"type":"generic_response","payload":<whatever write_payload appends>}`.
/// `write_payload` must append exactly one JSON value.
pub fn write_generic_response(
    out: &mut Vec<u8>,
    pid: &str,
    write_payload: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(br#"{"pid":"#);
    write_json_str(out, pid);
    out.extend_from_slice(br#","type":"generic_response","payload":"#);
    write_payload(out);
    out.push(b'}');
}

/// [`write_generic_response`] with a pre-serialized payload (one JSON value, spliced as is).
pub fn write_generic_response_raw(out: &mut Vec<u8>, pid: &str, payload_json: &[u8]) {
    write_generic_response(out, pid, |o| o.extend_from_slice(payload_json));
}

/// Server-initiated request (library API):
/// `{"pid":…,"type":"generic_request","payload":{"action":…,"data":<raw JSON>}}`;
/// `data` omitted when `None`, otherwise one pre-serialized JSON value.
pub fn write_generic_request(out: &mut Vec<u8>, pid: &str, action: &str, data: Option<&[u8]>) {
    out.extend_from_slice(br#"{"pid":"#);
    write_json_str(out, pid);
    out.extend_from_slice(br#","type":"generic_request","payload":{"action":"#);
    write_json_str(out, action);
    if let Some(data) = data {
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data);
    }
    out.extend_from_slice(b"}}");
}

/// One `presence_event` (spec §5.4). `context` is the stored raw JSON from
/// [`to_json_bytes`]; `None` is written as `null` so the payload shape never varies.
#[derive(Debug, Clone, Copy)]
pub struct PresenceEvent<'a> {
    /// Top-level `fromUserId` (the user whose presence changed).
    pub from_user: u64,
    /// `payload.userId` (normally equal to `from_user`).
    pub user_id: u64,
    /// `payload.username`; `None` → `null` (the JWT `name` claim is optional).
    pub username: Option<&'a str>,
    /// `payload.status` (`online`, `offline`, or the client's string).
    pub status: &'a str,
    /// `payload.context` as raw JSON.
    pub context: Option<&'a [u8]>,
    /// `payload.timestamp`, Unix milliseconds, written as RFC 3339.
    pub timestamp_ms: u64,
}

/// `{"type":"presence_event","fromUserId":N,"payload":{"userId":N,"username":…,
/// "status":…,"context":…,"timestamp":"…"}}`.
pub fn write_presence_event(out: &mut Vec<u8>, event: &PresenceEvent<'_>) {
    out.extend_from_slice(br#"{"type":"presence_event","fromUserId":"#);
    write_u64(out, event.from_user);
    out.extend_from_slice(br#","payload":{"userId":"#);
    write_u64(out, event.user_id);
    out.extend_from_slice(br#","username":"#);
    write_opt_str(out, event.username);
    out.extend_from_slice(br#","status":"#);
    write_json_str(out, event.status);
    out.extend_from_slice(br#","context":"#);
    write_raw_or_null(out, event.context);
    out.extend_from_slice(br#","timestamp":""#);
    format_rfc3339_millis(event.timestamp_ms, out);
    out.extend_from_slice(br#""}}"#);
}

/// `whoami` answer: `generic_response` with `{"userId":N,"username":…,"roles":[…]}`.
pub fn write_whoami_response<S: AsRef<str>>(
    out: &mut Vec<u8>,
    pid: &str,
    user_id: u64,
    username: Option<&str>,
    roles: &[S],
) {
    write_generic_response(out, pid, |o| {
        o.extend_from_slice(br#"{"userId":"#);
        write_u64(o, user_id);
        o.extend_from_slice(br#","username":"#);
        write_opt_str(o, username);
        o.extend_from_slice(br#","roles":["#);
        for (i, role) in roles.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            write_json_str(o, role.as_ref());
        }
        o.extend_from_slice(b"]}");
    });
}

/// `ping` answer: `generic_response` with `{"serverTime":"<RFC 3339 ms>"}`.
pub fn write_ping_response(out: &mut Vec<u8>, pid: &str, now_ms: u64) {
    write_generic_response(out, pid, |o| {
        o.extend_from_slice(br#"{"serverTime":""#);
        format_rfc3339_millis(now_ms, o);
        o.extend_from_slice(br#""}"#);
    });
}

/// `refresh_token` answer: `generic_response` with `{"ok":true,"exp":<unix seconds>}`.
pub fn write_refresh_response(out: &mut Vec<u8>, pid: &str, exp_unix_s: u64) {
    write_generic_response(out, pid, |o| {
        o.extend_from_slice(br#"{"ok":true,"exp":"#);
        write_u64(o, exp_unix_s);
        o.push(b'}');
    });
}

/// One user in a `get_presence` answer.
#[derive(Debug, Clone, Copy)]
pub struct PresenceEntry<'a> {
    /// `userId`.
    pub user_id: u64,
    /// `username`; `None` → `null`.
    pub username: Option<&'a str>,
    /// `status`.
    pub status: &'a str,
    /// `context` as stored raw JSON; `None` → `null`.
    pub context: Option<&'a [u8]>,
    /// `since`: when the status was set, Unix milliseconds, written as RFC 3339.
    pub since_ms: u64,
}

/// `get_presence` answer: `generic_response` with
/// `{"users":[{"userId","username","status","context","since"}…]}`.
pub fn write_get_presence_response<'e>(
    out: &mut Vec<u8>,
    pid: &str,
    users: impl IntoIterator<Item = PresenceEntry<'e>>,
) {
    write_generic_response(out, pid, |o| {
        o.extend_from_slice(br#"{"users":["#);
        for (i, user) in users.into_iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            o.extend_from_slice(br#"{"userId":"#);
            write_u64(o, user.user_id);
            o.extend_from_slice(br#","username":"#);
            write_opt_str(o, user.username);
            o.extend_from_slice(br#","status":"#);
            write_json_str(o, user.status);
            o.extend_from_slice(br#","context":"#);
            write_raw_or_null(o, user.context);
            o.extend_from_slice(br#","since":""#);
            format_rfc3339_millis(user.since_ms, o);
            o.extend_from_slice(br#""}"#);
        }
        o.extend_from_slice(b"]}");
    });
}

/// Copies a value's JSON text so it can outlive the frame it was parsed from (presence
/// contexts), to be spliced unescaped into later outputs.
#[must_use]
pub fn to_json_bytes(value: RawJson<'_>) -> Box<[u8]> {
    let mut out = Vec::new();
    value.write_json(&mut out);
    out.into_boxed_slice()
}

/// Appends `s` as a JSON string literal: `"` and `\` escaped, control characters as
/// `\n`/`\t`/… or `\u00XX`, everything else (including non-ASCII UTF-8) passed through.
/// A string with nothing to escape (nearly every name, id and pid) is copied whole; in
/// others, the runs between escapes are found eight bytes at a time.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    write_json_text(out, s.as_bytes());
}

/// Text stored as bytes that are UTF-8 by construction (an inline name copied from a `str`,
/// a generated id), written into JSON without converting it back to `&str`: that conversion
/// re-validates the bytes, ≈ 160 instructions per `data_event` for the name and the id.
/// Bytes that were not UTF-8 would make invalid JSON text, never undefined behaviour.
pub trait JsonText {
    /// The text's bytes, UTF-8.
    fn utf8_bytes(&self) -> &[u8];
}

impl JsonText for str {
    fn utf8_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl JsonText for MessageId {
    fn utf8_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// [`write_json_str`] over the bytes of UTF-8 text (see [`JsonText`]).
fn write_json_text(out: &mut Vec<u8>, text: &[u8]) {
    let mut rest = text;
    out.reserve(rest.len() + 2);
    out.push(b'"');
    // Without an early exit this loop vectorizes; short names and ids then cost a few
    // instructions instead of a search.
    let needs_escape = rest.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.extend_from_slice(rest);
        out.push(b'"');
        return;
    }
    while let Some(at) = find_string_special(rest) {
        let Some((plain, tail)) = rest.split_at_checked(at) else {
            break;
        };
        out.extend_from_slice(plain);
        let Some((&b, tail)) = tail.split_first() else {
            break;
        };
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            _ => b'u',
        };
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
        rest = tail;
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_raw_or_null(out: &mut Vec<u8>, raw: Option<&[u8]>) {
    out.extend_from_slice(raw.unwrap_or(b"null"));
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Longest id: 13 (nonce) + 1 + 4 (shard) + 1 + 13 (counter) = 32 bytes.
const ID_CAP: usize = 32;

/// Unique ids for `messageId` and server-initiated `pid`s: `<nonce>-<shard>-<counter>`, all
/// lowercase base 32. One generator per shard (no lock, no atomic); the shard part keeps
/// shards apart, the process nonce keeps restarts apart.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    prefix: [u8; ID_CAP],
    prefix_len: usize,
    counter: u64,
}

/// An id from [`IdGenerator::next_id`], stored inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    bytes: [u8; ID_CAP],
    len: u8,
}

impl MessageId {
    /// The id text (ASCII).
    #[must_use]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id's bytes (ASCII: base 32 digits and `-`), without `as_str`'s check.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

const BASE32: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// Appends `n` in base 32 without leading zeros to `buf` at `at`; returns the new end.
fn put_base32(buf: &mut [u8; ID_CAP], at: usize, mut n: u64) -> usize {
    let mut digits = [0u8; 13];
    let mut count = 0;
    loop {
        if let Some(slot) = digits.get_mut(count) {
            *slot = BASE32[(n & 31) as usize];
        }
        count += 1;
        n >>= 5;
        if n == 0 {
            break;
        }
    }
    let mut end = at;
    for &d in digits.iter().take(count).rev() {
        if let Some(slot) = buf.get_mut(end) {
            *slot = d;
            end += 1;
        }
    }
    end
}

impl IdGenerator {
    /// `process_nonce` should differ between runs (e.g. start time in ns mixed with the pid).
    #[must_use]
    pub fn new(shard: u16, process_nonce: u64) -> Self {
        let mut prefix = [0u8; ID_CAP];
        let mut len = put_base32(&mut prefix, 0, process_nonce);
        prefix[len] = b'-';
        len = put_base32(&mut prefix, len + 1, u64::from(shard));
        prefix[len] = b'-';
        Self {
            prefix,
            prefix_len: len + 1,
            counter: 0,
        }
    }

    /// The next id of this shard.
    pub fn next_id(&mut self) -> MessageId {
        let mut bytes = self.prefix;
        let end = put_base32(&mut bytes, self.prefix_len, self.counter);
        self.counter = self.counter.wrapping_add(1);
        MessageId {
            bytes,
            len: end as u8,
        }
    }
}

/// First `"`, `\` or control byte (< 0x20) in `hay`, eight bytes at a time (SWAR: the lowest
/// flagged byte of each test is always a true match, so the lowest flag overall is too).
#[inline(always)]
fn find_string_special(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = LO * b'"' as u64;
    const BACKSLASHES: u64 = LO * b'\\' as u64;
    const SPACES: u64 = LO * 0x20;
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0usize;
    for chunk in &mut chunks {
        if let Ok(bytes) = <[u8; 8]>::try_from(chunk) {
            let word = u64::from_le_bytes(bytes);
            let q = word ^ QUOTES;
            let s = word ^ BACKSLASHES;
            let hit = ((q.wrapping_sub(LO) & !q)
                | (s.wrapping_sub(LO) & !s)
                | (word.wrapping_sub(SPACES) & !word))
                & HI;
            if hit != 0 {
                return Some(base + (hit.trailing_zeros() / 8) as usize);
            }
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| base + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(out: &[u8]) -> Value {
        serde_json::from_slice(out).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(out));
        })
    }

    /// Runs `f` on the simd-json tape view of `text`.
    fn raw<R>(text: &str, f: impl FnOnce(RawJson<'_>) -> R) -> R {
        let mut buf = text.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut buf).expect("valid JSON");
        f(RawJson::from_nodes(&tape.0).expect("one value"))
    }

    /// Runs `f` on the payload as the envelope parser hands it over.
    fn parsed_payload<R>(buf: &mut [u8], f: impl FnOnce(RawJson<'_>) -> R) -> R {
        let env = super::super::parse_client(buf, &super::super::EnvelopeLimits::default())
            .expect("valid envelope");
        f(env.payload())
    }

    const NASTY: &str = "q\"b\\s/\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f} é 漢 😀 \u{2028}";

    #[test]
    fn json_str_escaping_round_trips() {
        let mut out = Vec::new();
        write_json_str(&mut out, NASTY);
        assert_eq!(parsed(&out), json!(NASTY));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#"\u0000"#) && text.contains(r#"\u001f"#));
        assert!(text.contains("漢 😀"), "non-ASCII passes through: {text}");
        for b in text.bytes() {
            assert!(b >= 0x20, "raw control byte in {text:?}");
        }
        let mut all = String::new();
        for c in 0u8..0x80 {
            all.push(char::from(c));
        }
        let mut out = Vec::new();
        write_json_str(&mut out, &all);
        assert_eq!(parsed(&out), json!(all));
    }

    #[test]
    fn json_str_matches_serde_json_at_every_position() {
        for special in ['"', '\\', '\n', '\u{1}', 'é'] {
            for at in 0..40 {
                let mut text: String = "abcdefghij".repeat(4);
                text.insert(at, special);
                let mut out = Vec::new();
                write_json_str(&mut out, &text);
                assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
            }
        }
    }

    /// A generated id written from its bytes is the id's text, as `as_str` gives it.
    #[test]
    fn data_event_takes_ids_as_bytes() {
        let mut ids = IdGenerator::new(7, 0xDEAD_BEEF_F00D);
        let text = r#"{"a":1}"#;
        for _ in 0..3 {
            let id = ids.next_id();
            let (mut from_bytes, mut from_str) = (Vec::new(), Vec::new());
            raw(text, |p| {
                write_data_event(&mut from_bytes, 1, &p, "n", 0, &id)
            })
            .unwrap();
            raw(text, |p| {
                write_data_event(&mut from_str, 1, &p, "n", 0, id.as_str())
            })
            .unwrap();
            assert_eq!(from_bytes, from_str);
            let v: serde_json::Value = serde_json::from_slice(&from_bytes).unwrap();
            assert_eq!(v["payload"]["messageId"], id.as_str());
        }
    }

    #[test]
    fn data_event_shape_and_override() {
        let text = r#"{"action":"send_message","resource":"chat","data":{"text":"hi \"x\" \u00e9"},"senderName":"forged","timestamp":"1999","messageId":"fake","n":1.5}"#;
        let mut out = b"prefix".to_vec();
        raw(text, |p| {
            write_data_event(&mut out, 123, &p, NASTY, 1_795_849_200_123, "m-1")
        })
        .unwrap();
        let text = std::str::from_utf8(&out[6..]).unwrap();
        for key in SERVER_SET_KEYS {
            assert_eq!(
                text.matches(&format!("\"{key}\"")).count(),
                1,
                "{key}: {text}"
            );
        }
        assert_eq!(
            parsed(&out[6..]),
            json!({
                "type": "data_event",
                "fromUserId": 123,
                "payload": {
                    "action": "send_message",
                    "resource": "chat",
                    "data": {"text": "hi \"x\" é"},
                    "n": 1.5,
                    "senderName": NASTY,
                    "timestamp": "2026-11-28T07:00:00.123Z",
                    "messageId": "m-1"
                }
            })
        );
    }

    #[test]
    fn data_event_empty_and_non_object_payload() {
        let empty = json!({"type":"data_event","fromUserId":1,"payload":{"senderName":"a","timestamp":"1970-01-01T00:00:00.000Z","messageId":"id"}});
        let mut out = Vec::new();
        raw("{}", |p| write_data_event(&mut out, 1, &p, "a", 0, "id")).unwrap();
        assert_eq!(parsed(&out), empty);
        // Empty and blank objects from the envelope parser.
        for payload in ["{}", "{ \n\t}"] {
            let mut buf = format!(r#"{{"type":"t","payload":{payload}}}"#).into_bytes();
            let mut out = Vec::new();
            parsed_payload(&mut buf, |p| {
                write_data_event(&mut out, 1, &p, "a", 0, "id")
            })
            .unwrap();
            assert_eq!(parsed(&out), empty, "{payload}");
        }
        for text in ["[1]", "\"s\"", "null", "3"] {
            let mut out = b"keep".to_vec();
            assert_eq!(
                raw(text, |p| write_data_event(&mut out, 1, &p, "a", 0, "id")),
                Err(NotAnObject)
            );
            assert_eq!(out, b"keep");
        }
    }

    #[test]
    fn data_event_escapes_client_keys() {
        let mut out = Vec::new();
        raw(r#"{"k\"\u0001\\":"v"}"#, |p| {
            write_data_event(&mut out, 9, &p, "s", 0, "i")
        })
        .unwrap();
        assert_eq!(parsed(&out)["payload"]["k\"\u{1}\\"], json!("v"));
    }

    #[test]
    fn data_event_writes_the_payload_values_and_drops_server_keys() {
        let body = r#"{ "n" : 1e3 , "s":"\u00e9\n", "big":18446744073709551615, "d":[1,{"a":2}], "f":-0.25 }"#;
        let mut buf = format!(r#"{{"type":"t","payload":{body}}}"#).into_bytes();
        let mut out = Vec::new();
        parsed_payload(&mut buf, |p| write_data_event(&mut out, 2, &p, "s", 0, "i")).unwrap();
        let event = parsed(&out);
        let want: Value = serde_json::from_str(body).unwrap();
        for key in ["n", "s", "big", "d", "f"] {
            assert_eq!(event["payload"][key], want[key], "{key}");
        }
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains(r#""s":"é\n""#),
            "re-encoded from the tape: {text}"
        );
        // Escaped spellings of a server key, and repeats, are all dropped.
        let mut buf =
            br#"{"type":"t","payload":{"sender\u004eame":"x","messageId":1,"messageId":2,"k":0}}"#
                .to_vec();
        let mut out = Vec::new();
        parsed_payload(&mut buf, |p| {
            write_data_event(&mut out, 2, &p, "me", 0, "id")
        })
        .unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.matches("messageId").count(), 1, "{text}");
        assert!(!text.contains("\\u004e"), "{text}");
        assert_eq!(parsed(&out)["payload"]["senderName"], json!("me"));
        assert_eq!(parsed(&out)["payload"]["k"], json!(0));
    }

    #[test]
    fn server_ack_shape() {
        let mut out = Vec::new();
        write_server_ack(&mut out, NASTY);
        assert_eq!(
            parsed(&out),
            json!({"type":"server_ack","payload":{"acknowledgedPid":NASTY,"status":"delivered"}})
        );
    }

    #[test]
    fn error_notification_shape() {
        let mut out = Vec::new();
        write_error_notification(&mut out, Some(NASTY), 422, "bad \"x\"");
        assert_eq!(
            parsed(&out),
            json!({"type":"error_notification","error":{"originalPid":NASTY,"code":422,"message":"bad \"x\""}})
        );
        let mut out = Vec::new();
        write_error_notification(&mut out, None, 400, "malformed JSON");
        assert_eq!(
            parsed(&out),
            json!({"type":"error_notification","error":{"code":400,"message":"malformed JSON"}})
        );
    }

    #[test]
    fn generic_response_and_request_shapes() {
        let mut out = Vec::new();
        write_generic_response_raw(&mut out, NASTY, br#"{"a":[1,2]}"#);
        assert_eq!(
            parsed(&out),
            json!({"pid":NASTY,"type":"generic_response","payload":{"a":[1,2]}})
        );
        let mut out = Vec::new();
        write_generic_request(&mut out, "s-1", NASTY, Some(br#"{"x":true}"#));
        assert_eq!(
            parsed(&out),
            json!({"pid":"s-1","type":"generic_request","payload":{"action":NASTY,"data":{"x":true}}})
        );
        let mut out = Vec::new();
        write_generic_request(&mut out, "s-2", "get_client_info", None);
        assert_eq!(
            parsed(&out),
            json!({"pid":"s-2","type":"generic_request","payload":{"action":"get_client_info"}})
        );
    }

    #[test]
    fn builtin_response_shapes() {
        let mut out = Vec::new();
        write_whoami_response(&mut out, "p", 42, Some(NASTY), &["admin", "a\"b"]);
        assert_eq!(
            parsed(&out),
            json!({"pid":"p","type":"generic_response","payload":{"userId":42,"username":NASTY,"roles":["admin","a\"b"]}})
        );
        let mut out = Vec::new();
        write_whoami_response::<&str>(&mut out, "p", 42, None, &[]);
        assert_eq!(
            parsed(&out),
            json!({"pid":"p","type":"generic_response","payload":{"userId":42,"username":null,"roles":[]}})
        );
        let mut out = Vec::new();
        write_ping_response(&mut out, "p", 951_782_400_000);
        assert_eq!(
            parsed(&out),
            json!({"pid":"p","type":"generic_response","payload":{"serverTime":"2000-02-29T00:00:00.000Z"}})
        );
        let mut out = Vec::new();
        write_refresh_response(&mut out, "p", 1_900_000_000);
        assert_eq!(
            parsed(&out),
            json!({"pid":"p","type":"generic_response","payload":{"ok":true,"exp":1_900_000_000u64}})
        );
        let mut out = Vec::new();
        let users = [
            PresenceEntry {
                user_id: 1,
                username: Some(NASTY),
                status: "online",
                context: Some(br#"{"room":"r"}"#),
                since_ms: 0,
            },
            PresenceEntry {
                user_id: 2,
                username: None,
                status: "away",
                context: None,
                since_ms: 1_000,
            },
        ];
        write_get_presence_response(&mut out, "p", users);
        assert_eq!(
            parsed(&out),
            json!({"pid":"p","type":"generic_response","payload":{"users":[
                {"userId":1,"username":NASTY,"status":"online","context":{"room":"r"},"since":"1970-01-01T00:00:00.000Z"},
                {"userId":2,"username":null,"status":"away","context":null,"since":"1970-01-01T00:00:01.000Z"}
            ]}})
        );
        let mut out = Vec::new();
        write_get_presence_response(&mut out, "p", []);
        assert_eq!(
            parsed(&out),
            json!({"pid":"p","type":"generic_response","payload":{"users":[]}})
        );
    }

    #[test]
    fn presence_event_shape_with_stored_context() {
        let context = {
            let text = String::from(r#"{"location":"chat \"general\"","n":[1,2.5,null]}"#);
            raw(&text, to_json_bytes)
            // `text` is dropped here; the stored bytes live on.
        };
        let mut out = Vec::new();
        write_presence_event(
            &mut out,
            &PresenceEvent {
                from_user: 123,
                user_id: 123,
                username: Some("juan_dev"),
                status: NASTY,
                context: Some(&context),
                timestamp_ms: 1_705_314_600_000,
            },
        );
        assert_eq!(
            parsed(&out),
            json!({"type":"presence_event","fromUserId":123,"payload":{
                "userId":123,"username":"juan_dev","status":NASTY,
                "context":{"location":"chat \"general\"","n":[1,2.5,null]},
                "timestamp":"2024-01-15T10:30:00.000Z"}})
        );
        let mut out = Vec::new();
        write_presence_event(
            &mut out,
            &PresenceEvent {
                from_user: 5,
                user_id: 5,
                username: None,
                status: "offline",
                context: None,
                timestamp_ms: 0,
            },
        );
        assert_eq!(parsed(&out)["payload"]["context"], Value::Null);
        assert_eq!(parsed(&out)["payload"]["username"], Value::Null);
    }

    #[test]
    fn to_json_bytes_round_trips_values() {
        let text = r#"[{"a":"\u0001x\"y"},-5,18446744073709551615,1.0e10,true,null,"漢"]"#;
        let bytes = raw(text, to_json_bytes);
        assert_eq!(parsed(&bytes), serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn ids_are_unique_and_distinct_across_shards_and_runs() {
        let mut seen = std::collections::HashSet::new();
        for shard in [0u16, 1, 31, 32, u16::MAX] {
            for nonce in [0u64, 1, u64::MAX] {
                let mut ids = IdGenerator::new(shard, nonce);
                for _ in 0..200 {
                    let id = ids.next_id();
                    assert!(id
                        .as_str()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
                    assert!(seen.insert(id.as_str().to_owned()), "duplicate {id}");
                }
            }
        }
        let mut ids = IdGenerator::new(u16::MAX, u64::MAX);
        ids.counter = u64::MAX;
        let id = ids.next_id();
        assert_eq!(id.as_str().len(), ID_CAP);
        assert_eq!(id.as_str(), "fvvvvvvvvvvvv-1vvv-fvvvvvvvvvvvv");
        assert_eq!(ids.next_id().as_str(), "fvvvvvvvvvvvv-1vvv-0");
    }
}
