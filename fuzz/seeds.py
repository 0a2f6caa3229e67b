#!/usr/bin/env python3
"""Writes the kept seed corpus, fuzz/corpus/<target>/: small, real examples of what each
target reads. Run it again after changing a target's input format (docs/fuzzing.md).

A target that reads a plan (`tessera_fuzz::Plan`) takes a flags byte, a count of read sizes
(0 to 7), the sizes (each byte + 1), then the payload."""

import base64
import hashlib
import hmac
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
FAR = 4102444800  # 2100-01-01: a passport that is still valid when the fuzzer reads it


def plan(flags, payload, sizes=()):
    if isinstance(payload, str):
        payload = payload.encode()
    return bytes([flags, len(sizes)] + [s - 1 for s in sizes]) + payload


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws(secret, header, claims):
    signed = b64url(header.encode()) + "." + b64url(claims.encode())
    mac = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return signed + "." + b64url(mac)


def write(target, seeds):
    folder = os.path.join(CORPUS, target)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


# Limits (`tessera_fuzz::limit`, the flags' low three bits): 4 is 1 KiB, 5 is 1 MiB.
MIB, KIB = 5, 4

write("http1_request_head", {
    "get": plan(MIB, "GET /api/catalog/products?limit=3 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"),
    "post-length": plan(MIB, "POST /api/auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 49\r\n\r\n{\"email\":\"ann@example.com\",\"password\":\"pass123\"}", (7, 30)),
    "post-chunked": plan(MIB, "POST /api/orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer eyJ0\r\nIdempotency-Key: k1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nx-trailer: 1\r\n\r\n", (1, 5, 64)),
    "pipelined": plan(KIB, "GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    "http10-keep-alive": plan(MIB, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /x HTTP/1.0\r\n\r\n"),
    "expect-continue": plan(MIB, "PUT /api/catalog/products/1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", (20,)),
    "absolute-form": plan(MIB, "GET http://localhost:8080/api/x?y=1 HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"),
    "forwarded": plan(MIB, "GET /api/auth/me HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nForwarded: for=10.0.0.1;proto=http\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX-Tessera-Deadline-Ms: 2000\r\n\r\n"),
    "smuggle": plan(MIB, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    # A terabyte claimed under no limit: reserved at once, it aborted the process.
    "huge-length": plan(6, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1099511627776\r\n\r\nabc"),
    "head-too-large-body": plan(1, "HEAD /h HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"),
})

write("http1_chunked", {
    "chunks-extensions-trailers": plan(MIB, "3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nx-trailer: 1\r\n\r\nNEXT", (1, 2, 5)),
    "upper-hex": plan(MIB | 1 << 3, "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n", (3,)),
    "near-u64": plan(6, "3\r\nabc\r\nfffffffffffffff0\r\nxx"),
    "over-limit": plan(KIB, "800\r\n" + "x" * 64),
    "long-extensions": plan(MIB, ("1;" + "e" * 200 + "\r\nx\r\n") * 8 + "0\r\n\r\n", (50,)),
    "bare-lf": plan(MIB, "1;ext\nx\r\nx\r\n0\r\n\r\n"),
    "roundtrip": plan(MIB | 2 | 4, "the payload encoded in chunks of the planned sizes", (3, 7)),
})

FETCHED = '{"partition":0,"events":[],"leaseMs":10000}'
write("http1_response", {
    "length": plan(MIB, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"data\":null}"),
    "chunked": plan(MIB, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nx-trailer: 1\r\n\r\n", (2, 9)),
    "continue-then-ok": plan(MIB, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"),
    "no-content": plan(MIB, "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
    "close": plan(KIB, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end", (4,)),
    "http10": plan(MIB, "HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nabc"),
    "head": plan(MIB | 1 << 3, "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"),
    "fetch-answer": plan(MIB | 2 << 3, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(FETCHED), FETCHED)),
    "near-u64-chunk": plan(6, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nfffffffffffffff0\r\nxx"),
    "huge-length": plan(6, "HTTP/1.1 200 OK\r\ncontent-length: 1099511627776\r\n\r\nabc"),
    "te-not-chunked": plan(MIB, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 3\r\n\r\nabcdef"),
})

K1, K2 = b"\x07" * 32, b"\x09" * 32
OURS = '{"typ":"JWT","alg":"HS256","kid":"%s"}'
claims = {
    "iss": "tessera-gateway", "aud": "shop", "sub": "0190f000-0000-7000-8000-000000000001",
    "roles": ["user", "admin"], "sid": "s-1", "tid": "0af7651916cd43dd8448eb211c80319c",
    "jti": "5c1e0f4b3a2d1e0f5c1e0f4b3a2d1e0f", "iat": FAR - 30, "exp": FAR,
}
minted = json.dumps(claims, separators=(",", ":"))
write("passport", {
    "valid-token": plan(0, jws(K1, OURS % "k1", minted)),
    "expired-token": plan(0, jws(K2, OURS % "k2", minted.replace(str(FAR), "1700000030"))),
    "other-minter": plan(0, jws(K1, '{ "alg": "HS256", "kid": "k1" }', minted)),
    "alg-none": plan(0, b64url(b'{"alg":"none","kid":"k1"}') + "." + b64url(minted.encode()) + "."),
    "claims-minted": plan(1, minted),
    "claims-escapes": plan(1 | 1 << 2, minted.replace('"s-1"', '"s\\"1\\u00e9"').replace('"roles":["user","admin"]', '"roles":[]')),
    "claims-spaced": plan(1 | 2 << 2, json.dumps(claims, indent=1).replace('"s-1"', "null")),
    "claims-anonymous": plan(1, json.dumps({k: v for k, v in claims.items() if k not in ("sid", "roles")} | {"sub": "anonymous"})),
    # The end of time: `exp` plus the leeway overflowed (crates/tessera/src/passport.rs tests).
    "claims-exp-max": plan(1, minted.replace(str(FAR), str(2**64 - 1))),
    "mint": plan(2, b"tessera-gateway\xffus\"er\\1\n\xffs1\xffuser\xffadmin"),
})

event = {
    "specversion": "1.0", "id": "01a200da-535d-7353-bed2-1eb05f80465e", "source": "/shop/order",
    "type": "shop.order.confirmed", "subject": "01a200da-5300-7000-8000-0000000000aa",
    "time": "2026-11-22T01:23:53.826Z", "datacontenttype": "application/json",
    "data": {"orderId": "o-1", "userId": "u-1", "total": 10700, "currency": "USD"},
    "traceparent": "00-ff145a9b536ecaa5797ca40ef6c5fab0-8c1e0f4b3a2d1e0f-01",
}
saga = {
    "specversion": "1.0", "id": "01a200da-0000-7000-8000-000000000001", "source": "/shop/order",
    "type": "inventory.reserve", "partitionkey": "o-1", "sagaid": "s-1", "sagastep": 0,
    "sagareplyto": "order.replies", "data": {"items": [{"productId": "p", "quantity": 2}]},
}
dead = dict(event, deadlettergroup="notification", deadlettertopic="order.events",
            deadletterpartition=3, deadletteroffset=42, deadlettererror="boom",
            deadletterattempts=5)
answer = {
    "partition": 0, "leaseMs": 10000,
    "events": [{"offset": 7, "producer": "service:order", "event": event},
               {"offset": 8, "event": {"not": "a cloudevent"}}],
    "more": [{"partition": 2, "events": [{"offset": 1, "producer": "service:order", "event": saga}]}],
}
write("cloudevent", {
    "event": bytes([0]) + json.dumps(event, indent=2).encode(),
    "saga-command": bytes([0]) + json.dumps(saga).encode(),
    "dead-letter": bytes([0]) + json.dumps(dead).encode(),
    "minimal": bytes([0]) + b'{"specversion":"1.0","id":"a","source":"s","type":"t"}',
    # Escapes in the attributes the log reads, and a number serde_json read as its neighbour.
    "escapes": bytes([0]) + rb'{"specversion":"1\u002e0","id":"a\"b","source":"\/shop\/order","type":"shop.order\\x","subject":"o-\u00e9"}',
    "float": bytes([0]) + b'{"specversion":"1.0","id":"a","source":"s","type":"t","data":{"total":1.0888888888888889e105}}',
    "fetch-answer": bytes([1]) + json.dumps(answer).encode(),
    "fetch-commit-error": bytes([3]) + json.dumps({"partition": None, "events": [], "commitError": {"status": 409, "code": "lost", "message": "moved"}}).encode(),
})

with open(os.path.join(HERE, "..", "tessera.toml"), "rb") as f:
    shop = f.read()
write("manifest", {
    "tessera.toml": shop,
    "resilience": b"""[gateway.resilience]
max_concurrent = 10
breaker = { failure_rate = 0.25, minimum_calls = 5 }
retry = { max_attempts = 3, backoff = { base_ms = 10, max_ms = 100 } }
[gateway.upstreams.slow]
max_concurrent = 2
[gateway]
trusted_proxies = ["10.0.0.0/8", "::1"]
[[route]]
prefix = "/api/auth/login"
service = "auth"
auth = "public"
rate_limit = { per_ip = "10/m" }
fallback = { body = '{"items": []}' }
""",
    "services": b"""[system]
name = "shop"
build = "cargo build"
[control]
partitions = 8
lease_ms = 10000
log_sync = "normal"
[services.catalog]
command = ["bin/catalog", "--flag"]
replicas = 2
env = { A = "1" }
produces = ["catalog.events"]
[services.search]
command = "bin/search"
consumes = ["catalog.events"]
""",
})

C1 = b"\x03" * 32
def credential(principal, kid="c1", secret=C1):
    signed = f"{principal}.{kid}"
    return signed + "." + b64url(hmac.new(secret, signed.encode(), hashlib.sha256).digest())
write("credential", {
    "service": plan(0, credential("service:catalog")),
    "gateway-second-key": plan(0, credential("gateway", "c2", b"\x05" * 32)),
    "forged": plan(0, credential("admin", "c1", b"\x00" * 32)),
    "issue-service": plan(1, "service:payment-provider", (17,)),
    "issue-admin": plan(1, "admin", (3,)),
    "key-set": plan(2, "c1:" + base64.b64encode(C1).decode() + ", c2:" + b64url(b"\x05" * 32)),
})
