//! The catalog's background work: it consumes its own product events (`catalog.events`, put
//! in the outbox in the transaction of each change) and invalidates its cache with them, so
//! that once an event is handled no reader is served what it changed. With the cache on Redis,
//! one replica's invalidation serves all (the service's group); with each replica's cache in
//! its memory, each replica consumes in a group of its own (`Context::cache_group`).

use std::sync::Arc;

use tessera::Context;
use tessera::events::{BoxFuture, Consumer, Event, Handler, HandlerError, Tx};
use tessera::shared::Cache;

/// The topic of the catalog's product events.
pub const EVENTS: &str = "catalog.events";

/// The cache group of one product, and of every list.
pub fn product_group(id: &str) -> String {
    format!("product:{id}")
}
pub const LISTS: &str = "lists";

/// Starts the consumer; it runs until the service stops.
pub fn start(ctx: &Context, cache: Arc<Cache>) {
    ctx.events().consume(
        Consumer::new(EVENTS, &ctx.cache_group()),
        Invalidate { cache },
    );
}

/// Invalidates what a product event changed: the product, and every list.
pub struct Invalidate {
    cache: Arc<Cache>,
}

impl Handler for Invalidate {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        _tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let Some(id) = event.subject.as_deref() else {
                return Err(HandlerError::permanent("a product event names its product"));
            };
            // Not handled until the cache has been told: a failure is retried.
            if self.cache.invalidate(&product_group(id)).await && self.cache.invalidate(LISTS).await
            {
                Ok(())
            } else {
                // Like a database outage: retried until the cache is back, never sent to the
                // dead letters for it.
                Err(HandlerError {
                    outage: true,
                    ..HandlerError::retry("the cache cannot be told yet")
                })
            }
        })
    }
}
