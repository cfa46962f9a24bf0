// tests/fuzz/fuzz_pubsub.cpp: libFuzzer target for the parsing and matching of topics and
// publishing: the envelope parser on subscription_update and publish messages, the publish API
// body parser (wse_publish_parser), ensure_category on publications, and auth::glob_match
// (with glob_covers, globs_intersect and topic_acl::allows_publish) against a reference matcher.
//
// Every input is used whole for each of them: as a message, as the p of a publish and of a
// subscription request, as an API body, as a publication; and split at its first NUL into a
// glob and a text. Properties: nothing crashes or overruns (ASan/UBSan); in place and copied
// parses agree; every raw span handed out (p.message, each item's message) is inside the input
// and is, as JSON, the same value the DOM sees there; validity flags agree with the validity
// functions; ensure_category's output is a JSON object with a top-level "c" and otherwise the
// input unchanged; glob_match agrees with a memoised recursive reference. Built by
// tools/fuzz.sh with clang -fsanitize=fuzzer.
#include <simdjson.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "auth/acl.hpp"
#include "proto/wse_envelope.hpp"
#include "proto/wse_publish.hpp"

using namespace wsed::proto;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

bool inside(std::string_view part, std::string_view whole) {
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

simdjson::dom::parser& reference_parser() {
  static simdjson::dom::parser parser;
  return parser;
}

// The minified DOM form of a JSON text (the text is known to be valid JSON).
std::string minified(std::string_view json) {
  static simdjson::dom::parser parser;  // its own: reference_parser's document is in use
  simdjson::dom::element root;
  require(!parser.parse(simdjson::padded_string(json)).get(root));
  return simdjson::minify(root);
}

// Reference glob matcher: the definition, recursive, memoised on (pattern, text) positions.
struct reference_glob {
  std::string_view pattern, text;
  std::vector<int8_t> memo;  // -1 unknown, 0 false, 1 true
  bool match(size_t p, size_t t) {
    int8_t& m = memo[p * (text.size() + 1) + t];
    if (m >= 0) return m;
    bool result;
    if (p == pattern.size()) {
      result = t == text.size();
    } else if (pattern[p] == '*') {
      result = match(p + 1, t) || (t < text.size() && match(p, t + 1));
    } else {
      result =
          t < text.size() && (pattern[p] == '?' || pattern[p] == text[t]) && match(p + 1, t + 1);
    }
    m = result;
    return result;
  }
  bool operator()(std::string_view pat, std::string_view txt) {
    pattern = pat;
    text = txt;
    memo.assign((pat.size() + 1) * (txt.size() + 1), -1);
    return match(0, 0);
  }
};

void check_envelope(wse_envelope_parser& parser, std::string_view text) {
  wse_message m;
  std::string padded(text);
  padded.append(wse_json_padding_bytes, '\0');
  const wse_error in_place =
      parser.parse(std::string_view(padded.data(), text.size()), m, wse_input_padding::padded);
  const wse_error copied = parser.parse(text, m, wse_input_padding::none);
  require(in_place == copied);
  if (copied != wse_error::none) return;
  const std::string_view json = text.substr(m.legacy_prefix_bytes);
  require(m.kind == wse_kind_of(m.type));
  simdjson::dom::element root;
  require(!reference_parser().parse(simdjson::padded_string(json)).get(root));
  if (m.kind == wse_kind::publish) {
    const wse_publish& pub = m.publish;
    require(!pub.topic_valid || wse_publish_topic_valid(pub.topic));
    simdjson::dom::element message;
    const bool has_message = !root["p"]["message"].get(message);
    require(pub.message_json.empty() == !has_message);
    if (has_message) {
      require(inside(pub.message_json, text));
      require(minified(pub.message_json) == simdjson::minify(message));
    }
    require(!pub.message_is_object || message.is_object());
    if (pub.message_is_object) {
      std::string framed;
      require(parser.ensure_category(pub.message_json, framed) == wse_error::none);
    }
  } else if (m.kind == wse_kind::subscription) {
    const wse_subscription& sub = m.subscription;
    require(sub.topic_count <= wse_subscription_topics_max);
    require(sub.topics_over_max == 0 || sub.topic_count == wse_subscription_topics_max);
    require(sub.topics_is_array || (sub.topic_count == 0 && sub.topics_over_max == 0));
    require(!sub.action_valid || sub.action_name == "subscribe" ||
            sub.action_name == "unsubscribe");
    for (const wse_topic& topic : sub.list()) {
      require(topic.valid == wse_topic_valid(topic.name));
    }
    simdjson::dom::array topics;
    if (!root["p"]["topics"].get_array().get(topics)) {
      require(sub.topic_count + sub.topics_over_max == topics.size());
    }
  }
}

void check_publish_api(wse_publish_parser& parser, wse_envelope_parser& envelope,
                       std::string_view body) {
  std::vector<wse_publish_item> items;
  if (!parser.parse(body, items)) {
    require(items.empty() && !parser.error().empty());
    return;
  }
  require(parser.error().empty() && items.size() <= wse_publish_items_max);
  simdjson::dom::element root;
  require(!reference_parser().parse(simdjson::padded_string(body)).get(root));
  const bool single = root.is_object();
  simdjson::dom::array array;
  require(single || (!root.get_array().get(array) && array.size() == items.size()));
  for (size_t i = 0; i < items.size(); ++i) {
    const wse_publish_item& item = items[i];
    switch (item.target) {
      case wse_publish_target::topic:
        require(wse_publish_topic_valid(item.key));
        break;
      case wse_publish_target::user:
        require(!item.key.empty() && item.key.size() <= wse_publish_user_bytes_max);
        break;
      case wse_publish_target::broadcast:
        require(item.key.empty());
        break;
    }
    require(inside(item.message_json, body));
    require(item.message_json.front() == '{' && item.message_json.back() == '}');
    simdjson::dom::element message;
    require(!(single ? root["message"] : root.at(i)["message"]).get(message));
    require(minified(item.message_json) == simdjson::minify(message));
    std::string framed;
    require(envelope.ensure_category(item.message_json, framed) == wse_error::none);
  }
}

void check_ensure_category(wse_envelope_parser& parser, std::string_view publication) {
  std::string out = "x";
  if (parser.ensure_category(publication, out) != wse_error::none) {
    require(out == "x");
    return;
  }
  const std::string_view framed = std::string_view(out).substr(1);
  simdjson::dom::parser own;
  simdjson::dom::element root;
  require(!own.parse(simdjson::padded_string(framed)).get(root));
  simdjson::dom::object object;
  require(!root.get_object().get(object));
  simdjson::dom::element c;
  require(!object["c"].get(c));
  if (framed.size() == publication.size()) {
    require(framed == publication);  // it had a top-level "c"
    return;
  }
  // Inserted right after the first '{': removing it gives the input back.
  const size_t brace = framed.find('{');
  require(brace != std::string_view::npos);
  std::string_view c_value;
  require(!c.get_string().get(c_value));
  std::string inserted = "\"c\":\"" + std::string(c_value) + "\"";
  require(framed.substr(brace + 1, inserted.size()) == inserted);
  std::string rest(framed.substr(0, brace + 1));
  std::string_view after = framed.substr(brace + 1 + inserted.size());
  if (after.starts_with(',')) after.remove_prefix(1);
  rest.append(after);
  require(rest == publication);
}

void check_glob(std::string_view input) {
  const size_t nul = input.find('\0');
  if (nul == std::string_view::npos) return;
  constexpr size_t pattern_bytes_max = 64;
  constexpr size_t text_bytes_max = 512;
  const std::string_view pattern = input.substr(0, std::min(nul, pattern_bytes_max));
  const std::string_view text = input.substr(nul + 1, text_bytes_max);
  static reference_glob reference;
  const bool expected = reference(pattern, text);
  require(wsed::auth::glob_match(pattern, text) == expected);
  const bool text_is_concrete = text.find_first_of("*?") == std::string_view::npos;
  if (text_is_concrete) {
    // A concrete text is a glob matching only itself.
    require(wsed::auth::glob_covers(pattern, text) == expected);
    require(wsed::auth::globs_intersect(pattern, text) == expected);
  }
  wsed::auth::topic_acl acl;
  acl.publish = {std::string(pattern)};
  require(acl.allows_publish(text) ==
          (expected && text_is_concrete && wsed::auth::valid_topic(text)));
  acl.deny = {std::string(pattern)};
  require(!acl.allows_publish(text));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static wse_envelope_parser envelope;
  static wse_publish_parser publish;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  check_envelope(envelope, input);
  check_envelope(envelope, R"({"c":"WSE","t":"publish","p":)" + std::string(input) + "}");
  check_envelope(envelope, R"({"t":"subscription_update","p":)" + std::string(input) + "}");
  check_publish_api(publish, envelope, input);
  check_ensure_category(envelope, input);
  check_glob(input);
  return 0;
}
