//! Resilience primitives shared by the service client and the gateway: a circuit breaker on
//! the Resilience4j model, exponential backoff with full jitter, a retry budget, a bulkhead,
//! token-bucket rate limits, instance choice with outlier ejection, and the one loop that
//! guards a call with all of them ([`call`]). `docs/resilience.md` maps each to its Resilience4j and Envoy
//! equivalent.
//!
//! Time comes from `tokio::time::Instant`, so every rule is tested with paused time.

pub mod balance;
pub mod breaker;
pub mod bulkhead;
pub mod call;
mod config;
pub mod ratelimit;
pub mod retry;

pub use balance::{Balancer, OutlierConfig, Pick, Policy};
pub use breaker::{Breaker, BreakerConfig, BreakerState, CallOutcome, Open};
pub use bulkhead::{Bulkhead, BulkheadFull};
pub use call::{Guard, Limits, Rejected, Retryable};
pub use config::{Resilience, RetryConfig};
pub use ratelimit::{Allowed, Limited, RateLimit, RateLimiter};
pub use retry::{Backoff, BudgetConfig, RetryBudget, may_repeat};
