//! A read-through cache that is never stale once an invalidation has been made: cache-aside
//! with **generations**. Every entry belongs to a group (a product, "every list"); a group has
//! a generation, and an entry is stored and found under the generation current when its value
//! was read from the source. Invalidating a group bumps its generation: from then on every
//! reader looks under the new one, and a reader that read the source before the bump and
//! stores after it stores under the old generation, where nobody looks. (Deleting the entry
//! instead would let that slow reader put the old value back.)
//!
//! Two homes: Redis ([`Cache::shared`]), one cache for every replica of a service, each lookup
//! one script (the generation and the entry in one round trip); or this process's memory
//! ([`Cache::local`]). Either way a failure of the cache is a miss: the source answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Shared;

/// `KEYS[1]`: the group's generation key; `ARGV[1]`, `ARGV[2]`: the entry key's head and tail
/// (the generation goes between); `ARGV[3]`: how long a generation lives, in milliseconds.
/// Answers `{generation, entry or false}`.
///
/// A group without a generation (never invalidated, or Redis restarted without its data)
/// starts at Redis's clock in milliseconds, so a generation never goes back to one a slow
/// reader may still store under. A generation outlives its entries (twice their TTL, from
/// its last invalidation) and no more: one made again later starts above it anyway.
const LOOKUP: &str = r"
local g = redis.call('GET', KEYS[1])
if not g then
  local t = redis.call('TIME')
  g = tostring(t[1] * 1000 + math.floor(t[2] / 1000))
  redis.call('SET', KEYS[1], g, 'PX', ARGV[3], 'NX')
  g = redis.call('GET', KEYS[1])
end
return {g, redis.call('GET', ARGV[1] .. g .. ':' .. ARGV[2])}
";

/// `KEYS[1]`: the group's generation key; `ARGV[1]`: how long it lives, in milliseconds.
/// Bumps it (from Redis's clock when it has none).
const INVALIDATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], tostring(t[1] * 1000 + math.floor(t[2] / 1000)))
end
redis.call('INCR', KEYS[1])
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
";

/// Entries (and groups) of one process's memory at most: when full, what is older than half
/// the TTL goes, and everything if that is not enough.
const LOCAL_CAPACITY: usize = 10_000;

pub struct Cache {
    name: String,
    ttl: Duration,
    home: Home,
}

enum Home {
    Local(Mutex<Local>),
    Redis(Arc<Shared>, Scripts),
}

struct Scripts {
    lookup: redis::Script,
    invalidate: redis::Script,
}

#[derive(Default)]
struct Local {
    generations: HashMap<String, u64>,
    /// The generation of a group not in `generations`: above every one forgotten.
    floor: u64,
    /// (group, key) → (generation, stored at, JSON).
    entries: HashMap<(String, String), (u64, Instant, Arc<str>)>,
}

impl Local {
    /// Forgets every entry and group; every group's generation is then above all those
    /// forgotten, so that nothing a slow reader stores under one of them is ever found.
    fn forget_all(&mut self) {
        let top = self.generations.values().copied().max().unwrap_or(0);
        self.floor = self.floor.max(top) + 1;
        self.generations.clear();
        self.entries.clear();
    }
}

impl Cache {
    /// A cache named `name` in this process's memory; entries live `ttl` at most.
    pub fn local(name: &str, ttl: Duration) -> Self {
        Self {
            name: name.to_string(),
            ttl,
            home: Home::Local(Mutex::default()),
        }
    }

    /// A cache named `name` on Redis, shared by every process that names it; entries live
    /// `ttl` at most.
    pub fn shared(shared: Arc<Shared>, name: &str, ttl: Duration) -> Self {
        Self {
            name: name.to_string(),
            ttl,
            home: Home::Redis(
                shared,
                Scripts {
                    lookup: redis::Script::new(LOOKUP),
                    invalidate: redis::Script::new(INVALIDATE),
                },
            ),
        }
    }

    /// Whether every replica shares this cache (it is on Redis).
    pub fn is_shared(&self) -> bool {
        matches!(self.home, Home::Redis(..))
    }

    /// `key` of `group` from the cache, or else from `load` (then stored for the next
    /// reader, unless `group` was invalidated meanwhile).
    pub async fn read_through<T, E>(
        &self,
        group: &str,
        key: &str,
        load: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
    {
        let (generation, hit) = self.lookup(group, key).await;
        if let Some(value) = hit.and_then(|json| serde_json::from_str(&json).ok()) {
            metrics::counter!("tessera_cache_hits_total", "cache" => self.name.clone())
                .increment(1);
            return Ok(value);
        }
        metrics::counter!("tessera_cache_misses_total", "cache" => self.name.clone()).increment(1);
        let value = load.await?;
        if let Some(generation) = generation
            && let Ok(json) = serde_json::to_string(&value)
        {
            self.store(group, key, generation, json).await;
        }
        Ok(value)
    }

    /// Makes every entry of `group` unreachable, for every reader of this cache. `false` when
    /// the cache could not be told (Redis away): its entries then live out their TTL.
    pub async fn invalidate(&self, group: &str) -> bool {
        match &self.home {
            Home::Local(local) => {
                let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
                if local.generations.len() >= LOCAL_CAPACITY {
                    local.forget_all();
                }
                let floor = local.floor;
                *local.generations.entry(group.to_string()).or_insert(floor) += 1;
                true
            }
            Home::Redis(shared, scripts) => {
                let key = self.generation_key(shared, group);
                shared
                    .call("cache_invalidate", async |conn| {
                        scripts
                            .invalidate
                            .key(&key)
                            .arg(self.generation_ttl_ms())
                            .invoke_async::<i64>(conn)
                            .await
                    })
                    .await
                    .is_some()
            }
        }
    }

    /// How long a group's generation lives on Redis: twice its entries' TTL.
    fn generation_ttl_ms(&self) -> u64 {
        (self.ttl.as_millis() as u64).max(1) * 2
    }

    fn generation_key(&self, shared: &Shared, group: &str) -> String {
        shared.key(&format!("cache:{}:gen:{group}", self.name))
    }

    fn entry_head(&self, shared: &Shared, group: &str) -> String {
        shared.key(&format!("cache:{}:v:{group}:", self.name))
    }

    /// The group's generation (None: the cache is away) and the entry under it, if any.
    async fn lookup(&self, group: &str, key: &str) -> (Option<u64>, Option<Arc<str>>) {
        match &self.home {
            Home::Local(local) => {
                let local = local.lock().unwrap_or_else(|e| e.into_inner());
                let generation = local.generations.get(group).copied().unwrap_or(local.floor);
                let hit = local
                    .entries
                    .get(&(group.to_string(), key.to_string()))
                    .filter(|(g, at, _)| *g == generation && at.elapsed() < self.ttl)
                    .map(|(_, _, json)| json.clone());
                (Some(generation), hit)
            }
            Home::Redis(shared, scripts) => {
                let (generation_key, head) = (
                    self.generation_key(shared, group),
                    self.entry_head(shared, group),
                );
                let answer: Option<(String, Option<String>)> = shared
                    .call("cache_lookup", async |conn| {
                        scripts
                            .lookup
                            .key(&generation_key)
                            .arg(&head)
                            .arg(key)
                            .arg(self.generation_ttl_ms())
                            .invoke_async(conn)
                            .await
                    })
                    .await;
                match answer {
                    Some((generation, hit)) => (generation.parse().ok(), hit.map(Arc::from)),
                    None => (None, None),
                }
            }
        }
    }

    async fn store(&self, group: &str, key: &str, generation: u64, json: String) {
        match &self.home {
            Home::Local(local) => {
                let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
                if local.entries.len() >= LOCAL_CAPACITY {
                    let ttl = self.ttl;
                    local.entries.retain(|_, (_, at, _)| at.elapsed() < ttl / 2);
                    if local.entries.len() >= LOCAL_CAPACITY / 2 {
                        local.entries.clear();
                    }
                }
                local.entries.insert(
                    (group.to_string(), key.to_string()),
                    (generation, Instant::now(), Arc::from(json)),
                );
            }
            Home::Redis(shared, _) => {
                let entry = format!("{}{generation}:{key}", self.entry_head(shared, group));
                let ttl_ms = self.ttl.as_millis().max(1) as u64;
                shared
                    .call("cache_store", async |conn| {
                        redis::cmd("SET")
                            .arg(&entry)
                            .arg(&json)
                            .arg("PX")
                            .arg(ttl_ms)
                            .query_async::<()>(conn)
                            .await
                    })
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invalidation_hides_what_a_slow_reader_stores_after_it() {
        let cache = Cache::local("t", Duration::from_secs(60));
        let load = |v: u32| async move { Ok::<_, ()>(v) };
        assert_eq!(cache.read_through("p1", "k", load(1)).await, Ok(1));
        assert_eq!(cache.read_through("p1", "k", load(2)).await, Ok(1), "a hit");
        // A reader that read the source before an invalidation, and stores after it.
        let (generation, _) = cache.lookup("p1", "k").await;
        cache.invalidate("p1").await;
        cache
            .store("p1", "k", generation.unwrap(), "1".into())
            .await;
        assert_eq!(
            cache.read_through("p1", "k", load(3)).await,
            Ok(3),
            "not the old value"
        );
        assert_eq!(cache.read_through("p1", "k", load(4)).await, Ok(3));
        // Other groups are untouched.
        assert_eq!(cache.read_through("p2", "k", load(5)).await, Ok(5));
        cache.invalidate("p1").await;
        assert_eq!(cache.read_through("p2", "k", load(6)).await, Ok(5));
    }

    #[tokio::test]
    async fn memory_stays_bounded_and_forgetting_never_serves_an_old_value() {
        let cache = Cache::local("t", Duration::from_secs(60));
        let load = |v: u32| async move { Ok::<_, ()>(v) };
        // A reader of p0 reads its source, then everything is forgotten, then it stores.
        let (generation, _) = cache.lookup("p0", "k").await;
        for i in 0..LOCAL_CAPACITY * 2 {
            let group = format!("p{}", i + 1);
            cache.read_through(&group, "k", load(1)).await.unwrap();
            cache.invalidate(&group).await;
        }
        let Home::Local(local) = &cache.home else {
            unreachable!()
        };
        {
            let local = local.lock().unwrap();
            assert!(local.entries.len() <= LOCAL_CAPACITY);
            assert!(local.generations.len() <= LOCAL_CAPACITY);
        }
        cache
            .store("p0", "k", generation.unwrap(), "7".into())
            .await;
        assert_eq!(cache.read_through("p0", "k", load(8)).await, Ok(8));
    }

    #[tokio::test]
    async fn entries_live_their_ttl_at_most() {
        let cache = Cache::local("t", Duration::from_millis(50));
        assert_eq!(
            cache.read_through("g", "k", async { Ok::<_, ()>(1) }).await,
            Ok(1)
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            cache.read_through("g", "k", async { Ok::<_, ()>(2) }).await,
            Ok(2)
        );
    }
}
