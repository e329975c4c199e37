//! Exchange tokens (the agent identity's T1 and T2, a managed identity's
//! assertion): credentials, not served tokens. Held in process memory only,
//! reused until 5 minutes before they expire, fetched single-flight: one
//! request per lifetime per instance, however many scopes are acquired at once.

use super::{Acquired, IdpError};
use crate::clock::Clock;
use crate::secret::Secret;
use std::future::Future;

/// A held exchange token is fetched again once it has less than this left.
const RENEW_BEFORE_SECS: i64 = 300;

pub struct Exchange {
    /// The token and its `expires_on`. A tokio mutex: whoever finds it stale
    /// fetches while the others wait for that one answer.
    held: tokio::sync::Mutex<Option<(Secret, i64)>>,
    clock: Clock,
}

impl Exchange {
    pub fn new(clock: Clock) -> Self {
        Self {
            held: tokio::sync::Mutex::new(None),
            clock,
        }
    }

    /// The held token, or a new one from `fetch`.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Secret, IdpError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Acquired, IdpError>>,
    {
        let mut held = self.held.lock().await;
        if let Some((token, expires_on)) = held.as_ref()
            && expires_on - self.clock.now() > RENEW_BEFORE_SECS
        {
            return Ok(token.clone());
        }
        let fresh = fetch().await?;
        *held = Some((fresh.token.clone(), fresh.expires_on));
        Ok(fresh.token)
    }
}

/// Holds no token in `Debug`.
impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exchange(<redacted>)")
    }
}
