"""Join a Tessera system from Python, as the `tessera` Rust library joins a Rust service.

What a service of the system must do, whatever its language (docs/languages.md):

- verify every request's passport (docs/passport.md) and answer nothing but /health/* without
  one: `passport.PassportKeys`;
- register with the control plane and keep its instance alive (docs/registry.md):
  `control.Control`;
- publish and consume events through the log's HTTP API (docs/events.md), exactly once with
  an inbox and an outbox in its own database: `store.Store`, `service.Service.consume`;
- carry the trace context (W3C traceparent) on what it does: `trace.TraceContext`;
- expose /health/live, /health/ready, and /metrics on its admin listener: `service.Service`.

The standard library only: nothing to install beside Python 3.9+.
"""

from .passport import PassportError, PassportKeys
from .service import ApiError, Request, Service
from .trace import TraceContext

__all__ = ["ApiError", "PassportError", "PassportKeys", "Request", "Service", "TraceContext"]
