//! JWT authentication and the origin check for the upgrade (spec section 3).
//!
//! Order of work for one upgrade: [`OriginPolicy::allows`] (403) → [`extract_token`] from the
//! first carrier present (401 `missing` when none) → [`Verifier::verify`] (401) → an
//! [`Identity`] for the shard. Only the configured algorithm family is accepted, so an HS token
//! is never checked against an RSA public key (RS/HS confusion) and `alg: none` never passes:
//! jsonwebtoken 10 has no `none` algorithm at all (its header fails to parse), and it rejects
//! any `alg` outside `Validation::algorithms` before touching the key.
//!
//! jsonwebtoken pitfalls handled here (field notes): its default leeway is 60 s (we use the
//! configured one), `nbf` is ignored unless `validate_nbf` is set (we set it), `exp`/`nbf` of
//! the wrong JSON type skipped validation before 10.3 (CVE-2026-25537; regression tests
//! below), and it needs exactly one crypto backend (`rust_crypto` in Cargo.toml).

use std::borrow::Cow;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{AuthConfig, JwtKey};
use crate::proto::envelope::parse_decimal_id;

mod hs256_fast;

/// The subprotocol the gateway speaks; selected whenever the client offers it.
pub const SUBPROTOCOL: &str = "customws.v1";

/// Prefix of the subprotocol entry carrying a token (`bearer.<jwt>`); never echoed back.
const BEARER_PROTOCOL_PREFIX: &[u8] = b"bearer.";

/// Name of the cookie carrying a token.
const TOKEN_COOKIE: &str = "auth_token";

/// Name of the query parameter carrying a token.
const TOKEN_QUERY_PARAM: &str = "token";

/// Largest accepted `sub`: 2^53 − 1, the largest integer a JavaScript client holds exactly
/// (the envelope's limit on user ids, the same constant).
pub use crate::proto::envelope::MAX_USER_ID;

/// Largest accepted clock-skew leeway.
const MAX_LEEWAY: Duration = Duration::from_secs(86_400);

/// A user id: the JWT `sub`, in `1..=2^53 − 1`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub u64);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Who a verified token says the client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    /// The `name` claim; empty when the token has none (the id is not substituted, so the
    /// application can tell "no name" apart).
    pub name: Box<str>,
    /// The `roles` claim; empty when absent.
    pub roles: Vec<Box<str>>,
    /// `exp`, Unix seconds: when the open connection must be refreshed or closed (4001).
    pub exp: u64,
}

impl Identity {
    /// Whether the token granted `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }
}

/// Where the token came from (a metric label; the query carrier leaks into proxy logs).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// `Authorization: Bearer <jwt>`.
    Header,
    /// `Sec-WebSocket-Protocol: customws.v1, bearer.<jwt>`.
    Subprotocol,
    /// Cookie `auth_token`.
    Cookie,
    /// Query parameter `token`.
    Query,
}

impl Carrier {
    /// Stable snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Subprotocol => "subprotocol",
            Self::Cookie => "cookie",
            Self::Query => "query",
        }
    }
}

/// Why a token was refused. Every variant is answered 401 before the upgrade.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No carrier held a token.
    #[error("no token")]
    Missing,
    /// Not a JWT: wrong number of parts, bad base64, bad JSON, claims not an object, or a
    /// registered claim (`exp`, `nbf`, `sub`, `iss`, `aud`) holding an array or object, which
    /// jsonwebtoken's claim parser cannot skip over.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match the configured key.
    #[error("bad signature")]
    BadSignature,
    /// `alg` outside the configured family, or unknown (`none`).
    #[error("algorithm not accepted")]
    WrongAlgorithm,
    /// `exp` is past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `exp` absent or not a number (a string or an object counts as absent).
    #[error("token has no numeric exp")]
    MissingExp,
    /// `nbf` present but not a number.
    #[error("token nbf is not a number")]
    BadNbf,
    /// `iss` absent or not the configured issuer.
    #[error("wrong issuer")]
    BadIssuer,
    /// `aud` absent or not the configured audience.
    #[error("wrong audience")]
    BadAudience,
    /// `sub` absent or not an integer in 1..=2^53−1 (number or decimal string).
    #[error("sub is not a user id in 1..=2^53-1")]
    BadSubject,
    /// `name` present but not a string.
    #[error("name is not a string")]
    BadName,
    /// `roles` present but not an array of strings.
    #[error("roles is not an array of strings")]
    BadRoles,
    /// The configured key could not be used for this token (operator error: the PEM parsed
    /// but holds no usable key).
    #[error("verification key unusable")]
    KeyRejected,
}

impl AuthError {
    /// A short snake_case label, stable, usable as a Prometheus label value.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::MissingExp => "missing_exp",
            Self::BadNbf => "bad_nbf",
            Self::BadIssuer => "bad_issuer",
            Self::BadAudience => "bad_audience",
            Self::BadSubject => "bad_subject",
            Self::BadName => "bad_name",
            Self::BadRoles => "bad_roles",
            Self::KeyRejected => "key_rejected",
        }
    }

    /// The HTTP status before the upgrade: always 401.
    pub fn status(&self) -> u16 {
        401
    }
}

/// Why the verifier (or a minted token) could not be built: operator errors at startup.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// An empty HMAC secret would accept tokens anyone can sign.
    #[error("the HMAC secret is empty")]
    EmptySecret,
    #[error("the RSA public key is not a valid PEM (expected `BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`): {0}")]
    BadRsaPem(jsonwebtoken::errors::Error),
    #[error("the EC public key is not a valid P-256 PEM (expected `BEGIN PUBLIC KEY`): {0}")]
    BadEcPem(jsonwebtoken::errors::Error),
    #[error("the Ed25519 public key is not a valid PEM (expected `BEGIN PUBLIC KEY`): {0}")]
    BadEdPem(jsonwebtoken::errors::Error),
    /// jsonwebtoken computes `now - leeway` in `u64`; a leeway this large is a mistake anyway.
    #[error("JWT leeway {0:?} is larger than one day")]
    LeewayTooLarge(Duration),
    /// Signing failed (key and algorithm of different families, or a bad private key).
    #[error("could not sign a token: {0}")]
    Mint(jsonwebtoken::errors::Error),
}

/// Verifies tokens against the one configured key and algorithm family.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// For an HMAC secret without a configured issuer or audience: accepts the common HS256
    /// token without jsonwebtoken (see `hs256_fast`); anything else goes to jsonwebtoken.
    fast: Option<hs256_fast::Hs256Fast>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds the verifier; a PEM that does not parse as the configured key type is refused here,
    /// not at the first handshake.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthSetupError> {
        let (key, algorithms) = match &cfg.key {
            JwtKey::Hmac(secret) if secret.is_empty() => return Err(AuthSetupError::EmptySecret),
            JwtKey::Hmac(secret) => (
                DecodingKey::from_secret(secret),
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            ),
            JwtKey::RsaPem(pem) => (
                DecodingKey::from_rsa_pem(pem).map_err(AuthSetupError::BadRsaPem)?,
                vec![Algorithm::RS256],
            ),
            JwtKey::EcPem(pem) => (
                DecodingKey::from_ec_pem(pem).map_err(AuthSetupError::BadEcPem)?,
                vec![Algorithm::ES256],
            ),
            JwtKey::EdPem(pem) => (
                DecodingKey::from_ed_pem(pem).map_err(AuthSetupError::BadEdPem)?,
                vec![Algorithm::EdDSA],
            ),
        };
        if cfg.leeway > MAX_LEEWAY {
            return Err(AuthSetupError::LeewayTooLarge(cfg.leeway));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = algorithms;
        validation.required_spec_claims = ["exp".to_owned()].into();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = cfg.leeway.as_secs();
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.validate_aud = true;
                validation.required_spec_claims.insert("aud".to_owned());
            }
            // Without a configured audience, a token naming one is not our business: accept it
            // (jsonwebtoken would otherwise reject every token carrying `aud`).
            None => validation.validate_aud = false,
        }
        let fast = match &cfg.key {
            JwtKey::Hmac(secret) if cfg.issuer.is_none() && cfg.audience.is_none() => {
                Some(hs256_fast::Hs256Fast::new(secret, validation.leeway))
            }
            _ => None,
        };
        Ok(Verifier {
            key,
            validation,
            fast,
        })
    }

    /// Verifies signature, algorithm, `exp`/`nbf` (with leeway), `iss`/`aud` when configured,
    /// then the customws claims (`sub`, `name`, `roles`). Reads the wall clock.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some(fast) = &self.fast {
            if let Some(identity) =
                fast.verify(token.as_bytes(), jsonwebtoken::get_current_timestamp())
            {
                return Ok(identity);
            }
        }
        self.verify_with_jsonwebtoken(token)
    }

    /// [`Verifier::verify`] without the HS256 fast path: every token through jsonwebtoken.
    /// For the differential test and the `auth` benchmark.
    #[doc(hidden)]
    pub fn verify_with_jsonwebtoken(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| classify(e.kind(), token))?;
        data.claims.into_identity()
    }
}

/// Maps jsonwebtoken's error to one rule. Parse failures are re-checked for an unknown `alg`
/// (such as `none`), which jsonwebtoken reports as a JSON error of the header.
fn classify(kind: &ErrorKind, token: &str) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => match c.as_str() {
            "exp" => AuthError::MissingExp,
            "nbf" => AuthError::BadNbf,
            "iss" => AuthError::BadIssuer,
            "aud" => AuthError::BadAudience,
            "sub" => AuthError::BadSubject,
            _ => AuthError::Malformed,
        },
        ErrorKind::InvalidIssuer => AuthError::BadIssuer,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        ErrorKind::InvalidSubject => AuthError::BadSubject,
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => AuthError::KeyRejected,
        _ if header_names_unknown_alg(token) => AuthError::WrongAlgorithm,
        _ => AuthError::Malformed,
    }
}

/// Whether the token's header decodes and names an `alg` jsonwebtoken does not know.
fn header_names_unknown_alg(token: &str) -> bool {
    use base64::Engine as _;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    match serde_json::from_slice::<Value>(&json) {
        Ok(Value::Object(map)) => match map.get("alg") {
            Some(Value::String(alg)) => alg.parse::<Algorithm>().is_err(),
            Some(_) => true,
            None => false,
        },
        _ => false,
    }
}

/// The claims customws reads, kept loose so each bad one gets its own error after
/// jsonwebtoken's checks instead of a generic deserialization failure.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    roles: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
}

impl RawClaims {
    fn into_identity(self) -> Result<Identity, AuthError> {
        let user_id = parse_subject(self.sub.as_ref()).ok_or(AuthError::BadSubject)?;
        // jsonwebtoken accepted `exp` as a non-negative number (floats rounded); mirror that.
        let exp = match &self.exp {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64)),
            _ => None,
        }
        .ok_or(AuthError::MissingExp)?;
        let name = match self.name {
            None | Some(Value::Null) => Box::from(""),
            Some(Value::String(s)) => s.into_boxed_str(),
            Some(_) => return Err(AuthError::BadName),
        };
        let roles = match self.roles {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|r| match r {
                    Value::String(s) => Ok(s.into_boxed_str()),
                    _ => Err(AuthError::BadRoles),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(AuthError::BadRoles),
        };
        Ok(Identity {
            user_id,
            name,
            roles,
            exp,
        })
    }
}

/// `sub` as a user id: a JSON integer or a canonical decimal string (digits only, no sign, no
/// leading zero), in `1..=2^53−1`. Floats (even `5.0`) are refused.
fn parse_subject(sub: Option<&Value>) -> Option<UserId> {
    let id = match sub? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => parse_decimal_id(s)?,
        _ => return None,
    };
    (1..=MAX_USER_ID).contains(&id).then_some(UserId(id))
}

/// Takes the token from the first carrier present, in the spec's order: `Authorization:
/// Bearer`, subprotocol entry `bearer.<jwt>`, cookie `auth_token`, query `token` (when
/// `allow_query`). The first carrier present wins even if its token is bad: carriers are not
/// tried one after another until something verifies.
///
/// `protocols` are the individual subprotocol entries (e.g. `UpgradeRequest::protocols`).
/// An `Authorization` header with another scheme (`Basic` from a proxy) is skipped. Non-UTF-8
/// bytes become U+FFFD, so such a token fails verification as malformed.
pub fn extract_token<'a, P>(
    authorization: Option<&'a [u8]>,
    protocols: P,
    cookie: Option<&'a [u8]>,
    query: Option<&'a str>,
    allow_query: bool,
) -> Option<(Carrier, Cow<'a, str>)>
where
    P: IntoIterator<Item = &'a [u8]>,
{
    if let Some(token) = authorization.and_then(bearer_token) {
        return Some((Carrier::Header, utf8_lossy(token)));
    }
    let from_protocol = protocols.into_iter().find_map(|p| {
        let prefix = p.get(..BEARER_PROTOCOL_PREFIX.len())?;
        let token = p.get(BEARER_PROTOCOL_PREFIX.len()..)?;
        (prefix.eq_ignore_ascii_case(BEARER_PROTOCOL_PREFIX) && !token.is_empty()).then_some(token)
    });
    if let Some(token) = from_protocol {
        return Some((Carrier::Subprotocol, utf8_lossy(token)));
    }
    if let Some(token) = cookie.and_then(cookie_token) {
        return Some((Carrier::Cookie, utf8_lossy(token)));
    }
    if allow_query {
        if let Some(token) = query.and_then(query_token) {
            return Some((Carrier::Query, token));
        }
    }
    None
}

/// `String::from_utf8_lossy`, with the (much cheaper) plain UTF-8 check first: a token is
/// ASCII, so the lossy walk only runs for text that needs replacement characters.
fn utf8_lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Whether the client offered [`SUBPROTOCOL`], so the 101 may select it. A client that sent
/// `bearer.<jwt>` without `customws.v1` gets no `Sec-WebSocket-Protocol` back (the server
/// may only select an offered entry, and never the token one).
pub fn offered_customws_v1<'a>(protocols: impl IntoIterator<Item = &'a [u8]>) -> bool {
    protocols
        .into_iter()
        .any(|p| p.eq_ignore_ascii_case(SUBPROTOCOL.as_bytes()))
}

/// `Bearer <token>` (scheme case-insensitive, RFC 7235); `None` for other schemes or no token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let scheme = value.get(..6)?;
    let rest = value.get(6..)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    Some(rest.trim_ascii()).filter(|t| !t.is_empty())
}

/// The `auth_token` value from a `Cookie` header (`a=b; auth_token=<jwt>`), quotes removed.
fn cookie_token(header: &[u8]) -> Option<&[u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair.get(..eq)?, pair.get(eq + 1..)?);
        if name.trim_ascii() != TOKEN_COOKIE.as_bytes() {
            return None;
        }
        let value = value.trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        (!value.is_empty()).then_some(value)
    })
}

/// The first `token` parameter of a query string, percent-decoded.
fn query_token(query: &str) -> Option<Cow<'_, str>> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == TOKEN_QUERY_PARAM && !value.is_empty()).then(|| percent_decode(value))
    })
}

/// RFC 3986 percent-decoding; a `%` not followed by two hex digits is kept as is. `+` is
/// kept (JWTs never contain spaces, and base64url has no `+`).
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Which browser origins may upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    /// Normalized: ASCII-lowercased, no trailing slash.
    allowed: Vec<Box<[u8]>>,
}

impl OriginPolicy {
    /// From the configured list: `*` allows every origin; an empty list refuses every browser.
    pub fn new(allowed_origins: &[String]) -> Self {
        OriginPolicy {
            any: allowed_origins.iter().any(|o| o.trim() == "*"),
            allowed: allowed_origins
                .iter()
                .map(|o| normalize_origin(o.as_bytes()).to_ascii_lowercase().into())
                .collect(),
        }
    }

    /// No `Origin` (a non-browser client) is always allowed; otherwise `*` or an exact match,
    /// ASCII case-insensitive (scheme and host are), ignoring one trailing slash. Default ports
    /// are not normalized: list `https://a.example:443` separately if clients send it.
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        let origin = normalize_origin(origin);
        self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
    }
}

fn normalize_origin(origin: &[u8]) -> &[u8] {
    let origin = origin.trim_ascii();
    origin.strip_suffix(b"/").unwrap_or(origin)
}

/// Signs an HS256 token for `customws token`, `--dev` and tests: `sub` as a JSON number,
/// `iat` now, `exp` now + `ttl`, `name` and `roles` when given.
pub fn mint_hs256(
    secret: &[u8],
    sub: u64,
    name: Option<&str>,
    roles: &[&str],
    ttl: Duration,
) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = serde_json::json!({
        "sub": sub,
        "iat": now,
        "exp": now.saturating_add(ttl.as_secs()),
    });
    if let Some(name) = name {
        claims["name"] = Value::from(name);
    }
    if !roles.is_empty() {
        claims["roles"] = Value::from(roles);
    }
    mint(&EncodingKey::from_secret(secret), Algorithm::HS256, &claims)
        .expect("HMAC signing takes any key length and cannot fail")
}

/// Signs arbitrary claims (tests need odd tokens: string `exp`, float `sub`, ...).
pub fn mint(key: &EncodingKey, alg: Algorithm, claims: &Value) -> Result<String, AuthSetupError> {
    jsonwebtoken::encode(&Header::new(alg), claims, key).map_err(AuthSetupError::Mint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-test-secret-test-sec";

    fn cfg(key: JwtKey) -> AuthConfig {
        AuthConfig {
            key,
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            allow_query_token: true,
            allowed_origins: Vec::new(),
        }
    }

    fn hs_verifier() -> Verifier {
        Verifier::new(&cfg(JwtKey::Hmac(SECRET.to_vec()))).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(alg: Algorithm, claims: Value) -> String {
        mint(&EncodingKey::from_secret(SECRET), alg, &claims).unwrap()
    }

    fn claims(sub: Value) -> Value {
        json!({ "sub": sub, "exp": now() + 600 })
    }

    fn verify_hs(claims: Value) -> Result<Identity, AuthError> {
        hs_verifier().verify(&hs(Algorithm::HS256, claims))
    }

    /// A token with a hand-made header and no (or any) signature.
    fn raw_token(header: &str, claims: &Value, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    // ---- carriers ----

    fn extract<'a>(
        auth: Option<&'a [u8]>,
        protos: &[&'a [u8]],
        cookie: Option<&'a [u8]>,
        query: Option<&'a str>,
        allow_query: bool,
    ) -> Option<(Carrier, String)> {
        extract_token(auth, protos.iter().copied(), cookie, query, allow_query)
            .map(|(c, t)| (c, t.into_owned()))
    }

    #[test]
    fn each_carrier() {
        let got = |c: Carrier, t: &str| Some((c, t.to_owned()));
        assert_eq!(
            extract(Some(b"Bearer a.b.c"), &[], None, None, true),
            got(Carrier::Header, "a.b.c")
        );
        assert_eq!(
            extract(Some(b"  bEaReR   a.b.c  "), &[], None, None, true),
            got(Carrier::Header, "a.b.c")
        );
        assert_eq!(
            extract(None, &[b"customws.v1", b"bearer.a.b.c"], None, None, true),
            got(Carrier::Subprotocol, "a.b.c")
        );
        assert_eq!(
            extract(None, &[], Some(b"x=1; auth_token=a.b.c; y=2"), None, true),
            got(Carrier::Cookie, "a.b.c")
        );
        assert_eq!(
            extract(None, &[], Some(b"auth_token=\"a.b.c\""), None, true),
            got(Carrier::Cookie, "a.b.c")
        );
        assert_eq!(
            extract(None, &[], None, Some("x=1&token=a.b%2Ec&token=zzz"), true),
            got(Carrier::Query, "a.b.c")
        );
        assert_eq!(
            extract(None, &[], None, Some("token=a.b.c"), true),
            got(Carrier::Query, "a.b.c")
        );
    }

    #[test]
    fn carrier_precedence() {
        let all = |allow| {
            extract(
                Some(b"Bearer h"),
                &[b"bearer.p"],
                Some(b"auth_token=c"),
                Some("token=q"),
                allow,
            )
        };
        assert_eq!(all(true), Some((Carrier::Header, "h".into())));
        assert_eq!(
            extract(
                None,
                &[b"bearer.p"],
                Some(b"auth_token=c"),
                Some("token=q"),
                true
            ),
            Some((Carrier::Subprotocol, "p".into()))
        );
        assert_eq!(
            extract(None, &[], Some(b"auth_token=c"), Some("token=q"), true),
            Some((Carrier::Cookie, "c".into()))
        );
        // Another Authorization scheme is skipped, not treated as a bad token.
        assert_eq!(
            extract(Some(b"Basic dTpw"), &[], Some(b"auth_token=c"), None, true),
            Some((Carrier::Cookie, "c".into()))
        );
        // Near misses are not tokens.
        assert_eq!(extract(Some(b"Bearer"), &[], None, None, true), None);
        assert_eq!(extract(Some(b"Bearerx.y.z"), &[], None, None, true), None);
        assert_eq!(extract(None, &[b"bearer."], None, None, true), None);
        assert_eq!(extract(None, &[], Some(b"xauth_token=c"), None, true), None);
        assert_eq!(
            extract(None, &[], None, Some("xtoken=q&token="), true),
            None
        );
        assert_eq!(extract(None, &[], None, None, true), None);
    }

    #[test]
    fn query_carrier_can_be_switched_off() {
        assert_eq!(extract(None, &[], None, Some("token=q"), false), None);
        assert_eq!(
            extract(None, &[], Some(b"auth_token=c"), Some("token=q"), false),
            Some((Carrier::Cookie, "c".into()))
        );
    }

    #[test]
    fn customws_v1_offer() {
        assert!(offered_customws_v1([&b"bearer.x"[..], b"customws.v1"]));
        assert!(!offered_customws_v1([&b"bearer.customws.v1"[..]]));
        assert!(!offered_customws_v1(std::iter::empty()));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41%4a%"), "aAJ%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert!(matches!(percent_decode("plain"), Cow::Borrowed(_)));
    }

    // ---- valid tokens ----

    #[test]
    fn hmac_family_accepted() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = hs(
                alg,
                json!({"sub": 42, "exp": now() + 60, "name": "Ann", "roles": ["admin", "x"]}),
            );
            let id = hs_verifier().verify(&t).unwrap();
            assert_eq!(id.user_id, UserId(42));
            assert_eq!(&*id.name, "Ann");
            assert!(id.has_role("admin") && !id.has_role("root"));
            assert_eq!(id.exp, now() + 60);
        }
    }

    #[test]
    fn minted_token_round_trips() {
        let t = mint_hs256(SECRET, 7, Some("Bo"), &["p2p"], Duration::from_secs(60));
        let id = hs_verifier().verify(&t).unwrap();
        assert_eq!(id.user_id, UserId(7));
        assert_eq!(&*id.name, "Bo");
        assert_eq!(id.roles, vec![Box::<str>::from("p2p")]);
        let bare = mint_hs256(SECRET, 8, None, &[], Duration::from_secs(60));
        let id = hs_verifier().verify(&bare).unwrap();
        assert_eq!((&*id.name, id.roles.len()), ("", 0));
    }

    fn asym(key: JwtKey, private_pem: &str, alg: Algorithm) -> (Verifier, EncodingKey, Algorithm) {
        let enc = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        }
        .unwrap();
        (Verifier::new(&cfg(key)).unwrap(), enc, alg)
    }

    #[test]
    fn public_key_families_accepted_and_tampering_rejected() {
        for (v, enc, alg) in [
            asym(JwtKey::RsaPem(RSA_PUB.into()), RSA_PEM, Algorithm::RS256),
            asym(JwtKey::EcPem(EC_PUB.into()), EC_PEM, Algorithm::ES256),
            asym(JwtKey::EdPem(ED_PUB.into()), ED_PEM, Algorithm::EdDSA),
        ] {
            let t = mint(&enc, alg, &json!({"sub": "9", "exp": now() + 60})).unwrap();
            assert_eq!(v.verify(&t).unwrap().user_id, UserId(9), "{alg:?}");
            // Claims changed after signing.
            let (head, rest) = t.split_once('.').unwrap();
            let sig = rest.split_once('.').unwrap().1;
            let forged = format!(
                "{head}.{}.{sig}",
                URL_SAFE_NO_PAD.encode(json!({"sub": "1", "exp": now() + 60}).to_string())
            );
            assert_eq!(v.verify(&forged), Err(AuthError::BadSignature), "{alg:?}");
            // An HS256 token (even one signed with the public key bytes) is refused.
            let pem = match alg {
                Algorithm::RS256 => RSA_PUB,
                Algorithm::ES256 => EC_PUB,
                _ => ED_PUB,
            };
            let confused = mint(
                &EncodingKey::from_secret(pem.as_bytes()),
                Algorithm::HS256,
                &json!({"sub": 1, "exp": now() + 60}),
            )
            .unwrap();
            assert_eq!(
                v.verify(&confused),
                Err(AuthError::WrongAlgorithm),
                "{alg:?}"
            );
        }
    }

    // ---- failures ----

    #[test]
    fn bad_signature() {
        let t = hs(Algorithm::HS256, claims(json!(1)));
        let other = mint(
            &EncodingKey::from_secret(b"another secret"),
            Algorithm::HS256,
            &claims(json!(1)),
        )
        .unwrap();
        let sig = other.rsplit_once('.').unwrap().1;
        let forged = format!("{}.{sig}", t.rsplit_once('.').unwrap().0);
        assert_eq!(hs_verifier().verify(&forged), Err(AuthError::BadSignature));
        assert_eq!(hs_verifier().verify(&other), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_rejected() {
        let c = claims(json!(1));
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None","typ":"JWT"}"#,
            r#"{"alg":"NONE"}"#,
        ] {
            for sig in ["", "AAAA"] {
                let t = raw_token(header, &c, sig);
                assert_eq!(
                    hs_verifier().verify(&t),
                    Err(AuthError::WrongAlgorithm),
                    "{header}"
                );
            }
        }
        let rsa = Verifier::new(&cfg(JwtKey::RsaPem(RSA_PUB.into()))).unwrap();
        let t = raw_token(r#"{"alg":"none","typ":"JWT"}"#, &c, "");
        assert_eq!(rsa.verify(&t), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn rs_token_against_hs_config() {
        let enc = EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap();
        let t = mint(&enc, Algorithm::RS256, &claims(json!(1))).unwrap();
        assert_eq!(hs_verifier().verify(&t), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn malformed_tokens() {
        for t in ["x", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.AAAA"] {
            assert_eq!(hs_verifier().verify(t), Err(AuthError::Malformed), "{t}");
        }
        assert_eq!(hs_verifier().verify(""), Err(AuthError::Missing));
        // A correctly signed payload that is not JSON.
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode("not json")
        );
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(
            hs_verifier().verify(&format!("{message}.{sig}")),
            Err(AuthError::Malformed)
        );
        // Claims that are not an object.
        let t = hs(Algorithm::HS256, json!([1, 2]));
        assert_eq!(hs_verifier().verify(&t), Err(AuthError::Malformed));
    }

    #[test]
    fn expiry_and_leeway() {
        let at = |exp: u64| verify_hs(json!({"sub": 1, "exp": exp}));
        assert_eq!(at(now() - 100), Err(AuthError::Expired));
        assert!(at(now() - 10).is_ok(), "within the 30 s leeway");
        // Leeway 0: the same token is expired.
        let strict = Verifier::new(&AuthConfig {
            leeway: Duration::ZERO,
            ..cfg(JwtKey::Hmac(SECRET.to_vec()))
        })
        .unwrap();
        let t = hs(Algorithm::HS256, json!({"sub": 1, "exp": now() - 10}));
        assert_eq!(strict.verify(&t), Err(AuthError::Expired));
    }

    #[test]
    fn exp_missing_or_wrong_type() {
        // CVE-2026-25537: a wrong-typed exp must not skip validation.
        for exp in [
            None,
            Some(json!("9999999999")),
            Some(json!(null)),
            Some(json!(-5)),
        ] {
            let mut c = json!({"sub": 1});
            if let Some(e) = exp.clone() {
                c["exp"] = e;
            }
            assert_eq!(verify_hs(c), Err(AuthError::MissingExp), "{exp:?}");
        }
        // Structured values make jsonwebtoken's claim parser fail as a whole: still refused.
        for exp in [json!({"t": 9_999_999_999u64}), json!([9_999_999_999u64])] {
            assert_eq!(
                verify_hs(json!({"sub": 1, "exp": exp})),
                Err(AuthError::Malformed)
            );
        }
        // A float exp is a number: accepted like jsonwebtoken does.
        assert!(verify_hs(json!({"sub": 1, "exp": (now() + 60) as f64 + 0.25})).is_ok());
    }

    #[test]
    fn nbf_is_honoured() {
        let c = |nbf: Value| json!({"sub": 1, "exp": now() + 600, "nbf": nbf});
        assert_eq!(
            verify_hs(c(json!(now() + 120))),
            Err(AuthError::NotYetValid)
        );
        assert!(verify_hs(c(json!(now() + 10))).is_ok(), "within leeway");
        assert!(verify_hs(c(json!(now() - 10))).is_ok());
        assert_eq!(verify_hs(c(json!("0"))), Err(AuthError::BadNbf));
    }

    #[test]
    fn issuer_and_audience() {
        let v = Verifier::new(&AuthConfig {
            issuer: Some("https://idp".into()),
            audience: Some("customws".into()),
            ..cfg(JwtKey::Hmac(SECRET.to_vec()))
        })
        .unwrap();
        let t = |c: Value| v.verify(&hs(Algorithm::HS256, c));
        let exp = now() + 60;
        assert!(t(json!({"sub": 1, "exp": exp, "iss": "https://idp", "aud": "customws"})).is_ok());
        assert!(
            t(json!({"sub": 1, "exp": exp, "iss": "https://idp", "aud": ["x", "customws"]}))
                .is_ok()
        );
        assert_eq!(
            t(json!({"sub": 1, "exp": exp, "iss": "evil", "aud": "customws"})),
            Err(AuthError::BadIssuer)
        );
        assert_eq!(
            t(json!({"sub": 1, "exp": exp, "aud": "customws"})),
            Err(AuthError::BadIssuer)
        );
        assert_eq!(
            t(json!({"sub": 1, "exp": exp, "iss": "https://idp", "aud": "other"})),
            Err(AuthError::BadAudience)
        );
        assert_eq!(
            t(json!({"sub": 1, "exp": exp, "iss": "https://idp"})),
            Err(AuthError::BadAudience)
        );
        // Without configured iss/aud, tokens carrying them are accepted.
        assert!(verify_hs(json!({"sub": 1, "exp": exp, "iss": "any", "aud": "any"})).is_ok());
    }

    #[test]
    fn subject_rules() {
        for ok in [
            json!(1),
            json!("1"),
            json!(MAX_USER_ID),
            json!(MAX_USER_ID.to_string()),
        ] {
            assert!(verify_hs(claims(ok.clone())).is_ok(), "{ok}");
        }
        for bad in [
            json!(0),
            json!("0"),
            json!(-1),
            json!("-1"),
            json!(MAX_USER_ID + 1),
            json!((MAX_USER_ID + 1).to_string()),
            json!("abc"),
            json!("12a"),
            json!(" 12"),
            json!("+12"),
            json!("012"),
            json!(""),
            json!(1.5),
            json!(5.0),
            json!(null),
            json!(true),
        ] {
            assert_eq!(
                verify_hs(claims(bad.clone())),
                Err(AuthError::BadSubject),
                "{bad}"
            );
        }
        // Structured values: jsonwebtoken's own claim parser fails first; still refused.
        for bad in [json!([1]), json!({"id": 1})] {
            assert_eq!(
                verify_hs(claims(bad.clone())),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verify_hs(json!({"exp": now() + 60})),
            Err(AuthError::BadSubject)
        );
    }

    #[test]
    fn name_and_roles_types() {
        let exp = now() + 60;
        assert_eq!(
            verify_hs(json!({"sub": 1, "exp": exp, "name": 5})),
            Err(AuthError::BadName)
        );
        assert_eq!(
            verify_hs(json!({"sub": 1, "exp": exp, "roles": "admin"})),
            Err(AuthError::BadRoles)
        );
        assert_eq!(
            verify_hs(json!({"sub": 1, "exp": exp, "roles": ["a", 1]})),
            Err(AuthError::BadRoles)
        );
    }

    #[test]
    fn setup_errors() {
        assert!(matches!(
            Verifier::new(&cfg(JwtKey::Hmac(Vec::new()))),
            Err(AuthSetupError::EmptySecret)
        ));
        assert!(matches!(
            Verifier::new(&cfg(JwtKey::RsaPem(b"not a pem".to_vec()))),
            Err(AuthSetupError::BadRsaPem(_))
        ));
        assert!(matches!(
            Verifier::new(&cfg(JwtKey::EcPem(RSA_PUB.into()))),
            Err(AuthSetupError::BadEcPem(_))
        ));
        assert!(matches!(
            Verifier::new(&cfg(JwtKey::EdPem(EC_PUB.into()))),
            Err(AuthSetupError::BadEdPem(_))
        ));
        assert!(matches!(
            Verifier::new(&AuthConfig {
                leeway: Duration::from_secs(u64::MAX),
                ..cfg(JwtKey::Hmac(SECRET.to_vec()))
            }),
            Err(AuthSetupError::LeewayTooLarge(_))
        ));
        let e = Verifier::new(&cfg(JwtKey::RsaPem(b"garbage".to_vec()))).unwrap_err();
        assert!(e.to_string().contains("RSA public key"), "{e}");
    }

    #[test]
    fn labels_and_status() {
        assert_eq!(AuthError::Expired.label(), "expired");
        assert_eq!(AuthError::BadSubject.status(), 401);
        assert_eq!(Carrier::Query.label(), "query");
    }

    #[test]
    fn origin_policy() {
        let list =
            |l: &[&str]| OriginPolicy::new(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let none = list(&[]);
        assert!(none.allows(None));
        assert!(!none.allows(Some(b"https://a.example")));
        let any = list(&["*"]);
        assert!(any.allows(Some(b"https://whatever")));
        assert!(any.allows(Some(b"null")));
        let some = list(&["https://App.example/", "http://localhost:3000"]);
        assert!(some.allows(None));
        assert!(some.allows(Some(b"https://app.example")));
        assert!(some.allows(Some(b"HTTPS://APP.EXAMPLE/")));
        assert!(some.allows(Some(b"http://localhost:3000")));
        assert!(!some.allows(Some(b"http://app.example")));
        assert!(!some.allows(Some(b"https://app.example.evil")));
        assert!(!some.allows(Some(b"https://evil.app.example")));
        assert!(!some.allows(Some(b"http://localhost:3001")));
        assert!(!some.allows(Some(b"null")));
        assert!(!some.allows(Some(b"https://app.example\xff")));
        assert!(!some.allows(Some(b"")));
    }

    // Fixed test keys (generated once with openssl 3: `genpkey` RSA 2048 / P-256 / Ed25519),
    // embedded so the tests need no openssl binary and stay fast and deterministic.
    const RSA_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC9YE9/gqNAN01I\n\
7t47pPdY0ahPWEg7LYFmYdnYMIKo0aj4FtiVhXRCp6lDRneYKntoM3T2To2Gt4bh\n\
sSshj1508v0PzxDaDvuXMsBt/kSP9P0Ktt3r39ZMP+6n4z11N7Yp4M0bkn9ZMypV\n\
9YyihSD0MnOmhYnNRBkA5bDjztEspf8jrMw3G/i5tuF258QCyAaTdo5YvMH0S965\n\
ZFk0HLPb1pOcG00Gb/WEYb1OP8RgIdl+k6xAARog0GnAvRSgyRZDroBohDGHwZUv\n\
KSqrXL1M9ddiwpD/zr1Exan4U0I29BDEFhuClUK8BHOJdxe/ukek88biz1DH1+62\n\
JsNGLdo3AgMBAAECggEAW97owjmsm/8YIa0sJ7BIhJC1f8Saygax82q+BZjHEkIg\n\
IDbpHGRxOdLflPEPHMVjN/JaqBEErJnFOCE8hNvqHX8yEGTKTpcdK8UlwFatiU73\n\
IScEsyTUcApF67Gcg4yi9V8G8fzYhfwB6lCkyMUf7we4vkyjRO7n2F0VuvZ+2JLZ\n\
hHlIjk//J6WwbYzqfHJWYKdcKc8KET/39knbBHUfNFfAQgKpoYDe5Brxf6QVuNQn\n\
b0Z2YBV9VAghLDqs1NncAIUfK7f+mef24Q7rwXw/WsturVKTN8cjnKa4sm8cIy7w\n\
mWf4RVjBfPi/tD8qNpBI0eRRFyFm5+LpXh6yITeb8QKBgQD8DNVb4s25HPRwboeC\n\
DzCs3AxUEO6ds23hCkgxSVH0a4/dg5CR6RoOAxuOnw7W0XgdQpk3y+A9ErXiSiYc\n\
USBm3K9XLoQ+/qcX4W1cd66T45/r+fZs56nrJzQrUsDLoHjpCId2RnyRAfkzFHLy\n\
pYjvMd5DWqBEbM59AO3iNFs9cQKBgQDAWAs9p04KFfV6cINlZbmjGiNcHARdULeW\n\
5g/i5KrXMjhZjn3f9HrbCWXcqZDvxbL9KGaclIfSEnGoY4tGJS3k2iq8mU40swaF\n\
t79RUA0m60ad9qvCfFC9tqleuDCXURGLHX4eDD9aYJKbm/4lg+D3vnxLDlJKmVYc\n\
5n7iizheJwKBgQCrFPrtd7Ez6RdyCVQpT642ZtZnaWbN3DDFA3mlGqNqSGhKbzb+\n\
Ez8AK9PUptonrd7d3YqqeNQoID8c7j+YEOjxaPILNyPEro00hGr6zLHO6D5wqiY+\n\
HbEUUHP0xCLhFHd9lbB887MxqilAJq0vTnT4Bt1a0nTefQxbhPnzBJ65wQKBgAh/\n\
GygDDvh1Fd3twHAnOTcSPYOhHTQ+D44T5ZnBPia5ajHSkI7nDtJELQK9XtCorApw\n\
0W+TRBishebJVuqnU8qrNH4WS5UaX2xivInL/ni8pebucZHqyepHel3bxxG4HA1I\n\
JT0Qj2/fmjpTfruLgtGO0ZDDNjFjaqFmMS6yta+7AoGAPLFtSTfSsbKLd3Y3Gd3+\n\
bzOa8FWkjQpWPfX/XjjZTi40GKDe4meP4LaDpvUVYWd3N+2roATHU947rZ6d6Mka\n\
hoW1ypL/8g25tTsNUXR4tBqeV2fj8H13WrxzbfhzFdQcb/De3zMUGy1P5TyfQ1dg\n\
UhsEvvOsU1uKpsvLdqNWJ+8=\n\
-----END PRIVATE KEY-----\n\
";
    const RSA_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvWBPf4KjQDdNSO7eO6T3\n\
WNGoT1hIOy2BZmHZ2DCCqNGo+BbYlYV0QqepQ0Z3mCp7aDN09k6NhreG4bErIY9e\n\
dPL9D88Q2g77lzLAbf5Ej/T9Crbd69/WTD/up+M9dTe2KeDNG5J/WTMqVfWMooUg\n\
9DJzpoWJzUQZAOWw487RLKX/I6zMNxv4ubbhdufEAsgGk3aOWLzB9EveuWRZNByz\n\
29aTnBtNBm/1hGG9Tj/EYCHZfpOsQAEaINBpwL0UoMkWQ66AaIQxh8GVLykqq1y9\n\
TPXXYsKQ/869RMWp+FNCNvQQxBYbgpVCvARziXcXv7pHpPPG4s9Qx9futibDRi3a\n\
NwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
    const EC_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYaN7tTPoOFx0PTbS\n\
61NEtwbqTZJ2XLjvM8U9D8DHfTihRANCAARIkuyTQaiU6bAb3i/dsQbAjUFIOdr3\n\
OnoGFsHLK0lB028mS/zMoIQcfo8LLY5Aqp/hSaxfG6Sgml3KISNIOpzA\n\
-----END PRIVATE KEY-----\n\
";
    const EC_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAESJLsk0GolOmwG94v3bEGwI1BSDna\n\
9zp6BhbByytJQdNvJkv8zKCEHH6PCy2OQKqf4UmsXxukoJpdyiEjSDqcwA==\n\
-----END PUBLIC KEY-----\n\
";
    const ED_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIMCtykBxi4bXCVuL3kljoJbmVlnGMywmanTKNeYofR9D\n\
-----END PRIVATE KEY-----\n\
";
    const ED_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEAIgm/ZcKdy4iWDJyB6pVaeEMNivxYlhVYwYkMzWtfplM=\n\
-----END PUBLIC KEY-----\n\
";
}
