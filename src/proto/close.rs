//! WebSocket close codes (RFC 6455 §7.4) as an open newtype.
//!
//! The code is kept as a raw `u16` rather than a closed enum because peers may send any value
//! and the application may define its own (4000-4999); named constants cover the ones customws
//! sends or must recognise.

use std::fmt;

/// A close status code as it appears on the wire (big-endian `u16` at the start of a Close
/// payload).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, browser navigating away).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept (customws refuses binary messages).
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present. Reported locally, never sent.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection dropped without a Close frame. Reported locally, never sent.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a message's payload was inconsistent with its type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy was violated (persistent garbage, abuse).
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message was too big (size or fragment-count limit).
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1013: try again later (server overloaded or draining).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 4000 (application): replaced by a newer connection of the same user.
    pub const REPLACED: CloseCode = CloseCode(4000);
    /// 4001 (application): the authentication token expired.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4001);

    /// Whether this code may appear in a Close frame on the wire.
    ///
    /// Valid: 1000-1003, 1007-1014 (registered), 3000-4999 (libraries and applications).
    /// Invalid: below 1000, 1004 (reserved), 1005/1006/1015 (local-only pseudo codes),
    /// 1016-2999 (reserved for future RFCs) and 5000 and above. This is what Autobahn cases
    /// 7.7.x (must echo) and 7.9.x (must fail with 1002) expect.
    pub fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_matches_autobahn() {
        // 7.7.x: these must be accepted.
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(code).is_allowed_on_wire(), "{code}");
        }
        // 7.9.x: these must be refused.
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_allowed_on_wire(), "{code}");
        }
    }

    #[test]
    fn every_code_classified() {
        for code in 0..=u16::MAX {
            let expected = (1000..=1003).contains(&code)
                || (1007..=1014).contains(&code)
                || (3000..5000).contains(&code);
            assert_eq!(CloseCode(code).is_allowed_on_wire(), expected, "{code}");
        }
    }

    #[test]
    fn named_constants_sent_by_the_server_are_allowed() {
        for code in [
            CloseCode::NORMAL,
            CloseCode::GOING_AWAY,
            CloseCode::PROTOCOL_ERROR,
            CloseCode::UNSUPPORTED_DATA,
            CloseCode::INVALID_PAYLOAD,
            CloseCode::POLICY_VIOLATION,
            CloseCode::MESSAGE_TOO_BIG,
            CloseCode::MANDATORY_EXTENSION,
            CloseCode::INTERNAL_ERROR,
            CloseCode::TRY_AGAIN_LATER,
            CloseCode::REPLACED,
            CloseCode::TOKEN_EXPIRED,
        ] {
            assert!(code.is_allowed_on_wire(), "{code}");
        }
        assert!(!CloseCode::NO_STATUS.is_allowed_on_wire());
        assert!(!CloseCode::ABNORMAL.is_allowed_on_wire());
    }
}
