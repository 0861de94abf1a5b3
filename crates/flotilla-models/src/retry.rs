//! When and how long to wait before trying a failed model request again.

use std::time::Duration;

use rand::Rng as _;

use crate::ModelError;

/// Retry budget and backoff of model requests.
///
/// The agent loop owns the retries (each failed attempt is an event); this
/// type only answers "again?" ([`RetryPolicy::should_retry`]) and "after how
/// long?" ([`RetryPolicy::delay_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Delay after the first failure (before jitter).
    pub base_delay: Duration,
    /// Cap on the computed backoff (a server's `Retry-After` may exceed it,
    /// up to [`RetryPolicy::MAX_RETRY_AFTER`]).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The longest server-requested delay that is honoured as given; longer
    /// ones are cut to this.
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

    /// How long to wait after failed attempt number `attempt` (1-based).
    ///
    /// With a server's `Retry-After`, that delay (capped at
    /// [`RetryPolicy::MAX_RETRY_AFTER`]) plus a small jitter, so that many
    /// sessions told the same thing do not come back in the same instant.
    /// Otherwise exponential backoff with jitter: a random delay in
    /// `[d/2, d]` where `d = min(base_delay * 2^(attempt-1), max_delay)`.
    pub fn delay_for(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_at(attempt, retry_after, rand::rng().random::<f64>())
    }

    /// Whether to try again after failed attempt number `attempt` (1-based)
    /// failed with `error`: the error is retryable and the budget is not spent.
    pub fn should_retry(&self, attempt: u32, error: &ModelError) -> bool {
        attempt < self.max_attempts && error.is_retryable()
    }

    /// [`RetryPolicy::delay_for`] with the random draw given, in `[0, 1]`.
    fn delay_at(&self, attempt: u32, retry_after: Option<Duration>, draw: f64) -> Duration {
        let draw = if draw.is_finite() {
            draw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if let Some(requested) = retry_after {
            let requested = requested.min(Self::MAX_RETRY_AFTER);
            let jitter_cap =
                (requested / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
            return requested + jitter_cap.mul_f64(draw);
        }
        let doublings = attempt.max(1) - 1;
        let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
        let upper = self
            .base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let lower = upper / 2;
        lower + (upper - lower).mul_f64(draw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_is_capped() {
        let policy = RetryPolicy::default();
        for (attempt, upper_ms) in [
            (1, 500),
            (2, 1000),
            (3, 2000),
            (4, 4000),
            (8, 60_000),
            (40, 60_000),
            (u32::MAX, 60_000),
        ] {
            let upper = Duration::from_millis(upper_ms);
            assert_eq!(
                policy.delay_at(attempt, None, 1.0),
                upper,
                "attempt {attempt}"
            );
            assert_eq!(
                policy.delay_at(attempt, None, 0.0),
                upper / 2,
                "attempt {attempt}"
            );
            for _ in 0..200 {
                let delay = policy.delay_for(attempt, None);
                assert!(
                    delay >= upper / 2 && delay <= upper,
                    "attempt {attempt}: {delay:?}"
                );
            }
        }
        // Attempt 0 is treated as the first failure.
        assert_eq!(policy.delay_at(0, None, 1.0), Duration::from_millis(500));
    }

    #[test]
    fn retry_after_is_honoured_with_small_jitter_and_capped() {
        let policy = RetryPolicy::default();
        let asked = Duration::from_secs(7);
        for _ in 0..200 {
            let delay = policy.delay_for(1, Some(asked));
            assert!(
                delay >= asked && delay <= asked + Duration::from_millis(700),
                "{delay:?}"
            );
        }
        // More than max_delay is still honoured...
        let long = Duration::from_secs(120);
        assert!(policy.delay_for(1, Some(long)) >= long);
        // ...up to the hard cap.
        let huge = Duration::from_secs(86_400);
        let delay = policy.delay_for(1, Some(huge));
        assert!(delay >= RetryPolicy::MAX_RETRY_AFTER);
        assert!(delay <= RetryPolicy::MAX_RETRY_AFTER + Duration::from_secs(1));
        // Zero still gets a little jitter, never more than 100 ms.
        assert!(policy.delay_at(1, Some(Duration::ZERO), 1.0) == Duration::from_millis(100));
        assert_eq!(
            policy.delay_at(1, Some(Duration::ZERO), f64::NAN),
            Duration::ZERO
        );
    }

    #[test]
    fn should_retry_respects_budget_and_error_kind() {
        let policy = RetryPolicy::default();
        let busy = ModelError::Status {
            status: 503,
            body: String::new(),
            retry_after: None,
        };
        let bad_request = ModelError::Status {
            status: 400,
            body: String::new(),
            retry_after: None,
        };
        assert!(policy.should_retry(1, &busy));
        assert!(policy.should_retry(5, &busy));
        assert!(!policy.should_retry(6, &busy));
        assert!(!policy.should_retry(1, &bad_request));
        assert!(policy.should_retry(1, &ModelError::Truncated("x".into())));
        assert!(!policy.should_retry(1, &ModelError::Protocol("x".into())));
    }
}
