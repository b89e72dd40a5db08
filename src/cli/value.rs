//! Parsers for one setting's text (`30s`, `64KiB`, `0.0.0.0:8082`, …).
//!
//! Every layer (flag, environment, TOML file) hands its values over as text, so one parser per
//! kind of value serves them all and the error names the exact place the operator typed it.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

/// Why one value was refused. `CliError::InvalidValue` wraps it with the setting's name and
/// the offending text, e.g. `invalid value for --pong-wait: "abc": expected a duration like
/// 250ms, 30s or 5m`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("expected a duration like 250ms, 30s or 5m (plain digits are seconds)")]
    Duration,
    #[error("must be longer than zero")]
    ZeroDuration,
    #[error("expected a size in bytes like 65536, 64KiB or 1MiB")]
    ByteSize,
    #[error("expected a whole number")]
    Integer,
    #[error("must be at least {min}")]
    TooSmall { min: u64 },
    #[error("must be at most {max}")]
    TooLarge { max: u64 },
    #[error("expected an address like 0.0.0.0:8082 or [::]:8082")]
    Address,
    #[error("expected an address like 127.0.0.1:9082, or \"off\" to disable")]
    OptionalAddress,
    #[error("expected true or false (also 1/0, yes/no, on/off)")]
    Bool,
    #[error("expected \"*\" or an origin like https://app.example.com (scheme://host[:port], no path, no trailing slash)")]
    Origin,
    #[error("expected comma-separated role names without spaces")]
    Role,
    #[error("expected a level (trace, debug, info, warn, error, off) or a filter like \"info,customws=debug\"")]
    LogLevel,
    #[error("expected RS256, ES256 or EdDSA")]
    Algorithm,
    #[error("must not be empty")]
    Empty,
    #[error("expected redis://[user:password@]host[:port][/db]")]
    RedisUrl,
    #[error("expected 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    NodeId,
}

/// Parses `redis://[user:password@]host[:port][/db]` (port 6379, db 0 by default; IPv6
/// hosts in brackets).
pub fn parse_redis_url(text: &str) -> Result<crate::config::RedisEndpoint, ValueError> {
    let rest = text
        .trim()
        .strip_prefix("redis://")
        .ok_or(ValueError::RedisUrl)?;
    let (authority, db) = match rest.split_once('/') {
        Some((a, "")) => (a, 0),
        Some((a, db)) => (a, db.parse::<u32>().map_err(|_| ValueError::RedisUrl)?),
        None => (rest, 0),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some(("", p)) => (None, Some(p.to_string())),
            Some((user, p)) => (Some(user.to_string()), Some(p.to_string())),
            None => (None, Some(u.to_string())),
        },
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(ValueError::RedisUrl)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| ValueError::RedisUrl)?,
            None if after.is_empty() => 6379,
            None => return Err(ValueError::RedisUrl),
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| ValueError::RedisUrl)?),
            None => (hostport.to_string(), 6379),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(ValueError::RedisUrl);
    }
    Ok(crate::config::RedisEndpoint {
        host,
        port,
        username,
        password,
        db,
    })
}

/// Node ids travel in every cluster message and name a Redis key: short and plain.
pub fn parse_node_id(text: &str) -> Result<String, ValueError> {
    let text = text.trim();
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(ValueError::NodeId)
    }
}

/// Parses a duration: digits followed by `ms`, `s`, `m` or `h` (`250ms`, `30s`, `5m`, `1h`).
///
/// Plain digits mean seconds, because that is what operators mean when they write
/// `CUSTOMWS_PING_INTERVAL=25`, and a TOML integer (`ping_interval = 25`) reads the same way.
/// No fractions and no compound forms (`1m30s`): write `90s`. Zero parses; each setting decides
/// whether zero makes sense (see [`parse_nonzero_duration`]).
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(ValueError::Duration);
    }
    let amount: u64 = digits.parse().map_err(|_| ValueError::Duration)?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(ValueError::Duration),
    };
    amount
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or(ValueError::Duration)
}

/// [`parse_duration`] for settings where zero makes no sense (a zero ping interval would spin
/// the timer wheel, a zero handshake timeout would refuse every client).
pub fn parse_nonzero_duration(text: &str) -> Result<Duration, ValueError> {
    match parse_duration(text)? {
        Duration::ZERO => Err(ValueError::ZeroDuration),
        duration => Ok(duration),
    }
}

/// Parses a byte size: plain digits, or digits followed by `KiB`, `MiB` or `GiB`
/// (case-insensitive). Decimal `KB`/`MB` are refused: "is it 1000 or 1024?" is exactly the
/// question a limit must not leave open.
pub fn parse_byte_size(text: &str) -> Result<u64, ValueError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(ValueError::ByteSize);
    }
    let amount: u64 = digits.parse().map_err(|_| ValueError::ByteSize)?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        _ => return Err(ValueError::ByteSize),
    };
    amount.checked_mul(1 << shift).ok_or(ValueError::ByteSize)
}

/// Parses a whole number (digits only, no sign).
pub fn parse_integer(text: &str) -> Result<u64, ValueError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::Integer);
    }
    text.parse().map_err(|_| ValueError::Integer)
}

/// Checks `min <= value <= max`.
pub fn in_range(value: u64, min: u64, max: u64) -> Result<u64, ValueError> {
    if value < min {
        Err(ValueError::TooSmall { min })
    } else if value > max {
        Err(ValueError::TooLarge { max })
    } else {
        Ok(value)
    }
}

/// Parses `IP:port`. Host names are refused: resolving DNS at start-up would make the bound
/// address depend on the resolver of the moment.
pub fn parse_address(text: &str) -> Result<SocketAddr, ValueError> {
    text.trim().parse().map_err(|_| ValueError::Address)
}

/// Parses an optional address: `off`, `none` or an empty string disable the listener.
pub fn parse_optional_address(text: &str) -> Result<Option<SocketAddr>, ValueError> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ValueError::OptionalAddress)
}

/// Parses a switch: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (case-insensitive).
pub fn parse_bool(text: &str) -> Result<bool, ValueError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ValueError::Bool),
    }
}

/// Checks one allowed origin: `*`, or `scheme://host[:port]` exactly as a browser sends it in
/// the `Origin` header. A trailing slash or a path would never match a browser's `Origin`, so
/// it is refused here rather than silently locking every browser out.
pub fn parse_origin(text: &str) -> Result<String, ValueError> {
    let text = text.trim();
    if text == "*" {
        return Ok(text.to_owned());
    }
    let (scheme, rest) = text.split_once("://").ok_or(ValueError::Origin)?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let host_ok = !rest.is_empty()
        && !rest
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || b.is_ascii_whitespace());
    if scheme_ok && host_ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(ValueError::Origin)
    }
}

/// Checks one role name: non-empty, no whitespace, no comma (the list separator).
pub fn parse_role(text: &str) -> Result<String, ValueError> {
    let text = text.trim();
    if text.is_empty() || text.bytes().any(|b| b.is_ascii_whitespace() || b == b',') {
        return Err(ValueError::Role);
    }
    Ok(text.to_owned())
}

/// Checks a log filter: a bare level, or a `tracing_subscriber::EnvFilter` directive list.
///
/// A bare word that is not a level is refused, although `EnvFilter` would read it as a target
/// name: `--log-level verbose` is a typo, not a wish to trace a module called `verbose`.
pub fn parse_log_level(text: &str) -> Result<String, ValueError> {
    let text = text.trim();
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let lower = text.to_ascii_lowercase();
    if LEVELS.contains(&lower.as_str()) {
        return Ok(lower);
    }
    if !text.contains(['=', ',']) {
        return Err(ValueError::LogLevel);
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|_| ValueError::LogLevel)
}

/// The public-key algorithm named by `--jwt-algorithm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKeyAlgorithm {
    Rs256,
    Es256,
    EdDsa,
}

impl std::fmt::Display for PublicKeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicKeyAlgorithm::Rs256 => "RS256",
            PublicKeyAlgorithm::Es256 => "ES256",
            PublicKeyAlgorithm::EdDsa => "EdDSA",
        })
    }
}

/// Parses `RS256`, `ES256` or `EdDSA` (case-insensitive; `Ed25519` is accepted for EdDSA).
pub fn parse_algorithm(text: &str) -> Result<PublicKeyAlgorithm, ValueError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "rs256" => Ok(PublicKeyAlgorithm::Rs256),
        "es256" => Ok(PublicKeyAlgorithm::Es256),
        "eddsa" | "ed25519" => Ok(PublicKeyAlgorithm::EdDsa),
        _ => Err(ValueError::Algorithm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        let e = parse_redis_url("redis://127.0.0.1:7001").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.db), ("127.0.0.1", 7001, 0));
        assert_eq!(e.password, None);
        let e = parse_redis_url("redis://app:s3:cr@t@redis.internal/2").unwrap();
        assert_eq!(e.username.as_deref(), Some("app"));
        assert_eq!(e.password.as_deref(), Some("s3:cr@t"));
        assert_eq!((e.host.as_str(), e.port, e.db), ("redis.internal", 6379, 2));
        let e = parse_redis_url("redis://:pw@[::1]:6380/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 6380));
        assert_eq!((e.username, e.password.as_deref()), (None, Some("pw")));
        assert!(!format!("{:?}", parse_redis_url("redis://:pw@h").unwrap()).contains("pw"));
        for bad in [
            "",
            "http://h",
            "redis://",
            "redis://h:port",
            "redis://h/x",
            "redis://[::1",
        ] {
            assert_eq!(parse_redis_url(bad), Err(ValueError::RedisUrl), "{bad}");
        }
    }

    #[test]
    fn node_ids() {
        assert_eq!(parse_node_id(" node-1.eu_west ").unwrap(), "node-1.eu_west");
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert_eq!(parse_node_id(bad), Err(ValueError::NodeId), "{bad}");
        }
    }

    #[test]
    fn durations_take_each_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("25"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_refuse_garbage() {
        for bad in [
            "",
            "abc",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "1m30s",
            "5d",
            "30S",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), Err(ValueError::Duration), "{bad:?}");
        }
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err(ValueError::Duration)
        );
        assert_eq!(parse_nonzero_duration("0ms"), Err(ValueError::ZeroDuration));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("65536"), Ok(65536));
        assert_eq!(parse_byte_size("64KiB"), Ok(65536));
        assert_eq!(parse_byte_size("1mib"), Ok(1 << 20));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        for bad in [
            "",
            "KiB",
            "64KB",
            "1.5MiB",
            "-1",
            "64 k",
            "99999999999999999999GiB",
        ] {
            assert_eq!(parse_byte_size(bad), Err(ValueError::ByteSize), "{bad:?}");
        }
    }

    #[test]
    fn integers_and_ranges() {
        assert_eq!(parse_integer("8"), Ok(8));
        assert_eq!(parse_integer("+8"), Err(ValueError::Integer));
        assert_eq!(parse_integer("-1"), Err(ValueError::Integer));
        assert_eq!(in_range(0, 1, 10), Err(ValueError::TooSmall { min: 1 }));
        assert_eq!(in_range(11, 1, 10), Err(ValueError::TooLarge { max: 10 }));
    }

    #[test]
    fn addresses() {
        assert!(parse_address("[::1]:80").is_ok());
        assert_eq!(parse_address("localhost:80"), Err(ValueError::Address));
        assert_eq!(parse_optional_address("off"), Ok(None));
        assert_eq!(parse_optional_address(""), Ok(None));
        assert!(parse_optional_address("127.0.0.1:9").unwrap().is_some());
    }

    #[test]
    fn origins() {
        assert_eq!(parse_origin("*"), Ok("*".into()));
        assert_eq!(
            parse_origin("https://App.example:8443"),
            Ok("https://app.example:8443".into())
        );
        for bad in [
            "",
            "app.example",
            "https://",
            "https://a.example/",
            "https://a/x",
        ] {
            assert_eq!(parse_origin(bad), Err(ValueError::Origin), "{bad:?}");
        }
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse_log_level("INFO"), Ok("info".into()));
        assert!(parse_log_level("info,customws=debug").is_ok());
        assert_eq!(parse_log_level("verbose"), Err(ValueError::LogLevel));
        assert_eq!(parse_log_level("customws=loud"), Err(ValueError::LogLevel));
    }

    #[test]
    fn algorithms() {
        assert_eq!(parse_algorithm("rs256"), Ok(PublicKeyAlgorithm::Rs256));
        assert_eq!(parse_algorithm("EdDSA"), Ok(PublicKeyAlgorithm::EdDsa));
        assert_eq!(parse_algorithm("HS256"), Err(ValueError::Algorithm));
    }
}
