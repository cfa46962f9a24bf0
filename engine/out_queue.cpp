// engine/out_queue.cpp: see out_queue.hpp. Shard-local; no locks, no syscalls.
#include "engine/out_queue.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/assert.hpp"

namespace wsed::engine {

chunk_pool::~chunk_pool() {
  for (out_chunk* c : tiny_free_) std::free(c);
  for (out_chunk* c : small_free_) std::free(c);
  for (out_chunk* c : standard_free_) std::free(c);
}

out_chunk* chunk_pool::get(size_t at_least) {
  uint32_t size_class = at_least <= tiny_capacity       ? 3
                        : at_least <= small_capacity    ? 1
                        : at_least <= standard_capacity ? 2
                                                        : 0;
  uint32_t capacity = size_class == 3   ? tiny_capacity
                      : size_class == 1 ? small_capacity
                      : size_class == 2 ? standard_capacity
                                        : uint32_t(at_least);
  ENGINE_ASSERT(at_least <= UINT32_MAX);
  std::vector<out_chunk*>* free_list = size_class == 3   ? &tiny_free_
                                       : size_class == 1 ? &small_free_
                                       : size_class == 2 ? &standard_free_
                                                         : nullptr;
  out_chunk* c;
  if (free_list && !free_list->empty()) {
    c = free_list->back();
    free_list->pop_back();
  } else {
    c = static_cast<out_chunk*>(std::malloc(sizeof(out_chunk) + capacity));
    if (!c) throw std::bad_alloc();
  }
  c->capacity = capacity;
  c->pooled = size_class;
  c->refs = 1;
  c->size = 0;
  return c;
}

void chunk_pool::release(out_chunk* c) {
  ENGINE_ASSERT(c->refs > 0);
  if (--c->refs != 0) return;
  if (c->pooled == 3 && tiny_free_.size() < tiny_keep_max)
    tiny_free_.push_back(c);
  else if (c->pooled == 1 && small_free_.size() < small_keep_max)
    small_free_.push_back(c);
  else if (c->pooled == 2 && standard_free_.size() < standard_keep_max)
    standard_free_.push_back(c);
  else
    std::free(c);
}

uint8_t* out_queue::reserve(chunk_pool& pool, size_t n) {
  if (!empty()) {
    segment& tail = segments_.back();
    out_chunk* c = tail.chunk;
    if (c && c->refs == 1 && tail.offset + tail.length == c->size && c->capacity - c->size >= n) {
      uint8_t* p = c->data() + c->size;
      c->size += uint32_t(n);
      tail.length += uint32_t(n);
      grow(n);
      return p;
    }
  }
  if (head_ > 0 && head_ == segments_.size()) {
    segments_.clear();
    head_ = 0;
  }
  // An idle queue gets the smallest chunk that fits, a queue with something in it a small one,
  // and one that holds a standard chunk's worth already (frames arriving faster than they are
  // sent) a standard chunk: a burst coalesces into few iovecs, a mostly idle subscriber holds
  // only a tiny chunk, and the unused tail of the last chunk never exceeds what is queued.
  size_t want = n;
  if (queued_bytes_ >= chunk_pool::standard_capacity)
    want = std::max<size_t>(n, chunk_pool::standard_capacity);
  else if (!empty())
    want = std::max<size_t>(n, chunk_pool::small_capacity);
  out_chunk* c = pool.get(want);
  c->size = uint32_t(n);
  segments_.push_back({c, nullptr, 0, uint32_t(n)});
  grow(n);
  return c->data();
}

void out_queue::append(chunk_pool& pool, const void* bytes, size_t n) {
  if (n == 0) return;
  std::memcpy(reserve(pool, n), bytes, n);
}

void out_queue::append_shared(out_chunk* chunk, uint32_t offset, uint32_t length) {
  ++chunk->refs;
  segments_.push_back({chunk, nullptr, offset, length});
  grow(length);
}

void out_queue::append_frame(fanout::frame* f) {
  if (head_ > 0 && head_ == segments_.size()) {
    segments_.clear();
    head_ = 0;
  }
  fanout::retain(f);
  segments_.push_back({nullptr, f, 0, f->wire_bytes});
  grow(f->wire_bytes);
}

void out_queue::prepend_frame(fanout::frame* f, uint32_t offset) {
  ENGINE_ASSERT(in_flight_bytes_ == 0 && offset < f->wire_bytes);
  fanout::retain(f);
  segment s{nullptr, f, offset, f->wire_bytes - offset};
  if (head_ > 0)
    segments_[--head_] = s;
  else
    segments_.insert(segments_.begin(), s);
  grow(s.length);
}

void out_queue::release_segment(chunk_pool& pool, const segment& s) {
  if (s.frame)
    fanout::release(s.frame);
  else
    pool.release(s.chunk);
}

int out_queue::prepare_send(const iovec** iov, size_t* bytes) {
  ENGINE_ASSERT(in_flight_bytes_ == 0);
  auto base = [](const segment& s) {
    return const_cast<uint8_t*>(s.frame ? s.frame->wire().data() : s.chunk->data()) + s.offset;
  };
  if (segments_.size() - head_ == 1) {
    const segment& s = segments_[head_];
    one_ = iovec{base(s), s.length};
    in_flight_bytes_ = s.length;
    *iov = &one_;
    *bytes = s.length;
    return 1;
  }
  if (!vectored_) vectored_ = std::make_unique<vectored>();
  int n = 0;
  size_t total = 0;
  for (size_t i = head_; i < segments_.size() && n < iov_max; ++i, ++n) {
    const segment& s = segments_[i];
    vectored_->iov[n].iov_base = base(s);
    vectored_->iov[n].iov_len = s.length;
    total += s.length;
  }
  in_flight_bytes_ = total;
  vectored_->msg.msg_iov = vectored_->iov;
  vectored_->msg.msg_iovlen = size_t(n);
  *iov = vectored_->iov;
  *bytes = total;
  return n;
}

void out_queue::complete_send(chunk_pool& pool, size_t sent) {
  ENGINE_ASSERT(sent <= in_flight_bytes_);
  in_flight_bytes_ = 0;
  shrink(sent);
  while (sent > 0) {
    segment& s = segments_[head_];
    if (sent >= s.length) {
      sent -= s.length;
      release_segment(pool, s);
      ++head_;
    } else {
      s.offset += uint32_t(sent);
      s.length -= uint32_t(sent);
      sent = 0;
    }
  }
  if (head_ == segments_.size()) {
    segments_.clear();
    head_ = 0;
  } else if (head_ > 64 && head_ * 2 > segments_.size()) {
    segments_.erase(segments_.begin(), segments_.begin() + long(head_));
    head_ = 0;
  }
}

void out_queue::clear(chunk_pool& pool) {
  ENGINE_ASSERT(in_flight_bytes_ == 0);
  discard(pool);
}

void out_queue::discard(chunk_pool& pool) {
  in_flight_bytes_ = 0;
  for (size_t i = head_; i < segments_.size(); ++i) release_segment(pool, segments_[i]);
  segments_.clear();
  head_ = 0;
  shrink(queued_bytes_);
}

}  // namespace wsed::engine
