// tests/unit/test_redis.cpp: the pure parts of the Redis bridge (engine/redis_names): URL
// parsing, channel names, Redis's glob matcher, key slots, RESP formatting and the echo filter;
// the command parser (proto/wse_command) and the router's process-wide interest changes.
#include <doctest/doctest.h>
#include <hiredis/hiredis.h>

#include <deque>
#include <random>
#include <string>
#include <unordered_map>

#include "auth/acl.hpp"
#include "engine/redis_names.hpp"
#include "fanout/router.hpp"
#include "proto/wse_command.hpp"

using namespace wsed::engine::redis;

TEST_CASE("redis: URLs parse into endpoints or refuse with a reason") {
  endpoint e;
  std::string why;
  REQUIRE(parse_endpoint("redis://127.0.0.1:6380", e, why));
  CHECK(e.host == "127.0.0.1");
  CHECK(e.port == 6380);
  CHECK(e.db == 0);
  CHECK(e.password.empty());
  REQUIRE(parse_endpoint("redis://bob:p%40ss@localhost:7000/3", e, why));
  CHECK(e.user == "bob");
  CHECK(e.password == "p@ss");
  CHECK(e.db == 3);
  CHECK(e.text() == "localhost:7000");
  REQUIRE(parse_endpoint("redis://:secret@127.0.0.1", e, why));
  CHECK(e.user.empty());
  CHECK(e.password == "secret");
  CHECK(e.port == 6379);
  REQUIRE(parse_endpoint("unix:///run/redis.sock?db=2", e, why));
  CHECK(e.unix_socket);
  CHECK(e.path == "/run/redis.sock");
  CHECK(e.db == 2);
  for (const char* bad :
       {"http://x", "redis://127.0.0.1:notaport", "redis://127.0.0.1:99999", "redis://127.0.0.1:0",
        "redis://", "redis://:pw@", "unix://relative", "rediss://127.0.0.1:6379",
        "redis://127.0.0.1:6379/x", "redis://a%zz:b@127.0.0.1"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_endpoint(bad, e, why));
    CHECK_FALSE(why.empty());
  }
  std::vector<endpoint> nodes;
  REQUIRE(parse_cluster("127.0.0.1:7000,127.0.0.1:7001,,127.0.0.1:7002", nodes, why));
  CHECK(nodes.size() == 3);
  CHECK(nodes[2].port == 7002);
  CHECK_FALSE(parse_cluster("", nodes, why));
  CHECK_FALSE(parse_cluster("127.0.0.1:7000,127.0.0.1:x", nodes, why));
}

TEST_CASE("redis: topic, broadcast, user and node channels round-trip without collisions") {
  std::string ch, key;
  append_topic_channel(ch, "wse:", "chat.room1");
  CHECK(ch == "wse:chat.room1");
  CHECK(parse_channel(ch, "wse:", key) == channel_kind::topic);
  CHECK(key == "chat.room1");
  ch.clear();
  append_topic_channel(ch, "wse:", "@broadcast");  // a topic that looks like a control name
  CHECK(ch == "wse:@@broadcast");
  CHECK(parse_channel(ch, "wse:", key) == channel_kind::topic);
  CHECK(key == "@broadcast");
  CHECK(parse_channel("wse:@broadcast", "wse:", key) == channel_kind::broadcast);
  CHECK(parse_channel("wse:@user:alice", "wse:", key) == channel_kind::user);
  CHECK(key == "alice");
  CHECK(parse_channel("wse:@node:0a1b2c3d", "wse:", key) == channel_kind::command);
  CHECK(key == "0a1b2c3d");
  CHECK(parse_channel("wse:@user:", "wse:", key) == channel_kind::unknown);
  CHECK(parse_channel("wse:@other", "wse:", key) == channel_kind::unknown);
  CHECK(parse_channel("other:chat", "wse:", key) == channel_kind::unknown);
  CHECK(parse_channel("wse:", "wse:", key) == channel_kind::unknown);
}

TEST_CASE("redis: glob patterns escape the prefix and Redis's own specials") {
  CHECK(pattern_for_glob("wse:", "news.*") == "wse:news.*");
  CHECK(pattern_for_glob("a*b:", "x?[y]\\") == "a\\*b:x?\\[y\\]\\\\");
  CHECK(pattern_for_glob("wse:", "@a*") == "wse:@@a*");
  // The escaped pattern matches in Redis exactly the channels whose topic the WSE glob matches.
  std::mt19937 rng(7);
  const std::string alphabet = "ab[]\\*?.";
  for (int round = 0; round < 20000; ++round) {
    std::string glob, topic;
    for (int i = int(rng() % 6); i > 0; --i) glob.push_back(alphabet[rng() % alphabet.size()]);
    for (int i = int(rng() % 6) + 1; i > 0; --i) {
      char ch = alphabet[rng() % alphabet.size()];
      topic.push_back(ch == '*' || ch == '?' ? 'a' : ch);
    }
    if (topic.front() == '@') continue;
    std::string channel;
    append_topic_channel(channel, "p[1]:", topic);
    CAPTURE(glob);
    CAPTURE(topic);
    CHECK(glob_match(pattern_for_glob("p[1]:", glob), channel) ==
          wsed::auth::glob_match(glob, topic));
  }
}

TEST_CASE("redis: glob_match follows Redis's stringmatchlen") {
  struct {
    const char* pattern;
    const char* text;
    bool match;
  } const cases[] = {
      {"*", "", true},
      {"h?llo", "hello", true},
      {"h*llo", "heeeello", true},
      {"h[ae]llo", "hallo", true},
      {"h[ae]llo", "hillo", false},
      {"h[^e]llo", "hallo", true},
      {"h[^e]llo", "hello", false},
      {"h[a-b]llo", "hbllo", true},
      {"a\\*b", "a*b", true},
      {"a\\*b", "axb", false},
      {"wse:*", "wse:@broadcast", true},
      {"wse:?", "wse:ab", false},
      {"*a*b*c*", "xxaxxbxxcxx", true},
  };
  for (const auto& c : cases) {
    CAPTURE(c.pattern);
    CAPTURE(c.text);
    CHECK(glob_match(c.pattern, c.text) == c.match);
  }
}

TEST_CASE("redis: key slots are Redis Cluster's (CRC16 mod 16384, hash tags)") {
  CHECK(key_slot("foo") == 12182);  // CLUSTER KEYSLOT foo
  CHECK(key_slot("bar") == 5061);
  CHECK(key_slot("123456789") == (0x31C3 & 16383));
  CHECK(key_slot("{user1000}.following") == key_slot("user1000"));
  // An empty first tag: the whole key is hashed, not the later {bar} (CRC16 of "foo{}{bar}").
  CHECK(key_slot("foo{}{bar}") == 8363);
  CHECK(key_slot("foo{}{bar}") != key_slot("bar"));
  CHECK(key_slot("{}x") != key_slot(""));  // empty tag: the whole key
}

TEST_CASE("redis: append_command writes RESP that hiredis reads back") {
  std::string out;
  append_command(out, {"PUBLISH", "wse:chat", std::string_view("{\"t\":\"x\"}\r\n\0z", 14)});
  append_command(out, {"PING"});
  redisReader* r = redisReaderCreate();
  REQUIRE(redisReaderFeed(r, out.data(), out.size()) == REDIS_OK);
  void* reply = nullptr;
  REQUIRE(redisReaderGetReply(r, &reply) == REDIS_OK);
  REQUIRE(reply);
  auto* rep = static_cast<redisReply*>(reply);
  REQUIRE(rep->type == REDIS_REPLY_ARRAY);
  REQUIRE(rep->elements == 3);
  CHECK(std::string_view(rep->element[2]->str, rep->element[2]->len) ==
        std::string_view("{\"t\":\"x\"}\r\n\0z", 14));
  freeReplyObject(reply);
  REQUIRE(redisReaderGetReply(r, &reply) == REDIS_OK);
  REQUIRE(reply);
  CHECK(static_cast<redisReply*>(reply)->elements == 1);
  freeReplyObject(reply);
  redisReaderFree(r);
}

TEST_CASE("redis: the echo filter consumes our own publications once and expires at fences") {
  echo_filter f;
  uint64_t a = fingerprint("wse:t", "{\"n\":1}"), b = fingerprint("wse:t", "{\"n\":2}");
  CHECK(a != b);
  CHECK(fingerprint("wse:t", "x") != fingerprint("wse:u", "x"));
  f.record(a, 1);
  f.record(b, 2);
  CHECK(f.consume(a));
  CHECK_FALSE(f.consume(a));  // a second copy is someone else's
  f.expire_through(2);        // b never came back (not subscribed when Redis ran it)
  CHECK(f.empty());
  CHECK_FALSE(f.consume(b));
  // The same payload twice, the fence of the first returning between the two echoes (the
  // second was written after that fence's PING): both echoes are ours.
  f.record(a, 3);
  CHECK(f.consume(a));  // echo of 3
  f.record(a, 4);
  f.expire_through(3);  // the fence covering 3
  CHECK(f.consume(a));  // echo of 4
  f.expire_through(4);
  CHECK(f.empty());
  CHECK(f.pending() == 0);
}

TEST_CASE("redis: the echo filter recognises every echo of repeated payloads, fences anywhere") {
  // A publisher writes payloads from a small set (repeats are routine: typing indicators) on
  // channels it is subscribed to (every one comes back, in write order) or not (none does);
  // echoes arrive in order, each after its write; a fence covers only writes whose echo, if
  // any, arrived. Every echo must be recognised, nothing else.
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    echo_filter f;
    struct pub {
      uint64_t fp, seq;
      bool echoes;
    };
    std::vector<pub> pubs;
    size_t next_echo = 0, fenced = 0;
    uint64_t seq = 0;
    auto echoing = [](uint64_t fp) { return fp % 3 != 0; };  // per channel: subscribed or not
    for (int step = 0; step < 2000; ++step) {
      switch (rng() % 3) {
        case 0: {
          uint64_t fp = 1 + rng() % 5;
          f.record(fp, ++seq);
          pubs.push_back({fp, seq, echoing(fp)});
          break;
        }
        case 1:
          if (next_echo < pubs.size()) {
            const pub& p = pubs[next_echo++];
            if (p.echoes) REQUIRE(f.consume(p.fp));
          }
          break;
        default: {
          if (next_echo == fenced) break;
          size_t upto = fenced + rng() % (next_echo - fenced) + 1;  // writes whose echo is in
          f.expire_through(pubs[upto - 1].seq);
          fenced = upto;
          break;
        }
      }
    }
    for (; next_echo < pubs.size(); ++next_echo) {
      if (pubs[next_echo].echoes) REQUIRE(f.consume(pubs[next_echo].fp));
    }
    for (uint64_t fp = 1; fp <= 5; ++fp) {  // every echo came: a copy now is someone else's
      if (echoing(fp)) CHECK_FALSE(f.consume(fp));
    }
    f.expire_through(seq);
    CHECK(f.empty());
    CHECK(f.pending() == 0);
  }
}

TEST_CASE("wse_command: ops, fields and refusals") {
  wsed::proto::wse_command_parser p;
  wsed::proto::wse_command c;
  REQUIRE(p.parse(R"({"op":"send","connection_id":"abc","message":{"t":"x","p":{"a":[1,2]}}})", c));
  CHECK(c.op == wsed::proto::wse_command_op::send);
  CHECK(c.connection_id == "abc");
  CHECK(c.message_json == R"({"t":"x","p":{"a":[1,2]}})");
  REQUIRE(p.parse(R"({"op":"disconnect","connection_id":"abc","code":4000,"reason":"bye"})", c));
  CHECK(c.code == 4000);
  CHECK(c.reason == "bye");
  REQUIRE(p.parse(R"({"op":"subscribe","connection_id":"abc","topics":["a","b.*"]})", c));
  CHECK(c.topics.size() == 2);
  REQUIRE(p.parse(R"({"op":"unsubscribe","connection_id":"abc"})", c));
  CHECK(c.topics.empty());
  for (const char* bad : {"", "[]", "{}", R"({"op":"send","connection_id":"abc"})",
                          R"({"op":"jump","connection_id":"abc"})", R"({"op":"send","message":{}})",
                          R"({"op":"send","connection_id":"abc","message":[1]})",
                          R"({"op":"disconnect","connection_id":"abc","code":1006})",
                          R"({"op":"disconnect","connection_id":"abc","code":"x"})",
                          R"({"op":"subscribe","connection_id":"abc"})",
                          R"({"op":"subscribe","connection_id":"abc","topics":[1]})",
                          R"({"op":"subscribe","connection_id":"abc","topics":["a\nb"]})",
                          R"({"op":"send","op":"disconnect","connection_id":"abc"})"}) {
    CAPTURE(bad);
    CHECK_FALSE(p.parse(bad, c));
    CHECK_FALSE(p.error().empty());
  }
  CHECK_FALSE(p.parse(R"({"op":"send","op":"disconnect","connection_id":"abc"})", c));
  CHECK(p.error() == "duplicate field op");
  std::string reason(123, 'x');  // a close frame's room, exactly
  REQUIRE(p.parse(R"({"op":"disconnect","connection_id":"abc","reason":")" + reason + "\"}", c));
  CHECK(c.reason.size() == 123);
  CHECK_FALSE(
      p.parse(R"({"op":"disconnect","connection_id":"abc","reason":")" + reason + "x\"}", c));
}

TEST_CASE("router: reports the process's first and last interest, users apart from topics") {
  wsed::fanout::router r(2);
  CHECK(r.add(0, "chat"));
  CHECK_FALSE(r.add(1, "chat"));
  CHECK(r.wants("chat"));
  CHECK_FALSE(r.remove(0, "chat"));
  CHECK(r.remove(1, "chat"));
  CHECK_FALSE(r.wants("chat"));
  CHECK_FALSE(r.remove(1, "chat"));  // not held
  CHECK(r.add(0, "news.*"));
  CHECK_FALSE(r.add(1, "news.*"));
  CHECK(r.wants("news.*"));
  CHECK_FALSE(r.remove(1, "news.*"));
  CHECK(r.remove(0, "news.*"));
  CHECK(r.add_user(0, "a*b"));  // a user id with glob characters stays an exact key
  CHECK(r.wants_user("a*b"));
  CHECK_FALSE(r.wants("a*b"));
  CHECK(r.shards_for("a*b") == 0);
  CHECK(r.remove_user(0, "a*b"));
  CHECK_FALSE(r.wants_user("a*b"));
}

TEST_CASE("redis: the echo filter's table survives collisions and growth") {
  // Fingerprints crowded onto few home slots (multiples of 1024 share one), a zero, and enough
  // live ones to grow the table several times; every record echoes once, in order.
  echo_filter f;
  std::vector<uint64_t> fps;
  for (uint64_t i = 0; i < 30000; ++i) fps.push_back(i % 7 == 0 ? 0 : (i % 300) * 1024 + i / 300);
  uint64_t seq = 0;
  for (uint64_t fp : fps) f.record(fp, ++seq);
  CHECK(f.pending() == fps.size());
  for (size_t i = 0; i < fps.size(); ++i) {
    REQUIRE(f.consume(fps[i]));
    if (i % 1000 == 999) f.expire_through(i + 1);  // fences along the way
  }
  CHECK_FALSE(f.consume(fps[5]));
  f.expire_through(seq);
  CHECK(f.empty());
}
