// tests/unit/test_pubsub.cpp: the pure pieces of topics and publishing: the client publish and
// subscription_update envelopes (every shape, valid and invalid), the HTTP publish API body
// parser (proto/wse_publish), the `?topics=` split, ensure_category on publications, and the
// `publish` globs of the wse_topics ACL (auth/acl, from minted tokens).
// Owns: nothing. Thread: the test runner. Never depends on the order tests run in, never reads
// the clock (every verify gets a fixed now).
#include <doctest/doctest.h>
#include <simdjson.h>

#include <string>
#include <vector>

#include "auth/acl.hpp"
#include "auth/jwt.hpp"
#include "auth/token_source.hpp"
#include "proto/wse_envelope.hpp"
#include "proto/wse_publish.hpp"

using namespace wsed::proto;

namespace {

// Parses in place (padding after a copy) and copied; both must agree on the error.
wse_error parse_both_ways(wse_envelope_parser& parser, std::string_view text, wse_message& out) {
  static std::string padded;
  padded.assign(text);
  padded.append(wse_json_padding_bytes, '\0');
  const wse_error in_place =
      parser.parse(std::string_view(padded.data(), text.size()), out, wse_input_padding::padded);
  const wse_error copied = parser.parse(text, out, wse_input_padding::none);
  CHECK(in_place == copied);
  return copied;
}

// A publish request with p = payload.
std::string publish_request(std::string_view payload) {
  return R"({"c":"WSE","t":"publish","p":)" + std::string(payload) + R"(,"v":1})";
}

std::string subscription_request(std::string_view payload) {
  return R"({"c":"WSE","t":"subscription_update","p":)" + std::string(payload) + R"(,"v":1})";
}

constexpr int64_t now_s = 1'700'000'000;
const std::string hs_secret(40, 's');

// The identity a verifier gives an HS256 token minted with claims {"sub":"u","exp":..,<extra>}.
wsed::auth::result<wsed::auth::identity, wsed::auth::verify_error> verify_claims(
    std::string_view extra) {
  static const auto verifier = [] {
    wsed::auth::verifier_config config;
    config.hmac_secret = hs_secret;
    auto v = wsed::auth::verifier::build(config);
    REQUIRE(v.has_value());
    return *v;
  }();
  const std::string claims =
      R"({"sub":"u","exp":)" + std::to_string(now_s + 60) + "," + std::string(extra) + "}";
  auto token = wsed::auth::mint(wsed::auth::jwt_alg::hs256, hs_secret, claims);
  REQUIRE(token.has_value());
  return verifier->verify(*token, now_s);
}

bool inside(std::string_view part, std::string_view whole) {
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

// Whether text is a JSON object with a top-level "c" member.
bool object_with_c(std::string_view text) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (parser.parse(simdjson::padded_string(text)).get(root)) return false;
  simdjson::dom::object object;
  if (root.get_object().get(object)) return false;
  simdjson::dom::element c;
  return !object["c"].get(c);
}

}  // namespace

TEST_SUITE("pubsub") {
  TEST_CASE("pubsub: publish is a protocol kind") {
    CHECK(wse_kind_of("publish") == wse_kind::publish);
    CHECK(wse_kind_of("Publish") == wse_kind::application);
    CHECK(wse_kind_of("publish_x") == wse_kind::application);
    CHECK(wse_kind_of("subscription_update") == wse_kind::subscription);
    CHECK(wse_kind_of("subscription") == wse_kind::subscription);
  }

  TEST_CASE("pubsub: topic validity") {
    CHECK(wse_topic_valid("a"));
    CHECK(wse_topic_valid("chat.*"));
    CHECK(wse_topic_valid("price.?"));
    CHECK(wse_topic_valid(" "));
    CHECK(wse_topic_valid("caf\xc3\xa9"));
    CHECK(wse_topic_valid(std::string(wse_topic_bytes_max, 'x')));
    CHECK(!wse_topic_valid(std::string(wse_topic_bytes_max + 1, 'x')));
    CHECK(!wse_topic_valid(""));
    CHECK(!wse_topic_valid("a\x1f"));
    CHECK(!wse_topic_valid("a\x7f"));
    CHECK(!wse_topic_valid(std::string("a\0b", 3)));
    CHECK(wse_publish_topic_valid("chat.lobby"));
    CHECK(wse_publish_topic_valid(std::string(wse_topic_bytes_max, 'x')));
    CHECK(!wse_publish_topic_valid("chat.*"));
    CHECK(!wse_publish_topic_valid("chat.?"));
    CHECK(!wse_publish_topic_valid("*"));
    CHECK(!wse_publish_topic_valid(""));
    CHECK(!wse_publish_topic_valid("a\tb"));
  }

  TEST_CASE("pubsub: client publish request") {
    wse_envelope_parser parser;
    wse_message m;
    const std::string text =
        R"({"c":"WSE","t":"publish","id":"x1","ts":"2026-01-01T00:00:00Z","seq":4,"pri":"HIGH",)"
        R"("p":{"topic":"ch\u0061t","message": {"t":"chat","p":{"s":"}]\"\\","n":[1,{"a":[]}]}} },"v":1})";
    REQUIRE(parse_both_ways(parser, text, m) == wse_error::none);
    CHECK(m.kind == wse_kind::publish);
    CHECK(m.publish.topic == "chat");
    CHECK(m.publish.topic_valid);
    CHECK(m.publish.message_is_object);
    CHECK(m.publish.message_json == R"({"t":"chat","p":{"s":"}]\"\\","n":[1,{"a":[]}]}})");
    CHECK(inside(m.publish.message_json, text));

    // Member order does not matter; an empty message object is an object.
    const std::string reordered = publish_request(R"({"message":{},"topic":"a"})");
    REQUIRE(parse_both_ways(parser, reordered, m) == wse_error::none);  // m's views need it alive
    CHECK(m.publish.topic == "a");
    CHECK(m.publish.topic_valid);
    CHECK(m.publish.message_json == "{}");
    CHECK(m.publish.message_is_object);

    // Legacy prefix.
    const std::string legacy = "WSE" + publish_request(R"({"topic":"a","message":{"t":"x"}})");
    REQUIRE(parse_both_ways(parser, legacy, m) == wse_error::none);
    CHECK(m.kind == wse_kind::publish);
    CHECK(m.legacy_prefix_bytes == 3);
    CHECK(m.publish.message_json == R"({"t":"x"})");
    CHECK(m.publish.topic_valid);
  }

  TEST_CASE("pubsub: client publish request shapes never fail the parse") {
    wse_envelope_parser parser;
    wse_message m;
    struct shape {
      const char* payload;  // nullptr: no "p" at all
      bool topic_valid;
      bool message_is_object;
      const char* topic;
      const char* message_json;
    };
    const std::string long_topic(wse_topic_bytes_max + 1, 't');
    const std::string long_payload = R"({"topic":")" + long_topic + R"(","message":{}})";
    const shape shapes[] = {
        {nullptr, false, false, "", ""},
        {"1", false, false, "", ""},
        {"[]", false, false, "", ""},
        {"null", false, false, "", ""},
        {"{}", false, false, "", ""},
        {R"({"topic":"a"})", true, false, "a", ""},
        {R"({"message":{}})", false, true, "", "{}"},
        {R"({"topic":5,"message":{}})", false, true, "", "{}"},
        {R"({"topic":null,"message":{}})", false, true, "", "{}"},
        {R"({"topic":"","message":{}})", false, true, "", "{}"},
        {R"({"topic":"a\u0001","message":{}})", false, true, "a\x01", "{}"},
        {R"({"topic":"a.*","message":{}})", false, true, "a.*", "{}"},
        {R"({"topic":"a?","message":{}})", false, true, "a?", "{}"},
        {R"({"topic":"a","topic":"b","message":{}})", false, true, "a", "{}"},
        {R"({"topic":"a","message":[1]})", true, false, "a", "[1]"},
        {R"({"topic":"a","message":"{}"})", true, false, "a", R"("{}")"},
        {R"({"topic":"a","message":null})", true, false, "a", "null"},
        {R"({"topic":"a","message":7})", true, false, "a", "7"},
        {R"({"topic":"a","message":{},"message":{}})", true, false, "a", "{}"},
        {R"({"topic":"a","p":{"message":{}}})", true, false, "a", ""},  // nested: not p.message
    };
    for (const shape& s : shapes) {
      const std::string text = s.payload ? publish_request(s.payload) : R"({"t":"publish"})";
      CAPTURE(text);
      REQUIRE(parse_both_ways(parser, text, m) == wse_error::none);
      CHECK(m.kind == wse_kind::publish);
      CHECK(m.publish.topic_valid == s.topic_valid);
      CHECK(m.publish.message_is_object == s.message_is_object);
      CHECK(m.publish.topic == s.topic);
      CHECK(m.publish.message_json == s.message_json);
    }
    REQUIRE(parse_both_ways(parser, publish_request(long_payload), m) == wse_error::none);
    CHECK(!m.publish.topic_valid);
    CHECK(m.publish.message_is_object);
    // Invalid JSON is still a parse error.
    CHECK(parse_both_ways(parser, publish_request(R"({"topic":"a","message":{)"), m) ==
          wse_error::malformed_json);
    CHECK(parse_both_ways(parser, publish_request(R"({"topic":"a","message":{"a":tru}})"), m) ==
          wse_error::malformed_json);
    // Fields of an earlier parse do not leak into the next one.
    REQUIRE(parse_both_ways(parser, publish_request(R"({"topic":"a","message":{}})"), m) ==
            wse_error::none);
    REQUIRE(parse_both_ways(parser, R"({"t":"chat","p":{"topic":"a","message":{}}})", m) ==
            wse_error::none);
    CHECK(m.kind == wse_kind::application);
    CHECK(!m.publish.topic_valid);
    CHECK(m.publish.message_json.empty());
  }

  TEST_CASE("pubsub: publish message found at every offset and through every escape") {
    // The raw span of p.message comes from a scanner, not the DOM: move the message over every
    // offset (leading members of growing size, spaces) and put strings full of brackets,
    // escaped quotes and backslashes before it.
    wse_envelope_parser parser;
    wse_message m;
    const std::string message = R"({"t":"x","p":{"q":"\"]}","b":"\\","e":[{},[],"\\\""]}})";
    for (size_t pad = 0; pad < 80; ++pad) {
      const std::string filler(pad, 'f');
      for (const std::string& before :
           {R"({"z":")" + filler + R"(","topic":"a","message":)",
            R"({"z":[")" + filler + R"(\"]"],"topic":"a",)" + std::string(pad % 7, ' ') +
                R"("message":)" + std::string(pad % 5, '\n'),
            R"({"topic":"a","z":{"k\\":")" + filler + R"(\\"},"message":)"}) {
        const std::string text =
            publish_request(before + message + std::string(pad % 3, ' ') + "}");
        CAPTURE(text);
        REQUIRE(parse_both_ways(parser, text, m) == wse_error::none);
        CHECK(m.publish.message_json == message);
        CHECK(m.publish.message_is_object);
        CHECK(m.publish.topic_valid);
      }
    }
  }

  TEST_CASE("pubsub: a publish request cut at every byte is an error, never a crash") {
    wse_envelope_parser parser;
    wse_message m;
    const std::string text =
        publish_request(R"({"topic":"chat","message":{"t":"chat","p":{"text":"hi \"x\""}}})");
    REQUIRE(parse_both_ways(parser, text, m) == wse_error::none);
    for (size_t cut = 0; cut < text.size(); ++cut) {
      CAPTURE(cut);
      CHECK(parse_both_ways(parser, std::string_view(text).substr(0, cut), m) != wse_error::none);
    }
  }

  TEST_CASE("pubsub: subscription request shapes") {
    wse_envelope_parser parser;
    wse_message m;
    auto sub = [&](std::string_view payload) -> const wse_subscription& {
      const std::string text = payload.empty() ? std::string(R"({"t":"subscription_update"})")
                                               : subscription_request(payload);
      CAPTURE(text);
      REQUIRE(parse_both_ways(parser, text, m) == wse_error::none);
      CHECK(m.kind == wse_kind::subscription);
      return m.subscription;
    };
    const wse_subscription* s = &sub(R"({"action":"subscribe","topics":["a","b.*"]})");
    CHECK(s->action_valid);
    CHECK(s->action == wse_subscription_action::subscribe);
    CHECK(s->topics_is_array);
    CHECK(s->topic_count == 2);
    CHECK(s->topics_over_max == 0);

    s = &sub(R"({"topics":[],"action":"unsubscribe","recover":true,"recovery":{}})");
    CHECK(s->action_valid);
    CHECK(s->action == wse_subscription_action::unsubscribe);
    CHECK(s->action_name == "unsubscribe");
    CHECK(s->topics_is_array);
    CHECK(s->topic_count == 0);

    // Actions other than subscribe/unsubscribe are distinguishable.
    for (const char* payload :
         {R"({"action":"Subscribe","topics":["a"]})", R"({"action":"drop","topics":["a"]})",
          R"({"action":"","topics":["a"]})"}) {
      s = &sub(payload);
      CHECK(!s->action_valid);
      CHECK(s->topics_is_array);
      CHECK(s->topic_count == 1);
    }
    CHECK(sub(R"({"action":"drop","topics":[]})").action_name == "drop");
    for (const char* payload :
         {R"({"action":1,"topics":["a"]})", R"({"action":null,"topics":["a"]})",
          R"({"action":["subscribe"],"topics":["a"]})", R"({"topics":["a"]})"}) {
      s = &sub(payload);
      CHECK(!s->action_valid);
      CHECK(s->action_name.empty());
      CHECK(s->topic_count == 1);
    }

    // topics not an array.
    for (const char* payload :
         {R"({"action":"subscribe"})", R"({"action":"subscribe","topics":"a"})",
          R"({"action":"subscribe","topics":null})", R"({"action":"subscribe","topics":{"a":1}})",
          R"({"action":"subscribe","topics":3})"}) {
      s = &sub(payload);
      CHECK(s->action_valid);
      CHECK(!s->topics_is_array);
      CHECK(s->topic_count == 0);
      CHECK(s->topics_over_max == 0);
    }

    // p absent or not an object.
    for (const char* payload : {"", "null", "[]", R"("subscribe")", "7"}) {
      s = &sub(payload);
      CHECK(!s->action_valid);
      CHECK(!s->topics_is_array);
      CHECK(s->topic_count == 0);
    }

    // Non-string elements keep their place, listed as invalid with an empty name.
    s = &sub(R"({"action":"subscribe","topics":["a",1,null,["b"],{"c":"d"},"",true,"\u0065"]})");
    REQUIRE(s->topic_count == 8);
    const auto list = s->list();
    CHECK(list[0].name == "a");
    CHECK(list[0].valid);
    for (size_t i = 1; i <= 4; ++i) {
      CHECK(list[i].name.empty());
      CHECK(!list[i].valid);
    }
    CHECK(!list[5].valid);  // ""
    CHECK(!list[6].valid);
    CHECK(list[7].name == "e");
    CHECK(list[7].valid);
  }

  TEST_CASE("pubsub: subscription topic count around the maximum") {
    wse_envelope_parser parser;
    wse_message m;
    for (size_t n :
         {wse_subscription_topics_max - 1, wse_subscription_topics_max,
          wse_subscription_topics_max + 1, wse_subscription_topics_max + 7, size_t{1000}}) {
      std::string topics;
      for (size_t i = 0; i < n; ++i) {
        topics += (i ? "," : "");
        // Every 5th element is not a string, so over-max elements of any type are counted.
        topics += i % 5 == 4 ? std::string("{\"x\":[1]}") : "\"t" + std::to_string(i) + "\"";
      }
      CAPTURE(n);
      REQUIRE(parse_both_ways(
                  parser,
                  subscription_request(R"({"action":"subscribe","topics":[)" + topics + "]}"),
                  m) == wse_error::none);
      const size_t listed = std::min(n, wse_subscription_topics_max);
      CHECK(m.subscription.topic_count == listed);
      CHECK(m.subscription.topics_over_max == n - listed);
      CHECK(m.subscription.topics_is_array);
      CHECK(m.subscription.list().back().valid == ((listed - 1) % 5 != 4));
      CHECK(m.subscription.list().front().name == "t0");
    }
    // The next request starts from zero.
    REQUIRE(parse_both_ways(parser, subscription_request(R"({"action":"subscribe","topics":[]})"),
                            m) == wse_error::none);
    CHECK(m.subscription.topic_count == 0);
    CHECK(m.subscription.topics_over_max == 0);
  }

  TEST_CASE("pubsub: ensure_category on publications") {
    wse_envelope_parser parser;
    struct example {
      const char* in;
      const char* out;
    };
    const example examples[] = {
        {R"({"p":{"x":1}})", R"({"c":"U","p":{"x":1}})"},  // no "t": U
        {"{}", R"({"c":"U"})"},
        {R"({"t":"chat","p":{}})", R"({"c":"U","t":"chat","p":{}})"},
        {R"({"t":"server_ready"})", R"({"c":"WSE","t":"server_ready"})"},
        {R"({"t":"book_snapshot"})", R"({"c":"S","t":"book_snapshot"})"},
        {R"({"t":"x","c":"S"})", R"({"t":"x","c":"S"})"},            // has "c": unchanged
        {R"({"c":5,"t":"x"})", R"({"c":5,"t":"x"})"},                // any "c" counts
        {R"({"\u0063":"S","t":"x"})", R"({"\u0063":"S","t":"x"})"},  // escaped key is "c"
        {R"({"p":{"c":"WSE","t":"error"}})", R"({"c":"U","p":{"c":"WSE","t":"error"}})"},
        {R"({"p":{"t":"error"},"t":"chat"})", R"({"c":"U","p":{"t":"error"},"t":"chat"})"},
        {R"({"t":5})", R"({"c":"U","t":5})"},                            // non-string "t": U
        {R"({"t":"","t":"error"})", R"({"c":"U","t":"","t":"error"})"},  // first "t" decides
        {" \n{ \"t\" : \"error\" } ", " \n{\"c\":\"WSE\", \"t\" : \"error\" } "},
    };
    for (const example& e : examples) {
      CAPTURE(e.in);
      std::string out = "prefix:";
      REQUIRE(parser.ensure_category(e.in, out) == wse_error::none);
      CHECK(out == std::string("prefix:") + e.out);
      CHECK(object_with_c(std::string_view(out).substr(7)));
    }
    for (const char* bad : {"[]", "[{\"t\":\"x\"}]", "\"{}\"", "1", "null"}) {
      std::string out = "keep";
      CHECK(parser.ensure_category(bad, out) == wse_error::not_object);
      CHECK(out == "keep");
    }
    std::string out = "keep";
    CHECK(parser.ensure_category("{", out) == wse_error::malformed_json);
    CHECK(parser.ensure_category("", out) == wse_error::malformed_json);
    CHECK(parser.ensure_category("{} {}", out) == wse_error::malformed_json);
    CHECK(parser.ensure_category(std::string(70, '[') + std::string(70, ']'), out) ==
          wse_error::too_deep);
    CHECK(out == "keep");
  }

  TEST_CASE("pubsub: publish API body, every target") {
    wse_publish_parser parser;
    std::vector<wse_publish_item> items;
    const std::string one = R"({"topic":"chat.lobby","message":{"t":"chat","p":{"text":"hi"}}})";
    REQUIRE(parser.parse(one, items));
    CHECK(parser.error().empty());
    REQUIRE(items.size() == 1);
    CHECK(items[0].target == wse_publish_target::topic);
    CHECK(items[0].key == "chat.lobby");
    CHECK(items[0].message_json == R"({"t":"chat","p":{"text":"hi"}})");
    CHECK(inside(items[0].message_json, one));

    REQUIRE(parser.parse(R"({"message":{"t":"x"},"broadcast":true})", items));
    REQUIRE(items.size() == 1);
    CHECK(items[0].target == wse_publish_target::broadcast);
    CHECK(items[0].key.empty());
    CHECK(items[0].message_json == R"({"t":"x"})");

    REQUIRE(parser.parse(R"({"user":"al\u0069ce","message":{},"extra":[1,2]})", items));
    REQUIRE(items.size() == 1);
    CHECK(items[0].target == wse_publish_target::user);
    CHECK(items[0].key == "alice");
    CHECK(items[0].message_json == "{}");

    const std::string many =
        " [ {\"topic\":\"a\",\"message\":{\"n\":1}} "
        ",\n{\"broadcast\":true,\"message\":{\"n\":[2]}},"
        "{\"user\":\"u\", \"message\" : {\"s\":\"],}{\\\"\"} }]\n";
    REQUIRE(parser.parse(many, items));
    REQUIRE(items.size() == 3);
    CHECK(items[0].target == wse_publish_target::topic);
    CHECK(items[0].key == "a");
    CHECK(items[0].message_json == R"({"n":1})");
    CHECK(items[1].target == wse_publish_target::broadcast);
    CHECK(items[1].message_json == R"({"n":[2]})");
    CHECK(items[2].target == wse_publish_target::user);
    CHECK(items[2].key == "u");
    CHECK(items[2].message_json == R"({"s":"],}{\""})");
    for (const auto& item : items) CHECK(inside(item.message_json, many));

    REQUIRE(parser.parse("[]", items));
    CHECK(items.empty());
    REQUIRE(parser.parse(" [ ] ", items));
    CHECK(items.empty());

    // In place with padding gives the same.
    std::string padded = many;
    padded.append(wse_json_padding_bytes, '\0');
    REQUIRE(parser.parse(std::string_view(padded.data(), many.size()), items,
                         wse_input_padding::padded));
    REQUIRE(items.size() == 3);
    CHECK(items[2].message_json == R"({"s":"],}{\""})");
    CHECK(inside(items[2].message_json, padded));
  }

  TEST_CASE("pubsub: publish API body, every refusal names the item and the field") {
    wse_publish_parser parser;
    std::vector<wse_publish_item> items;
    struct refusal {
      std::string body;
      std::string error;
    };
    const std::string long_topic(wse_topic_bytes_max + 1, 't');
    const std::string long_user(wse_publish_user_bytes_max + 1, 'u');
    const refusal refusals[] = {
        {"", "invalid JSON"},
        {"{", "invalid JSON"},
        {R"({"topic":"a","message":{}} x)", "invalid JSON"},
        {"{\"topic\":\"\xff\",\"message\":{}}", "invalid JSON"},
        {R"({"topic":"a","message":)" + std::string(70, '[') + std::string(70, ']') + "}",
         "invalid JSON (nested deeper than 64)"},
        {"1", "the body must be a JSON object or an array of objects"},
        {R"("x")", "the body must be a JSON object or an array of objects"},
        {"null", "the body must be a JSON object or an array of objects"},
        {"[1]", "item 0: must be a JSON object"},
        {R"([{"topic":"a","message":{}},[]])", "item 1: must be a JSON object"},
        {R"({"message":{}})", "item 0: exactly one of topic, broadcast, user"},
        {"{}", "item 0: exactly one of topic, broadcast, user"},
        {R"({"topic":"a","user":"u","message":{}})",
         "item 0: exactly one of topic, broadcast, user"},
        {R"({"topic":"a","broadcast":true,"message":{}})",
         "item 0: exactly one of topic, broadcast, user"},
        {R"({"topic":"a","topic":"b","message":{}})", "item 0: duplicate field topic"},
        {R"({"user":"a","user":"b","message":{}})", "item 0: duplicate field user"},
        {R"({"broadcast":true,"broadcast":true,"message":{}})",
         "item 0: duplicate field broadcast"},
        {R"({"topic":"a","message":{},"message":{}})", "item 0: duplicate field message"},
        {R"({"topic":1,"message":{}})", "item 0: topic must be a string"},
        {R"({"topic":"","message":{}})",
         "item 0: topic must be 1 to 256 bytes without control characters"},
        {R"({"topic":")" + long_topic + R"(","message":{}})",
         "item 0: topic must be 1 to 256 bytes without control characters"},
        {R"({"topic":"a\nb","message":{}})",
         "item 0: topic must be 1 to 256 bytes without control characters"},
        {R"({"topic":"chat.*","message":{}})",
         "item 0: topic must not contain * or ? (publish to a concrete topic)"},
        {R"({"topic":"chat?","message":{}})",
         "item 0: topic must not contain * or ? (publish to a concrete topic)"},
        {R"({"broadcast":false,"message":{}})", "item 0: broadcast must be true"},
        {R"({"broadcast":"true","message":{}})", "item 0: broadcast must be true"},
        {R"({"broadcast":1,"message":{}})", "item 0: broadcast must be true"},
        {R"({"broadcast":null,"message":{}})", "item 0: broadcast must be true"},
        {R"({"user":7,"message":{}})", "item 0: user must be a string"},
        {R"({"user":"","message":{}})", "item 0: user must be 1 to 256 bytes"},
        {R"({"user":")" + long_user + R"(","message":{}})", "item 0: user must be 1 to 256 bytes"},
        {R"({"topic":"a"})", "item 0: missing message"},
        {R"({"topic":"a","message":[]})", "item 0: message must be a JSON object"},
        {R"({"topic":"a","message":"{}"})", "item 0: message must be a JSON object"},
        {R"({"topic":"a","message":null})", "item 0: message must be a JSON object"},
        {R"([{"topic":"a","message":{}},{"user":"u","message":{}},{"broadcast":true,"message":{}},)"
         R"({"topic":"d","message":1}])",
         "item 3: message must be a JSON object"},
    };
    for (const refusal& r : refusals) {
      CAPTURE(r.body);
      items.assign(2, wse_publish_item{});
      CHECK(!parser.parse(r.body, items));
      CHECK(parser.error() == r.error);
      CHECK(items.empty());
    }
    // Boundaries that are accepted.
    REQUIRE(parser.parse(
        R"({"topic":")" + std::string(wse_topic_bytes_max, 't') + R"(","message":{}})", items));
    REQUIRE(parser.parse(
        R"({"user":")" + std::string(wse_publish_user_bytes_max, 'u') + R"(","message":{}})",
        items));
    REQUIRE(parser.parse(R"({"user":"u\u0000v","message":{}})", items));
    CHECK(items[0].key == std::string_view("u\0v", 3));
    // A good parse clears the previous error.
    CHECK(parser.error().empty());
  }

  TEST_CASE("pubsub: publish API item count limit") {
    wse_publish_parser parser;
    std::vector<wse_publish_item> items;
    auto body_of = [](size_t n) {
      std::string body = "[";
      for (size_t i = 0; i < n; ++i) {
        body += i ? "," : "";
        body += R"({"topic":"t)" + std::to_string(i % 100) + R"(","message":{"t":"x","p":{"seq":)" +
                std::to_string(i) + "}}}";
      }
      return body + "]";
    };
    const std::string full = body_of(wse_publish_items_max);
    REQUIRE(parser.parse(full, items));
    REQUIRE(items.size() == wse_publish_items_max);
    CHECK(items.back().key == "t99");
    CHECK(items.back().message_json == R"({"t":"x","p":{"seq":9999}})");
    CHECK(!parser.parse(body_of(wse_publish_items_max + 1), items));
    CHECK(parser.error() == "too many items (max 10000)");
    CHECK(items.empty());
  }

  TEST_CASE("pubsub: a publish API body cut at every byte is refused, never a crash") {
    wse_publish_parser parser;
    std::vector<wse_publish_item> items;
    for (const std::string& body :
         {std::string(R"({"topic":"a\"b","message":{"t":"x","p":{"s":"[{\\"}}})"),
          std::string(R"([{"user":"u","message":{}},{"broadcast":true,"message":{"a":[1,2]}}])")}) {
      REQUIRE(parser.parse(body, items));
      for (size_t cut = 0; cut < body.size(); ++cut) {
        CAPTURE(cut);
        CHECK(!parser.parse(std::string_view(body).substr(0, cut), items));
        CHECK(!parser.error().empty());
      }
    }
  }

  TEST_CASE("pubsub: ?topics= split") {
    using list = std::vector<std::string>;
    CHECK(wse_split_topics("") == list{});
    CHECK(wse_split_topics("a") == list{"a"});
    CHECK(wse_split_topics("a,b") == list{"a", "b"});
    CHECK(wse_split_topics(",,a,,b,") == list{"a", "b"});
    CHECK(wse_split_topics(",") == list{});
    CHECK(wse_split_topics("b,a,b") == list{"b", "a", "b"});       // order and duplicates kept
    CHECK(wse_split_topics("chat.*, x") == list{"chat.*", " x"});  // no trimming, no checks
    size_t over = 99;
    CHECK(wse_split_topics("a,b", &over).size() == 2);
    CHECK(over == 0);

    // A comma at every offset of a word splits it there (empty halves dropped).
    const std::string word = "battle.glob_test";
    for (size_t at = 0; at <= word.size(); ++at) {
      const std::string joined = word.substr(0, at) + "," + word.substr(at);
      list expected;
      if (at > 0) expected.push_back(word.substr(0, at));
      if (at < word.size()) expected.push_back(word.substr(at));
      CAPTURE(joined);
      CHECK(wse_split_topics(joined) == expected);
    }

    // More than the maximum: the first wse_subscription_topics_max are kept, the rest counted.
    std::string value;
    for (size_t i = 0; i < wse_subscription_topics_max + 3; ++i) {
      value += 't';  // (not "t" + to_string: GCC 12 warns -Wrestrict on that falsely)
      value += std::to_string(i);
      value += ",,";
    }
    const list topics = wse_split_topics(value, &over);
    REQUIRE(topics.size() == wse_subscription_topics_max);
    CHECK(topics.front() == "t0");
    CHECK(topics.back() == "t" + std::to_string(wse_subscription_topics_max - 1));
    CHECK(over == 3);
    CHECK(wse_split_topics(value).size() == wse_subscription_topics_max);
  }

  TEST_CASE("pubsub: ?topics= from the upgrade URL, decoded by auth::query_value") {
    using list = std::vector<std::string>;
    // query_value percent-decodes (%XX, either case; '+' is a space) before the split, so an
    // encoded comma separates too; a bad escape is kept as is.
    const auto value = wsed::auth::query_value(
        "?format=json&topics=chat.%2A%2Cprice.%3f,a+b,%zz,caf%C3%A9&topics=ignored", "topics");
    REQUIRE(value.has_value());
    CHECK(*value == "chat.*,price.?,a b,%zz,caf\xc3\xa9");
    CHECK(wse_split_topics(*value) == list{"chat.*", "price.?", "a b", "%zz", "caf\xc3\xa9"});
    CHECK(wsed::auth::query_value("?to%70ics=x,y", "topics") == "x,y");
    CHECK(!wsed::auth::query_value("?topic=x", "topics").has_value());
    CHECK(wse_split_topics(wsed::auth::query_value("?topics=", "topics").value()).empty());
    CHECK(wsed::auth::query_value("?topics=a%2", "topics") == "a%2");
  }

  TEST_CASE("pubsub: publish globs of the ACL") {
    using wsed::auth::topic_acl;
    topic_acl none;
    CHECK(!none.allows_publish("chat"));  // no publish list: publishing is off
    none.allow = {"*"};
    CHECK(!none.allows_publish("chat"));  // allow is about subscribing, not publishing

    topic_acl acl;
    acl.publish = {"chat.*", "room.?"};
    acl.deny = {"chat.admin*", "room.x"};
    CHECK(acl.unrestricted() == false);
    CHECK(acl.allows_publish("chat.lobby"));
    CHECK(acl.allows_publish("chat."));
    CHECK(!acl.allows_publish("chat"));
    CHECK(!acl.allows_publish("chat.admin"));  // deny wins
    CHECK(!acl.allows_publish("chat.admins"));
    CHECK(acl.allows_publish("room.a"));
    CHECK(!acl.allows_publish("room.x"));
    CHECK(!acl.allows_publish("room.ab"));
    CHECK(!acl.allows_publish("news"));
    CHECK(!acl.allows_publish(""));
    CHECK(!acl.allows_publish("chat.a\nb"));
    CHECK(!acl.allows_publish("chat.*"));  // a glob is not a topic one publishes to
    CHECK(!acl.allows_publish("chat.?"));
    // Publish globs do not widen subscriptions.
    topic_acl publish_only;
    publish_only.publish = {"chat.*"};
    CHECK(publish_only.unrestricted());
    CHECK(publish_only.allows_publish("chat.a"));
    CHECK(!publish_only.allows_publish("other"));
    topic_acl everything;
    everything.publish = {"*"};
    CHECK(everything.allows_publish("anything.at.all"));
    CHECK(!everything.allows_publish("tab\there"));
  }

  TEST_CASE("pubsub: publish lists in minted tokens") {
    using wsed::auth::verify_error;
    auto r = verify_claims(
        R"("wse_topics":{"allow":["chat.*"],"deny":["chat.admin"],"publish":["chat.*"]})");
    REQUIRE(r.has_value());
    CHECK(r->acl.publish == std::vector<std::string>{"chat.*"});
    CHECK(r->acl.allows_publish("chat.lobby"));
    CHECK(!r->acl.allows_publish("chat.admin"));
    CHECK(!r->acl.allows_publish("news"));

    r = verify_claims(R"("wse_topics":{"publish":["a","b.?"]})");
    REQUIRE(r.has_value());
    CHECK(r->acl.allow.empty());
    CHECK(r->acl.deny.empty());
    CHECK(r->acl.unrestricted());
    CHECK(r->acl.allows_publish("b.1"));
    CHECK(!r->acl.allows_publish("c"));

    r = verify_claims(R"("wse_topics":{"publish":[]})");
    REQUIRE(r.has_value());
    CHECK(!r->acl.allows_publish("a"));
    r = verify_claims(R"("wse_topics":{"allow":["a"]})");  // no publish list: off
    REQUIRE(r.has_value());
    CHECK(r->acl.publish.empty());
    CHECK(!r->acl.allows_publish("a"));
    r = verify_claims(R"("other":1)");  // no claim at all: off
    REQUIRE(r.has_value());
    CHECK(!r->acl.allows_publish("a"));

    // Refused shapes: the token is bad_acl.
    for (const std::string& topics :
         {std::string(R"({"publish":"chat.*"})"), std::string(R"({"publish":{"a":1}})"),
          std::string(R"({"publish":null})"), std::string(R"({"publish":["a",1]})"),
          std::string(R"({"publish":[null]})"), std::string(R"({"publish":[""]})"),
          std::string(R"({"publish":["a\u0007"]})"),
          std::string(R"({"publish":["a"],"publish":["b"]})"),
          R"({"publish":[")" + std::string(wsed::auth::acl_glob_bytes_max + 1, 'g') + R"("]})"}) {
      CAPTURE(topics);
      const auto bad = verify_claims(R"("wse_topics":)" + topics);
      REQUIRE(!bad.has_value());
      CHECK(bad.error() == verify_error::bad_acl);
    }
    // acl_globs_max counts allow, deny and publish together.
    auto globs = [](std::string_view key, size_t n) {
      std::string list(1, '"');  // (piecewise: GCC 12 warns -Wrestrict on "x" + string)
      list += key;
      list += "\":[";
      for (size_t i = 0; i < n; ++i) {
        list += i ? ",\"g" : "\"g";
        list += std::to_string(i);
        list += '"';
      }
      return list + "]";
    };
    const size_t third = wsed::auth::acl_globs_max / 3;
    const size_t rest = wsed::auth::acl_globs_max - 2 * third;
    const std::string at_max = "{" + globs("allow", third) + "," + globs("deny", third) + "," +
                               globs("publish", rest) + "}";
    r = verify_claims(R"("wse_topics":)" + at_max);
    REQUIRE(r.has_value());
    CHECK(r->acl.publish.size() == rest);
    const std::string over = "{" + globs("allow", third) + "," + globs("deny", third) + "," +
                             globs("publish", rest + 1) + "}";
    const auto bad = verify_claims(R"("wse_topics":)" + over);
    REQUIRE(!bad.has_value());
    CHECK(bad.error() == verify_error::bad_acl);
  }
}
