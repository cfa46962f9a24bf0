#!/usr/bin/python3
# perf/e2e_fanout.py: what per-connection encryption costs in fan-out. One wsed --e2e
# (--workers 1, CPU 0) with N plain subscribers on topic "plain" and N keyed subscribers (P-256
# exchange made here with python3-cryptography) on topic "e2e"; rounds alternate: K publications
# (POST /api/publish batches) to one topic, then K to the other. Per round: deliveries/s (until
# every subscriber got every byte) and wsed CPU time per delivery. The clients (CPU 1) only count
# bytes (frames have a fixed size, learnt from a warm-up publication); one keyed subscriber's last
# frame is decrypted to check it. The plain rate is capped by this Python drain, the CPU per
# delivery is not: compare both ratios.
#
# Usage: perf/e2e_fanout.py [--wsed /tmp/build-e2e/engine/wsed] [--subscribers 1000]
#                           [--publications 2000] [--rounds 3]
# Owns: the wsed process it starts (stopped by PID) and its sockets; 127.0.0.1 only; every wait
# bounded.
import argparse
import base64
import json
import os
import selectors
import socket
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

API_KEY = "perf-e2e-api-key-0123456789abcdef"
MESSAGE = {"t": "tick", "p": {"symbol": "ABCD", "price": 123.25, "seq": 1, "pad": "x" * 40}}


def compact(o):
    return json.dumps(o, separators=(",", ":"))


def frame(opcode, payload):
    """A masked client frame (mask of zeros: the bytes stay readable)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + b"\0\0\0\0" + payload


def read_frame(sock, buf):
    """(opcode, payload, rest) of the next server frame, reading as needed (blocking, 10 s)."""
    while True:
        if len(buf) >= 2:
            n, at = buf[1] & 0x7F, 2
            if n == 126 and len(buf) >= 4:
                n, at = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127 and len(buf) >= 10:
                n, at = struct.unpack(">Q", buf[2:10])[0], 10
            if n < 126 or at > 2:
                if len(buf) >= at + n:
                    return buf[0] & 0x0F, buf[at:at + n], buf[at + n:]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed during setup")
        buf += chunk


def subscriber(port, topic, keyed):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.sendall(b"GET /wse HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    _, ready, buf = read_frame(s, buf)  # server_ready
    key = None
    if keyed:
        priv = ec.generate_private_key(ec.SECP256R1())
        point = priv.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
        s.sendall(frame(1, compact({"t": "client_hello", "p": {"features": {"encryption": True},
                                    "encryption_public_key": base64.b64encode(point).decode()}}).encode()))
        _, hello, buf = read_frame(s, buf)
        server = base64.b64decode(json.loads(hello)["p"]["encryption_public_key"])
        shared = priv.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), server))
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"wse-encryption/aes-gcm-key").derive(shared)
    sub = compact({"t": "subscription_update", "p": {"action": "subscribe", "topics": [topic]}}).encode()
    if keyed:
        nonce = os.urandom(12)
        s.sendall(frame(2, b"E:" + nonce + AESGCM(key).encrypt(nonce, sub, None)))
    else:
        s.sendall(frame(1, sub))
    _, reply, buf = read_frame(s, buf)
    return s, key, buf


def api_post(port, items):
    body = compact(items).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (API_KEY.encode(), len(body)) + body)
        out = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            out += chunk
    if not out.startswith(b"HTTP/1.1 200"):
        raise RuntimeError("publish failed: %r" % out[:200])


def publish(port, topic, count, batch=200):
    for at in range(0, count, batch):
        api_post(port, [{"topic": topic, "message": MESSAGE} for _ in range(min(batch, count - at))])


def drain(socks, want_bytes, timeout_s=120):
    """Reads every socket until it got want_bytes more; returns the last bytes of socks[0]."""
    sel = selectors.DefaultSelector()
    left = {}
    tail = b""
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        left[s] = want_bytes
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        for k, _ in sel.select(1.0):
            s = k.fileobj
            try:
                chunk = s.recv(1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                raise RuntimeError("a subscriber was closed")
            if s is socks[0]:
                tail = (tail + chunk)[-4096:]
            left[s] -= len(chunk)
            if left[s] <= 0:
                sel.unregister(s)
                del left[s]
    sel.close()
    for s in socks:
        s.setblocking(True)
    if left:
        raise RuntimeError("%d subscribers short after %ss" % (len(left), timeout_s))
    return tail


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsed", default=os.path.join(B.REPO, "build", "engine", "wsed"))
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--publications", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    B.install_handlers()
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
        f.write(API_KEY)
        key_file = f.name
    proc, port = B.start_server("wsed", [a.wsed, "--mode", "wse", "--workers", "1", "--port", "0",
                                         "--insecure-no-auth", "--e2e", "--ping-interval", "0",
                                         "--inbound-rate", "0", "--api-key-file", key_file,
                                         "--max-outbound-bytes", "64MiB", "--idle-timeout", "0"], cpu=0)
    B.log("wsed pid %d, port %d" % (proc.pid, port))
    os.sched_setaffinity(0, {1})
    groups = {}
    for topic, keyed in (("plain", False), ("e2e", True)):
        subs = [subscriber(port, topic, keyed) for _ in range(a.subscribers)]
        groups[topic] = subs
        B.log("%d %s subscribers ready" % (len(subs), topic))
    sizes, payload_bytes = {}, {}
    for topic, subs in groups.items():  # warm-up: one publication gives the frame size
        publish(port, topic, 1)
        for i, (s, key, buf) in enumerate(subs):
            op, payload, rest = read_frame(s, buf)
            assert not rest, "more than one frame in the warm-up"
            if key is not None:
                assert op == 2 and payload[:2] == b"E:"
                plain = AESGCM(key).decrypt(payload[2:14], payload[14:], None)
                assert json.loads(plain)["p"] == MESSAGE["p"], plain
            sizes[topic] = len(payload) + (2 if len(payload) < 126 else 4)
            payload_bytes[topic] = len(payload)
    B.log("frame bytes: %r" % sizes)
    results = {"plain": [], "e2e": []}
    for r in range(a.rounds):
        for topic in ("plain", "e2e") if r % 2 == 0 else ("e2e", "plain"):
            socks = [s for s, _, _ in groups[topic]]
            cpu0 = sum(B.proc_cpu_seconds(proc.pid))
            t0 = time.monotonic()
            publish(port, topic, a.publications)
            tail = drain(socks, a.publications * sizes[topic])
            wall = time.monotonic() - t0
            cpu = sum(B.proc_cpu_seconds(proc.pid)) - cpu0
            deliveries = a.publications * a.subscribers
            if topic == "e2e":  # the last frame of subscriber 0 opens with its key
                last = tail[-payload_bytes[topic]:]
                key = groups[topic][0][1]
                json.loads(AESGCM(key).decrypt(last[2:14], last[14:], None))
            results[topic].append((deliveries / wall, cpu / deliveries * 1e9))
            B.log("round %d %s: %.0f deliveries/s, %.0f ns wsed CPU per delivery" % (
                r, topic, deliveries / wall, cpu / deliveries * 1e9))
    for subs in groups.values():
        for s, _, _ in subs:
            s.close()
    B.stop(proc)
    os.unlink(key_file)
    rate = {t: B.median([x[0] for x in v]) for t, v in results.items()}
    ns = {t: B.median([x[1] for x in v]) for t, v in results.items()}
    print("| subscribers | publications x rounds | plain deliveries/s | E2E deliveries/s | E2E/plain | "
          "plain ns CPU/delivery | E2E ns CPU/delivery | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|")
    cpu_ratio = "%.1fx" % (ns["e2e"] / ns["plain"]) if ns["plain"] > 0 else "n/a (run longer)"
    print("| %d | %d x %d | %.0f | %.0f | %.2f | %.0f | %.0f | %s |" % (
        a.subscribers, a.publications, a.rounds, rate["plain"], rate["e2e"], rate["e2e"] / rate["plain"],
        ns["plain"], ns["e2e"], cpu_ratio))


if __name__ == "__main__":
    main()
