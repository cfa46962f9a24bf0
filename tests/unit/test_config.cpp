// tests/unit/test_config.cpp: engine/flags' configuration layers without a process: the value
// printers against the parsers, secret masking, and load_config over a given command line,
// environment and file text (precedence, one problem per line, sources in --print-config).
#include <doctest/doctest.h>

#include <map>
#include <string>

#include "engine/flags.hpp"

using namespace wsed::engine;

namespace {

flags_result load(std::vector<std::string> args, std::map<std::string, std::string> env = {},
                  std::optional<std::string> file = std::nullopt) {
  config_input in;
  in.args = std::move(args);
  in.env = [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  if (file) {
    in.args.insert(in.args.end(), {"--config", "test.toml"});
    in.config_text = std::move(file);
  }
  in.resolve_redis = false;
  return load_config(in);
}

// The "# source" comment of key's line in a --print-config text.
std::string source_of(const std::string& printed, const std::string& key) {
  size_t at = printed.find("\n" + key + " = ");
  if (at == std::string::npos) return "missing";
  size_t end = printed.find('\n', at + 1);
  std::string line = printed.substr(at + 1, end - at - 1);
  return line.substr(line.rfind("# ") + 2);
}

}  // namespace

TEST_CASE("config: printed sizes and durations parse back to the same value") {
  for (uint64_t v : {0ull, 1ull, 512ull, 1000ull, 1024ull, 1536ull, 4096ull, 1ull << 20, 3ull << 20,
                     16ull << 20, 1ull << 30, 5ull << 30, 123456789ull}) {
    CHECK(parse_size(format_size(v)) == v);
  }
  CHECK(format_size(16ull << 20) == "16MiB");
  CHECK(format_size(1536) == "1536");
  CHECK(format_size(2048) == "2KiB");
  for (uint64_t ms : {0ull, 1ull, 500ull, 1000ull, 1500ull, 60000ull, 90000ull, 3600000ull,
                      7200000ull, 86400000ull}) {
    CHECK(parse_duration_ms(format_duration_ms(ms)) == ms);
  }
  CHECK(format_duration_ms(60000) == "1m");
  CHECK(format_duration_ms(90000) == "90s");
  CHECK(format_duration_ms(1500) == "1500ms");
  CHECK(format_duration_ms(0) == "0");
}

TEST_CASE("config: passwords in URLs and endpoints are masked") {
  CHECK(mask_secrets("redis://user:pw@host:6379/1") == "redis://user:***@host:6379/1");
  CHECK(mask_secrets("redis://:pw@host") == "redis://:***@host");
  CHECK(mask_secrets("a:1,app:pw@b:2") == "a:1,app:***@b:2");
  CHECK(mask_secrets("\"redis://u:p@h\" and redis://h:1") == "\"redis://u:***@h\" and redis://h:1");
  CHECK(mask_secrets("redis://host:6379") == "redis://host:6379");
  CHECK(mask_secrets("user@example.com") == "user@example.com");
  CHECK(mask_secrets("") == "");
}

TEST_CASE("config: flag > env > file > default, each pair") {
  std::string file = "max-connections = 11\nidle-timeout = \"90s\"\n";
  CHECK(load({}).config.connections_max == 100000);
  CHECK(load({}, {}, file).config.connections_max == 11);
  CHECK(load({}, {{"WSED_MAX_CONNECTIONS", "22"}}, file).config.connections_max == 22);
  CHECK(load({}, {{"WSED_MAX_CONNECTIONS", "22"}}).config.connections_max == 22);
  CHECK(
      load({"--max-connections", "33"}, {{"WSED_MAX_CONNECTIONS", "22"}}).config.connections_max ==
      33);
  CHECK(load({"--max-connections", "33"}, {}, file).config.connections_max == 33);
  auto all = load({"--max-connections", "33"}, {{"WSED_MAX_CONNECTIONS", "22"}}, file);
  CHECK(all.config.connections_max == 33);
  CHECK(all.config.idle_timeout_ms == 90000);
  // An empty variable is unset.
  CHECK(load({}, {{"WSED_MAX_CONNECTIONS", ""}}, file).config.connections_max == 11);
}

TEST_CASE("config: --print-config names each value's source") {
  auto r = load({"--print-config", "--port", "1"}, {{"WSED_HOST", "127.0.0.2"}},
                "max-connections = 5\n");
  REQUIRE(r.what == flags_result::action::exit_ok);
  CHECK(source_of(r.output, "port") == "flag");
  CHECK(source_of(r.output, "host") == "env WSED_HOST");
  CHECK(source_of(r.output, "max-connections") == "file");
  CHECK(source_of(r.output, "idle-timeout") == "default");
  CHECK(r.output.find("idle-timeout = \"1m\"") != std::string::npos);
}

TEST_CASE("config: every problem is one line, all of them collected") {
  auto r = load({"--mode", "echo", "--recovery"}, {{"WSED_PORT", "x"}, {"WSED_E2E", "maybe"}},
                "nope = 1\nmax-fragments = 0\nidle-timeout = \"1y\"\n");
  CHECK(r.what == flags_result::action::exit_usage);
  REQUIRE(r.problems.size() == 6);
  for (const auto& p : r.problems) CHECK(p.find('\n') == std::string::npos);
  CHECK(r.problems[0].find("environment WSED_PORT") != std::string::npos);
  CHECK(r.problems[1].find("environment WSED_E2E") != std::string::npos);
  CHECK(r.problems[2].find("unknown key 'nope'") != std::string::npos);
  CHECK(r.problems[3].find("max-fragments") != std::string::npos);
  CHECK(r.problems[4].find("idle-timeout") != std::string::npos);
  CHECK(r.problems[5] == "--recovery needs --mode wse");
}

TEST_CASE("config: the environment names are unique and none is a secret's") {
  auto r = load({"--help"});
  REQUIRE(r.what == flags_result::action::exit_ok);
  std::map<std::string, int> names;
  for (size_t at = r.output.find("(Env:"); at != std::string::npos;
       at = r.output.find("(Env:", at + 1))
    ++names[r.output.substr(at + 5, r.output.find(')', at) - at - 5)];
  CHECK(names.size() > 60);
  for (const auto& [name, count] : names) {
    CHECK_MESSAGE(count == 1, name);
    CHECK(name.rfind("WSED_", 0) == 0);
  }
  CHECK(names.count("WSED_JWT_SECRET") == 0);
  CHECK(names.count("WSED_JWT_PREVIOUS_SECRET") == 0);
  CHECK(names.count("WSED_JWT_SECRET_ENV") == 1);
  CHECK(names.count("WSED_PRINT_CONFIG") == 0);
}
