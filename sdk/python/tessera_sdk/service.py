"""A Tessera service in Python: what the `tessera` Rust library's `Service` does, for a second
language (docs/languages.md).

    service = Service("signals", migrations=SCHEMA)

    @service.route("GET", "/api/signals/{ticker}")
    def signal(req):
        return {"ticker": req.params["ticker"]}

    service.consume("market.ticks", on_tick)     # handler(tx, event): in one transaction
    service.run()

`run()` reads the settings `tessera up` gives every process (TESSERA_*), serves the API on
TESSERA_LISTEN and /metrics on TESSERA_ADMIN_LISTEN, registers the instance and keeps it
alive, runs the consumers and the outbox relay, and on SIGTERM turns not-ready, deregisters
and drains. Every request but /health/* needs a valid passport (401 otherwise); a handler's
ApiError is answered as `{"code", "message"}`, anything else it raises as a logged 500 that
tells the client nothing. Log lines are JSON, each with the trace and span of what it is
about.
"""

import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .control import Control, ControlError
from .passport import PassportError, PassportKeys
from .store import Store
from .trace import TraceContext

_local = threading.local()
_log_lock = threading.Lock()
_SERVICE = {"service": "?", "instance": "?"}

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_BODY = int(os.environ.get("TESSERA_MAX_BODY_BYTES", "1048576"))


def log(level, msg, **fields):
    """One JSON line on stdout, with the trace of what the thread is handling."""
    line = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".%03dZ" % (int(time.time() * 1000) % 1000),
        "level": level.upper(),
        "service": _SERVICE["service"],
        "instance": _SERVICE["instance"],
    }
    trace = getattr(_local, "trace", None)
    if trace is not None:
        line["trace_id"] = trace.trace_id
        line["span_id"] = trace.span_id
    line["msg"] = msg
    line.update(fields)
    with _log_lock:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def current_trace():
    return getattr(_local, "trace", None)


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Request:
    def __init__(self, method, path, query, headers, body, claims, params, trace):
        self.method = method
        self.path = path
        self.query = query  # {name: first value}
        self.headers = headers
        self.body = body  # bytes
        self.claims = claims
        self.params = params
        self.trace = trace

    @property
    def caller(self):
        return self.claims.get("sub")

    @property
    def roles(self):
        return self.claims.get("roles") or []

    def json(self):
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise ApiError(400, "invalid_json", "the body is not JSON") from None


class Metrics:
    """Request counts and latency histograms per route, method and status, in the exposition
    format Prometheus scrapes (the names the Rust services use)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.series = {}  # (route, method, status) -> [count, sum, [bucket counts]]
        self.counters = {}  # (name, labels) -> value

    def record(self, route, method, status, seconds):
        key = (route, method, str(status))
        with self.lock:
            s = self.series.setdefault(key, [0, 0.0, [0] * len(LATENCY_BUCKETS)])
            s[0] += 1
            s[1] += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    s[2][i] += 1

    def add(self, name, value=1, **labels):
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + value

    def render(self):
        out = [
            "# TYPE http_server_requests_total counter",
            "# TYPE http_server_request_duration_seconds histogram",
        ]
        with self.lock:
            for (route, method, status), (count, total, buckets) in sorted(self.series.items()):
                labels = 'route="%s",method="%s",status="%s"' % (route, method, status)
                out.append("http_server_requests_total{%s} %d" % (labels, count))
                for bound, n in zip(LATENCY_BUCKETS, buckets):
                    out.append('http_server_request_duration_seconds_bucket{%s,le="%s"} %d' % (labels, bound, n))
                out.append('http_server_request_duration_seconds_bucket{%s,le="+Inf"} %d' % (labels, count))
                out.append("http_server_request_duration_seconds_sum{%s} %f" % (labels, total))
                out.append("http_server_request_duration_seconds_count{%s} %d" % (labels, count))
            names = sorted({name for name, _ in self.counters})
            for name in names:
                out.append("# TYPE %s counter" % name)
                for (n, labels), value in sorted(self.counters.items()):
                    if n == name:
                        text = ",".join('%s="%s"' % kv for kv in labels)
                        out.append("%s{%s} %s" % (name, text, value))
        return "\n".join(out) + "\n"


class _Route:
    def __init__(self, method, pattern, handler):
        self.method = method
        self.pattern = pattern
        names = re.findall(r"{(\w+)}", pattern)
        regex = re.escape(pattern)
        for name in names:
            regex = regex.replace(re.escape("{%s}" % name), "(?P<%s>[^/]+)" % name)
        self.regex = re.compile("^" + regex + "$")
        self.handler = handler


class Service:
    def __init__(self, name, migrations=None):
        self.name = os.environ.get("TESSERA_SERVICE", name)
        self.instance = os.environ.get("TESSERA_INSTANCE") or "%s-%s" % (self.name, os.urandom(4).hex())
        _SERVICE.update(service=self.name, instance=self.instance)
        self.version = os.environ.get("TESSERA_VERSION", "0.1.0")
        self.keys = PassportKeys.from_spec(
            os.environ["TESSERA_PASSPORT_KEYS"], os.environ.get("TESSERA_SYSTEM", "tessera")
        )
        data_dir = os.environ.get("TESSERA_DATA_DIR", ".tessera/data")
        os.makedirs(data_dir, exist_ok=True)
        self.store = Store(os.path.join(data_dir, "%s.db" % self.name))
        if migrations:
            self.store.migrate(migrations)
        control_url = os.environ.get("TESSERA_CONTROL_URL")
        self.control = Control(control_url, os.environ["TESSERA_CREDENTIAL"]) if control_url else None
        self.routes = []
        self.consumers = []
        self.metrics = Metrics()
        self.ready = False
        self.stopping = threading.Event()
        self.producers = _producers(os.environ.get("TESSERA_PRODUCERS"))
        self.fault_rate = float(os.environ.get("TESSERA_FAULT_RATE", "0") or 0)

    def route(self, method, pattern):
        def add(handler):
            self.routes.append(_Route(method, pattern, handler))
            return handler

        return add

    def consume(self, topic, handler, group=None, max_attempts=5, batch=64):
        """`handler(tx, event)` for each event of `topic`, in a transaction with its inbox
        record: an event delivered again has no second effect. One that keeps failing goes to
        the group's dead letters after `max_attempts`."""
        self.consumers.append((topic, group or self.name, handler, max_attempts, batch))

    def passport(self, trace):
        """This service's own passport (`service:<name>`, role `system`), for its calls."""
        me = "service:" + self.name
        return self.keys.mint(me, me, ["system"], trace.trace_id)

    # Serving.

    def _serve(self, listen, handler_class):
        host, _, port = listen.rpartition(":")
        server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), handler_class)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def run(self):
        service = self
        main = self._serve(os.environ.get("TESSERA_LISTEN", "127.0.0.1:0"), _handler(service, admin=False))
        admin = self._serve(os.environ.get("TESSERA_ADMIN_LISTEN", "127.0.0.1:0"), _handler(service, admin=True))
        address = "%s:%d" % main.server_address[:2]
        admin_address = "%s:%d" % admin.server_address[:2]
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        threads = []
        if self.control:
            threads.append(
                threading.Thread(target=self.store.relay, args=(self.control, self.stopping, self.instance), daemon=True)
            )
            for topic, group, handler, attempts, batch in self.consumers:
                threads.append(
                    threading.Thread(target=self._consume, args=(topic, group, handler, attempts, batch), daemon=True)
                )
        for t in threads:
            t.start()
        instance = {
            "id": self.instance,
            "service": self.name,
            "address": address,
            "version": self.version,
            "metadata": {
                "pid": str(os.getpid()),
                "started": str(int(time.time())),
                "admin": admin_address,
                "restarts": os.environ.get("TESSERA_RESTARTS", "0"),
                "language": "python",
            },
            "ttl_ms": int(os.environ.get("TESSERA_TTL_MS", "3000")),
        }
        self.ready = True
        if self.control:
            self._register(instance)
            threading.Thread(target=self._heartbeat, args=(instance,), daemon=True).start()
        log("info", "ready", address=address, admin=admin_address, instance=self.instance)
        self.stopping.wait()
        # Stop: not ready, out of the registry, a moment for requests in flight, then the
        # outbox's last rows.
        self.ready = False
        if self.control:
            try:
                self.control.deregister(self.instance)
            except Exception:
                pass
        grace = int(os.environ.get("TESSERA_SHUTDOWN_GRACE_MS", "10000")) / 1000
        time.sleep(min(grace, 0.5))
        self.store.wake.set()
        self.store.release(self.instance)
        main.shutdown()
        admin.shutdown()
        log("info", "stopped")

    def _register(self, instance):
        while not self.stopping.is_set():
            try:
                self.control.register(instance)
                log("info", "registered", address=instance["address"])
                return
            except Exception as e:
                log("warn", "cannot register yet; trying again", error=str(e))
                self.stopping.wait(0.5)

    def _heartbeat(self, instance):
        every = int(os.environ.get("TESSERA_HEARTBEAT_MS", "1000")) / 1000
        while not self.stopping.wait(every):
            try:
                if not self.control.heartbeat(self.instance):
                    self._register(instance)
            except Exception as e:
                log("warn", "heartbeat failed", error=str(e))

    # Consuming.

    def _consume(self, topic, group, handler, max_attempts, batch):
        consumer = self.instance
        commits = {}
        while not self.stopping.is_set():
            try:
                answer = self.control.fetch(topic, group, consumer, batch, 1000, commits)
            except Exception as e:
                log("warn", "fetch failed; trying again", topic=topic, error=str(e))
                self.stopping.wait(0.5)
                continue
            if answer.get("commitError"):
                log("warn", "a commit was refused; the events after it come again", topic=topic, error=answer["commitError"])
            commits = {}
            lease = (answer.get("leaseMs") or 3000) / 1000
            renewed = time.monotonic()
            parts = [answer] + (answer.get("more") or [])
            for part in parts:
                for delivery in part.get("events") or []:
                    # A batch longer than a third of the lease keeps its partitions.
                    if time.monotonic() - renewed > lease / 3:
                        try:
                            self.control.renew(topic, group, consumer)
                        except Exception as e:
                            log("warn", "lease renewal failed", topic=topic, error=str(e))
                        renewed = time.monotonic()
                    # Committed only up to what was settled: an event neither handled nor
                    # dead-lettered (the service stopping) comes again.
                    if not self._deliver(topic, group, handler, max_attempts, delivery):
                        break
                    commits[part["partition"]] = delivery["offset"] + 1
        for partition, offset in commits.items():
            try:
                self.control.commit(topic, group, consumer, partition, offset)
            except Exception:
                pass

    def _deliver(self, topic, group, handler, max_attempts, delivery):
        event = delivery["event"]
        producer = delivery.get("producer")
        declared = self.producers.get(topic) if self.producers is not None else None
        # The log stamps each event with its publisher's principal, `service:<name>`.
        name = producer[len("service:") :] if isinstance(producer, str) and producer.startswith("service:") else None
        if declared is not None and name not in declared:
            return self._dead_letter(group, topic, event, "producer %r is not declared for %s" % (producer, topic), 0)
        _local.trace = (TraceContext.parse(event.get("traceparent")) or TraceContext.new_root()).child()
        started = time.monotonic()
        try:
            for attempt in range(1, max_attempts + 1):
                try:
                    with self.store.transaction() as tx:
                        if tx.handled(event["id"]):
                            handler(tx, event)
                    self.metrics.add("tessera_events_handled_total", topic=topic, outcome="ok")
                    log(
                        "info",
                        "event handled",
                        topic=topic,
                        event_type=event.get("type"),
                        id=event.get("id"),
                        latency_ms=round((time.monotonic() - started) * 1000, 3),
                    )
                    return True
                except Exception as e:
                    if attempt == max_attempts or self.stopping.is_set():
                        return self._dead_letter(group, topic, event, str(e), attempt) if attempt == max_attempts else False
                    log("warn", "handler failed; trying again", topic=topic, attempt=attempt, error=str(e))
                    time.sleep(min(0.05 * 2**attempt, 2.0))
        finally:
            _local.trace = None
        return False

    def _dead_letter(self, group, topic, event, error, attempts):
        """Publishes the event to the group's dead letters: whether it did (not when stopping)."""
        letter = dict(event)
        letter.update(
            deadlettergroup=group, deadlettertopic=topic, deadlettererror=error[:500], deadletterattempts=attempts
        )
        self.metrics.add("tessera_events_handled_total", topic=topic, outcome="dead_letter")
        log("error", "event dead-lettered", topic=topic, id=event.get("id"), error=error)
        while not self.stopping.is_set():
            try:
                self.control.publish("deadletter." + group, [letter])
                return True
            except Exception as e:
                log("warn", "dead letter not published yet", error=str(e))
                self.stopping.wait(0.5)
        return False


def _producers(spec):
    """TESSERA_PRODUCERS: `topic=service[,service...][;topic=...]`; None: no check."""
    if not spec:
        return None
    out = {}
    for part in spec.split(";"):
        topic, _, services = part.partition("=")
        if topic:
            out[topic.strip()] = {s.strip() for s in services.split(",") if s.strip()}
    return out


def _handler(service, admin):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tessera-python"

        def log_message(self, *args):
            pass  # requests are logged as JSON below

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def do_PUT(self):
            self._handle("PUT")

        def do_DELETE(self):
            self._handle("DELETE")

        def _send(self, status, body, content_type="application/json", headers=()):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _handle(self, method):
            url = urllib.parse.urlsplit(self.path)
            path = url.path
            if path in ("/health/live", "/health/ready"):
                ok = path == "/health/live" or service.ready
                return self._send(200 if ok else 503, {"status": "ready" if ok else "not ready"})
            if admin:
                if path == "/metrics":
                    return self._send(200, service.metrics.render().encode(), "text/plain; version=0.0.4")
                return self._send(404, {"code": "not_found", "message": "no such path"})
            started = time.monotonic()
            status, route_label = 500, "unrouted"
            try:
                try:
                    length = int(self.headers.get("content-length") or 0)
                except ValueError:
                    length = -1
                if length < 0:
                    status = 400
                    self.close_connection = True
                    return self._send(400, {"code": "bad_request", "message": "a bad Content-Length"})
                if length > MAX_BODY:
                    status = 413
                    self.close_connection = True
                    return self._send(413, {"code": "payload_too_large", "message": "the body is too large"})
                body = self.rfile.read(length) if length else b""
                token = self.headers.get("x-passport")
                if not token:
                    status = 401
                    return self._send(401, {"code": "unauthenticated", "message": "missing passport"})
                try:
                    claims = service.keys.verify(token)
                except PassportError as e:
                    status = 401
                    return self._send(401, {"code": "unauthenticated", "message": str(e)})
                parent = TraceContext.parse(self.headers.get("traceparent"))
                if parent is None and re.fullmatch(r"[0-9a-f]{32}", str(claims.get("tid", ""))):
                    parent = TraceContext(claims["tid"], os.urandom(8).hex())
                trace = (parent or TraceContext.new_root()).child()
                _local.trace = trace
                matched = [(r, r.regex.match(path)) for r in service.routes]
                matched = [(r, m) for r, m in matched if m]
                route = next(((r, m) for r, m in matched if r.method == method), None)
                if route is None:
                    if matched:
                        status = 405
                        return self._send(405, {"code": "method_not_allowed", "message": "method not allowed"})
                    status = 404
                    return self._send(404, {"code": "not_found", "message": "no such path"})
                r, m = route
                route_label = r.pattern
                if service.fault_rate and int.from_bytes(os.urandom(2), "big") / 65536 < service.fault_rate:
                    status = 503
                    return self._send(503, {"code": "fault_injected", "message": "a rehearsed failure"})
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                params = {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
                req = Request(method, path, query, self.headers, body, claims, params, trace)
                try:
                    result = r.handler(req)
                except ApiError as e:
                    status = e.status
                    return self._send(e.status, {"code": e.code, "message": e.message})
                status, payload = result if isinstance(result, tuple) else (200, result)
                return self._send(status, payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            except Exception:
                status = 500
                log("error", "internal error", error=traceback.format_exc(limit=5))
                try:
                    self._send(500, {"code": "internal", "message": "internal error"})
                except Exception:
                    self.close_connection = True
            finally:
                elapsed = time.monotonic() - started
                service.metrics.record(route_label, method, status, elapsed)
                if route_label != "unrouted" or status >= 400:
                    log(
                        "info",
                        "request",
                        method=method,
                        route=route_label,
                        status=status,
                        latency_ms=round(elapsed * 1000, 3),
                    )
                _local.trace = None

    return Handler


__all__ = ["ApiError", "ControlError", "Request", "Service", "log", "current_trace", "socket"]
