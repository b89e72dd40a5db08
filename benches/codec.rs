//! Codec micro-benchmarks: decode + unmask, encode, UTF-8 validation, masking.
//!
//! Run: `cargo bench --bench codec -- --quick` (or `--test` to just check they run).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use customws::proto::codec::{Decoder, DecoderLimits};
use customws::proto::frame::{encode_frame, OpCode};
use customws::proto::mask::apply_mask;
use customws::proto::utf8::{DfaUtf8Validator, Utf8Validator};

const SIZES: [usize; 5] = [16, 128, 1024, 16 * 1024, 64 * 1024];
const LIMITS: DecoderLimits = DecoderLimits {
    max_message_size: 1 << 20,
    max_fragments: 1024,
};

fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
    out
}

fn ascii(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Roughly half the bytes in multi-byte sequences (2-, 3- and 4-byte), like JSON with
/// non-Latin text.
fn mixed(len: usize) -> Vec<u8> {
    let pattern = "{\"msg\":\"κόσμε € 😀 ok\"}";
    let mut s = String::new();
    while s.len() < len {
        s.push_str(pattern);
    }
    let mut end = len;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut v = s.into_bytes();
    v.truncate(end);
    v.resize(len, b' ');
    v
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for &size in &SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        // Decoding unmasks in place, so a second decode re-masks: harmless for binary.
        let mut binary = masked_frame(0x2, &ascii(size), [0x37, 0xfa, 0x21, 0x3d]);
        group.bench_with_input(BenchmarkId::new("binary", size), &size, |b, _| {
            let mut decoder = Decoder::new();
            b.iter(|| {
                let d = decoder.decode(black_box(&mut binary), &LIMITS).unwrap();
                black_box(d.consumed)
            })
        });
        // A zero mask keeps the text valid across iterations; the XOR still runs.
        let mut text = masked_frame(0x1, &mixed(size), [0; 4]);
        group.bench_with_input(BenchmarkId::new("text_mixed", size), &size, |b, _| {
            let mut decoder = Decoder::new();
            b.iter(|| {
                let d = decoder.decode(black_box(&mut text), &LIMITS).unwrap();
                black_box(d.consumed)
            })
        });
    }
    group.finish();
}

fn decode_streamed(c: &mut Criterion) {
    // The assembly path: one 64 KiB text message arriving in 1 KiB reads.
    let mut group = c.benchmark_group("decode_streamed");
    let size = 64 * 1024;
    group.throughput(Throughput::Bytes(size as u64));
    let frame = masked_frame(0x1, &mixed(size), [0; 4]);
    group.bench_function("text_64KiB_in_1KiB_reads", |b| {
        let mut buf = frame.clone();
        b.iter(|| {
            let mut decoder = Decoder::new();
            let mut total = 0;
            for chunk in buf.chunks_mut(1024) {
                let d = decoder.decode(chunk, &LIMITS).unwrap();
                total += d.consumed;
                black_box(d.message.is_some());
            }
            total
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for &size in &SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let payload = ascii(size);
        let mut out = Vec::with_capacity(size + 16);
        group.bench_with_input(BenchmarkId::new("text", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, OpCode::Text, black_box(&payload));
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for (kind, make) in [("ascii", ascii as fn(usize) -> Vec<u8>), ("mixed", mixed)] {
        for &size in &SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            let data = make(size);
            group.bench_with_input(
                BenchmarkId::new(format!("{kind}/streaming_simdutf8"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        let mut v = Utf8Validator::new();
                        v.feed(black_box(&data)).unwrap();
                        v.finish().unwrap();
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{kind}/dfa"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        let mut v = DfaUtf8Validator::new();
                        v.feed(black_box(&data)).unwrap();
                        v.finish().unwrap();
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{kind}/simdutf8_whole"), size),
                &size,
                |b, _| b.iter(|| simdutf8::basic::from_utf8(black_box(&data)).is_ok()),
            );
        }
    }
    group.finish();
}

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for &size in &SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut data = ascii(size);
        group.bench_with_input(BenchmarkId::new("apply_mask", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut data), [1, 2, 3, 4], black_box(1)))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, decode_streamed, encode, utf8, mask);
criterion_main!(benches);
