//! The change-event channel every write announces itself on, and the capped
//! audit stream.

use super::RedisStore;
use super::connection::CONNECT_TIMEOUT;
use super::tracking::NotTracked;
use crate::store::{Change, ChangeFeed, Events, StoreError};
use async_trait::async_trait;
use futures::StreamExt;
use redis::RedisResult;
use std::sync::atomic::Ordering;

/// Entries kept in the audit stream.
const AUDIT_STREAM_LEN: u64 = 100_000;

impl RedisStore {
    /// Tells every instance (and any other application listening) that the token
    /// `name` changed.
    pub(super) async fn publish(&self, name: &str) -> RedisResult<()> {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.keys.events()).arg(name);
        self.query(publish).await
    }
}

#[async_trait]
impl Events for RedisStore {
    /// Tracking on every master when the servers allow it; else the change-event
    /// channel, which carries only what this service writes.
    async fn changes(&self) -> Result<ChangeFeed, StoreError> {
        match self.tracked_changes().await {
            Ok(feed) => Ok(feed),
            Err(NotTracked::Unreachable(error)) => Err(error),
            Err(NotTracked::Refused(why)) => {
                if !self.tracking_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%why, "Redis refuses CLIENT TRACKING: writes by other applications are seen when cached tokens are revalidated, every second");
                }
                self.published_changes().await
            }
        }
    }

    async fn append_audit(&self, fields: &[(&'static str, String)]) -> Result<(), StoreError> {
        let mut xadd = redis::cmd("XADD");
        // Capped (approximately, which is cheap) so the stream cannot grow forever.
        xadd.arg(self.keys.audit())
            .arg("MAXLEN")
            .arg("~")
            .arg(AUDIT_STREAM_LEN)
            .arg("*");
        for (name, value) in fields {
            xadd.arg(*name).arg(value);
        }
        self.query::<String>(xadd).await?;
        Ok(())
    }
}

impl RedisStore {
    /// The change-event channel as a feed. Each call tries the next node, so a
    /// dead cluster seed is not retried forever.
    async fn published_changes(&self) -> Result<ChangeFeed, StoreError> {
        let turn = self.subscriber_turn.fetch_add(1, Ordering::Relaxed);
        let client = &self.subscribers[turn % self.subscribers.len()];
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(self.keys.events()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(StoreError::Redis(redis::RedisError::from(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "subscribing to the change events timed out",
                    ),
                )));
            }
        };
        let keys = self.keys.clone();
        let changes = pubsub.into_on_message().filter_map(move |message| {
            let name: String = message.get_payload().unwrap_or_default();
            let key = keys.parse_token(&name);
            if key.is_none() {
                tracing::debug!("ignoring a change event for an unknown key");
            }
            std::future::ready(key.map(Change::Key))
        });
        Ok(ChangeFeed {
            changes: changes.boxed(),
            complete: false,
        })
    }
}
