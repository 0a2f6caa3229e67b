//! The order service's background work: the checkout saga, run by the platform (its reply
//! topic consumed, a ticker that times out steps that got no reply and compensates them, and
//! its instances shown to operators under `/status/sagas`).

use std::sync::Arc;
use std::time::Duration;

use tessera::Context;
use tessera::saga::Saga;

use crate::checkout::CheckoutHooks;

/// How often the ticker looks for overdue saga steps.
const TICK: Duration = Duration::from_millis(250);

/// Starts the saga's consumer and ticker; they run until the service stops.
pub fn start(ctx: &Context, saga: Arc<Saga>, hooks: Arc<CheckoutHooks>) {
    ctx.events().run_saga(saga, hooks, TICK);
}
