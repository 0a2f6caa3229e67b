#!/usr/bin/env python3
"""Benchmark 1: the Tessera gateway against nginx, side by side, in one run.

The same upstream (bench-upstream: axum, a 60-byte JSON body) is reached
  a) directly, b) through nginx as a plain reverse proxy (upstream keepalive, access log with
  a request id), c) through the Tessera gateway with everything on (access-token verification,
  passport minting, envelope, access log, metrics), d) through the gateway without a token
  (no verification; an anonymous passport is still minted).
Cases are interleaved round by round (a b c d, then d c b a), the load generator (wrk) pinned
to one core and every server to the other, one worker each. Reported: requests/s, p50/p90/p99,
the ratio to nginx within each round, and server CPU time per request (from /proc).

    python3 bench/gateway.py            # BENCH_ROUNDS=5 BENCH_SECONDS=5 BENCH_CONNECTIONS=32
                                        # BENCH_C1_ROUNDS=15 BENCH_C1_SECONDS=1 (concurrency 1)
    BENCH_ONLY_C1=1 python3 bench/gateway.py          # only the concurrency-1 rounds
    BENCH_PERF=/tmp/gw.perf python3 bench/gateway.py   # profile the gateway under case c instead
    BENCH_BASELINE=/tmp/tessera-old python3 bench/gateway.py   # also cases e/f: another build's
                                        # gateway in the same rounds (an A/B that noise cannot skew);
                                        # a release directory (bench/baseline.py REV) or a binary
    BENCH_QUICK=1 BENCH_BASELINE=$(python3 bench/baseline.py HEAD~1) python3 bench/gateway.py
                                        # the quick A/B (about a minute): nginx, c and e only,
                                        # 6 rounds of 3 s and 6 of 1 s at one connection
"""

import base64, os, re, secrets, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6" if QUICK else "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3" if QUICK else "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
C1_ROUNDS = int(os.environ.get("BENCH_C1_ROUNDS", "6" if QUICK else "15"))
C1_SECONDS = int(os.environ.get("BENCH_C1_SECONDS", "1"))
CONTROL, GATEWAY, NGINX, UPSTREAM, BASELINE = 18500, 18080, 18081, 18090, 18070
GATEWAY_ADMIN = 18082
# The same build's gateway with tracing off (TESSERA_TRACE_SAMPLE=0): case g, what tracing
# every request costs (c records and exports a server and a client span per request).
UNTRACED, UNTRACED_ADMIN = 18071, 18083
# Where case c's spans go: an OTLP sink that takes and forgets them, on the load generator's
# core. Not the control plane's collector: its ingest (a SQLite row per span, some 80,000 spans
# a second at this load) would take that core from wrk, which then offers the gateway less, and
# what is compared is what tracing costs the gateway, which is the same whoever receives.
OTLP_SINK = 18095


def main():
    ensure_tools("nginx", "wrk", "taskset")
    build("tessera-cli", "shop-auth", "tessera-bench")
    tmp = tempfile.mkdtemp(prefix="tessera-bench-")
    keys = f"bench:{base64.b64encode(secrets.token_bytes(32)).decode()}"
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
[gateway.tokens]
service = "auth"
jwks_path = "/api/auth/.well-known/jwks.json"
revocations_path = "/internal/revocations"
issuer = "tessera-auth"
audience = "tessera-api"
[[route]]
prefix = "/api/auth"
service = "auth"
auth = "public"
[[route]]
prefix = "/api/bench"
service = "bench"
auth = "public"
""")
    env = {"TESSERA_CONTROL_URL": f"http://127.0.0.1:{CONTROL}", "TESSERA_SYSTEM": "bench",
           "TESSERA_PASSPORT_KEYS": keys, "TESSERA_DATA_DIR": os.path.join(tmp, "data")}
    tessera = os.path.join(RELEASE, "tessera")
    procs = {}
    try:
        # The control plane (its collector takes every span case c exports) on the load
        # generator's core: it stands for a telemetry backend elsewhere, and what is compared
        # is the gateway's own CPU, not how it fares beside a busy neighbour on its core.
        procs["control"] = start([tessera, "--manifest", manifest, "control"], log=os.path.join(tmp, "control.log"),
                                 pin=LOAD_CPU)
        wait_http(f"http://127.0.0.1:{CONTROL}/health/ready")
        # Each process proves who it is to the control plane, as `tessera up` arranges.
        as_ = lambda principal: {**env, "TESSERA_CREDENTIAL": credential(tessera, manifest, principal)}
        procs["auth"] = start([os.path.join(RELEASE, "shop-auth")], env={**as_("service:auth"), "TESSERA_SERVICE": "auth"},
                              log=os.path.join(tmp, "auth.log"))
        procs["upstream"] = start([os.path.join(RELEASE, "bench-upstream")],
                                  env={**as_("service:bench"), "TESSERA_SERVICE": "bench",
                                       "BENCH_LISTEN": f"127.0.0.1:{UPSTREAM}"},
                                  log=os.path.join(tmp, "upstream.log"))
        procs["sink"] = start([os.path.join(RELEASE, "bench-upstream")], env={"BENCH_LISTEN": f"127.0.0.1:{OTLP_SINK}"},
                              log=os.path.join(tmp, "sink.log"), pin=LOAD_CPU)
        # Case c exports its spans to the sink (and the baseline, e, the same way: an A/B
        # compares builds, not where their spans go).
        traced = {"TESSERA_OTLP_COLLECTOR": "false", "TESSERA_OTLP_ENDPOINT": f"http://127.0.0.1:{OTLP_SINK}"}
        procs["gateway"] = start([tessera, "--manifest", manifest, "gateway"],
                                 env={**as_("gateway"), **traced},
                                 log=os.path.join(tmp, "gateway.log"))
        manifest_untraced = os.path.join(tmp, "untraced.toml")
        with open(manifest) as f, open(manifest_untraced, "w") as g:
            g.write(f.read().replace(f"127.0.0.1:{GATEWAY}", f"127.0.0.1:{UNTRACED}")
                    .replace(f"127.0.0.1:{GATEWAY_ADMIN}", f"127.0.0.1:{UNTRACED_ADMIN}"))
        procs["untraced"] = start([tessera, "--manifest", manifest_untraced, "gateway"],
                                  env={**as_("gateway"), "TESSERA_TRACE_SAMPLE": "0"},
                                  log=os.path.join(tmp, "untraced.log"))
        baseline_bin = baseline("tessera")
        if baseline_bin:
            # Another build's `tessera` binary, as a second gateway on its own port. Without
            # `admin_listen`, which a build from before the admin listener refuses (a newer one
            # takes its default, 127.0.0.1:8081).
            manifest_baseline = os.path.join(tmp, "baseline.toml")
            with open(manifest) as f, open(manifest_baseline, "w") as g:
                g.write(re.sub(r"admin_listen = .*\n", "", f.read())
                        .replace(f"127.0.0.1:{GATEWAY}", f"127.0.0.1:{BASELINE}"))
            procs["baseline"] = start([baseline_bin, "--manifest", manifest_baseline, "gateway"],
                                      env={**as_("gateway"), **traced},
                                      log=os.path.join(tmp, "baseline.log"))
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(nginx_conf(tmp, UPSTREAM, f"        listen 127.0.0.1:{NGINX};"))
        procs["nginx"] = start(["nginx", "-c", os.path.join(tmp, "nginx.conf"), "-g", "daemon off;"],
                               log=os.path.join(tmp, "nginx.out"))
        for port in (UPSTREAM, NGINX):
            wait_http(f"http://127.0.0.1:{port}/api/bench/item")
        wait_http(f"http://127.0.0.1:{GATEWAY}/health/ready")
        path = "/api/bench/item"
        deadline = time.time() + 30
        while http_json("GET", f"http://127.0.0.1:{GATEWAY}{path}")[0] != 200:
            if time.time() > deadline:
                raise SystemExit("the gateway does not reach the upstream")
            time.sleep(0.1)
        http_json("POST", f"http://127.0.0.1:{GATEWAY}/api/auth/signup",
                  {"email": "bench@example.com", "password": "password123", "name": "Bench"})
        status, login = http_json("POST", f"http://127.0.0.1:{GATEWAY}/api/auth/login",
                                  {"email": "bench@example.com", "password": "password123"})
        assert status == 200, login
        token = login["data"]["accessToken"]

        upstream_pid = procs["upstream"].pid
        cases = {
            "a_direct": (f"http://127.0.0.1:{UPSTREAM}{path}", [upstream_pid], ()),
            "b_nginx": (f"http://127.0.0.1:{NGINX}{path}", [procs["nginx"].pid] + children(procs["nginx"].pid), ()),
            "c_gateway": (f"http://127.0.0.1:{GATEWAY}{path}", [procs["gateway"].pid], (f"Authorization: Bearer {token}",)),
            "d_gateway_no_auth": (f"http://127.0.0.1:{GATEWAY}{path}", [procs["gateway"].pid], ()),
        }
        wait_http(f"http://127.0.0.1:{UNTRACED}/health/ready")
        cases["g_gateway_untraced"] = (f"http://127.0.0.1:{UNTRACED}{path}", [procs["untraced"].pid],
                                       (f"Authorization: Bearer {token}",))
        if baseline_bin:
            wait_http(f"http://127.0.0.1:{BASELINE}/health/ready")
            deadline = time.time() + 30
            while http_json("GET", f"http://127.0.0.1:{BASELINE}{path}")[0] != 200:
                if time.time() > deadline:
                    raise SystemExit("the baseline gateway does not reach the upstream")
                time.sleep(0.1)
            cases["e_baseline"] = (f"http://127.0.0.1:{BASELINE}{path}", [procs["baseline"].pid],
                                   (f"Authorization: Bearer {token}",))
            cases["f_baseline_no_auth"] = (f"http://127.0.0.1:{BASELINE}{path}", [procs["baseline"].pid], ())
        if QUICK:
            # What an A/B needs: nginx (the ratios' reference), and the gateway with everything on.
            for name in ("a_direct", "d_gateway_no_auth", "f_baseline_no_auth"):
                cases.pop(name, None)
        gateways = [name for name in cases if name not in ("a_direct", "b_nginx")]
        # The proxy's own CPU is what is compared; the upstream's is the same in b, c and d.
        for name, (url, _, headers) in cases.items():
            wrk(url, CONNECTIONS, 1, headers)   # warm-up
        if os.environ.get("BENCH_PERF"):
            # Profile the gateway under case c (or BENCH_PERF_CASE) instead of measuring.
            out = os.environ["BENCH_PERF"]
            url, pids, headers = cases[os.environ.get("BENCH_PERF_CASE", "c_gateway")]
            perf = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-g", "--call-graph", "dwarf,16384",
                                     "-p", str(pids[0]), "-o", out, "--", "sleep", str(SECONDS - 1)])
            wrk(url, CONNECTIONS, SECONDS, headers)
            perf.wait()
            print(f"profile: {out}")
            return
        if os.environ.get("BENCH_SYSCALLS"):
            # Count the proxies' system calls per request, by kind, instead of measuring.
            for name in ("b_nginx", "c_gateway", "d_gateway_no_auth"):
                if name not in cases:  # quick mode has no d
                    continue
                url, pids, headers = cases[name]
                count_syscalls(name, url, CONNECTIONS, SECONDS, pids, headers)
            return
        rounds = []
        for r in range(0 if os.environ.get("BENCH_ONLY_C1") else ROUNDS):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            results = {}
            for name in order:
                url, pids, headers = cases[name]
                results[name] = measure(url, CONNECTIONS, SECONDS, pids, headers)
                results[name]["upstream_cpu_us_per_request"] = None
            for name in gateways:
                results[name]["rps_vs_nginx"] = results[name]["rps"] / results["b_nginx"]["rps"]
                results[name]["cpu_vs_nginx"] = results[name]["cpu_us_per_request"] / results["b_nginx"]["cpu_us_per_request"]
            if "a_direct" in results:
                results["b_nginx"]["rps_vs_direct"] = results["b_nginx"]["rps"] / results["a_direct"]["rps"]
            rounds.append(results)
            print(f"round {r + 1}: " + ", ".join(f"{n} {results[n]['rps']:.0f}/s" for n in order), flush=True)
        # Concurrency 1: the latency a hop adds. This machine's latency drifts by 3× over tens of
        # seconds (the hypervisor), so many short rounds, and each gateway compared with nginx
        # within its round.
        single_rounds = []
        for r in range(C1_ROUNDS):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            single_rounds.append({name: measure(*cases[name][:1], 1, C1_SECONDS, *cases[name][1:]) for name in order})
            for name in gateways:
                single_rounds[-1][name]["p50_minus_nginx"] = single_rounds[-1][name]["p50"] - single_rounds[-1]["b_nginx"]["p50"]
            print(f"concurrency 1, round {r + 1}: " + ", ".join(
                f"{n} p50 {single_rounds[-1][n]['p50']:.3f} ms" for n in order), flush=True)
        single = {name: {k: statistics.median([rd[name][k] for rd in single_rounds])
                         for k in ("rps", "p50", "p99", "cpu_us_per_request")} for name in cases}
        for name in gateways:
            single[name]["p50_minus_nginx"] = statistics.median([rd[name]["p50_minus_nginx"] for rd in single_rounds])
        if not rounds:
            for name, s in single.items():
                print(f"{name}: {s['rps']:.0f}/s p50 {s['p50']:.3f} ms p99 {s['p99']:.3f} ms, "
                      f"CPU {s['cpu_us_per_request']:.1f} µs/request, p50 − nginx {s.get('p50_minus_nginx', 0):+.3f} ms")
            return

        summary_ = {name: {k: summary([rd[name][k] for rd in rounds])
                           for k in ("rps", "p50", "p90", "p99", "cpu_us_per_request",
                                     "user_us_per_request", "sys_us_per_request")} for name in cases}
        for name in gateways:
            summary_[name]["rps_vs_nginx"] = summary([rd[name]["rps_vs_nginx"] for rd in rounds])
            summary_[name]["cpu_vs_nginx"] = summary([rd[name]["cpu_vs_nginx"] for rd in rounds])
        out = {"benchmark": "gateway", "machine": machine(), "rounds": ROUNDS, "seconds": SECONDS,
               "connections": CONNECTIONS, "per_round": rounds, "summary": summary_, "concurrency_1": single,
               "concurrency_1_per_round": single_rounds}
        lines = [f"| case | req/s (median, range) | p50 ms | p90 ms | p99 ms | proxy CPU µs/req (user + sys) | vs nginx req/s | vs nginx CPU |",
                 "|---|---|---|---|---|---|---|---|"]
        for name in cases:
            s = summary_[name]
            vs = s.get("rps_vs_nginx")
            cv = s.get("cpu_vs_nginx")
            lines.append(f"| {name} | {s['rps']['median']:.0f} ({s['rps']['min']:.0f}–{s['rps']['max']:.0f}) "
                         f"| {s['p50']['median']:.3f} | {s['p90']['median']:.3f} | {s['p99']['median']:.3f} "
                         f"| {s['cpu_us_per_request']['median']:.1f} ({s['user_us_per_request']['median']:.1f} + "
                         f"{s['sys_us_per_request']['median']:.1f}) "
                         f"| {'%.2f×' % vs['median'] if vs else '—'} | {'%.2f×' % cv['median'] if cv else '—'} |")
        lines += ["", f"| case (1 connection, median of {C1_ROUNDS} rounds of {C1_SECONDS} s) | req/s | p50 ms | p99 ms "
                      "| p50 − nginx's p50, same round (median) |",
                  "|---|---|---|---|---|"]
        for name, s in single.items():
            vs = s.get("p50_minus_nginx")
            lines.append(f"| {name} | {s['rps']:.0f} | {s['p50']:.3f} | {s['p99']:.3f} | "
                         f"{'—' if vs is None else '%+.3f ms' % vs} |")
        tracing = ab_lines(rounds, "c_gateway", "g_gateway_untraced")
        tracing[1] = f"Tracing every request (c) against tracing off (g), per round ({len(rounds)} rounds):"
        lines += tracing
        if "e_baseline" in cases:
            lines += ab_lines(rounds, "c_gateway", "e_baseline")
            ab = [rd["c_gateway"]["p50"] - rd["e_baseline"]["p50"] for rd in single_rounds]
            lines.append(f"1 connection: p50 this build − baseline, per round: median {statistics.median(ab):+.3f} ms "
                         f"({min(ab):+.3f} to {max(ab):+.3f})")
        write_results("gateway_quick" if QUICK else "gateway", out, "\n".join(lines))
    finally:
        stop_all(procs)
        remove_tmp(tmp)


if __name__ == "__main__":
    main()
