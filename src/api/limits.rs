//! How much one request may carry and how long it may take to arrive: every
//! bound of the HTTP edge, in one place. Heads past [`MAX_HEAD`] get hyper's own
//! (bodiless) refusal, as SPEC §8 allows; everything smaller that parses is
//! answered with JSON.

use std::time::Duration;

/// The largest request head hyper buffers (request line and headers); it answers
/// larger ones with a bodiless 431 or 414 itself.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header bytes a request may carry once parsed; more is a JSON `431`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The largest body any route reads (the host's timer payload is well under 4 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// The longest query string accepted: a maximal scope percent-encoded three times
/// over plus a user id fits well inside.
pub const MAX_QUERY: usize = 8 * 1024;
/// A client gets this long to start its first request on a new connection.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
