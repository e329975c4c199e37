//! The in-process cache of served tokens, in front of Redis.
//!
//! Entries are the answer to `GET /api/tokens/{scope}` already serialized, so a hit
//! costs a map lookup and no JSON work. Every instance drops an entry when any
//! instance refreshes, stores or deletes that token: writes publish the token's
//! key on the Redis channel `{ns}tokens:events` (see README), and each instance
//! listens ([`listen`]). Entries are served without asking Redis only while that
//! subscription is live; while it is down they are used only if Redis cannot be
//! reached at all.

use crate::clock::Clock;
use crate::domain::TokenKey;
use crate::secret::Secret;
use crate::store::{SharedStore, TokenRecord};
use axum::body::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// A token as the API serves it.
pub struct Served {
    pub token: Secret,
    pub expires_on: i64,
    /// `{"token","expires_on","scope","refresh_count","stored_at"[,"user_id"]}`.
    pub body: Bytes,
    /// When a read of this token was last recorded for the idle rule (Unix
    /// seconds): kept here so a cache hit needs no shared lock to check it.
    pub read_marked: AtomicI64,
}

/// Without the body, which holds the token itself.
impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("token", &self.token)
            .field("expires_on", &self.expires_on)
            .finish_non_exhaustive()
    }
}

impl Served {
    pub fn new(record: &TokenRecord) -> Self {
        let mut body = serde_json::json!({
            "token": record.token.expose(),
            "expires_on": record.expires_on,
            "scope": record.scope,
            "refresh_count": record.refresh_count,
            "stored_at": record.stored_at,
        });
        if let Some(user) = &record.user_id {
            body["user_id"] = serde_json::Value::from(user.as_str());
        }
        Self {
            token: record.token.clone(),
            expires_on: record.expires_on,
            body: Bytes::from(body.to_string()),
            read_marked: AtomicI64::new(0),
        }
    }

    pub fn seconds_left(&self, now: i64) -> i64 {
        self.expires_on - now
    }
}

/// Invalidation generations are kept per stripe of keys, not per key, so that
/// remembering them costs fixed memory; a shared stripe only costs a skipped insert.
const STRIPES: usize = 256;

/// Bounded in entries and in bytes of served bodies.
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
    generation: AtomicU64,
    max_entries: usize,
    max_bytes: usize,
}

struct Entries {
    map: HashMap<TokenKey, Arc<Served>>,
    bytes: usize,
    /// The generation of the last invalidation of any key of each stripe.
    stripes: [u64; STRIPES],
    /// Tickets older than this are refused: everything was dropped at it.
    floor: u64,
}

/// See [`TokenCache::ticket`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

fn stripe(key: &TokenKey) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize % STRIPES
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize, clock: Clock) -> Self {
        Self {
            clock,
            entries: RwLock::new(Entries {
                map: HashMap::new(),
                bytes: 0,
                stripes: [0; STRIPES],
                floor: 0,
            }),
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            max_entries,
            max_bytes,
        }
    }

    /// An entry with at least `min_validity` seconds left, if the invalidation
    /// channel is live.
    pub fn get(&self, key: &TokenKey, min_validity: u64) -> Option<Arc<Served>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        self.peek(key, min_validity)
    }

    /// The same, whether or not the channel is live: for when Redis is unreachable.
    pub fn peek(&self, key: &TokenKey, min_validity: u64) -> Option<Arc<Served>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .map
            .get(key)
            .filter(|served| served.seconds_left(self.clock.now()) >= min_validity as i64)
            .cloned()
    }

    /// Taken before reading what will be inserted.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::SeqCst))
    }

    /// Keeps `served` unless `key` was invalidated since `ticket` was taken.
    pub fn insert(&self, key: &TokenKey, served: Arc<Served>, ticket: Ticket) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if ticket.0 < entries.floor || entries.stripes[stripe(key)] > ticket.0 {
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
        let heard_of_another = ticket.0 < entries.floor || entries.stripes[stripe(key)] > ticket.0;
        entries.stripes[stripe(key)] = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if heard_of_another {
            if let Some(old) = entries.map.remove(key) {
                entries.bytes -= old.body.len();
            }
            return;
        }
        self.put(&mut entries, key, served);
    }

    fn put(&self, entries: &mut Entries, key: &TokenKey, served: Arc<Served>) {
        let size = served.body.len();
        if size > self.max_bytes / 16 {
            if let Some(old) = entries.map.remove(key) {
                entries.bytes -= old.body.len();
            }
            return;
        }
        if let Some(old) = entries.map.remove(key) {
            entries.bytes -= old.body.len();
        }
        if entries.map.len() >= self.max_entries || entries.bytes + size > self.max_bytes {
            // Full: expired entries go first; if that is not enough, everything
            // (a refill costs one Redis read per key, and this is rare).
            let now = self.clock.now();
            entries.map.retain(|_, served| served.expires_on > now);
            entries.bytes = entries.map.values().map(|s| s.body.len()).sum();
            if entries.map.len() >= self.max_entries || entries.bytes + size > self.max_bytes {
                entries.map.clear();
                entries.bytes = 0;
            }
        }
        entries.bytes += size;
        entries.map.insert(key.clone(), served);
    }

    pub fn invalidate(&self, key: &TokenKey) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.stripes[stripe(key)] = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(old) = entries.map.remove(key) {
            entries.bytes -= old.body.len();
        }
    }

    /// Whether entries may be served without asking Redis. Set false when the
    /// subscription drops; set true (after clearing, as events may have been
    /// missed) when it is back.
    pub fn set_live(&self, live: bool) {
        if live {
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            entries.map.clear();
            entries.bytes = 0;
            entries.floor = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        }
        self.live.store(live, Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Listens for changed keys and drops their entries, until `stop` turns true.
/// Resubscribes after a lost connection; while unsubscribed the cache is not
/// trusted (see [`TokenCache::set_live`]).
pub fn listen(
    cache: Arc<TokenCache>,
    store: SharedStore,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            match store.changes().await {
                Ok(mut changes) => {
                    cache.set_live(true);
                    pause = Duration::from_millis(100);
                    loop {
                        tokio::select! {
                            changed = changes.next() => match changed {
                                Some(key) => cache.invalidate(&key),
                                None => break,
                            },
                            _ = stop.changed() => {
                                cache.set_live(false);
                                return;
                            }
                        }
                    }
                    cache.set_live(false);
                    tracing::warn!("lost the change-event subscription; resubscribing");
                }
                Err(error) => tracing::debug!(%error, "cannot subscribe to change events yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Scope;
    use crate::store::TokenMetadata;

    fn served(token: &str, expires_on: i64) -> Arc<Served> {
        Arc::new(Served::new(&TokenRecord {
            token: Secret::new(token),
            expires_on,
            scope: "S".into(),
            stored_at: 0,
            user_id: None,
            metadata: TokenMetadata::default(),
            requested_at_ms: 0,
            refresh_count: 0,
        }))
    }

    fn key(scope: &str) -> TokenKey {
        TokenKey::Agent(Scope::parse(scope).unwrap())
    }

    #[test]
    fn debug_never_shows_the_token() {
        let debug = format!("{:?}", served("eyJ-secret-token", 100));
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn serves_only_while_live_and_never_below_min_validity() {
        let cache = TokenCache::new(10, 1 << 20, Clock::System);
        cache.set_live(true);
        let now = Clock::System.now();
        cache.insert(&key("A"), served("a", now + 100), cache.ticket());
        assert!(cache.get(&key("A"), 50).is_some());
        assert!(
            cache.get(&key("A"), 101).is_none(),
            "below the asked validity"
        );
        cache.set_live(false);
        assert!(cache.get(&key("A"), 0).is_none(), "not live: ask Redis");
        cache.set_live(true);
        assert!(
            cache.peek(&key("A"), 0).is_none(),
            "cleared when the channel came back"
        );
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let cache = TokenCache::new(3, 1 << 20, Clock::System);
        cache.set_live(true);
        let now = Clock::System.now();
        for i in 0..10 {
            cache.insert(
                &key(&format!("S{i}")),
                served("t", now + 100),
                cache.ticket(),
            );
            assert!(cache.len() <= 3);
        }
        let small = TokenCache::new(100, 16 * 200, Clock::System);
        small.set_live(true);
        for i in 0..100 {
            small.insert(
                &key(&format!("S{i}")),
                served(&"x".repeat(150), now + 100),
                small.ticket(),
            );
            let bytes = small.entries.read().unwrap().bytes;
            assert!(bytes <= 16 * 200, "{bytes}");
        }
        cache.invalidate(&key("S9"));
        assert!(cache.get(&key("S9"), 0).is_none());
    }

    #[test]
    fn a_reader_that_started_before_an_invalidation_cannot_insert() {
        let cache = TokenCache::new(10, 1 << 20, Clock::System);
        cache.set_live(true);
        let now = Clock::System.now();
        let slow_reader = cache.ticket();
        // Meanwhile the token is deleted or refreshed elsewhere.
        cache.invalidate(&key("A"));
        cache.insert(&key("A"), served("old", now + 100), slow_reader);
        assert!(cache.get(&key("A"), 0).is_none(), "stale read kept");
        // A reader that started after it may insert; other keys are unaffected.
        cache.insert(&key("A"), served("new", now + 100), cache.ticket());
        assert!(cache.get(&key("A"), 0).is_some());
        let before_clear = cache.ticket();
        cache.set_live(true);
        cache.insert(&key("B"), served("b", now + 100), before_clear);
        assert!(
            cache.get(&key("B"), 0).is_none(),
            "older than the last clear"
        );
    }

    #[test]
    fn a_write_replaces_the_entry_and_refuses_reads_that_began_before_it() {
        let cache = TokenCache::new(10, 1 << 20, Clock::System);
        cache.set_live(true);
        let now = Clock::System.now();
        let slow_reader = cache.ticket();
        let writer = cache.ticket();
        cache.written(&key("A"), served("new", now + 100), writer);
        assert_eq!(cache.get(&key("A"), 0).unwrap().token.expose(), "new");
        cache.insert(&key("A"), served("old", now + 100), slow_reader);
        assert_eq!(
            cache.get(&key("A"), 0).unwrap().token.expose(),
            "new",
            "a read that began before the write cannot put the old token back"
        );
        // Another change heard of during the write: which is newer is unknown.
        let writer = cache.ticket();
        cache.invalidate(&key("A"));
        cache.written(&key("A"), served("mine", now + 100), writer);
        assert!(cache.get(&key("A"), 0).is_none());
    }
}
