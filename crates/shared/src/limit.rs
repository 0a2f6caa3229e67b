//! Rate limits that hold across every gateway: one atomic script per check, GCRA (the generic
//! cell rate algorithm: one timestamp per key, the "theoretical arrival time"), on Redis's
//! clock so that gateways whose clocks differ still agree.
//!
//! GCRA gives the same answers as the token buckets of `tessera-resilience` (a burst of
//! `burst`, then `requests` per `per`), which the gateway falls back to when Redis is away.

use tessera_resilience::{Allowed, Limited, RateLimit};

use crate::Shared;

/// `KEYS[1]`: the key; `ARGV[1]`: microseconds per request; `ARGV[2]`: the burst. Answers
/// `{1, remaining, reset_ms}` or `{0, retry_after_ms}`.
const GCRA: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now_us
if tat < now_us then tat = now_us end
local next_tat = tat + interval
local allow_at = next_tat - tolerance
if allow_at > now_us then
  return {0, math.ceil((allow_at - now_us) / 1000)}
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now_us) / 1000) + 1)
return {1, math.floor((now_us - allow_at) / interval), math.ceil((next_tat - now_us) / 1000)}
";

/// One limit, counted on Redis.
pub struct SharedLimit {
    script: redis::Script,
    interval_us: u64,
    burst: u32,
    limit: u32,
}

impl SharedLimit {
    pub fn new(limit: &RateLimit) -> Self {
        let interval_us = (limit.per.as_micros() as u64 / u64::from(limit.requests)).max(1);
        Self {
            script: redis::Script::new(GCRA),
            interval_us,
            burst: limit.burst,
            limit: limit.requests,
        }
    }

    /// Takes one request of `key` (`<scope>:<who>`); `None` when Redis could not say (the
    /// caller limits locally instead).
    pub async fn check(&self, shared: &Shared, key: &str) -> Option<Result<Allowed, Limited>> {
        let key = shared.key(&format!("rl:{key}"));
        let answer: Vec<i64> = shared
            .call("rate_limit", async |conn| {
                self.script
                    .key(&key)
                    .arg(self.interval_us)
                    .arg(self.burst)
                    .invoke_async(conn)
                    .await
            })
            .await?;
        Some(match answer.as_slice() {
            [1, remaining, reset_ms] => Ok(Allowed {
                limit: self.limit,
                remaining: (*remaining).clamp(0, i64::from(u32::MAX)) as u32,
                reset: (*reset_ms as u64).div_ceil(1000),
            }),
            [0, retry_ms] => Err(Limited {
                limit: self.limit,
                retry_after: (*retry_ms as u64).div_ceil(1000).max(1),
            }),
            _ => return None,
        })
    }
}
