//! Choosing an instance: power of two choices on outstanding requests (Envoy's
//! `LEAST_REQUEST`), or round-robin; and passive outlier ejection on top of the registry's
//! health (Envoy's outlier detection).
//!
//! An instance that fails `consecutive_errors` calls in a row (connection errors, timeouts,
//! 5xx) is ejected for `base_ejection_ms` × the number of times it has been ejected (so a
//! flapping instance stays out longer each time, up to ten times the base), but never so
//! many that more than `max_ejection_percent` of the instances are out at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use tessera_registry::Instance;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Two random instances; the one with fewer requests in flight.
    #[default]
    P2c,
    RoundRobin,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    pub consecutive_errors: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_errors: 5,
            base_ejection_ms: 10_000,
            max_ejection_percent: 50,
        }
    }
}

#[derive(Default)]
struct Endpoint {
    outstanding: AtomicUsize,
    consecutive: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Exponentially weighted moving average of latency, in microseconds.
    ewma_us: AtomicU64,
}

impl Endpoint {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| now < until)
    }
}

/// Per-upstream balancing state.
pub struct Balancer {
    name: String,
    policy: Policy,
    outlier: OutlierConfig,
    next: AtomicUsize,
    endpoints: RwLock<HashMap<String, Arc<Endpoint>>>,
}

/// A chosen instance; report how the call went with [`Balancer::finish`].
pub struct Pick {
    pub index: usize,
    endpoint: Arc<Endpoint>,
    started: Instant,
}

/// A call in flight counts against its instance until its pick is dropped, finished or not:
/// a call given up half-way (its caller cancelled, its deadline passed) is not left counted.
impl Drop for Pick {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// During a rollout (the instances carry their version's weight, `Instance::weight`): the
/// instances of one version, chosen by weight among those in `pool`, before one instance is
/// chosen among them. A retry goes to a version not tried yet when one with weight is left
/// (Envoy's `previous_priorities`): a new version failing a request hands it to the old one.
/// A version of weight 0 is not chosen while an instance of one with weight is left to try
/// (when none is, the call goes to what is left rather than fail).
fn one_version(
    pool: Vec<(usize, Arc<Endpoint>)>,
    instances: &[Instance],
    tried: &[usize],
) -> Vec<(usize, Arc<Endpoint>)> {
    if pool.len() < 2 || instances[pool[0].0].weight.is_none() {
        return pool;
    }
    let mut versions: Vec<(&str, u32)> = Vec::with_capacity(2);
    for (i, _) in &pool {
        let instance = &instances[*i];
        if !versions.iter().any(|(v, _)| *v == instance.version) {
            versions.push((&instance.version, instance.weight.unwrap_or(0)));
        }
    }
    if versions.len() < 2 {
        return pool;
    }
    let tried_version = |v: &str| tried.iter().any(|&i| instances[i].version == v);
    let mut choices: Vec<(&str, u32)> = versions
        .iter()
        .copied()
        .filter(|(v, w)| *w > 0 && !tried_version(v))
        .collect();
    if choices.is_empty() {
        choices = versions.iter().copied().filter(|(_, w)| *w > 0).collect();
    }
    let total: u32 = choices.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return pool;
    }
    let mut r = rand::random::<u32>() % total;
    let mut chosen = choices[0].0;
    for (v, w) in &choices {
        if r < *w {
            chosen = v;
            break;
        }
        r -= w;
    }
    let chosen = chosen.to_string();
    pool.into_iter()
        .filter(|(i, _)| instances[*i].version == chosen)
        .collect()
}

impl Balancer {
    pub fn new(name: &str, policy: Policy, outlier: OutlierConfig) -> Self {
        Self {
            name: name.to_string(),
            policy,
            outlier,
            next: AtomicUsize::new(0),
            endpoints: RwLock::default(),
        }
    }

    fn endpoint(&self, id: &str) -> Arc<Endpoint> {
        if let Some(e) = self
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return e.clone();
        }
        self.endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Chooses among `instances`, avoiding ejected ones and those in `tried`.
    pub fn pick(&self, instances: &[Instance], tried: &[usize]) -> Option<Pick> {
        self.pick_at(instances, tried, Instant::now())
    }

    /// [`Self::pick`] at `now` (a clock the caller read already): the call's time starts then.
    pub fn pick_at(&self, instances: &[Instance], tried: &[usize], now: Instant) -> Option<Pick> {
        if instances.is_empty() {
            return None;
        }
        if let [only] = instances {
            // The only instance is the pick, tried or ejected (as below, where an empty pool
            // falls back to every instance), without the lists a choice needs: a service
            // with one instance is the usual case, and this runs per call.
            let endpoint = self.endpoint(&only.id);
            endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
            return Some(Pick {
                index: 0,
                endpoint,
                started: now,
            });
        }
        let mut candidates: Vec<(usize, Arc<Endpoint>)> = instances
            .iter()
            .enumerate()
            .filter(|(i, _)| !tried.contains(i))
            .map(|(i, inst)| (i, self.endpoint(&inst.id)))
            .collect();
        if candidates.is_empty() {
            candidates = instances
                .iter()
                .enumerate()
                .map(|(i, inst)| (i, self.endpoint(&inst.id)))
                .collect();
        }
        let healthy: Vec<(usize, Arc<Endpoint>)> = candidates
            .iter()
            .filter(|(_, e)| !e.ejected(now))
            .cloned()
            .collect();
        let pool = if healthy.is_empty() {
            candidates
        } else {
            healthy
        };
        let pool = one_version(pool, instances, tried);
        let (index, endpoint) = match self.policy {
            Policy::RoundRobin => {
                pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()].clone()
            }
            Policy::P2c if pool.len() == 1 => pool[0].clone(),
            Policy::P2c => {
                let a = rand::random::<u64>() as usize % pool.len();
                let mut b = rand::random::<u64>() as usize % (pool.len() - 1);
                if b >= a {
                    b += 1;
                }
                let (oa, ob) = (
                    pool[a].1.outstanding.load(Ordering::Relaxed),
                    pool[b].1.outstanding.load(Ordering::Relaxed),
                );
                if ob < oa {
                    pool[b].clone()
                } else {
                    pool[a].clone()
                }
            }
        };
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            index,
            endpoint,
            started: now,
        })
    }

    /// Reports the outcome of a picked call (`failed`: connection error, timeout or 5xx).
    pub fn finish(&self, pick: Pick, failed: bool, instances: &[Instance]) {
        self.finish_at(pick, failed, instances, Instant::now())
    }

    /// [`Self::finish`] with the clock read at the call's end (`now`) by the caller.
    pub fn finish_at(&self, pick: Pick, failed: bool, instances: &[Instance], now: Instant) {
        let e = &pick.endpoint;
        let took = now.saturating_duration_since(pick.started).as_micros() as u64;
        let old = e.ewma_us.load(Ordering::Relaxed);
        e.ewma_us.store(
            if old == 0 { took } else { (old * 4 + took) / 5 },
            Ordering::Relaxed,
        );
        if !failed {
            e.consecutive.store(0, Ordering::Relaxed);
            return;
        }
        let n = e.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.outlier.consecutive_errors {
            return;
        }
        let ejected_now = instances
            .iter()
            .filter(|i| self.endpoint(&i.id).ejected(now))
            .count();
        let allowed = instances.len() * self.outlier.max_ejection_percent as usize / 100;
        if ejected_now + 1 > allowed {
            return; // never too many out at once
        }
        let times = e.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let period =
            Duration::from_millis(self.outlier.base_ejection_ms * u64::from(times.min(10)));
        *e.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + period);
        e.consecutive.store(0, Ordering::Relaxed);
        let id = &instances[pick.index].id;
        tracing::warn!(upstream = %self.name, instance = %id, failures = n, ejected_for_ms = period.as_millis() as u64, "instance ejected");
        metrics::counter!("tessera_outlier_ejections_total", "upstream" => self.name.clone())
            .increment(1);
    }

    /// Per instance: in flight, latency EWMA (ms), ejected.
    pub fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        let map: serde_json::Map<String, serde_json::Value> = endpoints
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    serde_json::json!({
                        "inFlight": e.outstanding.load(Ordering::Relaxed),
                        "ewmaMs": e.ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
                        "ejected": e.ejected(now),
                    }),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn instances(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|i| Instance {
                id: format!("i{i}"),
                service: "s".into(),
                address: "127.0.0.1:1".into(),
                version: "1".into(),
                metadata: BTreeMap::new(),
                weight: None,
            })
            .collect()
    }

    /// Two instances of version `old` at `old_weight`, two of `new` at the rest.
    fn rollout(old_weight: u32) -> Vec<Instance> {
        let mut list = instances(4);
        for (i, instance) in list.iter_mut().enumerate() {
            let old = i < 2;
            instance.version = if old { "old" } else { "new" }.into();
            instance.weight = Some(if old { old_weight } else { 100 - old_weight });
        }
        list
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_is_chosen_by_its_weight_and_a_retry_goes_to_the_other() {
        let b = Balancer::new("s", Policy::P2c, outlier());
        let list = rollout(90);
        let mut new = 0;
        for _ in 0..2000 {
            let p = b.pick(&list, &[]).unwrap();
            if list[p.index].version == "new" {
                new += 1;
            }
            b.finish(p, false, &list);
        }
        assert!(
            (120..=280).contains(&new),
            "{new} of 2000 to the new version at 10%"
        );
        // A retry after the new version failed goes to the old one, whatever the weights.
        for _ in 0..50 {
            let p = b.pick(&list, &[2]).unwrap();
            assert_eq!(list[p.index].version, "old");
            b.finish(p, false, &list);
        }
        // Weight 0: never chosen while the other version has weight (blue-green, drained).
        let list = rollout(0);
        for _ in 0..200 {
            let p = b.pick(&list, &[]).unwrap();
            assert_eq!(list[p.index].version, "new");
            b.finish(p, false, &list);
        }
        // Without weights, every instance alike.
        let plain = instances(4);
        let seen: std::collections::HashSet<usize> = (0..200)
            .map(|_| {
                let p = b.pick(&plain, &[]).unwrap();
                let i = p.index;
                b.finish(p, false, &plain);
                i
            })
            .collect();
        assert_eq!(seen.len(), 4);
    }

    fn outlier() -> OutlierConfig {
        OutlierConfig {
            consecutive_errors: 3,
            base_ejection_ms: 1000,
            max_ejection_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_less_busy_instance() {
        let b = Balancer::new("s", Policy::P2c, outlier());
        let list = instances(2);
        let busy: Vec<Pick> = (0..5).map(|_| b.pick(&list[..1], &[]).unwrap()).collect();
        for _ in 0..20 {
            let p = b.pick(&list, &[]).unwrap();
            assert_eq!(p.index, 1, "i0 has five in flight");
            b.finish(p, false, &list);
        }
        for p in busy {
            b.finish(p, false, &list);
        }
        let spread: std::collections::HashSet<usize> = (0..50)
            .map(|_| {
                let p = b.pick(&list, &[]).unwrap();
                let i = p.index;
                b.finish(p, false, &list);
                i
            })
            .collect();
        assert_eq!(spread.len(), 2, "idle instances share the load");
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_errors_for_a_growing_time_but_never_all() {
        let b = Balancer::new("s", Policy::RoundRobin, outlier());
        let list = instances(2);
        let fail = |index: usize| {
            for _ in 0..3 {
                let p = Pick {
                    index,
                    endpoint: b.endpoint(&list[index].id),
                    started: Instant::now(),
                };
                p.endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
                b.finish(p, true, &list);
            }
        };
        fail(0);
        for _ in 0..10 {
            let p = b.pick(&list, &[]).unwrap();
            assert_eq!(p.index, 1, "i0 is ejected");
            b.finish(p, false, &list);
        }
        fail(1);
        let picked: std::collections::HashSet<usize> = (0..10)
            .map(|_| {
                let p = b.pick(&list, &[]).unwrap();
                let i = p.index;
                b.finish(p, false, &list);
                i
            })
            .collect();
        assert!(
            picked.contains(&1),
            "the last healthy half is never ejected"
        );
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(
            !b.endpoint("i0").ejected(Instant::now()),
            "back after the base time"
        );
        fail(0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(
            b.endpoint("i0").ejected(Instant::now()),
            "twice the time the second time"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(!b.endpoint("i0").ejected(Instant::now()));
    }

    #[test]
    fn the_only_instance_is_picked_tried_or_ejected_and_counted_in_flight() {
        for policy in [Policy::P2c, Policy::RoundRobin] {
            let b = Balancer::new("s", policy, outlier());
            let list = instances(1);
            let p = b.pick(&list, &[]).unwrap();
            assert_eq!(p.index, 0);
            assert_eq!(b.endpoint("i0").outstanding.load(Ordering::Relaxed), 1);
            b.finish(p, false, &list);
            assert_eq!(b.endpoint("i0").outstanding.load(Ordering::Relaxed), 0);
            // Tried already, or ejected: still the one to send to.
            assert_eq!(b.pick(&list, &[0]).unwrap().index, 0);
            *b.endpoint("i0").ejected_until.lock().unwrap() =
                Some(Instant::now() + Duration::from_secs(60));
            let p = b.pick(&list, &[0]).unwrap();
            assert_eq!(p.index, 0);
            b.finish(p, true, &list);
        }
    }

    #[test]
    fn avoids_tried_instances() {
        let b = Balancer::new("s", Policy::P2c, outlier());
        let list = instances(3);
        for _ in 0..20 {
            let p = b.pick(&list, &[0, 2]).unwrap();
            assert_eq!(p.index, 1);
            b.finish(p, false, &list);
        }
    }
}
