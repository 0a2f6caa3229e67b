//! The order service's background work: the checkout saga's replies (a consumer of its reply
//! topic) and its ticker, which times out steps that got no reply and compensates them.

use std::sync::Arc;
use std::time::Duration;

use tessera::Context;
use tessera::events::Consumer;
use tessera::saga::Saga;

use crate::checkout::CheckoutHooks;

/// How often the ticker looks for overdue saga steps.
const TICK: Duration = Duration::from_millis(250);

/// Starts the saga's consumer and ticker; they run until the service stops.
pub fn start(ctx: &Context, saga: Arc<Saga>, hooks: Arc<CheckoutHooks>) {
    let events = ctx.events();
    events.consume(
        Consumer::new(saga.reply_topic(), "order"),
        saga.clone().handler(hooks.clone()),
    );
    saga.spawn_ticker(ctx.db().clone(), hooks, events.outbox.clone(), TICK);
}
