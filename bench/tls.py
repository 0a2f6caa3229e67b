#!/usr/bin/env python3
"""Benchmark 1b: HTTPS and HTTP/2, the Tessera gateway against nginx, side by side, in one run.

The same upstream (bench-upstream, a 60-byte JSON body) behind b) nginx terminating TLS
(`worker_processes 1`, `ssl http2`, upstream keepalive, access log) and c) the gateway
terminating TLS (a public route: an anonymous passport is minted, the envelope, the access
log, metrics). Both serve the same certificate (ECDSA P-256, from the development CA the
gateway makes), TLS 1.2 and 1.3 with their default AEAD suites, session tickets on. Four ways
to load them, each case interleaved with the other round by round, load generator pinned to
one core and servers to the other:

  h1      HTTPS keep-alive, HTTP/1.1: wrk, 32 connections
  h2      HTTP/2, many streams on few connections: h2load, 4 connections × 32 streams
  full    new connections per second, a full handshake each (TLS 1.3): openssl s_time -new
  resumed new connections per second, resuming the session: openssl s_time -reuse

Reported: requests (or connections) per second, the server's CPU time per request (or
connection) from /proc, and the gateway's ratio to nginx within each round.

    python3 bench/tls.py          # BENCH_ROUNDS=5 BENCH_SECONDS=5
    BENCH_QUICK=1 python3 bench/tls.py    # 3 rounds of 3 s
"""

import os, re, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3" if QUICK else "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3" if QUICK else "5"))
CONTROL, GATEWAY, GATEWAY_TLS, GATEWAY_ADMIN, NGINX_TLS, UPSTREAM = 18500, 18080, 18443, 18082, 18444, 18090
PATH = "/api/bench/item"


def main():
    ensure_tools("nginx", "wrk", "taskset", "h2load", "openssl")
    build("tessera-cli", "tessera-bench")
    tmp = tempfile.mkdtemp(prefix="tessera-bench-tls-")
    manifest = os.path.join(tmp, "bench.toml")
    with open(manifest, "w") as f:
        f.write(f"""
[system]
name = "bench"
state_dir = "state"
[control]
listen = "127.0.0.1:{CONTROL}"
[gateway]
listen = "127.0.0.1:{GATEWAY}"
admin_listen = "127.0.0.1:{GATEWAY_ADMIN}"
[gateway.tls]
listen = "127.0.0.1:{GATEWAY_TLS}"
plain = "serve"
[[route]]
prefix = "/api/bench"
service = "bench"
auth = "public"
""")
    keys = "bench:" + __import__("base64").b64encode(os.urandom(32)).decode()
    env = {"TESSERA_CONTROL_URL": f"http://127.0.0.1:{CONTROL}", "TESSERA_SYSTEM": "bench",
           "TESSERA_PASSPORT_KEYS": keys}
    tessera = os.path.join(RELEASE, "tessera")
    procs = {}
    try:
        procs["control"] = start([tessera, "--manifest", manifest, "control"], log=os.path.join(tmp, "control.log"))
        wait_http(f"http://127.0.0.1:{CONTROL}/health/ready")
        as_ = lambda principal: {**env, "TESSERA_CREDENTIAL": credential(tessera, manifest, principal)}
        procs["upstream"] = start([os.path.join(RELEASE, "bench-upstream")],
                                  env={**as_("service:bench"), "TESSERA_SERVICE": "bench",
                                       "BENCH_LISTEN": f"127.0.0.1:{UPSTREAM}"},
                                  log=os.path.join(tmp, "upstream.log"))
        procs["gateway"] = start([tessera, "--manifest", manifest, "gateway"], env=as_("gateway"),
                                 log=os.path.join(tmp, "gateway.log"))
        wait_http(f"http://127.0.0.1:{GATEWAY_ADMIN}/health/ready")
        # The gateway made the development CA and its certificate: nginx serves the same one.
        state = os.path.join(tmp, "state", "tls")
        ca = os.path.join(state, "dev-ca", "ca.pem")
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(nginx_conf(tmp, UPSTREAM, f"""
        listen 127.0.0.1:{NGINX_TLS} ssl http2;
        ssl_certificate {state}/gateway.pem;
        ssl_certificate_key {state}/gateway.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        keepalive_requests 100000;
        http2_max_requests 100000;"""))
        procs["nginx"] = start(["nginx", "-c", os.path.join(tmp, "nginx.conf"), "-g", "daemon off;"],
                               log=os.path.join(tmp, "nginx.out"))
        servers = {"b_nginx": (NGINX_TLS, lambda: [procs["nginx"].pid] + children(procs["nginx"].pid)),
                   "c_gateway": (GATEWAY_TLS, lambda: [procs["gateway"].pid])}
        for name, (port, _) in servers.items():
            ready(port, ca)
        loads = {"h1": h1, "h2": h2, "full": lambda port, s, ca: handshakes(port, s, ca, False),
                 "resumed": lambda port, s, ca: handshakes(port, s, ca, True)}
        for load in loads.values():          # warm-up
            for port, _ in servers.values():
                load(port, 1, ca)
        rounds = []
        for r in range(ROUNDS):
            results = {}
            for load_name, load in loads.items():
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    port, pids = servers[name]
                    pids = pids()
                    user, system = cpu_split(pids)
                    result = load(port, SECONDS, ca)
                    user_after, system_after = cpu_split(pids)
                    n = max(result["count"], 1)
                    result["cpu_us"] = ((user_after - user) + (system_after - system)) * 1e6 / n
                    results[f"{load_name}/{name}"] = result
                g, n = results[f"{load_name}/c_gateway"], results[f"{load_name}/b_nginx"]
                g["rate_vs_nginx"] = g["rate"] / n["rate"]
                g["cpu_vs_nginx"] = g["cpu_us"] / n["cpu_us"]
            rounds.append(results)
            print(f"round {r + 1}: " + ", ".join(
                f"{k} {v['rate']:.0f}/s {v['cpu_us']:.0f} µs" for k, v in results.items()), flush=True)
        keys = list(rounds[0])
        summary_ = {k: {m: summary([rd[k][m] for rd in rounds]) for m in rounds[0][k] if m != "count"}
                    for k in keys}
        out = {"benchmark": "tls", "machine": machine(), "rounds": ROUNDS, "seconds": SECONDS,
               "per_round": rounds, "summary": summary_}
        lines = ["| load | server | per second (median, range) | server CPU µs each | vs nginx, per second | vs nginx, CPU |",
                 "|---|---|---|---|---|---|"]
        for k in keys:
            load_name, server = k.split("/")
            s = summary_[k]
            vs, cv = s.get("rate_vs_nginx"), s.get("cpu_vs_nginx")
            lines.append(f"| {load_name} | {server} | {s['rate']['median']:.0f} ({s['rate']['min']:.0f}–{s['rate']['max']:.0f}) "
                         f"| {s['cpu_us']['median']:.1f} | {'%.2f×' % vs['median'] if vs else '—'} "
                         f"| {'%.2f×' % cv['median'] if cv else '—'} |")
        write_results("tls_quick" if QUICK else "tls", out, "\n".join(lines))
    finally:
        stop_all(procs)
        remove_tmp(tmp)


def ready(port, ca):
    deadline = time.time() + 30
    while True:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
                              f"https://127.0.0.1:{port}{PATH}"], capture_output=True, text=True)
        if out.stdout == "200":
            return
        if time.time() > deadline:
            raise SystemExit(f"https://127.0.0.1:{port}{PATH} does not answer 200 ({out.stdout})")
        time.sleep(0.1)


def load_cmd(args):
    return subprocess.run(["taskset", "-c", LOAD_CPU, *args], capture_output=True, text=True, check=True).stdout


def h1(port, seconds, ca):
    r = wrk(f"https://127.0.0.1:{port}{PATH}", 32, seconds)
    return {"rate": r["rps"], "count": r["requests"], "p50": r["p50"], "p99": r["p99"]}


def h2(port, seconds, ca):
    out = load_cmd(["h2load", "-c", "4", "-m", "32", "-t", "1", "-D", str(seconds),
                    f"https://127.0.0.1:{port}{PATH}"])
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out).group(2))
    failed = re.search(r"status codes: (\d+) 2xx", out)
    if not failed or int(failed.group(1)) != done:
        raise SystemExit(f"h2load: not every answer was 2xx\n{out}")
    protocol = re.search(r"Application protocol: (\S+)", out).group(1)
    if protocol != "h2":
        raise SystemExit(f"h2load spoke {protocol}, not h2")
    return {"rate": done / seconds, "count": done}


def handshakes(port, seconds, ca, resumed):
    out = load_cmd(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-CAfile", ca,
                    "-reuse" if resumed else "-new", "-time", str(seconds), "-www", PATH])
    # "N connections in T real seconds" (the other line counts the client's CPU seconds).
    m = re.search(r"(\d+) connections in (\d+) real seconds", out)
    count, secs = int(m.group(1)), float(m.group(2))
    return {"rate": count / max(secs, 1e-9), "count": count}


if __name__ == "__main__":
    main()
