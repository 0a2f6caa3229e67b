//! The route table: longest path prefix wins, matched at segment boundaries, on the path in
//! the form the services route on.
//!
//! A route's limits and roles hold only if the gateway and the service read a path as the
//! same path. Services (axum) route on the path as sent, cut at a fragment by their HTTP
//! parser; other frameworks decode percent-encoded letters, resolve dot segments or merge
//! slashes before routing. So every spelling of a path is either refused or matched as its
//! normal form (RFC 3986 §6.2.2), whatever a service does with it: a fragment is refused by
//! the server (`tessera_http1`); a path with dot segments (`.`, `..`, percent-encoded too) or
//! empty ones (`//`) is refused here (clients resolve dot segments before sending, and no
//! route of the platform has an empty segment); a percent-encoded unreserved character (`%6C`
//! for `l`, §2.3) is matched as that character. The path goes upstream as it was sent. The
//! check is a scan of the path in place, and a path without `%` is matched as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera::resilience::{RateLimit, RateLimiter};
use tessera_manifest::{AuthMode, Fallback, Manifest, Resilience, Route};
use tessera_shared::SharedLimit;

use crate::files::Mount;
use crate::upstream::Upstream;

/// A route ready for matching.
pub struct CompiledRoute {
    /// Without a trailing slash.
    pub prefix: String,
    /// The prefix again, shared: what the request's span names without copying it.
    pub label: Arc<str>,
    pub service: String,
    /// The service's guard (breaker, bulkhead, retries), shared by every route to it.
    pub upstream: Arc<Upstream>,
    pub auth: AuthMode,
    pub roles: Vec<String>,
    pub per_ip: Option<Arc<RateLimiter>>,
    pub per_user: Option<Arc<RateLimiter>>,
    /// The same limits counted on Redis, across every gateway (`limit.rs`).
    pub shared_per_ip: Option<SharedLimit>,
    pub shared_per_user: Option<SharedLimit>,
    pub fallback: Option<Fallback>,
    /// WebSocket upgrades pass.
    pub websocket: bool,
    /// HTTP/2 requests pass as streams (gRPC).
    pub grpc: bool,
}

/// The routes and the upstreams behind them: what a reload (`reload.rs`) swaps whole.
#[derive(Default)]
pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<CompiledRoute>,
    /// By service name.
    upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Static files (`files.rs`), longest prefix first.
    mounts: Vec<Arc<Mount>>,
    /// How many reloads made it (0: the table of the start).
    pub version: u64,
}

impl RouteTable {
    /// The table of `routes`, every upstream with the default resilience settings.
    pub fn new(routes: &[Route]) -> Self {
        Self::build(routes, &Resilience::default(), &BTreeMap::new(), None)
    }

    /// The manifest's table; what stays the same as in `previous` keeps its state. Its static
    /// files are read from their directories, relative to `base` (the manifest's): one that
    /// cannot be read makes the table fail.
    pub fn from_manifest(
        manifest: &Manifest,
        previous: Option<&RouteTable>,
        base: &std::path::Path,
    ) -> Result<Self, String> {
        let mut table = Self::build(
            &manifest.routes,
            &manifest.gateway.resilience,
            &manifest.gateway.upstreams,
            previous,
        );
        for files in &manifest.files {
            table.mounts.push(Arc::new(Mount::load(files, base)?));
        }
        table
            .mounts
            .sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        Ok(table)
    }

    /// The table of `routes`, each service's upstream guarded by its entry in `per_service`
    /// or by `resilience`. Taken over from `previous`, where their settings are unchanged: an
    /// upstream (its breaker's state, its calls in flight, its retry budget) and a route's
    /// rate limiters (the buckets clients have drained), so that a reload neither forgives a
    /// caller over its limit nor closes a breaker that is open.
    pub fn build(
        routes: &[Route],
        resilience: &Resilience,
        per_service: &BTreeMap<String, Resilience>,
        previous: Option<&RouteTable>,
    ) -> Self {
        let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
        for route in routes {
            if upstreams.contains_key(&route.service) {
                continue;
            }
            let config = per_service.get(&route.service).unwrap_or(resilience);
            let upstream = previous
                .and_then(|p| p.upstreams.get(&route.service))
                .filter(|u| u.config() == config)
                .cloned()
                .unwrap_or_else(|| Arc::new(Upstream::new(&route.service, config)));
            upstreams.insert(route.service.clone(), upstream);
        }
        let mut compiled: Vec<CompiledRoute> = routes
            .iter()
            .map(|r| {
                let prefix = r.prefix.trim_end_matches('/');
                let before = previous.and_then(|p| p.routes.iter().find(|o| o.prefix == prefix));
                let limits = r.rate_limit.as_ref();
                let per_ip = limits.and_then(|l| l.per_ip.as_ref());
                let per_user = limits.and_then(|l| l.per_user.as_ref());
                CompiledRoute {
                    prefix: prefix.to_string(),
                    label: Arc::from(prefix),
                    service: r.service.clone(),
                    upstream: upstreams[&r.service].clone(),
                    auth: r.auth,
                    roles: r.roles.clone(),
                    per_ip: limiter(per_ip, before.and_then(|b| b.per_ip.as_ref())),
                    per_user: limiter(per_user, before.and_then(|b| b.per_user.as_ref())),
                    shared_per_ip: per_ip.map(SharedLimit::new),
                    shared_per_user: per_user.map(SharedLimit::new),
                    fallback: r.fallback.clone(),
                    websocket: r.websocket,
                    grpc: r.grpc,
                }
            })
            .collect();
        compiled.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self {
            routes: compiled,
            upstreams,
            mounts: Vec::new(),
            version: 0,
        }
    }

    /// Every upstream, by service name.
    pub fn upstreams(&self) -> &BTreeMap<String, Arc<Upstream>> {
        &self.upstreams
    }

    /// The table in force, for the operator (`/status/routes`).
    pub fn status(&self) -> serde_json::Value {
        let limit = |l: &Option<Arc<RateLimiter>>| {
            l.as_ref().map(|l| {
                let l = l.limit();
                serde_json::json!({
                    "requests": l.requests,
                    "per_seconds": l.per.as_secs_f64(),
                    "burst": l.burst,
                })
            })
        };
        let routes: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "prefix": if r.prefix.is_empty() { "/" } else { r.prefix.as_str() },
                    "service": r.service,
                    "auth": match r.auth {
                        AuthMode::Public => "public",
                        AuthMode::Required => "required",
                    },
                    "roles": r.roles,
                    "per_ip": limit(&r.per_ip),
                    "per_user": limit(&r.per_user),
                    "fallback": r.fallback.is_some(),
                    "websocket": r.websocket,
                    "grpc": r.grpc,
                })
            })
            .collect();
        let files: Vec<serde_json::Value> = self
            .mounts
            .iter()
            .map(|m| serde_json::json!({ "prefix": &*m.label, "files": m.len() }))
            .collect();
        serde_json::json!({ "version": self.version, "routes": routes, "files": files })
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route of `path` (origin form, without the query), if any; a path that is not in
    /// normal form is refused.
    pub fn find(&self, path: &str) -> Result<Option<&CompiledRoute>, NotNormal> {
        check_normal(path)?;
        let encoded = path.as_bytes().contains(&b'%');
        Ok(self.routes.iter().find(|r| {
            let rest = if encoded {
                strip_prefix_decoded(path, &r.prefix)
            } else {
                path.strip_prefix(r.prefix.as_str())
            };
            rest.is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || r.prefix.is_empty())
        }))
    }
}

impl RouteTable {
    /// The static files `path` is under, if their prefix is longer than that of `route`, the
    /// route the path matched (longest prefix wins, whichever kind it is).
    pub fn mount(&self, path: &str, route: Option<&CompiledRoute>) -> Option<&Mount> {
        if self.mounts.is_empty() {
            return None;
        }
        let longer_than = route.map_or(0, |r| r.prefix.len() + 1);
        self.mounts
            .iter()
            .take_while(|m| m.prefix.len() + 1 > longer_than)
            .find(|m| m.matches(path))
            .map(|m| &**m)
    }
}

/// A limiter for `limit`: the one from before if it kept the same limit.
fn limiter(
    limit: Option<&RateLimit>,
    before: Option<&Arc<RateLimiter>>,
) -> Option<Arc<RateLimiter>> {
    let limit = limit?;
    match before {
        Some(before) if before.limit() == limit => Some(before.clone()),
        _ => Some(Arc::new(RateLimiter::new(limit.clone()))),
    }
}

/// A path that a service could read as another: it has dot segments or empty ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotNormal;

/// Refuses a path with an empty segment (other than a trailing slash) or a dot segment.
fn check_normal(path: &str) -> Result<(), NotNormal> {
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || is_dot_segment(segment.as_bytes()) {
            return Err(NotNormal);
        }
    }
    Ok(())
}

/// `.` or `..`, each dot possibly percent-encoded (`%2e`).
fn is_dot_segment(mut segment: &[u8]) -> bool {
    let mut dots = 0;
    while !segment.is_empty() {
        segment = match segment {
            [b'.', rest @ ..] | [b'%', b'2', b'e' | b'E', rest @ ..] => rest,
            _ => return false,
        };
        dots += 1;
    }
    (1..=2).contains(&dots)
}

/// What follows `prefix` in `path`, reading a percent-encoded unreserved character of `path`
/// as the character (`%6C` as `l`); `None` if `path` does not start with it.
fn strip_prefix_decoded<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let bytes = path.as_bytes();
    let mut at = 0;
    for &want in prefix.as_bytes() {
        let (got, len) = match bytes.get(at..)? {
            [b'%', high, low, ..] => unreserved(*high, *low).map_or((b'%', 1), |c| (c, 3)),
            [c, ..] => (*c, 1),
            [] => return None,
        };
        if got != want {
            return None;
        }
        at += len;
    }
    path.get(at..)
}

/// The unreserved character (RFC 3986 §2.3) that `%` `high` `low` encodes, if it is one.
fn unreserved(high: u8, low: u8) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let c = (hex(high)? << 4) | hex(low)?;
    (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, service: &str) -> Route {
        Route {
            prefix: prefix.into(),
            service: service.into(),
            auth: AuthMode::Public,
            roles: vec![],
            rate_limit: None,
            fallback: None,
            websocket: false,
            grpc: false,
        }
    }

    #[test]
    fn longest_prefix_at_segment_boundaries() {
        let t = RouteTable::new(&[
            route("/api", "a"),
            route("/api/auth/", "auth"),
            route("/api/auth/me", "me"),
        ]);
        let service = |path| t.find(path).unwrap().map(|r| r.service.as_str());
        assert_eq!(service("/api/auth/login"), Some("auth"));
        assert_eq!(service("/api/auth"), Some("auth"));
        assert_eq!(service("/api/auth/me"), Some("me"));
        assert_eq!(service("/api/auth/me/"), Some("me"));
        assert_eq!(service("/api/authx"), Some("a"));
        assert_eq!(service("/api/other"), Some("a"));
        assert_eq!(service("/apix"), None);
        assert_eq!(service("/"), None);
        let root = RouteTable::new(&[route("/", "root")]);
        assert_eq!(root.find("/anything").unwrap().unwrap().service, "root");
    }

    #[test]
    fn an_encoded_unreserved_character_is_matched_as_itself() {
        let t = RouteTable::new(&[route("/api/auth", "auth"), route("/api/auth/me", "me")]);
        let service = |path| t.find(path).unwrap().map(|r| r.service.as_str());
        for path in [
            "/api/auth/%6De",
            "/api/auth/%6de",
            "/api/%61uth/m%65",
            "/%61%70%69/auth/me/x",
        ] {
            assert_eq!(service(path), Some("me"), "{path}");
        }
        // Reserved characters stay encoded: `%2F` is not a segment boundary.
        assert_eq!(service("/api/auth%2Fme"), None);
        assert_eq!(service("/api/auth/%2Fme"), Some("auth"));
        // Not an escape, or an incomplete one: compared as written.
        assert_eq!(service("/api/auth/%zz"), Some("auth"));
        assert_eq!(service("/api/auth/m%6"), Some("auth"));
        assert_eq!(service("/api/aut%"), None);
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        let t = RouteTable::new(&[route("/api/auth", "auth")]);
        for path in [
            "/api/auth/./login",
            "/api/auth/x/../login",
            "/api/auth/..",
            "/api/auth/.",
            "/api/auth/%2e/login",
            "/api/auth/%2E%2e/login",
            "/api/auth/.%2E/login",
            "/api//auth/login",
            "/api/auth//login",
            "//api/auth",
        ] {
            assert_eq!(t.find(path).err(), Some(NotNormal), "{path}");
        }
        for path in [
            "/api/auth/...",
            "/api/auth/.well-known/x",
            "/api/auth/a.b/",
            "/",
        ] {
            assert!(t.find(path).is_ok(), "{path}");
        }
    }
}
