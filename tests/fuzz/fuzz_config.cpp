// tests/fuzz/fuzz_config.cpp: libFuzzer target for wsed's configuration path as the binary uses
// it (engine/flags: load_config): the --config file's text through CLI11's TOML reader and
// wsed's line checks, the keys onto the flag table, each value through its converter and range
// check, then the cross-setting checks into a server_config. An input that starts with "ENV\n"
// first gives environment variables, NAME=VALUE per line up to an empty line (the file follows).
// Properties: nothing crashes or overruns (ASan/UBSan); a refusal is one or more non-empty
// lines; an accepted file's --print-config reads back without a problem to the same values, and
// printing that again gives the same text (a fixed point). Checked with abort(), so libFuzzer
// reports a broken property. Redis endpoints are not resolved (no DNS). Built by tools/fuzz.sh.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "engine/flags.hpp"

using namespace wsed::engine;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

flags_result print(std::string text, const std::map<std::string, std::string>* env) {
  config_input in;
  in.args = {"--config", "fuzz.toml", "--print-config"};
  in.config_text = std::move(text);
  in.resolve_redis = false;
  if (env)
    in.env = [env](const std::string& name) -> std::optional<std::string> {
      auto it = env->find(name);
      if (it == env->end()) return std::nullopt;
      return it->second;
    };
  return load_config(in);
}

// The printed settings without their "# source" comments (the sources change on a read back).
std::string values_of(std::string_view printed) {
  std::string out;
  while (!printed.empty()) {
    size_t nl = printed.find('\n');
    std::string_view line = printed.substr(0, nl);
    printed = nl == std::string_view::npos ? std::string_view{} : printed.substr(nl + 1);
    if (line.empty() || line.front() == '#') continue;
    size_t comment = line.rfind("  # ");
    require(comment != std::string_view::npos);
    line = line.substr(0, comment);
    while (!line.empty() && line.back() == ' ') line.remove_suffix(1);
    out.append(line).push_back('\n');
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::map<std::string, std::string> env;
  bool with_env = input.starts_with("ENV\n");
  if (with_env) {
    input.remove_prefix(4);
    while (!input.empty()) {
      size_t nl = input.find('\n');
      std::string_view line = input.substr(0, nl);
      input = nl == std::string_view::npos ? std::string_view{} : input.substr(nl + 1);
      if (line.empty()) break;
      size_t eq = line.find('=');
      if (eq != std::string_view::npos)
        env[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
    }
  }
  flags_result first = print(std::string(input), with_env ? &env : nullptr);
  if (first.what != flags_result::action::exit_ok) {
    require(first.what == flags_result::action::exit_usage && !first.problems.empty());
    for (const auto& p : first.problems) require(!p.empty() && p.find('\n') == std::string::npos);
    require(first.output.empty());
    return 0;
  }
  require(first.problems.empty());
  // Read back with no environment: every value now comes from the file.
  flags_result second = print(first.output, nullptr);
  require(second.what == flags_result::action::exit_ok && second.problems.empty());
  if (first.output.find(": not representable in the file") == std::string::npos)
    require(values_of(second.output) == values_of(first.output));
  flags_result third = print(second.output, nullptr);
  require(third.what == flags_result::action::exit_ok && third.output == second.output);
  return 0;
}
