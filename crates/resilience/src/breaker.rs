//! A circuit breaker, after Resilience4j's.
//!
//! - **Closed**: calls pass; outcomes fill a sliding window (the last N calls, or the calls of
//!   the last T). Once the window holds at least `minimum_calls`, the breaker opens if the
//!   failure rate or the slow-call rate reaches its threshold.
//! - **Open**: calls fail fast with [`Open`] for `wait_in_open`.
//! - **Half-open**: `permitted_in_half_open` trial calls pass; if their failure or slow rate is
//!   under the thresholds the breaker closes, else it opens again.
//!
//! What counts as a failure is the caller's call ([`CallOutcome`]): connection errors,
//! timeouts and 5xx, never 4xx (a client error says nothing about the upstream's health).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct BreakerConfig {
    /// Count-based window: the last this many calls. Ignored when `window_ms` is set.
    pub window_calls: usize,
    /// Time-based window: the calls of the last this many milliseconds.
    pub window_ms: Option<u64>,
    /// Open at this share of failed calls (0.0–1.0).
    pub failure_rate: f64,
    /// A call slower than this is slow.
    pub slow_call_ms: u64,
    /// Open at this share of slow calls (0.0–1.0).
    pub slow_call_rate: f64,
    /// Judge nothing before the window holds this many calls.
    pub minimum_calls: usize,
    /// Stay open this long.
    pub wait_in_open_ms: u64,
    /// Trial calls in half-open.
    pub permitted_in_half_open: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window_calls: 20,
            window_ms: None,
            failure_rate: 0.5,
            slow_call_ms: 5000,
            slow_call_rate: 1.0,
            minimum_calls: 10,
            wait_in_open_ms: 5000,
            permitted_in_half_open: 3,
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.failure_rate) || !(0.0..=1.0).contains(&self.slow_call_rate)
        {
            return Err("failure_rate and slow_call_rate are shares from 0.0 to 1.0".into());
        }
        if self.window_calls == 0 || self.minimum_calls == 0 || self.permitted_in_half_open == 0 {
            return Err(
                "window_calls, minimum_calls and permitted_in_half_open must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// How a call went, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CallOutcome {
    Success,
    Failure,
    /// Neither (a 4xx, a cancelled call): not recorded.
    Ignored,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The breaker is open: the call was not made.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("circuit breaker {name} is open")]
pub struct Open {
    pub name: String,
}

#[derive(Clone, Copy)]
struct Record {
    at: Instant,
    failed: bool,
    slow: bool,
}

enum State {
    Closed {
        window: VecDeque<Record>,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        admitted: usize,
        results: Vec<Record>,
    },
}

pub struct Breaker {
    name: String,
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(name: &str, config: BreakerConfig) -> Self {
        Self {
            name: name.to_string(),
            config,
            state: Mutex::new(State::Closed {
                window: VecDeque::new(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> BreakerState {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.expire_open(&mut s, Instant::now());
        match *s {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn expire_open(&self, s: &mut State, now: Instant) {
        if let State::Open { until } = *s
            && now >= until
        {
            self.transition(
                s,
                State::HalfOpen {
                    admitted: 0,
                    results: Vec::new(),
                },
                "wait in open elapsed",
            );
        }
    }

    fn transition(&self, s: &mut State, to: State, reason: &str) {
        let from = match s {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        };
        *s = to;
        let (to_name, level) = match s {
            State::Closed { .. } => ("closed", 0.0),
            State::Open { .. } => ("open", 2.0),
            State::HalfOpen { .. } => ("half_open", 1.0),
        };
        tracing::warn!(breaker = %self.name, from, to = to_name, reason, "circuit breaker state change");
        metrics::gauge!("tessera_breaker_state", "breaker" => self.name.clone()).set(level);
        metrics::counter!("tessera_breaker_transitions_total", "breaker" => self.name.clone(), "to" => to_name).increment(1);
    }

    /// Asks to make a call; `Err(Open)` means fail fast, `Ok(true)` that the call is one of
    /// half-open's trials (whose slot an `Ignored` record gives back).
    pub fn acquire(&self) -> Result<bool, Open> {
        self.acquire_at(Instant::now())
    }

    /// [`Self::acquire`] at `now` (a clock the caller read already).
    pub fn acquire_at(&self, now: Instant) -> Result<bool, Open> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.expire_open(&mut s, now);
        match &mut *s {
            State::Closed { .. } => Ok(false),
            State::Open { .. } => {
                metrics::counter!("tessera_breaker_rejected_total", "breaker" => self.name.clone())
                    .increment(1);
                Err(Open {
                    name: self.name.clone(),
                })
            }
            State::HalfOpen { admitted, .. } => {
                if *admitted < self.config.permitted_in_half_open {
                    *admitted += 1;
                    Ok(true)
                } else {
                    metrics::counter!("tessera_breaker_rejected_total", "breaker" => self.name.clone()).increment(1);
                    Err(Open {
                        name: self.name.clone(),
                    })
                }
            }
        }
    }

    /// Records how an acquired call went, and how long it took.
    pub fn record(&self, outcome: CallOutcome, took: Duration) {
        self.record_at(outcome, took, Instant::now())
    }

    /// [`Self::record`] with the clock read at the call's end (`now`) by the caller.
    pub fn record_at(&self, outcome: CallOutcome, took: Duration, now: Instant) {
        if outcome == CallOutcome::Ignored {
            // Give the half-open slot back: the trial told us nothing.
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let State::HalfOpen { admitted, .. } = &mut *s {
                *admitted = admitted.saturating_sub(1);
            }
            return;
        }
        let record = Record {
            at: now,
            failed: outcome == CallOutcome::Failure,
            slow: took >= Duration::from_millis(self.config.slow_call_ms),
        };
        let c = &self.config;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *s {
            State::Closed { window } => {
                window.push_back(record);
                match c.window_ms {
                    Some(ms) => {
                        while window
                            .front()
                            .is_some_and(|r| now.duration_since(r.at) > Duration::from_millis(ms))
                        {
                            window.pop_front();
                        }
                    }
                    None => {
                        while window.len() > c.window_calls {
                            window.pop_front();
                        }
                    }
                }
                if window.len() >= c.minimum_calls
                    && let Some(reason) = judge(window.iter(), c)
                {
                    let until = now + Duration::from_millis(c.wait_in_open_ms);
                    self.transition(&mut s, State::Open { until }, &reason);
                }
            }
            State::HalfOpen { results, .. } => {
                results.push(record);
                if results.len() >= c.permitted_in_half_open {
                    match judge(results.iter(), c) {
                        Some(reason) => {
                            let until = now + Duration::from_millis(c.wait_in_open_ms);
                            self.transition(
                                &mut s,
                                State::Open { until },
                                &format!("trial calls: {reason}"),
                            );
                        }
                        None => self.transition(
                            &mut s,
                            State::Closed {
                                window: VecDeque::new(),
                            },
                            "trial calls succeeded",
                        ),
                    }
                }
            }
            State::Open { .. } => {} // a call that started before it opened
        }
    }
}

/// Why the records should open the breaker, if they should.
fn judge<'a>(records: impl Iterator<Item = &'a Record>, c: &BreakerConfig) -> Option<String> {
    let (mut n, mut failed, mut slow) = (0usize, 0usize, 0usize);
    for r in records {
        n += 1;
        failed += usize::from(r.failed);
        slow += usize::from(r.slow);
    }
    let failure_rate = failed as f64 / n as f64;
    let slow_rate = slow as f64 / n as f64;
    if failed > 0 && failure_rate >= c.failure_rate {
        Some(format!(
            "failure rate {:.0}% of {n} calls",
            failure_rate * 100.0
        ))
    } else if slow > 0 && slow_rate >= c.slow_call_rate {
        Some(format!(
            "slow-call rate {:.0}% of {n} calls",
            slow_rate * 100.0
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window_calls: 10,
            minimum_calls: 4,
            failure_rate: 0.5,
            slow_call_ms: 100,
            slow_call_rate: 0.5,
            wait_in_open_ms: 1000,
            permitted_in_half_open: 2,
            ..Default::default()
        }
    }

    const FAST: Duration = Duration::from_millis(1);

    fn call(b: &Breaker, outcome: CallOutcome, took: Duration) -> Result<(), Open> {
        b.acquire()?;
        b.record(outcome, took);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_rate_only_after_minimum_calls() {
        let b = Breaker::new("up", config());
        for _ in 0..3 {
            call(&b, CallOutcome::Failure, FAST).unwrap();
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "3 calls are under the minimum of 4"
        );
        call(&b, CallOutcome::Failure, FAST).unwrap();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.acquire(), Err(Open { name: "up".into() }));
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_under_the_threshold_and_ignores_4xx() {
        let b = Breaker::new("up", config());
        for i in 0..20 {
            let o = if i % 3 == 2 {
                CallOutcome::Failure
            } else {
                CallOutcome::Success
            };
            call(&b, o, FAST).unwrap();
            call(&b, CallOutcome::Ignored, FAST).unwrap();
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a third failing is under half"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_slow_calls() {
        let b = Breaker::new("up", config());
        for _ in 0..4 {
            call(&b, CallOutcome::Success, Duration::from_millis(150)).unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_the_wait_then_closes_on_good_trials() {
        let b = Breaker::new("up", config());
        for _ in 0..4 {
            call(&b, CallOutcome::Failure, FAST).unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only the permitted trial calls pass.
        b.acquire().unwrap();
        b.acquire().unwrap();
        assert!(b.acquire().is_err());
        b.record(CallOutcome::Success, FAST);
        b.record(CallOutcome::Success, FAST);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_reopens_on_bad_trials() {
        let b = Breaker::new("up", config());
        for _ in 0..4 {
            call(&b, CallOutcome::Failure, FAST).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        call(&b, CallOutcome::Success, FAST).unwrap();
        call(&b, CallOutcome::Failure, FAST).unwrap();
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "one of two trials failing is the 50% threshold"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.acquire().is_err(), "a full new wait");
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_old_calls() {
        let b = Breaker::new(
            "up",
            BreakerConfig {
                window_ms: Some(1000),
                ..config()
            },
        );
        for _ in 0..3 {
            call(&b, CallOutcome::Failure, FAST).unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..3 {
            call(&b, CallOutcome::Success, FAST).unwrap();
        }
        call(&b, CallOutcome::Failure, FAST).unwrap();
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "the old failures left the window"
        );
    }
}
