//! The frame decoder driven like the shard drives it, tungstenite driven like a server, and
//! the verdict comparison with the deliberate differences documented in
//! `tests/codec_differential.rs`:
//!
//! 1. **Earlier rejection.** customws checks RSV bits, opcodes, control-frame length, the size
//!    limit and UTF-8 as soon as the bytes arrive; tungstenite checks some only once the whole
//!    frame is read. When the input ends inside the frame we rejected, tungstenite just sees
//!    end of input.
//! 2. **Close codes.** For a wire-invalid close code tungstenite returns
//!    `Close(1002, "Protocol violation")`; customws returns an error whose close code is 1002.
//! 3. **1014** is a registered code customws accepts; tungstenite treats it as invalid.

use std::io::{self, Read, Write};

use customws::proto::codec::{Decoder, DecoderLimits, Message};

/// Largest tail the caller may have to keep between reads: a 14-byte header plus a
/// 125-byte control payload still incomplete.
pub const MAX_LEFTOVER: usize = 14 + 125;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Input exhausted without a protocol error.
    Eof,
    /// Stopped after a Close.
    Closed,
    /// Rejected: the error (Debug) and, for ours, the input offset of the bytes whose
    /// decoding failed.
    Rejected(String, usize),
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub end: End,
}

fn own(m: Message<'_>) -> Event {
    match m {
        Message::Text(t) => Event::Text(t.to_vec()),
        Message::Binary(b) => Event::Binary(b.to_vec()),
        Message::Ping(p) => Event::Ping(p.to_vec()),
        Message::Pong(p) => Event::Pong(p.to_vec()),
        Message::Close(c) => Event::Close(c.map(|(code, r)| (code.0, r.to_string()))),
    }
}

/// customws's decoder fed `reads` one after another, keeping the unconsumed tail between
/// reads exactly as the shard does. Asserts the sans-IO contract on every call: `consumed`
/// within the buffer, progress or "need more", a kept tail of at most [`MAX_LEFTOVER`] bytes,
/// a wire-valid close code on every error, and assembly memory bounded by the limit.
pub fn run_ours<'a>(reads: impl Iterator<Item = &'a [u8]>, limits: &DecoderLimits) -> Outcome {
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut offset = 0; // input offset of pending[0]
    for read in reads {
        pending.extend_from_slice(read);
        let mut start = 0;
        loop {
            let len = pending.len() - start;
            match decoder.decode(&mut pending[start..], limits) {
                Err(e) => {
                    assert!(
                        e.close_code().is_allowed_on_wire(),
                        "{e:?} maps to close code {} which may not be sent",
                        e.close_code()
                    );
                    return Outcome {
                        events,
                        end: End::Rejected(format!("{e:?}"), offset + start),
                    };
                }
                Ok(d) => {
                    assert!(d.consumed <= len, "consumed {} of {len}", d.consumed);
                    let need_more = d.is_need_more();
                    start += d.consumed;
                    if let Some(m) = d.message {
                        if let Message::Text(t) = &m {
                            assert!(std::str::from_utf8(t).is_ok(), "text is not UTF-8");
                        }
                        if let Message::Close(Some((code, _))) = &m {
                            assert!(code.is_allowed_on_wire(), "close code {code} passed");
                        }
                        let closing = matches!(m, Message::Close(_));
                        events.push(own(m));
                        if closing {
                            return Outcome {
                                events,
                                end: End::Closed,
                            };
                        }
                    }
                    // Assembly memory: at most the message limit, plus Vec's growth slack.
                    let bound = limits
                        .max_message_size
                        .saturating_mul(2)
                        .saturating_add(64 * 1024);
                    assert!(
                        decoder.heap_bytes() <= bound,
                        "decoder holds {} bytes with a {}-byte limit",
                        decoder.heap_bytes(),
                        limits.max_message_size
                    );
                    if need_more {
                        break;
                    }
                }
            }
        }
        pending.drain(..start);
        offset += start;
        assert!(
            pending.len() <= MAX_LEFTOVER,
            "caller must keep {} bytes between reads",
            pending.len()
        );
    }
    Outcome {
        events,
        end: End::Eof,
    }
}

/// An in-memory socket: reads come from `input`, writes are discarded.
struct MemStream {
    input: io::Cursor<Vec<u8>>,
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite's server-role `WebSocket` over the same bytes, with the same size limit on
/// frames and on assembled messages.
pub fn run_tungstenite(input: &[u8], max_message: usize) -> Outcome {
    use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let stream = MemStream {
        input: io::Cursor::new(input.to_vec()),
    };
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    let mut events = Vec::new();
    loop {
        match ws.read() {
            Ok(m) => {
                use tungstenite::Message as T;
                let event = match m {
                    T::Text(t) => Event::Text(t.as_bytes().to_vec()),
                    T::Binary(b) => Event::Binary(b.to_vec()),
                    T::Ping(p) => Event::Ping(p.to_vec()),
                    T::Pong(p) => Event::Pong(p.to_vec()),
                    T::Close(c) => {
                        Event::Close(c.map(|f| (u16::from(f.code), f.reason.as_str().to_string())))
                    }
                    T::Frame(_) => continue,
                };
                let closing = matches!(event, Event::Close(_));
                events.push(event);
                if closing {
                    return Outcome {
                        events,
                        end: End::Closed,
                    };
                }
            }
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => {
                return Outcome {
                    events,
                    end: End::Eof,
                };
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Outcome {
                    events,
                    end: End::Eof,
                };
            }
            Err(e) => {
                return Outcome {
                    events,
                    end: End::Rejected(format!("{e:?}"), 0),
                }
            }
        }
    }
}

/// Where the frame starting at `at` ends, from its raw header (no validation); `None` if the
/// header itself is cut.
fn raw_frame_end(input: &[u8], at: usize) -> Option<u64> {
    let b = input.get(at..)?;
    let second = *b.get(1)?;
    let (len, mut header) = match second & 0x7F {
        126 => (u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(b.get(2..10)?);
            (u64::from_be_bytes(be), 10)
        }
        n => (u64::from(n), 2),
    };
    if second & 0x80 != 0 {
        header += 4;
    }
    Some((at as u64 + header as u64).saturating_add(len))
}

/// Whether the frame containing input offset `pos` (walking frames from the start, as
/// tungstenite does) is cut by the end of the input.
fn frame_is_truncated(input: &[u8], pos: usize) -> bool {
    let mut start = 0u64;
    loop {
        let Some(end) = raw_frame_end(input, start as usize) else {
            return true;
        };
        if (pos as u64) < end || pos as u64 == start {
            return end > input.len() as u64;
        }
        start = end;
    }
}

fn is_tungstenite_protocol_close(e: &Event) -> bool {
    matches!(e, Event::Close(Some((1002, r))) if r == "Protocol violation")
}

/// Whether the two outcomes are the same verdict, allowing the documented differences.
pub fn equivalent(input: &[u8], ours: &Outcome, theirs: &Outcome) -> Result<(), String> {
    match (&ours.end, &theirs.end) {
        (End::Eof, End::Eof)
        | (End::Closed, End::Closed)
        | (End::Rejected(..), End::Rejected(..)) => {
            if ours.events == theirs.events {
                return Ok(());
            }
            // Difference 3: we accept 1014, tungstenite turns it into a protocol close.
            if let (Some(Event::Close(Some((1014, _)))), Some(t)) =
                (ours.events.last(), theirs.events.last())
            {
                if is_tungstenite_protocol_close(t)
                    && ours.events[..ours.events.len() - 1]
                        == theirs.events[..theirs.events.len() - 1]
                {
                    return Ok(());
                }
            }
            Err("different messages".into())
        }
        // Difference 2: invalid close code.
        (End::Rejected(e, _), End::Closed) if e.starts_with("InvalidCloseCode") => {
            let (last, before) = theirs.events.split_last().ok_or("no close")?;
            if is_tungstenite_protocol_close(last) && before == ours.events.as_slice() {
                Ok(())
            } else {
                Err("invalid close code handled differently".into())
            }
        }
        // Difference 1: we rejected a frame that the input never completes.
        (End::Rejected(_, at), End::Eof) => {
            if frame_is_truncated(input, *at) && ours.events == theirs.events {
                Ok(())
            } else {
                Err("we rejected, tungstenite accepted".into())
            }
        }
        _ => Err("different verdicts".into()),
    }
}
