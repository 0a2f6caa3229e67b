//! What one hop carries: its W3C trace context ([`TraceContext`]), the request it is serving
//! ([`REQUEST`], a task-local), the spans it records ([`span`]), and the clock as the platform
//! writes it ([`time`]).
//!
//! The lowest of the library's crates: the log, the passport, the service client and the
//! events all need these, and this crate needs none of them. It knows nothing of HTTP
//! servers, databases or passports' contents.

mod context;
pub mod logs;
mod request;
pub mod span;
pub mod time;

pub use context::{TRACEPARENT, TraceContext, hex};
pub use request::{REQUEST, RequestContext};
pub use span::{Kind, Span};
pub use time::{push_timestamp, rfc3339_now, rfc3339_of_ms, unix_now, unix_now_ms, unix_now_ns};
