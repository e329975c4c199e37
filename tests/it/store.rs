//! The store contract: Redis (a single server, or a cluster in the second pass)
//! and the in-process store behave alike, checked by the same tests against both.

use crate::support::*;
use std::time::Duration;
use token_broker::clock::Clock;
use token_broker::config::Config;
use token_broker::domain::{Scope, TokenKey, UserId};
use token_broker::secret::Secret;
use token_broker::store::{
    self, Forget, Grant, PutOutcome, RefreshStatus, SharedStore, TokenMetadata, TokenRecord, Write,
};

/// A store under test, with the Redis behind it when there is one.
struct Subject {
    store: SharedStore,
    _redis: Option<RedisServer>,
}

fn redis() -> Subject {
    let redis = RedisServer::start();
    let config = Config::from_vars(redis.env()).expect("config");
    Subject {
        store: store::open(&config.store, &config.redis, Clock::System).expect("store"),
        _redis: Some(redis),
    }
}

fn memory() -> Subject {
    let config =
        Config::from_vars([("TOKEN_STORE".to_owned(), "memory".to_owned())]).expect("config");
    Subject {
        store: store::open(&config.store, &config.redis, Clock::System).expect("store"),
        _redis: None,
    }
}

/// Each contract case as a test against each store.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                super::$case(super::redis().store).await
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                super::$case(super::memory().store).await
            })*
        }
    };
}

contract!(
    writes_count_refreshes_and_never_put_back_an_older_token,
    delete_removes_the_token_its_grant_and_its_status,
    the_listing_names_every_token_as_other_applications_read_it,
    due_keys_come_soonest_first_bounded_and_leave_when_unscheduled,
    a_failure_status_is_kept_and_schedules_the_retry,
    a_lease_is_held_by_one_owner_until_released_or_expired,
    grants_are_kept_apart_from_tokens,
    reads_start_the_idle_clock_once,
    forced_refreshes_are_counted_per_caller_and_key,
    counts_and_the_soonest_expiry_follow_the_stored_tokens,
);

fn agent(scope: &str) -> TokenKey {
    TokenKey::Agent(Scope::parse(scope).unwrap())
}

fn user(user: &str, scope: &str) -> TokenKey {
    TokenKey::User(UserId::parse(user).unwrap(), Scope::parse(scope).unwrap())
}

fn record(key: &TokenKey, token: &str, expires_in: i64, requested_at_ms: i64) -> TokenRecord {
    let now = unix_now();
    TokenRecord {
        token: Secret::new(token),
        expires_on: now + expires_in,
        scope: key.scope().as_str().to_owned(),
        stored_at: now,
        user_id: key.user().map(|u| u.as_str().to_owned()),
        metadata: TokenMetadata::default(),
        requested_at_ms,
        refresh_count: 0,
    }
}

async fn writes_count_refreshes_and_never_put_back_an_older_token(store: SharedStore) {
    let key = agent("User.Read");
    let due = unix_now() + 3000;
    let put = |r: TokenRecord| {
        let (store, key) = (store.clone(), key.clone());
        async move { store.put(&key, &Write::token(&r, due)).await.unwrap() }
    };
    assert_eq!(
        put(record(&key, "a", 3600, 10)).await,
        PutOutcome::Written { refresh_count: 0 }
    );
    assert_eq!(
        put(record(&key, "b", 3600, 20)).await,
        PutOutcome::Written { refresh_count: 1 }
    );
    assert_eq!(
        put(record(&key, "b", 3600, 20)).await,
        PutOutcome::Written { refresh_count: 1 },
        "the same token written twice is not a refresh"
    );
    assert_eq!(
        put(record(&key, "older", 7200, 15)).await,
        PutOutcome::Superseded,
        "a request that began earlier never replaces a later one"
    );
    assert_eq!(
        put(record(&key, "expired", -1, 30)).await,
        PutOutcome::Superseded
    );
    let stored = store.get(&key).await.unwrap().expect("stored");
    assert_eq!((stored.token.expose(), stored.refresh_count), ("b", 1));
    let many = store
        .get_many(&[agent("Other"), key.clone()])
        .await
        .unwrap();
    assert!(many[0].is_none());
    assert_eq!(many[1].as_ref().map(|r| r.token.expose()), Some("b"));
}

async fn delete_removes_the_token_its_grant_and_its_status(store: SharedStore) {
    let key = user("alice", "User.Read");
    store
        .put(
            &key,
            &Write::token(&record(&key, "t", 3600, 1), unix_now() - 1),
        )
        .await
        .unwrap();
    store.put_grant(&key, &Secret::new("rt")).await.unwrap();
    store
        .put_status(&key, &failure(unix_now() - 1))
        .await
        .unwrap();
    assert!(store.delete(&key).await.unwrap());
    assert!(store.get(&key).await.unwrap().is_none());
    assert_eq!(store.grant(&key).await.unwrap(), Grant::Missing);
    assert_eq!(store.status(&key).await.unwrap(), None);
    assert!(store.due(unix_now(), 10).await.unwrap().keys.is_empty());
    assert_eq!(store.active_count().await.unwrap(), 0);
    assert!(!store.delete(&key).await.unwrap(), "nothing left to delete");
}

async fn the_listing_names_every_token_as_other_applications_read_it(store: SharedStore) {
    let (a, b) = (agent("User.Read"), user("bob", "Mail.Send"));
    for (key, token) in [(&a, "ta"), (&b, "tb")] {
        store
            .put(
                key,
                &Write::token(&record(key, token, 3600, 1), unix_now() + 3000),
            )
            .await
            .unwrap();
    }
    let listing = store.list().await.unwrap();
    let named: Vec<(String, String, TokenKey)> = listing
        .into_iter()
        .map(|t| (t.name, t.record.token.expose().to_owned(), t.key))
        .collect();
    assert_eq!(
        named,
        vec![
            (
                "annika:tokens:agent:User.Read".to_owned(),
                "ta".to_owned(),
                a.clone()
            ),
            (
                "annika:tokens:user:bob:Mail.Send".to_owned(),
                "tb".to_owned(),
                b.clone()
            ),
        ]
    );
    assert_eq!(store.token_name(&b), "annika:tokens:user:bob:Mail.Send");
}

fn failure(next_attempt: i64) -> RefreshStatus {
    RefreshStatus {
        failures: 2,
        last_error: "temporarily_unavailable".into(),
        aadsts: Some(50196),
        message: "identity provider unavailable (HTTP 429, AADSTS50196)".into(),
        transient: true,
        last_attempt: unix_now(),
        next_attempt,
    }
}

async fn due_keys_come_soonest_first_bounded_and_leave_when_unscheduled(store: SharedStore) {
    let now = unix_now();
    let (first, second, later) = (agent("A"), user("u", "B"), agent("C"));
    for (key, due) in [(&second, now - 10), (&later, now + 100), (&first, now - 30)] {
        store
            .put(key, &Write::token(&record(key, "t", 3600, 1), due))
            .await
            .unwrap();
    }
    assert_eq!(
        store.due(now, 10).await.unwrap().keys,
        vec![first.clone(), second.clone()]
    );
    assert_eq!(store.due(now, 1).await.unwrap().keys, vec![first.clone()]);
    store
        .unschedule(std::slice::from_ref(&first), Forget::Schedule)
        .await
        .unwrap();
    assert_eq!(store.due(now, 10).await.unwrap().keys, vec![second.clone()]);
    assert!(
        store.get(&first).await.unwrap().is_some(),
        "unscheduled, still stored"
    );
    assert_eq!(
        store.due(now + 100, 10).await.unwrap().keys,
        vec![second, later]
    );
}

async fn a_failure_status_is_kept_and_schedules_the_retry(store: SharedStore) {
    let now = unix_now();
    let (failed, fine) = (agent("A"), agent("B"));
    for key in [&failed, &fine] {
        store
            .put(key, &Write::token(&record(key, "t", 3600, 1), now + 3000))
            .await
            .unwrap();
    }
    // One value: failure() reads the clock, and a second may tick between two calls.
    let status = failure(now + 60);
    store.put_status(&failed, &status).await.unwrap();
    assert_eq!(
        store
            .statuses(&[failed.clone(), fine.clone()])
            .await
            .unwrap(),
        vec![Some(status), None]
    );
    assert!(store.due(now + 59, 10).await.unwrap().keys.is_empty());
    assert_eq!(
        store.due(now + 60, 10).await.unwrap().keys,
        vec![failed.clone()]
    );
    // The next successful write clears it.
    store
        .put(
            &failed,
            &Write::token(&record(&failed, "new", 3600, 2), now + 3000),
        )
        .await
        .unwrap();
    assert_eq!(store.status(&failed).await.unwrap(), None);
}

async fn a_lease_is_held_by_one_owner_until_released_or_expired(store: SharedStore) {
    let key = agent("User.Read");
    let ttl = Duration::from_secs(30);
    assert!(!store.lease_held(&key).await.unwrap());
    assert!(store.try_lease(&key, "a", ttl).await.unwrap());
    assert!(!store.try_lease(&key, "b", ttl).await.unwrap());
    assert!(store.lease_held(&key).await.unwrap());
    assert!(!store.renew_lease(&key, "b", ttl).await.unwrap(), "not b's");
    assert!(store.renew_lease(&key, "a", ttl).await.unwrap());
    store.release_lease(&key, "b").await.unwrap();
    assert!(
        store.lease_held(&key).await.unwrap(),
        "b cannot release a's lease"
    );
    store.release_lease(&key, "a").await.unwrap();
    assert!(!store.lease_held(&key).await.unwrap());
    let short = Duration::from_millis(50);
    assert!(store.try_lease(&key, "b", short).await.unwrap());
    // Leases expire in real time (Redis's PX); wait until b's has.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store.try_lease(&key, "c", ttl).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "b's lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !store.renew_lease(&key, "b", ttl).await.unwrap(),
        "b's lease is over"
    );
}

async fn grants_are_kept_apart_from_tokens(store: SharedStore) {
    let key = user("alice", "User.Read");
    assert_eq!(store.grant(&key).await.unwrap(), Grant::Missing);
    store.put_grant(&key, &Secret::new("0.rt")).await.unwrap();
    assert_eq!(
        store.grant(&key).await.unwrap(),
        Grant::Present(Secret::new("0.rt"))
    );
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "a grant is not a token"
    );
    store.delete_grant(&key).await.unwrap();
    assert_eq!(store.grant(&key).await.unwrap(), Grant::Missing);
}

async fn reads_start_the_idle_clock_once(store: SharedStore) {
    let (read, unread) = (agent("A"), agent("B"));
    let now = unix_now();
    store.mark_read(&read, now - 500).await.unwrap();
    assert_eq!(
        store
            .last_reads(&[read.clone(), unread.clone()], now)
            .await
            .unwrap(),
        vec![now - 500, now]
    );
    assert_eq!(
        store.last_reads(&[unread], now + 50).await.unwrap(),
        vec![now],
        "a key first seen keeps the time it was first seen"
    );
}

async fn forced_refreshes_are_counted_per_caller_and_key(store: SharedStore) {
    let (a, b) = (agent("A"), agent("B"));
    for expected in 1..=3 {
        let (count, retry_after) = store.count_refresh("app", &a, 60).await.unwrap();
        assert_eq!(count, expected);
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(store.count_refresh("other", &a, 60).await.unwrap().0, 1);
    assert_eq!(store.count_refresh("app", &b, 60).await.unwrap().0, 1);
}

async fn counts_and_the_soonest_expiry_follow_the_stored_tokens(store: SharedStore) {
    assert_eq!(store.active_count().await.unwrap(), 0);
    assert_eq!(store.soonest_expiry().await.unwrap(), None);
    let (a, b) = (agent("A"), agent("B"));
    let ra = record(&a, "ta", 200, 1);
    let rb = record(&b, "tb", 100, 1);
    store
        .put(&a, &Write::token(&ra, unix_now() + 100))
        .await
        .unwrap();
    store
        .put(&b, &Write::token(&rb, unix_now() + 50))
        .await
        .unwrap();
    assert_eq!(store.active_count().await.unwrap(), 2);
    assert_eq!(store.soonest_expiry().await.unwrap(), Some(rb.expires_on));
    store.ping().await.unwrap();
}
