//! Envelope codec costs: client envelope parsing (simd-json in place vs serde_json
//! baselines) and the P2P hot path (parse + `data_event` enrichment + serialization).
//!
//! Run: `cargo bench --bench envelope` (`-- --quick` for a short pass).

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use customws::proto::envelope::{
    parse_client, write_data_event, write_error_notification, write_server_ack, EnvelopeLimits,
    EnvelopeParser, IdGenerator,
};

/// A typical P2P chat message (≈150 bytes).
const TYPICAL: &str = r#"{"type":"data_request","targetUserId":456,"payload":{"action":"send_message","resource":"chat","data":{"text":"Hola! mensaje privado"}},"pid":"client-1732780800000-k3j9x2a"}"#;

/// A ≈2 KiB message: a longer text plus a few structured fields.
fn large() -> String {
    let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(30);
    format!(
        r#"{{"type":"data_request","targetUserId":456,"pid":"client-1732780800000-k3j9x2a","payload":{{"action":"send_message","resource":"chat","data":{{"text":"{text}","mentions":[1,2,3,4,5],"reply":{{"to":"m-99","quote":"short \"quoted\" text"}},"attachments":[{{"name":"a.png","size":12345}},{{"name":"b.pdf","size":999}}]}}}}}}"#
    )
}

/// serde_json baseline with borrowed top-level fields and an owned payload tree.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct SerdeEnvelope<'a> {
    #[serde(borrow)]
    pid: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "targetUserId")]
    target_user_id: Option<u64>,
    payload: serde_json::Value,
}

fn bench_parse(c: &mut Criterion) {
    let limits = EnvelopeLimits::default();
    let big = large();
    let mut group = c.benchmark_group("envelope_parse");
    for (name, msg) in [("150B", TYPICAL), ("2KiB", big.as_str())] {
        let msg = msg.as_bytes();
        let mut buf = msg.to_vec();
        group.throughput(Throughput::Bytes(msg.len() as u64));

        let mut parser = EnvelopeParser::new(limits);
        group.bench_with_input(
            BenchmarkId::new("customws_reused_parser", name),
            msg,
            |b, m| {
                b.iter(|| {
                    buf.copy_from_slice(m);
                    let env = parser.parse(&mut buf).unwrap();
                    black_box(env.target_user_id);
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("customws_one_shot", name), msg, |b, m| {
            b.iter(|| {
                buf.copy_from_slice(m);
                let env = parse_client(&mut buf, &limits).unwrap();
                black_box(env.target_user_id);
            });
        });
        let mut buffers = simd_json::Buffers::new(4096);
        group.bench_with_input(BenchmarkId::new("simd_json_raw", name), msg, |b, m| {
            b.iter(|| {
                buf.copy_from_slice(m);
                let v = simd_json::to_borrowed_value_with_buffers(&mut buf, &mut buffers).unwrap();
                black_box(&v);
            });
        });
        group.bench_with_input(BenchmarkId::new("serde_json_value", name), msg, |b, m| {
            b.iter(|| {
                buf.copy_from_slice(m);
                let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
                black_box(&v);
            });
        });
        group.bench_with_input(BenchmarkId::new("serde_json_struct", name), msg, |b, m| {
            b.iter(|| {
                buf.copy_from_slice(m);
                let v: SerdeEnvelope<'_> = serde_json::from_slice(&buf).unwrap();
                black_box(&v.target_user_id);
            });
        });
    }
    group.finish();
}

fn bench_p2p(c: &mut Criterion) {
    let limits = EnvelopeLimits::default();
    let big = large();
    let mut group = c.benchmark_group("envelope_p2p_enrich");
    for (name, msg) in [("150B", TYPICAL), ("2KiB", big.as_str())] {
        let msg = msg.as_bytes();
        let mut buf = msg.to_vec();
        let mut out = Vec::with_capacity(8192);
        let mut parser = EnvelopeParser::new(limits);
        let mut ids = IdGenerator::new(3, 0x5eed_1234_abcd);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("parse_and_write_data_event", name),
            msg,
            |b, m| {
                b.iter(|| {
                    buf.copy_from_slice(m);
                    let env = parser.parse(&mut buf).unwrap();
                    out.clear();
                    let id = ids.next_id();
                    write_data_event(
                        &mut out,
                        123,
                        &env.payload(),
                        "juan_dev",
                        1_795_849_200_123,
                        id.as_str(),
                    )
                    .unwrap();
                    if let Some(pid) = env.pid {
                        write_server_ack(&mut out, pid);
                    }
                    black_box(out.len());
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("serde_json_baseline", name), msg, |b, m| {
            b.iter(|| {
                let mut v: serde_json::Value = serde_json::from_slice(m).unwrap();
                let payload = v.get_mut("payload").unwrap().as_object_mut().unwrap();
                payload.insert("senderName".into(), "juan_dev".into());
                payload.insert("timestamp".into(), "2026-11-28T07:00:00.123Z".into());
                payload.insert("messageId".into(), "x-3-1".into());
                out.clear();
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({"type":"data_event","fromUserId":123,"payload":v["payload"]}),
                )
                .unwrap();
                black_box(out.len());
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("envelope_write");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1024);
    group.bench_function("server_ack", |b| {
        b.iter(|| {
            out.clear();
            write_server_ack(&mut out, black_box("client-1732780800000-k3j9x2a"));
        });
    });
    group.bench_function("error_notification", |b| {
        b.iter(|| {
            out.clear();
            write_error_notification(
                &mut out,
                Some(black_box("p-1")),
                404,
                "target not connected",
            );
        });
    });
    group.finish();
}

/// The depth/pid pre-scan alone (it runs only on refused text now; kept for comparison).
fn bench_prescan(c: &mut Criterion) {
    let big = large();
    let mut group = c.benchmark_group("envelope_prescan");
    for (name, msg) in [("150B", TYPICAL), ("2KiB", big.as_str())] {
        group.throughput(Throughput::Bytes(msg.len() as u64));
        group.bench_with_input(BenchmarkId::new("prescan", name), msg.as_bytes(), |b, m| {
            b.iter(|| black_box(customws::proto::envelope::prescan_for_bench(black_box(m))));
        });
    }
    group.finish();
}
criterion_group!(benches, bench_parse, bench_prescan, bench_p2p);
criterion_main!(benches);
