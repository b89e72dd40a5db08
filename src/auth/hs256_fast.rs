//! A fast path in front of jsonwebtoken for the common HS256 token.
//!
//! It only ever *accepts*: when a token is of the narrow shape below and jsonwebtoken would
//! accept it, the identity is built here; for anything else (including every token that would
//! be refused) it answers `None` and [`super::Verifier::verify`] runs jsonwebtoken as before,
//! so refusals, their reasons and every unusual token are jsonwebtoken's decision.
//!
//! What it saves per upgrade (callgrind, `customws-bench hold`): jsonwebtoken parses the header
//! twice and the claims twice (serde_json, with a serde error built for a numeric `sub`),
//! keys a fresh HMAC for each token (two extra SHA-256 blocks) and allocates the decoded parts;
//! here the HMAC is keyed once, nothing is allocated before the identity, and the claims are
//! read in one pass.
//!
//! The accepted shape, each rule chosen so that jsonwebtoken + serde_json provably decide the
//! same (checked by the differential test in `super::tests`):
//!
//! - The header part is byte for byte one of [`HEADERS`] (base64url of a fixed JSON text that
//!   jsonwebtoken decodes to `alg: HS256`), and the verifier's key is an HMAC secret whose
//!   algorithm list contains HS256.
//! - The parts are split as jsonwebtoken splits them (the last `.`, then the last `.` before
//!   it); the signature is decoded with the same base64 engine (`URL_SAFE_NO_PAD`, strict) and
//!   compared in constant time by the same `hmac` crate (`verify_slice`).
//! - The claims decode (same engine) to at most [`MAX_CLAIMS`] bytes of UTF-8 holding one
//!   JSON object whose keys contain no escape, with no repeated `exp`/`nbf`/`sub`/`name`/
//!   `roles`, no `iss`/`aud` (the fast path is only built when neither is configured, and
//!   skips tokens carrying them), and values that are strings without escapes or control
//!   characters, integers of at most 19 digits without sign, fraction or exponent (so they
//!   fit a `u64` exactly, as serde_json reads them), `true`, `false` or `null`; `roles` may
//!   also be an array of such strings.
//! - `exp` is an integer with `exp >= now - leeway`; `nbf` is absent or an integer with
//!   `nbf <= now + leeway` (jsonwebtoken's comparisons); `sub`, `name`, `roles` pass
//!   `RawClaims::into_identity`'s rules.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Identity, UserId, MAX_USER_ID};
use crate::proto::envelope::parse_decimal_id;

/// Largest decoded claims text handled here (on the stack); larger tokens take the slow path.
pub(super) const MAX_CLAIMS: usize = 1024;

/// The header JSON texts recognized: jsonwebtoken's own (`Header::new(HS256)`, what
/// `customws token` mints), the order most other libraries write, and the minimal header.
pub(super) const HEADERS: [&str; 3] = [
    r#"{"typ":"JWT","alg":"HS256"}"#,
    r#"{"alg":"HS256","typ":"JWT"}"#,
    r#"{"alg":"HS256"}"#,
];

/// An HMAC-SHA256 key, keyed once, and what the fast path needs of the validation.
pub(super) struct Hs256Fast {
    mac: Hmac<Sha256>,
    /// `HEADERS`, base64url-encoded as they appear in a token.
    headers: [String; HEADERS.len()],
    leeway: u64,
}

impl Hs256Fast {
    pub(super) fn new(secret: &[u8], leeway: u64) -> Self {
        Hs256Fast {
            // HMAC takes a key of any length.
            mac: Hmac::new_from_slice(secret).expect("HMAC accepts any key length"),
            headers: HEADERS.map(|h| URL_SAFE_NO_PAD.encode(h)),
            leeway,
        }
    }

    /// The identity if the token has the shape above and jsonwebtoken would accept it at Unix
    /// time `now`; `None` otherwise (the caller asks jsonwebtoken).
    pub(super) fn verify(&self, token: &[u8], now: u64) -> Option<Identity> {
        let dot = memchr::memrchr(b'.', token)?;
        let (message, signature) = (&token[..dot], &token[dot + 1..]);
        let dot = memchr::memrchr(b'.', message)?;
        let (header, payload) = (&message[..dot], &message[dot + 1..]);
        if !self.headers.iter().any(|h| h.as_bytes() == header) {
            return None;
        }
        let mut sig = [0u8; 64];
        let n = URL_SAFE_NO_PAD.decode_slice(signature, &mut sig).ok()?;
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.verify_slice(sig.get(..n)?).ok()?;
        let mut claims = [0u8; MAX_CLAIMS];
        let n = URL_SAFE_NO_PAD.decode_slice(payload, &mut claims).ok()?;
        let claims = std::str::from_utf8(claims.get(..n)?).ok()?;
        read_claims(claims.as_bytes(), now, self.leeway)
    }
}

/// A claim value of the accepted shape.
enum Val<'a> {
    Str(&'a str),
    Int(u64),
    Null,
    /// `true` / `false`: valid JSON, read by nobody here.
    Bool,
    Strings(Vec<Box<str>>),
}

/// Bits for the claims that must not repeat.
const EXP: u8 = 1;
const NBF: u8 = 2;
const SUB: u8 = 4;
const NAME: u8 = 8;
const ROLES: u8 = 16;

fn read_claims(text: &[u8], now: u64, leeway: u64) -> Option<Identity> {
    let mut cur = Cursor { b: text, i: 0 };
    let mut seen = 0u8;
    let (mut exp, mut nbf, mut sub) = (None, None, None);
    let mut name: Option<&str> = None;
    let mut roles: Vec<Box<str>> = Vec::new();
    cur.ws();
    cur.eat(b'{')?;
    cur.ws();
    if !cur.peek_is(b'}') {
        loop {
            let key = cur.string()?;
            cur.ws();
            cur.eat(b':')?;
            cur.ws();
            let bit = match key {
                "exp" => EXP,
                "nbf" => NBF,
                "sub" => SUB,
                "name" => NAME,
                "roles" => ROLES,
                "iss" | "aud" => return None,
                _ => 0,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            let val = cur.value(bit == ROLES)?;
            match bit {
                EXP => exp = Some(val),
                NBF => nbf = Some(val),
                SUB => sub = Some(val),
                NAME => match val {
                    Val::Str(s) => name = Some(s),
                    Val::Null => {}
                    _ => return None,
                },
                ROLES => match val {
                    Val::Strings(r) => roles = r,
                    Val::Null => {}
                    _ => return None,
                },
                _ => {}
            }
            cur.ws();
            if cur.eat(b',').is_some() {
                cur.ws();
                continue;
            }
            cur.eat(b'}')?;
            break;
        }
    } else {
        cur.i += 1;
    }
    cur.ws();
    if cur.i != text.len() {
        return None;
    }
    // jsonwebtoken: `exp` required and `exp < now - leeway` expired; `nbf > now + leeway`
    // not yet valid (u64 arithmetic; a clock before the leeway is left to it).
    let Some(Val::Int(exp)) = exp else {
        return None;
    };
    if exp < now.checked_sub(leeway)? {
        return None;
    }
    match nbf {
        None => {}
        Some(Val::Int(nbf)) if nbf <= now.checked_add(leeway)? => {}
        Some(_) => return None,
    }
    // `RawClaims::into_identity`.
    let user = match sub? {
        Val::Int(id) => UserId(id),
        Val::Str(s) => UserId(parse_decimal_id(s)?),
        _ => return None,
    };
    if !(1..=MAX_USER_ID).contains(&user.0) {
        return None;
    }
    Some(Identity {
        user_id: user,
        name: name.unwrap_or("").into(),
        roles,
        exp,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// JSON whitespace, as serde_json skips it.
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek_is(&self, c: u8) -> bool {
        self.b.get(self.i) == Some(&c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.peek_is(c).then(|| self.i += 1)
    }

    /// A string without escapes or control characters; its text (the input is UTF-8).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = self.b.get(self.i..)?;
        let len = memchr::memchr2(b'"', b'\\', rest)?;
        let body = rest.get(..len)?;
        if rest.get(len) != Some(&b'"') || body.iter().any(|&c| c < 0x20) {
            return None;
        }
        self.i += len + 1;
        // The whole text is UTF-8 and `"` is ASCII, so this slice is too.
        std::str::from_utf8(body).ok()
    }

    /// An integer of 1–19 digits, no sign, no leading zero, not followed by a fraction or an
    /// exponent (serde_json reads it as exactly this `u64`).
    fn integer(&mut self) -> Option<u64> {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = self.b.get(start..self.i)?;
        if digits.is_empty()
            || digits.len() > 19
            || (digits.len() > 1 && digits[0] == b'0')
            || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    fn value(&mut self, strings_array: bool) -> Option<Val<'a>> {
        match self.b.get(self.i)? {
            b'"' => self.string().map(Val::Str),
            b'0'..=b'9' => self.integer().map(Val::Int),
            b'n' => self.literal(b"null").map(|()| Val::Null),
            b't' => self.literal(b"true").map(|()| Val::Bool),
            b'f' => self.literal(b"false").map(|()| Val::Bool),
            b'[' if strings_array => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(Val::Strings(items));
                }
                loop {
                    items.push(Box::from(self.string()?));
                    self.ws();
                    if self.eat(b',').is_some() {
                        self.ws();
                        continue;
                    }
                    self.eat(b']')?;
                    return Some(Val::Strings(items));
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::HEADERS;
    use crate::auth::Verifier;
    use crate::config::{AuthConfig, JwtKey};

    const SECRET: &[u8] = b"differential-secret";

    fn verifier(leeway: u64) -> Verifier {
        Verifier::new(&AuthConfig {
            key: JwtKey::Hmac(SECRET.to_vec()),
            leeway: Duration::from_secs(leeway),
            issuer: None,
            audience: None,
            allow_query_token: true,
            allowed_origins: Vec::new(),
        })
        .unwrap()
    }

    /// `header.claims.signature` with an HS256 signature made by jsonwebtoken.
    fn sign(header: &str, claims: &[u8], key: &[u8]) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(key),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{sig}")
    }

    fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
        items[rng.random_range(0..items.len())]
    }

    /// A claim value, mostly of the fast path's shape, often not.
    fn value(rng: &mut StdRng, now: u64) -> String {
        let t = now as i64;
        match rng.random_range(0..14) {
            0..=3 => (t + rng.random_range(-200..200)).to_string(),
            4 => rng.random_range(0..u64::MAX).to_string(),
            5 => pick(
                rng,
                &[
                    "0",
                    "1",
                    "-1",
                    "-0",
                    "007",
                    "1.0",
                    "1e3",
                    "9007199254740991",
                    "9007199254740992",
                    "99999999999999999999",
                    "18446744073709551615",
                    "18446744073709551616",
                    "1E2",
                    "0.5",
                ],
            )
            .to_owned(),
            6 => format!("{:?}", (t + rng.random_range(-100..100)).to_string()),
            7 => pick(
                rng,
                &[
                    r#""42""#,
                    r#""042""#,
                    r#""""#,
                    r#""Ada""#,
                    r#""\u0041da""#,
                    r#""a\"b""#,
                    r#""é✓""#,
                    "\"tab\there\"",
                    r#""12345678901234567""#,
                    r#""-5""#,
                ],
            )
            .to_owned(),
            8 => pick(rng, &["null", "true", "false"]).to_owned(),
            9 => pick(
                rng,
                &[
                    r#"["admin","ops"]"#,
                    "[]",
                    r#"[ "a" , "b" ]"#,
                    r#"["a",1]"#,
                    r#"[null]"#,
                    r#"[["a"]]"#,
                    r#"["\u0061"]"#,
                    "[\"a\",]",
                ],
            )
            .to_owned(),
            10 => pick(rng, &[r#"{}"#, r#"{"a":1}"#, r#"{"a":[1,{"b":2}]}"#]).to_owned(),
            11 => format!("{}.{}", t, rng.random_range(0..10)),
            12 => pick(rng, &["nul", "tru", "NaN", "Infinity", "+1", "1 2", "\"x"]).to_owned(),
            _ => rng.random_range(1..100_000u64).to_string(),
        }
    }

    fn key(rng: &mut StdRng) -> &'static str {
        match rng.random_range(0..20) {
            0..=3 => "sub",
            4..=7 => "exp",
            8 | 9 => "nbf",
            10 | 11 => "name",
            12 | 13 => "roles",
            14 => "iat",
            15 => "iss",
            16 => "aud",
            17 => "s\\u0075b",
            18 => "jti",
            _ => "other",
        }
    }

    fn ws(rng: &mut StdRng) -> &'static str {
        if rng.random_range(0..6) == 0 {
            pick(rng, &[" ", "\n", "\t ", "\r\n", "\u{a0}", "\u{0c}"])
        } else {
            ""
        }
    }

    /// Claims text: usually a good token's (sub, exp, maybe name/roles/nbf/iat), then with
    /// random extra, repeated or odd members, odd values, whitespace and corruptions.
    fn claims(rng: &mut StdRng, now: u64, clean: bool) -> Vec<u8> {
        let mut members: Vec<(String, String)> = Vec::new();
        if clean || rng.random_range(0..4) != 0 {
            members.push(("sub".into(), rng.random_range(1..1_000_000u64).to_string()));
            members.push(("exp".into(), (now + rng.random_range(0..3600)).to_string()));
        }
        if clean {
            let good = [
                ("name", r#""Ada Lovelace""#.to_owned()),
                ("roles", r#"["admin","ops"]"#.to_owned()),
                ("iat", now.to_string()),
                ("nbf", (now - 5).to_string()),
                ("jti", r#""abc-123""#.to_owned()),
                ("flag", "true".to_owned()),
            ];
            for (k, v) in good {
                if rng.random_range(0..2) == 0 {
                    members.push((k.into(), v));
                }
            }
        }
        for _ in 0..rng.random_range(0..if clean { 1 } else { 5 }) {
            members.push((key(rng).into(), value(rng, now)));
        }
        for i in (1..members.len()).rev() {
            members.swap(i, rng.random_range(0..=i));
        }
        // Odd whitespace (some of it not JSON's) only in the tokens that are anything.
        let ws = |rng: &mut StdRng| if clean { "" } else { ws(rng) };
        let mut s = String::new();
        s.push_str(ws(rng));
        s.push('{');
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                s.push_str(ws(rng));
                s.push(',');
            }
            s.push_str(ws(rng));
            s.push('"');
            s.push_str(k);
            s.push('"');
            s.push_str(ws(rng));
            s.push(':');
            s.push_str(ws(rng));
            s.push_str(v);
        }
        s.push_str(ws(rng));
        s.push('}');
        s.push_str(ws(rng));
        let mut bytes = s.into_bytes();
        match rng.random_range(0..if clean { 100 } else { 30 }) {
            0 => bytes.push(b'x'),
            1 => bytes.extend_from_slice(b",}"),
            2 if !bytes.is_empty() => {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            3 => bytes.insert(0, b'['),
            4 => bytes.extend_from_slice(&[b' '; 1100]),
            _ => {}
        }
        bytes
    }

    fn header(rng: &mut StdRng) -> String {
        match rng.random_range(0..12) {
            0..=6 => HEADERS[rng.random_range(0..HEADERS.len())].to_owned(),
            _ => pick(
                rng,
                &[
                    r#"{"alg":"HS384"}"#,
                    r#"{"alg":"none"}"#,
                    r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#,
                    r#"{"alg":"HS256","alg":"HS256"}"#,
                    r#"{"typ":"JWT","alg":"HS256"} "#,
                    r#"{"alg":"RS256"}"#,
                    r#"{"typ":"JWT"}"#,
                ],
            )
            .to_owned(),
        }
    }

    /// Tamper with a token's text (signature, dots, base64 details).
    fn mangle(rng: &mut StdRng, token: String) -> String {
        let mut t = token.into_bytes();
        match rng.random_range(0..16) {
            0 if !t.is_empty() => {
                let at = rng.random_range(0..t.len());
                t[at] = b"AQgw_-.=+/ \0"[rng.random_range(0..12)];
            }
            1 => t.push(b'='),
            2 => t.extend_from_slice(b".x"),
            3 => {
                let dot = t.iter().rposition(|&b| b == b'.').unwrap_or(0);
                t.truncate(dot);
            }
            4 => {
                // The signature's last character changed in its unused low bits only.
                if let Some(last) = t.last_mut() {
                    *last = match *last {
                        b'A' => b'B',
                        b'E' => b'F',
                        c => c,
                    };
                }
            }
            5 => t.insert(0, b'.'),
            _ => {}
        }
        String::from_utf8_lossy(&t).into_owned()
    }

    /// Differential test: random tokens of every kind, each verified with the fast path in
    /// front (`verify`) and by jsonwebtoken alone; the decisions and identities must be equal,
    /// and the fast path must have been the one deciding for a good share of them.
    #[test]
    fn fast_path_decides_like_jsonwebtoken() {
        let mut rng = StdRng::seed_from_u64(0x5EED_0A07);
        let verifiers = [verifier(30), verifier(0)];
        let (mut fast_hits, mut accepted, mut total) = (0, 0, 0);
        for i in 0..60_000 {
            let now = jsonwebtoken::get_current_timestamp();
            // A third of the tokens are good ones (as clients send them), the rest anything.
            let clean = rng.random_range(0..3) == 0;
            let claims = claims(&mut rng, now, clean);
            let key: &[u8] = if !clean && rng.random_range(0..25) == 0 {
                b"another-secret"
            } else {
                SECRET
            };
            let header = if clean {
                HEADERS[i % HEADERS.len()].to_owned()
            } else {
                header(&mut rng)
            };
            let signed = sign(&header, &claims, key);
            let token = if clean {
                signed
            } else {
                mangle(&mut rng, signed)
            };
            let v = &verifiers[i % 2];
            let fast = v.fast.as_ref().unwrap().verify(token.as_bytes(), now);
            let slow = v.verify_with_jsonwebtoken(&token);
            if let Some(id) = &fast {
                assert_eq!(Ok(id), slow.as_ref(), "fast path accepted: {token}");
                fast_hits += 1;
            }
            assert_eq!(v.verify(&token), slow, "{token}");
            accepted += usize::from(slow.is_ok());
            total += 1;
        }
        eprintln!("{total} tokens: {accepted} accepted, {fast_hits} of them by the fast path");
        // The generator must reach both sides often enough for the test to mean something.
        assert!(
            fast_hits > total / 5,
            "fast path hits {fast_hits} of {total}"
        );
        assert!(
            accepted - fast_hits > total / 200,
            "slow-only accepts: {}",
            accepted - fast_hits
        );
        assert!(
            total - accepted > total / 5,
            "refusals: {}",
            total - accepted
        );
    }

    /// The recognized headers are what jsonwebtoken reads as `alg: HS256`.
    #[test]
    fn recognized_headers_are_hs256_to_jsonwebtoken() {
        for h in HEADERS {
            let token = format!("{}.e30.", URL_SAFE_NO_PAD.encode(h));
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, Algorithm::HS256, "{h}");
        }
        // jsonwebtoken mints the first one.
        let minted = crate::auth::mint_hs256(SECRET, 1, None, &[], Duration::from_secs(60));
        assert!(minted.starts_with(&URL_SAFE_NO_PAD.encode(HEADERS[0])));
    }

    /// The bench's own token (the common case) takes the fast path.
    #[test]
    fn minted_tokens_take_the_fast_path() {
        let v = verifier(30);
        let t = crate::auth::mint_hs256(SECRET, 7, Some("user7"), &["a"], Duration::from_secs(60));
        let now = jsonwebtoken::get_current_timestamp();
        let id = v
            .fast
            .as_ref()
            .unwrap()
            .verify(t.as_bytes(), now)
            .expect("fast path");
        assert_eq!(Ok(id), v.verify_with_jsonwebtoken(&t));
    }
}
