"""Tessera Invest's `signals` service, the chart service of seed 000, written in Python.

It consumes the market's ticks (`market.ticks`), keeps each ticker's recent closes, computes a
moving-average crossover signal per ticker (signals.py), and publishes `invest.signal.changed`
on `signals.changed` whenever a ticker's signal changes; `alerts` tells the members who hold
or follow it. It serves the signals, and the "similar chart" search, over HTTP.

It joins the system as any Tessera service does, through `tessera_sdk` (sdk/python): it
registers with its credential, verifies every request's passport, carries trace context, and
reaches the event log through the control plane's HTTP API (in front of the embedded log or of
JetStream). A tick's closes, the signal changes it causes and its inbox record are one SQLite
transaction, with the events in the outbox: a tick redelivered changes nothing, and a change
is published once it is stored.
"""

import os
import re
import time
import uuid

from tessera_sdk import ApiError, Service
from tessera_sdk.service import current_trace, log

import signals

HISTORY = 600  # closes kept per ticker

SCHEMA = """
CREATE TABLE IF NOT EXISTS closes (
    ticker TEXT NOT NULL, tick INTEGER NOT NULL, time INTEGER NOT NULL, price INTEGER NOT NULL,
    PRIMARY KEY (ticker, tick)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signals (
    ticker TEXT PRIMARY KEY, sector TEXT NOT NULL, signal TEXT NOT NULL, short REAL, long REAL,
    price INTEGER NOT NULL, tick INTEGER NOT NULL, changed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS signals_by_sector ON signals (sector);
CREATE TABLE IF NOT EXISTS news (
    id TEXT PRIMARY KEY, sector TEXT NOT NULL, sentiment REAL NOT NULL, published INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS news_by_sector ON news (sector, published);
"""

service = Service("signals", migrations=SCHEMA)
TICKER = re.compile(r"^[A-Z0-9]{1,10}$")


def cloud_event(kind, subject, data):
    trace = current_trace()
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/invest/signals",
        "type": kind,
        "subject": subject,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "datacontenttype": "application/json",
        "data": data,
    }
    if trace is not None:
        event["traceparent"] = trace.header()
    return event


def sentiment_of(tx, sector):
    """The sentiment of the sector's latest news item (0 without one)."""
    row = tx.execute("SELECT sentiment FROM news WHERE sector = ? ORDER BY published DESC LIMIT 1", (sector,)).fetchone()
    return row[0] if row else 0.0


def update(tx, ticker, sector, price, tick, at, sentiment, why):
    """Computes the ticker's signal again, stores it, and publishes a change."""
    rows = tx.execute("SELECT price FROM closes WHERE ticker = ? ORDER BY tick DESC LIMIT ?", (ticker, signals.LONG)).fetchall()
    closes = [r[0] for r in reversed(rows)]
    before = tx.execute("SELECT signal FROM signals WHERE ticker = ?", (ticker,)).fetchone()
    previous = before[0] if before else None
    now, short, long_ = signals.signal_of(closes, sentiment, previous)
    changed = previous != now and not (previous is None and now == "hold")
    tx.execute(
        """INSERT INTO signals (ticker, sector, signal, short, long, price, tick, changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (ticker) DO UPDATE SET signal = excluded.signal, short = excluded.short,
              long = excluded.long, price = excluded.price, tick = excluded.tick,
              changed = CASE WHEN signals.signal = excluded.signal THEN signals.changed ELSE excluded.changed END""",
        (ticker, sector, now, short, long_, price, tick, at),
    )
    if not changed:
        return
    if why == "news":
        reason = "news of %s (sentiment %+.2f) moved the band" % (sector, sentiment)
    else:
        reason = "the %d-tick average %s the %d-tick one" % (
            signals.SHORT,
            "rose above" if now == "buy" else "fell below" if now == "sell" else "crossed back to",
            signals.LONG,
        )
    data = {
        "ticker": ticker,
        "sector": sector,
        "signal": now,
        "previous": previous,
        "price": price,
        "tick": tick,
        "shortMa": short,
        "longMa": long_,
        "reason": reason,
    }
    tx.publish("signals.changed", cloud_event("invest.signal.changed", ticker, data))
    service.metrics.add("invest_signal_changes_total", signal=now)


def on_tick(tx, event):
    """One sector's prices at one tick."""
    if event.get("type") != "invest.market.tick":
        return
    data = event["data"]
    tick, at, sector = int(data["tick"]), int(data["time"]), data["sector"]
    sentiment = sentiment_of(tx, sector)
    for quote in data["prices"]:
        ticker, price = quote["ticker"], int(quote["price"])
        tx.execute("INSERT OR IGNORE INTO closes (ticker, tick, time, price) VALUES (?, ?, ?, ?)", (ticker, tick, at, price))
        update(tx, ticker, sector, price, tick, at, sentiment, "tick")
    if tick % 60 == 0:
        tx.execute("DELETE FROM closes WHERE tick < ?", (tick - HISTORY,))
    service.metrics.add("invest_ticks_total")


def on_news(tx, event):
    """A news item: the signals of its sector's tickers, computed again with its sentiment."""
    if event.get("type") != "invest.news.registered":
        return
    news = event["data"]
    sector, sentiment = news["sector"], float(news["sentiment"])
    tx.execute(
        "INSERT OR IGNORE INTO news (id, sector, sentiment, published) VALUES (?, ?, ?, ?)",
        (news["id"], sector, sentiment, int(news["published"])),
    )
    rows = tx.execute("SELECT ticker, price, tick, changed FROM signals WHERE sector = ?", (sector,)).fetchall()
    now = int(time.time() * 1000)
    for ticker, price, tick, _ in rows:
        update(tx, ticker, sector, price, tick, now, sentiment_of(tx, sector), "news")
    service.metrics.add("invest_news_total")


def ticker_of(req):
    ticker = req.params["ticker"].upper()
    if not TICKER.match(ticker):
        raise ApiError(400, "invalid_ticker", "a ticker is 1 to 10 letters and digits")
    return ticker


def int_param(req, name, default, low, high):
    raw = req.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_" + name, "%s is a whole number" % name) from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_" + name, "%s is %d to %d" % (name, low, high))
    return value


COLUMNS = "ticker, sector, signal, short, long, price, tick, changed"


def row_view(row):
    ticker, sector, signal, short, long_, price, tick, changed = row
    return {
        "ticker": ticker,
        "sector": sector,
        "signal": signal,
        "shortMa": short,
        "longMa": long_,
        "price": price,
        "tick": tick,
        "changed": changed,
    }


@service.route("GET", "/api/signals")
def all_signals(req):
    wanted = req.query.get("signal")
    if wanted is not None and wanted not in ("buy", "sell", "hold"):
        raise ApiError(400, "invalid_signal", "signal is buy, sell or hold")
    rows = service.store.read("SELECT %s FROM signals ORDER BY ticker" % COLUMNS)
    return [row_view(r) for r in rows if wanted is None or r[2] == wanted]


@service.route("GET", "/api/signals/news")
def news_seen(req):
    """Each sector's news as the signals took it: how many items, and the latest sentiment."""
    rows = service.store.read(
        """SELECT sector, COUNT(*), (SELECT n2.sentiment FROM news n2 WHERE n2.sector = n.sector
              ORDER BY n2.published DESC LIMIT 1) FROM news n GROUP BY sector ORDER BY sector"""
    )
    return [{"sector": s, "items": n, "sentiment": latest} for s, n, latest in rows]


@service.route("GET", "/api/signals/{ticker}")
def one_signal(req):
    ticker = ticker_of(req)
    rows = service.store.read("SELECT %s FROM signals WHERE ticker = ?" % COLUMNS, (ticker,))
    if not rows:
        raise ApiError(404, "not_found", "no signal for this ticker (yet)")
    closes = service.store.read("SELECT tick, time, price FROM closes WHERE ticker = ? ORDER BY tick DESC LIMIT 120", (ticker,))
    view = row_view(rows[0])
    view["closes"] = [{"tick": t, "time": at, "price": p} for t, at, p in reversed(closes)]
    return view


@service.route("GET", "/api/signals/{ticker}/similar")
def similar(req):
    ticker = ticker_of(req)
    window = int_param(req, "window", 20, 5, 120)
    top = int_param(req, "top", 3, 1, 10)
    horizon = int_param(req, "horizon", 10, 1, 100)
    rows = service.store.read("SELECT tick, price FROM closes WHERE ticker = ? ORDER BY tick", (ticker,))
    ticks = [r[0] for r in rows]
    closes = [r[1] for r in rows]
    found = signals.similar(closes, window=window, top=top, horizon=horizon)
    for match in found:
        match["fromTick"] = ticks[match.pop("start")]
    return {"ticker": ticker, "window": window, "horizon": horizon, "history": len(closes), "matches": found}


if __name__ == "__main__":
    service.consume("market.ticks", on_tick, batch=int(os.environ.get("SIGNALS_BATCH", "64")))
    service.consume("market.news", on_news)
    log("info", "signals starting", history=HISTORY, short=signals.SHORT, long=signals.LONG)
    service.run()
