// tests/unit/test_engine.cpp: the engine's pure pieces: flag value parsers, the outbound queue
// (coalescing, shared chunks, partial sends, refcounts) and the Prometheus rendering.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine/flags.hpp"
#include "engine/metrics.hpp"
#include "engine/out_queue.hpp"
#include "engine/per_ip.hpp"
#include "fanout/frame.hpp"

using namespace wsed::engine;

TEST_CASE("flags: sizes") {
  CHECK(parse_size("4096") == 4096u);
  CHECK(parse_size("64KiB") == 65536u);
  CHECK(parse_size("16MiB") == 16u << 20);
  CHECK(parse_size("1GiB") == 1u << 30);
  CHECK(parse_size("2K") == 2048u);
  CHECK(parse_size("3mb") == 3u << 20);
  CHECK(parse_size("10B") == 10u);
  CHECK_FALSE(parse_size(""));
  CHECK_FALSE(parse_size("MiB"));
  CHECK_FALSE(parse_size("-1"));
  CHECK_FALSE(parse_size("12XB"));
  CHECK_FALSE(parse_size("99999999999999999999"));
  CHECK_FALSE(parse_size("18446744073709551615GiB"));  // overflows
}

TEST_CASE("flags: durations") {
  CHECK(parse_duration_ms("10") == 10000u);
  CHECK(parse_duration_ms("10s") == 10000u);
  CHECK(parse_duration_ms("500ms") == 500u);
  CHECK(parse_duration_ms("2m") == 120000u);
  CHECK(parse_duration_ms("1h") == 3600000u);
  CHECK(parse_duration_ms("0") == 0u);
  CHECK_FALSE(parse_duration_ms("s"));
  CHECK_FALSE(parse_duration_ms("10x"));
  CHECK_FALSE(parse_duration_ms("1.5s"));
}

namespace {

std::string sent_bytes(out_queue& q, chunk_pool& pool, size_t limit) {
  const iovec* iov;
  size_t bytes;
  int n = q.prepare_send(&iov, &bytes);
  std::string all;
  for (int i = 0; i < n; ++i) all.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
  CHECK(all.size() == bytes);
  size_t sent = std::min(limit, bytes);
  q.complete_send(pool, sent);
  return all.substr(0, sent);
}

}  // namespace

TEST_CASE("out_queue: small appends coalesce into one segment and partial sends resume") {
  chunk_pool pool;
  out_queue q;
  CHECK(q.empty());
  q.append(pool, "hello ", 6);
  q.append(pool, "world", 5);
  CHECK(q.queued_bytes() == 11);
  const iovec* iov;
  size_t bytes;
  CHECK(q.prepare_send(&iov, &bytes) == 1);  // one chunk, one iovec
  CHECK(q.send_in_flight());
  // Appending while a send is in flight must not disturb the bytes in flight.
  q.append(pool, "!", 1);
  q.complete_send(pool, 4);  // the kernel took 4 bytes
  CHECK(q.queued_bytes() == 8);
  CHECK(sent_bytes(q, pool, 100) == "o world!");
  CHECK(q.empty());
  CHECK(q.queued_bytes() == 0);
}

TEST_CASE("out_queue: large frames get their own chunk; shared chunks are refcounted") {
  chunk_pool pool;
  out_queue a, b;
  std::string big(100000, 'x');
  a.append(pool, big.data(), big.size());
  a.append(pool, "tail", 4);
  out_chunk* shared = pool.get(10);
  std::memcpy(shared->data(), "broadcast!", 10);
  shared->size = 10;
  a.append_shared(shared, 0, 10);
  b.append_shared(shared, 5, 5);
  CHECK(shared->refs == 3);
  pool.release(shared);  // the publisher's reference
  CHECK(shared->refs == 2);
  CHECK(sent_bytes(b, pool, 100) == "cast!");
  CHECK(shared->refs == 1);
  std::string got = sent_bytes(a, pool, 1u << 20);
  CHECK(got == big + "tail" + "broadcast!");
  CHECK(a.empty());
}

TEST_CASE("out_queue: more segments than one send's iovecs go out over several sends") {
  chunk_pool pool;
  out_queue q;
  std::vector<out_chunk*> chunks;
  std::string expect;
  for (int i = 0; i < out_queue::iov_max + 10; ++i) {
    out_chunk* c = pool.get(1);
    c->data()[0] = uint8_t('a' + i % 26);
    c->size = 1;
    q.append_shared(c, 0, 1);
    pool.release(c);
    expect.push_back(char('a' + i % 26));
  }
  std::string got = sent_bytes(q, pool, 1u << 20);
  CHECK(got.size() == size_t(out_queue::iov_max));
  got += sent_bytes(q, pool, 1u << 20);
  CHECK(got == expect);
  CHECK(q.empty());
}

TEST_CASE("out_queue: the unsent rest of a frame goes before what was queued meanwhile") {
  chunk_pool pool;
  out_queue q;
  wsed::fanout::frame* f = wsed::fanout::make_text_frame("t", "0123456789");  // 2-byte header + 10
  q.append(pool, "next", 4);  // queued while the frame was in flight elsewhere
  q.prepend_frame(f, 5);      // the kernel took 5 of its 12 bytes
  CHECK(f->refs.load() == 2);
  CHECK(q.queued_bytes() == 7 + 4);
  wsed::fanout::release(f);                // the sender's reference
  CHECK(sent_bytes(q, pool, 3) == "345");  // header 2 bytes + "012" were sent
  wsed::fanout::frame* g = wsed::fanout::make_text_frame("t", "ab");
  q.prepend_frame(g, 3);  // a partly consumed head: inserted before it
  wsed::fanout::release(g);
  std::string rest = sent_bytes(q, pool, 100);
  CHECK(rest == "b6789next");  // g's last byte, then f's rest, then the queue
  CHECK(q.empty());
}

TEST_CASE("metrics: every family per shard, no total series") {
  shard_metrics m0, m1;
  m0.connections_open.add(3);
  m1.connections_open.add(4);
  m1.closed[size_t(close_reason::idle_timeout)].add(2);
  m0.limit_hits[size_t(limit_kind::max_message_size)].add();
  const shard_metrics* all[] = {&m0, &m1};
  std::string text = render_prometheus(all);
  CHECK(text.find("wsed_connections_open{shard=\"0\"} 3\n") != std::string::npos);
  CHECK(text.find("wsed_connections_open{shard=\"1\"} 4\n") != std::string::npos);
  CHECK(text.find("shard=\"total\"") == std::string::npos);  // a sum is PromQL's job
  CHECK(text.find("wsed_connections_closed_total{shard=\"1\",reason=\"idle_timeout\"} 2\n") !=
        std::string::npos);
  CHECK(text.find("wsed_limit_hits_total{shard=\"0\",limit=\"max_message_size\"} 1\n") !=
        std::string::npos);
  CHECK(text.find("# TYPE wsed_connections_open gauge\n") != std::string::npos);
  // One HELP/TYPE header per family, even for labelled families.
  size_t count = 0;
  for (size_t p = 0;
       (p = text.find("# TYPE wsed_connections_closed_total", p)) != std::string::npos; ++p)
    ++count;
  CHECK(count == 1);
}

TEST_CASE("metrics: histograms are cumulative, in seconds, with +Inf, _sum and _count") {
  shard_metrics m0, m1;
  m0.handshake_duration.observe_ns(1'000);           // on the 1 us bound: le="1e-06"
  m0.handshake_duration.observe_ns(30'000);          // le="5e-05"
  m0.handshake_duration.observe_ns(20'000'000'000);  // over 10 s: +Inf only
  m1.delivery_latency.observe_ns(2'000'000, 5);      // five deliveries of one pass, le="0.0025"
  const shard_metrics* all[] = {&m0, &m1};
  std::string text = render_prometheus(all);
  auto has = [&](const char* line) { return text.find(line) != std::string::npos; };
  CHECK(has("# TYPE wsed_handshake_duration_seconds histogram\n"));
  CHECK(has("wsed_handshake_duration_seconds_bucket{shard=\"0\",le=\"1e-06\"} 1\n"));
  CHECK(has("wsed_handshake_duration_seconds_bucket{shard=\"0\",le=\"2.5e-05\"} 1\n"));
  CHECK(has("wsed_handshake_duration_seconds_bucket{shard=\"0\",le=\"5e-05\"} 2\n"));
  CHECK(has("wsed_handshake_duration_seconds_bucket{shard=\"0\",le=\"10\"} 2\n"));
  CHECK(has("wsed_handshake_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3\n"));
  CHECK(has("wsed_handshake_duration_seconds_count{shard=\"0\"} 3\n"));
  CHECK(has("wsed_handshake_duration_seconds_sum{shard=\"0\"} 20.000031\n"));
  CHECK(has("wsed_handshake_duration_seconds_count{shard=\"1\"} 0\n"));
  CHECK(has("wsed_delivery_latency_seconds_bucket{shard=\"1\",le=\"0.001\"} 0\n"));
  CHECK(has("wsed_delivery_latency_seconds_bucket{shard=\"1\",le=\"0.0025\"} 5\n"));
  CHECK(has("wsed_delivery_latency_seconds_sum{shard=\"1\"} 0.01\n"));
  CHECK(has("# TYPE wsed_fanout_pass_duration_seconds histogram\n"));
  CHECK(has("# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes "));
  CHECK(!has("process_resident_memory_bytes 0\n"));
}

TEST_CASE("per_ip: IPv4 maps into IPv6; each address has its own cap; release frees") {
  sockaddr_storage v4{}, v4b{}, v6{};
  auto* a = reinterpret_cast<sockaddr_in*>(&v4);
  a->sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a->sin_addr);
  auto* b = reinterpret_cast<sockaddr_in*>(&v4b);
  b->sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.2", &b->sin_addr);
  auto* c = reinterpret_cast<sockaddr_in6*>(&v6);
  c->sin6_family = AF_INET6;
  inet_pton(AF_INET6, "::ffff:127.0.0.1", &c->sin6_addr);
  ip_key k1 = ip_key_of(v4), k2 = ip_key_of(v4b);
  CHECK(k1 == ip_key_of(v6));  // the same client, whichever socket family accepted it
  CHECK_FALSE(k1 == k2);

  per_ip_table t(2);
  CHECK(t.try_acquire(k1));
  CHECK(t.try_acquire(k1));
  CHECK_FALSE(t.try_acquire(k1));  // at the cap: nothing counted
  CHECK(t.try_acquire(k2));
  CHECK(t.addresses() == 2);
  t.release(k1);
  CHECK(t.try_acquire(k1));
  t.release(k1);
  t.release(k1);
  t.release(k2);
  CHECK(t.addresses() == 0);  // empty entries are removed
  t.release(k2);              // an unknown address is ignored
  CHECK(t.addresses() == 0);
}

TEST_CASE("per_ip: concurrent acquire/release from several threads never exceeds the cap") {
  per_ip_table t(3);
  sockaddr_storage s{};
  auto* a = reinterpret_cast<sockaddr_in*>(&s);
  a->sin_family = AF_INET;
  inet_pton(AF_INET, "10.0.0.1", &a->sin_addr);
  ip_key k = ip_key_of(s);
  std::atomic<int> held{0}, max_held{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      for (int n = 0; n < 20000; ++n) {
        if (!t.try_acquire(k)) continue;
        int now = held.fetch_add(1) + 1;
        int m = max_held.load();
        while (now > m && !max_held.compare_exchange_weak(m, now)) {
        }
        held.fetch_sub(1);
        t.release(k);
      }
    });
  for (auto& th : threads) th.join();
  CHECK(max_held.load() <= 3);
  CHECK(t.addresses() == 0);
}
