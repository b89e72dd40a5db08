//! Token extraction and verification: never a panic, never a forged token accepted.
//!
//! The fuzzer builds a token from structured parts (claims of every JSON type, time-relative
//! `exp`/`nbf`, a header naming HS256/384/512, `none` or anything, signed with the test secret,
//! another key, the RSA public key's PEM bytes (RS/HS confusion) or not at all), mutates its
//! bytes, and places it in one carrier among arbitrary other carrier bytes.
//!
//! Oracles, for whatever token `extract_token` picks:
//! - the verifier (with its HS256 fast path) decides exactly as jsonwebtoken alone does;
//! - an HS verifier with the test secret accepts it only if an independent check agrees: three
//!   parts, an HS* header, an HMAC by the test secret over `header.payload` (computed here with
//!   the `hmac` crate), a numeric `exp` not past (leeway 30 s), a numeric `nbf` not in the
//!   future when present (CVE-2026-25537), and `sub` a user id matching the identity;
//! - an RSA verifier accepts nothing (no token here is signed by its private key);
//! - a well-formed token signed with the secret, extracted unchanged, is accepted.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use customws::auth::{extract_token, Identity, Verifier};
use customws::config::{AuthConfig, JwtKey};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";
const LEEWAY: u64 = 30;
/// Seconds that may pass between the verifier's clock read and ours.
const SLACK: u64 = 5;
const RSA_SPKI: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnkGwc0x13IuuBzzqn8g9
DKqr7TyEQ0LQWzqeUaTSGFoUV7JjstE8OE0EqrHz1QwiwOuaXmeH2ZTD7pN56K2J
BtHmy1OsBaRvZv1wMMfoyrmi88HrzN/GXknGnIE7D2YHABXIA6s1rhVJT25FA4Xb
xFL39mSLgP6S+8sTTumqXLSXUggymMkvcR9STfR9gUDqcxqdlzLt4sX5mfRX3bT6
fkav70B+yujXbW8n+8DqHS7XZmHzMa8Gve9nWz47EGOpAxEIlPr4tmPBsw0Q/YUa
a/3NSoEkiEAh2o9cIWwTlSWz3wEKMYWtiWHtrnngIUl3AHf55nlPHbkyHgF8CfTY
tQIDAQAB
-----END PUBLIC KEY-----
";

/// Lenient base64url: padding optional, non-canonical trailing bits allowed. Lenient on
/// purpose: if the verifier accepted something, this check must be able to read it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Arbitrary, Debug, Clone)]
enum Val {
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    /// A decimal string of a small number (a `sub` as JS clients send it).
    NumStr(u32),
    FutureSecs(u16),
    PastSecs(u16),
    FutureFloat(u16),
    /// The future time as a string: the CVE-2026-25537 shape.
    FutureStr(u16),
    Roles(Vec<String>),
    Object,
}

impl Val {
    fn to_json(&self, now: u64) -> Option<Value> {
        Some(match self {
            Val::Absent => return None,
            Val::Null => Value::Null,
            Val::Bool(b) => json!(b),
            Val::Int(n) => json!(n),
            Val::Uint(n) => json!(n),
            Val::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Val::Str(s) => json!(s),
            Val::NumStr(n) => json!(n.to_string()),
            Val::FutureSecs(s) => json!(now + 60 + u64::from(*s)),
            Val::PastSecs(s) => json!(now.saturating_sub(u64::from(*s))),
            Val::FutureFloat(s) => json!((now + 60 + u64::from(*s)) as f64 + 0.5),
            Val::FutureStr(s) => json!((now + 60 + u64::from(*s)).to_string()),
            Val::Roles(r) => json!(r),
            Val::Object => json!({"a": 1}),
        })
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HsAlg {
    Hs256,
    Hs384,
    Hs512,
}

impl HsAlg {
    fn name(self) -> &'static str {
        match self {
            HsAlg::Hs256 => "HS256",
            HsAlg::Hs384 => "HS384",
            HsAlg::Hs512 => "HS512",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Signing {
    /// The test secret: a genuine token.
    Secret(HsAlg),
    /// Another HMAC key.
    OtherKey(HsAlg, Vec<u8>),
    /// HS256 keyed with the RSA public key's PEM (the RS/HS confusion attack).
    RsaPemAsSecret(HsAlg),
    /// `alg` spelled as given (`none`, `None`, `RS256`, ...), empty signature.
    Unsigned(String),
    /// An arbitrary header, signed with the secret.
    RawHeader(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    sub: Val,
    exp: Val,
    nbf: Val,
    name: Val,
    roles: Val,
    extra: Vec<(String, Val)>,
    signing: Signing,
    /// (position, xor) byte edits applied to the finished token.
    edits: Vec<(u16, u8)>,
    /// 0 Authorization, 1 subprotocol, 2 cookie, 3 query, else nowhere.
    carrier: u8,
    authorization: Option<Vec<u8>>,
    protocols: Vec<Vec<u8>>,
    cookie: Option<Vec<u8>>,
    query: Option<String>,
    allow_query: bool,
}

fn hmac(alg: &str, key: &[u8], msg: &[u8]) -> Vec<u8> {
    macro_rules! mac {
        ($h:ty) => {{
            let mut m = <Hmac<$h>>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match alg {
        "HS256" => mac!(sha2::Sha256),
        "HS384" => mac!(sha2::Sha384),
        _ => mac!(sha2::Sha512),
    }
}

fn sign(header: &Value, claims: &Value, alg: &str, key: Option<&[u8]>) -> Vec<u8> {
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{head}.{body}");
    let sig = key.map_or_else(String::new, |k| {
        URL_SAFE_NO_PAD.encode(hmac(alg, k, signing_input.as_bytes()))
    });
    format!("{signing_input}.{sig}").into_bytes()
}

/// The independent acceptance check. Returns why the token should not have passed.
fn independent_check(token: &str, identity: &Identity, now: u64) -> Result<(), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [head, body, sig] = parts[..] else {
        return Err(format!("{} parts", parts.len()));
    };
    let header: Value = LENIENT
        .decode(head)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or("header unreadable")?;
    let alg = header["alg"].as_str().ok_or("no alg")?;
    if !matches!(alg, "HS256" | "HS384" | "HS512") {
        return Err(format!("alg {alg}"));
    }
    let sig = LENIENT.decode(sig).map_err(|_| "signature unreadable")?;
    macro_rules! verify {
        ($h:ty) => {{
            let mut m = <Hmac<$h>>::new_from_slice(SECRET).expect("any key length");
            m.update(format!("{head}.{body}").as_bytes());
            m.verify_slice(&sig).is_ok()
        }};
    }
    let mac_ok = match alg {
        "HS256" => verify!(sha2::Sha256),
        "HS384" => verify!(sha2::Sha384),
        _ => verify!(sha2::Sha512),
    };
    if !mac_ok {
        return Err("not signed by the test secret".into());
    }
    let claims: Map<String, Value> = LENIENT
        .decode(body)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or("claims unreadable")?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or("exp missing or not a number")?;
    if exp + (LEEWAY + SLACK) as f64 <= now as f64 {
        return Err(format!("expired: exp {exp}, now {now}"));
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or("nbf not a number")?;
        if nbf > (now + LEEWAY + SLACK) as f64 {
            return Err(format!("not yet valid: nbf {nbf}, now {now}"));
        }
    }
    let sub = match claims.get("sub") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s
            .parse::<u64>()
            .ok()
            .filter(|_| !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit())),
        _ => None,
    }
    .ok_or("sub not a user id")?;
    if sub != identity.user_id.0 || !(1..=(1u64 << 53) - 1).contains(&sub) {
        return Err(format!("sub {sub} vs identity {}", identity.user_id));
    }
    Ok(())
}

fn auth_config(key: JwtKey) -> AuthConfig {
    AuthConfig {
        key,
        leeway: Duration::from_secs(LEEWAY),
        issuer: None,
        audience: None,
        allow_query_token: true,
        allowed_origins: Vec::new(),
    }
}

/// Whether the claims are ones the gateway must accept when genuinely signed.
fn well_formed(input: &Input) -> bool {
    matches!(input.sub, Val::NumStr(n) if n > 0 && !n.to_string().starts_with('0'))
        && matches!(input.exp, Val::FutureSecs(_))
        && matches!(input.nbf, Val::Absent | Val::PastSecs(_))
        && matches!(input.name, Val::Absent | Val::Null | Val::Str(_))
        && matches!(input.roles, Val::Absent | Val::Null | Val::Roles(_))
        && input.extra.is_empty()
}

fuzz_target!(|input: Input| {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = Map::new();
    for (k, v) in &input.extra {
        if let Some(j) = v.to_json(now) {
            claims.insert(k.clone(), j);
        }
    }
    for (k, v) in [
        ("sub", &input.sub),
        ("exp", &input.exp),
        ("nbf", &input.nbf),
        ("name", &input.name),
        ("roles", &input.roles),
    ] {
        if let Some(j) = v.to_json(now) {
            claims.insert(k.into(), j);
        }
    }
    let claims = Value::Object(claims);
    let mut token = match &input.signing {
        Signing::Secret(a) => sign(
            &json!({"alg": a.name(), "typ": "JWT"}),
            &claims,
            a.name(),
            Some(SECRET),
        ),
        Signing::OtherKey(a, k) => sign(&json!({"alg": a.name()}), &claims, a.name(), Some(k)),
        Signing::RsaPemAsSecret(a) => sign(
            &json!({"alg": a.name(), "typ": "JWT"}),
            &claims,
            a.name(),
            Some(RSA_SPKI.as_bytes()),
        ),
        Signing::Unsigned(alg) => sign(&json!({"alg": alg, "typ": "JWT"}), &claims, "HS256", None),
        Signing::RawHeader(h) => {
            let head = URL_SAFE_NO_PAD.encode(h);
            let body = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{head}.{body}");
            let sig = URL_SAFE_NO_PAD.encode(hmac("HS256", SECRET, input.as_bytes()));
            format!("{input}.{sig}").into_bytes()
        }
    };
    let pristine = token.clone();
    for &(at, x) in &input.edits {
        if !token.is_empty() {
            let i = usize::from(at) % token.len();
            token[i] ^= x;
        }
    }

    let mut authorization = input.authorization.clone();
    let mut protocols = input.protocols.clone();
    let mut cookie = input.cookie.clone();
    let mut query = input.query.clone();
    match input.carrier % 5 {
        0 => authorization = Some([b"Bearer ".as_slice(), &token].concat()),
        1 => protocols.insert(0, [b"bearer.".as_slice(), &token].concat()),
        2 => cookie = Some([b"a=b; auth_token=".as_slice(), &token].concat()),
        3 => query = Some(format!("x=1&token={}", String::from_utf8_lossy(&token))),
        _ => {}
    }
    let Some((_carrier, extracted)) = extract_token(
        authorization.as_deref(),
        protocols.iter().map(Vec::as_slice),
        cookie.as_deref(),
        query.as_deref(),
        input.allow_query,
    ) else {
        return;
    };

    let hs = Verifier::new(&auth_config(JwtKey::Hmac(SECRET.to_vec()))).expect("HS verifier");
    let result = hs.verify(&extracted);
    // The HS256 fast path in front of jsonwebtoken must decide exactly as jsonwebtoken does
    // (differential: same accept/refuse, same identity, same refusal reason).
    if result != hs.verify_with_jsonwebtoken(&extracted) {
        // The wall clock may have ticked between the two reads (an `exp` right at the
        // boundary): decide both again, back to back.
        assert_eq!(
            hs.verify(&extracted),
            hs.verify_with_jsonwebtoken(&extracted),
            "fast path and jsonwebtoken disagree on {extracted}"
        );
    }
    if let Ok(identity) = &result {
        if let Err(why) = independent_check(&extracted, identity, now) {
            panic!("accepted a token that fails the independent check ({why}): {extracted}");
        }
    }
    let rsa = Verifier::new(&auth_config(JwtKey::RsaPem(RSA_SPKI.as_bytes().to_vec())))
        .expect("RSA verifier");
    if let Ok(identity) = rsa.verify(&extracted) {
        panic!("RSA verifier accepted a token nobody signed: {identity:?} from {extracted}");
    }
    let genuine = matches!(input.signing, Signing::Secret(_)) && well_formed(&input);
    if genuine && token == pristine && extracted.as_bytes() == pristine.as_slice() {
        assert!(
            result.is_ok(),
            "genuine token refused: {result:?}: {extracted}"
        );
    }
});
