//! `handler`: reads the mode and configuration, sets up logging, runs the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use token_broker::config::{AuthMode, Config, StoreKind};
use token_broker::store::Store;
use token_broker::{AppState, Issuer, callers, functions, serve, shutdown_signal, spawn_sweeper};
use tokio::net::TcpListener;
use tokio::sync::watch;

const USAGE: &str = "\
usage: handler [serve [--bind ADDR] [--port N]]   serve the API (custom handler when FUNCTIONS_CUSTOMHANDLER_PORT is set)
       handler dev [--bind ADDR] [--port N]       run locally with an in-process store and issuer, nothing configured
       handler sweep                              refresh due tokens once and print the summary as JSON
       handler keys new --name N [--scope S]... [--user U]... [--admin]
                                                  print a new API key and its TOKEN_API_KEYS entry";

enum Mode {
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
    NewKey {
        name: String,
        scopes: Vec<String>,
        users: Vec<String>,
        admin: bool,
    },
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
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

/// Log lines collect in memory and reach stderr every [`LOG_FLUSH_EVERY`] (or when
/// [`LOG_BUFFER`] fills): an audit line per token read must not cost a write
/// system call on the request's path. At most that long of logs is lost if the
/// process is killed; a panic flushes first.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(50);
const LOG_BUFFER: usize = 256 * 1024;

#[derive(Clone, Default)]
struct BufferedStderr(std::sync::Arc<LogBuffer>);

#[derive(Default)]
struct LogBuffer {
    pending: std::sync::Mutex<Vec<u8>>,
    /// Held while a flush takes and writes: flushes stay in order.
    output: std::sync::Mutex<()>,
}

impl BufferedStderr {
    /// Takes what is buffered and writes it with the buffer's lock released: a
    /// slow reader of stderr holds up the flushing thread only, never a request
    /// that logs meanwhile.
    fn flush_now(&self) {
        let _in_order = self.0.output.lock().unwrap_or_else(|p| p.into_inner());
        let pending =
            std::mem::take(&mut *self.0.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !pending.is_empty() {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), &pending);
        }
    }
}

impl std::io::Write for BufferedStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buffer = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
            buffer.extend_from_slice(bytes);
            buffer.len() >= LOG_BUFFER
        };
        if full {
            self.flush_now();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// azure_identity logs at info which managed identity source it picked each time a
/// credential is made, and the service makes one per token request (so that a
/// forced refresh is never answered from the SDK's own cache).
const DEFAULT_LOG_FILTER: &str = "info,azure_identity=warn";

fn init_tracing() -> BufferedStderr {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = BufferedStderr::default();
    let flusher = logs.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(LOG_FLUSH_EVERY);
            flusher.flush_now();
        }
    });
    let on_panic = logs.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        on_panic.flush_now();
        default_hook(info);
    }));
    let writer = logs.clone();
    // JSON lines with LOG_FORMAT=json (what Application Insights ingests through
    // the host); plain text otherwise, without colour codes either way.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone());
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    logs
}

/// Threads serving requests: `TOKIO_WORKER_THREADS` when set, else one fewer than
/// the cores (at least one). Under the Functions host every request also passes
/// through the host's own process on the same machine, and a core left to it (or
/// to a co-located load generator, see BENCHMARKS.md) serves more requests than a
/// thread of ours fighting it for that core.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.enable_all().build()
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
        None => config.bind,
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("--port: not a port number: {p}"))?,
        None => config.port,
    };
    Ok(SocketAddr::new(ip, port))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mode = match parse_args(&args) {
        Ok(mode) => mode,
        Err(why) => {
            eprintln!("handler: {why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Mode::NewKey {
        name,
        scopes,
        users,
        admin,
    } = mode
    {
        let (key, entry) = callers::new_key(&name, scopes, users, admin);
        println!("key:   {}", key.expose());
        println!(
            "entry: {}",
            serde_json::to_string(&entry).unwrap_or_default()
        );
        println!("Give the key to the caller; put the entry (never the key) in TOKEN_API_KEYS.");
        return ExitCode::SUCCESS;
    }
    token_broker::install_crypto_provider();
    let logs = init_tracing();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("handler: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(mode));
    logs.flush_now();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("handler: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode) -> Result<(), String> {
    let mut config = Config::from_env().map_err(|e| e.to_string())?;
    let (addr, issuer, interval) = match mode {
        Mode::CustomHandler { port } => (
            SocketAddr::from(([127, 0, 0, 1], port)),
            Issuer::Entra,
            None,
        ),
        Mode::Serve { bind, port } => {
            let interval = Duration::from_secs(config.refresh_interval_secs);
            (
                listen_addr(&config, bind, port)?,
                Issuer::Entra,
                Some(interval),
            )
        }
        Mode::Dev { bind, port } => {
            config.store = StoreKind::Memory;
            let interval = Duration::from_secs(config.refresh_interval_secs);
            (
                listen_addr(&config, bind, port)?,
                Issuer::Dev {
                    lifetime_secs: 3600,
                },
                Some(interval),
            )
        }
        Mode::Sweep => {
            let state = AppState::build(&config, Issuer::Entra).map_err(|e| e.to_string())?;
            let summary = state
                .refresher
                .sweep()
                .await
                .map_err(|e| format!("sweep could not run: {e}"))?;
            println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            return if summary.failed == 0 {
                Ok(())
            } else {
                Err(format!("{} token(s) failed to refresh", summary.failed))
            };
        }
        Mode::NewKey { .. } => unreachable!("handled before the runtime starts"),
    };
    let dev_key = match issuer {
        Issuer::Dev { .. } if config.auth == AuthMode::Keys && config.api_keys.is_empty() => {
            let (key, entry) = callers::new_key("dev", vec!["*".into()], vec!["*".into()], true);
            config.api_keys.push(entry);
            Some(key)
        }
        _ => None,
    };
    let state = AppState::build(&config, issuer).map_err(|e| e.to_string())?;
    if let Store::Redis(redis) = state.refresher.store() {
        redis.check_at_start().await?;
    }
    if config.auth == AuthMode::None {
        tracing::warn!("TOKEN_API_AUTH=none: every caller on the network can read every token");
    }
    if config.store == StoreKind::Redis
        && let Some(host) = config.redis_host_without_tls()
    {
        tracing::warn!(%host, "Redis is reached without TLS on a non-loopback host: tokens cross the network in the clear");
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%local, store = state.refresher.store().kind(), "token broker listening");
    if let Some(key) = &dev_key {
        print_dev_banner(local, key.expose(), &config);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = spawn_sweeper(state.clone(), interval, stop_rx.clone());
    let invalidation = state.refresher.spawn_invalidation(stop_rx);
    let result = serve(listener, state, async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await;
    let _ = sweeper.await;
    if let Some(invalidation) = invalidation {
        let _ = invalidation.await;
    }
    result.map_err(|e| format!("server error: {e}"))
}

/// Written with `writeln!` and errors ignored: a closed stdout (a supervisor that
/// stopped reading) must not bring the service down, as `println!` would.
fn print_dev_banner(addr: SocketAddr, key: &str, config: &Config) {
    use std::io::Write;
    let scope = config
        .scopes
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
