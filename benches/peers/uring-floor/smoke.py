#!/usr/bin/env python3
"""Smoke test of uring-floor over real sockets: byte-exact echoes, many connections at once.

It exercises the peer's unsafe code (the provided-buffer ring shared with the kernel, the
sends whose buffers must stay put until they complete): messages from 0 bytes to several
times the 4 KiB receive buffers, pipelined on 64 connections, and connections closed with
and without a Close frame while others keep going.

Usage: smoke.py PATH-TO-uring-floor   (exit 0 on success; 77 when io_uring is unavailable)
"""
import base64
import os
import random
import re
import select
import socket
import subprocess
import sys
import time


def start(binary):
    proc = subprocess.Popen([binary, "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.wait(timeout=5)
        print(f"uring-floor did not start: {line.strip()}", file=sys.stderr)
        sys.exit(77)
    return proc, int(m.group(1))


def upgrade(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s, head.split(b"\r\n\r\n", 1)[1]


def frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n <= 0xFFFF:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return header + mask + masked


def parse(buf):
    """Complete unmasked server frames at the start of buf: ([(opcode, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < at + n:
            break
        out.append((buf[0] & 0x0F, buf[at : at + n]))
        buf = buf[at + n :]
    return out, buf


def main():
    proc, port = start(sys.argv[1])
    rng = random.Random(7)
    sizes = [0, 1, 125, 126, 127, 4095, 4096, 4097, 65535, 65536, 20000]
    try:
        conns = []
        for _ in range(64):
            s, rest = upgrade(port)
            conns.append({"sock": s, "buf": rest, "want": [], "sent": 0})
        deadline = time.time() + 60
        checked = 0
        # Each connection pipelines 40 messages, in several writes, without waiting.
        for c in conns:
            msgs = [rng.randbytes(rng.choice(sizes)) for _ in range(40)]
            c["want"] = list(msgs)
            data = b"".join(frame(0x2, m) for m in msgs)
            c["pending"] = data
        live = list(conns)
        while live:
            assert time.time() < deadline, "timed out waiting for echoes"
            for c in live:
                if c["pending"]:
                    n = c["sock"].send(c["pending"][:8192])
                    c["pending"] = c["pending"][n:]
            ready, _, _ = select.select([c["sock"] for c in live], [], [], 1.0)
            for c in [c for c in live if c["sock"] in ready]:
                chunk = c["sock"].recv(1 << 20)
                assert chunk, "server closed a connection early"
                frames, c["buf"] = parse(c["buf"] + chunk)
                for opcode, payload in frames:
                    assert opcode == 0x2, opcode
                    expected = c["want"].pop(0)
                    assert payload == expected, (len(payload), len(expected))
                    checked += 1
            live = [c for c in live if c["want"] or c["pending"]]
        # Half close with a Close frame, half just drop; then a new connection still works.
        for i, c in enumerate(conns):
            if i % 2 == 0:
                c["sock"].sendall(frame(0x8, b"\x03\xe8"))
            c["sock"].close()
        s, rest = upgrade(port)
        s.sendall(frame(0x1, b"after the closes"))
        buf = rest
        while True:
            frames, buf = parse(buf + s.recv(4096))
            if frames:
                assert frames[0] == (0x1, b"after the closes"), frames[0]
                break
        s.close()
        assert proc.poll() is None, "uring-floor exited"
        print(f"uring-floor smoke: {checked} echoes byte-exact on 64 connections; ok")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
