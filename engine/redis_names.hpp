// engine/redis_names.hpp: the pure parts of the Redis bridge: the --redis-url / --redis-cluster
// syntax, how topics, globs, broadcasts, users and instances map to Redis channel names
// (README "Scaling out through Redis"), RESP command formatting, Redis's own glob matcher (to
// count how many of our subscriptions one publication arrives through), the cluster key slot,
// and the echo filter that keeps an instance from delivering its own publications twice.
//
// Owns: nothing global. Thread: any (echo_filter: its owner, the bridge thread). No I/O, no
// clock; parse_redis_endpoint resolves a host name with getaddrinfo (startup only).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <deque>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace wsed::engine::redis {

// Where one Redis server listens, with the credentials to use there.
struct endpoint {
  bool unix_socket = false;
  std::string host;  // as written (TCP)
  uint16_t port = 6379;
  std::string path;  // unix_socket
  std::string user;  // AUTH user pass (Redis 6 ACL); empty: AUTH pass
  std::string password;
  uint32_t db = 0;  // SELECT (not with a cluster)
  sockaddr_storage address{};
  socklen_t address_bytes = 0;
  std::string text() const;  // host:port or the socket path, for messages (no password)
};

// redis://[user:pass@]host:port[/db], rediss:// refused (no TLS here), unix:///path[?db=N].
// Percent-escapes in user and password are decoded. The host is resolved once (numeric
// service); false with *why set when the URL is not one of those or does not resolve.
bool parse_endpoint(std::string_view url, endpoint& out, std::string& why);
// Resolves e.host:e.port into e.address (numeric service).
bool resolve(endpoint& e, std::string& why);
// host:port,host:port,... (each may also be a redis:// URL with credentials).
bool parse_cluster(std::string_view list, std::vector<endpoint>& out, std::string& why);
// A --redis-url or a --redis-cluster list as given, but never a password: in each
// comma-separated item, user:***@ (a lone user-info part, which parse_endpoint takes as the
// password: ***@), up to the item's last '@'. For --print-config and error lines.
std::string mask_credentials(std::string_view list);

// What a channel (with the prefix already removed) carries.
enum class channel_kind : uint8_t { topic, broadcast, user, command, unknown };

// Topic `chat` -> `<prefix>chat`; a topic beginning with `@` is written `<prefix>@@...`, so the
// `@` names below never collide with a topic.
void append_topic_channel(std::string& out, std::string_view prefix, std::string_view topic);
inline constexpr std::string_view broadcast_name = "@broadcast";
inline constexpr std::string_view user_name = "@user:";  // + user id
inline constexpr std::string_view node_name = "@node:";  // + instance id
// The channel of a kind and its key (a topic, a user id, an instance id; none for a
// broadcast): the inverse of parse_channel.
void append_channel(std::string& out, std::string_view prefix, channel_kind kind,
                    std::string_view key);
// A glob (`*`, `?` as auth::glob_match) -> the PSUBSCRIBE pattern: the prefix and the literal
// bytes escaped for Redis's matcher (`[`, `]`, `\`, and `*`/`?` in the prefix).
std::string pattern_for_glob(std::string_view prefix, std::string_view glob);
// Parses a channel name received from Redis; key is the topic (unescaped), user id or instance.
channel_kind parse_channel(std::string_view channel, std::string_view prefix, std::string& key);

// Redis's stringmatchlen (`*`, `?`, `[...]` with `^` and ranges, `\` escapes), case-sensitive.
bool glob_match(std::string_view pattern, std::string_view text);

// The cluster key slot of a channel (CRC16-XMODEM mod 16384, with the {hash tag} rule).
uint16_t key_slot(std::string_view key);

// Recovery (--recovery with Redis): the keys of one topic's sequence, a hash (e: the epoch as 8
// hex digits, n: the next offset), and of its history, a list of the stamped payloads (the last
// --recovery-buffer), both in the cluster slot of the topic's channel so one script may touch
// them and publish on it: "<prefix>{<tag>}r:<channel>" + "m" / "l", where <tag> is a short
// string of that slot (so a channel holding braces of its own is placed right too).
void recovery_keys(std::string_view prefix, std::string_view channel, std::string& meta,
                   std::string& log);
// The scripts (EVALSHA after SCRIPT LOAD on every publisher connection).
// sequence: KEYS meta, log; ARGV channel, topic as a JSON string, the publication after its
// opening brace prefixed with "," (or "}" for {}), the epoch for a new history, buffer, TTL ms,
// PUBLISH | SPUBLISH. Takes the next offset (a new epoch when the history is gone), keeps the
// stamped payload, publishes it, returns the offset.
// history: KEYS meta, log; ARGV epoch, offset (the last the client has), most to replay. Returns
// [] (no history), [epoch, next, 0] (not recoverable from there) or [epoch, next, 1,
// payload...] (every later payload, in order: recovered).
extern const std::string_view sequence_script;
extern const std::string_view history_script;

// Queue groups across instances: one topic's members, a sorted set of "<instance>\t<connection
// id>\t<group>" scored by join order (so the rotation order is the same for every instance),
// the instances holding members, a sorted set scored by the deadline (ms) their holder renews,
// and the join-order counter: "<prefix>{<tag>}q:<channel>" + "m" / "i" / "n", in the channel's
// slot.
void queue_group_keys(std::string_view prefix, std::string_view channel, std::string& members,
                      std::string& instances, std::string& order);
// The marker a queue_group_script publishes on the topic's channel: this prefix, then the
// members one per line in rotation order. Every instance receives a channel's messages in one
// order, so from a marker on they count the topic's publications alike and agree on which
// member each one goes to.
inline constexpr std::string_view queue_group_marker = "wsed:queue_groups\n";
// KEYS members, instances, order; ARGV instance, keep ms (the deadline after Redis's TIME),
// channel, PUBLISH | SPUBLISH, "1" to publish the marker even when nothing changed, then this
// instance's members ("<connection id>\t<group>", in join order). Drops the members of
// instances whose deadline passed, makes this instance's members exactly the given ones,
// renews its deadline (or removes it when it has none), sets every key to expire after 4 x
// keep; publishes the marker when anything changed (or asked). Returns 1 when it changed
// anything.
extern const std::string_view queue_group_script;

// Presence across instances: one topic's members, a hash user -> data (the latest), a hash
// user -> connections in the cluster, a hash "<instance>\t<user>" -> that instance's
// connections, and the instances holding members (sorted by the deadline their holder renews):
// "<prefix>{<tag>}p:<channel>" + "d" / "t" / "c" / "i", in the channel's slot.
void presence_keys(std::string_view prefix, std::string_view channel, std::string& data,
                   std::string& totals, std::string& counts, std::string& instances);
// KEYS data, totals, counts, instances; ARGV instance, keep ms, channel, PUBLISH | SPUBLISH, the
// topic as a JSON string, "1" when this instance still holds members there, "1" when the
// triplets are all of this instance's users there with their data (a whole rewrite), then triplets
// (user, this instance's connections of that user now, its data, or "" when this instance sent
// that data already: a count change alone says nothing of the data). Drops the members of
// instances whose deadline passed, sets each triplet's count, and publishes presence_join (a
// user's first connection in the cluster), presence_update (other data), presence_leave (its
// last) on the channel, exactly as wsed builds them; renews the deadline. Returns 1, or 2 (and
// applies nothing) when this instance holds members there but was not known (its members had
// lapsed) and the write is not a whole rewrite: it then writes them all again.
extern const std::string_view presence_script;
// KEYS data, totals: [[user, data, ...], [user, connections, ...]].
extern const std::string_view presence_query_script;

// Appends one RESP command (an array of bulk strings), or its pieces: the array header for n
// strings, then each bulk string.
void append_command(std::string& out, std::initializer_list<std::string_view> args);
void append_command(std::string& out, const std::vector<std::string_view>& args);
void append_array_header(std::string& out, size_t n);
void append_bulk(std::string& out, std::string_view arg);

// The 64-bit fingerprint of one publication (channel and payload) the echo filter compares.
uint64_t fingerprint(std::string_view channel, std::string_view payload);

// An instance publishes on one connection (P) and receives on another (S). Its own publications
// come back on S when S is subscribed to their channel at the moment Redis runs the PUBLISH; it
// has delivered them locally already. Every PUBLISH written is recorded with a sequence number;
// an arriving message whose fingerprint is recorded is our own and consumed. A fence (a PING on
// S written after P's reply to publication n arrived) proves every echo of publications <= n has
// been received when its pong arrives: Redis ran those PUBLISHes before it read the PING, and
// queued their messages to S before the pong. Records up to n are then expired. Records of one
// fingerprint (the same payload on the same channel, published again and again) come back in
// the order they were written, so an echo is credited to the oldest live record of its
// fingerprint: expiring a record that was credited pays the credit back, expiring one that was
// not takes it off the live count. Identical payloads from another publisher in the same window
// are counted right: one of the two is consumed, the other delivered, and the local delivery
// makes up the pair.
class echo_filter {
 public:
  void record(uint64_t fp, uint64_t seq);
  bool consume(uint64_t fp);          // true: our own echo (counted once)
  void expire_through(uint64_t seq);  // a fence covering publications <= seq completed
  void clear();
  size_t pending() const { return order_.size(); }
  bool empty() const { return used_ == 0; }

 private:
  struct rec {
    uint64_t fp, seq;
  };
  struct slot {
    uint64_t fp = 0;      // 0: empty (a fingerprint of 0 is stored as 1)
    uint32_t live = 0;    // records not echoed yet (as far as the credits tell)
    uint32_t credit = 0;  // echoes consumed, owed by the oldest unexpired records
  };
  // Open addressing, linear probing, erase by backward shift: no allocation per publication.
  slot* find(uint64_t fp);
  void add(uint64_t fp);
  void erase(slot* s);  // empties the slot (backward shift)
  std::deque<rec> order_;
  std::vector<slot> slots_ = std::vector<slot>(1024);
  size_t used_ = 0;  // slots holding a fingerprint
};

}  // namespace wsed::engine::redis
