//! `/health/live` and `/health/ready`, on the main port (which answers nothing else without a
//! passport) and on the admin listener.
//!
//! Live answers as soon as the process serves HTTP. Ready answers 200 only once the service
//! has migrated its database and registered, and 503 again while it shuts down, so that
//! nothing new is sent to an instance that is leaving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The health routes, which need no passport.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let health = self.clone();
        Router::new()
            .route(
                "/health/live",
                get(|| async { (StatusCode::OK, "{\"status\":\"live\"}") }),
            )
            .route(
                "/health/ready",
                get(move || {
                    let ready = health.is_ready();
                    async move {
                        if ready {
                            (StatusCode::OK, "{\"status\":\"ready\"}")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"starting\"}")
                        }
                    }
                }),
            )
    }
}
