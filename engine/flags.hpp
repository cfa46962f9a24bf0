// engine/flags.hpp: the configuration of the wsed binary: one flag table (CLI11) read from the
// command line, the environment (WSED_<FLAG>) and a TOML file (--config), in that order of
// precedence (flag > env > file > default); --print-config, --check-config, --help (grouped)
// and the man page (--help-man) are all made from that table. Also the value parsers and
// printers for sizes and durations. Startup only; main thread.
#pragma once

#include <cstdint>
#include <functional>
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
// The forms the parsers take back, in the largest unit that is exact: 16777216 -> "16MiB",
// 1500 -> "1500"; 60000 -> "1m", 1500 -> "1500ms", 0 -> "0".
std::string format_size(uint64_t bytes);
std::string format_duration_ms(uint64_t ms);
// The text with the password of any scheme://user:password@ URL replaced by ***.
std::string mask_secrets(std::string_view text);

// Where a setting's value came from (--print-config says so in a comment per line).
enum class setting_source : uint8_t { default_value, file, env, flag };

// Everything the configuration is read from, so that tests and the fuzzer can give their own.
struct config_input {
  std::vector<std::string> args;  // the command line without the program name
  // The environment: the value of a variable or nullopt (unset). Empty: no environment at all.
  std::function<std::optional<std::string>(const std::string&)> env;
  // When set, the text of the --config file (the named file is then not opened).
  std::optional<std::string> config_text;
  // false: --redis-url / --redis-cluster are not parsed (parsing resolves the host name).
  bool resolve_redis = true;
};

struct flags_result {
  enum class action : uint8_t { run, exit_ok, exit_usage } what = action::run;
  server_config config;
  // --redis-url / --redis-cluster, parsed and resolved (the bridge connects there).
  redis::endpoint redis_endpoint;
  std::vector<redis::endpoint> redis_cluster;
  // What load_config would print: stdout text (help, version, man page, --print-config, the
  // --check-config "ok" line) and one line per problem for stderr (without the "wsed: ").
  std::string output;
  std::vector<std::string> problems;
};

// Reads the configuration: every problem found is one line in problems (then exit_usage).
// Never prints; never exits.
flags_result load_config(const config_input& input);

// load_config over argv and the process environment, printing what it says to stdout and
// stderr ("wsed: <problem> (see wsed --help)" per line). exit_usage: the caller exits with 2.
flags_result parse_flags(int argc, char** argv);

// A key file's bytes (one trailing newline dropped), at least min_bytes: --api-key-file,
// --signing-key-file. Fills why ("<flag> <file>: ...") and returns nullopt on failure. Used by
// the server at startup and on SIGHUP, and by --check-config.
constexpr size_t api_key_bytes_min = 16;
constexpr size_t signing_key_bytes_min = 32;
std::optional<std::string> load_key_file(const char* flag, const std::string& file,
                                         size_t min_bytes, std::string& why);

// The one stderr line for a bad flag: "<program>: <what, newlines folded> (see <program>
// --help)". Shared by the server's flags and `wsed gen-token`.
void print_flag_error(const char* program, std::string what);

}  // namespace wsed::engine
