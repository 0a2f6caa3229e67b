//! The route table: longest path prefix wins, matched at segment boundaries.

use tessera::resilience::RateLimiter;
use tessera_manifest::{AuthMode, Fallback, Route};

/// A route ready for matching.
pub struct CompiledRoute {
    /// Without a trailing slash.
    pub prefix: String,
    pub service: String,
    pub auth: AuthMode,
    pub roles: Vec<String>,
    pub per_ip: Option<RateLimiter>,
    pub per_user: Option<RateLimiter>,
    pub fallback: Option<Fallback>,
}

#[derive(Default)]
pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<CompiledRoute>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Self {
        let mut routes: Vec<CompiledRoute> = routes
            .iter()
            .map(|r| CompiledRoute {
                prefix: r.prefix.trim_end_matches('/').to_string(),
                service: r.service.clone(),
                auth: r.auth,
                roles: r.roles.clone(),
                per_ip: r
                    .rate_limit
                    .as_ref()
                    .and_then(|l| l.per_ip.clone())
                    .map(RateLimiter::new),
                per_user: r
                    .rate_limit
                    .as_ref()
                    .and_then(|l| l.per_user.clone())
                    .map(RateLimiter::new),
                fallback: r.fallback.clone(),
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes }
    }

    pub fn find(&self, path: &str) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| {
            path.starts_with(&r.prefix)
                && (path.len() == r.prefix.len()
                    || path.as_bytes()[r.prefix.len()] == b'/'
                    || r.prefix.is_empty())
        })
    }
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
        }
    }

    #[test]
    fn longest_prefix_at_segment_boundaries() {
        let t = RouteTable::new(&[
            route("/api", "a"),
            route("/api/auth/", "auth"),
            route("/api/auth/me", "me"),
        ]);
        assert_eq!(t.find("/api/auth/login").unwrap().service, "auth");
        assert_eq!(t.find("/api/auth").unwrap().service, "auth");
        assert_eq!(t.find("/api/auth/me").unwrap().service, "me");
        assert_eq!(t.find("/api/authx").unwrap().service, "a");
        assert_eq!(t.find("/api/other").unwrap().service, "a");
        assert!(t.find("/apix").is_none());
        assert!(t.find("/").is_none());
        let root = RouteTable::new(&[route("/", "root")]);
        assert_eq!(root.find("/anything").unwrap().service, "root");
    }
}
