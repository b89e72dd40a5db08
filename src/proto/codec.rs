//! The per-connection WebSocket message decoder (server side, RFC 6455 without extensions).
//!
//! Sans-IO: the caller owns the read buffer and loops
//!
//! ```text
//! loop {
//!     let d = decoder.decode(&mut read_buf[start..], &limits)?;   // Err → close with e.close_code()
//!     if let Some(msg) = d.message { handle(msg) }
//!     start += d.consumed;
//!     if d.consumed == 0 && d.message.is_none() { break }          // need more bytes
//! }
//! // keep read_buf[start..] (< 14 + 125 bytes) for the next read
//! ```
//!
//! Three paths, chosen per frame:
//!
//! * **Zero copy.** A final, unfragmented data frame wholly inside `buf` is unmasked in place
//!   and returned as a slice of `buf`.
//! * **Streaming / assembly.** A data frame that is not wholly present, or is one fragment of a
//!   longer message, is consumed as far as it goes: payload bytes are unmasked, fed to the
//!   incremental UTF-8 validator (text) and appended to the message's assembly buffer. Each
//!   byte is touched once, so feeding 1 MiB in 64-byte reads stays linear, and the caller never
//!   has to keep a partial data frame around. This state is boxed and exists only while such a
//!   message is in progress, so an idle decoder is small and holds no heap memory.
//! * **Control frames** (≤ 125 bytes) are decoded only once wholly present and may arrive
//!   between the fragments of a data message.
//!
//! Limits are checked on the header, before any allocation or length arithmetic: the
//! assembled message size (not the frame size, fastwebsockets #100) and the number of
//! fragments (the ws many-tiny-fragments attack). Lengths stay `u64` until they are known to be
//! below `max_message_size` (gorilla CVE-2020-27813).
//!
//! After a decode error the decoder's state is unspecified: send a Close with
//! [`ProtocolError::close_code`] and stop reading. After a Close frame was returned, every
//! further call consumes (ignores) all input.

use thiserror::Error;

use crate::proto::close::CloseCode;
use crate::proto::frame::{parse_header, OpCode};
use crate::proto::mask::apply_mask;
use crate::proto::utf8::{is_valid_utf8, Utf8Validator};

/// Upper bound on the assembly buffer reserved up front for one frame: a peer declaring a
/// large length gets memory as its bytes actually arrive, not on its word.
const MAX_UPFRONT_RESERVE: usize = 64 * 1024;

/// A rule of RFC 6455 (or a local limit) the peer broke. Every variant is caused by the peer.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// RSV1-3 set although no extension was negotiated.
    #[error("reserved bits {0:#04x} set without a negotiated extension")]
    ReservedBits(u8),
    /// Opcode 3-7 or 0xB-0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpCode(u8),
    /// Close, Ping or Pong without FIN.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// Close, Ping or Pong with more than 125 payload bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(u64),
    /// A 64-bit payload length with the most significant bit set.
    #[error("64-bit payload length has its most significant bit set")]
    LengthMsbSet,
    /// A client frame without a masking key.
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A continuation frame with no fragmented message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new Text or Binary frame while a fragmented message is still in progress.
    #[error("new data message started before the fragmented one finished")]
    InterleavedDataMessage,
    /// The assembled message would exceed `max_message_size`.
    #[error("message exceeds {limit} bytes")]
    MessageTooBig {
        /// The configured limit.
        limit: usize,
    },
    /// The message has more than `max_fragments` frames.
    #[error("message exceeds {limit} fragments")]
    TooManyFragments {
        /// The configured limit.
        limit: usize,
    },
    /// A text message is not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A Close payload of exactly one byte (a code needs two).
    #[error("close payload of one byte")]
    CloseFrameTooShort,
    /// A Close code that may not be sent on the wire.
    #[error("close code {0} is not allowed on the wire")]
    InvalidCloseCode(u16),
    /// A Close reason that is not valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
}

impl ProtocolError {
    /// The code to close the connection with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCloseReason => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::MessageTooBig { .. } | ProtocolError::TooManyFragments { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            ProtocolError::ReservedBits(_)
            | ProtocolError::ReservedOpCode(_)
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::ControlFrameTooLong(_)
            | ProtocolError::LengthMsbSet
            | ProtocolError::UnmaskedFrame
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::InterleavedDataMessage
            | ProtocolError::CloseFrameTooShort
            | ProtocolError::InvalidCloseCode(_) => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// Per-message limits, passed on every call so they can come from shared configuration
/// instead of being copied into every connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Largest assembled message payload in bytes (all fragments together).
    pub max_message_size: usize,
    /// Largest number of frames in one message, counting the first; must be at least 1.
    pub max_fragments: usize,
}

/// A decoded message. Data payloads are mutable so the caller can parse them in place
/// (simd-json needs `&mut [u8]`).
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message, validated UTF-8.
    Text(&'a mut [u8]),
    /// A complete binary message.
    Binary(&'a mut [u8]),
    /// A Ping; answer with a Pong carrying the same payload.
    Ping(&'a [u8]),
    /// A Pong.
    Pong(&'a [u8]),
    /// A Close: `None` for an empty payload, else a wire-valid code and a UTF-8 reason.
    Close(Option<(CloseCode, &'a str)>),
}

/// The result of one [`Decoder::decode`] call.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Bytes of `buf` used up; the caller drops them before the next call.
    pub consumed: usize,
    /// A complete message, if one finished.
    pub message: Option<Message<'a>>,
}

impl Decoded<'_> {
    /// Nothing consumed, no message: more bytes are needed.
    pub const fn need_more() -> Self {
        Decoded {
            consumed: 0,
            message: None,
        }
    }

    /// Whether the caller should stop looping and read more.
    pub fn is_need_more(&self) -> bool {
        self.consumed == 0 && self.message.is_none()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// Per-connection decoder state: 16 bytes on 64-bit targets, and no heap memory between
/// messages.
///
/// A decoder lives in every connection slot, so its idle size counts towards the memory per
/// idle connection. Almost every message is one whole frame inside one read and is decoded
/// in place without keeping anything, so everything needed to resume a message that spans
/// reads or frames lives in a [`PartialMessage`], boxed only while such a message is received.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The data message being received in pieces, if any. Allocated when a data frame is not
    /// wholly in the buffer or is not the final one; dropped at the start of the call after
    /// the one that returned the message (whose result borrows the assembly buffer).
    partial: Option<Box<PartialMessage>>,
    /// A Close frame was returned; the rest of the input is ignored.
    closed: bool,
}

/// A data message received in pieces: a frame streamed across reads, or a fragmented message.
#[derive(Debug)]
struct PartialMessage {
    /// Payload assembled so far.
    assembly: Vec<u8>,
    /// Payload bytes of the current frame not yet seen.
    frame_remaining: u64,
    /// Frames seen so far, counting the first.
    fragments: u32,
    /// Masking key of the current frame.
    mask: [u8; 4],
    /// UTF-8 state across the chunks of a text message.
    utf8: Utf8Validator,
    /// Text or Binary, as the first frame said.
    kind: DataKind,
    /// Position (mod 4) inside the current frame's payload, for resuming the mask.
    mask_phase: u8,
    /// Whether the current frame is the last of its message.
    frame_fin: bool,
    /// The last byte arrived and the message was returned; nothing is in progress any more,
    /// and the box is dropped at the start of the next call.
    complete: bool,
}

impl Decoder {
    /// A decoder at the start of a connection.
    pub const fn new() -> Self {
        Decoder {
            partial: None,
            closed: false,
        }
    }

    /// Whether a Close frame has been decoded.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a data message is partially received (fragments or a streamed frame).
    pub fn has_partial_message(&self) -> bool {
        self.partial.as_ref().is_some_and(|p| !p.complete)
    }

    /// Heap bytes currently held (the boxed partial message and its assembly buffer's
    /// capacity), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| {
            std::mem::size_of::<PartialMessage>() + p.assembly.capacity()
        })
    }

    /// Frees the state of a message already returned. `decode` does this at its next call;
    /// a caller that has run out of input calls it so that a connection whose last read
    /// ended a large message does not keep the assembly buffer while it idles.
    pub fn release_returned(&mut self) {
        if self.partial.as_ref().is_some_and(|p| p.complete) {
            self.partial = None;
        }
    }

    /// Decodes at most one frame (or one piece of a streamed frame) from the start of `buf`.
    ///
    /// See the module docs for the calling loop. `buf` is modified: payload bytes are
    /// unmasked in place.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        limits: &DecoderLimits,
    ) -> Result<Decoded<'a>, ProtocolError> {
        if self.closed {
            return Ok(Decoded {
                consumed: buf.len(),
                message: None,
            });
        }
        // The previous call may have returned an assembled message; give the memory back.
        self.release_returned();
        if let Some(partial) = self
            .partial
            .as_deref_mut()
            .filter(|p| p.frame_remaining > 0)
        {
            let take =
                usize::try_from(partial.frame_remaining).map_or(buf.len(), |r| r.min(buf.len()));
            if take == 0 {
                return Ok(Decoded::need_more());
            }
            let (chunk, _) = buf.split_at_mut(take);
            let complete = partial.stream_payload(chunk)?;
            return Ok(self.streamed(take, complete));
        }

        let Some(header) = parse_header(buf)? else {
            return Ok(Decoded::need_more());
        };
        let mask = header.mask.ok_or(ProtocolError::UnmaskedFrame)?;
        let header_len = header.header_len;

        if header.opcode.is_control() {
            // parse_header guarantees payload_len <= 125.
            let end = header_len + header.payload_len as usize;
            let Some(payload) = buf.get_mut(header_len..end) else {
                return Ok(Decoded::need_more());
            };
            apply_mask(payload, mask, 0);
            let payload: &'a [u8] = payload;
            let message = match header.opcode {
                OpCode::Ping => Message::Ping(payload),
                OpCode::Pong => Message::Pong(payload),
                _ => {
                    let close = parse_close(payload)?;
                    self.closed = true;
                    Message::Close(close)
                }
            };
            return Ok(Decoded {
                consumed: end,
                message: Some(message),
            });
        }

        let in_progress = self.partial.as_deref();
        let kind = match (header.opcode, in_progress) {
            (OpCode::Continuation, Some(partial)) => partial.kind,
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (_, Some(_)) => return Err(ProtocolError::InterleavedDataMessage),
            (OpCode::Text, None) => DataKind::Text,
            (_, None) => DataKind::Binary,
        };
        // Limits first, in u64, before anything depends on the declared length.
        let limit = limits.max_message_size;
        let assembled = in_progress.map_or(0, |p| p.assembly.len());
        let room = (limit as u64).saturating_sub(assembled as u64);
        if header.payload_len > room {
            return Err(ProtocolError::MessageTooBig { limit });
        }
        // Lossless: payload_len <= max_message_size, a usize.
        let payload_len = header.payload_len as usize;
        let fragments = in_progress.map_or(0, |p| p.fragments).saturating_add(1);
        if usize::try_from(fragments).map_or(true, |f| f > limits.max_fragments) {
            return Err(ProtocolError::TooManyFragments {
                limit: limits.max_fragments,
            });
        }

        let whole_frame_end = header_len
            .checked_add(payload_len)
            .filter(|&end| end <= buf.len());
        if header.fin && in_progress.is_none() {
            if let Some(end) = whole_frame_end {
                // In bounds: header_len <= end <= buf.len().
                let payload = &mut buf[header_len..end];
                // Zero copy: a whole message in the caller's buffer.
                apply_mask(payload, mask, 0);
                let message = match kind {
                    DataKind::Text => {
                        if !is_valid_utf8(payload) {
                            return Err(ProtocolError::InvalidUtf8);
                        }
                        Message::Text(payload)
                    }
                    DataKind::Binary => Message::Binary(payload),
                };
                return Ok(Decoded {
                    consumed: end,
                    message: Some(message),
                });
            }
        }

        // Streaming / assembly path.
        let partial = self
            .partial
            .get_or_insert_with(|| Box::new(PartialMessage::new(kind)));
        partial.fragments = fragments;
        partial.frame_remaining = header.payload_len;
        partial.mask = mask;
        partial.mask_phase = 0;
        partial.frame_fin = header.fin;
        partial
            .assembly
            .reserve(payload_len.min(MAX_UPFRONT_RESERVE));
        let available = (buf.len() - header_len).min(payload_len);
        let chunk = buf
            .get_mut(header_len..header_len + available)
            .unwrap_or_default();
        let complete = partial.stream_payload(chunk)?;
        Ok(self.streamed(header_len + available, complete))
    }

    /// The result of a call that streamed a piece of a data frame: the assembled message if
    /// that piece completed it.
    fn streamed(&mut self, consumed: usize, complete: bool) -> Decoded<'_> {
        let message = if complete {
            self.partial.as_deref_mut().map(PartialMessage::message)
        } else {
            None
        };
        Decoded { consumed, message }
    }
}

impl PartialMessage {
    /// A message of `kind` whose first frame header was just read.
    fn new(kind: DataKind) -> Self {
        PartialMessage {
            assembly: Vec::new(),
            frame_remaining: 0,
            fragments: 0,
            mask: [0; 4],
            utf8: Utf8Validator::new(),
            kind,
            mask_phase: 0,
            frame_fin: false,
            complete: false,
        }
    }

    /// Unmasks, validates and appends a piece of the current frame's payload. Returns whether
    /// it was the message's last byte (the message is then marked complete).
    fn stream_payload(&mut self, chunk: &mut [u8]) -> Result<bool, ProtocolError> {
        apply_mask(chunk, self.mask, usize::from(self.mask_phase));
        // Lossless: the value is < 4.
        self.mask_phase = ((usize::from(self.mask_phase) + chunk.len() % 4) % 4) as u8;
        if self.kind == DataKind::Text {
            self.utf8
                .feed(chunk)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.assembly.extend_from_slice(chunk);
        self.frame_remaining = self.frame_remaining.saturating_sub(chunk.len() as u64);
        if self.frame_remaining > 0 || !self.frame_fin {
            return Ok(false);
        }
        if self.kind == DataKind::Text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.complete = true;
        Ok(true)
    }

    /// The assembled payload as a message.
    fn message(&mut self) -> Message<'_> {
        match self.kind {
            DataKind::Text => Message::Text(self.assembly.as_mut_slice()),
            DataKind::Binary => Message::Binary(self.assembly.as_mut_slice()),
        }
    }
}

/// Validates a Close payload: empty, or a wire-valid code followed by a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseFrameTooShort),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_allowed_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = simdutf8::basic::from_utf8(reason)
                .map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const LIMITS: DecoderLimits = DecoderLimits {
        max_message_size: 1 << 20,
        max_fragments: 1024,
    };
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    /// Largest leftover a caller may have to keep: a partial control frame.
    const MAX_LEFTOVER: usize = 14 + 125;

    /// A masked client frame with the shortest length encoding.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], MASK, 0);
        out
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    fn own(m: Message<'_>) -> Owned {
        match m {
            Message::Text(t) => Owned::Text(String::from_utf8(t.to_vec()).unwrap()),
            Message::Binary(b) => Owned::Binary(b.to_vec()),
            Message::Ping(p) => Owned::Ping(p.to_vec()),
            Message::Pong(p) => Owned::Pong(p.to_vec()),
            Message::Close(c) => Owned::Close(c.map(|(code, r)| (code.0, r.to_string()))),
        }
    }

    /// Plays the caller: a read buffer that receives `chunks` one by one; returns the
    /// messages, the first error, and the number of bytes handed to `decode` in total.
    fn feed(
        chunks: &[&[u8]],
        limits: &DecoderLimits,
    ) -> (Vec<Owned>, Option<ProtocolError>, usize) {
        let mut decoder = Decoder::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut work = 0;
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            let mut start = 0;
            loop {
                work += pending.len() - start;
                match decoder.decode(&mut pending[start..], limits) {
                    Ok(d) => {
                        let stop = d.is_need_more();
                        start += d.consumed;
                        if let Some(m) = d.message {
                            out.push(own(m));
                        }
                        if stop {
                            break;
                        }
                    }
                    Err(e) => return (out, Some(e), work),
                }
            }
            pending.drain(..start);
            assert!(
                pending.len() < MAX_LEFTOVER,
                "leftover {} bytes",
                pending.len()
            );
        }
        (out, None, work)
    }

    fn feed_all(bytes: &[u8]) -> (Vec<Owned>, Option<ProtocolError>) {
        let (m, e, _) = feed(&[bytes], &LIMITS);
        (m, e)
    }

    #[test]
    fn decoder_is_small() {
        // It lives in every connection: a box pointer and a flag on 64-bit targets.
        let size = std::mem::size_of::<Decoder>();
        assert!(size <= 16, "size_of::<Decoder>() = {size}");
    }

    #[test]
    fn whole_text_frame_is_zero_copy() {
        let mut buf = frame(true, 1, b"hello");
        buf.extend_from_slice(&[0x81]); // start of the next frame
        let range = buf.as_ptr_range();
        let mut decoder = Decoder::new();
        let d = decoder.decode(&mut buf, &LIMITS).unwrap();
        assert_eq!(d.consumed, 11);
        let Some(Message::Text(text)) = d.message else {
            panic!("{:?}", d.message)
        };
        assert_eq!(text, b"hello");
        assert!(range.contains(&text.as_ptr()));
        assert_eq!(decoder.heap_bytes(), 0);
        let d = decoder.decode(&mut buf[11..], &LIMITS).unwrap();
        assert!(d.is_need_more());
    }

    #[test]
    fn decodes_each_message_type() {
        let mut bytes = frame(true, 2, &[0, 1, 2]);
        bytes.extend(frame(true, 9, b"ping"));
        bytes.extend(frame(true, 0xA, b"pong"));
        bytes.extend(frame(true, 1, "κόσμε".as_bytes()));
        bytes.extend(frame(true, 8, &[0x03, 0xE8, b'o', b'k']));
        let (msgs, err) = feed_all(&bytes);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            [
                Owned::Binary(vec![0, 1, 2]),
                Owned::Ping(b"ping".to_vec()),
                Owned::Pong(b"pong".to_vec()),
                Owned::Text("κόσμε".into()),
                Owned::Close(Some((1000, "ok".into()))),
            ]
        );
    }

    #[test]
    fn empty_messages() {
        let mut bytes = frame(true, 1, b"");
        bytes.extend(frame(true, 2, b""));
        bytes.extend(frame(false, 1, b""));
        bytes.extend(frame(true, 0, b""));
        bytes.extend(frame(true, 8, b""));
        let (msgs, err) = feed_all(&bytes);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            [
                Owned::Text(String::new()),
                Owned::Binary(vec![]),
                Owned::Text(String::new()),
                Owned::Close(None)
            ]
        );
    }

    #[test]
    fn unmasked_frame_is_refused() {
        let mut buf = vec![0x81, 0x02, b'h', b'i'];
        let err = Decoder::new().decode(&mut buf, &LIMITS).unwrap_err();
        assert_eq!(err, ProtocolError::UnmaskedFrame);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn header_errors_propagate() {
        assert_eq!(
            feed_all(&[0xC1, 0x80]).1,
            Some(ProtocolError::ReservedBits(0x40))
        );
        assert_eq!(
            feed_all(&[0x83, 0x80]).1,
            Some(ProtocolError::ReservedOpCode(3))
        );
        assert_eq!(
            feed_all(&frame(false, 9, b"")).1,
            Some(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            feed_all(&frame(true, 9, &[0; 126])).1,
            Some(ProtocolError::ControlFrameTooLong(126))
        );
    }

    #[test]
    fn length_of_two_to_the_63_is_refused() {
        let mut buf = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(
            Decoder::new().decode(&mut buf, &LIMITS).unwrap_err(),
            ProtocolError::LengthMsbSet
        );
        // 2^63 - 1 is within the RFC but over any limit, even usize::MAX on 32-bit targets.
        let mut buf = vec![
            0x82,
            0x80 | 127,
            0x7F,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            1,
            2,
            3,
            4,
        ];
        let err = Decoder::new().decode(&mut buf, &LIMITS).unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooBig { limit: 1 << 20 });
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // With no effective limit the huge frame is streamed without overflow or a huge
        // up-front allocation.
        let unlimited = DecoderLimits {
            max_message_size: usize::MAX,
            max_fragments: usize::MAX,
        };
        buf.extend_from_slice(&[0; 10]);
        let mut decoder = Decoder::new();
        let d = decoder.decode(&mut buf, &unlimited).unwrap();
        assert_eq!((d.consumed, d.message), (24, None));
        assert!(
            decoder.heap_bytes() <= std::mem::size_of::<PartialMessage>() + MAX_UPFRONT_RESERVE
        );
        assert!(decoder.has_partial_message());
    }

    #[test]
    fn size_limit_applies_to_the_assembled_message() {
        let limits = DecoderLimits {
            max_message_size: 10,
            max_fragments: 100,
        };
        let ok = [frame(false, 2, &[1; 5]), frame(true, 0, &[2; 5])].concat();
        let (msgs, err, _) = feed(&[&ok], &limits);
        assert_eq!((msgs.len(), err), (1, None));
        let over = [frame(false, 2, &[1; 6]), frame(true, 0, &[2; 5])].concat();
        let (msgs, err, _) = feed(&[&over], &limits);
        assert_eq!(
            (msgs.len(), err),
            (0, Some(ProtocolError::MessageTooBig { limit: 10 }))
        );
        // A single frame over the limit is refused on its header, before its payload arrives.
        let mut header_only = frame(true, 1, &[b'a'; 11]);
        header_only.truncate(6);
        let (_, err, _) = feed(&[&header_only], &limits);
        assert_eq!(err, Some(ProtocolError::MessageTooBig { limit: 10 }));
    }

    #[test]
    fn control_frames_between_fragments() {
        let bytes = [
            frame(false, 1, b"Hel"),
            frame(true, 9, b"p1"),
            frame(false, 0, b"lo, "),
            frame(true, 0xA, b"p2"),
            frame(true, 0, "wörld".as_bytes()),
            frame(true, 9, b""),
        ]
        .concat();
        let expected = vec![
            Owned::Ping(b"p1".to_vec()),
            Owned::Pong(b"p2".to_vec()),
            Owned::Text("Hello, wörld".into()),
            Owned::Ping(vec![]),
        ];
        assert_eq!(feed_all(&bytes), (expected.clone(), None));
        // Byte by byte too.
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let (msgs, err, _) = feed(&chunks, &LIMITS);
        assert_eq!((msgs, err), (expected, None));
    }

    #[test]
    fn control_frames_are_not_consumed_partially() {
        let full = frame(true, 9, b"0123456789");
        let mut decoder = Decoder::new();
        for n in 0..full.len() {
            let mut part = full[..n].to_vec();
            assert!(
                decoder.decode(&mut part, &LIMITS).unwrap().is_need_more(),
                "{n}"
            );
        }
    }

    #[test]
    fn fragmentation_rules() {
        assert_eq!(
            feed_all(&frame(true, 0, b"x")).1,
            Some(ProtocolError::UnexpectedContinuation)
        );
        let bytes = [frame(false, 1, b"a"), frame(true, 2, b"b")].concat();
        assert_eq!(
            feed_all(&bytes).1,
            Some(ProtocolError::InterleavedDataMessage)
        );
        let bytes = [frame(false, 2, b"a"), frame(false, 1, b"b")].concat();
        assert_eq!(
            feed_all(&bytes).1,
            Some(ProtocolError::InterleavedDataMessage)
        );
        // A finished message lets a new one start.
        let bytes = [
            frame(false, 2, b"a"),
            frame(true, 0, b"b"),
            frame(true, 0, b"c"),
        ]
        .concat();
        assert_eq!(
            feed_all(&bytes),
            (
                vec![Owned::Binary(b"ab".to_vec())],
                Some(ProtocolError::UnexpectedContinuation)
            )
        );
    }

    #[test]
    fn invalid_utf8() {
        let err = feed_all(&frame(true, 1, &[0xFF])).1.unwrap();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
        // Incomplete at the end of the message.
        let bytes = [frame(false, 1, b"a"), frame(true, 0, &[0xE2, 0x82])].concat();
        assert_eq!(feed_all(&bytes).1, Some(ProtocolError::InvalidUtf8));
        // Binary is not validated.
        assert_eq!(feed_all(&frame(true, 2, &[0xFF])).1, None);
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_impossible_fragment() {
        // Autobahn 6.4.1-style: ED A0 cannot start a valid sequence; the third fragment must
        // not be needed to reject it.
        let first = frame(false, 1, "κόσμε".as_bytes());
        let second = frame(false, 0, &[0xED, 0xA0]);
        let mut decoder = Decoder::new();
        let mut buf = first.clone();
        let d = decoder.decode(&mut buf, &LIMITS).unwrap();
        assert_eq!((d.consumed, d.message), (first.len(), None));
        let mut buf = second.clone();
        assert_eq!(
            decoder.decode(&mut buf, &LIMITS).unwrap_err(),
            ProtocolError::InvalidUtf8
        );

        // A code point split across fragments is fine when completed.
        let bytes = [
            frame(false, 1, &[0xF0, 0x9F]),
            frame(false, 0, &[0x98]),
            frame(true, 0, &[0x80]),
        ]
        .concat();
        assert_eq!(feed_all(&bytes), (vec![Owned::Text("😀".into())], None));

        // Mid-frame: the invalid byte is in the first half of a streamed frame.
        let mut payload = vec![b'a'; 100];
        payload[10] = 0xF4;
        payload[11] = 0x90;
        let bytes = frame(true, 1, &payload);
        let mut decoder = Decoder::new();
        let mut head = bytes[..30].to_vec();
        assert_eq!(
            decoder.decode(&mut head, &LIMITS).unwrap_err(),
            ProtocolError::InvalidUtf8
        );
    }

    #[test]
    fn close_payload_rules() {
        let mut decoder = Decoder::new();
        let mut buf = frame(true, 8, &[0x03]);
        let err = decoder.decode(&mut buf, &LIMITS).unwrap_err();
        assert_eq!(
            (err.clone(), err.close_code()),
            (ProtocolError::CloseFrameTooShort, CloseCode::PROTOCOL_ERROR)
        );

        let err = feed_all(&frame(true, 8, &[0x03, 0xE8, 0xFF])).1.unwrap();
        assert_eq!(
            (err.clone(), err.close_code()),
            (
                ProtocolError::InvalidCloseReason,
                CloseCode::INVALID_PAYLOAD
            )
        );

        for code in 0..=u16::MAX {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"why");
            let mut buf = frame(true, 8, &payload);
            let mut decoder = Decoder::new();
            let result = decoder.decode(&mut buf, &LIMITS);
            if CloseCode(code).is_allowed_on_wire() {
                let d = result.unwrap();
                assert_eq!(
                    d.message,
                    Some(Message::Close(Some((CloseCode(code), "why"))))
                );
            } else {
                let err = result.unwrap_err();
                assert_eq!(err, ProtocolError::InvalidCloseCode(code));
                assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
            }
        }
    }

    #[test]
    fn input_after_close_is_ignored() {
        let mut bytes = frame(true, 8, &[0x03, 0xE9]);
        let close_len = bytes.len();
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF]); // garbage that would be an error
        let mut decoder = Decoder::new();
        let d = decoder.decode(&mut bytes, &LIMITS).unwrap();
        assert_eq!(d.consumed, close_len);
        assert!(decoder.is_closed());
        let d = decoder.decode(&mut bytes[close_len..], &LIMITS).unwrap();
        assert_eq!((d.consumed, d.message), (3, None));
        assert!(decoder.decode(&mut [], &LIMITS).unwrap().is_need_more());
    }

    #[test]
    fn many_one_byte_fragments() {
        const N: usize = 65_536;
        let mut bytes = frame(false, 2, &[0]);
        for i in 1..N {
            bytes.extend(frame(i == N - 1, 0, &[i as u8]));
        }
        let limits = DecoderLimits {
            max_message_size: 1 << 20,
            max_fragments: N,
        };
        let (msgs, err, _) = feed(&[&bytes], &limits);
        assert_eq!(err, None);
        let expected: Vec<u8> = (0..N).map(|i| i as u8).collect();
        assert_eq!(msgs, [Owned::Binary(expected)]);

        let limits = DecoderLimits {
            max_message_size: 1 << 20,
            max_fragments: N - 1,
        };
        let (msgs, err, _) = feed(&[&bytes], &limits);
        assert!(msgs.is_empty());
        let err = err.unwrap();
        assert_eq!(err, ProtocolError::TooManyFragments { limit: N - 1 });
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn one_mib_in_64_byte_chunks_is_linear() {
        let payload: Vec<u8> = (0..1 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
        for fragments in [1usize, 16] {
            let piece = payload.len() / fragments;
            let bytes: Vec<u8> = payload
                .chunks(piece)
                .enumerate()
                .flat_map(|(i, p)| frame(i + 1 == fragments, if i == 0 { 1 } else { 0 }, p))
                .collect();
            let chunks: Vec<&[u8]> = bytes.chunks(64).collect();
            let limits = DecoderLimits {
                max_message_size: 1 << 20,
                max_fragments: 16,
            };
            let (msgs, err, work) = feed(&chunks, &limits);
            assert_eq!(err, None);
            assert_eq!(
                msgs,
                [Owned::Text(String::from_utf8(payload.clone()).unwrap())]
            );
            // Every byte is presented to `decode` a bounded number of times (at most twice:
            // once when it arrives, once more if it sat in a partial header).
            assert!(
                work <= 2 * bytes.len(),
                "work {work} for {} bytes",
                bytes.len()
            );
        }
    }

    #[test]
    fn idle_decoder_holds_no_heap() {
        let bytes = [frame(false, 1, b"abc"), frame(true, 0, b"def")].concat();
        let mut decoder = Decoder::new();
        let mut buf = bytes.clone();
        let d = decoder.decode(&mut buf, &LIMITS).unwrap();
        assert_eq!(d.consumed, 9);
        assert!(decoder.heap_bytes() > 0);
        let d = decoder.decode(&mut buf[9..], &LIMITS).unwrap();
        assert_eq!(d.message, Some(Message::Text(&mut b"abcdef".to_vec()[..])));
        assert!(!decoder.has_partial_message());
        assert!(decoder.decode(&mut [], &LIMITS).unwrap().is_need_more());
        assert_eq!(decoder.heap_bytes(), 0);
    }

    #[test]
    fn streamed_message_state_is_freed_on_the_next_call() {
        let big = frame(true, 1, &[b'x'; 1000]);
        let small = frame(true, 2, b"next");
        let mut decoder = Decoder::new();
        let mut head = big[..300].to_vec();
        let d = decoder.decode(&mut head, &LIMITS).unwrap();
        assert_eq!((d.consumed, d.message), (300, None));
        assert!(decoder.has_partial_message());
        assert!(decoder.heap_bytes() > std::mem::size_of::<PartialMessage>());
        let mut rest = [&big[300..], &small[..]].concat();
        let d = decoder.decode(&mut rest, &LIMITS).unwrap();
        assert_eq!(d.consumed, big.len() - 300);
        assert_eq!(d.message, Some(Message::Text(&mut [b'x'; 1000][..])));
        // The returned message borrows the assembly buffer, so it is kept until the next call.
        assert!(!decoder.has_partial_message());
        assert!(decoder.heap_bytes() > 0);
        // That call frees it before decoding the next (whole, zero-copy) frame.
        let d = decoder
            .decode(&mut rest[big.len() - 300..], &LIMITS)
            .unwrap();
        assert_eq!(d.message, Some(Message::Binary(&mut b"next".to_vec()[..])));
        assert_eq!(decoder.heap_bytes(), 0);

        // A caller out of input frees a returned message at once; a message still in
        // progress is kept.
        let mut buf = [&big[..], &big[..500]].concat();
        let d = decoder.decode(&mut buf, &LIMITS).unwrap();
        assert!(matches!(d.message, Some(Message::Text(_))));
        decoder.release_returned();
        assert_eq!(decoder.heap_bytes(), 0);
        let d = decoder.decode(&mut buf[big.len()..], &LIMITS).unwrap();
        assert_eq!(d.message, None);
        decoder.release_returned();
        assert!(decoder.has_partial_message());
        let mut tail = big[500..].to_vec();
        assert!(decoder
            .decode(&mut tail, &LIMITS)
            .unwrap()
            .message
            .is_some());

        // A fragmented message whose state is freed by a call with no input.
        let bytes = [frame(false, 2, b"ab"), frame(true, 0, b"cd")].concat();
        let mut buf = bytes.clone();
        let d = decoder.decode(&mut buf, &LIMITS).unwrap();
        assert_eq!((d.consumed, d.message), (8, None));
        assert!(decoder.has_partial_message());
        let d = decoder.decode(&mut buf[8..], &LIMITS).unwrap();
        assert_eq!(d.message, Some(Message::Binary(&mut b"abcd".to_vec()[..])));
        assert!(decoder.decode(&mut [], &LIMITS).unwrap().is_need_more());
        assert_eq!(decoder.heap_bytes(), 0);
        // Control frames between fragments neither free nor complete the message.
        let bytes = [
            frame(false, 1, b"ab"),
            frame(true, 9, b"p"),
            frame(true, 0, b"cd"),
        ]
        .concat();
        let mut buf = bytes.clone();
        let d = decoder.decode(&mut buf, &LIMITS).unwrap();
        assert_eq!(d.consumed, 8);
        let d = decoder.decode(&mut buf[8..], &LIMITS).unwrap();
        assert_eq!((d.consumed, d.message), (7, Some(Message::Ping(b"p"))));
        assert!(decoder.has_partial_message());
        let d = decoder.decode(&mut buf[15..], &LIMITS).unwrap();
        assert_eq!(d.message, Some(Message::Text(&mut b"abcd".to_vec()[..])));
        assert!(decoder.decode(&mut [], &LIMITS).unwrap().is_need_more());
        assert_eq!(decoder.heap_bytes(), 0);
    }

    #[test]
    fn whole_frames_never_allocate() {
        let mut decoder = Decoder::new();
        for i in 0..1000 {
            let mut buf = [
                frame(true, 1, "κόσμε".as_bytes()),
                frame(true, 2, &[i as u8; 200]),
                frame(true, 9, b"ping"),
                frame(true, 1, b""),
            ]
            .concat();
            let mut start = 0;
            let mut messages = 0;
            while start < buf.len() {
                let d = decoder.decode(&mut buf[start..], &LIMITS).unwrap();
                assert!(d.message.is_some());
                start += d.consumed;
                messages += 1;
            }
            assert_eq!(messages, 4);
            assert_eq!(decoder.heap_bytes(), 0);
        }
        assert!(!decoder.has_partial_message());
        assert!(decoder.decode(&mut [], &LIMITS).unwrap().is_need_more());
        assert_eq!(decoder.heap_bytes(), 0);
    }

    #[test]
    fn partial_data_frame_is_streamed() {
        let bytes = frame(true, 2, &[7; 1000]);
        let mut decoder = Decoder::new();
        let mut first = bytes[..500].to_vec();
        let d = decoder.decode(&mut first, &LIMITS).unwrap();
        assert_eq!((d.consumed, d.message), (500, None)); // header + 492 payload bytes
        let mut rest = bytes[500..].to_vec();
        let d = decoder.decode(&mut rest, &LIMITS).unwrap();
        assert_eq!(d.consumed, bytes.len() - 500);
        assert_eq!(d.message, Some(Message::Binary(&mut [7; 1000][..])));
    }

    fn random_stream(rng: &mut StdRng) -> (Vec<u8>, Vec<Owned>) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..rng.random_range(1..20) {
            match rng.random_range(0..4) {
                0 => {
                    let p: Vec<u8> = (0..rng.random_range(0..300))
                        .map(|_| rng.random())
                        .collect();
                    bytes.extend(frame(true, 9, &p[..p.len().min(125)]));
                    expected.push(Owned::Ping(p[..p.len().min(125)].to_vec()));
                }
                1 => {
                    let p: Vec<u8> = (0..rng.random_range(0..70_000))
                        .map(|_| rng.random())
                        .collect();
                    bytes.extend(frame(true, 2, &p));
                    expected.push(Owned::Binary(p));
                }
                _ => {
                    let text: String = (0..rng.random_range(0..400))
                        .map(|_| ['a', 'é', '€', '😀', ' '][rng.random_range(0..5)])
                        .collect();
                    let raw = text.as_bytes();
                    let parts = rng.random_range(1..5);
                    let mut cuts: Vec<usize> = (0..parts - 1)
                        .map(|_| rng.random_range(0..=raw.len()))
                        .collect();
                    cuts.sort_unstable();
                    cuts.insert(0, 0);
                    cuts.push(raw.len());
                    for (i, w) in cuts.windows(2).enumerate() {
                        bytes.extend(frame(
                            i + 2 == cuts.len(),
                            if i == 0 { 1 } else { 0 },
                            &raw[w[0]..w[1]],
                        ));
                        let last = i + 2 == cuts.len();
                        if !last && rng.random_bool(0.3) {
                            bytes.extend(frame(true, 0xA, b"hb"));
                            // Control frames between fragments come out before the text.
                            expected.push(Owned::Pong(b"hb".to_vec()));
                        }
                    }
                    expected.push(Owned::Text(text));
                }
            }
        }
        (bytes, expected)
    }

    #[test]
    fn random_splits_give_the_same_messages() {
        let mut rng = StdRng::seed_from_u64(6455);
        for _ in 0..60 {
            let (bytes, expected) = random_stream(&mut rng);
            assert!(feed_all(&bytes) == (expected.clone(), None), "whole buffer");
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let max = if rng.random_bool(0.5) { 20 } else { 5000 };
                let n = rng.random_range(1..=rest.len().min(max));
                let (a, b) = rest.split_at(n);
                chunks.push(a);
                rest = b;
            }
            let (msgs, err, _) = feed(&chunks, &LIMITS);
            assert!(msgs == expected && err.is_none(), "random split: {err:?}");
        }
    }
}
