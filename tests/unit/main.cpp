// tests/unit/main.cpp: the doctest entry point of wsed_unit_tests.
// Owns: main(). Thread: the test runner's main thread. Never holds tests itself.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
