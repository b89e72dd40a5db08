//! `customws-bench`: the load generator for customws and for the peers in
//! `benches/compare.sh`.
//!
//! Non-blocking mio client, several threads, many masked frames per write, an in-flight window
//! per connection, client sockets spread over 127.0.0.x source addresses. Modes:
//!
//! - `echo`: text frames of `--size` bytes; round-trip latency; echoes/s.
//! - `p2p`: `--users` authenticated users send `data_request`s to random other users; latency
//!   from the send timestamp in the payload to delivery; sent/delivered/acked/errors and the
//!   loss (sent − errors − delivered) after a drain.
//! - `broadcast`: `--publishers` send untargeted `data_request`s; every other connection
//!   counts the `data_event`s it receives; deliveries/s.
//! - `hold`: open `--connections` idle authenticated connections as fast as possible;
//!   handshakes/s and the server's RSS per connection.
//!
//! Several nodes (cluster mode): `--targets a,b,c` spreads connection `i` to target `i % n`;
//! `--user-offset` and `--source-first` keep several load processes on disjoint users and
//! source addresses; `--server-pid` (repeatable) sums the CPU of every node, `--redis-pid`
//! is reported apart; `--wait-file` lines up several processes (see the flags).
//!
//! Every mode samples the server's CPU time (`--server-pid`, from `/proc/PID/stat`) across
//! the measurement window and reports **server CPU ns per message**: on a 2-core machine the
//! load generator competes with the server, and that figure stays honest. A human-readable
//! summary goes first, then one JSON line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

#[path = "customws-bench/client.rs"]
mod client;
#[path = "customws-bench/multi.rs"]
mod multi;
#[path = "customws-bench/procfs.rs"]
mod procfs;

use client::{ConnSpec, Counts, Role};

/// What to measure.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Echo,
    P2p,
    Broadcast,
    Hold,
}

#[derive(Parser, Debug)]
#[command(
    name = "customws-bench",
    about = "Load generator for customws (and any server speaking its protocol)"
)]
struct Args {
    /// echo | p2p | broadcast | hold
    #[arg(value_enum)]
    mode: Mode,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8082")]
    addr: String,
    /// Request path of the upgrade.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// Client threads (each with its own mio::Poll).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Connections (echo, hold).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Messages outstanding per sending connection (unanswered echoes, unacked requests).
    #[arg(long, default_value_t = 16)]
    in_flight: u32,
    /// Echo: payload bytes. p2p/broadcast: length of the payload's text field.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Load before the window, seconds (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// After the window: stop sending and wait up to this long for deliveries, seconds.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// p2p: users (one connection each, user ids 1..=users).
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// broadcast: publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// broadcast: receiving-only connections.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// HS256 secret for the tokens (`Authorization: Bearer`); required except for echo.
    #[arg(long, env = "CUSTOMWS_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// The server's process id: CPU time and RSS are read from /proc/PID. Repeatable (or
    /// comma-separated) for several nodes: their CPU times and RSS are summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// A Redis (or other helper) process whose CPU is reported apart from the servers'.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Several servers (cluster nodes), comma-separated: connection i goes to target
    /// i % n (in p2p, user offset+1+i, so a random target is on another node with
    /// probability (n-1)/n). Overrides --addr.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// p2p with several --targets: pick only targets served by another target than the
    /// sender's (every delivery crosses nodes).
    #[arg(long)]
    cross_node_only: bool,
    /// Added to every user id (users offset+1 ..), so several load processes use disjoint users.
    #[arg(long, default_value_t = 0)]
    user_offset: u64,
    /// hold: connection i belongs to user offset+1 + i % N (0: one user per connection).
    /// Presence goes to everyone, so N users coming online cost ~N × open connections
    /// presence events; a few connections per user keeps 100k connections affordable. The
    /// server's --max-connections-per-user must allow connections/N per user.
    #[arg(long, default_value_t = 0)]
    hold_users: u64,
    /// Last octet of the first source address (127.0.0.F .. 127.0.0.(F+source_ips-1)), so
    /// several load processes use distinct source addresses.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=254))]
    source_first: u8,
    /// Seconds to wait for every connection to open (or fail).
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Once the connections are open, wait until this file exists (p2p/broadcast/echo: before
    /// the warm-up; hold: before closing, after --hold-for). Lines up several processes.
    #[arg(long)]
    wait_file: Option<std::path::PathBuf>,
    /// Spread client sockets over 127.0.0.2 .. 127.0.0.(1+N) (0: let the kernel choose).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(0..=250))]
    source_ips: u16,
    /// Upgrades in progress at once, per thread.
    #[arg(long, default_value_t = 256)]
    handshake_concurrency: usize,
    /// Total messages/s to send (0: as fast as the window allows). For latency at a fixed load.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Label put in the JSON line (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
    /// hold: seconds to keep the connections open after the last upgrade.
    #[arg(long, default_value_t = 1.0)]
    hold_for: f64,
}

/// Everything a worker needs to know, fixed for the run.
#[derive(Debug)]
pub struct Plan {
    pub mode: Mode,
    pub addr: SocketAddr,
    /// Every target (at least `addr`); connection i goes to `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    pub user_offset: u64,
    pub cross_node_only: bool,
    /// Users cycled over by the connections (0: one user per connection).
    pub cycle_users: u64,
    pub source_first: u8,
    pub path: String,
    pub threads: usize,
    pub in_flight: u32,
    pub users: u64,
    pub secret: Option<String>,
    pub source_ips: usize,
    pub handshake_concurrency: usize,
    pub rate: f64,
    pub echo_payload: Vec<u8>,
    pub pad: Vec<u8>,
}

impl Plan {
    /// Connection `index` belongs to user `offset + index + 1` in every authenticated mode
    /// (hold with --hold-users N: `offset + index % N + 1`).
    pub fn user_of(&self, index: usize) -> u64 {
        user_of(self.user_offset, self.cycle_users, index)
    }

    /// The server connection `index` talks to.
    pub fn target_of(&self, index: usize) -> SocketAddr {
        self.targets
            .get(index % self.targets.len().max(1))
            .copied()
            .unwrap_or(self.addr)
    }
}

/// Phases of a run, in order; the main thread moves them forward.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Prepare = 0,
    Connect = 1,
    Warmup = 2,
    Measure = 3,
    Drain = 4,
    Stop = 5,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Prepare,
            1 => Phase::Connect,
            2 => Phase::Warmup,
            3 => Phase::Measure,
            4 => Phase::Drain,
            _ => Phase::Stop,
        }
    }

    /// New messages are sent during warm-up and measurement only.
    pub fn may_send(self) -> bool {
        matches!(self, Phase::Warmup | Phase::Measure)
    }
}

/// State shared by the main thread and the workers.
pub struct Shared {
    phase: AtomicU8,
    base: Instant,
    pub ready: AtomicUsize,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    /// p2p: window sends whose target is served by another target than the sender's.
    pub cross_target: AtomicU64,
}

impl Shared {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::SeqCst);
    }

    /// Nanoseconds since the run started (the clock in every latency timestamp).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let targets = multi::resolve_targets(&args.addr, &args.targets)?;
    let addr = targets[0];
    let targets_len = targets.len();
    if args.mode != Mode::Echo && args.jwt_secret.is_none() {
        return Err("--jwt-secret is required for p2p, broadcast and hold".into());
    }
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let specs = connection_specs(&args);
    let total = specs.len();
    let plan = Arc::new(Plan {
        mode: args.mode,
        addr,
        targets,
        user_offset: args.user_offset,
        cross_node_only: args.cross_node_only && targets_len > 1,
        cycle_users: cycle_users(&args),
        source_first: args.source_first,
        path: args.path.clone(),
        threads: args.threads,
        in_flight: args.in_flight.max(1),
        users: args.users,
        secret: args.jwt_secret.clone(),
        source_ips: usize::from(args.source_ips),
        handshake_concurrency: args.handshake_concurrency.max(1),
        rate: args.rate,
        echo_payload: vec![b'x'; args.size],
        pad: vec![b'x'; args.size],
    });
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(Phase::Prepare as u8),
        base: Instant::now(),
        ready: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        connect_failed: AtomicU64::new(0),
        cross_target: AtomicU64::new(0),
    });

    let mut per_thread: Vec<Vec<ConnSpec>> = vec![Vec::new(); args.threads];
    for s in specs {
        per_thread[s.index % args.threads].push(s);
    }
    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, specs)| {
            let plan = plan.clone();
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn(move || {
                    client::run(
                        &plan,
                        &shared,
                        specs,
                        0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1),
                    )
                })
                .map_err(|e| format!("cannot spawn a thread: {e}"))
        })
        .collect::<Result<_, _>>()?;

    // Tokens are minted before the clock starts.
    while shared.ready.load(Ordering::SeqCst) < args.threads {
        if handles.iter().any(|h| h.is_finished()) {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }

    let server_pids = args.server_pid.clone();
    let sample = || procfs::sample_all(&server_pids);
    let sample_redis = || args.redis_pid.and_then(procfs::sample);
    let before_connect = sample();
    let connect_start = Instant::now();
    shared.set_phase(Phase::Connect);
    let connect_deadline = connect_start + Duration::from_secs_f64(args.connect_timeout.max(1.0));
    loop {
        let done = shared.connected.load(Ordering::Relaxed)
            + shared.connect_failed.load(Ordering::Relaxed);
        if done >= total as u64 || Instant::now() > connect_deadline {
            break;
        }
        if handles.iter().any(|h| h.is_finished()) {
            break;
        }
        thread::sleep(Duration::from_micros(500));
    }
    let connect_time = connect_start.elapsed();
    let after_connect = sample();
    let connected = shared.connected.load(Ordering::Relaxed);

    let mut window = Duration::ZERO;
    let mut cpu = (None, None);
    let mut client_cpu = None;
    let mut redis = (None, None);
    if args.mode == Mode::Hold {
        thread::sleep(Duration::from_secs_f64(args.hold_for.max(0.0)));
        multi::wait_for_file(args.wait_file.as_deref());
    } else {
        multi::wait_for_file(args.wait_file.as_deref());
        shared.set_phase(Phase::Warmup);
        thread::sleep(Duration::from_secs_f64(args.warmup.max(0.0)));
        cpu.0 = sample();
        redis.0 = sample_redis();
        let client_start = procfs::sample_self();
        let t0 = Instant::now();
        shared.set_phase(Phase::Measure);
        thread::sleep(Duration::from_secs_f64(args.duration.max(0.1)));
        shared.set_phase(Phase::Drain);
        window = t0.elapsed();
        cpu.1 = sample();
        redis.1 = sample_redis();
        if let (Some(a), Some(b)) = (client_start, procfs::sample_self()) {
            client_cpu = Some(b.cpu_ns.saturating_sub(a.cpu_ns));
        }
        // Drain: stop sending, wait for what is still in flight.
        let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain.max(0.0));
        while args.mode == Mode::P2p && Instant::now() < drain_deadline {
            let sent = shared.sent.load(Ordering::Relaxed);
            let errors = shared.errors.load(Ordering::Relaxed);
            let received = shared.received.load(Ordering::Relaxed);
            if received + errors >= sent {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        if args.mode == Mode::Broadcast {
            thread::sleep(Duration::from_secs_f64(args.drain.clamp(0.0, 0.5)));
        }
    }
    finish(
        &args,
        &shared,
        handles,
        Window {
            length: window,
            server: cpu,
            redis,
            client_cpu_ns: client_cpu,
            connect_time,
            around_connect: (before_connect, after_connect),
            connected,
            total,
        },
    )
}

/// What the main thread measured around the run.
struct Window {
    length: Duration,
    server: (Option<procfs::Sample>, Option<procfs::Sample>),
    redis: (Option<procfs::Sample>, Option<procfs::Sample>),
    client_cpu_ns: Option<u64>,
    connect_time: Duration,
    around_connect: (Option<procfs::Sample>, Option<procfs::Sample>),
    connected: u64,
    total: usize,
}

fn finish(
    args: &Args,
    shared: &Shared,
    handles: Vec<thread::JoinHandle<std::io::Result<client::Outcome>>>,
    w: Window,
) -> Result<(), String> {
    let Window {
        length: window,
        server: (cpu0, cpu1),
        redis,
        client_cpu_ns,
        connect_time,
        around_connect: (before_connect, after_connect),
        connected,
        total,
    } = w;
    shared.set_phase(Phase::Stop);
    let mut counts = Counts::default();
    let mut latency = client::new_histogram();
    let mut handshake = client::new_histogram();
    for h in handles {
        let outcome = h
            .join()
            .map_err(|_| "a client thread panicked".to_string())?
            .map_err(|e| format!("client thread: {e}"))?;
        let c = outcome.counts;
        counts.sent += c.sent;
        counts.received += c.received;
        counts.acked += c.acked;
        counts.errors += c.errors;
        counts.other += c.other;
        counts.window_sent += c.window_sent;
        counts.window_received += c.window_received;
        counts.connected += c.connected;
        counts.connect_failed += c.connect_failed;
        counts.closed_by_server += c.closed_by_server;
        let _ = latency.add(&outcome.latency);
        let _ = handshake.add(&outcome.handshake);
    }

    let secs = window.as_secs_f64();
    let mode = args.mode;
    let (messages, server_cpu_ns, server_sys_ns, server_sched_ns) = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (
            counts.window_received,
            Some(b.cpu_ns.saturating_sub(a.cpu_ns)),
            Some(b.sys_ns.saturating_sub(a.sys_ns)),
            Some(b.sched_ns.saturating_sub(a.sched_ns)),
        ),
        _ => (counts.window_received, None, None, None),
    };
    let per_msg = |ns: Option<u64>| -> Option<f64> {
        ns.filter(|_| messages > 0)
            .map(|ns| ns as f64 / messages as f64)
    };

    let mut out = json!({
        "mode": format!("{mode:?}").to_lowercase(),
        "label": args.label,
        "addr": args.addr,
        "targets": args.targets,
        "user_offset": args.user_offset,
        "threads": args.threads,
        "connections": total,
        "connected": connected,
        "connect_failed": counts.connect_failed,
        "closed_by_server": counts.closed_by_server,
    });
    let lat = |h: &Histogram<u64>| {
        json!({
            "count": h.len(),
            "p50_us": h.value_at_quantile(0.50) as f64 / 1e3,
            "p90_us": h.value_at_quantile(0.90) as f64 / 1e3,
            "p99_us": h.value_at_quantile(0.99) as f64 / 1e3,
            "p999_us": h.value_at_quantile(0.999) as f64 / 1e3,
            "max_us": h.max() as f64 / 1e3,
        })
    };

    println!("customws-bench {:?} against {}", mode, args.addr);
    println!(
        "  connections: {connected}/{total} open, {} failed, {} closed by the server",
        counts.connect_failed, counts.closed_by_server
    );
    if mode == Mode::Hold {
        let hs = connected as f64 / connect_time.as_secs_f64().max(1e-9);
        println!(
            "  upgrades: {connected} in {:.3} s = {hs:.0}/s",
            connect_time.as_secs_f64()
        );
        out["handshakes_per_s"] = json!(hs);
        out["connect_seconds"] = json!(connect_time.as_secs_f64());
        out["handshake_latency"] = lat(&handshake);
        if let (Some(a), Some(b)) = (before_connect, after_connect) {
            let cpu = b.cpu_ns.saturating_sub(a.cpu_ns);
            let rss_delta = b.rss_kib.saturating_sub(a.rss_kib) * 1024;
            let per_conn = rss_delta as f64 / connected.max(1) as f64;
            println!(
                "  server: RSS {} KiB → {} KiB, {per_conn:.0} B per connection; \
                 {:.1} µs CPU per upgrade",
                a.rss_kib,
                b.rss_kib,
                cpu as f64 / connected.max(1) as f64 / 1e3
            );
            out["server_rss_before_kib"] = json!(a.rss_kib);
            out["server_rss_after_kib"] = json!(b.rss_kib);
            out["server_rss_per_conn_bytes"] = json!(per_conn);
            out["server_cpu_ns"] = json!(cpu);
            out["server_cpu_ns_per_handshake"] = json!(cpu as f64 / connected.max(1) as f64);
            let sys = b.sys_ns.saturating_sub(a.sys_ns);
            out["server_sys_ns_per_handshake"] = json!(sys as f64 / connected.max(1) as f64);
            out["server_user_ns_per_handshake"] =
                json!(cpu.saturating_sub(sys) as f64 / connected.max(1) as f64);
        }
        print_latency("upgrade", &handshake);
    } else {
        let rate = messages as f64 / secs.max(1e-9);
        let what = match mode {
            Mode::Echo => "echoes",
            _ => "deliveries",
        };
        println!("  window: {secs:.2} s; {messages} {what} = {rate:.0}/s");
        out["duration_s"] = json!(secs);
        out["in_flight"] = json!(args.in_flight);
        out["size"] = json!(args.size);
        out["messages"] = json!(messages);
        out["msgs_per_s"] = json!(rate);
        out["window_sent"] = json!(counts.window_sent);
        if let Some(cpu) = server_cpu_ns {
            let util = cpu as f64 / window.as_nanos().max(1) as f64;
            println!(
                "  server CPU: {:.1} ms ({:.0}% of one core), {:.0} ns per {} (schedstat: {:.0} ns)",
                cpu as f64 / 1e6,
                util * 100.0,
                per_msg(Some(cpu)).unwrap_or(f64::NAN),
                if mode == Mode::Echo { "echo" } else { "delivery" },
                per_msg(server_sched_ns).unwrap_or(f64::NAN),
            );
            out["server_cpu_ns"] = json!(cpu);
            out["server_cpu_util"] = json!(util);
            out["server_cpu_ns_per_msg"] = json!(per_msg(Some(cpu)));
            out["server_sched_ns_per_msg"] = json!(per_msg(server_sched_ns));
            if let Some(sys) = server_sys_ns {
                let user = cpu.saturating_sub(sys);
                println!(
                    "  of which user space {:.0} ns, kernel {:.0} ns per {}",
                    per_msg(Some(user)).unwrap_or(f64::NAN),
                    per_msg(Some(sys)).unwrap_or(f64::NAN),
                    if mode == Mode::Echo {
                        "echo"
                    } else {
                        "delivery"
                    },
                );
                out["server_user_ns_per_msg"] = json!(per_msg(Some(user)));
                out["server_sys_ns_per_msg"] = json!(per_msg(Some(sys)));
            }
        }
        multi::report_redis(&mut out, redis, messages, window);
        if args.targets.len() > 1 && mode == Mode::P2p {
            multi::report_cross(&mut out, shared, counts.window_sent);
        }
        if let Some(c) = client_cpu_ns {
            let util = c as f64 / window.as_nanos().max(1) as f64;
            println!("  load generator CPU: {:.0}% of one core", util * 100.0);
            out["client_cpu_util"] = json!(util);
        }
        if mode != Mode::Echo {
            let expected_loss = match mode {
                Mode::P2p => counts.sent.saturating_sub(counts.errors + counts.received),
                _ => 0,
            };
            println!(
                "  totals: sent {}, delivered {}, acked {}, errors {}, other {}{}",
                counts.sent,
                counts.received,
                counts.acked,
                counts.errors,
                counts.other,
                if mode == Mode::P2p {
                    format!(", lost {expected_loss} (sent − errors − delivered after drain)")
                } else {
                    String::new()
                }
            );
            out["sent"] = json!(counts.sent);
            out["delivered"] = json!(counts.received);
            out["acked"] = json!(counts.acked);
            out["errors"] = json!(counts.errors);
            out["other"] = json!(counts.other);
            if mode == Mode::P2p {
                out["lost"] = json!(expected_loss);
            }
        }
        print_latency(
            if mode == Mode::Echo {
                "round trip"
            } else {
                "delivery"
            },
            &latency,
        );
        out["latency"] = lat(&latency);
    }
    println!("{out}");
    Ok(())
}

fn print_latency(what: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        println!("  {what} latency: no samples");
        return;
    }
    println!(
        "  {what} latency µs: p50 {:.1}, p90 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1} ({} samples)",
        h.value_at_quantile(0.50) as f64 / 1e3,
        h.value_at_quantile(0.90) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3,
        h.len()
    );
}

fn connection_specs(args: &Args) -> Vec<ConnSpec> {
    let per_user = cycle_users(args);
    let roles: Vec<Role> = match args.mode {
        Mode::Echo => vec![Role::Echo; args.connections],
        Mode::Hold => vec![Role::Idle; args.connections],
        Mode::P2p => vec![Role::Peer; usize::try_from(args.users).unwrap_or(usize::MAX)],
        Mode::Broadcast => {
            let mut r = vec![Role::Publisher; args.publishers];
            r.extend(std::iter::repeat_n(Role::Subscriber, args.subscribers));
            r
        }
    };
    roles
        .into_iter()
        .enumerate()
        .map(|(index, role)| ConnSpec {
            index,
            user: user_of(args.user_offset, per_user, index),
            role,
        })
        .collect()
}

/// Users the connections cycle over (hold with --hold-users), 0 for one user per connection.
fn cycle_users(args: &Args) -> u64 {
    if args.mode == Mode::Hold {
        args.hold_users
    } else {
        0
    }
}

fn user_of(offset: u64, cycle: u64, index: usize) -> u64 {
    let i = index as u64;
    offset + 1 + if cycle == 0 { i } else { i % cycle }
}
