//! A chat server with history, as a custom [`Handler`] on the customws runtime.
//!
//! ```text
//! cargo run --example chat_history -- --listen 127.0.0.1:8082 --secret S
//! customws token --secret S --sub 1 --name alice     # tokens for the clients
//! ```
//!
//! - Chat messages are ordinary P2P `data_request`s with `payload.resource == "chat"` and the
//!   text in `payload.data.text`. [`Handler::on_message`] records them and returns
//!   [`Flow::Continue`], so the built-in P2P rules still deliver them (`data_event` to every
//!   connection of the target, `server_ack` to the sender).
//! - A conversation is the unordered pair of user ids; it keeps its last
//!   [`HISTORY_LEN`] messages.
//! - `generic_request` action `get_history` with `data.withUserId` answers
//!   `{"messages":[{"from","to","text","at"}, ...]}`, oldest first, for the conversation
//!   between the caller and that user. Other unknown actions still get the gateway's 501.
//!
//! Why one shard: a handler instance lives on each shard and sees only the messages sent by
//! users homed there (a message is handled on its *sender's* home shard). With several
//! shards, Alice's messages to Bob would be recorded on Alice's shard and Bob's replies on
//! Bob's, and each shard's history would be half a conversation. One shard keeps the example
//! honest and small; a real deployment would keep history in a shared store (or forward
//! each message to the other user's shard).
//!
//! Also deliberately left out: persistence (history is lost on restart), a cap on the number
//! of conversations (each holds at most 50 messages of at most `max_message_size` bytes).

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use customws::auth::UserId;
use customws::config::{AuthConfig, Config, JwtKey};
use customws::gateway::{ConnRef, Ctx, Flow, GatewayFactory, Handler};
use customws::proto::envelope::{self, ClientEnvelope, MessageType};
use customws::Server;
use serde::Serialize;

/// Messages kept per conversation.
const HISTORY_LEN: usize = 50;

#[derive(Parser, Debug)]
#[command(about = "customws example: P2P chat that remembers the last 50 messages")]
struct Args {
    /// Address to listen on (port 0: the kernel picks one; the bound address is printed)
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// HMAC secret the clients' tokens are signed with (HS256/384/512)
    #[arg(long, env = "CHAT_HISTORY_SECRET", hide_env_values = true)]
    secret: String,
}

/// One recorded chat message, as `get_history` returns it.
#[derive(Serialize, Debug, Clone)]
struct ChatLine {
    from: u64,
    to: u64,
    text: String,
    /// When the server recorded it (RFC 3339 UTC, milliseconds).
    at: String,
}

/// The handler: one per shard (and the example runs one shard, see the module doc).
#[derive(Default)]
struct ChatHistory {
    conversations: HashMap<(u64, u64), VecDeque<ChatLine>>,
}

/// A conversation's key: the same for both directions.
fn conversation(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = Vec::with_capacity(24);
    envelope::format_rfc3339_millis(ms, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

impl Handler for ChatHistory {
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        conn: ConnRef,
        msg: &ClientEnvelope<'_>,
    ) -> Flow {
        if msg.kind != MessageType::DataRequest || msg.resource().as_deref() != Some("chat") {
            return Flow::Continue;
        }
        let (Some(to), Some(text)) = (msg.target_user_id, msg.data_str("text")) else {
            return Flow::Continue;
        };
        // on_message runs before the built-in rules, so it cannot see whether delivery
        // succeeds. With one shard every connected user is in this shard's registry: record
        // only messages to a connected user, which are exactly the ones the gateway delivers
        // (the others get 404 and are not part of the conversation).
        if ctx.username(UserId(to)).is_some() {
            let lines = self
                .conversations
                .entry(conversation(conn.user.0, to))
                .or_default();
            if lines.len() == HISTORY_LEN {
                lines.pop_front();
            }
            lines.push_back(ChatLine {
                from: conn.user.0,
                to,
                text: text.into_owned(),
                at: now_rfc3339(),
            });
        }
        Flow::Continue
    }

    fn on_request(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        conn: ConnRef,
        pid: &str,
        action: &str,
        msg: &ClientEnvelope<'_>,
    ) -> Flow {
        if action != "get_history" {
            return Flow::Continue;
        }
        let with = msg
            .data()
            .and_then(|data| data.get("withUserId"))
            .and_then(envelope::parse_user_id);
        let Some(with) = with else {
            ctx.error(
                conn.key,
                Some(pid),
                422,
                "get_history requires data.withUserId (a user id)",
            );
            return Flow::Handled;
        };
        #[derive(Serialize)]
        struct History<'a> {
            messages: &'a VecDeque<ChatLine>,
        }
        let empty = VecDeque::new();
        let messages = self
            .conversations
            .get(&conversation(conn.user.0, with))
            .unwrap_or(&empty);
        match serde_json::to_vec(&History { messages }) {
            Ok(json) => ctx.respond(conn.key, pid, &json),
            Err(_) => ctx.error(conn.key, Some(pid), 500, "cannot encode the history"),
        }
        Flow::Handled
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();

    let mut config = Config::gateway(AuthConfig {
        key: JwtKey::Hmac(args.secret.into_bytes()),
        leeway: Duration::from_secs(30),
        issuer: None,
        audience: None,
        allow_query_token: true,
        // Non-browser clients only (no Origin header); list origins here for a web app.
        allowed_origins: Vec::new(),
    });
    config.listen = args.listen;
    config.admin_listen = None;
    // One shard: see the module doc (history is per shard).
    config.shards = NonZeroUsize::MIN;

    let factory = match GatewayFactory::with_handler(&config, |_shard| ChatHistory::default()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("chat_history: error: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::start(config, move |shard| factory.build::<ChatHistory>(shard)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat_history: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts (and the integration test) read this line to learn the port.
    println!("listening on {}", server.local_addr());
    let _ = std::io::stdout().flush();
    match server.join() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat_history: error: {e}");
            ExitCode::FAILURE
        }
    }
}
