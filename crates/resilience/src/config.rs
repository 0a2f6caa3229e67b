//! How calls to one upstream service are protected, as the manifest and a service's settings
//! say it: the configuration both the gateway and the service client are built from.

use serde::Deserialize;

use crate::{Backoff, BreakerConfig, BudgetConfig, OutlierConfig, Policy};

/// How calls to one upstream service are protected (`docs/resilience.md`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Resilience {
    pub breaker: BreakerConfig,
    /// Bulkhead: calls in flight to the service at once; more get 503 at once.
    pub max_concurrent: usize,
    pub retry: RetryConfig,
    /// How an instance is chosen: `p2c` (fewest requests in flight of two) or `round_robin`.
    pub balance: Policy,
    /// Passive outlier ejection of failing instances.
    pub outlier: OutlierConfig,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            breaker: BreakerConfig::default(),
            max_concurrent: 512,
            retry: RetryConfig::default(),
            balance: Policy::default(),
            outlier: OutlierConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Time limit of one attempt (the whole request keeps its own limit).
    pub per_try_timeout_ms: Option<u64>,
    pub backoff: Backoff,
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            per_try_timeout_ms: None,
            backoff: Backoff::default(),
            budget: BudgetConfig::default(),
        }
    }
}
