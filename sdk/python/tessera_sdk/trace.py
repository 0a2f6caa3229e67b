"""W3C trace context (traceparent: `00-<trace id>-<span id>-<flags>`), as Tessera carries it on
requests, calls and events (docs/observability.md)."""

import os
import re

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class TraceContext:
    def __init__(self, trace_id, span_id, sampled=True):
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled

    @classmethod
    def new_root(cls):
        return cls(os.urandom(16).hex(), os.urandom(8).hex())

    @classmethod
    def parse(cls, header):
        """The context a traceparent header names, or None if it is not one."""
        m = _TRACEPARENT.match((header or "").strip())
        if not m or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
            return None
        return cls(m.group(1), m.group(2), int(m.group(3), 16) & 1 == 1)

    def child(self):
        """A new span of the same trace."""
        return TraceContext(self.trace_id, os.urandom(8).hex(), self.sampled)

    def header(self):
        return "00-%s-%s-%s" % (self.trace_id, self.span_id, "01" if self.sampled else "00")
