"""Real Redis for the wsed Redis-bridge integration tests (test_redis.py).

Stdlib only (runs under /usr/bin/python3). Provides:
  * RedisServer  - Debian's redis-server on a free port of 127.0.0.1 (no persistence, cwd a temp
                   dir), up once PING answers; stop() by PID (SIGTERM, then SIGKILL), kill() (a
                   hard SIGKILL), restart() on the same port; cli(*args) runs redis-cli -p PORT.
  * RedisCluster - three cluster-enabled masters joined with `redis-cli --cluster create`, up once
                   every node says cluster_state:ok; node_for(key) names the master of a key's slot.
  * Resp         - a small RESP2 client over a socket: command(*args) -> the parsed reply,
                   subscribe() and next_push() for pub/sub messages.
Everything is bounded in time; only 127.0.0.1 is ever contacted. Processes started here are also
killed at exit (wsed_harness's leftover list), and run_tests.py kills a test's process group.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import wsed_harness as H

HOST = H.HOST
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class RedisError(Exception):
    """An error reply (-ERR ...) from Redis."""


# ---------------------------------------------------------------------------------------------
# RESP client
# ---------------------------------------------------------------------------------------------

def encode_command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode("utf-8")
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Resp:
    """One RESP2 connection to 127.0.0.1:port. Bulk strings come back as bytes, errors as
    RedisError instances (raised by command(), returned inside arrays), nil as None. Every read
    is bounded by `timeout` (socket.timeout / AssertionError when it passes)."""

    def __init__(self, port, timeout=5.0):
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pushes = []   # pub/sub messages read while waiting for something else

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading --
    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no reply from redis :%d in time" % self.port)
        self.sock.settimeout(left)
        d = self.sock.recv(1 << 20)
        if not d:
            raise ConnectionError("redis :%d closed the connection" % self.port)
        self.buf += d

    def _line(self, deadline):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._fill(deadline)

    def _exact(self, n, deadline):
        while len(self.buf) < n + 2:
            self._fill(deadline)
        data = bytes(self.buf[:n])
        del self.buf[:n + 2]
        return data

    def read_reply(self, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return self._reply(deadline)

    def _reply(self, deadline):
        line = self._line(deadline)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n, deadline)
        if kind in (b"*", b">"):
            n = int(rest)
            return None if n < 0 else [self._reply(deadline) for _ in range(n)]
        raise AssertionError("unexpected RESP line from redis :%d: %r" % (self.port, line[:100]))

    # -- commands --
    def send(self, *args):
        self.sock.sendall(encode_command(*args))

    def command(self, *args, timeout=None):
        self.send(*args)
        r = self.read_reply(timeout)
        if isinstance(r, RedisError):
            raise r
        return r

    # -- pub/sub --
    def subscribe(self, *channels, timeout=None):
        """SUBSCRIBE channels; returns once Redis confirmed each one."""
        self.send("SUBSCRIBE", *channels)
        confirmed = 0
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while confirmed < len(channels):
            r = self._reply(deadline)
            if isinstance(r, RedisError):
                raise r
            if isinstance(r, list) and r and r[0] == b"subscribe":
                confirmed += 1
            else:
                self.pushes.append(r)

    def next_push(self, timeout=None):
        """The next pub/sub message as (channel bytes, payload bytes), or None when nothing came
        within the timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self.pushes:
                r = self.pushes.pop(0)
            else:
                try:
                    r = self._reply(deadline)
                except socket.timeout:
                    return None
            if isinstance(r, list) and len(r) == 3 and r[0] == b"message":
                return r[1], r[2]


def entry_fields(flat):
    """A stream entry's flat [k1, v1, k2, v2 ...] as a dict of str -> str."""
    it = iter(flat)
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in zip(it, it)}


# ---------------------------------------------------------------------------------------------
# one server
# ---------------------------------------------------------------------------------------------

def _ping(port, timeout=0.5, password=None):
    try:
        with Resp(port, timeout) as r:
            if password:
                r.command("AUTH", password)
            return r.command("PING") == "PONG"
    except (OSError, RedisError, AssertionError, ValueError):
        return False


class RedisServer:
    """redis-server on 127.0.0.1:port (a free one unless given), cwd a temp dir of its own.
    password: --requirepass (the harness's own connections AUTH first); unix_socket: also listen
    on this socket path (--unixsocket)."""

    def __init__(self, port=None, extra=(), startup_timeout=10.0, name="redis", password=None, unix_socket=False):
        self.port = port or H.free_port()
        self.password = password
        self.extra = [str(a) for a in extra]
        self.startup_timeout = startup_timeout
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="wsed-redis-%d-" % self.port)
        self.proc = None
        self.starts = 0
        self.socket_path = os.path.join(self.dir, "redis.sock") if unix_socket else None
        if password:
            self.extra += ["--requirepass", password]
        if self.socket_path:
            self.extra += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]

    def url(self):
        return "redis://%s:%d" % (HOST, self.port)

    def argv(self):
        return [REDIS_SERVER, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", "", "--dir", self.dir] + self.extra

    def start(self):
        assert not self.alive(), "%s :%d is already running" % (self.name, self.port)
        self.starts += 1
        log = open(os.path.join(self.dir, "redis-%d.log" % self.starts), "wb")
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir)
        finally:
            log.close()
        H.track(self.proc)
        deadline = time.monotonic() + self.startup_timeout
        while not _ping(self.port, password=self.password):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.proc.poll()
                self.stop(timeout=3)
                raise H.ServerError("%s on :%d did not answer PING within %.0fs (exit %s); log: %s"
                                    % (self.name, self.port, self.startup_timeout, rc, self.log_text()[-1500:]))
            time.sleep(0.02)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM by PID, wait, SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        H.stop_process(self.proc, timeout)
        return self.proc.returncode

    def kill(self):
        """A hard kill (SIGKILL by PID): open connections are reset, nothing is flushed."""
        if self.proc is not None:
            H.stop_process(self.proc, 5, signal.SIGKILL)

    def restart(self):
        """Start again on the same port (after stop() or kill())."""
        if self.alive():
            self.stop()
        return self.start()

    def cli(self, *args, timeout=5.0, check=True):
        """redis-cli -p PORT args...: its stdout text (check: rc 0 and no error reply)."""
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        rc, out, err = H.run_cmd([REDIS_CLI, "-h", HOST, "-p", str(self.port)] + auth + [str(a) for a in args],
                                 timeout=timeout)
        if check:
            assert rc == 0, "redis-cli %r -> rc %s: %s %s" % (args, rc, out[-500:], err[-500:])
            assert not out.startswith(("ERR", "WRONGTYPE", "MOVED", "CROSSSLOT")), \
                "redis-cli %r -> %s" % (args, out[-500:])
        return out

    def resp(self, timeout=5.0, db=0):
        r = Resp(self.port, timeout)
        try:
            if self.password:
                r.command("AUTH", self.password)
            if db:
                r.command("SELECT", db)
        except BaseException:
            r.close()
            raise
        return r

    def command(self, *args, timeout=5.0, db=0):
        with self.resp(timeout, db) as r:
            return r.command(*args)

    def log_text(self):
        out = []
        for i in range(1, self.starts + 1):
            try:
                with open(os.path.join(self.dir, "redis-%d.log" % i), "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "".join(out)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


# ---------------------------------------------------------------------------------------------
# a cluster of three masters
# ---------------------------------------------------------------------------------------------

def cluster_port():
    """A free port a cluster node can use: at most 55535, and its bus port (+10000) free too."""
    for _ in range(200):
        port = H.free_port()
        if port > 55535:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, port + 10000))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise AssertionError("no free port pair for a cluster node")


class RedisCluster:
    """Three cluster-enabled masters on free ports, no replicas, all 16384 slots assigned."""

    def __init__(self, n=3, ready_timeout=30.0):
        self.nodes = []
        for _ in range(n):
            port = cluster_port()
            self.nodes.append(RedisServer(port, ["--cluster-enabled", "yes", "--cluster-config-file",
                                                 "nodes-%d.conf" % port, "--cluster-node-timeout", "5000"],
                                          name="redis-cluster"))
        self.ready_timeout = ready_timeout

    @property
    def ports(self):
        return [n.port for n in self.nodes]

    def seeds(self):
        """The --redis-cluster value: 127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3."""
        return ",".join("%s:%d" % (HOST, p) for p in self.ports)

    def start(self):
        try:
            for n in self.nodes:
                n.start()
            rc, out, err = H.run_cmd([REDIS_CLI, "--cluster", "create"] + ["%s:%d" % (HOST, p) for p in self.ports]
                                     + ["--cluster-replicas", "0", "--cluster-yes"], timeout=30)
            assert rc == 0 and "All 16384 slots covered" in out, "cluster create -> rc %s: %s %s" % (
                rc, out[-1500:], err[-500:])
            deadline = time.monotonic() + self.ready_timeout
            while True:
                states = [self.info(n) for n in self.nodes]
                if all(s.get("cluster_state") == "ok" and s.get("cluster_known_nodes") == str(len(self.nodes))
                       for s in states):
                    break
                assert time.monotonic() < deadline, "cluster not ok within %.0fs: %r" % (self.ready_timeout, states)
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def info(node):
        try:
            text = node.command("CLUSTER", "INFO", timeout=2)
        except (OSError, RedisError):
            return {}
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(ln.split(":", 1) for ln in text.split("\r\n") if ":" in ln)

    def keyslot(self, key):
        return self.nodes[0].command("CLUSTER", "KEYSLOT", key)

    def node_for(self, key):
        """The RedisServer owning key's slot (from CLUSTER SLOTS on the first node)."""
        slot = self.keyslot(key)
        port = slot_owner_port(self.nodes[0], slot)
        assert port is not None, "no node serves slot %d" % slot
        return next(n for n in self.nodes if n.port == port)

    def stop(self):
        for n in self.nodes:
            n.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------------------------
# moving a slot between masters (test_redis_cluster_slot_moves_and_delivery_follows)
# ---------------------------------------------------------------------------------------------

def node_id(node):
    """A cluster node's id (CLUSTER MYID) as str."""
    r = node.command("CLUSTER", "MYID")
    return r.decode() if isinstance(r, bytes) else str(r)


def slot_owner_port(node, slot):
    """The port of the master that `node`'s CLUSTER SLOTS names for slot (None if none)."""
    for start, end, master, *_ in node.command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return master[1]
    return None


def move_slot(cluster, slot, src, dst, timeout=10.0, source_first=False, pause=0.0):
    """Moves an empty slot from master src to master dst with the manual steps: SETSLOT IMPORTING
    on dst, SETSLOT MIGRATING on src, then SETSLOT NODE dst on dst, src and the other masters
    (source_first: on src first, then, `pause` seconds later, on dst and the others: the order in
    which a subscriber asking src is sent to a dst that still refuses with MOVED); returns once
    every node's CLUSTER SLOTS names dst (bounded)."""
    src_id, dst_id = node_id(src), node_id(dst)
    assert dst.command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id) == "OK"
    assert src.command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id) == "OK"
    assert src.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0, "slot %d holds keys" % slot
    others = [n for n in cluster.nodes if n is not src and n is not dst]
    order = [src, dst] + others if source_first else [dst, src] + others
    for i, n in enumerate(order):
        assert n.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id) == "OK"
        if source_first and i == 0 and pause:
            time.sleep(pause)
    deadline = time.monotonic() + timeout
    while True:
        seen = [slot_owner_port(n, slot) for n in cluster.nodes]
        if all(p == dst.port for p in seen):
            return
        assert time.monotonic() < deadline, "slot %d: owners seen %r after %.0fs, wanted :%d" % (
            slot, seen, timeout, dst.port)
        time.sleep(0.05)
