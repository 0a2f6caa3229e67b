"""What the chart service computes, as pure functions: moving-average crossovers and the
"similar chart" search (seed 000's chart-similarity-service). No I/O here: service.py feeds it.
"""

import math

SHORT = 5  # closes in the short moving average
LONG = 20  # and in the long one
BAND = 0.001  # how far apart the averages must be to call a crossover (0.1%)


def moving_average(closes, n):
    if len(closes) < n:
        return None
    return sum(closes[-n:]) / n


TILT = 0.002  # how far the latest news of the sector (sentiment -1 to 1) shifts the band


def signal_of(closes, sentiment=0.0, previous=None):
    """("buy" | "sell" | "hold", short MA, long MA): buy once the short average is above the
    long one by more than the band, sell once it is below by more, hold otherwise or before
    there are enough closes. A signal holds until the averages cross back (hysteresis), so
    noise around the band's edge does not flip it to hold and back on every tick. The sector's
    latest news shifts the band: good news makes a buy come sooner and a sell later, bad news
    the reverse."""
    short, long_ = moving_average(closes, SHORT), moving_average(closes, LONG)
    if short is None or long_ is None:
        return "hold", short, long_
    shift = TILT * max(-1.0, min(1.0, sentiment))
    if short > long_ * (1 + BAND - shift):
        return "buy", short, long_
    if short < long_ * (1 - BAND - shift):
        return "sell", short, long_
    if previous == "buy" and short > long_ * (1 - shift):
        return "buy", short, long_
    if previous == "sell" and short < long_ * (1 - shift):
        return "sell", short, long_
    return "hold", short, long_


def znorm(window):
    """The window shifted to mean 0 and scaled to deviation 1 (a flat one: all zeros), so that
    charts are compared by shape, not by price level."""
    n = len(window)
    mean = sum(window) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in window) / n)
    if sd == 0:
        return [0.0] * n
    return [(x - mean) / sd for x in window]


def similar(closes, window=20, top=3, horizon=10):
    """The `top` past stretches of `closes` most like its last `window` closes (z-normalised
    Euclidean distance), none overlapping the present one, each with what followed it over the
    next `horizon` closes (its return)."""
    if window < 3 or len(closes) < window * 2 + horizon:
        return []
    target = znorm(closes[-window:])
    found = []
    # Past windows that end early enough to have a known future and not touch the present.
    for start in range(0, len(closes) - 2 * window - horizon + 1):
        past = znorm(closes[start : start + window])
        distance = math.sqrt(sum((a - b) ** 2 for a, b in zip(target, past)))
        end = start + window - 1
        after = closes[end + horizon]
        found.append(
            {
                "start": start,
                "distance": round(distance, 4),
                "followedBy": round(after / closes[end] - 1, 6),
            }
        )
    found.sort(key=lambda m: m["distance"])
    chosen = []
    for match in found:
        # Neighbouring offsets are the same stretch seen twice: keep them apart.
        if all(abs(match["start"] - c["start"]) >= window // 2 for c in chosen):
            chosen.append(match)
        if len(chosen) == top:
            break
    return chosen
