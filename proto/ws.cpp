// proto/ws.cpp: the RFC 6455 pull parser (frame headers, in-place unmasking, message and
// fragment limits, incremental UTF-8 checks, close-frame validation) and the frame encoder.
//
// Owns: the 32-byte ws_frame_parser state of one connection. Thread: the shard that owns the
// connection. Runs for every received message, so: no allocation, no per-byte branches in the
// payload loop, and never touches (unmasks) bytes it then reports as unconsumed.
#include "proto/ws.hpp"

#include <algorithm>
#include <cstring>

namespace wsed::proto {
namespace {

constexpr uint8_t fin_bit = 0x80;
constexpr uint8_t rsv23_bits = 0x30;  // never used by any extension we negotiate
constexpr uint8_t opcode_bits = 0x0F;
constexpr uint8_t mask_bit = 0x80;
constexpr uint8_t length_bits = 0x7F;

constexpr bool is_control(uint8_t opcode) {
  return (opcode & 0x8) != 0;
}

constexpr bool is_known_opcode(uint8_t opcode) {
  return opcode <= 0x2 || (opcode >= 0x8 && opcode <= 0xA);
}

ws_event need_more() {
  return ws_event{};
}

uint64_t load_be(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v = (v << 8) | p[i];
  return v;
}

// Unmasks with the 4-byte key in memory order, from key position offset (0..3).
void unmask(uint8_t* data, size_t length, uint32_t key_memory_order, size_t offset) {
  uint8_t key[4];
  std::memcpy(key, &key_memory_order, 4);
  mask_bytes(data, length, key, offset);
}

}  // namespace

bool valid_received_close_code(uint16_t code) {
  // 1012-1014 are in the IANA registry RFC 6455 section 11.7 set up (Service Restart, Try
  // Again Later, Bad Gateway); browsers accept them and wsed itself sends 1013.
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

void mask_bytes(uint8_t* data, size_t length, const uint8_t key[4], size_t offset) {
  // The key rotated so that rotated[0] applies to data[0], replicated to 8 bytes.
  uint8_t rotated[8];
  for (size_t i = 0; i < 8; ++i) rotated[i] = key[(offset + i) & 3];
  uint64_t key64;
  std::memcpy(&key64, rotated, 8);
  size_t i = 0;
  for (; length - i >= 8; i += 8) {
    uint64_t word;
    std::memcpy(&word, data + i, 8);
    word ^= key64;
    std::memcpy(data + i, &word, 8);
  }
  // At most 7 bytes left; rotated[j] still lines up because i is a multiple of 8 (and of 4).
  for (size_t j = 0; i < length; ++i, ++j) data[i] ^= rotated[j];
}

size_t encode_frame_header(uint8_t* out, ws_opcode opcode, uint64_t payload_bytes, bool fin,
                           const uint8_t* mask_key) {
  out[0] = static_cast<uint8_t>((fin ? fin_bit : 0) | static_cast<uint8_t>(opcode));
  const uint8_t mask = mask_key != nullptr ? mask_bit : 0;
  size_t n;
  if (payload_bytes < 126) {
    out[1] = static_cast<uint8_t>(mask | payload_bytes);
    n = 2;
  } else if (payload_bytes <= 0xFFFF) {
    out[1] = static_cast<uint8_t>(mask | 126);
    out[2] = static_cast<uint8_t>(payload_bytes >> 8);
    out[3] = static_cast<uint8_t>(payload_bytes);
    n = 4;
  } else {
    out[1] = static_cast<uint8_t>(mask | 127);
    for (size_t i = 0; i < 8; ++i) out[2 + i] = static_cast<uint8_t>(payload_bytes >> (56 - 8 * i));
    n = 10;
  }
  if (mask_key != nullptr) {
    std::memcpy(out + n, mask_key, 4);
    n += 4;
  }
  return n;
}

size_t encode_close_payload(uint8_t* out, uint16_t code, std::string_view reason) {
  if (code == close_code::no_status || code == 0) return 0;  // 1005 is never sent: no payload
  out[0] = static_cast<uint8_t>(code >> 8);
  out[1] = static_cast<uint8_t>(code);
  size_t n = reason.size();
  if (n > ws_control_payload_max - 2) {
    n = ws_control_payload_max - 2;
    // Back up to the start of the character that would be cut (continuation bytes 10xxxxxx).
    while (n > 0 && (static_cast<uint8_t>(reason[n]) & 0xC0) == 0x80) --n;
  }
  if (n != 0) std::memcpy(out + 2, reason.data(), n);
  return 2 + n;
}

ws_event ws_frame_parser::fail(uint16_t code) {
  failed_ = static_cast<uint8_t>(code - 1000);  // 1002, 1007, 1009 fit in a byte this way
  ws_event event;
  event.kind = ws_event_kind::error;
  event.close_code = code;
  return event;
}

ws_event ws_frame_parser::next(std::span<uint8_t> input, const ws_limits& limits) {
  if (failed_ != 0) {
    ws_event event;
    event.kind = ws_event_kind::error;
    event.close_code = static_cast<uint16_t>(1000 + failed_);
    return event;
  }

  size_t header_bytes = 0;
  if (in_frame_ == 0) {
    // ---- A frame header. Everything decidable from the first two bytes fails fast. ----
    if (input.size() < 2) return need_more();
    const uint8_t b0 = input[0];
    const uint8_t b1 = input[1];
    const uint8_t opcode = b0 & opcode_bits;
    const bool fin = (b0 & fin_bit) != 0;
    const bool masked = (b1 & mask_bit) != 0;
    const uint8_t length7 = b1 & length_bits;
    if ((b0 & rsv23_bits) != 0 || !is_known_opcode(opcode)) return fail(close_code::protocol_error);
    const bool rsv1 = (b0 & ws_rsv1_bit) != 0;
    // RSV1 (permessage-deflate) only when negotiated, and only on a message's first frame.
    if (rsv1 && ((deflate_ & deflate_negotiated) == 0 || is_control(opcode) || opcode == 0))
      return fail(close_code::protocol_error);
    if (masked != (role_ == ws_role::server)) return fail(close_code::protocol_error);
    if (is_control(opcode)) {
      if (!fin || length7 > ws_control_payload_max) return fail(close_code::protocol_error);
    } else if ((opcode == 0) != (message_opcode_ != 0)) {
      // A continuation with no message open, or a new message inside an open one.
      return fail(close_code::protocol_error);
    }

    const size_t length_bytes = length7 == 126 ? 2 : length7 == 127 ? 8 : 0;
    header_bytes = 2 + length_bytes + (masked ? 4 : 0);
    if (input.size() < 2 + length_bytes) return need_more();
    const uint64_t payload_bytes = length_bytes == 0 ? length7 : load_be(&input[2], length_bytes);
    if (payload_bytes >> 63) return fail(close_code::protocol_error);
    if (!is_control(opcode)) {
      if (fragments_ >= limits.fragments_per_message_max ||
          payload_bytes >
              limits.message_bytes_max - std::min(message_bytes_, limits.message_bytes_max))
        return fail(close_code::message_too_big);
    }
    if (input.size() < header_bytes) return need_more();
    uint32_t key = 0;
    if (masked) std::memcpy(&key, &input[header_bytes - 4], 4);

    if (is_control(opcode)) {
      // Only ever returned whole: nothing is unmasked or consumed until all of it is here.
      if (input.size() - header_bytes < payload_bytes) return need_more();
      ws_event event;
      event.consumed = header_bytes + payload_bytes;
      event.payload = input.subspan(header_bytes, payload_bytes);
      if (masked) unmask(event.payload.data(), event.payload.size(), key, 0);
      if (opcode == static_cast<uint8_t>(ws_opcode::ping)) {
        event.kind = ws_event_kind::ping;
        return event;
      }
      if (opcode == static_cast<uint8_t>(ws_opcode::pong)) {
        event.kind = ws_event_kind::pong;
        return event;
      }
      // Close.
      if (payload_bytes == 1) return fail(close_code::protocol_error);
      event.kind = ws_event_kind::close;
      if (payload_bytes == 0) {
        event.close_code = close_code::no_status;
        return event;
      }
      event.close_code = static_cast<uint16_t>(event.payload[0] << 8 | event.payload[1]);
      if (!valid_received_close_code(event.close_code)) return fail(close_code::protocol_error);
      event.payload = event.payload.subspan(2);
      if (!valid_utf8(std::span<const uint8_t>(event.payload.data(), event.payload.size())))
        return fail(close_code::invalid_payload);
      return event;
    }

    // A data frame. A non-empty frame whose payload has not started arriving is left
    // unconsumed (need_more, no state change), so need_more never consumes.
    if (payload_bytes != 0 && input.size() == header_bytes) return need_more();
    if (opcode != 0) {
      message_opcode_ = opcode;
      if (rsv1) deflate_ |= deflate_message;
    }
    ++fragments_;
    frame_fin_ = fin ? 1 : 0;
    mask_key_ = key;
    mask_offset_ = 0;
    payload_remaining_ = payload_bytes;
    in_frame_ = 1;
    input = input.subspan(header_bytes);
  } else if (input.empty()) {
    return need_more();
  }

  // ---- A chunk of the current data frame's payload (possibly empty for an empty frame). ----
  const size_t chunk = static_cast<size_t>(std::min<uint64_t>(payload_remaining_, input.size()));
  ws_event event;
  event.kind = ws_event_kind::data;
  event.message_opcode = static_cast<ws_opcode>(message_opcode_);
  event.message_begin = fragments_ == 1 && message_bytes_ == 0 && header_bytes != 0;
  event.consumed = header_bytes + chunk;
  event.payload = input.first(chunk);
  if (role_ == ws_role::server) unmask(event.payload.data(), chunk, mask_key_, mask_offset_);
  event.compressed = (deflate_ & deflate_message) != 0;
  // A compressed message's text is checked by the engine once inflated.
  bool text = message_opcode_ == static_cast<uint8_t>(ws_opcode::text) && !event.compressed;
  if (text && limits.text_utf8_by_application && event.message_begin && frame_fin_ &&
      chunk == payload_remaining_) {
    event.utf8_unchecked = true;  // the whole message, in this input: the application checks
    text = false;
  }
  if (text && !utf8_.feed(std::span<const uint8_t>(event.payload.data(), chunk)))
    return fail(close_code::invalid_payload);
  payload_remaining_ -= chunk;
  message_bytes_ += chunk;
  mask_offset_ = static_cast<uint8_t>((mask_offset_ + chunk) & 3);
  if (payload_remaining_ != 0) return event;

  in_frame_ = 0;
  if (frame_fin_ == 0) return event;
  if (text && !utf8_.at_boundary()) return fail(close_code::invalid_payload);
  event.message_end = true;
  message_opcode_ = 0;
  message_bytes_ = 0;
  fragments_ = 0;
  frame_fin_ = 0;
  deflate_ &= deflate_negotiated;
  utf8_.reset();
  return event;
}

}  // namespace wsed::proto
