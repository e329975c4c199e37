//! Logging: tracing to stderr through a buffer, as text or JSON lines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Log lines collect in memory and reach stderr every [`FLUSH_EVERY`] (or when
/// [`BUFFER`] fills): an audit line per token read must not cost a write system
/// call on the request's path. At most that long of logs is lost if the process
/// is killed; a panic flushes first.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
const BUFFER: usize = 256 * 1024;

/// azure_identity logs at info which managed identity source it picked each time a
/// credential is made, and the service makes one per token request (so that a
/// forced refresh is never answered from the SDK's own cache).
const DEFAULT_FILTER: &str = "info,azure_identity=warn";

/// The buffered writer every log line goes through; [`Logs::flush_now`] before
/// the process exits.
#[derive(Clone, Default)]
pub struct Logs(Arc<LogBuffer>);

#[derive(Default)]
struct LogBuffer {
    pending: Mutex<Vec<u8>>,
    /// Held while a flush takes and writes: flushes stay in order.
    output: Mutex<()>,
}

impl Logs {
    /// Takes what is buffered and writes it with the buffer's lock released: a
    /// slow reader of stderr holds up the flushing thread only, never a request
    /// that logs meanwhile.
    pub fn flush_now(&self) {
        let _in_order = self.0.output.lock().unwrap_or_else(|p| p.into_inner());
        let pending =
            std::mem::take(&mut *self.0.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !pending.is_empty() {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), &pending);
        }
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buffer = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
            buffer.extend_from_slice(bytes);
            buffer.len() >= BUFFER
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

/// Installs the global subscriber: `RUST_LOG` (default [`DEFAULT_FILTER`]),
/// `LOG_FORMAT=json` for one JSON object per line (what Application Insights
/// ingests through the host), plain text otherwise, without colour codes.
pub fn init() -> Logs {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let logs = Logs::default();
    let flusher = logs.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(FLUSH_EVERY);
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
