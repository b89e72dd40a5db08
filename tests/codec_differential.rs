//! Differential test: customws's decoder against tungstenite's server-role `WebSocket` on
//! thousands of generated inputs (valid masked frame sequences and mutated ones), with a fixed
//! seed. Both must accept or reject each input and yield the same messages up to that point.
//!
//! Both sides use the same size limit (tungstenite: `max_message_size` = `max_frame_size` =
//! ours); our fragment limit is set to "unlimited" because tungstenite has none. Deliberate
//! differences, accepted by `equivalent` below:
//!
//! 1. **Earlier rejection.** We validate RSV bits, opcodes, control-frame length, the size
//!    limit on assembled messages and UTF-8 as soon as the bytes arrive; tungstenite checks some
//!    of them only once the whole frame is read. When the input ends inside the frame we
//!    rejected, tungstenite just reports end of input. Accepted only in exactly that case.
//! 2. **Close codes.** For a wire-invalid close code tungstenite does not fail: it returns
//!    `Close(1002, "Protocol violation")` (the close it will send). We return an error whose
//!    `close_code()` is 1002, so both close with 1002. Counted as the same verdict.
//! 3. **1014 (Bad Gateway)** is a registered code we accept (RFC 6455 IANA registry, Autobahn
//!    does not test it); tungstenite treats it as invalid (difference 2 applies).
//!
//! After a Close both sides stop: tungstenite refuses further frames, we ignore them.

use std::io::{self, Read, Write};

use customws::proto::codec::{Decoder, DecoderLimits, Message};
use customws::proto::mask::apply_mask;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

const MAX_MESSAGE: usize = 64 * 1024;
const CASES: usize = 4000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

#[derive(Debug)]
enum End {
    /// Input exhausted without a protocol error.
    Eof,
    /// Stopped after a Close.
    Closed,
    /// Rejected; for ours, the input offset of the bytes whose decoding failed.
    Rejected(String, usize),
}

struct Outcome {
    events: Vec<Event>,
    end: End,
}

/// Our decoder, fed the input in chunks of `chunk` bytes, like a socket would.
fn run_ours(input: &[u8], chunk: usize) -> Outcome {
    let limits = DecoderLimits {
        max_message_size: MAX_MESSAGE,
        max_fragments: usize::MAX,
    };
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut offset = 0; // input offset of pending[0]
    let mut fed = 0;
    while fed < input.len() {
        let n = chunk.min(input.len() - fed);
        pending.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        let mut start = 0;
        loop {
            match decoder.decode(&mut pending[start..], &limits) {
                Err(e) => {
                    return Outcome {
                        events,
                        end: End::Rejected(format!("{e:?}"), offset + start),
                    };
                }
                Ok(d) => {
                    let need_more = d.is_need_more();
                    start += d.consumed;
                    if let Some(m) = d.message {
                        let closing = matches!(m, Message::Close(_));
                        events.push(own(m));
                        if closing {
                            return Outcome {
                                events,
                                end: End::Closed,
                            };
                        }
                    }
                    if need_more {
                        break;
                    }
                }
            }
        }
        pending.drain(..start);
        offset += start;
    }
    Outcome {
        events,
        end: End::Eof,
    }
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

fn run_tungstenite(input: &[u8]) -> Outcome {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
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
                    T::Frame(_) => unreachable!("raw frames are never returned by read"),
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
fn equivalent(input: &[u8], ours: &Outcome, theirs: &Outcome) -> Result<(), String> {
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

/// A masked client frame with a random key and (sometimes) a non-minimal length encoding.
fn frame(rng: &mut StdRng, first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let len = payload.len();
    // 0: minimal encoding; 1: at least 16-bit; 2: 64-bit (non-minimal forms are legal).
    let form = if rng.random_bool(0.1) {
        rng.random_range(0..3)
    } else {
        0
    };
    if form == 0 && len < 126 {
        out.push(0x80 | len as u8);
    } else if form <= 1 && len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = rng.random();
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
    out
}

fn random_text(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    let s: String = (0..n)
        .map(|_| ['a', 'Z', ' ', 'é', '€', '😀', 'κ'][rng.random_range(0..7)])
        .collect();
    s.into_bytes()
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

fn payload_size(rng: &mut StdRng) -> usize {
    // Some over the 64 KiB limit, some over one read, most small.
    match rng.random_range(0..80) {
        0 => 70_000,
        1..=4 => 2_000,
        _ => 60,
    }
}

/// A valid sequence of client frames, ending (sometimes) in a Close.
fn valid_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..8) {
        match rng.random_range(0..6) {
            0 => {
                let p = random_bytes(rng, 125);
                out.extend(frame(rng, 0x89, &p));
            }
            1 => {
                let p = random_bytes(rng, 20);
                out.extend(frame(rng, 0x8A, &p));
            }
            2 => {
                let max = payload_size(rng);
                let p = random_bytes(rng, max);
                out.extend(frame(rng, 0x82, &p));
            }
            _ => {
                let max = payload_size(rng);
                let text = random_text(rng, max);
                let binary = rng.random_bool(0.2);
                let parts = rng.random_range(1..5);
                let mut cuts: Vec<usize> = (0..parts - 1)
                    .map(|_| rng.random_range(0..=text.len()))
                    .collect();
                cuts.sort_unstable();
                cuts.insert(0, 0);
                cuts.push(text.len());
                for (i, w) in cuts.windows(2).enumerate() {
                    let fin = if i + 2 == cuts.len() { 0x80 } else { 0 };
                    let op = if i > 0 {
                        0
                    } else if binary {
                        2
                    } else {
                        1
                    };
                    out.extend(frame(rng, fin | op, &text[w[0]..w[1]]));
                    if fin == 0 && rng.random_bool(0.3) {
                        out.extend(frame(rng, 0x89, b"between"));
                    }
                }
            }
        }
    }
    if rng.random_bool(0.5) {
        let codes = [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1013, 3000, 4000, 4999, 0, 999, 1004, 1005,
            1006, 1015, 1016, 2999, 5000,
        ];
        let mut p = match rng.random_range(0..5) {
            0 => Vec::new(),
            1 => vec![0x03],
            _ => codes[rng.random_range(0..codes.len())]
                .to_be_bytes()
                .to_vec(),
        };
        if p.len() == 2 {
            if rng.random_bool(0.1) {
                p.extend_from_slice(&[0xCE, 0xBA, 0xED, 0xA0, 0x80]);
            } else {
                p.extend_from_slice("bye κόσμε".as_bytes());
            }
        }
        out.extend(frame(rng, 0x88, &p));
        // Anything after a Close is ignored by both.
        out.extend(frame(rng, 0x81, b"after close"));
    }
    out
}

fn mutate(rng: &mut StdRng, mut input: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(1..4) {
        if input.is_empty() {
            input.push(rng.random());
        }
        let at = rng.random_range(0..input.len());
        match rng.random_range(0..8) {
            0 => input[at] ^= 1 << rng.random_range(0..8),
            1 => input.truncate(at),
            2 => input.insert(at, rng.random()),
            3 => {
                input.remove(at);
            }
            // Header-targeted: flip FIN/RSV/opcode bits of the first byte.
            4 => {
                input[0] ^= [0x80, 0x40, 0x20, 0x10, 0x08, 0x01, 0x02, 0x03][rng.random_range(0..8)]
            }
            5 => {
                if input.len() > 1 {
                    input[1] ^= 0x80; // drop or add the mask bit
                }
            }
            6 => input[at] = rng.random(),
            _ => {
                // Splice an invalid UTF-8 byte into the payload area (masked or not).
                input[at] ^= 0xC0;
            }
        }
    }
    input
}

#[test]
fn decoder_agrees_with_tungstenite() {
    let mut rng = StdRng::seed_from_u64(0x6455_2011);
    let mut accepted = 0;
    let mut rejected = 0;
    let mut counted_differences = 0;
    for case in 0..CASES {
        let valid = valid_stream(&mut rng);
        let input = if case % 3 == 0 {
            valid
        } else {
            mutate(&mut rng, valid)
        };
        let theirs = run_tungstenite(&input);
        let mut chunk = [usize::MAX, 1, 7, 64, 1000][case % 5];
        if input.len() > 4096 && chunk < 64 {
            chunk = 64; // keeps the debug-build run short; small inputs cover tiny chunks
        }
        let ours = run_ours(&input, chunk);
        if let Err(why) = equivalent(&input, &ours, &theirs) {
            panic!(
                "case {case} (chunk {chunk}): {why}\n ours: {:?} after {} messages\n theirs: {:?} after {} messages\n input ({} bytes): {:02x?}",
                ours.end,
                ours.events.len(),
                theirs.end,
                theirs.events.len(),
                input.len(),
                &input[..input.len().min(64)],
            );
        }
        match (&ours.end, &theirs.end) {
            (End::Rejected(..), End::Rejected(..)) => rejected += 1,
            (End::Rejected(..), _) => counted_differences += 1,
            _ => accepted += 1,
        }
    }
    // The generator must exercise both verdicts.
    assert!(accepted > CASES / 4, "accepted {accepted}");
    assert!(rejected > CASES / 10, "rejected {rejected}");
    eprintln!(
        "accepted {accepted}, rejected {rejected}, documented differences {counted_differences}"
    );
}
