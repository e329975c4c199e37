//! Per-user grants: storing a user's tokens (on-behalf-of exchange, or a grant
//! obtained elsewhere), keeping their refresh tokens sealed under their own key,
//! and removing them when the identity provider revokes them.

use super::{LEASE_TTL, LEASE_WAIT, RefreshError, Refresher};
use crate::callers::Outcome;
use crate::clock::{unix_now, unix_now_ms};
use crate::domain::TokenKey;
use crate::identity::{Acquired, IdpError};
use crate::secret::Secret;
use crate::store::TokenRecord;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a `PUT` brings for a user.
pub enum UserGrant {
    /// The user's token for this app, to exchange on behalf of the user.
    Assertion(Secret),
    /// Tokens obtained elsewhere (an app's sign-in flow).
    Tokens {
        access_token: Secret,
        expires_on: i64,
        refresh_token: Option<Secret>,
    },
}

/// How a token came to be, recorded in its metadata.
#[derive(Clone, Copy)]
pub(super) enum Acquisition {
    Agent,
    UserRefresh,
    OnBehalfOf,
    External,
}

impl Acquisition {
    pub(super) fn acquired_by(self) -> &'static str {
        match self {
            // The seed's value: applications reading Redis may match on it.
            Self::Agent => "agent_auth_manager",
            Self::UserRefresh | Self::OnBehalfOf | Self::External => "user_grant",
        }
    }

    pub(super) fn flow(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::UserRefresh => "refresh_token",
            Self::OnBehalfOf => "on_behalf_of",
            Self::External => "external",
        }
    }
}

/// A stored refresh token, as far as it can be read.
pub(super) enum Grant {
    Present(Secret),
    Missing,
    /// Sealed with another `TOKEN_ENCRYPTION_KEY` (or damaged): treated as missing.
    Undecryptable,
}

impl Grant {
    pub(super) fn present(self) -> Option<Secret> {
        match self {
            Self::Present(secret) => Some(secret),
            _ => None,
        }
    }
}

impl Refresher {
    pub(super) async fn read_grant(&self, key: &TokenKey) -> Result<Grant, RefreshError> {
        let Some(stored) = self.store.get_secret(key).await? else {
            return Ok(Grant::Missing);
        };
        match self
            .sealer
            .open(&self.store.keys().secret(key), stored.expose())
        {
            Ok(secret) => Ok(Grant::Present(secret)),
            Err(why) => {
                self.undecryptable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%why, scope = %key.scope(), user = ?key.user(), "stored refresh token cannot be decrypted; treating it as missing");
                Ok(Grant::Undecryptable)
            }
        }
    }

    pub(super) async fn write_grant(
        &self,
        key: &TokenKey,
        refresh_token: &Secret,
    ) -> Result<(), RefreshError> {
        let sealed = self
            .sealer
            .seal(&self.store.keys().secret(key), refresh_token);
        self.store.put_secret(key, &Secret::new(sealed)).await?;
        Ok(())
    }

    /// Removes a user's token and grant after the identity provider rejected the
    /// grant, and audits it.
    pub(super) async fn revoke(
        &self,
        key: &TokenKey,
        error: &IdpError,
    ) -> Result<(), RefreshError> {
        self.delete(key).await?;
        tracing::warn!(%error, scope = %key.scope(), user = ?key.user(), "user grant rejected; token and refresh token removed");
        self.audit("refresher", "revoke", key, Outcome::Ok, None)
            .await;
        Ok(())
    }

    /// Stores a user's grant under `key` (a user key): exchanges an assertion on
    /// behalf of the user, or stores tokens obtained elsewhere. Holds the key's
    /// lease meanwhile so a refresh in flight cannot put back the old grant.
    pub async fn store_user_grant(
        &self,
        key: &TokenKey,
        grant: UserGrant,
    ) -> Result<TokenRecord, RefreshError> {
        let owner = format!(
            "{}-put-{}",
            self.instance,
            self.leases_taken.fetch_add(1, Ordering::Relaxed)
        );
        let deadline = Instant::now() + LEASE_WAIT;
        while !self.store.try_lease(key, &owner, LEASE_TTL).await? {
            self.wait_for_lease(key, deadline).await?;
        }
        // A stored grant leaves this instance's cache in `store_acquired`.
        let result = self.exchange_and_store(key, grant).await;
        if let Err(error) = self.store.release_lease(key, &owner).await {
            tracing::warn!(%error, "could not release a refresh lease");
        }
        result
    }

    async fn exchange_and_store(
        &self,
        key: &TokenKey,
        grant: UserGrant,
    ) -> Result<TokenRecord, RefreshError> {
        let requested_at_ms = unix_now_ms();
        let (acquired, how) = match grant {
            UserGrant::Assertion(assertion) => {
                let result = self.identity.on_behalf_of(key.scope(), &assertion).await;
                self.saw_idp(Acquisition::OnBehalfOf.flow(), result.as_ref().map(|_| ()));
                let acquired = result?;
                (acquired, Acquisition::OnBehalfOf)
            }
            UserGrant::Tokens {
                access_token,
                expires_on,
                refresh_token,
            } => {
                if refresh_token.is_none() {
                    // A new grant without a refresh token replaces any older one.
                    self.store.delete_secret(key).await?;
                }
                let acquired = Acquired {
                    token: access_token,
                    expires_on,
                    refresh_in: None,
                    refresh_token,
                };
                (acquired, Acquisition::External)
            }
        };
        if acquired.expires_on <= unix_now() {
            return Err(RefreshError::Expired);
        }
        self.store_acquired(key, acquired, requested_at_ms, how)
            .await
    }
}
