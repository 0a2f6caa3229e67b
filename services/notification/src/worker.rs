//! The notification service's background work: the consumer of `order.events`, which tells
//! the customer how each order ended, once.

use std::sync::Arc;

use tessera::Context;
use tessera::events::{BoxFuture, Consumer, Event, Handler, HandlerError, Tx};

use crate::messages::{MailingSender, Message, RecordingSender, Sender};

/// Starts the consumer; it runs until the service stops. `mailing`: the messages go out by
/// e-mail too (`tessera::mail`).
pub fn start(ctx: &Context, mailing: bool) {
    let mut consumer = Consumer::new("order.events", "notification");
    consumer.max_attempts = 10;
    ctx.events().consume(
        consumer,
        OrderOutcomes {
            sender: if mailing {
                Arc::new(MailingSender)
            } else {
                Arc::new(RecordingSender)
            },
        },
    );
}

/// Sends the message each order outcome asks for, in the consumer's transaction.
pub struct OrderOutcomes {
    pub sender: Arc<dyn Sender>,
}

impl Handler for OrderOutcomes {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let Some(message) = Message::about(event)? else {
                return Ok(());
            };
            self.sender.send(tx, &message).await?;
            tracing::info!(order = %message.order_id, kind = message.kind, "customer notified");
            Ok(())
        })
    }
}
