//! One upstream service as the gateway sees it: the guarded-call loop the service client
//! uses too (breaker, bulkhead, balancer, retries within a budget), around the instances the
//! registry knows, with what the gateway's exchange says about retrying.

use std::sync::Arc;
use std::time::Duration;

use tessera::TraceContext;
use tessera::registry::Instance;
use tessera::resilience::{Guard, Limits, Rejected, Retryable};
use tessera::trace::{Kind, Span};
use tessera_manifest::Resilience;

use crate::pool::{Incoming, Outgoing, Pool, SendError};

/// One upstream service: the guard its calls go through.
pub struct Upstream {
    guard: Guard,
    /// The settings it was made with: a reload keeps it (and its state) while they hold.
    config: Resilience,
    /// Its name, shared: what each attempt's span names without copying it.
    label: Arc<str>,
    /// Who its instances must prove to be, when mutual TLS is on.
    identity: Option<tessera_tls::Identity>,
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

impl Retryable for CallFailure {
    fn is_failure(&self) -> bool {
        true
    }

    fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallFailure::Unreachable | CallFailure::Timeout | CallFailure::BadResponse
        )
    }

    fn never_sent(&self) -> bool {
        matches!(self, CallFailure::Unreachable)
    }
}

pub struct Exchange {
    pub response: Incoming,
    pub instance: String,
}

impl Retryable for Exchange {
    /// A 5xx answer is passed on to the client, but counts against the instance, and another
    /// instance may answer better.
    fn is_failure(&self) -> bool {
        self.response.status.is_server_error()
    }

    fn is_retryable(&self) -> bool {
        self.response.status.is_server_error()
    }
}

impl Upstream {
    pub fn new(name: &str, config: &Resilience) -> Self {
        Self {
            guard: Guard::new(name, config),
            config: config.clone(),
            label: Arc::from(name),
            identity: tessera_tls::internal::get()
                .map(|tls| tessera_tls::Identity::service(&tls.system, name)),
        }
    }

    /// Who its instances must prove to be (mutual TLS), if anyone.
    pub fn identity(&self) -> Option<&tessera_tls::Identity> {
        self.identity.as_ref()
    }

    /// The settings it was made with.
    pub fn config(&self) -> &Resilience {
        &self.config
    }

    pub fn name(&self) -> &str {
        self.guard.name()
    }

    /// The breaker, bulkhead and balancer calls go through.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Sends the request to an instance through the guard (`tessera_resilience::call`):
    /// retried where the outcome and `req.replayable` allow, within `deadline` for the whole
    /// call; each attempt's `deadline_ms` is the time it has, and each attempt is a client
    /// span of its own under `trace` (retries show as siblings), whose `traceparent` it sends.
    pub async fn call(
        &self,
        pool: &Pool,
        instances: &[Instance],
        req: Outgoing<'_>,
        max_response: u64,
        deadline: Duration,
        trace: &TraceContext,
    ) -> Result<Exchange, CallFailure> {
        let limits = Limits {
            deadline: None,
            within: Some(deadline),
            per_try: self.guard.per_try(deadline),
        };
        let result = self
            .guard
            .call(instances, req.replayable, limits, |instance, try_for| {
                async move {
                    let (mut span, attempt_trace) = Span::child_of(trace, "forward", Kind::Client);
                    if span.is_recording() {
                        span.name_pair(req.method.as_str(), &self.label);
                        span.set("http.request.method", req.method);
                        span.set("peer.service", &self.label);
                        span.set("tessera.instance", &instance.id);
                        // Dropped before it completes (its time ran out): failed, saying so.
                        span.fail("timed out or cancelled");
                    }
                    let mut traceparent = [0u8; 55];
                    attempt_trace.write_header(&mut traceparent);
                    // What is left of the request's time travels downstream (each hop
                    // honours it).
                    let attempt = Outgoing {
                        deadline_ms: Some(try_for.as_millis() as u64),
                        traceparent: Some(&traceparent),
                        ..req
                    };
                    let outcome = match pool.send(&instance.address, &attempt, max_response).await {
                        Err(SendError::Connect) => Err(CallFailure::Unreachable),
                        Err(SendError::Failed | SendError::TooLarge) => {
                            Err(CallFailure::BadResponse)
                        }
                        Ok(response) => Ok(Exchange {
                            response,
                            instance: instance.id.clone(),
                        }),
                    };
                    span.clear_failure();
                    match &outcome {
                        Ok(x) => {
                            span.set("http.response.status_code", x.response.status.as_u16());
                            if x.response.status.is_server_error() {
                                span.fail("the instance answered with a server error");
                            }
                        }
                        Err(CallFailure::Unreachable) => span.fail("cannot connect"),
                        Err(_) => span.fail("no valid answer"),
                    }
                    outcome
                }
            })
            .await;
        match result {
            Ok(outcome) => outcome,
            Err(Rejected::Open) => Err(CallFailure::Open),
            Err(Rejected::Full) => Err(CallFailure::Full),
            Err(Rejected::NoInstance) => Err(CallFailure::NoInstance),
            Err(Rejected::Timeout) => Err(CallFailure::Timeout),
        }
    }

    pub fn status(&self) -> serde_json::Value {
        self.guard.status()
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name())
            .finish()
    }
}
