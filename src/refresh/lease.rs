//! The refresh lease of one key in the store: whoever holds it is the one
//! instance asking the identity provider for that key (or storing a user's grant).

use super::{RefreshError, TokenService};
use crate::domain::TokenKey;
use crate::store::{SharedStore, StoreError};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a refresh lease lasts unless renewed: longer than the slowest token
/// request (the HTTP client gives up after 30 s), renewed every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(45);
/// How long a caller waits for another instance's lease to be released.
pub(super) const LEASE_WAIT: Duration = Duration::from_secs(50);

/// Owner ids for this process's leases: unique per process and per lease.
pub(super) struct Leases {
    instance: String,
    taken: AtomicU64,
}

impl Leases {
    pub fn new() -> Self {
        Self {
            instance: format!("{:016x}", rand::random::<u64>()),
            taken: AtomicU64::new(0),
        }
    }

    fn next_owner(&self) -> String {
        format!(
            "{}-{}",
            self.instance,
            self.taken.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// A lease this instance holds; [`Lease::hold`] runs the work and lets it go.
pub(super) struct Lease {
    store: SharedStore,
    key: TokenKey,
    owner: String,
}

impl TokenService {
    /// The lease of `key`, unless another owner holds it.
    pub(super) async fn try_lease(&self, key: &TokenKey) -> Result<Option<Lease>, StoreError> {
        let owner = self.0.leases.next_owner();
        Ok(self
            .0
            .store
            .try_lease(key, &owner, LEASE_TTL)
            .await?
            .then(|| Lease {
                store: self.0.store.clone(),
                key: key.clone(),
                owner,
            }))
    }

    /// The lease of `key`, waiting (until `deadline`) while another owner holds it.
    pub(super) async fn take_lease(
        &self,
        key: &TokenKey,
        deadline: Instant,
    ) -> Result<Lease, RefreshError> {
        loop {
            if let Some(lease) = self.try_lease(key).await? {
                return Ok(lease);
            }
            self.wait_for_lease(key, deadline).await?;
        }
    }

    /// Waits until nobody holds the lease of `key`; [`RefreshError::Busy`] past
    /// `deadline`.
    pub(super) async fn wait_for_lease(
        &self,
        key: &TokenKey,
        deadline: Instant,
    ) -> Result<(), RefreshError> {
        self.0.metrics.lease_waits.inc();
        let mut pause = Duration::from_millis(10);
        while self.0.store.lease_held(key).await? {
            if Instant::now() >= deadline {
                return Err(RefreshError::Busy);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Lease {
    /// Runs `work` while renewing the lease, then releases it.
    pub(super) async fn hold<T>(
        self,
        work: impl Future<Output = Result<T, RefreshError>>,
    ) -> Result<T, RefreshError> {
        let renew = async {
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                match self
                    .store
                    .renew_lease(&self.key, &self.owner, LEASE_TTL)
                    .await
                {
                    Ok(true) => {}
                    // The store still refuses an older token over a newer one, so
                    // losing the lease cannot regress the token.
                    _ => {
                        tracing::warn!(scope = %self.key.scope(), "lost the refresh lease while the request ran")
                    }
                }
            }
        };
        let result = tokio::select! {
            result = work => result,
            never = renew => never,
        };
        if let Err(error) = self.store.release_lease(&self.key, &self.owner).await {
            // It expires by itself within LEASE_TTL.
            tracing::warn!(%error, "could not release a refresh lease");
        }
        result
    }
}
