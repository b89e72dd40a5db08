//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! A text message may be split across frames and each frame across reads, and a code point
//! may be split anywhere. Autobahn 6.4.x requires failing *as soon as* the bytes seen so far
//! can no longer be a prefix of valid UTF-8, even in the middle of a fragment, so the
//! validator must tell "incomplete, may still become valid" from "already invalid".
//!
//! [`Utf8Validator`] runs `simdutf8` over every chunk and carries only the incomplete tail
//! (at most 3 bytes) into the next call. `simdutf8::compat` reports, like `std`, whether an
//! error is a definite one (`error_len() == Some(_)`, which includes truncated-but-impossible
//! prefixes such as `ED A0` or `F4 90`) or merely the end of input (`None`). Its state is
//! 4 bytes. [`DfaUtf8Validator`] is a byte-at-a-time state machine in the spirit of Bjoern
//! Hoehrmann's DFA with an ASCII word skip; it is kept as a reference for tests and for the
//! benchmark that picked the `simdutf8` version (see `benches/codec.rs`).

use thiserror::Error;

/// The bytes fed so far are not (and can no longer become) valid UTF-8.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Error)]
pub enum Utf8Error {
    /// A byte sequence that is not a prefix of any valid UTF-8 text was seen.
    #[error("invalid UTF-8 sequence")]
    InvalidSequence,
    /// The input ended inside a multi-byte code point.
    #[error("UTF-8 text ends inside a code point")]
    Incomplete,
}

/// Streaming UTF-8 validator: feed chunks in order, then call [`finish`](Self::finish).
///
/// After an error the state is unspecified; the connection is closed anyway.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    /// Leading bytes of a code point cut by the end of the previous chunk.
    pending: [u8; 3],
    /// How many bytes of `pending` are in use (0..=3).
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a text.
    pub const fn new() -> Self {
        Utf8Validator {
            pending: [0; 3],
            pending_len: 0,
        }
    }

    /// Validates the next chunk. Fails as soon as the text seen so far cannot be completed
    /// into valid UTF-8; a code point cut by the end of `bytes` is kept for the next call.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Utf8Error> {
        if self.pending_len > 0 {
            bytes = self.complete_pending(bytes)?;
            if self.pending_len > 0 {
                // `bytes` was exhausted while still completing the pending code point.
                return Ok(());
            }
        }
        match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(err) if err.error_len().is_none() => self.keep_tail(bytes, err.valid_up_to()),
            Err(_) => Err(Utf8Error::InvalidSequence),
        }
    }

    /// Fails if the text ended inside a code point.
    pub fn finish(&self) -> Result<(), Utf8Error> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(Utf8Error::Incomplete)
        }
    }

    /// Returns to the start-of-text state.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Whether a code point is cut between chunks right now.
    pub fn is_mid_code_point(&self) -> bool {
        self.pending_len > 0
    }

    /// Appends bytes from the new chunk to the pending prefix until it is a whole code point
    /// (or the chunk runs out) and checks it. Returns the rest of the chunk.
    fn complete_pending<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b [u8], Utf8Error> {
        let have = usize::from(self.pending_len);
        let mut code_point = [0u8; 4];
        code_point[..have].copy_from_slice(&self.pending[..have]);
        let needed = sequence_len(self.pending[0]).saturating_sub(have);
        let take = needed.min(bytes.len());
        let (head, rest) = bytes.split_at(take);
        code_point[have..have + take].copy_from_slice(head);
        let candidate = &code_point[..have + take];
        match simdutf8::compat::from_utf8(candidate) {
            Ok(_) => {
                self.pending_len = 0;
                Ok(rest)
            }
            Err(err) if err.error_len().is_none() && err.valid_up_to() == 0 => {
                self.keep_tail(candidate, 0)?;
                Ok(rest)
            }
            Err(_) => Err(Utf8Error::InvalidSequence),
        }
    }

    fn keep_tail(&mut self, bytes: &[u8], valid_up_to: usize) -> Result<(), Utf8Error> {
        let tail = bytes.get(valid_up_to..).unwrap_or_default();
        if tail.len() > self.pending.len() {
            return Err(Utf8Error::InvalidSequence);
        }
        self.pending[..tail.len()].copy_from_slice(tail);
        // Lossless: `tail.len() <= 3` was checked above.
        self.pending_len = tail.len() as u8;
        Ok(())
    }
}

/// Below this length a whole message is checked for ASCII a word at a time before any
/// real validation: `simdutf8` hands inputs shorter than one SIMD block (64 bytes) to
/// `core::str::from_utf8`, whose per-call setup cost ~125 instructions for a 32-byte message
/// in callgrind, against ~15 for the word loop. Most chat/JSON messages are ASCII.
const SHORT_MESSAGE: usize = 64;

/// Whether `bytes`, a complete text message, is valid UTF-8.
///
/// Short all-ASCII inputs (the common case for small messages) are accepted by a word loop
/// without calling into `simdutf8`; everything else goes to `simdutf8::basic`.
#[inline]
pub fn is_valid_utf8(bytes: &[u8]) -> bool {
    if bytes.len() < SHORT_MESSAGE && is_ascii_words(bytes) {
        return true;
    }
    simdutf8::basic::from_utf8(bytes).is_ok()
}

/// ASCII check 8 bytes at a time; the last word overlaps the previous ones instead of a
/// byte loop or a variable-length copy (which compiles to a `memcpy` call).
#[inline]
fn is_ascii_words(bytes: &[u8]) -> bool {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    // A slice that is not 8 bytes long cannot happen below; if it did, the word would count
    // as non-ASCII and the full validator would decide.
    let load = |w: &[u8]| w.try_into().map_or(HIGH_BITS, u64::from_ne_bytes);
    let Some(last) = bytes.len().checked_sub(8).and_then(|at| bytes.get(at..)) else {
        return bytes.iter().all(|b| b & 0x80 == 0);
    };
    let mut acc = load(last);
    for word in bytes.chunks_exact(8) {
        acc |= load(word);
    }
    acc & HIGH_BITS == 0
}

/// Total length of the sequence introduced by `lead`; 1 for bytes that cannot start one
/// (the following validation rejects them).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

/// Byte-at-a-time UTF-8 state machine (Hoehrmann-style, written as ranges rather than a
/// table) with an 8-byte ASCII skip. One byte of state. Kept as the test oracle and as the
/// benchmark baseline.
#[doc(hidden)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DfaUtf8Validator {
    state: u8,
}

const ACCEPT: u8 = 0;
const NEED1: u8 = 1;
const NEED2: u8 = 2;
const NEED3: u8 = 3;
const AFTER_E0: u8 = 4;
const AFTER_ED: u8 = 5;
const AFTER_F0: u8 = 6;
const AFTER_F4: u8 = 7;
const REJECT: u8 = 8;

impl DfaUtf8Validator {
    /// A validator at the start of a text.
    pub const fn new() -> Self {
        DfaUtf8Validator { state: ACCEPT }
    }

    /// Same contract as [`Utf8Validator::feed`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Utf8Error> {
        let mut state = self.state;
        let mut i = 0;
        while i < bytes.len() {
            if state == ACCEPT {
                // Skip whole ASCII words.
                while let Some(word) = bytes.get(i..i + 8) {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(word);
                    if u64::from_ne_bytes(w) & 0x8080_8080_8080_8080 != 0 {
                        break;
                    }
                    i += 8;
                }
            }
            let Some(&byte) = bytes.get(i) else { break };
            state = step(state, byte);
            if state == REJECT {
                self.state = REJECT;
                return Err(Utf8Error::InvalidSequence);
            }
            i += 1;
        }
        self.state = state;
        Ok(())
    }

    /// Same contract as [`Utf8Validator::finish`].
    pub fn finish(&self) -> Result<(), Utf8Error> {
        match self.state {
            ACCEPT => Ok(()),
            REJECT => Err(Utf8Error::InvalidSequence),
            _ => Err(Utf8Error::Incomplete),
        }
    }
}

fn step(state: u8, byte: u8) -> u8 {
    let cont = (0x80..=0xBF).contains(&byte);
    match state {
        ACCEPT => match byte {
            0x00..=0x7F => ACCEPT,
            0xC2..=0xDF => NEED1,
            0xE0 => AFTER_E0,
            0xED => AFTER_ED,
            0xE1..=0xEC | 0xEE..=0xEF => NEED2,
            0xF0 => AFTER_F0,
            0xF1..=0xF3 => NEED3,
            0xF4 => AFTER_F4,
            _ => REJECT,
        },
        NEED1 if cont => ACCEPT,
        NEED2 if cont => NEED1,
        NEED3 if cont => NEED2,
        AFTER_E0 if (0xA0..=0xBF).contains(&byte) => NEED1,
        AFTER_ED if (0x80..=0x9F).contains(&byte) => NEED1,
        AFTER_F0 if (0x90..=0xBF).contains(&byte) => NEED2,
        AFTER_F4 if (0x80..=0x8F).contains(&byte) => NEED2,
        _ => REJECT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `split` and returns the index of the chunk that failed
    /// (`Some(usize::MAX)` if only `finish` failed) or `None` if valid.
    fn run_hybrid(bytes: &[u8], split: usize) -> Option<usize> {
        let mut v = Utf8Validator::new();
        for (i, chunk) in bytes.chunks(split.max(1)).enumerate() {
            if v.feed(chunk).is_err() {
                return Some(i);
            }
        }
        v.finish().err().map(|_| usize::MAX)
    }

    fn run_dfa(bytes: &[u8], split: usize) -> Option<usize> {
        let mut v = DfaUtf8Validator::new();
        for (i, chunk) in bytes.chunks(split.max(1)).enumerate() {
            if v.feed(chunk).is_err() {
                return Some(i);
            }
        }
        v.finish().err().map(|_| usize::MAX)
    }

    /// Smallest `n` such that `bytes[..n]` is not a prefix of valid UTF-8, minus one (index of
    /// the offending byte).
    fn first_impossible(bytes: &[u8]) -> usize {
        (1..=bytes.len())
            .find(
                |&n| matches!(std::str::from_utf8(&bytes[..n]), Err(e) if e.error_len().is_some()),
            )
            .map(|n| n - 1)
            .unwrap_or(usize::MAX)
    }

    fn samples() -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"hello".to_vec(),
            "κόσμε".as_bytes().to_vec(),
            "Hello-µ@ßöäüàá-UTF-8!!".as_bytes().to_vec(),
            "\u{10FFFF}\u{FFFF}\u{800}\u{80}".as_bytes().to_vec(),
            vec![0xED, 0xA0, 0x80],       // surrogate
            vec![0xF4, 0x90, 0x80, 0x80], // above U+10FFFF
            vec![0xC0, 0xAF],             // overlong
            vec![0xE0, 0x80, 0xAF],       // overlong
            vec![0xF0, 0x80, 0x80, 0xAF], // overlong
            vec![
                0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
                0x65, 0x64, 0x69, 0x74, 0x65, 0x64,
            ], // Autobahn 6.4.1
            vec![
                0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xF4, 0x90, 0x80,
                0x80, 0x65,
            ],
            vec![0x80],
            vec![0xFF],
            vec![0xE2, 0x82],       // incomplete
            vec![0xF0, 0x9F, 0x98], // incomplete
            vec![b'a', 0xC3, b'b'], // bad continuation
        ];
        // Every 1-, 2- and 3-byte prefix over interesting lead/continuation bytes.
        let interesting = [
            0x00u8, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
            0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF,
        ];
        for &a in &interesting {
            for &b in &interesting {
                for &c in &interesting {
                    out.push(vec![b'x', a, b, c, 0x80, b'y']);
                    out.push(vec![a, b, c]);
                }
            }
        }
        out
    }

    #[test]
    fn agrees_with_std_for_every_split() {
        for sample in samples() {
            let std_ok = std::str::from_utf8(&sample).is_ok();
            for split in 1..=sample.len().max(1) {
                let hybrid = run_hybrid(&sample, split);
                let dfa = run_dfa(&sample, split);
                assert_eq!(hybrid.is_none(), std_ok, "{sample:02x?} split {split}");
                assert_eq!(hybrid, dfa, "{sample:02x?} split {split}");
                if !std_ok {
                    let at = first_impossible(&sample);
                    let want = if at == usize::MAX {
                        usize::MAX
                    } else {
                        at / split
                    };
                    assert_eq!(hybrid, Some(want), "fail-fast {sample:02x?} split {split}");
                }
            }
        }
    }

    #[test]
    fn fails_on_impossible_prefix_mid_fragment() {
        // Autobahn 6.4.x: the invalid prefix must fail before the rest arrives.
        for bad in [
            &[0xED, 0xA0][..],
            &[0xF4, 0x90],
            &[0xC0],
            &[0xE0, 0x80],
            &[0xF5],
        ] {
            let mut v = Utf8Validator::new();
            v.feed("κόσμε".as_bytes()).unwrap();
            assert_eq!(v.feed(bad), Err(Utf8Error::InvalidSequence), "{bad:02x?}");
            let mut d = DfaUtf8Validator::new();
            assert_eq!(d.feed(bad), Err(Utf8Error::InvalidSequence), "{bad:02x?}");
        }
    }

    #[test]
    fn incomplete_is_only_an_error_at_finish() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xF0]).unwrap();
        v.feed(&[0x9F]).unwrap();
        v.feed(&[0x98]).unwrap();
        assert!(v.is_mid_code_point());
        assert_eq!(v.finish(), Err(Utf8Error::Incomplete));
        v.feed(&[0x80]).unwrap();
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn whole_message_check_agrees_with_std() {
        for sample in samples() {
            assert_eq!(
                is_valid_utf8(&sample),
                std::str::from_utf8(&sample).is_ok(),
                "{sample:02x?}"
            );
        }
        // Every length around the word and SIMD-block boundaries, with one non-ASCII byte
        // (valid or not) at every position.
        for len in 0..140 {
            let ascii = vec![b'a'; len];
            assert!(is_valid_utf8(&ascii), "ascii len {len}");
            for at in 0..len {
                let mut bad = ascii.clone();
                bad[at] = 0x80;
                assert!(!is_valid_utf8(&bad), "lone continuation at {at} of {len}");
                if at + 1 < len {
                    let mut good = ascii.clone();
                    good[at] = 0xC3;
                    good[at + 1] = 0xA9;
                    assert!(is_valid_utf8(&good), "é at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn state_is_tiny() {
        assert!(std::mem::size_of::<Utf8Validator>() <= 4);
        assert_eq!(std::mem::size_of::<DfaUtf8Validator>(), 1);
    }
}
