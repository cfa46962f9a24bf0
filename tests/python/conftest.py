"""Shared fixtures for the wsed Python module's server tests.

The module is imported from $WSED_PYTHON_DIR (default <repo>/build/python); if it cannot be
imported the whole run fails (nothing is skipped). Clients are real WebSocket clients
(Debian's python3-websockets, asyncio API) on 127.0.0.1, driven from one background asyncio
loop thread so that the test body can stay synchronous and block in server calls (stop(),
drain(), drain_inbound()) while the clients keep answering close handshakes.

Every wait is bounded (TIMEOUT seconds by default); conditions are polled with a deadline.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import queue
import re
import socket
import sys
import threading
import time
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON_DIR = os.path.abspath(os.environ.get("WSED_PYTHON_DIR", os.path.join(REPO, "build", "python")))

if not os.path.isdir(PYTHON_DIR):
    raise RuntimeError(
        "WSED_PYTHON_DIR=%s is not a directory: build the module (meson/ninja) and point "
        "WSED_PYTHON_DIR at <build>/python" % PYTHON_DIR)
sys.path.insert(0, PYTHON_DIR)
try:
    import wsed  # noqa: E402
    import wsed.compat  # noqa: E402
except Exception as exc:  # fail loudly: never skip because the module is missing
    raise RuntimeError("cannot import the wsed module from WSED_PYTHON_DIR=%s: %r" % (PYTHON_DIR, exc)) from exc
if not os.path.abspath(wsed.__file__).startswith(PYTHON_DIR + os.sep):
    raise RuntimeError("wsed was imported from %s, not from WSED_PYTHON_DIR=%s" % (wsed.__file__, PYTHON_DIR))

import websockets  # noqa: E402  (python3-websockets, asyncio API)

RustWSEServer = wsed.compat.RustWSEServer

TIMEOUT = 5.0
SECRET = b"wsed-python-tests-secret-0123456789abcdef"  # >= 32 bytes (HS256)
HOST = "127.0.0.1"

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(user="alice", secret=SECRET, ttl=600, **claims):
    """An HS256 JWT made here with the standard library (RFC 7519), independent of the module's
    own rust_jwt_encode (and of PyJWT, whose import loads python3-cryptography's Rust bindings,
    which LeakSanitizer reports under the ASan build)."""
    body = {"sub": user, "exp": int(time.time()) + ttl}
    body.update(claims)
    signing_input = (_b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "."
                     + _b64url(json.dumps(body).encode()))
    key = secret if isinstance(secret, bytes) else secret.encode()
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(sig)


def bearer(user="alice", **claims):
    return {"Authorization": "Bearer " + make_token(user, **claims)}


def wait_until(predicate, timeout=TIMEOUT, what="condition", interval=0.01):
    """Polls predicate() until it is truthy (returns its value) or fails after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last value %r)" % (timeout, what, last))
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def as_text(frame):
    return frame.decode("utf-8") if isinstance(frame, (bytes, bytearray)) else frame


def parse(frame):
    """A received frame as JSON (text, or binary holding plain JSON); legacy WSE prefix dropped."""
    text = as_text(frame)
    if text.startswith("WSE{"):
        text = text[3:]
    return json.loads(text)


# --- the asyncio loop the clients live on -----------------------------------------------------

class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ws-clients", daemon=True)
        self.thread.start()

    def run(self, coro, timeout=TIMEOUT):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise AssertionError("client operation did not finish within %.1fs" % timeout)

    def close(self):
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.run(cancel_all(), timeout=TIMEOUT)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)


class Closed(Exception):
    pass


class Client:
    """A websockets client whose frames are collected by a reader task on the loop thread."""

    def __init__(self, aloop, url, headers=None):
        self.aloop = aloop
        self.url = url
        self.frames = queue.Queue()
        self.closed = threading.Event()
        self.close_code = None
        self.close_reason = None
        self.conn_id = None
        self.ready = None

        async def open_and_read():
            ws = await websockets.connect(url, extra_headers=headers or {}, open_timeout=TIMEOUT,
                                          ping_interval=None, close_timeout=2, max_size=None,
                                          compression=None)
            asyncio.get_running_loop().create_task(self._read(ws))
            return ws

        self.ws = aloop.run(open_and_read())

    async def _read(self, ws):
        try:
            while True:
                self.frames.put(await ws.recv())
        except websockets.ConnectionClosed:
            pass
        except Exception as exc:  # recorded for the test's error message
            self.frames.put(exc)
        finally:
            self.close_code = ws.close_code
            self.close_reason = ws.close_reason
            self.closed.set()
            self.frames.put(Closed())

    # receiving
    def recv(self, timeout=TIMEOUT):
        try:
            item = self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no frame within %.1fs on %s" % (timeout, self.url))
        if isinstance(item, Closed):
            self.frames.put(item)  # stays closed for later calls
            raise Closed("connection closed (code %r, reason %r)" % (self.close_code, self.close_reason))
        if isinstance(item, Exception):
            raise item
        return item

    def recv_json(self, timeout=TIMEOUT):
        return parse(self.recv(timeout))

    def next_of(self, t, timeout=TIMEOUT):
        """The next JSON message (text frame, or binary plain JSON) whose "t" is t."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            try:
                msg = parse(frame)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(msg, dict) and msg.get("t") == t:
                return msg

    def until_marker(self, marker, timeout=TIMEOUT):
        """Every frame received before the text frame equal to marker (which is consumed)."""
        deadline = time.monotonic() + timeout
        before = []
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame == marker:
                return before
            before.append(frame)

    def no_frames_left(self):
        """Frames already received and not yet read (does not wait)."""
        out = []
        while True:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, Closed):
                self.frames.put(item)
                return out
            out.append(item)

    # sending
    def send(self, data):
        self.aloop.run(self.ws.send(data))

    def send_json(self, obj):
        self.send(json.dumps(obj))

    def close(self, code=1000, reason=""):
        if not self.closed.is_set():
            try:
                self.aloop.run(self.ws.close(code, reason), timeout=TIMEOUT)
            except Exception:
                pass
        self.wait_closed()

    def wait_closed(self, timeout=TIMEOUT):
        if not self.closed.wait(timeout):
            raise AssertionError("connection not closed within %.1fs" % timeout)
        return self.close_code, self.close_reason

    def abort(self):
        """Drop the TCP connection without a close handshake."""
        def kill():
            if self.ws.transport is not None:
                self.ws.transport.abort()
        self.aloop.loop.call_soon_threadsafe(kill)


# --- inbound events (drain mode) ----------------------------------------------------------------

ANY = object()


class Events:
    """drain_inbound() with memory: wait() takes the first matching event, leaving the others."""

    def __init__(self, server):
        self.server = server
        self.pending = []
        self.seen = []

    def pull(self, timeout_ms=0):
        batch = self.server.drain_inbound(256, int(timeout_ms))
        assert isinstance(batch, list), batch
        for ev in batch:
            assert isinstance(ev, tuple) and len(ev) == 3, ev
        self.pending.extend(batch)
        self.seen.extend(batch)
        return batch

    @staticmethod
    def _matches(ev, kind, conn_id, pred):
        return ((kind is ANY or ev[0] == kind) and (conn_id is ANY or ev[1] == conn_id)
                and (pred is None or pred(ev)))

    def wait(self, kind=ANY, conn_id=ANY, pred=None, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.pending):
                if self._matches(ev, kind, conn_id, pred):
                    del self.pending[i]
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s event for %s within %.1fs; last events seen: %r"
                                     % (kind if kind is not ANY else "any", conn_id if conn_id is not ANY else "any",
                                        timeout, self.seen[-20:]))
            self.pull(max(1, min(100, left * 1000)))

    def wait_msg(self, conn_id, t, timeout=TIMEOUT):
        return self.wait("msg", conn_id, lambda ev: isinstance(ev[2], dict) and ev[2].get("t") == t, timeout)

    def of(self, conn_id):
        return [ev for ev in self.seen if ev[1] == conn_id]


# --- a server under test with its clients -------------------------------------------------------

class Harness:
    def __init__(self, server, aloop):
        self.server = server
        self.aloop = aloop
        self.events = Events(server)
        self.clients = []

    @property
    def port(self):
        return self.server.local_port()

    def url(self, query=""):
        return "ws://%s:%d/wse%s" % (HOST, self.port, ("?" + query) if query else "")

    def client(self, headers=None, query=""):
        """A connected client; nothing is read from it."""
        c = Client(self.aloop, self.url(query), headers)
        self.clients.append(c)
        return c

    def connect(self, user="alice", headers=None, cookie=None, query="", **claims):
        """A client that passed the handshake: its first frame (server_ready) is read and its
        connection id taken from it. user=None sends no token."""
        h = dict(headers or {})
        if user is not None:
            h.update(bearer(user, **claims))
        if cookie is not None:
            h["Cookie"] = cookie
        c = self.client(h, query)
        first = c.recv()
        assert isinstance(first, str), "server_ready must be a text frame, got %r" % (first,)
        ready = json.loads(first)
        assert ready.get("t") == "server_ready", ready
        c.ready = ready
        c.conn_id = ready["p"]["details"]["connection_id"]
        return c

    def marker(self, client):
        """Sends a unique text frame to client through send() and returns it (a barrier: frames
        the server queued for client before it arrive before it)."""
        m = json.dumps({"t": "barrier", "p": {"k": uuid.uuid4().hex}})
        self.server.send(client.conn_id, m)
        return m

    def frames_before_barrier(self, client, timeout=TIMEOUT):
        return client.until_marker(self.marker(client), timeout)

    def subscriber_count(self, topic, n, timeout=TIMEOUT):
        return wait_until(lambda: self.server.get_topic_subscriber_count(topic) == n, timeout,
                          "get_topic_subscriber_count(%r) == %d (is %r)"
                          % (topic, n, self.server.get_topic_subscriber_count(topic)))

    def close(self):
        for c in self.clients:
            if not c.closed.is_set():
                c.abort()
        if self.server.is_running():
            self.server.stop()


@pytest.fixture(scope="session")
def aloop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def make_server(aloop):
    """make_server(drain=True, start=True, **options) -> Harness. Options default to JWT auth
    with SECRET (jwt_secret=None turns it off); the server listens on a free port of 127.0.0.1."""
    made = []

    def make(drain=True, start=True, host=HOST, port=0, **options):
        options.setdefault("jwt_secret", SECRET)
        s = RustWSEServer(host, port, **options)
        if drain:
            s.enable_drain_mode()
        if start:
            s.start()
        h = Harness(s, aloop)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def h(make_server):
    """A started drain-mode server with JWT auth (SECRET)."""
    return make_server()
