"""Passports (docs/passport.md): a compact JWS, HS256, signed with the system's key set.

`TESSERA_PASSPORT_KEYS` is `kid:base64secret[,kid:base64secret...]`: the first key signs, every
key verifies. Verification follows the document's three steps, in its order, and says which
check failed; the signature is compared in constant time before the claims are read.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import time

LEEWAY_SECS = 5
LIFETIME_SECS = 30


class PassportError(Exception):
    """A passport that does not verify: its message says which check failed."""


_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def _b64url_decode(text):
    """Strict base64url without padding: any other character, or a length no encoding has,
    is refused (one token has one spelling)."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class PassportKeys:
    """The system's key set, and its name (every passport's audience)."""

    def __init__(self, keys, system):
        if not keys:
            raise ValueError("TESSERA_PASSPORT_KEYS: no key")
        self.keys = keys  # [(kid, secret bytes)], the signing key first
        self.by_kid = dict(keys)
        self.system = system

    @classmethod
    def from_spec(cls, spec, system):
        keys = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            kid, sep, secret = part.partition(":")
            if not sep or not kid:
                raise ValueError("TESSERA_PASSPORT_KEYS: each key is kid:base64secret")
            raw = base64.b64decode(secret + "=" * (-len(secret) % 4))
            if len(raw) < 32:
                raise ValueError("TESSERA_PASSPORT_KEYS: a secret of at least 32 bytes")
            keys.append((kid, raw))
        return cls(keys, system)

    @classmethod
    def from_env(cls):
        return cls.from_spec(os.environ["TESSERA_PASSPORT_KEYS"], os.environ.get("TESSERA_SYSTEM", "tessera"))

    def verify(self, token, now=None):
        """The passport's claims, or PassportError naming the check that failed."""
        now = time.time() if now is None else now
        parts = token.split(".")
        if len(parts) != 3:
            raise PassportError("malformed passport")
        try:
            header = json.loads(_b64url_decode(parts[0]))
        except (ValueError, UnicodeDecodeError):
            raise PassportError("malformed passport header") from None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise PassportError("passport algorithm must be HS256")
        kid = header.get("kid")
        secret = self.by_kid.get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise PassportError("unknown passport key")
        try:
            signed = (parts[0] + "." + parts[1]).encode("ascii")
        except UnicodeEncodeError:
            raise PassportError("malformed passport") from None
        expected = hmac.new(secret, signed, hashlib.sha256).digest()
        try:
            signature = _b64url_decode(parts[2])
        except ValueError:
            raise PassportError("malformed passport signature") from None
        if not hmac.compare_digest(expected, signature):
            raise PassportError("bad passport signature")
        try:
            claims = json.loads(_b64url_decode(parts[1]))
        except (ValueError, UnicodeDecodeError):
            raise PassportError("malformed passport claims") from None
        if not isinstance(claims, dict):
            raise PassportError("malformed passport claims")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp + LEEWAY_SECS < now:
            raise PassportError("passport expired")
        if claims.get("aud") != self.system:
            raise PassportError("passport for another system")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise PassportError("passport without a subject")
        return claims

    def mint(self, issuer, sub, roles, trace_id, sid=None, now=None):
        """A passport signed with the first key, living 30 s."""
        now = int(time.time() if now is None else now)
        kid, secret = self.keys[0]
        header = _b64url(json.dumps({"typ": "JWT", "alg": "HS256", "kid": kid}, separators=(",", ":")).encode())
        claims = {
            "iss": issuer,
            "aud": self.system,
            "sub": sub,
            "roles": list(roles),
            "tid": trace_id,
            "jti": os.urandom(16).hex(),
            "iat": now,
            "exp": now + LIFETIME_SECS,
        }
        if sid:
            claims["sid"] = sid
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signed = header + "." + payload
        signature = _b64url(hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest())
        return signed + "." + signature
