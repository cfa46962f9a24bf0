"""Recovery through RustWSEServer (recovery_enabled=True): publications are stamped with
tp/e/o first, subscribe_with_recovery's result shape, and a reconnecting client recovering from
(epoch, offset) gets exactly the publications it missed, byte-identical to the live ones."""
import json
import re

import pytest

from conftest import wait_until

STAMP = re.compile(r'^\{"tp":"(?P<tp>[^"]+)","e":"(?P<e>[0-9a-f]{8})","o":(?P<o>\d+),(?P<rest>.*)$')


def pub(n):
    return '{"t":"m","p":{"n":%d}}' % n


def stamp_of(frame):
    assert isinstance(frame, str), "publications are text frames: %r" % (frame,)
    m = STAMP.match(frame)
    assert m, "not stamped with tp/e/o first: %r" % frame
    return m.group("tp"), m.group("e"), int(m.group("o")), "{" + m.group("rest")


@pytest.fixture
def rh(make_server):
    return make_server(recovery_enabled=True)


def no_history(res, topic):
    assert res == {"recovered": False, "topics": {topic: {"epoch": None, "offset": 0, "recoverable": False,
                                                          "recovered": False, "count": 0}}}


def test_server_ready_advertises_recovery(rh):
    c = rh.connect("alice")
    assert c.ready["p"]["details"]["features"]["recovery"] is True
    assert rh.server.health_snapshot()["recovery_enabled"] is True


def test_subscribe_with_recovery_no_history(rh):
    c = rh.connect("alice")
    res = rh.server.subscribe_with_recovery(c.conn_id, ["room"])
    no_history(res, "room")
    rh.subscriber_count("room", 1)  # it subscribes too
    c2 = rh.connect("bob")
    res = rh.server.subscribe_with_recovery(c2.conn_id, ["room2"], recover=True, epoch="0000abcd", offset=3)
    no_history(res, "room2")


def test_publications_are_stamped(rh):
    h = rh
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["room"])
    for i in range(3):
        h.server.broadcast("room", pub(i))
    stamps = [stamp_of(c.recv()) for _ in range(3)]
    assert [s[0] for s in stamps] == ["room"] * 3
    assert len({s[1] for s in stamps}) == 1
    assert [s[2] for s in stamps] == [0, 1, 2]
    assert [s[3] for s in stamps] == ['{"c":"U","t":"m","p":{"n":%d}}' % i for i in range(3)]
    snap = h.server.health_snapshot()
    assert snap["recovery_topic_count"] >= 1
    assert snap["recovery_total_bytes"] > 0


def test_offsets_are_per_topic(rh):
    h = rh
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["a", "b"])
    h.server.broadcast_local("a", pub(0))
    h.server.broadcast_local("b", pub(0))
    h.server.broadcast_local("a", pub(1))
    got = [stamp_of(c.recv())[:3:2] for _ in range(3)]
    assert got == [("a", 0), ("b", 0), ("a", 1)]


def test_reconnect_recovers_exactly_the_missed_publications(rh):
    h = rh
    live = h.connect("watcher")
    h.server.subscribe_connection(live.conn_id, ["room"])
    a = h.connect("alice")
    res = h.server.subscribe_with_recovery(a.conn_id, ["room"])
    assert res["recovered"] is False and res["topics"]["room"]["epoch"] is None  # (no history yet)
    for i in range(3):
        h.server.broadcast("room", pub(i))
    seen = [a.recv() for _ in range(3)]
    _, epoch, last, _ = stamp_of(seen[-1])
    assert last == 2
    a.close()
    h.events.wait("disconnect", a.conn_id)
    for i in range(3, 6):
        h.server.broadcast("room", pub(i))
    live_frames = [live.recv() for _ in range(6)]
    assert live_frames[:3] == seen

    b = h.connect("alice")
    res = h.server.subscribe_with_recovery(b.conn_id, ["room"], recover=True, epoch=epoch, offset=last)
    assert res == {"recovered": True, "topics": {"room": {"epoch": epoch, "offset": 5, "recoverable": True,
                                                          "recovered": True, "count": 3}}}
    replay = h.frames_before_barrier(b)
    assert replay == live_frames[3:], "the replay must be the missed publications, byte-identical"
    assert [stamp_of(f)[2] for f in replay] == [3, 4, 5]
    # and it is subscribed: the next publication arrives live, dense after the replay
    h.server.broadcast("room", pub(6))
    nxt = stamp_of(b.recv())
    assert nxt[1:3] == (epoch, 6)


def test_subscribe_without_recover_reports_the_position(rh):
    h = rh
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["room"])
    for i in range(3):
        h.server.broadcast("room", pub(i))
    _, epoch, _, _ = stamp_of(c.recv())
    probe = h.connect("probe")
    res = h.server.subscribe_with_recovery(probe.conn_id, ["room"])
    assert res == {"recovered": False, "topics": {"room": {"epoch": epoch, "offset": 2, "recoverable": True,
                                                           "recovered": False, "count": 0}}}
    assert h.frames_before_barrier(probe) == []  # nothing replayed
    h.subscriber_count("room", 2)


def test_recover_from_the_current_offset_replays_nothing(rh):
    h = rh
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["room"])
    h.server.broadcast("room", pub(0))
    _, epoch, off, _ = stamp_of(c.recv())
    d = h.connect("bob")
    res = h.server.subscribe_with_recovery(d.conn_id, ["room"], recover=True, epoch=epoch, offset=off)
    assert res["recovered"] is True
    assert res["topics"]["room"] == {"epoch": epoch, "offset": off, "recoverable": True, "recovered": True,
                                     "count": 0}
    assert h.frames_before_barrier(d) == []


def test_wrong_epoch_is_not_recovered(rh):
    h = rh
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["room"])
    h.server.broadcast("room", pub(0))
    h.server.broadcast("room", pub(1))
    _, epoch, _, _ = stamp_of(c.recv())
    wrong = "%08x" % ((int(epoch, 16) + 1) % (1 << 32))
    d = h.connect("bob")
    res = h.server.subscribe_with_recovery(d.conn_id, ["room"], recover=True, epoch=wrong, offset=0)
    assert res == {"recovered": False, "topics": {"room": {"epoch": epoch, "offset": 1, "recoverable": True,
                                                           "recovered": False, "count": 0}}}
    assert h.frames_before_barrier(d) == []
    h.subscriber_count("room", 2)


def test_too_large_a_backlog_is_not_recovered(make_server):
    h = make_server(recovery_enabled=True, recovery_max_messages=3)
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["room"])
    for i in range(6):
        h.server.broadcast("room", pub(i))
    _, epoch, _, _ = stamp_of(c.recv())
    d = h.connect("bob")
    res = h.server.subscribe_with_recovery(d.conn_id, ["room"], recover=True, epoch=epoch, offset=0)
    assert res["recovered"] is False
    assert res["topics"]["room"]["recovered"] is False
    assert res["topics"]["room"]["count"] == 0
    assert res["topics"]["room"]["epoch"] == epoch
    assert h.frames_before_barrier(d) == [], "a backlog over the limit is not replayed, never truncated"
    # within the limit it is
    res = h.server.subscribe_with_recovery(d.conn_id, ["room"], recover=True, epoch=epoch, offset=3)
    assert res["recovered"] is True and res["topics"]["room"]["count"] == 2
    assert [stamp_of(f)[2] for f in h.frames_before_barrier(d)] == [4, 5]


def test_offset_older_than_the_ring_is_not_recovered(make_server):
    h = make_server(recovery_enabled=True, recovery_buffer_size=16)
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["room"])
    for i in range(40):
        h.server.broadcast("room", pub(i))
    frames = [c.recv() for _ in range(40)]
    _, epoch, _, _ = stamp_of(frames[0])
    assert [stamp_of(f)[2] for f in frames] == list(range(40))
    d = h.connect("bob")
    res = h.server.subscribe_with_recovery(d.conn_id, ["room"], recover=True, epoch=epoch, offset=2)
    assert res == {"recovered": False, "topics": {"room": {"epoch": epoch, "offset": 39, "recoverable": True,
                                                           "recovered": False, "count": 0}}}
    assert h.frames_before_barrier(d) == []
    # the newest ones still are in the ring
    res = h.server.subscribe_with_recovery(d.conn_id, ["room"], recover=True, epoch=epoch, offset=35)
    assert res["recovered"] is True and res["topics"]["room"]["count"] == 4
    assert h.frames_before_barrier(d) == frames[36:]


def test_recovery_of_several_topics(rh):
    h = rh
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["a", "b"])
    for i in range(3):
        h.server.broadcast("a", pub(i))
        h.server.broadcast("b", pub(10 + i))
    frames = [c.recv() for _ in range(6)]
    ea = stamp_of(frames[0])[1]
    eb = stamp_of(frames[1])[1]
    d = h.connect("alice")
    # one call recovers one (epoch, offset); topic a from offset 0 replays 1 and 2
    res = h.server.subscribe_with_recovery(d.conn_id, ["a"], recover=True, epoch=ea, offset=0)
    assert res["recovered"] is True and res["topics"]["a"]["count"] == 2
    assert h.frames_before_barrier(d) == [frames[2], frames[4]]
    res = h.server.subscribe_with_recovery(d.conn_id, ["b"], recover=True, epoch=eb, offset=1)
    assert res["recovered"] is True and res["topics"]["b"]["count"] == 1
    assert h.frames_before_barrier(d) == [frames[5]]


def test_recovery_acl_denied_topic_is_as_no_history(rh):
    h = rh
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["secret"])
    h.server.broadcast("secret", pub(0))
    _, epoch, _, _ = stamp_of(c.recv())
    d = h.connect("bob")
    h.server.set_topic_acl(d.conn_id, deny=["secret"])
    res = h.server.subscribe_with_recovery(d.conn_id, ["secret"], recover=True, epoch=epoch, offset=0)
    assert res["recovered"] is False
    assert res["topics"]["secret"] == {"epoch": None, "offset": 0, "recoverable": False, "recovered": False,
                                       "count": 0}
    assert h.frames_before_barrier(d) == []


def test_bad_epoch_raises(rh):
    c = rh.connect("alice")
    with pytest.raises((ValueError, RuntimeError)):
        rh.server.subscribe_with_recovery(c.conn_id, ["room"], recover=True, epoch="not-hex!", offset=0)


def test_recovery_off_publications_are_not_stamped(h):
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["room"])
    h.server.broadcast("room", pub(0))
    assert c.recv() == '{"c":"U","t":"m","p":{"n":0}}'
    res = h.server.subscribe_with_recovery(c.conn_id, ["room"])
    assert res["topics"]["room"]["recoverable"] is False
    assert h.server.health_snapshot()["recovery_enabled"] is False
