// engine/ring.cpp: see ring.hpp. Runs on the thread that owns the ring.
#include "engine/ring.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

namespace wsed::engine {

namespace {
std::string error_text(const std::string& what, int err) {
  return what + ": " + std::strerror(err);
}
}  // namespace

uring::~uring() {
  exit();
}

void uring::exit() {
  if (ready_) io_uring_queue_exit(&ring_);
  ready_ = false;
}

std::string uring::init(unsigned entries, unsigned cq_entries, std::string* notes) {
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  params.cq_entries = cq_entries;
  int r = io_uring_queue_init_params(entries, &ring_, &params);
  if (r == -EINVAL) {
    if (notes)
      *notes += "DEFER_TASKRUN refused by the kernel (" + std::string(std::strerror(-r)) +
                "); using SINGLE_ISSUER|COOP_TASKRUN. ";
    params = {};
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
    params.cq_entries = cq_entries;
    r = io_uring_queue_init_params(entries, &ring_, &params);
  }
  if (r == -EINVAL) {
    if (notes) *notes += "SINGLE_ISSUER refused too; using a plain ring. ";
    params = {};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = cq_entries;
    r = io_uring_queue_init_params(entries, &ring_, &params);
  }
  if (r < 0) {
    if (r == -ENOSYS || r == -EPERM)
      return error_text(
          "io_uring is not available on this kernel or is disabled (needs Linux >= 6.0)", -r);
    return error_text("io_uring_queue_init", -r);
  }
  ready_ = true;
  if (!(params.features & IORING_FEAT_NODROP))
    return "io_uring without IORING_FEAT_NODROP: kernel too old (needs >= 6.0)";
  return {};
}

provided_buffers::~provided_buffers() {
  if (ring_) munmap(ring_, ring_bytes_);
  if (base_) munmap(base_, area_bytes_);
}

std::string provided_buffers::init(io_uring* ring, uint16_t group, uint32_t count, uint32_t bytes,
                                   uint32_t tail_spare) {
  if (count == 0 || (count & (count - 1)) != 0 || count > 32768)
    return "provided buffers: the count must be a power of two <= 32768";
  bytes_ = bytes;
  if (std::string err = register_ring(ring, group, count); !err.empty()) return err;
  stride_ = uint32_t((size_t(bytes) + tail_spare + 63) & ~size_t(63));
  area_bytes_ = size_t(stride_) * count;
  void* area =
      mmap(nullptr, area_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (area == MAP_FAILED) return error_text("mmap receive buffers", errno);
  base_ = static_cast<uint8_t*>(area);
  for (uint32_t i = 0; i < count; ++i) add(uint16_t(i), i);
  commit(count);
  return {};
}

std::string provided_buffers::init_empty(io_uring* ring, uint16_t group) {
  return register_ring(ring, group, 1);
}

std::string provided_buffers::register_ring(io_uring* ring, uint16_t group, uint32_t count) {
  count_ = count;
  ring_bytes_ = sizeof(io_uring_buf) * count;
  void* ring_mem =
      mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ring_mem == MAP_FAILED) return error_text("mmap buffer ring", errno);
  ring_ = static_cast<io_uring_buf_ring*>(ring_mem);
  io_uring_buf_ring_init(ring_);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(ring_);
  reg.ring_entries = count;
  reg.bgid = group;
  int r = io_uring_register_buf_ring(ring, &reg, 0);
  if (r < 0) return error_text("io_uring_register_buf_ring (needs Linux >= 5.19)", -r);
  return {};
}

}  // namespace wsed::engine
