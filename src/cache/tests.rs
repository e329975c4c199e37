use super::*;
use crate::domain::Scope;
use crate::secret::Secret;
use crate::store::TokenMetadata;

fn record(token: &str, expires_on: i64) -> TokenRecord {
    TokenRecord {
        token: Secret::new(token),
        expires_on,
        scope: "S".into(),
        stored_at: 0,
        user_id: None,
        metadata: TokenMetadata::default(),
        requested_at_ms: 0,
        refresh_count: 0,
    }
}

fn token_of(served: &Served) -> String {
    let body: serde_json::Value = serde_json::from_slice(&served.body).unwrap();
    body["token"].as_str().unwrap().to_owned()
}

fn served(token: &str, expires_on: i64) -> Arc<Served> {
    Arc::new(Served::new(&record(token, expires_on)))
}

fn key(scope: &str) -> TokenKey {
    TokenKey::Agent(Scope::parse(scope).unwrap())
}

/// Caches `S0` .. `S{count - 1}`, each expiring at `expires_on`.
fn fill(cache: &TokenCache, count: usize, expires_on: i64) {
    for i in 0..count {
        cache.insert(
            &key(&format!("S{i}")),
            served("t", expires_on),
            cache.ticket(),
        );
    }
}

/// Which of `fill`'s first `count` keys are still cached.
fn still_cached(cache: &TokenCache, count: usize) -> Vec<TokenKey> {
    (0..count)
        .map(|i| key(&format!("S{i}")))
        .filter(|k| cache.peek(k, 0).is_some())
        .collect()
}

#[test]
fn debug_never_shows_the_token() {
    let debug = format!("{:?}", served("eyJ-secret-token", 100));
    assert!(!debug.contains("secret"), "{debug}");
}

#[test]
fn serves_only_while_live_and_never_below_min_validity() {
    let cache = TokenCache::new(10, 1 << 20, Clock::System);
    cache.set_live(true, true);
    let now = Clock::System.now();
    cache.insert(&key("A"), served("a", now + 100), cache.ticket());
    assert!(cache.get(&key("A"), 50).is_some());
    assert!(
        cache.get(&key("A"), 101).is_none(),
        "below the asked validity"
    );
    cache.set_live(false, false);
    assert!(cache.get(&key("A"), 0).is_none(), "not live: ask Redis");
    cache.set_live(true, true);
    assert!(
        cache.get(&key("A"), 0).is_none(),
        "from before the new feed: changes may have been missed"
    );
    assert!(
        cache.peek(&key("A"), 0).is_some(),
        "but kept for when Redis cannot be reached"
    );
    cache.insert(&key("A"), served("a2", now + 100), cache.ticket());
    assert!(
        cache.get(&key("A"), 0).is_some(),
        "stored under the new feed"
    );
}

#[test]
fn bounded_in_entries_and_bytes() {
    let cache = TokenCache::new(3, 1 << 20, Clock::System);
    cache.set_live(true, true);
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
    small.set_live(true, true);
    for i in 0..100 {
        small.insert(
            &key(&format!("S{i}")),
            served(&"x".repeat(150), now + 100),
            small.ticket(),
        );
        let bytes = small.bytes();
        assert!(bytes <= 16 * 200, "{bytes}");
    }
    cache.invalidate(&key("S9"));
    assert!(cache.get(&key("S9"), 0).is_none());
}

#[test]
fn a_reader_that_started_before_an_invalidation_cannot_insert() {
    let cache = TokenCache::new(10, 1 << 20, Clock::System);
    cache.set_live(true, true);
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
    cache.set_live(true, true);
    cache.insert(&key("B"), served("b", now + 100), before_clear);
    assert!(
        cache.get(&key("B"), 0).is_none(),
        "older than the last clear"
    );
}

#[test]
fn a_write_replaces_the_entry_and_refuses_reads_that_began_before_it() {
    let cache = TokenCache::new(10, 1 << 20, Clock::System);
    cache.set_live(true, true);
    let now = Clock::System.now();
    let slow_reader = cache.ticket();
    let writer = cache.ticket();
    cache.written(&key("A"), served("new", now + 100), writer);
    assert_eq!(token_of(&cache.get(&key("A"), 0).unwrap()), "new");
    cache.insert(&key("A"), served("old", now + 100), slow_reader);
    assert_eq!(
        token_of(&cache.get(&key("A"), 0).unwrap()),
        "new",
        "a read that began before the write cannot put the old token back"
    );
    // Another change heard of during the write: which is newer is unknown.
    let writer = cache.ticket();
    cache.invalidate(&key("A"));
    cache.written(&key("A"), served("mine", now + 100), writer);
    assert!(cache.get(&key("A"), 0).is_none());
}

#[test]
fn when_full_the_least_recently_used_goes_not_everything() {
    // Sampled LRU evicts the oldest of 5 random entries: a hot key goes only
    // when all 5 samples are hot, (10/1000)^5 per eviction here (about 1e-8 for
    // the whole test; with 100 entries it was 1e-3, and a run of the suite hit it).
    let cache = TokenCache::new(1000, 1 << 24, Clock::System);
    cache.set_live(true, true);
    let now = Clock::System.now();
    fill(&cache, 1000, now + 100);
    // Ten hot keys, read again and again while a hundred others come and go.
    for round in 0..100 {
        for hot in 0..10 {
            assert!(
                cache.get(&key(&format!("S{hot}")), 0).is_some(),
                "hot S{hot} evicted in round {round}"
            );
        }
        // Let in on its second miss (see `a_full_cache_lets_in_keys_that_missed_before`).
        for _ in 0..2 {
            cache.insert(
                &key(&format!("new{round}")),
                served("t", now + 100),
                cache.ticket(),
            );
        }
        assert!(cache.get(&key(&format!("new{round}")), 0).is_some());
        assert_eq!(cache.len(), 1000, "one evicted per insert, never a flush");
    }
}

#[test]
fn a_full_cache_lets_in_keys_that_missed_before() {
    let cache = TokenCache::new(100, 1 << 20, Clock::System);
    cache.set_live(true, true);
    let now = Clock::System.now();
    fill(&cache, 100, now + 100);
    // One pass over many more keys than fit, each read once: the doorkeeper lets
    // in only the few it takes for keys seen before (about 0.5 %; the hash is
    // fixed for a given toolchain, so this count is too).
    for i in 0..1000 {
        let one_off = key(&format!("once{i}"));
        cache.insert(&one_off, served("t", now + 100), cache.ticket());
    }
    let kept = still_cached(&cache, 100).len();
    assert!(kept >= 90, "only {kept} of 100 kept through a scan");
    // Unless the cache has room: an invalidation makes some.
    cache.invalidate(&still_cached(&cache, 100)[0]);
    cache.insert(&key("fresh"), served("t", now + 100), cache.ticket());
    assert!(
        cache.peek(&key("fresh"), 0).is_some(),
        "room, so no doorkeeper"
    );
    // A key that misses again gets in.
    cache.insert(&key("again"), served("t", now + 100), cache.ticket());
    assert!(
        cache.peek(&key("again"), 0).is_none(),
        "first miss of a full cache"
    );
    cache.insert(&key("again"), served("t", now + 100), cache.ticket());
    assert!(cache.peek(&key("again"), 0).is_some(), "second miss");
    assert_eq!(cache.len(), 100);
    // A key already cached is replaced on its first miss: that takes no room.
    // One not seen since the doorkeeper's window was emptied, so only being
    // cached lets it in ("fresh" may be the entry "again" pushed out).
    let cached = still_cached(&cache, 100).swap_remove(0);
    cache.insert(&cached, served("newer", now + 100), cache.ticket());
    assert_eq!(token_of(&cache.peek(&cached, 0).unwrap()), "newer");
    assert_eq!(cache.len(), 100);
}

#[test]
fn expired_entries_go_first() {
    // Eviction looks at 5 random entries of the 10 (Redis's way): an expired one
    // among them goes first, so it goes in 1 - 0.9^5 = 41 % of evictions,
    // and almost never if the choice ignored expiry (it is the most recently
    // used). 200 evictions: about 82 times; fewer than 50 is 4.5 standard
    // deviations off.
    let now = Clock::System.now();
    let mut expired_went = 0;
    for _ in 0..200 {
        let cache = TokenCache::new(10, 1 << 20, Clock::System);
        cache.set_live(true, true);
        // The expired entry comes last, so it is the most recently used: only
        // its expiry can make it go first.
        fill(&cache, 9, now + 100);
        cache.insert(&key("old"), served("t", now - 1), cache.ticket());
        // Full: "new" gets in on its second miss.
        cache.insert(&key("new"), served("t", now + 100), cache.ticket());
        assert!(cache.peek(&key("new"), 0).is_none());
        cache.insert(&key("new"), served("t", now + 100), cache.ticket());
        assert!(cache.peek(&key("new"), 0).is_some());
        assert_eq!(cache.len(), 10);
        // `peek` never shows an expired entry: if the nine others all stayed,
        // "old" is the one that went.
        if still_cached(&cache, 9).len() == 9 {
            expired_went += 1;
        }
    }
    assert!(
        expired_went >= 50,
        "expired entry evicted {expired_went} times of 200"
    );
}

#[test]
fn without_a_complete_feed_entries_are_revalidated_after_a_second() {
    let cache = TokenCache::new(10, 1 << 20, Clock::System);
    cache.set_live(true, false);
    assert_eq!(cache.coherence(), "revalidate");
    let now = Clock::System.now();
    let old = Arc::new(Served {
        fetched: Instant::now() - REVALIDATE_AFTER - Duration::from_millis(1),
        ..Served::new(&record("t", now + 100))
    });
    cache.insert(&key("A"), old, cache.ticket());
    assert!(
        cache.get(&key("A"), 0).is_none(),
        "too old to serve unasked"
    );
    assert!(
        cache.peek(&key("A"), 0).is_some(),
        "kept for when Redis is down"
    );
    cache.insert(&key("B"), served("t", now + 100), cache.ticket());
    assert!(cache.get(&key("B"), 0).is_some());
}

#[test]
fn bodies_are_the_same_json_written_straight_out_or_by_serde() {
    for (token, scope, user) in [
        (
            "eyJ0eXAi.eyJhdWQi.c2ln-_~",
            "https://graph.microsoft.com/.default",
            None,
        ),
        ("t", "User.Read Mail.Send", Some("alice@contoso.com")),
        ("with \"quote\" and \\ and \u{1}", "odd\tscope", Some("u")),
    ] {
        for (expires_on, refresh_count, stored_at) in
            [(1_700_000_000, 7, 1_699_999_000), (-1, u64::MAX, i64::MIN)]
        {
            let body = Body {
                expires_on,
                refresh_count,
                scope,
                stored_at,
                token,
                user_id: user,
            };
            assert_eq!(
                String::from_utf8(body.to_json()).unwrap(),
                serde_json::to_string(&body).unwrap(),
                "{token:?}"
            );
        }
    }
    assert!(plain("abc-_.~+/=") && !plain("a\"b") && !plain("a\\b") && !plain("a\nb"));
}
