//! How the simulated provider misbehaves: slow, failing, hanging or declining, set from
//! `PROVIDER_*` (the manifest's, then `tessera config set payment-provider …` while it runs)
//! and changed by hand through `PUT /v1/behavior` (until the next configuration change).

use serde::{Deserialize, Serialize};

/// The provider's behaviour, as `GET`/`PUT /v1/behavior` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Behavior {
    /// Added to every charge.
    pub latency_ms: u64,
    /// Share of charges answered 503 without charging (0.0 to 1.0).
    pub failure_rate: f64,
    /// Never answer charges.
    pub hang: bool,
    /// Decline amounts above this (minor units).
    pub decline_over: i64,
}

impl Behavior {
    /// The behaviour at start: `PROVIDER_LATENCY_MS` (5), `PROVIDER_FAILURE_RATE` (0.0),
    /// `PROVIDER_HANG` (false), `PROVIDER_DECLINE_OVER` (1,000,000).
    pub fn from_settings(s: &tessera::Settings) -> Result<Self, tessera::ConfigError> {
        let behavior = Behavior {
            latency_ms: s.get_or("PROVIDER_LATENCY_MS", 5)?,
            failure_rate: s.get_or("PROVIDER_FAILURE_RATE", 0.0)?,
            hang: s.get_or("PROVIDER_HANG", false)?,
            decline_over: s.get_or("PROVIDER_DECLINE_OVER", 1_000_000)?,
        };
        if !(0.0..=1.0).contains(&behavior.failure_rate) {
            return Err(tessera::ConfigError::new(
                "PROVIDER_FAILURE_RATE",
                "must be 0.0 to 1.0",
            ));
        }
        if behavior.decline_over < 0 {
            return Err(tessera::ConfigError::new(
                "PROVIDER_DECLINE_OVER",
                "must not be negative",
            ));
        }
        Ok(behavior)
    }
}
