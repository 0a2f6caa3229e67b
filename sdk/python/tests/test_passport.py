"""The passport checks of docs/passport.md, each able to fail: `python3 -m unittest discover -s sdk/python/tests`."""

import base64
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tessera_sdk import PassportError, PassportKeys, TraceContext  # noqa: E402
from tessera_sdk.service import _producers  # noqa: E402

SECRET = base64.b64encode(b"k" * 32).decode()
OTHER = base64.b64encode(b"o" * 32).decode()


class Passports(unittest.TestCase):
    def setUp(self):
        self.keys = PassportKeys.from_spec("p2:%s,p1:%s" % (SECRET, OTHER), "shop")

    def refused(self, token, why, now=None):
        with self.assertRaises(PassportError) as e:
            self.keys.verify(token, now=now)
        self.assertIn(why, str(e.exception))

    def test_a_minted_passport_verifies_and_every_key_verifies(self):
        claims = self.keys.verify(self.keys.mint("tessera-gateway", "ann", ["user"], "ab" * 16))
        self.assertEqual((claims["sub"], claims["roles"], claims["aud"]), ("ann", ["user"], "shop"))
        self.assertEqual(claims["exp"] - claims["iat"], 30)
        # Signed by the older key (the second of the set): still verified.
        old = PassportKeys.from_spec("p1:%s" % OTHER, "shop").mint("x", "bob", [], "cd" * 16)
        self.assertEqual(self.keys.verify(old)["sub"], "bob")

    def test_each_check_refuses_with_its_reason(self):
        token = self.keys.mint("tessera-gateway", "ann", ["user"], "ab" * 16)
        self.refused("a.b", "malformed")
        self.refused(token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "signature")
        self.refused(PassportKeys.from_spec("p2:%s" % OTHER, "shop").mint("x", "ann", [], "ab" * 16), "signature")
        self.refused(PassportKeys.from_spec("p9:%s" % SECRET, "shop").mint("x", "ann", [], "ab" * 16), "unknown passport key")
        self.refused(PassportKeys.from_spec("p2:%s" % SECRET, "other").mint("x", "ann", [], "ab" * 16), "another system")
        self.refused(self.keys.mint("x", "ann", [], "ab" * 16, now=1000), "expired")
        self.refused(self.keys.mint("x", "", [], "ab" * 16), "subject")
        # Within the 5 s leeway: still good.
        late = self.keys.mint("x", "ann", [], "ab" * 16, now=1000)
        self.assertEqual(self.keys.verify(late, now=1034)["sub"], "ann")
        header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"p2"}').rstrip(b"=").decode()
        self.refused(header + "." + token.split(".", 1)[1], "HS256")
        # A kid that is not a string, text that is not ASCII, a signature spelled otherwise.
        odd = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":[]}').rstrip(b"=").decode()
        self.refused(odd + "." + token.split(".", 1)[1], "unknown passport key")
        self.refused(token.split(".")[0] + ".\u00e9." + token.split(".")[2], "malformed")
        self.refused(token + "=", "malformed")
        self.refused(token[:-1] + "*", "malformed")

    def test_short_or_malformed_keys_are_refused(self):
        for spec in ["", "p1", "p1:%s" % base64.b64encode(b"short").decode()]:
            with self.assertRaises(ValueError):
                PassportKeys.from_spec(spec, "shop")


class Context(unittest.TestCase):
    def test_traceparent_round_trips_and_bad_ones_are_none(self):
        t = TraceContext.parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        self.assertEqual((t.trace_id, t.span_id, t.sampled), ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", True))
        child = t.child()
        self.assertEqual(child.trace_id, t.trace_id)
        self.assertNotEqual(child.span_id, t.span_id)
        self.assertEqual(TraceContext.parse(child.header()).span_id, child.span_id)
        for bad in ["", "00-xyz", "00-" + "0" * 32 + "-b7ad6b7169203331-01", None]:
            self.assertIsNone(TraceContext.parse(bad))

    def test_declared_producers_are_read_as_the_runner_writes_them(self):
        self.assertEqual(_producers("a=x,y;b=z"), {"a": {"x", "y"}, "b": {"z"}})
        self.assertIsNone(_producers(""))


if __name__ == "__main__":
    unittest.main()
