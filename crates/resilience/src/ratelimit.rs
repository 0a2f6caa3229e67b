//! Token-bucket rate limits per key (a user, a client address).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// `requests` per `per`, with bursts up to `burst`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

impl RateLimit {
    /// Parses `"100/s"`, `"20/m"`, `"1000/h"`; the burst defaults to the count.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (n, unit) = spec
            .split_once('/')
            .ok_or_else(|| format!("{spec:?}: expected like \"100/s\""))?;
        let requests: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{spec:?}: {n:?} is not a count"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("{spec:?}: unit {other:?} is not s, m or h")),
        };
        if requests == 0 {
            return Err(format!("{spec:?}: the count must be at least 1"));
        }
        Ok(Self {
            requests,
            per,
            burst: requests,
        })
    }

    fn rate_per_sec(&self) -> f64 {
        f64::from(self.requests) / self.per.as_secs_f64()
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RateLimit::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A request over the limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub limit: u32,
    /// Whole seconds until a request would pass.
    pub retry_after: u64,
}

/// What a passing request leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until the bucket is full again.
    pub reset: u64,
}

pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The limit it keeps.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Takes one token of `key`'s bucket.
    pub fn check(&self, key: &str) -> Result<Allowed, Limited> {
        let now = Instant::now();
        let rate = self.limit.rate_per_sec();
        let burst = f64::from(self.limit.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            // Full buckets carry no information: forget them.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(Allowed {
                limit: self.limit.requests,
                remaining: *tokens as u32,
                reset: ((burst - *tokens) / rate).ceil() as u64,
            })
        } else {
            Err(Limited {
                limit: self.limit.requests,
                retry_after: ((1.0 - *tokens) / rate).ceil().max(1.0) as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            RateLimit::parse("100/s").unwrap(),
            RateLimit {
                requests: 100,
                per: Duration::from_secs(1),
                burst: 100
            }
        );
        assert_eq!(
            RateLimit::parse("5/m").unwrap().per,
            Duration::from_secs(60)
        );
        for bad in ["", "100", "x/s", "0/s", "5/d"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn allows_the_burst_then_the_rate() {
        let l = RateLimiter::new(RateLimit {
            requests: 5,
            per: Duration::from_secs(1),
            burst: 5,
        });
        for i in 0..5 {
            assert_eq!(l.check("a").unwrap().remaining, 4 - i);
        }
        let limited = l.check("a").unwrap_err();
        assert_eq!(
            limited,
            Limited {
                limit: 5,
                retry_after: 1
            }
        );
        assert!(l.check("b").is_ok(), "keys are separate");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(l.check("a").is_ok(), "one token back after 1/5 s");
        assert!(l.check("a").is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            l.check("a").unwrap().remaining,
            4,
            "never more than the burst"
        );
    }
}
