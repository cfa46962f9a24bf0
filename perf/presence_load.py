#!/usr/bin/python3
# perf/presence_load.py: the load client of perf/presence.sh. Opens N WSE connections to one wsed
# (127.0.0.1 only), each with its own JWT (sub u00000..; or one sub for all), then sends every
# connection one subscription_update at once (with or without a presence object) and measures:
# the join rate (N / time from the first subscribe sent to the last reply received), the server's
# CPU over that window (/proc/PID/stat), the events delivered (presence_join frames; counted by
# bytes, see below), the server's RSS holding N connections before and after subscribing, the
# /metrics gauges, and how long the server takes to drop everything after the client closes.
#
#   presence_load.py run --port P --server-pid PID --conns 10000 --topics 100 --presence \
#       --users distinct --secret S --api-key-file K --label L --json OUT
#   presence_load.py summary OUT1.json OUT2.json ...      (markdown tables on stdout)
#
# Why a raw client: 10,000 sockets in one epoll loop, frames built by hand (the subscribe frames
# masked before the clock starts), server frames parsed only until each connection's reply and
# the first event; after that a connection's bytes are only counted (recv_into one buffer). Every
# user id, topic and data object has a fixed length, so every presence_join frame has the same
# size E (learnt from the first one, which is parsed and checked) and events = bytes / E; a
# connection whose count is not a multiple of E is reported ("odd bytes").
#
# Stdlib only (/usr/bin/python3). Every wait is bounded; only 127.0.0.1; kills nothing.
import argparse
import base64
import gc
import hashlib
import hmac
import json
import os
import re
import resource
import select
import socket
import statistics
import sys
import time
import urllib.request

HOST = "127.0.0.1"
S_CONNECT, S_HANDSHAKE, S_READY, S_IDLE, S_SUB, S_FIRST_EVENT, S_COUNT, S_CLOSED = range(8)
REPLY_PREFIX = b'{"c":"WSE","t":"subscription_update"'


def log(text):
    print(text, file=sys.stderr, flush=True)


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def jwt_hs256(sub, secret, ttl=7200):
    now = int(time.time())
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps({"sub": sub, "iat": now, "exp": now + ttl}, separators=(",", ":")).encode())
    sig = b64url(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def masked_text_frame(payload):
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    else:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    rep = (key * (n // 4 + 1))[:n]
    return head + key + (int.from_bytes(payload, "big") ^ int.from_bytes(rep, "big")).to_bytes(n, "big")


def next_frame(buf):
    """(fin, opcode, payload bytes, consumed) of the first server frame in buf, or None."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n, off = b1 & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, off = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, off = int.from_bytes(buf[2:10], "big"), 10
    if b1 & 0x80:
        raise ValueError("masked server frame")
    if len(buf) < off + n:
        return None
    return bool(b0 & 0x80), b0 & 0x0F, bytes(buf[off:off + n]), off + n


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_cpu_ns(pid):
    """CPU time of every thread in ns (/proc/PID/task/*/schedstat: exact, unlike the 10 ms ticks)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def proc_mem(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    return out


def http_get(port, path, key=None, timeout=5):
    req = urllib.request.Request(f"http://{HOST}:{port}{path}")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except OSError as e:
        return None, str(e)


SLOW = 'wsed_connections_closed_total{reason="slow_consumer"}'
KEEP = ("wsed_presence", "wsed_subscriptions", "wsed_connections_open", "wsed_connections_closed_total",
        "wsed_slow_consumer_total", "wsed_outbound_queued_bytes", "wsed_limit_hits_total",
        "wsed_wse_subscribe_total", "wsed_sends_total", "wsed_messages_out_total", "wsed_bytes_out_total", "wsed_fanout")


def metrics(port):
    """{series: value} of the series we keep; per-shard series summed over the shards (the
    shard label dropped: /metrics has no total series)."""
    status, text = http_get(port, "/metrics")
    out = {}
    if status != 200:
        return out
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith(KEEP):
            continue
        name, _, value = line.rpartition(" ")
        name = re.sub(r'shard="\d+",?', "", name).replace("{}", "")
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def metric(m, name, default=None):
    """A series by exact name, else the sum of every series name{...}."""
    if name in m:
        return m[name]
    vals = [v for k, v in m.items() if k.startswith(name + "{")]
    return sum(vals) if vals else default


class Conn:
    __slots__ = ("i", "sock", "fd", "state", "buf", "req", "frame", "out", "t_reply", "count_bytes",
                 "reply_ok", "close_code", "closed_when")

    def __init__(self, i):
        self.i = i
        self.sock = None
        self.fd = -1
        self.state = S_CONNECT
        self.buf = bytearray()
        self.req = b""
        self.frame = b""
        self.out = b""
        self.t_reply = None
        self.count_bytes = 0
        self.reply_ok = None
        self.close_code = None
        self.closed_when = None


def run(a):
    gc.disable()
    secret = a.secret
    key = None
    if a.api_key_file:
        with open(a.api_key_file) as f:
            key = f.read().rstrip("\n")
    n = a.conns
    per_topic = (n + a.topics - 1) // a.topics
    res = {"label": a.label, "conns": n, "topics": a.topics, "members_per_topic": per_topic,
           "presence": a.presence, "users": a.users, "errors": []}
    # Requests and subscribe frames, built before any clock starts.
    conns = []
    for i in range(n):
        c = Conn(i)
        uid = "u%05d" % (i if a.users == "distinct" else 0)
        topic = "room-%03d" % (i % a.topics)
        tok = jwt_hs256(uid, secret)
        wskey = base64.b64encode(os.urandom(16)).decode()
        c.req = (f"GET /wse HTTP/1.1\r\nHost: {HOST}:{a.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {wskey}\r\nSec-WebSocket-Version: 13\r\n"
                 f"Authorization: Bearer {tok}\r\n\r\n").encode()
        p = {"action": "subscribe", "topics": [topic]}
        if a.presence:
            p["presence"] = {"name": uid, "status": "online"}
        c.frame = masked_text_frame(json.dumps({"c": "WSE", "t": "subscription_update", "p": p, "v": 1},
                                               separators=(",", ":")).encode())
        conns.append(c)
    if a.users == "distinct":
        expected_events = sum(m * (m + 1) // 2 for m in
                              [len(range(t, n, a.topics)) for t in range(a.topics)]) if a.presence else 0
    else:
        expected_events = min(a.topics, n) if a.presence else 0
    res["expected_events"] = expected_events

    ep = select.epoll()
    by_fd = {}
    sink = bytearray(1 << 20)
    sink_view = memoryview(sink)

    def count_into(c):
        """Reads what c has into the sink and counts it; 0 when nothing (EOF closes c)."""
        try:
            k = c.sock.recv_into(sink_view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            k = 0
        if k == 0:
            close(c, "eof")
            return 0
        c.count_bytes += k
        return k

    def close(c, why):
        if c.state == S_CLOSED:
            return
        c.closed_when = (why, c.state)
        c.state = S_CLOSED
        try:
            ep.unregister(c.fd)
        except OSError:
            pass
        by_fd.pop(c.fd, None)
        c.sock.close()

    # ---- connect: at most connect_inflight connecting/upgrading at once, bounded by ramp_timeout
    t_c0 = time.monotonic()
    deadline = t_c0 + a.ramp_timeout
    nxt = 0
    inflight = 0
    ready = 0
    failed = 0
    while (ready + failed) < n and time.monotonic() < deadline:
        while inflight < a.connect_inflight and nxt < n:
            c = conns[nxt]
            nxt += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s.connect((HOST, a.port))
            except BlockingIOError:
                pass
            except OSError as e:
                s.close()
                failed += 1
                res["errors"].append("connect: %s" % e)
                continue
            c.sock, c.fd = s, s.fileno()
            by_fd[c.fd] = c
            ep.register(c.fd, select.EPOLLOUT)
            inflight += 1
        for fd, ev in ep.poll(0.2):
            c = by_fd.get(fd)
            if c is None:
                continue
            if c.state == S_CONNECT:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    close(c, "connect_err")
                    inflight -= 1
                    failed += 1
                    continue
                c.sock.send(c.req)  # a few hundred bytes into an empty socket buffer
                c.state = S_HANDSHAKE
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                close(c, "eof_connect")
                inflight -= 1
                failed += 1
                continue
            c.buf += data
            if c.state == S_HANDSHAKE:
                end = c.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                if not c.buf.startswith(b"HTTP/1.1 101"):
                    res["errors"].append("upgrade: " + bytes(c.buf[:60]).decode("latin-1"))
                    close(c, "upgrade_refused")
                    inflight -= 1
                    failed += 1
                    continue
                del c.buf[:end + 4]
                c.state = S_READY
            if c.state == S_READY:
                f = next_frame(c.buf)
                if f is None:
                    continue
                del c.buf[:f[3]]
                if b'"server_ready"' not in f[2]:
                    res["errors"].append("first frame not server_ready: %r" % f[2][:80])
                    close(c, "no_server_ready")
                    inflight -= 1
                    failed += 1
                    continue
                c.state = S_IDLE
                inflight -= 1
                ready += 1
    res["connected"] = ready
    res["connect_failed"] = failed + (n - nxt)
    res["connect_s"] = time.monotonic() - t_c0
    log(f"{a.label}: {ready} connected in {res['connect_s']:.1f} s ({res['connect_failed']} failed)")
    if ready < n:
        res["errors"].append(f"only {ready} of {n} connected within {a.ramp_timeout} s")
    live = [c for c in conns if c.state == S_IDLE]
    for c in live:
        if c.buf:
            res["errors"].append("unexpected bytes before subscribing on connection %d" % c.i)
            break

    time.sleep(a.settle)
    res["mem_connected"] = proc_mem(a.server_pid)
    res["metrics_connected"] = metrics(a.port)

    # ---- subscribe: every connection's frame at once; the clock runs from the first send
    for c in live:
        ep.modify(c.fd, select.EPOLLIN)
    s_cpu0 = proc_cpu(a.server_pid)
    s_ns0 = proc_cpu_ns(a.server_pid)
    c_ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    pending_out = 0
    for c in live:
        try:
            k = c.sock.send(c.frame)
        except OSError:
            k = 0
        if k < len(c.frame):
            c.out = c.frame[k:]
            ep.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)
            pending_out += 1
        c.state = S_SUB
    t_sent = time.monotonic()
    replies = 0
    events_parsed = 0
    event_size = None
    sample_event = None
    bad_replies = 0
    other_frames = 0
    counted = 0  # bytes counted in S_COUNT
    seen_by = {}  # --parse-all: connection -> user ids it got a presence_join of
    dups = 0
    before_own = [0]

    def own_uid(i):
        return "u%05d" % (i if a.users == "distinct" else 0)
    t_last_reply = None
    t_last_byte = t0
    deadline = t0 + a.timeout
    quiet = a.quiet
    n_live = len(live)
    S_COUNT_ = S_COUNT
    while time.monotonic() < deadline:
        evs = ep.poll(0.05)
        now = time.monotonic()
        if not evs:
            # Done: every reply, at least the events the spec implies, and the server has sent
            # nothing more for drain_quiet s (a join can reach more subscribers than those before it).
            if replies >= n_live and events_parsed + (counted // event_size if event_size else 0) >= expected_events \
                    and now - t_last_byte > a.drain_quiet:
                break
            if now - t_last_byte > quiet:
                res["errors"].append(f"nothing received for {quiet} s: stopped waiting")
                break
            continue
        t_last_byte = now
        for fd, ev in evs:
            c = by_fd.get(fd)
            if c is None:
                continue
            if ev & select.EPOLLOUT and c.out:
                try:
                    k = c.sock.send(c.out)
                    c.out = c.out[k:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    close(c, "send_err")
                    continue
                if not c.out:
                    ep.modify(fd, select.EPOLLIN)
            if not ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                continue
            if c.state == S_COUNT_:
                counted += count_into(c)
                continue
            try:
                data = c.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                close(c, "eof")
                continue
            c.buf += data
            while c.state in (S_SUB, S_FIRST_EVENT):
                try:
                    f = next_frame(c.buf)
                except ValueError as e:
                    res["errors"].append(str(e))
                    close(c, "bad_frame")
                    break
                if f is None:
                    break
                fin, op, payload, used = f
                del c.buf[:used]
                if op == 8:
                    c.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    close(c, "close_frame")
                    break
                if op != 1 or not fin:
                    other_frames += 1
                    continue
                if c.state == S_SUB:
                    if payload.startswith(REPLY_PREFIX):
                        c.t_reply = now
                        t_last_reply = now
                        replies += 1
                        doc = json.loads(payload)
                        ok = doc["p"].get("success") is True and not doc["p"].get("failed_topics")
                        c.reply_ok = ok
                        if not ok:
                            bad_replies += 1
                            if bad_replies <= 3:
                                res["errors"].append("reply: %s" % payload[:200].decode("utf-8", "replace"))
                        c.state = S_FIRST_EVENT if (a.presence and (event_size is None or a.parse_all)) else S_COUNT
                    else:
                        other_frames += 1
                        if other_frames <= 3:
                            res["errors"].append("before the reply: %s" % payload[:200].decode("utf-8", "replace"))
                    continue
                # S_FIRST_EVENT: the first event anywhere is parsed and checked; its size is E
                doc = json.loads(payload)
                if doc.get("t") == "presence_join":
                    events_parsed += 1
                    if event_size is None:
                        event_size = used
                        sample_event = payload.decode("utf-8", "replace")
                    elif used != event_size:
                        res["errors"].append(f"event of {used} bytes, not {event_size}: {payload[:200]!r}")
                    if a.parse_all:  # every frame parsed: duplicates per connection and user
                        uid = doc["p"]["user_id"]
                        seen = seen_by.setdefault(c.i, set())
                        if not seen and uid != own_uid(c.i):
                            before_own[0] += 1  # a join of another user arrived before its own
                            if before_own[0] <= 3:
                                res["errors"].append(f"connection {c.i} ({own_uid(c.i)}): first event is "
                                                     f"{uid}'s presence_join, not its own")
                        if uid in seen:
                            dups += 1
                            if dups <= 3:
                                res["errors"].append(f"connection {c.i}: second presence_join of {uid}")
                        seen.add(uid)
                    else:
                        c.state = S_COUNT
                else:
                    other_frames += 1
                    if other_frames <= 3:
                        res["errors"].append("not presence_join: %s" % payload[:200].decode("utf-8", "replace"))
            if c.state == S_COUNT and c.buf:
                c.count_bytes += len(c.buf)
                counted += len(c.buf)
                c.buf = bytearray()
            elif c.state == S_FIRST_EVENT and event_size is not None and not c.buf and not a.parse_all:
                c.state = S_COUNT
    t_done = t_last_byte
    s_cpu1 = proc_cpu(a.server_pid)
    s_ns1 = proc_cpu_ns(a.server_pid)
    c_ru1 = resource.getrusage(resource.RUSAGE_SELF)
    odd = sum(1 for c in live if event_size and c.count_bytes % event_size) if event_size else 0
    events = events_parsed + (counted // event_size if event_size else 0)
    closes = [c for c in conns if c.state == S_CLOSED and c.closed_when and c.closed_when[1] >= S_SUB]
    res.update({
        "t_send_s": t_sent - t0, "t_last_reply_s": (t_last_reply - t0) if t_last_reply else None,
        "t_done_s": t_done - t0, "replies": replies, "bad_replies": bad_replies,
        "pending_out_after_send": pending_out, "events": events, "event_frame_bytes": event_size,
        "sample_event": sample_event, "other_frames": other_frames, "odd_byte_counts": odd,
        "counted_bytes": counted, "duplicate_joins": dups if a.parse_all else None,
        "first_event_not_own": before_own[0] if a.parse_all else None,
        "closed_after_subscribe": len(closes),
        "close_kinds": sorted({"%s/%s" % (c.closed_when[0], c.close_code) for c in closes}),
        "server_cpu_s": [s_cpu1[0] - s_cpu0[0], s_cpu1[1] - s_cpu0[1]],
        "server_cpu_ns": s_ns1 - s_ns0,
        "client_cpu_s": [c_ru1.ru_utime - c_ru0.ru_utime, c_ru1.ru_stime - c_ru0.ru_stime],
    })
    if t_last_reply:
        res["joins_per_s"] = replies / (t_last_reply - t0)
    log(f"{a.label}: {replies} replies in {res['t_last_reply_s'] or 0:.3f} s, {events:,} of "
        f"{expected_events:,} events in {t_done - t0:.3f} s; server CPU {sum(res['server_cpu_s']):.2f} s, "
        f"client CPU {sum(res['client_cpu_s']):.2f} s; {len(closes)} closed")

    # ---- holding: memory and gauges once everything is delivered
    time.sleep(a.settle)
    res["mem_subscribed"] = proc_mem(a.server_pid)
    res["metrics_subscribed"] = metrics(a.port)
    if key:
        st, body = http_get(a.port, "/api/presence/stats?topic=room-000", key)
        res["api_stats_room_000"] = [st, body[:300].strip()]

    # ---- --close-first K (diagnostic): close connections 0..K-1 at once and count the
    # presence_leave frames the others receive (every one should get K: a leave frame is one byte
    # longer than a join frame, "presence_leave" against "presence_join").
    if a.close_first and event_size:
        m0 = metrics(a.port)
        rest = [c for c in conns[a.close_first:] if c.state == S_COUNT]
        before = {c.i: c.count_bytes for c in rest}
        t_k = time.monotonic()
        for c in conns[:a.close_first]:
            if c.state != S_CLOSED:
                close(c, "client_close")
        t_last = time.monotonic()
        want = len(rest) * a.close_first * (event_size + 1)
        got_bytes = 0
        while time.monotonic() - t_k < a.leave_timeout and time.monotonic() - t_last < a.quiet \
                and got_bytes < want:
            for fd, ev in ep.poll(0.05):
                c = by_fd.get(fd)
                if c is None:
                    continue
                k = count_into(c)
                if k <= 0:
                    continue
                got_bytes += k
                t_last = time.monotonic()
        leave_size = event_size + 1
        got = [c.count_bytes - before[c.i] for c in rest]
        time.sleep(a.settle)
        m1 = metrics(a.port)
        res["partial_leave"] = {
            "closed": a.close_first, "staying": len(rest), "expected_per_staying": a.close_first,
            "leaves_received_min": min(got) // leave_size if got else None,
            "leaves_received_max": max(got) // leave_size if got else None,
            "leaves_received_total": sum(got) // leave_size, "odd": sum(1 for g in got if g % leave_size),
            "seconds": t_last - t_k,
            "leave_events": metric(m1, 'wsed_presence_events_total{type="leave"}', 0)
            - metric(m0, 'wsed_presence_events_total{type="leave"}', 0),
            "inbox_full": metric(m1, "wsed_fanout_inbox_full_total", 0) - metric(m0, "wsed_fanout_inbox_full_total", 0),
            "users_gauge": metric(m1, "wsed_presence_users"),
        }
        log(f"{a.label}: partial leave: {res['partial_leave']}")

    # ---- close every connection; time until the server holds none (and no presence)
    t_c = time.monotonic()
    for c in conns:
        if c.state != S_CLOSED:
            close(c, "client_close")
    ep.close()
    gone = None
    last = {}
    while time.monotonic() - t_c < a.leave_timeout:
        m = metrics(a.port)
        if m:
            last = m
        if m and metric(m, "wsed_connections_open", 1) == 0 and metric(m, "wsed_presence_connections", 0) == 0 \
                and metric(m, "wsed_presence_users", 0) == 0:
            gone = time.monotonic() - t_c
            break
        time.sleep(0.1)
    res["leave_s"] = gone
    res["metrics_after_close"] = last
    res["mem_after_close"] = proc_mem(a.server_pid)
    if gone is None:
        res["errors"].append(f"server still holds connections/presence {a.leave_timeout} s after the client closed")
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    return 0 if not res["errors"] else 1


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------

def fmt(v, d=0):
    if v is None:
        return "n/a"
    return f"{v:,.{d}f}"


def mib(b):
    return fmt(b / 1048576, 1) if b is not None else "n/a"


def summary(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        r["_round"] = int(os.path.basename(p).split(".")[1])
        runs.append(r)
    leave_runs = [r for r in runs if r.get("partial_leave")]
    runs = [r for r in runs if not r.get("partial_leave")]
    labels = []
    for r in runs:
        if r["label"] not in labels:
            labels.append(r["label"])
    by = {(r["label"], r["_round"]): r for r in runs}
    rounds = sorted({r["_round"] for r in runs})
    med = statistics.median

    def cell(label, f, d=0):
        vals = [f(by[(label, k)]) for k in rounds if (label, k) in by]
        vals = [v for v in vals if v is not None]
        if not vals:
            return "n/a"
        return "**" + fmt(med(vals), d) + "** (" + ", ".join(fmt(v, d) for v in vals) + ")"

    def cpu_per_join(r):
        return r["server_cpu_ns"] / 1e3 / r["replies"] if r["replies"] else None

    def rss(r, k="mem_subscribed"):
        return r[k].get("VmRSS")

    def m(r, name, k="metrics_subscribed"):
        return metric(r[k], name)

    print("Medians in bold, then each round. joins/s: N / (first subscribe sent -> last reply received); "
          "CPU and frames/s over first subscribe -> last byte received (events included); server CPU from "
          "/proc/PID/task/*/schedstat.\n")
    print("| case | joins/s | server CPU µs per join (whole window) | client CPU % of window | presence_join frames received / spec minimum | server deliveries / sends (wsed_fanout_deliveries_total / wsed_sends_total) | frames/s | last frame after (s) | closed | leave: server empty after (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for L in labels:
        def ev(r):
            return r["events"]
        ex = by[(L, rounds[0])]["expected_events"]
        print(f"| {L} | {cell(L, lambda r: r.get('joins_per_s'))} | {cell(L, cpu_per_join, 2)} | "
              f"{cell(L, lambda r: 100 * sum(r['client_cpu_s']) / r['t_done_s'])} | "
              f"{cell(L, ev)} / {fmt(ex)} | "
              f"{cell(L, lambda r: m(r, 'wsed_fanout_deliveries_total') - m(r, 'wsed_fanout_deliveries_total', 'metrics_connected'))} / "
              f"{cell(L, lambda r: m(r, 'wsed_sends_total') - m(r, 'wsed_sends_total', 'metrics_connected') if m(r, 'wsed_sends_total') is not None else None)} | "
              f"{cell(L, lambda r: r['events'] / r['t_done_s'] if r['events'] else None)} | "
              f"{cell(L, lambda r: r['t_done_s'], 2)} | {cell(L, lambda r: r['closed_after_subscribe'])} | "
              f"{cell(L, lambda r: r['leave_s'], 2)} |")
    print()
    print("| case | RSS, N connected (MiB) | RSS, N subscribed (MiB) | subscribe Δ RSS / connection (B) | VmHWM (MiB) | wsed_presence_bytes | presence_bytes / member | users / connections (gauges) | outbound queued after (B) | slow-consumer closes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for L in labels:
        print(f"| {L} | {cell(L, lambda r: rss(r, 'mem_connected') / 1048576, 1)} | "
              f"{cell(L, lambda r: rss(r) / 1048576, 1)} | "
              f"{cell(L, lambda r: (rss(r) - rss(r, 'mem_connected')) / r['conns'])} | "
              f"{cell(L, lambda r: r['mem_subscribed'].get('VmHWM', 0) / 1048576, 1)} | "
              f"{cell(L, lambda r: m(r, 'wsed_presence_bytes'))} | "
              f"{cell(L, lambda r: (m(r, 'wsed_presence_bytes') or 0) / r['conns'] if m(r, 'wsed_presence_bytes') is not None else None, 1)} | "
              f"{cell(L, lambda r: m(r, 'wsed_presence_users'))} / {cell(L, lambda r: m(r, 'wsed_presence_connections'))} | "
              f"{cell(L, lambda r: m(r, 'wsed_outbound_queued_bytes'))} | "
              f"{cell(L, lambda r: m(r, SLOW))} |")
    print()
    # Pairs: presence case vs the plain case of the same shape, per round.
    pairs = [(L, L.replace("presence", "plain").replace("-distinct", "").replace("-one-user", ""))
             for L in labels if L.startswith("presence")]
    pairs = [(p, q) for p, q in pairs if q in labels]
    if pairs:
        print("Per round, presence case against the plain case of the same shape (both on a server "
              "with --presence; N = connections):\n")
        print("| presence case / plain case | memory per member: (RSS subscribed p − RSS subscribed plain) / N (B) | (Δ p − Δ plain) / N, Δ = subscribed − connected, same server (B) | join rate p / plain | server CPU per join p / plain |")
        print("|---|---:|---:|---:|---:|")
        for p, q in pairs:
            a1, a2, a3, a4 = [], [], [], []
            for k in rounds:
                if (p, k) not in by or (q, k) not in by:
                    continue
                P, Q = by[(p, k)], by[(q, k)]
                a1.append((rss(P) - rss(Q)) / P["conns"])
                a2.append(((rss(P) - rss(P, "mem_connected")) - (rss(Q) - rss(Q, "mem_connected"))) / P["conns"])
                if P.get("joins_per_s") and Q.get("joins_per_s"):
                    a3.append(P["joins_per_s"] / Q["joins_per_s"])
                if cpu_per_join(P) and cpu_per_join(Q):
                    a4.append(cpu_per_join(P) / cpu_per_join(Q))

            def c(v, d):
                return ("**" + fmt(med(v), d) + "** (" + ", ".join(fmt(x, d) for x in v) + ")") if v else "n/a"
            print(f"| {p} / {q} | {c(a1, 0)} | {c(a2, 0)} | {c(a3, 2)} | {c(a4, 2)} |")
        print()
    if leave_runs:
        print("Partial leave (`--close-first`): after the joins, connections 0..K-1 close at once; "
              "each staying member should get K presence_leave frames:\n")
        print("| case, round | closed at once | staying | leaves each staying member got (min / max) | missing per member | wsed_presence_events_total leave | wsed_fanout_inbox_full_total during it | wsed_presence_users after | seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in leave_runs:
            q = r["partial_leave"]
            print(f"| {r['label']} {r['_round']} | {fmt(q['closed'])} | {fmt(q['staying'])} | "
                  f"{fmt(q['leaves_received_min'])} / {fmt(q['leaves_received_max'])} | "
                  f"{fmt(q['closed'] - q['leaves_received_min'])} | {fmt(q['leave_events'])} | "
                  f"{fmt(q['inbox_full'])} | {fmt(q['users_gauge'])} | {fmt(q['seconds'], 2)} |")
        print()
    runs = runs + leave_runs
    errs = [(r["label"], r["_round"], e) for r in runs for e in r["errors"]]
    odd = [(r["label"], r["_round"], r["odd_byte_counts"], r["other_frames"]) for r in runs
           if r["odd_byte_counts"] or r["other_frames"]]
    samples = {r["label"]: (r["sample_event"], r["event_frame_bytes"]) for r in runs if r.get("sample_event")}
    for L, (s, b) in samples.items():
        print(f"- first event seen in `{L}` ({b} bytes on the wire): `{s}`")
    for r in runs:
        if r.get("api_stats_room_000") and rounds and r["_round"] == rounds[0]:
            print(f"- `{r['label']}`: GET /api/presence/stats?topic=room-000 -> {r['api_stats_room_000'][0]} "
                  f"`{r['api_stats_room_000'][1]}`")
    for L, k, o, other in odd:
        print(f"- {L} round {k}: {o} connections with a byte count not a multiple of the event size, {other} other frames")
    for L, k, e in errs[:40]:
        print(f"- {L} round {k}: {e}")
    if not errs:
        print("- no errors: every connection connected, got a successful reply, and every expected event arrived")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--server-pid", type=int, required=True)
    r.add_argument("--conns", type=int, default=10000)
    r.add_argument("--topics", type=int, default=100)
    r.add_argument("--presence", action="store_true")
    r.add_argument("--users", choices=["distinct", "one"], default="distinct")
    r.add_argument("--secret", default="bench-secret-key-for-testing-only")
    r.add_argument("--api-key-file")
    r.add_argument("--label", default="run")
    r.add_argument("--json", required=True)
    r.add_argument("--connect-inflight", type=int, default=256)
    r.add_argument("--ramp-timeout", type=float, default=120)
    r.add_argument("--timeout", type=float, default=300, help="seconds for all replies and events")
    r.add_argument("--quiet", type=float, default=10, help="stop waiting after this long without bytes")
    r.add_argument("--settle", type=float, default=1.0)
    r.add_argument("--drain-quiet", type=float, default=1.0, help="done after this long without bytes")
    r.add_argument("--close-first", type=int, default=0,
                   help="diagnostic: close connections 0..K-1 first and count the leaves the rest get")
    r.add_argument("--parse-all", action="store_true", help="parse every frame (slow; checks duplicates)")
    r.add_argument("--leave-timeout", type=float, default=120)
    s = sub.add_parser("summary")
    s.add_argument("files", nargs="+")
    a = ap.parse_args()
    if a.cmd == "run":
        return run(a)
    summary(a.files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
