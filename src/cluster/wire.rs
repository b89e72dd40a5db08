//! What gateway nodes say to each other through Redis pub/sub, as compact binary messages.
//!
//! ```text
//! message  = version:u8  kind:u8  node:str8  body
//! str8     = len:u8 bytes          bytes16 = len:u16 bytes          bytes32 = len:u32 bytes
//! Deliver  = to:u64 payload:rest            (on the recipient's channel; payload = envelope JSON)
//! Broadcast= payload:rest                   (on the shared channel)
//! Presence = incarnation:u64 seq:u64 n:u32 n×change    (deltas, on the shared channel)
//! Snapshot = incarnation:u64 seq:u64 n:u32 n×(user:u64 record)
//! Heartbeat= incarnation:u64 seq:u64 interval_ms:u32
//! SyncRequest = target:str8                 (empty = every node)
//! Bye      = incarnation:u64
//! change   = user:u64 op:u8 [record]        op 0 online, 1 update, 2 offline (no record)
//! record   = since_ms:u64 name:str8 status:str8 context:bytes32 (len 0 = none)
//! ```
//!
//! Integers are little-endian. Every decoder path is bounds-checked: a malformed message is
//! dropped and counted, never trusted.

use bytes::Bytes;

const VERSION: u8 = 1;

/// A user's public presence, as the gateway's replicas hold it.
pub use crate::gateway::presence::PresenceRecord as Record;

/// A presence change of one user on the sending node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The user's first connection on the node opened.
    Online(Record),
    /// The user changed its public status.
    Update(Record),
    /// The user's last connection on the node closed.
    Offline,
}

/// One node-to-node message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Deliver {
        to: u64,
        payload: Bytes,
    },
    Broadcast {
        payload: Bytes,
    },
    Presence {
        incarnation: u64,
        seq: u64,
        changes: Vec<(u64, Change)>,
    },
    Snapshot {
        incarnation: u64,
        seq: u64,
        users: Vec<(u64, Record)>,
    },
    Heartbeat {
        incarnation: u64,
        seq: u64,
        interval_ms: u32,
    },
    SyncRequest {
        target: Box<str>,
    },
    Bye {
        incarnation: u64,
    },
}

/// A decoded message with the id of the node that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub node: Box<str>,
    pub message: Message,
}

/// A message that does not follow the format (dropped and counted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("unknown presence op {0}")]
    Op(u8),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("trailing bytes")]
    Trailing,
}

const K_DELIVER: u8 = 1;
const K_BROADCAST: u8 = 2;
const K_PRESENCE: u8 = 3;
const K_SNAPSHOT: u8 = 4;
const K_HEARTBEAT: u8 = 5;
const K_SYNC: u8 = 6;
const K_BYE: u8 = 7;

/// Node ids, names and statuses are cut at 255 bytes on the wire (names are capped far below
/// that by the gateway; a cut never splits a UTF-8 character).
fn str8(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn head(out: &mut Vec<u8>, kind: u8, node: &str) {
    out.push(VERSION);
    out.push(kind);
    str8(out, node);
}

fn record(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(&r.since_ms.to_le_bytes());
    str8(out, &r.username);
    str8(out, &r.status);
    let ctx = r.context.as_deref().unwrap_or(&[]);
    out.extend_from_slice(&(ctx.len() as u32).to_le_bytes());
    out.extend_from_slice(ctx);
}

/// Appends a `Deliver` (the payload is the complete envelope JSON).
pub fn write_deliver(out: &mut Vec<u8>, node: &str, to: u64, payload: &[u8]) {
    head(out, K_DELIVER, node);
    out.extend_from_slice(&to.to_le_bytes());
    out.extend_from_slice(payload);
}

pub fn write_broadcast(out: &mut Vec<u8>, node: &str, payload: &[u8]) {
    head(out, K_BROADCAST, node);
    out.extend_from_slice(payload);
}

pub fn write_presence(
    out: &mut Vec<u8>,
    node: &str,
    incarnation: u64,
    seq: u64,
    changes: &[(u64, Change)],
) {
    head(out, K_PRESENCE, node);
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    for (user, change) in changes {
        out.extend_from_slice(&user.to_le_bytes());
        match change {
            Change::Online(r) => {
                out.push(0);
                record(out, r);
            }
            Change::Update(r) => {
                out.push(1);
                record(out, r);
            }
            Change::Offline => out.push(2),
        }
    }
}

pub fn write_snapshot<'a>(
    out: &mut Vec<u8>,
    node: &str,
    incarnation: u64,
    seq: u64,
    users: impl ExactSizeIterator<Item = (u64, &'a Record)>,
) {
    head(out, K_SNAPSHOT, node);
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(users.len() as u32).to_le_bytes());
    for (user, r) in users {
        out.extend_from_slice(&user.to_le_bytes());
        record(out, r);
    }
}

pub fn write_heartbeat(
    out: &mut Vec<u8>,
    node: &str,
    incarnation: u64,
    seq: u64,
    interval_ms: u32,
) {
    head(out, K_HEARTBEAT, node);
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&interval_ms.to_le_bytes());
}

pub fn write_sync_request(out: &mut Vec<u8>, node: &str, target: &str) {
    head(out, K_SYNC, node);
    str8(out, target);
}

pub fn write_bye(out: &mut Vec<u8>, node: &str, incarnation: u64) {
    head(out, K_BYE, node);
    out.extend_from_slice(&incarnation.to_le_bytes());
}

/// Appends any message (the inverse of [`decode`], used by tests and the fuzz target).
pub fn encode(out: &mut Vec<u8>, env: &Envelope) {
    let node = &*env.node;
    match &env.message {
        Message::Deliver { to, payload } => write_deliver(out, node, *to, payload),
        Message::Broadcast { payload } => write_broadcast(out, node, payload),
        Message::Presence {
            incarnation,
            seq,
            changes,
        } => write_presence(out, node, *incarnation, *seq, changes),
        Message::Snapshot {
            incarnation,
            seq,
            users,
        } => write_snapshot(
            out,
            node,
            *incarnation,
            *seq,
            users.iter().map(|(u, r)| (*u, r)),
        ),
        Message::Heartbeat {
            incarnation,
            seq,
            interval_ms,
        } => write_heartbeat(out, node, *incarnation, *seq, *interval_ms),
        Message::SyncRequest { target } => write_sync_request(out, node, target),
        Message::Bye { incarnation } => write_bye(out, node, *incarnation),
    }
}

/// A bounds-checked reader over one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn str8(&mut self) -> Result<Box<str>, WireError> {
        let n = self.u8()? as usize;
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(Box::from)
            .map_err(|_| WireError::Utf8)
    }

    fn record(&mut self) -> Result<Record, WireError> {
        let since_ms = self.u64()?;
        let username = self.str8()?;
        let status = self.str8()?;
        let n = self.u32()? as usize;
        let ctx = self.take(n)?;
        Ok(Record {
            since_ms,
            username,
            status,
            context: (!ctx.is_empty()).then(|| Box::from(ctx)),
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        s
    }

    /// A count that cannot claim more entries than the bytes left could hold (each entry is
    /// at least `min_entry` bytes), so a forged count cannot force a huge allocation.
    fn count(&mut self, min_entry: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        let left = self.buf.len().saturating_sub(self.pos);
        if n > left / min_entry.max(1) {
            return Err(WireError::Truncated);
        }
        Ok(n)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

/// Decodes one message. `payload` fields share the input buffer (no copy).
pub fn decode(buf: &Bytes) -> Result<Envelope, WireError> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = r.u8()?;
    let node = r.str8()?;
    let message = match kind {
        K_DELIVER => {
            let to = r.u64()?;
            let start = r.pos;
            r.rest();
            Message::Deliver {
                to,
                payload: buf.slice(start..),
            }
        }
        K_BROADCAST => {
            let start = r.pos;
            r.rest();
            Message::Broadcast {
                payload: buf.slice(start..),
            }
        }
        K_PRESENCE => {
            let incarnation = r.u64()?;
            let seq = r.u64()?;
            let n = r.count(9)?;
            let mut changes = Vec::with_capacity(n);
            for _ in 0..n {
                let user = r.u64()?;
                let change = match r.u8()? {
                    0 => Change::Online(r.record()?),
                    1 => Change::Update(r.record()?),
                    2 => Change::Offline,
                    op => return Err(WireError::Op(op)),
                };
                changes.push((user, change));
            }
            Message::Presence {
                incarnation,
                seq,
                changes,
            }
        }
        K_SNAPSHOT => {
            let incarnation = r.u64()?;
            let seq = r.u64()?;
            let n = r.count(22)?;
            let mut users = Vec::with_capacity(n);
            for _ in 0..n {
                let user = r.u64()?;
                users.push((user, r.record()?));
            }
            Message::Snapshot {
                incarnation,
                seq,
                users,
            }
        }
        K_HEARTBEAT => Message::Heartbeat {
            incarnation: r.u64()?,
            seq: r.u64()?,
            interval_ms: r.u32()?,
        },
        K_SYNC => Message::SyncRequest { target: r.str8()? },
        K_BYE => Message::Bye {
            incarnation: r.u64()?,
        },
        other => return Err(WireError::Kind(other)),
    };
    r.end()?;
    Ok(Envelope { node, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, ctx: Option<&[u8]>) -> Record {
        Record {
            since_ms: 1_700_000_000_123,
            username: name.into(),
            status: "online".into(),
            context: ctx.map(Box::from),
        }
    }

    fn roundtrip(bytes: Vec<u8>) -> Envelope {
        decode(&Bytes::from(bytes)).expect("decodes")
    }

    #[test]
    fn every_kind_round_trips() {
        let mut b = Vec::new();
        write_deliver(&mut b, "node-a", 42, br#"{"type":"data_event"}"#);
        assert_eq!(
            roundtrip(b).message,
            Message::Deliver {
                to: 42,
                payload: Bytes::from_static(br#"{"type":"data_event"}"#)
            }
        );
        let mut b = Vec::new();
        write_broadcast(&mut b, "n", b"{}");
        assert_eq!(
            roundtrip(b),
            Envelope {
                node: "n".into(),
                message: Message::Broadcast {
                    payload: Bytes::from_static(b"{}")
                }
            }
        );
        let changes = vec![
            (1, Change::Online(rec("alice", None))),
            (2, Change::Update(rec("bob", Some(br#"{"room":1}"#)))),
            (3, Change::Offline),
        ];
        let mut b = Vec::new();
        write_presence(&mut b, "n", 7, 9, &changes);
        assert_eq!(
            roundtrip(b).message,
            Message::Presence {
                incarnation: 7,
                seq: 9,
                changes
            }
        );
        let users = [(5u64, rec("é", None)), (6, rec("", Some(b"[1]")))];
        let mut b = Vec::new();
        write_snapshot(&mut b, "n", 7, 10, users.iter().map(|(u, r)| (*u, r)));
        assert_eq!(
            roundtrip(b).message,
            Message::Snapshot {
                incarnation: 7,
                seq: 10,
                users: users.to_vec()
            }
        );
        let mut b = Vec::new();
        write_heartbeat(&mut b, "n", 7, 10, 1000);
        assert_eq!(
            roundtrip(b).message,
            Message::Heartbeat {
                incarnation: 7,
                seq: 10,
                interval_ms: 1000
            }
        );
        let mut b = Vec::new();
        write_sync_request(&mut b, "n", "");
        assert_eq!(
            roundtrip(b).message,
            Message::SyncRequest { target: "".into() }
        );
        let mut b = Vec::new();
        write_bye(&mut b, "n", 3);
        assert_eq!(roundtrip(b).message, Message::Bye { incarnation: 3 });
    }

    #[test]
    fn long_strings_are_cut_on_a_char_boundary() {
        let name = "é".repeat(200); // 400 bytes
        let mut b = Vec::new();
        write_presence(&mut b, "n", 1, 1, &[(1, Change::Online(rec(&name, None)))]);
        let Message::Presence { changes, .. } = roundtrip(b).message else {
            panic!()
        };
        let Change::Online(r) = &changes[0].1 else {
            panic!()
        };
        assert_eq!(r.username.len(), 254);
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let mut b = Vec::new();
        write_snapshot(
            &mut b,
            "node",
            1,
            2,
            [(1u64, &rec("a", Some(b"{}")))].into_iter(),
        );
        for cut in 0..b.len() {
            assert!(
                decode(&Bytes::copy_from_slice(&b[..cut])).is_err(),
                "cut {cut}"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&Bytes::from(long)), Err(WireError::Trailing));
        assert_eq!(
            decode(&Bytes::from_static(&[9, 1, 0])),
            Err(WireError::Version(9))
        );
        assert_eq!(
            decode(&Bytes::from_static(&[1, 99, 0])),
            Err(WireError::Kind(99))
        );
        // A forged count far beyond the bytes present.
        let mut forged = Vec::new();
        head(&mut forged, K_PRESENCE, "n");
        forged.extend_from_slice(&[0; 16]);
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&Bytes::from(forged)), Err(WireError::Truncated));
    }
}
