//! One load-generating thread: a mio event loop over its share of the connections.
//!
//! Each connection keeps up to `in_flight` messages outstanding and appends every new frame
//! to one write buffer, so a burst costs one `write`. Reads go through one per-thread scratch
//! buffer; a connection keeps only the unparsed tail, so 19k idle connections cost little
//! client memory.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use customws::proto::frame::{parse_header, OpCode};
use customws::proto::mask::apply_mask;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

use crate::{Mode, Phase, Plan, Shared};

/// Largest server frame accepted; anything bigger is a protocol error for this tool.
const MAX_FRAME: u64 = 16 << 20;
const SCRATCH: usize = 256 * 1024;
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What a connection does once open.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends text frames and times their echoes.
    Echo,
    /// Sends `data_request`s to random other users and receives theirs.
    Peer,
    /// Sends untargeted `data_request`s (broadcasts).
    Publisher,
    /// Only receives.
    Subscriber,
    /// Holds the connection open.
    Idle,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    /// TCP connect and handshake request in progress.
    Upgrading,
    Open,
    Closed,
}

/// One connection to create: its user id (for the token) and its role.
#[derive(Clone, Debug)]
pub struct ConnSpec {
    /// Index over all connections (spreads source addresses).
    pub index: usize,
    pub user: u64,
    pub role: Role,
}

struct Conn {
    stream: Option<TcpStream>,
    request: Vec<u8>,
    state: State,
    role: Role,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    outstanding: u32,
    sent_at: VecDeque<u64>,
    started_ns: u64,
    index: usize,
}

/// Per-thread counts; `window_*` only while [`Phase::Measure`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub sent: u64,
    pub received: u64,
    pub acked: u64,
    pub errors: u64,
    pub other: u64,
    pub window_sent: u64,
    pub window_received: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub closed_by_server: u64,
}

/// What a thread hands back.
pub struct Outcome {
    pub counts: Counts,
    pub latency: Histogram<u64>,
    pub handshake: Histogram<u64>,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

struct Worker<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    conns: Vec<Conn>,
    poll: Poll,
    counts: Counts,
    /// Counts already added to the shared totals.
    published: Counts,
    latency: Histogram<u64>,
    handshake: Histogram<u64>,
    rng: u64,
    seq: u64,
    next_to_connect: usize,
    upgrading: usize,
    /// Paced sending: messages this thread may still send (refilled from `--rate`).
    budget: f64,
    last_refill: Instant,
    scratch: Vec<u8>,
}

/// Runs one thread's connections through every phase until [`Phase::Stop`].
pub fn run(plan: &Plan, shared: &Shared, specs: Vec<ConnSpec>, seed: u64) -> io::Result<Outcome> {
    let poll = Poll::new()?;
    let conns = specs
        .iter()
        .map(|s| Conn {
            stream: None,
            request: upgrade_request(plan, s.user, plan.target_of(s.index)),
            state: State::Upgrading,
            role: s.role,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            outstanding: 0,
            sent_at: VecDeque::new(),
            started_ns: 0,
            index: s.index,
        })
        .collect();
    let mut w = Worker {
        plan,
        shared,
        conns,
        poll,
        counts: Counts::default(),
        published: Counts::default(),
        latency: new_histogram(),
        handshake: new_histogram(),
        rng: seed | 1,
        seq: 0,
        next_to_connect: 0,
        upgrading: 0,
        budget: 0.0,
        last_refill: Instant::now(),
        scratch: vec![0u8; SCRATCH],
    };
    shared.ready.fetch_add(1, Ordering::SeqCst);
    w.event_loop()?;
    Ok(Outcome {
        counts: w.counts,
        latency: w.latency,
        handshake: w.handshake,
    })
}

impl Worker<'_> {
    fn event_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_phase = Phase::Prepare;
        loop {
            let phase = self.shared.phase();
            if phase == Phase::Stop {
                break;
            }
            if phase >= Phase::Connect {
                self.start_connects()?;
            }
            if phase.may_send() && !last_phase.may_send() {
                self.last_refill = Instant::now();
                self.budget = 0.0;
            }
            if phase.may_send() {
                self.refill_budget();
                self.kick_all(phase);
            }
            last_phase = phase;
            let timeout = if self.plan.rate > 0.0 {
                Duration::from_micros(500)
            } else {
                Duration::from_millis(5)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                let i = ev.token().0;
                self.on_event(i, ev.is_readable() || ev.is_read_closed(), phase);
            }
            self.publish();
        }
        // Close politely enough: dropping the sockets sends FIN.
        for c in &mut self.conns {
            c.stream = None;
        }
        self.publish();
        Ok(())
    }

    /// Opens connections up to the handshake concurrency limit.
    fn start_connects(&mut self) -> io::Result<()> {
        while self.next_to_connect < self.conns.len()
            && self.upgrading < self.plan.handshake_concurrency
        {
            let i = self.next_to_connect;
            self.next_to_connect += 1;
            match connect(self.plan, self.conns[i].index) {
                Ok(mut stream) => {
                    self.poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let c = &mut self.conns[i];
                    c.stream = Some(stream);
                    c.started_ns = self.shared.now_ns();
                    c.wbuf = std::mem::take(&mut c.request);
                    self.upgrading += 1;
                }
                Err(e) => {
                    if self.counts.connect_failed == 0 {
                        eprintln!("connect failed: {e}");
                    }
                    self.counts.connect_failed += 1;
                    self.conns[i].state = State::Closed;
                }
            }
        }
        Ok(())
    }

    fn on_event(&mut self, i: usize, readable: bool, phase: Phase) {
        if self.conns.get(i).is_none_or(|c| c.state == State::Closed) {
            return;
        }
        if readable {
            self.read(i);
        }
        if phase.may_send() {
            self.fill(i, phase);
        }
        self.flush(i);
    }

    fn read(&mut self, i: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(stream) = self.conns[i].stream.as_mut() {
            match stream.read(&mut scratch) {
                Ok(0) => {
                    self.close(i, true);
                    break;
                }
                Ok(n) => {
                    let data = scratch.get(..n).unwrap_or_default();
                    if !self.ingest(i, data) {
                        self.close(i, false);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(i, true);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Feeds freshly read bytes to connection `i`; false on a protocol failure.
    fn ingest(&mut self, i: usize, data: &[u8]) -> bool {
        let mut rbuf = std::mem::take(&mut self.conns[i].rbuf);
        let ok = if rbuf.is_empty() {
            let used = self.process(i, data);
            if let Some(used) = used {
                rbuf.extend_from_slice(data.get(used..).unwrap_or_default());
            }
            used.is_some()
        } else {
            rbuf.extend_from_slice(data);
            let used = self.process(i, &rbuf);
            if let Some(used) = used {
                rbuf.drain(..used);
            }
            used.is_some()
        };
        if rbuf.capacity() > 64 * 1024 && rbuf.len() < 1024 {
            rbuf.shrink_to(1024);
        }
        self.conns[i].rbuf = rbuf;
        ok
    }

    /// Consumes complete units (response head, frames) from `data`; returns bytes used.
    fn process(&mut self, i: usize, data: &[u8]) -> Option<usize> {
        let mut pos = 0;
        if self.conns[i].state == State::Upgrading {
            let Some(end) = find(data, b"\r\n\r\n") else {
                return (data.len() <= MAX_RESPONSE_HEAD).then_some(0);
            };
            if !data.starts_with(b"HTTP/1.1 101") {
                if self.counts.connect_failed == 0 {
                    let head = String::from_utf8_lossy(data.get(..end).unwrap_or_default());
                    eprintln!("upgrade refused: {}", head.lines().next().unwrap_or(""));
                }
                return None;
            }
            let c = &mut self.conns[i];
            c.state = State::Open;
            c.wbuf = Vec::new();
            c.wpos = 0;
            self.upgrading = self.upgrading.saturating_sub(1);
            self.counts.connected += 1;
            let took = self.shared.now_ns().saturating_sub(c.started_ns);
            let _ = self.handshake.record(took.max(1));
            pos = end + 4;
        }
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let header = match parse_header(rest) {
                Ok(Some(h)) => h,
                Ok(None) => return Some(pos),
                Err(_) => return None,
            };
            if header.payload_len > MAX_FRAME {
                return None;
            }
            // Checked against MAX_FRAME just above, so this fits in usize.
            let total = header.header_len + header.payload_len as usize;
            let Some(payload) = rest.get(header.header_len..total) else {
                return Some(pos);
            };
            match header.opcode {
                OpCode::Text | OpCode::Binary => self.on_message(i, payload),
                OpCode::Ping => {
                    let mask = self.next_mask();
                    push_frame(&mut self.conns[i].wbuf, OpCode::Pong, payload, mask);
                }
                OpCode::Close => {
                    self.counts.closed_by_server += 1;
                    return None;
                }
                OpCode::Pong | OpCode::Continuation => {}
            }
            pos += total;
        }
    }

    fn on_message(&mut self, i: usize, payload: &[u8]) {
        let measuring = self.shared.phase() == Phase::Measure;
        let now = self.shared.now_ns();
        let c = &mut self.conns[i];
        match c.role {
            Role::Echo => {
                c.outstanding = c.outstanding.saturating_sub(1);
                self.counts.received += 1;
                if let Some(sent) = c.sent_at.pop_front() {
                    if measuring {
                        self.counts.window_received += 1;
                        let _ = self.latency.record(now.saturating_sub(sent).max(1));
                    }
                }
            }
            _ => {
                if find(payload, b"\"data_event\"").is_some() {
                    self.counts.received += 1;
                    if measuring {
                        self.counts.window_received += 1;
                        if let Some(sent) = bench_timestamp(payload) {
                            let _ = self.latency.record(now.saturating_sub(sent).max(1));
                        }
                    }
                } else if find(payload, b"\"server_ack\"").is_some() {
                    self.counts.acked += 1;
                    c.outstanding = c.outstanding.saturating_sub(1);
                } else if find(payload, b"\"error_notification\"").is_some() {
                    if self.counts.errors == 0 {
                        eprintln!("server error: {}", String::from_utf8_lossy(payload));
                    }
                    self.counts.errors += 1;
                    c.outstanding = c.outstanding.saturating_sub(1);
                } else {
                    self.counts.other += 1;
                }
            }
        }
    }

    fn refill_budget(&mut self) {
        if self.plan.rate <= 0.0 {
            return;
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last_refill).as_secs_f64();
        self.last_refill = now;
        let per_thread = self.plan.rate / self.plan.threads as f64;
        // At most 10 ms of backlog, so a stall does not turn into a burst.
        self.budget = (self.budget + dt * per_thread).min(per_thread * 0.01 + 1.0);
    }

    fn kick_all(&mut self, phase: Phase) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.state != State::Open
                || !matches!(c.role, Role::Echo | Role::Peer | Role::Publisher)
                || c.outstanding >= self.plan.in_flight
            {
                continue;
            }
            if self.plan.rate > 0.0 && self.budget < 1.0 {
                break;
            }
            self.fill(i, phase);
            self.flush(i);
        }
    }

    /// Tops connection `i`'s window up with new messages (appended, not yet written).
    fn fill(&mut self, i: usize, phase: Phase) {
        if !phase.may_send() || self.conns[i].state != State::Open {
            return;
        }
        let role = self.conns[i].role;
        if !matches!(role, Role::Echo | Role::Peer | Role::Publisher) {
            return;
        }
        let measuring = phase == Phase::Measure;
        while self.conns[i].outstanding < self.plan.in_flight {
            if self.plan.rate > 0.0 {
                if self.budget < 1.0 {
                    break;
                }
                self.budget -= 1.0;
            }
            let now = self.shared.now_ns();
            let mask = self.next_mask();
            match role {
                Role::Echo => {
                    let c = &mut self.conns[i];
                    push_frame(&mut c.wbuf, OpCode::Text, &self.plan.echo_payload, mask);
                    c.sent_at.push_back(now);
                }
                Role::Peer => {
                    let target = self.random_other_user(i);
                    if measuring && self.crosses_targets(i, target) {
                        self.shared.cross_target.fetch_add(1, Ordering::Relaxed);
                    }
                    let body = self.request_json(Some(target), now);
                    push_frame(&mut self.conns[i].wbuf, OpCode::Text, &body, mask);
                }
                _ => {
                    let body = self.request_json(None, now);
                    push_frame(&mut self.conns[i].wbuf, OpCode::Text, &body, mask);
                }
            }
            self.conns[i].outstanding += 1;
            self.counts.sent += 1;
            if measuring {
                self.counts.window_sent += 1;
            }
        }
    }

    fn request_json(&mut self, target: Option<u64>, now: u64) -> Vec<u8> {
        self.seq += 1;
        let mut b = Vec::with_capacity(96 + self.plan.pad.len());
        b.extend_from_slice(b"{\"pid\":\"");
        b.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        b.extend_from_slice(b"\",\"type\":\"data_request\",");
        if let Some(t) = target {
            b.extend_from_slice(b"\"targetUserId\":");
            b.extend_from_slice(itoa::Buffer::new().format(t).as_bytes());
            b.push(b',');
        }
        b.extend_from_slice(b"\"payload\":{\"bench_t\":");
        b.extend_from_slice(itoa::Buffer::new().format(now).as_bytes());
        b.extend_from_slice(b",\"text\":\"");
        b.extend_from_slice(&self.plan.pad);
        b.extend_from_slice(b"\"}}");
        b
    }

    /// Whether p2p user `target` is served by another target than connection `i`.
    fn crosses_targets(&self, i: usize, target: u64) -> bool {
        let n = self.plan.targets.len();
        let target_index = target.saturating_sub(self.plan.user_offset + 1) as usize;
        n > 1 && self.conns[i].index % n != target_index % n
    }

    /// A user other than the one connection `i` belongs to (users are offset+1..=offset+users).
    fn random_other_user(&mut self, i: usize) -> u64 {
        let users = self.plan.users.max(2);
        let me = self.plan.user_of(self.conns[i].index);
        loop {
            let t = self.plan.user_offset + 1 + self.next_rand() % users;
            if t != me && (!self.plan.cross_node_only || self.crosses_targets(i, t)) {
                return t;
            }
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64: cheap, and good enough to pick targets and masks.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let r = self.next_rand();
        [r as u8, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8]
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        let mut failed = false;
        while c.wpos < c.wbuf.len() {
            match stream.write(c.wbuf.get(c.wpos..).unwrap_or_default()) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Connect still in progress: the writable event will come back.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        }
        if failed {
            self.close(i, true);
        }
    }

    fn close(&mut self, i: usize, by_peer: bool) {
        let c = &mut self.conns[i];
        if c.state == State::Closed {
            return;
        }
        if c.state == State::Upgrading {
            if self.counts.connect_failed == 0 {
                eprintln!("connection lost during the upgrade (by the server: {by_peer})");
            }
            self.upgrading = self.upgrading.saturating_sub(1);
            self.counts.connect_failed += 1;
        } else if by_peer {
            self.counts.closed_by_server += 1;
        }
        c.state = State::Closed;
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.rbuf = Vec::new();
        c.wbuf = Vec::new();
    }

    /// Adds this thread's progress to the shared totals (the main thread watches them).
    fn publish(&mut self) {
        let s = self.shared;
        let add = |a: &std::sync::atomic::AtomicU64, now: u64, before: u64| {
            if now != before {
                a.fetch_add(now - before, Ordering::Relaxed);
            }
        };
        add(&s.sent, self.counts.sent, self.published.sent);
        add(&s.received, self.counts.received, self.published.received);
        add(&s.errors, self.counts.errors, self.published.errors);
        add(
            &s.connected,
            self.counts.connected,
            self.published.connected,
        );
        add(
            &s.connect_failed,
            self.counts.connect_failed,
            self.published.connect_failed,
        );
        self.published = self.counts;
    }
}

/// Reads the `"bench_t":<ns>` the sender put in the payload.
fn bench_timestamp(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"bench_t\":";
    let start = find(payload, KEY)? + KEY.len();
    let digits = payload.get(start..)?;
    let mut v: u64 = 0;
    let mut any = false;
    for &d in digits.iter().take(20) {
        if !d.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Appends a masked client frame.
pub fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode.bits());
    let len = payload.len();
    if len < 126 {
        // Lossless: < 126.
        out.push(0x80 | len as u8);
    } else if let Ok(l16) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&l16.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(body) = out.get_mut(start..) {
        apply_mask(body, mask, 0);
    }
}

fn upgrade_request(plan: &Plan, user: u64, host: SocketAddr) -> Vec<u8> {
    let mut r = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        plan.path, host
    );
    if plan.mode != Mode::Echo || plan.secret.is_some() {
        if let Some(secret) = &plan.secret {
            let name = format!("user{user}");
            let token = customws::auth::mint_hs256(
                secret.as_bytes(),
                user,
                Some(&name),
                &[],
                Duration::from_secs(3600),
            );
            r.push_str("Authorization: Bearer ");
            r.push_str(&token);
            r.push_str("\r\n");
        }
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Starts a non-blocking connect to `plan.target_of(index)` from
/// 127.0.0.(source_first + index % source_ips) when the server is on loopback: one source
/// address runs out of ephemeral ports near 28k connections.
fn connect(plan: &Plan, index: usize) -> io::Result<TcpStream> {
    let addr = plan.target_of(index);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let SocketAddr::V4(v4) = addr {
        if v4.ip().is_loopback() && plan.source_ips > 0 {
            // source_ips is capped at 250; wrap within 1..=254.
            let last =
                ((usize::from(plan.source_first) - 1 + index % plan.source_ips) % 254 + 1) as u8;
            let src = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), 0);
            socket.bind(&SocketAddr::V4(src).into())?;
        }
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_and_parse_back() {
        let mut out = Vec::new();
        push_frame(&mut out, OpCode::Text, b"hello", [1, 2, 3, 4]);
        let h = parse_header(&out).unwrap().unwrap();
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        let mut body = out[h.header_len..].to_vec();
        apply_mask(&mut body, [1, 2, 3, 4], 0);
        assert_eq!(body, b"hello");

        let big = vec![b'x'; 300];
        let mut out = Vec::new();
        push_frame(&mut out, OpCode::Text, &big, [9, 9, 9, 9]);
        assert_eq!(parse_header(&out).unwrap().unwrap().payload_len, 300);
    }

    #[test]
    fn bench_timestamp_is_found_among_server_fields() {
        let ev = br#"{"type":"data_event","fromUserId":3,"payload":{"bench_t":123456,"text":"x","timestamp":"2026-01-01T00:00:00.000Z"}}"#;
        assert_eq!(bench_timestamp(ev), Some(123456));
        assert_eq!(bench_timestamp(br#"{"bench_t":}"#), None);
        assert_eq!(bench_timestamp(b"{}"), None);
    }
}
