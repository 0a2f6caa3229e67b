//! Why a call to another service failed, and what that says: to the guarded-call loop
//! (whether to try again, whether the instance is unwell) and to an event consumer (retry the
//! event, or dead-letter it).

use http::StatusCode;
use tessera_resilience::Retryable;

/// Why a call to another service failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no live instance of {0}")]
    NoInstance(String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    /// Nothing was sent: no connection could be opened.
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    /// The exchange failed after the request went out: it may have been acted on.
    #[error("the call to {0} failed: {1}")]
    Broken(String, String),
    #[error("{service} answered {status}: {body}")]
    Status {
        service: String,
        status: StatusCode,
        body: String,
    },
    #[error("unexpected answer from {0}: {1}")]
    Decode(String, String),
    /// The service's circuit breaker is open: the call was not made.
    #[error("{0} is failing (circuit open); not called")]
    CircuitOpen(String),
    /// Too many calls to the service are in flight already: the call was not made.
    #[error("too many calls to {0} in flight")]
    BulkheadFull(String),
}

impl CallError {
    /// Whether the same call may succeed if tried again (on another instance, or later).
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::NoInstance(_)
            | CallError::Timeout(_)
            | CallError::Connect(..)
            | CallError::Broken(..) => true,
            // Any 5xx: the service's trouble, which another instance or a later try may not
            // have (the gateway and the client retry alike: `tessera_resilience::call`).
            CallError::Status { status, .. } => status.is_server_error(),
            CallError::Decode(..) => false,
            // Later, yes; at once, no: the breaker or the bulkhead says the service needs air.
            CallError::CircuitOpen(_) | CallError::BulkheadFull(_) => false,
        }
    }
}

impl Retryable for CallError {
    fn is_failure(&self) -> bool {
        match self {
            CallError::Status { status, .. } => status.is_server_error(),
            CallError::Decode(..) => false,
            _ => true,
        }
    }

    fn is_retryable(&self) -> bool {
        CallError::is_retryable(self)
    }

    fn never_sent(&self) -> bool {
        matches!(self, CallError::Connect(..))
    }
}

impl From<CallError> for crate::events::HandlerError {
    /// A failed call fails the event's handling, to be retried when the call may succeed
    /// later.
    fn from(e: CallError) -> Self {
        if e.is_retryable() {
            Self::retry(e.to_string())
        } else {
            Self::permanent(e.to_string())
        }
    }
}
