"""Shared test harness for wsed integration and conformance tests.

Stdlib only (runs under /usr/bin/python3).  Provides:
  * Server       - start a server process (wsed or the node ws echo server) on --port 0,
                   parse the port from its first stdout line without blocking forever,
                   stop it by PID (SIGTERM, wait, SIGKILL on timeout), keep stderr.
  * raw HTTP     - raw_request(), parse_http_response(), http_get(), get_metrics().
  * RawWS        - a raw-socket WebSocket client: hand-built masked frames, a reader thread that
                   parses (unmasked) server frames into events, reassembling fragmented messages.
Everything here is bounded in time; only 127.0.0.1 is ever contacted.
"""

import atexit
import contextlib
import base64
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib

HOST = "127.0.0.1"
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PORT_RE = re.compile(rb"wss?://[^:/]+:(\d+)")   # ws:// or, with TLS, wss://
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "UndefinedBehaviorSanitizer",
    "ThreadSanitizer",
)

SANITIZER_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:abort_on_error=0:exitcode=66:detect_leaks=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=67",
    "LSAN_OPTIONS": "exitcode=68",
}

# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

_live = set()
_live_lock = threading.Lock()


def _kill_leftovers():
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


atexit.register(_kill_leftovers)


def track(proc):
    """Adds proc to the processes killed at exit if still running."""
    with _live_lock:
        _live.add(proc)


def stop_process(proc, timeout, sig=signal.SIGTERM):
    """Stop proc by PID: sig, wait up to timeout, SIGKILL (then wait up to 5 s); drops it from
    the leftover list. Returns True when it had to be SIGKILLed."""
    killed = False
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            killed = True
    with _live_lock:
        _live.discard(proc)
    return killed


def wsed_binary(build_dir="build"):
    b = build_dir if os.path.isabs(build_dir) else os.path.join(REPO, build_dir)
    return os.path.join(b, "engine", "wsed")


def startup_event(line):
    """The JSON startup event ({"event":"listening","url":...,"msg":...}) of a stdout line, or None
    for a text line (wsed's --log-format text, or another server)."""
    if not line.startswith("{"):
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "msg" in doc else None


class ServerError(Exception):
    pass


class Server:
    """A server process whose first stdout line names ws://HOST:PORT/."""

    def __init__(self, argv, env=None, startup_timeout=15.0, name=None):
        self.argv = [str(a) for a in argv]
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        self.startup_timeout = startup_timeout
        self.name = name or os.path.basename(self.argv[0])
        self.proc = None
        self.port = None
        self.first_line = None       # the startup line ("wsed 0.1.0 listening on ws://...")
        self.startup_event = None    # that line's JSON event, when wsed logs JSON
        self.stdout_lines = []
        self.stderr_chunks = []
        self._port_event = threading.Event()
        self._threads = []
        self.returncode = None
        self.killed = False

    # -- readers (threads so that nothing blocks forever) --
    def _read_stdout(self):
        for line in iter(self.proc.stdout.readline, b""):
            self.stdout_lines.append(line)
            if self.port is None:
                m = PORT_RE.search(line)
                if m:
                    self.first_line = line.decode("utf-8", "replace").rstrip("\n")
                    self.startup_event = startup_event(self.first_line)
                    if self.startup_event is not None:   # JSON (stdout not a terminal): its msg
                        self.first_line = self.startup_event["msg"]
                    self.port = int(m.group(1))
                    self._port_event.set()
        self._port_event.set()

    def _read_stderr(self):
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
            self.stderr_chunks.append(chunk)

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=self.env, cwd=REPO)
        track(self.proc)
        for fn in (self._read_stdout, self._read_stderr):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self._threads.append(t)
        if not self._port_event.wait(self.startup_timeout) or self.port is None:
            rc = self.proc.poll()
            self.stop(timeout=3)
            raise ServerError("%s did not print its port within %.0fs (exit code %s); stdout=%r stderr=%r"
                              % (self.name, self.startup_timeout, rc, b"".join(self.stdout_lines)[:500],
                                 self.stderr_text()[-2000:]))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        """Wait for exit; return exit code or None on timeout."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._join()
        return self.returncode

    def _join(self):
        for t in self._threads:
            t.join(timeout=2)

    def stop(self, timeout=12.0, sig=signal.SIGTERM):
        """Stop by PID: signal, wait up to timeout, SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if stop_process(self.proc, timeout, sig):
            self.killed = True
        self.returncode = self.proc.returncode
        self._join()
        return self.returncode

    def stderr_text(self):
        return b"".join(self.stderr_chunks).decode("utf-8", "replace")

    def sanitizer_problems(self):
        err = self.stderr_text()
        return [m for m in SANITIZER_MARKERS if m in err]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wsed_server(binary, *args, env=None, **kw):
    return Server([binary, "--host", HOST, "--port", "0"] + [str(a) for a in args], env=env, **kw)


def node_echo_server(*args):
    return Server(["node", os.path.join(REPO, "tests", "node", "echo_server.js"), "--port", "0"]
                  + list(args), name="node-ws-echo")


def run_cmd(argv, timeout=10.0, env=None):
    """Run a short command; returns (rc, stdout, stderr). rc None on timeout (process killed)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=e, cwd=REPO)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=5)
        return None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# raw HTTP
# ---------------------------------------------------------------------------------------------

def connect(port, timeout=5.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_until_eof(s, timeout=5.0, limit=64 << 20):
    """Read until EOF or timeout. Returns (data, got_eof)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(buf), False
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            return bytes(buf), False
        except (ConnectionResetError, BrokenPipeError):
            return bytes(buf), True
        if not d:
            return bytes(buf), True
        buf += d
    return bytes(buf), False


def raw_request(port, data, timeout=5.0):
    """Send raw bytes, read the reply until the server closes (or timeout)."""
    s = connect(port, timeout)
    try:
        try:
            s.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass
        return recv_until_eof(s, timeout)
    finally:
        s.close()


def read_response_head(s, timeout=5.0):
    """Read an HTTP response head from socket s: (status, headers, bytes after the header
    block). Stops at the blank line, EOF or the timeout."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    st, headers, _, _ = parse_http_response(head + b"\r\n\r\n")
    return st, headers, rest


def parse_http_response(raw):
    """Returns (status:int|None, headers: dict lower->value (last wins), header_list, body)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, [], raw
    lines = head.split(b"\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
    status = int(m.group(1)) if m else None
    headers, hlist = {}, []
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().decode("latin-1").lower()
        v = v.strip().decode("latin-1")
        headers[k] = v
        hlist.append((k, v))
    if "content-length" in headers:
        try:
            body = body[:int(headers["content-length"])]
        except ValueError:
            pass
    return status, headers, hlist, body


def http_get(port, path, timeout=5.0, extra=b""):
    req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + extra + b"\r\n"
    raw, _ = raw_request(port, req, timeout)
    return parse_http_response(raw)


_METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{name: [(labels dict, value float), ...]}"""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = _METRIC_LINE.match(ln)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            val = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((labels, val))
    return out


def get_metrics(port, timeout=5.0):
    status, _, _, body = http_get(port, "/metrics", timeout)
    if status != 200:
        raise AssertionError("GET /metrics -> %r" % (status,))
    return parse_metrics(body.decode("utf-8", "replace")), body.decode("utf-8", "replace")


def metric_value(metrics, name, **labels):
    """Sum of the series of `name` whose labels include `labels` (None if no such series)."""
    vals = [v for (lab, v) in metrics.get(name, []) if all(lab.get(k) == str(x) for k, x in labels.items())]
    return sum(vals) if vals else None


# ---------------------------------------------------------------------------------------------
# WebSocket frames
# ---------------------------------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def mask_bytes(data, key):
    n = len(data)
    if n == 0:
        return b""
    k = (key * ((n + 3) // 4))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, key=None):
    """Build one client frame (masked by default)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return hdr + payload
    key = key if key is not None else os.urandom(4)
    return hdr + key + mask_bytes(payload, key)


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


def handshake_request(port, key=None, path="/", extra=b""):
    key = key or base64.b64encode(os.urandom(16)).decode()
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (path, port, key)).encode()
    return req + extra + b"\r\n", key


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


class RawWS:
    """Raw WebSocket client. Events (in self.events, in arrival order):
         ('text', bytes) ('binary', bytes)      reassembled data messages
         ('ping', bytes) ('pong', bytes)
         ('close', code|None, reason bytes)      server close frame
         ('violation', str)                      the server broke the protocol (masked frame, ...)
         ('eof',)                                TCP closed by the server (or reset)
    """

    def __init__(self, port, timeout=5.0, path="/", extra=b""):
        self.port = port
        self.sock = connect(port, timeout)
        req, key = handshake_request(port, path=path, extra=extra)
        self.sock.sendall(req)
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\r\n\r\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("handshake timed out; got %r" % buf[:300])
            self.sock.settimeout(left)
            d = self.sock.recv(65536)
            if not d:
                raise AssertionError("EOF during handshake; got %r" % buf[:300])
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        status, headers, _, _ = parse_http_response(head + b"\r\n\r\n")
        if status != 101:
            raise AssertionError("handshake status %r: %r" % (status, head[:300]))
        if headers.get("sec-websocket-accept") != accept_for(key):
            raise AssertionError("bad Sec-WebSocket-Accept %r" % headers.get("sec-websocket-accept"))
        self.headers = headers
        self.sock.setblocking(False)
        self.events = []
        self.event_times = []
        self.cond = threading.Condition()
        self.closed_by_server = False   # close frame received
        self.eof = False
        self.close_sent = False
        self.send_failed = False
        self._buf = bytearray(rest)
        self._frag_op = None
        self._frag = []
        self._stop = False
        self._send_lock = threading.Lock()
        self.reader = threading.Thread(target=self._reader, daemon=True)
        self.reader.start()

    # -- receiving --
    def _event(self, ev):
        with self.cond:
            self.events.append(ev)
            self.event_times.append(time.monotonic())
            if ev[0] == "close":
                self.closed_by_server = True
            elif ev[0] == "eof":
                self.eof = True
            self.cond.notify_all()

    def _reader(self):
        try:
            self._parse()
            while not self._stop:
                r, _, _ = select.select([self.sock], [], [], 0.1)
                if not r:
                    continue
                try:
                    d = self.sock.recv(4 << 20)
                except (BlockingIOError, InterruptedError):
                    continue
                except (ConnectionResetError, OSError):
                    d = b""
                if not d:
                    self._event(("eof",))
                    return
                self._buf += d
                self._parse()
        except Exception as e:  # pragma: no cover - a harness bug must not hang the test
            self._event(("violation", "reader crashed: %r" % (e,)))
            self._event(("eof",))

    def _parse(self):
        buf = self._buf
        while True:
            if len(buf) < 2:
                return
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = struct.unpack_from("!H", buf, 2)[0]
                off = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                off = 10
            masked = bool(b1 & 0x80)
            if masked:
                off += 4
            if len(buf) < off + n:
                return
            payload = bytes(buf[off:off + n])
            if masked:
                payload = mask_bytes(payload, bytes(buf[off - 4:off]))
            del buf[:off + n]
            self._frame(b0, b1, payload, masked)

    def _frame(self, b0, b1, payload, masked):
        fin = bool(b0 & 0x80)
        rsv = (b0 >> 4) & 7
        op = b0 & 0xF
        if self.closed_by_server:
            self._event(("violation", "frame op=%d after server close" % op))
        if masked:
            self._event(("violation", "server frame is masked (op=%d)" % op))
        if rsv:
            self._event(("violation", "server frame has RSV=%d (op=%d)" % (rsv, op)))
        if op >= 8:
            if not fin or len(payload) > 125:
                self._event(("violation", "bad server control frame op=%d fin=%s len=%d" % (op, fin, len(payload))))
            if op == OP_CLOSE:
                if len(payload) == 0:
                    self._event(("close", None, b""))
                elif len(payload) == 1:
                    self._event(("violation", "1-byte close payload from server"))
                    self._event(("close", None, b""))
                else:
                    code = struct.unpack("!H", payload[:2])[0]
                    try:
                        payload[2:].decode("utf-8")
                    except UnicodeDecodeError:
                        self._event(("violation", "server close reason is not UTF-8"))
                    self._event(("close", code, payload[2:]))
            elif op == OP_PING:
                self._event(("ping", payload))
            elif op == OP_PONG:
                self._event(("pong", payload))
            else:
                self._event(("violation", "reserved control opcode %d from server" % op))
            return
        if op == OP_CONT:
            if self._frag_op is None:
                self._event(("violation", "continuation without start from server"))
                return
            self._frag.append(payload)
        elif op in (OP_TEXT, OP_BINARY):
            if self._frag_op is not None:
                self._event(("violation", "new data frame inside fragmented message from server"))
            self._frag_op = op
            self._frag = [payload]
        else:
            self._event(("violation", "reserved data opcode %d from server" % op))
            return
        if fin:
            data = b"".join(self._frag)
            kind = "text" if self._frag_op == OP_TEXT else "binary"
            if kind == "text":
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    self._event(("violation", "server text message is not UTF-8"))
            self._frag_op, self._frag = None, []
            self._event((kind, data))

    # -- sending --
    def send_raw(self, data, timeout=10.0):
        """Send bytes fully; returns False if the connection failed (reset/closed/timeout)."""
        mv = memoryview(data)
        deadline = time.monotonic() + timeout
        with self._send_lock:
            while len(mv):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.send_failed = True
                    return False
                try:
                    _, w, _ = select.select([], [self.sock], [], min(left, 0.2))
                    if not w:
                        continue
                    n = self.sock.send(mv[:1 << 20])
                    mv = mv[n:]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self.send_failed = True
                    return False
        return True

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, timeout=10.0):
        return self.send_raw(frame(opcode, payload, fin=fin, rsv=rsv), timeout)

    def send_close(self, code=1000, reason=b""):
        self.close_sent = True
        return self.send_raw(frame(OP_CLOSE, close_payload(code, reason)), 5.0)

    # -- waiting --
    def wait_for(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def wait_messages(self, n, timeout):
        return self.wait_for(lambda s: sum(1 for e in s.events if e[0] in ("text", "binary")) >= n
                             or s.eof, timeout)

    def wait_close(self, timeout):
        return self.wait_for(lambda s: s.closed_by_server or s.eof, timeout)

    def wait_eof(self, timeout):
        return self.wait_for(lambda s: s.eof, timeout)

    def close_code(self):
        for e in self.events:
            if e[0] == "close":
                return e[1]
        return None

    def messages(self):
        return [e for e in self.events if e[0] in ("text", "binary")]

    def abort(self):
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the reader's select at once
        except OSError:
            pass
        self.reader.join(timeout=2)
        try:
            self.sock.close()
        except OSError:
            pass

    def finish(self, timeout=5.0):
        """Normal close: send close 1000 (if not yet), wait for the server to close TCP, stop."""
        if not self.close_sent and not self.send_failed:
            self.send_close(1000)
        self.wait_eof(timeout)
        self.abort()


# permessage-deflate (RFC 7692) on the client side, for raw tests.
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
DEFLATE_ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def deflate(data):
    """What a zlib sender puts on the wire for one message (no context takeover): raw DEFLATE,
    sync flush, its 00 00 ff ff stripped."""
    c = zlib.compressobj(wbits=-15)
    z = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert z.endswith(b"\x00\x00\xff\xff")
    return z[:-4]


class DeflateWS(RawWS):
    """A RawWS that offers permessage-deflate (extra carries the offer): a server data frame with
    RSV1 (FIN set: the server never fragments) is inflated and counted in self.compressed, when
    the server accepted the offer; RSV1 anywhere else stays a violation (RawWS)."""

    def __init__(self, port, extra=DEFLATE_OFFER, **kw):
        self.compressed = 0
        super().__init__(port, extra=extra, **kw)
        self.negotiated = self.headers.get("sec-websocket-extensions")

    def _frame(self, b0, b1, payload, masked):
        if (b0 & 0x70) == 0x40 and (b0 & 0x0F) in (OP_TEXT, OP_BINARY) and (b0 & 0x80) \
                and self.headers.get("sec-websocket-extensions"):   # set before the reader starts
            self.compressed += 1
            payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
            b0 &= ~0x40
        super()._frame(b0, b1, payload, masked)


def limit(seconds):
    """Decorator: the test's time limit in seconds (run_tests.py kills it after that)."""
    def deco(fn):
        fn.time_limit = seconds
        return fn
    return deco


def upgrade(port, req, source=HOST, timeout=5.0):
    """Send the upgrade request req from address source: (status, the socket left open on a 101,
    else None and the socket closed)."""
    s = socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0))
    try:
        s.sendall(req)
        status = read_response_head(s, timeout)[0]
    except BaseException:
        s.close()
        raise
    if status != 101:
        s.close()
        return status, None
    return status, s


@contextlib.contextmanager
def supervised(srv, check_exit=True):
    """Starts the Server srv; on exit stops it with SIGTERM, then checks: exit code 0 (unless
    check_exit is false) and no sanitizer report on stderr."""
    srv.start()
    ok = False
    try:
        yield srv
        ok = True
    finally:
        rc = srv.stop(timeout=15)
        problems = srv.sanitizer_problems()
        if ok and check_exit:
            assert rc == 0, "%s exited with %s after SIGTERM; stderr tail: %s" % (srv.name, rc, srv.stderr_text()[-1500:])
        assert not problems, "sanitizer report %s: %s" % (problems, srv.stderr_text()[-3000:])


def running(binary, *args, env=None, check_exit=True):
    """wsed started with args (and env), under supervised()."""
    return supervised(wsed_server(binary, *args, env=env), check_exit=check_exit)


# ---------------------------------------------------------------------------------------------
# fan-out helpers (issue 8): many WebSocket clients without a thread each, bulk draining, HTTP
# keep-alive / pipelining
# ---------------------------------------------------------------------------------------------

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for flags that take ADDR:PORT)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def server_frame(opcode, payload, fin=True):
    """The bytes of one unmasked (server-to-client) frame."""
    return frame(opcode, payload, fin=fin, mask=False)


def frame_at(buf, off=0):
    """The server frame starting at buf[off]: (fin, opcode, payload, masked, size in bytes), or
    None when buf does not hold all of it yet."""
    total = len(buf) - off
    if total < 2:
        return None
    b0, b1 = buf[off], buf[off + 1]
    n = b1 & 0x7F
    h = 2
    if n == 126:
        if total < 4:
            return None
        n = struct.unpack_from("!H", buf, off + 2)[0]
        h = 4
    elif n == 127:
        if total < 10:
            return None
        n = struct.unpack_from("!Q", buf, off + 2)[0]
        h = 10
    masked = bool(b1 & 0x80)
    if masked:
        h += 4
    if total < h + n:
        return None
    payload = bytes(buf[off + h:off + h + n])
    if masked:
        payload = mask_bytes(payload, bytes(buf[off + h - 4:off + h]))
    return bool(b0 & 0x80), b0 & 0x0F, payload, masked, h + n


def split_frames(buf):
    """Parse server frames from the front of buf: ([(fin, opcode, payload, masked)], bytes used).
    A trailing incomplete frame is left unparsed."""
    out = []
    off = 0
    while True:
        f = frame_at(buf, off)
        if f is None:
            return out, off
        out.append(f[:4])
        off += f[4]


class WSClient:
    """A raw-socket WebSocket client with no reader thread, for tests that hold many connections:
    frames are read on demand (next_message) or the socket is drained in bulk into self.buf
    (Drainer). timeout bounds every blocking call. rcvbuf: SO_RCVBUF set before connecting."""

    def __init__(self, port, path="/", extra=b"", rcvbuf=None, timeout=5.0):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req, key = handshake_request(port, path=path, extra=extra)
        self.sock.sendall(req)
        status, headers, rest = read_response_head(self.sock, timeout)
        if status != 101:
            self.sock.close()
            raise AssertionError("handshake status %r for %s" % (status, path))
        if headers.get("sec-websocket-accept") != accept_for(key):
            self.sock.close()
            raise AssertionError("bad Sec-WebSocket-Accept %r" % headers.get("sec-websocket-accept"))
        self.buf = bytearray(rest)
        self.eof = False
        self.timeout = timeout

    def fileno(self):
        return self.sock.fileno()

    def recv_some(self, timeout):
        """One recv into self.buf: True if bytes came, False on timeout or EOF (self.eof set)."""
        if self.eof:
            return False
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return False
        try:
            d = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return False
        except OSError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def next_frame(self, timeout=None):
        """The next frame as (fin, opcode, payload), ("eof",) or None on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            f = frame_at(self.buf)
            if f is not None:
                fin, op, payload, masked, size = f
                del self.buf[:size]
                if masked:
                    raise AssertionError("server frame is masked (op=%d)" % op)
                return fin, op, payload
            if self.eof:
                return ("eof",)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.recv_some(left)

    def next_message(self, timeout=None):
        """The next data message or control frame: ("text"|"binary", bytes), ("close", code,
        reason), ("ping"|"pong", bytes), ("eof",), or None on timeout. Reassembles fragments."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        parts, kind = [], None
        while True:
            f = self.next_frame(max(0.0, deadline - time.monotonic()))
            if f is None or f[0] == "eof":
                return f
            fin, op, payload = f
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return ("close", code, payload[2:])
            if op == OP_PING:
                return ("ping", payload)
            if op == OP_PONG:
                return ("pong", payload)
            if op in (OP_TEXT, OP_BINARY):
                kind = "text" if op == OP_TEXT else "binary"
                parts = [payload]
            else:
                parts.append(payload)
            if fin:
                return (kind, b"".join(parts))

    def send_text(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(frame(OP_TEXT, data))

    def send_close(self, code=1000):
        try:
            self.sock.sendall(frame(OP_CLOSE, close_payload(code)))
        except OSError:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def http_request_bytes(method, path, body=None, headers=(), version="HTTP/1.1", content_length=True):
    """One HTTP request: Host header, Content-Length for a body (unless content_length is false),
    then the extra headers (list of (name, value))."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    lines = ["%s %s %s" % (method, path, version), "Host: 127.0.0.1"]
    if body is not None and content_length:
        lines.append("Content-Length: %d" % len(body))
    lines += ["%s: %s" % (k, v) for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class HttpConn:
    """One client HTTP connection kept open: send requests (pipelined or not), read the answers in
    order. read_response() needs Content-Length on answers (absent: reads to EOF)."""

    def __init__(self, port, timeout=10.0):
        self.sock = connect(port, timeout)
        self.buf = bytearray()
        self.eof = False
        self.timeout = timeout

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(1 << 20)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read_response(self, timeout=None):
        """(status, headers dict, body bytes), or None on timeout / EOF before a whole answer."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                return None
        i = self.buf.index(b"\r\n\r\n") + 4
        status, headers, _, _ = parse_http_response(bytes(self.buf[:i]))
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < i + n:
                if not self._fill(deadline):
                    return None
        else:
            while self._fill(deadline):
                pass
            if not self.eof:
                return None
            n = len(self.buf) - i
        body = bytes(self.buf[i:i + n])
        del self.buf[:i + n]
        return status, headers, body

    def wait_eof(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not self.eof and self._fill(deadline):
            pass
        return self.eof

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Drainer:
    """A thread reading every client's socket (select, 1 MiB recvs) until stop() or `timeout`,
    so that many subscribers keep up with the server while the test publishes. By default the
    bytes go to each client's .buf. With expect (a bytearray the test extends with what must
    arrive, before publishing it) they are compared as they come and dropped, so that streams of
    many MiB need no memory: client.got counts the bytes, client.bad holds the first difference
    (offset, bytes got, bytes expected) or None. wait_all(n) waits until each client has n bytes."""

    def __init__(self, clients, timeout=60.0, expect=None):
        self.clients = list(clients)
        self.expect = expect
        for c in self.clients:
            c.got = len(c.buf)
            c.bad = None
            if expect is not None and c.buf:
                self._check(c, bytes(c.buf))
                c.buf.clear()
        self.deadline = time.monotonic() + timeout
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _check(self, c, d):
        off = c.got - len(d)
        if c.bad is None and self.expect[off:off + len(d)] != d:
            want = bytes(self.expect[off:off + len(d)])
            i = next((k for k in range(len(d)) if k >= len(want) or d[k] != want[k]), len(d))
            c.bad = (off + i, d[max(0, i - 40):i + 80], want[max(0, i - 40):i + 80])

    def _run(self):
        live = {c.fileno(): c for c in self.clients if not c.eof}
        while live and not self._stop.is_set() and time.monotonic() < self.deadline:
            r, _, _ = select.select(list(live.values()), [], [], 0.05)
            for c in r:
                try:
                    d = c.sock.recv(1 << 20)
                except (BlockingIOError, InterruptedError, socket.timeout):
                    continue
                except OSError:
                    d = b""
                if not d:
                    c.eof = True
                    del live[c.fileno()]
                    continue
                c.got += len(d)
                if self.expect is None:
                    c.buf += d
                else:
                    self._check(c, d)

    def wait_all(self, nbytes, timeout):
        """True once every client holds nbytes (False on timeout, or a client hit EOF short)."""
        deadline = time.monotonic() + timeout
        while True:
            short = [c for c in self.clients if c.got < nbytes]
            if not short:
                return True
            if all(c.eof for c in short) or time.monotonic() > deadline or not self.thread.is_alive():
                return False
            time.sleep(0.005)

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)
