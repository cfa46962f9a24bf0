// engine/tls.cpp: see tls.hpp.
#include "engine/tls.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <climits>
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

tls_conn::tls_conn(const tls_context& ctx) {
  ssl_ = SSL_new(ctx.native());
  rbio_ = BIO_new(BIO_s_mem());
  wbio_ = BIO_new(BIO_s_mem());
  if (!ssl_ || !rbio_ || !wbio_) {
    BIO_free(rbio_);
    BIO_free(wbio_);
    SSL_free(ssl_);
    ERR_clear_error();
    throw std::bad_alloc();
  }
  BIO_set_mem_eof_return(rbio_, -1);  // empty: "retry", not EOF
  BIO_set_mem_eof_return(wbio_, -1);
  SSL_set_bio(ssl_, rbio_, wbio_);  // ssl_ owns both now
  if (ctx.client_)
    SSL_set_connect_state(ssl_);
  else
    SSL_set_accept_state(ssl_);
}

tls_conn::~tls_conn() {
  SSL_free(ssl_);
}

void tls_conn::feed(const uint8_t* data, size_t n) {
  while (n > 0) {
    int chunk = n > size_t(INT_MAX) ? INT_MAX : int(n);
    int w = BIO_write(rbio_, data, chunk);
    if (w <= 0) throw std::bad_alloc();
    data += w;
    n -= size_t(w);
  }
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
  (void)BIO_reset(wbio_);
}

size_t tls_conn::pending_output() const {
  return BIO_ctrl_pending(wbio_);
}

size_t tls_conn::take_output(uint8_t* out, size_t cap) {
  int r = BIO_read(wbio_, out, cap > size_t(INT_MAX) ? INT_MAX : int(cap));
  return r > 0 ? size_t(r) : 0;
}

const char* tls_conn::version() const {
  return SSL_get_version(ssl_);
}

}  // namespace wsed::engine
