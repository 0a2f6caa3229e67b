//! Retries: exponential backoff with full jitter, limited by a retry budget.
//!
//! The budget (Finagle's and Linkerd's, Envoy's `retry_budget`) caps retries at a share of the
//! original requests over a sliding window, plus a small floor per second so that a quiet
//! client can still retry. A failing upstream then sees at most `1 + ratio` times its normal
//! load, not `max_attempts` times.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// Whether a request may be sent again after a failure: its method is idempotent, or the
/// client made it so with an `Idempotency-Key` header.
pub fn may_repeat(method: &http::Method, idempotency_key: bool) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || idempotency_key
}

/// Exponential backoff with full jitter: attempt `n` waits a random time in
/// `[0, min(max, base × 2ⁿ)]` (AWS's "full jitter").
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 25,
            max_ms: 1000,
        }
    }
}

impl Backoff {
    /// The ceiling of the wait before retry `attempt` (1 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self
            .base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        Duration::from_millis(exp.min(self.max_ms))
    }

    /// A random wait before retry `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(if ceiling == 0 {
            0
        } else {
            rand::random::<u64>() % (ceiling + 1)
        })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Retries allowed per original request, over the window.
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic.
    pub min_per_sec: u32,
    /// The window, in seconds.
    pub window_secs: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 5,
            window_secs: 10,
        }
    }
}

pub struct RetryBudget {
    config: BudgetConfig,
    /// Per second: (start, requests, retries).
    buckets: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(VecDeque::new()),
        }
    }

    fn with_bucket<T>(
        &self,
        now: Instant,
        f: impl FnOnce(&mut VecDeque<(Instant, u64, u64)>) -> T,
    ) -> T {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let window = Duration::from_secs(u64::from(self.config.window_secs.max(1)));
        while b
            .front()
            .is_some_and(|(start, _, _)| now.duration_since(*start) >= window)
        {
            b.pop_front();
        }
        if b.back()
            .is_none_or(|(start, _, _)| now.duration_since(*start) >= Duration::from_secs(1))
        {
            b.push_back((now, 0, 0));
        }
        f(&mut b)
    }

    /// Counts an original request.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// [`Self::deposit`] at `now` (a clock the caller read already).
    pub fn deposit_at(&self, now: Instant) {
        self.with_bucket(now, |b| b.back_mut().expect("a current bucket").1 += 1);
    }

    /// Takes a retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let c = &self.config;
        let allowed = self.with_bucket(Instant::now(), |b| {
            let (requests, retries): (u64, u64) = b
                .iter()
                .fold((0, 0), |(q, r), (_, bq, br)| (q + bq, r + br));
            let cap = (requests as f64 * c.ratio) + f64::from(c.min_per_sec * c.window_secs.max(1));
            if (retries + 1) as f64 <= cap {
                b.back_mut().expect("a current bucket").2 += 1;
                true
            } else {
                false
            }
        });
        if !allowed {
            metrics::counter!("tessera_retry_budget_exhausted_total").increment(1);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_below_the_ceiling() {
        let b = Backoff {
            base_ms: 10,
            max_ms: 100,
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(10));
        assert_eq!(b.ceiling(2), Duration::from_millis(20));
        assert_eq!(b.ceiling(4), Duration::from_millis(80));
        assert_eq!(b.ceiling(5), Duration::from_millis(100));
        assert_eq!(b.ceiling(60), Duration::from_millis(100));
        let mut seen_low = false;
        for _ in 0..1000 {
            let d = b.delay(3);
            assert!(d <= Duration::from_millis(40));
            seen_low |= d < Duration::from_millis(20);
        }
        assert!(seen_low, "full jitter reaches the low end");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_budget() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_sec: 0,
            window_secs: 10,
        });
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 20, "20% of 100 requests");
        // The window slides: after it, old requests no longer pay for retries.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.withdraw());
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!((0..10).filter(|_| budget.withdraw()).count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_floor_lets_quiet_clients_retry() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_sec: 1,
            window_secs: 10,
        });
        assert_eq!(
            (0..50).filter(|_| budget.withdraw()).count(),
            10,
            "1 per second over 10 s"
        );
    }
}
