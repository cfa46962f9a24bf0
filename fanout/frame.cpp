// fanout/frame.cpp: shared publication frames and the per-shard frame pool.
//
// Owns: the frames' memory (one malloc each: struct + key + wire bytes). Thread: make_* and
// reclaim on the pool's owner thread; retain/release/give_back from any thread. Never blocks,
// never writes into a frame after make_* returned it. The return stack is a Treiber stack that
// only the owner pops, and it pops it whole (exchange with nullptr), so there is no ABA.
#include "fanout/frame.hpp"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "fanout/assert.hpp"
#include "proto/ws.hpp"

namespace wsed::fanout {

namespace {

// Bytes after the struct for this key and payload; 0 when it does not fit the 32-bit fields.
size_t needed_bytes(std::string_view key, std::string_view payload) {
  constexpr size_t limit = std::numeric_limits<uint32_t>::max();
  if (key.size() > limit / 2 || payload.size() > limit / 2) return 0;
  return key.size() + proto::frame_header_bytes(payload.size()) + payload.size();
}

frame* allocate(size_t capacity_bytes, frame_pool* origin) {
  void* memory = std::malloc(sizeof(frame) + capacity_bytes);
  if (memory == nullptr) return nullptr;
  frame* f = new (memory) frame;
  f->capacity = static_cast<uint32_t>(capacity_bytes);
  f->origin = origin;
  return f;
}

void destroy(frame* f) {
  f->~frame();
  std::free(f);
}

// Writes key and the frame of payload into f (capacity already checked); refs = 1.
frame* fill(frame* f, std::string_view key, std::string_view payload,
            proto::ws_opcode opcode = proto::ws_opcode::text) {
  uint8_t* out = reinterpret_cast<uint8_t*>(f + 1);
  if (!key.empty()) std::memcpy(out, key.data(), key.size());
  const size_t header_bytes = proto::encode_frame_header(out + key.size(), opcode, payload.size());
  if (!payload.empty())
    std::memcpy(out + key.size() + header_bytes, payload.data(), payload.size());
  f->key_bytes = static_cast<uint32_t>(key.size());
  f->header_bytes = static_cast<uint32_t>(header_bytes);
  f->wire_bytes = static_cast<uint32_t>(header_bytes + payload.size());
  f->next_free = nullptr;
  f->deflated.store(nullptr, std::memory_order_relaxed);
  f->refs.store(1, std::memory_order_relaxed);
  return f;
}

}  // namespace

void retain(frame* f, uint32_t n) {
  f->refs.fetch_add(n, std::memory_order_relaxed);
}

void release(frame* f) {
  const uint32_t before = f->refs.fetch_sub(1, std::memory_order_acq_rel);
  FANOUT_ASSERT(before != 0);
  if (before != 1) return;
  frame* twin = f->deflated.exchange(nullptr, std::memory_order_acquire);
  if (twin != nullptr && twin != f) release(twin);  // a twin has no twin: one level deep
  if (f->origin != nullptr) {
    f->origin->give_back(f);
  } else {
    destroy(f);
  }
}

frame* make_text_frame(std::string_view key, std::string_view payload) {
  const size_t bytes = needed_bytes(key, payload);
  if (bytes == 0) return nullptr;
  frame* f = allocate(bytes, nullptr);
  return f == nullptr ? nullptr : fill(f, key, payload);
}

frame* make_binary_frame(std::string_view key, std::string_view payload) {
  const size_t bytes = needed_bytes(key, payload);
  if (bytes == 0) return nullptr;
  frame* f = allocate(bytes, nullptr);
  return f == nullptr ? nullptr : fill(f, key, payload, proto::ws_opcode::binary);
}

frame* make_deflated_frame(bool binary, std::span<const uint8_t> compressed) {
  std::string_view payload(reinterpret_cast<const char*>(compressed.data()), compressed.size());
  const size_t bytes = needed_bytes({}, payload);
  if (bytes == 0) return nullptr;
  frame* f = allocate(bytes, nullptr);
  if (f == nullptr) return nullptr;
  fill(f, {}, payload, binary ? proto::ws_opcode::binary : proto::ws_opcode::text);
  reinterpret_cast<uint8_t*>(f + 1)[0] |= proto::ws_rsv1_bit;
  return f;
}

frame* publish_deflated(const frame& f, frame* twin) {
  frame* expected = nullptr;
  auto& slot = f.deflated;  // mutable: the twin is not part of the frame's bytes
  if (slot.compare_exchange_strong(expected, twin, std::memory_order_acq_rel,
                                   std::memory_order_acquire))
    return twin;
  if (twin != &f) release(twin);
  return expected;
}

frame_pool::~frame_pool() {
  reclaim();
  FANOUT_ASSERT(made_ ==
                reclaimed_);  // a frame still referenced would be given back to freed memory
  for (frame*& head : free_) {
    while (head != nullptr) {
      frame* next = head->next_free;
      destroy(head);
      head = next;
    }
  }
}

frame* frame_pool::make_text(std::string_view key, std::string_view payload) {
  const size_t bytes = needed_bytes(key, payload);
  if (bytes == 0) return nullptr;
  uint32_t size_class = 0;
  while (size_class < size_classes && (size_t{smallest_capacity_bytes} << size_class) < bytes) {
    ++size_class;
  }
  frame* f = nullptr;
  if (size_class < size_classes) {
    if (free_[size_class] == nullptr) reclaim();
    f = free_[size_class];
    if (f != nullptr) {
      free_[size_class] = f->next_free;
      free_bytes_ -= f->capacity;
    } else {
      f = allocate(size_t{smallest_capacity_bytes} << size_class, this);
    }
  } else {
    f = allocate(bytes, this);
  }
  if (f == nullptr) return nullptr;
  ++made_;
  return fill(f, key, payload);
}

void frame_pool::give_back(frame* f) {
  frame* head = returned_.load(std::memory_order_relaxed);
  do {
    f->next_free = head;
  } while (!returned_.compare_exchange_weak(head, f, std::memory_order_release,
                                            std::memory_order_relaxed));
}

size_t frame_pool::outstanding() const {
  size_t on_stack = 0;
  for (const frame* f = returned_.load(std::memory_order_acquire); f != nullptr; f = f->next_free) {
    ++on_stack;
  }
  return made_ - reclaimed_ - on_stack;
}

void frame_pool::reclaim() {
  if (returned_.load(std::memory_order_relaxed) == nullptr) return;
  frame* f = returned_.exchange(nullptr, std::memory_order_acquire);
  while (f != nullptr) {
    frame* next = f->next_free;
    ++reclaimed_;
    keep_or_free(f);
    f = next;
  }
}

void frame_pool::keep_or_free(frame* f) {
  const size_t capacity_bytes = f->capacity;
  if (capacity_bytes > (size_t{smallest_capacity_bytes} << (size_classes - 1)) ||
      free_bytes_ + capacity_bytes > free_bytes_max) {
    destroy(f);
    return;
  }
  uint32_t size_class = 0;
  while ((size_t{smallest_capacity_bytes} << size_class) < capacity_bytes) ++size_class;
  f->next_free = free_[size_class];
  free_[size_class] = f;
  free_bytes_ += capacity_bytes;
}

}  // namespace wsed::fanout
