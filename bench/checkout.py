#!/usr/bin/env python3
"""Benchmark 3: checkout throughput at constant rate, rising until the system saturates.

The whole shop (`tessera up`, release) pinned to core 1; the open-model load generator
(bench-checkout: every order has a due time and latency runs from it, so queueing cannot hide)
on core 0. Two shops run side by side, measured in turn at each rate: on the embedded defaults
(SQLite), and on the PostgreSQL profile (a primary and a streaming replica, the stateful
services two replicas each), whose servers' CPU counts as the shop's. Each step places orders
at a constant rate for a few seconds and waits for all to settle. Reported per step: confirmed
orders/s, p50/p90/p99 from due time to CONFIRMED, and the CPU share of every process, which
says what saturates first; and the PostgreSQL profile's figures over SQLite's.

    python3 bench/checkout.py           # BENCH_RATES=50,100,200,400,800 BENCH_SECONDS=5
    BENCH_PROFILES=postgres python3 bench/checkout.py   # one profile (default: sqlite,postgres)
    BENCH_PROFILES=sqlite,distributed python3 bench/checkout.py   # events on NATS JetStream beside
    BENCH_POSTGRES_CPU=0 python3 bench/checkout.py   # PostgreSQL's servers on core 0 (with the load)
    BENCH_PERF=/tmp/shop.perf BENCH_RATES=100 python3 bench/checkout.py   # profile the shop's core (.<profile> with two)
    BENCH_WRITES=1 python3 bench/checkout.py   # also count each process's file writes per order
    BENCH_RUST_LOG=warn,tessera_store=debug python3 bench/checkout.py   # the shop's log filter (up.log)

BENCH_WRITES traces every `pwrite` during each step (perf, root): SQLite writes the WAL with
one `pwrite` per frame header and one per 4 KiB page, so the 4 KiB writes per confirmed order
are the database pages each process wrote for it.
"""

import json, os, re, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403
from footprint import rss_kb, tree  # noqa: E402

RATES = [int(r) for r in os.environ.get("BENCH_RATES", "50,100,200,400,800").split(",")]
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
PRODUCT = "0190f000-0000-7000-8000-000000000005"
CONTROL, GATEWAY, GATEWAY_ADMIN = 18800, 18880, 18881
NATS_PORT = 18822
POSTGRES_PORT = 16432   # and the replica on the next
# Each profile is a whole shop of its own, the two measured in turn, rate by rate.
PROFILES = os.environ.get("BENCH_PROFILES", "sqlite,postgres").split(",")
# The other shop stays up, idle, on the same core while one is measured (about a sixth of the
# core for the PostgreSQL shop's pollers, uncounted): BENCH_PROFILES=<one> for a shop alone.
if any(p not in ("sqlite", "postgres", "distributed") for p in PROFILES):
    raise SystemExit(f"BENCH_PROFILES: sqlite, postgres, distributed (events on NATS), not {PROFILES}")


def requests_served(control, gateway_admin, admin):
    """HTTP requests each process has served so far, by `process route`, from every /metrics:
    the control plane's, and the gateway's and each instance's admin listener (registered as
    the instance's `admin`; the registry read with the `admin` credential)."""
    urls = {"tessera control": f"http://{control}", "tessera gateway": f"http://{gateway_admin}"}
    registry = urllib.request.Request(f"http://{control}/v1/services", headers={"authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(registry, timeout=5) as r:
        for service, instances in json.load(r)["services"].items():
            for i in instances:
                urls[i["id"]] = f"http://{i['metadata']['admin']}"
    counts = {}
    for name, url in urls.items():
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                m = re.match(r'http_server_requests_total\{route="([^"]*)",method="([^"]*)".*\} (\d+)', line)
                if m:
                    key = f"{name} {m.group(2)} {m.group(1)}"
                    counts[key] = counts.get(key, 0) + int(m.group(3))
    return counts


def start_write_trace(tmp):
    """Traces every pwrite on the machine until stopped (see BENCH_WRITES), into `tmp`."""
    out = os.path.join(tmp, f"writes-{time.time_ns()}.perf")
    proc = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "syscalls:sys_enter_pwrite64", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf is tracing before the step starts
    return proc, out


def stop_write_trace(trace, names, confirmed):
    """Per process: pwrite calls, 4 KiB page writes and bytes written, per confirmed order."""
    proc, out = trace
    proc.send_signal(2)
    proc.wait()
    script = subprocess.run(["perf", "script", "-i", out, "-F", "pid,trace"], capture_output=True, text=True).stdout
    os.unlink(out)
    calls, pages, written = {}, {}, {}
    for line in script.splitlines():
        m = re.match(r"\s*(\d+)\s.*count: (0x[0-9a-f]+)", line)
        if not m or int(m.group(1)) not in names:
            continue
        name, count = names[int(m.group(1))], int(m.group(2), 16)
        calls[name] = calls.get(name, 0) + 1
        pages[name] = pages.get(name, 0) + (count >= 4096)
        written[name] = written.get(name, 0) + count
    per = max(confirmed, 1)
    return {name: {"pwrites": calls[name] / per, "pages": pages[name] / per, "bytes": written[name] / per}
            for name in sorted(calls, key=lambda n: -written[n])}


class Shop:
    """One whole shop (`tessera up`, release) on its own ports and state directory, pinned to
    the server core: on its embedded defaults (`sqlite`), or with `--profile postgres` on a
    local PostgreSQL primary and streaming replica, its stateful services two replicas each
    (`[profile.postgres]` in `tessera.toml`)."""

    def __init__(self, profile, offset, tmp):
        self.profile, self.tmp = profile, os.path.join(tmp, profile)
        os.makedirs(self.tmp)
        self.control, self.gateway = CONTROL + offset, GATEWAY + offset
        self.gateway_admin = GATEWAY_ADMIN + offset
        with open(os.path.join(ROOT, "tessera.toml")) as f:
            manifest = f.read()
        manifest = re.sub(r'\[\[route\]\]\nprefix = "/api/auth/login"\n(.*\n){3}', "", manifest)   # no login limit
        manifest = (manifest.replace('state_dir = ".tessera"', f'state_dir = "{self.tmp}/state"')
                    .replace("127.0.0.1:8500", f"127.0.0.1:{self.control}")
                    .replace("127.0.0.1:8080", f"127.0.0.1:{self.gateway}")
                    .replace("127.0.0.1:8081", f"127.0.0.1:{self.gateway_admin}")
                    .replace("127.0.0.1:8443", f"127.0.0.1:{self.gateway + 2}")
                    .replace('command = "target/release/', f'command = "{RELEASE}/'))
        self.manifest = os.path.join(self.tmp, "tessera.toml")
        with open(self.manifest, "w") as f:
            f.write(manifest)
        args = {"postgres": ["--profile", "postgres", "--postgres-port", str(POSTGRES_PORT)],
                # Events on a local NATS JetStream, a child of `up` (on the shop's core, counted
                # as the shop's).
                "distributed": ["--profile", "distributed", "--nats-port", str(NATS_PORT + offset)]
                }.get(profile, [])
        self.log = os.path.join(self.tmp, "up.log")
        self.up = start([os.path.join(RELEASE, "tessera"), "--manifest", self.manifest, "up", "--no-build", *args],
                        env={"NO_COLOR": "1", "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn")}, log=self.log)
        self.base = f"http://127.0.0.1:{self.gateway}"
        self.cluster = None

    def ready(self):
        """Waits for the shop, then stocks the product and signs up the buyers."""
        deadline = time.time() + 120   # a first PostgreSQL cluster is made with initdb
        while "ready in" not in open(self.log).read():
            if time.time() > deadline or self.up.poll() is not None:
                raise SystemExit(f"the {self.profile} shop did not start; see {self.log}")
            time.sleep(0.05)
        found = re.search(r"files in (.*)\)", open(self.log).read())
        self.cluster = found.group(1) if found else None
        if os.environ.get("BENCH_POSTGRES_CPU") and self.cluster:
            # The database servers on a core of their own (as on a host of their own): the
            # postmasters and every process they have; later backends inherit it.
            for pid, name in self.processes().items():
                if name.startswith("postgres"):
                    subprocess.run(["taskset", "-a", "-p", "-c", os.environ["BENCH_POSTGRES_CPU"], str(pid)],
                                   capture_output=True)
        self.control_admin = credential(os.path.join(RELEASE, "tessera"), self.manifest, "admin")
        _, admin = http_json("POST", f"{self.base}/api/auth/login",
                             {"email": "admin@tessera.local", "password": "tessera-admin"})
        admin = admin["data"]["accessToken"]
        status, _ = http_json("PUT", f"{self.base}/api/inventory/{PRODUCT}", {"available": 1_000_000_000},
                              {"authorization": f"Bearer {admin}"})
        assert status == 200
        self.tokens = []
        for i in range(20):
            email = f"bench{i}@example.com"
            http_json("POST", f"{self.base}/api/auth/signup", {"email": email, "password": "password123", "name": "Bench"})
            _, login = http_json("POST", f"{self.base}/api/auth/login", {"email": email, "password": "password123"})
            self.tokens.append(login["data"]["accessToken"])

    def processes(self):
        """pid → name of every process of this shop: `tessera up`'s tree, and PostgreSQL's
        servers and their backends (pg_ctl starts them apart from `up`)."""
        names = {pid: (os.path.basename(argv[0]) + (f" {argv[-1]}" if argv[0].endswith("tessera") else ""))
                 for pid, argv in tree(self.up.pid)}
        for node in ("primary", "replica"):
            try:
                with open(os.path.join(self.cluster or "/nonexistent", node, "postmaster.pid")) as f:
                    postmaster = int(f.readline())
            except (OSError, ValueError):
                continue
            names[postmaster] = f"postgres {node}"
            names.update({pid: f"postgres {node}" for pid, _ in tree(postmaster)})
        return names

    def requests_served(self):
        return requests_served(f"127.0.0.1:{self.control}", f"127.0.0.1:{self.gateway_admin}", self.control_admin)

    def step(self, rate):
        """Places orders at `rate`/s for SECONDS, waits for them to settle, and measures."""
        names = self.processes()
        writes = start_write_trace(self.tmp) if os.environ.get("BENCH_WRITES") else None
        before = {pid: cpu_seconds([pid]) for pid in names}
        served = self.requests_served()
        started = time.time()
        perf = None
        if os.environ.get("BENCH_PERF"):
            # Profile the shop's core during this step: perf report -i <file> --sort comm,symbol
            out = os.environ["BENCH_PERF"] + ("" if len(PROFILES) == 1 else f".{self.profile}")
            perf = subprocess.Popen(["perf", "record", "-q", "-C", SERVER_CPU, "-F", "999", "-g",
                                     "-o", out, "--", "sleep", str(SECONDS)])
        run = subprocess.run(["taskset", "-c", LOAD_CPU, os.path.join(RELEASE, "bench-checkout"), self.base,
                              str(rate), str(SECONDS), PRODUCT, *self.tokens], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{self.profile}: rate {rate} failed:\n{run.stderr[:1500]}")
        wall = time.time() - started
        if perf:
            perf.wait()
        step = json.loads(run.stdout.strip().splitlines()[-1])
        cpu = {}
        for pid, name in names.items():
            try:
                cpu[name] = cpu.get(name, 0) + (cpu_seconds([pid]) - before[pid]) / wall
            except OSError:
                pass
        step["cpu_share"] = dict(sorted(cpu.items(), key=lambda kv: -kv[1]))
        # The whole shop's CPU time per confirmed order, settling included: steadier than
        # the saturation point on a noisy machine, and what an A/B of a change should read.
        step["cpu_us_per_order"] = sum(cpu.values()) * wall * 1e6 / max(step["confirmed"], 1)
        # HTTP requests the shop's processes served per confirmed order, by route: each is
        # an exchange between two processes (settling's reads included).
        after = self.requests_served()
        per_order = {k: (v - served.get(k, 0)) / max(step["confirmed"], 1) for k, v in after.items()}
        step["requests_per_order"] = dict(sorted(((k, v) for k, v in per_order.items() if v > 0),
                                                 key=lambda kv: -kv[1]))
        step["requests_per_order_total"] = sum(step["requests_per_order"].values())
        if writes:
            # File writes per confirmed order, by process, settling included.
            step["writes_per_order"] = stop_write_trace(writes, names, step["confirmed"])
            print("  database pages written per order: " + ", ".join(
                f"{n} {w['pages']:.1f}" for n, w in step["writes_per_order"].items()), flush=True)
        step["rss_mb"] = {}
        for pid, name in names.items():
            try:
                step["rss_mb"][name] = step["rss_mb"].get(name, 0) + rss_kb(pid) / 1024
            except OSError:
                pass   # ended during the step (a PostgreSQL backend or worker)
        top = ", ".join(f"{n} {c:.0%}" for n, c in list(step["cpu_share"].items())[:3])
        print(f"{self.profile} {rate}/s: {step['confirmed_per_sec']:.0f} confirmed/s, p50 {step['p50_ms']:.0f} ms, "
              f"p99 {step['p99_ms']:.0f} ms, {step['cpu_us_per_order']:.0f} µs CPU and "
              f"{step['requests_per_order_total']:.1f} requests per order; busiest: {top}", flush=True)
        # Stalls: the slices of the step whose orders waited longest (recurring ones show
        # their period: one second was the checkpoints', see docs/BENCHMARKS.md).
        slices = step.get("worst_ms_per_100ms", [])
        worst = sorted(sorted(range(len(slices)), key=lambda i: -slices[i])[:5])
        print("  slowest 100 ms of due time: " + ", ".join(f"{i / 10:.1f} s in: {slices[i]:.0f} ms" for i in worst),
              flush=True)
        return step

    def stop(self):
        self.up.send_signal(2)
        try:
            self.up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.up.kill()
        if self.cluster and self.cluster.startswith("/var/lib/tessera/postgres/"):
            shutil.rmtree(self.cluster, ignore_errors=True)   # made for this run only


def table(steps, saturated):
    lines = ["| target/s | confirmed/s | p50 ms | p90 ms | p99 ms | CPU µs/order | requests/order | busiest processes (CPU share of one core) |",
             "|---|---|---|---|---|---|---|---|"]
    for s in steps:
        top = ", ".join(f"{n} {c:.0%}" for n, c in list(s["cpu_share"].items())[:4])
        lines.append(f"| {s['rate']} | {s['confirmed_per_sec']:.0f} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} "
                     f"| {s['p99_ms']:.0f} | {s['cpu_us_per_order']:.0f} | {s['requests_per_order_total']:.1f} | {top} |")
    lines.append(f"\nsaturation: {'at ' + str(saturated) + '/s' if saturated else 'not reached'}")
    return "\n".join(lines)


def main():
    ensure_tools("taskset")
    subprocess.run(["cargo", "build", "--release", "-q", "--workspace", "--bins"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="tessera-bench-checkout-")
    shops = []
    try:
        for i, profile in enumerate(PROFILES):
            shops.append(Shop(profile, 10 * i, tmp))
        for shop in shops:
            shop.ready()
        steps = {shop.profile: [] for shop in shops}
        saturated = {shop.profile: None for shop in shops}
        # Interleaved: each rate on every profile in turn, so that the host's drift falls on
        # both alike; a profile stops rising once it saturates.
        for rate in RATES:
            for shop in shops:
                if saturated[shop.profile] is not None:
                    continue
                step = shop.step(rate)
                steps[shop.profile].append(step)
                if step["confirmed_per_sec"] < 0.9 * rate or step["p99_ms"] > 1000:
                    saturated[shop.profile] = rate
            if all(s is not None for s in saturated.values()):
                break
        text = [f"### {p}\n\n{table(steps[p], saturated[p])}" for p in steps]
        if len(steps) == 2:
            # Side by side: the second profile over the first, rate by rate.
            a, b = list(steps)
            lines = [f"### {b} / {a}\n", "| target/s | confirmed/s | p99 | CPU per order |", "|---|---|---|---|"]
            for x, y in zip(steps[a], steps[b]):
                lines.append(f"| {x['rate']} | {y['confirmed_per_sec'] / max(x['confirmed_per_sec'], 1e-9):.2f}× "
                             f"| {y['p99_ms'] / max(x['p99_ms'], 1e-9):.2f}× "
                             f"| {y['cpu_us_per_order'] / max(x['cpu_us_per_order'], 1e-9):.2f}× |")
            text.append("\n".join(lines))
        # Another set of profiles than the default does not replace the default's results.
        name = "checkout" if PROFILES == ["sqlite", "postgres"] else "checkout_" + "_".join(PROFILES)
        write_results(name, {"benchmark": "checkout", "machine": machine(), "seconds": SECONDS,
                                   "profiles": {p: {"steps": steps[p], "saturated_at": saturated[p]} for p in steps}},
                      "\n\n".join(text))
    finally:
        for shop in shops:
            shop.stop()
        remove_tmp(tmp)


if __name__ == "__main__":
    main()
