//! Client → server envelopes: a one-pass pre-scan (depth cap, raw `pid` for error
//! answers), then simd-json in place, then one pass over the top-level keys.

use super::{EnvelopeError, EnvelopeLimits, EnvelopeRule, MAX_USER_ID};
use simd_json::cow::Cow;
use simd_json::prelude::*;
use simd_json::{BorrowedValue, Buffers, StaticNode};
use smallvec::SmallVec;

/// The client message types of spec §5; anything else is kept verbatim for the
/// `error_notification` 400 (and for an application handler that knows more types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType<'a> {
    /// `data_request`: P2P, broadcast or notification delivery.
    DataRequest,
    /// `presence_update`.
    PresenceUpdate,
    /// `client_ack`: completes a server message sent with an ack request.
    ClientAck,
    /// `generic_request`: answered with `generic_response` carrying the same pid.
    GenericRequest,
    /// `generic_response`: answers a server-initiated `generic_request`.
    GenericResponse,
    /// Any other `type` string.
    Unknown(&'a str),
}

impl<'a> MessageType<'a> {
    /// Maps the wire string; unknown strings are kept, not refused (the gateway decides).
    #[must_use]
    pub fn from_wire(s: &'a str) -> Self {
        match s {
            "data_request" => Self::DataRequest,
            "presence_update" => Self::PresenceUpdate,
            "client_ack" => Self::ClientAck,
            "generic_request" => Self::GenericRequest,
            "generic_response" => Self::GenericResponse,
            other => Self::Unknown(other),
        }
    }

    /// The wire string.
    #[must_use]
    pub fn as_str(&self) -> &'a str {
        match self {
            Self::DataRequest => "data_request",
            Self::PresenceUpdate => "presence_update",
            Self::ClientAck => "client_ack",
            Self::GenericRequest => "generic_request",
            Self::GenericResponse => "generic_response",
            Self::Unknown(s) => s,
        }
    }
}

/// A validated client envelope borrowing the frame payload it was parsed from.
#[derive(Debug, Clone)]
pub struct ClientEnvelope<'a> {
    /// `None` when absent, `null` or `""`; otherwise at most `max_pid_len` bytes.
    pub pid: Option<&'a str>,
    /// The `type` field.
    pub kind: MessageType<'a>,
    /// Top-level `targetUserId`, validated as a user id (1..=2^53−1).
    pub target_user_id: Option<u64>,
    /// The `payload` field: any JSON value (shape checked per type by the gateway).
    pub payload: BorrowedValue<'a>,
}

/// A reusable per-shard parser: keeps simd-json's scratch buffers between messages so the
/// hot path allocates only the value tree itself.
pub struct EnvelopeParser {
    buffers: Buffers,
    limits: EnvelopeLimits,
}

impl std::fmt::Debug for EnvelopeParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeParser")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl EnvelopeParser {
    /// Scratch sized for typical messages; it grows on demand.
    #[must_use]
    pub fn new(limits: EnvelopeLimits) -> Self {
        Self {
            // Backstop only: the pre-scan already refused anything deeper than max_depth.
            buffers: Buffers::with_max_depth(4096, limits.max_depth.saturating_add(1)),
            limits,
        }
    }

    /// The limits this parser enforces.
    #[must_use]
    pub fn limits(&self) -> &EnvelopeLimits {
        &self.limits
    }

    /// Parses and validates one text message in place (simd-json rewrites escaped strings
    /// inside `buf`; the result borrows it).
    ///
    /// # Errors
    /// Any broken rule of spec §4, with `original_pid` filled whenever it was readable.
    pub fn parse<'a>(&mut self, buf: &'a mut [u8]) -> Result<ClientEnvelope<'a>, EnvelopeError> {
        let Prescan {
            pid: raw_pid,
            duplicate_key,
        } = prescan(buf, &self.limits)
            .map_err(|pid| EnvelopeError::new(EnvelopeRule::TooDeep, pid.as_deref()))?;
        match simd_json::to_borrowed_value_with_buffers(buf, &mut self.buffers) {
            Ok(value) => validate(value, &self.limits, duplicate_key),
            Err(_) => Err(EnvelopeError::new(
                EnvelopeRule::MalformedJson,
                raw_pid.and_then(|raw| raw.decode()).as_deref(),
            )),
        }
    }
}

/// One-shot form of [`EnvelopeParser::parse`] (allocates simd-json's scratch each call;
/// shards should keep an `EnvelopeParser`).
///
/// # Errors
/// See [`EnvelopeParser::parse`].
pub fn parse_client<'a>(
    buf: &'a mut [u8],
    limits: &EnvelopeLimits,
) -> Result<ClientEnvelope<'a>, EnvelopeError> {
    EnvelopeParser::new(*limits).parse(buf)
}

/// The raw text of the top-level `"pid"` string as the pre-scan saw it, copied out before
/// simd-json runs (simd-json rewrites escaped strings in place, and the borrow checker
/// would not let the error path look at `buf` again anyway). At most 128 bytes inline.
#[derive(Debug)]
struct RawPid {
    /// String content without quotes; still escaped when `escaped`.
    bytes: SmallVec<[u8; 128]>,
    escaped: bool,
}

impl RawPid {
    /// The pid text, or `None` if it does not decode, is empty or is too long.
    fn decode(self) -> Option<String> {
        let text = if self.escaped {
            let mut quoted = Vec::with_capacity(self.bytes.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(&self.bytes);
            quoted.push(b'"');
            serde_json::from_slice::<String>(&quoted).ok()?
        } else {
            String::from_utf8(self.bytes.to_vec()).ok()?
        };
        (!text.is_empty() && text.len() <= super::MAX_PID_LEN).then_some(text)
    }
}

/// What the pre-scan learned about a message that is not too deep.
#[derive(Debug)]
struct Prescan {
    /// The raw top-level `pid`, for error answers.
    pid: Option<RawPid>,
    /// A top-level envelope key (`type`, `pid`, `targetUserId`, `payload`) appears twice.
    /// simd-json keeps repeated keys only in objects of up to 32 keys (larger objects are
    /// hash-backed and keep the last value), so `validate` cannot see every repeat itself
    /// (found by the `envelope` fuzz target).
    duplicate_key: bool,
}

/// One byte pass over the message, before simd-json: refuses nesting deeper than
/// `max_depth` (so no later stage can recurse deeply), copies out the top-level `pid`
/// string for error answers and notes repeated top-level envelope keys. It tracks only
/// string boundaries and brackets, so on malformed input both are best effort (simd-json
/// then refuses the text anyway). Returns `Err(pid so far)` when too deep.
fn prescan(buf: &[u8], limits: &EnvelopeLimits) -> Result<Prescan, Option<String>> {
    let scan = scan_spans(buf, limits.max_depth);
    let pid = scan.pid.and_then(|s| raw_pid(buf, s, limits));
    if scan.too_deep {
        return Err(pid.and_then(RawPid::decode));
    }
    Ok(Prescan {
        pid,
        duplicate_key: scan.duplicate_key,
    })
}

/// Copies the pid span out, if it can be a valid pid at all.
fn raw_pid(
    buf: &[u8],
    (start, end, escaped): (usize, usize, bool),
    limits: &EnvelopeLimits,
) -> Option<RawPid> {
    // An escaped pid of `max_pid_len` bytes is at most 6× longer on the wire (`\u00XX`).
    let max = if escaped {
        limits.max_pid_len.saturating_mul(6)
    } else {
        limits.max_pid_len
    };
    let content = buf.get(start..end)?;
    (content.len() <= max).then(|| RawPid {
        bytes: SmallVec::from_slice(content),
        escaped,
    })
}

/// What [`scan_spans`] found.
struct Spans {
    /// The first top-level pid string's content span and escape flag.
    pid: Option<(usize, usize, bool)>,
    /// Nesting went past `max_depth` (scanning stopped there).
    too_deep: bool,
    /// A top-level envelope key was seen twice.
    duplicate_key: bool,
}

/// Which envelope key (as a bit) a top-level key's raw content is; 0 for any other key.
/// Escaped keys (`"p\u0069d"`, rare) are decoded first so they cannot hide a repeat.
fn envelope_key_bit(raw: &[u8], escaped: bool) -> u8 {
    let bit = |k: &[u8]| match k {
        b"type" => 1,
        b"pid" => 2,
        b"targetUserId" => 4,
        b"payload" => 8,
        _ => 0,
    };
    if !escaped {
        return bit(raw);
    }
    // Only keys short enough to be an envelope key once decoded (`\uXXXX` is 6 bytes).
    if raw.len() > 6 * "targetUserId".len() {
        return 0;
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).map_or(0, |k| bit(k.as_bytes()))
}

/// The scanning loop of [`prescan`].
fn scan_spans(buf: &[u8], max_depth: usize) -> Spans {
    let mut seen_keys = 0u8;
    let mut duplicate_key = false;
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut after_pid_key = false;
    let mut want_pid_value = false;
    let mut pid = None;
    let mut i = 0usize;
    while let Some(&b) = buf.get(i) {
        match b {
            b'"' => {
                let start = i + 1;
                let (end, escaped) = string_end(buf, start);
                if depth == 1 {
                    if expect_key {
                        let raw = buf.get(start..end).unwrap_or_default();
                        after_pid_key = !escaped && raw == b"pid";
                        let key = envelope_key_bit(raw, escaped);
                        duplicate_key |= seen_keys & key != 0;
                        seen_keys |= key;
                        expect_key = false;
                    } else if want_pid_value {
                        want_pid_value = false;
                        if pid.is_none() && end < buf.len() {
                            pid = Some((start, end, escaped));
                        }
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Spans {
                        pid,
                        too_deep: true,
                        duplicate_key,
                    };
                }
                expect_key = depth == 1 && b == b'{';
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => {
                expect_key = true;
                after_pid_key = false;
                want_pid_value = false;
            }
            b':' if depth == 1 => {
                want_pid_value = after_pid_key;
                after_pid_key = false;
            }
            _ => {}
        }
        i += 1;
    }
    Spans {
        pid,
        too_deep: false,
        duplicate_key,
    }
}

/// Index of the closing quote of the string whose content starts at `start` (or
/// `buf.len()` if unterminated), and whether the content contains escapes.
fn string_end(buf: &[u8], start: usize) -> (usize, bool) {
    let mut j = start;
    let mut escaped = false;
    loop {
        let Some(rest) = buf.get(j..) else {
            return (buf.len(), escaped);
        };
        match find_quote_or_backslash(rest) {
            None => return (buf.len(), escaped),
            Some(off) => {
                let k = j + off;
                if buf.get(k) == Some(&b'\\') {
                    escaped = true;
                    j = k + 2;
                } else {
                    return (k, escaped);
                }
            }
        }
    }
}

/// First `"` or `\` in `hay`, eight bytes at a time (SWAR "has zero byte" test: the lowest
/// flagged byte is always a true match, so `trailing_zeros` finds the first one).
fn find_quote_or_backslash(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = LO * b'"' as u64;
    const BACKSLASHES: u64 = LO * b'\\' as u64;
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0usize;
    for chunk in &mut chunks {
        if let Ok(bytes) = <[u8; 8]>::try_from(chunk) {
            let word = u64::from_le_bytes(bytes);
            let q = word ^ QUOTES;
            let s = word ^ BACKSLASHES;
            let hit = ((q.wrapping_sub(LO) & !q) | (s.wrapping_sub(LO) & !s)) & HI;
            if hit != 0 {
                return Some(base + (hit.trailing_zeros() / 8) as usize);
            }
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|p| base + p)
}

/// The top-level rules of spec §4, in one pass over the object's keys.
fn validate<'a>(
    value: BorrowedValue<'a>,
    limits: &EnvelopeLimits,
    duplicate_key: bool,
) -> Result<ClientEnvelope<'a>, EnvelopeError> {
    let BorrowedValue::Object(object) = value else {
        return Err(EnvelopeError::new(EnvelopeRule::NotAnObject, None));
    };
    let mut kind = None;
    let mut pid = None;
    let mut target = None;
    let mut payload = None;
    let mut duplicate = duplicate_key;
    for (key, v) in *object {
        let slot = match key.as_ref() {
            "type" => &mut kind,
            "pid" => &mut pid,
            "targetUserId" => &mut target,
            "payload" => &mut payload,
            _ => continue,
        };
        if slot.is_some() {
            duplicate = true;
        } else {
            *slot = Some(v);
        }
    }

    let pid = match pid {
        None | Some(BorrowedValue::Static(StaticNode::Null)) => None,
        Some(BorrowedValue::String(Cow::Borrowed(s))) => {
            if s.len() > limits.max_pid_len {
                return Err(EnvelopeError::new(EnvelopeRule::PidTooLong, None));
            }
            (!s.is_empty()).then_some(s)
        }
        Some(_) => return Err(EnvelopeError::new(EnvelopeRule::PidNotString, None)),
    };
    let fail = |rule| Err(EnvelopeError::new(rule, pid));
    if duplicate {
        return fail(EnvelopeRule::DuplicateField);
    }
    let kind = match kind {
        None => return fail(EnvelopeRule::MissingType),
        // simd-json's borrowed parse always borrows strings from the input (escapes are
        // rewritten in place); an owned one would need a copy we refuse to make.
        Some(BorrowedValue::String(Cow::Borrowed(s))) => MessageType::from_wire(s),
        Some(_) => return fail(EnvelopeRule::TypeNotString),
    };
    let Some(payload) = payload else {
        return fail(EnvelopeRule::MissingPayload);
    };
    let target_user_id = match target {
        None => None,
        Some(v) => match parse_user_id(&v) {
            Some(id) => Some(id),
            None => return fail(EnvelopeRule::InvalidTargetUserId),
        },
    };
    Ok(ClientEnvelope {
        pid,
        kind,
        target_user_id,
        payload,
    })
}

/// A user id as clients send it: a JSON integer 1..=2^53−1, or the same as a plain decimal
/// string (no sign, no leading zero, no exponent). Floats, `0`, negatives: `None`.
#[must_use]
pub fn parse_user_id(value: &BorrowedValue<'_>) -> Option<u64> {
    let id = match value {
        BorrowedValue::Static(StaticNode::U64(n)) => *n,
        BorrowedValue::Static(StaticNode::I64(n)) => u64::try_from(*n).ok()?,
        BorrowedValue::String(s) => parse_decimal_id(s)?,
        _ => return None,
    };
    (1..=MAX_USER_ID).contains(&id).then_some(id)
}

fn parse_decimal_id(s: &str) -> Option<u64> {
    let bytes = s.as_bytes();
    // 2^53−1 has 16 digits; longer strings cannot be valid and must not overflow.
    if bytes.is_empty() || bytes.len() > 16 || bytes.first() == Some(&b'0') {
        return None;
    }
    bytes.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
    })
}

impl<'a> ClientEnvelope<'a> {
    /// An error for a rule the gateway found broken, carrying this envelope's pid.
    #[must_use]
    pub fn error(&self, rule: EnvelopeRule) -> EnvelopeError {
        EnvelopeError::new(rule, self.pid)
    }

    /// `payload.<key>` when the payload is an object.
    #[must_use]
    pub fn payload_field(&self, key: &str) -> Option<&BorrowedValue<'a>> {
        self.payload.as_object()?.get(key)
    }

    /// `payload.<key>` when it is a string.
    #[must_use]
    pub fn payload_str(&self, key: &str) -> Option<&str> {
        self.payload_field(key)?.as_str()
    }

    /// `payload.resource` (e.g. `"notification"`).
    #[must_use]
    pub fn resource(&self) -> Option<&str> {
        self.payload_str("resource")
    }

    /// `payload.action` (generic_request).
    #[must_use]
    pub fn action(&self) -> Option<&str> {
        self.payload_str("action")
    }

    /// `payload.status` (presence_update, client_ack).
    #[must_use]
    pub fn status(&self) -> Option<&str> {
        self.payload_str("status")
    }

    /// `payload.acknowledgedPid` (client_ack).
    #[must_use]
    pub fn acknowledged_pid(&self) -> Option<&str> {
        self.payload_str("acknowledgedPid")
    }

    /// `payload.context` (presence_update), any JSON value; store it with
    /// [`super::to_json_bytes`].
    #[must_use]
    pub fn context(&self) -> Option<&BorrowedValue<'a>> {
        self.payload_field("context")
    }

    /// `payload.data`.
    #[must_use]
    pub fn data(&self) -> Option<&BorrowedValue<'a>> {
        self.payload_field("data")
    }

    /// `payload.data.<key>` when it is a string (e.g. `token` for `refresh_token`).
    #[must_use]
    pub fn data_str(&self, key: &str) -> Option<&str> {
        self.data()?.as_object()?.get(key)?.as_str()
    }

    /// `payload.data.token` (refresh_token).
    #[must_use]
    pub fn data_token(&self) -> Option<&str> {
        self.data_str("token")
    }

    /// `payload.data.targetUsers` into `out` (cleared first). `Ok(false)` when absent.
    ///
    /// # Errors
    /// 422 when not an array of user ids; 413 when longer than `cap`.
    pub fn target_users(&self, cap: usize, out: &mut Vec<u64>) -> Result<bool, EnvelopeError> {
        self.data_id_list("targetUsers", EnvelopeRule::InvalidTargetUsers, cap, out)
    }

    /// `payload.data.userIds` into `out` (cleared first), for `get_presence`.
    /// `Ok(false)` when absent.
    ///
    /// # Errors
    /// 422 when not an array of user ids; 413 when longer than `cap`.
    pub fn user_ids(&self, cap: usize, out: &mut Vec<u64>) -> Result<bool, EnvelopeError> {
        self.data_id_list("userIds", EnvelopeRule::InvalidUserIds, cap, out)
    }

    fn data_id_list(
        &self,
        key: &str,
        invalid: EnvelopeRule,
        cap: usize,
        out: &mut Vec<u64>,
    ) -> Result<bool, EnvelopeError> {
        out.clear();
        let Some(list) = self.data().and_then(|d| d.as_object()?.get(key)) else {
            return Ok(false);
        };
        let Some(items) = list.as_array() else {
            return Err(self.error(invalid));
        };
        if items.len() > cap {
            return Err(self.error(EnvelopeRule::TooManyUserIds));
        }
        out.reserve(items.len());
        for item in items {
            out.push(parse_user_id(item).ok_or_else(|| self.error(invalid))?);
        }
        Ok(true)
    }

    /// The presence target: top-level `targetUserId`, else `payload.targetUserId`
    /// (spec §5.4 allows either; the top level wins when both are given).
    ///
    /// # Errors
    /// 422 when `payload.targetUserId` is present but not a user id.
    pub fn presence_target_user_id(&self) -> Result<Option<u64>, EnvelopeError> {
        if let Some(id) = self.target_user_id {
            return Ok(Some(id));
        }
        match self.payload_field("targetUserId") {
            None => Ok(None),
            Some(v) => parse_user_id(v)
                .map(Some)
                .ok_or_else(|| self.error(EnvelopeRule::InvalidTargetUserId)),
        }
    }
}

/// Runs only the pre-scan (for `benches/envelope.rs`, to show its share of a parse).
#[doc(hidden)]
#[must_use]
pub fn prescan_for_bench(buf: &[u8]) -> bool {
    prescan(buf, &EnvelopeLimits::default()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EnvelopeLimits {
        EnvelopeLimits::default()
    }

    fn parse(text: &str) -> Result<(Option<String>, String, Option<u64>), EnvelopeError> {
        let mut buf = text.as_bytes().to_vec();
        let env = parse_client(&mut buf, &limits())?;
        Ok((
            env.pid.map(str::to_owned),
            env.kind.as_str().to_owned(),
            env.target_user_id,
        ))
    }

    fn err(text: &str) -> EnvelopeError {
        parse(text).expect_err(text)
    }

    #[test]
    fn valid_p2p_request() {
        let (pid, kind, target) =
            parse(r#"{"pid":"c-1","type":"data_request","targetUserId":456,"payload":{"a":1}}"#)
                .unwrap();
        assert_eq!(pid.as_deref(), Some("c-1"));
        assert_eq!(kind, "data_request");
        assert_eq!(target, Some(456));
    }

    #[test]
    fn message_types_map() {
        for (wire, want) in [
            ("data_request", MessageType::DataRequest),
            ("presence_update", MessageType::PresenceUpdate),
            ("client_ack", MessageType::ClientAck),
            ("generic_request", MessageType::GenericRequest),
            ("generic_response", MessageType::GenericResponse),
            ("chat", MessageType::Unknown("chat")),
        ] {
            let mut buf = format!(r#"{{"type":"{wire}","payload":null}}"#).into_bytes();
            let env = parse_client(&mut buf, &limits()).unwrap();
            assert_eq!(env.kind, want);
            assert_eq!(env.kind.as_str(), wire);
        }
    }

    #[test]
    fn unknown_fields_ignored_and_payload_any() {
        let (pid, _, target) =
            parse(r#"{"x":{"y":[1,2]},"type":"t","payload":[1,"a"],"extra":true}"#).unwrap();
        assert_eq!((pid, target), (None, None));
        parse(r#"{"type":"t","payload":"just a string"}"#).unwrap();
    }

    #[test]
    fn top_level_must_be_object() {
        for text in [r#"[1,2]"#, r#""s""#, "42", "null"] {
            let e = err(text);
            assert_eq!((e.rule, e.code), (EnvelopeRule::NotAnObject, 400), "{text}");
        }
    }

    #[test]
    fn type_rules() {
        let e = err(r#"{"pid":"p1","payload":{}}"#);
        assert_eq!((e.rule, e.code), (EnvelopeRule::MissingType, 400));
        assert_eq!(e.original_pid.as_deref(), Some("p1"));
        let e = err(r#"{"pid":"p1","type":5,"payload":{}}"#);
        assert_eq!((e.rule, e.code), (EnvelopeRule::TypeNotString, 400));
        assert_eq!(e.original_pid.as_deref(), Some("p1"));
    }

    #[test]
    fn payload_required() {
        let e = err(r#"{"pid":"p2","type":"data_request"}"#);
        assert_eq!((e.rule, e.code), (EnvelopeRule::MissingPayload, 400));
        assert_eq!(e.original_pid.as_deref(), Some("p2"));
        // An explicit null is present.
        parse(r#"{"type":"t","payload":null}"#).unwrap();
    }

    #[test]
    fn duplicate_envelope_fields_refused() {
        let e = err(r#"{"pid":"p","type":"a","type":"b","payload":1}"#);
        assert_eq!((e.rule, e.code), (EnvelopeRule::DuplicateField, 400));
        assert_eq!(e.original_pid.as_deref(), Some("p"));
        // Repeats of unknown fields do not matter.
        parse(r#"{"x":1,"x":2,"type":"a","payload":1}"#).unwrap();
    }

    #[test]
    fn pid_rules() {
        let long = "x".repeat(129);
        let e = err(&format!(r#"{{"pid":"{long}","type":"t","payload":1}}"#));
        assert_eq!((e.rule, e.code), (EnvelopeRule::PidTooLong, 422));
        assert_eq!(e.original_pid, None);
        let ok = "x".repeat(128);
        let (pid, ..) = parse(&format!(r#"{{"pid":"{ok}","type":"t","payload":1}}"#)).unwrap();
        assert_eq!(pid.as_deref(), Some(ok.as_str()));
        let e = err(r#"{"pid":7,"type":"t","payload":1}"#);
        assert_eq!((e.rule, e.code), (EnvelopeRule::PidNotString, 422));
        assert_eq!(
            parse(r#"{"pid":"","type":"t","payload":1}"#).unwrap().0,
            None
        );
        assert_eq!(
            parse(r#"{"pid":null,"type":"t","payload":1}"#).unwrap().0,
            None
        );
        // Escapes are decoded in place.
        let (pid, ..) = parse(r#"{"pid":"a\"b\u00e9","type":"t","payload":1}"#).unwrap();
        assert_eq!(pid.as_deref(), Some("a\"bé"));
    }

    #[test]
    fn target_user_id_rules() {
        let ok = |t: &str| parse(&format!(r#"{{"type":"t","targetUserId":{t},"payload":1}}"#));
        assert_eq!(ok("1").unwrap().2, Some(1));
        assert_eq!(ok("9007199254740991").unwrap().2, Some(MAX_USER_ID));
        assert_eq!(ok(r#""42""#).unwrap().2, Some(42));
        assert_eq!(ok(r#""9007199254740991""#).unwrap().2, Some(MAX_USER_ID));
        for bad in [
            "0",
            "-1",
            "1.5",
            "5.0",
            "1e3",
            "9007199254740992",
            "18446744073709551615",
            "null",
            "true",
            "[1]",
            r#""""#,
            r#""0""#,
            r#""007""#,
            r#""-3""#,
            r#""+3""#,
            r#""1e3""#,
            r#""9007199254740992""#,
            r#""99999999999999999999999""#,
        ] {
            let e = ok(bad).expect_err(bad);
            assert_eq!(
                (e.rule, e.code),
                (EnvelopeRule::InvalidTargetUserId, 422),
                "{bad}"
            );
        }
        let e = parse(r#"{"pid":"p9","type":"t","targetUserId":-4,"payload":1}"#).unwrap_err();
        assert_eq!(e.original_pid.as_deref(), Some("p9"));
    }

    #[test]
    fn malformed_json_keeps_pid_when_readable() {
        // pid before the damage.
        let e = err(r#"{"pid":"abc-1","type":"data_request","payload":{"x":}"#);
        assert_eq!((e.rule, e.code), (EnvelopeRule::MalformedJson, 400));
        assert_eq!(e.original_pid.as_deref(), Some("abc-1"));
        // Truncated message.
        let e = err(r#"{"type":"data_request","pid":"abc-2","payload":{"x":"#);
        assert_eq!(e.original_pid.as_deref(), Some("abc-2"));
        // Escaped strings before the pid are rewritten by simd-json; the pid survives.
        let e = err(r#"{"a":"q\"\u0041\n","pid":"abc-3","payload":tru}"#);
        assert_eq!(e.original_pid.as_deref(), Some("abc-3"));
        // An escaped pid is decoded from the copy taken before parsing.
        let e = err(r#"{"pid":"a\"b\u0041","type":"t","payload":}"#);
        assert_eq!(e.original_pid.as_deref(), Some("a\"bA"));
        // Damage inside a nested value does not confuse the key tracking.
        let e = err(r#"{"payload":{"pid":"inner","z":[1,}],"pid":"outer"}"#);
        assert_eq!(e.original_pid.as_deref(), Some("outer"));
    }

    #[test]
    fn malformed_json_without_readable_pid() {
        for text in [
            r#"{"type":"t","payload":{"x":}"#,
            r#"{"pid":"unterminated"#,
            r#"{"pid":12,"type":"t","payload":x}"#,
            r#"{"payload":{"pid":"nested"},"type":"t",}"#,
            r#"{"pid""abc","type":"t","payload":1"#,
            "",
            "   ",
            "{",
            "}",
            "\"",
            "\\",
        ] {
            let e = err(text);
            assert_eq!(e.code, 400, "{text}");
            assert_eq!(e.original_pid, None, "{text}");
        }
        // A too-long pid is never echoed.
        let long = "y".repeat(200);
        let e = err(&format!(r#"{{"pid":"{long}","type":"t","payload":}}"#));
        assert_eq!(e.original_pid, None);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = "[".repeat(10_000);
        let e = err(&deep);
        assert_eq!((e.rule, e.code), (EnvelopeRule::TooDeep, 413));
        let deep_obj = format!(
            r#"{{"pid":"d1","type":"t","payload":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let e = err(&deep_obj);
        assert_eq!((e.rule, e.code), (EnvelopeRule::TooDeep, 413));
        assert_eq!(e.original_pid.as_deref(), Some("d1"));
        // Exactly max_depth levels (the envelope object counts as one) is fine.
        let max = limits().max_depth;
        let at_limit = format!(
            r#"{{"type":"t","payload":{}{}}}"#,
            "[".repeat(max - 1),
            "]".repeat(max - 1)
        );
        parse(&at_limit).unwrap();
        let over = format!(
            r#"{{"type":"t","payload":{}{}}}"#,
            "[".repeat(max),
            "]".repeat(max)
        );
        assert_eq!(err(&over).rule, EnvelopeRule::TooDeep);
        // Brackets inside strings do not count.
        let in_string = format!(r#"{{"type":"t","payload":"{}\"{}"}}"#, "[".repeat(500), "{");
        parse(&in_string).unwrap();
    }

    #[test]
    fn huge_numbers_never_panic() {
        for n in [
            "1e999999",
            "-1e999999",
            "1e-999999",
            &"9".repeat(100),
            &format!("0.{}", "1".repeat(400)),
            "18446744073709551616",
            "-9223372036854775809",
        ] {
            let text = format!(r#"{{"pid":"n","type":"t","payload":{{"v":{n}}}}}"#);
            let mut buf = text.clone().into_bytes();
            match parse_client(&mut buf, &limits()) {
                Ok(env) => assert!(env.payload.as_object().is_some(), "{n}"),
                Err(e) => {
                    assert_eq!(e.code, 400, "{n}");
                    assert_eq!(e.original_pid.as_deref(), Some("n"));
                }
            }
            let target = format!(r#"{{"type":"t","targetUserId":{n},"payload":1}}"#);
            let mut buf = target.into_bytes();
            assert!(parse_client(&mut buf, &limits()).is_err(), "{n}");
        }
    }

    #[test]
    fn parser_reuse_across_messages() {
        let mut parser = EnvelopeParser::new(limits());
        for i in 0..50 {
            let mut buf =
                format!(r#"{{"pid":"p{i}","type":"data_request","payload":{{"i":{i}}}}}"#)
                    .into_bytes();
            let env = parser.parse(&mut buf).unwrap();
            assert_eq!(env.pid, Some(format!("p{i}").as_str()));
            let mut bad = b"{\"pid\":\"x\",".to_vec();
            assert!(parser.parse(&mut bad).is_err());
        }
    }

    #[test]
    fn payload_helpers() {
        let mut buf = br#"{"pid":"h1","type":"generic_request","payload":{"action":"get_presence","resource":"notification","status":"away","acknowledgedPid":"s-9","context":{"room":"r"},"targetUserId":"77","data":{"userIds":[1,"2",3],"targetUsers":[9],"token":"jwt"}}}"#.to_vec();
        let env = parse_client(&mut buf, &limits()).unwrap();
        assert_eq!(env.action(), Some("get_presence"));
        assert_eq!(env.resource(), Some("notification"));
        assert_eq!(env.status(), Some("away"));
        assert_eq!(env.acknowledged_pid(), Some("s-9"));
        assert_eq!(env.data_token(), Some("jwt"));
        assert_eq!(env.payload_str("nope"), None);
        assert!(env.context().unwrap().as_object().is_some());
        assert_eq!(env.presence_target_user_id().unwrap(), Some(77));
        let mut ids = vec![5];
        assert!(env.user_ids(10, &mut ids).unwrap());
        assert_eq!(ids, [1, 2, 3]);
        assert!(env.target_users(10, &mut ids).unwrap());
        assert_eq!(ids, [9]);
        let e = env.user_ids(2, &mut ids).unwrap_err();
        assert_eq!((e.rule, e.code), (EnvelopeRule::TooManyUserIds, 413));
        assert_eq!(e.original_pid.as_deref(), Some("h1"));
    }

    #[test]
    fn payload_helpers_reject_bad_lists() {
        for (data, absent) in [
            (r#"{"targetUsers":[1,2.5]}"#, false),
            (r#"{"targetUsers":[1,0]}"#, false),
            (r#"{"targetUsers":[1,-1]}"#, false),
            (r#"{"targetUsers":"1,2"}"#, false),
            (r#"{"targetUsers":[null]}"#, false),
            (r#"{}"#, true),
            (r#"5"#, true),
        ] {
            let text = format!(
                r#"{{"pid":"q","type":"data_request","payload":{{"resource":"notification","data":{data}}}}}"#
            );
            let mut buf = text.into_bytes();
            let env = parse_client(&mut buf, &limits()).unwrap();
            let mut out = Vec::new();
            match env.target_users(100, &mut out) {
                Ok(present) => assert!(absent && !present, "{data}"),
                Err(e) => {
                    assert!(!absent, "{data}");
                    assert_eq!((e.rule, e.code), (EnvelopeRule::InvalidTargetUsers, 422));
                    assert_eq!(e.original_pid.as_deref(), Some("q"));
                }
            }
        }
        // Presence target inside the payload is validated too; top level wins.
        let mut buf =
            br#"{"type":"presence_update","payload":{"status":"x","targetUserId":1.5}}"#.to_vec();
        let env = parse_client(&mut buf, &limits()).unwrap();
        assert_eq!(env.presence_target_user_id().unwrap_err().code, 422);
        let mut buf =
            br#"{"type":"presence_update","targetUserId":3,"payload":{"targetUserId":4}}"#.to_vec();
        let env = parse_client(&mut buf, &limits()).unwrap();
        assert_eq!(env.presence_target_user_id().unwrap(), Some(3));
        // Helpers on a non-object payload answer None.
        let mut buf = br#"{"type":"presence_update","payload":[1]}"#.to_vec();
        let env = parse_client(&mut buf, &limits()).unwrap();
        assert_eq!(env.status(), None);
        assert_eq!(env.presence_target_user_id().unwrap(), None);
    }

    #[test]
    fn swar_search_matches_naive() {
        let sample = br#"abcdefgh"ijklmnopqrstu\vwxyz0123456789"#;
        for start in 0..sample.len() {
            for end in start..=sample.len() {
                let hay = &sample[start..end];
                let naive = hay.iter().position(|&c| c == b'"' || c == b'\\');
                assert_eq!(find_quote_or_backslash(hay), naive);
            }
        }
        // High bytes (UTF-8) are not matches.
        assert_eq!(find_quote_or_backslash("ééééé\"".as_bytes()), Some(10));
    }
}
