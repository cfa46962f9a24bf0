"""Topics through RustWSEServer: subscribe/unsubscribe by id, broadcast_local/broadcast, globs,
ACLs (set_topic_acl and the JWT claim), cleanup on disconnect, queue groups, and the WSE
subscription_update messages the engine answers itself."""
import json

import pytest

from conftest import wait_until


def pub(n, t="tick"):
    return '{"t":"%s","p":{"n":%d}}' % (t, n)


def expected(n, t="tick", c="U"):
    return '{"c":"%s","t":"%s","p":{"n":%d}}' % (c, t, n)


@pytest.mark.parametrize("method", ["broadcast_local", "broadcast"])
def test_topic_publication_reaches_subscribers_only(h, method):
    sub1 = h.connect("alice")
    sub2 = h.connect("bob")
    other = h.connect("carol")
    h.server.subscribe_connection(sub1.conn_id, ["news"])
    h.server.subscribe_connection(sub2.conn_id, ["news", "sport"])
    getattr(h.server, method)("news", pub(1))  # right after subscribe: it must arrive
    for c in (sub1, sub2):
        frame = c.recv()
        assert isinstance(frame, str), "publications are text frames"
        assert frame == expected(1)
    assert h.frames_before_barrier(other) == []
    getattr(h.server, method)("sport", pub(2))
    assert sub2.recv() == expected(2)
    assert h.frames_before_barrier(sub1) == []


def test_subscriber_count(h):
    a = h.connect("alice")
    b = h.connect("bob")
    assert h.server.get_topic_subscriber_count("room") == 0
    h.server.subscribe_connection(a.conn_id, ["room"])
    h.server.subscribe_connection(b.conn_id, ["room"])
    h.server.subscribe_connection(b.conn_id, ["room"])  # idempotent
    h.subscriber_count("room", 2)
    h.server.unsubscribe_connection(a.conn_id, ["room"])
    h.subscriber_count("room", 1)


def test_unsubscribe_listed_topics(h):
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["a", "b"])
    h.server.unsubscribe_connection(c.conn_id, ["a"])
    h.server.broadcast_local("a", pub(1))
    h.server.broadcast_local("b", pub(2))
    assert h.frames_before_barrier(c) == [expected(2)]
    h.subscriber_count("a", 0)
    h.subscriber_count("b", 1)


def test_unsubscribing_what_is_not_subscribed_is_fine(h):
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["a"])
    assert h.server.unsubscribe_connection(c.conn_id, ["never", "subscribed"]) is None
    assert h.server.unsubscribe_connection(c.conn_id, []) is None
    h.subscriber_count("a", 1)
    h.server.broadcast_local("a", pub(1))
    assert c.recv() == expected(1)


def test_topics_must_be_a_list_of_str(h):
    c = h.connect("alice")
    with pytest.raises(TypeError):
        h.server.subscribe_connection(c.conn_id, "news")
    with pytest.raises(TypeError):
        h.server.subscribe_connection(c.conn_id, [1, 2])


def test_unsubscribe_all_with_none(h):
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["a", "b", "c.*"])
    h.subscriber_count("b", 1)
    h.server.unsubscribe_connection(c.conn_id, None)
    h.server.broadcast_local("a", pub(1))
    h.server.broadcast_local("b", pub(2))
    h.server.broadcast_local("c.x", pub(3))
    assert h.frames_before_barrier(c) == []
    h.subscriber_count("a", 0)
    h.subscriber_count("b", 0)
    # and the default is None too
    h.server.subscribe_connection(c.conn_id, ["a"])
    h.subscriber_count("a", 1)
    h.server.unsubscribe_connection(c.conn_id)
    h.subscriber_count("a", 0)


def test_subscriptions_are_cleaned_up_on_disconnect(h):
    a = h.connect("alice")
    b = h.connect("bob")
    h.server.subscribe_connection(a.conn_id, ["room", "other"])
    h.server.subscribe_connection(b.conn_id, ["room"])
    h.subscriber_count("room", 2)
    a.close()
    h.events.wait("disconnect", a.conn_id)
    h.subscriber_count("room", 1)
    h.subscriber_count("other", 0)
    b.abort()
    h.events.wait("disconnect", b.conn_id)
    h.subscriber_count("room", 0)


def test_glob_subscription_delivers_once(h):
    c = h.connect("alice")
    h.server.subscribe_connection(c.conn_id, ["news.*", "news.sport", "n?ws.sport"])
    h.server.broadcast_local("news.sport", pub(1))
    h.server.broadcast_local("news.weather.today", pub(2))
    h.server.broadcast_local("sport", pub(3))
    assert h.frames_before_barrier(c) == [expected(1), expected(2)]


def test_publication_category_and_identical_bytes(h):
    a = h.connect("alice")
    b = h.connect("bob")
    h.server.subscribe_connection(a.conn_id, ["t"])
    h.server.subscribe_connection(b.conn_id, ["t"])
    h.server.broadcast_local("t", '{"t":"book_snapshot","p":{"x":[1,2]}}')
    h.server.broadcast_local("t", '{"c":"WSE","t":"custom"}')
    want = ['{"c":"S","t":"book_snapshot","p":{"x":[1,2]}}', '{"c":"WSE","t":"custom"}']
    assert [a.recv(), a.recv()] == want
    assert [b.recv(), b.recv()] == want


def test_set_topic_acl_deny(h):
    c = h.connect("alice")
    h.server.set_topic_acl(c.conn_id, deny=["secret.*"])
    h.server.subscribe_connection(c.conn_id, ["secret.plans", "open"])
    h.subscriber_count("open", 1)
    assert h.server.get_topic_subscriber_count("secret.plans") == 0
    h.server.broadcast_local("secret.plans", pub(1))
    h.server.broadcast_local("open", pub(2))
    assert h.frames_before_barrier(c) == [expected(2)]


def test_set_topic_acl_allow(h):
    c = h.connect("alice")
    h.server.set_topic_acl(c.conn_id, allow=["public.*"], deny=["public.hidden"])
    h.server.subscribe_connection(c.conn_id, ["public.a", "private.b", "public.hidden"])
    h.subscriber_count("public.a", 1)
    assert h.server.get_topic_subscriber_count("private.b") == 0
    assert h.server.get_topic_subscriber_count("public.hidden") == 0


def test_set_topic_acl_replaces_the_previous_one(h):
    c = h.connect("alice")
    h.server.set_topic_acl(c.conn_id, deny=["x"])
    h.server.set_topic_acl(c.conn_id, deny=["y"])
    h.server.subscribe_connection(c.conn_id, ["x", "y"])
    h.subscriber_count("x", 1)
    assert h.server.get_topic_subscriber_count("y") == 0


def test_jwt_wse_topics_claim_is_the_acl(h):
    c = h.connect("alice", wse_topics={"allow": ["room.*"], "deny": ["room.vip"]})
    h.server.subscribe_connection(c.conn_id, ["room.1", "room.vip", "lobby"])
    h.subscriber_count("room.1", 1)
    assert h.server.get_topic_subscriber_count("room.vip") == 0
    assert h.server.get_topic_subscriber_count("lobby") == 0


def test_client_subscription_update_is_answered_by_the_engine(h):
    c = h.connect("alice")
    c.send_json({"c": "WSE", "t": "subscription_update",
                 "p": {"action": "subscribe", "topics": ["chat.1", "chat.2"]}, "v": 1})
    reply = c.next_of("subscription_update")
    assert reply["p"]["action"] == "subscribe"
    assert reply["p"]["success"] is True
    assert sorted(reply["p"]["success_topics"]) == ["chat.1", "chat.2"]
    assert reply["p"]["failed_topics"] == []
    h.subscriber_count("chat.1", 1)
    h.server.broadcast_local("chat.2", pub(7))
    assert c.recv() == expected(7)
    c.send_json({"c": "WSE", "t": "subscription_update", "p": {"action": "unsubscribe", "topics": ["chat.1"]}, "v": 1})
    assert c.next_of("subscription_update")["p"]["success"] is True
    h.subscriber_count("chat.1", 0)
    # not an event for the application
    c.send_json({"t": "after", "p": {}})
    h.events.wait_msg(c.conn_id, "after")
    assert [e[0] for e in h.events.of(c.conn_id)] == ["auth_connect", "msg"]


# --- queue groups -------------------------------------------------------------------------------

def test_queue_group_splits_publications_between_members(h):
    m1 = h.connect("w1")
    m2 = h.connect("w2")
    plain = h.connect("p")
    h.server.subscribe_connection(m1.conn_id, ["jobs"], queue_group="workers")
    h.server.subscribe_connection(m2.conn_id, ["jobs"], None, "workers")
    h.server.subscribe_connection(plain.conn_id, ["jobs"])
    wait_until(lambda: h.server.get_queue_group_info("jobs") == {"workers": 2},
               what="get_queue_group_info == {'workers': 2} (is %r)" % h.server.get_queue_group_info("jobs"))
    h.subscriber_count("jobs", 1)  # members are not plain subscribers
    n = 10
    for i in range(n):
        h.server.broadcast_local("jobs", pub(i))
    assert [plain.recv() for _ in range(n)] == [expected(i) for i in range(n)]
    got1 = [json.loads(f)["p"]["n"] for f in h.frames_before_barrier(m1)]
    got2 = [json.loads(f)["p"]["n"] for f in h.frames_before_barrier(m2)]
    assert sorted(got1 + got2) == list(range(n)), (got1, got2)  # each to exactly one member
    assert got1 and got2, "both members get a share: %r %r" % (got1, got2)
    assert got1 == sorted(got1) and got2 == sorted(got2)


def test_queue_group_member_leaving(h):
    m1 = h.connect("w1")
    m2 = h.connect("w2")
    h.server.subscribe_connection(m1.conn_id, ["jobs"], queue_group="g")
    h.server.subscribe_connection(m2.conn_id, ["jobs"], queue_group="g")
    wait_until(lambda: h.server.get_queue_group_info("jobs") == {"g": 2}, what="2 members")
    m2.close()
    h.events.wait("disconnect", m2.conn_id)
    wait_until(lambda: h.server.get_queue_group_info("jobs") == {"g": 1}, what="1 member")
    for i in range(4):
        h.server.broadcast_local("jobs", pub(i))
    assert [m1.recv() for _ in range(4)] == [expected(i) for i in range(4)]
    h.server.unsubscribe_connection(m1.conn_id, None)
    wait_until(lambda: h.server.get_queue_group_info("jobs") == {}, what="no group left")
