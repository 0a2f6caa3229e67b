"""Shared helpers of the benchmark scripts: installing peers, building, pinning, running wrk,
reading CPU time from /proc, and summarising rounds."""

import json, os, re, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.abspath(os.environ.get("BENCH_RELEASE") or os.path.join(ROOT, "target", "release"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOAD_CPU, SERVER_CPU = "0", "1"   # the load generator on one core, servers on the other
# BENCH_QUICK=1: the quick interleaved A/B (about a minute a script), for every change to a
# hot path: fewer, shorter rounds and only the cases an A/B needs.
QUICK = os.environ.get("BENCH_QUICK") == "1"


def ensure_tools(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print(f"installing {' '.join(missing)} from Debian packages", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def build(*packages):
    args = ["cargo", "build", "--release", "-q"]
    for p in packages:
        args += ["-p", p]
    subprocess.run(args, cwd=ROOT, check=True)


def start(argv, env=None, log=None, pin=SERVER_CPU):
    """Starts a server process pinned to the server core."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(["taskset", "-c", pin, *argv], env=full_env, stdout=out, stderr=subprocess.STDOUT)


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def credential(tessera, manifest, principal):
    """The control-plane credential of `principal` in the system of `manifest`."""
    return subprocess.run([tessera, "--manifest", manifest, "credential", principal],
                          capture_output=True, text=True, check=True).stdout.strip()


def http_json(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def cpu_split(pids):
    """User and system CPU time of the processes, in seconds."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids):
    """User + system CPU time of the processes, in seconds."""
    return sum(cpu_split(pids))


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, connections, seconds, headers=()):
    """Runs wrk on the load core; returns requests/s, latency percentiles (ms) and requests."""
    args = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {}
    for pct in ("50", "90", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        lat[f"p{pct}"] = to_ms(m.group(1), m.group(2))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses\n{out}")
    return {"rps": rps, "requests": total, **lat}


def measure(url, connections, seconds, pids, headers=()):
    user, system = cpu_split(pids)
    result = wrk(url, connections, seconds, headers)
    user_after, system_after = cpu_split(pids)
    n = max(result["requests"], 1)
    result["user_us_per_request"] = (user_after - user) * 1e6 / n
    result["sys_us_per_request"] = (system_after - system) * 1e6 / n
    result["cpu_us_per_request"] = result["user_us_per_request"] + result["sys_us_per_request"]
    return result


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine():
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": os.uname().release}


def write_results(name, results, table):
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", f"{name}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(table)
    print(f"\nresults: {os.path.relpath(path, ROOT)}")


def tcp_segments():
    """The host's TCP segments sent so far (`OutSegs` of /proc/net/snmp), in a list."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return [int(rows[1][rows[0].index("OutSegs")])]


def count_syscalls(name, url, connections, seconds, pids, headers=()):
    """Prints the system calls `pids` make per request under wrk, by kind (perf stat), and the
    TCP segments the whole host sends per request."""
    out = tempfile.NamedTemporaryFile(suffix=".syscalls", delete=False).name
    stat = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out,
                             "-e", "syscalls:sys_enter_writev,syscalls:sys_enter_write,"
                                   "syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,"
                                   "syscalls:sys_enter_read,syscalls:sys_enter_readv,"
                                   "syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,"
                                   "syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_futex,"
                                   "raw_syscalls:sys_enter,context-switches",
                             "-p", ",".join(map(str, pids)), "--", "sleep", str(seconds)])
    segments = tcp_segments()
    result = wrk(url, connections, seconds, headers)
    segments = [b - a for a, b in zip(segments, tcp_segments())]
    stat.wait()
    print(f"{name}: {result['requests']} requests")
    # The whole host's TCP segments (client, proxy, upstream and any span sink): a proxy that
    # makes its peers send more packets (an ACK of its own) costs every kernel on the way.
    print(f"  {'TCP segments out, whole host':40} {segments[0] / result['requests']:.2f}/request")
    with open(out) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[0].isdigit():
                print(f"  {fields[2]:40} {int(fields[0]) / result['requests']:.2f}/request")
    os.unlink(out)


def baseline(binary):
    """Another build's `binary`, from BENCH_BASELINE: a release directory (what
    `bench/baseline.py REV` prints), or, for `tessera`, the binary itself. None without one."""
    path = os.environ.get("BENCH_BASELINE")
    if not path:
        return None
    if os.path.isdir(path):
        path = os.path.join(path, binary)
    elif os.path.basename(path) != binary and binary != "tessera":
        raise SystemExit(f"BENCH_BASELINE names a file; give the release directory that holds {binary}")
    if not os.path.exists(path):
        raise SystemExit(f"BENCH_BASELINE: {path} does not exist")
    return os.path.abspath(path)


def ab_lines(rounds, new, old):
    """The A/B of two builds measured in the same rounds: new/old per round, as table lines."""
    rows = []
    for key, label in (("rps", "req/s"), ("cpu_us_per_request", "CPU µs/req"), ("p50", "p50"), ("p99", "p99")):
        ratios = [rd[new][key] / rd[old][key] for rd in rounds if rd[old][key]]
        if ratios:
            s = summary(ratios)
            rows.append(f"| {label} | {s['median']:.3f}× | {s['min']:.3f}–{s['max']:.3f}× |")
    return ["", f"A/B, {new} / {old}, per round ({len(rounds)} rounds):", "",
            "| figure | median | range |", "|---|---|---|", *rows]


def remove_tmp(tmp):
    """Removes a benchmark's scratch directory (its processes' state and logs, up to a few GB),
    unless BENCH_KEEP is set, when it says where it is."""
    if os.environ.get("BENCH_KEEP"):
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def stop_all(procs):
    """Stops the benchmark's processes: SIGTERM, then SIGKILL after 10 s."""
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def children(pid):
    """A process's children (nginx's workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def nginx_conf(tmp, upstream, server):
    """nginx as the peer of the gateway: one worker, upstream keepalive, an access log with a
    request id, the forwarding fields the gateway sets too; `server` holds the `listen` (and
    TLS) lines of its one server."""
    return f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    log_format main '$remote_addr "$request" $status $body_bytes_sent $request_time $request_id';
    access_log {tmp}/nginx-access.log main;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
{server}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Request-Id $request_id;
            # What the gateway tells an instance too: where the request came from.
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Forwarded "for=$remote_addr;proto=$scheme";
        }}
    }}
}}
"""



SHOP_PACKAGES = ("tessera-cli", "shop-auth", "shop-catalog", "shop-order", "shop-inventory", "shop-payment",
                 "shop-payment-provider", "shop-notification")


def start_shop(control, gateway, gateway_admin):
    """Builds and starts the whole shop (`tessera up`, release, pinned to the server core) from
    the repository's manifest on the given ports, its state in a temporary directory; waits until
    it is ready. Returns (the `up` process, the manifest's path, its text, the temporary
    directory)."""
    build(*SHOP_PACKAGES)
    tmp = tempfile.mkdtemp(prefix="tessera-bench-")
    with open(os.path.join(ROOT, "tessera.toml")) as f:
        manifest = f.read()
    manifest = (manifest.replace('state_dir = ".tessera"', f'state_dir = "{tmp}/state"')
                .replace("127.0.0.1:8500", f"127.0.0.1:{control}")
                .replace("127.0.0.1:8080", f"127.0.0.1:{gateway}")
                .replace("127.0.0.1:8081", f"127.0.0.1:{gateway_admin}")
                .replace("127.0.0.1:8443", f"127.0.0.1:{gateway + 2}")
                .replace('command = "target/release/', f'command = "{RELEASE}/'))
    path = os.path.join(tmp, "tessera.toml")
    with open(path, "w") as f:
        f.write(manifest)
    log = os.path.join(tmp, "up.log")
    up = start([os.path.join(RELEASE, "tessera"), "--manifest", path, "up", "--no-build"],
               env={"NO_COLOR": "1"}, log=log)
    deadline = time.time() + 60
    while "ready in" not in open(log).read():
        if time.time() > deadline or up.poll() is not None:
            up.kill()
            raise SystemExit(f"the shop did not start; see {log}")
        time.sleep(0.05)
    return up, path, manifest, tmp


def stop_shop(up, tmp):
    """Stops what `start_shop` started (Ctrl-C, as a person would) and removes its files."""
    up.send_signal(2)
    try:
        up.wait(timeout=30)
    except Exception:
        up.kill()
    remove_tmp(tmp)
