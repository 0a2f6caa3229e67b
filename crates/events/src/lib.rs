//! Events between services: CloudEvents over a bus, with a transactional outbox on the way out
//! and an idempotent inbox on the way in.
//!
//! - [`Event`]: a CloudEvent 1.0 (JSON), carrying the W3C trace context as the `traceparent`
//!   extension, so that one checkout is one trace across services.
//! - [`Bus`]: the seam between services and the log. [`ControlBus`] talks to the control
//!   plane's embedded log, [`NatsBus`] to NATS JetStream (`docs/scale-out.md`).
//! - [`outbox`]: `outbox::add(&mut tx, topic, &event)` inside the transaction that changes
//!   state; a relay publishes after commit and retries until the log has it. A rolled-back
//!   transaction publishes nothing; a crash between commit and publish loses nothing.
//! - [`consumer`]: a handler's writes and the inbox record commit in one transaction, so a
//!   redelivered or duplicated event has no second effect; after `max_attempts` failures the
//!   event goes to the group's dead-letter topic and the consumer moves on.
//!
//! - [`saga`]: orchestrated sagas whose steps and compensations travel as events, their state
//!   in the service's database, so that a crash at any point resumes where it stopped.
//! - [`Producers`]: which service may publish to which topic; a consumer dead-letters an event
//!   the log says came from anyone else.
//! - [`wire`]: the event log's HTTP API as types, shared by [`ControlBus`] and the control
//!   plane, so the two sides cannot drift.
//!
//! This crate knows nothing of passports or HTTP servers: the service runtime gives a
//! consumer a closure that mints the passport its handler's calls carry.
//!
//! Topics and event types are documented in `docs/events.md`.

mod bus;
pub mod consumer;
mod event;
pub mod outbox;
mod producers;
pub mod saga;
pub mod wire;

pub use bus::{
    Batch, BoxFuture, Bus, BusError, ControlBus, Fetched, NatsBus, NatsSettings, Part, Stored,
    read_fetch_answer,
};
/// NATS users' permissions and server configuration (`docs/scale-out.md`).
pub mod nats {
    pub use crate::bus::{
        Grants, NATS_IDENTITY, ServerTls, User, inbox_prefix, message_id, permissions,
        server_config,
    };
}
pub use consumer::{Consumer, Handler, HandlerError, MintPassport};
pub use event::{Delivery, Event, partition_of};
pub use outbox::Tx;
pub use producers::{PRODUCERS_ENV, Producers};

use tessera_store::Migration;

/// The library's own tables (outbox, inbox, leases), added to every service database.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1_000_000_001,
        description: "tessera events",
        sqlite: include_str!("../migrations/0001_events.sql"),
        postgres: Some(include_str!("../migrations/postgres/0001_events.sql")),
    },
    Migration {
        version: 1_000_000_002,
        description: "tessera sagas",
        sqlite: include_str!("../migrations/0002_sagas.sql"),
        postgres: Some(include_str!("../migrations/postgres/0002_sagas.sql")),
    },
    Migration {
        version: 1_000_000_003,
        description: "tessera tables without rowid",
        sqlite: include_str!("../migrations/0003_without_rowid.sql"),
        postgres: Some(include_str!(
            "../migrations/postgres/0003_without_rowid.sql"
        )),
    },
    Migration {
        version: 1_000_000_004,
        description: "tessera outbox without autoincrement",
        sqlite: include_str!("../migrations/0004_outbox_without_autoincrement.sql"),
        postgres: Some(include_str!(
            "../migrations/postgres/0004_outbox_without_autoincrement.sql"
        )),
    },
    Migration {
        version: 1_000_000_005,
        description: "tessera outbox parked events",
        sqlite: include_str!("../migrations/0005_outbox_parked.sql"),
        postgres: Some(include_str!(
            "../migrations/postgres/0005_outbox_parked.sql"
        )),
    },
    Migration {
        version: 1_000_000_006,
        description: "tessera saga traces",
        sqlite: include_str!("../migrations/0006_saga_trace.sql"),
        postgres: Some(include_str!("../migrations/postgres/0006_saga_trace.sql")),
    },
    Migration {
        version: 1_000_000_007,
        description: "tessera saga history",
        sqlite: include_str!("../migrations/0007_saga_history.sql"),
        postgres: Some(include_str!("../migrations/postgres/0007_saga_history.sql")),
    },
];

/// Whether consumer group `group` is `service`'s: named after it, or `<service>.<more>`.
pub fn owns_group(service: &str, group: &str) -> bool {
    group == service
        || group
            .strip_prefix(service)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)
}

/// The dead-letter topic of a consumer group.
pub fn dead_letter_topic(group: &str) -> String {
    format!("deadletter.{group}")
}
