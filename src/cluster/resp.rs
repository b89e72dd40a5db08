//! The Redis serialization protocol (RESP2), sans-IO: commands are appended to an output
//! buffer, replies are parsed incrementally from whatever bytes arrived.
//!
//! Only what the bridge needs: commands are arrays of bulk strings; replies are simple
//! strings, errors, integers, bulk strings (or nil) and arrays of those (pub/sub pushes are
//! arrays). Nothing from the network can make the parser allocate without bound: bulk
//! strings and arrays are capped, nesting is capped.

use bytes::{Buf, Bytes, BytesMut};

/// Largest bulk string accepted (a presence snapshot of a full node is a few MiB).
pub const MAX_BULK: usize = 256 << 20;
/// Largest array accepted (replies here have at most a handful of elements).
const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 4;

/// One parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(b) | Value::Bulk(b) => Some(b),
            _ => None,
        }
    }
}

/// The server sent something that is not RESP2 (the connection must be dropped).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RespError {
    #[error("unknown reply type byte {0:#04x}")]
    UnknownType(u8),
    #[error("malformed length or integer")]
    BadNumber,
    #[error("bulk string of {0} bytes exceeds the limit")]
    BulkTooLarge(i64),
    #[error("array of {0} elements exceeds the limit")]
    ArrayTooLarge(i64),
    #[error("replies nested too deeply")]
    TooDeep,
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
}

/// Appends one command (an array of bulk strings).
pub fn write_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    write_header(out, b'*', args.len());
    for a in args {
        write_bulk(out, a);
    }
}

/// Appends an array header; follow it with `n` calls to [`write_bulk`].
pub fn write_array_header(out: &mut Vec<u8>, n: usize) {
    write_header(out, b'*', n);
}

/// Appends one bulk string.
pub fn write_bulk(out: &mut Vec<u8>, data: &[u8]) {
    write_header(out, b'$', data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn write_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Parses one complete reply from the front of `buf`, consuming it. `Ok(None)` means more
/// bytes are needed (nothing is consumed).
pub fn parse(buf: &mut BytesMut) -> Result<Option<Value>, RespError> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, 0)? {
        Some(v) => {
            buf.advance(pos);
            Ok(Some(v))
        }
        None => Ok(None),
    }
}

/// Parses a reply starting at `*pos` without consuming; on success `*pos` is past it.
fn parse_at(buf: &BytesMut, pos: &mut usize, depth: usize) -> Result<Option<Value>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    let Some(line_end) = find_crlf(buf, *pos + 1) else {
        // A line longer than any legitimate header is garbage, not a slow sender.
        if buf.len() - *pos > 64 * 1024 && kind != b'+' && kind != b'-' {
            return Err(RespError::BadNumber);
        }
        return Ok(None);
    };
    let line = &buf[*pos + 1..line_end];
    let after = line_end + 2;
    match kind {
        b'+' | b'-' => {
            let s = Bytes::copy_from_slice(line);
            *pos = after;
            Ok(Some(if kind == b'+' {
                Value::Simple(s)
            } else {
                Value::Error(s)
            }))
        }
        b':' => {
            let n = parse_int(line)?;
            *pos = after;
            Ok(Some(Value::Integer(n)))
        }
        b'$' => {
            let n = parse_int(line)?;
            if n == -1 {
                *pos = after;
                return Ok(Some(Value::Nil));
            }
            if n < 0 || n as u64 > MAX_BULK as u64 {
                return Err(RespError::BulkTooLarge(n));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            let data = Bytes::copy_from_slice(&buf[after..after + n]);
            *pos = after + n + 2;
            Ok(Some(Value::Bulk(data)))
        }
        b'*' => {
            let n = parse_int(line)?;
            if n == -1 {
                *pos = after;
                return Ok(Some(Value::Nil));
            }
            if n < 0 || n as u64 > MAX_ARRAY as u64 {
                return Err(RespError::ArrayTooLarge(n));
            }
            let mut p = after;
            // Capacity bounded by what has arrived, not by the claimed length.
            let mut items = Vec::with_capacity((n as usize).min(16));
            for _ in 0..n {
                match parse_at(buf, &mut p, depth + 1)? {
                    Some(v) => items.push(v),
                    None => return Ok(None),
                }
            }
            *pos = p;
            Ok(Some(Value::Array(items)))
        }
        other => Err(RespError::UnknownType(other)),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

fn parse_int(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(RespError::BadNumber)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Value>, RespError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(v) = parse(&mut buf)? {
            out.push(v);
        }
        assert!(buf.is_empty(), "unparsed tail {buf:?}");
        Ok(out)
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        write_command(&mut out, &[b"SPUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$8\r\nSPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn parses_every_reply_kind() {
        let v =
            parse_all(b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\nx\r\n:-1\r\n")
                .unwrap();
        assert_eq!(
            v,
            vec![
                Value::Simple(Bytes::from_static(b"OK")),
                Value::Error(Bytes::from_static(b"ERR bad")),
                Value::Integer(42),
                Value::Bulk(Bytes::from_static(b"abc")),
                Value::Nil,
                Value::Array(vec![
                    Value::Bulk(Bytes::from_static(b"x")),
                    Value::Integer(-1)
                ]),
            ]
        );
    }

    #[test]
    fn incomplete_input_consumes_nothing_at_every_split() {
        let msg: &[u8] = b"*3\r\n$8\r\nsmessage\r\n$4\r\ncws:\r\n$5\r\nhe\r\nl\r\n";
        for cut in 0..msg.len() {
            let mut buf = BytesMut::from(&msg[..cut]);
            assert_eq!(parse(&mut buf), Ok(None), "cut {cut}");
            assert_eq!(buf.len(), cut);
            buf.extend_from_slice(&msg[cut..]);
            let v = parse(&mut buf).unwrap().unwrap();
            let Value::Array(items) = v else {
                panic!("array")
            };
            assert_eq!(items[2], Value::Bulk(Bytes::from_static(b"he\r\nl")));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        assert_eq!(
            parse_all(b"$999999999999\r\n"),
            Err(RespError::BulkTooLarge(999_999_999_999))
        );
        assert_eq!(
            parse_all(b"*99999999\r\n"),
            Err(RespError::ArrayTooLarge(99_999_999))
        );
        assert_eq!(parse_all(b"$-5\r\n"), Err(RespError::BulkTooLarge(-5)));
        assert_eq!(parse_all(b":12x\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse_all(b"?\r\n"), Err(RespError::UnknownType(b'?')));
        assert_eq!(parse_all(b"$1\r\nab\r\n"), Err(RespError::MissingCrlf));
        assert_eq!(
            parse_all(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"),
            Err(RespError::TooDeep)
        );
        let mut long = vec![b':'; 70 * 1024];
        long.push(b'1');
        assert_eq!(parse_all(&long), Err(RespError::BadNumber));
    }
}
