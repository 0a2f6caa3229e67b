//! The inventory's background work: the consumer of `inventory.commands`, which the checkout
//! saga sends (`shop.inventory.reserve`, `.release`, `.commit`).

use tessera::Context;
use tessera::events::{BoxFuture, Consumer, Event, Handler, HandlerError, Tx};

use crate::stock::{self, OrderData};

/// The topic the inventory takes its commands from.
pub const COMMANDS: &str = "inventory.commands";

/// Starts the consumer; it runs until the service stops.
pub fn start(ctx: &Context) {
    ctx.events()
        .consume(Consumer::new(COMMANDS, "inventory"), Commands);
}

/// Runs each command in the consumer's transaction (with its inbox record).
pub struct Commands;

impl Handler for Commands {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let order: OrderData = event.data_as()?;
            match event.ty.as_str() {
                "shop.inventory.reserve" => stock::reserve(tx, event, &order).await,
                "shop.inventory.release" => stock::release(tx, &order).await,
                "shop.inventory.commit" => stock::commit(tx, &order).await,
                other => Err(HandlerError::permanent(format!("unknown command {other}"))),
            }
        })
    }
}
