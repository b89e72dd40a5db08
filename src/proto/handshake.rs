//! The HTTP/1.1 upgrade handshake (RFC 6455 section 4), sans-IO.
//!
//! Bytes in, a borrowed [`Request`] out; a [`Route`] decided from it; responses appended to a
//! caller-owned `Vec<u8>`. No sockets, no clocks: the handshake timeout and the reads belong to
//! the shard driver.
//!
//! ```text
//! read buffer ──► request_complete_hint (new bytes only) ──► parse_request ──► route
//!                                                              │                 │
//!                                        431 / 400 ◄───────────┘      Upgrade / Healthz / Index / NotFound
//! ```
//!
//! Known attacks this module is shaped by (field notes): a huge handshake header that cost
//! minutes of CPU (tungstenite CVE-2023-43669) → bytes are capped and the full parse runs once;
//! too many headers (ws CVE-2024-37890) → a fixed-size header array, 431 beyond the limit; a
//! backtracking regex on `Sec-WebSocket-Protocol` (ws CVE-2021-32640) → comma split and trim.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use smallvec::SmallVec;

/// Hard ceiling on headers per request; the stack array handed to `httparse` has this size.
/// `HandshakeLimits::max_headers` may only lower it (tungstenite allows 124).
pub const MAX_HEADERS: usize = 128;

/// The only WebSocket version spoken (RFC 6455); echoed with a 426.
pub const WEBSOCKET_VERSION: &str = "13";

/// RFC 6455 section 1.3: appended to the client key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Headers kept inline before the `SmallVec` spills; a typical browser upgrade sends 10-16.
const INLINE_HEADERS: usize = 24;

/// Size limits on the request head (request line + headers), from `Config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Request line + headers, bytes; 431 beyond (default 8 KiB).
    pub max_header_bytes: usize,
    /// Header count; 431 beyond (default 64, clamped to [`MAX_HEADERS`]).
    pub max_headers: usize,
}

/// Why a request was refused before the upgrade. One variant per broken rule; the variant
/// picks the HTTP status and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The request head did not fit in `max_header_bytes`.
    #[error("request head larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// More headers than `max_headers`.
    #[error("more than {limit} headers")]
    TooManyHeaders { limit: usize },
    /// Not parseable as HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(httparse::Error),
    /// An upgrade must be a GET.
    #[error("upgrade request method is not GET")]
    MethodNotGet,
    /// An upgrade needs HTTP/1.1 or later.
    #[error("upgrade request is not HTTP/1.1")]
    HttpVersion,
    /// RFC 6455 4.1 item 4: `Host` is required.
    #[error("missing Host header")]
    MissingHost,
    /// `Upgrade` absent or without the `websocket` token.
    #[error("Upgrade header does not name websocket")]
    UpgradeNotWebsocket,
    /// `Connection` absent or without the `upgrade` token.
    #[error("Connection header does not contain upgrade")]
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Version` absent.
    #[error("missing Sec-WebSocket-Version header")]
    MissingVersion,
    /// `Sec-WebSocket-Version` other than 13 (answered 426 with the supported version).
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` absent.
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    /// `Sec-WebSocket-Key` repeated or not the base64 of exactly 16 bytes.
    #[error("Sec-WebSocket-Key is not base64 of 16 bytes")]
    BadKey,
}

impl HandshakeError {
    /// The HTTP status answered for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadersTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::UnsupportedVersion => 426,
            Self::Malformed(_)
            | Self::MethodNotGet
            | Self::HttpVersion
            | Self::MissingHost
            | Self::UpgradeNotWebsocket
            | Self::ConnectionNotUpgrade
            | Self::MissingVersion
            | Self::MissingKey
            | Self::BadKey => 400,
        }
    }

    /// A short snake_case label, stable, usable as a Prometheus label value.
    pub fn reason_label(&self) -> &'static str {
        match self {
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::TooManyHeaders { .. } => "too_many_headers",
            Self::Malformed(_) => "malformed",
            Self::MethodNotGet => "bad_method",
            Self::HttpVersion => "bad_http_version",
            Self::MissingHost => "missing_host",
            Self::UpgradeNotWebsocket => "bad_upgrade",
            Self::ConnectionNotUpgrade => "bad_connection",
            Self::MissingVersion => "missing_version",
            Self::UnsupportedVersion => "bad_version",
            Self::MissingKey => "missing_key",
            Self::BadKey => "bad_key",
        }
    }
}

/// A parsed request head borrowing the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target up to `?`.
    pub path: &'a str,
    /// What follows `?`, if anything.
    pub query: Option<&'a str>,
    /// Minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Headers in arrival order. Values stay bytes: they may hold non-UTF-8 (obs-text).
    pub headers: SmallVec<[(&'a str, &'a [u8]); INLINE_HEADERS]>,
}

impl<'a> Request<'a> {
    /// The first header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers_named(name).next()
    }

    /// Every header with this name, in order (for repeatable headers such as `Connection`).
    pub fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// Whether any header with this name lists `token` (comma list, ASCII case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(split_list)
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }
}

/// What the listener does with a parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /ws`, a valid RFC 6455 upgrade: authenticate, then answer 101.
    Upgrade(UpgradeRequest<'a>),
    /// `GET /healthz`.
    Healthz,
    /// `GET /`: the demo page.
    Index,
    /// Anything else: 404.
    NotFound,
}

/// The parts of a valid upgrade that authentication and the 101 answer need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// `Sec-WebSocket-Key`, trimmed, already checked to be base64 of 16 bytes.
    pub key: &'a [u8],
    pub origin: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    /// Every raw `Sec-WebSocket-Protocol` header value; see [`UpgradeRequest::protocols`].
    pub protocol_headers: SmallVec<[&'a [u8]; 2]>,
    /// The first `Cookie` header.
    pub cookie: Option<&'a [u8]>,
    pub query: Option<&'a str>,
}

impl<'a> UpgradeRequest<'a> {
    /// Every offered subprotocol across all `Sec-WebSocket-Protocol` headers, trimmed, empty
    /// entries skipped. A comma split, no regex (ws CVE-2021-32640).
    pub fn protocols(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.protocol_headers.iter().flat_map(|v| split_list(v))
    }
}

/// Entries of an HTTP comma-separated list, trimmed of whitespace, empty entries skipped.
pub fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Cheap completeness check for a request head arriving in pieces: scans only the bytes from
/// `scanned_from` on (minus three, in case the terminator straddles two reads) for the blank
/// line ending the head (`\r\n\r\n`, or `\n\n`, which `httparse` also accepts).
///
/// The caller keeps `scanned_from = buf.len()` after each `false` and calls [`parse_request`]
/// only once this says `true` or once `buf.len() >= max_header_bytes`, so a slowloris client
/// trickling one byte at a time costs O(n), not O(n²).
pub fn request_complete_hint(buf: &[u8], scanned_from: usize) -> bool {
    let start = scanned_from.saturating_sub(3).min(buf.len());
    let tail = buf.get(start..).unwrap_or_default();
    tail.windows(2).enumerate().any(|(i, w)| match w {
        [b'\n', b'\n'] => true,
        [b'\n', b'\r'] => tail.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, nothing consumed, read more. `Ok(Some((request, consumed)))`:
/// `consumed` bytes form the head; anything after them is data the client pipelined (possibly
/// WebSocket frames) and must be kept.
pub fn parse_request<'a>(
    buf: &'a [u8],
    limits: &HandshakeLimits,
) -> Result<Option<(Request<'a>, usize)>, HandshakeError> {
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    // Left uninitialized (httparse writes the slots it fills): zeroing all 128 slots was a
    // 4 KiB memset per handshake.
    let mut storage =
        [const { std::mem::MaybeUninit::<httparse::Header<'a>>::uninit() }; MAX_HEADERS];
    let slots = storage.get_mut(..max_headers).unwrap_or_default();
    // Only the first `max_header_bytes` are looked at: a head ending later is too large anyway.
    let window = buf.get(..limits.max_header_bytes).unwrap_or(buf);
    let mut req = httparse::Request::new(&mut []);
    let consumed = match req.parse_with_uninit_headers(window, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() >= limits.max_header_bytes => {
            return Err(HandshakeError::HeadersTooLarge {
                limit: limits.max_header_bytes,
            })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders { limit: max_headers })
        }
        Err(e) => return Err(HandshakeError::Malformed(e)),
    };
    // `Complete` guarantees these are set; treat a gap as malformed rather than panic.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HandshakeError::Malformed(httparse::Error::Token));
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let headers = req.headers.iter().map(|h| (h.name, h.value)).collect();
    Ok(Some((
        Request {
            method,
            path,
            query,
            version,
            headers,
        },
        consumed,
    )))
}

/// Decides what to do with a request; validates the upgrade on `/ws`.
pub fn route<'a>(req: &Request<'a>) -> Result<Route<'a>, HandshakeError> {
    match (req.path, req.method) {
        ("/ws", _) => validate_upgrade(req).map(Route::Upgrade),
        ("/healthz", "GET") => Ok(Route::Healthz),
        ("/", "GET") => Ok(Route::Index),
        _ => Ok(Route::NotFound),
    }
}

/// Like [`route`], but a request on any path that asks for an upgrade (has an `Upgrade`
/// header) is validated as one. `customws echo` uses this: conformance and load tools
/// connect to `/` or any other path.
pub fn route_any_path<'a>(req: &Request<'a>) -> Result<Route<'a>, HandshakeError> {
    if req.header("upgrade").is_some() {
        return validate_upgrade(req).map(Route::Upgrade);
    }
    route(req)
}

/// RFC 6455 section 4.2.1, checked in the order a client is most likely to get wrong last.
///
/// One pass over the headers collects everything (names told apart by length first), then
/// the rules are checked in order; the same answers as asking [`Request::header`] /
/// [`Request::has_token`] per rule (`tests::single_pass_validation_matches_per_rule_lookups`),
/// without scanning every header nine times.
fn validate_upgrade<'a>(req: &Request<'a>) -> Result<UpgradeRequest<'a>, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    let has = |list: &[u8], token: &[u8]| split_list(list).any(|t| t.eq_ignore_ascii_case(token));
    let (mut upgrade, mut connection, mut host) = (false, false, false);
    let (mut version, mut key, mut keys) = (None, None, 0usize);
    let (mut origin, mut authorization, mut cookie) = (None, None, None);
    let mut protocol_headers = SmallVec::new();
    for &(name, value) in &req.headers {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is("host") => host = true,
            6 if is("origin") => {
                origin.get_or_insert(value);
            }
            6 if is("cookie") => {
                cookie.get_or_insert(value);
            }
            7 if is("upgrade") => upgrade = upgrade || has(value, b"websocket"),
            10 if is("connection") => connection = connection || has(value, b"upgrade"),
            13 if is("authorization") => {
                authorization.get_or_insert(value);
            }
            17 if is("sec-websocket-key") => {
                keys += 1;
                key.get_or_insert(value);
            }
            21 if is("sec-websocket-version") => {
                version.get_or_insert(value);
            }
            22 if is("sec-websocket-protocol") => protocol_headers.push(value),
            _ => {}
        }
    }
    if !upgrade {
        return Err(HandshakeError::UpgradeNotWebsocket);
    }
    if !connection {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    match version.map(<[u8]>::trim_ascii) {
        None => return Err(HandshakeError::MissingVersion),
        Some(v) if v != WEBSOCKET_VERSION.as_bytes() => {
            return Err(HandshakeError::UnsupportedVersion)
        }
        Some(_) => {}
    }
    let key = key
        .map(<[u8]>::trim_ascii)
        .ok_or(HandshakeError::MissingKey)?;
    if keys > 1 || !is_valid_key(key) {
        return Err(HandshakeError::BadKey);
    }
    if !host {
        return Err(HandshakeError::MissingHost);
    }
    Ok(UpgradeRequest {
        key,
        origin,
        authorization,
        protocol_headers,
        cookie,
        query: req.query,
    })
}

/// A key is the base64 (with padding) of 16 random bytes: always 24 characters.
fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // A 20-byte digest always encodes to exactly 28 padded characters.
    let written = STANDARD.encode_slice(digest, &mut out);
    debug_assert_eq!(written, Ok(28));
    out
}

/// Appends the 101 answer. `subprotocol` must be one the client offered (RFC 6455 4.2.2).
pub fn write_switching_protocols(out: &mut Vec<u8>, key: &[u8], subprotocol: Option<&str>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    if let Some(p) = subprotocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends an error answer with the spec's JSON body `{"error":{"code":N,"message":"..."}}`.
/// The connection is to be closed after it (`Connection: close`); a 426 also names the
/// supported version, as RFC 6455 4.4 requires.
pub fn write_error(out: &mut Vec<u8>, status: u16, message: &str) {
    let mut body = Vec::with_capacity(40 + message.len());
    body.extend_from_slice(b"{\"error\":{\"code\":");
    body.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    body.extend_from_slice(b",\"message\":\"");
    json_escape_into(&mut body, message);
    body.extend_from_slice(b"\"}}");
    let extra: &[u8] = if status == 426 {
        b"Sec-WebSocket-Version: 13\r\n"
    } else {
        b""
    };
    write_head(out, status, "application/json", body.len(), extra);
    out.extend_from_slice(&body);
}

/// Appends a complete non-upgrade answer (`/healthz`, `/metrics`, the demo page), with
/// `Connection: close`: the listener answers one request per connection before the upgrade.
pub fn write_response(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8]) {
    write_head(out, status, content_type, body.len(), b"");
    out.extend_from_slice(body);
}

fn write_head(out: &mut Vec<u8>, status: u16, content_type: &str, len: usize, extra: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\nCache-Control: no-store\r\n");
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// The standard reason phrase for the statuses this gateway sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// JSON string escaping (RFC 8259 section 7): quote, backslash and control characters.
fn json_escape_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HandshakeLimits = HandshakeLimits {
        max_header_bytes: 8 * 1024,
        max_headers: 64,
    };

    const UPGRADE: &[u8] = b"GET /ws?token=abc HTTP/1.1\r\n\
        Host: example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Origin: https://app.example.com\r\n\
        Sec-WebSocket-Protocol: customws.v1, bearer.x.y.z\r\n\
        Authorization: Bearer tok\r\n\
        Cookie: a=b; auth_token=c\r\n\r\n";

    fn parse(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, HandshakeError> {
        parse_request(buf, &LIMITS)
    }

    fn route_of(buf: &[u8]) -> Result<Route<'_>, HandshakeError> {
        let (req, _) = parse(buf)?.expect("complete");
        route(&req)
    }

    /// Builds an upgrade request with one header replaced (or removed when `value` is None).
    fn upgrade_with(name: &str, value: Option<&str>) -> Vec<u8> {
        let mut out = b"GET /ws HTTP/1.1\r\n".to_vec();
        let base = [
            ("Host", "h"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        for (n, v) in base {
            let v = if n == name { value } else { Some(v) };
            if let Some(v) = v {
                out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The per-rule lookups `validate_upgrade` replaced: the reference for the differential
    /// test below.
    fn validate_upgrade_reference<'a>(
        req: &Request<'a>,
    ) -> Result<UpgradeRequest<'a>, HandshakeError> {
        if req.method != "GET" {
            return Err(HandshakeError::MethodNotGet);
        }
        if req.version < 1 {
            return Err(HandshakeError::HttpVersion);
        }
        if !req.has_token("upgrade", "websocket") {
            return Err(HandshakeError::UpgradeNotWebsocket);
        }
        if !req.has_token("connection", "upgrade") {
            return Err(HandshakeError::ConnectionNotUpgrade);
        }
        match req.header("sec-websocket-version").map(<[u8]>::trim_ascii) {
            None => return Err(HandshakeError::MissingVersion),
            Some(v) if v != WEBSOCKET_VERSION.as_bytes() => {
                return Err(HandshakeError::UnsupportedVersion)
            }
            Some(_) => {}
        }
        let mut keys = req.headers_named("sec-websocket-key");
        let key = keys
            .next()
            .map(<[u8]>::trim_ascii)
            .ok_or(HandshakeError::MissingKey)?;
        if keys.next().is_some() || !is_valid_key(key) {
            return Err(HandshakeError::BadKey);
        }
        if req.header("host").is_none() {
            return Err(HandshakeError::MissingHost);
        }
        Ok(UpgradeRequest {
            key,
            origin: req.header("origin"),
            authorization: req.header("authorization"),
            protocol_headers: req.headers_named("sec-websocket-protocol").collect(),
            cookie: req.header("cookie"),
            query: req.query,
        })
    }

    /// Random header sets (names in odd cases, repeated, missing, near misses; values right,
    /// wrong or in lists): the one-pass validation answers exactly as the per-rule lookups.
    #[test]
    fn single_pass_validation_matches_per_rule_lookups() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let names = [
            "Host",
            "host",
            "HOST",
            "Upgrade",
            "upgrade",
            "UPGRADE",
            "Connection",
            "connection",
            "Sec-WebSocket-Key",
            "sec-websocket-key",
            "Sec-WebSocket-Version",
            "sec-websocket-version",
            "Sec-WebSocket-Protocol",
            "Origin",
            "origin",
            "Cookie",
            "Authorization",
            "authorization",
            "X-Other",
            "Hos",
            "Upgrades",
            "Sec-WebSocket-Keys",
            "Sec-WebSocket-Extensions",
            "Keep-Alive",
            "Cookies",
        ];
        let values: [&[u8]; 16] = [
            b"websocket",
            b"WebSocket",
            b"h2c, websocket",
            b"Upgrade",
            b"keep-alive, upgrade",
            b"keep-alive",
            b"13",
            b" 13 ",
            b"8",
            b"dGhlIHNhbXBsZSBub25jZQ==",
            b" dGhlIHNhbXBsZSBub25jZQ== ",
            b"short",
            b"",
            b"customws.v1, bearer.x",
            b"Bearer t",
            b"a=b; auth_token=c",
        ];
        let mut rng = StdRng::seed_from_u64(0x4A5D);
        let mut seen_ok = 0;
        for _ in 0..20_000 {
            // Half start from a valid upgrade, so every rule is reached, not just the first.
            let mut headers: SmallVec<[(&str, &[u8]); INLINE_HEADERS]> = SmallVec::new();
            if rng.random_range(0..2) == 0 {
                headers.extend([
                    ("Host", &b"h"[..]),
                    ("Upgrade", b"websocket"),
                    ("Connection", b"Upgrade"),
                    ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                    ("Sec-WebSocket-Version", b"13"),
                ]);
                if rng.random_range(0..3) == 0 {
                    headers.remove(rng.random_range(0..headers.len()));
                }
            }
            for _ in 0..rng.random_range(0..8) {
                let h = (
                    names[rng.random_range(0..names.len())],
                    values[rng.random_range(0..values.len())],
                );
                headers.insert(rng.random_range(0..=headers.len()), h);
            }
            seen_ok += usize::from(
                validate_upgrade_reference(&Request {
                    method: "GET",
                    path: "/ws",
                    query: None,
                    version: 1,
                    headers: headers.clone(),
                })
                .is_ok(),
            );
            let req = Request {
                method: if rng.random_range(0..20) == 0 {
                    "POST"
                } else {
                    "GET"
                },
                path: "/ws",
                query: None,
                version: u8::from(rng.random_range(0..20) != 0),
                headers,
            };
            assert_eq!(
                validate_upgrade(&req),
                validate_upgrade_reference(&req),
                "{:?}",
                req.headers
            );
        }
        assert!(seen_ok > 2_000, "valid upgrades generated: {seen_ok}");
    }

    #[test]
    fn valid_upgrade() {
        let (req, used) = parse(UPGRADE).unwrap().unwrap();
        assert_eq!(used, UPGRADE.len());
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query, Some("token=abc"));
        let Route::Upgrade(up) = route(&req).unwrap() else {
            panic!("not an upgrade")
        };
        assert_eq!(up.key, b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.origin, Some(&b"https://app.example.com"[..]));
        assert_eq!(up.authorization, Some(&b"Bearer tok"[..]));
        assert_eq!(up.cookie, Some(&b"a=b; auth_token=c"[..]));
        assert_eq!(up.query, Some("token=abc"));
        let protos: Vec<&[u8]> = up.protocols().collect();
        assert_eq!(protos, vec![&b"customws.v1"[..], b"bearer.x.y.z"]);
    }

    #[test]
    fn minimal_upgrade_is_accepted() {
        assert!(matches!(
            route_of(&upgrade_with("", None)),
            Ok(Route::Upgrade(_))
        ));
    }

    #[test]
    fn other_routes() {
        fn r(b: &[u8]) -> &'static str {
            match route_of(b) {
                Ok(Route::Upgrade(_)) => "upgrade",
                Ok(Route::Healthz) => "healthz",
                Ok(Route::Index) => "index",
                Ok(Route::NotFound) => "notfound",
                Err(_) => "error",
            }
        }
        assert_eq!(r(b"GET /healthz HTTP/1.1\r\n\r\n"), "healthz");
        assert_eq!(r(b"GET /healthz HTTP/1.0\r\n\r\n"), "healthz");
        assert_eq!(r(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), "index");
        assert_eq!(r(b"GET /nope HTTP/1.1\r\n\r\n"), "notfound");
        assert_eq!(r(b"POST /healthz HTTP/1.1\r\n\r\n"), "notfound");
        assert_eq!(r(b"GET /ws/ HTTP/1.1\r\n\r\n"), "notfound");
    }

    #[test]
    fn each_upgrade_rule_has_its_status() {
        use HandshakeError as E;
        let cases: &[(Vec<u8>, E)] = &[
            (
                b"POST /ws HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
                E::MethodNotGet,
            ),
            (
                b"GET /ws HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\n\r\n".to_vec(),
                E::HttpVersion,
            ),
            (upgrade_with("Upgrade", None), E::UpgradeNotWebsocket),
            (upgrade_with("Upgrade", Some("h2c")), E::UpgradeNotWebsocket),
            (upgrade_with("Connection", None), E::ConnectionNotUpgrade),
            (
                upgrade_with("Connection", Some("keep-alive")),
                E::ConnectionNotUpgrade,
            ),
            (
                upgrade_with("Sec-WebSocket-Version", None),
                E::MissingVersion,
            ),
            (
                upgrade_with("Sec-WebSocket-Version", Some("8")),
                E::UnsupportedVersion,
            ),
            (upgrade_with("Sec-WebSocket-Key", None), E::MissingKey),
            (upgrade_with("Sec-WebSocket-Key", Some("short")), E::BadKey),
            // 24 characters without padding decode to 18 bytes, not 16.
            (
                upgrade_with("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAAAAAA")),
                E::BadKey,
            ),
            (
                upgrade_with("Sec-WebSocket-Key", Some("!!!!!!!!!!!!!!!!!!!!!!==")),
                E::BadKey,
            ),
            (upgrade_with("Host", None), E::MissingHost),
        ];
        for (req, want) in cases {
            let got = route_of(req).unwrap_err();
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(req));
        }
        assert_eq!(E::UnsupportedVersion.status(), 426);
        assert_eq!(E::BadKey.status(), 400);
        assert_eq!(E::MethodNotGet.reason_label(), "bad_method");
        assert_eq!(E::HeadersTooLarge { limit: 1 }.status(), 431);
        assert_eq!(E::TooManyHeaders { limit: 1 }.status(), 431);
    }

    #[test]
    fn duplicate_key_is_rejected() {
        let mut req = upgrade_with("", None);
        req.truncate(req.len() - 2);
        req.extend_from_slice(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
        assert_eq!(route_of(&req).unwrap_err(), HandshakeError::BadKey);
    }

    #[test]
    fn token_lists_and_repeated_connection_headers() {
        let req = b"GET /ws HTTP/1.1\r\nHost: h\r\n\
            Upgrade: foo/1,  WebSocket \r\n\
            Connection: keep-alive\r\n\
            connection: x ,UPGRADE\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version:13\r\n\
            Sec-WebSocket-Protocol: a,,b \r\n\
            sec-websocket-protocol:  c\r\n\r\n";
        let Route::Upgrade(up) = route_of(req).unwrap() else {
            panic!()
        };
        let p: Vec<&[u8]> = up.protocols().collect();
        assert_eq!(p, vec![&b"a"[..], b"b", b"c"]);
    }

    #[test]
    fn odd_whitespace() {
        let req = b"GET /ws HTTP/1.1\r\nHost:h\r\nUpgrade:\twebsocket\t\r\n\
            Connection:    Upgrade   \r\n\
            Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==   \r\n\
            Sec-WebSocket-Version: 13 \r\n\r\n";
        let Route::Upgrade(up) = route_of(req).unwrap() else {
            panic!()
        };
        assert_eq!(up.key, b"dGhlIHNhbXBsZSBub25jZQ==");
        // Whitespace before the colon is forbidden (request smuggling vector): 400.
        let bad = b"GET /ws HTTP/1.1\r\nHost : h\r\n\r\n";
        assert!(matches!(parse(bad), Err(HandshakeError::Malformed(_))));
        // Bare LF line endings are accepted by httparse.
        let lf = b"GET /healthz HTTP/1.1\nHost: h\n\n";
        assert!(parse(lf).unwrap().is_some());
    }

    #[test]
    fn malformed_is_400() {
        for bad in [
            &b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad\x01Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nName: a\x00b\r\n\r\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, HandshakeError::Malformed(_)), "{e:?}");
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn huge_header_is_431() {
        let mut req = b"GET /ws HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 100_000));
        // Incomplete and beyond the limit: refused without waiting for the end.
        assert_eq!(
            parse(&req).unwrap_err(),
            HandshakeError::HeadersTooLarge { limit: 8192 }
        );
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&req).unwrap_err().status(), 431);
        // Just under the limit and incomplete: keep reading.
        assert_eq!(parse(&req[..8191]), Ok(None));
    }

    #[test]
    fn thousand_headers_is_431() {
        let mut req = b"GET /ws HTTP/1.1\r\n".to_vec();
        for i in 0..1000 {
            req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        let big = HandshakeLimits {
            max_header_bytes: 1 << 20,
            max_headers: 10_000,
        };
        assert_eq!(
            parse_request(&req, &big).unwrap_err(),
            HandshakeError::TooManyHeaders { limit: MAX_HEADERS }
        );
        assert_eq!(parse(&req).unwrap_err().status(), 431);
        // The configured limit is honoured below the hard ceiling.
        let mut few = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..65 {
            few.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        few.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&few).unwrap_err(),
            HandshakeError::TooManyHeaders { limit: 64 }
        );
    }

    #[test]
    fn incomplete_in_one_byte_pieces() {
        let mut scanned = 0;
        let mut parses = 0;
        for end in 1..=UPGRADE.len() {
            let buf = &UPGRADE[..end];
            let hint = request_complete_hint(buf, scanned);
            scanned = end;
            assert_eq!(hint, end == UPGRADE.len(), "at {end}");
            // The full parser also agrees on every prefix.
            let parsed = parse(buf).unwrap();
            assert_eq!(parsed.is_some(), end == UPGRADE.len(), "at {end}");
            if hint {
                parses += 1;
            }
        }
        assert_eq!(parses, 1);
        assert!(request_complete_hint(b"GET / HTTP/1.1\n\n", 0));
        assert!(request_complete_hint(b"GET / HTTP/1.1\r\n\r\n", 17));
        assert!(!request_complete_hint(b"GET / HTTP/1.1\r\n\r\n", 99));
    }

    #[test]
    fn non_utf8_header_bytes_do_not_panic() {
        let req = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\nOrigin: https://\xff\xfe.example\r\n\
            Cookie: auth_token=\xc3\x28\r\n\r\n";
        let Route::Upgrade(up) = route_of(req).unwrap() else {
            panic!()
        };
        assert_eq!(up.origin, Some(&b"https://\xff\xfe.example"[..]));
        // Non-UTF-8 in the key: refused, not panicked.
        let bad = upgrade_with("Sec-WebSocket-Key", Some("\u{e9}GhlIHNhbXBsZSBub25jZQ="));
        assert_eq!(route_of(&bad).unwrap_err(), HandshakeError::BadKey);
    }

    #[test]
    fn pipelined_bytes_are_left_for_the_frame_parser() {
        let mut buf = UPGRADE.to_vec();
        buf.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let (_, used) = parse(&buf).unwrap().unwrap();
        assert_eq!(used, UPGRADE.len());
        assert_eq!(
            buf.get(used..),
            Some(&[0x81, 0x85, 1, 2, 3, 4, 5, 6, 7, 8, 9][..])
        );
        // A head ending within the limit is fine even if the pipelined data goes beyond it.
        let small = HandshakeLimits {
            max_header_bytes: UPGRADE.len(),
            max_headers: 64,
        };
        assert!(parse_request(&buf, &small).unwrap().is_some());
    }

    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_switching_protocols(&mut out, b"dGhlIHNhbXBsZSBub25jZQ==", Some("customws.v1"));
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              Sec-WebSocket-Protocol: customws.v1\r\n\r\n"
        );

        out.clear();
        write_error(&mut out, 426, "say \"13\"\n\\");
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        let body = r#"{"error":{"code":426,"message":"say \"13\"\n\\"}}"#;
        assert!(text.ends_with(&format!("\r\n\r\n{body}")));
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["message"], "say \"13\"\n\\");

        out.clear();
        write_error(&mut out, 431, "x\u{1}");
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(!text.contains("Sec-WebSocket-Version"));
        assert!(text.ends_with(r#""x\u0001"}}"#));

        out.clear();
        write_response(&mut out, 200, "application/json", br#"{"status":"ok"}"#);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\
              Connection: close\r\nCache-Control: no-store\r\n\r\n{\"status\":\"ok\"}"
        );
    }
}
