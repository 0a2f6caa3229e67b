//! The payment service's settings (`env` in the manifest), read and checked once at start.

use std::time::Duration;

use tessera::resilience::BreakerConfig;

/// Settings (`env` in the manifest).
#[derive(Clone, Debug)]
pub struct PaymentConfig {
    /// `PAYMENT_PROVIDER_TIMEOUT_MS`: one call to the provider.
    pub call_timeout: Duration,
    /// `PAYMENT_MAX_ATTEMPTS`: charge attempts before the payment fails.
    pub max_attempts: i64,
    /// The provider's circuit breaker: `PAYMENT_BREAKER_MIN_CALLS`, `PAYMENT_BREAKER_FAILURE_RATE`,
    /// `PAYMENT_BREAKER_WAIT_MS`.
    pub breaker: BreakerConfig,
}

impl PaymentConfig {
    pub fn from_settings(s: &tessera::Settings) -> anyhow::Result<Self> {
        let config = PaymentConfig {
            call_timeout: s.millis_or("PAYMENT_PROVIDER_TIMEOUT_MS", Duration::from_secs(2))?,
            max_attempts: s.get_or("PAYMENT_MAX_ATTEMPTS", 3)?,
            breaker: BreakerConfig {
                minimum_calls: s.get_or("PAYMENT_BREAKER_MIN_CALLS", 10)?,
                failure_rate: s.get_or("PAYMENT_BREAKER_FAILURE_RATE", 0.5)?,
                wait_in_open_ms: s.get_or("PAYMENT_BREAKER_WAIT_MS", 5000)?,
                slow_call_ms: s.get_or("PAYMENT_BREAKER_SLOW_MS", 1500)?,
                ..BreakerConfig::default()
            },
        };
        config
            .breaker
            .validate()
            .map_err(|e| anyhow::anyhow!("PAYMENT_BREAKER_*: {e}"))?;
        Ok(config)
    }
}
