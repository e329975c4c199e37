//! The in-process cache of served tokens, in front of Redis.
//!
//! Entries are the answer to `GET /api/tokens/{scope}` already serialized, so a hit
//! costs a map lookup and no JSON work. Every instance drops an entry when its
//! token changes in Redis, whoever changed it: the store reports changes
//! ([`listen`]; Redis's `CLIENT TRACKING` on every master), and the instance that
//! writes a token puts the new one in at once. Entries are served without asking
//! Redis only while that feed is live; where the store reports only this
//! service's own writes, entries older than [`REVALIDATE_AFTER`] are asked for
//! again. While Redis cannot be reached at all, entries are still served.

mod doorkeeper;
mod entries;
mod listener;
#[cfg(test)]
mod tests;

pub use self::listener::listen;

use self::doorkeeper::Doorkeeper;
use self::entries::Entries;
use crate::clock::Clock;
use crate::domain::TokenKey;
use crate::store::TokenRecord;
use axum::body::Bytes;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Without a complete change feed, an entry is served for at most this long
/// before Redis is asked again: a change by another writer shows within a second.
pub const REVALIDATE_AFTER: Duration = Duration::from_millis(900);

/// A token as the API serves it.
pub struct Served {
    /// The token's fingerprint, for the audit event of each read (the token
    /// itself is only in the body).
    pub fingerprint: String,
    pub expires_on: i64,
    /// `{"token","expires_on","scope","refresh_count","stored_at"[,"user_id"]}`.
    pub body: Bytes,
    /// When a read of this token was last recorded for the idle rule (Unix
    /// seconds): kept here so a cache hit needs no shared lock to check it.
    pub read_marked: AtomicI64,
    /// When it was read from the store.
    fetched: Instant,
}

/// Without the body, which holds the token itself.
impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("fingerprint", &self.fingerprint)
            .field("expires_on", &self.expires_on)
            .finish_non_exhaustive()
    }
}

/// The answer's JSON, fields in the order a JSON map would sort them.
#[derive(serde::Serialize)]
struct Body<'a> {
    expires_on: i64,
    refresh_count: u64,
    scope: &'a str,
    stored_at: i64,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

impl Body<'_> {
    /// The JSON: written straight out when no string needs escaping (tokens are
    /// base64url, scopes and user ids are checked at the edge: the usual case,
    /// on every cache miss), else by serde_json. Both give the same bytes.
    fn to_json(&self) -> Vec<u8> {
        if !(plain(self.token) && plain(self.scope) && self.user_id.is_none_or(plain)) {
            // Serializing plain fields into a Vec cannot fail.
            return serde_json::to_vec(self).unwrap_or_default();
        }
        let (mut expires_on, mut refresh_count, mut stored_at) = (
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        );
        let (user_field, user, user_end) = match self.user_id {
            Some(user) => (r#","user_id":""#, user, "\""),
            None => ("", "", ""),
        };
        let json = [
            r#"{"expires_on":"#,
            expires_on.format(self.expires_on),
            r#","refresh_count":"#,
            refresh_count.format(self.refresh_count),
            r#","scope":""#,
            self.scope,
            r#"","stored_at":"#,
            stored_at.format(self.stored_at),
            r#","token":""#,
            self.token,
            "\"",
            user_field,
            user,
            user_end,
            "}",
        ]
        .concat();
        json.into_bytes()
    }
}

/// Whether JSON can carry `text` as it is: no control character, quote or
/// backslash (exactly what serde_json escapes). Checks every byte without
/// stopping early, which the compiler turns into vector instructions.
fn plain(text: &str) -> bool {
    !text.bytes().fold(false, |escape, b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

impl Served {
    pub fn new(record: &TokenRecord) -> Self {
        let body = Body {
            expires_on: record.expires_on,
            refresh_count: record.refresh_count,
            scope: &record.scope,
            stored_at: record.stored_at,
            token: record.token.expose(),
            user_id: record.user_id.as_deref(),
        };
        Self {
            fingerprint: record.token.fingerprint().to_owned(),
            expires_on: record.expires_on,
            body: Bytes::from(body.to_json()),
            read_marked: AtomicI64::new(0),
            fetched: Instant::now(),
        }
    }

    pub fn seconds_left(&self, now: i64) -> i64 {
        self.expires_on - now
    }
}

/// Invalidation generations are kept per stripe of keys, not per key, so that
/// remembering them costs fixed memory; a shared stripe only costs a skipped insert.
const STRIPES: usize = 256;

/// Bounded in entries and in bytes of served bodies; when full, a sampled least
/// recently used entry (or an expired one) makes room for a key that missed
/// before (see `doorkeeper.rs`).
///
/// A read that misses takes a [`Ticket`] before asking Redis and inserts with it:
/// the insert is refused when the key was invalidated after the ticket was taken,
/// because what that read fetched may predate the write behind the invalidation
/// (a token deleted or force-refreshed meanwhile must not come back from a slow
/// reader).
pub struct TokenCache {
    entries: RwLock<Entries>,
    clock: Clock,
    live: AtomicBool,
    /// Counts the change feeds: entries stored under an earlier one are not
    /// served unasked (changes may have been missed between the feeds), only
    /// when Redis cannot be reached at all.
    feed: AtomicU64,
    /// Whether the live feed reports every writer's changes.
    complete: AtomicBool,
    generation: AtomicU64,
    /// Hits so far: the clock of least-recent use.
    hits: AtomicU64,
    /// Whether the last insert found the cache full: misses then go through
    /// the doorkeeper.
    full: AtomicBool,
    doorkeeper: Doorkeeper,
    max_entries: usize,
    max_bytes: usize,
}

/// See [`TokenCache::ticket`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// Computed once per insert: it gives the key's stripe and its place in the
/// doorkeeper.
fn hash(key: &TokenKey) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

fn stripe_of(hash: u64) -> usize {
    (hash % STRIPES as u64) as usize
}

fn stripe(key: &TokenKey) -> usize {
    stripe_of(hash(key))
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize, clock: Clock) -> Self {
        Self {
            entries: RwLock::new(Entries::new()),
            clock,
            live: AtomicBool::new(false),
            feed: AtomicU64::new(0),
            complete: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            full: AtomicBool::new(false),
            doorkeeper: Doorkeeper::new(max_entries),
            max_entries,
            max_bytes,
        }
    }

    /// An entry with at least `min_validity` seconds left, if the change feed is
    /// live (and, without a complete feed, if it is recent).
    pub fn get(&self, key: &TokenKey, min_validity: u64) -> Option<Arc<Served>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let tick = self.hits.fetch_add(1, Ordering::Relaxed);
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let hit = entries
            .touch(key, self.feed.load(Ordering::Acquire), tick)
            .filter(|served| served.seconds_left(self.clock.now()) >= min_validity as i64)?;
        if !self.complete.load(Ordering::Relaxed) && hit.fetched.elapsed() > REVALIDATE_AFTER {
            return None;
        }
        Some(hit.clone())
    }

    /// The same, whether or not the feed is live: for when Redis is unreachable.
    pub fn peek(&self, key: &TokenKey, min_validity: u64) -> Option<Arc<Served>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|served| served.seconds_left(self.clock.now()) >= min_validity as i64)
            .cloned()
    }

    /// Taken before reading what will be inserted.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::SeqCst))
    }

    /// Keeps `served` unless `key` was invalidated since `ticket` was taken, or
    /// the cache is full and `key` neither missed before nor is cached (replacing
    /// an entry takes no room).
    pub fn insert(&self, key: &TokenKey, served: Arc<Served>, ticket: Ticket) {
        let hash = hash(key);
        if self.full.load(Ordering::Relaxed)
            && !self.doorkeeper.admits(hash)
            && self.peek(key, 0).is_none()
        {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if ticket.0 < entries.floor || entries.stripes[stripe_of(hash)] > ticket.0 {
            return;
        }
        self.put(&mut entries, key, served);
    }

    /// What this instance just wrote to the store under `key`: replaces the entry
    /// at once, and refuses every read that began before the write. When another
    /// change of `key` was heard of since `ticket` (taken before the write), the
    /// entry is dropped instead: which write is newer is the store's to say.
    pub fn written(&self, key: &TokenKey, served: Arc<Served>, ticket: Ticket) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let stripe = stripe(key);
        let heard_of_another = ticket.0 < entries.floor || entries.stripes[stripe] > ticket.0;
        entries.stripes[stripe] = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if heard_of_another {
            self.remove(&mut entries, key);
            return;
        }
        self.put(&mut entries, key, served);
    }

    fn put(&self, entries: &mut Entries, key: &TokenKey, served: Arc<Served>) {
        let size = served.body.len();
        if size > self.max_bytes / 16 {
            self.remove(entries, key);
            return;
        }
        let bounds = (self.max_entries, self.max_bytes);
        let stamp = (
            self.feed.load(Ordering::Acquire),
            self.hits.load(Ordering::Relaxed),
        );
        let evicted = entries.insert(key, served, bounds, self.clock.now(), stamp);
        // Full when the next entry of this size would evict one.
        let full =
            evicted || entries.len() >= self.max_entries || entries.bytes() + size > self.max_bytes;
        self.full.store(full, Ordering::Relaxed);
    }

    /// Removes `key`'s entry; the room it leaves lets the next miss in.
    fn remove(&self, entries: &mut Entries, key: &TokenKey) {
        if entries.remove(key).is_some() {
            self.full.store(false, Ordering::Relaxed);
        }
    }

    pub fn invalidate(&self, key: &TokenKey) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.stripes[stripe(key)] = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.remove(&mut entries, key);
    }

    /// Drops everything, and refuses every read that began before.
    pub fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.clear();
        self.full.store(false, Ordering::Relaxed);
        entries.floor = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
    }

    /// Whether entries may be served without asking Redis. Set false when the
    /// feed drops; set true when a new feed starts, `complete` when it reports
    /// every writer's changes. Entries from before are kept, but served only
    /// while Redis cannot be reached at all: changes may have been missed
    /// between the feeds. Reads that began before cannot insert.
    pub fn set_live(&self, live: bool, complete: bool) {
        if live {
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            self.feed.fetch_add(1, Ordering::AcqRel);
            entries.floor = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
            self.complete.store(complete, Ordering::Relaxed);
        }
        self.live.store(live, Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// How other writers' changes are seen: `tracking` (reported as they
    /// happen) or `revalidate` (entries asked for again after a second).
    pub fn coherence(&self) -> &'static str {
        match self.complete.load(Ordering::Relaxed) {
            true => "tracking",
            false => "revalidate",
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .bytes()
    }
}
