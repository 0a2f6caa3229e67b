//! Who may publish to which topic, as the system's manifest declares it.
//!
//! The log stamps every event with the publisher it authenticated ([`Delivery::producer`]),
//! and it refuses a publish to a topic the publisher does not produce. A consumer checks the
//! stamp again against the same declaration before it handles an event, and dead-letters one
//! from anyone else with the reason: what reaches a handler was published by a service that
//! is declared to publish it, whatever log it came through and whatever was in it before.
//!
//! The runner hands the declaration to every service as `TESSERA_PRODUCERS`:
//! `topic=service[,service…][;topic=…]`.

use std::collections::{BTreeMap, HashMap};

use crate::Delivery;

/// The environment variable the declaration comes in.
pub const PRODUCERS_ENV: &str = "TESSERA_PRODUCERS";

/// Each topic's declared producers; or, for a process started without the declaration, no
/// check beyond the log's own.
#[derive(Clone, Debug, Default)]
pub struct Producers {
    declared: Option<HashMap<String, Vec<String>>>,
}

impl Producers {
    /// No declaration: events are handled whoever the log says published them (the log still
    /// refuses undeclared publishers). For a process started by hand; the runner declares.
    pub fn unchecked() -> Self {
        Self { declared: None }
    }

    /// Topic → the services that produce it.
    pub fn declared(topics: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        Self {
            declared: Some(topics.into_iter().collect()),
        }
    }

    /// Reads `topic=service[,service…][;topic=…]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut topics = HashMap::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (topic, services) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not topic=service[,service...]"))?;
            let services: Vec<String> = services
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            topics.insert(topic.trim().to_string(), services);
        }
        Ok(Self::declared(topics))
    }

    /// The spec [`Producers::parse`] reads, for `topics` (topic → producing services).
    pub fn spec(topics: &BTreeMap<String, Vec<String>>) -> String {
        topics
            .iter()
            .map(|(topic, services)| format!("{topic}={}", services.join(",")))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Whether there is a declaration to check against.
    pub fn is_checked(&self) -> bool {
        self.declared.is_some()
    }

    /// `Ok` if `service` may publish to `topic`: a topic declared as its, or the dead-letter
    /// topic of one of its consumer groups; else why not. With no declaration, anything (the
    /// log decides).
    pub fn may_publish(&self, service: &str, topic: &str) -> Result<(), String> {
        let Some(declared) = &self.declared else {
            return Ok(());
        };
        let produces = declared
            .get(topic)
            .is_some_and(|services| services.iter().any(|s| s == service));
        let own_dead_letters = topic
            .strip_prefix("deadletter.")
            .is_some_and(|group| crate::owns_group(service, group));
        if produces || own_dead_letters {
            Ok(())
        } else {
            Err(format!(
                "service:{service} may not publish to {topic}: the manifest does not list it under the service's produces"
            ))
        }
    }

    /// `Ok` if an event delivered from `topic` as `delivery` says comes from one of the
    /// topic's declared producers; else why not.
    pub fn check(&self, topic: &str, delivery: Option<&Delivery>) -> Result<(), String> {
        let Some(declared) = &self.declared else {
            return Ok(());
        };
        let producer = delivery.and_then(|d| d.producer.as_deref());
        let Some(producer) = producer else {
            return Err(format!(
                "the log names no producer for this event of topic {topic}"
            ));
        };
        let services = declared.get(topic).map(Vec::as_slice).unwrap_or_default();
        let declared = producer
            .strip_prefix("service:")
            .is_some_and(|name| services.iter().any(|s| s == name));
        if declared {
            Ok(())
        } else {
            Err(format!(
                "published by {producer}, but topic {topic} is produced by {}",
                if services.is_empty() {
                    "no service".to_string()
                } else {
                    services.join(", ")
                }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_publishes_its_own_topics_and_its_groups_dead_letters() {
        let p = Producers::parse("orders=order;payments=payment").unwrap();
        assert!(p.may_publish("order", "orders").is_ok());
        assert!(p.may_publish("order", "deadletter.order").is_ok());
        assert!(p.may_publish("order", "deadletter.order.audit").is_ok());
        for (service, topic) in [
            ("order", "payments"),
            ("order", "deadletter.payment"),
            ("order", "deadletter.orders"),
            ("order", "unknown"),
        ] {
            let e = p.may_publish(service, topic).unwrap_err();
            assert!(e.contains("may not publish"), "{e}");
        }
        assert!(Producers::unchecked().may_publish("x", "y").is_ok());
    }

    fn from(producer: Option<&str>) -> Delivery {
        Delivery {
            partition: 0,
            offset: 0,
            producer: producer.map(str::to_string),
        }
    }

    #[test]
    fn only_a_declared_producer_passes() {
        let topics = BTreeMap::from([
            ("order.events".to_string(), vec!["order".to_string()]),
            (
                "replies".to_string(),
                vec!["inventory".to_string(), "payment".to_string()],
            ),
        ]);
        let p = Producers::parse(&Producers::spec(&topics)).unwrap();
        assert!(p.is_checked());
        assert_eq!(
            p.check("order.events", Some(&from(Some("service:order")))),
            Ok(())
        );
        assert_eq!(
            p.check("replies", Some(&from(Some("service:payment")))),
            Ok(())
        );
        assert_eq!(
            p.check("order.events", Some(&from(Some("service:catalog")))),
            Err("published by service:catalog, but topic order.events is produced by order".into())
        );
        assert_eq!(
            p.check("other", Some(&from(Some("service:order")))),
            Err("published by service:order, but topic other is produced by no service".into())
        );
        // Not a service, or no stamp at all: refused.
        assert!(p.check("order.events", Some(&from(Some("admin")))).is_err());
        assert!(p.check("order.events", Some(&from(Some("order")))).is_err());
        assert!(p.check("order.events", Some(&from(None))).is_err());
        assert!(p.check("order.events", None).is_err());
        // Without a declaration, the log's word stands.
        assert_eq!(Producers::unchecked().check("x", None), Ok(()));
        assert!(Producers::parse("nonsense").is_err());
    }
}
