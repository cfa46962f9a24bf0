"""wsed's own interface: wsed.Server (keyword options, context manager, port), wsed.Event and
the asyncio helpers (anext_events, aevents)."""
import asyncio
import json

import pytest
import websockets

import wsed
from conftest import SECRET, TIMEOUT, Client, bearer, wait_until


def ws_url(server):
    return "ws://127.0.0.1:%d/" % server.port


def connect(aloop, server, user="alice"):
    c = Client(aloop, ws_url(server), bearer(user))
    ready = json.loads(c.recv())
    assert ready["t"] == "server_ready"
    c.conn_id = ready["p"]["details"]["connection_id"]
    return c


def events_until(server, pred, timeout=TIMEOUT):
    got = []
    wait_until(lambda: got.extend(server.events(timeout=0.05)) or any(pred(e) for e in got), timeout,
               "a matching event (got %r)" % got)
    return got


def test_server_is_a_rust_wse_server_with_keyword_options():
    s = wsed.Server(jwt_secret=SECRET, recovery_enabled=True, presence_enabled=True)
    assert isinstance(s, wsed.RustWSEServer)
    assert wsed.RustWSEServer is wsed.compat.RustWSEServer
    assert s.port == 0  # the configured port before start
    assert s.is_running() is False
    with s:
        snap = s.health_snapshot()
        assert snap["recovery_enabled"] is True and snap["presence_enabled"] is True
    assert isinstance(wsed.__version__, str) and wsed.__version__


def test_bad_options_raise():
    with pytest.raises(ValueError):
        wsed.Server(jwt_secret=b"short")
    with pytest.raises(TypeError):
        wsed.Server(no_such_option=True)


def test_context_manager_starts_and_stops(aloop):
    with wsed.Server(jwt_secret=SECRET) as s:
        assert s.is_running()
        assert 0 < s.port == s.local_port()
        c = connect(aloop, s)
    assert s.is_running() is False
    assert c.wait_closed()[0] == 1001


def test_context_manager_stops_on_an_exception(aloop):
    with pytest.raises(KeyError):
        with wsed.Server(jwt_secret=SECRET) as s:
            c = connect(aloop, s)
            raise KeyError("boom")
    assert s.is_running() is False
    assert c.wait_closed()[0] == 1001


def test_default_host_is_loopback():
    with wsed.Server(jwt_secret=SECRET) as s:
        import socket
        with socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT):
            pass


def test_events_are_event_namedtuples(aloop):
    with wsed.Server(jwt_secret=SECRET) as s:
        assert s.events(timeout=0.01) == []
        c = connect(aloop, s)
        c.send_json({"t": "hi", "p": {"x": 1}})
        got = events_until(s, lambda e: e.kind == "msg")
        assert all(isinstance(e, wsed.Event) for e in got)
        first = got[0]
        assert isinstance(first, tuple)
        assert first == ("auth_connect", c.conn_id, "alice")
        assert (first.kind, first.conn_id, first.data) == ("auth_connect", c.conn_id, "alice")
        kind, conn_id, data = got[-1]
        assert (kind, conn_id, data) == ("msg", c.conn_id, {"t": "hi", "p": {"x": 1}})
        assert wsed.Event._fields == ("kind", "conn_id", "data")
        c.close()
        got = events_until(s, lambda e: e.kind == "disconnect")
        assert got[-1] == wsed.Event("disconnect", c.conn_id, None)


def test_events_include_a_client_that_connected_before_the_first_call(aloop):
    with wsed.Server(jwt_secret=SECRET) as s:
        c = connect(aloop, s)  # before events() was ever called
        got = events_until(s, lambda e: e.kind == "auth_connect")
        assert got[0] == ("auth_connect", c.conn_id, "alice")


def test_events_max_count(aloop):
    with wsed.Server(jwt_secret=SECRET) as s:
        s.events(timeout=0.01)
        c = connect(aloop, s)
        for i in range(5):
            c.send_json({"t": "n", "p": {"i": i}})
        wait_until(lambda: s.inbound_queue_depth() == 6, what="6 queued events")
        assert len(s.events(max_count=2)) == 2
        assert len(s.events(max_count=10)) == 4


def test_methods_work_through_the_wrapper(aloop):
    with wsed.Server(jwt_secret=SECRET) as s:
        s.events(timeout=0.01)
        c = connect(aloop, s)
        assert s.get_connections() == [c.conn_id]
        n = s.send_event(c.conn_id, {"t": "hello", "p": {}})
        frame = c.recv()
        assert n == len(frame) and json.loads(frame)["t"] == "hello"
        s.subscribe_connection(c.conn_id, ["room"])
        s.broadcast("room", '{"t":"pub"}')
        assert c.recv() == '{"c":"U","t":"pub"}'


def test_anext_events_in_asyncio():
    async def scenario(s):
        async with websockets.connect(ws_url(s), extra_headers=bearer("bob"), open_timeout=TIMEOUT,
                                      compression=None) as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            conn_id = ready["p"]["details"]["connection_id"]
            await ws.send(json.dumps({"t": "async_hi", "p": {}}))
            got = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while not any(e.kind == "msg" for e in got):
                assert loop.time() < deadline, "no msg event: %r" % got
                batch = await s.anext_events(timeout=0.1)
                assert isinstance(batch, list)
                got.extend(batch)
            assert all(isinstance(e, wsed.Event) for e in got)
            assert [tuple(e) for e in got] == [("auth_connect", conn_id, "bob"),
                                              ("msg", conn_id, {"t": "async_hi", "p": {}})]
            # the loop is not blocked while waiting: the client still talks meanwhile
            waiting = asyncio.ensure_future(s.anext_events(timeout=2.0))
            await ws.send(json.dumps({"t": "during_wait", "p": {}}))
            batch = await asyncio.wait_for(waiting, TIMEOUT)
            assert batch and batch[0].data == {"t": "during_wait", "p": {}}

    with wsed.Server(jwt_secret=SECRET) as s:
        s.events(timeout=0.01)
        asyncio.run(asyncio.wait_for(scenario(s), 3 * TIMEOUT))


def test_aevents_in_asyncio_until_stop():
    async def scenario(s):
        seen = []

        async def consume():
            async for ev in s.aevents(timeout=0.1):
                seen.append(ev)

        consumer = asyncio.ensure_future(consume())
        async with websockets.connect(ws_url(s), extra_headers=bearer("carol"), open_timeout=TIMEOUT,
                                      compression=None) as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            conn_id = ready["p"]["details"]["connection_id"]
            for i in range(3):
                await ws.send(json.dumps({"t": "a", "p": {"i": i}}))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while len([e for e in seen if e.kind == "msg"]) < 3:
                assert loop.time() < deadline, "aevents did not yield the messages: %r" % seen
                await asyncio.sleep(0.02)
            assert seen[0] == ("auth_connect", conn_id, "carol")
            assert [e.data["p"]["i"] for e in seen if e.kind == "msg"] == [0, 1, 2]
            # aevents ends once the server stops
            await loop.run_in_executor(None, s.stop)
            await asyncio.wait_for(consumer, TIMEOUT)
        assert consumer.done() and consumer.exception() is None

    s = wsed.Server(jwt_secret=SECRET)
    s.start()
    try:
        s.events(timeout=0.01)
        asyncio.run(asyncio.wait_for(scenario(s), 3 * TIMEOUT))
    finally:
        s.stop()
    assert s.is_running() is False
