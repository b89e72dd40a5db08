#!/usr/bin/env python3
"""Regenerates the committed seed corpora (deterministic). Run from anywhere:
python3 fuzz/seeds/gen.py. Layouts are described at the top of each fuzz target."""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(6455)


def frame(first, payload, mask=b"\x37\xfa\x21\x3d", form=None):
    n = len(payload)
    out = bytes([first])
    if form is None:
        form = 0 if n < 126 else (1 if n < 65536 else 2)
    if form == 0:
        out += bytes([0x80 | n])
    elif form == 1:
        out += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        out += bytes([0x80 | 127]) + struct.pack(">Q", n)
    out += mask
    return out + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def upgrade(path="/ws", extra=""):
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


envelopes = [
    {"pid": "c-1", "type": "data_request", "targetUserId": 456, "payload": {"text": "hi"}},
    {"type": "data_request", "payload": {"resource": "notification", "data": {"targetUsers": [1, 2, "3"]}}},
    {"pid": "p", "type": "presence_update", "payload": {"status": "online", "context": {"page": [1, 2.5, None, True]}}},
    {"pid": "a", "type": "client_ack", "payload": {"acknowledgedPid": "s-9", "status": "received"}},
    {"pid": "g", "type": "generic_request", "payload": {"action": "get_presence", "data": {"userIds": [7, 8]}}},
    {"pid": "r", "type": "generic_request", "payload": {"action": "refresh_token", "data": {"token": "x.y.z"}}},
    {"pid": None, "type": "generic_response", "payload": None},
    {"type": "chat", "targetUserId": "9007199254740991", "payload": []},
]
texts = [json.dumps(e, ensure_ascii=False).encode() for e in envelopes]
texts += [
    b'{"pid":"x","type":"t","payload":1,"pid":"y"}',
    b'{"p\\u0069d":"esc\\u00e9","type":"t","payload":{}}',
    b'{"pid":"d","type":"t","payload":' + b"[" * 70 + b"]" * 70 + b"}",
    b'{"type":"t","payload":{},"targetUserId":5.0}',
    b'{"type":"t","payload":{"n":18446744073709551616}}',
    b'["not","an","object"]',
    b'{"type":"t","payload":"\\ud83d\\ude00 \xc3\xa9"}',
]
for i, t in enumerate(texts):
    write("envelope", f"env{i:02}", t)

streams = [
    frame(0x81, b"Hello"),
    frame(0x01, b"Hel") + frame(0x89, b"ping") + frame(0x80, "lo wörld".encode()),
    frame(0x82, bytes(range(256)) * 2) + frame(0x8A, b""),
    frame(0x88, struct.pack(">H", 1000) + b"bye"),
    frame(0x88, struct.pack(">H", 1005)),
    frame(0x88, b"\x03"),
    frame(0x81, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
    frame(0x82, b"x" * 300, form=2),
    b"\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff\x01\x02\x03\x04",
    b"\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04",
    frame(0x02, b"a") + b"".join(frame(0x00, b"b") for _ in range(8)) + frame(0x80, b"c"),
    frame(0x81, json.dumps(envelopes[0]).encode()),
    b"\x81\x05Hello",
]
for i, s in enumerate(streams):
    # select byte (limits), 4 read sizes, stream
    write("frame_decoder", f"f{i:02}", bytes([i * 37 % 256, 0, 7, 1, 64]) + s)

requests = [
    upgrade(),
    upgrade("/ws?token=abc&x=1", "Authorization: Bearer a.b.c\r\nCookie: a=b; auth_token=\"t\"\r\n"),
    upgrade("/ws", "Sec-WebSocket-Protocol: customws.v1, bearer.a.b.c\r\nOrigin: https://a.example/\r\n"),
    upgrade().replace(b"\r\n", b"\n"),
    upgrade().replace(b"Version: 13", b"Version: 8"),
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    upgrade("/ws", "X-Big: " + "a" * 600 + "\r\n"),
    upgrade("/ws", "X-A: b\r\n" * 70),
    upgrade("/ws", "X-Odd:\t v \t\r\nX-Bin: \xff\xfe\r\n".encode("latin-1").decode("latin-1")),
    b"\r\n\r\nGET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
    b"garbage\r\n\r\n",
]
for i, r in enumerate(requests):
    write("handshake", f"h{i:02}", bytes([i * 53 % 256, 0, 1, 13, 200]) + r)
    frames = frame(0x81, json.dumps(envelopes[i % len(envelopes)]).encode()) + frame(0x89, b"p")
    write("connection", f"c{i:02}", bytes([i * 29 % 256, 0, 3, 0, 90]) + r + frames)
write("connection", "c_text_many", bytes([0, 0, 0, 0, 0]) + upgrade() + b"".join(frame(0x81, t) for t in texts[:6]))
write("connection", "c_close", bytes([1, 0, 0, 0, 0]) + upgrade() + frame(0x88, struct.pack(">H", 4000)))

for i in range(6):
    write("token", f"t{i:02}", bytes(rng.getrandbits(8) for _ in range(64 + 32 * i)))


# routing: customws::sim::model::decode. Setup byte (shards 2 + b % 3, ring capacity
# [1, 2, 16, 1024][(b >> 2) & 3], coalescing [0, 100, 1000][(b >> 4) % 3] ms), then ops.
def connect(user, shard):
    return bytes([0, user - 1, shard])


def disconnect(conn):
    return bytes([1, conn])


def p2p(frm, to, pid=True):
    return bytes([2 if pid else 0x82, frm, to - 1])


def broadcast(frm, pid=True):
    return bytes([3 if pid else 0x83, frm])


def presence(frm, to=None):
    return bytes([4, frm, 0]) if to is None else bytes([0x84, frm, to - 1])


def get_presence(frm):
    return bytes([5, frm])


def tick(ms):
    return bytes([6, min(ms // 10, 255)])


SETTLE = bytes([7, 0])

routing = {
    # One user on three shards' listeners, P2P to it, then its connections close one by one.
    "r_multi_conn": bytes([1]) + connect(1, 0) + connect(2, 0) + connect(2, 1) + connect(2, 2)
    + SETTLE + p2p(0, 2) + p2p(0, 2, False) + p2p(0, 7) + SETTLE + disconnect(1) + SETTLE
    + get_presence(0) + disconnect(1) + SETTLE + get_presence(0) + disconnect(1) + SETTLE,
    # One-slot rings: everything goes through the backlog.
    "r_tiny_rings": bytes([0]) + b"".join(connect(u, u) for u in range(1, 7)) + SETTLE
    + b"".join(broadcast(i) + p2p(i, i % 7 + 1) + presence(i) for i in range(12)) + SETTLE,
    # Coalescing: public and targeted updates inside the interval, then time passes.
    "r_coalesce": bytes([0x10 | 2]) + connect(1, 0) + connect(2, 1) + connect(3, 2) + SETTLE
    + presence(0) + SETTLE + tick(10) + presence(0) + presence(0, 2) + presence(0)
    + presence(0, 3) + SETTLE + tick(200) + get_presence(1) + SETTLE,
    # Races: connect, send and disconnect inside one settle window.
    "r_races": bytes([0x05]) + connect(1, 0) + connect(3, 1) + p2p(0, 3) + disconnect(1)
    + connect(3, 2) + broadcast(0) + get_presence(0) + SETTLE + disconnect(0) + p2p(0, 1)
    + SETTLE,
    # Keepalive: long ticks with open connections (the simulated clients answer pings).
    "r_keepalive": bytes([2]) + connect(4, 0) + connect(5, 1) + SETTLE + bytes([0x86, 200])
    + bytes([0x86, 200]) + p2p(0, 5) + SETTLE,
}
for name, data in routing.items():
    write("routing", name, data)
for i in range(8):
    write("routing", f"r_random{i}", bytes(rng.getrandbits(8) for _ in range(40 + 60 * i)))
