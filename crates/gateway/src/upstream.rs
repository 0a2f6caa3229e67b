//! One upstream service as the gateway sees it: a circuit breaker, a bulkhead, and retries
//! within a budget, around the instances the registry knows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::registry::Instance;
use tessera::resilience::{Balancer, Breaker, Bulkhead, CallOutcome, RetryBudget};
use tessera_manifest::{Resilience, RetryConfig};

use crate::pool::{Incoming, Outgoing, Pool, SendError};

/// How many instances a request may try when connections are refused (those never reached
/// the instance, so they cost no retry budget).
const CONNECT_ATTEMPTS: usize = 3;

pub struct Upstream {
    pub name: String,
    pub breaker: Breaker,
    pub bulkhead: Bulkhead,
    pub balancer: Balancer,
    budget: RetryBudget,
    retry: RetryConfig,
}

/// Why a call to an upstream produced no response.
#[derive(Debug)]
pub enum CallFailure {
    Open,
    Full,
    NoInstance,
    Unreachable,
    Timeout,
    BadResponse,
}

pub struct Exchange {
    pub response: Incoming,
    pub instance: String,
}

impl Upstream {
    pub fn new(name: &str, config: &Resilience) -> Self {
        Self {
            name: name.to_string(),
            breaker: Breaker::new(name, config.breaker.clone()),
            bulkhead: Bulkhead::new(name, config.max_concurrent),
            balancer: Balancer::new(name, config.balance, config.outlier.clone()),
            budget: RetryBudget::new(config.retry.budget.clone()),
            retry: config.retry.clone(),
        }
    }

    /// Sends the request to an instance, retrying where that is safe and the budget allows.
    /// `req.replayable` says whether the request may be sent twice (idempotent method, or an
    /// idempotency key); its `deadline_ms` is set here, per attempt.
    pub async fn call(
        &self,
        pool: &Pool,
        instances: &[Instance],
        req: Outgoing<'_>,
        max_response: u64,
        deadline: Duration,
    ) -> Result<Exchange, CallFailure> {
        self.breaker.acquire().map_err(|_| CallFailure::Open)?;
        let _slot = match self.bulkhead.enter() {
            Ok(slot) => slot,
            Err(_) => {
                self.breaker.record(CallOutcome::Ignored, Duration::ZERO);
                return Err(CallFailure::Full);
            }
        };
        if instances.is_empty() {
            self.breaker.record(CallOutcome::Ignored, Duration::ZERO);
            return Err(CallFailure::NoInstance);
        }
        let started = Instant::now();
        self.budget.deposit();
        let idempotent = req.replayable;
        // Without a per-try timeout, the whole call's is the only timer armed.
        let per_try = self.retry.per_try_timeout_ms.map(Duration::from_millis);
        let attempts = async {
            let (mut attempt, mut refused) = (0u32, 0usize);
            let mut tried: Vec<usize> = Vec::new();
            loop {
                let pick = self
                    .balancer
                    .pick(instances, &tried)
                    .ok_or(CallFailure::NoInstance)?;
                tried.push(pick.index);
                let instance = &instances[pick.index];
                // What is left of the whole request's time travels downstream (each hop honours it).
                let left = deadline.saturating_sub(started.elapsed());
                let left = per_try.map_or(left, |p| left.min(p));
                let attempt_req = Outgoing {
                    deadline_ms: Some(left.as_millis() as u64),
                    ..req
                };
                let exchange = async {
                    match pool
                        .send(&instance.address, &attempt_req, max_response)
                        .await
                    {
                        Err(SendError::Connect) => Err(CallFailure::Unreachable),
                        Err(SendError::Failed | SendError::TooLarge) => {
                            Err(CallFailure::BadResponse)
                        }
                        Ok(response) => Ok(Exchange {
                            response,
                            instance: instance.id.clone(),
                        }),
                    }
                };
                let outcome = match per_try {
                    None => exchange.await,
                    Some(per_try) => tokio::time::timeout(per_try, exchange)
                        .await
                        .unwrap_or(Err(CallFailure::Timeout)),
                };
                let failed = match &outcome {
                    Ok(x) => x.response.status.is_server_error(),
                    Err(_) => true,
                };
                self.balancer.finish(pick, failed, instances);

                let retryable = match &outcome {
                    Ok(x) => idempotent && x.response.status.is_server_error(),
                    Err(CallFailure::Unreachable) => {
                        tracing::warn!(upstream = %instance.id, "connection refused");
                        if refused + 1 < CONNECT_ATTEMPTS.min(instances.len()) {
                            refused += 1;
                            continue; // never reached the instance: try the next one
                        }
                        idempotent
                    }
                    Err(_) => idempotent,
                };
                if retryable && attempt + 1 < self.retry.max_attempts && self.budget.withdraw() {
                    attempt += 1;
                    metrics::counter!("tessera_retries_total", "upstream" => self.name.clone())
                        .increment(1);
                    tokio::time::sleep(self.retry.backoff.delay(attempt)).await;
                    continue;
                }
                return outcome;
            }
        };
        let result = tokio::time::timeout(deadline, attempts)
            .await
            .unwrap_or(Err(CallFailure::Timeout));
        let verdict = match &result {
            Ok(x) if x.response.status.is_server_error() => CallOutcome::Failure,
            Ok(_) => CallOutcome::Success,
            Err(_) => CallOutcome::Failure,
        };
        self.breaker.record(verdict, started.elapsed());
        result
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "breaker": self.breaker.state().as_str(),
            "inFlight": self.bulkhead.in_flight(),
            "maxConcurrent": self.bulkhead.limit(),
            "instances": self.balancer.status(),
        })
    }
}

/// The upstreams of every route, by service name.
pub fn build(
    manifest: &tessera_manifest::Manifest,
) -> std::collections::HashMap<String, Arc<Upstream>> {
    let mut out = std::collections::HashMap::new();
    for route in &manifest.routes {
        out.entry(route.service.clone()).or_insert_with(|| {
            let config = manifest
                .gateway
                .upstreams
                .get(&route.service)
                .unwrap_or(&manifest.gateway.resilience);
            Arc::new(Upstream::new(&route.service, config))
        });
    }
    out
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}
