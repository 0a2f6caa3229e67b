#!/usr/bin/env python3
"""Benchmark 4: the embedded event log, publish → consume through the `tessera` bus API.

The control plane (the log) runs on one core and the bench client (publishers and one
consumer, bench-eventlog) on the other. Cases: batches of 100 from 4 publishers, and one event
per publish call from 16 concurrent publishers (every call is a durable, group-committed
append). Reported: events/s and publish→consume latency.

    python3 bench/eventlog.py           # BENCH_EVENTS=20000
"""

import json, os, resource, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
CONTROL = 18700


def main():
    ensure_tools("taskset")
    build("tessera-cli", "tessera-bench")
    tmp = tempfile.mkdtemp(prefix="tessera-bench-log-")
    manifest = os.path.join(tmp, "bench.toml")
    with open(manifest, "w") as f:
        # The bench client calls as a service that produces and consumes one topic per case.
        f.write(f'[system]\nname = "bench"\nstate_dir = "state"\n[control]\nlisten = "127.0.0.1:{CONTROL}"\n'
                '[services.bench]\ncommand = "true"\n'
                'produces = ["bench.batched_100x4", "bench.one_by_one_x16"]\n'
                'consumes = ["bench.batched_100x4", "bench.one_by_one_x16"]\n')
    tessera = os.path.join(RELEASE, "tessera")
    control = start([tessera, "--manifest", manifest, "control"], log=os.path.join(tmp, "control.log"))
    bench_credential = credential(tessera, manifest, "service:bench")
    try:
        wait_http(f"http://127.0.0.1:{CONTROL}/health/ready")
        results = {}
        for name, batch, publishers in (("batched_100x4", 100, 4), ("one_by_one_x16", 1, 16)):
            events = EVENTS if batch > 1 else EVENTS // 4
            before = cpu_seconds([control.pid])
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            run = subprocess.run(["taskset", "-c", LOAD_CPU, os.path.join(RELEASE, "bench-eventlog"),
                                  f"http://127.0.0.1:{CONTROL}", f"bench.{name}", str(events), str(batch), str(publishers)],
                                 capture_output=True, text=True, env={**os.environ, "TESSERA_CREDENTIAL": bench_credential})
            if run.returncode != 0:
                raise SystemExit(f"{name} failed:\n{run.stderr[:1500]}")
            out = run.stdout
            r = json.loads(out.strip().splitlines()[-1])
            r["log_cpu_us_per_event"] = (cpu_seconds([control.pid]) - before) * 1e6 / r["events"]
            # The bench client's own CPU (publishers and consumer, through the bus API): what a
            # service spends per event on its side of the exchanges.
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            r["client_cpu_us_per_event"] = ((after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)) \
                * 1e6 / r["events"]
            results[name] = r
            print(f"{name}: {r['events_per_sec']:.0f} events/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms", flush=True)
        lines = ["| case | events | events/s | p50 ms | p99 ms | log CPU µs/event | client CPU µs/event |",
                 "|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            lines.append(f"| {name} | {r['events']} | {r['events_per_sec']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                         f"| {r['log_cpu_us_per_event']:.1f} | {r['client_cpu_us_per_event']:.1f} |")
        write_results("eventlog", {"benchmark": "eventlog", "machine": machine(), "cases": results}, "\n".join(lines))
    finally:
        control.terminate()
        control.wait(timeout=10)


if __name__ == "__main__":
    main()
