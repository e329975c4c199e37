//! When a token is due for refresh, and how long to wait after a failure (SPEC §6).

use std::time::Duration;

/// Tokens that live this long or more are refreshed at half-life.
const LONG_LIVED_SECS: i64 = 2 * 3600;
/// Upper bound of the random jitter that spreads refreshes of tokens issued together.
const MAX_JITTER_SECS: i64 = 60;

/// The Unix second a token stored at `stored_at` should be refreshed: the earliest
/// of `expires_on - refresh_before`, the identity provider's `refresh_in`, and half
/// the lifetime for tokens of 2 h or more; minus a small random jitter (at most a
/// tenth of the time left until then, so short-lived tokens are not pulled early).
pub fn due_at(
    stored_at: i64,
    expires_on: i64,
    refresh_in: Option<u64>,
    refresh_before_secs: u64,
) -> i64 {
    let lifetime = expires_on - stored_at;
    let mut due = expires_on - refresh_before_secs as i64;
    if let Some(hint) = refresh_in {
        due = due.min(stored_at + hint as i64);
    }
    if lifetime >= LONG_LIVED_SECS {
        due = due.min(stored_at + lifetime / 2);
    }
    let lead = due - stored_at;
    let jitter = if lead >= 10 {
        rand::random_range(0..=(lead / 10).min(MAX_JITTER_SECS))
    } else {
        0
    };
    (due - jitter).max(stored_at)
}

/// How long to wait before the next attempt after `failures` failures in a row:
/// exponential from `base`, capped at `max`, with ±20 % jitter so instances that
/// failed together do not retry together; never sooner than the identity
/// provider's `Retry-After`.
pub fn backoff(failures: u32, base: Duration, max: Duration, retry_after: Option<u64>) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let raw = base.saturating_mul(1u32 << exponent).min(max);
    let jittered = raw.mul_f64(rand::random_range(0.8..=1.2));
    match retry_after {
        Some(secs) => jittered.max(Duration::from_secs(secs)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_is_the_earliest_rule_minus_bounded_jitter() {
        // 1 h token, 900 s window: due between 2700 - 60 and 2700 after storing.
        for _ in 0..200 {
            let due = due_at(0, 3600, None, 900);
            assert!((2640..=2700).contains(&due), "{due}");
        }
        // Entra's refresh_in wins when it is earlier.
        assert!(due_at(0, 3600, Some(1800), 900) <= 1800);
        // A 24 h token is refreshed at half-life, not 15 minutes before expiry.
        let due = due_at(0, 86_400, None, 900);
        assert!((43_140..=43_200).contains(&due), "{due}");
        // A token shorter than the window is due at once, never before it was stored.
        assert_eq!(due_at(100, 400, None, 900), 100);
        // Short leads get proportionally small jitter.
        for _ in 0..200 {
            let due = due_at(0, 30, None, 20);
            assert!((9..=10).contains(&due), "{due}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(300));
        for _ in 0..100 {
            let first = backoff(1, base, max, None).as_secs_f64();
            assert!((4.0..=6.0).contains(&first), "{first}");
            let fourth = backoff(4, base, max, None).as_secs_f64();
            assert!((32.0..=48.0).contains(&fourth), "{fourth}");
            let capped = backoff(30, base, max, None).as_secs_f64();
            assert!((240.0..=360.0).contains(&capped), "{capped}");
            assert!(backoff(1, base, max, Some(60)) >= Duration::from_secs(60));
        }
    }
}
