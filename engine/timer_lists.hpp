// engine/timer_lists.hpp: timeouts as intrusive FIFO lists over an array of slots, one list per
// timeout kind. Every list's duration is constant, so appending at the tail keeps a list ordered
// by deadline and expiry pops from the head: O(1) link, unlink and expire per slot.
//
// Owns: only the list heads; the links live in the slots (Node has deadline_ms, timer_prev,
// timer_next and timer, the list it is in, 0 = none). Thread: the slots' owner (a shard).
#pragma once

#include <cstddef>
#include <cstdint>

namespace wsed::engine {

template <class Node, class List, size_t ListCount>
class timer_lists {
 public:
  static constexpr uint32_t none = UINT32_MAX;

  void attach(Node* nodes) { nodes_ = nodes; }

  // Puts slot at the tail of list (taking it out of the list it was in).
  void link(uint32_t slot, List list, uint64_t deadline_ms) {
    unlink(slot);
    Node& n = nodes_[slot];
    head& l = heads_[size_t(list)];
    n.timer = list;
    n.deadline_ms = deadline_ms;
    n.timer_prev = l.tail;
    n.timer_next = none;
    if (l.tail != none)
      nodes_[l.tail].timer_next = slot;
    else
      l.first = slot;
    l.tail = slot;
  }

  void unlink(uint32_t slot) {
    Node& n = nodes_[slot];
    if (n.timer == List{}) return;
    head& l = heads_[size_t(n.timer)];
    if (n.timer_prev != none)
      nodes_[n.timer_prev].timer_next = n.timer_next;
    else
      l.first = n.timer_next;
    if (n.timer_next != none)
      nodes_[n.timer_next].timer_prev = n.timer_prev;
    else
      l.tail = n.timer_prev;
    n.timer = List{};
  }

  // The first slot of list whose deadline passed, unlinked; none when there is no such slot.
  uint32_t pop_expired(List list, uint64_t now_ms) {
    uint32_t slot = heads_[size_t(list)].first;
    if (slot == none || nodes_[slot].deadline_ms > now_ms) return none;
    unlink(slot);
    return slot;
  }

 private:
  struct head {
    uint32_t first = none, tail = none;
  };
  Node* nodes_ = nullptr;
  head heads_[ListCount];
};

}  // namespace wsed::engine
