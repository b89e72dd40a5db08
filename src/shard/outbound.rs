//! Per-connection outbound queue: frames waiting for the socket.
//!
//! Small frames built for one connection are appended to an owned tail buffer (one write for
//! many frames: batching is the lever, field notes: 16 small sends cost ~750 ns each, one
//! joined buffer ~50 ns each). Frames shared by many connections (broadcast, multicast) are
//! `Bytes` encoded once; a connection holds a reference-counted handle, never a copy, unless
//! the frame is small enough that copying it into the tail is cheaper than one more iovec and
//! two reference-count updates. A flush gathers up to `MAX_IOVECS` chunks into one `writev`.
//!
//! An idle connection should be its slab slot and the kernel's socket, nothing more, so an
//! empty [`OutQueue`] is one null pointer: everything a queue with output needs (chunks, tail
//! buffer, write position, byte count) lives in one boxed `QueueState`. Nor is that box freed
//! when the queue empties: the moment its flush completes, the whole state, with its tail
//! buffer's capacity, goes back to the shard's [`BufPool`], and the next connection with
//! output takes it from there. Under load that turns a `malloc` + two `realloc`s + `free`
//! per connection per loop turn (callgrind: ~110 instructions per echoed message at 16 in
//! flight) into a pop and a push; the pool is bounded ([`POOL_MAX_BYTES`]) and emptied when
//! the shard goes idle ([`BufPool::trim`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::mem;

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
/// Upper bound on the heap bytes a shard's pool keeps (pooled states with their buffers, and
/// spare buffers).
pub const POOL_MAX_BYTES: usize = 4 << 20;
/// Chunk deques that grew beyond this many slots are freed rather than pooled.
const POOL_KEEP_MAX_CHUNKS: usize = 4 * MAX_IOVECS;

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

/// One shard's spare output memory (see the module docs). Only its shard touches it.
#[derive(Debug, Default)]
pub struct BufPool {
    /// Emptied queue states, each keeping its tail buffer's capacity: what a queue takes when
    /// it gets output (the hot path: one pop, no allocation).
    #[allow(clippy::vec_box)] // the boxes move into `OutQueue::state` as they are
    states: Vec<Box<QueueState>>,
    /// Spare buffers: tails that were sealed into chunks and have been written. A queue whose
    /// tail was sealed takes its next tail from here.
    bufs: Vec<Vec<u8>>,
    /// Heap bytes held by `states` and `bufs`.
    bytes: usize,
}

impl BufPool {
    /// An emptied queue state (pooled, or a new one).
    fn take_state(&mut self) -> Box<QueueState> {
        match self.states.pop() {
            Some(state) => {
                self.bytes -= state.heap_bytes();
                state
            }
            None => Box::default(),
        }
    }

    /// Empties `state` (dropping whatever is still queued) and keeps it for reuse, minus any
    /// buffer grown too big, if the pool has room; else frees it. Its sealed tails become
    /// spare buffers.
    fn give_state(&mut self, mut state: Box<QueueState>) {
        if !state.chunks.is_empty() {
            for chunk in state.chunks.drain(..) {
                if let Chunk::Owned(v) = chunk {
                    self.give_buf(v);
                }
            }
        }
        if state.chunks.capacity() > POOL_KEEP_MAX_CHUNKS {
            state.chunks = VecDeque::new();
        }
        if state.tail.capacity() > POOL_KEEP_MAX {
            state.tail = Vec::new();
        }
        state.tail.clear();
        state.head_written = 0;
        state.pending = 0;
        let size = state.heap_bytes();
        if self.bytes + size <= POOL_MAX_BYTES {
            self.bytes += size;
            self.states.push(state);
        }
    }

    /// An empty buffer with room for at least `additional` bytes.
    fn take_buf(&mut self, additional: usize) -> Vec<u8> {
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
    fn give_buf(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if cap == 0 || cap > POOL_KEEP_MAX || self.bytes + cap > POOL_MAX_BYTES {
            return;
        }
        v.clear();
        self.bytes += cap;
        self.bufs.push(v);
    }

    /// Frees everything pooled (the shard is idle).
    pub fn trim(&mut self) {
        self.states = Vec::new();
        self.bufs = Vec::new();
        self.bytes = 0;
    }

    /// Heap bytes currently pooled.
    pub fn pooled_bytes(&self) -> usize {
        self.bytes
    }
}

/// Bytes waiting for one connection's socket: older chunks (sealed owned buffers, shared
/// frames) first, then the owned tail new frames are appended to.
///
/// One pointer, and no heap memory while nothing is queued: the usual case, and idle memory
/// per connection is a headline figure.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// Present exactly while bytes are queued (`pending > 0`): taken from the pool by the
    /// first push, handed back by the flush (or `clear`) that empties the queue.
    state: Option<Box<QueueState>>,
}

/// A non-empty queue's contents. Pooled whole when the queue empties, so its buffers'
/// capacity serves the next connection with output.
#[derive(Debug, Default)]
struct QueueState {
    /// Chunks written before `tail`; empty unless a shared frame or a full tail is queued.
    chunks: VecDeque<Chunk>,
    /// Owned buffer frames are appended to.
    tail: Vec<u8>,
    /// Bytes already written of the first unsent piece: the front chunk, or the tail when
    /// there are no chunks.
    head_written: usize,
    /// Unsent bytes in total (the slow-consumer limit applies to this).
    pending: usize,
}

impl QueueState {
    /// Heap bytes this state holds: the box and its buffers' capacity (queued chunks' own
    /// buffers aside).
    fn heap_bytes(&self) -> usize {
        mem::size_of::<Self>()
            + self.tail.capacity()
            + self.chunks.capacity() * mem::size_of::<Chunk>()
    }

    /// The tail to append `additional` bytes to; a tail that would grow past
    /// [`OWNED_CHUNK_SOFT_CAP`] is sealed first and a new one started.
    fn owned_tail(&mut self, pool: &mut BufPool, additional: usize) -> &mut Vec<u8> {
        if !self.tail.is_empty() && self.tail.len() + additional > OWNED_CHUNK_SOFT_CAP {
            self.seal_tail();
        }
        if self.tail.capacity() == 0 {
            self.tail = pool.take_buf(additional);
        }
        &mut self.tail
    }

    /// Moves a non-empty tail behind the queued chunks, so something else can follow it.
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let sealed = mem::take(&mut self.tail);
            self.chunks.push_back(Chunk::Owned(sealed));
        }
    }

    /// Marks `written` bytes as sent: written chunks are popped (their buffers to `pool`).
    fn consume(&mut self, pool: &mut BufPool, mut written: usize) {
        self.pending -= written;
        if self.chunks.is_empty() {
            // Only the tail is queued (the common case).
            self.head_written += written;
            return;
        }
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.as_slice().len() - self.head_written;
            if written >= left {
                written -= left;
                self.head_written = 0;
                if let Some(Chunk::Owned(v)) = self.chunks.pop_front() {
                    pool.give_buf(v);
                }
            } else {
                self.head_written += written;
                return;
            }
        }
        // What is left was taken from the tail.
        self.head_written += written;
    }

    /// One write: `send` for one contiguous piece, `writev` for several.
    fn write_to<W: Write>(&self, w: &mut W) -> io::Result<usize> {
        if self.chunks.is_empty() {
            // One contiguous piece (the common case): `send`, not a one-element `writev`.
            // On a socket `writev` takes the VFS path (iovec import, fd position lock,
            // fsnotify) before reaching the same `sock_sendmsg`.
            return w.write(self.tail.get(self.head_written..).unwrap_or_default());
        }
        let mut iov: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
        let mut n = 0;
        let pieces = self
            .chunks
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
}

impl OutQueue {
    /// Unsent bytes.
    pub fn pending(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.pending)
    }

    /// Nothing queued (and no heap memory held).
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
    }

    /// The state, taken from the pool if the queue was empty. Callers queue at least one
    /// byte, keeping `state` present only while `pending > 0`.
    fn state(&mut self, pool: &mut BufPool) -> &mut QueueState {
        self.state.get_or_insert_with(|| pool.take_state())
    }

    /// Appends a frame header and payload to the owned tail buffer.
    pub fn push_frame(&mut self, pool: &mut BufPool, header: &[u8], payload: &[u8]) {
        let len = header.len() + payload.len();
        if len == 0 {
            return;
        }
        let state = self.state(pool);
        let tail = state.owned_tail(pool, len);
        tail.extend_from_slice(header);
        tail.extend_from_slice(payload);
        state.pending += len;
    }

    /// Appends already-encoded bytes (e.g. an HTTP response) to the owned tail buffer.
    pub fn push_bytes(&mut self, pool: &mut BufPool, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let state = self.state(pool);
        state.owned_tail(pool, bytes.len()).extend_from_slice(bytes);
        state.pending += bytes.len();
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
        let state = self.state(pool);
        state.seal_tail();
        state.chunks.push_back(Chunk::Shared(frame.clone()));
        state.pending += frame.len();
    }

    /// Drops everything queued and releases the memory (slow consumer, connection gone).
    /// Returns true when nothing had been partly written, i.e. the peer's stream is at a
    /// frame boundary and another frame (a Close) may still follow.
    pub fn clear(&mut self, pool: &mut BufPool) -> bool {
        let clean = self.state.as_ref().is_none_or(|s| s.head_written == 0);
        self.release(pool);
        clean
    }

    /// Hands the state back to the pool, emptied: the queue holds no heap memory again.
    fn release(&mut self, pool: &mut BufPool) {
        if let Some(state) = self.state.take() {
            pool.give_state(state);
        }
    }

    /// Writes as much as the socket takes, with vectored writes, until done or `WouldBlock`.
    /// When done, the state goes back to `pool`: an idle connection keeps no heap memory.
    pub fn flush<W: Write>(&mut self, pool: &mut BufPool, w: &mut W) -> io::Result<Flush> {
        if let Some(state) = self.state.as_deref_mut() {
            while state.pending > 0 {
                let written = match state.write_to(w) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Flush::WouldBlock)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                state.consume(pool, written);
            }
            self.release(pool);
        }
        Ok(Flush::Done)
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

    impl Trickle {
        /// A writer taking at most `budget` bytes per call, refusing every
        /// `block_every`-th call with `WouldBlock` (0: never).
        fn new(budget: usize, block_every: usize) -> Self {
            Trickle {
                out: Vec::new(),
                budget,
                calls: 0,
                block_every,
            }
        }
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
            let mut w = Trickle::new(777 + round * 5000, 5);
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
            assert!(q.state.is_none(), "an empty queue holds no heap memory");
        }
        assert!(pool.pooled_bytes() > 0, "the buffers went back to the pool");
        assert!(pool.pooled_bytes() <= POOL_MAX_BYTES);
    }

    #[test]
    fn an_emptied_queue_holds_no_box_and_the_next_push_reuses_the_pooled_one() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.push_frame(&mut pool, &[0x81, 3], b"abc");
        let state = q.state.as_deref().expect("a queue with output has a state");
        let (first_state, first_tail) = (state as *const QueueState, state.tail.as_ptr());
        let footprint = state.heap_bytes();
        let mut w = Trickle::new(usize::MAX, 0);
        assert_eq!(q.flush(&mut pool, &mut w).unwrap(), Flush::Done);
        assert!(q.state.is_none(), "the flushed connection holds no box");
        assert_eq!(pool.states.len(), 1, "the box went back to the pool");
        assert_eq!(pool.pooled_bytes(), footprint);

        q.push_frame(&mut pool, &[0x81, 3], b"def");
        let state = q.state.as_deref().unwrap();
        assert!(
            std::ptr::eq(state, first_state),
            "the pooled box was taken again"
        );
        assert_eq!(state.tail.as_ptr(), first_tail, "with its tail buffer");
        assert!(pool.states.is_empty() && pool.bufs.is_empty());
        assert_eq!(
            pool.pooled_bytes(),
            0,
            "nothing new was allocated or pooled"
        );
        assert_eq!(q.flush(&mut pool, &mut w).unwrap(), Flush::Done);
        assert_eq!(w.out, b"\x81\x03abc\x81\x03def");
        assert_eq!(w.calls, 2, "one write per flush");
        assert_eq!(pool.states.len(), 1);
        assert_eq!(pool.pooled_bytes(), footprint);

        pool.trim();
        assert_eq!(pool.pooled_bytes(), 0);
        assert!(pool.states.is_empty());
    }

    #[test]
    fn sealed_tails_come_back_as_spare_buffers() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        let big = Bytes::from(vec![7u8; SHARED_COPY_MAX + 1]);
        q.push_bytes(&mut pool, b"ack");
        q.push_shared(&mut pool, &big);
        q.push_bytes(&mut pool, b"ack");
        let mut w = Trickle::new(usize::MAX, 0);
        assert_eq!(q.flush(&mut pool, &mut w).unwrap(), Flush::Done);
        assert_eq!(w.calls, 1, "three pieces, one writev");
        assert_eq!(w.out.len(), 6 + big.len());
        assert_eq!((pool.states.len(), pool.bufs.len()), (1, 1));
        // The next seal takes the spare buffer instead of allocating.
        let spare = pool.bufs[0].as_ptr();
        q.push_bytes(&mut pool, b"ack");
        q.push_shared(&mut pool, &big);
        q.push_bytes(&mut pool, b"ack");
        assert_eq!(q.state.as_deref().unwrap().tail.as_ptr(), spare);
        assert!(pool.bufs.is_empty());
    }

    #[test]
    fn pool_is_bounded_and_drops_big_buffers() {
        let mut pool = BufPool::default();
        pool.give_buf(Vec::with_capacity(POOL_KEEP_MAX + 1));
        assert_eq!(pool.pooled_bytes(), 0);
        for _ in 0..(POOL_MAX_BYTES / POOL_KEEP_MAX + 10) {
            pool.give_buf(Vec::with_capacity(POOL_KEEP_MAX));
        }
        assert!(pool.pooled_bytes() <= POOL_MAX_BYTES);
        assert_eq!(pool.bufs.len(), POOL_MAX_BYTES / POOL_KEEP_MAX);

        // States: a grown tail is freed, the box kept; the total stays bounded.
        let mut pool = BufPool::default();
        let mut state = Box::<QueueState>::default();
        state.tail = Vec::with_capacity(POOL_KEEP_MAX + 1);
        pool.give_state(state);
        assert_eq!(pool.states[0].tail.capacity(), 0);
        assert_eq!(pool.pooled_bytes(), std::mem::size_of::<QueueState>());
        for _ in 0..(POOL_MAX_BYTES / POOL_KEEP_MAX + 10) {
            let mut state = Box::<QueueState>::default();
            state.tail = Vec::with_capacity(POOL_KEEP_MAX);
            pool.give_state(state);
        }
        assert!(pool.pooled_bytes() <= POOL_MAX_BYTES);
        assert!(pool.states.len() < POOL_MAX_BYTES / POOL_KEEP_MAX + 1);
    }

    #[test]
    fn small_shared_frames_are_copied_large_ones_shared() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.push_shared(&mut pool, &Bytes::from_static(b"small"));
        assert!(q.state.as_deref().unwrap().chunks.is_empty());
        let big = Bytes::from(vec![7u8; SHARED_COPY_MAX + 1]);
        q.push_shared(&mut pool, &big);
        let chunks = &q.state.as_deref().unwrap().chunks;
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
        assert!(q.is_empty());
        assert!(q.state.is_none());
        assert!(pool.pooled_bytes() > 0, "the state went back to the pool");

        // Cleared in the middle of a frame: the peer's stream is not at a frame boundary.
        q.push_bytes(&mut pool, &[1; 10_000]);
        let mut w = Trickle::new(100, 2);
        assert_eq!(q.flush(&mut pool, &mut w).unwrap(), Flush::WouldBlock);
        assert_eq!(q.pending(), 10_000 - 100);
        assert!(!q.clear(&mut pool));
        assert!(q.state.is_none());
        assert!(q.clear(&mut pool), "an empty queue is at a frame boundary");
    }

    #[test]
    fn empty_pushes_queue_nothing() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.push_bytes(&mut pool, &[]);
        q.push_frame(&mut pool, &[], &[]);
        q.push_shared(&mut pool, &Bytes::new());
        assert!(q.state.is_none(), "no state without queued bytes");
    }

    #[test]
    fn queue_stays_small() {
        // One pointer: an idle connection pays nothing else for its output queue.
        assert_eq!(std::mem::size_of::<OutQueue>(), 8);
    }
}
