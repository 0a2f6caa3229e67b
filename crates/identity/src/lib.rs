//! Who a process of a Tessera system is, and how it proves it.
//!
//! Every process the runner starts is given a **credential**: its [`Principal`] (a service by
//! name, the gateway, the supervisor, or an operator) and a MAC of that principal under the
//! system's **control keys**. Only the control plane (and the runner, which makes the keys)
//! holds those keys; a service holds its own credential and nothing that would let it make
//! another's. The control plane checks a credential with one HMAC, so every call can carry it.
//!
//! The credential travels as `Authorization: Bearer <credential>`; it reads
//! `<principal>.<key id>.<MAC, base64url>`, e.g. `service:catalog.c1795308000.3q2+…`, so a
//! log line or an operator can tell whose it is without the keys (the MAC is what proves it).
//!
//! This crate owns the principal, the credential's format and the key set. It must not know
//! HTTP, the registry or the log: what each principal may do there is decided by the control
//! plane (`tessera-control`'s `policy.rs`, `docs/security.md`).

mod credential;
pub mod engine;
mod keys;
mod principal;

pub use credential::{CREDENTIAL_ENV, Credential, CredentialError};
pub use keys::{ControlKeys, KEYS_ENV, KeySpecError, generate_key_spec, parse_key_spec};
pub use principal::{Principal, valid_service_name};
