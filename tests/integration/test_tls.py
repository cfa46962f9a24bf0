"""TLS on wsed's main port (--tls-cert-file / --tls-key-file / --tls-ca-file): wss:// and https://.

Certificates are made here with the openssl CLI in a temporary directory: a CA, a server
certificate it signed (CN localhost, SAN localhost + 127.0.0.1), a second one with another subject
(the reload test), a client certificate it signed, an unrelated second CA (and a client certificate
of it); the expired server certificate is made with Debian's python3-cryptography (openssl 3.0's
CLI cannot backdate). Clients: python3-websockets over ssl, http.client over https, and a small raw
TLS WebSocket client (TLSWS below) where bytes must be controlled.

Run with tests/integration/run_tests.py -k tls_ (under /usr/bin/python3). Only 127.0.0.1; every
wait is bounded; every server started here is stopped by PID.
"""

import asyncio
import atexit
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time

import test_fanout as F
import test_wse as W
import wsed_harness as H
from wsed_harness import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

BIN = W.BIN
limit = H.limit
HOST = H.HOST

# ---------------------------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_certs = None


def _openssl(d, *args):
    p = subprocess.run(["openssl"] + list(args), cwd=d, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30)
    assert p.returncode == 0, "openssl %s: %s" % (" ".join(args), p.stderr.decode("utf-8", "replace"))


def _key(d, name):
    _openssl(d, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name)


def _ca(d, name, subject):
    _key(d, name + ".key")
    _openssl(d, "req", "-x509", "-new", "-key", name + ".key", "-out", name + ".pem", "-days", "3",
             "-subj", subject, "-config", "openssl.cnf", "-extensions", "v3_ca")


def _leaf(d, name, subject, ca, ext, days="2"):
    _key(d, name + ".key")
    _openssl(d, "req", "-new", "-key", name + ".key", "-out", name + ".csr", "-subj", subject,
             "-config", "openssl.cnf")
    _openssl(d, "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
             "-CAcreateserial", "-days", days, "-extfile", "openssl.cnf", "-extensions", ext,
             "-out", name + ".pem")


def _expired(d, name, ca):
    """A server certificate signed by ca that expired yesterday (python3-cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress
    with open(os.path.join(d, ca + ".pem"), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(d, ca + ".key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "expired")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=3))
            .not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    with open(os.path.join(d, name + ".pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(d, name + ".key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def certs():
    """{name: path} of the test PKI (made once per process)."""
    global _certs
    if _certs is None:
        d = tempfile.mkdtemp(prefix="wsed-tls-")
        atexit.register(shutil.rmtree, d, True)
        with open(os.path.join(d, "openssl.cnf"), "w") as f:
            f.write(_OPENSSL_CNF)
        _ca(d, "ca", "/CN=wsed test CA")
        _ca(d, "other_ca", "/CN=unrelated test CA")
        _leaf(d, "server", "/O=wsed A/CN=localhost", "ca", "v3_server")
        _leaf(d, "server_b", "/O=wsed B/CN=localhost", "ca", "v3_server")
        _leaf(d, "client", "/CN=test client", "ca", "v3_client")
        _leaf(d, "client_other", "/CN=client of another CA", "other_ca", "v3_client")
        _expired(d, "expired", "ca")
        c = {"dir": d}
        for n in ("ca", "other_ca", "server", "server_b", "client", "client_other", "expired"):
            c[n] = os.path.join(d, n + ".pem")
            c[n + "_key"] = os.path.join(d, n + ".key")
        _certs = c
    return _certs


def der_of(pem_path):
    with open(pem_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def client_ctx(ca="ca", version=None, cert=None, alpn=None):
    """A verifying client context (hostname checked: 127.0.0.1 is in the SAN)."""
    c = certs()
    ctx = ssl.create_default_context(cafile=c[ca])
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if cert:
        ctx.load_cert_chain(c[cert], c[cert + "_key"])
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_server(*args, cert="server", mode="echo", workers=2, **kw):
    """wsed with TLS on the main port (under H.running: exit 0 on SIGTERM, no sanitizer report)."""
    c = certs()
    tls = ["--tls-cert-file", c[cert], "--tls-key-file", c[cert + "_key"]] if cert else []
    m = ["--mode", mode] + (["--ping-interval", "0", "--compression-threshold", "0"] if mode == "wse" else [])
    return H.running(BIN, *m, "--workers", str(workers), *tls, *args, env=W.env(), **kw)


# ---------------------------------------------------------------------------------------------
# clients
# ---------------------------------------------------------------------------------------------

def tls_connect(port, ctx=None, timeout=5.0, rcvbuf=None):
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(timeout)
    try:
        raw.connect((HOST, port))
    except BaseException:
        raw.close()
        raise
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return (ctx or client_ctx()).wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


class TLSWS:
    """A blocking raw WebSocket client over one TLS socket (no thread): masked frames out, server
    frames parsed on demand. self.sock is the ssl socket; its fileno() is the TCP socket."""

    def __init__(self, port, ctx=None, path="/", extra=b"", timeout=10.0, rcvbuf=None):
        self.sock = tls_connect(port, ctx, timeout, rcvbuf)
        req, key = H.handshake_request(port, path=path, extra=extra)
        self.sock.sendall(req)
        self.buf = bytearray()
        self.eof = False
        self.eof_how = None
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(deadline), "no upgrade answer over TLS (%s, %s); got %r" % (
                self.sock.version(), "EOF: %s" % self.eof_how if self.eof else "timeout", bytes(self.buf[:300]))
        i = self.buf.index(b"\r\n\r\n") + 4
        status, headers, _, _ = H.parse_http_response(bytes(self.buf[:i]))
        del self.buf[:i]
        if status != 101 or headers.get("sec-websocket-accept") != H.accept_for(key):
            self.sock.close()
            raise AssertionError("upgrade over TLS: status %r headers %r" % (status, headers))

    def _fill(self, deadline):
        """One read: True if bytes came; False on EOF (self.eof) or the deadline."""
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(1 << 20)
        except socket.timeout:
            return False
        except (ssl.SSLError, OSError) as e:
            self.eof = True
            self.eof_how = "error: %r" % (e,)
            return False
        if not d:
            self.eof = True
            self.eof_how = "close_notify"   # the ssl module returns b"" only on a close_notify
            return False
        self.buf += d
        return True

    def send_frame(self, op, payload=b""):
        self.sock.sendall(H.frame(op, payload))

    def next_message(self, timeout=5.0):
        """("text"|"binary"|"ping"|"pong", bytes), ("close", code, reason), ("eof",) or None."""
        deadline = time.monotonic() + timeout
        parts, kind = [], None
        while True:
            f = H.frame_at(self.buf)
            if f is None:
                if self.eof:
                    return ("eof",)
                if not self._fill(deadline):
                    if self.eof:
                        return ("eof",)
                    return None
                continue
            fin, op, payload, masked, size = f
            del self.buf[:size]
            assert not masked, "masked server frame"
            if op == OP_CLOSE:
                return ("close", struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None, payload[2:])
            if op in (OP_PING, OP_PONG):
                return ("ping" if op == OP_PING else "pong", payload)
            if op in (OP_TEXT, OP_BINARY):
                kind, parts = ("text" if op == OP_TEXT else "binary"), [payload]
            else:
                parts.append(payload)
            if fin:
                return (kind, b"".join(parts))

    def echo(self, payload, timeout=5.0):
        """Echo mode: a text message comes back unchanged."""
        self.send_frame(OP_TEXT, payload)
        m = self.next_message(timeout)
        assert m == ("text", payload), "echo of %r over TLS: %r" % (payload[:50], m if m is None else m[:2])

    def wait_eof(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            if not self._fill(deadline) and not self.eof:
                break
            self.buf.clear()
        return self.eof

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def https_request(port, method, path, body=None, headers=None, ctx=None, timeout=10.0):
    """(status, headers dict lower-case, body bytes) over https."""
    conn = http.client.HTTPSConnection(HOST, port, context=ctx or client_ctx(), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def tls_metrics(port):
    status, _, body = https_request(port, "GET", "/metrics")
    assert status == 200, "GET /metrics over https -> %s" % status
    return H.parse_metrics(body.decode("utf-8", "replace"))


def metric(m, name, **labels):
    """A metric's process-wide value: the sum of its series (per shard) that carry labels."""
    return H.metric_value(m, name, **labels)


def tls_counters(port):
    m = tls_metrics(port)
    return {"ok": metric(m, "wsed_tls_handshakes_total", result="ok"),
            "failed": metric(m, "wsed_tls_handshakes_total", result="failed"),
            "plain_http": metric(m, "wsed_tls_handshakes_total", result="plain_http"),
            "record_errors": metric(m, "wsed_tls_record_errors_total"),
            "reload_ok": metric(m, "wsed_tls_reloads_total", result="ok"),
            "reload_failed": metric(m, "wsed_tls_reloads_total", result="failed")}


def wait_counter(port, name, want, timeout=5.0):
    """Until tls_counters(port)[name] >= want (the counters are updated on the shards' threads and
    read by /metrics: a short bounded poll). Returns the last counters."""
    deadline = time.monotonic() + timeout
    while True:
        c = tls_counters(port)
        if c[name] is not None and c[name] >= want:
            return c
        assert time.monotonic() < deadline, "%s stayed %r (want >= %r): %r" % (name, c[name], want, c)
        time.sleep(0.05)


def run_async(coro, timeout):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_connect(port, ctx, path="/wse", headers=None, **kw):
    import websockets
    return websockets.connect("wss://127.0.0.1:%d%s" % (port, path), ssl=ctx, open_timeout=10, close_timeout=5,
                              extra_headers=headers or {}, max_size=16 << 20, ping_interval=None, **kw)


def bearer(sub="alice"):
    return {"Authorization": "Bearer " + W.token(sub)}


def expect_handshake_refused(port, ctx, what):
    """The TLS handshake of a client with ctx fails (with TLS 1.3 a refused client certificate
    shows on the first read): the ssl error."""
    try:
        s = tls_connect(port, ctx)
    except (ssl.SSLError, ConnectionResetError) as e:
        return e
    try:
        s.settimeout(5)
        try:
            s.sendall(H.handshake_request(port)[0])
            d = s.recv(1024)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            return e
        raise AssertionError("%s: the TLS connection was accepted (read %r)" % (what, d[:100]))
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# 1. wss:// basics, TLS 1.2 and 1.3, ALPN
# ---------------------------------------------------------------------------------------------

async def _wse_session(port, version):
    ctx = client_ctx(version=version, alpn=["http/1.1"])
    async with ws_connect(port, ctx, headers=bearer("alice")) as ws:
        sslobj = ws.transport.get_extra_info("ssl_object")
        info = (sslobj.version(), sslobj.selected_alpn_protocol())
        ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ready["t"] == "server_ready" and ready["p"]["details"]["user_id"] == "alice", ready
        await ws.send('{"c":"WSE","t":"ping","p":{"timestamp":42},"v":1}')
        pong = await asyncio.wait_for(ws.recv(), 5)
        assert pong.startswith('{"c":"WSE","t":"PONG"') and json.loads(pong)["p"]["client_timestamp"] == 42, pong
        # 1 MiB of application payload, echoed (--inbound echo) as a "U" message with the same p.
        big = "".join(chr(0x61 + (i * 7) % 26) for i in range(1 << 20))
        await ws.send(json.dumps({"t": "big", "p": {"data": big}}))
        echo = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert echo["t"] == "big" and echo["c"] == "U" and echo["p"]["data"] == big, \
            "1 MiB echo differs (%d bytes back)" % len(echo.get("p", {}).get("data", ""))
        # Many messages pipelined: all sent before the first echo is read, back in order.
        n = 500
        for i in range(n):
            await ws.send('{"t":"n","p":{"i":%d,"pad":"%s"}}' % (i, "x" * (i % 300)))
        got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(n)]
        assert [g["p"]["i"] for g in got] == list(range(n)), [g["p"]["i"] for g in got][:20]
        assert all(g["p"]["pad"] == "x" * (g["p"]["i"] % 300) for g in got)
        await ws.close()
        assert ws.close_code == 1000, ws.close_code
    # The same context without ALPN: nothing selected, the connection works.
    async with ws_connect(port, client_ctx(version=version), headers=bearer("bob")) as ws:
        assert ws.transport.get_extra_info("ssl_object").selected_alpn_protocol() is None
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["t"] == "server_ready"
    return info


@limit(60)
def test_tls_wss_ping_1mib_echo_pipelined_tls12_tls13_alpn():
    with tls_server("--inbound", "echo", "--max-message-size", "4MiB",
                    "--max-outbound-bytes", "16MiB", mode="wse") as srv:
        assert "wss://127.0.0.1:%d/" % srv.port in srv.first_line, srv.first_line
        before = tls_counters(srv.port)
        for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            got_version, alpn = run_async(_wse_session(srv.port, version), 40)
            assert got_version == name, "asked for %s, negotiated %s" % (name, got_version)
            assert alpn == "http/1.1", "ALPN http/1.1 offered, %r selected" % alpn
        after = tls_counters(srv.port)
        # 4 WebSocket sessions + the /metrics request after `before`.
        assert after["ok"] - before["ok"] >= 5 and after["failed"] == before["failed"], (before, after)
        # A TLS 1.1 client is refused at the handshake (the server offers 1.2 and 1.3).
        ctx = client_ctx()
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            tls_connect(srv.port, ctx).close()
            raise AssertionError("a TLS 1.1 handshake succeeded")
        except (ssl.SSLError, ConnectionResetError):
            pass


# ---------------------------------------------------------------------------------------------
# 2. publications: POST /api/publish over https, subscribers on wss
# ---------------------------------------------------------------------------------------------

async def _subscribers(port, n, published, published_big):
    ctx = client_ctx()
    socks = []

    async def one(i):
        ws = await ws_connect(port, ctx, headers=bearer("sub%d" % i))
        socks.append(ws)
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["t"] == "server_ready"
        if i < 5:
            await ws.send(F.compact({"c": "WSE", "t": "subscription_update",
                                     "p": {"action": "subscribe", "topics": ["news"]}, "v": 1}))
            F.check_reply((await asyncio.wait_for(ws.recv(), 10)).encode(), "subscribe")
        return ws
    try:
        clients = []
        for k in range(0, n, 50):   # 50 handshakes at a time
            clients += await asyncio.gather(*(one(i) for i in range(k, min(n, k + 50))))
        await asyncio.get_running_loop().run_in_executor(None, published)
        got = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 20) for ws in clients[:5]))
        assert all(json.loads(g)["p"] == {"n": 1} and json.loads(g)["t"] == "flash" for g in got), got[:2]
        got = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 20) for ws in clients))
        bad = [g for g in got if json.loads(g)["t"] != "all" or json.loads(g)["p"] != {"n": 2}]
        assert not bad and len(got) == n, "broadcast: %d of %d right; e.g. %r" % (n - len(bad), n, bad[:1])
        # A large broadcast (over --share-frames-from: one shared frame, encrypted per connection).
        big = {"t": "big", "p": {"blob": "".join("%05d" % i for i in range(20000))}}
        await asyncio.get_running_loop().run_in_executor(None, published_big, big)
        got = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 30) for ws in clients))
        bad = [i for i, g in enumerate(got) if g.encode() != F.wire(big)]
        assert not bad, "large broadcast: %d of %d differ (e.g. client %d)" % (len(bad), n, bad[0])
        return len(got)
    finally:
        await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)


@limit(90)
def test_tls_publish_over_https_reaches_200_wss_subscribers():
    with tls_server("--api-key-file", F.key_file(), "--max-outbound-bytes", "4MiB", mode="wse") as srv:
        def published():
            items = [{"topic": "news", "message": {"t": "flash", "p": {"n": 1}}},
                     {"broadcast": True, "message": {"t": "all", "p": {"n": 2}}}]
            status, headers, body = https_request(srv.port, "POST", "/api/publish", body=F.compact(items),
                                                  headers={"Authorization": "Bearer " + F.API_KEY,
                                                           "Content-Type": "application/json"})
            assert status == 200, (status, body[:300])
            assert headers.get("content-type", "").startswith("application/json"), headers
        def published_big(message):
            status, _, body = https_request(srv.port, "POST", "/api/publish",
                                            body=F.compact([{"broadcast": True, "message": message}]),
                                            headers={"Authorization": "Bearer " + F.API_KEY})
            assert status == 200, (status, body[:300])
        assert run_async(_subscribers(srv.port, 200, published, published_big), 75) == 200
        # Keep-alive over https: several requests on one TLS connection.
        conn = http.client.HTTPSConnection(HOST, srv.port, context=client_ctx(), timeout=10)
        try:
            for _ in range(3):
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                r.read()
                assert r.status == 200, r.status
            assert conn.sock is not None, "the https connection was not kept alive"
        finally:
            conn.close()
        # The API over https refuses a wrong key as it does over http.
        status, _, _ = https_request(srv.port, "POST", "/api/publish", body="[]",
                                     headers={"Authorization": "Bearer wrong-key-0123456789abcdef"})
        assert status == 401, status


def _wse_tls_client(port, sub, rcvbuf=None):
    c = TLSWS(port, path="/wse", extra=("Authorization: Bearer %s\r\n" % W.token(sub)).encode(), rcvbuf=rcvbuf)
    m = c.next_message(5)
    assert m and m[0] == "text" and json.loads(m[1])["t"] == "server_ready", m
    c.send_frame(OP_TEXT, F.compact({"c": "WSE", "t": "subscription_update",
                                     "p": {"action": "subscribe", "topics": ["big"]}, "v": 1}).encode())
    m = c.next_message(5)
    assert m and m[0] == "text", m
    F.check_reply(m[1], "subscribe")
    return c


@limit(90)
def test_tls_slow_consumer_disconnect_4509_whole_records():
    """A wss subscriber that never reads is closed as a slow consumer (--max-outbound-bytes); when
    it reads at last, its TLS stream holds whole frames, a prefix of the publications, then close
    4509 and a close_notify. A reading wss subscriber gets everything."""
    with tls_server("--api-key-file", F.key_file(), "--max-outbound-bytes", "64KiB", mode="wse") as srv:
        stuck = _wse_tls_client(srv.port, "stuck", rcvbuf=4096)
        fast = _wse_tls_client(srv.port, "fast")
        conn = http.client.HTTPSConnection(HOST, srv.port, context=client_ctx(), timeout=10)
        sent, closed = [], 0
        try:
            for step in range(160):   # at most 640 publications of 16 KB (10 MB)
                for _ in range(4):
                    msg = {"t": "m", "p": {"i": len(sent), "pad": "p" * 16000}}
                    conn.request("POST", "/api/publish", body=F.compact([{"topic": "big", "message": msg}]),
                                 headers={"Authorization": "Bearer " + F.API_KEY})
                    r = conn.getresponse()
                    body = r.read()
                    assert r.status == 200, (r.status, body[:200])
                    sent.append(F.wire(msg))
                    m = fast.next_message(10)
                    assert m == ("text", sent[-1]), "the reading subscriber: %r" % (m if m is None else m[:1],)
                closed = metric(tls_metrics(srv.port), "wsed_connections_closed_total", reason="slow_consumer") or 0
                if closed:
                    break
        finally:
            conn.close()
        assert closed == 1, "a wss client that never reads was not closed after %d publications of 16 KB" % len(sent)
        frames, code = [], None
        while True:
            m = stuck.next_message(5)
            assert m is not None, "the stuck client's stream stopped after %d frames (no close)" % len(frames)
            if m[0] != "text":
                break
            frames.append(m[1])
        assert m[0] == "close" and m[1] == 4509, "after %d frames: %r (%s)" % (len(frames), m[:2], stuck.eof_how)
        assert frames == sent[:len(frames)] and len(frames) < len(sent), \
            "the slow consumer's %d frames are not a prefix of the %d publications" % (len(frames), len(sent))
        stuck.send_frame(OP_CLOSE, H.close_payload(4509))
        assert stuck.wait_eof(5) and stuck.eof_how == "close_notify", stuck.eof_how
        stuck.close()
        fast.close()


# ---------------------------------------------------------------------------------------------
# 3. plain HTTP on the TLS port
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_tls_plain_http_and_ws_get_clear_text_400():
    with tls_server() as srv:
        before = tls_counters(srv.port)
        keep = TLSWS(srv.port)
        keep.echo(b"before")
        for req in (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                    H.handshake_request(srv.port)[0],
                    b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n[]"):
            data, eof = H.raw_request(srv.port, req, timeout=5)
            status, headers, _, body = H.parse_http_response(data)
            assert status == 400, "plain %r on the TLS port: %r" % (req[:20], data[:200])
            assert b"This port speaks TLS" in body and headers.get("content-type", "").startswith("text/plain"), data
            assert eof, "the socket was not closed after the 400 (%r)" % req[:20]
        keep.echo(b"after")
        after = wait_counter(srv.port, "plain_http", before["plain_http"] + 3)
        assert after["plain_http"] == before["plain_http"] + 3, (before, after)
        assert after["failed"] == before["failed"], (before, after)
        keep.close()


@limit(30)
def test_tls_plain_http_other_methods_get_clear_text_400():
    """Every plain HTTP method gets the clear-text 400, not only those OpenSSL itself recognises
    (GET, POST, HEAD, PUT): OPTIONS, DELETE, PATCH and CONNECT too; and a plain request arriving
    a few bytes at a time."""
    with tls_server() as srv:
        before = tls_counters(srv.port)
        wrong = []
        for method in (b"GET", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"PATCH", b"CONNECT"):
            data, eof = H.raw_request(srv.port, method + b" / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=5)
            if H.parse_http_response(data)[0] != 400 or b"This port speaks TLS" not in data or not eof:
                wrong.append((method.decode(), data[:40], eof))
        s = H.connect(srv.port)
        for piece in (b"G", b"ET", b" /", b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
            s.sendall(piece)
        data, eof = H.recv_until_eof(s, 5)
        s.close()
        if H.parse_http_response(data)[0] != 400 or not eof:
            wrong.append(("GET in 4 pieces", data[:40], eof))
        # The request and the client's FIN together (one write, then SHUT_WR at once): the EOF may
        # reach the server in the same batch as the request; the answer still goes out.
        for _ in range(20):
            s = H.connect(srv.port)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            data, eof = H.recv_until_eof(s, 5)
            s.close()
            if H.parse_http_response(data)[0] != 400 or not eof:
                wrong.append(("GET then FIN", data[:40], eof))
                break
        assert not wrong, "plain HTTP on the TLS port without the 400 answer (method, reply, EOF): %r" % wrong
        after = tls_counters(srv.port)
        assert after["plain_http"] - before["plain_http"] == 28 and after["failed"] == before["failed"], (before, after)


class MemTLS:
    """A client TLS session over memory BIOs on a raw TCP socket: the test decides how the
    ciphertext is cut into TCP writes."""

    def __init__(self, port, version=None):
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = client_ctx(version=version).wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")
        self.sock = H.connect(port)
        self.plain = bytearray()

    def send(self, data, bytewise=False):
        if bytewise:
            for i in range(len(data)):
                self.sock.sendall(data[i:i + 1])
        else:
            self.sock.sendall(data)

    def _recv(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        d = self.sock.recv(65536)
        assert d, "EOF from the server"
        self.inc.write(d)

    def handshake(self, bytewise=False, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                return
            except ssl.SSLWantReadError:
                pass
            self.send(self.out.read(), bytewise)
            assert time.monotonic() < deadline, "TLS handshake over memory BIOs timed out"
            self._recv(deadline)

    def write(self, data):
        """Encrypts data; returns the ciphertext (with anything pending, e.g. the Finished)."""
        self.obj.write(data)
        return self.out.read()

    def read_until(self, marker, timeout=5.0):
        deadline = time.monotonic() + timeout
        while marker not in self.plain:
            try:
                while True:
                    self.plain += self.obj.read(65536)
            except ssl.SSLWantReadError:
                pass
            if marker in self.plain:
                break
            assert time.monotonic() < deadline, "no %r; got %r" % (marker, bytes(self.plain[:200]))
            self._recv(deadline)
        return bytes(self.plain)


@limit(30)
def test_tls_bytes_cut_anyhow_by_tcp():
    """The ClientHello and every later record one byte per TCP write; the upgrade request and a
    first frame in one TCP write, with the client's Finished too in TLS 1.3 (in TLS 1.2 right
    after the server's Finished); one WebSocket frame split over many TLS records."""
    with tls_server() as srv:
        c = MemTLS(srv.port)
        c.handshake(bytewise=True)
        req, _ = H.handshake_request(srv.port)
        c.send(c.write(req + H.frame(OP_TEXT, b"bytewise")), bytewise=True)
        got = c.read_until(b"bytewise")
        assert got.startswith(b"HTTP/1.1 101 ") and got.endswith(H.server_frame(OP_TEXT, b"bytewise")), got[-40:]
        c.sock.close()
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            c = MemTLS(srv.port, version)
            try:
                c.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            c.send(c.out.read())
            deadline = time.monotonic() + 5
            while True:   # until the client's side is done; its last flight is not sent yet
                c._recv(deadline)
                try:
                    c.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if c.out.pending:   # TLS 1.2: the client's flight, before the server's Finished
                        c.send(c.out.read())
            if version == ssl.TLSVersion.TLSv1_3:
                assert c.out.pending, "TLS 1.3: the client's Finished should be waiting to go out"
            c.send(c.write(req + H.frame(OP_TEXT, b"coalesced %d" % version)))   # one TCP write
            got = c.read_until(b"coalesced %d" % version)
            assert got.startswith(b"HTTP/1.1 101 "), got[:60]
            c.sock.close()
        s = TLSWS(srv.port)
        f = H.frame(OP_TEXT, b"z" * 3000)
        for i in range(0, len(f), 7):   # one TLS record per 7 bytes of the frame
            s.sock.sendall(f[i:i + 7])
        assert s.next_message(5) == ("text", b"z" * 3000)
        s.close()


@limit(30)
def test_tls_admin_listener_stays_plain():
    """--admin-listen: the admin port speaks plain HTTP (metrics, health), the main port TLS."""
    admin = H.free_port()
    with tls_server("--admin-listen", "%s:%d" % (HOST, admin)) as srv:
        m, _ = H.get_metrics(admin)
        assert metric(m, "wsed_tls_handshakes_total", result="ok") is not None, "no wsed_tls_* on the admin port"
        assert H.http_get(admin, "/healthz")[0] == 200
        s = TLSWS(srv.port)
        s.echo(b"main port")
        s.close()
        st = H.http_get(srv.port, "/metrics")[0]
        assert st == 400, "plain GET /metrics on the TLS main port: %r" % st


# ---------------------------------------------------------------------------------------------
# 4. verification failures and garbage
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_tls_wrong_ca_and_expired_certificate_fail_cleanly():
    with tls_server() as srv:
        before = tls_counters(srv.port)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            try:
                tls_connect(srv.port, client_ctx(ca="other_ca", version=version)).close()
                raise AssertionError("a client trusting another CA accepted the server")
            except ssl.SSLCertVerificationError as e:
                assert e.verify_code == 20, (e.verify_code, e.verify_message)   # unable to get local issuer
        s = TLSWS(srv.port)
        s.echo(b"still serving")
        s.close()
        wait_counter(srv.port, "failed", before["failed"] + 2)
    with tls_server(cert="expired", workers=1) as srv:
        try:
            tls_connect(srv.port).close()
            raise AssertionError("an expired server certificate was accepted")
        except ssl.SSLCertVerificationError as e:
            assert e.verify_code == 10, (e.verify_code, e.verify_message)   # certificate has expired
        ctx = client_ctx()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE   # a client that does not verify still gets served
        s = TLSWS(srv.port, ctx)
        s.echo(b"not verified")
        s.close()


def _client_hello(version=None):
    """The bytes of a real ClientHello (from an ssl object over memory BIOs)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(version=version).wrap_bio(inc, out, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:10]
    return hello


def _closed_by_server(sock, timeout=5.0):
    """Reads (discarding) until the server closes: the seconds it took, or None on the timeout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return None
        except (ssl.SSLError, ConnectionResetError):
            return time.monotonic() - t0
        if not d:
            return time.monotonic() - t0


@limit(40)
def test_tls_garbage_closes_only_that_connection():
    with tls_server() as srv:
        before = tls_counters(srv.port)
        keep = TLSWS(srv.port)
        keep.echo(b"hello")
        # Garbage instead of a ClientHello (not a TLS record, not an HTTP method).
        raw = H.connect(srv.port)
        raw.sendall(bytes(range(1, 256)) * 4)
        assert _closed_by_server(raw) is not None, "garbage instead of a ClientHello: not closed"
        raw.close()
        c = wait_counter(srv.port, "failed", before["failed"] + 1)
        keep.echo(b"after a bad ClientHello")
        # After the handshake and the upgrade: bytes written on the TCP socket under the TLS session.
        junk = [b"\x17\x03\x03\x00\x40" + os.urandom(64),   # an application data record that fails its MAC
                b"\xff" * 64,                                # not a record at all
                os.urandom(1 << 14)]                          # random bytes
        for n, j in enumerate(junk):
            v = TLSWS(srv.port)
            v.echo(b"victim %d" % n)
            os.write(v.sock.fileno(), j)
            assert v.wait_eof(5), "garbage %d after the handshake: the connection stayed open" % n
            v.close()
            keep.echo(b"after garbage %d" % n)
        after = wait_counter(srv.port, "record_errors", before["record_errors"] + len(junk))
        assert after["record_errors"] == before["record_errors"] + len(junk), (before, after)
        assert after["failed"] == c["failed"], (c, after)
        keep.close()


# ---------------------------------------------------------------------------------------------
# 5. client certificates
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_tls_client_certificate_required_with_ca_file():
    with tls_server("--tls-ca-file", certs()["ca"]) as srv:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            e = expect_handshake_refused(srv.port, client_ctx(version=version), "no client certificate")
            e2 = expect_handshake_refused(srv.port, client_ctx(version=version, cert="client_other"),
                                          "client certificate of another CA")
            s = TLSWS(srv.port, client_ctx(version=version, cert="client"))
            assert s.sock.version() == ("TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
            s.echo(b"with a certificate")
            s.close()
        for ctx in (client_ctx(cert="client"),):
            ok = https_request(srv.port, "GET", "/healthz", ctx=ctx)[0]
            assert ok == 200, ok
    with tls_server() as srv:   # without --tls-ca-file no certificate is asked for
        s = TLSWS(srv.port)
        s.echo(b"no certificate needed")
        s.close()


# ---------------------------------------------------------------------------------------------
# 6. SIGHUP reload
# ---------------------------------------------------------------------------------------------

def _install(src, dst):
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _peer_der(port):
    s = tls_connect(port)
    try:
        return s.getpeercert(binary_form=True), dict(x[0] for x in s.getpeercert()["subject"])
    finally:
        s.close()


@limit(40)
def test_tls_sighup_reloads_certificate():
    c = certs()
    d = tempfile.mkdtemp(prefix="wsed-tls-reload-", dir=c["dir"])
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    _install(c["server"], cert)
    _install(c["server_key"], key)
    with H.running(BIN, "--mode", "echo", "--workers", "2", "--tls-cert-file", cert, "--tls-key-file", key,
                   env=W.env()) as srv:
        der, subject = _peer_der(srv.port)
        assert der == der_of(c["server"]) and subject["organizationName"] == "wsed A", subject
        old = TLSWS(srv.port)
        old.echo(b"opened before the reload")
        _install(c["server_b"], cert)
        _install(c["server_b_key"], key)
        srv.send_signal(signal.SIGHUP)
        wait_counter(srv.port, "reload_ok", 1)
        der, subject = _peer_der(srv.port)
        assert der == der_of(c["server_b"]) and subject["organizationName"] == "wsed B", subject
        assert old.sock.getpeercert(binary_form=True) == der_of(c["server"])
        old.echo(b"still open after the reload")
        new = TLSWS(srv.port)
        new.echo(b"opened after the reload")
        # A broken key file: the reload fails, B stays.
        with open(key, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        srv.send_signal(signal.SIGHUP)
        wait_counter(srv.port, "reload_failed", 1)
        # A key that does not match the certificate: refused too.
        _install(c["server_key"], key)
        srv.send_signal(signal.SIGHUP)
        after = wait_counter(srv.port, "reload_failed", 2)
        assert after["reload_ok"] == 1, after
        assert _peer_der(srv.port)[0] == der_of(c["server_b"])
        old.echo(b"old after the failed reloads")
        new.echo(b"new after the failed reloads")
        old.close()
        new.close()
        m = tls_metrics(srv.port)
        from cryptography import x509
        with open(c["server_b"], "rb") as f:
            not_after = x509.load_pem_x509_certificate(f.read()).not_valid_after   # naive, UTC
        want = int(not_after.replace(tzinfo=datetime.timezone.utc).timestamp())
        got = metric(m, "wsed_tls_certificate_expiry_timestamp_seconds")
        assert got == want, "expiry gauge %r, certificate B's notAfter %r" % (got, want)


# ---------------------------------------------------------------------------------------------
# 7. bounded handshakes
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_tls_handshake_timeout_closes_silent_and_half_hello():
    with tls_server("--handshake-timeout", "1s") as srv:
        silent = H.connect(srv.port)
        half = H.connect(srv.port)
        hello = _client_hello()
        half.sendall(hello[:len(hello) // 2])
        # TLS done, no HTTP upgrade request: the same deadline.
        noupgrade = tls_connect(srv.port)
        t0 = time.monotonic()
        for name, s in (("silent", silent), ("half ClientHello", half), ("no upgrade request", noupgrade)):
            took = _closed_by_server(s, timeout=6)
            assert took is not None, "%s socket not closed within 6 s of --handshake-timeout 1s" % name
            s.close()
        total = time.monotonic() - t0
        assert 0.5 <= total <= 4, "closed after %.2fs with --handshake-timeout 1s" % total
        s = TLSWS(srv.port)
        s.echo(b"still serving")
        s.close()


@limit(30)
def test_tls_max_pending_handshakes_caps_sockets_mid_tls_handshake():
    n = 3
    with tls_server("--max-pending-handshakes", str(n), "--handshake-timeout", "20s", workers=1) as srv:
        hello = _client_hello()
        held = []
        for _ in range(n):
            s = H.connect(srv.port)
            s.sendall(hello[:40])   # mid-handshake, for good
            held.append(s)
        # The metrics request is itself a pending handshake until it is answered; hold it back:
        # the n+1th socket is closed at once (no 20 s wait).
        extra = H.connect(srv.port)
        extra.sendall(hello)
        took = _closed_by_server(extra, timeout=5)
        assert took is not None and took < 3, "the %dth socket mid-handshake was not closed at once (%r)" % (n + 1, took)
        extra.close()
        held.pop().close()
        # A slot came free: a whole client is served (bounded retry while the server sees the close).
        deadline = time.monotonic() + 5
        while True:
            try:
                s = TLSWS(srv.port)
                break
            except (ssl.SSLError, ConnectionResetError, AssertionError, OSError):
                assert time.monotonic() < deadline, "no TLS client served after a pending socket closed"
                time.sleep(0.05)
        s.echo(b"served")
        s.close()
        for h in held:
            h.close()
        m = tls_metrics(srv.port)
        hits = metric(m, "wsed_limit_hits_total", limit="max_pending_handshakes")
        assert hits is not None and hits >= 1, hits


# ---------------------------------------------------------------------------------------------
# 8. bad flags
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_tls_bad_flags_exit_2():
    c = certs()
    d = c["dir"]
    garbage = os.path.join(d, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("this is not PEM\n")
    cases = [
        (["--tls-cert-file", c["server"]], "--tls-key-file"),
        (["--tls-key-file", c["server_key"]], "--tls-cert-file"),
        (["--tls-cert-file", os.path.join(d, "missing.pem"), "--tls-key-file", c["server_key"]], "missing.pem"),
        (["--tls-cert-file", c["server"], "--tls-key-file", os.path.join(d, "missing.key")], "missing.key"),
        (["--tls-cert-file", d, "--tls-key-file", c["server_key"]], None),           # a directory
        (["--tls-cert-file", garbage, "--tls-key-file", c["server_key"]], None),     # not a certificate
        (["--tls-cert-file", c["server"], "--tls-key-file", garbage], None),         # not a key
        (["--tls-cert-file", c["server"], "--tls-key-file", c["server_b_key"]], None),   # key of another cert
        (["--tls-ca-file", c["ca"]], "--tls-ca-file"),
        (["--tls-cert-file", c["server"], "--tls-key-file", c["server_key"], "--tls-ca-file",
          os.path.join(d, "missing-ca.pem")], "missing-ca.pem"),
        (["--tls-cert-file", c["server"], "--tls-key-file", c["server_key"], "--tls-ca-file", garbage], None),
    ]
    for args, mention in cases:
        rc, out, err = H.run_cmd([BIN, "--mode", "echo", "--port", "0"] + args, env=W.env())
        assert rc == 2, "%r: exit %r (want 2); stdout %r stderr %r" % (args, rc, out[:300], err[-500:])
        assert err.strip(), "%r: exit 2 without a message" % args
        if mention:
            assert mention in err, "%r: the message does not name %s: %r" % (args, mention, err[-500:])
        assert "listening" not in out, (args, out)


# ---------------------------------------------------------------------------------------------
# 9. closing over TLS
# ---------------------------------------------------------------------------------------------

async def _close_1000(port):
    async with ws_connect(port, client_ctx(), path="/") as ws:
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), 5) == "x"
        await ws.close(1000, "bye")
        return ws.close_code


@limit(40)
def test_tls_close_1000_and_shutdown_4300():
    srv = H.wsed_server(BIN, "--mode", "echo", "--workers", "2", "--tls-cert-file", certs()["server"],
                        "--tls-key-file", certs()["server_key"], env=W.env())
    with H.supervised(srv, check_exit=False):
        assert run_async(_close_1000(srv.port), 15) == 1000
        c = TLSWS(srv.port)
        c.echo(b"x")
        c.send_frame(OP_CLOSE, H.close_payload(1000))
        m = c.next_message(5)
        assert m is not None and m[0] == "close" and m[1] == 1000, m
        assert c.wait_eof(5), "no EOF after the close handshake"
        assert c.eof_how == "close_notify", "the server ended TLS without a close_notify: %s" % c.eof_how
        c.close()
        # The client ends its TLS session (close_notify, no close frame): the server closes too.
        c = TLSWS(srv.port)
        c.echo(b"y")
        c.sock.settimeout(5)
        plain = c.sock.unwrap()   # sends close_notify, reads the server's
        data, eof = H.recv_until_eof(plain, 5)
        assert eof and data == b"", "after both close_notify: %r, EOF %s" % (data[:100], eof)
        plain.close()
        clients = [TLSWS(srv.port) for _ in range(4)]
        for i, cl in enumerate(clients):
            cl.echo(b"client %d" % i)
        srv.send_signal(signal.SIGTERM)
        for i, cl in enumerate(clients):
            m = cl.next_message(10)
            assert m is not None and m[0] == "close" and m[1] == 4300, "client %d: %r" % (i, m)
            cl.send_frame(OP_CLOSE, H.close_payload(4300))
            assert cl.wait_eof(5), "client %d: no EOF after close 4300" % i
            assert cl.eof_how == "close_notify", "client %d: %s" % (i, cl.eof_how)
            cl.close()
        assert srv.wait(15) == 0, "exit %r after SIGTERM; stderr %s" % (srv.returncode, srv.stderr_text()[-1000:])


@limit(60)
def test_tls_sighup_storm_while_clients_connect():
    """20 reloads alternating certificates A and B while 4 threads keep connecting: every
    connection completes with A or B (never a failure), old contexts freed safely (ASan)."""
    import threading
    c = certs()
    d = tempfile.mkdtemp(prefix="wsed-tls-storm-", dir=c["dir"])
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    _install(c["server"], cert)
    _install(c["server_key"], key)
    ders = {der_of(c["server"]): "A", der_of(c["server_b"]): "B"}
    with H.running(BIN, "--mode", "echo", "--workers", "2", "--tls-cert-file", cert, "--tls-key-file", key,
                   env=W.env()) as srv:
        stop = threading.Event()
        seen, errors = [], []

        def connector():
            for i in range(400):
                if stop.is_set():
                    return
                try:
                    s = TLSWS(srv.port)
                    seen.append(ders.get(s.sock.getpeercert(binary_form=True), "?"))
                    s.echo(b"storm %d" % i)
                    s.close()
                except Exception as e:   # noqa: BLE001 - reported below
                    errors.append(repr(e))
                    return
        threads = [threading.Thread(target=connector, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        for k in range(20):
            src = "server_b" if k % 2 == 0 else "server"
            # cert and key must change together: a reload between the two files fails (counted).
            _install(c[src], cert + ".new")
            _install(c[src + "_key"], key + ".new")
            os.replace(key + ".new", key)
            os.replace(cert + ".new", cert)
            srv.send_signal(signal.SIGHUP)
            wait_counter(srv.port, "reload_ok", k + 1, timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=20)
        assert not errors, errors[:3]
        assert "?" not in seen and {"A", "B"} <= set(seen), "certificates seen: %r" % sorted(set(seen))
        after = tls_counters(srv.port)
        assert after["reload_ok"] == 20 and after["reload_failed"] == 0 and after["failed"] == 0, after


@limit(40)
def test_tls_sigterm_with_sockets_mid_handshake():
    """SIGTERM while sockets are mid-TLS-handshake, one TLS-connected without an upgrade and one
    open WebSocket: exit 0 within the shutdown timeout, the WebSocket gets 4300, the others EOF."""
    srv = H.wsed_server(BIN, "--mode", "echo", "--workers", "2", "--tls-cert-file", certs()["server"],
                        "--tls-key-file", certs()["server_key"], "--shutdown-timeout", "5s", env=W.env())
    with H.supervised(srv, check_exit=False):
        hello = _client_hello()
        half = [H.connect(srv.port) for _ in range(3)]
        for k, h in enumerate(half):
            h.sendall(hello[:20 * (k + 1)])
        tls_only = tls_connect(srv.port)
        ws = TLSWS(srv.port)
        ws.echo(b"open")
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        m = ws.next_message(10)
        assert m is not None and m[0] == "close" and m[1] == 4300, m
        ws.send_frame(OP_CLOSE, H.close_payload(4300))
        for s in half + [tls_only]:
            assert _closed_by_server(s, 10) is not None, "a socket mid-handshake was not closed at shutdown"
            s.close()
        assert srv.wait(15) == 0, "exit %r; stderr %s" % (srv.returncode, srv.stderr_text()[-1000:])
        assert time.monotonic() - t0 < 7, "shutdown took %.1fs (--shutdown-timeout 5s)" % (time.monotonic() - t0)
        ws.close()


@limit(40)
def test_tls_session_resumption_and_no_renegotiation():
    """A session is resumed (TLS 1.2 and 1.3 tickets; across both shards); after a certificate
    reload an old session is not resumed (it was authenticated by the old certificate): a full
    handshake shows the new one. A TLS 1.2 client asking to renegotiate (openssl s_client, "R") is
    refused and closed; the server goes on."""
    c = certs()
    d = tempfile.mkdtemp(prefix="wsed-tls-resume-", dir=c["dir"])
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    _install(c["server"], cert)
    _install(c["server_key"], key)
    with H.running(BIN, "--mode", "echo", "--workers", "2", "--tls-cert-file", cert, "--tls-key-file", key,
                   env=W.env()) as srv:
        sessions = {}
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_ctx(version=version)
            s = TLSWS(srv.port, ctx)
            s.echo(b"first")   # TLS 1.3: the ticket comes after the handshake
            sess = s.sock.session
            s.close()
            reused = []
            for _ in range(4):   # accepts alternate between the shards
                r = ctx.wrap_socket(socket.create_connection((HOST, srv.port), timeout=5),
                                    server_hostname="127.0.0.1", session=sess)
                reused.append(r.session_reused)
                r.close()
            assert all(reused), "%s: session reuse %r" % (version.name, reused)
            sessions[version] = (ctx, sess)
        _install(c["server_b"], cert)
        _install(c["server_b_key"], key)
        srv.send_signal(signal.SIGHUP)
        wait_counter(srv.port, "reload_ok", 1)
        for version, (ctx, sess) in sessions.items():
            r = ctx.wrap_socket(socket.create_connection((HOST, srv.port), timeout=5),
                                server_hostname="127.0.0.1", session=sess)
            try:
                assert not r.session_reused and r.getpeercert(binary_form=True) == der_of(c["server_b"]), \
                    "%s: a session of the old certificate resumed after the reload" % version.name
            finally:
                r.close()
        before = tls_counters(srv.port)
        p = subprocess.Popen(["openssl", "s_client", "-connect", "%s:%d" % (HOST, srv.port), "-tls1_2",
                              "-CAfile", c["ca"], "-servername", "localhost"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = p.communicate(b"R\n", timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate(timeout=5)
            raise AssertionError("openssl s_client renegotiating: no end within 10 s: %r" % out[-300:])
        text = out.decode("utf-8", "replace")
        assert "RENEGOTIATING" in text and "no renegotiation" in text, text[-500:]
        wait_counter(srv.port, "record_errors", before["record_errors"] + 1)
        s = TLSWS(srv.port)
        s.echo(b"after a refused renegotiation")
        s.close()


@limit(30)
def test_tls_per_ip_cap_and_idle_timeout():
    """--max-connections-per-ip 1 over TLS: the second connection from 127.0.0.1 is closed at once
    (its 429 cannot be sent before a TLS session exists), the first keeps working;
    --idle-timeout 1s: a silent wss connection gets close 4408 over TLS and a close_notify."""
    with tls_server("--max-connections-per-ip", "1", "--idle-timeout", "1s", workers=1) as srv:
        a = TLSWS(srv.port)
        a.echo(b"first")
        t0 = time.monotonic()
        try:
            b = tls_connect(srv.port)
            b.settimeout(5)
            b.sendall(H.handshake_request(srv.port)[0])
            d = b.recv(1000)
            b.close()
            assert not d, "a second connection from one address past --max-connections-per-ip 1: %r" % d[:100]
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass
        assert time.monotonic() - t0 < 3, "the refused connection was not closed at once"
        a.echo(b"first still works")
        m = a.next_message(5)   # silent for 1 s now
        assert m is not None and m[0] == "close" and m[1] == 4408, m
        a.send_frame(OP_CLOSE, H.close_payload(4408))
        assert a.wait_eof(5) and a.eof_how == "close_notify", a.eof_how
        a.close()
        # /metrics needs a connection of its own: the only one allowed once the server has
        # released the closed one (bounded retry: the release follows the close we saw)
        deadline = time.monotonic() + 5
        while True:
            try:
                mm = tls_metrics(srv.port)
                break
            except (ssl.SSLError, ConnectionError, http.client.HTTPException):
                assert time.monotonic() < deadline, "no /metrics connection allowed after the close"
                time.sleep(0.05)
        assert metric(mm, "wsed_connections_rejected_total", reason="per_ip") >= 1, \
            [x for x in mm.get("wsed_connections_rejected_total", [])]
