// tests/unit/test_fault.cpp: the fault injector (engine/fault.hpp): the --fault-inject spec, the
// seeded draws (same seed, same faults), the rates, short sends, the counts.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "engine/fault.hpp"

using namespace wsed::engine;

namespace {

fault_plan plan_of(const char* spec) {
  std::string why;
  auto p = parse_fault_plan(spec, &why);
  REQUIRE_MESSAGE(p.has_value(), why);
  return *p;
}

std::vector<bool> draws(const fault_plan& p, uint64_t stream, fault_kind k, int n) {
  fault_injector f(p, stream);
  std::vector<bool> out;
  for (int i = 0; i < n; ++i) out.push_back(f.fire(k));
  return out;
}

}  // namespace

TEST_CASE("fault spec: every kind, any order, rates in [0, 1]") {
  fault_plan p = plan_of("seed=42,short_send=0.1,enobufs=0.05,reset=0.01,sq_full=1,alloc=0");
  CHECK(p.seed == 42);
  CHECK(p.any());
  CHECK(p.threshold[size_t(fault_kind::sq_full)] == UINT64_MAX);
  CHECK(p.threshold[size_t(fault_kind::alloc)] == 0);
  CHECK(p.threshold[size_t(fault_kind::reset)] < p.threshold[size_t(fault_kind::enobufs)]);
  CHECK(p.threshold[size_t(fault_kind::enobufs)] < p.threshold[size_t(fault_kind::short_send)]);
  CHECK_FALSE(plan_of("seed=7").any());
  CHECK_FALSE(plan_of("").any());
  for (size_t k = 0; k < size_t(fault_kind::count_); ++k)
    CHECK(plan_of((std::string(name_of(fault_kind(k))) + "=0.5").c_str()).threshold[k] ==
          (1ull << 63));
}

TEST_CASE("fault spec: anything else is refused with a reason") {
  for (const char* bad :
       {"reset", "reset=", "reset=1.5", "reset=-0.1", "reset=x", "reset=0.1x", "nope=0.1",
        "seed=", "seed=-1", "seed=12a", "reset=0.1,,alloc=0.1", "reset=nan"}) {
    std::string why;
    CHECK_MESSAGE(!parse_fault_plan(bad, &why), bad);
    CHECK_MESSAGE(!why.empty(), bad);
  }
}

TEST_CASE("fault injector: the same seed and stream give the same faults") {
  fault_plan p = plan_of("seed=1234,reset=0.3");
  CHECK(draws(p, 0, fault_kind::reset, 1000) == draws(p, 0, fault_kind::reset, 1000));
  CHECK(draws(p, 0, fault_kind::reset, 1000) != draws(p, 1, fault_kind::reset, 1000));
  fault_plan q = plan_of("seed=1235,reset=0.3");
  CHECK(draws(p, 0, fault_kind::reset, 1000) != draws(q, 0, fault_kind::reset, 1000));
}

TEST_CASE("fault injector: rates 0 and 1, and a rate in between, counted by kind") {
  fault_injector f(plan_of("seed=9,reset=1,alloc=0.25"), 3);
  int resets = 0, allocs = 0, sends = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    resets += f.fire(fault_kind::reset);
    allocs += f.fire(fault_kind::alloc);
    sends += f.fire(fault_kind::short_send);
  }
  CHECK(resets == n);
  CHECK(sends == 0);
  CHECK(allocs > n * 23 / 100);
  CHECK(allocs < n * 27 / 100);
  CHECK(f.injected(fault_kind::reset) == uint64_t(n));
  CHECK(f.injected(fault_kind::alloc) == uint64_t(allocs));
  CHECK(f.injected(fault_kind::short_send) == 0);
  CHECK(f.injected(fault_kind::enobufs) == 0);
}

TEST_CASE("fault injector: a short send is 1 to n-1 bytes, never 0, never the whole") {
  fault_injector always(plan_of("seed=5,short_send=1"), 0);
  CHECK(always.send_bytes(0) == 0);
  CHECK(always.send_bytes(1) == 1);  // one byte cannot be cut
  bool saw_one = false, saw_most = false;
  for (int i = 0; i < 20000; ++i) {
    size_t n = always.send_bytes(10);
    CHECK(n >= 1);
    CHECK(n <= 9);
    saw_one |= n == 1;
    saw_most |= n == 9;
  }
  CHECK(saw_one);
  CHECK(saw_most);
  fault_injector never(plan_of("seed=5,reset=1"), 0);
  CHECK(never.send_bytes(12345) == 12345);
}
