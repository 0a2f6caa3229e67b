//! How much the gateway lets through: the route's rate limits, and its service's bulkhead.
//!
//! Rate limits are token buckets from the manifest (`rate_limit.per_ip`, `per_user`). The
//! per-address one counts the client's address as `forwarded.rs` finds it (the connection's
//! peer, or the client behind a trusted proxy: never what a client claims), and is checked first, before a token is verified, so that a flood of made-up
//! tokens costs a bucket lookup and not a signature check each; the per-user one once the
//! caller is known (anonymous requests have only the address's). Over either, the answer is
//! 429 with `Retry-After` and the `RateLimit-*` fields, so a well-behaved client knows when
//! to come back.
//!
//! With Redis (`system.shared`, several gateways), the buckets are counted there, so that a
//! limit holds across every gateway (`tessera-shared`'s GCRA script, one round trip); when
//! Redis does not answer within its short timeout, each gateway counts in its own buckets
//! meanwhile (logged once, `tessera_rate_limit_local_total`): an outage loosens the limits,
//! it never blocks traffic.
//!
//! The bulkhead bounds the calls in flight to one service. It is entered inside the upstream
//! call (`upstream.rs`), after the breaker is asked, so that a breaker rejection never holds a
//! slot; what a full one answers, 503 at once rather than a queue, is decided here.

use std::net::IpAddr;

use http::StatusCode;
use tessera::resilience::{Limited, RateLimiter};
use tessera_shared::{Shared, SharedLimit};

use crate::error::GatewayError;
use crate::routes::CompiledRoute;
use crate::tokens::Verified;

/// Takes one request from the client address's bucket on `route`, if it has a limit.
#[inline]
pub async fn per_ip(
    route: &CompiledRoute,
    client: IpAddr,
    shared: Option<&Shared>,
) -> Result<(), GatewayError> {
    match &route.per_ip {
        None => Ok(()),
        Some(local) => {
            let key = client.to_string();
            take(
                route,
                "ip",
                &key,
                local,
                route.shared_per_ip.as_ref(),
                shared,
            )
            .await
        }
    }
}

/// Takes one request from the caller's bucket on `route`, if it has a limit and a caller.
#[inline]
pub async fn per_user(
    route: &CompiledRoute,
    caller: Option<&Verified>,
    shared: Option<&Shared>,
) -> Result<(), GatewayError> {
    match (&route.per_user, caller) {
        (Some(local), Some(who)) => {
            take(
                route,
                "user",
                &who.sub,
                local,
                route.shared_per_user.as_ref(),
                shared,
            )
            .await
        }
        _ => Ok(()),
    }
}

/// One request of `key`'s bucket: on Redis when there is one and it answers, else here.
async fn take(
    route: &CompiledRoute,
    kind: &str,
    key: &str,
    local: &RateLimiter,
    counted: Option<&SharedLimit>,
    shared: Option<&Shared>,
) -> Result<(), GatewayError> {
    if let (Some(limit), Some(shared)) = (counted, shared) {
        let key = format!("{}:{kind}:{key}", route.prefix);
        match limit.check(shared, &key).await {
            Some(answer) => return answer.map(drop).map_err(limited),
            None => metrics::counter!("tessera_rate_limit_local_total").increment(1),
        }
    }
    local.check(key).map(drop).map_err(limited)
}

/// The service's bulkhead has no free slot.
pub const BULKHEAD_FULL: GatewayError = GatewayError::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "bulkhead_full",
    "too many requests to this service in flight",
);

fn limited(l: Limited) -> GatewayError {
    metrics::counter!("tessera_rate_limited_total").increment(1);
    GatewayError {
        retry_after: Some((l.limit, l.retry_after)),
        ..GatewayError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use tessera::resilience::RateLimit;
    use tessera_manifest::{AuthMode, Resilience, RouteLimits};

    use super::*;
    use crate::pool::{Outgoing, Pool};
    use crate::testing::{Head, limited_route};
    use crate::upstream::{CallFailure, Upstream};

    fn two_a_minute() -> Option<RateLimit> {
        Some(RateLimit::parse("2/m").unwrap())
    }

    fn who(sub: &str) -> Verified {
        Verified {
            sub: sub.into(),
            roles: vec![],
            sid: None,
            exp: u64::MAX,
            cached_until: u64::MAX,
            passport: Default::default(),
        }
    }

    fn is_429(e: GatewayError) {
        assert_eq!(
            (e.status, e.code),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
        );
        let (limit, wait) = e.retry_after.expect("a 429 says when to come back");
        assert_eq!(limit, 2);
        assert!((1..=30).contains(&wait), "{wait}");
    }

    #[tokio::test]
    async fn an_address_over_its_limit_is_429_with_retry_after() {
        let limits = RouteLimits {
            per_ip: two_a_minute(),
            per_user: None,
        };
        let route = limited_route("catalog", AuthMode::Public, &[], Some(limits), None);
        let (a, b) = (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        );
        assert!(per_ip(&route, a, None).await.is_ok());
        assert!(per_ip(&route, a, None).await.is_ok());
        is_429(per_ip(&route, a, None).await.unwrap_err());
        assert!(
            per_ip(&route, b, None).await.is_ok(),
            "each address has its own bucket"
        );
        // The per-user limit is not the address's.
        assert!(per_user(&route, Some(&who("u1")), None).await.is_ok());
    }

    #[tokio::test]
    async fn a_caller_over_its_limit_is_429_and_anonymous_requests_are_not_counted() {
        let limits = RouteLimits {
            per_ip: None,
            per_user: two_a_minute(),
        };
        let route = limited_route("catalog", AuthMode::Public, &[], Some(limits), None);
        for _ in 0..5 {
            assert!(per_user(&route, None, None).await.is_ok());
        }
        assert!(per_user(&route, Some(&who("u1")), None).await.is_ok());
        assert!(per_user(&route, Some(&who("u1")), None).await.is_ok());
        is_429(per_user(&route, Some(&who("u1")), None).await.unwrap_err());
        assert!(per_user(&route, Some(&who("u2")), None).await.is_ok());
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(
            per_ip(&route, peer, None).await.is_ok() && per_ip(&route, peer, None).await.is_ok()
        );
        assert!(
            per_ip(&route, peer, None).await.is_ok(),
            "no per-address limit here"
        );
    }

    #[tokio::test]
    async fn a_full_bulkhead_is_503_at_once() {
        let upstream = Upstream::new(
            "catalog",
            &Resilience {
                max_concurrent: 1,
                ..Resilience::default()
            },
        );
        let _busy = upstream.guard().bulkhead.enter().unwrap();
        let head = Head::request(&[]);
        let req = head.to(http::Method::GET, "/api/x", b"");
        let outgoing = Outgoing {
            method: &req.method,
            path_and_query: req.target,
            headers: req.fields,
            skip: |_| false,
            extra: &[],
            deadline_ms: None,
            traceparent: None,
            body: b"",
            replayable: true,
            upgrade: false,
            identity: None,
        };
        let pool = Pool::new(1, Duration::from_secs(1));
        let failure = upstream
            .call(
                &pool,
                &[],
                outgoing,
                1024,
                Duration::from_secs(1),
                &tessera::TraceContext::new_root(),
            )
            .await
            .err()
            .unwrap();
        assert!(matches!(failure, CallFailure::Full), "{failure:?}");
        let e = crate::forward::refusal(failure);
        assert_eq!(
            (e.status, e.code, e.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "bulkhead_full", None)
        );
    }
}
