// perf/bench_proto.cpp: Google Benchmark micro-benchmarks of proto/: our frame parser against
// wslay (the library DESIGN.md names) on the receive hot path, the memory each keeps per
// connection, UTF-8 validation, the HTTP upgrade parse and the accept-key computation, and
// permessage-deflate's cost per message (compress / inflate against the plain frame copy) and
// per shard (the codec's memory; a connection keeps no deflate state).
//
// Owns: its own buffers. Thread: the benchmark's main thread. Never asserts behaviour (that is
// the unit tests' job); it prints figures. Compare ratios from one run, not absolute numbers.
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <wslay/wslay.h>

#include <cstring>
#include <string>
#include <vector>

#include "proto/deflate.hpp"
#include "proto/http.hpp"
#include "proto/utf8.hpp"
#include "proto/ws.hpp"

using namespace wsed::proto;

namespace {

// A 194-byte JSON message, like the DESIGN.md inbound measurements.
std::string json_194() {
  std::string s =
      R"({"t":"chat.message","topic":"room/lobby","id":1234567,"ts":1717171717171,)"
      R"("user":{"id":"u-42","name":"alice"},"body":"hello everyone, this is a test message",)"
      R"("pad":")";
  while (s.size() < 192) s += 'x';
  s += "\"}";
  return s;
}

// `count` masked client frames of this payload back to back, as they sit in a provided buffer.
// Our parser unmasks in place, so each benchmark iteration XORs the previous iteration's output
// again; the mask key bytes are all < 0x80, so an ASCII payload stays valid ASCII either way and
// every iteration does the same work (unmask + UTF-8 check) without re-copying the input.
std::vector<uint8_t> client_stream(ws_opcode opcode, const std::string& payload, size_t count) {
  static const uint8_t key[4] = {0x1B, 0x2C, 0x3D, 0x4E};
  std::vector<uint8_t> out;
  out.reserve(count * (payload.size() + ws_header_bytes_max));
  for (size_t i = 0; i < count; ++i) {
    uint8_t header[ws_header_bytes_max];
    const size_t n = encode_frame_header(header, opcode, payload.size(), true, key);
    out.insert(out.end(), header, header + n);
    const size_t start = out.size();
    out.insert(out.end(), payload.begin(), payload.end());
    mask_bytes(out.data() + start, payload.size(), key);
  }
  return out;
}

std::string binary_16k() {
  std::string s(16384, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 131 + 7);
  return s;
}

// An inverted rate: CPU seconds per frame (printed with an SI prefix, e.g. "23.6n" = 23.6 ns).
void set_time_per_frame(benchmark::State& state, size_t frames) {
  state.counters["s_per_frame"] =
      benchmark::Counter(static_cast<double>(frames * state.iterations()),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// ---- our parser ----

void parse_ours(benchmark::State& state, std::vector<uint8_t> stream, size_t frames,
                bool utf8_by_application = false) {
  ws_frame_parser parser;
  ws_limits limits;
  limits.text_utf8_by_application = utf8_by_application;
  size_t messages = 0;
  for (auto _ : state) {
    std::span<uint8_t> in(stream);
    while (true) {
      const ws_event ev = parser.next(in, limits);
      if (ev.kind == ws_event_kind::need_more) break;
      if (ev.kind != ws_event_kind::data) {
        state.SkipWithError("unexpected event");
        return;
      }
      benchmark::DoNotOptimize(ev.payload.data());
      messages += ev.message_end;
      in = in.subspan(ev.consumed);
    }
  }
  if (messages != frames * state.iterations()) state.SkipWithError("lost messages");
  state.SetItemsProcessed(static_cast<int64_t>(frames * state.iterations()));
  state.SetBytesProcessed(static_cast<int64_t>(stream.size() * state.iterations()));
  set_time_per_frame(state, frames);
}

// ---- wslay: a server context in no-buffering mode, recv_callback serving from a buffer ----

struct wslay_source {
  const std::vector<uint8_t>* stream = nullptr;
  size_t position = 0;
  size_t frames = 0;
};

ssize_t wslay_recv(wslay_event_context_ptr ctx, uint8_t* buf, size_t len, int, void* user) {
  auto* src = static_cast<wslay_source*>(user);
  const size_t left = src->stream->size() - src->position;
  if (left == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  const size_t n = std::min(len, left);
  std::memcpy(buf, src->stream->data() + src->position, n);
  src->position += n;
  return static_cast<ssize_t>(n);
}

ssize_t wslay_send(wslay_event_context_ptr, const uint8_t*, size_t len, int, void*) {
  return static_cast<ssize_t>(len);
}

void wslay_chunk(wslay_event_context_ptr, const wslay_event_on_frame_recv_chunk_arg* arg, void*) {
  benchmark::DoNotOptimize(arg->data);
}

void wslay_frame_end(wslay_event_context_ptr, void* user) {
  ++static_cast<wslay_source*>(user)->frames;
}

wslay_event_callbacks wslay_no_buffering_callbacks() {
  wslay_event_callbacks callbacks{};
  callbacks.recv_callback = wslay_recv;
  callbacks.send_callback = wslay_send;
  callbacks.on_frame_recv_chunk_callback = wslay_chunk;
  callbacks.on_frame_recv_end_callback = wslay_frame_end;
  return callbacks;
}

void parse_wslay(benchmark::State& state, const std::vector<uint8_t>& stream, size_t frames) {
  wslay_source src;
  src.stream = &stream;
  const wslay_event_callbacks callbacks = wslay_no_buffering_callbacks();
  wslay_event_context_ptr ctx = nullptr;
  if (wslay_event_context_server_init(&ctx, &callbacks, &src) != 0) {
    state.SkipWithError("wslay init failed");
    return;
  }
  wslay_event_config_set_no_buffering(ctx, 1);
  for (auto _ : state) {
    src.position = 0;
    if (wslay_event_recv(ctx) != 0 || !wslay_event_get_read_enabled(ctx)) {
      state.SkipWithError("wslay failed");
      break;
    }
  }
  if (src.frames != frames * state.iterations()) state.SkipWithError("lost frames");
  wslay_event_context_free(ctx);
  state.SetItemsProcessed(static_cast<int64_t>(frames * state.iterations()));
  state.SetBytesProcessed(static_cast<int64_t>(stream.size() * state.iterations()));
  set_time_per_frame(state, frames);
}

constexpr size_t text_frames = 320;   // ~64 KiB: one provided buffer's worth
constexpr size_t binary_frames = 16;  // 256 KiB

void BM_ws_parse_text194_ours(benchmark::State& state) {
  parse_ours(state, client_stream(ws_opcode::text, json_194(), text_frames), text_frames);
}
// WSE mode: whole text messages are left to the JSON parser's own UTF-8 check.
void BM_ws_parse_text194_ours_app_utf8(benchmark::State& state) {
  parse_ours(state, client_stream(ws_opcode::text, json_194(), text_frames), text_frames, true);
}
void BM_ws_parse_text194_wslay(benchmark::State& state) {
  parse_wslay(state, client_stream(ws_opcode::text, json_194(), text_frames), text_frames);
}
void BM_ws_parse_binary16k_ours(benchmark::State& state) {
  parse_ours(state, client_stream(ws_opcode::binary, binary_16k(), binary_frames), binary_frames);
}
void BM_ws_parse_binary16k_wslay(benchmark::State& state) {
  parse_wslay(state, client_stream(ws_opcode::binary, binary_16k(), binary_frames), binary_frames);
}
// Interleaved in registration order so that noise hits both sides alike.
BENCHMARK(BM_ws_parse_text194_ours);
BENCHMARK(BM_ws_parse_text194_ours_app_utf8);
BENCHMARK(BM_ws_parse_text194_wslay);
BENCHMARK(BM_ws_parse_binary16k_ours);
BENCHMARK(BM_ws_parse_binary16k_wslay);

// ---- memory per connection ----

size_t heap_bytes_in_use() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

// Creates and frees a context per iteration; the counters report the per-connection state:
// sizeof(ws_frame_parser) (lives inside the connection slot, no heap) against the heap bytes a
// wslay_event_context takes (malloc'd by wslay_event_context_server_init, measured with
// mallinfo2 before/after, so it includes malloc's chunk headers).
void BM_ws_context_memory(benchmark::State& state) {
  wslay_source src;
  const wslay_event_callbacks callbacks = wslay_no_buffering_callbacks();
  size_t wslay_bytes = 0;
  for (auto _ : state) {
    const size_t before = heap_bytes_in_use();
    wslay_event_context_ptr ctx = nullptr;
    wslay_event_context_server_init(&ctx, &callbacks, &src);
    wslay_bytes = heap_bytes_in_use() - before;
    benchmark::DoNotOptimize(ctx);
    wslay_event_context_free(ctx);
  }
  state.counters["ours_parser_bytes"] = static_cast<double>(sizeof(ws_frame_parser));
  state.counters["ours_heap_bytes"] = 0;
  state.counters["wslay_ctx_heap_bytes"] = static_cast<double>(wslay_bytes);
}
BENCHMARK(BM_ws_context_memory);

// ---- unmasking alone ----

void BM_ws_mask_16k(benchmark::State& state) {
  std::vector<uint8_t> data(16384, 0x41);
  const uint8_t key[4] = {1, 2, 3, 4};
  for (auto _ : state) {
    mask_bytes(data.data(), data.size(), key, 1);
    benchmark::DoNotOptimize(data.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(data.size() * state.iterations()));
}
BENCHMARK(BM_ws_mask_16k);

// ---- UTF-8 ----

std::string mixed_1k() {
  // ASCII, Latin-1 supplement, CJK and emoji in turn (1, 2, 3, 4-byte sequences).
  const std::string pieces[] = {"hello ", "\xc3\xa9\xc3\xa0\xc3\xbc ", "\xe4\xbd\xa0\xe5\xa5\xbd ",
                                "\xf0\x9f\x98\x80 "};
  std::string s;
  for (size_t i = 0; s.size() < 1024 - 16; ++i) s += pieces[i % 4];
  while (s.size() < 1024) s += 'z';
  return s;
}

void utf8_bench(benchmark::State& state, const std::string& text) {
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  if (!valid_utf8(bytes)) state.SkipWithError("input not valid");
  for (auto _ : state) {
    benchmark::DoNotOptimize(text.data());
    benchmark::DoNotOptimize(valid_utf8(bytes));
  }
  state.SetBytesProcessed(static_cast<int64_t>(text.size() * state.iterations()));
}
void BM_utf8_ascii_1k(benchmark::State& state) {
  utf8_bench(state, std::string(1024, 'a'));
}
void BM_utf8_mixed_1k(benchmark::State& state) {
  utf8_bench(state, mixed_1k());
}
BENCHMARK(BM_utf8_ascii_1k);
BENCHMARK(BM_utf8_mixed_1k);

// ---- HTTP upgrade ----

const std::string browser_request =
    "GET /wse?format=json HTTP/1.1\r\n"
    "Host: example.com:8080\r\n"
    "Connection: Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36\r\n"
    "Upgrade: websocket\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "\r\n";

void BM_http_parse_upgrade(benchmark::State& state) {
  for (auto _ : state) {
    http_request_parser parser;
    const http_parse_status status =
        parser.feed(std::span<const char>(browser_request.data(), browser_request.size()));
    const upgrade_verdict verdict = check_upgrade(parser.request());
    if (status != http_parse_status::complete || verdict != upgrade_verdict::ok) {
      state.SkipWithError("parse failed");
      break;
    }
    benchmark::DoNotOptimize(parser.request().header_count);
  }
  state.SetBytesProcessed(static_cast<int64_t>(browser_request.size() * state.iterations()));
}
BENCHMARK(BM_http_parse_upgrade);

void BM_websocket_accept(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="));
}
BENCHMARK(BM_websocket_accept);

void BM_upgrade_response(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(upgrade_response("dGhlIHNhbXBsZSBub25jZQ=="));
}
BENCHMARK(BM_upgrade_response);

// ---- permessage-deflate (RFC 7692) ----------------------------------------------------------

// A publication-like JSON message of n bytes (varying numbers, repeated keys).
std::string json_of(size_t n) {
  std::string s = "[";
  for (int i = 0; s.size() < n; ++i)
    s += R"({"t":"price","p":{"sym":"S)" + std::to_string(i % 97) + R"(","bid":)" +
         std::to_string(10000 + (i * 7919) % 5000) + R"(,"ts":17171717)" + std::to_string(i) +
         "}},";
  s.resize(n);
  return s;
}

// Plain: what a send costs without deflate (the frame header and the payload copied into the
// connection's queue), the baseline of the two below.
void BM_deflate_plain_frame_copy(benchmark::State& state) {
  const std::string m = json_of(size_t(state.range(0)));
  std::vector<uint8_t> out(m.size() + ws_header_bytes_max);
  for (auto _ : state) {
    size_t h = encode_frame_header(out.data(), ws_opcode::text, m.size());
    std::memcpy(out.data() + h, m.data(), m.size());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(m.size()));
}

// Args: message bytes, libdeflate level.
void BM_deflate_compress(benchmark::State& state) {
  const std::string m = json_of(size_t(state.range(0)));
  deflate_codec codec(int(state.range(1)));
  size_t z = 0;
  for (auto _ : state) {
    auto out = codec.compress({reinterpret_cast<const uint8_t*>(m.data()), m.size()});
    z = out.size();
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(m.size()));
  state.counters["ratio"] = z ? double(m.size()) / double(z) : 0.0;
}

void BM_deflate_inflate(benchmark::State& state) {
  const std::string m = json_of(size_t(state.range(0)));
  deflate_codec codec;
  auto z = codec.compress({reinterpret_cast<const uint8_t*>(m.data()), m.size()});
  std::vector<uint8_t> compressed(z.begin(), z.end());
  std::vector<uint8_t> out;
  size_t n = 0;
  for (auto _ : state) {
    codec.inflate(compressed, 1 << 20, out, &n, 64);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(m.size()));
}

BENCHMARK(BM_deflate_plain_frame_copy)->Arg(256)->Arg(1024)->Arg(4096)->Arg(16384);
BENCHMARK(BM_deflate_compress)->ArgsProduct({{256, 1024, 4096, 16384}, {1, 6}});
BENCHMARK(BM_deflate_inflate)->Arg(256)->Arg(1024)->Arg(4096)->Arg(16384);

void BM_deflate_negotiate(benchmark::State& state) {
  // What Chromium offers.
  const std::string_view offer[] = {"permessage-deflate; client_max_window_bits"};
  for (auto _ : state) benchmark::DoNotOptimize(negotiate_permessage_deflate(offer));
}
BENCHMARK(BM_deflate_negotiate);

// Memory: a shard's codec (libdeflate's compressor and decompressor); per connection there is
// none (one bit in the 32-byte frame parser).
void BM_deflate_codec_memory(benchmark::State& state) {
  size_t bytes = 0;
  for (auto _ : state) {
    struct mallinfo2 before = mallinfo2();
    auto* codec = new deflate_codec();
    struct mallinfo2 after = mallinfo2();
    bytes = (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
    delete codec;
  }
  state.counters["codec_bytes"] = double(bytes);
  state.counters["parser_bytes"] = double(sizeof(ws_frame_parser));
}
BENCHMARK(BM_deflate_codec_memory)->Iterations(20);

}  // namespace

BENCHMARK_MAIN();
