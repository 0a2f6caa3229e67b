#!/usr/bin/env python3
"""Benchmark 8: Tessera Invest (docs/invest.md), the second system, on its real processes.

1. News → alert fan-out: 10,000 members, 3,000 of them holding Technology; a news item for
   Technology is published (through the market's API) and the time until alerts has made the
   last holder's alert is measured (polled every 2 ms), NEWS items one after the other; p50 and
   p99. With the CPU the alerts service spent per alert, and the whole system's (every process
   of the tree: the log, market, alerts, ...). On embedded defaults (the control plane's log),
   and on the distributed profile (events on NATS JetStream, the registry on etcd).
2. Ticks the signals service (Python) keeps up with: signals is stopped (SIGSTOP) while the
   market makes a backlog of TICKS ticks (ten events each, one per sector, twenty prices an
   event), then let go; the rate it works the backlog off at is its capacity, in ticks/s.

    python3 bench/invest.py          # BENCH_NEWS=30, BENCH_TICKS=600; BENCH_PROFILES="embedded distributed"

The system runs as `tessera up` runs it, pinned to the server core; the bench client (the
members' trades, the polls) on the other.
"""

import os, signal, statistics, sys, tempfile, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

sys.path.insert(0, os.path.join(ROOT, "sdk", "python"))
from tessera_sdk import PassportKeys  # noqa: E402

MEMBERS = int(os.environ.get("BENCH_MEMBERS", "10000"))
HOLDERS = int(os.environ.get("BENCH_HOLDERS", "3000"))
NEWS = int(os.environ.get("BENCH_NEWS", "10" if QUICK else "30"))
TICKS = int(os.environ.get("BENCH_TICKS", "300" if QUICK else "600"))
PROFILES = os.environ.get("BENCH_PROFILES", "embedded distributed").split()
CONTROL, GATEWAY, ADMIN = 18800, 18890, 18891
PACKAGES = ("tessera-cli", "shop-auth", "invest-market", "invest-portfolio", "invest-alerts")


def manifest(tmp):
    """The example's manifest on bench ports, release binaries, the market paused."""
    with open(os.path.join(ROOT, "examples", "invest", "tessera.toml")) as f:
        text = f.read()
    invest = os.path.join(ROOT, "examples", "invest")
    text = (text.replace('state_dir = ".tessera"', f'state_dir = "{tmp}/state"')
            .replace("127.0.0.1:8600", f"127.0.0.1:{CONTROL}")
            .replace("127.0.0.1:8090", f"127.0.0.1:{GATEWAY}")
            .replace("127.0.0.1:8091", f"127.0.0.1:{ADMIN}")
            .replace('command = "../../target/release/', f'command = "{RELEASE}/')
            .replace('"signals/service.py"', f'"{invest}/signals/service.py"')
            .replace('PYTHONPATH = "../../sdk/python"', f'PYTHONPATH = "{ROOT}/sdk/python"')
            .replace('dir = "web"', f'dir = "{invest}/web"')
            .replace('MARKET_TICK_MS = "1000"', 'MARKET_TICK_MS = "0"')
            .replace('MARKET_NEWS_MS = "15000"', 'MARKET_NEWS_MS = "0"'))
    path = os.path.join(tmp, "tessera.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


class System:
    def __init__(self, profile):
        self.tmp = tempfile.mkdtemp(prefix="tessera-bench-invest-")
        self.path = manifest(self.tmp)
        log = os.path.join(self.tmp, "up.log")
        args = [os.path.join(RELEASE, "tessera"), "--manifest", self.path, "up", "--no-build"]
        if profile != "embedded":
            args += ["--profile", profile]
        self.up = start(args, env={"NO_COLOR": "1"}, log=log)
        deadline = time.time() + 120
        while "ready in" not in open(log).read():
            if time.time() > deadline or self.up.poll() is not None:
                self.up.kill()
                raise SystemExit(f"the system did not start; see {log}")
            time.sleep(0.1)
        tessera = os.path.join(RELEASE, "tessera")
        self.admin = credential(tessera, self.path, "admin")
        with open(os.path.join(self.tmp, "state", "passport.keys")) as f:
            self.keys = PassportKeys.from_spec(f.read().strip(), "tessera-invest")

    def stop(self):
        self.up.send_signal(signal.SIGINT)
        try:
            self.up.wait(timeout=60)
        except Exception:
            self.up.kill()
        remove_tmp(self.tmp)

    def instances(self, service):
        _, catalog = http_json("GET", f"http://127.0.0.1:{CONTROL}/v1/services",
                               headers={"authorization": "Bearer " + self.admin})
        return catalog["services"].get(service, [])

    def url(self, service):
        while not self.instances(service):
            time.sleep(0.1)
        return "http://" + self.instances(service)[0]["address"]

    def pids(self):
        """Every process of the tree (`tessera up` and what it started)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.up.pid)], capture_output=True, text=True).stdout
        pids = [self.up.pid]
        frontier = [int(x) for x in out.split()]
        while frontier:
            pids += frontier
            nxt = []
            for p in frontier:
                o = subprocess.run(["ps", "-o", "pid=", "--ppid", str(p)], capture_output=True, text=True).stdout
                nxt += [int(x) for x in o.split()]
            frontier = nxt
        return [p for p in pids if os.path.exists(f"/proc/{p}")]

    def call(self, method, url, who, roles, body=None):
        passport = self.keys.mint("tessera-gateway", who, roles, os.urandom(16).hex())
        return http_json(method, url, body, headers={"x-passport": passport})


def setup_members(sys_):
    portfolio = sys_.url("portfolio") + "/api/portfolio/trades"

    def trade(i):
        ticker = ("TEC01", "TEC02")[i % 2] if i < HOLDERS else ("ENE01", "FIN01")[i % 2]
        status, body = sys_.call("POST", portfolio, f"member-{i:05}", ["user"],
                                 {"ticker": ticker, "side": "buy", "quantity": 1})
        if status != 201:
            raise SystemExit(f"a trade answered {status}: {body}")

    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(trade, range(MEMBERS)))
    took = time.time() - t0
    alerts = sys_.url("alerts")
    while True:
        _, body = sys_.call("GET", f"{alerts}/api/alerts/audience?sector=Technology", "root", ["admin"])
        if body and body.get("members") == HOLDERS:
            break
        time.sleep(0.2)
    return took


def fan_out(sys_):
    """NEWS news items for Technology, one after another: each one's time to the last alert."""
    market = sys_.url("market")
    alerts = sys_.url("alerts")
    alerts_pid = int(sys_.instances("alerts")[0]["metadata"]["pid"])
    everything = sys_.pids()
    latencies = []
    cpu_alerts = cpu_seconds([alerts_pid])
    cpu_all = cpu_seconds(everything)
    for n in range(NEWS):
        t0 = time.perf_counter()
        status, news = sys_.call("POST", f"{market}/api/market/news", "root", ["admin"],
                                 {"sector": "Technology", "headline": f"bench {n}", "sentiment": 0.3})
        if status != 201:
            raise SystemExit(f"news answered {status}: {news}")
        url = f"{alerts}/api/alerts/sources/news/{news['id']}"
        while True:
            _, reached = sys_.call("GET", url, "root", ["admin"])
            if reached and reached.get("alerts") == HOLDERS:
                break
            time.sleep(0.002)
        latencies.append((time.perf_counter() - t0) * 1000)
    made = NEWS * HOLDERS
    return {
        "news": NEWS,
        "holders": HOLDERS,
        "members": MEMBERS,
        "p50_ms": statistics.median(latencies),
        "p99_ms": sorted(latencies)[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_ms": max(latencies),
        "alerts_cpu_us_per_alert": (cpu_seconds([alerts_pid]) - cpu_alerts) * 1e6 / made,
        "system_cpu_us_per_alert": (cpu_seconds(everything) - cpu_all) * 1e6 / made,
    }


def ticks(sys_):
    """The rate signals works off a backlog of TICKS ticks at."""
    signals = sys_.url("signals")
    market = sys_.url("market")
    pid = int(sys_.instances("signals")[0]["metadata"]["pid"])

    def signals_tick():
        _, body = sys_.call("GET", f"{signals}/api/signals/UTI20", "bench", ["user"])
        return (body or {}).get("tick", 0) if isinstance(body, dict) else 0

    def market_tick():
        _, body = sys_.call("GET", f"{market}/api/market/status", "bench", ["user"])
        return body["tick"]

    os.kill(pid, signal.SIGSTOP)
    tessera = os.path.join(RELEASE, "tessera")
    subprocess.run([tessera, "--manifest", sys_.path, "config", "set", "market", "MARKET_TICK_MS", "50"],
                   check=True, capture_output=True)
    while market_tick() < TICKS:
        time.sleep(0.1)
    subprocess.run([tessera, "--manifest", sys_.path, "config", "set", "market", "MARKET_TICK_MS", "0"],
                   check=True, capture_output=True)
    time.sleep(1)
    target = market_tick()
    cpu = cpu_seconds([pid])
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGCONT)
    while signals_tick() < target:
        time.sleep(0.01)
    took = time.perf_counter() - t0
    return {
        "ticks": target,
        "seconds": took,
        "ticks_per_s": target / took,
        "prices_per_s": target * 200 / took,
        "signals_cpu_ms_per_tick": (cpu_seconds([pid]) - cpu) * 1000 / target,
    }


def main():
    build(*PACKAGES)
    results = {"machine": machine(), "profiles": {}}
    lines = ["| profile | members / holders | news → last alert p50 | p99 | alerts CPU per alert | system CPU per alert | signals: ticks/s (prices/s) |",
             "|---|---|---|---|---|---|---|"]
    for profile in PROFILES:
        print(f"== {profile}", flush=True)
        sys_ = System(profile)
        try:
            took = setup_members(sys_)
            print(f"   {MEMBERS} members' trades in {took:.1f} s", flush=True)
            fan = fan_out(sys_)
            print(f"   fan-out: {fan}", flush=True)
            tick = ticks(sys_)
            print(f"   signals: {tick}", flush=True)
        finally:
            sys_.stop()
        results["profiles"][profile] = {"setup_s": took, "fan_out": fan, "signals": tick}
        lines.append(f"| {profile} | {MEMBERS:,} / {HOLDERS:,} | {fan['p50_ms']:.1f} ms | {fan['p99_ms']:.1f} ms "
                     f"| {fan['alerts_cpu_us_per_alert']:.2f} µs | {fan['system_cpu_us_per_alert']:.2f} µs "
                     f"| {tick['ticks_per_s']:.0f} ({tick['prices_per_s']:,.0f}) |")
    write_results("invest", results, "\n".join(lines))


if __name__ == "__main__":
    main()
