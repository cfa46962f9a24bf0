"""wsed as a systemd service (issue 13, "Packaging and service"), without systemd running: the
real binary started with NOTIFY_SOCKET pointing at a unix datagram socket this test owns (what
systemd does for Type=notify), a real redis-server (redis_harness), and `meson install` of the
build under test into a temporary DESTDIR, its unit checked by `systemd-analyze verify`.

  * READY=1 arrives from wsed's own PID once the listeners are bound: the port accepts a
    WebSocket handshake right after; SIGHUP brings RELOADING=1 (with MONOTONIC_USEC) then READY=1;
    SIGTERM brings STOPPING=1 and exit 0.
  * With --redis-url and Redis down: no READY while the bridge waits (within --redis-timeout);
    READY=1 once Redis is up and the bridge connected (/readyz 200 at that moment); STATUS=
    follows Redis going away. With a short --redis-timeout and no Redis: READY=1 anyway, STATUS=
    says "redis not connected", /readyz 503, clients served.
  * meson install: bin/wsed, the Python module (when the build has one), the unit (with
    ExecStart naming the installed binary), share/man/man1/wsed.1 accepted when present.

The package (debian/, dpkg-buildpackage, dpkg -i) is tests/package_test.py (run_all.py suite
"package"). Run with tests/integration/run_tests.py -k service. Every wait is bounded.
"""

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import redis_harness as R
import test_fanout as F
import test_wse as W
import wsed_harness as H

BIN = W.BIN
limit = H.limit
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def built_with_systemd():
    """The binary links libsystemd (meson -Dsystemd found it): else sd_notify is a no-op."""
    rc, out, err = H.run_cmd(["ldd", BIN], timeout=20)
    return rc == 0 and "libsystemd.so" in out


class NotifySocket:
    """A unix datagram socket in a temp dir, as systemd's NOTIFY_SOCKET: each datagram is parsed
    into a dict of its VAR=value lines, with the sender's PID (SO_PASSCRED)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="wsed-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.seen = []   # (pid, dict) in arrival order

    def env(self):
        return {"NOTIFY_SOCKET": self.path}

    def next(self, timeout):
        """The next datagram as (pid, {VAR: value}), or None when none came within timeout."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode("utf-8").split("\n") if "=" in line)
        self.seen.append((pid, fields))
        return pid, fields

    def wait_for(self, var, timeout, value="1"):
        """Datagrams until one sets var=value: (pid, fields) of it. AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no %s=%s within %ss; got %r" % (var, value, timeout, self.seen)
            got = self.next(left)
            if got and got[1].get(var) == value:
                return got

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def handshake_ok(port):
    """A WebSocket upgrade on port answers 101 (echo mode or --insecure-no-auth)."""
    status, s = H.upgrade(port, H.handshake_request(port)[0])
    if s:
        s.close()
    return status == 101


def readyz(port):
    return H.http_get(port, "/readyz", timeout=3)[0]


def require_notify():
    assert built_with_systemd(), ("%s does not link libsystemd: sd_notify is off in this build "
                                  "(meson -Dsystemd=enabled needs libsystemd-dev)" % BIN)


@limit(60)
def test_service_notify_ready_reload_stopping():
    require_notify()
    port = H.free_port()
    with NotifySocket() as ns:
        srv = H.Server([BIN, "--host", H.HOST, "--port", str(port), "--mode", "echo", "--workers", "2"],
                       env=dict(W.env(), **ns.env()))
        srv.start()
        try:
            pid, ready = ns.wait_for("READY", 15)
            # READY means bound: the handshake goes through at once, no retry
            assert handshake_ok(port), "READY=1 came but :%d does not take a WebSocket" % port
            assert pid == srv.proc.pid, "READY=1 from pid %s, wsed is %s (NotifyAccess=main)" % (pid, srv.proc.pid)
            assert ready.get("STATUS") == "listening on ws://127.0.0.1:%d/" % port, ready
            srv.send_signal(signal.SIGHUP)
            _, reloading = ns.wait_for("RELOADING", 10)
            assert re.fullmatch(r"\d+", reloading.get("MONOTONIC_USEC", "")), reloading
            now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert 0 < int(reloading["MONOTONIC_USEC"]) <= now_us, (reloading, now_us)
            ns.wait_for("READY", 10)
            assert handshake_ok(port)
            srv.send_signal(signal.SIGTERM)
            ns.wait_for("STOPPING", 10)
            assert srv.wait(15) == 0, srv.stderr_text()[-1500:]
        finally:
            srv.stop()
        assert not srv.sanitizer_problems(), srv.stderr_text()[-3000:]
        readies = [f for _, f in ns.seen if f.get("READY") == "1"]
        assert len(readies) == 2, "READY=1 once at start, once after the reload: %r" % ns.seen


@limit(90)
def test_service_notify_ready_waits_for_redis():
    require_notify()
    redis = R.RedisServer(port=H.free_port())   # not started yet
    try:
        with NotifySocket() as ns:
            with H.running(BIN, "--mode", "wse", "--insecure-no-auth", "--workers", "2",
                           "--redis-url", redis.url(), "--redis-timeout", "60s",
                           env=dict(W.env(), **ns.env())) as srv:
                # listening, Redis down: the bridge retries, READY waits (within --redis-timeout)
                assert readyz(srv.port) == 503
                assert ns.next(1.5) is None, "a datagram while Redis is down: %r" % ns.seen
                redis.start()
                _, ready = ns.wait_for("READY", 30)
                assert readyz(srv.port) == 200, "READY=1 before the bridge was ready"
                assert ready.get("STATUS") == "listening on ws://127.0.0.1:%d/; redis connected" % srv.port, ready
                assert handshake_ok(srv.port)
                # a new topic is subscribed in Redis (/readyz 503 until Redis confirms it; Redis
                # paused, so for a while): the connections are up, no STATUS change
                redis.cli("CLIENT", "PAUSE", "1500", "ALL")
                c = F.ws_client(srv.port)
                try:
                    F.subscribe_ok(c, ["svc.1"])
                    assert ns.next(2.0) is None, "a datagram while subscribing: %r" % ns.seen[-3:]
                finally:
                    c.close()
                redis.kill()
                _, down = ns.wait_for("STATUS", 30, "listening on ws://127.0.0.1:%d/; redis not connected (retrying)"
                                      % srv.port)
                assert "READY" not in down, down
                redis.start()
                ns.wait_for("STATUS", 30, "listening on ws://127.0.0.1:%d/; redis connected" % srv.port)
    finally:
        redis.cleanup()


@limit(60)
def test_service_notify_redis_down_ready_after_timeout():
    require_notify()
    redis_port = H.free_port()   # nothing listens there
    with NotifySocket() as ns:
        with H.running(BIN, "--mode", "wse", "--insecure-no-auth", "--workers", "1",
                       "--redis-url", "redis://127.0.0.1:%d" % redis_port, "--redis-timeout", "1s",
                       env=dict(W.env(), **ns.env())) as srv:
            _, ready = ns.wait_for("READY", 20)
            want = "listening on ws://127.0.0.1:%d/; redis not connected (retrying)" % srv.port
            assert ready.get("STATUS") == want, ready
            assert readyz(srv.port) == 503
            assert handshake_ok(srv.port), "local clients are served while Redis is away"


@limit(60)
def test_service_no_notify_socket_runs():
    """Without NOTIFY_SOCKET (not under systemd) nothing is sent and nothing changes; a
    NOTIFY_SOCKET nobody listens on is not fatal either."""
    with H.running(BIN, "--mode", "echo", "--workers", "1") as srv:
        assert handshake_ok(srv.port)
    gone = os.path.join(tempfile.mkdtemp(prefix="wsed-notify-"), "nobody")
    try:
        with H.running(BIN, "--mode", "echo", "--workers", "1", env=W.env(NOTIFY_SOCKET=gone)) as srv:
            assert handshake_ok(srv.port)
            srv.send_signal(signal.SIGHUP)
            assert handshake_ok(srv.port)
    finally:
        shutil.rmtree(os.path.dirname(gone), True)


# ---------------------------------------------------------------------------------------------
# meson install
# ---------------------------------------------------------------------------------------------

def build_dir_of(binary):
    """The meson build dir BUILD of BUILD/engine/wsed."""
    d = os.path.dirname(os.path.dirname(os.path.abspath(binary)))
    assert os.path.isdir(os.path.join(d, "meson-info")), "%s is not in a meson build dir" % binary
    return d


def installed(dest, pattern):
    found = sorted(glob.glob(os.path.join(dest, pattern.lstrip("/")), recursive=True))
    return found


def verify_unit(unit, exec_root=None):
    """systemd-analyze verify of a unit file (offline: systemd need not run). exec_root: the
    installed tree under a DESTDIR: the verified copy's ExecStart points into it (verify checks
    that the binary exists and is executable). Returns (rc, output)."""
    path = unit
    tmp = None
    if exec_root:
        tmp = tempfile.mkdtemp(prefix="wsed-unit-")
        text = open(unit).read()
        text = re.sub(r"^ExecStart=(\S+)", lambda m: "ExecStart=" + exec_root + m.group(1), text, flags=re.M)
        path = os.path.join(tmp, os.path.basename(unit))
        with open(path, "w") as f:
            f.write(text)
    try:
        # --man=no: Documentation=man:wsed(1) is checked where the man page is installed for
        # real (the package test); this tree's man page is not on man's path.
        rc, out, err = H.run_cmd([SYSTEMD_ANALYZE, "verify", "--man=no", path], timeout=60)
        return rc, out + err
    finally:
        if tmp:
            shutil.rmtree(tmp, True)


@limit(120)
def test_service_meson_install_tree():
    build = build_dir_of(BIN)
    dest = tempfile.mkdtemp(prefix="wsed-destdir-")
    try:
        rc, out, err = H.run_cmd(["meson", "install", "-C", build, "--no-rebuild", "--destdir", dest],
                                 timeout=90)
        assert rc == 0, "meson install: rc %s %s %s" % (rc, out[-1500:], err[-1500:])
        prefix = subprocess.run(["meson", "introspect", "--buildoptions", build], capture_output=True, text=True,
                                timeout=30).stdout
        opts = {o["name"]: o["value"] for o in json.loads(prefix)}
        pre = opts["prefix"]
        wsed = os.path.join(dest + pre, opts["bindir"], "wsed")
        assert os.access(wsed, os.X_OK), "no %s; installed: %s" % (wsed, installed(dest, "**"))
        rc, out, _ = H.run_cmd([wsed, "--version"], timeout=10)
        assert rc == 0 and "0." in out, (rc, out)
        # the unit, where systemd looks (prefix/lib/systemd/system unless -Dsystemdsystemunitdir)
        units = installed(dest, "**/systemd/system/wsed.service")
        assert len(units) == 1, "wsed.service installed %d times: %r" % (len(units), installed(dest, "**"))
        unit = units[0]
        if not opts.get("systemdsystemunitdir"):
            assert unit == os.path.join(dest + pre, "lib/systemd/system/wsed.service"), unit
        text = open(unit).read()
        execs = re.findall(r"^ExecStart=(\S+)", text, re.M)
        assert execs == [os.path.join(pre, opts["bindir"], "wsed")], execs
        for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE=1048576",
                     "NoNewPrivileges=yes", "ProtectSystem=strict", "EnvironmentFile=-/etc/default/wsed"):
            assert re.search("^" + re.escape(line) + "$", text, re.M), "%s missing from the unit" % line
        rc, vout = verify_unit(unit, exec_root=dest)
        assert rc == 0 and not vout.strip(), "systemd-analyze verify: rc %s: %s" % (rc, vout)
        # the hardening as systemd rates it: exposure at most 2.5 of 10 ("OK"; 1.5 as written)
        rc, out, err = H.run_cmd([SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=25", unit],
                                 timeout=60)
        assert rc == 0, "systemd-analyze security: exposure above 2.5: %s %s" % (out[-2500:], err[-500:])
        # the Python module (a build without one, e.g. -Dpython_module=disabled for ASan, installs none)
        if os.path.isdir(os.path.join(build, "python", "wsed")):
            mods = installed(dest, "**/dist-packages/wsed/__init__.py")
            assert len(mods) == 1, "Python module: %r" % mods
            site = os.path.dirname(os.path.dirname(mods[0]))
            env = {"PYTHONPATH": site, "PYTHONDONTWRITEBYTECODE": "1"}
            if os.environ.get("WSED_SANITIZERS"):  # a sanitized module needs its runtime first
                rt = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                                    text=True, timeout=30).stdout.strip()
                env.update(LD_PRELOAD=rt, ASAN_OPTIONS="detect_leaks=0")
            rc, out, err = H.run_cmd(["/usr/bin/python3", "-c", "import wsed, wsed.compat; print(wsed.__file__)"],
                                     timeout=30, env=env)
            assert rc == 0 and out.strip().startswith(site), (rc, out, err[-1500:])
        # the man page, once the flag table generates one (accepted when present, must be roff)
        for man in installed(dest, "**/share/man/man1/wsed.1*"):
            head = open(man, "rb").read(4096)
            assert man.endswith(".gz") or b".TH" in head, "%s is not a man page" % man
    finally:
        shutil.rmtree(dest, True)


@limit(60)
def test_service_unit_verify_rejects_a_broken_unit():
    """The verify step of the tests can fail: a unit whose ExecStart binary is missing and a unit
    with an unknown setting are refused."""
    src = os.path.join(H.REPO, "dist", "systemd", "wsed.service.in")
    tmp = tempfile.mkdtemp(prefix="wsed-unit-")
    try:
        text = open(src).read()
        bad_exec = os.path.join(tmp, "wsed.service")
        with open(bad_exec, "w") as f:
            f.write(text.replace("@bindir@", os.path.join(tmp, "nowhere")))
        rc, out = verify_unit(bad_exec)
        assert rc != 0 and "nowhere/wsed" in out, (rc, out)
        with open(bad_exec, "w") as f:
            f.write(text.replace("@bindir@", os.path.dirname(os.path.abspath(BIN)))
                    .replace("Type=notify", "Type=notifyy"))
        rc, out = verify_unit(bad_exec)
        assert rc != 0 or "notifyy" in out, (rc, out)
        with open(bad_exec, "w") as f:
            f.write(text.replace("@bindir@", os.path.dirname(os.path.abspath(BIN))))
        rc, out = verify_unit(bad_exec)
        assert rc == 0 and not out.strip(), "the source unit with the build's binary: rc %s %s" % (rc, out)
    finally:
        shutil.rmtree(tmp, True)
