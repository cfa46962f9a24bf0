#!/usr/bin/python3
"""RFC 6455 conformance harness for wsed (in-repo re-creation of the Autobahn|Testsuite case groups
1-7, 9, 10, and 12-13 in spirit: RFC 7692 permessage-deflate; the cases are written from the RFCs
and the description of each group, no Autobahn code).

Each case opens a raw TCP connection, does the opening handshake, sends hand-built masked frames
(optionally chopped into small TCP writes with pauses), and collects everything the server sends until
it closes the TCP connection (or a timeout).  The observed data messages (reassembled: the server may
fragment its echoes any way it likes), pongs and the close code are compared with the expectation.
Strict: the echo of every frame completed before a bad frame must come back, then the close frame,
and nothing after it.

Usage:
  /usr/bin/python3 tests/conformance/conformance.py [--wsed build/engine/wsed] [--node] [--groups 1,2]
                                                    [--case REGEX] [--env-sanitizers] [-v]
  --node       run against tests/node/echo_server.js (Node `ws`), to validate the harness itself
  --port N     run against an already running echo server on 127.0.0.1:N (groups 9/10 need its limits)
  --tls        wsed over TLS (its own certificate; the cases pass through tls_relay.py)
Prints one line per failed case and, last, "N passed, N failed".  Exit code 0 iff nothing failed.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import wsed_harness as H  # noqa: E402
from wsed_harness import OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, frame  # noqa: E402
from tls_relay import TlsRelay  # noqa: E402

NORMAL = "normal"   # the client closes with 1000 at the end; the server must answer 1000
KiB, MiB = 1024, 1024 * 1024
EOF_AFTER_CLOSE = 2.0

# server configurations (wsed flags); every case names the one it runs against
SERVER_CONFIGS = {
    "default": ["--mode", "echo"],
    # group 9: big messages
    "big": ["--mode", "echo", "--max-message-size", "16MiB", "--max-outbound-bytes", "64MiB"],
    # group 10: a 64 KiB message in 1-byte fragments is 65536 frames, over the default --max-fragments 4096
    "frag": ["--mode", "echo", "--max-fragments", "65536"],
    # groups 12/13: permessage-deflate; a small inflated-size cap for the bomb cases
    "deflate": ["--mode", "echo", "--max-message-size", "256KiB", "--deflate-threshold", "64"],
}


class Case:
    """offer: Sec-WebSocket-Extensions header line(s) of the handshake (a DeflateWS client);
    answer: the extension the 101 must name (None: none); compressed: how many server messages
    must arrive compressed (None: not checked)."""

    def __init__(self, cid, desc, steps, expect=(), close=NORMAL, server="default", timeout=5.0,
                 offer=None, answer=None, compressed=None):
        self.id, self.desc, self.server, self.timeout = cid, desc, server, timeout
        self.offer, self.answer, self.compressed = offer, answer, compressed
        self.steps = list(steps)
        self.expect = list(expect)
        if close == NORMAL:
            self.steps.append(("close", 1000, b""))
            close = {1000}
        elif isinstance(close, int) or close is None:
            close = {close}
        self.close = set(close)


# -- step constructors --------------------------------------------------------------------------

def send(*frames, chop=None, delay=0.0, partial=False):
    """Send the concatenation of frames; chop = TCP write size (with `delay` between writes)."""
    return ("send", b"".join(frames), chop, delay, partial)


def _framewise(frames, delay):
    steps = []
    for f in frames:
        steps.append(send(f))
        steps.append(("sleep", delay))
    return steps


def octetwise(*frames, delay=0.0005):
    return [send(*frames, chop=1, delay=delay)]


def sleep(t):
    return ("sleep", t)


def expect_close(t, why):
    return ("expect_close", t, why)


def T(p=b"", fin=True, rsv=0):
    return frame(OP_TEXT, p, fin=fin, rsv=rsv)


def B(p=b"", fin=True, rsv=0):
    return frame(OP_BINARY, p, fin=fin, rsv=rsv)


def C(p=b"", fin=True, rsv=0):
    return frame(OP_CONT, p, fin=fin, rsv=rsv)


def PING(p=b"", fin=True, rsv=0):
    return frame(OP_PING, p, fin=fin, rsv=rsv)


def PONG(p=b"", fin=True, rsv=0):
    return frame(OP_PONG, p, fin=fin, rsv=rsv)


def CLOSE(code=None, reason=b"", fin=True, rsv=0):
    return frame(OP_CLOSE, H.close_payload(code, reason), fin=fin, rsv=rsv)


def text(s):
    return ("text", s.encode("utf-8") if isinstance(s, str) else s)


def binary(b):
    return ("binary", b)


def pong(b):
    return ("pong", b.encode() if isinstance(b, str) else b)


def ascii_payload(n, seed=0):
    pat = b"BAsd7&jh23-" + str(seed).encode() + b"-"
    return (pat * (n // len(pat) + 1))[:n]


def binary_payload(n, seed=0):
    pat = bytes((i * 7 + seed) & 0xFF for i in range(251))
    return (pat * (n // len(pat) + 1))[:n]


_text_cache = {}


def utf8_payload(n):
    """Valid UTF-8 of exactly n bytes, mixing 1-4 byte sequences (so chunk borders split code points)."""
    if n not in _text_cache:
        pat = "aé€𝄞κόσμε-ü漢字😀z".encode("utf-8")
        raw = (pat * (n // len(pat) + 2))[:n]
        raw = raw.decode("utf-8", "ignore").encode("utf-8")  # drop a cut code point at the end
        _text_cache[n] = raw + b"x" * (n - len(raw))
    return _text_cache[n]


def fragments(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def fragmented(op, data, size):
    parts = fragments(data, size)
    out = []
    for i, p in enumerate(parts):
        out.append(frame(op if i == 0 else OP_CONT, p, fin=(i == len(parts) - 1)))
    return b"".join(out)


KOSME = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"  # "κόσμε" with U+1F79 (as in the UTF-8 stress test)
HELLO = "Hello-µ@ßöäüàá-UTF-8!!".encode("utf-8")


# -- the catalogue ------------------------------------------------------------------------------

def group1():
    cases = []
    sizes = [0, 125, 126, 127, 128, 65535, 65536]
    for i, n in enumerate(sizes, 1):
        p = ascii_payload(n, i)
        cases.append(Case("1.1.%d" % i, "text, payload %d" % n, [send(T(p))], [text(p)]))
    p = ascii_payload(65536, 8)
    cases.append(Case("1.1.8", "text 65536 in 997-byte chops", [send(T(p), chop=997, delay=0.001)], [text(p)]))
    for i, n in enumerate(sizes, 1):
        p = binary_payload(n, i)
        cases.append(Case("1.2.%d" % i, "binary, payload %d" % n, [send(B(p))], [binary(p)]))
    p = binary_payload(65536, 8)
    cases.append(Case("1.2.8", "binary 65536 in 997-byte chops", [send(B(p), chop=997, delay=0.001)],
                      [binary(p)]))
    # extra: a 126/127-length boundary header sent byte by byte
    p = ascii_payload(300, 9)
    cases.append(Case("1.1.9", "text 300 (16-bit length) sent octet-wise", octetwise(T(p), delay=0.0002), [text(p)]))
    # extras beyond Autobahn: RFC 6455 5.1/5.2 requirements on client frames
    cases.append(Case("1.3.1", "unmasked text frame -> 1002 (RFC 6455 5.1)",
                      [send(frame(OP_TEXT, b"not masked", mask=False))], [], close=1002))
    cases.append(Case("1.3.2", "masked text, then unmasked ping -> echo, 1002",
                      [send(T(b"masked"), frame(OP_PING, b"x", mask=False))], [text(b"masked")], close=1002))
    import struct as _st
    msb = bytes([0x82, 0xFF]) + _st.pack("!Q", 1 << 63) + b"\x00\x00\x00\x00"
    cases.append(Case("1.3.3", "64-bit length with the most significant bit set -> 1002/1009",
                      [send(msb, partial=True)], [], close={1002, 1009}))
    huge = bytes([0x82, 0xFF]) + _st.pack("!Q", 1 << 32) + b"\x00\x00\x00\x00" + b"x" * 100
    cases.append(Case("1.3.4", "4 GiB frame header (over --max-message-size) -> 1009 at once",
                      [send(huge, partial=True)], [], close=1009))
    return cases


def group2():
    c = []
    c.append(Case("2.1", "ping, no payload", [send(PING())], [pong(b"")]))
    c.append(Case("2.2", "ping, small text payload", [send(PING(b"Hello, world!"))], [pong(b"Hello, world!")]))
    bp = bytes([0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff])
    c.append(Case("2.3", "ping, binary payload", [send(PING(bp))], [pong(bp)]))
    p125 = binary_payload(125, 3)
    c.append(Case("2.4", "ping, 125-byte binary payload", [send(PING(p125))], [pong(p125)]))
    c.append(Case("2.5", "ping, 126-byte payload -> 1002", [send(PING(binary_payload(126)))], [], close=1002))
    c.append(Case("2.6", "ping 125 bytes sent octet-wise", octetwise(PING(p125)), [pong(p125)]))
    c.append(Case("2.7", "unsolicited pong, no payload: ignored", [send(PONG())], []))
    c.append(Case("2.8", "unsolicited pong with payload: ignored", [send(PONG(b"unsolicited pong payload"))], []))
    c.append(Case("2.9", "unsolicited pong, then ping", [send(PONG(b"unsolicited"), PING(b"ping payload"))],
                  [pong(b"ping payload")]))
    pings = [("payload-%d" % i).encode() for i in range(10)]
    c.append(Case("2.10", "10 pings -> 10 pongs", [send(*[PING(p) for p in pings])], [pong(p) for p in pings]))
    c.append(Case("2.11", "10 pings sent octet-wise -> 10 pongs",
                  octetwise(*[PING(p) for p in pings], delay=0.0002), [pong(p) for p in pings]))
    c.append(Case("2.12", "ping with 125-byte payload then text", [send(PING(p125), T(b"after"))],
                  [pong(p125), text(b"after")]))
    return c


def group3():
    c = []
    hello = b"Hello, world!"
    c.append(Case("3.1", "text with RSV=1 -> 1002", [send(T(hello, rsv=1))], [], close=1002))
    c.append(Case("3.2", "text, text RSV=2, ping -> echo, 1002, nothing after",
                  [send(T(hello), T(hello, rsv=2), PING())], [text(hello)], close=1002))
    c.append(Case("3.3", "same as 3.2 (RSV=3), frame-wise",
                  _framewise([T(hello), T(hello, rsv=3), PING()], 0.01), [text(hello)], close=1002))
    c.append(Case("3.4", "same as 3.2 (RSV=4), octet-wise",
                  octetwise(T(hello), T(hello, rsv=4), PING()), [text(hello)], close=1002))
    c.append(Case("3.5", "binary with RSV=5 -> 1002", [send(B(binary_payload(8), rsv=5))], [], close=1002))
    c.append(Case("3.6", "ping with RSV=6 -> 1002", [send(PING(hello, rsv=6))], [], close=1002))
    c.append(Case("3.7", "close with RSV=7 -> 1002", [send(CLOSE(1000, rsv=7))], [], close=1002))
    makers = [("text", lambda r: T(b"rsv", rsv=r)), ("binary", lambda r: B(b"\x00rsv", rsv=r)),
              ("ping", lambda r: PING(b"rsv", rsv=r)), ("close", lambda r: CLOSE(1000, rsv=r))]
    n = 0
    for r in range(1, 8):
        for name, mk in makers:
            n += 1
            # a valid frame before (its echo must come back), the bad one, a valid one after (ignored)
            c.append(Case("3.8.%d" % n, "text, %s with RSV=%d, text -> echo, 1002" % (name, r),
                          [send(T(b"before"), mk(r), T(b"after"))], [text(b"before")], close=1002))
    return c


def group4():
    c = []
    hello = b"Hello, world!"
    for grp, ops in (("4.1", [3, 4, 5, 6, 7]), ("4.2", [0xB, 0xC, 0xD, 0xE, 0xF])):
        ctl = "control" if grp == "4.2" else "non-control"
        c.append(Case(grp + ".1", "reserved %s opcode %d, empty -> 1002" % (ctl, ops[0]),
                      [send(frame(ops[0]))], [], close=1002))
        c.append(Case(grp + ".2", "reserved %s opcode %d, with payload -> 1002" % (ctl, ops[1]),
                      [send(frame(ops[1], b"reserved opcode payload"))], [], close=1002))
        c.append(Case(grp + ".3", "text, opcode %d, ping -> echo, 1002" % ops[2],
                      [send(T(hello), frame(ops[2]), PING())], [text(hello)], close=1002))
        c.append(Case(grp + ".4", "text, opcode %d with payload, ping -> echo, 1002" % ops[3],
                      [send(T(hello), frame(ops[3], b"reserved opcode payload"), PING())], [text(hello)],
                      close=1002))
        c.append(Case(grp + ".5", "text, opcode %d with payload, ping, frame-wise -> echo, 1002" % ops[4],
                      _framewise([T(hello), frame(ops[4], b"reserved opcode payload"), PING()], 0.01),
                      [text(hello)], close=1002))
    n = 0
    for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]:
        n += 1
        c.append(Case("4.3.%d" % n, "binary, opcode %d, octet-wise -> echo, 1002" % op,
                      octetwise(B(b"\x01\x02"), frame(op, b"x"), PING(b"nope")), [binary(b"\x01\x02")],
                      close=1002))
    return c


def group5():
    c = []
    c.append(Case("5.1", "ping fragmented in 2 -> 1002",
                  [send(PING(b"fragment1", fin=False), C(b"fragment2"))], [], close=1002))
    c.append(Case("5.2", "pong fragmented in 2 -> 1002",
                  [send(PONG(b"fragment1", fin=False), C(b"fragment2"))], [], close=1002))
    two = [T(b"fragment1", fin=False), C(b"fragment2")]
    c.append(Case("5.3", "text in 2 fragments", [send(*two)], [text(b"fragment1fragment2")]))
    c.append(Case("5.4", "text in 2 fragments, frame-wise", _framewise(two, 0.01), [text(b"fragment1fragment2")]))
    c.append(Case("5.5", "text in 2 fragments, octet-wise", octetwise(*two), [text(b"fragment1fragment2")]))
    withping = [T(b"fragment1", fin=False), PING(b"ping payload"), C(b"fragment2")]
    c.append(Case("5.6", "text in 2 fragments, ping between", [send(*withping)],
                  [pong(b"ping payload"), text(b"fragment1fragment2")]))
    c.append(Case("5.7", "5.6 frame-wise", _framewise(withping, 0.01),
                  [pong(b"ping payload"), text(b"fragment1fragment2")]))
    c.append(Case("5.8", "5.6 octet-wise", octetwise(*withping),
                  [pong(b"ping payload"), text(b"fragment1fragment2")]))
    nostart = [C(b"non-continuation payload"), T(b"Hello, world!")]
    c.append(Case("5.9", "continuation (FIN) without start, then text -> 1002", [send(*nostart)], [], close=1002))
    c.append(Case("5.10", "5.9 frame-wise", _framewise(nostart, 0.01), [], close=1002))
    c.append(Case("5.11", "5.9 octet-wise", octetwise(*nostart), [], close=1002))
    nostart2 = [C(b"non-continuation payload", fin=False), T(b"Hello, world!")]
    c.append(Case("5.12", "continuation (no FIN) without start -> 1002", [send(*nostart2)], [], close=1002))
    c.append(Case("5.13", "5.12 frame-wise", _framewise(nostart2, 0.01), [], close=1002))
    c.append(Case("5.14", "5.12 octet-wise", octetwise(*nostart2), [], close=1002))
    c.append(Case("5.15", "text frag+cont(FIN), then cont, text -> echo first, 1002",
                  [send(T(b"fragment1", fin=False), C(b"fragment2"), C(b"fragment3", fin=False),
                        T(b"fragment4"))], [text(b"fragment1fragment2")], close=1002))
    c.append(Case("5.16", "(cont, text, cont(FIN)) x2 -> 1002",
                  [send(*(2 * [C(b"fragment1", fin=False), T(b"fragment2", fin=False), C(b"fragment3")]))],
                  [], close=1002))
    c.append(Case("5.17", "(cont(FIN), text, cont(FIN)) x2 -> 1002",
                  [send(*(2 * [C(b"fragment1"), T(b"fragment2", fin=False), C(b"fragment3")]))], [], close=1002))
    c.append(Case("5.18", "text(no FIN) then text(FIN) -> 1002",
                  [send(T(b"fragment1", fin=False), T(b"fragment2"))], [], close=1002))
    steps = [send(T(b"fragment1", fin=False), C(b"fragment2", fin=False), PING(b"pongme 1!")), sleep(0.3),
             send(C(b"fragment3", fin=False), C(b"fragment4", fin=False), PING(b"pongme 2!")), sleep(0.3),
             send(C(b"fragment5"))]
    exp = [pong(b"pongme 1!"), pong(b"pongme 2!"), text(b"fragment1fragment2fragment3fragment4fragment5")]
    c.append(Case("5.19", "5 fragments, pings between, pauses", steps, exp))
    fr = [T(b"fragment1", fin=False), C(b"fragment2", fin=False), PING(b"pongme 1!"),
          C(b"fragment3", fin=False), C(b"fragment4", fin=False), PING(b"pongme 2!"), C(b"fragment5")]
    c.append(Case("5.20", "5.19 frame-wise", _framewise(fr, 0.05), exp))
    # extras
    parts = [binary_payload(10, i) for i in range(3)]
    c.append(Case("5.21", "binary in 3 fragments",
                  [send(B(parts[0], fin=False), C(parts[1], fin=False), C(parts[2]))], [binary(b"".join(parts))]))
    many, exp2, whole = [], [], b""
    for i in range(100):
        p = ("frag%03d;" % i).encode()
        whole += p
        many.append(T(p, fin=False) if i == 0 else C(p, fin=(i == 99)))
        if i != 99:
            many.append(PING(("ping%03d" % i).encode()))
            exp2.append(pong(("ping%03d" % i).encode()))
    exp2.append(text(whole))
    c.append(Case("5.22", "100 fragments with a ping after each", [send(*many)], exp2))
    c.append(Case("5.23", "5.22 octet-wise", octetwise(*many, delay=0.00005), exp2, timeout=10))
    c.append(Case("5.24", "fragmented close -> 1002", [send(CLOSE(1000, fin=False), C(b""))], [], close=1002))
    c.append(Case("5.25", "binary(no FIN) then binary -> 1002",
                  [send(B(b"a", fin=False), B(b"b"))], [], close=1002))
    c.append(Case("5.26", "text(no FIN) then binary(no FIN) -> 1002",
                  [send(T(b"a", fin=False), B(b"b", fin=False), C(b"c"))], [], close=1002))
    c.append(Case("5.27", "two fragmented messages back to back",
                  [send(T(b"ab", fin=False), C(b"cd"), B(b"\x00", fin=False), C(b"\xff", fin=False), C(b"\x01"))],
                  [text(b"abcd"), binary(b"\x00\xff\x01")]))
    return c


# (id, bytes, valid) -- the 6.x UTF-8 catalogue
def utf8_catalogue():
    cat = []

    def add(prefix, seqs, valid):
        for i, s in enumerate(seqs, 1):
            cat.append(("%s.%d" % (prefix, i), s, valid))

    add("6.5", [KOSME, "\U00010000".encode(), "Ünïcödé ✓ 漢字 😀".encode(), "\u0000\u007f\u0080".encode(),
                "ℵ₀ ∀x∈ℝ: ⌈x⌉ = −⌊−x⌋".encode()], True)
    for n in range(1, len(KOSME) + 1):
        cat.append(("6.6.%d" % n, KOSME[:n], n in (2, 5, 7, 9, 11)))
    add("6.7", [b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"], True)
    add("6.8", [b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"], False)
    add("6.9", [b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"], True)
    add("6.10", [b"\xf7\xbf\xbf\xbf", b"\xfb\xbf\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf\xbf"], False)
    add("6.11", [b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbd", b"\xf4\x8f\xbf\xbf"], True)
    cat.append(("6.11.5", b"\xf4\x90\x80\x80", False))
    add("6.12", [b"\x80", b"\xbf", b"\x80\xbf", b"\x80\xbf\x80", b"\x80\xbf\x80\xbf", b"\x80\xbf\x80\xbf\x80",
                 b"\x80\xbf\x80\xbf\x80\xbf", bytes(range(0x80, 0xc0))], False)
    add("6.13", [b"".join(bytes([b, 0x20]) for b in range(0xc0, 0xe0)),
                 b"".join(bytes([b, 0x20]) for b in range(0xe0, 0xf0)),
                 b"".join(bytes([b, 0x20]) for b in range(0xf0, 0xf8)),
                 b"".join(bytes([b, 0x20]) for b in range(0xf8, 0xfc)),
                 b"".join(bytes([b, 0x20]) for b in range(0xfc, 0xfe))], False)
    trunc = [b"\xc0", b"\xe0\x80", b"\xf0\x80\x80", b"\xf8\x80\x80\x80", b"\xfc\x80\x80\x80\x80",
             b"\xdf", b"\xef\xbf", b"\xf7\xbf\xbf", b"\xfb\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf",
             # valid-looking starts cut short (only the missing end makes them invalid)
             b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98"]
    add("6.14", trunc, False)
    add("6.15", [b"".join(trunc)], False)
    add("6.16", [b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"], False)
    add("6.17", [b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xf8\x80\x80\x80\xaf",
                 b"\xfc\x80\x80\x80\x80\xaf"], False)
    add("6.18", [b"\xc1\xbf", b"\xe0\x9f\xbf", b"\xf0\x8f\xbf\xbf", b"\xf8\x87\xbf\xbf\xbf",
                 b"\xfc\x83\xbf\xbf\xbf\xbf"], False)
    add("6.19", [b"\xc0\x80", b"\xe0\x80\x80", b"\xf0\x80\x80\x80", b"\xf8\x80\x80\x80\x80",
                 b"\xfc\x80\x80\x80\x80\x80"], False)
    add("6.20", [b"\xed\xa0\x80", b"\xed\xad\xbf", b"\xed\xae\x80", b"\xed\xaf\xbf", b"\xed\xb0\x80",
                 b"\xed\xbe\x80", b"\xed\xbf\xbf"], False)
    add("6.21", [b"\xed\xa0\x80\xed\xb0\x80", b"\xed\xa0\x80\xed\xbf\xbf", b"\xed\xad\xbf\xed\xb0\x80",
                 b"\xed\xad\xbf\xed\xbf\xbf", b"\xed\xae\x80\xed\xb0\x80", b"\xed\xae\x80\xed\xbf\xbf",
                 b"\xed\xaf\xbf\xed\xb0\x80", b"\xed\xaf\xbf\xed\xbf\xbf"], False)
    # noncharacters are valid UTF-8
    nonchars = []
    for plane in range(17):
        for low in (0xFFFE, 0xFFFF):
            nonchars.append(chr(plane * 0x10000 + low).encode("utf-8", "surrogatepass"))
    nonchars += [chr(cp).encode() for cp in (0xFDD0, 0xFDEF)]
    add("6.22", nonchars, True)
    add("6.23", [b"\xef\xbf\xbd", b"\xef\xbb\xbf" + b"BOM", b"\xef\xbf\xbd" * 5,
                 b"\xf0\x9f\x98\x80" * 3 + b"\xef\xbf\xbd", b"a\xe2\x80\x8bb"], True)
    # invalid byte after a long valid prefix (the validator must carry state across the whole message)
    cat.append(("6.24.1", HELLO * 20 + b"\xff", False))
    cat.append(("6.24.2", HELLO * 20 + b"\xed\xa0\x80" + HELLO, False))
    return cat


def group6():
    c = []
    c.append(Case("6.1.1", "empty text", [send(T(b""))], [text(b"")]))
    c.append(Case("6.1.2", "3 empty fragments", [send(T(b"", fin=False), C(b"", fin=False), C(b""))], [text(b"")]))
    c.append(Case("6.1.3", "empty, payload, empty fragments",
                  [send(T(b"", fin=False), C(b"middle frame payload", fin=False), C(b""))],
                  [text(b"middle frame payload")]))
    c.append(Case("6.2.1", "valid UTF-8 in one frame", [send(T(HELLO))], [text(HELLO)]))
    cut = len("Hello-µ@ßöäüàá".encode())
    c.append(Case("6.2.2", "valid UTF-8 in 2 fragments split at a code point",
                  [send(T(HELLO[:cut], fin=False), C(HELLO[cut:]))], [text(HELLO)]))
    c.append(Case("6.2.3", "valid UTF-8 in 1-byte fragments", [send(fragmented(OP_TEXT, HELLO, 1))], [text(HELLO)]))
    c.append(Case("6.2.4", "κόσμε in 1-byte fragments", [send(fragmented(OP_TEXT, KOSME * 3, 1))],
                  [text(KOSME * 3)]))
    bad = KOSME + b"\xed\xa0\x80" + b"edited"
    c.append(Case("6.3.1", "invalid UTF-8 (surrogate) in one frame -> 1007", [send(T(bad))], [], close=1007))
    c.append(Case("6.3.2", "6.3.1 in 1-byte fragments -> 1007", [send(fragmented(OP_TEXT, bad, 1))], [], close=1007))
    ff = 1.0  # how long the server gets to fail fast before the rest is sent
    c.append(Case("6.4.1", "fail-fast: fragment 2 has U+110000, close 1007 before fragment 3",
                  [send(T(KOSME, fin=False)), send(C(b"\xf4\x90\x80\x80", fin=False)),
                   expect_close(ff, "1007 after fragment 2 (before fragment 3)"), send(C(b"edited"))],
                  [], close=1007))
    c.append(Case("6.4.2", "fail-fast: invalid byte as a fragment of its own",
                  [send(T(KOSME + b"\xf4", fin=False)), send(C(b"\x90", fin=False)),
                   expect_close(ff, "1007 after the 0x90 fragment"), send(C(b"\x80\x80edited"))],
                  [], close=1007))
    whole = T(KOSME + b"\xf4\x90\x80\x80" + b"edited")
    k = len(whole) - len(b"\xf4\x90\x80\x80edited")
    c.append(Case("6.4.3", "fail-fast within one frame: chops",
                  [send(whole[:k], partial=True), sleep(0.05), send(whole[k:k + 4], partial=True),
                   expect_close(ff, "1007 while the frame is incomplete"), send(whole[k + 4:])],
                  [], close=1007))
    c.append(Case("6.4.4", "fail-fast within one frame: 0xf4 then 0x90 chops",
                  [send(whole[:k + 1], partial=True), sleep(0.05), send(whole[k + 1:k + 2], partial=True),
                   expect_close(ff, "1007 while the frame is incomplete"), send(whole[k + 2:])],
                  [], close=1007))
    big_prefix = utf8_payload(4000)
    c.append(Case("6.4.5", "fail-fast: 4000 valid bytes then 0xff in fragment 1 of 2",
                  [send(T(big_prefix + b"\xff", fin=False)), expect_close(ff, "1007 after the first fragment"),
                   send(C(b"rest"))], [], close=1007))
    for cid, seq, valid in utf8_catalogue():
        exp, close = ([text(seq)], NORMAL) if valid else ([], 1007)
        what = "valid" if valid else "invalid"
        c.append(Case(cid, "%s: %s in one frame" % (what, seq[:16].hex()), [send(T(seq))], list(exp), close=close))
        c.append(Case(cid + "f", "%s: %s in 1-byte fragments" % (what, seq[:16].hex()),
                      [send(fragmented(OP_TEXT, seq, 1))], list(exp), close=close))
    return c


def group7():
    c = []
    hw = b"Hello World!"
    c.append(Case("7.1.1", "text then close 1000", [send(T(hw))], [text(hw)]))
    c.append(Case("7.1.2", "close, close again: one close back", [send(CLOSE(1000), CLOSE(1000))], [], close=1000))
    c.append(Case("7.1.3", "close, then ping: no pong", [send(CLOSE(1000), PING(b"ping"))], [], close=1000))
    c.append(Case("7.1.4", "close, then text: no echo", [send(CLOSE(1000), T(hw))], [], close=1000))
    c.append(Case("7.1.5", "text fragment, close, continuation: no echo",
                  [send(T(b"fragment1", fin=False), CLOSE(1000), C(b"fragment2"))], [], close=1000))
    big = ascii_payload(256 * KiB)
    c.append(Case("7.1.6", "256 KiB text, small text, close at once: both echoed, then close",
                  [send(T(big), T(hw), CLOSE(1000))], [text(big), text(hw)], close=1000))
    c.append(Case("7.1.7", "close then text sent after a pause (data after close ignored)",
                  [send(CLOSE(1000)), sleep(0.05), send(T(hw))], [], close=1000))
    c.append(Case("7.3.1", "close without payload", [send(CLOSE())], [], close={None, 1000}))
    c.append(Case("7.3.2", "close with 1-byte payload -> 1002", [send(frame(OP_CLOSE, b"\x03"))], [], close=1002))
    c.append(Case("7.3.3", "close 1000", [send(CLOSE(1000))], [], close=1000))
    c.append(Case("7.3.4", "close 1000 + reason", [send(CLOSE(1000, hw))], [], close=1000))
    c.append(Case("7.3.5", "close 1000 + 123-byte reason", [send(CLOSE(1000, b"*" * 123))], [], close=1000))
    c.append(Case("7.3.6", "close 1000 + 124-byte reason (payload 126) -> 1002",
                  [send(CLOSE(1000, b"*" * 124))], [], close=1002))
    c.append(Case("7.3.7", "close 1000 + 121-byte UTF-8 reason",
                  [send(CLOSE(1000, ("é" * 60).encode() + b"!"))], [], close=1000))
    c.append(Case("7.5.1", "close with invalid UTF-8 reason -> 1007",
                  [send(CLOSE(1000, KOSME + b"\xed\xa0\x80edited"))], [], close=1007))
    # RFC 6455 7.4.1/7.4.2 + the IANA "WebSocket Close Code Number Registry" (RFC 6455 section 11.7):
    # 1000-1003 and 1007-1011 are defined by RFC 6455; 1012 (Service Restart), 1013 (Try Again Later) and
    # 1014 (Bad Gateway) were registered later in that registry and are sent by real servers (wsed itself
    # sends 1013); browsers, Node `ws` and python-websockets accept them.  1004 is reserved, 1005/1006/1015
    # MUST NOT be sent in a close frame, 1016-2999 are unassigned, 3000-4999 are for libraries/apps,
    # 0-999 and >= 5000 are not used.  A server may answer a valid code with the same code or with 1000.
    valid = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
    for i, code in enumerate(valid, 1):
        c.append(Case("7.7.%d" % i, "close %d (valid)" % code, [send(CLOSE(code))], [], close={code, 1000}))
    for i, code in enumerate([1012, 1013, 1014], len(valid) + 1):
        c.append(Case("7.7.%d" % i, "close %d (IANA-registered, valid)" % code, [send(CLOSE(code))], [],
                      close={code, 1000}))
    invalid = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999]
    for i, code in enumerate(invalid, 1):
        c.append(Case("7.9.%d" % i, "close %d (invalid) -> 1002" % code, [send(CLOSE(code))], [], close=1002))
    c.append(Case("7.13.1", "close 5000 (invalid) -> 1002", [send(CLOSE(5000))], [], close=1002))
    c.append(Case("7.13.2", "close 65535 (invalid) -> 1002", [send(CLOSE(65535))], [], close=1002))
    return c


def group9():
    c = []
    sizes = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB]
    variants = [("single frame", None), ("64 KiB fragments", 64 * KiB), ("4 KiB fragments", 4 * KiB)]
    sub = 0
    for vname, fsz in variants:
        for kind in ("text", "binary"):
            sub += 1
            for i, n in enumerate(sizes, 1):
                c.append(_big_case("9.%d.%d" % (sub, i), kind, n, fsz, vname))
    return c


class _LazyBig(Case):
    """Builds the (big) frames only when run, to keep memory small."""

    def __init__(self, cid, desc, builder, server, timeout):
        super().__init__(cid, desc, [], [], close=NORMAL, server=server, timeout=timeout)
        self.builder = builder

    def materialize(self):
        data, expect = self.builder()
        self.steps = [send(data), ("close", 1000, b"")]
        self.expect = expect


def _big_case(cid, kind, n, fsz, vname, server="big"):
    def build():
        payload = utf8_payload(n) if kind == "text" else binary_payload(n, n & 0xFF)
        op = OP_TEXT if kind == "text" else OP_BINARY
        data = frame(op, payload) if fsz is None else fragmented(op, payload, fsz)
        return data, [(kind, payload)]
    return _LazyBig(cid, "%s %d bytes, %s" % (kind, n, vname), build, server, timeout=60.0)


def group10():
    c = []
    sub = 0
    for kind in ("text", "binary"):
        sub += 1
        for i, fsz in enumerate([1, 64, 256, 4096], 1):
            c.append(_big_case("10.%d.%d" % (sub, i), kind, 64 * KiB, fsz, "%d-byte fragments" % fsz, server="frag"))
    return c


def _deflate_echo(cid, desc, messages, chop=None, offer=H.DEFLATE_OFFER, answer=H.DEFLATE_ANSWER,
                  fragment=None, threshold=64):
    """Each (kind, payload) sent compressed (fragment: the compressed bytes in frames of that
    size, RSV1 on the first only) and expected back whole; those at or over the server's
    --deflate-threshold come back compressed when deflate was negotiated."""
    frames = []
    for kind, payload in messages:
        op = OP_TEXT if kind == "text" else OP_BINARY
        z = H.deflate(payload) if answer else payload
        rsv = 4 if answer else 0
        parts = fragments(z, fragment) if fragment else [z]
        for i, p in enumerate(parts):
            frames.append(frame(op if i == 0 else OP_CONT, p, fin=i == len(parts) - 1,
                                rsv=rsv if i == 0 else 0))
    compressed = sum(1 for _, p in messages if len(p) >= threshold) if answer else 0
    return Case(cid, desc, [send(*frames, chop=chop)], list(messages), server="deflate", timeout=20.0,
                offer=offer, answer=answer, compressed=compressed)


def _zbin(n, seed=0):
    """n compressible binary bytes (a 7-byte period), so sizes over the threshold come back compressed."""
    pat = bytes([seed & 0xFF, 0, 1, 2, 3, 0x80, 0xFF])
    return (pat * (n // 7 + 1))[:n]


def group12():
    """Compressed echo: text and binary of many sizes, whole and fragmented, chopped TCP writes."""
    c = []
    sizes = [0, 16, 64, 256, 1 * KiB, 4 * KiB, 8 * KiB, 16 * KiB, 32 * KiB, 64 * KiB, 128 * KiB, 256 * KiB]
    sub = 0
    for kind in ("text", "binary"):
        for fragment in (None, 1000, 64):
            sub += 1
            for i, n in enumerate(sizes, 1):
                data = utf8_payload(n) if kind == "text" else _zbin(n, i)
                how = "whole" if fragment is None else "%d-byte fragments" % fragment
                if fragment == 64 and n > 32 * KiB:
                    continue
                c.append(_deflate_echo("12.%d.%d" % (sub, i), "compressed %s %d bytes x5, %s" % (kind, n, how),
                                       [(kind, data)] * 5, fragment=fragment))
    sub += 1
    c.append(_deflate_echo("12.%d.1" % sub, "compressed text, sent octet by octet", [("text", utf8_payload(300))],
                           chop=1))
    mixed = [("text", utf8_payload(i * 37)) if i % 2 else ("binary", _zbin(i * 53, i)) for i in range(40)]
    c.append(_deflate_echo("12.%d.2" % sub, "40 mixed compressed messages, pipelined", mixed))
    # A plain message on a deflate connection, and compressed ones around a ping.
    c.append(Case("12.%d.3" % sub, "plain and compressed messages interleaved with a ping",
                  [send(T(b"plain one"), T(H.deflate(b"zipped " * 20), rsv=4), PING(b"p"),
                        B(H.deflate(bytes(500)), rsv=4), B(b"\x00plain"))],
                  [text(b"plain one"), text(b"zipped " * 20), pong(b"p"), binary(bytes(500)), binary(b"\x00plain")],
                  server="deflate", offer=H.DEFLATE_OFFER, answer=H.DEFLATE_ANSWER, compressed=2))
    return c


def group13():
    """Negotiation variants (each then echoes compressed messages), RSV1 rules, bad data, bombs."""
    c = []
    ext = lambda v: b"Sec-WebSocket-Extensions: " + v + b"\r\n"
    msgs = [("text", utf8_payload(2000)), ("binary", binary_payload(70000, 3)), ("text", b"short")]
    smwb = H.DEFLATE_ANSWER + "; server_max_window_bits=15"
    offers = [
        (b"permessage-deflate", H.DEFLATE_ANSWER),
        (b"permessage-deflate; client_no_context_takeover", H.DEFLATE_ANSWER),
        (b"permessage-deflate; server_no_context_takeover", H.DEFLATE_ANSWER),
        (b"permessage-deflate; server_no_context_takeover; client_no_context_takeover", H.DEFLATE_ANSWER),
        (b"permessage-deflate; server_max_window_bits=15", smwb),
        (b"permessage-deflate; server_max_window_bits=\"15\"; client_max_window_bits=\"15\"", smwb),
    ] + [(b"permessage-deflate; client_max_window_bits=%d" % w, H.DEFLATE_ANSWER) for w in range(8, 16)] + [
        (b"permessage-deflate; server_max_window_bits=9, permessage-deflate", H.DEFLATE_ANSWER),
        (b"x-webkit-deflate-frame, permessage-deflate; client_max_window_bits", H.DEFLATE_ANSWER),
        # declined: the server answers no extension and the messages go plain
        (b"permessage-deflate; server_max_window_bits=12", None),
        (b"permessage-deflate; unknown_param", None),
        (b"permessage-deflate; client_max_window_bits=16", None),
        (b"permessage-deflate; server_no_context_takeover=1", None),
    ]
    for i, (offer, answer) in enumerate(offers, 1):
        c.append(_deflate_echo("13.1.%d" % i, "offer %r" % offer.decode(), msgs, offer=ext(offer), answer=answer))
    errs = [
        ("RSV1 without a negotiation", None, [T(H.deflate(b"hello"), rsv=4)], 1002),
        ("RSV1 on a continuation frame", H.DEFLATE_OFFER,
         [T(H.deflate(b"hello hello")[:2], fin=False, rsv=4), C(H.deflate(b"hello hello")[2:], rsv=4)], 1002),
        ("RSV1 on a ping", H.DEFLATE_OFFER, [PING(b"x", rsv=4)], 1002),
        ("RSV1 on a close", H.DEFLATE_OFFER, [CLOSE(1000, rsv=4)], 1002),
        ("RSV2 on a data frame", H.DEFLATE_OFFER, [T(H.deflate(b"hello"), rsv=2)], 1002),
        ("bad DEFLATE data", H.DEFLATE_OFFER, [B(b"\xff\xff\xff\xff\xff", rsv=4)], 1007),
        ("reserved block type", H.DEFLATE_OFFER, [T(b"\x07\x00", rsv=4)], 1007),
        ("invalid UTF-8 inside compressed text", H.DEFLATE_OFFER, [T(H.deflate(b"bad \xed\xa0\x80 utf8"), rsv=4)],
         1007),
        ("zip bomb: 64 MiB of zeros, cap 256 KiB", H.DEFLATE_OFFER, [B(H.deflate(bytes(64 * MiB)), rsv=4)], 1009),
        ("bomb in fragments", H.DEFLATE_OFFER,
         [frame(OP_BINARY, H.deflate(bytes(4 * MiB))[:100], fin=False, rsv=4),
          C(H.deflate(bytes(4 * MiB))[100:])], 1009),
    ]
    for i, (desc, offer, frames, code) in enumerate(errs, 1):
        c.append(Case("13.2.%d" % i, desc, [send(*frames)], [], close=code, server="deflate",
                      offer=offer, answer=H.DEFLATE_ANSWER if offer else None))
    # One byte under the cap inflates and echoes (compressed).
    c.append(_deflate_echo("13.3.1", "inflates to exactly the 256 KiB cap", [("binary", bytes(256 * KiB))]))
    return c


GROUPS = {"1": group1, "2": group2, "3": group3, "4": group4, "5": group5, "6": group6, "7": group7,
          "9": group9, "10": group10, "12": group12, "13": group13}


# -- running ------------------------------------------------------------------------------------

def _short(ev):
    if ev[0] in ("text", "binary", "pong", "ping"):
        p = ev[1]
        return "%s(%d bytes%s)" % (ev[0], len(p), (": " + repr(p[:24])) if len(p) <= 24 else
                                   ": " + repr(p[:12]) + "...")
    return repr(ev)


def run_case(port, case):
    """Returns a list of failure reasons (empty = pass)."""
    if isinstance(case, _LazyBig):
        case.materialize()
    fails = []
    try:
        ws = H.RawWS(port, timeout=5.0) if case.offer is None else H.DeflateWS(port, extra=case.offer, timeout=5.0)
    except Exception as e:
        return ["handshake failed: %s" % e]
    negotiated = ws.headers.get("sec-websocket-extensions")
    if negotiated != case.answer:
        fails.append("Sec-WebSocket-Extensions %r, expected %r" % (negotiated, case.answer))
    try:
        at_boundary = True
        for st in case.steps:
            if ws.eof or ws.send_failed:
                break
            if ws.closed_by_server and at_boundary:
                break   # the server closed: answer below, send nothing more
            kind = st[0]
            if kind == "send":
                _, data, chop, delay, partial = st
                if chop:
                    for i in range(0, len(data), chop):
                        if not ws.send_raw(data[i:i + chop], timeout=case.timeout):
                            break
                        if delay:
                            time.sleep(delay)
                else:
                    ws.send_raw(data, timeout=case.timeout)
                at_boundary = not partial
            elif kind == "sleep":
                time.sleep(st[1])
            elif kind == "expect_close":
                if not ws.wait_close(st[1]):
                    fails.append("not fail-fast: expected %s within %.1fs" % (st[2], st[1]))
            elif kind == "close":
                ws.send_close(st[1], st[2])
        # echo the server's close (at a frame boundary) if we have not sent one
        if ws.closed_by_server and at_boundary and not ws.close_sent and not ws.send_failed and not ws.eof:
            code = ws.close_code()
            ws.send_close(code if code is not None else None)
        ws.wait_close(case.timeout)
        if ws.closed_by_server and at_boundary and not ws.close_sent and not ws.send_failed and not ws.eof:
            code = ws.close_code()   # the close came late (after the last step): answer it now
            ws.send_close(code if code is not None else None)
        # after the close handshake the server must close the TCP connection promptly
        eof_wait = EOF_AFTER_CLOSE if ws.closed_by_server else 0.1
        if not ws.wait_eof(eof_wait):
            fails.append("server did not close the TCP connection (%s)" % (
                "%.0fs after the close handshake" % EOF_AFTER_CLOSE if ws.closed_by_server
                else "no close frame within %.0fs" % case.timeout))
    finally:
        ws.abort()
    events = list(ws.events)
    for e in events:
        if e[0] == "violation":
            fails.append("server protocol violation: " + e[1])
    got = [e for e in events if e[0] in ("text", "binary", "pong", "ping")]
    exp = case.expect
    if got != exp:
        i = 0
        while i < min(len(got), len(exp)) and got[i] == exp[i]:
            i += 1
        fails.append("messages differ at #%d: expected %d [%s], got %d [%s]" % (
            i, len(exp), ", ".join(_short(e) for e in exp[i:i + 2]), len(got),
            ", ".join(_short(e) for e in got[i:i + 2])))
    if case.compressed is not None and getattr(ws, "compressed", 0) != case.compressed:
        fails.append("%d messages came back compressed, expected %d" % (getattr(ws, "compressed", 0), case.compressed))
    closes = [e for e in events if e[0] == "close"]
    if not closes:
        fails.append("no close frame from the server (expected code %s)" % _codes(case.close))
    elif closes[0][1] not in case.close:
        fails.append("close code %s (reason %r), expected %s" % (closes[0][1], closes[0][2][:60], _codes(case.close)))
    if isinstance(case, _LazyBig):   # free the big buffers
        case.steps, case.expect = [], []
    return fails


def _codes(s):
    return "/".join("none" if c is None else str(c) for c in sorted(s, key=lambda x: -1 if x is None else x))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wsed", default=H.wsed_binary("build"), help="wsed binary (default build/engine/wsed)")
    ap.add_argument("--node", action="store_true", help="run against the Node ws echo server instead")
    ap.add_argument("--port", type=int, help="run against an already running server on 127.0.0.1:PORT")
    ap.add_argument("--groups", default=",".join(GROUPS), help="comma list of groups (default all)")
    ap.add_argument("--case", help="regex on case ids")
    ap.add_argument("--sanitizers", action="store_true",
                    help="set ASAN/UBSAN_OPTIONS (halt_on_error=1) and check the server stderr/exit code")
    ap.add_argument("--workers", default="2", help="wsed --workers (default 2)")
    ap.add_argument("--budget", type=int, default=300, help="seconds; cases after it are counted as failed")
    ap.add_argument("--tls", action="store_true",
                    help="wsed with --tls-cert-file (a certificate made here with openssl); every case "
                         "goes through a TLS relay (tls_relay.py), so it runs unchanged over TLS")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    tls_args, tls_dir = [], None
    if args.tls:
        tls_dir = tempfile.mkdtemp(prefix="wsed-conf-tls-")
        cert, key = os.path.join(tls_dir, "cert.pem"), os.path.join(tls_dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tls_args = ["--tls-cert-file", cert, "--tls-key-file", key]

    cases = []
    for g in args.groups.split(","):
        cases += GROUPS[g.strip()]()
    if args.case:
        rx = re.compile(args.case)
        cases = [c for c in cases if rx.search(c.id)]

    passed = failed = 0
    t0 = time.monotonic()
    by_server = {}
    for c in cases:
        by_server.setdefault("node" if args.node else ("external" if args.port else c.server), []).append(c)
    for sname, scases in by_server.items():
        srv = None
        if sname == "external":
            port = args.port
        else:
            if sname == "node":
                srv = H.node_echo_server()
            else:
                env = H.SANITIZER_ENV if args.sanitizers else None
                srv = H.wsed_server(args.wsed, "--workers", args.workers, *SERVER_CONFIGS[sname], *tls_args,
                                    env=env)
            try:
                srv.start()
            except Exception as e:
                print("FAIL server[%s] did not start: %s" % (sname, e))
                failed += len(scases) + 1
                continue
            port = srv.port
            if args.verbose:
                print("# server[%s]: %s" % (sname, srv.first_line))
        relay = None
        if tls_args and srv is not None:
            relay = TlsRelay(port, cafile=os.path.join(tls_dir, "cert.pem"))
            port = relay.port
        hs_fail = 0
        for c in scases:
            t = time.monotonic()
            if hs_fail >= 3 or t - t0 > args.budget:
                failed += 1
                print("FAIL %s [%s]: not run (%s)" % (c.id, c.desc, "the server stopped answering handshakes"
                                                      if hs_fail >= 3 else "time budget of %ds used up" % args.budget))
                continue
            try:
                fails = run_case(port, c)
                hs_fail = hs_fail + 1 if fails and fails[0].startswith("handshake failed") else 0
            except Exception as e:  # harness problem: count as a failure, keep going
                fails = ["harness exception: %r" % (e,)]
            if srv is not None and not srv.alive():
                fails.append("server process died (exit code %s): %s" % (srv.proc.returncode,
                                                                           srv.stderr_text()[-600:]))
            if fails:
                failed += 1
                print("FAIL %s [%s]: %s" % (c.id, c.desc, "; ".join(fails)), flush=True)
                if srv is not None and not srv.alive():
                    break
            else:
                passed += 1
                if args.verbose:
                    print("ok   %s [%s] %.3fs" % (c.id, c.desc, time.monotonic() - t), flush=True)
        if relay is not None:
            relay.stop()
            if relay.errors and args.verbose:
                print("# relay: %d TLS errors, first: %s" % (len(relay.errors), relay.errors[0]))
        if srv is not None:
            rc = srv.stop(timeout=15)
            problems = srv.sanitizer_problems()
            cid = "server-exit[%s]" % sname
            if rc != 0 or problems:
                failed += 1
                print("FAIL %s: exit code %s after SIGTERM; sanitizer reports: %s; stderr tail: %s"
                      % (cid, rc, problems or "none", srv.stderr_text()[-1500:]))
            else:
                passed += 1
                if args.verbose:
                    print("ok   %s" % cid)
    if tls_dir:
        shutil.rmtree(tls_dir, ignore_errors=True)
    print("# %.1fs" % (time.monotonic() - t0))
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
