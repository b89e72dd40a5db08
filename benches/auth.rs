//! Token check per upgrade: `Verifier::verify` (HS256 fast path in front) against jsonwebtoken
//! alone, on the token `customws-bench` sends (`sub`, `iat`, `exp`, `name`).
//!
//! Run: `cargo bench --bench auth -- --quick` (or `--test` to just check it runs).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use customws::auth::{mint_hs256, Verifier};
use customws::config::{AuthConfig, JwtKey};

fn verify(c: &mut Criterion) {
    let secret = b"bench-secret".to_vec();
    let verifier = Verifier::new(&AuthConfig {
        key: JwtKey::Hmac(secret.clone()),
        leeway: Duration::from_secs(30),
        issuer: None,
        audience: None,
        allow_query_token: true,
        allowed_origins: Vec::new(),
    })
    .unwrap();
    let token = mint_hs256(
        &secret,
        12345,
        Some("user12345"),
        &[],
        Duration::from_secs(3600),
    );
    let mut g = c.benchmark_group("verify_hs256");
    g.bench_function("fast_path", |b| {
        b.iter(|| verifier.verify(black_box(&token)).unwrap())
    });
    g.bench_function("jsonwebtoken", |b| {
        b.iter(|| {
            verifier
                .verify_with_jsonwebtoken(black_box(&token))
                .unwrap()
        })
    });
    let mut bad = token.clone();
    bad.pop();
    bad.push('x');
    g.bench_function("bad_signature", |b| {
        b.iter(|| verifier.verify(black_box(&bad)).unwrap_err())
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
