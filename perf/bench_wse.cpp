// perf/bench_wse.cpp: Google Benchmark micro-benchmarks of the WSE envelope and formats:
// inbound envelope parse (in place and copied), outbound builders (server_ready, generic
// envelope, PONG), M: msgpack encode/decode and C: zlib compress/decompress of typical messages.
//
// Owns: its own buffers. Thread: the benchmark's main thread. Never asserts behaviour (that is
// the unit tests' job); it prints figures. Compare ratios from one run, not absolute numbers.
#include <benchmark/benchmark.h>

#include <array>
#include <string>

#include "proto/wse_builder.hpp"
#include "proto/wse_envelope.hpp"
#include "proto/wse_formats.hpp"

using namespace wsed::proto;

namespace {

// A 194-byte WSE message (the size of DESIGN.md's inbound measurements).
std::string envelope_194() {
  std::string s = R"({"c":"U","t":"chat.message","p":{"topic":"room/lobby","user":{"id":"u-42",)"
                  R"("name":"alice"},"body":"hello everyone, this is a test message","pad":")";
  while (s.size() < 145) s += 'x';
  s += R"("},"id":"019ab221-d6b3-7000-8000-00000000","v":1})";
  return s;
}

std::string json_1k() {
  std::string s = R"({"c":"U","t":"book_update","p":{"rows":[)";
  for (int i = 0; s.size() < 1000; ++i) {
    if (i != 0) s += ',';
    s += R"({"px":)";
    s += std::to_string(100000 + i * 7);
    s += R"(,"qty":)";
    s += std::to_string(i * 13 % 997);
    s += '}';
  }
  s += "]}}";
  return s;
}

const wse_feature features[] = {{"batching", true},        {"circuit_breaker", false},
                                {"compression", true},     {"encryption", false},
                                {"priority_queue", false}, {"recovery", true}};

void BM_envelope_parse_in_place(benchmark::State& state) {
  const std::string message = envelope_194();
  std::string buffer = message + std::string(wse_json_padding_bytes, '\0');
  const std::string_view view(buffer.data(), message.size());
  wse_envelope_parser parser;
  wse_message out;
  for (auto _ : state) {
    benchmark::DoNotOptimize(parser.parse(view, out, wse_input_padding::padded));
    benchmark::DoNotOptimize(out.payload_json.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * message.size()));
  state.SetLabel(std::to_string(message.size()) + " B");
}
BENCHMARK(BM_envelope_parse_in_place);

void BM_envelope_parse_copied(benchmark::State& state) {
  const std::string message = envelope_194();
  wse_envelope_parser parser;
  wse_message out;
  for (auto _ : state) {
    benchmark::DoNotOptimize(parser.parse(message, out, wse_input_padding::none));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * message.size()));
}
BENCHMARK(BM_envelope_parse_copied);

void BM_envelope_parse_ping(benchmark::State& state) {
  const std::string message = R"({"p":{"client_timestamp":1795461491123},"t":"ping"})";
  std::string buffer = message + std::string(wse_json_padding_bytes, '\0');
  wse_envelope_parser parser;
  wse_message out;
  for (auto _ : state) {
    benchmark::DoNotOptimize(parser.parse(std::string_view(buffer.data(), message.size()), out,
                                          wse_input_padding::padded));
  }
}
BENCHMARK(BM_envelope_parse_ping);

void BM_build_server_ready(benchmark::State& state) {
  std::string out;
  wse_server_ready ready;
  ready.message_id = "019ab221-d6b3-7000-8000-000000000001";
  ready.connection_id = "019ab221-d6b3-7000-8000-000000000002";
  ready.user_id = "user-1234567";
  ready.now_ms = 1795461491123;
  ready.features = features;
  for (auto _ : state) {
    out.clear();
    wse_build_server_ready(out, ready);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(std::to_string(out.size()) + " B");
}
BENCHMARK(BM_build_server_ready);

void BM_build_server_ready_with_ids(benchmark::State& state) {
  // Including the two UUIDv7 and the timestamp formatting the engine does per connection.
  std::string out;
  const std::array<uint8_t, 10> random = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  int64_t now_ms = 1795461491123;
  for (auto _ : state) {
    char message_id[wse_uuid_chars];
    char connection_id[wse_uuid_chars];
    wse_format_uuid7(static_cast<uint64_t>(now_ms), random, message_id);
    wse_format_uuid7(static_cast<uint64_t>(now_ms), random, connection_id);
    wse_server_ready ready;
    ready.message_id = {message_id, sizeof message_id};
    ready.connection_id = {connection_id, sizeof connection_id};
    ready.user_id = "user-1234567";
    ready.now_ms = now_ms++;
    ready.features = features;
    out.clear();
    wse_build_server_ready(out, ready);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_build_server_ready_with_ids);

void BM_build_envelope(benchmark::State& state) {
  std::string out;
  wse_envelope_fields fields;
  fields.category = "U";
  fields.type = "chat.message";
  fields.payload_json =
      R"({"topic":"room/lobby","user":{"id":"u-42","name":"alice"},"body":"hello everyone"})";
  fields.id = "019ab221-d6b3-7000-8000-000000000001";
  fields.now_ms = 1795461491123;
  fields.seq = 42;
  for (auto _ : state) {
    out.clear();
    wse_build_envelope(out, fields);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(std::to_string(out.size()) + " B");
}
BENCHMARK(BM_build_envelope);

void BM_build_pong(benchmark::State& state) {
  std::string out;
  int64_t now_ms = 1795461491123;
  for (auto _ : state) {
    out.clear();
    wse_build_pong(out, 1795461491100, now_ms++);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_build_pong);

void BM_timestamp(benchmark::State& state) {
  int64_t now_ms = 1795461491123;
  char text[wse_timestamp_chars];
  for (auto _ : state) {
    wse_format_timestamp(now_ms++, text);
    benchmark::DoNotOptimize(text);
  }
}
BENCHMARK(BM_timestamp);

void BM_msgpack_encode(benchmark::State& state) {
  const std::string json = envelope_194();
  wse_codec codec;
  std::string out;
  for (auto _ : state) {
    out.clear();
    benchmark::DoNotOptimize(codec.json_to_msgpack(json, out));
  }
  state.SetLabel(std::to_string(out.size()) + " B");
}
BENCHMARK(BM_msgpack_encode);

void BM_msgpack_decode(benchmark::State& state) {
  const std::string json = envelope_194();
  wse_codec codec;
  std::string packed;
  (void)codec.json_to_msgpack(json, packed, false);
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(packed.data()),
                                       packed.size());
  std::string out;
  // Arg 0: msgpack-c's parse writing JSON; 2: the hand-written
  // check (what the server runs when the handler does not read payloads), with the envelope.
  wse_msgpack_envelope env;
  for (auto _ : state) {
    out.clear();
    benchmark::DoNotOptimize(wse_msgpack_to_json(
        bytes, out, 1 << 20, state.range(0) ? &env : nullptr,
        state.range(0) == 2 ? wse_json_output::envelope_only : wse_json_output::full));
  }
  state.SetLabel(std::to_string(packed.size()) + " B");
}
BENCHMARK(BM_msgpack_decode)->Arg(0)->Arg(2);

void BM_zlib_compress_1k(benchmark::State& state) {
  const std::string json = json_1k();
  wse_codec codec(static_cast<int>(state.range(0)));
  std::string out;
  for (auto _ : state) {
    out.clear();
    benchmark::DoNotOptimize(codec.compress(json, out, 0));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * json.size()));
  state.SetLabel(std::to_string(json.size()) + " -> " + std::to_string(out.size()) + " B");
}
BENCHMARK(BM_zlib_compress_1k)->Arg(1)->Arg(6);

void BM_zlib_decompress_1k(benchmark::State& state) {
  const std::string json = json_1k();
  wse_codec codec;
  std::string zipped;
  (void)codec.compress(json, zipped, 0);
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(zipped.data()) + 2,
                                       zipped.size() - 2);
  std::string out;
  for (auto _ : state) {
    out.clear();
    benchmark::DoNotOptimize(codec.decompress(bytes, out));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * json.size()));
}
BENCHMARK(BM_zlib_decompress_1k);

}  // namespace

BENCHMARK_MAIN();
