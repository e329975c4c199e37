//! Keeping the cache true: listening to the store's changes, until shutdown.

use super::TokenCache;
use crate::store::{Change, SharedStore};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Listens for changed keys and drops their entries, until `stop` turns true.
/// Resubscribes after a lost connection; while unsubscribed the cache is not
/// trusted (see [`TokenCache::set_live`]).
pub fn listen(
    cache: Arc<TokenCache>,
    store: SharedStore,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            match store.changes().await {
                Ok(feed) => {
                    cache.set_live(true, feed.complete);
                    pause = Duration::from_millis(100);
                    let mut changes = feed.changes;
                    loop {
                        tokio::select! {
                            change = changes.next() => match change {
                                Some(Change::Key(key)) => cache.invalidate(&key),
                                Some(Change::All) => cache.clear(),
                                None => break,
                            },
                            _ = stop.changed() => {
                                cache.set_live(false, false);
                                return;
                            }
                        }
                    }
                    cache.set_live(false, false);
                    tracing::warn!("lost the change feed; subscribing again");
                }
                Err(error) => tracing::debug!(%error, "cannot subscribe to changes yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    })
}
