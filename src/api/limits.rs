//! How much one request may carry and how long it may take to arrive: every
//! bound on a request, in one place. A head hyper cannot buffer gets its own
//! (bodiless) refusal, as SPEC §8 allows; everything that parses is answered
//! with JSON. (Scopes, user ids and tokens have their own bounds, at their types
//! in `domain.rs` and `grant.rs`.)

use std::time::Duration;

/// hyper's read buffer, which bounds a request head (request line and headers)
/// loosely: a head of about this size or more gets hyper's bodiless 431 or 414.
/// At most 100 headers (hyper's own default) are parsed.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header bytes a request may carry once parsed; more is a JSON `431`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The largest body any route reads (the host's timer payload is well under 4 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// The longest query string accepted: a maximal scope percent-encoded three times
/// over plus a user id fits well inside.
pub const MAX_QUERY: usize = 8 * 1024;
/// A request head must arrive whole within this, and a kept-alive connection is
/// closed after this long without one: longer than the Functions host keeps an
/// idle connection in its pool (.NET's default is a minute), so the host closes
/// idle connections first and never sends a request onto one we are closing.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(75);
