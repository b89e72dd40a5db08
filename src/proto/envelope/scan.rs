//! A validating JSON scanner that builds nothing: one pass over the bytes checks the grammar
//! (RFC 8259, with serde_json's rules for escapes, surrogates and out-of-range numbers) and
//! reports where values start and end. The envelope keeps those spans as [`RawJson`], so a
//! client's `payload` is later copied into a `data_event` byte for byte instead of being
//! decoded into a value tree and serialized again (that tree was half of a P2P delivery's
//! instructions).
//!
//! Containers are walked with an explicit stack, not recursion, so no configured depth can
//! overflow the thread's stack.

use smallvec::SmallVec;
use std::borrow::Cow;

/// Why a text is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fail {
    /// Not JSON (syntax, escape, control character, infinite number).
    Syntax,
    /// A container opened deeper than the limit.
    TooDeep,
}

/// What kind of value a span holds (decided by its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Object,
    Array,
    /// A string; `escaped` when its content contains a backslash.
    String {
        escaped: bool,
    },
    Number,
    Null,
    Bool,
}

/// Cursor over a message; every method leaves `pos` just after what it consumed.
pub(super) struct Scanner<'b> {
    buf: &'b [u8],
    pub(super) pos: usize,
    max_depth: usize,
}

impl<'b> Scanner<'b> {
    pub(super) fn new(buf: &'b [u8], max_depth: usize) -> Self {
        Self {
            buf,
            pos: 0,
            max_depth,
        }
    }

    #[inline(always)]
    pub(super) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    pub(super) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `c` or fails.
    #[inline(always)]
    pub(super) fn expect(&mut self, c: u8) -> Result<(), Fail> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Fail::Syntax)
        }
    }

    /// One value starting at `pos` (no leading whitespace). `level` is the number of
    /// containers already open around it, so a container here is at depth `level + 1`.
    #[inline(always)]
    pub(super) fn value(&mut self, level: usize) -> Result<Kind, Fail> {
        match self.peek() {
            Some(b'{') => {
                self.container(level)?;
                Ok(Kind::Object)
            }
            Some(b'[') => {
                self.container(level)?;
                Ok(Kind::Array)
            }
            _ => self.scalar(),
        }
    }

    /// A string, number or literal.
    #[inline(always)]
    fn scalar(&mut self) -> Result<Kind, Fail> {
        match self.peek() {
            Some(b'"') => {
                let (_, _, escaped) = self.string()?;
                Ok(Kind::String { escaped })
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Ok(Kind::Number)
            }
            Some(b't') => self.literal(b"true", Kind::Bool),
            Some(b'f') => self.literal(b"false", Kind::Bool),
            Some(b'n') => self.literal(b"null", Kind::Null),
            _ => Err(Fail::Syntax),
        }
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Result<Kind, Fail> {
        let end = self.pos + word.len();
        if self.buf.get(self.pos..end) == Some(word) {
            self.pos = end;
            Ok(kind)
        } else {
            Err(Fail::Syntax)
        }
    }

    /// An object or array at `pos`, with everything nested in it.
    fn container(&mut self, level: usize) -> Result<(), Fail> {
        // One entry per open container: true for an object.
        let mut open: SmallVec<[bool; 64]> = SmallVec::new();
        loop {
            // `pos` is at the start of a value.
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    if level.saturating_add(open.len()) >= self.max_depth {
                        return Err(Fail::TooDeep);
                    }
                    self.pos += 1;
                    let is_object = c == b'{';
                    open.push(is_object);
                    self.skip_ws();
                    let close = if is_object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        open.pop();
                    } else {
                        if is_object {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                _ => {
                    self.scalar()?;
                }
            }
            // A value just ended: close containers until one continues with a comma.
            loop {
                let Some(&in_object) = open.last() else {
                    return Ok(());
                };
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {
                        self.pos += 1;
                        open.pop();
                    }
                    Some(b']') if !in_object => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ => return Err(Fail::Syntax),
                }
            }
        }
    }

    /// An object at `pos` whose members sit at depth `level + 1`, calling `on_member` with
    /// each key's raw content, its escape flag and the value's span (the envelope's view of
    /// its `payload`).
    pub(super) fn object_members(
        &mut self,
        level: usize,
        mut on_member: impl FnMut(&[u8], bool, usize, usize),
    ) -> Result<(), Fail> {
        if level >= self.max_depth {
            return Err(Fail::TooDeep);
        }
        self.expect(b'{')?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(Fail::Syntax);
            }
            let (start, end, escaped) = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value_start = self.pos;
            self.value(level + 1)?;
            let key = self.buf.get(start..end).unwrap_or_default();
            on_member(key, escaped, value_start, self.pos);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Fail::Syntax),
            }
        }
    }

    /// `"key"` `:` and the whitespace after it.
    fn member_key(&mut self) -> Result<(), Fail> {
        if self.peek() != Some(b'"') {
            return Err(Fail::Syntax);
        }
        self.string()?;
        self.skip_ws();
        self.expect(b':')?;
        self.skip_ws();
        Ok(())
    }

    /// A string at `pos` (the opening quote): the content span and whether it has escapes.
    /// Content bytes are not checked for UTF-8 here (callers validate the whole message).
    #[inline(always)]
    pub(super) fn string(&mut self) -> Result<(usize, usize, bool), Fail> {
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            let rest = self.buf.get(i..).ok_or(Fail::Syntax)?;
            i += find_string_special(rest).ok_or(Fail::Syntax)?;
            match self.buf.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok((start, i, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    i = escape_end(self.buf, i + 1)?;
                }
                _ => return Err(Fail::Syntax), // a control character
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, refused when it does not fit
    /// an f64 (serde_json's "number out of range"; `1e-999` reads as 0 and is fine).
    #[inline(always)]
    fn number(&mut self) -> Result<(), Fail> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Fail::Syntax),
        }
        let int_end = self.pos;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.required_digits()?;
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.required_digits()?;
            float = true;
        }
        // Integers of up to 300 digits are finite as f64; only the rest needs a parse.
        if float || int_end - start > 300 {
            let text = self
                .buf
                .get(start..self.pos)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or(Fail::Syntax)?;
            let value: f64 = text.parse().map_err(|_| Fail::Syntax)?;
            if !value.is_finite() {
                return Err(Fail::Syntax);
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), Fail> {
        let before = self.pos;
        self.digits();
        if self.pos == before {
            Err(Fail::Syntax)
        } else {
            Ok(())
        }
    }
}

/// Index after the escape whose letter is at `i` (just after the backslash). `\u` escapes
/// must not leave a surrogate unpaired (serde_json refuses those strings).
fn escape_end(buf: &[u8], i: usize) -> Result<usize, Fail> {
    match buf.get(i) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 1),
        Some(b'u') => {
            let unit = hex4(buf, i + 1).ok_or(Fail::Syntax)?;
            match unit {
                0xD800..=0xDBFF => {
                    let low = (buf.get(i + 5..i + 7) == Some(b"\\u"))
                        .then(|| hex4(buf, i + 7))
                        .flatten();
                    match low {
                        Some(0xDC00..=0xDFFF) => Ok(i + 11),
                        _ => Err(Fail::Syntax),
                    }
                }
                0xDC00..=0xDFFF => Err(Fail::Syntax),
                _ => Ok(i + 5),
            }
        }
        _ => Err(Fail::Syntax),
    }
}

fn hex4(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)?.iter().try_fold(0u32, |acc, &c| {
        let d = char::from(c).to_digit(16)?;
        Some(acc << 4 | d)
    })
}

/// First `"`, `\` or control byte (< 0x20) in `hay`, eight bytes at a time (SWAR: the lowest
/// flagged byte of each test is always a true match, so the lowest flag overall is too).
#[inline(always)]
pub(super) fn find_string_special(hay: &[u8]) -> Option<usize> {
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

/// Decodes the content of a valid string literal (between the quotes) into `out`.
/// Returns `None` only on an invalid escape (never for scanned text).
pub(super) fn unescape_into(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut i = 0;
    while let Some(off) = raw.get(i..)?.iter().position(|&c| c == b'\\') {
        out.extend_from_slice(raw.get(i..i + off)?);
        i += off + 1;
        let short = match *raw.get(i)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let unit = hex4(raw, i + 1)?;
                i += 5;
                let code = if (0xD800..0xDC00).contains(&unit) {
                    if raw.get(i..i + 2) != Some(b"\\u") {
                        return None;
                    }
                    let low = hex4(raw, i + 2)?;
                    i += 6;
                    0x10000 + ((unit - 0xD800) << 10) + (low.checked_sub(0xDC00)? & 0x3ff)
                } else {
                    unit
                };
                let c = char::from_u32(code)?;
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(short);
        i += 1;
    }
    out.extend_from_slice(raw.get(i..)?);
    Some(())
}

/// One valid JSON value, as the exact text the client sent (escapes, spacing and number
/// spelling kept). Obtained from a parsed envelope or [`RawJson::parse`]; the accessors
/// read it lazily, walking only as far as they need.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawJson<'a> {
    text: &'a str,
    /// Set by the envelope parser for a payload object none of whose keys is named like a
    /// server-set `data_event` field (nor escaped): it can be spliced without a walk.
    pub(super) plain_members: bool,
}

impl std::fmt::Debug for RawJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text)
    }
}

impl std::fmt::Display for RawJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text)
    }
}

impl<'a> RawJson<'a> {
    /// Wraps text the scanner has already accepted as exactly one value.
    pub(super) fn validated(text: &'a str) -> Self {
        Self {
            text,
            plain_members: false,
        }
    }

    /// Checks that `text` is exactly one JSON value (surrounding whitespace allowed and
    /// dropped) nested at most `max_depth` levels.
    #[must_use]
    pub fn parse(text: &'a str, max_depth: usize) -> Option<Self> {
        let mut sc = Scanner::new(text.as_bytes(), max_depth);
        sc.skip_ws();
        let start = sc.pos;
        sc.value(0).ok()?;
        let end = sc.pos;
        sc.skip_ws();
        if !sc.at_end() {
            return None;
        }
        Some(Self::validated(text.get(start..end)?))
    }

    /// The JSON text of this value.
    #[must_use]
    pub fn json(&self) -> &'a str {
        self.text
    }

    fn first(&self) -> Option<u8> {
        self.text.as_bytes().first().copied()
    }

    /// Whether this is an object.
    #[must_use]
    pub fn is_object(&self) -> bool {
        self.first() == Some(b'{')
    }

    /// Whether this is an array.
    #[must_use]
    pub fn is_array(&self) -> bool {
        self.first() == Some(b'[')
    }

    /// Whether this is `null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        self.first() == Some(b'n')
    }

    /// The decoded string, when this is a string (borrowed unless it contains escapes).
    #[must_use]
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        let content = self.text.strip_prefix('"')?.strip_suffix('"')?;
        if !content.contains('\\') {
            return Some(Cow::Borrowed(content));
        }
        let mut out = Vec::with_capacity(content.len());
        unescape_into(content.as_bytes(), &mut out)?;
        String::from_utf8(out).ok().map(Cow::Owned)
    }

    /// The value of the first member named `key`, when this is an object.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<RawJson<'a>> {
        self.members()
            .find(|(k, _)| k.string_eq(key))
            .map(|(_, v)| v)
    }

    /// Compares a string value with `s` (decoding only when it has escapes).
    pub(super) fn string_eq(&self, s: &str) -> bool {
        let Some(content) = self
            .text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
        else {
            return false;
        };
        if content.contains('\\') {
            self.as_str().is_some_and(|d| d == s)
        } else {
            content == s
        }
    }

    /// The members of an object in order (repeated keys included), each key as a JSON
    /// string value; empty for anything else.
    #[must_use]
    pub fn members(&self) -> Members<'a> {
        Members {
            items: Items::new(*self, b'{'),
        }
    }

    /// The elements of an array in order; empty for anything else.
    #[must_use]
    pub fn elements(&self) -> Elements<'a> {
        Elements {
            items: Items::new(*self, b'['),
        }
    }
}

/// Walks the entries of one container of validated text.
struct Items<'a> {
    text: &'a str,
    sc: Scanner<'a>,
    done: bool,
}

impl<'a> Items<'a> {
    fn new(value: RawJson<'a>, open: u8) -> Self {
        let text = value.text;
        let mut sc = Scanner::new(text.as_bytes(), usize::MAX);
        let done = sc.peek() != Some(open);
        sc.pos = 1;
        Self { text, sc, done }
    }

    /// The next entry's start, after any separator; `None` at the end.
    fn advance(&mut self) -> Option<()> {
        if self.done {
            return None;
        }
        self.sc.skip_ws();
        if self.sc.peek() == Some(b',') {
            self.sc.pos += 1;
            self.sc.skip_ws();
        }
        match self.sc.peek() {
            None | Some(b'}' | b']') => {
                self.done = true;
                None
            }
            Some(_) => Some(()),
        }
    }

    fn value(&mut self) -> Option<RawJson<'a>> {
        let start = self.sc.pos;
        if self.sc.value(0).is_err() {
            self.done = true;
            return None;
        }
        Some(RawJson::validated(self.text.get(start..self.sc.pos)?))
    }
}

/// Iterator of [`RawJson::members`].
pub struct Members<'a> {
    items: Items<'a>,
}

impl<'a> Iterator for Members<'a> {
    type Item = (RawJson<'a>, RawJson<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.items.advance()?;
        let key = self.items.value()?;
        self.items.sc.skip_ws();
        if self.items.sc.expect(b':').is_err() {
            self.items.done = true;
            return None;
        }
        self.items.sc.skip_ws();
        let value = self.items.value()?;
        Some((key, value))
    }
}

/// Iterator of [`RawJson::elements`].
pub struct Elements<'a> {
    items: Items<'a>,
}

impl<'a> Iterator for Elements<'a> {
    type Item = RawJson<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        self.items.advance()?;
        self.items.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> bool {
        RawJson::parse(text, 64).is_some()
    }

    #[test]
    fn grammar_matches_serde_json_on_edge_cases() {
        for text in [
            "0",
            "-0",
            "-0.0e+1",
            "1E5",
            "1e-999",
            "123456789012345678901234567890",
            "1e308",
            "1e309",
            "-1e400",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "[,1]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\u0041\"",
            "\"\\ude00\"",
            "\"\\u00e9\\/\\b\\f\\n\\r\\t\\\"\\\\\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"a\u{1}b\"",
            "\"tab\there\"",
            " [ true , false , null ] ",
            "tru",
            "nul",
            "[1] 2",
            "",
            " ",
            "{}",
            "[]",
            "[[[]]]",
            "{\"a\":{\"b\":[{}]}}",
            "\"\u{7f}é漢\"",
        ] {
            let serde = serde_json::from_str::<serde_json::Value>(text).is_ok();
            assert_eq!(accepts(text), serde, "{text:?}");
        }
    }

    #[test]
    fn depth_limit_counts_containers() {
        assert!(RawJson::parse("[[1]]", 2).is_some());
        assert!(RawJson::parse("[[1]]", 1).is_none());
        assert!(RawJson::parse("1", 0).is_some());
        let deep = "[".repeat(100_000);
        assert!(RawJson::parse(&deep, 64).is_none());
        let nested = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(RawJson::parse(&nested, usize::MAX).is_some());
    }

    #[test]
    fn members_elements_and_strings() {
        let v = RawJson::parse(
            r#" { "a" : [1, "x", {"b":null}] , "k\u0065y":"v\n" , "a":2 } "#,
            64,
        )
        .unwrap();
        assert!(v.is_object());
        let keys: Vec<_> = v.members().map(|(k, _)| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["a", "key", "a"]);
        assert_eq!(v.get("key").unwrap().as_str().unwrap(), "v\n");
        // The first of repeated keys.
        let a = v.get("a").unwrap();
        assert_eq!(a.json(), r#"[1, "x", {"b":null}]"#);
        let items: Vec<_> = a.elements().map(|e| e.json()).collect();
        assert_eq!(items, ["1", "\"x\"", "{\"b\":null}"]);
        assert!(a.elements().nth(2).unwrap().get("b").unwrap().is_null());
        assert_eq!(v.get("missing"), None);
        assert_eq!(a.members().count(), 0);
        assert_eq!(v.elements().count(), 0);
        let s = RawJson::parse(r#""\ud83d\ude00 \u00e9""#, 1).unwrap();
        assert_eq!(s.as_str().unwrap(), "😀 é");
        assert!(matches!(
            RawJson::parse(r#""plain""#, 1).unwrap().as_str(),
            Some(Cow::Borrowed("plain"))
        ));
        assert_eq!(RawJson::parse("[]", 1).unwrap().elements().count(), 0);
        assert_eq!(RawJson::parse("{}", 1).unwrap().members().count(), 0);
    }

    #[test]
    fn string_special_search_matches_naive() {
        let sample = b"abcdefgh\"ijklmnopq\x1frstu\\vwxyz0123456789\x7f\xc3\xa9";
        for start in 0..sample.len() {
            for end in start..=sample.len() {
                let hay = &sample[start..end];
                let naive = hay
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                assert_eq!(find_string_special(hay), naive);
            }
        }
    }
}
