// engine/notify.cpp: sd_notify for Type=notify (engine/notify.hpp).
#include "engine/notify.hpp"

#include <time.h>

#include <cstring>
#include <string>

#include "engine/log.hpp"
#include "engine/redis_bridge.hpp"

#ifdef WSED_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace wsed::engine {

namespace {

uint64_t monotonic_us() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return uint64_t(t.tv_sec) * 1000000u + uint64_t(t.tv_nsec) / 1000u;
}

// One datagram to $NOTIFY_SOCKET (nothing without it). A failure is not fatal: the service
// manager will time the start out and say so.
void send_state(const std::string& state) {
#ifdef WSED_HAVE_SYSTEMD
  int r = sd_notify(0, state.c_str());
  if (r < 0)
    log::warn("sd_notify_failed",
              std::string("sd_notify to $NOTIFY_SOCKET failed: ") + strerror(-r), {{"errno", -r}});
#else
  (void)state;
#endif
}

constexpr long poll_waiting_ns = 10 * 1000000L;  // while READY is due: a 10 ms step
constexpr long poll_idle_ns = 200 * 1000000L;    // the signal loop's usual step

}  // namespace

service_notifier::service_notifier(const redis_bridge* bridge, uint32_t redis_wait_ms,
                                   std::string where)
    : bridge_(bridge),
      deadline_ms_(monotonic_us() / 1000 + redis_wait_ms),
      where_(std::move(where)) {}

std::string service_notifier::status_line(bool redis_up) const {
  std::string s = "STATUS=listening on " + where_;
  if (bridge_) s += redis_up ? "; redis connected" : "; redis not connected (retrying)";
  return s;
}

// Before READY: the bridge's ready() (both connections up, every wanted subscription in place:
// /readyz). After: connected() alone, so that a subscription being confirmed is no STATUS change.
timespec service_notifier::tick() {
  if (!ready_sent_) {
    bool redis_ready = bridge_ && bridge_->ready();
    if (bridge_ && !redis_ready && monotonic_us() / 1000 < deadline_ms_)
      return timespec{0, poll_waiting_ns};
    ready_sent_ = true;
    redis_up_ = redis_ready;
    send_state("READY=1\n" + status_line(redis_ready));
  } else if (bridge_ && bridge_->connected() != redis_up_) {
    redis_up_ = !redis_up_;
    send_state(status_line(redis_up_));
  }
  return timespec{0, poll_idle_ns};
}

void service_notifier::reloading() {
  if (!ready_sent_) return;  // not READY yet: nothing to take back
  send_state("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_us()) +
             "\nSTATUS=reloading keys and certificates (SIGHUP)");
}

void service_notifier::reloaded() {
  if (ready_sent_) send_state("READY=1\n" + status_line(redis_up_));
}

void service_notifier::stopping() {
  send_state("STOPPING=1\nSTATUS=shutting down");
}

}  // namespace wsed::engine
