// engine/flags.hpp: the command line of the wsed binary (CLI11) and the value parsers for
// sizes and durations. Startup only; main thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/config.hpp"
#include "engine/redis_names.hpp"

namespace wsed::engine {

// "16MiB", "64KiB", "1GiB", "4096", also K/M/G and KB/MB/GB (all powers of 1024).
std::optional<uint64_t> parse_size(std::string_view text);
// "10s", "500ms", "2m", "1h", or a plain number of seconds; returns milliseconds.
std::optional<uint64_t> parse_duration_ms(std::string_view text);

struct flags_result {
  enum class action : uint8_t { run, exit_ok, exit_usage } what = action::run;
  server_config config;
  // --redis-url / --redis-cluster, parsed and resolved (the bridge connects there).
  redis::endpoint redis_endpoint;
  std::vector<redis::endpoint> redis_cluster;
};

// Parses argv. On --help/--version prints them (exit_ok); on a bad flag prints one line to
// stderr (exit_usage: the caller exits with 2).
flags_result parse_flags(int argc, char** argv);

// The one stderr line for a bad flag: "<program>: <what, newlines folded> (see <program>
// --help)". Shared by the server's flags and `wsed gen-token`.
void print_flag_error(const char* program, std::string what);

}  // namespace wsed::engine
