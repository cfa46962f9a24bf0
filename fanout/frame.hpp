// fanout/frame.hpp: an immutable, already-framed publication shared by every shard that has
// recipients for it (DESIGN.md "Broadcast = encode once, reference N times").
//
// A frame is one allocation: header fields, the key it is addressed to (a topic, a user id, or
// nothing for a broadcast) and the wire bytes (a WebSocket text frame header + payload; server
// frames are unmasked, so every recipient gets the same bytes). Nobody writes into a frame once
// make_* returned it.
//
// Owns: frame_pool owns the memory of the frames it made. Thread: make_* on the pool's owner
// thread only; retain/release from any thread (atomic count); the last release pushes the frame
// onto its origin pool's return stack (lock-free, any thread), and the owner reuses returned
// frames in its next make_*. Frames made without a pool (origin null: producers that are not a
// shard) are freed with free() by the last release. Never blocks.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace wsed::fanout {

class frame_pool;

struct frame {
  std::atomic<uint32_t> refs;
  uint32_t key_bytes;     // topic / user id bytes, stored first
  uint32_t wire_bytes;    // frame header + payload
  uint32_t header_bytes;  // WebSocket frame header (2, 4 or 10 bytes)
  uint32_t capacity;      // bytes after the struct (key + wire), for reuse by the pool
  uint32_t reserved_;
  frame_pool* origin;  // nullptr: malloc'd, freed by the last release
  frame* next_free;    // the origin pool's return stack
  // permessage-deflate: the compressed twin of this data frame (RSV1 set, same message), made
  // once by the first shard that sends it to a connection that negotiated deflate, then shared
  // by every such connection of every shard; this frame holds its one reference and releases it
  // with its last. nullptr: not made yet; this frame itself: compressing did not make it smaller.
  mutable std::atomic<frame*> deflated{nullptr};

  const uint8_t* bytes() const { return reinterpret_cast<const uint8_t*>(this + 1); }
  std::string_view key() const { return {reinterpret_cast<const char*>(bytes()), key_bytes}; }
  std::span<const uint8_t> wire() const { return {bytes() + key_bytes, wire_bytes}; }
  // The message inside the frame (the publication JSON).
  std::string_view payload() const {
    return {reinterpret_cast<const char*>(bytes()) + key_bytes + header_bytes,
            wire_bytes - header_bytes};
  }
};
static_assert(sizeof(frame) == 48);

// Adds n references (any thread; the caller already holds one).
void retain(frame* f, uint32_t n = 1);
// Drops one reference (any thread); the last one gives the frame back to its origin.
void release(frame* f);

// A text frame of payload addressed to key, refs = 1, from the heap (no pool): for producers that
// are not a shard (an embedding program's thread, later the Redis bridge). Returns nullptr when
// the allocation fails.
frame* make_text_frame(std::string_view key, std::string_view payload);
// The same with a binary frame (broadcasts of raw bytes).
frame* make_binary_frame(std::string_view key, std::string_view payload);

// A compressed data frame (RFC 7692: RSV1 set) of the already compressed payload, from the heap,
// refs = 1, no key: a twin for frame::deflated. nullptr when the allocation fails.
frame* make_deflated_frame(bool binary, std::span<const uint8_t> compressed);
// Stores twin as f's deflated form (f takes the caller's reference) unless another thread stored
// one first (then twin is released). Returns the one stored. twin may be f (not worth it).
frame* publish_deflated(const frame& f, frame* twin);

class frame_pool {
 public:
  frame_pool() = default;
  ~frame_pool();  // frees every frame given back; frames still referenced must be gone first
  frame_pool(const frame_pool&) = delete;
  frame_pool& operator=(const frame_pool&) = delete;

  // Owner thread: a text frame of payload addressed to key, refs = 1. Reuses a returned frame
  // of enough capacity when there is one. nullptr when the allocation fails.
  frame* make_text(std::string_view key, std::string_view payload);

  // Any thread (the last release): pushes f on the return stack.
  void give_back(frame* f);

  // Frames made and not yet given back (owner thread; for tests and leak checks).
  size_t outstanding() const;

 private:
  // Pooled frames have a capacity of 64 B << class (64 B .. 1 MiB), so any frame of a class fits
  // any request of that class; bigger frames are allocated exactly and freed when given back.
  static constexpr uint32_t size_classes = 15;
  static constexpr uint32_t smallest_capacity_bytes = 64;
  // Bound of the frames kept for reuse (total capacity); returned frames beyond it are freed.
  static constexpr size_t free_bytes_max = size_t{8} << 20;

  std::atomic<frame*> returned_{nullptr};  // pushed by any thread, taken whole by the owner
  frame* free_[size_classes] = {};         // owner only: per-class stacks linked by next_free
  size_t free_bytes_ = 0;                  // owner only: capacity held in free_
  size_t made_ = 0, reclaimed_ = 0;        // owner only (reclaimed = taken from returned_)
  void reclaim();
  void keep_or_free(frame* f);
};

}  // namespace wsed::fanout
