"""Unit tests of the signals' arithmetic: `python3 -m unittest` in this directory."""

import math
import unittest

import signals


class Signals(unittest.TestCase):
    def test_a_rise_is_buy_a_fall_sell_and_too_few_closes_hold(self):
        self.assertEqual(signals.signal_of([100] * 10)[0], "hold")
        rising = [100 + i for i in range(30)]
        self.assertEqual(signals.signal_of(rising)[0], "buy")
        falling = [200 - i for i in range(30)]
        self.assertEqual(signals.signal_of(falling)[0], "sell")
        self.assertEqual(signals.signal_of([100] * 30)[0], "hold")

    def test_a_signal_holds_until_the_averages_cross_back(self):
        # Short average 0.05% above the long one: inside the band.
        closes = [1000] * 15 + [1001] * 5
        self.assertEqual(signals.signal_of(closes)[0], "hold")
        self.assertEqual(signals.signal_of(closes, previous="buy")[0], "buy")
        self.assertEqual(signals.signal_of(closes, previous="sell")[0], "hold")
        below = [1001] * 15 + [1000] * 5
        self.assertEqual(signals.signal_of(below, previous="sell")[0], "sell")
        self.assertEqual(signals.signal_of(below, previous="buy")[0], "hold")

    def test_news_shifts_the_band(self):
        flat = [1000] * 30
        self.assertEqual(signals.signal_of(flat, sentiment=1.0)[0], "buy")
        self.assertEqual(signals.signal_of(flat, sentiment=-1.0)[0], "sell")
        self.assertEqual(signals.signal_of(flat, sentiment=0.2)[0], "hold")

    def test_the_most_similar_stretch_is_the_one_with_the_same_shape(self):
        # A sine wave: the present window's shape recurs every period.
        closes = [1000 + 100 * math.sin(i * 2 * math.pi / 40) + (i % 7) for i in range(400)]
        found = signals.similar(closes, window=20, top=3, horizon=10)
        self.assertEqual(len(found), 3)
        self.assertLess(found[0]["distance"], 0.5)
        # The same phase as the present window's start (400 - 20 = 380, period 40).
        self.assertIn(found[0]["start"] % 40, (19, 20, 21))
        starts = [m["start"] for m in found]
        self.assertTrue(all(abs(a - b) >= 10 for a in starts for b in starts if a != b))
        self.assertEqual(signals.similar(closes[:30], window=20), [])

    def test_a_flat_window_is_zeros(self):
        self.assertEqual(signals.znorm([5, 5, 5]), [0.0, 0.0, 0.0])


if __name__ == "__main__":
    unittest.main()
