//! Rollouts: a new version of a service beside the old, traffic shifted to it by weight step
//! by step, each step judged by the two versions' error rates and p99 latencies, rolled back
//! by itself on a regression, and the old version drained and stopped at the end
//! (`docs/rollouts.md`).
//!
//! The control plane decides; two others act on what it publishes, each by long poll:
//! - **the traffic table** (`GET /v1/traffic`): per service, the weight of each version. Every
//!   process's discovery follows it (`tessera_registry::Discovery`) and every balancer picks
//!   a version by weight before it picks an instance (the gateway's and every service
//!   client's), so a step takes effect everywhere within a round trip;
//! - **the generations** (`GET /v1/rollouts/generations`): per service, the versions the
//!   supervisor must run (command, environment, replicas) and those it must stop. `tessera
//!   up` starts a new generation's processes, and stops a retired one's with SIGTERM: each
//!   instance deregisters, finishes what it has in flight and exits.
//!
//! A step lasts `step_ms`; at its start and its end every instance of both versions is
//! scraped (`/metrics` on its admin listener) and the differences summed per version: a
//! regression is the new version's error rate above the old one's by more than
//! `max_error_increase`, or its p99 above `max_p99_ratio` times the old one's (plus 10 ms,
//! for latencies too small to compare). The new instances dying is a regression too.
//! Blue-green is the one-step case, 0 → 100, judged against the old version measured for a
//! step before the switch. An abort rolls back at once.
//!
//! The state (traffic, generations, the rollouts and their steps) is one JSON file, written
//! whole on every change and read at start: a control plane that restarts mid-rollout keeps
//! routing as it did, and marks the interrupted rollout rolled back (its traffic back on the
//! old version, the new one retired), since its verdict was never reached.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera::ApiError;
use tessera::identity::Principal;
use tokio::sync::watch;

use crate::Registry;
use crate::durable::Durable;
use crate::policy::Caller;
use crate::telemetry::metrics::Totals;

/// The document the state is kept in (`durable.rs`).
const FILE: &str = "rollouts.json";

/// Rollouts kept in the history (ended ones: those under way are always kept).
const HISTORY: usize = 50;
/// The state of a rollout whose every step passed, while its old version is drained.
const FINISHING: &str = "finishing";
/// How long after a weight change before what it stopped is acted on: every process's
/// discovery has followed it within a round trip; this is many of those.
const SETTLE: Duration = Duration::from_millis(1500);

/// The rollouts of a system, and what they publish.
#[derive(Clone)]
pub struct Rollouts {
    inner: Arc<Inner>,
}

struct Inner {
    durable: Durable,
    /// Held while a change is made and written: one change at a time, in order.
    state: tokio::sync::Mutex<Published>,
    changed: watch::Sender<u64>,
    registry: Registry,
    http: reqwest::Client,
    /// Rollouts asked to stop, by service.
    aborts: Mutex<std::collections::HashSet<String>>,
}

/// Everything published, and the history.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Published {
    index: u64,
    next_id: u64,
    /// Per service, each version's weight; absent: every instance alike.
    traffic: BTreeMap<String, BTreeMap<String, u32>>,
    /// Per service, the generations beside (or instead of) the manifest's.
    generations: BTreeMap<String, Vec<Generation>>,
    rollouts: Vec<Rollout>,
}

/// A version of a service the supervisor runs, or stops.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Generation {
    pub version: String,
    /// The program and its arguments; none: the manifest's.
    pub command: Option<Vec<String>>,
    /// Settings over the manifest's.
    pub env: BTreeMap<String, String>,
    pub replicas: u32,
    /// Its processes are to be stopped (drained), and not started again.
    pub retired: bool,
    /// The manifest's own generation (the processes `up` started).
    pub manifest: bool,
}

/// One rollout, as it went.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub service: String,
    pub from: String,
    pub to: String,
    pub steps: Vec<u32>,
    pub step_ms: u64,
    /// `starting`, `shifting`, `completed`, `rolled_back`, `failed`.
    pub state: String,
    /// The new version's weight now.
    pub weight: u32,
    pub reason: Option<String>,
    pub reports: Vec<StepReport>,
    pub who: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
}

/// What a step measured, and what was decided.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepReport {
    pub weight: u32,
    pub old: Measured,
    pub new: Measured,
    /// `passed`, or why not.
    pub verdict: String,
}

/// One version over one step, summed over its instances.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Measured {
    pub instances: usize,
    pub requests: f64,
    pub errors: f64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

/// A rollout asked for (`POST /v1/rollouts/{service}`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The new version's program; none: the running one's.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Settings over the running ones'.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its name (`TESSERA_VERSION`); default `r<id>`.
    #[serde(default)]
    pub version: Option<String>,
    /// The new version's weight at each step, ending at 100.
    #[serde(default = "canary")]
    pub steps: Vec<u32>,
    #[serde(default = "step_ms")]
    pub step_ms: u64,
    /// The most the new version's error rate may exceed the old one's (0.05: 5 points).
    #[serde(default = "max_error_increase")]
    pub max_error_increase: f64,
    #[serde(default = "max_p99_ratio")]
    pub max_p99_ratio: f64,
    /// The fewest requests the new version must have served in a step to be judged on it.
    #[serde(default = "min_requests")]
    pub min_requests: f64,
}

fn canary() -> Vec<u32> {
    vec![10, 50, 100]
}
fn step_ms() -> u64 {
    30_000
}
fn max_error_increase() -> f64 {
    0.05
}
fn max_p99_ratio() -> f64 {
    2.0
}
fn min_requests() -> f64 {
    10.0
}

impl Rollouts {
    /// Opens the state kept in `durable` (an interrupted rollout completed or rolled back),
    /// and follows `registry`.
    pub async fn open(durable: Durable, registry: Registry) -> anyhow::Result<Self> {
        let mut state: Published = match durable.read(FILE).await? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => Published::default(),
        };
        let interrupted: Vec<(String, String, String, bool)> = state
            .rollouts
            .iter()
            .filter(|r| r.ended_ms.is_none())
            .map(|r| {
                let passed = r.state == FINISHING;
                (r.service.clone(), r.from.clone(), r.to.clone(), passed)
            })
            .collect();
        let ended_at_start = !interrupted.is_empty();
        for (service, from, to, passed) in interrupted {
            // One whose every step passed is completed (its old version may be stopped
            // already); any other is rolled back, its verdict never reached.
            let (outcome, reason) = if passed {
                tracing::warn!(service, "a rollout was finishing at a restart: completed");
                weigh(&mut state, &service, &from, 0, &to);
                retire(&mut state, &service, &from);
                ("completed", None)
            } else {
                tracing::warn!(
                    service,
                    "a rollout was interrupted by a restart: rolled back"
                );
                back_to(&mut state, &service, &from, &to);
                (
                    "rolled_back",
                    Some("the control plane restarted during it".to_string()),
                )
            };
            if let Some(r) = current(&mut state, &service) {
                r.state = outcome.into();
                r.reason = reason;
                r.weight = if passed { 100 } else { 0 };
                r.ended_ms = Some(tessera::unix_now_ms());
            }
        }
        let (changed, _) = watch::channel(state.index);
        let inner = Inner {
            durable,
            state: tokio::sync::Mutex::new(state),
            changed,
            registry,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(2))
                .build()?,
            aborts: Mutex::default(),
        };
        let rollouts = Self {
            inner: Arc::new(inner),
        };
        // Written back only when a restart ended a rollout: an untouched state is not
        // rewritten at every start.
        if ended_at_start {
            rollouts.change(|_| ()).await?;
        }
        Ok(rollouts)
    }

    /// Changes the state under its lock, bumps the index, writes it, wakes the long polls.
    /// The change is made on a copy, taken only once written: a failed write changes nothing.
    async fn change<R>(&self, f: impl FnOnce(&mut Published) -> R) -> anyhow::Result<R> {
        let mut state = self.inner.state.lock().await;
        let mut next = state.clone();
        let out = f(&mut next);
        next.index += 1;
        let bytes = serde_json::to_vec_pretty(&next)?;
        self.inner.durable.write(FILE, bytes).await?;
        *state = next;
        let index = state.index;
        drop(state);
        self.inner.changed.send_replace(index);
        Ok(out)
    }

    async fn read<R>(&self, f: impl FnOnce(&Published) -> R) -> R {
        f(&*self.inner.state.lock().await)
    }

    /// Waits until the index passes `after`, or `wait` passes.
    async fn wait_past(&self, after: u64, wait: Duration) {
        let mut rx = self.inner.changed.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|i| *i > after)).await;
    }

    /// Starts a rollout of `service` as `plan` says; the rollout as it begins.
    async fn start(&self, service: &str, plan: Plan, who: &str) -> Result<Rollout, ApiError> {
        check(&plan)?;
        let instances = self.all_instances(service);
        if instances.is_empty() {
            return Err(ApiError::not_found(format!(
                "{service} has no live instance to roll out from"
            )));
        }
        let mut versions: Vec<&str> = instances.iter().map(|i| i.version.as_str()).collect();
        versions.sort_unstable();
        versions.dedup();
        if versions.len() > 1 {
            return Err(ApiError::conflict(
                "versions_mixed",
                format!(
                    "{service} runs several versions ({}): finish or abort what is under way first",
                    versions.join(", ")
                ),
            ));
        }
        let from = versions[0].to_string();
        let replicas = instances.len() as u32;
        let rollout = self
            .change(|state| {
                if state
                    .rollouts
                    .iter()
                    .any(|r| r.service == service && r.ended_ms.is_none())
                {
                    return Err(ApiError::conflict(
                        "rollout_under_way",
                        format!("a rollout of {service} is under way"),
                    ));
                }
                state.next_id += 1;
                let id = state.next_id;
                let to = plan.version.clone().unwrap_or_else(|| format!("r{id}"));
                if to == from {
                    return Err(ApiError::bad_request(
                        "invalid_rollout",
                        format!("{service} already runs version {to}"),
                    ));
                }
                // The running generation: the last one not retired, else the manifest's.
                let generations = state.generations.entry(service.to_string()).or_default();
                if !generations.iter().any(|g| !g.retired) {
                    generations.push(Generation {
                        version: from.clone(),
                        command: None,
                        env: BTreeMap::new(),
                        replicas,
                        retired: false,
                        manifest: true,
                    });
                }
                let running = generations.iter().rev().find(|g| !g.retired).cloned();
                // As many as the running version is meant to have, not only those up now.
                let replicas = running
                    .as_ref()
                    .map_or(replicas, |g| g.replicas.max(replicas));
                let mut env = running.as_ref().map(|g| g.env.clone()).unwrap_or_default();
                env.extend(plan.env.clone());
                generations.push(Generation {
                    version: to.clone(),
                    command: plan
                        .command
                        .clone()
                        .or_else(|| running.and_then(|g| g.command)),
                    env,
                    replicas,
                    retired: false,
                    manifest: false,
                });
                // No traffic to the new version until its first step.
                state.traffic.insert(
                    service.to_string(),
                    BTreeMap::from([(from.clone(), 100), (to.clone(), 0)]),
                );
                let rollout = Rollout {
                    id,
                    service: service.to_string(),
                    from: from.clone(),
                    to,
                    steps: plan.steps.clone(),
                    step_ms: plan.step_ms,
                    state: "starting".into(),
                    weight: 0,
                    reason: None,
                    reports: Vec::new(),
                    who: who.to_string(),
                    started_ms: tessera::unix_now_ms(),
                    ended_ms: None,
                };
                state.rollouts.push(rollout.clone());
                while state.rollouts.len() > HISTORY {
                    match state.rollouts.iter().position(|r| r.ended_ms.is_some()) {
                        Some(oldest) => state.rollouts.remove(oldest),
                        None => break,
                    };
                }
                let rollout = (rollout, replicas);
                Ok(rollout)
            })
            .await
            .map_err(ApiError::internal)??;
        let (rollout, replicas) = rollout;
        // An abort of an earlier rollout of the service, too late for it, is not this one's.
        self.inner
            .aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service);
        tracing::info!(target: "audit", who, service, from = %rollout.from, to = %rollout.to, steps = ?rollout.steps, "rollout started");
        let me = self.clone();
        let (service, to) = (service.to_string(), rollout.to.clone());
        tokio::spawn(async move { me.drive(service, from, to, replicas, plan).await });
        Ok(rollout)
    }

    /// Runs a started rollout to its end.
    async fn drive(self, service: String, from: String, to: String, replicas: u32, plan: Plan) {
        let outcome = self.steps(&service, &from, &to, replicas, &plan).await;
        let (state, reason) = match outcome {
            Ok(()) => ("completed", None),
            Err(Ending::RolledBack(why)) => ("rolled_back", Some(why)),
            Err(Ending::Failed(why)) => ("failed", Some(why)),
        };
        if state == "completed" {
            // Passed: from here the rollout completes, whatever happens (an abort is refused,
            // a restart of the control plane completes it).
            let _ = self
                .change(|s| {
                    if let Some(r) = current(s, &service) {
                        r.state = FINISHING.into();
                    }
                })
                .await;
            self.finish(&service, &from, &to).await;
        } else {
            tracing::warn!(
                service,
                to,
                reason = reason.as_deref().unwrap_or("-"),
                "rollout rolled back"
            );
            let _ = self.change(|s| weigh(s, &service, &from, 100, &to)).await;
            // The new version's processes stop once nothing is routed to them.
            tokio::time::sleep(SETTLE).await;
            let _ = self.change(|s| retire(s, &service, &to)).await;
            self.gone(&service, &to).await;
            let _ = self
                .change(|s| {
                    s.traffic.remove(&service);
                })
                .await;
        }
        self.inner
            .aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&service);
        let _ = self
            .change(|s| {
                if let Some(r) = current(s, &service) {
                    r.state = state.into();
                    r.reason = reason.clone();
                    r.ended_ms = Some(tessera::unix_now_ms());
                    if state != "completed" {
                        r.weight = 0;
                    }
                }
            })
            .await;
        tracing::info!(target: "audit", service, to, outcome = state, reason = reason.as_deref().unwrap_or("-"), "rollout ended");
    }

    async fn steps(
        &self,
        service: &str,
        from: &str,
        to: &str,
        replicas: u32,
        plan: &Plan,
    ) -> Result<(), Ending> {
        // The new instances: registered (ready to serve) within a minute.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.instances(service, to).len() < replicas as usize {
            self.aborted(service)?;
            if tokio::time::Instant::now() > deadline {
                return Err(Ending::Failed(format!(
                    "the new version's {replicas} instance(s) did not all register within 60 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self
            .change(|s| {
                if let Some(r) = current(s, service) {
                    r.state = "shifting".into();
                }
            })
            .await;
        // Blue-green: the old version measured alone first, to judge the new one against.
        let mut last_old = None;
        if plan.steps.first() == Some(&100) {
            let (old, _) = self.measure(service, from, to, plan.step_ms).await?;
            last_old = Some(old);
        }
        for &weight in &plan.steps {
            let _ = self
                .change(|s| {
                    weigh(s, service, from, 100 - weight, to);
                    if let Some(r) = current(s, service) {
                        r.weight = weight;
                    }
                })
                .await;
            let (old, new) = self.measure(service, from, to, plan.step_ms).await?;
            let against = if old.requests > 0.0 {
                old.clone()
            } else {
                last_old.clone().unwrap_or_default()
            };
            let verdict = judge(&against, &new, plan);
            let passed = verdict.is_none();
            let report = StepReport {
                weight,
                old: old.clone(),
                new,
                verdict: verdict.clone().unwrap_or_else(|| "passed".into()),
            };
            let _ = self
                .change(|s| {
                    if let Some(r) = current(s, service) {
                        r.reports.push(report);
                    }
                })
                .await;
            if let Some(why) = verdict {
                return Err(Ending::RolledBack(format!("at {weight}%: {why}")));
            }
            debug_assert!(passed);
            if old.requests > 0.0 {
                last_old = Some(old);
            }
        }
        Ok(())
    }

    /// Both versions over `step_ms`: the differences of their instances' counters.
    async fn measure(
        &self,
        service: &str,
        from: &str,
        to: &str,
        step_ms: u64,
    ) -> Result<(Measured, Measured), Ending> {
        let before = self.scrape(service).await;
        let end = tokio::time::Instant::now() + Duration::from_millis(step_ms);
        let expected = self.instances(service, to).len();
        while tokio::time::Instant::now() < end {
            self.aborted(service)?;
            if self.instances(service, to).len() < expected {
                return Err(Ending::RolledBack(
                    "an instance of the new version left the registry (it died)".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100).min(Duration::from_millis(step_ms)))
                .await;
        }
        let after = self.scrape(service).await;

        let mut sums: BTreeMap<&str, (usize, Totals)> = BTreeMap::new();
        for (id, (version, now)) in &after {
            if version != from && version != to {
                continue;
            }
            let sum = sums.entry(version.as_str()).or_default();
            sum.0 += 1;
            let was = before.get(id).map(|(_, t)| t.clone()).unwrap_or_default();
            sum.1.add_since(now, &was);
        }
        let measured = |version: &str| {
            let (instances, totals) = sums.get(version).cloned().unwrap_or_default();
            Measured {
                instances,
                requests: totals.requests(),
                errors: totals.errors(),
                error_rate: if totals.requests() > 0.0 {
                    totals.errors() / totals.requests()
                } else {
                    0.0
                },
                p99_ms: totals.p99_ms(),
            }
        };
        Ok((measured(from), measured(to)))
    }

    /// Every instance of `service`: its version and what its `/metrics` says now.
    async fn scrape(&self, service: &str) -> BTreeMap<String, (String, Totals)> {
        let scrapes = self.all_instances(service).into_iter().filter_map(|i| {
            let admin = crate::telemetry::metrics::admin_of(&i)?;
            let http = self.inner.http.clone();
            Some(async move {
                let text = crate::telemetry::metrics::scrape(&http, &admin).await?;
                Some((i.id, (i.version, Totals::of(&text))))
            })
        });
        futures_util::future::join_all(scrapes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Every registered instance of `service`.
    fn all_instances(&self, service: &str) -> Vec<tessera::registry::Instance> {
        self.inner
            .registry
            .catalog()
            .services
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// The registered instances of `service` at `version`.
    fn instances(&self, service: &str, version: &str) -> Vec<tessera::registry::Instance> {
        let mut all = self.all_instances(service);
        all.retain(|i| i.version == version);
        all
    }

    /// Waits (30 s at most) until no instance of `version` is registered.
    async fn gone(&self, service: &str, version: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.instances(service, version).is_empty() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn aborted(&self, service: &str) -> Result<(), Ending> {
        if self
            .inner
            .aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(service)
        {
            return Err(Ending::RolledBack("aborted".into()));
        }
        Ok(())
    }

    /// The end of a rollout that passed: everything on the new version, the old drained.
    async fn finish(&self, service: &str, from: &str, to: &str) {
        let _ = self.change(|s| weigh(s, service, from, 0, to)).await;
        // Nothing new reaches the old instances; then they are stopped, each finishing what
        // it has in flight and leaving the registry.
        tokio::time::sleep(SETTLE).await;
        let _ = self.change(|s| retire(s, service, from)).await;
        self.gone(service, from).await;
        // One version left: every instance alike again.
        let _ = self
            .change(|s| {
                s.traffic.remove(service);
            })
            .await;
    }
}

enum Ending {
    RolledBack(String),
    Failed(String),
}

/// Latencies closer than this are not told apart (a fresh instance's first requests).
const P99_SLACK_MS: f64 = 25.0;
/// The fewest requests of each version for their p99s to be compared.
const P99_MIN_REQUESTS: f64 = 100.0;

/// Why `new` is a regression against `old`, if it is.
fn judge(old: &Measured, new: &Measured, plan: &Plan) -> Option<String> {
    if new.requests < plan.min_requests {
        return None; // too little to judge on; the next step sends it more
    }
    if new.error_rate > old.error_rate + plan.max_error_increase {
        return Some(format!(
            "the new version's error rate {:.1}% against the old one's {:.1}% (at most {:.1} points more)",
            new.error_rate * 100.0,
            old.error_rate * 100.0,
            plan.max_error_increase * 100.0
        ));
    }
    // A p99 of fewer than a hundred requests is their slowest one (a fresh instance's first
    // connection to its database): not a latency to judge a version by.
    let enough = |m: &Measured| m.requests >= P99_MIN_REQUESTS;
    if let (Some(old_p99), Some(new_p99)) = (old.p99_ms, new.p99_ms)
        && enough(old)
        && enough(new)
        && new_p99 > old_p99 * plan.max_p99_ratio + P99_SLACK_MS
    {
        return Some(format!(
            "the new version's p99 {new_p99:.1} ms against the old one's {old_p99:.1} ms (at most {}×)",
            plan.max_p99_ratio
        ));
    }
    None
}

/// The platform's settings a new version may change: how it runs, not who it is.
const TUNABLE: [&str; 5] = [
    "TESSERA_FAULT_RATE",
    "TESSERA_SHUTDOWN_GRACE_MS",
    "TESSERA_CALL_TIMEOUT_MS",
    "TESSERA_MAX_BODY_BYTES",
    "TESSERA_TRACE_SAMPLE",
];

fn check(plan: &Plan) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::bad_request("invalid_rollout", m));
    if plan.steps.is_empty() || plan.steps.last() != Some(&100) {
        return bad("steps: weights of the new version ending at 100".into());
    }
    if plan.steps.windows(2).any(|w| w[0] >= w[1]) || plan.steps.iter().any(|s| *s == 0 || *s > 100)
    {
        return bad("steps: rising weights from 1 to 100".into());
    }
    if !(100..=3_600_000).contains(&plan.step_ms) {
        return bad("step_ms: from 100 to 3600000".into());
    }
    if !(0.0..=1.0).contains(&plan.max_error_increase) || plan.max_p99_ratio < 1.0 {
        return bad("max_error_increase: 0 to 1; max_p99_ratio: at least 1".into());
    }
    if let Some(v) = &plan.version
        && (v.is_empty()
            || v.len() > 64
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._+".contains(c)))
    {
        return bad(format!(
            "version {v:?}: letters, digits, '-', '.', '_', '+'"
        ));
    }
    if plan.command.as_ref().is_some_and(|c| c.is_empty()) {
        return bad("command: a program and its arguments".into());
    }
    for key in plan.env.keys() {
        if key.starts_with("TESSERA_") && !TUNABLE.contains(&key.as_str()) {
            return bad(format!(
                "env: {key} is the platform's to set (of TESSERA_*, a version may change {})",
                TUNABLE.join(", ")
            ));
        }
    }
    Ok(())
}

/// The rollout of `service` under way, or its last.
fn current<'a>(state: &'a mut Published, service: &str) -> Option<&'a mut Rollout> {
    state
        .rollouts
        .iter_mut()
        .rev()
        .find(|r| r.service == service)
}

/// `from` weighs `weight`, `to` the rest.
fn weigh(state: &mut Published, service: &str, from: &str, weight: u32, to: &str) {
    state.traffic.insert(
        service.to_string(),
        BTreeMap::from([(from.to_string(), weight), (to.to_string(), 100 - weight)]),
    );
}

/// Traffic all on `from`, `to` retired (the weights stay until a later rollout: `to` has no
/// instance left to weigh).
fn back_to(state: &mut Published, service: &str, from: &str, to: &str) {
    weigh(state, service, from, 100, to);
    retire(state, service, to);
}

fn retire(state: &mut Published, service: &str, version: &str) {
    if let Some(generations) = state.generations.get_mut(service) {
        for g in generations.iter_mut().filter(|g| g.version == version) {
            g.retired = true;
        }
        // What is retired and not the manifest's is forgotten once stopped: kept one round,
        // for the supervisor to see it go.
        generations.retain(|g| g.manifest || !g.retired || g.version == version);
    }
}

/// The rollouts' routes (behind the credential check).
pub fn routes(rollouts: Rollouts) -> Router {
    Router::new()
        .route("/v1/traffic", get(traffic))
        .route("/v1/rollouts", get(list))
        .route("/v1/rollouts/generations", get(generations))
        .route("/v1/rollouts/{service}", post(start).get(status))
        .route("/v1/rollouts/{service}/abort", post(abort))
        .with_state(rollouts)
}

#[derive(Deserialize)]
struct Poll {
    after: Option<u64>,
    wait: Option<u64>,
}

impl Poll {
    async fn wait(&self, rollouts: &Rollouts) {
        if let Some(after) = self.after {
            let wait = Duration::from_secs(self.wait.unwrap_or(25).min(60));
            rollouts.wait_past(after, wait).await;
        }
    }
}

/// `GET /v1/traffic?after=N&wait=S`: each service's weights by version (any process of the
/// system: its discovery follows it).
async fn traffic(
    State(rollouts): State<Rollouts>,
    _caller: Caller,
    Query(poll): Query<Poll>,
) -> Json<Value> {
    poll.wait(&rollouts).await;
    rollouts
        .read(|s| Json(json!({ "index": s.index, "services": s.traffic })))
        .await
}

/// `GET /v1/rollouts/generations?after=N&wait=S`: what the supervisor runs.
async fn generations(
    State(rollouts): State<Rollouts>,
    caller: Caller,
    Query(poll): Query<Poll>,
) -> Result<Json<Value>, ApiError> {
    caller.may_inspect()?;
    poll.wait(&rollouts).await;
    Ok(rollouts
        .read(|s| Json(json!({ "index": s.index, "services": s.generations })))
        .await)
}

/// `GET /v1/rollouts`: every service's last rollouts, newest first.
async fn list(State(rollouts): State<Rollouts>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.may_inspect()?;
    Ok(rollouts
        .read(|s| {
            let list: Vec<&Rollout> = s.rollouts.iter().rev().collect();
            Json(json!({ "rollouts": list, "traffic": s.traffic }))
        })
        .await)
}

/// `GET /v1/rollouts/{service}`: its last rollout.
async fn status(
    State(rollouts): State<Rollouts>,
    caller: Caller,
    Path(service): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.may_inspect()?;
    rollouts
        .read(|s| {
            let last = s.rollouts.iter().rev().find(|r| r.service == service);
            match last {
                Some(r) => Ok(Json(json!(r))),
                None => Err(ApiError::not_found(format!("{service} has had no rollout"))),
            }
        })
        .await
}

fn may_roll_out(caller: &Caller) -> Result<(), ApiError> {
    if caller.principal == Principal::Admin {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{} may not roll out: that is for admins",
        caller.principal
    )))
}

/// `POST /v1/rollouts/{service}` with a [`Plan`]: `202` with the rollout as it starts.
async fn start(
    State(rollouts): State<Rollouts>,
    caller: Caller,
    Path(service): Path<String>,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    may_roll_out(&caller)?;
    let plan: Plan = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_rollout", format!("the rollout: {e}")))?;
    let rollout = rollouts
        .start(&service, plan, &caller.principal.to_string())
        .await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(json!(rollout))))
}

/// `POST /v1/rollouts/{service}/abort`: rolls back the rollout under way.
async fn abort(
    State(rollouts): State<Rollouts>,
    caller: Caller,
    Path(service): Path<String>,
) -> Result<Json<Value>, ApiError> {
    may_roll_out(&caller)?;
    let under_way = rollouts
        .read(|s| {
            s.rollouts
                .iter()
                .rev()
                .find(|r| r.service == service && r.ended_ms.is_none())
                .map(|r| r.state.clone())
        })
        .await;
    match under_way.as_deref() {
        None => {
            return Err(ApiError::conflict(
                "no_rollout",
                format!("no rollout of {service} is under way"),
            ));
        }
        Some(FINISHING) => {
            return Err(ApiError::conflict(
                "rollout_passed",
                format!(
                    "every step of {service}'s rollout passed: its old version is being drained"
                ),
            ));
        }
        Some(_) => {}
    }
    rollouts
        .inner
        .aborts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(service.clone());
    tracing::info!(target: "audit", who = %caller.principal, service, "rollout aborted");
    Ok(Json(json!({ "service": service, "aborting": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        serde_json::from_value(json!({})).unwrap()
    }

    fn measured(requests: f64, errors: f64, p99: f64) -> Measured {
        Measured {
            instances: 1,
            requests,
            errors,
            error_rate: errors / requests,
            p99_ms: Some(p99),
        }
    }

    #[test]
    fn a_regression_is_more_errors_or_a_slower_p99_over_enough_requests() {
        let plan = plan();
        let old = measured(1000.0, 1.0, 20.0);
        assert_eq!(judge(&old, &measured(100.0, 2.0, 25.0), &plan), None);
        // A p99 of a few requests is their slowest: not judged on.
        assert_eq!(judge(&old, &measured(20.0, 0.0, 300.0), &plan), None);
        let errors = judge(&old, &measured(100.0, 30.0, 20.0), &plan).unwrap();
        assert!(errors.contains("30.0%"), "{errors}");
        let slow = judge(&old, &measured(100.0, 0.0, 90.0), &plan).unwrap();
        assert!(slow.contains("p99"), "{slow}");
        // Too few requests to tell.
        assert_eq!(judge(&old, &measured(5.0, 5.0, 500.0), &plan), None);
    }

    /// A state file with one rollout of `catalog` from 1 to 2 left in `state`.
    async fn left_in(state: &str) -> (std::path::PathBuf, Rollouts) {
        let dir =
            std::env::temp_dir().join(format!("tessera-rollouts-{state}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let generation = |version: &str, retired: bool, manifest: bool| Generation {
            version: version.into(),
            command: None,
            env: BTreeMap::new(),
            replicas: 2,
            retired,
            manifest,
        };
        let published = Published {
            index: 7,
            next_id: 1,
            traffic: BTreeMap::from([(
                "catalog".to_string(),
                BTreeMap::from([("1".to_string(), 0), ("2".to_string(), 100)]),
            )]),
            generations: BTreeMap::from([(
                "catalog".to_string(),
                vec![
                    generation("1", state == FINISHING, true),
                    generation("2", false, false),
                ],
            )]),
            rollouts: vec![Rollout {
                id: 1,
                service: "catalog".into(),
                from: "1".into(),
                to: "2".into(),
                steps: vec![100],
                step_ms: 1000,
                state: state.into(),
                weight: 100,
                reason: None,
                reports: Vec::new(),
                who: "admin".into(),
                started_ms: 1,
                ended_ms: None,
            }],
        };
        std::fs::write(
            dir.join("rollouts.json"),
            serde_json::to_vec(&published).unwrap(),
        )
        .unwrap();
        let registry = Registry::new(Duration::from_millis(10));
        let durable = Durable::for_system(&dir, None).unwrap();
        let rollouts = Rollouts::open(durable, registry).await.unwrap();
        (dir, rollouts)
    }

    #[tokio::test]
    async fn a_restart_completes_a_rollout_that_passed_and_rolls_back_one_that_had_not() {
        // Every step passed, the old version already being drained: completed, the new one
        // kept (rolling it back would leave the service with no version at all).
        let (dir, rollouts) = left_in(FINISHING).await;
        rollouts
            .read(|s| {
                let r = &s.rollouts[0];
                assert_eq!(
                    (r.state.as_str(), r.ended_ms.is_some()),
                    ("completed", true)
                );
                let g = &s.generations["catalog"];
                assert!(g.iter().any(|g| g.version == "2" && !g.retired), "{g:?}");
                assert!(g.iter().any(|g| g.version == "1" && g.retired), "{g:?}");
                assert_eq!(s.traffic["catalog"]["2"], 100);
                assert!(s.index > 7);
            })
            .await;
        let _ = std::fs::remove_dir_all(dir);
        // Mid-step: rolled back, the new version retired, all traffic on the old one.
        let (dir, rollouts) = left_in("shifting").await;
        rollouts
            .read(|s| {
                let r = &s.rollouts[0];
                assert_eq!(r.state, "rolled_back");
                let g = &s.generations["catalog"];
                assert!(g.iter().any(|g| g.version == "1" && !g.retired), "{g:?}");
                assert!(g.iter().any(|g| g.version == "2" && g.retired), "{g:?}");
                assert_eq!(s.traffic["catalog"]["1"], 100);
            })
            .await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn plans_are_checked() {
        let with = |v: Value| -> Plan { serde_json::from_value(v).unwrap() };
        assert!(check(&plan()).is_ok());
        for bad in [
            json!({ "steps": [10, 50] }),
            json!({ "steps": [50, 10, 100] }),
            json!({ "steps": [0, 100] }),
            json!({ "step_ms": 1 }),
            json!({ "version": "a b" }),
            json!({ "command": [] }),
            json!({ "env": { "TESSERA_PASSPORT_KEYS": "x" } }),
            json!({ "env": { "TESSERA_SERVICE": "auth" } }),
        ] {
            assert!(check(&with(bad.clone())).is_err(), "{bad}");
        }
        assert!(check(&with(json!({ "steps": [100] }))).is_ok());
        assert!(check(&with(json!({ "env": { "TESSERA_FAULT_RATE": "0.3" } }))).is_ok());
    }
}
