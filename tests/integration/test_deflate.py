"""permessage-deflate (RFC 7692) integration tests: the real wsed binary on 127.0.0.1.

Negotiation variants over raw handshakes, compressed echo of many sizes (whole and fragmented) from
a raw client that compresses with zlib (sync flush, 00 00 ff ff stripped) and inflates what comes
back, python3-websockets (offers deflate by default), the RSV1 errors (1002), bad DEFLATE data
(1007), a zip bomb (1009), --deflate-threshold, --permessage-deflate=off, and a publication
compressed once and shared by deflate subscribers on two shards while a plain one gets it plain.
Every wait is bounded; servers are stopped by PID (wsed_harness).
"""

import asyncio
import hashlib

import websockets

import test_fanout as F
import test_wse as W
import wsed_harness as H
from wsed_harness import OP_TEXT, OP_BINARY, OP_CONT, OP_PING

BIN = W.BIN
limit = H.limit
OFFER = H.DEFLATE_OFFER
ANSWER = H.DEFLATE_ANSWER
deflate = H.deflate
DeflateWS = H.DeflateWS


def echo(*args):
    return H.running(BIN, "--mode", "echo", "--workers", "1", *args, env=W.env())


def extensions_answer(port, offer):
    """The Sec-WebSocket-Extensions of the 101 answer to a handshake with these header lines."""
    c = H.RawWS(port, extra=offer) if offer is not None else H.RawWS(port)
    try:
        return c.headers.get("sec-websocket-extensions")
    finally:
        c.finish()


def payload_of(n, seed):
    """n bytes that compress (repeating JSON-ish text with a counter)."""
    out = b"".join(b'{"seq":%d,"k":"value-%d"},' % (i, (i * seed) % 13) for i in range(n // 20 + 1))
    return out[:n]


@limit(60)
def test_deflate_negotiation_variants():
    with echo() as srv:
        p = srv.port
        assert extensions_answer(p, None) is None
        assert extensions_answer(p, OFFER) == ANSWER
        assert extensions_answer(p, b"Sec-WebSocket-Extensions: permessage-deflate\r\n") == ANSWER
        assert extensions_answer(p, b'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits="10"\r\n') == ANSWER
        # A smaller server window cannot be honoured (libdeflate uses 32 KiB): the next offer.
        assert extensions_answer(p, b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10, "
                                    b"permessage-deflate; server_max_window_bits=15\r\n") == \
            ANSWER + "; server_max_window_bits=15"
        assert extensions_answer(p, b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n") is None
        assert extensions_answer(p, b"Sec-WebSocket-Extensions: permessage-deflate; mystery\r\n"
                                    b"Sec-WebSocket-Extensions: permessage-deflate\r\n") == ANSWER
        assert extensions_answer(p, b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n") is None
        assert extensions_answer(p, b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=99\r\n") is None
        m, _ = H.get_metrics(p)
        assert H.metric_value(m, "wsed_deflate_total", event="negotiated") == 5
        assert H.metric_value(m, "wsed_deflate_total", event="declined") == 3
    with echo("--permessage-deflate=off") as srv:
        assert extensions_answer(srv.port, OFFER) is None
        c = H.RawWS(srv.port, extra=OFFER)
        c.send_frame(OP_TEXT, deflate(b"hello"), rsv=4)   # RSV1 without a negotiation
        assert c.wait_close(5) and c.close_code() == 1002, c.events
        c.abort()
    rc, _, err = H.run_cmd([BIN, "--permessage-deflate=maybe"], timeout=10)
    assert rc == 2, (rc, err)


@limit(90)
def test_deflate_compressed_echo_sizes_whole_and_fragmented():
    with echo("--max-message-size", "2MiB", "--deflate-threshold", "64") as srv:
        c = DeflateWS(srv.port)
        assert c.negotiated == ANSWER, c.negotiated
        sizes = [0, 1, 16, 63, 64, 125, 126, 1000, 4096, 65535, 65536, 131072, 1 << 20]
        expected = []
        for i, n in enumerate(sizes):
            data = payload_of(n, i + 1)
            op = OP_TEXT if i % 2 == 0 else OP_BINARY
            z = deflate(data)
            assert c.send_frame(op, z, rsv=4)
            expected.append(("text" if op == OP_TEXT else "binary", data))
            # The same message in 1, 2 and 7 fragments: RSV1 on the first frame only.
            for parts in (2, 7):
                step = max(1, len(z) // parts)
                chunks = [z[k:k + step] for k in range(0, len(z), step)] or [b""]
                for j, ch in enumerate(chunks):
                    assert c.send_frame(op if j == 0 else OP_CONT, ch, fin=j == len(chunks) - 1,
                                        rsv=4 if j == 0 else 0)
                expected.append(expected[-1])
            # A ping between compressed messages is answered plain.
            assert c.send_frame(OP_PING, b"p%d" % i)
        # And an uncompressed message on the same connection is fine too.
        assert c.send_frame(OP_TEXT, b"plain after compressed")
        expected.append(("text", b"plain after compressed"))
        assert c.wait_messages(len(expected), 30), "got %d of %d" % (len(c.messages()), len(expected))
        got = c.messages()
        for k, (e, g) in enumerate(zip(expected, got)):
            assert e == g, "message %d: %s %d bytes vs %s %d bytes" % (k, e[0], len(e[1]), g[0], len(g[1]))
        assert not [e for e in c.events if e[0] == "violation"], c.events
        pongs = [e for e in c.events if e[0] == "pong"]
        assert len(pongs) == len(sizes)
        # Echoes under the 64-byte threshold came back plain, the rest compressed.
        plain_small = sum(3 for n in sizes if len(payload_of(n, 1)) < 64) + 1
        assert c.compressed == len(expected) - plain_small, (c.compressed, len(expected), plain_small)
        m, _ = H.get_metrics(srv.port)
        mv = lambda name, **kw: H.metric_value(m, name, **kw)
        assert mv("wsed_deflate_total", event="inflated") == 3 * len(sizes)
        assert mv("wsed_deflate_total", event="compressed") == c.compressed
        assert mv("wsed_deflate_total", event="below_threshold") == plain_small
        assert mv("wsed_deflate_in_bytes_total") == 3 * sum(len(payload_of(n, 1)) for n in sizes)
        assert mv("wsed_deflate_out_wire_bytes_total") < mv("wsed_deflate_out_bytes_total") / 5
        c.finish()


@limit(60)
def test_deflate_rsv1_errors_bad_data_and_bomb():
    with echo("--max-message-size", "64KiB") as srv:
        def closes_with(code, *frames):
            c = DeflateWS(srv.port)
            for f in frames:
                c.send_raw(f)
            assert c.wait_close(5), c.events
            got = c.close_code()
            c.abort()
            assert got == code, "expected close %d, got %r (%r)" % (code, got, c.events[-3:])

        z = deflate(b"hello hello hello")
        closes_with(1002, H.frame(OP_TEXT, z[:3], fin=False, rsv=4), H.frame(OP_CONT, z[3:], rsv=4))
        closes_with(1002, H.frame(OP_PING, b"x", rsv=4))
        closes_with(1002, H.frame(OP_TEXT, z, rsv=2))   # RSV2 is never negotiated
        closes_with(1007, H.frame(OP_TEXT, b"\xff\xfe\xfd\xfc", rsv=4))   # not DEFLATE
        closes_with(1007, H.frame(OP_TEXT, deflate(b"ok \xc3\x28 not utf-8"), rsv=4))
        # 16 MiB of zeros compress to ~16 KiB, under the 64 KiB wire cap; inflated: a bomb.
        bomb = deflate(bytes(16 << 20))
        assert len(bomb) < 64 << 10
        closes_with(1009, H.frame(OP_BINARY, bomb, rsv=4))
        # Exactly the cap inflates and echoes.
        c = DeflateWS(srv.port)
        c.send_frame(OP_BINARY, deflate(bytes(64 << 10)), rsv=4)
        assert c.wait_messages(1, 5) and c.messages() == [("binary", bytes(64 << 10))], c.events[-2:]
        c.finish()
        m, _ = H.get_metrics(srv.port)
        assert H.metric_value(m, "wsed_deflate_total", event="bad_data") == 1
        assert H.metric_value(m, "wsed_limit_hits_total", limit="max_message_size") == 1
        assert srv.alive()


@limit(60)
def test_deflate_python_websockets_echo():
    with echo() as srv:
        async def go():
            async with websockets.connect("ws://127.0.0.1:%d/" % srv.port, max_size=None, open_timeout=5,
                                          close_timeout=5, ping_interval=None) as ws:
                assert ws.response_headers.get("Sec-WebSocket-Extensions") == ANSWER, ws.response_headers
                for n in (0, 10, 1023, 1024, 3000, 70000, 1000000):
                    s = W_utf8(n)
                    await ws.send(s)
                    assert await asyncio.wait_for(ws.recv(), 10) == s, n
                    b = hashlib.shake_256(b"%d" % n).digest(n) if n else b""   # incompressible
                    await ws.send(b)
                    assert await asyncio.wait_for(ws.recv(), 10) == b, n
            assert ws.close_code == 1000
        asyncio.run(asyncio.wait_for(go(), 40))
        m, _ = H.get_metrics(srv.port)
        mv = lambda **kw: H.metric_value(m, "wsed_deflate_total", **kw)
        assert mv(event="negotiated") == 1
        assert mv(event="compressed") >= 4 and mv(event="incompressible") >= 4 and mv(event="below_threshold") >= 2


def W_utf8(n):
    import test_wsed
    return test_wsed.utf8_str(n, n)


@limit(60)
def test_deflate_publication_compressed_once_shared():
    with F.fan() as srv:
        port = srv.port
        clients = []
        auth = ("Authorization: Bearer %s\r\n" % W.token("alice")).encode()
        # Deflate subscribers on both shards (connections spread over SO_REUSEPORT listeners) and
        # one plain subscriber.
        for _ in range(6):
            clients.append(DeflateWS(port, path="/wse", extra=OFFER + auth))
        plain = H.RawWS(port, path="/wse", extra=auth)
        for c in clients + [plain]:
            assert c.wait_messages(1, 5), "no server_ready"
            c.send_frame(OP_TEXT, F.compact({"c": "WSE", "t": "subscription_update",
                                             "p": {"action": "subscribe", "topics": ["news"]}, "v": 1}))
            assert c.wait_messages(2, 5), "no subscription reply"
        assert all(c.negotiated == ANSWER for c in clients)
        before = [c.compressed for c in clients]   # server_ready / the reply may be compressed too
        message = {"t": "story", "p": {"text": "all the news " * 200}}
        small = {"t": "tiny", "p": {"n": 1}}
        for msg in (message, small):
            status, _, doc = F.post_once(port, [{"topic": "news", "message": msg}])
            assert status == 200 and doc == {"accepted": 1}, (status, doc)
        for c in clients + [plain]:
            assert c.wait_messages(4, 5), c.events
            got = [e[1] for e in c.messages()[2:]]
            assert got == [F.wire(message), F.wire(small)], c.events[-4:]
            assert not [e for e in c.events if e[0] == "violation"], c.events
        # Each deflate subscriber got the big publication compressed; the small one plain.
        assert [c.compressed - b for c, b in zip(clients, before)] == [1] * len(clients), \
            [c.compressed for c in clients]
        m, _ = H.get_metrics(port)
        mv = lambda **kw: H.metric_value(m, "wsed_deflate_total", **kw)
        per_shard = [H.metric_value(m, "wsed_deflate_total", shard=str(i), event="shared_delivered") for i in (0, 1)]
        assert mv(event="shared_made") == 1, "the publication was compressed more than once"
        assert mv(event="shared_delivered") == len(clients)
        assert all(n > 0 for n in per_shard), "deflate subscribers all on one shard: %r" % per_shard
        for c in clients + [plain]:
            c.finish()
