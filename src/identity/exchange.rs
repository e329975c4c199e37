//! Exchange tokens (the agent identity's T1 and T2, a managed identity's
//! assertion): credentials, not served tokens. Held in process memory only,
//! reused until 5 minutes before they expire, fetched single-flight: one
//! request per lifetime per instance, however many scopes are acquired at once.
//! A failed fetch is one failure for everyone who was waiting on it, and none
//! asks again before the `Retry-After` it came with.

use super::{Acquired, IdpError};
use crate::clock::Clock;
use crate::secret::Secret;
use std::future::Future;

/// A held exchange token is fetched again once it has less than this left.
const RENEW_BEFORE_SECS: i64 = 300;

#[derive(Default)]
struct Held {
    /// The token and its `expires_on`.
    token: Option<(Secret, i64)>,
    /// Fetches finished so far: a waiter that saw fewer when it arrived knows
    /// a fetch ended while it waited.
    fetches: u64,
    /// The last fetch's failure, and until when it stands without asking again.
    failure: Option<(IdpError, i64)>,
}

pub struct Exchange {
    /// A tokio mutex: whoever finds the token stale fetches while the others
    /// wait for that one answer.
    held: tokio::sync::Mutex<Held>,
    /// `Held::fetches`, readable without the lock.
    fetches: std::sync::atomic::AtomicU64,
    clock: Clock,
}

impl Exchange {
    pub fn new(clock: Clock) -> Self {
        Self {
            held: tokio::sync::Mutex::new(Held::default()),
            fetches: std::sync::atomic::AtomicU64::new(0),
            clock,
        }
    }

    /// The held token, or a new one from `fetch` (its error as
    /// [`IdpError::Credential`]).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Secret, IdpError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Acquired, IdpError>>,
    {
        use std::sync::atomic::Ordering;
        let arrived_after = self.fetches.load(Ordering::Acquire);
        let mut held = self.held.lock().await;
        let now = self.clock.now();
        if let Some((token, expires_on)) = &held.token
            && expires_on - now > RENEW_BEFORE_SECS
        {
            return Ok(token.clone());
        }
        if let Some((error, until)) = &held.failure
            && (held.fetches > arrived_after || now < *until)
        {
            return Err(error.clone());
        }
        // An exchange token is the agent's own credential: its failure is never a
        // verdict on a user's grant.
        let result = fetch().await.map_err(IdpError::credential);
        held.fetches += 1;
        self.fetches.store(held.fetches, Ordering::Release);
        match result {
            Ok(fresh) => {
                held.token = Some((fresh.token.clone(), fresh.expires_on));
                held.failure = None;
                Ok(fresh.token)
            }
            Err(error) => {
                let until = now + error.retry_after().unwrap_or(0) as i64;
                held.failure = Some((error.clone(), until));
                Err(error)
            }
        }
    }

    /// Drops the held token: the identity provider refused it.
    pub async fn forget(&self) {
        self.held.lock().await.token = None;
    }
}

/// Holds no token in `Debug`.
impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exchange(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn acquired(token: &str, expires_on: i64) -> Acquired {
        Acquired {
            token: Secret::new(token),
            expires_on,
            refresh_in: None,
            refresh_token: None,
        }
    }

    /// Twenty callers at once: one fetch, whether it succeeds or fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch_and_its_failure() {
        for fail in [false, true] {
            let exchange = Arc::new(Exchange::new(Clock::System));
            let fetches = Arc::new(AtomicUsize::new(0));
            let started = Arc::new(AtomicUsize::new(0));
            let (gate, opened) = tokio::sync::watch::channel(false);
            let callers: Vec<_> = (0..20)
                .map(|_| {
                    let (exchange, fetches, started, mut opened) = (
                        exchange.clone(),
                        fetches.clone(),
                        started.clone(),
                        opened.clone(),
                    );
                    tokio::spawn(async move {
                        // In the same poll as get's first look at the fetch count.
                        started.fetch_add(1, Ordering::SeqCst);
                        exchange
                            .get(|| async move {
                                fetches.fetch_add(1, Ordering::SeqCst);
                                let _ = opened.wait_for(|open| *open).await;
                                match fail {
                                    false => Ok(acquired("t1", Clock::System.now() + 3600)),
                                    true => Err(IdpError::Unreachable("down".into())),
                                }
                            })
                            .await
                    })
                })
                .collect();
            // Every caller has arrived before the first fetch ends.
            while started.load(Ordering::SeqCst) < 20 {
                tokio::task::yield_now().await;
            }
            gate.send_replace(true);
            for caller in callers {
                assert_eq!(caller.await.unwrap().is_ok(), !fail);
            }
            assert_eq!(fetches.load(Ordering::SeqCst), 1, "fail={fail}");
        }
    }

    #[tokio::test]
    async fn a_failure_with_retry_after_stands_until_then_and_forget_drops_the_token() {
        let clock = crate::clock::ManualClock::starting_now();
        let exchange = Exchange::new(clock.clock());
        let throttled = || async {
            Err(IdpError::Unavailable {
                status: 429,
                retry_after: Some(30),
                aadsts: Some(50196),
            })
        };
        assert!(exchange.get(throttled).await.is_err());
        let never = || async { unreachable_fetch() };
        let within = exchange.get(never).await.unwrap_err();
        assert!(
            matches!(&within, IdpError::Credential(inner)
                if matches!(**inner, IdpError::Unavailable { status: 429, .. })),
            "within Retry-After, as a credential error: {within}"
        );
        clock.advance(std::time::Duration::from_secs(31));
        let now = clock.clock().now();
        let token = exchange
            .get(|| async move { Ok(acquired("t1", now + 3600)) })
            .await
            .unwrap();
        assert_eq!(token.expose(), "t1");
        assert_eq!(exchange.get(never).await.unwrap().expose(), "t1", "held");
        exchange.forget().await;
        let token = exchange
            .get(|| async move { Ok(acquired("t1b", now + 3600)) })
            .await
            .unwrap();
        assert_eq!(token.expose(), "t1b");
    }

    fn unreachable_fetch() -> Result<Acquired, IdpError> {
        Err(IdpError::Protocol("this fetch must not run".into()))
    }
}
