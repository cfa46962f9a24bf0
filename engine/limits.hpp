// engine/limits.hpp: every fixed limit of the engine in one place (the tunable ones are fields
// of server_config, with their defaults, flags and counters: see config.hpp), and every close code
// wsed sends, with the static_asserts that tie them together.
//
// Owns: constants only. Thread: any. A limit that bites is counted (wsed_limit_hits_total, or its
// own family); a close code here is documented in the README's close-code table.
#pragma once

#include <cstddef>
#include <cstdint>

#include "auth/jwt.hpp"
#include "engine/config.hpp"
#include "proto/ws.hpp"
#include "proto/wse_envelope.hpp"

namespace wsed::engine {

namespace limits {

// The ring of each shard.
inline constexpr unsigned ring_entries = 4096;  // submission queue
inline constexpr unsigned cq_entries = 16384;   // completion queue
inline constexpr uint32_t slot_reserve = 64;    // slots beyond --max-connections, to answer 503
// A descriptor table that RLIMIT_NOFILE capped below --max-connections keeps 1/32 of itself (at
// least slot_reserve) to answer 503: 625 of 20,000.
inline constexpr uint32_t table_reserve_div = 32;
inline constexpr uint32_t tick_ms = 100;           // the shard timer: timeouts, server pings
inline constexpr uint32_t accepts_in_flight = 16;  // single-shot accepts with a per-IP cap
inline constexpr size_t queues_keep_max = 256;     // idle out_queues kept for reuse, per shard

// Readable bytes after every payload handed to the application (in-place JSON parsing).
inline constexpr size_t payload_padding_bytes = 64;

// One loop pass drains at most this much of the shard's inbox (the rest waits for the next
// pass, which then does not sleep): an unbounded pass collapsed at 10K subscribers; 16 MiB
// keeps a pass near 10 ms (coalescing across passes is backlog_send_bytes_min's job).
inline constexpr size_t pass_deliveries_max = 8192;
inline constexpr uint64_t pass_queued_bytes_max = 16ull << 20;
// While the inbox has a backlog, a connection's queue is sent once it holds this much (or half
// of --max-outbound-bytes, or the backlog is gone): fewer, larger sends. perf/RESULTS.md: at
// 10,000 subscribers a send costs the kernel ~12 us whatever its size.
inline constexpr uint64_t backlog_send_bytes_min = 64 << 10;
// TLS: plain text encrypted per send (the ciphertext of one send is held until it is sent, so
// this bounds what a TLS connection holds beyond its --max-outbound-bytes queue), and the plain
// text decrypted from one receive before it is parsed (a receive buffer's worth and more).
inline constexpr size_t tls_plain_bytes_per_send = 64 << 10;
inline constexpr size_t tls_plain_bytes_per_read = 64 << 10;

static_assert((ring_entries & (ring_entries - 1)) == 0 && (cq_entries & (cq_entries - 1)) == 0,
              "io_uring rounds queue sizes to powers of two: say the real size");
static_assert(cq_entries >= 2 * ring_entries, "multishot completions outnumber submissions");
static_assert(payload_padding_bytes >= proto::wse_json_padding_bytes,
              "text messages are parsed in place by simdjson");
static_assert(pass_deliveries_max >= 64, "a pass drains at least one batch");
static_assert(accepts_in_flight <= 32, "one bit each in shard::accepts_armed_");
static_assert(slot_reserve / 2 >= accepts_in_flight,
              "accepts in flight when a capped table pauses them land in its reserve");

}  // namespace limits

// Every close code wsed sends (RFC 6455 codes from proto/ws.hpp, WSE's 4xxx codes).
namespace close_codes {
inline constexpr uint16_t normal = proto::close_code::normal;                    // 1000
inline constexpr uint16_t protocol_error = proto::close_code::protocol_error;    // 1002
inline constexpr uint16_t invalid_payload = proto::close_code::invalid_payload;  // 1007
inline constexpr uint16_t message_too_big = proto::close_code::message_too_big;  // 1009
inline constexpr uint16_t internal_error = proto::close_code::internal_error;    // 1011
inline constexpr uint16_t try_again_later = proto::close_code::try_again_later;  // 1013
inline constexpr uint16_t shutdown = proto::close_code::shutdown;                // 4300
inline constexpr uint16_t unauthorized = auth::auth_close_code;                  // 4401
inline constexpr uint16_t forbidden = 4403;                                      // (reserved)
inline constexpr uint16_t idle_timeout = proto::close_code::idle_timeout;        // 4408
inline constexpr uint16_t rate_limited = 4429;
inline constexpr uint16_t decrypt_failed = 4400;  // an E: frame that does not open (README)
inline constexpr uint16_t slow_consumer = proto::close_code::slow_consumer;  // 4509

// Clients do not reconnect after 1000/1001, refresh their token after 4401/4403, back off after
// 4429 (PROTOCOL.md "Close codes"): the codes must stay where clients look for them.
static_assert(shutdown == 4300 && unauthorized == 4401 && forbidden == 4403 &&
              idle_timeout == 4408 && rate_limited == 4429 && slow_consumer == 4509);
static_assert(shutdown >= 4000 && slow_consumer <= 4999, "application codes are 4000-4999");
}  // namespace close_codes

// Defaults that must agree with each other.
static_assert((server_config{}.inbox_capacity & (server_config{}.inbox_capacity - 1)) == 0,
              "--inbox-capacity is a power of two");
static_assert(server_config{}.topics_per_connection_max <= proto::wse_subscription_topics_max,
              "one request can hold a connection's whole cap");
static_assert(server_config{}.outbound_bytes_max >= 64 * 1024,
              "a queue cap below a few frames cuts every reader");

}  // namespace wsed::engine
