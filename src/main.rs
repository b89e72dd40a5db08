//! The `customws` binary: parse the command line, set up logging, run. Everything else lives
//! in the library.

use std::process::ExitCode;

use customws::cli::{self, Command};
use customws::config::JwtKey;
use customws::{admin, auth, cluster, echo::Echo, gateway, Server};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os(), &cli::process_env) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match command {
        Command::Token(args) => {
            let roles: Vec<&str> = args.roles.iter().map(String::as_str).collect();
            println!(
                "{}",
                auth::mint_hs256(
                    &args.secret,
                    args.sub,
                    args.name.as_deref(),
                    &roles,
                    args.ttl
                )
            );
            ExitCode::SUCCESS
        }
        Command::Echo(config) => {
            init_logging(&config.log_level);
            let admin = config.admin_listen;
            run(
                admin,
                || Ok((Server::start(config, |_| Echo)?, None)),
                |_| {},
            )
        }
        Command::Serve { config, warnings } => {
            init_logging(&config.log_level);
            for w in &warnings {
                tracing::warn!("{w}");
            }
            let app = match gateway::GatewayFactory::new(&config) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let dev_secret = match (&config.dev, config.auth.as_ref().map(|a| &a.key)) {
                (true, Some(JwtKey::Hmac(secret))) => Some(secret.clone()),
                _ => None,
            };
            if let Some(c) = &config.cluster {
                tracing::info!(node = %c.node_id, redis = ?c.redis, "cluster mode");
            }
            let admin = config.admin_listen;
            run(
                admin,
                move || cluster::start_gateway::<gateway::BuiltIn, _>(config, app),
                move |addr| {
                    if let Some(secret) = &dev_secret {
                        print_dev_banner(secret, addr);
                    }
                },
            )
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr (stdout carries the dev banner and `token` output), without colour
    // codes when stderr is not a terminal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Starts the server (and the cluster bridge), the admin listener and the signal watcher;
/// returns when the server stopped.
fn run(
    admin_addr: Option<std::net::SocketAddr>,
    start: impl FnOnce() -> std::io::Result<(Server, Option<cluster::Bridge>)>,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> ExitCode {
    let (server, bridge) = match start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = admin_addr {
        let sources = admin::Sources {
            shards: server.metrics_handles(),
            shared: Some(server.shared()),
            cluster: bridge.as_ref().map(cluster::Bridge::metrics),
        };
        match admin::spawn_with(addr, sources) {
            Ok(bound) => tracing::info!(%bound, "admin listener (GET /metrics)"),
            Err(e) => {
                eprintln!("error: cannot bind the admin listener {addr}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let shards = server.metrics_handles().len();
    tracing::info!(addr = %server.local_addr(), shards, "listening");
    on_ready(server.local_addr());
    // SIGTERM/SIGINT start a drain; a second signal stops at once.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = signals.handle();
    let server = std::sync::Arc::new(server);
    let watcher = {
        let server = server.clone();
        std::thread::spawn(move || {
            for _ in signals.forever() {
                if server.is_draining() {
                    tracing::warn!("second signal: stopping now");
                    server.stop();
                } else {
                    tracing::info!("signal received: draining");
                    server.drain();
                }
            }
        })
    };
    let server = server.wait();
    if let Some(bridge) = bridge {
        bridge.shutdown();
    }
    handle.close();
    let _ = watcher.join();
    match server {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_dev_banner(secret: &[u8], addr: std::net::SocketAddr) {
    let ttl = std::time::Duration::from_secs(24 * 3600);
    let alice = auth::mint_hs256(secret, 1, Some("alice"), &[], ttl);
    let bob = auth::mint_hs256(secret, 2, Some("bob"), &[], ttl);
    let port = addr.port();
    println!("customws dev mode: ephemeral secret, all origins allowed. Tokens valid for 24h.");
    println!();
    println!("  alice (user 1): {alice}");
    println!("  bob   (user 2): {bob}");
    println!();
    println!("Try it (bob listens, alice sends bob a message), in another terminal:");
    println!("  cargo run --release --example p2p_demo -- ws://127.0.0.1:{port}/ws {alice} {bob}");
    println!();
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}
