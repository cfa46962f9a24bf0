// proto/ws.hpp: RFC 6455 framing. A pull parser for received frames (masked client frames on
// the server, unmasked server frames in tools/), and the encoder for outbound frames.
//
// Owns: parser state (32 bytes, kept in every connection slot, so it must stay small). Thread:
// the shard that owns the connection. Pure: no I/O, no clock, no allocation. Payload bytes are
// unmasked in place in the caller's buffer and handed back as spans into it.
//
// Partial input: a data frame's payload is delivered in chunks as it arrives. A frame header,
// or a control frame (at most 125 bytes of payload) that is not complete yet, yields need_more
// with consumed == 0: the caller keeps those bytes (at most ws_carry_bytes_max) and calls again
// with them followed by the next bytes received.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "proto/utf8.hpp"

namespace wsed::proto {

enum class ws_opcode : uint8_t {
  continuation = 0x0,
  text = 0x1,
  binary = 0x2,
  close = 0x8,
  ping = 0x9,
  pong = 0xA,
};

// Close codes wsed sends (see README "Close codes").
namespace close_code {
inline constexpr uint16_t normal = 1000;
inline constexpr uint16_t going_away = 1001;
inline constexpr uint16_t protocol_error = 1002;
inline constexpr uint16_t no_status = 1005;  // never sent; reported when a close had no code
inline constexpr uint16_t invalid_payload = 1007;
inline constexpr uint16_t policy = 1008;
inline constexpr uint16_t message_too_big = 1009;
inline constexpr uint16_t internal_error = 1011;
inline constexpr uint16_t try_again_later = 1013;
inline constexpr uint16_t shutdown = 4300;
inline constexpr uint16_t idle_timeout = 4408;
inline constexpr uint16_t slow_consumer = 4509;
}  // namespace close_code

// A close code a peer may send (RFC 6455 section 7.4 and the IANA registry of section 11.7):
// 1000-1003, 1007-1014, 3000-4999.
bool valid_received_close_code(uint16_t code);

enum class ws_role : uint8_t {
  server,  // parses client frames: every frame must be masked
  client,  // parses server frames: no frame may be masked
};

struct ws_limits {
  uint64_t message_bytes_max = 1u << 20;      // over it: error 1009 (checked at each frame header)
  uint32_t fragments_per_message_max = 4096;  // over it: error 1009
  // A text message that arrives whole (one frame, its payload in one input) is not UTF-8
  // checked here: the application validates it anyway (a JSON parser) and must close 1007 on
  // invalid UTF-8 itself (ws_event::utf8_unchecked). Fragmented or split text is checked here.
  bool text_utf8_by_application = false;
};

enum class ws_event_kind : uint8_t {
  need_more,  // nothing more can be parsed from this input (consumed says how much was used)
  data,       // a chunk of a text or binary message
  ping,       // a complete ping; payload is its application data
  pong,       // a complete pong
  close,      // a valid close frame; close_code (1005 when it had none) and payload = reason
  error,      // protocol violation: close with close_code; the parser stays failed
};

struct ws_event {
  ws_event_kind kind = ws_event_kind::need_more;
  ws_opcode message_opcode = ws_opcode::continuation;  // data: text or binary
  bool message_begin = false;                          // data: first chunk of a message
  bool message_end = false;     // data: last chunk of a message (FIN frame complete)
  bool utf8_unchecked = false;  // data: a whole text message left to the application (ws_limits)
  bool compressed = false;     // data: the message's first frame had RSV1 (permessage-deflate): the
                               // payload is raw DEFLATE, not UTF-8 checked (check it once inflated)
  uint16_t close_code = 0;     // close: received code; error: code to send
  size_t consumed = 0;         // input bytes used by this event
  std::span<uint8_t> payload;  // unmasked, pointing into the input
};

inline constexpr size_t ws_header_bytes_max = 14;
inline constexpr size_t ws_control_payload_max = 125;
inline constexpr size_t ws_carry_bytes_max = ws_header_bytes_max + ws_control_payload_max;

class ws_frame_parser {
 public:
  explicit ws_frame_parser(ws_role role = ws_role::server) : role_(role) {}

  // Parses the next event out of input. Call in a loop, advancing input by event.consumed,
  // until need_more (then keep input's unconsumed tail) or error (then stop).
  //
  // Exact contract (tests/unit/ws_feed.hpp drives it the way the engine should):
  // - need_more always has consumed == 0 and changes no state; the tail to keep is all of the
  //   input passed to that call, and it is always < ws_carry_bytes_max bytes (an incomplete
  //   header, an incomplete control frame, or a data-frame header whose first payload byte has
  //   not arrived). Bytes handed back unconsumed are never unmasked.
  // - data: consumed > 0 (it includes the frame header when the chunk starts a frame); payload
  //   is unmasked in place, already UTF-8 checked for text (incrementally), and may be empty (a
  //   zero-length frame: an empty message still yields one data event with begin and end set).
  // - ping/pong/close: consumed is the whole frame; payload is the unmasked application data
  //   (for close: the reason, after the 2-byte code; close_code is 1005 when there was none).
  // - close: the caller stops feeding (the parser does not refuse frames after a close).
  // - error: close_code is 1002, 1007 or 1009; later calls return the same error (consumed 0)
  //   until reset(). Errors are raised as early as the bytes allow (at the frame header for
  //   size/limit/opcode rules, at the bad byte's chunk for UTF-8).
  ws_event next(std::span<uint8_t> input, const ws_limits& limits);

  // permessage-deflate was negotiated: RSV1 may be set on a message's first frame (otherwise it
  // is a 1002, as on a control or continuation frame). Kept across reset().
  void allow_compressed(bool on) { deflate_ = on ? deflate_negotiated : 0; }
  bool compressed_allowed() const { return (deflate_ & deflate_negotiated) != 0; }

  bool in_message() const { return message_opcode_ != 0; }
  bool failed() const { return failed_ != 0; }
  uint64_t message_bytes() const { return message_bytes_; }
  void reset() {
    const uint8_t negotiated = deflate_ & deflate_negotiated;
    *this = ws_frame_parser(role_);
    deflate_ = negotiated;
  }

 private:
  ws_event fail(uint16_t code);

  uint64_t payload_remaining_ = 0;  // of the data frame being received; 0 between frames
  uint64_t message_bytes_ = 0;      // payload bytes of the message so far (all its frames)
  uint32_t fragments_ = 0;          // frames of the message so far
  uint32_t mask_key_ = 0;           // of the data frame being received (network byte order)
  uint8_t mask_offset_ = 0;         // position in mask_key_ of the next payload byte
  uint8_t message_opcode_ = 0;      // text/binary while a message is open, else 0
  uint8_t frame_fin_ = 0;           // FIN bit of the data frame being received
  uint8_t in_frame_ = 0;            // a data frame's payload is being received
  ws_role role_;
  uint8_t failed_ = 0;
  utf8_validator utf8_;
  static constexpr uint8_t deflate_negotiated = 1;  // RSV1 allowed on a message's first frame
  static constexpr uint8_t deflate_message = 2;     // the open message is compressed
  uint8_t deflate_ = 0;
};
static_assert(sizeof(ws_frame_parser) <= 32, "the parser lives in every connection slot");

// Writes a frame header into out and returns its length (2..14). mask_key is written (and the
// MASK bit set) only for client frames; server frames are never masked.
size_t encode_frame_header(uint8_t* out, ws_opcode opcode, uint64_t payload_bytes, bool fin = true,
                           const uint8_t* mask_key = nullptr);

// The RSV1 bit of a frame's first byte: a compressed message (RFC 7692), first frame only.
inline constexpr uint8_t ws_rsv1_bit = 0x40;

// Header length of an unmasked frame with this payload length (2, 4 or 10).
constexpr size_t frame_header_bytes(uint64_t payload_bytes) {
  return payload_bytes < 126 ? 2 : payload_bytes <= 0xFFFF ? 4 : 10;
}

// XORs data with the 4-byte key, starting at key position offset (0..3).
void mask_bytes(uint8_t* data, size_t length, const uint8_t key[4], size_t offset = 0);

// Close frame payload: 2-byte code + reason (reason truncated to 123 bytes at a UTF-8 boundary).
// Returns the payload length written to out (out must hold 125 bytes). Code 1005 (no_status,
// never sent) or 0 writes nothing and returns 0: an empty close payload.
size_t encode_close_payload(uint8_t* out, uint16_t code, std::string_view reason = {});

}  // namespace wsed::proto
