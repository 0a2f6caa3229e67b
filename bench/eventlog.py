#!/usr/bin/env python3
"""Benchmark 4: the embedded event log, publish → consume through the `tessera` bus API.

The control plane (the log) runs on one core and the bench client (publishers and one
consumer, bench-eventlog) on the other. Cases: batches of 100 from 4 publishers, and one event
per publish call from 16 concurrent publishers (every call is a group-committed append).
Each case runs against two logs side by side, in alternating rounds: one that acknowledges an
append once it is synced to disk (`log_sync = "full"`, the default: an acknowledged event
survives a power loss) and one that acknowledges it once written (`"normal"`: it survives a
crash of the control plane only). And against NATS JetStream through the same `Bus` API
(`nats-server` from Debian, on the same core, file storage, one replica): NATS 2.9 acknowledges
a message once it is in its store and syncs the files every two minutes (a per-message sync
came with 2.10), so the embedded log's `normal` is the like-for-like durability; `full` is
stricter. Reported: events/s, publish→consume latency, CPU per event, what the sync costs
(full / normal), and the embedded log against JetStream (normal / jetstream, full / jetstream).

    python3 bench/eventlog.py           # BENCH_EVENTS=20000, BENCH_ROUNDS=2
"""

import json, os, resource, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
CONTROL = {"full": 18700, "normal": 18701}
NATS_PORT = 18722
LOGS = ("full", "normal", "jetstream")
CASES = (("batched_100x4", 100, 4), ("one_by_one_x16", 1, 16))


def start_log(tessera, tmp, sync):
    """A control plane whose log syncs as `sync` says, with a `bench` service that produces and
    consumes one topic per case and round; its process and the bench service's credential."""
    topics = ", ".join(f'"bench.{name}.{r}"' for name, _, _ in CASES for r in range(ROUNDS))
    manifest = os.path.join(tmp, f"bench-{sync}.toml")
    with open(manifest, "w") as f:
        f.write(f'[system]\nname = "bench"\nstate_dir = "state-{sync}"\n'
                f'[control]\nlisten = "127.0.0.1:{CONTROL[sync]}"\nlog_sync = "{sync}"\n'
                f'[services.bench]\ncommand = "true"\nproduces = [{topics}]\nconsumes = [{topics}]\n')
    control = start([tessera, "--manifest", manifest, "control"], log=os.path.join(tmp, f"control-{sync}.log"))
    wait_http(f"http://127.0.0.1:{CONTROL[sync]}/health/ready")
    return control, credential(tessera, manifest, "service:bench")


def start_nats(tmp):
    """A nats-server with JetStream (file storage) on the server core."""
    server = start(["nats-server", "-a", "127.0.0.1", "-p", str(NATS_PORT), "-js", "-sd", os.path.join(tmp, "nats")],
                   log=os.path.join(tmp, "nats.log"))
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", NATS_PORT), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.02)
    return server, ""


def run_case(control, bench_credential, sync, name, batch, publishers, round_):
    events = EVENTS if batch > 1 else EVENTS // 4
    before = cpu_seconds([control.pid])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    url = f"nats://127.0.0.1:{NATS_PORT}" if sync == "jetstream" else f"http://127.0.0.1:{CONTROL[sync]}"
    run = subprocess.run(["taskset", "-c", LOAD_CPU, os.path.join(RELEASE, "bench-eventlog"),
                          url, f"bench.{name}.{round_}", str(events), str(batch),
                          str(publishers)],
                         capture_output=True, text=True, env={**os.environ, "TESSERA_CREDENTIAL": bench_credential})
    if run.returncode != 0:
        raise SystemExit(f"{name} ({sync}) failed:\n{run.stderr[:1500]}")
    r = json.loads(run.stdout.strip().splitlines()[-1])
    r["log_cpu_us_per_event"] = (cpu_seconds([control.pid]) - before) * 1e6 / r["events"]
    # The bench client's own CPU (publishers and consumer, through the bus API): what a
    # service spends per event on its side of the exchanges.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["client_cpu_us_per_event"] = ((after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)) \
        * 1e6 / r["events"]
    return r


def main():
    ensure_tools("taskset", "nats-server")
    build("tessera-cli", "tessera-bench")
    tmp = tempfile.mkdtemp(prefix="tessera-bench-log-")
    tessera = os.path.join(RELEASE, "tessera")
    logs = {sync: start_log(tessera, tmp, sync) for sync in CONTROL}
    logs["jetstream"] = start_nats(tmp)
    try:
        runs = {}  # (case, sync) -> [result per round]
        for round_ in range(ROUNDS):
            order = list(LOGS) if round_ % 2 == 0 else list(reversed(LOGS))
            for name, batch, publishers in CASES:
                for sync in order:
                    control, bench_credential = logs[sync]
                    r = run_case(control, bench_credential, sync, name, batch, publishers, round_)
                    runs.setdefault((name, sync), []).append(r)
                    print(f"round {round_ + 1}: {name} ({sync}): {r['events_per_sec']:.0f} events/s, "
                          f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms", flush=True)
        results = {}
        lines = ["| case | log sync | events | events/s (median) | p50 ms | p99 ms | log CPU µs/event | client CPU µs/event |",
                 "|---|---|---|---|---|---|---|---|"]
        for (name, sync), rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
            results[f"{name}_{sync}"] = {**med, "rounds": rs}
            lines.append(f"| {name} | {sync} | {int(med['events'])} | {med['events_per_sec']:.0f} | {med['p50_ms']:.1f} "
                         f"| {med['p99_ms']:.1f} | {med['log_cpu_us_per_event']:.1f} | {med['client_cpu_us_per_event']:.1f} |")
        lines += ["", "| case | ratio | events/s (per round) | p99 (per round) |", "|---|---|---|---|"]
        for name, _, _ in CASES:
            for a, b in (("full", "normal"), ("normal", "jetstream"), ("full", "jetstream")):
                ra, rb = runs[(name, a)], runs[(name, b)]
                rate = [x["events_per_sec"] / y["events_per_sec"] for x, y in zip(ra, rb)]
                p99 = [x["p99_ms"] / max(y["p99_ms"], 1e-9) for x, y in zip(ra, rb)]
                lines.append(f"| {name} | {a} / {b} | {', '.join(f'{x:.2f}×' for x in rate)} "
                             f"| {', '.join(f'{x:.2f}×' for x in p99)} |")
        write_results("eventlog", {"benchmark": "eventlog", "machine": machine(), "cases": results}, "\n".join(lines))
    finally:
        for control, _ in logs.values():
            control.terminate()
            control.wait(timeout=10)
        remove_tmp(tmp)


if __name__ == "__main__":
    main()
