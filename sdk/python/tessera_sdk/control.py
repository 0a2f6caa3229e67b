"""The control plane's HTTP APIs (docs/registry.md, docs/events.md), as any language reaches
them: JSON over HTTP, every call carrying the process's credential
(`Authorization: Bearer $TESSERA_CREDENTIAL`). They answer the same in front of etcd and of
NATS JetStream, so a service on this module runs on every profile."""

import json
import urllib.error
import urllib.request


class ControlError(Exception):
    def __init__(self, status, message):
        super().__init__("%s: %s" % (status, message))
        self.status = status


class Control:
    def __init__(self, url, credential, timeout=70.0):
        if url.startswith("https://"):
            # The system's mutual TLS asks a client certificate of every process: not yet here.
            raise ValueError("TESSERA_CONTROL_URL: https (system.mtls) is not supported by tessera_sdk yet")
        self.base = url.rstrip("/")
        self.credential = credential
        self.timeout = timeout

    def call(self, method, path, body=None, timeout=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("authorization", "Bearer " + self.credential)
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                text = resp.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            raise ControlError(e.code, e.read().decode(errors="replace")[:300]) from None

    # The registry.

    def register(self, instance):
        self.call("PUT", "/v1/instances/" + instance["id"], instance, timeout=5)

    def heartbeat(self, instance_id):
        """False if the registry does not know the instance (register again)."""
        try:
            self.call("PUT", "/v1/instances/%s/heartbeat" % instance_id, timeout=5)
            return True
        except ControlError as e:
            if e.status == 404:
                return False
            raise

    def deregister(self, instance_id):
        self.call("DELETE", "/v1/instances/" + instance_id, timeout=5)

    # The event log.

    def publish(self, topic, events):
        return self.call("POST", "/v1/topics/%s/events" % topic, {"events": events}, timeout=30)

    def fetch(self, topic, group, consumer, max_events, wait_ms, commits):
        body = {"group": group, "consumer": consumer, "max": max_events, "waitMs": wait_ms, "all": True}
        if commits:
            body["commits"] = [{"partition": p, "offset": o} for p, o in commits.items()]
        return self.call("POST", "/v1/topics/%s/fetch" % topic, body, timeout=wait_ms / 1000 + 30)

    def renew(self, topic, group, consumer):
        """Keeps the partitions the member holds for another lease; the ones it still holds."""
        answer = self.call("POST", "/v1/topics/%s/renew" % topic, {"group": group, "consumer": consumer}, timeout=10)
        return (answer or {}).get("partitions", [])

    def commit(self, topic, group, consumer, partition, offset):
        body = {"group": group, "consumer": consumer, "partition": partition, "offset": offset}
        self.call("POST", "/v1/topics/%s/commit" % topic, body, timeout=10)
