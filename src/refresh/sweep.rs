//! The sweep: timer trigger, internal timer and `handler sweep` all run this.
//! Its cost follows the due tokens, not the stored ones: one range query on the
//! schedule, one MGET of the due keys, then the refreshes themselves.

use super::flight::{Landed, replaces};
use super::{RefreshError, TokenService, due_at};
use crate::audit::{Action, Outcome};
use crate::domain::TokenKey;
use crate::secret::Secret;
use crate::store::{Forget, StoreError, TokenRecord};
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashSet;
use std::time::Instant;

/// At most this many due keys per sweep; the rest stay due for the next one.
const MAX_DUE_PER_SWEEP: usize = 10_000;
/// Active-set members checked per step for keys that expired unseen and for
/// tokens another writer stored; at most [`RECONCILE_STEPS`] steps per sweep, so
/// a sweep looks at up to 2,000 members and a few hundred are all adopted by the
/// first sweep.
const RECONCILE_PER_STEP: usize = 500;
const RECONCILE_STEPS: usize = 4;

/// What one sweep did; printed by `handler sweep` and logged by the timers.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SweepSummary {
    /// Keys this sweep tried to refresh or acquire.
    pub due: usize,
    /// Refreshed by a request from this sweep.
    pub refreshed: usize,
    pub failed: usize,
    /// Refreshed meanwhile by another instance or trigger holding the lease.
    pub skipped_locked: usize,
    /// Not tried: an earlier failure's backoff has not elapsed.
    pub backing_off: usize,
    /// On-demand tokens nobody read within `TOKEN_IDLE_SECS`: no longer refreshed.
    pub idle: usize,
    /// Due user tokens with no refresh token stored: no longer scheduled.
    pub no_grant: usize,
    /// ... of which the refresh token could not be decrypted (key changed).
    pub undecryptable: usize,
    /// User tokens whose refresh token the identity provider rejected: removed.
    pub revoked: usize,
    /// Index entries whose token had expired, removed.
    pub pruned: usize,
    /// Tokens another writer stored, indexed and scheduled from now on.
    pub adopted: usize,
    pub duration_ms: u64,
    /// Requests this sweep sent to Redis (a pipeline or script counts once);
    /// concurrent requests of other callers are counted too.
    pub round_trips: u64,
}

impl SweepSummary {
    pub fn line(&self) -> String {
        format!(
            "sweep: due={} refreshed={} failed={} skipped_locked={} backing_off={} idle={} no_grant={} undecryptable={} revoked={} pruned={} adopted={} duration_ms={} round_trips={}",
            self.due,
            self.refreshed,
            self.failed,
            self.skipped_locked,
            self.backing_off,
            self.idle,
            self.no_grant,
            self.undecryptable,
            self.revoked,
            self.pruned,
            self.adopted,
            self.duration_ms,
            self.round_trips
        )
    }
}

/// How one due key ended.
enum Swept {
    Refreshed,
    Shared,
    BackingOff,
    Failed,
    NoGrant { key: TokenKey, undecryptable: bool },
    Revoked,
}

impl TokenService {
    /// Refreshes every due token and acquires missing warm scopes, at most
    /// `TOKEN_REFRESH_CONCURRENCY` at a time; drops idle on-demand tokens from the
    /// schedule and expired keys from the index. Fails only when the store cannot
    /// be read.
    pub async fn sweep(&self) -> Result<SweepSummary, StoreError> {
        let started = Instant::now();
        let trips_before = self.0.store.round_trips();
        let now = self.0.clock.now();
        let settings = self.settings();
        let mut summary = SweepSummary::default();

        // First the active set: tokens another writer stored are scheduled, so
        // those already due are refreshed by this very sweep.
        let before = settings.refresh_before_secs;
        let due_rule = move |record: &TokenRecord| {
            let stored_at = match record.stored_at {
                at if at > 0 && at <= now => at,
                _ => now,
            };
            due_at(stored_at, record.expires_on, None, before)
        };
        for _ in 0..RECONCILE_STEPS {
            let step = self
                .0
                .store
                .reconcile_step(RECONCILE_PER_STEP, &due_rule)
                .await?;
            summary.pruned += step.pruned;
            summary.adopted += step.adopted;
            if step.wrapped {
                break;
            }
        }

        let due = self.0.store.due(now, MAX_DUE_PER_SWEEP).await?;
        let (due, dropped) = (due.keys, due.dropped);
        let warm: Vec<TokenKey> = settings
            .warm_scopes
            .iter()
            .map(|s| TokenKey::Agent(s.clone()))
            .collect();
        // One MGET for the due keys and the warm scopes together.
        let mut wanted = due.clone();
        wanted.extend(warm.iter().cloned());
        let records = self.0.store.get_many(&wanted).await?;
        let (due_records, warm_records) = records.split_at(due.len());

        let mut work: Vec<(TokenKey, Option<Secret>)> = Vec::new();
        let mut gone = Vec::new();
        let mut stop_refreshing = Vec::new();
        let mut on_demand = Vec::new();
        for (key, record) in due.into_iter().zip(due_records) {
            match (&key, record) {
                (_, None) if self.is_warm(&key) => work.push((key, None)),
                (_, None) => gone.push(key),
                (TokenKey::User(..), Some(record)) => work.push((key, Some(record.token.clone()))),
                (TokenKey::Agent(_), Some(record)) if self.is_warm(&key) => {
                    work.push((key, Some(record.token.clone())))
                }
                (TokenKey::Agent(_), Some(record)) => on_demand.push((key, record.token.clone())),
            }
        }
        if !on_demand.is_empty() {
            let on_demand_keys: Vec<TokenKey> = on_demand.iter().map(|(k, _)| k.clone()).collect();
            let last_reads = self.0.store.last_reads(&on_demand_keys, now).await?;
            for ((key, token), last_read) in on_demand.into_iter().zip(last_reads) {
                if now - last_read > settings.idle_secs as i64 {
                    summary.idle += 1;
                    stop_refreshing.push(key);
                } else {
                    work.push((key, Some(token)));
                }
            }
        }
        let queued: HashSet<TokenKey> = work.iter().map(|(k, _)| k.clone()).collect();
        for (key, record) in warm.into_iter().zip(warm_records) {
            if record.is_none() && !queued.contains(&key) {
                work.push((key, None));
            }
        }

        summary.pruned += gone.len() + dropped;
        self.0.store.unschedule(&gone, Forget::Everywhere).await?;
        self.0
            .store
            .unschedule(&stop_refreshing, Forget::Schedule)
            .await?;

        summary.due = work.len();
        let results: Vec<Swept> = futures::stream::iter(work)
            .map(|(key, seen)| self.refresh_due(key, seen))
            .buffer_unordered(settings.concurrency)
            .collect()
            .await;
        let mut ungranted = Vec::new();
        for result in results {
            match result {
                Swept::Refreshed => summary.refreshed += 1,
                Swept::Shared => summary.skipped_locked += 1,
                Swept::BackingOff => summary.backing_off += 1,
                Swept::Failed => summary.failed += 1,
                Swept::Revoked => summary.revoked += 1,
                Swept::NoGrant { key, undecryptable } => {
                    summary.no_grant += 1;
                    summary.undecryptable += usize::from(undecryptable);
                    ungranted.push(key);
                }
            }
        }
        // Nothing to refresh them with: served until they expire, not retried.
        self.0
            .store
            .unschedule(&ungranted, Forget::Schedule)
            .await?;
        summary.duration_ms = started.elapsed().as_millis() as u64;
        self.0
            .metrics
            .sweep_seconds
            .observe(started.elapsed().as_secs_f64());
        summary.round_trips = self.0.store.round_trips() - trips_before;
        Ok(summary)
    }

    /// One due key: refreshed unless someone already replaced `seen`, audited.
    async fn refresh_due(&self, key: TokenKey, seen: Option<Secret>) -> Swept {
        // Anything but the token listed as due means someone refreshed it.
        let result = self.flight(&key, Instant::now(), replaces(seen)).await;
        let (outcome, token) = match &result {
            Ok(Landed { record, .. }) => (Outcome::Ok, Some(record.token.fingerprint())),
            Err(_) => (Outcome::Failed, None),
        };
        self.0
            .audit
            .record("sweep", None, Action::Refresh, &key, outcome, token)
            .await;
        match result {
            Ok(Landed {
                requested: true, ..
            }) => Swept::Refreshed,
            Ok(Landed {
                requested: false, ..
            }) => Swept::Shared,
            Err(RefreshError::BackingOff { .. }) => Swept::BackingOff,
            Err(RefreshError::NoGrant { undecryptable }) => Swept::NoGrant { key, undecryptable },
            Err(RefreshError::GrantRevoked) => Swept::Revoked,
            Err(error) => {
                tracing::warn!(%error, scope = %key.scope(), "sweep could not refresh a token");
                Swept::Failed
            }
        }
    }
}
