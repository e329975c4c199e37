//! The refresh lease of one key in the store: whoever holds it is the one
//! instance asking the identity provider for that key (or storing a user's grant).

use super::{RefreshError, TokenService};
use crate::domain::TokenKey;
use crate::store::{Grant, SharedStore, StoreError, TokenRecord};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The write that ended the work released it already.
    released: AtomicBool,
}

/// What the holder of a fresh lease finds under it: the token and its refresh
/// token.
pub(super) type UnderLease = (Lease, Option<TokenRecord>, Grant);

impl TokenService {
    fn lease(&self, key: &TokenKey, owner: String) -> Lease {
        Lease {
            store: self.0.store.clone(),
            key: key.clone(),
            owner,
            released: AtomicBool::new(false),
        }
    }

    /// The lease of `key` and what is under it, unless another owner holds it.
    pub(super) async fn lease_and_read(
        &self,
        key: &TokenKey,
    ) -> Result<Option<UnderLease>, StoreError> {
        let owner = self.0.leases.next_owner();
        let read = self.0.store.lease_and_read(key, &owner, LEASE_TTL).await?;
        Ok(read.map(|(record, grant)| (self.lease(key, owner), record, grant)))
    }

    /// The lease of `key`, waiting (until `deadline`) while another owner holds it.
    pub(super) async fn take_lease(
        &self,
        key: &TokenKey,
        deadline: Instant,
    ) -> Result<Lease, RefreshError> {
        loop {
            let owner = self.0.leases.next_owner();
            if self.0.store.try_lease(key, &owner, LEASE_TTL).await? {
                return Ok(self.lease(key, owner));
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
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Notes that a write released the lease with the token (`Write::release`).
    pub fn released_by_write(&self) {
        self.released.store(true, Ordering::Relaxed);
    }

    /// Runs `work` while renewing the lease, then releases it unless the work's
    /// write did.
    pub(super) async fn hold<T>(
        &self,
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
        if !self.released.load(Ordering::Relaxed)
            && let Err(error) = self.store.release_lease(&self.key, &self.owner).await
        {
            // It expires by itself within LEASE_TTL.
            tracing::warn!(%error, "could not release a refresh lease");
        }
        result
    }
}
