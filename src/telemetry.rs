//! Logging: tracing as text or JSON lines, through buffers: information and
//! debug lines to stdout, warnings and errors to stderr. The Functions host
//! grades a custom handler's stdout lines as information and every stderr line
//! as an error (a warning when it says "warn"), so a sweep summary or an audit
//! line on stderr would be reported as an error in Application Insights.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Log lines collect in memory and reach their stream every [`FLUSH_EVERY`] (or when
/// [`BUFFER`] fills): an audit line per token read must not cost a write system
/// call on the request's path. At most that long of logs is lost if the process
/// is killed; a panic flushes first.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
const BUFFER: usize = 256 * 1024;

/// azure_identity logs at info which managed identity source it picked each time a
/// credential is made, and the service makes one per token request (so that a
/// forced refresh is never answered from the SDK's own cache).
const DEFAULT_FILTER: &str = "info,azure_identity=warn";

/// Where a buffer's lines go.
#[derive(Clone, Copy, Default)]
enum Stream {
    #[default]
    Stdout,
    Stderr,
}

/// The buffered writers every log line goes through; [`Logs::flush_now`] before
/// the process exits.
#[derive(Clone)]
pub struct Logs {
    info: Buffered,
    problems: Buffered,
}

/// One stream's buffer.
#[derive(Clone, Default)]
struct Buffered(Arc<LogBuffer>);

#[derive(Default)]
struct LogBuffer {
    stream: Stream,
    pending: Mutex<Vec<u8>>,
    /// Held while a flush takes and writes: flushes stay in order.
    output: Mutex<()>,
}

impl Logs {
    fn new(split: bool) -> Self {
        let buffer = |stream| {
            Buffered(Arc::new(LogBuffer {
                stream,
                ..Default::default()
            }))
        };
        Self {
            info: buffer(if split {
                Stream::Stdout
            } else {
                Stream::Stderr
            }),
            problems: buffer(Stream::Stderr),
        }
    }

    /// Writes out both buffers, problems first.
    pub fn flush_now(&self) {
        self.problems.flush_now();
        self.info.flush_now();
    }
}

impl Buffered {
    /// Takes what is buffered and writes it with the buffer's lock released: a
    /// slow reader of the stream holds up the flushing thread only, never a
    /// request that logs meanwhile.
    fn flush_now(&self) {
        let _in_order = self.0.output.lock().unwrap_or_else(|p| p.into_inner());
        let pending =
            std::mem::take(&mut *self.0.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !pending.is_empty() {
            let _ = match self.0.stream {
                Stream::Stdout => std::io::Write::write_all(&mut std::io::stdout(), &pending),
                Stream::Stderr => std::io::Write::write_all(&mut std::io::stderr(), &pending),
            };
        }
    }
}

impl std::io::Write for Buffered {
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
/// With `split`, information to stdout and problems to stderr; without, every
/// line to stderr (a command whose stdout is its result).
pub fn init(split: bool) -> Logs {
    use tracing::Level;
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let logs = Logs::new(split);
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
    let (info, problems) = (logs.info.clone(), logs.problems.clone());
    // Warnings and errors to stderr; information, debug and trace to stdout.
    let writer = (move || problems.clone())
        .with_max_level(Level::WARN)
        .or_else((move || info.clone()).with_min_level(Level::INFO));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(writer);
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
