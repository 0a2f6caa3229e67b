"""The service's own database (SQLite, WAL), with the two tables that make events exactly
once (docs/events.md): an inbox, written in the transaction that handles an event, and an
outbox, written in the transaction that changes state, published after commit by a relay that
retries until the log has each event."""

import json
import sqlite3
import threading
import time


class Store:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()  # one writer at a time in the process
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS tessera_inbox (id TEXT PRIMARY KEY, handled INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS tessera_outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, event TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS tessera_relay (id INTEGER PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL);
            INSERT OR IGNORE INTO tessera_relay (id, holder, until) VALUES (1, '', 0);
            """
        )
        self.wake = threading.Event()
        self.relaying = threading.Lock()  # held by the relay for each round of publishing

    def migrate(self, script):
        with self.lock:
            self.db.executescript(script)

    def transaction(self):
        return _Tx(self)

    def read(self, sql, params=()):
        with self.lock:
            return self.db.execute(sql, params).fetchall()

    # Longer than a publish may take (control.publish's timeout is 30 s): a lease cannot lapse
    # while its holder is still publishing.
    LEASE_SECS = 45.0

    def _lease(self, holder, seconds=LEASE_SECS):
        """Whether `holder` holds the relay's lease (taking it if free or lapsed): two processes
        on one database (a rollout's two versions) never publish the same rows at once."""
        now = time.time()
        with self.lock:
            cur = self.db.execute(
                "UPDATE tessera_relay SET holder = ?, until = ? WHERE id = 1 AND (holder = ? OR until < ?)",
                (holder, now + seconds, holder, now),
            )
            return cur.rowcount == 1

    def release(self, holder):
        """Gives the relay's lease up (a clean stop), once a publish under way has ended:
        another process takes it at once, and never while this one still publishes."""
        if self.relaying.acquire(timeout=40):
            try:
                with self.lock:
                    self.db.execute("UPDATE tessera_relay SET until = 0 WHERE id = 1 AND holder = ?", (holder,))
            finally:
                self.relaying.release()

    def relay(self, control, stopping, holder="relay"):
        """Publishes the outbox, oldest first, until `stopping` is set, while it holds the lease
        (renewed before each publish: a holder that lost it stops before publishing again)."""
        while not stopping.is_set():
            try:
                self._relay_once(control, stopping, holder)
            except Exception as e:  # the database busy, say: the rows stay, tried again
                from .service import log

                log("warn", "the outbox relay failed; trying again", error=str(e))
                stopping.wait(0.5)

    def _relay_once(self, control, stopping, holder):
        with self.relaying:
            if not self._lease(holder):
                stopping.wait(0.5)
                return
            with self.lock:
                rows = self.db.execute("SELECT seq, topic, event FROM tessera_outbox ORDER BY seq LIMIT 500").fetchall()
            if not rows:
                self.wake.wait(0.25)
                self.wake.clear()
                return
            by_topic = {}
            for seq, topic, event in rows:
                by_topic.setdefault(topic, []).append((seq, json.loads(event)))
            try:
                for topic, items in by_topic.items():
                    if not self._lease(holder):
                        return  # another process took over: it publishes these
                    control.publish(topic, [e for _, e in items])
                    with self.lock:
                        self.db.execute("DELETE FROM tessera_outbox WHERE seq <= ? AND topic = ?", (items[-1][0], topic))
            except Exception as e:  # the log unreachable or busy: the rows stay, tried again
                from .service import log

                log("warn", "the outbox could not publish; trying again", error=str(e))
                time.sleep(0.5)


class _Tx:
    """`with store.transaction() as tx:` one write transaction (BEGIN IMMEDIATE), committed at
    the end of the block, rolled back if it raises."""

    def __init__(self, store):
        self.store = store

    def __enter__(self):
        self.store.lock.acquire()
        try:
            self.store.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            # Not begun (another process held the file past the timeout): nothing to undo.
            self.store.lock.release()
            raise
        return self

    def __exit__(self, kind, value, tb):
        try:
            try:
                self.store.db.execute("COMMIT" if kind is None else "ROLLBACK")
            except BaseException:
                # A failed COMMIT leaves the transaction open: end it, or every later BEGIN fails.
                if self.store.db.in_transaction:
                    self.store.db.execute("ROLLBACK")
                raise
        finally:
            self.store.lock.release()
        if kind is None:
            self.store.wake.set()
        return False

    def execute(self, sql, params=()):
        return self.store.db.execute(sql, params)

    def handled(self, event_id):
        """Records the event as handled: False if it was already (then do nothing)."""
        cur = self.execute("INSERT OR IGNORE INTO tessera_inbox (id, handled) VALUES (?, ?)", (event_id, int(time.time() * 1000)))
        return cur.rowcount == 1

    def publish(self, topic, event):
        """Adds an event to the outbox: published once this transaction commits."""
        self.execute("INSERT INTO tessera_outbox (topic, event) VALUES (?, ?)", (topic, json.dumps(event)))
