#!/usr/bin/env python3
"""Which tables and indexes a database's commits write, from its WAL.

SQLite writes every page a transaction touched, whole (4 KiB), to the WAL at commit. This reads
the WAL's frame headers (page number, and the commit marker on a transaction's last frame),
keeps the frames of the WAL's current generation, and names each page's b-tree through the
`dbstat` table of a copy of the database with its WAL applied. Run it on a live shop, under
load, to see what each commit costs and where:

    python3 bench/wal_pages.py .tessera/data/order.db      # or state/control/log.db

The copy is taken while the service writes, so its last frames may be torn; the figures are a
sample, not an account.
"""

import collections, os, shutil, sqlite3, struct, sys, tempfile


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    db = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="tessera-wal-")
    try:
        copy = os.path.join(tmp, "copy.db")
        shutil.copy(db, copy)
        if not os.path.exists(db + "-wal"):
            raise SystemExit(f"{db} has no WAL right now (nothing written since its last checkpoint)")
        shutil.copy(db + "-wal", copy + "-wal")
        wal = open(copy + "-wal", "rb").read()
        if len(wal) < 32:
            raise SystemExit("the WAL is empty")
        _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = struct.unpack(">8I", wal[:32])
        frames, at = [], 32
        while at + 24 + page_size <= len(wal):
            page, commit, s1, s2 = struct.unpack(">4I", wal[at:at + 16])
            if (s1, s2) != (salt1, salt2):
                break  # a frame of an earlier generation: the current one ends here
            frames.append((page, commit != 0))
            at += 24 + page_size
        commits = sum(1 for _, c in frames if c)
        con = sqlite3.connect(copy)
        owner = {page: name for name, page in con.execute("SELECT name, pageno FROM dbstat")}
        con.close()
        by_tree = collections.Counter(owner.get(page, "(free or new)") for page, _ in frames)
        print(f"{db}: {len(frames)} pages in {commits} commits, "
              f"{len(frames) / max(commits, 1):.1f} pages per commit ({page_size} B each)")
        for name, n in by_tree.most_common():
            print(f"  {name:40} {n:7}  {n / max(commits, 1):5.2f} per commit")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
