#!/usr/bin/env python3
"""Benchmark: what changing a running system costs the requests flowing through it
(docs/rollouts.md, docs/gateway.md).

The whole shop (`tessera up`, release) pinned to core 1, as in checkout.py and config.py. On
core 0, a steady open-loop load through the gateway: RATE requests a second (300) of
`GET /api/catalog/products`, spread over 16 kept-alive connections, each request sent at its
time whatever the last one did. Meanwhile, one after another:

  steady      nothing changes (the reference)
  reload ×3   the manifest edited (a rate limit on another route, then back), `tessera reload`
  canary      `tessera rollout catalog --canary 10,50,100 --step 5s`
  failing     a version answering 30% of its requests 503 (TESSERA_FAULT_RATE), rolled back
  blue-green  `tessera rollout catalog --blue-green --step 5s`

Reported per phase: requests, requests that failed (not 200, or no answer), p50 and p99, and
p99 against the steady phase's.

    python3 bench/rollout.py            # BENCH_RATE=300
"""

import http.client, os, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

RATE = int(os.environ.get("BENCH_RATE", "300"))
CONNECTIONS = 16
CONTROL, GATEWAY, GATEWAY_ADMIN = 18900, 18980, 18981


class Load:
    """An open-loop load: each connection sends at its own fixed pace; every request's start,
    latency and outcome are kept."""

    def __init__(self):
        self.samples = []  # (start, latency_s, ok)
        self.lock = threading.Lock()
        self.stop = False
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(CONNECTIONS)]

    def run(self, i):
        period = CONNECTIONS / RATE
        next_at = time.perf_counter() + period * i / CONNECTIONS
        conn = None
        while not self.stop:
            now = time.perf_counter()
            if now < next_at:
                time.sleep(next_at - now)
            start = time.perf_counter()
            ok = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", GATEWAY, timeout=10)
                conn.request("GET", "/api/catalog/products")
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn = None
            with self.lock:
                self.samples.append((start, time.perf_counter() - start, ok))
            next_at += period

    def between(self, t0, t1):
        with self.lock:
            return [s for s in self.samples if t0 <= s[0] < t1]


def phase(name, samples, steady_p99=None):
    lat = sorted(s[1] * 1000 for s in samples)
    failed = sum(1 for s in samples if not s[2])
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    row = {"phase": name, "requests": len(samples), "failed": failed, "p50_ms": p(0.5), "p99_ms": p(0.99)}
    if steady_p99:
        row["p99_vs_steady"] = row["p99_ms"] / steady_p99
    return row


def main():
    up, path, manifest, tmp = start_shop(CONTROL, GATEWAY, GATEWAY_ADMIN)
    tessera = os.path.join(RELEASE, "tessera")

    def cli(*args):
        out = subprocess.run(["taskset", "-c", LOAD_CPU, tessera, "--manifest", path, *args],
                             capture_output=True, text=True)
        return out.returncode == 0, out.stdout + out.stderr

    try:
        load = Load()
        for t in load.threads:
            t.start()
        time.sleep(2)  # connections open, caches warm
        marks = {}

        def timed(name, action):
            t0 = time.perf_counter()
            result = action()
            marks[name] = (t0, time.perf_counter())
            return result

        timed("steady", lambda: time.sleep(10))

        def reloads():
            limited = manifest.replace('rate_limit = { per_ip = "10/m" }', 'rate_limit = { per_ip = "11/m" }')
            for text in (limited, manifest, limited):
                with open(path, "w") as f:
                    f.write(text)
                ok, out = cli("reload")
                assert ok, out
                time.sleep(1)
        timed("reload x3", reloads)
        ok, out = timed("canary", lambda: cli("rollout", "catalog", "--env", "BENCH=1", "--canary", "10,50,100",
                                               "--step", "5s"))
        assert ok, out
        ok, out = timed("failing (rolled back)", lambda: cli("rollout", "catalog", "--env",
                                                             "TESSERA_FAULT_RATE=0.3", "--step", "5s"))
        assert not ok and "rolled back" in out, out
        ok, out = timed("blue-green", lambda: cli("rollout", "catalog", "--blue-green", "--step", "5s"))
        assert ok, out
        time.sleep(1)
        load.stop = True
        for t in load.threads:
            t.join(timeout=15)

        steady = phase("steady", load.between(*marks["steady"]))
        rows = [steady] + [phase(name, load.between(*marks[name]), steady["p99_ms"])
                           for name in ("reload x3", "canary", "failing (rolled back)", "blue-green")]
        results = {"rate": RATE, "connections": CONNECTIONS, "phases": rows}
        table = (f"A steady {RATE} requests/s of `GET /api/catalog/products` through the gateway "
                 f"({CONNECTIONS} connections, open loop) while the system is changed:\n\n"
                 "| phase | requests | failed | p50 ms | p99 ms | p99 vs steady |\n|---|---|---|---|---|---|\n")
        for r in rows:
            vs = f"{r['p99_vs_steady']:.2f}×" if "p99_vs_steady" in r else "—"
            table += (f"| {r['phase']} | {r['requests']} | {r['failed']} | {r['p50_ms']:.2f} | "
                      f"{r['p99_ms']:.2f} | {vs} |\n")
        write_results("rollout", results, table)
    finally:
        stop_shop(up, tmp)


if __name__ == "__main__":
    main()
