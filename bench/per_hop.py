#!/usr/bin/env python3
"""Benchmark 2: what the service library costs per hop.

The same handler (a 60-byte JSON body) served by a bare axum server (bench-upstream) and as a
Tessera service (bench-service: passport verification, trace context, metrics, a JSON log line
per request), called directly with a valid passport. Interleaved rounds, wrk pinned to one
core and the server to the other; reported: requests/s, latency, server CPU per request, and
the Tessera/bare ratio within each round. A third server, the same service with every request
traced (`traced_service`: a server span each, exported as OTLP every 200 ms to a sink on the
load generator's core), gives what tracing costs a service.

    python3 bench/per_hop.py            # BENCH_ROUNDS=5 BENCH_SECONDS=5 BENCH_CONNECTIONS=32
    BENCH_PERF=/tmp/hop.perf python3 bench/per_hop.py   # profile the Tessera service instead
    BENCH_SYSCALLS=1 python3 bench/per_hop.py           # count system calls per request instead
    BENCH_BASELINE=$(python3 bench/baseline.py HEAD~1) python3 bench/per_hop.py
                                        # also another build's service in the same rounds (A/B)
    BENCH_QUICK=1 BENCH_BASELINE=... python3 bench/per_hop.py   # the quick A/B: 6 rounds of 3 s
"""

import base64, hashlib, hmac, json, os, secrets, subprocess, sys, tempfile, time, uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6" if QUICK else "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3" if QUICK else "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
BARE, SERVICE, BASELINE, TRACED, SINK = 18190, 18191, 18192, 18193, 18194


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def passport(kid, secret, audience):
    """An HS256 passport (docs/passport.md), valid for the next 30 s."""
    now = int(time.time())
    header = {"typ": "JWT", "alg": "HS256", "kid": kid}
    claims = {"iss": "bench", "aud": audience, "sub": "bench-user", "roles": ["user"],
              "tid": uuid.uuid4().hex, "jti": uuid.uuid4().hex, "iat": now, "exp": now + 30}
    compact = (",", ":")  # spelled as the gateway mints it
    signing_input = (f"{b64(json.dumps(header, separators=compact).encode())}."
                     f"{b64(json.dumps(claims, separators=compact).encode())}")
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def main():
    ensure_tools("wrk", "taskset")
    build("tessera-bench")
    tmp = tempfile.mkdtemp(prefix="tessera-bench-")
    secret = secrets.token_bytes(32)
    keys = f"bench:{base64.b64encode(secret).decode()}"
    procs = {}
    try:
        procs["bare"] = start([os.path.join(RELEASE, "bench-upstream")], env={"BENCH_LISTEN": f"127.0.0.1:{BARE}"},
                              log=os.path.join(tmp, "bare.log"))
        procs["tessera"] = start([os.path.join(RELEASE, "bench-service")],
                                 env={"TESSERA_LISTEN": f"127.0.0.1:{SERVICE}", "TESSERA_PASSPORT_KEYS": keys,
                                      "TESSERA_SYSTEM": "bench"},
                                 log=os.path.join(tmp, "service.log"))
        # The traced service's OTLP sink: another bare server, on the load generator's core.
        procs["sink"] = start([os.path.join(RELEASE, "bench-upstream")], env={"BENCH_LISTEN": f"127.0.0.1:{SINK}"},
                              log=os.path.join(tmp, "sink.log"), pin=LOAD_CPU)
        procs["traced"] = start([os.path.join(RELEASE, "bench-service")],
                                env={"TESSERA_LISTEN": f"127.0.0.1:{TRACED}", "TESSERA_PASSPORT_KEYS": keys,
                                     "TESSERA_SYSTEM": "bench", "TESSERA_TRACE_SAMPLE": "1",
                                     "TESSERA_OTLP_ENDPOINT": f"http://127.0.0.1:{SINK}"},
                                log=os.path.join(tmp, "traced.log"))
        baseline_bin = baseline("bench-service")
        if baseline_bin:
            procs["baseline"] = start([baseline_bin],
                                      env={"TESSERA_LISTEN": f"127.0.0.1:{BASELINE}", "TESSERA_PASSPORT_KEYS": keys,
                                           "TESSERA_SYSTEM": "bench"},
                                      log=os.path.join(tmp, "baseline.log"))
            wait_http(f"http://127.0.0.1:{BASELINE}/health/ready")
        wait_http(f"http://127.0.0.1:{BARE}/api/bench/item")
        wait_http(f"http://127.0.0.1:{SERVICE}/health/ready")
        wait_http(f"http://127.0.0.1:{TRACED}/health/ready")
        path = "/api/bench/item"
        rounds = []
        for r in range(ROUNDS):
            token = passport("bench", secret, "bench")  # fresh: a passport lives 30 s
            cases = {
                "bare_axum": (f"http://127.0.0.1:{BARE}{path}", [procs["bare"].pid], ()),
                "tessera_service": (f"http://127.0.0.1:{SERVICE}{path}", [procs["tessera"].pid],
                                    (f"X-Passport: {token}",)),
                "traced_service": (f"http://127.0.0.1:{TRACED}{path}", [procs["traced"].pid],
                                   (f"X-Passport: {token}",)),
            }
            if baseline_bin:
                cases["baseline_service"] = (f"http://127.0.0.1:{BASELINE}{path}", [procs["baseline"].pid],
                                             (f"X-Passport: {token}",))
            if r == 0:
                for url, _, headers in cases.values():
                    wrk(url, CONNECTIONS, 1, headers)
            if os.environ.get("BENCH_PERF"):
                # Profile the Tessera service (or BENCH_PERF_CASE) instead of measuring.
                url, pids, headers = cases[os.environ.get("BENCH_PERF_CASE", "tessera_service")]
                perf = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-g", "--call-graph", "dwarf,16384",
                                         "-p", str(pids[0]), "-o", os.environ["BENCH_PERF"], "--",
                                         "sleep", str(SECONDS - 1)])
                wrk(url, CONNECTIONS, SECONDS, headers)
                perf.wait()
                print(f"profile: {os.environ['BENCH_PERF']}")
                return
            if os.environ.get("BENCH_SYSCALLS"):
                # Count each server's system calls per request, by kind, instead of measuring.
                for name, (url, pids, headers) in cases.items():
                    count_syscalls(name, url, CONNECTIONS, SECONDS, pids, headers)
                return
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            results = {name: measure(cases[name][0], CONNECTIONS, SECONDS, cases[name][1], cases[name][2])
                       for name in order}
            results["tessera_service"]["rps_vs_bare"] = results["tessera_service"]["rps"] / results["bare_axum"]["rps"]
            results["tessera_service"]["cpu_vs_bare"] = (results["tessera_service"]["cpu_us_per_request"]
                                                         / results["bare_axum"]["cpu_us_per_request"])
            rounds.append(results)
            print(f"round {r + 1}: " + ", ".join(f"{n} {results[n]['rps']:.0f}/s" for n in order), flush=True)
        names = list(cases)
        summary_ = {n: {k: summary([rd[n][k] for rd in rounds]) for k in ("rps", "p50", "p90", "p99", "cpu_us_per_request")}
                    for n in names}
        summary_["tessera_service"]["rps_vs_bare"] = summary([rd["tessera_service"]["rps_vs_bare"] for rd in rounds])
        summary_["tessera_service"]["cpu_vs_bare"] = summary([rd["tessera_service"]["cpu_vs_bare"] for rd in rounds])
        out = {"benchmark": "per_hop", "machine": machine(), "rounds": ROUNDS, "seconds": SECONDS,
               "connections": CONNECTIONS, "per_round": rounds, "summary": summary_}
        lines = ["| server | req/s (median, range) | p50 ms | p99 ms | CPU µs/req | vs bare req/s | vs bare CPU |",
                 "|---|---|---|---|---|---|---|"]
        for n in names:
            s = summary_[n]
            vs, cv = s.get("rps_vs_bare"), s.get("cpu_vs_bare")
            lines.append(f"| {n} | {s['rps']['median']:.0f} ({s['rps']['min']:.0f}–{s['rps']['max']:.0f}) "
                         f"| {s['p50']['median']:.3f} | {s['p99']['median']:.3f} | {s['cpu_us_per_request']['median']:.1f} "
                         f"| {'%.2f×' % vs['median'] if vs else '—'} | {'%.2f×' % cv['median'] if cv else '—'} |")
        lines += ab_lines(rounds, "traced_service", "tessera_service")
        if baseline_bin:
            lines += ab_lines(rounds, "tessera_service", "baseline_service")
        write_results("per_hop_quick" if QUICK else "per_hop", out, "\n".join(lines))
    finally:
        stop_all(procs)
        remove_tmp(tmp)


if __name__ == "__main__":
    main()
