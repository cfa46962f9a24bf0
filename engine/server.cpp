// engine/server.cpp: see server.hpp. Runs on the embedding program's thread, except the
// lambdas handed to std::thread, which become the shards' loops.
#include "engine/server.hpp"

#include <netdb.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>

#include <cstdio>
#include <exception>
#include <future>
#include <stdexcept>

namespace wsed::engine {

namespace {
tls_files tls_files_of(const server_config& c) {
  return tls_files{c.tls_cert_file, c.tls_key_file, c.tls_ca_file};
}
}  // namespace

server::server(server_config config, app_handler& app) : config_(std::move(config)), app_(app) {
  if (config_.workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    config_.workers = n > 0 ? uint32_t(n) : 1;
  }
  shared_.config = &config_;
  if (config_.connections_per_ip_max) {
    per_ip_ = std::make_unique<per_ip_table>(config_.connections_per_ip_max);
    shared_.per_ip = per_ip_.get();
  }
  if (!config_.tls_cert_file.empty()) {
    tls_ = std::make_unique<tls_store>();
    auto ctx = tls_context::load(tls_files_of(config_), &tls_error_);
    tls_->current.store(ctx);
    tls_->kernel_tls = kernel_tls_available();
    if (ctx) shared_.tls = tls_.get();
  }
  hub_ = std::make_unique<hub>(config_.workers, config_.inbox_capacity);
  shared_.fanout = hub_.get();
  app_.attach(*hub_);
}

server::~server() {
  stop();
  join();
}

namespace {

// The shards bind with SO_REUSEPORT, which would let a second server share a port another one
// listens on: a bind without it first tells (EADDRINUSE) before any shard binds.
void check_port_free(const std::string& host, uint16_t port) {
  if (port == 0) return;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port_str = std::to_string(port);
  if (getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res) != 0) return;  // setup says why
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int e = 0;
  if (fd >= 0) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) e = errno;
    ::close(fd);
  }
  freeaddrinfo(res);
  if (e == EADDRINUSE)
    throw std::runtime_error("cannot listen on " + host + ":" + port_str +
                             ": address already in use (another process listens there)");
}

}  // namespace

void server::start() {
  if (!tls_error_.empty()) throw std::runtime_error(tls_error_);
  check_port_free(config_.host, config_.port);
  if (!config_.admin_listen.empty()) check_port_free(config_.admin_host, config_.admin_port);
  // Direct descriptor tables are capped by RLIMIT_NOFILE: take all we may.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  for (uint32_t i = 0; i < config_.workers; ++i) {
    shards_.push_back(std::make_unique<shard>(i, shared_, app_));
    shared_.metrics.push_back(&shards_.back()->metrics());
    done_.push_back(std::make_unique<std::atomic<bool>>(false));
  }
  uint16_t port = config_.port;
  uint16_t admin_port = config_.admin_port;
  for (uint32_t i = 0; i < config_.workers; ++i) {
    std::promise<void> ready;
    std::future<void> ready_future = ready.get_future();
    shard* s = shards_[i].get();
    std::atomic<bool>* done = done_[i].get();
    threads_.emplace_back([s, done, port, admin_port, i, cpus, &ready] {
      if (cpus > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(int(i % uint32_t(cpus)), &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
      }
      try {
        s->setup(port, admin_port);  // on this thread: the ring's single issuer
      } catch (...) {
        ready.set_exception(std::current_exception());
        done->store(true);
        return;
      }
      ready.set_value();
      s->run();
      done->store(true);
    });
    try {
      ready_future.get();
    } catch (...) {
      stop();
      join();
      throw;
    }
    if (i == 0) {
      port = shards_[0]->bound_port();  // --port 0: every shard joins the port shard 0 got
      port_ = port;
      admin_port = shards_[0]->admin_port();
      admin_port_ = admin_port;
      notes_ = shards_[0]->setup_notes();
    }
  }
  uint64_t capacity = 0;
  for (auto& sh : shards_) capacity += sh->descriptor_capacity();
  if (capacity < config_.connections_max)
    notes_ += "--max-connections " + std::to_string(config_.connections_max) + " exceeds " +
              std::to_string(config_.workers) + " workers x " +
              std::to_string(shards_[0]->descriptor_capacity()) +
              " direct descriptors (RLIMIT_NOFILE): beyond ~" + std::to_string(capacity) +
              " connections new ones get 503 (limit=\"file_table\"); raise --workers or "
              "RLIMIT_NOFILE. ";
}

uint64_t server::outbound_queued_bytes() const {
  uint64_t n = 0;
  for (const shard_metrics* m : shared_.metrics) n += m->queued_bytes.get();
  return n;
}

uint64_t server::inbox_backlog() const {
  uint64_t pushed = 0, drained = 0;
  for (uint32_t i = 0; i < hub_->shards(); ++i) pushed += hub_->inbox(i).pushed_count();
  for (const shard_metrics* m : shared_.metrics) drained += m->inbox_drained.get();
  return pushed > drained ? pushed - drained : 0;
}

void server::stop(uint16_t code, std::string_view reason, uint32_t timeout_ms) {
  for (auto& s : shards_) s->request_stop(code, reason, timeout_ms);
}

bool server::reload_tls(std::string* why) {
  if (!tls_ || !shared_.tls) {
    *why = "no --tls-cert-file";
    return false;
  }
  auto ctx = tls_context::load(tls_files_of(config_), why);
  if (!ctx) {
    tls_->reloads_failed.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  tls_->current.store(std::move(ctx), std::memory_order_release);
  tls_->reloads_ok.fetch_add(1, std::memory_order_relaxed);
  return true;
}

std::shared_ptr<const tls_context> server::tls_context_now() const {
  return shared_.tls ? tls_->current.load(std::memory_order_acquire) : nullptr;
}

std::string server::metrics_text() const {
  return render_metrics_text(shared_, app_);
}

bool server::finished() const {
  for (auto& d : done_)
    if (!d->load()) return false;
  return true;
}

void server::join() {
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

}  // namespace wsed::engine
