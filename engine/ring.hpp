// engine/ring.hpp: the io_uring pieces every loop of ours sets up the same way: the ring itself
// (SINGLE_ISSUER | DEFER_TASKRUN with the kernel's fallbacks), SQEs that never run out (a full
// submission queue is flushed first), a ring of provided receive buffers, and the user_data
// packing of completions (op | generation | index).
//
// Owns: the ring, the buffer ring and its buffer area (mmap'd). Thread: the one that set it up
// (SINGLE_ISSUER) and nobody else. Used by the shards and by wse-bench's workers; knows nothing
// of connections. Setup returns an error text (empty: done); nothing else fails.
#pragma once

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/fault.hpp"

namespace wsed::engine {

// user_data = op (8 bits) | generation (24 bits) | index (32 bits). The generation lets a loop
// drop a completion for a slot that was reused meanwhile.
struct user_data {
  static constexpr uint64_t pack(uint8_t op, uint32_t generation, uint32_t index) {
    return (uint64_t(op) << 56) | (uint64_t(generation & generation_mask) << 32) | index;
  }
  static constexpr uint8_t op(uint64_t ud) { return uint8_t(ud >> 56); }
  static constexpr uint32_t generation(uint64_t ud) { return uint32_t(ud >> 32) & generation_mask; }
  static constexpr uint32_t index(uint64_t ud) { return uint32_t(ud); }
  static constexpr uint32_t generation_mask = 0xFFFFFF;
};
static_assert(user_data::op(user_data::pack(9, 0x1234567, 77)) == 9);
static_assert(user_data::generation(user_data::pack(9, 0x1234567, 77)) == 0x234567);
static_assert(user_data::index(user_data::pack(9, 0x1234567, 0xFFFFFFFF)) == 0xFFFFFFFF);

class uring {
 public:
  uring() = default;
  ~uring();
  uring(const uring&) = delete;
  uring& operator=(const uring&) = delete;

  // SINGLE_ISSUER | DEFER_TASKRUN, else SINGLE_ISSUER | COOP_TASKRUN, else a plain ring (each
  // fallback is said in *notes). Needs IORING_FEAT_NODROP (Linux >= 6.0 has it).
  std::string init(unsigned entries, unsigned cq_entries, std::string* notes = nullptr);
  bool ready() const { return ready_; }
  // Tears the ring down now (the kernel then reads no iovec and writes no buffer of ours).
  void exit();
  io_uring* get() { return &ring_; }
  void set_fault(fault_injector* f) { fault_ = f; }

  // An SQE; when the submission queue is full, what is queued is submitted first. With a fault
  // injector, the queue is sometimes reported full when it is not (fault_kind::sq_full).
  io_uring_sqe* sqe() {
    io_uring_sqe* s =
        fault_ && fault_->fire(fault_kind::sq_full) ? nullptr : io_uring_get_sqe(&ring_);
    if (!s) {
      io_uring_submit(&ring_);
      s = io_uring_get_sqe(&ring_);
    }
    return s;
  }

 private:
  io_uring ring_{};
  bool ready_ = false;
  fault_injector* fault_ = nullptr;  // --fault-inject: not owned
};

// A ring of `count` provided buffers of `bytes` each (one buffer group), each followed by at
// least `tail_spare` readable bytes (for parsers that read past the end).
class provided_buffers {
 public:
  provided_buffers() = default;
  ~provided_buffers();
  provided_buffers(const provided_buffers&) = delete;
  provided_buffers& operator=(const provided_buffers&) = delete;

  // count: a power of two <= 32768.
  std::string init(io_uring* ring, uint16_t group, uint32_t count, uint32_t bytes,
                   uint32_t tail_spare);
  // A buffer group that never holds a buffer: a recv armed on it really completes -ENOBUFS
  // (fault injection: a provided-buffer ring run dry).
  std::string init_empty(io_uring* ring, uint16_t group);
  uint8_t* at(uint16_t bid) const { return base_ + size_t(bid) * stride_; }
  uint32_t buffer_bytes() const { return bytes_; }
  // Gives a buffer back to the kernel: add() then, once for a batch, commit(n).
  void add(uint16_t bid, unsigned offset) {
    io_uring_buf_ring_add(ring_, at(bid), bytes_, bid, io_uring_buf_ring_mask(count_), int(offset));
  }
  void commit(unsigned n) { io_uring_buf_ring_advance(ring_, int(n)); }
  void recycle(uint16_t bid) {
    add(bid, 0);
    commit(1);
  }

 private:
  // The buffer ring itself (count entries, none added yet), registered as group.
  std::string register_ring(io_uring* ring, uint16_t group, uint32_t count);

  io_uring_buf_ring* ring_ = nullptr;
  uint8_t* base_ = nullptr;
  size_t ring_bytes_ = 0;
  size_t area_bytes_ = 0;
  uint32_t stride_ = 0;
  uint32_t bytes_ = 0;
  uint32_t count_ = 0;
};

}  // namespace wsed::engine
