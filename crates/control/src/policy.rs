//! What each principal may do on the control plane: the rules `docs/security.md` states.
//!
//! | principal | registry | event log |
//! |---|---|---|
//! | `service:<name>` | read; register, keep alive and remove instances named `<name>` only | publish to the topics it `produces`; fetch and commit, in a group of its own (`<name>` or `<name>.…`), the topics it `consumes`; publish its groups' dead letters |
//! | `gateway` | read | nothing |
//! | `supervisor` | read; remove any instance | read |
//! | `admin` | read; remove any instance | read; replay dead letters |
//!
//! The collector's queries and the sagas the services orchestrate are read by the
//! `supervisor` and `admin`; only an `admin` acts on a saga.
//!
//! What a service produces and consumes comes from the manifest (`[services.<name>]
//! produces` and `consumes`), read by the CLI and handed over as [`Grants`]: this crate does
//! not read the manifest. A service the policy does not name may use the registry for
//! itself and no topic.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tessera::ApiError;
use tessera::events::{dead_letter_topic, owns_group};
use tessera::identity::Principal;

/// The topics one service publishes to and reads.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    pub produces: Vec<String>,
    pub consumes: Vec<String>,
}

/// Every service's grants.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    services: HashMap<String, Grants>,
}

impl Policy {
    pub fn new(services: impl IntoIterator<Item = (String, Grants)>) -> Self {
        Self {
            services: services.into_iter().collect(),
        }
    }

    /// The services the policy names, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self.services.keys().cloned().collect();
        names.sort();
        names
    }

    /// Each consumed topic with the consumer group named after its consumer: the groups a
    /// bus that is told its consumers declares.
    pub fn consumer_groups(&self) -> Vec<(String, String)> {
        let mut groups: Vec<(String, String)> = self
            .services
            .iter()
            .flat_map(|(name, g)| g.consumes.iter().map(|t| (t.clone(), name.clone())))
            .collect();
        groups.sort();
        groups
    }

    /// Every topic the system declares (produced or consumed), and each service's dead-letter
    /// topic: what a bus that is told its topics is told.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .services
            .iter()
            .flat_map(|(name, g)| {
                g.produces
                    .iter()
                    .chain(&g.consumes)
                    .cloned()
                    .chain([dead_letter_topic(name)])
            })
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    fn grants(&self, service: &str) -> Option<&Grants> {
        self.services.get(service)
    }
}

/// The caller of a control-plane route, authenticated by [`crate::auth`], and what the policy
/// lets them do. Each check answers 403 with what was refused and why.
pub struct Caller {
    pub principal: Principal,
    policy: Arc<Policy>,
}

impl Caller {
    /// Registering or keeping alive an instance of `service`.
    pub fn may_register(&self, service: &str) -> Result<(), ApiError> {
        if self.principal.service() == Some(service) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{} may not register instances of {service}",
            self.principal
        )))
    }

    /// Removing an instance of `owner`: its own service, or an operator.
    pub fn may_remove(&self, owner: &str) -> Result<(), ApiError> {
        if self.principal.is_operator() || self.principal.service() == Some(owner) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{} may not remove an instance of {owner}",
            self.principal
        )))
    }

    /// Publishing to `topic`.
    pub fn may_produce(&self, topic: &str) -> Result<(), ApiError> {
        if let Some(service) = self.principal.service() {
            let declared = self
                .policy
                .grants(service)
                .is_some_and(|g| g.produces.iter().any(|t| t == topic));
            // A consumer publishes what it gives up on to its group's dead-letter topic.
            let own_dead_letters = topic.strip_prefix("deadletter.").is_some_and(|group| {
                owns_group(service, group) && dead_letter_topic(group) == topic
            });
            if declared || own_dead_letters {
                return Ok(());
            }
        }
        Err(ApiError::forbidden(format!(
            "{} may not publish to {topic}: the manifest does not list it under the service's produces",
            self.principal
        )))
    }

    /// Fetching and committing `topic` as a member of `group`.
    pub fn may_consume(&self, topic: &str, group: &str) -> Result<(), ApiError> {
        let Some(service) = self.principal.service() else {
            return Err(ApiError::forbidden(format!(
                "{} does not consume events",
                self.principal
            )));
        };
        if !owns_group(service, group) {
            return Err(ApiError::forbidden(format!(
                "{} may not join group {group}: a service's groups are named {service} or {service}.<name>",
                self.principal
            )));
        }
        let declared = self
            .policy
            .grants(service)
            .is_some_and(|g| g.consumes.iter().any(|t| t == topic));
        if !declared {
            return Err(ApiError::forbidden(format!(
                "{} may not read {topic}: the manifest does not list it under the service's consumes",
                self.principal
            )));
        }
        Ok(())
    }

    /// Reading the log as a whole (topics, partitions, dead letters).
    pub fn may_inspect(&self) -> Result<(), ApiError> {
        if self.principal.is_operator() {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{} may not read the log as a whole: that is for the supervisor and admins",
            self.principal
        )))
    }

    /// Acting on a service's saga (sending its step again, compensating it).
    pub fn may_act_on_sagas(&self) -> Result<(), ApiError> {
        self.may_act("act on sagas")
    }

    /// An operator's action on a service's state (`what`: "requeue mail"), for admins.
    pub fn may_act(&self, what: &str) -> Result<(), ApiError> {
        if self.principal == Principal::Admin {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{} may not {what}: that is for admins",
            self.principal
        )))
    }

    /// Replaying dead letters.
    pub fn may_replay(&self) -> Result<(), ApiError> {
        if self.principal == Principal::Admin {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{} may not replay dead letters: that is for admins",
            self.principal
        )))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let principal = parts.extensions.get::<Principal>().cloned();
        let policy = parts.extensions.get::<Arc<Policy>>().cloned();
        match (principal, policy) {
            (Some(principal), Some(policy)) => Ok(Self { principal, policy }),
            // The router puts both there for every /v1 route; without them, refuse.
            _ => Err(ApiError::unauthorized(
                "a control-plane credential is required",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(principal: Principal) -> Caller {
        Caller {
            principal,
            policy: Arc::new(Policy::new([(
                "order".to_string(),
                Grants {
                    produces: vec!["order.events".into()],
                    consumes: vec!["replies".into()],
                },
            )])),
        }
    }

    fn service(name: &str) -> Principal {
        Principal::Service(name.into())
    }

    #[test]
    fn a_service_acts_under_its_own_name_only() {
        let order = caller(service("order"));
        assert!(order.may_register("order").is_ok());
        assert!(order.may_register("auth").is_err());
        assert!(order.may_remove("order").is_ok());
        assert!(order.may_remove("auth").is_err());
        assert!(caller(Principal::Supervisor).may_remove("auth").is_ok());
        assert!(caller(Principal::Gateway).may_remove("auth").is_err());
        assert!(caller(Principal::Gateway).may_register("gateway").is_err());
    }

    #[test]
    fn topics_as_the_manifest_declares_them() {
        let order = caller(service("order"));
        assert!(order.may_produce("order.events").is_ok());
        assert!(order.may_produce("payment.commands").is_err());
        assert!(order.may_produce("deadletter.order").is_ok());
        assert!(order.may_produce("deadletter.order.audit").is_ok());
        assert!(order.may_produce("deadletter.orders").is_err());
        assert!(order.may_produce("deadletter.notification").is_err());
        assert!(order.may_consume("replies", "order").is_ok());
        assert!(order.may_consume("replies", "order.saga").is_ok());
        assert!(order.may_consume("replies", "notification").is_err());
        assert!(order.may_consume("replies", "order.").is_err());
        assert!(order.may_consume("order.events", "order").is_err());
        // A service the policy does not name, and the other principals: no topics.
        let stranger = caller(service("stranger"));
        assert!(stranger.may_produce("order.events").is_err());
        assert!(stranger.may_consume("replies", "stranger").is_err());
        for p in [Principal::Gateway, Principal::Supervisor, Principal::Admin] {
            assert!(caller(p.clone()).may_produce("order.events").is_err());
            assert!(caller(p).may_consume("replies", "order").is_err());
        }
        assert!(order.may_inspect().is_err());
        assert!(caller(Principal::Supervisor).may_inspect().is_ok());
        assert!(caller(Principal::Supervisor).may_replay().is_err());
        assert!(caller(Principal::Admin).may_replay().is_ok());
    }
}
