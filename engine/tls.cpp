// engine/tls.cpp: see tls.hpp.
#include "engine/tls.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <ctime>
#include <fstream>
#include <new>

namespace wsed::engine {

namespace {

std::string openssl_error(const std::string& what) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return what;
  char text[256];
  ERR_error_string_n(e, text, sizeof text);
  return what + ": " + text;
}

// Never prompt for a passphrase on a terminal: an encrypted key is refused.
int no_passphrase(char*, int, int, void*) {
  return 0;
}

// ALPN: http/1.1 when the client offers it; otherwise no ALPN at all (a client offering only
// h2 then speaks whatever it speaks, and an HTTP/2 preface gets a 400).
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  static const unsigned char ours[] = "\x08http/1.1";
  unsigned char* chosen = nullptr;
  if (SSL_select_next_proto(&chosen, outlen, ours, sizeof ours - 1, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

bool file_readable(const std::string& path, std::string* why, const char* flag) {
  std::ifstream f(path);
  if (!f) {
    *why = std::string(flag) + " " + path + ": cannot be read";
    return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<const tls_context> tls_context::load(const tls_files& files, std::string* why) {
  ERR_clear_error();
  if (!file_readable(files.cert_file, why, "--tls-cert-file") ||
      !file_readable(files.key_file, why, "--tls-key-file") ||
      (!files.ca_file.empty() && !file_readable(files.ca_file, why, "--tls-ca-file")))
    return nullptr;
  std::shared_ptr<tls_context> t(new tls_context());
  t->ctx_ = SSL_CTX_new(TLS_server_method());
  if (!t->ctx_) {
    *why = openssl_error("SSL_CTX_new");
    return nullptr;
  }
  SSL_CTX* ctx = t->ctx_;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  // Idle connections give their record buffers back (the idle-memory budget).
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert_file.c_str()) != 1) {
    *why = openssl_error("--tls-cert-file " + files.cert_file);
    return nullptr;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    *why = openssl_error("--tls-key-file " + files.key_file);
    return nullptr;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    *why = openssl_error("--tls-key-file " + files.key_file + " does not match the certificate");
    return nullptr;
  }
  static const unsigned char session_context[] = "wsed";
  SSL_CTX_set_session_id_context(ctx, session_context, sizeof session_context - 1);
  if (!files.ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, files.ca_file.c_str(), nullptr) != 1) {
      *why = openssl_error("--tls-ca-file " + files.ca_file);
      return nullptr;
    }
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.ca_file.c_str());
    if (names) SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    t->client_certs_ = true;
  }
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, nullptr);
  if (X509* leaf = SSL_CTX_get0_certificate(ctx)) {
    char subject[256];
    X509_NAME_oneline(X509_get_subject_name(leaf), subject, sizeof subject);
    t->subject_ = subject;
    tm when{};
    if (ASN1_TIME_to_tm(X509_get0_notAfter(leaf), &when) == 1) t->not_after_ = timegm(&when);
  }
  ERR_clear_error();
  return t;
}

std::shared_ptr<const tls_context> tls_context::client(const std::string& ca_file,
                                                       std::string* why) {
  ERR_clear_error();
  std::shared_ptr<tls_context> t(new tls_context());
  t->client_ = true;
  t->ctx_ = SSL_CTX_new(TLS_client_method());
  if (!t->ctx_) {
    *why = openssl_error("SSL_CTX_new");
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(t->ctx_, TLS1_2_VERSION);
  SSL_CTX_set_mode(t->ctx_, SSL_MODE_RELEASE_BUFFERS);
  static const unsigned char alpn[] = "\x08http/1.1";
  SSL_CTX_set_alpn_protos(t->ctx_, alpn, sizeof alpn - 1);
  if (!ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(t->ctx_, ca_file.c_str(), nullptr) != 1) {
      *why = openssl_error("CA file " + ca_file);
      return nullptr;
    }
    SSL_CTX_set_verify(t->ctx_, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(t->ctx_, SSL_VERIFY_NONE, nullptr);
  }
  return t;
}

tls_context::~tls_context() {
  SSL_CTX_free(ctx_);
}

bool kernel_tls_available() {
  std::ifstream f("/proc/sys/net/ipv4/tcp_available_ulp");
  std::string word;
  while (f >> word)
    if (word == "tls") return true;
  return false;
}

// Our two BIO kinds: "wsed-tls-in" reads the input struct, "wsed-tls-out" appends to the output
// struct (BIO_get_data). Made once per process.
BIO* tls_conn::make_bio(bool in, void* state) {
  static BIO_METHOD* const in_method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "wsed-tls-in");
    if (m) {
      BIO_meth_set_read(m, bio_read);
      BIO_meth_set_ctrl(m, bio_ctrl);
    }
    return m;
  }();
  static BIO_METHOD* const out_method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "wsed-tls-out");
    if (m) {
      BIO_meth_set_write(m, bio_write);
      BIO_meth_set_ctrl(m, bio_out_ctrl);
    }
    return m;
  }();
  BIO_METHOD* m = in ? in_method : out_method;
  BIO* b = m ? BIO_new(m) : nullptr;
  if (!b) return nullptr;
  BIO_set_data(b, state);
  BIO_set_init(b, 1);
  return b;
}

size_t tls_conn::input::take(uint8_t* out, size_t cap) {
  size_t got = 0;
  if (kept_off < kept.size()) {
    got = std::min(cap, kept.size() - kept_off);
    std::memcpy(out, kept.data() + kept_off, got);
    kept_off += got;
    if (kept_off == kept.size()) {
      kept.clear();
      kept_off = 0;
    }
  }
  if (got < cap && borrowed_left) {
    size_t n = std::min(cap - got, borrowed_left);
    std::memcpy(out + got, borrowed, n);
    borrowed += n;
    borrowed_left -= n;
    got += n;
  }
  return got;
}

namespace {
// A thread's spare ciphertext buffers: a send's worth of records (64 KiB of plain text, the
// shard's per-send budget, plus record overhead), so a busy connection does not allocate per
// send and an idle one holds none.
constexpr size_t spare_bytes = (64 << 10) + 4096;
constexpr size_t spares_max = 16;  // at most ~1.1 MiB per thread
thread_local std::vector<std::unique_ptr<uint8_t[]>> spares;
}  // namespace

void tls_conn::recycle(tls_buffer&& b) {
  if (b.data && b.cap == spare_bytes && spares.size() < spares_max)
    spares.push_back(std::move(b.data));
  b = tls_buffer{};
}

tls_buffer tls_conn::take_buffer() {
  tls_buffer b = std::move(static_cast<tls_buffer&>(out_));
  static_cast<tls_buffer&>(out_) = tls_buffer{};
  return b;
}

void tls_conn::output::append(const uint8_t* bytes, size_t n) {
  if (size + n > cap) {
    tls_buffer grown;
    if (size + n <= spare_bytes) {
      grown.cap = spare_bytes;
      if (!spares.empty()) {
        grown.data = std::move(spares.back());
        spares.pop_back();
      } else {
        grown.data.reset(new uint8_t[spare_bytes]);  // not zero-filled
      }
    } else {
      grown.cap = std::max(size + n, cap * 2);
      grown.data.reset(new uint8_t[grown.cap]);
    }
    if (size) std::memcpy(grown.data.get(), data.get(), size);
    grown.size = size;
    recycle(std::move(static_cast<tls_buffer&>(*this)));
    static_cast<tls_buffer&>(*this) = std::move(grown);
  }
  std::memcpy(data.get() + size, bytes, n);
  size += n;
}

int tls_conn::bio_read(BIO* b, char* out, int len) {
  auto* in = static_cast<input*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  size_t got = len > 0 ? in->take(reinterpret_cast<uint8_t*>(out), size_t(len)) : 0;
  if (got == 0) {
    BIO_set_retry_read(b);  // nothing yet: "retry", not EOF
    return -1;
  }
  return int(got);
}

int tls_conn::bio_write(BIO* b, const char* bytes, int len) {
  BIO_clear_retry_flags(b);
  if (len <= 0) return 0;
  static_cast<output*>(BIO_get_data(b))
      ->append(reinterpret_cast<const uint8_t*>(bytes), size_t(len));
  return len;
}

long tls_conn::bio_ctrl(BIO* b, int cmd, long, void*) {
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_PENDING: {
      void* state = BIO_get_data(b);
      return state ? long(static_cast<input*>(state)->left()) : 0;
    }
    default:
      return 0;
  }
}

long tls_conn::bio_out_ctrl(BIO* b, int cmd, long, void*) {
  switch (cmd) {
    case BIO_CTRL_FLUSH:  // statem_flush fails on <= 0
      return 1;
    case BIO_CTRL_PENDING: {  // as a BIO_s_mem answers (WPENDING: 0, as it does)
      void* state = BIO_get_data(b);
      return state ? long(static_cast<output*>(state)->size) : 0;
    }
    default:
      return 0;
  }
}

tls_conn::tls_conn(const tls_context& ctx) {
  ssl_ = SSL_new(ctx.native());
  BIO* rbio = ssl_ ? make_bio(true, &in_) : nullptr;
  BIO* wbio = rbio ? make_bio(false, &out_) : nullptr;
  if (!ssl_ || !rbio || !wbio) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(ssl_);
    ERR_clear_error();
    throw std::bad_alloc();
  }
  SSL_set_bio(ssl_, rbio, wbio);  // ssl_ owns both now
  if (ctx.client_)
    SSL_set_connect_state(ssl_);
  else
    SSL_set_accept_state(ssl_);
}

tls_conn::~tls_conn() {
  SSL_free(ssl_);
  recycle(take_buffer());
}

void tls_conn::feed(const uint8_t* data, size_t n) {
  if (in_.left() == 0) {
    in_.borrowed = data;
    in_.borrowed_left = n;
  } else {
    end_feed();  // bytes still waiting: these go after them
    in_.kept.insert(in_.kept.end(), data, data + n);
  }
}

void tls_conn::end_feed() {
  if (in_.borrowed_left)
    in_.kept.insert(in_.kept.end(), in_.borrowed, in_.borrowed + in_.borrowed_left);
  in_.borrowed = nullptr;
  in_.borrowed_left = 0;
}

tls_read tls_conn::read(uint8_t* out, size_t cap, size_t* n) {
  *n = 0;
  ERR_clear_error();
  if (!handshake_done_) {
    int r = SSL_do_handshake(ssl_);
    if (r != 1) {
      int err = SSL_get_error(ssl_, r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return tls_read::want_more;
      unsigned long e = ERR_peek_error();
      if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST) {
        ERR_clear_error();
        return tls_read::plain_http;
      }
      error_ = openssl_error("handshake");
      return tls_read::failed;
    }
    handshake_done_ = true;
  }
  int r = SSL_read(ssl_, out, cap > size_t(INT_MAX) ? INT_MAX : int(cap));
  if (r > 0) {
    *n = size_t(r);
    return tls_read::data;
  }
  int err = SSL_get_error(ssl_, r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return tls_read::want_more;
  if (err == SSL_ERROR_ZERO_RETURN) return tls_read::closed;
  error_ = openssl_error("read");
  return tls_read::failed;
}

bool tls_conn::write(const uint8_t* data, size_t n) {
  ERR_clear_error();
  while (n > 0) {
    int chunk = n > size_t(INT_MAX) ? INT_MAX : int(n);
    int w = SSL_write(ssl_, data, chunk);
    if (w <= 0) {
      error_ = openssl_error("write");
      return false;
    }
    data += w;
    n -= size_t(w);
  }
  return true;
}

void tls_conn::shutdown() {
  if (!handshake_done_ || shutdown_sent_) return;
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
  shutdown_sent_ = true;
}

void tls_conn::discard_output() {
  out_.size = 0;
}

size_t tls_conn::pending_output() const {
  return out_.size;
}

size_t tls_conn::take_output(uint8_t* out, size_t cap) {
  size_t n = std::min(cap, out_.size);
  if (n == 0) return 0;
  std::memcpy(out, out_.data.get(), n);
  if (n < out_.size) std::memmove(out_.data.get(), out_.data.get() + n, out_.size - n);
  out_.size -= n;
  if (out_.size == 0) recycle(take_buffer());  // an idle connection holds no buffer
  return n;
}

const char* tls_conn::version() const {
  return SSL_get_version(ssl_);
}

}  // namespace wsed::engine
