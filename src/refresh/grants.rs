//! Per-user grants: storing a user's tokens (on-behalf-of exchange, or a grant
//! obtained elsewhere), and removing them when the identity provider revokes them.

use super::lease::{LEASE_WAIT, Lease};
use super::{RefreshError, TokenService};
use crate::audit::{Action, Outcome};
use crate::domain::TokenKey;
use crate::identity::{Acquired, IdpError};
use crate::secret::Secret;
use crate::store::TokenRecord;
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

/// A user's grant as stored.
#[derive(Debug)]
pub struct Stored {
    pub record: TokenRecord,
    /// Whether a refresh token is kept with it (the token can then be refreshed).
    pub has_refresh_token: bool,
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

impl TokenService {
    /// Stores a user's grant under `key` (a user key): exchanges an assertion on
    /// behalf of the user, or stores tokens obtained elsewhere. Holds the key's
    /// lease meanwhile so a refresh in flight cannot put back the old grant.
    pub async fn store_user_grant(
        &self,
        key: &TokenKey,
        grant: UserGrant,
    ) -> Result<Stored, RefreshError> {
        let lease = self.take_lease(key, Instant::now() + LEASE_WAIT).await?;
        lease
            .hold(self.exchange_and_store(key, grant, &lease))
            .await
    }

    async fn exchange_and_store(
        &self,
        key: &TokenKey,
        grant: UserGrant,
        lease: &Lease,
    ) -> Result<Stored, RefreshError> {
        let requested_at_ms = self.0.clock.now_ms();
        let (acquired, how) = match grant {
            UserGrant::Assertion(assertion) => (
                self.0
                    .identity
                    .on_behalf_of(key.scope(), &assertion)
                    .await?,
                Acquisition::OnBehalfOf,
            ),
            UserGrant::Tokens {
                access_token,
                expires_on,
                refresh_token,
            } => {
                let acquired = Acquired {
                    token: access_token,
                    expires_on,
                    refresh_in: None,
                    refresh_token,
                };
                (acquired, Acquisition::External)
            }
        };
        if acquired.expires_on <= self.0.clock.now() {
            return Err(RefreshError::Expired);
        }
        let has_refresh_token = acquired.refresh_token.is_some();
        if !has_refresh_token {
            // A new grant without a refresh token replaces any older one.
            self.0.store.delete_grant(key).await?;
        }
        let landed = self
            .store_acquired(key, acquired, requested_at_ms, how, Some(lease))
            .await?;
        Ok(Stored {
            record: landed.record,
            has_refresh_token,
        })
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
        self.0
            .audit
            .record("refresher", None, Action::Revoke, key, Outcome::Ok, None)
            .await;
        Ok(())
    }
}
