//! The `handler` command line: its modes (SPEC §2) and what each runs.

use crate::app::{AppState, Issuer, Setup};
use crate::callers;
use crate::config::{Config, StoreKind};
use crate::functions;
use crate::startup::{run, shutdown_signal};
use std::net::SocketAddr;
use tokio::net::TcpListener;

pub const USAGE: &str = "\
usage: handler [serve [--bind ADDR] [--port N]]   serve the API (custom handler when FUNCTIONS_CUSTOMHANDLER_PORT is set)
       handler dev [--bind ADDR] [--port N]       run locally with an in-process store and issuer, nothing configured
       handler sweep                              refresh due tokens once and print the summary as JSON
       handler check                              check the configuration: Redis reached, one token from the
                                                  identity provider (not stored); one line each, exit 1 on a failure
       handler --version                          version, commit and target
       handler keys new --name N [--scope S]... [--user U]... [--admin]
                                                  print a new API key and its TOKEN_API_KEYS entry

Configuration comes from the environment (README: Configuration):
  identity   AZURE_TENANT_ID AZURE_CLIENT_ID AZURE_CLIENT_SECRET AZURE_CLIENT_CERTIFICATE_PATH
             AGENT_TOKEN_FLOW AGENT_IDENTITY_ID AGENT_USER_ID AGENT_USER_NAME AGENT_PASSWORD
             AGENT_BLUEPRINT_CLIENT_ID AGENT_BLUEPRINT_CREDENTIAL AZURE_MANAGED_IDENTITY_CLIENT_ID
             AZURE_AUTHORITY_HOST
  tokens     TOKEN_SCOPES TOKEN_ON_DEMAND TOKEN_MIN_VALIDITY_SECS TOKEN_IDLE_SECS
  refresh    TOKEN_REFRESH_BEFORE_SECS TOKEN_REFRESH_INTERVAL_SECS TOKEN_REFRESH_CONCURRENCY
             TOKEN_REFRESH_BACKOFF_SECS TOKEN_REFRESH_RATE_PER_MIN TOKEN_REFRESH_SCHEDULE (host timer)
  redis      REDIS_HOST REDIS_PORT REDIS_DB REDIS_USERNAME REDIS_PASSWORD REDIS_SSL REDIS_CA_CERT
             REDIS_CLUSTER REDIS_URL REDIS_NAMESPACE TOKEN_STORE TOKEN_ENCRYPTION_KEY
  callers    TOKEN_API_AUTH TOKEN_API_KEYS TOKEN_API_KEYS_FILE TOKEN_API_AUDIENCE
             TOKEN_API_CALLERS TOKEN_API_CALLERS_FILE TOKEN_AUDIT_STREAM
  server     BIND PORT FUNCTIONS_CUSTOMHANDLER_PORT (set by the host) TOKIO_WORKER_THREADS
  logs       RUST_LOG LOG_FORMAT";

/// `handler --version`.
pub fn version() -> String {
    format!(
        "handler {} (commit {}, {})",
        env!("CARGO_PKG_VERSION"),
        env!("HANDLER_COMMIT"),
        env!("HANDLER_TARGET")
    )
}

pub enum Mode {
    /// Started by the Functions host: its port, its timer.
    CustomHandler {
        port: u16,
    },
    Serve {
        bind: Option<String>,
        port: Option<String>,
    },
    Dev {
        bind: Option<String>,
        port: Option<String>,
    },
    Sweep,
    Check,
    NewKey {
        name: String,
        scopes: Vec<String>,
        users: Vec<String>,
        admin: bool,
    },
}

/// The mode from the arguments (after the program name); with none, from
/// whether the host set its port variable.
pub fn parse_args(args: &[String]) -> Result<Mode, String> {
    let flag_value = |i: &mut usize, flag: &str| -> Result<String, String> {
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    };
    match args.first().map(String::as_str) {
        None => match std::env::var(functions::PORT_VAR) {
            Ok(port) => port
                .trim()
                .parse()
                .map(|port| Mode::CustomHandler { port })
                .map_err(|_| format!("{}: not a port number", functions::PORT_VAR)),
            Err(_) => Ok(Mode::Serve {
                bind: None,
                port: None,
            }),
        },
        Some(cmd @ ("serve" | "dev")) => {
            let (mut bind, mut port, mut i) = (None, None, 1);
            while i < args.len() {
                match args[i].as_str() {
                    "--bind" => bind = Some(flag_value(&mut i, "--bind")?),
                    "--port" => port = Some(flag_value(&mut i, "--port")?),
                    other => return Err(format!("unknown argument {other}")),
                }
                i += 1;
            }
            Ok(if cmd == "dev" {
                Mode::Dev { bind, port }
            } else {
                Mode::Serve { bind, port }
            })
        }
        Some("sweep") if args.len() == 1 => Ok(Mode::Sweep),
        Some("check") if args.len() == 1 => Ok(Mode::Check),
        Some("keys") if args.get(1).map(String::as_str) == Some("new") => {
            let (mut name, mut scopes, mut users, mut admin, mut i) =
                (None, vec![], vec![], false, 2);
            while i < args.len() {
                match args[i].as_str() {
                    "--name" => name = Some(flag_value(&mut i, "--name")?),
                    "--scope" => scopes.push(flag_value(&mut i, "--scope")?),
                    "--user" => users.push(flag_value(&mut i, "--user")?),
                    "--admin" => admin = true,
                    other => return Err(format!("unknown argument {other}")),
                }
                i += 1;
            }
            let name = name.ok_or("keys new needs --name")?;
            Ok(Mode::NewKey {
                name,
                scopes,
                users,
                admin,
            })
        }
        Some(other) => Err(format!("unknown command {other}")),
    }
}

/// `handler keys new`: needs no configuration, no runtime, no logging.
pub fn print_new_key(name: &str, scopes: Vec<String>, users: Vec<String>, admin: bool) {
    let (key, entry) = callers::new_key(name, scopes, users, admin);
    println!("key:   {}", key.expose());
    println!(
        "entry: {}",
        serde_json::to_string(&entry).unwrap_or_default()
    );
    println!("Give the key to the caller; put the entry (never the key) in TOKEN_API_KEYS.");
}

/// The app setting `timer-refresh/function.json` takes its schedule from.
pub const SCHEDULE_VAR: &str = "TOKEN_REFRESH_SCHEDULE";

/// Runs a mode that needs the service: reads the configuration, builds the app,
/// serves (or sweeps once) until a shutdown signal.
pub async fn execute(mode: Mode) -> Result<(), String> {
    if let Mode::Check = mode {
        return crate::check::run().await;
    }
    let mut config = Config::from_env().map_err(|e| e.to_string())?;
    let standalone = Setup::standalone();
    let (addr, setup) = match mode {
        Mode::CustomHandler { port } => {
            if std::env::var(SCHEDULE_VAR).map_or(true, |v| v.trim().is_empty()) {
                tracing::warn!(
                    "{SCHEDULE_VAR} is not set: the host disables the timer-refresh function ('%{SCHEDULE_VAR}%' does not resolve to a value), and tokens are refreshed only when read; set it to an NCRONTAB schedule such as '0 */5 * * * *'"
                );
            }
            (
                SocketAddr::from(([127, 0, 0, 1], port)),
                Setup {
                    internal_timer: false,
                    ..standalone
                },
            )
        }
        Mode::Serve { bind, port } => (listen_addr(&config, bind, port)?, standalone),
        Mode::Dev { bind, port } => {
            config.store.kind = StoreKind::Memory;
            let setup = Setup {
                issuer: Issuer::Dev {
                    lifetime_secs: 3600,
                },
                ..standalone
            };
            (listen_addr(&config, bind, port)?, setup)
        }
        Mode::Sweep => return sweep_once(&config).await,
        Mode::NewKey { .. } | Mode::Check => {
            return Err("keys new and check run before the service starts".into());
        }
    };
    let dev_key = match setup.issuer {
        Issuer::Dev { .. } if config.api.auth.keys && config.api.api_keys.is_empty() => {
            let (key, entry) = callers::new_key("dev", vec!["*".into()], vec!["*".into()], true);
            config.api.api_keys.push(entry);
            Some(key)
        }
        _ => None,
    };
    let state = AppState::build(&config, setup).map_err(|e| e.to_string())?;
    state.store.check_at_start().await?;
    if config.api.auth.is_none() {
        tracing::warn!("TOKEN_API_AUTH=none: every caller on the network can read every token");
    }
    if config.store.kind == StoreKind::Redis
        && let Some(host) = config.redis.remote_host_without_tls()
    {
        tracing::warn!(%host, "Redis is reached without TLS on a non-loopback host: tokens cross the network in the clear");
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%local, store = state.store.kind().as_str(), "token broker listening");
    if let Some(key) = &dev_key {
        print_dev_banner(local, key.expose(), &config);
    }
    run(state, listener, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

/// `handler sweep`: one sweep, its summary as JSON on stdout.
async fn sweep_once(config: &Config) -> Result<(), String> {
    let setup = Setup {
        internal_timer: false,
        ..Setup::standalone()
    };
    let state = AppState::build(config, setup).map_err(|e| e.to_string())?;
    let summary = state
        .tokens
        .sweep()
        .await
        .map_err(|e| format!("sweep could not run: {e}"))?;
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    match summary.failed {
        0 => Ok(()),
        failed => Err(format!("{failed} token(s) failed to refresh")),
    }
}

/// `--flag` beats the variable, which beats the config default.
fn listen_addr(
    config: &Config,
    bind: Option<String>,
    port: Option<String>,
) -> Result<SocketAddr, String> {
    let ip = match bind {
        Some(b) => b
            .parse()
            .map_err(|_| format!("--bind: not an IP address: {b}"))?,
        None => config.api.bind,
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("--port: not a port number: {p}"))?,
        None => config.api.port,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Written with `writeln!` and errors ignored: a closed stdout (a supervisor that
/// stopped reading) must not bring the service down, as `println!` would.
fn print_dev_banner(addr: SocketAddr, key: &str, config: &Config) {
    use std::io::Write;
    let scope = config
        .refresh
        .warm_scopes
        .first()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "token broker (dev) on http://{addr}  store: in-process  issuer: local development JWTs"
    );
    let _ = writeln!(out, "API key (admin, this run only): {key}");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  curl -H 'Authorization: Bearer {key}' http://{addr}/api/tokens/{scope}"
    );
    let _ = writeln!(
        out,
        "  curl -H 'Authorization: Bearer {key}' http://{addr}/api/tokens"
    );
    let _ = writeln!(
        out,
        "  curl -X POST -H 'Authorization: Bearer {key}' http://{addr}/api/tokens/refresh/{scope}"
    );
    let _ = writeln!(out, "  curl http://{addr}/api/tokens/health");
    let _ = out.flush();
}
