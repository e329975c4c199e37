//! `handler`: reads the mode, sets up logging and the runtime, runs the library.

use std::process::ExitCode;
use token_broker::cli::{self, Mode, USAGE};
use token_broker::{app, telemetry};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args
        .first()
        .is_some_and(|a| a == "--version" || a == "-V" || a == "version")
    {
        println!("{}", cli::version());
        return ExitCode::SUCCESS;
    }
    let mode = match cli::parse_args(&args) {
        Ok(Mode::NewKey {
            name,
            scopes,
            users,
            admin,
        }) => {
            cli::print_new_key(&name, scopes, users, admin);
            return ExitCode::SUCCESS;
        }
        Ok(mode) => mode,
        Err(why) => {
            eprintln!("handler: {why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    app::install_crypto_provider();
    // A service's information lines go to stdout (the Functions host grades
    // every stderr line as an error); a one-shot command keeps stdout for its
    // output and logs to stderr.
    let split = matches!(
        mode,
        Mode::CustomHandler { .. } | Mode::Serve { .. } | Mode::Dev { .. }
    );
    let logs = telemetry::init(split);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("handler: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::execute(mode));
    logs.flush_now();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("handler: {why}");
            ExitCode::FAILURE
        }
    }
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
