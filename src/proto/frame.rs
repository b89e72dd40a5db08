//! RFC 6455 frame headers: parsing client frames, encoding server frames.
//!
//! The layout (RFC 6455 §5.2):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! | Masking-key (continued)       |          Payload Data         |
//! +-------------------------------- - - - - - - - - - - - - - - - +
//! :                     Payload Data continued ...                :
//! + - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - +
//! |                     Payload Data continued ...                |
//! +---------------------------------------------------------------+
//! ```
//!
//! Lengths are big-endian: 0-125 inline, 126 → the next 2 bytes, 127 → the next 8 bytes
//! (most significant bit must be 0). A header is therefore 2-14 bytes: 2 + 8 + 4 (mask) for a
//! client frame, at most 10 for a server frame (servers never mask).

use crate::proto::close::CloseCode;
use crate::proto::codec::ProtocolError;

/// Longest possible frame header: 2 fixed + 8 extended length + 4 masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Longest header a server writes (no masking key).
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes defined by RFC 6455 §5.2; the others (3-7, 0xB-0xF) are reserved and
/// rejected because no extension is negotiated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented data message.
    Continuation,
    /// 0x1: starts a UTF-8 text message.
    Text,
    /// 0x2: starts a binary message.
    Binary,
    /// 0x8: closing handshake.
    Close,
    /// 0x9: keepalive request; answered with a Pong carrying the same payload.
    Ping,
    /// 0xA: keepalive answer (or unsolicited heartbeat).
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit opcode field; `None` for reserved values.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames (Close, Ping, Pong) are short, never fragmented, and may be
    /// interleaved with the fragments of a data message.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// Frame type.
    pub opcode: OpCode,
    /// Masking key; always present on valid client frames.
    pub mask: Option<[u8; 4]>,
    /// Declared payload length. Kept as `u64` (up to 2^63 - 1): the caller must check it
    /// against its limits before converting or adding (gorilla CVE-2020-27813).
    pub payload_len: u64,
    /// Bytes the header occupies (2-14); the payload starts there.
    pub header_len: usize,
}

/// Parses a frame header from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of the header (nothing is consumed). Rules
/// are checked as early as the bytes allow, so garbage is refused after one or two bytes.
/// A length encoded in more bytes than needed is accepted (RFC 6455 says "minimal number of
/// bytes *must* be used" but Autobahn and common peers do not require rejecting it).
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits(first & 0x70));
    }
    let opcode_bits = first & 0x0F;
    let opcode =
        OpCode::from_bits(opcode_bits).ok_or(ProtocolError::ReservedOpCode(opcode_bits))?;
    let fin = first & 0x80 != 0;
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControlFrame);
    }
    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    let masked = second & 0x80 != 0;
    let short_len = second & 0x7F;
    let (payload_len, len_end) = match short_len {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthMsbSet);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(ProtocolError::ControlFrameTooLong(payload_len));
    }
    let (mask, header_len) = if masked {
        match buf.get(len_end..len_end + 4) {
            Some(b) => (Some([b[0], b[1], b[2], b[3]]), len_end + 4),
            None => return Ok(None),
        }
    } else {
        (None, len_end)
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Writes an unmasked (server) frame header into `out` and returns its length (2, 4 or 10),
/// always using the shortest length encoding.
pub fn encode_header(fin: bool, opcode: OpCode, payload_len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | opcode.bits();
    if payload_len < 126 {
        // Lossless: checked < 126 above.
        out[1] = payload_len as u8;
        2
    } else if let Ok(len16) = u16::try_from(payload_len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len16.to_be_bytes());
        4
    } else {
        out[1] = 127;
        // usize is at most 64 bits on every supported target.
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Appends a complete, unfragmented, unmasked frame (header + payload) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut header = [0u8; MAX_SERVER_HEADER_LEN];
    let header_len = encode_header(true, opcode, payload.len(), &mut header);
    out.reserve(header_len + payload.len());
    out.extend_from_slice(&header[..header_len]);
    out.extend_from_slice(payload);
}

/// Appends a Close frame carrying `code` and `reason` to `out`.
///
/// The reason is cut at a character boundary so the payload fits the 125-byte control-frame
/// limit (2 bytes code + at most 123 bytes reason). A code that may not appear on the wire
/// (1005, 1006, 1015, ...; see [`CloseCode::is_allowed_on_wire`]) produces an empty Close
/// payload instead, which the peer reads as "no status".
pub fn encode_close(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    if !code.is_allowed_on_wire() {
        encode_frame(out, OpCode::Close, &[]);
        return;
    }
    let reason = truncate_at_char_boundary(reason, MAX_CONTROL_PAYLOAD - 2);
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.0.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    encode_frame(out, OpCode::Close, &payload[..2 + reason.len()]);
}

fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, len_bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![first];
        v.extend_from_slice(len_bytes);
        v[1] |= 0x80;
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn parses_all_length_forms() {
        let h = parse_header(&masked(0x81, &[5])).unwrap().unwrap();
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                opcode: OpCode::Text,
                mask: Some([1, 2, 3, 4]),
                payload_len: 5,
                header_len: 6
            }
        );
        let h = parse_header(&masked(0x02, &[126, 0x01, 0x00]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.payload_len, h.header_len),
            (false, OpCode::Binary, 256, 8)
        );
        let h = parse_header(&masked(0x82, &[127, 0, 0, 0, 0, 0, 1, 0, 0]))
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, h.header_len), (65_536, 14));
        let h = parse_header(&[0x89, 0x00]).unwrap().unwrap();
        assert_eq!((h.opcode, h.mask, h.header_len), (OpCode::Ping, None, 2));
    }

    #[test]
    fn non_minimal_length_is_accepted() {
        let h = parse_header(&masked(0x81, &[126, 0, 5])).unwrap().unwrap();
        assert_eq!(h.payload_len, 5);
        let h = parse_header(&masked(0x81, &[127, 0, 0, 0, 0, 0, 0, 0, 5]))
            .unwrap()
            .unwrap();
        assert_eq!(h.payload_len, 5);
    }

    #[test]
    fn every_prefix_needs_more() {
        for full in [
            masked(0x81, &[5]),
            masked(0x82, &[126, 1, 0]),
            masked(0x82, &[127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            for n in 0..full.len() {
                assert_eq!(parse_header(&full[..n]), Ok(None), "{full:?} prefix {n}");
            }
            assert!(parse_header(&full).unwrap().is_some());
        }
    }

    #[test]
    fn rejects_rsv_bits() {
        for rsv in [0x10, 0x20, 0x40, 0x70] {
            assert_eq!(
                parse_header(&[0x81 | rsv]),
                Err(ProtocolError::ReservedBits(rsv))
            );
        }
    }

    #[test]
    fn rejects_reserved_opcodes() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                parse_header(&[0x80 | op, 0x80]),
                Err(ProtocolError::ReservedOpCode(op))
            );
        }
    }

    #[test]
    fn rejects_bad_control_frames() {
        assert_eq!(
            parse_header(&[0x09]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            parse_header(&masked(0x89, &[126, 0, 126])),
            Err(ProtocolError::ControlFrameTooLong(126))
        );
        assert!(parse_header(&masked(0x88, &[125])).unwrap().is_some());
    }

    #[test]
    fn rejects_length_with_msb_set() {
        let buf = masked(0x82, &[127, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_header(&buf), Err(ProtocolError::LengthMsbSet));
        // 2^63 - 1 parses; the decoder's limits reject it.
        let buf = masked(0x82, &[127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            parse_header(&buf).unwrap().unwrap().payload_len,
            (1 << 63) - 1
        );
    }

    #[test]
    fn encodes_round_trip() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
            let mut out = [0u8; 10];
            let n = encode_header(true, OpCode::Binary, len, &mut out);
            assert_eq!(
                n,
                if len < 126 {
                    2
                } else if len <= 65_535 {
                    4
                } else {
                    10
                }
            );
            let h = parse_header(&out[..n]).unwrap().unwrap();
            assert_eq!(
                (h.fin, h.opcode, h.mask, h.payload_len, h.header_len),
                (true, OpCode::Binary, None, len as u64, n)
            );
        }
        let mut out = [0u8; 10];
        let n = encode_header(false, OpCode::Continuation, 3, &mut out);
        assert_eq!(&out[..n], &[0x00, 3]);
    }

    #[test]
    fn encode_frame_appends() {
        let mut out = vec![0xAA];
        encode_frame(&mut out, OpCode::Text, b"hi");
        assert_eq!(out, [0xAA, 0x81, 2, b'h', b'i']);
    }

    #[test]
    fn encode_close_truncates_at_char_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, CloseCode::NORMAL, "bye");
        assert_eq!(out, [0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);

        let long = "é".repeat(100); // 200 bytes, 2 per char
        let mut out = Vec::new();
        encode_close(&mut out, CloseCode::REPLACED, &long);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert_eq!(out.len() - 2, 2 + 122); // 123 would split a char
        assert!(std::str::from_utf8(&out[4..]).is_ok());

        let mut out = Vec::new();
        encode_close(&mut out, CloseCode::NO_STATUS, "ignored");
        assert_eq!(out, [0x88, 0]);
    }
}
