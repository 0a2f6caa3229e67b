#!/usr/bin/env python3
"""Benchmark 5 (idle part): how long `tessera up` takes to have the whole shop ready, with the
binaries already built, and the resident memory of every process once it is up.

    python3 bench/footprint.py          # BENCH_ROUNDS=5
"""

import os, re, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa: E402,F403

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree(root):
    """Every descendant of `root` with its command line."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in parents.get(pid, []):
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    argv = [a.decode() for a in f.read().split(b"\0") if a]
            except OSError:
                continue   # ended meanwhile
            out.append((child, argv))
            todo.append(child)
    return out


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "--workspace", "--bins"], cwd=ROOT, check=True)
    with open(os.path.join(ROOT, "tessera.toml")) as f:
        manifest = f.read()
    starts, memory = [], None
    for r in range(ROUNDS):
        tmp = tempfile.mkdtemp(prefix="tessera-footprint-")
        m = (manifest.replace('state_dir = ".tessera"', f'state_dir = "{tmp}/state"')
             .replace("127.0.0.1:8500", "127.0.0.1:18600").replace("127.0.0.1:8080", "127.0.0.1:18680")
             .replace("127.0.0.1:8081", "127.0.0.1:18681")
             .replace('command = "target/release/', f'command = "{RELEASE}/'))
        path = os.path.join(tmp, "tessera.toml")
        with open(path, "w") as f:
            f.write(m)
        log = open(os.path.join(tmp, "up.log"), "w")
        up = subprocess.Popen([os.path.join(RELEASE, "tessera"), "--manifest", path, "up", "--no-build"],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        deadline = time.time() + 60
        ready = None
        while ready is None:
            with open(os.path.join(tmp, "up.log")) as f:
                found = re.search(r"ready in ([\d.]+)s", f.read())
            if found:
                ready = float(found.group(1))
            elif time.time() > deadline:
                raise SystemExit("the shop did not start")
            time.sleep(0.02)
        starts.append(ready)
        if r == ROUNDS - 1:
            time.sleep(2)   # settle
            memory = {}
            for pid, argv in tree(up.pid):
                name = os.path.basename(argv[0]) + (f" {argv[-1]}" if argv[0].endswith("tessera") else "")
                memory[f"{name} ({pid})"] = rss_kb(pid)
            memory["tessera up (runner)"] = rss_kb(up.pid)
        up.send_signal(2)
        up.wait(timeout=30)
        print(f"round {r + 1}: ready in {ready:.3f}s", flush=True)
    total_mb = sum(memory.values()) / 1024
    out = {"benchmark": "footprint", "machine": machine(), "ready_seconds": summary(starts),
           "idle_rss_kb": memory, "idle_rss_total_mb": total_mb}
    lines = [f"all ready after `tessera up`: median {summary(starts)['median']:.3f} s "
             f"(range {min(starts):.3f}–{max(starts):.3f}) over {ROUNDS} starts", "",
             "| process | RSS idle (MB) |", "|---|---|"]
    for name, kb in sorted(memory.items()):
        lines.append(f"| {name} | {kb / 1024:.1f} |")
    lines.append(f"| **total** | **{total_mb:.1f}** |")
    write_results("footprint", out, "\n".join(lines))


if __name__ == "__main__":
    main()
