// tools/bench/send_progress.hpp: one connection's send in progress, a run of back-to-back frames
// of one size (wse-bench's stream runs, pings, client_hello), and the whole messages the kernel
// has accepted of it so far. A send CQE's res bytes (a short send is common against a slow
// server) complete the messages they cover, so a measuring window counts what was handed over
// even when no whole run finished inside it; the rest of the run follows with the remainder.
//
// Owns: a pointer into a frame buffer the worker owns (never freed here). Thread: the worker
// thread of its connection. Pure and header-only: on the hot path once per send CQE, one
// division, no allocation.
#pragma once

#include <algorithm>
#include <cstdint>

namespace wsed::bench {

struct send_progress {
  const uint8_t* ptr = nullptr;  // the first byte the kernel has not accepted yet
  uint32_t left = 0;             // bytes not accepted yet (0: no send in progress)
  uint32_t frame_bytes = 0;      // bytes of each counted message; 0: nothing counted
  uint32_t frame_done = 0;       // bytes of the current message accepted so far

  // A new send of `bytes` bytes made of `frames` frames of equal size (bytes a multiple of
  // frames); frames 0: the bytes count, no message does (client_hello).
  void start(const uint8_t* data, uint32_t bytes, uint32_t frames) {
    ptr = data;
    left = bytes;
    frame_bytes = frames != 0 ? bytes / frames : 0;
    frame_done = 0;
  }

  // The kernel accepted `bytes` more (a send CQE's res, clamped to what was asked): returns the
  // messages whose last byte they carried. Once left reaches 0 every frame has been counted.
  uint32_t accept(uint32_t bytes) {
    bytes = std::min(bytes, left);
    ptr += bytes;
    left -= bytes;
    if (frame_bytes == 0) return 0;
    uint32_t total = frame_done + bytes;
    uint32_t done = total / frame_bytes;
    frame_done = total - done * frame_bytes;
    return done;
  }
};

}  // namespace wsed::bench
