//! Validated, typed configuration (the second stage of ripgrep's low/high args).
//!
//! `cli.rs` merges flags, `CUSTOMWS_*` environment variables and an optional TOML file
//! (precedence: flag > env > file > default) into this struct; nothing past this point
//! re-validates. Every limit documents its default and why.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

/// Which JWT algorithm family the gateway accepts. Only one family is ever accepted, so an
/// HS token cannot be verified against an RSA public key (RS/HS confusion) and `alg: none`
/// is always refused.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// HMAC secret; HS256, HS384 and HS512 tokens are accepted.
    Hmac(Vec<u8>),
    /// RSA public key (PEM); RS256 only.
    RsaPem(Vec<u8>),
    /// EC P-256 public key (PEM); ES256 only.
    EcPem(Vec<u8>),
    /// Ed25519 public key (PEM); EdDSA only.
    EdPem(Vec<u8>),
}

/// Never prints key material (configs are logged and `Debug`-printed).
impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hmac(s) => write!(f, "Hmac(<{} bytes redacted>)", s.len()),
            JwtKey::RsaPem(_) => f.write_str("RsaPem(..)"),
            JwtKey::EcPem(_) => f.write_str("EcPem(..)"),
            JwtKey::EdPem(_) => f.write_str("EdPem(..)"),
        }
    }
}

/// Authentication settings (spec section 3).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub key: JwtKey,
    /// Clock skew tolerated on `exp`/`nbf`. Default 30 s (jsonwebtoken's own default is 60 s).
    pub leeway: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The `?token=` carrier leaks into proxy logs; operators can switch it off. Default on.
    pub allow_query_token: bool,
    /// Browser origins allowed to upgrade. Empty = browsers refused (403); `*` = all.
    /// A request without `Origin` (non-browser client) is always allowed.
    pub allowed_origins: Vec<String>,
}

/// Where the cluster's Redis is (`redis://[user:password@]host[:port][/db]`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisEndpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

/// Never prints the password.
impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://")?;
        if let Some(u) = &self.username {
            write!(f, "{u}")?;
        }
        if self.password.is_some() {
            write!(f, ":<redacted>@")?;
        } else if self.username.is_some() {
            write!(f, "@")?;
        }
        write!(f, "{}:{}/{}", self.host, self.port, self.db)
    }
}

/// Cluster mode (`--cluster-redis`): nodes share P2P, broadcast and presence through Redis.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub redis: RedisEndpoint,
    /// This node's name in the cluster (default: `<hostname>-<random>`).
    pub node_id: String,
    /// Presence heartbeat; a node silent for three of them is declared dead. Default 1 s.
    pub heartbeat: Duration,
}

/// Everything the shard runtime needs. Defaults follow spec section 6/7.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub shards: NonZeroUsize,
    /// `None` only for `customws echo` (no auth at all).
    pub auth: Option<AuthConfig>,
    /// Largest assembled message, in bytes (over it: close 1009). Default 64 KiB.
    pub max_message_size: usize,
    /// Largest number of frames in one fragmented message (many tiny fragments exhausted
    /// memory in ws). Default 1024 for the gateway, 65,536 for echo (Autobahn 9.x).
    pub max_fragments: usize,
    /// Total open connections, all shards (503 before the upgrade beyond it). Default 1,000,000.
    pub max_connections: usize,
    /// Connections per user; the oldest is closed with 4000 "replaced" beyond it. Default 8.
    pub max_connections_per_user: NonZeroUsize,
    /// Ping cadence. Default 25 s.
    pub ping_interval: Duration,
    /// Drop a connection from which nothing arrived for this long. Default 30 s.
    pub pong_wait: Duration,
    /// Whole HTTP upgrade must arrive within this (slowloris). Default 10 s.
    pub handshake_timeout: Duration,
    /// Request line + headers, bytes (431 beyond). Default 8 KiB.
    pub max_header_bytes: usize,
    /// Header count (431 beyond; CVE-2024-37890). Default 64.
    pub max_headers: usize,
    /// Per-connection unsent bytes before the connection counts as a slow consumer
    /// (close 1013). Default 1 MiB.
    pub outbound_queue_limit: usize,
    /// Token bucket refill, messages per second per user. Default 100.
    pub rate_limit: u32,
    /// Token bucket size. Default 200.
    pub rate_burst: u32,
    /// Rate-limited messages in a row (each answered 429) tolerated before close 1008.
    /// Default 50; 65,535 never closes (the per-connection counter saturates there).
    pub rate_abuse_threshold: u16,
    /// Malformed envelopes (each answered 400/422) tolerated per connection before close 1008.
    /// The counter decays by one per valid message. Default 20; 65,535 never closes.
    pub garbage_threshold: u16,
    /// Minimum interval between two presence broadcasts of one user (latest wins). Default 100 ms.
    pub presence_min_interval: Duration,
    /// Whether presence events (online, offline, public status) go to every connection, as
    /// the spec says. Off, presence is pull-only (`get_presence`) plus targeted updates:
    /// presence to everyone costs O(N²) deliveries as N users connect, which dominates
    /// connection storms at tens of thousands of users. Default on.
    pub presence_fanout: bool,
    /// Cap on `payload.data.targetUsers` for notification multicast. Default 1000.
    pub max_notification_targets: usize,
    /// JSON nesting depth accepted in an envelope. Default 64.
    pub max_json_depth: usize,
    /// Slots in each cross-shard SPSC queue. Default 8,192: 720 KB per ordered pair of shards
    /// once traffic has gone round the ring (88-byte slots); a full ring only holds messages
    /// back, in order, in the sender's backlog until the next turn.
    pub cross_shard_queue_capacity: usize,
    /// Roles allowed to send P2P / broadcast; empty = everyone. Default empty.
    pub p2p_roles: Vec<String>,
    pub broadcast_roles: Vec<String>,
    /// Grace period on SIGTERM/SIGINT. Default 10 s.
    pub drain_timeout: Duration,
    pub log_level: String,
    /// `--dev`: ephemeral secret, all origins, prints tokens.
    pub dev: bool,
    /// `None`: a single node, no Redis.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// Gateway defaults from the spec, with the given auth settings.
    pub fn gateway(auth: AuthConfig) -> Self {
        Config {
            auth: Some(auth),
            ..Config::defaults()
        }
    }

    /// Defaults of `customws echo`: no auth, and limits wide enough for the Autobahn
    /// suite (16 MiB messages, 65,536 fragments).
    pub fn echo() -> Self {
        Config {
            max_message_size: 16 << 20,
            max_fragments: 65_536,
            // An echoed 16 MiB message must not count as a slow consumer.
            outbound_queue_limit: 64 << 20,
            ..Config::defaults()
        }
    }

    /// The spec's defaults with no auth configured.
    fn defaults() -> Self {
        Config {
            listen: "0.0.0.0:8082".parse().expect("literal"),
            admin_listen: Some("127.0.0.1:9082".parse().expect("literal")),
            shards: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            auth: None,
            max_message_size: 64 * 1024,
            max_fragments: 1024,
            max_connections: 1_000_000,
            max_connections_per_user: NonZeroUsize::new(8).expect("literal"),
            ping_interval: Duration::from_secs(25),
            pong_wait: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            max_headers: 64,
            outbound_queue_limit: 1 << 20,
            rate_limit: 100,
            rate_burst: 200,
            rate_abuse_threshold: 50,
            garbage_threshold: 20,
            presence_min_interval: Duration::from_millis(100),
            presence_fanout: true,
            max_notification_targets: 1000,
            max_json_depth: 64,
            cross_shard_queue_capacity: 8_192,
            p2p_roles: Vec::new(),
            broadcast_roles: Vec::new(),
            drain_timeout: Duration::from_secs(10),
            log_level: "info".into(),
            dev: false,
            cluster: None,
        }
    }
}
