//! `customws::cli::parse` end to end: flags, a fake environment and temp TOML files into
//! `Config`. The process environment is never touched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use customws::cli::{self, CliError, Command, TokenArgs, ValueError};
use customws::config::{Config, JwtKey};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

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
const RSA_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAnkGwc0x13IuuBzzqn8g9DKqr7TyEQ0LQWzqeUaTSGFoUV7JjstE8
OE0EqrHz1QwiwOuaXmeH2ZTD7pN56K2JBtHmy1OsBaRvZv1wMMfoyrmi88HrzN/G
XknGnIE7D2YHABXIA6s1rhVJT25FA4XbxFL39mSLgP6S+8sTTumqXLSXUggymMkv
cR9STfR9gUDqcxqdlzLt4sX5mfRX3bT6fkav70B+yujXbW8n+8DqHS7XZmHzMa8G
ve9nWz47EGOpAxEIlPr4tmPBsw0Q/YUaa/3NSoEkiEAh2o9cIWwTlSWz3wEKMYWt
iWHtrnngIUl3AHf55nlPHbkyHgF8CfTYtQIDAQAB
-----END RSA PUBLIC KEY-----
";
const EC_P256: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZLQ4+nb7Sc+d0qhjoYgIeBtqhxxy
s3yHfwlvG+Wdadm2abYILSsWmBo2OEg9rbLLggaH2xMDd3kaC65FsCSKrg==
-----END PUBLIC KEY-----
";
const EC_P384: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAENulEHj3E5004oTRGx48y7hSniQkC3g8a
EyGcoxuPastlnpMaSG/zqUtOaNzUZE7n7K/ozWXUrBfqI/BS0P7FqFm23ZLjkiDk
fsXhanyQADuC6mwCgBAPpifGcpa9eBmU
-----END PUBLIC KEY-----
";
const ED25519: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAFmgCuDkq99ZQkiULCHWdRVO8Hlj/qrVEI88kne+YPmw=
-----END PUBLIC KEY-----
";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A unique file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "customws-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
    fn sibling(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.parent().unwrap().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, CliError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| env.get(name).cloned();
    cli::parse(
        std::iter::once("customws").chain(args.iter().copied()),
        &lookup,
    )
}

fn serve_full(args: &[&str], env: &[(&str, &str)]) -> Result<(Config, Vec<String>), CliError> {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    match run(&all, env)? {
        Command::Serve { config, warnings } => Ok((config, warnings)),
        other => panic!("expected serve, got {other:?}"),
    }
}

fn serve(args: &[&str], env: &[(&str, &str)]) -> Result<Config, CliError> {
    serve_full(args, env).map(|(config, _)| config)
}

/// `serve` with a valid secret plus `args`.
fn serve_ok(args: &[&str]) -> Config {
    let mut all = vec!["--jwt-secret", SECRET];
    all.extend_from_slice(args);
    serve(&all, &[]).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn serve_err(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["--jwt-secret", SECRET];
    all.extend_from_slice(args);
    match serve(&all, env) {
        Ok(_) => panic!("{args:?} {env:?} should fail"),
        Err(error) => error.to_string(),
    }
}

fn echo(args: &[&str], env: &[(&str, &str)]) -> Result<Config, CliError> {
    let mut all = vec!["echo"];
    all.extend_from_slice(args);
    match run(&all, env)? {
        Command::Echo(config) => Ok(config),
        other => panic!("expected echo, got {other:?}"),
    }
}

fn token(args: &[&str], env: &[(&str, &str)]) -> Result<TokenArgs, CliError> {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    match run(&all, env)? {
        Command::Token(args) => Ok(args),
        other => panic!("expected token, got {other:?}"),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------------------------------------
// Defaults and every flag

#[test]
fn defaults_equal_the_spec_table() {
    let (c, warnings) = serve_full(&["--jwt-secret", SECRET], &[]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.listen, addr("0.0.0.0:8082"));
    assert_eq!(c.admin_listen, Some(addr("127.0.0.1:9082")));
    assert_eq!(
        c.shards,
        std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN)
    );
    let auth = c.auth.as_ref().unwrap();
    assert_eq!(auth.key, JwtKey::Hmac(SECRET.as_bytes().to_vec()));
    assert_eq!(auth.leeway, secs(30));
    assert_eq!(auth.issuer, None);
    assert_eq!(auth.audience, None);
    assert!(auth.allow_query_token);
    assert!(auth.allowed_origins.is_empty());
    assert_eq!(c.max_message_size, 65536);
    assert_eq!(c.max_fragments, 1024);
    assert_eq!(c.max_connections, 1_000_000);
    assert_eq!(c.max_connections_per_user.get(), 8);
    assert_eq!(c.ping_interval, secs(25));
    assert_eq!(c.pong_wait, secs(30));
    assert_eq!(c.handshake_timeout, secs(10));
    assert_eq!(c.max_header_bytes, 8192);
    assert_eq!(c.max_headers, 64);
    assert_eq!(c.outbound_queue_limit, 1_048_576);
    assert_eq!(c.rate_limit, 100);
    assert_eq!(c.rate_burst, 200);
    assert_eq!(c.rate_abuse_threshold, 50);
    assert_eq!(c.garbage_threshold, 20);
    assert_eq!(c.presence_min_interval, Duration::from_millis(100));
    assert!(c.presence_fanout);
    assert_eq!(c.max_notification_targets, 1000);
    assert_eq!(c.max_json_depth, 64);
    assert_eq!(c.cross_shard_queue_capacity, 8_192);
    assert!(c.p2p_roles.is_empty());
    assert!(c.broadcast_roles.is_empty());
    assert_eq!(c.drain_timeout, secs(10));
    assert_eq!(c.log_level, "info");
    assert!(!c.dev);
}

#[test]
fn every_flag_reaches_its_field() {
    let c = serve_ok(&[
        "--listen",
        "127.0.0.1:1000",
        "--admin-listen",
        "127.0.0.1:1001",
        "--shards",
        "3",
        "--jwt-leeway",
        "5s",
        "--jwt-issuer",
        "https://auth.example",
        "--jwt-audience",
        "chat",
        "--no-query-token",
        "--allowed-origin",
        "https://a.example",
        "--allowed-origin",
        "https://b.example:8443,https://c.example",
        "--max-message-size",
        "1MiB",
        "--max-fragments",
        "16",
        "--max-connections",
        "5000",
        "--max-connections-per-user",
        "1",
        "--ping-interval",
        "250ms",
        "--pong-wait",
        "1s",
        "--handshake-timeout",
        "2s",
        "--max-header-bytes",
        "16KiB",
        "--max-headers",
        "32",
        "--outbound-queue-limit",
        "2MiB",
        "--rate-limit",
        "10",
        "--rate-burst",
        "20",
        "--rate-abuse-threshold",
        "5",
        "--garbage-threshold",
        "0",
        "--presence-min-interval",
        "0",
        "--presence-fanout",
        "off",
        "--max-notification-targets",
        "50",
        "--max-json-depth",
        "8",
        "--cross-shard-queue-capacity",
        "1024",
        "--p2p-roles",
        "agent,admin",
        "--broadcast-roles",
        "admin",
        "--drain-timeout",
        "1m",
        "--log-level",
        "info,customws=debug",
    ]);
    assert_eq!(c.listen, addr("127.0.0.1:1000"));
    assert_eq!(c.admin_listen, Some(addr("127.0.0.1:1001")));
    assert_eq!(c.shards.get(), 3);
    let auth = c.auth.as_ref().unwrap();
    assert_eq!(auth.leeway, secs(5));
    assert_eq!(auth.issuer.as_deref(), Some("https://auth.example"));
    assert_eq!(auth.audience.as_deref(), Some("chat"));
    assert!(!auth.allow_query_token);
    assert_eq!(
        auth.allowed_origins,
        [
            "https://a.example",
            "https://b.example:8443",
            "https://c.example"
        ]
    );
    assert_eq!(c.max_message_size, 1 << 20);
    assert_eq!(c.max_fragments, 16);
    assert_eq!(c.max_connections, 5000);
    assert_eq!(c.max_connections_per_user.get(), 1);
    assert_eq!(c.ping_interval, Duration::from_millis(250));
    assert_eq!(c.pong_wait, secs(1));
    assert_eq!(c.handshake_timeout, secs(2));
    assert_eq!(c.max_header_bytes, 16384);
    assert_eq!(c.max_headers, 32);
    assert_eq!(c.outbound_queue_limit, 2 << 20);
    assert_eq!(c.rate_limit, 10);
    assert_eq!(c.rate_burst, 20);
    assert_eq!(c.rate_abuse_threshold, 5);
    assert_eq!(c.garbage_threshold, 0);
    assert_eq!(c.presence_min_interval, Duration::ZERO);
    assert!(!c.presence_fanout);
    assert_eq!(c.max_notification_targets, 50);
    assert_eq!(c.max_json_depth, 8);
    assert_eq!(c.cross_shard_queue_capacity, 1024);
    assert_eq!(c.p2p_roles, ["agent", "admin"]);
    assert_eq!(c.broadcast_roles, ["admin"]);
    assert_eq!(c.drain_timeout, secs(60));
    assert_eq!(c.log_level, "info,customws=debug");
}

#[test]
fn admin_listener_can_be_switched_off() {
    assert_eq!(serve_ok(&["--admin-listen", "off"]).admin_listen, None);
}

#[test]
fn every_setting_has_an_env_variable() {
    let c = serve(
        &[],
        &[
            ("CUSTOMWS_JWT_SECRET", SECRET),
            ("CUSTOMWS_LISTEN", "127.0.0.1:2000"),
            ("CUSTOMWS_ADMIN_LISTEN", "off"),
            ("CUSTOMWS_SHARDS", "2"),
            ("CUSTOMWS_JWT_LEEWAY", "1m"),
            ("CUSTOMWS_JWT_ISSUER", "iss"),
            ("CUSTOMWS_JWT_AUDIENCE", "aud"),
            ("CUSTOMWS_NO_QUERY_TOKEN", "yes"),
            (
                "CUSTOMWS_ALLOWED_ORIGIN",
                "https://a.example, https://b.example",
            ),
            ("CUSTOMWS_MAX_MESSAGE_SIZE", "4096"),
            ("CUSTOMWS_MAX_FRAGMENTS", "8"),
            ("CUSTOMWS_MAX_CONNECTIONS", "7"),
            ("CUSTOMWS_MAX_CONNECTIONS_PER_USER", "2"),
            ("CUSTOMWS_PING_INTERVAL", "5"),
            ("CUSTOMWS_PONG_WAIT", "6"),
            ("CUSTOMWS_HANDSHAKE_TIMEOUT", "3s"),
            ("CUSTOMWS_MAX_HEADER_BYTES", "4KiB"),
            ("CUSTOMWS_MAX_HEADERS", "16"),
            ("CUSTOMWS_OUTBOUND_QUEUE_LIMIT", "8192"),
            ("CUSTOMWS_RATE_LIMIT", "1"),
            ("CUSTOMWS_RATE_BURST", "2"),
            ("CUSTOMWS_RATE_ABUSE_THRESHOLD", "3"),
            ("CUSTOMWS_GARBAGE_THRESHOLD", "4"),
            ("CUSTOMWS_PRESENCE_MIN_INTERVAL", "1s"),
            ("CUSTOMWS_MAX_NOTIFICATION_TARGETS", "9"),
            ("CUSTOMWS_MAX_JSON_DEPTH", "10"),
            ("CUSTOMWS_CROSS_SHARD_QUEUE_CAPACITY", "11"),
            ("CUSTOMWS_P2P_ROLES", "a,b"),
            ("CUSTOMWS_BROADCAST_ROLES", "c"),
            ("CUSTOMWS_DRAIN_TIMEOUT", "0s"),
            ("CUSTOMWS_LOG_LEVEL", "debug"),
        ],
    )
    .unwrap();
    assert_eq!(c.listen, addr("127.0.0.1:2000"));
    assert_eq!(c.admin_listen, None);
    assert_eq!(c.shards.get(), 2);
    let auth = c.auth.as_ref().unwrap();
    assert_eq!(auth.key, JwtKey::Hmac(SECRET.as_bytes().to_vec()));
    assert_eq!(auth.leeway, secs(60));
    assert_eq!(auth.issuer.as_deref(), Some("iss"));
    assert_eq!(auth.audience.as_deref(), Some("aud"));
    assert!(!auth.allow_query_token);
    assert_eq!(
        auth.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    assert_eq!(c.max_message_size, 4096);
    assert_eq!(c.max_fragments, 8);
    assert_eq!(c.max_connections, 7);
    assert_eq!(c.max_connections_per_user.get(), 2);
    assert_eq!(c.ping_interval, secs(5));
    assert_eq!(c.pong_wait, secs(6));
    assert_eq!(c.handshake_timeout, secs(3));
    assert_eq!(c.max_header_bytes, 4096);
    assert_eq!(c.max_headers, 16);
    assert_eq!(c.outbound_queue_limit, 8192);
    assert_eq!((c.rate_limit, c.rate_burst), (1, 2));
    assert_eq!((c.rate_abuse_threshold, c.garbage_threshold), (3, 4));
    assert_eq!(c.presence_min_interval, secs(1));
    assert_eq!(c.max_notification_targets, 9);
    assert_eq!(c.max_json_depth, 10);
    assert_eq!(c.cross_shard_queue_capacity, 11);
    assert_eq!(c.p2p_roles, ["a", "b"]);
    assert_eq!(c.broadcast_roles, ["c"]);
    assert_eq!(c.drain_timeout, Duration::ZERO);
    assert_eq!(c.log_level, "debug");
}

#[test]
fn cluster_mode_from_flags_env_and_file() {
    assert!(serve_ok(&[]).cluster.is_none(), "single node by default");
    let c = serve_ok(&[
        "--cluster-redis",
        "redis://app:pw@10.0.0.5:7000/3",
        "--node-id",
        "edge-1",
        "--presence-heartbeat",
        "250ms",
    ]);
    let cluster = c.cluster.expect("cluster mode");
    assert_eq!(cluster.node_id, "edge-1");
    assert_eq!(cluster.heartbeat, Duration::from_millis(250));
    assert_eq!(
        (
            cluster.redis.host.as_str(),
            cluster.redis.port,
            cluster.redis.db
        ),
        ("10.0.0.5", 7000, 3)
    );
    assert_eq!(cluster.redis.username.as_deref(), Some("app"));
    assert_eq!(cluster.redis.password.as_deref(), Some("pw"));
    assert!(
        !format!("{:?}", cluster.redis).contains("pw"),
        "the password never reaches logs"
    );
    // Environment, and the generated defaults.
    let c = serve(
        &["--jwt-secret", SECRET],
        &[("CUSTOMWS_CLUSTER_REDIS", "redis://localhost")],
    )
    .unwrap();
    let cluster = c.cluster.expect("cluster mode from env");
    assert_eq!(cluster.redis.port, 6379);
    assert_eq!(cluster.heartbeat, secs(1));
    assert!(!cluster.node_id.is_empty());
    let other = serve(
        &["--jwt-secret", SECRET],
        &[("CUSTOMWS_CLUSTER_REDIS", "redis://localhost")],
    )
    .unwrap();
    assert_ne!(
        other.cluster.unwrap().node_id,
        cluster.node_id,
        "generated ids differ between processes/starts"
    );
    let file = TempFile::new(
        "cluster.toml",
        "cluster_redis = \"redis://r:6380\"\nnode_id = \"from-file\"\npresence_heartbeat = \"2s\"\n",
    );
    let c = serve_ok(&["--config", file.path()]);
    let cluster = c.cluster.unwrap();
    assert_eq!(
        (cluster.node_id.as_str(), cluster.heartbeat),
        ("from-file", secs(2))
    );
    // Bad values are refused with the setting's name; cluster-only flags alone warn.
    let e = serve_err(&["--cluster-redis", "http://x"], &[]);
    assert!(
        e.contains("--cluster-redis") && e.contains("redis://"),
        "{e}"
    );
    let e = serve_err(&["--cluster-redis", "redis://x", "--node-id", "a b"], &[]);
    assert!(e.contains("--node-id"), "{e}");
    let e = serve_err(
        &["--cluster-redis", "redis://x", "--presence-heartbeat", "0s"],
        &[],
    );
    assert!(e.contains("--presence-heartbeat"), "{e}");
    let (_, warnings) = serve_full(&["--jwt-secret", SECRET, "--node-id", "n"], &[]).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("--node-id") && w.contains("no effect")),
        "{warnings:?}"
    );
}

#[test]
fn empty_env_variable_counts_as_unset() {
    let c = serve_ok(&[]);
    let with_empty = serve(
        &["--jwt-secret", SECRET],
        &[("CUSTOMWS_LISTEN", ""), ("CUSTOMWS_JWT_ISSUER", " ")],
    )
    .unwrap();
    assert_eq!(with_empty.listen, c.listen);
    assert_eq!(with_empty.auth.unwrap().issuer, None);
}

// ---------------------------------------------------------------------------------------------
// The TOML file and precedence

#[test]
fn file_sets_values_of_each_toml_type() {
    let dir = TempFile::new("customws.toml", "");
    dir.sibling("secret.txt", &format!("{SECRET}\n"));
    let file = dir.sibling(
        "customws.toml",
        r#"
listen = "127.0.0.1:3000"
admin_listen = "off"
shards = 2
jwt_secret_file = "secret.txt"   # relative to this file
jwt_leeway = 0
no_query_token = true
allowed_origin = ["https://a.example", "https://b.example"]
max_message_size = "64KiB"
max_connections = 10
ping_interval = "10s"
pong_wait = 20
p2p_roles = "a, b"
broadcast_roles = ["admin"]
dev = false
"#,
    );
    let c = serve(&["--config", file.to_str().unwrap()], &[]).unwrap();
    assert_eq!(c.listen, addr("127.0.0.1:3000"));
    assert_eq!(c.admin_listen, None);
    assert_eq!(c.shards.get(), 2);
    let auth = c.auth.as_ref().unwrap();
    assert_eq!(auth.key, JwtKey::Hmac(SECRET.as_bytes().to_vec()));
    assert_eq!(auth.leeway, Duration::ZERO);
    assert!(!auth.allow_query_token);
    assert_eq!(
        auth.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    assert_eq!(c.max_message_size, 65536);
    assert_eq!(c.max_connections, 10);
    assert_eq!(c.ping_interval, secs(10));
    assert_eq!(c.pong_wait, secs(20));
    assert_eq!(c.p2p_roles, ["a", "b"]);
    assert_eq!(c.broadcast_roles, ["admin"]);
    assert!(!c.dev);
}

#[test]
fn config_file_can_come_from_the_environment() {
    let file = TempFile::new(
        "c.toml",
        &format!("jwt_secret = \"{SECRET}\"\nshards = 5\n"),
    );
    let c = serve(&[], &[("CUSTOMWS_CONFIG", file.path())]).unwrap();
    assert_eq!(c.shards.get(), 5);
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let file = TempFile::new(
        "c.toml",
        &format!(
            r#"jwt_secret = "{SECRET}"
listen = "127.0.0.1:1"
max_message_size = 1000
ping_interval = "1s"
pong_wait = "100s"
allowed_origin = ["https://file.example"]
log_level = "warn"
"#
        ),
    );
    let env = [
        ("CUSTOMWS_LISTEN", "127.0.0.1:2"),
        ("CUSTOMWS_MAX_MESSAGE_SIZE", "2000"),
        ("CUSTOMWS_ALLOWED_ORIGIN", "https://env.example"),
    ];
    let c = serve(
        &[
            "--config",
            file.path(),
            "--listen",
            "127.0.0.1:3",
            "--allowed-origin",
            "https://flag.example",
        ],
        &env,
    )
    .unwrap();
    // flag beats env and file
    assert_eq!(c.listen, addr("127.0.0.1:3"));
    assert_eq!(
        c.auth.as_ref().unwrap().allowed_origins,
        ["https://flag.example"]
    );
    // env beats file
    assert_eq!(c.max_message_size, 2000);
    // file beats default
    assert_eq!(c.ping_interval, secs(1));
    assert_eq!(c.log_level, "warn");
    // default where nobody spoke
    assert_eq!(c.handshake_timeout, secs(10));

    let c = serve(&["--config", file.path()], &env).unwrap();
    assert_eq!(c.listen, addr("127.0.0.1:2"));
    assert_eq!(c.auth.unwrap().allowed_origins, ["https://env.example"]);
}

#[test]
fn jwt_key_sources_share_one_precedence_slot() {
    let key = TempFile::new("k.pem", ED25519);
    let file = TempFile::new("c.toml", &format!("jwt_public_key = \"{}\"\n", key.path()));
    // An env secret overrides the file's public key instead of clashing with it.
    let c = serve(
        &["--config", file.path()],
        &[("CUSTOMWS_JWT_SECRET", SECRET)],
    )
    .unwrap();
    assert_eq!(
        c.auth.unwrap().key,
        JwtKey::Hmac(SECRET.as_bytes().to_vec())
    );
    // Two sources in one layer are an error.
    let error = serve(
        &[],
        &[
            ("CUSTOMWS_JWT_SECRET", SECRET),
            ("CUSTOMWS_JWT_PUBLIC_KEY", key.path()),
        ],
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "CUSTOMWS_JWT_SECRET and CUSTOMWS_JWT_PUBLIC_KEY both name a JWT key; pass only one"
    );
    // On the command line clap refuses it.
    let error = serve(
        &["--jwt-secret", SECRET, "--jwt-public-key", key.path()],
        &[],
    )
    .unwrap_err();
    match error {
        CliError::Clap(e) => assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict),
        other => panic!("{other}"),
    }
}

#[test]
fn unknown_toml_key_is_an_error() {
    let file = TempFile::new("c.toml", "max_mesage_size = 10\n");
    let error = serve(&["--jwt-secret", SECRET, "--config", file.path()], &[]).unwrap_err();
    assert!(matches!(&error, CliError::UnknownConfigKey { key, .. } if key == "max_mesage_size"));
    assert!(
        error.to_string().contains("unknown key `max_mesage_size`"),
        "{error}"
    );
}

#[test]
fn toml_type_and_syntax_errors() {
    let file = TempFile::new("c.toml", "allowed_origin = 5\n");
    let error = serve(&["--jwt-secret", SECRET, "--config", file.path()], &[]).unwrap_err();
    assert!(
        error.to_string().contains("expected an array of strings"),
        "{error}"
    );

    let file = TempFile::new("c.toml", "listen = [\n");
    let error = serve(&["--jwt-secret", SECRET, "--config", file.path()], &[]).unwrap_err();
    assert!(matches!(error, CliError::ConfigSyntax { .. }), "{error}");

    let error = serve(
        &[
            "--jwt-secret",
            SECRET,
            "--config",
            "/nonexistent/customws.toml",
        ],
        &[],
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("can't read --config /nonexistent"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad values

#[test]
fn bad_values_name_the_setting_where_it_was_written() {
    assert_eq!(
        serve_err(&["--pong-wait", "abc"], &[]),
        "invalid value for --pong-wait: \"abc\": expected a duration like 250ms, 30s or 5m \
         (plain digits are seconds)"
    );
    assert_eq!(
        serve_err(&[], &[("CUSTOMWS_SHARDS", "0")]),
        "invalid value for CUSTOMWS_SHARDS: \"0\": must be at least 1"
    );
    let file = TempFile::new("c.toml", "max_message_size = \"64KB\"\n");
    assert_eq!(
        serve_err(&["--config", file.path()], &[]),
        format!(
            "invalid value for max_message_size in {}: \"64KB\": expected a size in bytes \
             like 65536, 64KiB or 1MiB",
            file.path()
        )
    );
}

#[test]
fn out_of_range_and_malformed_values_are_refused() {
    let cases: &[(&[&str], ValueError)] = &[
        (&["--listen", "localhost:80"], ValueError::Address),
        (&["--shards", "two"], ValueError::Integer),
        (&["--shards", "-1"], ValueError::Integer),
        (
            &["--max-message-size", "124"],
            ValueError::TooSmall { min: 125 },
        ),
        (
            &["--max-message-size", "2GiB"],
            ValueError::TooLarge { max: 1 << 30 },
        ),
        (&["--max-connections", "0"], ValueError::TooSmall { min: 1 }),
        (
            &["--max-connections-per-user", "0"],
            ValueError::TooSmall { min: 1 },
        ),
        (&["--ping-interval", "0s"], ValueError::ZeroDuration),
        (&["--handshake-timeout", "0"], ValueError::ZeroDuration),
        (&["--jwt-leeway", "1.5s"], ValueError::Duration),
        (&["--max-headers", "4"], ValueError::TooSmall { min: 5 }),
        (&["--rate-limit", "0"], ValueError::TooSmall { min: 1 }),
        (
            &["--rate-burst", "4294967296"],
            ValueError::TooLarge {
                max: u32::MAX as u64,
            },
        ),
        (&["--max-json-depth", "2"], ValueError::TooSmall { min: 3 }),
        (
            &["--garbage-threshold", "65536"],
            ValueError::TooLarge { max: 65_535 },
        ),
        (
            &["--rate-abuse-threshold", "65536"],
            ValueError::TooLarge { max: 65_535 },
        ),
        (
            &["--allowed-origin", "https://a.example/"],
            ValueError::Origin,
        ),
        (&["--p2p-roles", "a b"], ValueError::Role),
        (&["--log-level", "verbose"], ValueError::LogLevel),
        (&["--jwt-issuer", ""], ValueError::Empty),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--jwt-secret", SECRET];
        all.extend_from_slice(args);
        match serve(&all, &[]) {
            Err(CliError::InvalidValue { reason, .. }) => assert_eq!(&reason, expected, "{args:?}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
}

#[test]
fn pong_wait_must_exceed_ping_interval() {
    let error = serve_err(&["--ping-interval", "30s"], &[]);
    assert!(
        error.starts_with("--pong-wait (30s) must be longer than --ping-interval (30s)"),
        "{error}"
    );
    let error = serve_err(
        &["--pong-wait", "10s"],
        &[("CUSTOMWS_PING_INTERVAL", "20s")],
    );
    assert!(error.contains("CUSTOMWS_PING_INTERVAL"), "{error}");
}

#[test]
fn a_repeated_single_value_flag_is_a_clap_error() {
    let error = serve(
        &["--jwt-secret", SECRET, "--shards", "1", "--shards", "2"],
        &[],
    )
    .unwrap_err();
    assert!(matches!(error, CliError::Clap(_)), "{error}");
}

#[test]
fn help_and_version_come_back_as_clap_errors() {
    for (args, kind) in [
        (&["--help"][..], clap::error::ErrorKind::DisplayHelp),
        (
            &["serve", "--help"][..],
            clap::error::ErrorKind::DisplayHelp,
        ),
        (&["--version"][..], clap::error::ErrorKind::DisplayVersion),
    ] {
        match run(args, &[]) {
            Err(CliError::Clap(error)) => {
                assert_eq!(error.kind(), kind);
                assert_eq!(error.exit_code(), 0);
            }
            other => panic!("{args:?}: {other:?}"),
        }
    }
    let help = match run(&["serve", "--help"], &[]) {
        Err(CliError::Clap(error)) => error.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(help.contains("--max-message-size <BYTES>"), "{help}");
    assert!(help.contains("CUSTOMWS_MAX_MESSAGE_SIZE"), "{help}");
}

// ---------------------------------------------------------------------------------------------
// JWT keys and --dev

#[test]
fn missing_jwt_key_is_an_error() {
    let error = serve(&[], &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no JWT key: pass --jwt-secret, --jwt-secret-file or --jwt-public-key (or --dev)"
    );
}

#[test]
fn secret_file_is_trimmed_and_short_secrets_warn() {
    let file = TempFile::new("secret", "hunter2\r\n");
    let (c, warnings) = serve_full(&["--jwt-secret-file", file.path()], &[]).unwrap();
    assert_eq!(c.auth.unwrap().key, JwtKey::Hmac(b"hunter2".to_vec()));
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("only 7 bytes"), "{warnings:?}");

    let empty = TempFile::new("secret", "\n");
    let error = serve(&["--jwt-secret-file", empty.path()], &[]).unwrap_err();
    assert_eq!(error.to_string(), "--jwt-secret-file is empty");

    let error = serve(&["--jwt-secret-file", "/nonexistent/secret"], &[]).unwrap_err();
    assert!(matches!(error, CliError::ReadFile { .. }), "{error}");
}

#[test]
fn public_keys_are_detected_from_the_pem() {
    for (pem, expect) in [
        (RSA_SPKI, "rsa"),
        (RSA_PKCS1, "rsa"),
        (EC_P256, "ec"),
        (ED25519, "ed"),
    ] {
        let file = TempFile::new("key.pem", pem);
        let c = serve(&["--jwt-public-key", file.path()], &[]).unwrap();
        let key = c.auth.unwrap().key;
        let found = match &key {
            JwtKey::RsaPem(bytes) | JwtKey::EcPem(bytes) | JwtKey::EdPem(bytes) => {
                assert_eq!(bytes, pem.as_bytes());
                match key {
                    JwtKey::RsaPem(_) => "rsa",
                    JwtKey::EcPem(_) => "ec",
                    _ => "ed",
                }
            }
            JwtKey::Hmac(_) => "hmac",
        };
        assert_eq!(found, expect, "{pem}");
    }
}

#[test]
fn jwt_algorithm_must_agree_with_the_key() {
    let file = TempFile::new("key.pem", EC_P256);
    let c = serve(
        &["--jwt-public-key", file.path(), "--jwt-algorithm", "ES256"],
        &[],
    )
    .unwrap();
    assert!(matches!(c.auth.unwrap().key, JwtKey::EcPem(_)));

    let error = serve(
        &["--jwt-public-key", file.path(), "--jwt-algorithm", "RS256"],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "--jwt-algorithm says RS256, but the key in {} is for ES256",
            file.path()
        )
    );
    let error = serve(&["--jwt-secret", SECRET, "--jwt-algorithm", "RS256"], &[]).unwrap_err();
    assert!(
        matches!(error, CliError::AlgorithmWithoutPublicKey),
        "{error}"
    );
}

#[test]
fn unusable_public_keys_are_refused() {
    for (pem, hint) in [
        (EC_P384, "not on curve P-256"),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "private key",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "certificate",
        ),
        ("not a pem", "no \"-----BEGIN"),
    ] {
        let file = TempFile::new("key.pem", pem);
        let error = serve(&["--jwt-public-key", file.path()], &[]).unwrap_err();
        assert!(error.to_string().contains(hint), "{error}");
    }
    // Detected as RSA by its label, but the body is junk: jsonwebtoken refuses it.
    let file = TempFile::new(
        "key.pem",
        "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n",
    );
    let error = serve(&["--jwt-public-key", file.path()], &[]).unwrap_err();
    assert!(
        matches!(error, CliError::InvalidPublicKey { .. }),
        "{error}"
    );
}

#[test]
fn dev_mode_makes_an_ephemeral_secret_and_allows_all_origins() {
    let first = serve(&["--dev"], &[]).unwrap();
    let second = serve(&[], &[("CUSTOMWS_DEV", "1")]).unwrap();
    assert!(first.dev && second.dev);
    let (a, b) = (first.auth.unwrap(), second.auth.unwrap());
    match (&a.key, &b.key) {
        (JwtKey::Hmac(x), JwtKey::Hmac(y)) => {
            assert_eq!(x.len(), 32);
            assert_eq!(y.len(), 32);
            assert_ne!(x, y, "each run gets a fresh secret");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.allowed_origins, ["*"]);
}

#[test]
fn dev_mode_keeps_configured_secret_and_origins() {
    let c = serve(
        &[
            "--dev",
            "--jwt-secret",
            SECRET,
            "--allowed-origin",
            "http://localhost:3000",
        ],
        &[],
    )
    .unwrap();
    let auth = c.auth.unwrap();
    assert_eq!(auth.key, JwtKey::Hmac(SECRET.as_bytes().to_vec()));
    assert_eq!(auth.allowed_origins, ["http://localhost:3000"]);

    let key = TempFile::new("k.pem", ED25519);
    let error = serve(&["--dev", "--jwt-public-key", key.path()], &[]).unwrap_err();
    assert!(matches!(error, CliError::DevWithPublicKey), "{error}");
}

#[test]
fn queue_smaller_than_a_message_warns() {
    let (_, warnings) =
        serve_full(&["--jwt-secret", SECRET, "--max-message-size", "2MiB"], &[]).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("slow consumer"), "{warnings:?}");
}

// ---------------------------------------------------------------------------------------------
// Durations

#[test]
fn durations() {
    assert_eq!(cli::parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(cli::parse_duration("30s"), Ok(secs(30)));
    assert_eq!(cli::parse_duration("5m"), Ok(secs(300)));
    assert_eq!(cli::parse_duration("1h"), Ok(secs(3600)));
    assert_eq!(cli::parse_duration("7"), Ok(secs(7)));
    for bad in ["", "abc", "5 m", "1h30m", "3d", "-1s", "0.5s", "ms"] {
        assert_eq!(
            cli::parse_duration(bad),
            Err(ValueError::Duration),
            "{bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// echo

#[test]
fn echo_defaults_come_from_config_echo() {
    let c = echo(&[], &[]).unwrap();
    let expected = Config::echo();
    assert!(c.auth.is_none());
    assert_eq!(c.max_message_size, 16 << 20);
    assert_eq!(c.max_fragments, 65_536);
    assert_eq!(c.listen, expected.listen);
    assert_eq!(c.shards, expected.shards);
    assert_eq!(c.ping_interval, expected.ping_interval);
}

#[test]
fn echo_takes_runtime_flags_only() {
    let c = echo(
        &[
            "--listen",
            "127.0.0.1:9001",
            "--shards",
            "1",
            "--max-message-size",
            "1MiB",
            "--max-fragments",
            "100",
            "--outbound-queue-limit",
            "32MiB",
        ],
        // The environment is ignored by echo.
        &[("CUSTOMWS_LISTEN", "127.0.0.1:1"), ("CUSTOMWS_SHARDS", "x")],
    )
    .unwrap();
    assert_eq!(c.listen, addr("127.0.0.1:9001"));
    assert_eq!(c.shards.get(), 1);
    assert_eq!(c.max_message_size, 1 << 20);
    assert_eq!(c.max_fragments, 100);
    assert_eq!(c.outbound_queue_limit, 32 << 20);

    let error = echo(&["--jwt-secret", SECRET], &[]).unwrap_err();
    assert!(matches!(error, CliError::Clap(_)), "{error}");
    let error = echo(&["--max-fragments", "0"], &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid value for --max-fragments: \"0\": must be at least 1"
    );
}

// ---------------------------------------------------------------------------------------------
// token

#[test]
fn token_args() {
    let t = token(
        &[
            "--sub",
            "42",
            "--name",
            "alice",
            "--roles",
            "admin, agent",
            "--ttl",
            "5m",
            "--secret",
            "s3",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        t,
        TokenArgs {
            sub: 42,
            name: Some("alice".into()),
            roles: vec!["admin".into(), "agent".into()],
            ttl: secs(300),
            secret: b"s3".to_vec(),
        }
    );
    let t = token(&["--sub", "9007199254740991", "--secret", "s"], &[]).unwrap();
    assert_eq!(
        (t.sub, t.name, t.roles, t.ttl),
        (cli::MAX_SUB, None, vec![], secs(3600))
    );
}

#[test]
fn token_sub_is_range_checked() {
    for (sub, reason) in [
        ("0", ValueError::TooSmall { min: 1 }),
        (
            "9007199254740992",
            ValueError::TooLarge { max: cli::MAX_SUB },
        ),
        ("alice", ValueError::Integer),
    ] {
        match token(&["--sub", sub, "--secret", "s"], &[]) {
            Err(CliError::InvalidValue {
                setting, reason: r, ..
            }) => {
                assert_eq!(setting, "--sub");
                assert_eq!(r, reason);
            }
            other => panic!("{sub}: {other:?}"),
        }
    }
    assert!(matches!(
        token(&["--secret", "s"], &[]),
        Err(CliError::Clap(_))
    ));
}

#[test]
fn token_secret_sources() {
    let file = TempFile::new("secret", "from-file\n");
    let t = token(&["--sub", "1", "--secret-file", file.path()], &[]).unwrap();
    assert_eq!(t.secret, b"from-file");
    let t = token(&["--sub", "1"], &[("CUSTOMWS_JWT_SECRET", "from-env")]).unwrap();
    assert_eq!(t.secret, b"from-env");
    let t = token(
        &["--sub", "1"],
        &[("CUSTOMWS_JWT_SECRET_FILE", file.path())],
    )
    .unwrap();
    assert_eq!(t.secret, b"from-file");
    let error = token(&["--sub", "1"], &[]).unwrap_err();
    assert!(matches!(error, CliError::NoTokenSecret), "{error}");
    let error = token(
        &["--sub", "1", "--secret", "a", "--secret-file", file.path()],
        &[],
    )
    .unwrap_err();
    assert!(matches!(error, CliError::Clap(_)), "{error}");
    let error = token(&["--sub", "1", "--secret", "s", "--ttl", "0s"], &[]).unwrap_err();
    assert!(error.to_string().contains("--ttl"), "{error}");
}
