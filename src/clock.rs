//! Time as the service sees it, in the unit the Redis layout uses (Unix seconds).
//!
//! Everything that judges a token by its `expires_on` (serving, refresh schedule,
//! backoff, idle rule, the internal timer) asks the [`Clock`] it was given. The
//! system clock in production; a manual clock in tests, which move time instead of
//! sleeping through it. Waits that pace real I/O (lease renewal, reconnect pauses)
//! stay on tokio's timer: Redis expires leases in real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(ManualClock),
}

impl Clock {
    /// Unix seconds.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Unix milliseconds: orders token requests made within the same second.
    pub fn now_ms(&self) -> i64 {
        match self {
            Self::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Self::Manual(manual) => manual.0.now_ms.load(Ordering::SeqCst),
        }
    }

    /// Completes once this clock reads `until_ms` (Unix milliseconds): tokio's
    /// timer for the system clock, the [`ManualClock::advance`] that reaches it
    /// otherwise.
    pub async fn sleep_until(&self, until_ms: i64) {
        match self {
            Self::System => {
                let left = (until_ms - self.now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(left)).await
            }
            Self::Manual(manual) => {
                let mut moved = manual.0.moved.subscribe();
                // The sender lives as long as `manual`, which outlives this wait.
                let _ = moved.wait_for(|now| *now >= until_ms).await;
            }
        }
    }
}

/// A clock that stands still until a test moves it. Cheap to clone; clones share
/// the same time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<ManualInner>);

#[derive(Debug)]
struct ManualInner {
    now_ms: AtomicI64,
    moved: watch::Sender<i64>,
}

impl ManualClock {
    /// Starts at the system's time, so that TTLs Redis counts in real seconds
    /// stay close to the service's view.
    pub fn starting_now() -> Self {
        let now = Clock::System.now_ms();
        Self(Arc::new(ManualInner {
            now_ms: AtomicI64::new(now),
            moved: watch::Sender::new(now),
        }))
    }

    pub fn advance(&self, by: Duration) {
        let now = self
            .0
            .now_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst)
            + by.as_millis() as i64;
        self.0.moved.send_replace(now);
    }

    pub fn clock(&self) -> Clock {
        Clock::Manual(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_told_and_wakes_its_sleepers() {
        let manual = ManualClock::starting_now();
        let clock = manual.clock();
        let start = clock.now();
        let until = clock.now_ms() + 60_000;
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(until).await }
        });
        manual.advance(Duration::from_secs(59));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its time");
        manual.advance(Duration::from_secs(1));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), start + 60);
    }
}
