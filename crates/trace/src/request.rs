//! The request being served, as a task-local: what an outbound call or an event published
//! while serving it inherits (the caller's passport, the trace, the deadline).
//!
//! The service middleware sets it around every handler, and an event consumer around every
//! handled event, so that code several calls deep (the service client, `Event::new`, the
//! log) finds it without being handed it: what a Feign request interceptor does in Spring Cloud.

use crate::TraceContext;

tokio::task_local! {
    /// The request being served: set by the service middleware around every handler.
    pub static REQUEST: RequestContext;
}

/// What an outbound call inherits from the request being served.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The verified passport, as received (sharing the request's bytes).
    pub passport: http::HeaderValue,
    /// This hop's span.
    pub trace: TraceContext,
    /// When the caller stops waiting: calls made now get only what is left.
    pub deadline: Option<tokio::time::Instant>,
}
