//! Command line, `CUSTOMWS_*` environment variables and the TOML file, merged into [`Config`].
//!
//! This is the first stage of ripgrep's low/high args: every source hands over *text*, tagged
//! with where it came from; the layers are merged (**flag > environment > file > default**);
//! then each value is parsed and checked once, into the typed [`Config`] the runtime trusts.
//! Defaults live in one place only, [`Config::gateway`] / [`Config::echo`]: no clap
//! `default_value` here, so "not given" is never confused with "given the default".
//!
//! ```text
//!  argv ──clap──► flag layer ─┐
//!  env lookup ──► env layer  ─┼─ merge (first that has the key wins) ─► parse + check ─► Config
//!  --config ────► file layer ─┘
//! ```
//!
//! # Names
//!
//! Each `serve` flag `--max-message-size` has the environment variable
//! `CUSTOMWS_MAX_MESSAGE_SIZE` and the TOML key `max_message_size` (the flag name with `-`
//! replaced by `_`). The file is named by `--config FILE` or `CUSTOMWS_CONFIG`.
//!
//! # Values
//!
//! - Durations: digits and a unit, `250ms`, `30s`, `5m`, `1h`; plain digits are seconds (so a
//!   TOML integer `ping_interval = 25` works too). See [`parse_duration`].
//! - Byte sizes: plain digits, or `64KiB` / `1MiB` / `1GiB`. See [`parse_byte_size`].
//! - Lists (`--allowed-origin`, `--p2p-roles`, `--broadcast-roles`): the flag may be repeated
//!   and each value may hold several comma-separated items; environment variables are
//!   comma-separated; the file takes an array of strings (or one comma-separated string).
//!   A list from a higher layer replaces the lower one; lists are never concatenated.
//! - Switches (`--no-query-token`, `--dev`): in the environment `1/true/yes/on` or
//!   `0/false/no/off`; in the file a boolean.
//! - `--admin-listen off` disables the admin listener.
//! - An empty environment variable counts as unset (container tools often export `X=`).
//!
//! # The JWT key
//!
//! Exactly one of `jwt_secret`, `jwt_secret_file` and `jwt_public_key`. The three are one
//! setting for precedence: the highest layer that names any of them supplies the key (so
//! `--jwt-secret-file` on the command line overrides `jwt_public_key` in the file), and naming
//! two of them in the same layer is an error. `--jwt-secret-file` is read and its trailing
//! newline trimmed. A secret shorter than 32 bytes starts with a warning.
//!
//! For `--jwt-public-key` the algorithm is detected from the key itself (the algorithm OID in
//! the DER: RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA), because a `BEGIN PUBLIC KEY`
//! label is shared by all three. `--jwt-algorithm` is optional; when given it must agree with
//! the key. Private keys, certificates and other curves are refused with a hint.
//!
//! Relative file paths (`jwt_secret_file`, `jwt_public_key`) written in the TOML file are
//! relative to the file's directory; on the command line or in the environment, to the
//! working directory.
//!
//! `--dev` mints an ephemeral 32-byte secret from `/dev/urandom` (an explicit HMAC secret is
//! used instead when one is configured, so dev tokens survive a restart) and allows every
//! origin unless origins are configured; it cannot be combined with `--jwt-public-key`
//! because dev mode prints tokens, which needs the signing secret.
//!
//! # The file
//!
//! Unknown keys are an error (a typo must not silently fall back to a default):
//!
//! ```toml
//! # /etc/customws.toml
//! listen = "0.0.0.0:8082"
//! admin_listen = "127.0.0.1:9082"   # or "off"
//! shards = 4
//! jwt_secret_file = "secret.txt"    # relative to this file
//! jwt_leeway = "30s"
//! jwt_issuer = "https://auth.example.com"
//! no_query_token = true
//! allowed_origin = ["https://app.example.com", "https://admin.example.com"]
//! max_message_size = "64KiB"        # or 65536
//! max_connections_per_user = 8
//! ping_interval = "25s"
//! pong_wait = "30s"
//! rate_limit = 100
//! rate_burst = 200
//! broadcast_roles = ["admin"]
//! log_level = "info"
//! ```
//!
//! # `echo` and `token`
//!
//! `customws echo` reads flags only (no environment, no file), so a deployment's
//! `CUSTOMWS_*` variables cannot skew an Autobahn or speed run; its defaults are
//! [`Config::echo`]. `customws token` takes its secret from `--secret` / `--secret-file`, or
//! else from `CUSTOMWS_JWT_SECRET` / `CUSTOMWS_JWT_SECRET_FILE` like the server it mints for.

mod pem;
mod value;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgGroup, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use thiserror::Error;

use crate::config::{AuthConfig, Config, JwtKey};

pub use pem::KeyTypeError;
pub use value::{
    parse_byte_size, parse_duration, parse_node_id, parse_nonzero_duration, parse_redis_url,
    PublicKeyAlgorithm, ValueError,
};

/// What the command line asked for, fully validated.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once at start-up; boxing buys nothing
pub enum Command {
    /// `customws serve`. `warnings` are for the operator (log them at WARN before starting);
    /// nothing in them stops the server.
    Serve {
        config: Config,
        warnings: Vec<String>,
    },
    /// `customws echo`: `config.auth` is `None`.
    Echo(Config),
    /// `customws token`: the caller mints with `auth::mint_hs256`.
    Token(TokenArgs),
}

/// Arguments of `customws token`. `Debug` redacts the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenArgs {
    /// User id, 1..=2^53−1 (JavaScript clients).
    pub sub: u64,
    pub name: Option<String>,
    pub roles: Vec<String>,
    /// Lifetime; `exp` = now + ttl. Default 1 h.
    pub ttl: Duration,
    /// HMAC signing secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenArgs")
            .field("sub", &self.sub)
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("ttl", &self.ttl)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

/// Largest `sub` a JavaScript client can hold exactly: 2^53 − 1.
pub const MAX_SUB: u64 = (1 << 53) - 1;

/// Secrets shorter than this draw a warning: HS256 wants a key as long as its hash.
pub const MIN_SECRET_LEN: usize = 32;

/// Why the command line, the environment or the file could not become a [`Config`].
#[derive(Debug, Error)]
pub enum CliError {
    /// Clap's own outcome, including `--help` and `--version`: call [`CliError::exit`] (or
    /// `clap::Error::exit`) so those print to stdout and exit 0.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("invalid value for {setting}: {value:?}: {reason}")]
    InvalidValue {
        setting: String,
        value: String,
        reason: ValueError,
    },
    #[error("{pong_wait_from} ({pong_wait:?}) must be longer than {ping_interval_from} ({ping_interval:?}), or every idle client is dropped before its pong can arrive")]
    PongWaitNotAfterPing {
        pong_wait: Duration,
        ping_interval: Duration,
        pong_wait_from: String,
        ping_interval_from: String,
    },
    #[error("no JWT key: pass --jwt-secret, --jwt-secret-file or --jwt-public-key (or --dev)")]
    NoJwtKey,
    #[error("{first} and {second} both name a JWT key; pass only one")]
    SeveralJwtKeys { first: String, second: String },
    #[error("{setting} is empty")]
    EmptySecret { setting: String },
    #[error("--jwt-algorithm only applies to --jwt-public-key (an HMAC secret accepts HS256, HS384 and HS512)")]
    AlgorithmWithoutPublicKey,
    #[error("{setting} says {given}, but the key in {path} is for {detected}")]
    AlgorithmMismatch {
        setting: String,
        given: PublicKeyAlgorithm,
        detected: PublicKeyAlgorithm,
        path: PathBuf,
    },
    #[error("{path} can't be used as a JWT public key: {reason}")]
    UnusablePublicKey { path: PathBuf, reason: KeyTypeError },
    #[error("{path} can't be used as a {algorithm} public key: {reason}")]
    InvalidPublicKey {
        path: PathBuf,
        algorithm: PublicKeyAlgorithm,
        reason: jsonwebtoken::errors::Error,
    },
    #[error("--dev prints tokens signed with an HMAC secret; it can't be combined with --jwt-public-key")]
    DevWithPublicKey,
    #[error("can't read {setting} {path}: {source}")]
    ReadFile {
        setting: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    ConfigSyntax {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("unknown key `{key}` in {path} (keys are the serve flag names with - replaced by _, e.g. max_message_size)")]
    UnknownConfigKey { path: PathBuf, key: String },
    #[error("`{key}` in {path}: expected {expected}")]
    ConfigValueType {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    #[error("no signing secret: pass --secret or --secret-file (or set CUSTOMWS_JWT_SECRET or CUSTOMWS_JWT_SECRET_FILE)")]
    NoTokenSecret,
    #[error("can't read /dev/urandom for the --dev secret: {0}")]
    Random(std::io::Error),
}

impl CliError {
    /// Prints the error and exits: clap's errors (and `--help`/`--version`) the clap way, ours
    /// as `error: ...` with exit code 2, like clap's usage errors.
    pub fn exit(self) -> ! {
        match self {
            CliError::Clap(error) => error.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// Reads the real process environment; pass it to [`parse`] from `main`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Parses `args` (including the program name) with `env` as the environment.
///
/// `env` is injected so tests never mutate the process environment.
pub fn parse<I, T>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    match cli.command {
        Sub::Serve(flags) => {
            let (config, warnings) = build_serve(flags, env)?;
            Ok(Command::Serve { config, warnings })
        }
        Sub::Echo(flags) => {
            let merged = merge(&[flags.layer])?;
            let mut config = Config::echo();
            apply_runtime(&merged, &mut config)?;
            Ok(Command::Echo(config))
        }
        Sub::Token(flags) => build_token(flags, env).map(Command::Token),
    }
}

// ---------------------------------------------------------------------------------------------
// The settings table: one row per serve flag, the single source of flag, env and TOML names.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One value; repeating the flag is a clap error.
    One,
    /// Repeatable, comma-separated.
    List,
    /// A flag without a value.
    Switch,
}

#[derive(Debug)]
struct Setting {
    /// TOML key and clap argument id.
    key: &'static str,
    flag: &'static str,
    env: &'static str,
    value_name: &'static str,
    kind: Kind,
    /// Also a flag of `customws echo`.
    echo: bool,
    /// Shown in `--help`; the real defaults are in `Config`.
    default: &'static str,
    heading: &'static str,
    help: &'static str,
}

const NET: &str = "Listeners";
const AUTH: &str = "Authentication";
const LIMITS: &str = "Limits";
const TIMERS: &str = "Timers";
const POLICY: &str = "Policy";
const OPS: &str = "Operations";
const CLUSTER: &str = "Cluster";

macro_rules! settings {
    ($( $key:ident $flag:literal $env:literal $value_name:literal $kind:ident
        $echo:literal $default:literal $heading:ident $help:literal; )*) => {
        const SETTINGS: &[Setting] = &[$(Setting {
            key: stringify!($key),
            flag: $flag,
            env: $env,
            value_name: $value_name,
            kind: Kind::$kind,
            echo: $echo,
            default: $default,
            heading: $heading,
            help: $help,
        }),*];
    };
}

settings! {
    listen "listen" "CUSTOMWS_LISTEN" "ADDR" One true "0.0.0.0:8082" NET
        "Address of the WebSocket listener";
    admin_listen "admin-listen" "CUSTOMWS_ADMIN_LISTEN" "ADDR" One true "127.0.0.1:9082" NET
        "Address of /healthz and /metrics; \"off\" disables it";
    shards "shards" "CUSTOMWS_SHARDS" "N" One true "number of cores" NET
        "Event-loop threads (one per core)";
    jwt_secret "jwt-secret" "CUSTOMWS_JWT_SECRET" "S" One false "none" AUTH
        "HMAC secret (HS256/384/512); visible in `ps`, prefer --jwt-secret-file";
    jwt_secret_file "jwt-secret-file" "CUSTOMWS_JWT_SECRET_FILE" "FILE" One false "none" AUTH
        "File holding the HMAC secret (a trailing newline is trimmed)";
    jwt_public_key "jwt-public-key" "CUSTOMWS_JWT_PUBLIC_KEY" "PEM_FILE" One false "none" AUTH
        "PEM public key (RSA, EC P-256 or Ed25519; the algorithm is detected from the key)";
    jwt_algorithm "jwt-algorithm" "CUSTOMWS_JWT_ALGORITHM" "RS256|ES256|EdDSA" One false
        "detected from the key" AUTH
        "Assert the public key's algorithm";
    jwt_leeway "jwt-leeway" "CUSTOMWS_JWT_LEEWAY" "D" One false "30s" AUTH
        "Clock skew tolerated on exp/nbf";
    jwt_issuer "jwt-issuer" "CUSTOMWS_JWT_ISSUER" "S" One false "not checked" AUTH
        "Required `iss` claim";
    jwt_audience "jwt-audience" "CUSTOMWS_JWT_AUDIENCE" "S" One false "not checked" AUTH
        "Required `aud` claim";
    no_query_token "no-query-token" "CUSTOMWS_NO_QUERY_TOKEN" "" Switch false "off" AUTH
        "Refuse the ?token= carrier (it leaks into proxy logs)";
    allowed_origin "allowed-origin" "CUSTOMWS_ALLOWED_ORIGIN" "O" List false
        "none: browsers refused" AUTH
        "Browser origin allowed to connect (repeatable; \"*\" for all)";
    max_message_size "max-message-size" "CUSTOMWS_MAX_MESSAGE_SIZE" "BYTES" One true "65536" LIMITS
        "Largest assembled message; beyond it close 1009";
    max_fragments "max-fragments" "CUSTOMWS_MAX_FRAGMENTS" "N" One true "1024" LIMITS
        "Most frames in one fragmented message";
    max_connections "max-connections" "CUSTOMWS_MAX_CONNECTIONS" "N" One true "1000000" LIMITS
        "Open connections, all shards; beyond it 503";
    max_connections_per_user "max-connections-per-user" "CUSTOMWS_MAX_CONNECTIONS_PER_USER" "N"
        One false "8" LIMITS
        "Connections per user; beyond it the oldest is closed with 4000";
    ping_interval "ping-interval" "CUSTOMWS_PING_INTERVAL" "D" One true "25s" TIMERS
        "Ping cadence";
    pong_wait "pong-wait" "CUSTOMWS_PONG_WAIT" "D" One true "30s" TIMERS
        "Drop a connection silent for this long (must exceed --ping-interval)";
    handshake_timeout "handshake-timeout" "CUSTOMWS_HANDSHAKE_TIMEOUT" "D" One true "10s" TIMERS
        "The whole HTTP upgrade must arrive within this";
    max_header_bytes "max-header-bytes" "CUSTOMWS_MAX_HEADER_BYTES" "BYTES" One true "8192" LIMITS
        "Request line + headers; beyond it 431";
    max_headers "max-headers" "CUSTOMWS_MAX_HEADERS" "N" One true "64" LIMITS
        "Header count; beyond it 431";
    outbound_queue_limit "outbound-queue-limit" "CUSTOMWS_OUTBOUND_QUEUE_LIMIT" "BYTES" One true
        "1048576" LIMITS
        "Unsent bytes per connection before it is closed as a slow consumer (1013)";
    rate_limit "rate-limit" "CUSTOMWS_RATE_LIMIT" "MSGS_PER_S" One false "100" POLICY
        "Token-bucket refill per user, messages per second";
    rate_burst "rate-burst" "CUSTOMWS_RATE_BURST" "N" One false "200" POLICY
        "Token-bucket size";
    rate_abuse_threshold "rate-abuse-threshold" "CUSTOMWS_RATE_ABUSE_THRESHOLD" "N" One false "50"
        POLICY
        "Rate-limited messages (429) tolerated before close 1008";
    garbage_threshold "garbage-threshold" "CUSTOMWS_GARBAGE_THRESHOLD" "N" One false "20" POLICY
        "Malformed envelopes tolerated before close 1008";
    presence_min_interval "presence-min-interval" "CUSTOMWS_PRESENCE_MIN_INTERVAL" "D" One false
        "100ms" POLICY
        "Least time between two presence broadcasts of one user";
    presence_fanout "presence-fanout" "CUSTOMWS_PRESENCE_FANOUT" "on|off" One false "on" POLICY
        "Send presence events to every connection (off: get_presence and targeted updates only)";
    max_notification_targets "max-notification-targets" "CUSTOMWS_MAX_NOTIFICATION_TARGETS" "N"
        One false "1000" LIMITS
        "Cap on targetUsers of one notification";
    max_json_depth "max-json-depth" "CUSTOMWS_MAX_JSON_DEPTH" "N" One false "64" LIMITS
        "JSON nesting depth accepted in an envelope";
    cross_shard_queue_capacity "cross-shard-queue-capacity" "CUSTOMWS_CROSS_SHARD_QUEUE_CAPACITY"
        "N" One true "8192" LIMITS
        "Slots in each cross-shard queue (a full one holds messages back in order, none lost)";
    p2p_roles "p2p-roles" "CUSTOMWS_P2P_ROLES" "a,b" List false "everyone" POLICY
        "Roles allowed to send P2P messages";
    broadcast_roles "broadcast-roles" "CUSTOMWS_BROADCAST_ROLES" "a,b" List false "everyone" POLICY
        "Roles allowed to broadcast";
    drain_timeout "drain-timeout" "CUSTOMWS_DRAIN_TIMEOUT" "D" One true "10s" OPS
        "Grace period on SIGTERM/SIGINT";
    log_level "log-level" "CUSTOMWS_LOG_LEVEL" "LEVEL" One true "info" OPS
        "Log level or filter (e.g. info,customws=debug)";
    dev "dev" "CUSTOMWS_DEV" "" Switch false "off" OPS
        "Development mode: ephemeral secret, all origins, prints tokens";
    cluster_redis "cluster-redis" "CUSTOMWS_CLUSTER_REDIS" "URL" One false "off: single node"
        CLUSTER
        "Cluster mode through Redis >= 7: redis://[user:password@]host[:port][/db]";
    node_id "node-id" "CUSTOMWS_NODE_ID" "ID" One false "<hostname>-<random>" CLUSTER
        "This node's name in the cluster (unique per running node)";
    presence_heartbeat "presence-heartbeat" "CUSTOMWS_PRESENCE_HEARTBEAT" "D" One false "1s"
        CLUSTER
        "Presence heartbeat; a node silent for 2.5 heartbeats is declared dead";
}

/// The settings that together name the JWT key (one precedence slot, see the module docs).
const KEY_SOURCES: [&str; 3] = ["jwt_secret", "jwt_secret_file", "jwt_public_key"];

fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// Defaults shown in `customws echo --help` where they differ from `serve`.
fn echo_default(key: &str) -> Option<&'static str> {
    match key {
        "max_message_size" => Some("16MiB"),
        "max_fragments" => Some("65536"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Clap: derive for the command tree, the serve/echo flags generated from the table.

#[derive(Debug, Parser)]
#[command(
    name = "customws",
    version,
    about = "A sharded thread-per-core WebSocket gateway",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Run the gateway (JWT auth, P2P, broadcast, presence, RPC).
    #[command(
        after_help = "Every flag also has an environment variable (shown in brackets) and a key in \
the --config TOML file: the flag name with - replaced by _ (max_message_size = \"64KiB\").\n\
Precedence: flag > environment > file > default. Durations: 250ms, 30s, 5m, 1h."
    )]
    Serve(ServeFlags),
    /// Run a plain echo server on the same runtime (no auth, no JSON; flags only).
    Echo(EchoFlags),
    /// Mint an HS256 test token.
    Token(TokenFlags),
}

/// Where a value came from; it names the value in errors.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Flag,
    Env,
    File(PathBuf),
}

/// A value still as text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    One(String),
    Many(Vec<String>),
}

/// One source's values.
#[derive(Clone, Debug)]
struct Layer {
    source: Source,
    values: BTreeMap<&'static str, Value>,
}

impl Layer {
    fn new(source: Source) -> Self {
        Layer {
            source,
            values: BTreeMap::new(),
        }
    }
}

#[derive(Debug)]
struct ServeFlags {
    layer: Layer,
    config: Option<PathBuf>,
}

#[derive(Debug)]
struct EchoFlags {
    layer: Layer,
}

fn add_settings(mut command: clap::Command, echo: bool) -> clap::Command {
    for s in SETTINGS.iter().filter(|s| !echo || s.echo) {
        let default = echo
            .then(|| echo_default(s.key))
            .flatten()
            .unwrap_or(s.default);
        let help = if echo {
            format!("{} [default: {default}]", s.help)
        } else {
            format!("{} [default: {default}] [env: {}]", s.help, s.env)
        };
        let arg = Arg::new(s.key)
            .long(s.flag)
            .help(help)
            .help_heading(s.heading);
        let arg = match s.kind {
            Kind::One => arg
                .value_name(s.value_name)
                .action(ArgAction::Set)
                // so `--shards -1` gets our "expected a whole number", not "unexpected argument"
                .allow_negative_numbers(true)
                .value_parser(clap::value_parser!(String)),
            Kind::List => arg
                .value_name(s.value_name)
                .action(ArgAction::Append)
                .value_parser(clap::value_parser!(String)),
            Kind::Switch => arg.action(ArgAction::SetTrue),
        };
        command = command.arg(arg);
    }
    command
}

fn read_flags(matches: &ArgMatches, echo: bool) -> Layer {
    let mut layer = Layer::new(Source::Flag);
    for s in SETTINGS.iter().filter(|s| !echo || s.echo) {
        if matches.value_source(s.key) != Some(ValueSource::CommandLine) {
            continue;
        }
        let value = match s.kind {
            Kind::Switch => Value::One("true".into()),
            Kind::One => match matches.get_one::<String>(s.key) {
                Some(text) => Value::One(text.clone()),
                None => continue,
            },
            Kind::List => Value::Many(split_list(
                matches.get_many::<String>(s.key).into_iter().flatten(),
            )),
        };
        layer.values.insert(s.key, value);
    }
    layer
}

impl Args for ServeFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        add_settings(command, false)
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .help("TOML file with defaults for every flag above [env: CUSTOMWS_CONFIG]")
                    .help_heading(OPS)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .group(ArgGroup::new("jwt_key").args(KEY_SOURCES).multiple(false))
    }
    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for ServeFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ServeFlags {
            layer: read_flags(matches, false),
            config: matches.get_one::<PathBuf>("config").cloned(),
        })
    }
    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for EchoFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        add_settings(command, true)
    }
    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for EchoFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(EchoFlags {
            layer: read_flags(matches, true),
        })
    }
    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("secret_source").args(["secret", "secret_file"])))]
struct TokenFlags {
    /// User id (1..=2^53-1)
    #[arg(long, value_name = "N")]
    sub: String,
    /// Display name (`name` claim)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Roles (`roles` claim), comma-separated
    #[arg(long, value_name = "a,b")]
    roles: Option<String>,
    /// Lifetime [default: 1h]
    #[arg(long, value_name = "D")]
    ttl: Option<String>,
    /// HMAC secret [env: CUSTOMWS_JWT_SECRET]
    #[arg(long, value_name = "S")]
    secret: Option<String>,
    /// File holding the HMAC secret [env: CUSTOMWS_JWT_SECRET_FILE]
    #[arg(long, value_name = "F")]
    secret_file: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// The environment and file layers, and the merge.

/// Splits comma-separated items, trimming them and dropping empty ones.
fn split_list<'a>(items: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    items
        .into_iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn env_layer(env: &dyn Fn(&str) -> Option<String>) -> Layer {
    let mut layer = Layer::new(Source::Env);
    for s in SETTINGS {
        let Some(text) = env(s.env).filter(|text| !text.trim().is_empty()) else {
            continue;
        };
        let value = match s.kind {
            Kind::List => Value::Many(split_list([&text])),
            Kind::One | Kind::Switch => Value::One(text),
        };
        layer.values.insert(s.key, value);
    }
    layer
}

fn file_layer(path: &Path) -> Result<Layer, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadFile {
        setting: "--config".into(),
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|source| CliError::ConfigSyntax {
        path: path.to_owned(),
        source,
    })?;
    let mut layer = Layer::new(Source::File(path.to_owned()));
    for (key, raw) in &table {
        let s = setting(key).ok_or_else(|| CliError::UnknownConfigKey {
            path: path.to_owned(),
            key: key.clone(),
        })?;
        let value = match (s.kind, raw) {
            (Kind::List, toml::Value::String(text)) => Value::Many(split_list([text])),
            (Kind::List, toml::Value::Array(items)) => Value::Many(
                items
                    .iter()
                    .map(|item| item.as_str().map(|text| text.trim().to_owned()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| type_error(path, key, s.kind))?,
            ),
            (_, toml::Value::String(text)) => Value::One(text.clone()),
            (Kind::One, toml::Value::Integer(number)) => Value::One(number.to_string()),
            (Kind::Switch, toml::Value::Boolean(flag)) => Value::One(flag.to_string()),
            _ => return Err(type_error(path, key, s.kind)),
        };
        layer.values.insert(s.key, value);
    }
    Ok(layer)
}

fn type_error(path: &Path, key: &str, kind: Kind) -> CliError {
    CliError::ConfigValueType {
        path: path.to_owned(),
        key: key.to_owned(),
        expected: match kind {
            Kind::One => "a string or an integer",
            Kind::List => "an array of strings",
            Kind::Switch => "true or false",
        },
    }
}

/// One merged value and where it came from.
#[derive(Debug)]
struct Entry {
    setting: &'static Setting,
    value: Value,
    source: Source,
}

impl Entry {
    /// How the operator wrote this setting: `--pong-wait`, `CUSTOMWS_PONG_WAIT` or
    /// `pong_wait in /etc/customws.toml`.
    fn name(&self) -> String {
        describe(self.setting, &self.source)
    }

    fn text(&self) -> String {
        match &self.value {
            Value::One(text) => text.clone(),
            Value::Many(items) => items.join(","),
        }
    }

    fn parse<T>(&self, parse: impl FnOnce(&str) -> Result<T, ValueError>) -> Result<T, CliError> {
        let text = self.text();
        parse(&text).map_err(|reason| CliError::InvalidValue {
            setting: self.name(),
            value: text,
            reason,
        })
    }

    fn items<T>(
        &self,
        mut parse: impl FnMut(&str) -> Result<T, ValueError>,
    ) -> Result<Vec<T>, CliError> {
        let items = match &self.value {
            Value::One(text) => split_list([text]),
            Value::Many(items) => items.clone(),
        };
        items
            .iter()
            .map(|item| {
                parse(item).map_err(|reason| CliError::InvalidValue {
                    setting: self.name(),
                    value: item.clone(),
                    reason,
                })
            })
            .collect()
    }

    /// A path, relative to the TOML file's directory when it came from the file.
    fn path(&self) -> PathBuf {
        let path = PathBuf::from(self.text());
        match &self.source {
            Source::File(file) if path.is_relative() => {
                file.parent().map(|dir| dir.join(&path)).unwrap_or(path)
            }
            _ => path,
        }
    }
}

fn describe(setting: &Setting, source: &Source) -> String {
    match source {
        Source::Flag => format!("--{}", setting.flag),
        Source::Env => setting.env.to_owned(),
        Source::File(path) => format!("{} in {}", setting.key, path.display()),
    }
}

#[derive(Debug, Default)]
struct Merged(BTreeMap<&'static str, Entry>);

impl Merged {
    fn get(&self, key: &str) -> Option<&Entry> {
        self.0.get(key)
    }

    fn name(&self, key: &str) -> String {
        match (self.get(key), setting(key)) {
            (Some(entry), _) => entry.name(),
            (None, Some(s)) => format!("--{}", s.flag),
            (None, None) => key.to_owned(),
        }
    }

    /// Parses `key` into `slot` when some layer set it.
    fn set<T>(
        &self,
        key: &str,
        slot: &mut T,
        parse: impl FnOnce(&str) -> Result<T, ValueError>,
    ) -> Result<(), CliError> {
        if let Some(entry) = self.get(key) {
            *slot = entry.parse(parse)?;
        }
        Ok(())
    }

    fn switch(&self, key: &str) -> Result<bool, CliError> {
        self.get(key)
            .map_or(Ok(false), |entry| entry.parse(value::parse_bool))
    }
}

/// Merges layers given highest first: for each key the first layer that has it wins; the JWT
/// key sources share one slot.
fn merge(layers: &[Layer]) -> Result<Merged, CliError> {
    let mut merged = Merged::default();
    let key_layer = layers
        .iter()
        .find(|layer| KEY_SOURCES.iter().any(|k| layer.values.contains_key(k)));
    if let Some(layer) = key_layer {
        let named: Vec<&str> = KEY_SOURCES
            .into_iter()
            .filter(|k| layer.values.contains_key(k))
            .collect();
        if let [first, second, ..] = named[..] {
            let name = |key| setting(key).map_or_else(String::new, |s| describe(s, &layer.source));
            return Err(CliError::SeveralJwtKeys {
                first: name(first),
                second: name(second),
            });
        }
    }
    for layer in layers.iter().rev() {
        for (&key, value) in &layer.values {
            let is_key_source = KEY_SOURCES.contains(&key);
            if is_key_source && !key_layer.is_some_and(|winner| std::ptr::eq(winner, layer)) {
                continue;
            }
            let Some(setting) = setting(key) else {
                continue;
            };
            merged.0.insert(
                key,
                Entry {
                    setting,
                    value: value.clone(),
                    source: layer.source.clone(),
                },
            );
        }
    }
    Ok(merged)
}

// ---------------------------------------------------------------------------------------------
// Validation into `Config`.

fn build_serve(
    flags: ServeFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<String>), CliError> {
    let config_path = flags.config.clone().or_else(|| {
        env("CUSTOMWS_CONFIG")
            .filter(|text| !text.trim().is_empty())
            .map(PathBuf::from)
    });
    let mut layers = vec![flags.layer, env_layer(env)];
    if let Some(path) = &config_path {
        layers.push(file_layer(path)?);
    }
    let merged = merge(&layers)?;
    let mut warnings = Vec::new();
    let auth = build_auth(&merged, &mut warnings)?;
    let mut config = Config::gateway(auth);
    config.dev = merged.switch("dev")?;
    apply_runtime(&merged, &mut config)?;
    apply_policy(&merged, &mut config)?;
    apply_cluster(&merged, &mut config, &mut warnings)?;
    if config.outbound_queue_limit < config.max_message_size {
        warnings.push(format!(
            "{} ({}) is below {} ({}): a single full-size message marks its receiver a slow consumer",
            merged.name("outbound_queue_limit"),
            config.outbound_queue_limit,
            merged.name("max_message_size"),
            config.max_message_size,
        ));
    }
    Ok((config, warnings))
}

/// Limits and timers shared by `serve` and `echo`.
fn apply_runtime(m: &Merged, c: &mut Config) -> Result<(), CliError> {
    use value::{in_range, parse_address, parse_integer, parse_log_level, parse_optional_address};
    let count =
        |min: u64, max: u64| move |t: &str| parse_integer(t).and_then(|n| in_range(n, min, max));
    let bytes =
        |min: u64, max: u64| move |t: &str| parse_byte_size(t).and_then(|n| in_range(n, min, max));
    let usize_max = usize::MAX as u64;

    m.set("listen", &mut c.listen, parse_address)?;
    m.set("admin_listen", &mut c.admin_listen, parse_optional_address)?;
    // More than 1024 shards means 1M+ cross-shard queues: certainly a typo.
    m.set("shards", &mut c.shards, |t| {
        count(1, 1024)(t).map(|n| NonZeroUsize::new(n as usize).unwrap_or(NonZeroUsize::MIN))
    })?;
    // 125 bytes is the largest control-frame payload; a whole message is buffered, so 1 GiB.
    m.set("max_message_size", &mut c.max_message_size, |t| {
        bytes(125, 1 << 30)(t).map(|n| n as usize)
    })?;
    m.set("max_fragments", &mut c.max_fragments, |t| {
        count(1, 1 << 24)(t).map(|n| n as usize)
    })?;
    m.set("max_connections", &mut c.max_connections, |t| {
        count(1, usize_max)(t).map(|n| n as usize)
    })?;
    m.set(
        "ping_interval",
        &mut c.ping_interval,
        parse_nonzero_duration,
    )?;
    m.set("pong_wait", &mut c.pong_wait, parse_nonzero_duration)?;
    m.set(
        "handshake_timeout",
        &mut c.handshake_timeout,
        parse_nonzero_duration,
    )?;
    // A minimal upgrade request is ~150 bytes; 1 MiB of headers is an attack.
    m.set("max_header_bytes", &mut c.max_header_bytes, |t| {
        bytes(256, 1 << 20)(t).map(|n| n as usize)
    })?;
    // An upgrade needs Host, Upgrade, Connection, Sec-WebSocket-Key and -Version.
    m.set("max_headers", &mut c.max_headers, |t| {
        count(5, 1024)(t).map(|n| n as usize)
    })?;
    m.set("outbound_queue_limit", &mut c.outbound_queue_limit, |t| {
        bytes(1024, 1 << 32)(t).map(|n| n as usize)
    })?;
    m.set(
        "cross_shard_queue_capacity",
        &mut c.cross_shard_queue_capacity,
        |t| count(1, 1 << 24)(t).map(|n| n as usize),
    )?;
    m.set("drain_timeout", &mut c.drain_timeout, parse_duration)?;
    m.set("log_level", &mut c.log_level, parse_log_level)?;

    if c.pong_wait <= c.ping_interval {
        return Err(CliError::PongWaitNotAfterPing {
            pong_wait: c.pong_wait,
            ping_interval: c.ping_interval,
            pong_wait_from: m.name("pong_wait"),
            ping_interval_from: m.name("ping_interval"),
        });
    }
    Ok(())
}

/// Gateway-only settings: per-user limits and who may do what.
fn apply_policy(m: &Merged, c: &mut Config) -> Result<(), CliError> {
    use value::{in_range, parse_integer, parse_role};
    let count =
        |min: u64, max: u64| move |t: &str| parse_integer(t).and_then(|n| in_range(n, min, max));
    let u32_max = u64::from(u32::MAX);
    let usize_max = usize::MAX as u64;

    m.set(
        "max_connections_per_user",
        &mut c.max_connections_per_user,
        |t| {
            count(1, usize_max)(t)
                .map(|n| NonZeroUsize::new(n as usize).unwrap_or(NonZeroUsize::MIN))
        },
    )?;
    m.set("rate_limit", &mut c.rate_limit, |t| {
        count(1, u32_max)(t).map(|n| n as u32)
    })?;
    m.set("rate_burst", &mut c.rate_burst, |t| {
        count(1, u32_max)(t).map(|n| n as u32)
    })?;
    // Zero is meaningful: close at the first offence.
    // Per-connection counters are u16 (they live in every connection slot).
    let u16_max = u64::from(u16::MAX);
    m.set("rate_abuse_threshold", &mut c.rate_abuse_threshold, |t| {
        count(0, u16_max)(t).map(|n| n as u16)
    })?;
    m.set("garbage_threshold", &mut c.garbage_threshold, |t| {
        count(0, u16_max)(t).map(|n| n as u16)
    })?;
    // Zero: no coalescing, every presence change is broadcast.
    m.set(
        "presence_min_interval",
        &mut c.presence_min_interval,
        parse_duration,
    )?;
    m.set("presence_fanout", &mut c.presence_fanout, value::parse_bool)?;
    m.set(
        "max_notification_targets",
        &mut c.max_notification_targets,
        |t| count(1, usize_max)(t).map(|n| n as usize),
    )?;
    // The envelope itself nests three deep: {payload: {data: {...}}}.
    m.set("max_json_depth", &mut c.max_json_depth, |t| {
        count(3, 1024)(t).map(|n| n as usize)
    })?;
    if let Some(entry) = m.get("p2p_roles") {
        c.p2p_roles = entry.items(parse_role)?;
    }
    if let Some(entry) = m.get("broadcast_roles") {
        c.broadcast_roles = entry.items(parse_role)?;
    }
    Ok(())
}

/// `--cluster-redis` turns cluster mode on; `--node-id` and `--presence-heartbeat` only
/// matter with it.
fn apply_cluster(m: &Merged, c: &mut Config, warnings: &mut Vec<String>) -> Result<(), CliError> {
    let mut heartbeat = Duration::from_secs(1);
    m.set(
        "presence_heartbeat",
        &mut heartbeat,
        value::parse_nonzero_duration,
    )?;
    let mut node_id = None;
    m.set("node_id", &mut node_id, |t| {
        value::parse_node_id(t).map(Some)
    })?;
    let Some(entry) = m.get("cluster_redis") else {
        for key in ["node_id", "presence_heartbeat"] {
            if m.get(key).is_some() {
                warnings.push(format!(
                    "{} has no effect without {}",
                    m.name(key),
                    m.name("cluster_redis")
                ));
            }
        }
        return Ok(());
    };
    let redis = entry.parse(value::parse_redis_url)?;
    c.cluster = Some(crate::config::ClusterConfig {
        redis,
        node_id: node_id.unwrap_or_else(crate::cluster::bridge::generated_node_id),
        heartbeat,
    });
    Ok(())
}

fn build_auth(m: &Merged, warnings: &mut Vec<String>) -> Result<AuthConfig, CliError> {
    let dev = m.switch("dev")?;
    let algorithm = m
        .get("jwt_algorithm")
        .map(|entry| {
            entry
                .parse(value::parse_algorithm)
                .map(|alg| (alg, entry.name()))
        })
        .transpose()?;

    let key = if let Some(entry) = m.get("jwt_public_key") {
        if dev {
            return Err(CliError::DevWithPublicKey);
        }
        load_public_key(entry, algorithm)?
    } else {
        if algorithm.is_some() {
            return Err(CliError::AlgorithmWithoutPublicKey);
        }
        let secret = match (m.get("jwt_secret"), m.get("jwt_secret_file")) {
            (Some(entry), _) => Some((entry.text().into_bytes(), entry.name())),
            (None, Some(entry)) => Some((
                read_secret_file(&entry.path(), &entry.name())?,
                entry.name(),
            )),
            (None, None) => None,
        };
        match secret {
            Some((secret, _)) if !secret.is_empty() => {
                if secret.len() < MIN_SECRET_LEN {
                    warnings.push(format!(
                        "the JWT secret is only {} bytes; use at least {MIN_SECRET_LEN} random bytes \
                         (e.g. `head -c 32 /dev/urandom | base64`)",
                        secret.len()
                    ));
                }
                JwtKey::Hmac(secret)
            }
            Some((_, setting)) => return Err(CliError::EmptySecret { setting }),
            None if dev => JwtKey::Hmac(random_secret()?),
            None => return Err(CliError::NoJwtKey),
        }
    };

    let mut auth = AuthConfig {
        key,
        leeway: Duration::from_secs(30),
        issuer: None,
        audience: None,
        allow_query_token: !m.switch("no_query_token")?,
        allowed_origins: Vec::new(),
    };
    m.set("jwt_leeway", &mut auth.leeway, parse_duration)?;
    m.set("jwt_issuer", &mut auth.issuer, non_empty)?;
    m.set("jwt_audience", &mut auth.audience, non_empty)?;
    if let Some(entry) = m.get("allowed_origin") {
        auth.allowed_origins = entry.items(value::parse_origin)?;
    }
    if dev && auth.allowed_origins.is_empty() {
        auth.allowed_origins = vec!["*".into()];
    }
    Ok(auth)
}

fn non_empty(text: &str) -> Result<Option<String>, ValueError> {
    match text.trim() {
        "" => Err(ValueError::Empty),
        text => Ok(Some(text.to_owned())),
    }
}

fn load_public_key(
    entry: &Entry,
    asserted: Option<(PublicKeyAlgorithm, String)>,
) -> Result<JwtKey, CliError> {
    let path = entry.path();
    let pem = std::fs::read(&path).map_err(|source| CliError::ReadFile {
        setting: entry.name(),
        path: path.clone(),
        source,
    })?;
    let detected = pem::detect_algorithm(&pem).map_err(|reason| CliError::UnusablePublicKey {
        path: path.clone(),
        reason,
    })?;
    if let Some((given, setting)) = asserted {
        if given != detected {
            return Err(CliError::AlgorithmMismatch {
                setting,
                given,
                detected,
                path,
            });
        }
    }
    use jsonwebtoken::DecodingKey;
    let checked = match detected {
        PublicKeyAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&pem),
        PublicKeyAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem),
        PublicKeyAlgorithm::EdDsa => DecodingKey::from_ed_pem(&pem),
    };
    checked.map_err(|reason| CliError::InvalidPublicKey {
        path,
        algorithm: detected,
        reason,
    })?;
    Ok(match detected {
        PublicKeyAlgorithm::Rs256 => JwtKey::RsaPem(pem),
        PublicKeyAlgorithm::Es256 => JwtKey::EcPem(pem),
        PublicKeyAlgorithm::EdDsa => JwtKey::EdPem(pem),
    })
}

/// Reads a secret file, trimming the trailing newline an editor or `echo` leaves behind.
fn read_secret_file(path: &Path, setting: &str) -> Result<Vec<u8>, CliError> {
    let mut secret = std::fs::read(path).map_err(|source| CliError::ReadFile {
        setting: setting.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    while secret.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        secret.pop();
    }
    Ok(secret)
}

/// 32 bytes from the kernel's CSPRNG: the `--dev` secret, gone at exit.
fn random_secret() -> Result<Vec<u8>, CliError> {
    let mut secret = vec![0u8; MIN_SECRET_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut secret))
        .map_err(CliError::Random)?;
    Ok(secret)
}

fn build_token(
    flags: TokenFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TokenArgs, CliError> {
    use value::{in_range, parse_integer, parse_role};
    let invalid = |setting: &str, value: &str, reason| CliError::InvalidValue {
        setting: setting.to_owned(),
        value: value.to_owned(),
        reason,
    };
    let sub = parse_integer(&flags.sub)
        .and_then(|n| in_range(n, 1, MAX_SUB))
        .map_err(|reason| invalid("--sub", &flags.sub, reason))?;
    let ttl = match &flags.ttl {
        Some(text) => {
            parse_nonzero_duration(text).map_err(|reason| invalid("--ttl", text, reason))?
        }
        None => Duration::from_secs(3600),
    };
    let name = match flags.name {
        Some(name) if name.trim().is_empty() => {
            return Err(invalid("--name", &name, ValueError::Empty))
        }
        name => name,
    };
    let roles = match &flags.roles {
        Some(text) => split_list([text])
            .iter()
            .map(|role| parse_role(role).map_err(|reason| invalid("--roles", role, reason)))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let from_env = |name: &str| env(name).filter(|text| !text.trim().is_empty());
    let secret = if let Some(secret) = flags.secret {
        (secret.into_bytes(), "--secret".to_owned())
    } else if let Some(path) = flags.secret_file {
        (
            read_secret_file(&path, "--secret-file")?,
            "--secret-file".to_owned(),
        )
    } else if let Some(secret) = from_env("CUSTOMWS_JWT_SECRET") {
        (secret.into_bytes(), "CUSTOMWS_JWT_SECRET".to_owned())
    } else if let Some(path) = from_env("CUSTOMWS_JWT_SECRET_FILE") {
        let setting = "CUSTOMWS_JWT_SECRET_FILE".to_owned();
        (read_secret_file(Path::new(&path), &setting)?, setting)
    } else {
        return Err(CliError::NoTokenSecret);
    };
    if secret.0.is_empty() {
        return Err(CliError::EmptySecret { setting: secret.1 });
    }
    Ok(TokenArgs {
        sub,
        name,
        roles,
        ttl,
        secret: secret.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn names_derive_from_the_key() {
        for s in SETTINGS {
            assert_eq!(s.flag, s.key.replace('_', "-"), "{}", s.key);
            assert_eq!(
                s.env,
                format!("CUSTOMWS_{}", s.key.to_uppercase()),
                "{}",
                s.key
            );
        }
    }

    #[test]
    fn every_spec_flag_exists() {
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        for flag in [
            "listen",
            "admin-listen",
            "shards",
            "jwt-secret",
            "jwt-secret-file",
            "jwt-public-key",
            "jwt-leeway",
            "allowed-origin",
            "max-message-size",
            "max-connections",
            "max-connections-per-user",
            "ping-interval",
            "pong-wait",
            "handshake-timeout",
            "outbound-queue-limit",
            "rate-limit",
            "rate-burst",
            "drain-timeout",
            "log-level",
            "config",
            "dev",
        ] {
            assert!(
                serve.get_arguments().any(|a| a.get_long() == Some(flag)),
                "--{flag} missing"
            );
        }
    }

    #[test]
    fn merge_takes_the_highest_layer() {
        let mut flag = Layer::new(Source::Flag);
        flag.values.insert("listen", Value::One("1.1.1.1:1".into()));
        let mut env = Layer::new(Source::Env);
        env.values.insert("listen", Value::One("2.2.2.2:2".into()));
        env.values.insert("shards", Value::One("3".into()));
        let merged = merge(&[flag, env]).unwrap();
        assert_eq!(merged.get("listen").unwrap().text(), "1.1.1.1:1");
        assert_eq!(merged.get("shards").unwrap().source, Source::Env);
    }

    #[test]
    fn key_sources_share_a_slot() {
        let mut env = Layer::new(Source::Env);
        env.values
            .insert("jwt_secret_file", Value::One("/x".into()));
        let mut file = Layer::new(Source::File("/c.toml".into()));
        file.values
            .insert("jwt_public_key", Value::One("/k.pem".into()));
        let merged = merge(&[Layer::new(Source::Flag), env.clone(), file]).unwrap();
        assert!(merged.get("jwt_public_key").is_none());
        assert!(merged.get("jwt_secret_file").is_some());

        env.values.insert("jwt_secret", Value::One("s".into()));
        let error = merge(&[env]).unwrap_err();
        assert!(matches!(error, CliError::SeveralJwtKeys { .. }), "{error}");
    }

    #[test]
    fn file_paths_are_relative_to_the_file() {
        let entry = Entry {
            setting: setting("jwt_secret_file").unwrap(),
            value: Value::One("secret.txt".into()),
            source: Source::File("/etc/customws/customws.toml".into()),
        };
        assert_eq!(entry.path(), PathBuf::from("/etc/customws/secret.txt"));
        assert_eq!(
            entry.name(),
            "jwt_secret_file in /etc/customws/customws.toml"
        );
    }
}
