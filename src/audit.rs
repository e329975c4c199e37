//! The audit trail (SPEC §7): one structured event per token read, refresh,
//! store, delete and revocation, with the caller, the key, the outcome and the
//! token's fingerprint (never the token); optionally also appended to the capped
//! Redis stream `{ns}tokens:audit`.

use crate::clock::Clock;
use crate::domain::TokenKey;
use crate::store::SharedStore;

/// What was done to a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Refresh,
    Store,
    Delete,
    /// The identity provider rejected a user's grant; the token was removed.
    Revoke,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Refresh => "refresh",
            Self::Store => "store",
            Self::Delete => "delete",
            Self::Revoke => "revoke",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    Denied,
    Failed,
}

tokio::task_local! {
    /// The id of the request being served: the host's invocation id, the caller's
    /// `x-request-id`, or one made up at the edge. Audit events carry it.
    pub static REQUEST_ID: String;
}

/// Where audit events go. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    /// The store to append to, with `TOKEN_AUDIT_STREAM=true`.
    stream: Option<SharedStore>,
    clock: Clock,
}

impl Audit {
    pub fn new(stream: Option<SharedStore>, clock: Clock) -> Self {
        Self { stream, clock }
    }

    /// Emits one event, with the fingerprint of the token handed out or
    /// stored (`Secret::fingerprint`). Borrows everything: it runs on every read.
    pub async fn record(
        &self,
        caller: &str,
        caller_oid: Option<&str>,
        action: Action,
        key: &TokenKey,
        outcome: Outcome,
        token_fp: Option<&str>,
    ) {
        let action_name = action.as_str();
        let emit = |request_id: Option<&str>| {
            tracing::info!(
                target: "audit",
                caller,
                caller_oid,
                action = action_name,
                scope = key.scope().as_str(),
                user = key.user().map(|u| u.as_str()),
                outcome = ?outcome,
                token_fp,
                request_id,
                "token {action_name}"
            );
        };
        // Borrowed from the task-local: no copy of the id on the read path.
        if REQUEST_ID.try_with(|id| emit(Some(id))).is_err() {
            emit(None);
        }
        let Some(store) = &self.stream else {
            return;
        };
        let mut fields = vec![
            ("caller", caller.to_owned()),
            ("action", action_name.to_owned()),
            ("scope", key.scope().as_str().to_owned()),
            ("outcome", format!("{outcome:?}")),
            ("time", self.clock.now().to_string()),
        ];
        fields.extend(key.user().map(|u| ("user", u.as_str().to_owned())));
        fields.extend(caller_oid.map(|oid| ("caller_oid", oid.to_owned())));
        fields.extend(token_fp.map(|fp| ("token_fp", fp.to_owned())));
        fields.extend(
            REQUEST_ID
                .try_with(Clone::clone)
                .ok()
                .map(|r| ("request_id", r)),
        );
        if let Err(error) = store.append_audit(&fields).await {
            tracing::warn!(%error, "could not append to the audit stream");
        }
    }
}
