//! Runtime building blocks: the timer wheel and the cross-shard queue mesh.
//!
//! `cargo bench --bench runtime` (or `-- --test` to run each once, as CI does).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use customws::queue::{mesh, ShardLinks};
use customws::timer::TimerWheel;

const WAKE: mio::Token = mio::Token(usize::MAX - 2);

/// A shard-like value: a connection key plus a tag (16 bytes, like the shard's timer entry).
#[derive(Clone, Copy)]
struct Entry {
    _key: u64,
    _tag: u64,
}

fn timer_wheel(c: &mut Criterion) {
    const N: u64 = 65_536;
    const TICK: Duration = Duration::from_millis(10);
    let mut group = c.benchmark_group("timer_wheel");
    group.throughput(Throughput::Elements(N));
    group.bench_function("insert_then_expire_65536_over_60s", |b| {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, t0);
        let mut now = t0;
        let mut expired = Vec::with_capacity(N as usize);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        b.iter(|| {
            for i in 0..N {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let deadline = now + Duration::from_millis(rng % 60_000);
                wheel.insert(deadline, Entry { _key: i, _tag: rng });
            }
            let mut fired = 0;
            while !wheel.is_empty() {
                now += TICK;
                wheel.advance(now, &mut expired);
                fired += expired.len();
                expired.clear();
            }
            black_box(fired)
        });
    });
    group.finish();
}

fn pair() -> (ShardLinks<u64>, ShardLinks<u64>, Vec<mio::Poll>) {
    let polls: Vec<mio::Poll> = (0..2).map(|_| mio::Poll::new().expect("poll")).collect();
    let wakers = polls
        .iter()
        .map(|p| Arc::new(mio::Waker::new(p.registry(), WAKE).expect("waker")))
        .collect();
    let mut links = mesh::<u64>(2, 1024, wakers).into_iter();
    let (Some(a), Some(b)) = (links.next(), links.next()) else {
        unreachable!("mesh(2) returns two shards")
    };
    (a, b, polls)
}

fn queue_single_thread(c: &mut Criterion) {
    const BATCH: u64 = 256;
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("push_flush_pop_batch_256_one_thread", |b| {
        let (mut tx, mut rx, _polls) = pair();
        b.iter(|| {
            for i in 0..BATCH {
                if tx.push(1, i).is_err() {
                    unreachable!("capacity 1024 > batch");
                }
            }
            tx.flush_wakeups();
            let mut sum = 0;
            rx.pop_batch(BATCH as usize, |_, v| sum += v);
            black_box(sum)
        });
    });
    group.finish();
}

/// Parks `links` on `poll` unless something is pending (the shard loop's idle step).
fn park(links: &ShardLinks<u64>, poll: &mut mio::Poll, events: &mut mio::Events) {
    if links.prepare_park() {
        // A poll error only shortens the park; the caller loops anyway.
        let _ = poll.poll(events, Some(Duration::from_millis(50)));
        links.unpark();
    }
}

fn queue_ping_pong(c: &mut Criterion) {
    const BATCH: u64 = 256;
    let mut group = c.benchmark_group("queue");
    // Each element crosses the mesh twice (there and back).
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("ping_pong_batch_256_two_threads", |b| {
        let (mut main, mut echo, polls) = pair();
        let mut polls = polls.into_iter();
        let (Some(mut main_poll), Some(mut echo_poll)) = (polls.next(), polls.next()) else {
            unreachable!("two polls")
        };
        let stop = Arc::new(AtomicBool::new(false));
        let echo_stop = Arc::clone(&stop);
        let echo_thread = std::thread::spawn(move || {
            let mut events = mio::Events::with_capacity(4);
            let mut back = Vec::with_capacity(BATCH as usize);
            while !echo_stop.load(Ordering::Relaxed) {
                echo.pop_batch(BATCH as usize, |_, v| back.push(v));
                if back.is_empty() {
                    park(&echo, &mut echo_poll, &mut events);
                    continue;
                }
                for v in back.drain(..) {
                    // Capacity 1024 > one batch in flight: never full.
                    let _ = echo.push(0, v);
                }
                echo.flush_wakeups();
            }
        });
        let mut events = mio::Events::with_capacity(4);
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                for i in 0..BATCH {
                    let _ = main.push(1, i);
                }
                main.flush_wakeups();
                let mut got = 0;
                while got < BATCH {
                    let n = main.pop_batch(BATCH as usize, |_, v| {
                        black_box(v);
                    });
                    got += n as u64;
                    if n == 0 {
                        park(&main, &mut main_poll, &mut events);
                    }
                }
            }
            started.elapsed()
        });
        stop.store(true, Ordering::Relaxed);
        let _ = echo_thread.join();
    });
    group.finish();
}

criterion_group!(benches, timer_wheel, queue_single_thread, queue_ping_pong);
criterion_main!(benches);
