// fanout/assert.hpp: FANOUT_ASSERT, the always-on invariant check of fanout/ (DESIGN.md rule 4;
// the same shape as engine/assert.hpp, which fanout must not include: it names no engine file).
// A failed invariant is a bug: it names file and line and aborts, in every build type.
#pragma once

#include <cstdio>
#include <cstdlib>

#define FANOUT_ASSERT(cond)                                                                     \
  do {                                                                                          \
    if (__builtin_expect(!(cond), 0)) {                                                         \
      std::fprintf(stderr, "wsed: assertion failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                             \
    }                                                                                           \
  } while (0)
