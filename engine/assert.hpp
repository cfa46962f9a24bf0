// engine/assert.hpp: ENGINE_ASSERT, the always-on invariant check (DESIGN.md rule 4).
// A failed invariant is a bug: it names file and line and aborts, in every build type.
#pragma once

#include <cstdio>
#include <cstdlib>

#define ENGINE_ASSERT(cond)                                                                     \
  do {                                                                                          \
    if (__builtin_expect(!(cond), 0)) {                                                         \
      std::fprintf(stderr, "wsed: assertion failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                             \
    }                                                                                           \
  } while (0)
