// engine/notify.hpp: the service manager's readiness protocol (sd_notify, systemd's Type=notify;
// README "Install as a package / run as a service", ARCHITECTURE "Startup ordering").
//
// READY=1 goes out once the listeners are bound (server::start returned) and, when Redis is
// configured, once the bridge is ready (the same condition as /readyz) or --redis-timeout has
// passed since the listeners were bound, whichever comes first: a Redis that is down at start
// delays READY by at most that bound, after which wsed serves its local clients (publications
// held, /readyz 503) and STATUS= says so; STATUS= then follows the bridge's connections going
// down and up (connected(), not ready(): a subscription being confirmed changes nothing).
// STOPPING=1 on SIGINT/SIGTERM; RELOADING=1 ... READY=1 around a SIGHUP reload.
//
// Owns nothing but its own state. Thread: main thread only (the binary's signal loop). Every
// call is a no-op without $NOTIFY_SOCKET, and when wsed was built without libsystemd (meson
// -Dsystemd=disabled or libsystemd-dev missing).
#pragma once

#include <time.h>

#include <cstdint>
#include <string>

namespace wsed::engine {

class redis_bridge;

class service_notifier {
 public:
  // bridge: null without Redis. redis_wait_ms: the longest READY waits for it. where: the
  // listening address for STATUS= ("ws://127.0.0.1:8080/").
  service_notifier(const redis_bridge* bridge, uint32_t redis_wait_ms, std::string where);
  // From the signal loop: sends READY=1 when due, and STATUS= when Redis's state changed. Returns
  // how long the loop may sleep before the next call (short while READY is still due).
  timespec tick();
  void reloading();
  void reloaded();
  void stopping();

 private:
  std::string status_line(bool redis_up) const;
  const redis_bridge* bridge_;
  uint64_t deadline_ms_;
  std::string where_;
  bool ready_sent_ = false;
  bool redis_up_ = false;  // after READY: the bridge's connected() last seen
};

}  // namespace wsed::engine
