//! Client → server envelopes, parsed with simd-json in place into its flat tape
//! ([`simd_json::fill_tape`]; the parser's `Buffers` and a per-thread spare tape are reused,
//! so a parse allocates nothing once warm). No value tree is built: the top-level fields and
//! the payload members the gateway reads are found by one walk over the tape nodes, and the
//! `payload` stays a view of its nodes ([`RawJson`]). Only when simd-json refuses the text
//! does the byte pre-scan run (on a copy of the text as sent), to find a `pid` for the error
//! and whether the refusal is "too deep" (413).

use super::tape::{span, RawJson};
use super::{EnvelopeError, EnvelopeLimits, EnvelopeRule, MAX_USER_ID};
use simd_json::{Buffers, Node, StaticNode, Tape};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::cell::Cell;

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

/// A validated client envelope borrowing the frame payload it was parsed from (strings
/// unescaped in place there) and owning the simd-json tape of it (returned to a per-thread
/// spare when dropped).
#[derive(Debug, Clone)]
pub struct ClientEnvelope<'a> {
    /// `None` when absent, `null` or `""`; otherwise at most `max_pid_len` bytes.
    pub pid: Option<&'a str>,
    /// The `type` field.
    pub kind: MessageType<'a>,
    /// Top-level `targetUserId`, validated as a user id (1..=2^53−1).
    pub target_user_id: Option<u64>,
    /// The whole message's tape.
    tape: Vec<Node<'a>>,
    /// Index of the payload's header node.
    payload_at: usize,
    /// Tape index of the first payload member named like each of [`KNOWN_KEYS`]'s value;
    /// 0 when absent (index 0 is the envelope object itself).
    known: [u32; KNOWN_KEYS.len()],
    /// The text had no backslash (see [`RawJson`]'s fast path).
    plain: bool,
}

/// Payload members the gateway itself reads, so that reading them costs no second walk.
const KNOWN_KEYS: [&str; 8] = [
    "resource",
    "action",
    "status",
    "acknowledgedPid",
    "error",
    "context",
    "data",
    "targetUserId",
];

/// Index into [`KNOWN_KEYS`] of a key.
fn known_index(key: &str) -> Option<usize> {
    Some(match key {
        "resource" => 0,
        "action" => 1,
        "status" => 2,
        "acknowledgedPid" => 3,
        "error" => 4,
        "context" => 5,
        "data" => 6,
        "targetUserId" => 7,
        _ => return None,
    })
}

thread_local! {
    /// The allocation of the last dropped envelope's tape, for the next parse on this thread.
    static SPARE_TAPE: Cell<Vec<Node<'static>>> = const { Cell::new(Vec::new()) };
}

/// Tapes longer than this (nodes) are freed rather than kept as the spare.
const MAX_SPARE_NODES: usize = 1 << 16;

fn take_spare_tape<'a>() -> Tape<'a> {
    Tape(SPARE_TAPE.with(Cell::take))
}

fn keep_spare_tape(tape: Vec<Node<'_>>) {
    if tape.capacity() <= MAX_SPARE_NODES {
        let empty: Tape<'static> = Tape(tape).reset();
        SPARE_TAPE.with(|spare| spare.set(empty.0));
    }
}

impl Drop for ClientEnvelope<'_> {
    fn drop(&mut self) {
        keep_spare_tape(std::mem::take(&mut self.tape));
    }
}

/// A reusable per-shard parser: simd-json's buffers (sized to the largest message so far,
/// depth limit built in) and a copy of the text as sent, for the error path.
pub struct EnvelopeParser {
    limits: EnvelopeLimits,
    buffers: Buffers,
    original: Vec<u8>,
}

impl std::fmt::Debug for EnvelopeParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeParser")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl EnvelopeParser {
    /// A parser enforcing `limits`.
    #[must_use]
    pub fn new(limits: EnvelopeLimits) -> Self {
        Self {
            limits,
            // simd-json counts the envelope object as depth 1 too.
            buffers: Buffers::with_max_depth(512, limits.max_depth),
            original: Vec::new(),
        }
    }

    /// The limits this parser enforces.
    #[must_use]
    pub fn limits(&self) -> &EnvelopeLimits {
        &self.limits
    }

    /// Parses and validates one text message with simd-json, in place: escaped strings are
    /// decoded within `buf`; the result borrows `buf`.
    ///
    /// # Errors
    /// Any broken rule of spec §4, with `original_pid` filled whenever it was readable.
    pub fn parse<'a>(&mut self, buf: &'a mut [u8]) -> Result<ClientEnvelope<'a>, EnvelopeError> {
        // simd-json rewrites escaped strings in place even in a text it then refuses, and
        // the refused text is needed for the error's pid; one copy (simd-json copies the
        // text into its aligned buffer anyway, so this costs about as much again).
        self.original.clear();
        self.original.extend_from_slice(buf);
        let plain = memchr::memchr(b'\\', buf).is_none();
        let mut tape = take_spare_tape();
        if simd_json::fill_tape(buf, &mut self.buffers, &mut tape).is_err() {
            keep_spare_tape(tape.0);
            return Err(refusal(&self.original, &self.limits));
        }
        validate(tape.0, &self.limits, plain)
    }
}

/// One-shot form of [`EnvelopeParser::parse`].
///
/// # Errors
/// See [`EnvelopeParser::parse`].
pub fn parse_client<'a>(
    buf: &'a mut [u8],
    limits: &EnvelopeLimits,
) -> Result<ClientEnvelope<'a>, EnvelopeError> {
    EnvelopeParser::new(*limits).parse(buf)
}

/// The answer to a text simd-json refused: 413 when the pre-scan finds it nested too
/// deeply anywhere, else 400; with the pid the pre-scan could read.
fn refusal(buf: &[u8], limits: &EnvelopeLimits) -> EnvelopeError {
    match prescan(buf, limits) {
        Err(pid) => EnvelopeError::new(EnvelopeRule::TooDeep, pid.as_deref()),
        Ok(scan) => EnvelopeError::new(
            EnvelopeRule::MalformedJson,
            scan.pid.and_then(RawPid::decode).as_deref(),
        ),
    }
}

/// Bits of the envelope keys, to find repeats.
const TYPE: u8 = 1;
const PID: u8 = 2;
const TARGET: u8 = 4;
const PAYLOAD: u8 = 8;

/// The top-level rules of spec §4 on a filled tape, in the order the error codes are
/// decided.
fn validate<'a>(
    tape: Vec<Node<'a>>,
    limits: &EnvelopeLimits,
    plain: bool,
) -> Result<ClientEnvelope<'a>, EnvelopeError> {
    let Some(&Node::Object { len, .. }) = tape.first() else {
        keep_spare_tape(tape);
        return Err(EnvelopeError::new(EnvelopeRule::NotAnObject, None));
    };
    // Tape indexes of the first value of each envelope key (0: absent).
    let (mut kind_at, mut pid_at, mut target_at, mut payload_at) = (0, 0, 0, 0);
    let mut seen = 0u8;
    let mut duplicate = false;
    let mut at = 1;
    for _ in 0..len {
        let key = match tape.get(at) {
            Some(Node::String(k)) => *k,
            _ => break,
        };
        let value = at + 1;
        let bit = match key {
            "type" => TYPE,
            "pid" => PID,
            "targetUserId" => TARGET,
            "payload" => PAYLOAD,
            _ => 0,
        };
        if bit != 0 {
            if seen & bit != 0 {
                duplicate = true;
            } else {
                match bit {
                    TYPE => kind_at = value,
                    PID => pid_at = value,
                    TARGET => target_at = value,
                    _ => payload_at = value,
                }
            }
            seen |= bit;
        }
        at = value + tape.get(value).map_or(1, span);
    }
    let pid = match tape.get(pid_at) {
        _ if pid_at == 0 => None,
        Some(Node::Static(StaticNode::Null)) => None,
        Some(Node::String(s)) => {
            if s.len() > limits.max_pid_len {
                keep_spare_tape(tape);
                return Err(EnvelopeError::new(EnvelopeRule::PidTooLong, None));
            }
            (!s.is_empty()).then_some(*s)
        }
        _ => {
            keep_spare_tape(tape);
            return Err(EnvelopeError::new(EnvelopeRule::PidNotString, None));
        }
    };
    let broken = if duplicate {
        Some(EnvelopeRule::DuplicateField)
    } else if kind_at == 0 {
        Some(EnvelopeRule::MissingType)
    } else if !matches!(tape.get(kind_at), Some(Node::String(_))) {
        Some(EnvelopeRule::TypeNotString)
    } else if payload_at == 0 {
        Some(EnvelopeRule::MissingPayload)
    } else {
        None
    };
    if let Some(rule) = broken {
        keep_spare_tape(tape);
        return Err(EnvelopeError::new(rule, pid));
    }
    let kind = match tape.get(kind_at) {
        Some(Node::String(s)) => MessageType::from_wire(s),
        _ => MessageType::Unknown(""),
    };
    let target_user_id = if target_at == 0 {
        None
    } else {
        match tape
            .get(target_at..)
            .and_then(RawJson::from_nodes)
            .and_then(parse_user_id)
        {
            Some(id) => Some(id),
            None => {
                keep_spare_tape(tape);
                return Err(EnvelopeError::new(EnvelopeRule::InvalidTargetUserId, pid));
            }
        }
    };
    let known = known_members(&tape, payload_at);
    Ok(ClientEnvelope {
        pid,
        kind,
        target_user_id,
        tape,
        payload_at,
        known,
        plain,
    })
}

/// Where the first payload member named like each of [`KNOWN_KEYS`] has its value.
fn known_members(tape: &[Node<'_>], payload_at: usize) -> [u32; KNOWN_KEYS.len()] {
    let mut known = [0u32; KNOWN_KEYS.len()];
    let Some(&Node::Object { len, .. }) = tape.get(payload_at) else {
        return known;
    };
    let mut at = payload_at + 1;
    for _ in 0..len {
        let value = at + 1;
        if let Some(Node::String(key)) = tape.get(at) {
            if let Some(slot) = known_index(key).and_then(|i| known.get_mut(i)) {
                if *slot == 0 {
                    // simd-json refuses texts over 4 GiB, so a tape index fits.
                    *slot = u32::try_from(value).unwrap_or(0);
                }
            }
        }
        at = value + tape.get(value).map_or(1, span);
    }
    known
}

/// A user id as clients send it: a JSON integer 1..=2^53−1, or the same as a plain decimal
/// string (no sign, no leading zero, no exponent). Floats (even `5.0`), `0`, negatives:
/// `None`.
#[must_use]
pub fn parse_user_id(value: RawJson<'_>) -> Option<u64> {
    let id = match value.nodes().first()? {
        Node::String(s) => parse_decimal_id(s)?,
        Node::Static(StaticNode::U64(n)) => *n,
        Node::Static(StaticNode::I64(n)) => u64::try_from(*n).ok()?,
        _ => return None,
    };
    (1..=MAX_USER_ID).contains(&id).then_some(id)
}

/// A user id written as a string: canonical decimal digits (no sign, no leading zero, at
/// most 16 digits). The one rule for ids in envelopes and in a token's `sub`; the caller
/// checks the range.
pub(crate) fn parse_decimal_id(s: &str) -> Option<u64> {
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

    /// The `payload` field: any JSON value (shape checked per type by the gateway), as a
    /// view of its tape nodes.
    #[must_use]
    pub fn payload(&self) -> RawJson<'_> {
        self.tape
            .get(self.payload_at..)
            .and_then(|nodes| RawJson::from_plain_nodes(nodes, self.plain))
            .unwrap_or(RawJson::NULL)
    }

    /// `payload.<key>` when the payload is an object (the first of repeated keys).
    #[must_use]
    pub fn payload_field(&self, key: &str) -> Option<RawJson<'_>> {
        match known_index(key) {
            Some(i) => self.known_field(i),
            None => self.payload().get(key),
        }
    }

    /// A member of [`KNOWN_KEYS`] by index, from the walk at parse time.
    fn known_field(&self, index: usize) -> Option<RawJson<'_>> {
        let at = *self.known.get(index)? as usize;
        if at == 0 {
            return None;
        }
        self.tape
            .get(at..)
            .and_then(|nodes| RawJson::from_plain_nodes(nodes, self.plain))
    }

    fn known_str(&self, index: usize) -> Option<Cow<'a, str>> {
        self.str_at(*self.known.get(index)? as usize)
    }

    /// `payload.<key>` when it is a string (already unescaped, borrowed from the frame).
    #[must_use]
    pub fn payload_str(&self, key: &str) -> Option<Cow<'a, str>> {
        match known_index(key) {
            Some(i) => self.known_str(i),
            None => self.str_at(self.member_index(self.payload_at, key)?),
        }
    }

    /// Tape index of the value of the first member `key` of the object at `object_at`.
    fn member_index(&self, object_at: usize, key: &str) -> Option<usize> {
        let &Node::Object { len, .. } = self.tape.get(object_at)? else {
            return None;
        };
        let mut at = object_at + 1;
        for _ in 0..len {
            let value = at + 1;
            if matches!(self.tape.get(at), Some(Node::String(k)) if *k == key) {
                return Some(value);
            }
            at = value + self.tape.get(value).map_or(1, span);
        }
        None
    }

    /// The string at tape index `at` (never the envelope itself, index 0).
    fn str_at(&self, at: usize) -> Option<Cow<'a, str>> {
        match self.tape.get(at) {
            Some(Node::String(s)) if at != 0 => Some(Cow::Borrowed(*s)),
            _ => None,
        }
    }

    /// `payload.resource` (e.g. `"notification"`).
    #[must_use]
    pub fn resource(&self) -> Option<Cow<'a, str>> {
        self.known_str(0)
    }

    /// `payload.action` (generic_request).
    #[must_use]
    pub fn action(&self) -> Option<Cow<'a, str>> {
        self.known_str(1)
    }

    /// `payload.status` (presence_update, client_ack).
    #[must_use]
    pub fn status(&self) -> Option<Cow<'a, str>> {
        self.known_str(2)
    }

    /// `payload.acknowledgedPid` (client_ack).
    #[must_use]
    pub fn acknowledged_pid(&self) -> Option<Cow<'a, str>> {
        self.known_str(3)
    }

    /// `payload.context` (presence_update), any JSON value; store it with
    /// [`super::to_json_bytes`].
    #[must_use]
    pub fn context(&self) -> Option<RawJson<'_>> {
        self.known_field(5)
    }

    /// `payload.data`.
    #[must_use]
    pub fn data(&self) -> Option<RawJson<'_>> {
        self.known_field(6)
    }

    /// `payload.data.<key>` when it is a string (e.g. `token` for `refresh_token`).
    #[must_use]
    pub fn data_str(&self, key: &str) -> Option<Cow<'a, str>> {
        let data_at = *self.known.get(6)? as usize;
        if data_at == 0 {
            return None;
        }
        self.str_at(self.member_index(data_at, key)?)
    }

    /// `payload.data.token` (refresh_token).
    #[must_use]
    pub fn data_token(&self) -> Option<Cow<'a, str>> {
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
        let Some(list) = self.data().and_then(|d| d.get(key)) else {
            return Ok(false);
        };
        let Some(&Node::Array { len, .. }) = list.nodes().first() else {
            return Err(self.error(invalid));
        };
        // The length is judged before the items, as a 413 outranks a bad item.
        if len > cap {
            return Err(self.error(EnvelopeRule::TooManyUserIds));
        }
        for item in list.elements() {
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
        match self.known_field(7) {
            None => Ok(None),
            Some(v) => parse_user_id(v)
                .map(Some)
                .ok_or_else(|| self.error(EnvelopeRule::InvalidTargetUserId)),
        }
    }
}

/// The raw text of the top-level `"pid"` string as the pre-scan saw it, for the error
/// answer. At most 128 bytes inline.
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
}

/// The error path's byte pass over a refused message: finds nesting deeper than
/// `max_depth` anywhere (413 outranks 400) and copies out the top-level `pid` string for the
/// error answer, even one written after the damage. It tracks only string boundaries and
/// brackets, so on malformed input the pid is best effort. Returns `Err(pid so far)` when
/// too deep.
fn prescan(buf: &[u8], limits: &EnvelopeLimits) -> Result<Prescan, Option<String>> {
    let scan = scan_spans(buf, limits.max_depth);
    let pid = scan.pid.and_then(|s| raw_pid(buf, s, limits));
    if scan.too_deep {
        return Err(pid.and_then(RawPid::decode));
    }
    Ok(Prescan { pid })
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
}

/// The scanning loop of [`prescan`].
fn scan_spans(buf: &[u8], max_depth: usize) -> Spans {
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
        // Escaped strings before the pid do not confuse the pre-scan.
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
                Ok(env) => assert!(env.payload().is_object(), "{n}"),
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
    fn raw_control_characters_in_strings_are_refused() {
        // The data_event writer copies strings of a text without backslashes as they are,
        // which is only valid JSON because simd-json refuses unescaped control characters.
        for c in (0u8..0x20).chain([0x7f]) {
            let mut text = br#"{"type":"t","pid":"p","payload":{"k":"a_b"}}"#.to_vec();
            let at = text.iter().position(|&b| b == b'_').unwrap();
            text[at] = c;
            let result = parse_client(&mut text, &limits());
            if c == 0x7f {
                let env = result.unwrap();
                let mut out = Vec::new();
                super::super::write_data_event(&mut out, 1, &env.payload(), "n", 0, "m").unwrap();
                serde_json::from_slice::<serde_json::Value>(&out).unwrap();
            } else {
                assert_eq!(result.unwrap_err().rule, EnvelopeRule::MalformedJson, "{c}");
            }
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
        assert_eq!(env.action().as_deref(), Some("get_presence"));
        assert_eq!(env.resource().as_deref(), Some("notification"));
        assert_eq!(env.status().as_deref(), Some("away"));
        assert_eq!(env.acknowledged_pid().as_deref(), Some("s-9"));
        assert_eq!(env.data_token().as_deref(), Some("jwt"));
        assert_eq!(env.payload_str("nope"), None);
        assert!(
            matches!(env.action(), Some(Cow::Borrowed(_))),
            "no copy without escapes"
        );
        assert_eq!(env.context().unwrap().to_json(), r#"{"room":"r"}"#);
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

    #[test]
    fn escaped_pid_and_type_are_decoded_in_place_and_payload_kept() {
        let mut buf =
            br#"{"pid":"p\u00e9\"1","type":"data_\u0072equest","payload":{"t":"a\nb"}}"#.to_vec();
        let env = parse_client(&mut buf, &limits()).unwrap();
        assert_eq!(env.pid, Some("pé\"1"));
        assert_eq!(env.kind, MessageType::DataRequest);
        assert_eq!(env.payload().to_json(), r#"{"t":"a\nb"}"#);
        assert_eq!(env.payload_str("t").as_deref(), Some("a\nb"));
        // Escaped envelope keys still count as repeats.
        let e = err(r#"{"pid":"x","p\u0069d":"y","type":"t","payload":1}"#);
        assert_eq!(e.rule, EnvelopeRule::DuplicateField);
        // An escaped pid that decodes too long, or a type that is not a string.
        let long = "\\u0041".repeat(129);
        assert_eq!(
            err(&format!(r#"{{"pid":"{long}","type":"t","payload":1}}"#)).rule,
            EnvelopeRule::PidTooLong
        );
    }

    #[test]
    fn payload_values_read_lazily_with_escapes() {
        let mut buf = br#"{"type":"generic_request","payload":{"action":"who\u0061mi","data":{"userIds":["1","\u0032",3]},"targetUserId":"\u0037"}}"#
            .to_vec();
        let env = parse_client(&mut buf, &limits()).unwrap();
        assert_eq!(env.action().as_deref(), Some("whoami"));
        let mut ids = Vec::new();
        assert!(env.user_ids(3, &mut ids).unwrap());
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(
            env.user_ids(2, &mut ids).unwrap_err().rule,
            EnvelopeRule::TooManyUserIds
        );
        assert_eq!(env.presence_target_user_id().unwrap(), Some(7));
    }

    /// Whether the text holds an integer literal (outside strings) that fits neither `i64`
    /// nor `u64` (simd-json refuses those; serde_json reads them as floats).
    fn has_out_of_range_integer(text: &[u8]) -> bool {
        let mut i = 0;
        while let Some(&b) = text.get(i) {
            match b {
                b'"' => {
                    i += 1;
                    while let Some(&c) = text.get(i) {
                        i += if c == b'\\' { 2 } else { 1 };
                        if c == b'"' {
                            break;
                        }
                    }
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while text.get(i).is_some_and(|c| {
                        matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                    }) {
                        i += 1;
                    }
                    let token = &text[start..i];
                    if !token.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) {
                        let s = std::str::from_utf8(token).unwrap_or("");
                        if s.parse::<i64>().is_err() && s.parse::<u64>().is_err() {
                            return true;
                        }
                    }
                }
                _ => i += 1,
            }
        }
        false
    }

    /// JSON equality, except the documented simd-json differences: a float may be an ulp or
    /// two away from serde_json's correctly rounded value, and `-0` is the integer 0.
    fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) if x.is_f64() && y.is_f64() => {
                        (p.to_bits() as i64 - q.to_bits() as i64).abs() <= 2
                    }
                    (Some(p), Some(q)) => p == q,
                    _ => x == y,
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
            }
            _ => a == b,
        }
    }

    /// Random JSON-ish texts (valid envelopes, then byte edits): the parser accepts exactly
    /// what serde_json accepts (within the depth limit, but for the documented simd-json
    /// differences) and reads the same fields.
    #[test]
    fn differential_against_serde_json() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use serde_json::Value;

        fn string(rng: &mut StdRng) -> String {
            const PIECES: [&str; 19] = [
                "messageId",
                "status",
                "data",
                "action",
                "\\u0061",
                "a",
                "pid",
                "type",
                "é",
                "漢",
                "😀",
                "\\n",
                "\\\"",
                "\\u00e9",
                "\\ud83d\\ude00",
                "\\ud83d",
                "\\udc00",
                "\\\\",
                " ",
            ];
            let n = rng.random_range(0..4);
            let body: String = (0..n)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect();
            format!("\"{body}\"")
        }
        fn value(rng: &mut StdRng, depth: usize) -> String {
            const NUMBERS: [&str; 12] = [
                "0",
                "-0",
                "7",
                "42",
                "1.5",
                "-2e10",
                "1E-400",
                "1e400",
                "9007199254740991",
                "123456789012345678901234567890",
                "0.1e1",
                "3",
            ];
            match rng.random_range(0..if depth > 4 { 4 } else { 6 }) {
                0 => string(rng),
                1 => NUMBERS[rng.random_range(0..NUMBERS.len())].to_owned(),
                2 => ["true", "false", "null"][rng.random_range(0..3)].to_owned(),
                3 => string(rng),
                4 => {
                    let n = rng.random_range(0..4);
                    let items: Vec<String> = (0..n).map(|_| value(rng, depth + 1)).collect();
                    format!("[{}]", items.join(","))
                }
                _ => {
                    let n = rng.random_range(0..4);
                    let items: Vec<String> = (0..n)
                        .map(|_| format!("{}:{}", string(rng), value(rng, depth + 1)))
                        .collect();
                    format!("{{{}}}", items.join(" , "))
                }
            }
        }
        let mut rng = StdRng::seed_from_u64(5);
        let mut parser = EnvelopeParser::new(EnvelopeLimits {
            max_depth: 8,
            max_pid_len: 128,
        });
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut fields = vec![
                format!(
                    r#""type":{}"#,
                    if rng.random_bool(0.9) {
                        "\"data_request\"".to_owned()
                    } else {
                        value(&mut rng, 1)
                    }
                ),
                format!(r#""payload":{}"#, value(&mut rng, 1)),
            ];
            if rng.random_bool(0.7) {
                fields.push(format!(
                    r#""pid":{}"#,
                    if rng.random_bool(0.8) {
                        string(&mut rng)
                    } else {
                        value(&mut rng, 1)
                    }
                ));
            }
            if rng.random_bool(0.5) {
                fields.push(format!(r#""targetUserId":{}"#, value(&mut rng, 1)));
            }
            if rng.random_bool(0.3) {
                fields.push(format!("{}:{}", string(&mut rng), value(&mut rng, 1)));
            }
            let mut text = format!("{{{}}}", fields.join(",")).into_bytes();
            // Byte edits on most rounds.
            for _ in 0..rng.random_range(0..3) {
                if text.is_empty() {
                    break;
                }
                let at = rng.random_range(0..text.len());
                match rng.random_range(0..3) {
                    0 => {
                        text.remove(at);
                    }
                    1 => {
                        const BYTES: &[u8] = b"{}[]\",:\\ 0e-.nu\x01";
                        text.insert(at, BYTES[rng.random_range(0..BYTES.len())]);
                    }
                    _ => text.truncate(at),
                }
            }
            let reference = serde_json::from_slice::<Value>(&text).ok();
            let depth_ok = |v: &Value| {
                fn depth(v: &Value) -> usize {
                    match v {
                        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                        _ => 0,
                    }
                }
                depth(v) <= 8
            };
            let shown = String::from_utf8_lossy(&text).into_owned();
            let mut buf = text.clone();
            match (parser.parse(&mut buf), reference) {
                (Ok(env), Some(reference)) => {
                    accepted += 1;
                    let ours = serde_json::from_str::<Value>(&env.payload().to_json())
                        .unwrap_or_else(|e| panic!("{round}: {e}: {shown}"));
                    assert!(
                        same_json(&ours, &reference["payload"]),
                        "{round}: {ours} vs {}: {shown}",
                        reference["payload"]
                    );
                    assert_eq!(
                        env.kind.as_str(),
                        reference["type"].as_str().unwrap_or("?"),
                        "{shown}"
                    );
                    let pid = reference
                        .get("pid")
                        .and_then(Value::as_str)
                        .filter(|p| !p.is_empty());
                    assert_eq!(env.pid, pid, "{shown}");
                    // The spans recorded while parsing agree with a walk of the payload.
                    for key in KNOWN_KEYS {
                        let walked = env.payload().get(key);
                        assert_eq!(env.payload_field(key), walked, "{key}: {shown}");
                    }
                    let walked = env.payload().get("status").and_then(|v| v.as_str());
                    assert_eq!(env.status(), walked, "{shown}");
                    assert_eq!(env.data(), env.payload().get("data"), "{shown}");
                    // The data_event carries the payload (minus server-set keys) as valid JSON.
                    let mut out = Vec::new();
                    let written =
                        super::super::write_data_event(&mut out, 1, &env.payload(), "n", 0, "m");
                    match reference.get("payload") {
                        Some(Value::Object(fields)) => {
                            assert!(written.is_ok(), "{shown}");
                            let event: Value = serde_json::from_slice(&out)
                                .unwrap_or_else(|e| panic!("{e}: {shown}"));
                            for (k, v) in fields {
                                if !["senderName", "timestamp", "messageId"].contains(&k.as_str()) {
                                    assert!(same_json(&event["payload"][k], v), "{k}: {shown}");
                                }
                            }
                            assert_eq!(event["payload"]["senderName"], "n", "{shown}");
                        }
                        _ => assert!(written.is_err(), "{shown}"),
                    }
                }
                (Ok(_), None) => panic!("{round}: accepted what serde_json refuses: {shown}"),
                (Err(e), Some(reference)) => assert!(
                    !matches!(e.rule, EnvelopeRule::MalformedJson | EnvelopeRule::TooDeep)
                        || (e.rule == EnvelopeRule::TooDeep && !depth_ok(&reference))
                        // Documented simd-json difference: integer literals outside
                        // i64/u64 are refused (serde_json reads them as floats).
                        || (e.rule == EnvelopeRule::MalformedJson
                            && has_out_of_range_integer(&text)),
                    "{round}: refused valid JSON with {e:?}: {shown}"
                ),
                (Err(e), None) => assert!(
                    matches!(e.rule, EnvelopeRule::MalformedJson | EnvelopeRule::TooDeep),
                    "{round}: {e:?} for invalid JSON: {shown}"
                ),
            };
        }
        assert!(accepted > 2_000, "only {accepted} accepted");
    }
}
