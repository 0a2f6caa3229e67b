//! Whether the route admits the caller: its `auth` mode and its `roles`, from the manifest.
//!
//! This is the gateway's whole say on access, decided once at the edge before anything of
//! the request goes on: a `required` route refuses a request without a caller (401: signing in
//! may help), and a route that lists roles refuses a caller with none of them, or no caller
//! at all (403). Finer rules (whose order this is) are the services' own, on the passport the
//! gateway mints.

use http::StatusCode;
use tessera_manifest::AuthMode;

use crate::error::GatewayError;
use crate::routes::CompiledRoute;
use crate::tokens::Verified;

/// Admits `caller` to `route`, or says why not.
#[inline]
pub fn check(route: &CompiledRoute, caller: Option<&Verified>) -> Result<(), GatewayError> {
    if caller.is_none() && route.auth == AuthMode::Required {
        return Err(GatewayError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this route needs an access token",
        ));
    }
    if !route.roles.is_empty()
        && !caller.is_some_and(|v| v.roles.iter().any(|r| route.roles.contains(r)))
    {
        return Err(GatewayError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your roles do not allow this route",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::route;

    fn caller(roles: &[&str]) -> Verified {
        Verified {
            sub: "u1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            sid: None,
            exp: u64::MAX,
            cached_until: u64::MAX,
            passport: Default::default(),
        }
    }

    fn refused(e: Result<(), GatewayError>) -> (u16, &'static str) {
        let e = e.unwrap_err();
        (e.status.as_u16(), e.code)
    }

    #[test]
    fn a_public_route_admits_anyone() {
        let open = route("catalog", AuthMode::Public, &[]);
        assert!(check(&open, None).is_ok());
        assert!(check(&open, Some(&caller(&[]))).is_ok());
    }

    #[test]
    fn a_required_route_needs_a_caller() {
        let closed = route("order", AuthMode::Required, &[]);
        assert_eq!(refused(check(&closed, None)), (401, "unauthenticated"));
        assert!(check(&closed, Some(&caller(&[]))).is_ok());
    }

    #[test]
    fn a_route_with_roles_needs_one_of_them() {
        let admin = route("admin", AuthMode::Public, &["admin", "ops"]);
        assert_eq!(refused(check(&admin, None)), (403, "forbidden"));
        assert_eq!(
            refused(check(&admin, Some(&caller(&["customer"])))),
            (403, "forbidden")
        );
        assert_eq!(
            refused(check(&admin, Some(&caller(&[])))),
            (403, "forbidden")
        );
        assert!(check(&admin, Some(&caller(&["customer", "ops"]))).is_ok());
        // Without a caller on a required route, signing in is what is missing.
        let required = route("admin", AuthMode::Required, &["admin"]);
        assert_eq!(refused(check(&required, None)), (401, "unauthenticated"));
        assert_eq!(
            refused(check(&required, Some(&caller(&["customer"])))),
            (403, "forbidden")
        );
    }
}
