// engine/out_queue.hpp: a connection's queue of outbound bytes, sent as one vectored send.
//
// Owned by one shard; never touched by another thread. Bytes live in refcounted chunks, so a
// frame encoded once (a broadcast) can be referenced by many connections' queues while a
// per-connection reply is copied into the tail chunk it owns. The iovec array of the send in
// flight lives here, because the kernel reads it until the send completes.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/metrics.hpp"
#include "fanout/frame.hpp"

namespace wsed::engine {

// Refcounted bytes. Allocated by chunk_pool; released to it when refs drops to 0.
struct out_chunk {
  uint32_t refs;
  uint32_t capacity;
  uint32_t size;    // bytes written so far
  uint32_t pooled;  // size class: 0 = allocated to size, 1 = small, 2 = standard, 3 = tiny
  uint8_t* data() { return reinterpret_cast<uint8_t*>(this + 1); }
};
static_assert(sizeof(out_chunk) == 16);

// Three pooled size classes: tiny chunks for the first frame queued to an idle connection (one
// publication reaching 100,000 subscribers costs 100,000 of them at once), small ones for
// replies, control frames and handshake responses (so that thousands of concurrent handshakes do
// not each pin 16 KiB), standard chunks for a queue that is already busy; anything bigger is
// allocated to size and freed when sent.
class chunk_pool {
 public:
  static constexpr uint32_t tiny_capacity = 256 - sizeof(out_chunk);
  static constexpr uint32_t small_capacity = 1024 - sizeof(out_chunk);
  static constexpr uint32_t standard_capacity = 16384 - sizeof(out_chunk);
  static constexpr size_t tiny_keep_max = 8192;    // 2 MiB of tiny chunks kept for reuse
  static constexpr size_t small_keep_max = 1024;   // 1 MiB of small chunks kept for reuse
  static constexpr size_t standard_keep_max = 64;  // 1 MiB of standard chunks kept

  ~chunk_pool();
  out_chunk* get(size_t at_least);
  void release(out_chunk* c);

 private:
  std::vector<out_chunk*> tiny_free_;
  std::vector<out_chunk*> small_free_;
  std::vector<out_chunk*> standard_free_;
};

class out_queue {
 public:
  static constexpr int iov_max = 64;

  // Every byte this queue gains or loses is also added to / taken from *total (the shard's
  // gauge of bytes queued to all its connections); null: not counted.
  void count_into(counter* total) { total_ = total; }
  bool empty() const { return head_ == segments_.size(); }
  uint64_t queued_bytes() const { return queued_bytes_; }
  bool send_in_flight() const { return in_flight_bytes_ != 0; }

  // Room for n bytes at the tail, to be filled by the caller right away; coalesces into the
  // tail chunk when this queue owns it alone.
  uint8_t* reserve(chunk_pool& pool, size_t n);
  void append(chunk_pool& pool, const void* bytes, size_t n);
  // References a shared chunk's bytes [offset, offset+length): refs is incremented.
  void append_shared(out_chunk* chunk, uint32_t offset, uint32_t length);
  // References a cross-shard frame's wire bytes (one fanout::retain; released once sent), sent
  // by iovec from the frame itself instead of a copy.
  void append_frame(fanout::frame* f);
  // Puts the rest of a frame, from byte `offset` of its wire bytes, before everything queued
  // (the unsent part of a send made outside this queue); no send may be in flight.
  void prepend_frame(fanout::frame* f, uint32_t offset);

  // Prepares the iovec array for the next send; returns the iovec count (0: nothing to send).
  // Marks those bytes in flight until complete_send().
  int prepare_send(const iovec** iov, size_t* bytes);
  // The send in flight completed with sent bytes (<= in flight); unsent bytes stay queued.
  void complete_send(chunk_pool& pool, size_t sent);
  void clear(chunk_pool& pool);
  // Like clear(), also with a send in flight: only once the ring that owned it is gone.
  void discard(chunk_pool& pool);

  msghdr* msg() { return &vectored_->msg; }

 private:
  struct segment {
    out_chunk* chunk;      // our own bytes, or
    fanout::frame* frame;  // a shared frame's (exactly one of the two is set)
    uint32_t offset;
    uint32_t length;
  };
  void release_segment(chunk_pool& pool, const segment& s);
  std::vector<segment> segments_;
  size_t head_ = 0;
  uint64_t queued_bytes_ = 0;
  counter* total_ = nullptr;
  void grow(uint64_t n) {
    queued_bytes_ += n;
    if (total_) total_->add(n);
  }
  void shrink(uint64_t n) {
    queued_bytes_ -= n;
    if (total_) total_->sub(n);
  }
  uint64_t in_flight_bytes_ = 0;
  // The iovecs of the send in flight: one inline (a single segment goes out as IORING_OP_SEND),
  // the array for SENDMSG allocated the first time a queue holds several segments, then kept.
  struct vectored {
    msghdr msg{};
    iovec iov[iov_max];
  };
  iovec one_{};
  std::unique_ptr<vectored> vectored_;
};

}  // namespace wsed::engine
