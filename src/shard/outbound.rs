//! Per-connection outbound queue: frames waiting for the socket.
//!
//! Small frames built for one connection are appended to an owned tail buffer (one write for
//! many frames: batching is the lever, field notes: 16 small sends cost ~750 ns each, one
//! joined buffer ~50 ns each). Frames shared by many connections (broadcast, multicast) are
//! `Bytes` encoded once; a connection holds a reference-counted handle, never a copy, unless
//! the frame is small enough that copying it into the tail is cheaper than one more iovec and
//! two reference-count updates. A flush gathers up to `MAX_IOVECS` chunks into one `writev`.
//!
//! An empty queue holds no heap memory: idle connections are the headline memory figure.
//! Buffers are not freed either, though: the moment a queue empties (its flush completes) its
//! tail buffer goes back to the shard's [`BufPool`], and the next connection with output
//! takes it from there. Under load that turns a `malloc` + two `realloc`s + `free` per
//! connection per loop turn (callgrind: ~110 instructions per echoed message at 16 in flight)
//! into a pop and a push; the pool is bounded ([`POOL_MAX_BYTES`]) and emptied when the shard
//! goes idle ([`BufPool::trim`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// Chunks gathered into one `writev` call.
const MAX_IOVECS: usize = 64;
/// An owned tail buffer stops growing past this and a new chunk starts, so one chunk never
/// makes a large reallocation copy.
const OWNED_CHUNK_SOFT_CAP: usize = 64 * 1024;
/// Shared frames up to this size are copied into the tail instead of queued as their own
/// iovec (a copy this small costs less than the reference count's two atomic updates plus
/// the extra iovec in the kernel).
const SHARED_COPY_MAX: usize = 256;
/// Capacity of a fresh tail buffer. Small on purpose: a connection storm has hundreds of
/// 101 responses (~130 bytes) queued at once, and every buffer that was in use at the same
/// moment ends up in the pool (2 KiB here cost 62 bytes of RSS per connection at 10k). Under
/// load the pooled buffers grow to what the traffic needs once and keep that capacity.
const BUF_INITIAL: usize = 256;
/// Tail buffers that grew beyond this are freed rather than pooled.
const POOL_KEEP_MAX: usize = 16 * 1024;
/// Upper bound on the bytes a shard's pool keeps (capacity of all pooled buffers).
pub const POOL_MAX_BYTES: usize = 4 << 20;
/// Spare chunk queues kept (each a few hundred bytes).
const POOL_MAX_QUEUES: usize = 1024;

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Bytes),
}

impl Chunk {
    fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(b) => b,
        }
    }
}

/// Outcome of a flush attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything was written.
    Done,
    /// The socket is full; wait for a writable event.
    WouldBlock,
}

/// One shard's spare output buffers (see the module docs). Only its shard touches it.
#[derive(Debug, Default)]
pub struct BufPool {
    bufs: Vec<Vec<u8>>,
    /// Sum of the capacities in `bufs`.
    bytes: usize,
    #[allow(clippy::vec_box)] // the boxes move into `OutQueue::chunks` as they are
    queues: Vec<Box<VecDeque<Chunk>>>,
}

impl BufPool {
    /// An empty buffer with room for at least `additional` bytes.
    fn take(&mut self, additional: usize) -> Vec<u8> {
        match self.bufs.pop() {
            Some(mut v) => {
                self.bytes -= v.capacity();
                v.reserve(additional);
                v
            }
            None => Vec::with_capacity(additional.max(BUF_INITIAL)),
        }
    }

    /// Keeps `v` for reuse if it is not too big and the pool has room; else frees it.
    fn give(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if cap == 0 || cap > POOL_KEEP_MAX || self.bytes + cap > POOL_MAX_BYTES {
            return;
        }
        v.clear();
        self.bytes += cap;
        self.bufs.push(v);
    }

    #[allow(clippy::box_collection)] // see `OutQueue::chunks`
    fn take_queue(&mut self) -> Box<VecDeque<Chunk>> {
        self.queues
            .pop()
            .unwrap_or_else(|| Box::new(VecDeque::with_capacity(8)))
    }

    #[allow(clippy::box_collection)] // see `OutQueue::chunks`
    fn give_queue(&mut self, mut q: Box<VecDeque<Chunk>>) {
        if self.queues.len() < POOL_MAX_QUEUES && q.capacity() <= 4 * MAX_IOVECS {
            for chunk in q.drain(..) {
                if let Chunk::Owned(v) = chunk {
                    self.give(v);
                }
            }
            self.queues.push(q);
        }
    }

    /// Frees everything pooled (the shard is idle).
    pub fn trim(&mut self) {
        self.bufs = Vec::new();
        self.bytes = 0;
        self.queues = Vec::new();
    }

    /// Bytes of buffer capacity currently pooled.
    pub fn pooled_bytes(&self) -> usize {
        self.bytes
    }
}

/// Bytes waiting for one connection's socket: older chunks (sealed owned buffers, shared
/// frames) first, then the owned tail new frames are appended to.
///
/// 48 bytes, the same as a bare `VecDeque` queue: the chunk queue is boxed because most
/// connections never need one.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// Chunks written before `tail`; `None` unless a shared frame or a full tail is queued.
    /// Boxed on purpose: 8 bytes in every connection instead of a 32-byte `VecDeque`, for a
    /// queue most connections never use (idle memory per connection is a headline figure).
    #[allow(clippy::box_collection)]
    chunks: Option<Box<VecDeque<Chunk>>>,
    /// Owned buffer frames are appended to; no capacity while the queue is empty.
    tail: Vec<u8>,
    /// Bytes already written of the first unsent piece: the front chunk, or the tail when
    /// there are no chunks.
    head_written: usize,
    /// Unsent bytes in total (the slow-consumer limit applies to this).
    pending: usize,
}

impl OutQueue {
    /// Unsent bytes.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Appends a frame header and payload to the owned tail buffer.
    pub fn push_frame(&mut self, pool: &mut BufPool, header: &[u8], payload: &[u8]) {
        let tail = self.owned_tail(pool, header.len() + payload.len());
        tail.extend_from_slice(header);
        tail.extend_from_slice(payload);
        self.pending += header.len() + payload.len();
    }

    /// Appends already-encoded bytes (e.g. an HTTP response) to the owned tail buffer.
    pub fn push_bytes(&mut self, pool: &mut BufPool, bytes: &[u8]) {
        self.owned_tail(pool, bytes.len()).extend_from_slice(bytes);
        self.pending += bytes.len();
    }

    /// Appends a frame encoded once for many recipients (a handle, or a copy if it is tiny).
    pub fn push_shared(&mut self, pool: &mut BufPool, frame: &Bytes) {
        if frame.is_empty() {
            return;
        }
        if frame.len() <= SHARED_COPY_MAX {
            self.push_bytes(pool, frame);
            return;
        }
        self.seal_tail(pool);
        self.pending += frame.len();
        self.chunks
            .get_or_insert_with(|| pool.take_queue())
            .push_back(Chunk::Shared(frame.clone()));
    }

    /// Moves a non-empty tail behind the queued chunks, so something else can follow it.
    fn seal_tail(&mut self, pool: &mut BufPool) {
        if self.tail.is_empty() {
            return;
        }
        let tail = std::mem::take(&mut self.tail);
        self.chunks
            .get_or_insert_with(|| pool.take_queue())
            .push_back(Chunk::Owned(tail));
    }

    fn owned_tail(&mut self, pool: &mut BufPool, additional: usize) -> &mut Vec<u8> {
        if !self.tail.is_empty() && self.tail.len() + additional > OWNED_CHUNK_SOFT_CAP {
            self.seal_tail(pool);
        }
        if self.tail.capacity() == 0 {
            self.tail = pool.take(additional);
        }
        &mut self.tail
    }

    /// Drops everything queued and releases the memory (slow consumer, connection gone).
    /// Returns true when nothing had been partly written, i.e. the peer's stream is at a
    /// frame boundary and another frame (a Close) may still follow.
    pub fn clear(&mut self, pool: &mut BufPool) -> bool {
        let clean = self.head_written == 0;
        self.release(pool);
        self.pending = 0;
        clean
    }

    /// Hands the (emptied) buffers back to the pool.
    fn release(&mut self, pool: &mut BufPool) {
        if let Some(q) = self.chunks.take() {
            pool.give_queue(q);
        }
        pool.give(std::mem::take(&mut self.tail));
        self.head_written = 0;
    }

    /// Writes as much as the socket takes, with vectored writes, until done or `WouldBlock`.
    /// When done, the buffers go back to `pool`: an idle connection keeps no heap memory.
    pub fn flush<W: Write>(&mut self, pool: &mut BufPool, w: &mut W) -> io::Result<Flush> {
        while self.pending > 0 {
            let result = match self.chunks.as_deref() {
                Some(chunks) if !chunks.is_empty() => {
                    let mut iov: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                    let mut n = 0;
                    let pieces = chunks
                        .iter()
                        .map(Chunk::as_slice)
                        .chain(std::iter::once(&self.tail[..]));
                    for (i, s) in pieces.take(MAX_IOVECS).enumerate() {
                        let s = if i == 0 {
                            s.get(self.head_written..).unwrap_or_default()
                        } else {
                            s
                        };
                        if !s.is_empty() {
                            iov[n] = IoSlice::new(s);
                            n += 1;
                        }
                    }
                    if n == 1 {
                        w.write(&iov[0])
                    } else {
                        w.write_vectored(&iov[..n])
                    }
                }
                // One contiguous piece (the common case): `send`, not a one-element `writev`.
                // On a socket `writev` takes the VFS path (iovec import, fd position lock,
                // fsnotify) before reaching the same `sock_sendmsg`.
                _ => w.write(self.tail.get(self.head_written..).unwrap_or_default()),
            };
            let written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.consume(pool, written);
        }
        self.release(pool);
        Ok(Flush::Done)
    }

    fn consume(&mut self, pool: &mut BufPool, mut written: usize) {
        self.pending -= written;
        if let Some(chunks) = self.chunks.as_deref_mut() {
            while written > 0 {
                let Some(front) = chunks.front() else {
                    break;
                };
                let left = front.as_slice().len() - self.head_written;
                if written >= left {
                    written -= left;
                    self.head_written = 0;
                    if let Some(Chunk::Owned(v)) = chunks.pop_front() {
                        pool.give(v);
                    }
                } else {
                    self.head_written += written;
                    return;
                }
            }
        }
        // What is left was taken from the tail.
        self.head_written += written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `budget` bytes per call, then reports WouldBlock once.
    struct Trickle {
        out: Vec<u8>,
        budget: usize,
        calls: usize,
        block_every: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.block_every > 0 && self.calls % self.block_every == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut left = self.budget;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn mixed_chunks_arrive_in_order_through_partial_writes() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for round in 0..3 {
            for i in 0..200u32 {
                let payload = vec![i as u8; (i as usize * 37 + round * 1000) % 3000];
                if i % 3 == 0 {
                    q.push_shared(&mut pool, &Bytes::from(payload.clone()));
                } else if i % 7 == 0 {
                    // Large enough to seal the tail.
                    let big = vec![i as u8; OWNED_CHUNK_SOFT_CAP / 2 + 1];
                    q.push_bytes(&mut pool, &big);
                    expect.extend_from_slice(&big);
                } else {
                    q.push_frame(&mut pool, &[0x81, payload.len() as u8], &payload);
                    expect.extend_from_slice(&[0x81, payload.len() as u8]);
                }
                if i % 3 == 0 || i % 7 != 0 {
                    expect.extend_from_slice(&payload);
                }
            }
            assert_eq!(q.pending(), expect.len());
            let mut w = Trickle {
                out: Vec::new(),
                budget: 777 + round * 5000,
                calls: 0,
                block_every: 5,
            };
            // Frames keep arriving while the socket trickles.
            let mut extra = 0u8;
            while q.flush(&mut pool, &mut w).unwrap() == Flush::WouldBlock {
                if extra < 20 {
                    let payload = vec![extra; usize::from(extra) * 40];
                    if extra % 2 == 0 {
                        q.push_shared(&mut pool, &Bytes::from(payload.clone()));
                    } else {
                        q.push_bytes(&mut pool, &payload);
                    }
                    expect.extend_from_slice(&payload);
                    extra += 1;
                }
            }
            assert_eq!(w.out, expect);
            expect.clear();
            assert!(q.is_empty());
            assert_eq!(q.tail.capacity(), 0, "an empty queue holds no heap memory");
            assert!(q.chunks.is_none(), "an empty queue holds no chunk queue");
        }
        assert!(pool.pooled_bytes() > 0, "the buffers went back to the pool");
        assert!(pool.pooled_bytes() <= POOL_MAX_BYTES);
    }

    #[test]
    fn tail_buffers_are_reused_through_the_pool() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.push_frame(&mut pool, &[0x81, 3], b"abc");
        let first = q.tail.as_ptr();
        let mut w = Trickle {
            out: Vec::new(),
            budget: usize::MAX,
            calls: 0,
            block_every: 0,
        };
        assert_eq!(q.flush(&mut pool, &mut w).unwrap(), Flush::Done);
        assert_eq!(q.tail.capacity(), 0);
        assert_eq!(pool.bufs.len(), 1);
        q.push_frame(&mut pool, &[0x81, 3], b"def");
        assert_eq!(q.tail.as_ptr(), first, "the pooled buffer was taken again");
        assert!(pool.bufs.is_empty());
        assert_eq!(q.flush(&mut pool, &mut w).unwrap(), Flush::Done);
        assert_eq!(w.out, b"\x81\x03abc\x81\x03def");
        assert_eq!(w.calls, 2, "one write per flush");
        pool.trim();
        assert_eq!(pool.pooled_bytes(), 0);
        assert!(pool.bufs.is_empty());
    }

    #[test]
    fn pool_is_bounded_and_drops_big_buffers() {
        let mut pool = BufPool::default();
        pool.give(Vec::with_capacity(POOL_KEEP_MAX + 1));
        assert_eq!(pool.pooled_bytes(), 0);
        for _ in 0..(POOL_MAX_BYTES / POOL_KEEP_MAX + 10) {
            pool.give(Vec::with_capacity(POOL_KEEP_MAX));
        }
        assert!(pool.pooled_bytes() <= POOL_MAX_BYTES);
        assert_eq!(pool.bufs.len(), POOL_MAX_BYTES / POOL_KEEP_MAX);
    }

    #[test]
    fn small_shared_frames_are_copied_large_ones_shared() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.push_shared(&mut pool, &Bytes::from_static(b"small"));
        assert!(q.chunks.is_none());
        let big = Bytes::from(vec![7u8; SHARED_COPY_MAX + 1]);
        q.push_shared(&mut pool, &big);
        let chunks = q.chunks.as_deref().unwrap();
        assert_eq!(
            chunks.len(),
            2,
            "the tail was sealed before the shared frame"
        );
        assert!(matches!(chunks.back(), Some(Chunk::Shared(b)) if b.as_ptr() == big.as_ptr()));
        assert_eq!(q.pending(), 5 + big.len());
    }

    #[test]
    fn clear_releases_memory() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.push_bytes(&mut pool, &[1; 10_000]);
        q.push_shared(&mut pool, &Bytes::from(vec![2; 1000]));
        assert!(q.clear(&mut pool));
        assert_eq!(q.pending(), 0);
        assert_eq!(q.tail.capacity(), 0);
        assert!(q.chunks.is_none());
    }

    #[test]
    fn queue_stays_small() {
        assert!(std::mem::size_of::<OutQueue>() <= 48);
    }
}
