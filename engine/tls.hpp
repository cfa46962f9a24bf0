// engine/tls.hpp: TLS for the shard's sockets with OpenSSL 3 over memory BIOs (two small BIOs
// of our own: ciphertext read in place from the receive buffer, ciphertext out appended to one
// growable buffer; a BIO_s_mem would copy in, memmove after every record and zero-fill), so every
// byte still goes through the shard's io_uring (the recv CQE's ciphertext is fed in, the ciphertext
// OpenSSL produces is sent by the shard's own SEND).
//
// Owns: tls_context an SSL_CTX (certificate chain, key, optional client CA, ALPN http/1.1,
// TLS 1.2+); tls_conn one connection's SSL and its two BIOs. Thread: a tls_context is
// immutable once built and shared (shared_ptr; SIGHUP builds a new one, open connections keep
// the one they started with, SSL_new holding a reference); a tls_conn belongs to its shard.
// No I/O here beyond reading the PEM files at load time.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct bio_st BIO;

namespace wsed::engine {

struct tls_files {
  std::string cert_file;  // PEM: the certificate, then its chain
  std::string key_file;   // PEM private key (unencrypted)
  std::string ca_file;    // PEM CA bundle: client certificates required and checked; empty: none
};

class tls_context {
 public:
  // Reads and checks the files (the key matches the certificate). nullptr with *why on failure.
  static std::shared_ptr<const tls_context> load(const tls_files& files, std::string* why);
  // A client context (load generators, tests): TLS 1.2+, ALPN http/1.1; with ca_file the server's
  // certificate is verified against it, without it not at all (a benchmark of a self-signed
  // server). nullptr with *why on failure.
  static std::shared_ptr<const tls_context> client(const std::string& ca_file, std::string* why);
  ~tls_context();
  tls_context(const tls_context&) = delete;
  tls_context& operator=(const tls_context&) = delete;
  SSL_CTX* native() const { return ctx_; }
  const std::string& subject() const { return subject_; }  // the leaf's subject, for the log
  int64_t not_after() const { return not_after_; }         // the leaf's expiry (Unix seconds)
  bool client_certificates() const { return client_certs_; }

 private:
  tls_context() = default;
  SSL_CTX* ctx_ = nullptr;
  std::string subject_;
  int64_t not_after_ = 0;
  bool client_certs_ = false;
  bool client_ = false;
  friend class tls_conn;
};

// The server's current context: shards load it once per accepted connection; SIGHUP stores a
// new one (a failed reload keeps the old). Counters for /metrics.
struct tls_store {
  std::atomic<std::shared_ptr<const tls_context>> current;
  std::atomic<uint64_t> reloads_ok{0};
  std::atomic<uint64_t> reloads_failed{0};
  bool kernel_tls = false;  // the kernel offers the tls ULP (reported; see README)
};

// Whether this kernel offers the "tls" TCP upper-layer protocol (kTLS): read from
// /proc/sys/net/ipv4/tcp_available_ulp (the module may also load on demand; not counted).
bool kernel_tls_available();

// Ciphertext handed out by tls_conn::take_buffer: owned by the caller until it gives it back
// with tls_conn::recycle (a thread keeps a few standard-size ones for the next sends).
struct tls_buffer {
  std::unique_ptr<uint8_t[]> data;
  size_t size = 0;
  size_t cap = 0;
};

// What one read of plaintext found.
enum class tls_read : uint8_t {
  data,        // n plaintext bytes
  want_more,   // nothing more until more ciphertext arrives (or the handshake continues)
  closed,      // the peer sent close_notify
  plain_http,  // the first bytes were a plain HTTP request (a client of http:// on the TLS port)
  failed,      // a handshake or record error (an alert for the peer may be in the output)
};

class tls_conn {
 public:
  // The context's side (server, or client for a client context); throws std::bad_alloc.
  explicit tls_conn(const tls_context& ctx);
  ~tls_conn();
  tls_conn(const tls_conn&) = delete;
  tls_conn& operator=(const tls_conn&) = delete;

  // Ciphertext received from the socket, read in place (not copied) by the reads that follow;
  // end_feed() must come before those bytes go away (it keeps what the reads left, rarely any).
  void feed(const uint8_t* data, size_t n);
  void end_feed();
  // Advances the handshake and reads up to cap bytes of plaintext into out; *n: bytes read.
  tls_read read(uint8_t* out, size_t cap, size_t* n);
  // Encrypts plaintext (only once handshake_done()); the output takes everything.
  bool write(const uint8_t* data, size_t n);
  // Drops ciphertext not sent yet (before a plain-text answer to a plain HTTP client).
  void discard_output();
  // Queues close_notify (once; after the handshake only).
  void shutdown();
  // Ciphertext waiting to go to the socket, and taking it out.
  size_t pending_output() const;
  size_t take_output(uint8_t* out, size_t cap);
  // All the ciphertext so far, without a copy: the buffer it was written into.
  tls_buffer take_buffer();
  // Gives a taken buffer back to this thread's spares (or frees it).
  static void recycle(tls_buffer&& b);

  bool handshake_done() const { return handshake_done_; }
  bool shutdown_sent() const { return shutdown_sent_; }
  const char* version() const;  // "TLSv1.3", ...
  std::string error_text() const { return error_; }

 private:
  SSL* ssl_ = nullptr;
  // network -> SSL: the bytes of the current feed (borrowed), or what an earlier feed left.
  struct input {
    const uint8_t* borrowed = nullptr;
    size_t borrowed_left = 0;
    std::vector<uint8_t> kept;
    size_t kept_off = 0;
    size_t left() const { return borrowed_left + kept.size() - kept_off; }
    size_t take(uint8_t* out, size_t cap);
  };
  // SSL -> network: ciphertext, appended without zero-filling (unlike a BIO_s_mem).
  struct output : tls_buffer {
    void append(const uint8_t* bytes, size_t n);
  };
  static BIO* make_bio(bool in, void* state);
  static int bio_read(BIO* b, char* out, int len);
  static int bio_write(BIO* b, const char* in, int len);
  static long bio_ctrl(BIO* b, int cmd, long num, void* ptr);      // the input BIO's
  static long bio_out_ctrl(BIO* b, int cmd, long num, void* ptr);  // the output BIO's
  input in_;
  output out_;
  bool handshake_done_ = false;
  bool shutdown_sent_ = false;
  std::string error_;
};

}  // namespace wsed::engine
