//! A bulkhead: at most N calls in flight to one upstream. Excess is rejected at once, never
//! queued, so that a slow dependency cannot take all of a process's capacity.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("bulkhead {name} is full ({limit} calls in flight)")]
pub struct BulkheadFull {
    pub name: String,
    pub limit: usize,
}

#[derive(Clone)]
pub struct Bulkhead {
    name: Arc<str>,
    limit: usize,
    permits: Arc<Semaphore>,
}

impl Bulkhead {
    pub fn new(name: &str, limit: usize) -> Self {
        Self {
            name: name.into(),
            limit,
            permits: Arc::new(Semaphore::new(limit)),
        }
    }

    /// A slot, held until the permit is dropped.
    pub fn enter(&self) -> Result<OwnedSemaphorePermit, BulkheadFull> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("tessera_bulkhead_rejected_total", "bulkhead" => self.name.to_string()).increment(1);
            BulkheadFull { name: self.name.to_string(), limit: self.limit }
        })
    }

    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_past_the_limit_and_frees_on_drop() {
        let b = Bulkhead::new("up", 2);
        let p1 = b.enter().unwrap();
        let _p2 = b.enter().unwrap();
        assert_eq!(
            b.enter().unwrap_err(),
            BulkheadFull {
                name: "up".into(),
                limit: 2
            }
        );
        assert_eq!(b.in_flight(), 2);
        drop(p1);
        assert!(b.enter().is_ok());
    }
}
