// tests/unit/test_deflate.cpp: permessage-deflate (RFC 7692): the Sec-WebSocket-Extensions
// negotiation, the frame parser's RSV1 rules (split at every offset, ws_feed.hpp), and the
// libdeflate codec against the RFC's own example bytes, a round trip, bad data and a bomb.
// Owns: nothing. Thread: the test runner. Never depends on the order tests run in.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "proto/deflate.hpp"
#include "proto/ws.hpp"
#include "tests/unit/ws_feed.hpp"

using namespace wsed::proto;
using namespace wsed::test;

namespace {

deflate_negotiation negotiate(std::initializer_list<std::string_view> values) {
  std::vector<std::string_view> v(values);
  return negotiate_permessage_deflate(std::span<const std::string_view>(v));
}

bool accepted(std::initializer_list<std::string_view> values) {
  return negotiate(values).accepted;
}

std::string inflate_string(deflate_codec& codec, const bytes& in, size_t cap = 1 << 20,
                           inflate_status expect = inflate_status::ok) {
  std::vector<uint8_t> out;
  size_t n = 99;
  CHECK(codec.inflate(in, cap, out, &n, 8) == expect);
  if (expect != inflate_status::ok) CHECK(n == 0);
  CHECK(out.size() >= n + (expect == inflate_status::ok ? 8 : 0));
  return std::string(reinterpret_cast<const char*>(out.data()), n);
}

bytes compressed_frame(uint8_t b0, const bytes& payload) {
  return raw_frame(b0, std::string(payload.begin(), payload.end()), default_key);
}

}  // namespace

TEST_CASE("deflate negotiation: plain offers and parameters") {
  CHECK(accepted({"permessage-deflate"}));
  CHECK(accepted({"Permessage-Deflate"}));
  CHECK(accepted({"permessage-deflate; client_max_window_bits"}));  // what browsers send
  CHECK(accepted({"permessage-deflate; client_max_window_bits=10"}));
  CHECK(accepted({"permessage-deflate;client_max_window_bits=\"12\""}));  // quoted value
  CHECK(accepted({"permessage-deflate; server_no_context_takeover; client_no_context_takeover"}));
  CHECK(accepted({"  permessage-deflate ;\tserver_no_context_takeover  "}));
  CHECK_FALSE(accepted({}));
  CHECK_FALSE(accepted({""}));
  CHECK_FALSE(accepted({"x-webkit-deflate-frame"}));
  CHECK_FALSE(accepted({"permessage-deflatex"}));

  deflate_negotiation n = negotiate({"permessage-deflate; server_max_window_bits=15"});
  CHECK(n.accepted);
  CHECK(n.server_max_window_bits);
  CHECK(std::string(deflate_response_value(n)).find("server_max_window_bits=15") !=
        std::string::npos);
  n = negotiate({"permessage-deflate"});
  CHECK_FALSE(n.server_max_window_bits);
  CHECK(deflate_response_value(n) ==
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
}

TEST_CASE("deflate negotiation: offers we cannot honour are declined, the next is taken") {
  // libdeflate compresses with a 32 KiB window: a smaller server window cannot be honoured.
  CHECK_FALSE(accepted({"permessage-deflate; server_max_window_bits=10"}));
  CHECK_FALSE(accepted({"permessage-deflate; server_max_window_bits"}));  // needs a value
  CHECK_FALSE(accepted({"permessage-deflate; client_max_window_bits=7"}));
  CHECK_FALSE(accepted({"permessage-deflate; client_max_window_bits=16"}));
  CHECK_FALSE(accepted({"permessage-deflate; client_max_window_bits=010"}));
  CHECK_FALSE(accepted({"permessage-deflate; client_max_window_bits=\"1x\""}));
  CHECK_FALSE(accepted({"permessage-deflate; server_no_context_takeover=1"}));
  CHECK_FALSE(
      accepted({"permessage-deflate; client_no_context_takeover; client_no_context_takeover"}));
  CHECK_FALSE(accepted({"permessage-deflate; foo"}));
  CHECK_FALSE(accepted({"permessage-deflate; foo=\"a,b\""}));

  // Several offers: the first acceptable one wins, in one value or across header lines.
  deflate_negotiation n =
      negotiate({"permessage-deflate; server_max_window_bits=10, permessage-deflate; "
                 "server_max_window_bits=15"});
  CHECK(n.accepted);
  CHECK(n.server_max_window_bits);
  n = negotiate({"permessage-deflate; server_max_window_bits=10, permessage-deflate"});
  CHECK(n.accepted);
  CHECK_FALSE(n.server_max_window_bits);
  CHECK(accepted({"permessage-deflate; foo=\"x, y\", permessage-deflate"}));
  CHECK(accepted({"foo; bar=1, permessage-deflate; client_max_window_bits"}));
  CHECK(accepted({"foo", "permessage-deflate"}));
  CHECK(accepted({"permessage-deflate; foo", "permessage-deflate"}));
  CHECK(accepted({", ,permessage-deflate"}));

  // Malformed lists: nothing after the break is trusted, the next header line still is.
  CHECK_FALSE(accepted({"permessage-deflate; client_max_window_bits=\"15"}));
  CHECK_FALSE(accepted({"permessage-deflate; =15"}));
  CHECK_FALSE(accepted({"permessage-deflate junk"}));
  CHECK_FALSE(accepted({"@, permessage-deflate"}));
  CHECK(accepted({"permessage-deflate; =15", "permessage-deflate"}));
}

TEST_CASE("deflate negotiation over a request's header lines") {
  const char head[] =
      "GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Extensions: permessage-deflate; "
      "server_max_window_bits=9\r\nsec-websocket-extensions: permessage-deflate\r\n\r\n";
  http_request_parser p;
  REQUIRE(p.feed(std::span<const char>(head, sizeof head - 1)) == http_parse_status::complete);
  bool offered = false;
  CHECK(negotiate_permessage_deflate(p.request(), &offered).accepted);
  CHECK(offered);
  const char none[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  http_request_parser q;
  REQUIRE(q.feed(std::span<const char>(none, sizeof none - 1)) == http_parse_status::complete);
  CHECK_FALSE(negotiate_permessage_deflate(q.request(), &offered).accepted);
  CHECK_FALSE(offered);
}

TEST_CASE("ws parser: RSV1 rules of permessage-deflate") {
  const bytes hello = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
  // Not negotiated: RSV1 anywhere is a protocol error.
  CHECK(feed_all_ways(compressed_frame(0xC1, hello)).error_code == 1002);
  // Negotiated: the message is marked compressed and its (binary) bytes are not UTF-8 checked.
  ws_record r = feed_all_ways(compressed_frame(0xC1, hello), ws_role::server, {}, true);
  CHECK(r.error_code == 0);
  REQUIRE(r.events.size() == 1);
  CHECK(r.events[0] == "ZT:" + std::string(hello.begin(), hello.end()));
  // Fragmented: RSV1 on the first frame only; on a continuation it is a 1002.
  r = feed_all_ways(
      cat({compressed_frame(0x41, {0xf2, 0x48, 0xcd}),
           compressed_frame(0x80, {0xc9, 0xc9, 0x07, 0x00}), cframe(ws_opcode::text, "x")}),
      ws_role::server, {}, true);
  CHECK(r.error_code == 0);
  REQUIRE(r.events.size() == 2);
  CHECK(r.events[0].starts_with("ZT:"));
  CHECK(r.events[1] == "T:x");  // the next message is plain again
  CHECK(feed_all_ways(cat({compressed_frame(0x41, {0xf2}), compressed_frame(0xC0, {0x00})}),
                      ws_role::server, {}, true)
            .error_code == 1002);
  // Control frames never carry RSV1.
  CHECK(feed_all_ways(compressed_frame(0xC9, {}), ws_role::server, {}, true).error_code == 1002);
  CHECK(feed_all_ways(compressed_frame(0xC8, {0x03, 0xe8}), ws_role::server, {}, true).error_code ==
        1002);
  // RSV2 / RSV3 stay errors.
  CHECK(feed_all_ways(compressed_frame(0xA1, {0x00}), ws_role::server, {}, true).error_code ==
        1002);
  CHECK(feed_all_ways(compressed_frame(0x91, {0x00}), ws_role::server, {}, true).error_code ==
        1002);
  // reset() keeps the negotiation.
  ws_frame_parser p;
  p.allow_compressed(true);
  p.reset();
  CHECK(p.compressed_allowed());
}

TEST_CASE("deflate codec: the RFC 7692 examples inflate") {
  deflate_codec codec;
  // 7.2.3.1: "Hello" compressed with a sync flush, the 00 00 ff ff stripped.
  CHECK(inflate_string(codec, {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}) == "Hello");
  // 7.2.3.3: a stored (uncompressed) block.
  CHECK(inflate_string(codec, {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00}) ==
        "Hello");
  // 7.2.3.4: a block with BFINAL set.
  CHECK(inflate_string(codec, {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00}) == "Hello");
  // An empty message (zlib's sync flush of nothing, stripped).
  CHECK(inflate_string(codec, {0x02, 0x00}).empty());
  CHECK(inflate_string(codec, {}).empty());
}

TEST_CASE("deflate codec: round trip, incompressible, bad data, bomb") {
  deflate_codec codec;
  std::string text;
  for (int i = 0; i < 2000; ++i) text += "{\"t\":\"tick\",\"n\":" + std::to_string(i % 7) + "}";
  std::span<const uint8_t> in(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  std::span<const uint8_t> z = codec.compress(in);
  REQUIRE(!z.empty());
  CHECK(z.size() < text.size() / 10);
  bytes copy(z.begin(), z.end());
  CHECK(inflate_string(codec, copy) == text);
  // Exactly at the cap inflates; one byte under it is a bomb.
  CHECK(inflate_string(codec, copy, text.size()) == text);
  CHECK(inflate_string(codec, copy, text.size() - 1, inflate_status::too_big).empty());

  // Not smaller: the caller sends it plain.
  const uint8_t one[] = {'x'};
  CHECK(codec.compress(one).empty());
  CHECK(codec.compress({}).empty());
  std::string noise;
  uint32_t x = 12345;
  for (int i = 0; i < 300; ++i) {
    x = x * 1103515245u + 12345u;
    noise += char(x >> 24);
  }
  CHECK(codec.compress({reinterpret_cast<const uint8_t*>(noise.data()), noise.size()}).empty());

  // Bad data: a reserved block type (BTYPE 11), a stored block whose NLEN is wrong.
  CHECK(inflate_string(codec, {0x07, 0x00}, 1 << 20, inflate_status::bad_data).empty());
  CHECK(
      inflate_string(codec, {0x00, 0x05, 0x00, 0x00, 0x00, 'a'}, 1 << 20, inflate_status::bad_data)
          .empty());

  // A bomb: 16 MiB of zeros compress to a few KiB; with a 1 MiB cap it stops at the cap.
  std::vector<uint8_t> zeros(16 << 20, 0);
  bytes bomb;
  {
    std::span<const uint8_t> zb = codec.compress(zeros);
    bomb.assign(zb.begin(), zb.end());
  }
  CHECK(bomb.size() < 32 * 1024);
  std::vector<uint8_t> out;
  size_t n = 0;
  CHECK(codec.inflate(bomb, 1 << 20, out, &n) == inflate_status::too_big);
  CHECK(out.capacity() <= (size_t{1} << 20) + 4096);
}
