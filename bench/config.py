#!/usr/bin/env python3
"""Benchmark: how long a configuration change takes to reach every instance (docs/config.md).

The whole shop (`tessera up`, release) pinned to core 1, as in checkout.py. Then, CHANGES
times (100), `PUT /v1/config/catalog/BENCH_MARK` as the admin (what `tessera config set`
does: the control plane asks a catalog instance to check the change, keeps the version, and
answers), and the time until every catalog instance (two replicas) has applied it, seen on
each one's admin listener (`tessera_config_applied_total`, polled every 2 ms from the other
core). Reported: the set's own answer time and the time to the last instance, median and max.

    python3 bench/config.py            # BENCH_CHANGES=100
"""

import os, re, statistics, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

CHANGES = int(os.environ.get("BENCH_CHANGES", "100"))
CONTROL, GATEWAY, GATEWAY_ADMIN = 18700, 18780, 18781


def applied(admin):
    """How many versions the instance whose admin listener is `admin` has applied."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=2) as r:
        text = r.read().decode()
    found = re.search(r"^tessera_config_applied_total(?:\{[^}]*\})? (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def main():
    up, path, _, tmp = start_shop(CONTROL, GATEWAY, GATEWAY_ADMIN)
    tessera = os.path.join(RELEASE, "tessera")
    try:
        admin = credential(tessera, path, "admin")
        auth = {"authorization": f"Bearer {admin}"}
        base = f"http://127.0.0.1:{CONTROL}"
        deadline = time.time() + 30
        while True:
            _, registry = http_json("GET", f"{base}/v1/services", headers=auth)
            instances = [i["metadata"]["admin"] for i in registry["services"].get("catalog", [])]
            if len(instances) >= 2:
                break
            if time.time() > deadline:
                raise SystemExit(f"two catalog instances never registered: {registry}")
            time.sleep(0.1)
        answered, reached = [], []
        for n in range(CHANGES):
            before = [applied(a) for a in instances]
            started = time.perf_counter()
            status, body = http_json("PUT", f"{base}/v1/config/catalog/BENCH_MARK", {"value": str(n)}, auth)
            answered.append(time.perf_counter() - started)
            assert status == 200, body
            waiting = set(range(len(instances)))
            while waiting:
                waiting = {i for i in waiting if applied(instances[i]) <= before[i]}
                if time.perf_counter() - started > 10:
                    raise SystemExit(f"change {n} did not reach {[instances[i] for i in waiting]}")
                if waiting:
                    time.sleep(0.002)
            reached.append(time.perf_counter() - started)
        ms = lambda xs: {"median": statistics.median(xs) * 1000, "max": max(xs) * 1000}
        results = {"changes": CHANGES, "instances": len(instances),
                   "set_answered_ms": ms(answered), "every_instance_applied_ms": ms(reached)}
        table = (f"{CHANGES} changes of catalog's settings, {len(instances)} instances:\n\n"
                 "| | median ms | max ms |\n|---|---|---|\n"
                 f"| `config set` answered (checked by an instance, kept) | {results['set_answered_ms']['median']:.1f} | {results['set_answered_ms']['max']:.1f} |\n"
                 f"| every instance applied it (from before the set) | {results['every_instance_applied_ms']['median']:.1f} | {results['every_instance_applied_ms']['max']:.1f} |\n")
        write_results("config", results, table)
    finally:
        stop_shop(up, tmp)


if __name__ == "__main__":
    main()
