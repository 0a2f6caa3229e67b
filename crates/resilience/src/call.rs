//! The one guarded-call loop: how a call to a service's instances is protected, for the
//! gateway's upstream requests and the service client's calls alike.
//!
//! A call passes the breaker and the bulkhead, then tries instances chosen by the balancer:
//! each attempt within what is left of the call's deadline and its own per-try limit, each
//! outcome reported to the balancer (outlier ejection) and, once the call ends, to the
//! breaker. A failed attempt is tried again, on another instance, after a jittered backoff,
//! when the outcome says another try may do better ([`Retryable`]), the request may be sent
//! twice (or provably was not sent at all), attempts are left, and the retry budget allows.
//!
//! What may be retried is decided by the outcome itself, through [`Retryable`], never by the
//! caller's loop: the gateway and the client had a loop each, and they drifted apart (one
//! retried every 5xx, the other only 502–504). Now both retry what the outcome says.

use std::future::Future;
use std::time::Duration;

use tessera_registry::Instance;
use tokio::time::Instant;

use crate::{Balancer, Breaker, Bulkhead, CallOutcome, Resilience, RetryBudget, RetryConfig};

/// How many instances a call may try when connections are refused (those never reached the
/// instance, so they cost no retry budget and no idempotency).
const CONNECT_ATTEMPTS: usize = 3;

/// What an attempt's outcome says about the instance, and about trying again.
pub trait Retryable {
    /// Whether the outcome counts against the instance's and the service's health: a
    /// connection failure, a timeout, a 5xx answer. A 4xx answer says nothing about health.
    fn is_failure(&self) -> bool;

    /// Whether the same request, sent again, may get a better outcome: timeouts, broken
    /// exchanges and 5xx answers may; a 4xx answer or an unreadable one will not.
    fn is_retryable(&self) -> bool;

    /// Whether the request provably never reached the instance (the connection was refused):
    /// then it may go to another instance whatever its method.
    fn never_sent(&self) -> bool {
        false
    }
}

impl<T: Retryable, E: Retryable> Retryable for Result<T, E> {
    fn is_failure(&self) -> bool {
        match self {
            Ok(t) => t.is_failure(),
            Err(e) => e.is_failure(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Ok(t) => t.is_retryable(),
            Err(e) => e.is_retryable(),
        }
    }

    fn never_sent(&self) -> bool {
        match self {
            Ok(t) => t.never_sent(),
            Err(e) => e.never_sent(),
        }
    }
}

/// Why the loop itself gave no outcome of an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The breaker is open: not called.
    Open,
    /// The bulkhead is full: not called.
    Full,
    /// No instance is live (or every one was tried).
    NoInstance,
    /// The call's deadline, or an attempt's per-try limit, passed.
    Timeout,
}

impl Retryable for Rejected {
    fn is_failure(&self) -> bool {
        true
    }

    fn is_retryable(&self) -> bool {
        *self == Rejected::Timeout
    }
}

/// The time limits of one call.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// When the caller stops waiting: the whole call, retries and backoff included.
    pub deadline: Option<Instant>,
    /// The same as a time from the call's start (the earlier of the two, given both): the
    /// call reads the clock once for its start and this.
    pub within: Option<Duration>,
    /// The longest one attempt may take.
    pub per_try: Duration,
}

/// How calls to one service are protected: its breaker, bulkhead, balancer and retry budget.
pub struct Guard {
    name: String,
    pub breaker: Breaker,
    pub bulkhead: Bulkhead,
    pub balancer: Balancer,
    budget: RetryBudget,
    retry: RetryConfig,
}

impl Guard {
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

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The per-try limit the configuration sets, or `otherwise`.
    pub fn per_try(&self, otherwise: Duration) -> Duration {
        self.retry
            .per_try_timeout_ms
            .map_or(otherwise, |ms| Duration::from_millis(ms).min(otherwise))
    }

    /// Calls `attempt` on instances of `instances` until an outcome is final; `repeatable`
    /// says whether the request may be sent twice (an idempotent method, or an idempotency
    /// key). `attempt` gets the instance and the time the attempt has; a slower attempt is
    /// given up as [`Rejected::Timeout`].
    pub async fn call<'a, T, F, Fut>(
        &self,
        instances: &'a [Instance],
        repeatable: bool,
        limits: Limits,
        mut attempt: F,
    ) -> Result<T, Rejected>
    where
        T: Retryable,
        F: FnMut(&'a Instance, Duration) -> Fut,
        Fut: Future<Output = T>,
    {
        // One reading of the clock for the call's start: the breaker, the budget, the first
        // pick and the time left (each read its own, four a call, on every request).
        let started = Instant::now();
        let deadline = match (limits.deadline, limits.within.map(|w| started + w)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let trial_slot = self
            .breaker
            .acquire_at(started)
            .map_err(|_| Rejected::Open)?;
        // Until the verdict is recorded, the call counts as telling nothing: a call refused
        // here, or given up by its caller half-way (a cancelled future: an HTTP/2 stream the
        // client reset), gives back a half-open breaker's trial slot.
        let mut trial = Trial {
            breaker: &self.breaker,
            recorded: false,
            slot: trial_slot,
        };
        let _slot = self.bulkhead.enter().map_err(|_| Rejected::Full)?;
        if instances.is_empty() {
            return Err(Rejected::NoInstance);
        }
        self.budget.deposit_at(started);
        // The attempts come to an outcome and the clock as the last one ended (read once for
        // the balancer and the breaker). Pinned where it is made, as is each attempt: a future
        // handed on by value (to a timeout, to `.await`) is copied whole, and these are
        // kilobytes.
        let attempts = std::pin::pin!(async {
            let (mut retries, mut refused) = (0u32, 0usize);
            // The instances tried: written when a second attempt needs them, so that a call
            // answered at once allocates nothing for them.
            let (mut tried, mut last): (Vec<usize>, Option<usize>) = (Vec::new(), None);
            let mut first = Some(started);
            loop {
                tried.extend(last.take());
                let now = first.take().unwrap_or_else(Instant::now);
                let Some(pick) = self.balancer.pick_at(instances, &tried, now) else {
                    return (Err(Rejected::NoInstance), None);
                };
                last = Some(pick.index);
                let instance = &instances[pick.index];
                let left = deadline.map(|d| d.saturating_duration_since(now));
                if left == Some(Duration::ZERO) {
                    self.balancer.finish_at(pick, false, instances, now);
                    return (Err(Rejected::Timeout), None);
                }
                let try_for = left.map_or(limits.per_try, |left| left.min(limits.per_try));
                // Scoped: an attempt given up is dropped (its connection closed, its span
                // ended) before any backoff.
                let outcome = {
                    let sent = std::pin::pin!(attempt(instance, try_for));
                    if left.is_some_and(|left| left <= limits.per_try) {
                        // The call's deadline bounds this attempt already: no second timer.
                        Ok(sent.await)
                    } else {
                        tokio::time::timeout(try_for, sent)
                            .await
                            .map_err(|_| Rejected::Timeout)
                    }
                };
                let ended = Instant::now();
                self.balancer
                    .finish_at(pick, outcome.is_failure(), instances, ended);
                if outcome.never_sent() {
                    tracing::warn!(upstream = %instance.id, "connection refused");
                    if refused + 1 < CONNECT_ATTEMPTS.min(instances.len()) {
                        refused += 1; // never reached the instance: the next one, at no cost
                        continue;
                    }
                }
                let may_send_again = repeatable || outcome.never_sent();
                if outcome.is_retryable()
                    && may_send_again
                    && retries + 1 < self.retry.max_attempts
                    && self.budget.withdraw()
                {
                    retries += 1;
                    metrics::counter!("tessera_retries_total", "upstream" => self.name.clone())
                        .increment(1);
                    tokio::time::sleep(self.retry.backoff.delay(retries)).await;
                    continue;
                }
                return (outcome, Some(ended));
            }
        });
        let (result, ended) = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, attempts)
                .await
                .unwrap_or((Err(Rejected::Timeout), None)),
            None => attempts.await,
        };
        let verdict = if result.is_failure() {
            CallOutcome::Failure
        } else {
            CallOutcome::Success
        };
        let ended = ended.unwrap_or_else(Instant::now);
        trial.record_at(verdict, ended.saturating_duration_since(started), ended);
        result
    }

    /// The guard's state, for `/status/resilience`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "breaker": self.breaker.state().as_str(),
            "inFlight": self.bulkhead.in_flight(),
            "maxConcurrent": self.bulkhead.limit(),
            "instances": self.balancer.status(),
        })
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("name", &self.name).finish()
    }
}

/// A call admitted by the breaker, whose outcome must be recorded exactly once.
struct Trial<'a> {
    breaker: &'a crate::breaker::Breaker,
    recorded: bool,
    /// Whether it took one of half-open's trial slots (only such a call gives one back).
    slot: bool,
}

impl Trial<'_> {
    fn record_at(&mut self, outcome: CallOutcome, took: Duration, now: Instant) {
        self.recorded = true;
        self.breaker.record_at(outcome, took, now);
    }
}

impl Drop for Trial<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.slot {
            self.breaker.record(CallOutcome::Ignored, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// An attempt's outcome, as a test scripts it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Answer {
        Ok,
        ServerError,
        ClientError,
        Refused,
    }

    impl Retryable for Answer {
        fn is_failure(&self) -> bool {
            matches!(self, Answer::ServerError | Answer::Refused)
        }
        fn is_retryable(&self) -> bool {
            matches!(self, Answer::ServerError | Answer::Refused)
        }
        fn never_sent(&self) -> bool {
            *self == Answer::Refused
        }
    }

    fn instances(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|i| Instance {
                id: format!("i{i}"),
                service: "s".into(),
                address: format!("127.0.0.1:{}", 1000 + i),
                version: String::new(),
                metadata: BTreeMap::new(),
                weight: None,
            })
            .collect()
    }

    fn guard(max_attempts: u32) -> Guard {
        let mut config = Resilience::default();
        config.retry.max_attempts = max_attempts;
        config.retry.backoff.base_ms = 0;
        config.retry.budget.ratio = 1.0;
        Guard::new("s", &config)
    }

    const LIMITS: Limits = Limits {
        deadline: None,
        within: None,
        per_try: Duration::from_secs(5),
    };

    /// Runs a call whose attempts answer from `script` in turn; the answer and the
    /// instances tried.
    async fn run(
        guard: &Guard,
        n: usize,
        repeatable: bool,
        script: &[Answer],
    ) -> (Result<Answer, Rejected>, Vec<String>) {
        let tried = Mutex::new(Vec::new());
        let next = Mutex::new(script.iter().copied());
        let list = instances(n);
        let result = guard
            .call(&list, repeatable, LIMITS, |instance, _| {
                tried.lock().unwrap().push(instance.id.clone());
                let answer = next.lock().unwrap().next().expect("script too short");
                async move { answer }
            })
            .await;
        (result, tried.into_inner().unwrap())
    }

    #[tokio::test]
    async fn retries_what_the_outcome_allows_on_another_instance() {
        let g = guard(3);
        let (result, tried) = run(&g, 3, true, &[Answer::ServerError, Answer::Ok]).await;
        assert_eq!(result, Ok(Answer::Ok));
        assert_eq!(tried.len(), 2);
        assert_ne!(tried[0], tried[1], "a retry goes to another instance");

        // A 4xx is final; so is a 5xx when the request may not be sent twice.
        let (result, tried) = run(&g, 3, true, &[Answer::ClientError]).await;
        assert_eq!((result, tried.len()), (Ok(Answer::ClientError), 1));
        let (result, tried) = run(&g, 3, false, &[Answer::ServerError]).await;
        assert_eq!((result, tried.len()), (Ok(Answer::ServerError), 1));

        // Attempts are bounded.
        let (result, tried) = run(&g, 3, true, &[Answer::ServerError; 3]).await;
        assert_eq!((result, tried.len()), (Ok(Answer::ServerError), 3));
    }

    /// A guard that opens on one failure, for a second, then lets one trial through.
    fn one_trial_guard() -> Guard {
        let mut config = Resilience::default();
        config.retry.max_attempts = 1;
        config.breaker.window_calls = 1;
        config.breaker.minimum_calls = 1;
        config.breaker.permitted_in_half_open = 1;
        config.breaker.wait_in_open_ms = 1000;
        Guard::new("s", &config)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_given_up_half_way_leaves_nothing_counted() {
        let g = one_trial_guard();
        let (result, _) = run(&g, 1, false, &[Answer::ServerError]).await;
        assert_eq!(result, Ok(Answer::ServerError));
        assert_eq!(g.breaker.state().as_str(), "open");
        tokio::time::advance(Duration::from_secs(2)).await;

        // Half-open: the one trial's caller goes away before the instance answers (its
        // future is dropped, as a reset HTTP/2 stream's is).
        let list = instances(1);
        let trial = g.call(&list, false, LIMITS, |_, _| {
            std::future::pending::<Answer>()
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(10), trial)
                .await
                .is_err()
        );
        assert_eq!(
            g.status()["instances"]["i0"]["inFlight"],
            0,
            "nothing left in flight"
        );

        // The trial slot came back: the next call is let through, and closes the breaker.
        let (result, _) = run(&g, 1, false, &[Answer::Ok]).await;
        assert_eq!(result, Ok(Answer::Ok));
        assert_eq!(g.breaker.state().as_str(), "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_admitted_closed_and_given_up_half_open_frees_no_trial_slot() {
        let g = one_trial_guard();
        let list = instances(1);
        let hang = |_: &Instance, _| std::future::pending::<Answer>();
        // A, admitted while closed, hangs.
        let mut a = Box::pin(g.call(&list, false, LIMITS, hang));
        assert!(
            tokio::time::timeout(Duration::from_millis(1), &mut a)
                .await
                .is_err()
        );
        // B fails: open; a while later, half-open, and C takes the one trial slot.
        let (result, _) = run(&g, 1, false, &[Answer::ServerError]).await;
        assert_eq!(result, Ok(Answer::ServerError));
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut c = Box::pin(g.call(&list, false, LIMITS, hang));
        assert!(
            tokio::time::timeout(Duration::from_millis(1), &mut c)
                .await
                .is_err()
        );
        // A's caller goes away: A held no trial slot, so none is freed for D.
        drop(a);
        let (result, tried) = run(&g, 1, false, &[]).await;
        assert_eq!((result, tried.len()), (Err(Rejected::Open), 0));
        drop(c);
    }

    #[tokio::test]
    async fn refused_connections_try_the_next_instance_whatever_the_method() {
        let g = guard(1); // no retries at all: refusals still move on
        let (result, tried) = run(&g, 3, false, &[Answer::Refused, Answer::Ok]).await;
        assert_eq!((result, tried.len()), (Ok(Answer::Ok), 2));
        // At most three instances are tried that way.
        let (result, tried) = run(&g, 5, false, &[Answer::Refused; 3]).await;
        assert_eq!((result, tried.len()), (Ok(Answer::Refused), 3));
    }

    #[tokio::test]
    async fn no_instance_and_a_full_bulkhead_are_rejected_without_a_call() {
        let g = guard(2);
        let result = g.call(&[], true, LIMITS, |_, _| async { Answer::Ok }).await;
        assert_eq!(result, Err(Rejected::NoInstance));

        let config = Resilience {
            max_concurrent: 1,
            ..Resilience::default()
        };
        let g = Guard::new("s", &config);
        let _held = g.bulkhead.enter().unwrap();
        let result = g
            .call(&instances(1), true, LIMITS, |_, _| async { Answer::Ok })
            .await;
        assert_eq!(result, Err(Rejected::Full));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_times_out_and_the_deadline_bounds_the_call() {
        let g = guard(2);
        let limits = Limits {
            deadline: Some(Instant::now() + Duration::from_millis(500)),
            within: None,
            per_try: Duration::from_millis(100),
        };
        let calls = Mutex::new(0);
        let result = g
            .call(&instances(2), true, limits, |_, try_for| {
                *calls.lock().unwrap() += 1;
                assert!(try_for <= Duration::from_millis(100));
                async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Answer::Ok
                }
            })
            .await;
        assert_eq!(result, Err(Rejected::Timeout));
        assert_eq!(*calls.lock().unwrap(), 2, "the timeout was retried once");

        let started = Instant::now();
        let limits = Limits {
            deadline: Some(started + Duration::from_millis(50)),
            within: None,
            per_try: Duration::from_secs(5),
        };
        let result = g
            .call(&instances(1), true, limits, |_, _| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Answer::Ok
            })
            .await;
        assert_eq!(result, Err(Rejected::Timeout));
        assert!(started.elapsed() < Duration::from_millis(100));

        // A time from the call's start bounds it the same, and the earlier of the two wins.
        for (deadline, within) in [
            (None, Some(Duration::from_millis(50))),
            (
                Some(Duration::from_secs(5)),
                Some(Duration::from_millis(50)),
            ),
            (
                Some(Duration::from_millis(50)),
                Some(Duration::from_secs(5)),
            ),
        ] {
            let started = Instant::now();
            let limits = Limits {
                deadline: deadline.map(|d| started + d),
                within,
                per_try: Duration::from_secs(5),
            };
            let result = g
                .call(&instances(1), true, limits, |_, try_for| {
                    assert!(try_for <= Duration::from_millis(50), "{try_for:?}");
                    async {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Answer::Ok
                    }
                })
                .await;
            assert_eq!(result, Err(Rejected::Timeout), "{deadline:?} {within:?}");
            assert!(started.elapsed() < Duration::from_millis(1000));
        }
    }

    #[tokio::test]
    async fn failures_open_the_breaker() {
        let g = guard(1);
        let mut opened = false;
        for _ in 0..200 {
            if run(&g, 1, true, &[Answer::ServerError]).await.0 == Err(Rejected::Open) {
                opened = true;
                break;
            }
        }
        assert!(opened, "the breaker never opened");
    }
}
