//! The io_uring floor: the same least-work WebSocket echo as `mio-floor`, on io_uring instead
//! of epoll, to measure what the kernel interface alone would change. It answers one question
//! for the design: would replacing `mio` (readiness + `read`/`write`/`accept4`/`epoll_ctl`
//! syscalls) by io_uring (completions, batched into one `io_uring_enter` per pass) bring the
//! issue-5 targets within reach?
//!
//! What a serious io_uring server does, and this one does:
//! - one ring, `SINGLE_ISSUER | DEFER_TASKRUN` (completion work runs in this thread when it
//!   asks for events, not in interrupts or workers), no SQPOLL (a kernel thread spinning on
//!   the other core would hide CPU from the measurement);
//! - multishot accept into direct (fixed) descriptors: no fd table, no `epoll_ctl`;
//! - multishot receive into a provided buffer ring: no read syscall and no buffer per idle
//!   connection;
//! - one send per connection per pass (the batching customws and mio-floor do), all sends of a
//!   pass submitted with the next wait in one `io_uring_enter`.
//!
//! The WebSocket half is mio-floor's own (`../floor_ws.rs`, included by both): it only
//! unmasks each frame's payload into the output buffer, with no UTF-8 check, no limits, no
//! control-frame semantics, no fragment handling, no timers. It is NOT a conforming or safe
//! server; it exists so that `benches/compare.sh` can show the kernel-interface share.
//!
//! Usage: uring-floor ADDR

use std::io::{self, ErrorKind};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, Fixed};
use io_uring::{cqueue, opcode, squeue, IoUring};
use slab::Slab;

#[path = "../../floor_ws.rs"]
mod floor_ws;

/// Completion kinds, in the top half of `user_data`; the bottom half is the slab key.
const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;
const CLOSE: u64 = 3;

/// The provided-buffer group every receive draws from.
const BUF_GROUP: u16 = 0;
const BUF_COUNT: u16 = 4096;
const BUF_SIZE: usize = 4096;
/// Direct-descriptor table size: the connections this process can hold.
const FIXED_FILES: u32 = 19_900;

fn user_data(kind: u64, key: usize) -> u64 {
    (kind << 32) | key as u64
}

struct Conn {
    /// Direct descriptor (index into the ring's file table).
    file: u32,
    upgraded: bool,
    input: Vec<u8>,
    /// Bytes produced this pass, not yet handed to the kernel.
    output: Vec<u8>,
    /// Bytes handed to the kernel by the send in flight; must not move until it completes.
    sending: Vec<u8>,
    sent: usize,
    send_in_flight: bool,
    recv_armed: bool,
    dead: bool,
    closing: bool,
    in_dirty_list: bool,
}

/// A provided-buffer ring: page-aligned entries shared with the kernel, plus the buffers.
struct BufRing {
    entries: *mut BufRingEntry,
    tail: u16,
    buffers: Vec<u8>,
}

impl BufRing {
    fn register(ring: &IoUring) -> io::Result<BufRing> {
        let bytes = BUF_COUNT as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked for failure below.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut ring_buf = BufRing {
            entries: mem.cast(),
            tail: 0,
            buffers: vec![0; BUF_COUNT as usize * BUF_SIZE],
        };
        // SAFETY: the mapping is page-aligned, BUF_COUNT entries long, and lives as long as
        // the process (never unmapped), so it outlives the registration.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(mem as u64, BUF_COUNT, BUF_GROUP, 0)?;
        }
        for bid in 0..BUF_COUNT {
            ring_buf.give_back(bid);
        }
        Ok(ring_buf)
    }

    fn buffer(&self, bid: u16) -> &[u8] {
        let at = bid as usize * BUF_SIZE;
        &self.buffers[at..at + BUF_SIZE]
    }

    /// Returns buffer `bid` to the kernel.
    fn give_back(&mut self, bid: u16) {
        let addr = self.buffer(bid).as_ptr() as u64;
        // SAFETY: `tail & (BUF_COUNT - 1)` indexes inside the mapping; the kernel only reads
        // entries between its head and our published tail, and this one is past the tail.
        unsafe {
            let entry = &mut *self.entries.add((self.tail & (BUF_COUNT - 1)) as usize);
            entry.set_addr(addr);
            entry.set_len(BUF_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field of entry 0 is the ring's shared tail (io_uring ABI); the
        // release store publishes the entry written above.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

fn push(ring: &mut IoUring, entry: squeue::Entry) {
    loop {
        // SAFETY: every buffer an entry points at (a connection's `sending`) stays alive and
        // unmoved until its completion arrives.
        if unsafe { ring.submission().push(&entry) }.is_ok() {
            return;
        }
        ring.submit().expect("io_uring_enter");
    }
}

/// (Re-)arms the listener's multishot accept into direct descriptors.
fn arm_accept(ring: &mut IoUring, listener: Fd) {
    push(
        ring,
        opcode::AcceptMulti::new(listener)
            .allocate_file_index(true)
            .build()
            .user_data(user_data(ACCEPT, 0)),
    );
}

/// (Re-)arms connection `key`'s multishot receive from the provided buffers.
fn arm_recv(ring: &mut IoUring, file: u32, key: usize) {
    push(
        ring,
        opcode::RecvMulti::new(Fixed(file), BUF_GROUP)
            .build()
            .user_data(user_data(RECV, key)),
    );
}

/// Sends `bytes`, which must stay alive and unmoved until the completion for `key` arrives.
fn send(ring: &mut IoUring, file: u32, bytes: &[u8], key: usize) {
    push(
        ring,
        opcode::Send::new(Fixed(file), bytes.as_ptr(), bytes.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(SEND, key)),
    );
}

/// Lists connection `key` for the end-of-pass send and close checks, once.
fn mark_dirty(c: &mut Conn, key: usize, dirty: &mut Vec<usize>) {
    if !c.in_dirty_list {
        c.in_dirty_list = true;
        dirty.push(key);
    }
}

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr)?;
    let lfd = listener.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt/listen on a socket we own; accepted sockets inherit NODELAY.
    unsafe {
        libc::setsockopt(
            lfd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        libc::listen(lfd, 4096);
    }

    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(32768)
        .build(4096)?;
    ring.submitter().register_files_sparse(FIXED_FILES)?;
    let mut bufs = BufRing::register(&ring)?;
    eprintln!("uring-floor listening on {}", listener.local_addr()?);

    let mut conns: Slab<Conn> = Slab::new();
    let mut dirty: Vec<usize> = Vec::new();
    let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(4096);
    arm_accept(&mut ring, Fd(lfd));

    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        completions.clear();
        completions.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, result, flags) in &completions {
            let key = (data & 0xffff_ffff) as usize;
            let more = cqueue::more(flags);
            match data >> 32 {
                ACCEPT => {
                    if result >= 0 {
                        let entry = conns.vacant_entry();
                        let key = entry.key();
                        entry.insert(Conn {
                            file: result as u32,
                            upgraded: false,
                            input: Vec::new(),
                            output: Vec::new(),
                            sending: Vec::new(),
                            sent: 0,
                            send_in_flight: false,
                            recv_armed: true,
                            dead: false,
                            closing: false,
                            in_dirty_list: false,
                        });
                        arm_recv(&mut ring, result as u32, key);
                    }
                    if !more {
                        arm_accept(&mut ring, Fd(lfd));
                    }
                }
                RECV => {
                    let c = &mut conns[key];
                    if result > 0 {
                        let bid = cqueue::buffer_select(flags).expect("buffer id");
                        if !c.dead {
                            c.input
                                .extend_from_slice(&bufs.buffer(bid)[..result as usize]);
                            c.dead = !floor_ws::serve(&mut c.upgraded, &mut c.input, &mut c.output);
                        }
                        bufs.give_back(bid);
                    } else if result != -libc::ENOBUFS {
                        c.dead = true; // EOF or error
                    }
                    if !more {
                        c.recv_armed = false;
                        if !c.dead {
                            c.recv_armed = true;
                            arm_recv(&mut ring, c.file, key);
                        }
                    } else if c.dead {
                        // Stop the multishot receive (a Close frame, a malformed upgrade).
                        push(
                            &mut ring,
                            opcode::AsyncCancel::new(user_data(RECV, key))
                                .build()
                                .user_data(user_data(CLOSE, u32::MAX as usize)),
                        );
                    }
                    mark_dirty(c, key, &mut dirty);
                }
                SEND => {
                    let c = &mut conns[key];
                    c.send_in_flight = false;
                    if result < 0 {
                        c.dead = true;
                    } else {
                        c.sent += result as usize;
                        if c.sent < c.sending.len() {
                            c.send_in_flight = true;
                            send(&mut ring, c.file, &c.sending[c.sent..], key);
                        } else {
                            c.sending.clear();
                        }
                    }
                    mark_dirty(c, key, &mut dirty);
                }
                _ => {
                    // CLOSE: the descriptor is gone; cancellations carry key u32::MAX.
                    if key != u32::MAX as usize {
                        conns.remove(key);
                    }
                }
            }
        }
        // One send per connection per pass; closes once nothing is in flight.
        for key in dirty.drain(..) {
            let c = &mut conns[key];
            c.in_dirty_list = false;
            if !c.dead && !c.send_in_flight && !c.output.is_empty() {
                std::mem::swap(&mut c.output, &mut c.sending);
                c.sent = 0;
                c.send_in_flight = true;
                send(&mut ring, c.file, &c.sending, key);
            }
            if c.dead && !c.closing && !c.recv_armed && !c.send_in_flight {
                c.closing = true;
                push(
                    &mut ring,
                    opcode::Close::new(Fixed(c.file))
                        .build()
                        .user_data(user_data(CLOSE, key)),
                );
            }
        }
    }
}
