#!/usr/bin/env python3
"""Builds another revision's release binaries for an A/B, and prints their directory.

    BENCH_QUICK=1 BENCH_BASELINE=$(python3 bench/baseline.py HEAD~1) python3 bench/gateway.py

The revision is checked out in a worktree of its own under the system's temp directory (left
in place, so the next A/B against it builds nothing) and built in a target directory shared by
every baseline, so that only what changed between revisions is compiled again; its binaries
are copied beside the worktree, so that building another revision later does not change
them."""

import os, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD~1"
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.strip()
    base = os.path.join(tempfile.gettempdir(), "tessera-baseline")
    tree = os.path.join(base, commit[:12])
    target = os.path.join(base, "target")
    if not os.path.isdir(tree):
        subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, commit], cwd=ROOT, check=True,
                       stdout=sys.stderr)
    packages = ["-p", "tessera-cli", "-p", "shop-auth", "-p", "tessera-bench"]
    subprocess.run(["cargo", "build", "--release", "-q", *packages], cwd=tree, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target}, stdout=sys.stderr)
    out = os.path.join(base, f"{commit[:12]}-release")
    os.makedirs(out, exist_ok=True)
    for binary in ("tessera", "shop-auth", "bench-service", "bench-upstream"):
        shutil.copy2(os.path.join(target, "release", binary), out)
    print(out)


if __name__ == "__main__":
    main()
