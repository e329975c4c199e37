//! One identity-provider request per key at a time: the in-process flight, the
//! request under the Redis lease, and what is stored after it (the token, or the
//! failure that every instance then backs off from).

use super::grants::Acquisition;
use super::lease::{LEASE_WAIT, Lease};
use super::{MAX_BACKOFF, RefreshError, TokenService, backoff, due_at};
use crate::cache::Served;
use crate::domain::{Scope, TokenKey};
use crate::identity::{Acquired, IdpError};
use crate::secret::Secret;
use crate::store::{Grant, PutOutcome, RefreshStatus, TokenMetadata, TokenRecord, Write};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token as a flight returns it.
#[derive(Debug)]
pub(super) struct Landed {
    pub record: TokenRecord,
    /// Its served form, when this flight wrote it (and put it in the cache).
    pub served: Option<Arc<Served>>,
    /// Whether this flight asked the identity provider for it, or found it stored
    /// by someone else.
    pub requested: bool,
}

impl Landed {
    fn found(record: TokenRecord) -> Self {
        Self {
            record,
            served: None,
            requested: false,
        }
    }
}

/// Accepts a stored token once it is not the one a caller saw when it arrived.
pub(super) fn replaces(
    before: Option<Secret>,
) -> impl Fn(&TokenRecord) -> bool + Send + Sync + 'static {
    move |record| before.as_ref() != Some(&record.token)
}

impl TokenService {
    /// Runs one identity-provider request for `key` unless `good_enough` accepts
    /// what is stored (now, or once another instance's refresh lands).
    ///
    /// The work runs in its own task: a caller that goes away (a client hanging up)
    /// does not cancel a request the other waiters depend on.
    pub(super) async fn flight(
        &self,
        key: &TokenKey,
        arrived: Instant,
        good_enough: impl Fn(&TokenRecord) -> bool + Send + Sync + 'static,
    ) -> Result<Landed, RefreshError> {
        let this = self.clone();
        let key = key.clone();
        let task = tokio::spawn(async move {
            let flights = &this.0.flights;
            let slot = flights.slot(&key);
            let result = {
                let mut flight = slot.lock().await;
                this.fly(&mut flight, &key, arrived, &good_enough).await
            };
            flights.release(&key, slot);
            result
        });
        task.await.unwrap_or(Err(RefreshError::Aborted))
    }

    async fn fly(
        &self,
        flight: &mut Flight,
        key: &TokenKey,
        arrived: Instant,
        good_enough: &(impl Fn(&TokenRecord) -> bool + Send + Sync),
    ) -> Result<Landed, RefreshError> {
        // The failure of a request this caller waited for is its answer too.
        if let Some((finished, error)) = &flight.failure
            && *finished >= arrived
        {
            return Err(error.clone().into());
        }
        let deadline = Instant::now() + LEASE_WAIT;
        loop {
            let (stored, status) = self.0.store.state(key).await?;
            if let Some(record) = stored.filter(|r| good_enough(r)) {
                return Ok(Landed::found(record));
            }
            if let Some(status) = &status {
                let wait = status.next_attempt - self.0.clock.now();
                if wait > 0 {
                    return Err(RefreshError::BackingOff {
                        retry_after: wait as u64,
                        status: status.clone(),
                    });
                }
            }
            if let Some((lease, stored, grant)) = self.lease_and_read(key).await? {
                let failures = status.map_or(0, |s| s.failures);
                let asking = self.under_lease(key, stored, grant, failures, &lease, good_enough);
                let result = lease.hold(asking).await;
                flight.failure = match &result {
                    Err(RefreshError::Idp(error)) => Some((Instant::now(), error.clone())),
                    _ => None,
                };
                return result;
            }
            // Another instance is asking; its token, or its failure status, lands
            // in the store when it is done.
            self.wait_for_lease(key, deadline).await?;
        }
    }

    /// Holding the lease, with what was under it: check once more (a refresh may
    /// have landed between the first read and the lease), then ask.
    async fn under_lease(
        &self,
        key: &TokenKey,
        stored: Option<TokenRecord>,
        grant: Grant,
        failures: u32,
        lease: &Lease,
        good_enough: &(impl Fn(&TokenRecord) -> bool + Send + Sync),
    ) -> Result<Landed, RefreshError> {
        if let Some(record) = stored.filter(|r| good_enough(r)) {
            return Ok(Landed::found(record));
        }
        let started = Instant::now();
        let result = self.acquire_and_store(key, grant, failures, lease).await;
        self.0
            .metrics
            .refresh_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn acquire_and_store(
        &self,
        key: &TokenKey,
        grant: Grant,
        failures: u32,
        lease: &Lease,
    ) -> Result<Landed, RefreshError> {
        let requested_at_ms = self.0.clock.now_ms();
        let identity = &self.0.identity;
        let (result, how) = match key {
            TokenKey::Agent(scope) => {
                let refresh_token = match identity.uses_refresh_tokens() {
                    true => self.usable(grant),
                    false => None,
                };
                (
                    identity.acquire(scope, refresh_token.as_ref()).await,
                    Acquisition::Agent,
                )
            }
            TokenKey::User(_, scope) => {
                let undecryptable = grant == Grant::Undecryptable;
                let Some(refresh_token) = self.usable(grant) else {
                    return Err(RefreshError::NoGrant { undecryptable });
                };
                (
                    self.refresh_user(key, scope, refresh_token).await,
                    Acquisition::UserRefresh,
                )
            }
        };
        match result {
            Ok(acquired) => {
                self.store_acquired(key, acquired, requested_at_ms, how, Some(lease))
                    .await
            }
            Err(error) if error.is_invalid_grant() && matches!(key, TokenKey::User(..)) => {
                if self.granted_to_another_client(key).await {
                    // Entra refuses a refresh token presented by a client it was
                    // not issued to: that says nothing about the grant itself.
                    tracing::warn!(%error, scope = %key.scope(), user = ?key.user(), "the user's grant was issued to another client than the one acting now (Entra Agent ID switched on or off?): kept; store a new grant with PUT");
                    self.record_failure(key, &error, failures).await;
                    return Err(error.into());
                }
                // Revoked, expired, password changed or consent withdrawn: this grant
                // will never work again, and the user's token must not outlive it.
                self.revoke(key, &error).await?;
                Err(RefreshError::GrantRevoked)
            }
            Err(error) => {
                self.record_failure(key, &error, failures).await;
                Err(error.into())
            }
        }
    }

    /// Redeems a user's refresh token. When the identity provider says it is no
    /// longer valid, the one stored now is read again: another writer may have
    /// rotated it meanwhile (a refresh token is used once), and then the new one
    /// is redeemed instead. Only a rejection of the current one is final.
    async fn refresh_user(
        &self,
        key: &TokenKey,
        scope: &Scope,
        refresh_token: Secret,
    ) -> Result<Acquired, IdpError> {
        let result = self.0.identity.refresh_user(scope, &refresh_token).await;
        if !result.as_ref().is_err_and(IdpError::is_invalid_grant) {
            return result;
        }
        match self.0.store.grant(key).await {
            Ok(Grant::Present(current)) if current != refresh_token => {
                tracing::info!(scope = %scope, user = ?key.user(), "refresh token rotated by another writer meanwhile; redeeming the current one");
                self.0.identity.refresh_user(scope, &current).await
            }
            _ => result,
        }
    }

    /// Whether the stored token was acquired by another client than the one that
    /// acts for users now (the app registration, or an agent identity).
    async fn granted_to_another_client(&self, key: &TokenKey) -> bool {
        match self.0.store.get(key).await {
            Ok(Some(record)) => {
                record.metadata.agent_identity.as_deref() != self.0.identity.agent_identity()
            }
            _ => false,
        }
    }

    /// The refresh token to redeem, counting those that cannot be opened.
    fn usable(&self, grant: Grant) -> Option<Secret> {
        if grant == Grant::Undecryptable {
            self.0.undecryptable.fetch_add(1, Ordering::Relaxed);
        }
        grant.present()
    }

    /// Writes what the identity provider issued: the token under its key with its
    /// refresh schedule and the refresh token (rotated when a new one came back)
    /// under its secret key, then the served form into this instance's cache. The
    /// write releases `lease`.
    pub(super) async fn store_acquired(
        &self,
        key: &TokenKey,
        acquired: Acquired,
        requested_at_ms: i64,
        how: Acquisition,
        lease: Option<&Lease>,
    ) -> Result<Landed, RefreshError> {
        let stored_at = self.0.clock.now();
        let flow = match how {
            Acquisition::Agent => self.0.identity.flow_name(),
            other => other.flow(),
        };
        let mut record = TokenRecord {
            token: acquired.token,
            expires_on: acquired.expires_on,
            scope: key.scope().as_str().to_owned(),
            stored_at,
            user_id: key.user().map(|u| u.as_str().to_owned()),
            metadata: TokenMetadata {
                acquired_by: how.acquired_by().to_owned(),
                client_id: self.0.identity.client_id().to_owned(),
                flow: flow.to_owned(),
                agent_identity: self.0.identity.agent_identity().map(str::to_owned),
            },
            requested_at_ms,
            refresh_count: 0,
        };
        let due = due_at(
            stored_at,
            record.expires_on,
            acquired.refresh_in,
            self.settings().refresh_before_secs,
        );
        // Taken before the write: a change of this key heard of meanwhile (another
        // instance's write) keeps this one out of the cache.
        let ticket = self.0.cache.as_ref().map(|c| c.ticket());
        let write = Write {
            record: &record,
            due_at: due,
            grant: acquired.refresh_token.as_ref(),
            release: lease.map(Lease::owner),
        };
        let outcome = self.0.store.put(key, &write).await?;
        if let Some(lease) = lease {
            lease.released_by_write();
        }
        match outcome {
            PutOutcome::Written { refresh_count } => {
                record.refresh_count = refresh_count;
                let served = Arc::new(Served::new(&record));
                if let (Some(cache), Some(ticket)) = (&self.0.cache, ticket) {
                    cache.written(key, served.clone(), ticket);
                }
                Ok(Landed {
                    record,
                    served: Some(served),
                    requested: true,
                })
            }
            // A request that began later (another instance whose lease outlived
            // ours) already stored its token; serve that one.
            PutOutcome::Superseded => {
                self.forget(key);
                let stored = self.0.store.get(key).await?.unwrap_or(record);
                Ok(Landed {
                    record: stored,
                    served: None,
                    requested: true,
                })
            }
        }
    }

    /// Keeps the old token (it is still served while valid), and records when the
    /// key may be tried again, for every instance to see.
    async fn record_failure(&self, key: &TokenKey, error: &IdpError, failures_before: u32) {
        let failures = failures_before + 1;
        let delay = backoff(
            failures,
            self.settings().backoff_base,
            MAX_BACKOFF,
            error.retry_after(),
        );
        let now = self.0.clock.now();
        let (last_error, aadsts) = error.summary();
        let status = RefreshStatus {
            failures,
            last_error,
            aadsts,
            message: error.to_string(),
            transient: error.is_transient(),
            last_attempt: now,
            next_attempt: now + delay.as_secs().max(1) as i64,
        };
        tracing::warn!(%error, scope = %key.scope(), failures, retry_in_secs = delay.as_secs(), "token request failed");
        if let Err(error) = self.0.store.put_status(key, &status).await {
            tracing::warn!(%error, "could not record the refresh status");
        }
    }
}

/// One in-process flight per key.
#[derive(Default)]
pub(super) struct Flights {
    // A std Mutex around the map: held only to find or drop a slot, never across an
    // await. The per-key tokio Mutex is what callers wait on.
    slots: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<Flight>>>>,
}

#[derive(Default)]
pub(super) struct Flight {
    /// The last identity-provider error for this key and when it came back,
    /// shared with the callers that were waiting for it.
    failure: Option<(Instant, IdpError)>,
}

impl Flights {
    fn slot(&self, key: &TokenKey) -> Arc<tokio::sync::Mutex<Flight>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.clone()).or_default().clone()
    }

    pub(super) fn waiters(&self, key: &TokenKey) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Every caller holds one clone; the map holds one more.
        slots.get(key).map_or(0, |slot| Arc::strong_count(slot) - 1)
    }

    pub(super) fn total_waiters(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().map(|slot| Arc::strong_count(slot) - 1).sum()
    }

    /// Drops the slot once nobody else holds it, so the map does not grow with
    /// every scope ever asked for.
    fn release(&self, key: &TokenKey, slot: Arc<tokio::sync::Mutex<Flight>>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and ours. Clones are only made under this lock.
        if Arc::strong_count(&slot) == 2 {
            slots.remove(key);
        }
    }
}
