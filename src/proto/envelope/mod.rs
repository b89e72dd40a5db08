//! The JSON envelope codec (gateway.md §4–5): client envelopes parsed with `simd-json`
//! (zero-copy, in place) into its flat tape, without a value tree; server envelopes written
//! by hand into caller-owned `Vec<u8>`s.
//!
//! ```text
//!  text frame payload (&mut [u8])
//!        │  simd_json::fill_tape (Buffers reused, depth cap built in): escaped strings
//!        │  decoded in place, numbers parsed; one walk over the tape finds type / pid /
//!        │  targetUserId / payload, repeated envelope keys, the payload members read later
//!        ▼
//!  ClientEnvelope<'frame>  (owns the tape; payload() = RawJson: a view of tape nodes)
//!        │  gateway rules read payload fields through the helpers
//!        ▼
//!  write::*  ──► `{"type":"data_event",...}` etc. appended to the connection's out
//!               buffer; the payload's members are written from their tape nodes
//!  (refused text only: the byte pre-scan of a copy finds a pid and "too deep" for the error)
//! ```
//!
//! Sans-IO: nothing here reads a clock; callers pass `timestamp_ms`.
//!
//! Decisions the integrator must know (each is tested):
//! - `targetUserId` (top level, in a presence payload, in `targetUsers`/`userIds`) is a user
//!   id: a JSON integer 1..=2^53−1, **or** a decimal string of the same range (the JWT `sub`
//!   rule of §3; JavaScript clients often hold ids as strings). Floats (even `5.0`),
//!   negatives, `0`, `null`, signs, leading zeros and exponents are refused with 422.
//!   `null` is refused rather than read as "absent" because an absent `targetUserId` turns a
//!   private `data_request` into a broadcast.
//! - `pid: ""` and `pid: null` mean "no pid" (the Go original treated `""` that way); the
//!   only effect of a missing pid is that no ack is sent.
//! - A repeated top-level envelope field (`type`, `pid`, `targetUserId`, `payload`) is
//!   refused (400): readers that keep the first and readers that keep the last would
//!   otherwise disagree about what was sent. Repeats inside `payload` are passed through.
//! - `originalPid` on errors: read from the validated envelope when the JSON is valid; when
//!   it is not, a byte pre-scan of the refused text (as sent: simd-json may already have
//!   decoded strings in place, so the parser keeps a copy) finds the top-level `"pid"`
//!   string (even after the damage) and decodes it. A pid longer than 128 bytes is never
//!   echoed.
//! - Nesting deeper than `EnvelopeLimits::max_depth` (the top-level object counts as 1) is
//!   refused with 413, also when the text is malformed elsewhere. No stage recurses.
//! - Acceptance is simd-json's (RFC 8259, UTF-8 validated; numbers beyond f64 refused).
//!   Documented differences from serde_json (allowed by the `envelope` fuzz target and the
//!   differential test in `parse.rs`): integer literals outside i64/u64 are refused (400;
//!   serde_json reads them as floats), a float literal with more than 19 significant digits
//!   may come out an ulp away, and `-0` is the integer 0. Nothing panics (tested; fuzzed).
//! - The payload is re-encoded from the tape into `data_event`: the same JSON value, with
//!   the server's escapes and number spelling (floats in shortest round-trip form).
//! - Cost: see BENCHMARKS.md (run 2); the simd-json value tree (`BorrowedValue`) this avoids
//!   was half of a P2P delivery's instructions.

mod parse;
pub(crate) use parse::parse_decimal_id;
mod tape;
mod time;
mod write;

pub use parse::{
    parse_client, parse_user_id, prescan_for_bench, ClientEnvelope, EnvelopeParser, MessageType,
};
pub use tape::{Elements, Members, RawJson};
pub use time::format_rfc3339_millis;
pub use write::{
    to_json_bytes, write_data_event, write_error_notification, write_generic_request,
    write_generic_response, write_generic_response_raw, write_get_presence_response,
    write_json_str, write_ping_response, write_presence_event, write_refresh_response,
    write_server_ack, write_whoami_response, IdGenerator, JsonText, MessageId, NotAnObject,
    PresenceEntry, PresenceEvent,
};

/// Per-connection-independent parsing limits, fixed at startup from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// Deepest allowed nesting of `[`/`{`, the envelope object itself counting as 1.
    pub max_depth: usize,
    /// Longest accepted `pid`, in bytes (spec §4: 128).
    pub max_pid_len: usize,
}

impl Default for EnvelopeLimits {
    /// 64 levels: far beyond any real chat/presence payload, far below stack trouble.
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_pid_len: MAX_PID_LEN,
        }
    }
}

/// Spec §4: "`pid` is at most 128 bytes".
pub const MAX_PID_LEN: usize = 128;

/// The largest user id a JavaScript client can hold exactly (2^53 − 1).
pub const MAX_USER_ID: u64 = (1 << 53) - 1;

/// HTTP-like error codes carried in `error_notification` (spec §4).
pub mod code {
    /// Malformed JSON or a missing required field.
    pub const MALFORMED: u16 = 400;
    /// Nesting too deep, or a capped list too long.
    pub const TOO_LARGE: u16 = 413;
    /// A field is present but its value is not acceptable.
    pub const INVALID: u16 = 422;
}

/// Every rule a client envelope can break; each maps to one wire code and one fixed message
/// (the variant name doubles as a metric label via [`EnvelopeRule::label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeRule {
    /// Not JSON to simd-json (syntax, number beyond f64 or an integer beyond i64/u64, bad
    /// escape, invalid UTF-8, …).
    #[error("malformed JSON")]
    MalformedJson,
    /// Nesting deeper than `max_depth` (found by the pre-scan of refused text).
    #[error("JSON nested too deeply")]
    TooDeep,
    /// The top-level value is an array, string, number, …
    #[error("message must be a JSON object")]
    NotAnObject,
    /// `type`, `pid`, `targetUserId` or `payload` appears twice at the top level.
    #[error("duplicate envelope field")]
    DuplicateField,
    /// No `type` field.
    #[error("missing field: type")]
    MissingType,
    /// `type` is not a string.
    #[error("type must be a string")]
    TypeNotString,
    /// No `payload` field.
    #[error("missing field: payload")]
    MissingPayload,
    /// `pid` is neither a string nor null.
    #[error("pid must be a string")]
    PidNotString,
    /// `pid` is longer than `max_pid_len` bytes.
    #[error("pid too long")]
    PidTooLong,
    /// `targetUserId` (top level or presence payload) is not a user id.
    #[error("targetUserId must be an integer between 1 and 2^53-1")]
    InvalidTargetUserId,
    /// `payload.data.targetUsers` is not an array of user ids.
    #[error("payload.data.targetUsers must be an array of user ids")]
    InvalidTargetUsers,
    /// `payload.data.userIds` is not an array of user ids.
    #[error("payload.data.userIds must be an array of user ids")]
    InvalidUserIds,
    /// A user-id list is longer than the configured cap.
    #[error("too many user ids")]
    TooManyUserIds,
}

impl EnvelopeRule {
    /// The wire code sent in `error_notification`.
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            Self::MalformedJson
            | Self::NotAnObject
            | Self::DuplicateField
            | Self::MissingType
            | Self::TypeNotString
            | Self::MissingPayload => code::MALFORMED,
            Self::TooDeep | Self::TooManyUserIds => code::TOO_LARGE,
            Self::PidNotString
            | Self::PidTooLong
            | Self::InvalidTargetUserId
            | Self::InvalidTargetUsers
            | Self::InvalidUserIds => code::INVALID,
        }
    }

    /// A stable snake_case name for metrics labels.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::TooDeep => "too_deep",
            Self::NotAnObject => "not_an_object",
            Self::DuplicateField => "duplicate_field",
            Self::MissingType => "missing_type",
            Self::TypeNotString => "type_not_string",
            Self::MissingPayload => "missing_payload",
            Self::PidNotString => "pid_not_string",
            Self::PidTooLong => "pid_too_long",
            Self::InvalidTargetUserId => "invalid_target_user_id",
            Self::InvalidTargetUsers => "invalid_target_users",
            Self::InvalidUserIds => "invalid_user_ids",
            Self::TooManyUserIds => "too_many_user_ids",
        }
    }
}

/// A refused client envelope: everything needed to answer with `error_notification`
/// (`write_error_notification(out, err.original_pid.as_deref(), err.code, err.message)`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule} ({code})")]
pub struct EnvelopeError {
    /// The broken rule (metric label, and the source of `code`/`message`).
    pub rule: EnvelopeRule,
    /// HTTP-like wire code (400, 413, 422).
    pub code: u16,
    /// Human-readable, fixed text (never echoes peer input).
    pub message: &'static str,
    /// The request's `pid` whenever it could be read, for `error.originalPid`.
    pub original_pid: Option<String>,
}

impl EnvelopeError {
    pub(crate) fn new(rule: EnvelopeRule, original_pid: Option<&str>) -> Self {
        Self {
            rule,
            code: rule.code(),
            message: rule_message(rule),
            original_pid: original_pid.map(str::to_owned),
        }
    }
}

/// The same text as the `Display` of each rule, as a `&'static str` for the wire.
const fn rule_message(rule: EnvelopeRule) -> &'static str {
    match rule {
        EnvelopeRule::MalformedJson => "malformed JSON",
        EnvelopeRule::TooDeep => "JSON nested too deeply",
        EnvelopeRule::NotAnObject => "message must be a JSON object",
        EnvelopeRule::DuplicateField => "duplicate envelope field",
        EnvelopeRule::MissingType => "missing field: type",
        EnvelopeRule::TypeNotString => "type must be a string",
        EnvelopeRule::MissingPayload => "missing field: payload",
        EnvelopeRule::PidNotString => "pid must be a string",
        EnvelopeRule::PidTooLong => "pid too long",
        EnvelopeRule::InvalidTargetUserId => "targetUserId must be an integer between 1 and 2^53-1",
        EnvelopeRule::InvalidTargetUsers => "payload.data.targetUsers must be an array of user ids",
        EnvelopeRule::InvalidUserIds => "payload.data.userIds must be an array of user ids",
        EnvelopeRule::TooManyUserIds => "too many user ids",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_message_matches_display() {
        use EnvelopeRule::*;
        for rule in [
            MalformedJson,
            TooDeep,
            NotAnObject,
            DuplicateField,
            MissingType,
            TypeNotString,
            MissingPayload,
            PidNotString,
            PidTooLong,
            InvalidTargetUserId,
            InvalidTargetUsers,
            InvalidUserIds,
            TooManyUserIds,
        ] {
            assert_eq!(rule.to_string(), rule_message(rule));
            assert!(matches!(rule.code(), 400 | 413 | 422));
            assert!(!rule.label().is_empty());
        }
    }
}
