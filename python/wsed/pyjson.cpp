// python/wsed/pyjson.cpp: the JSON <-> Python converters (see pyjson.hpp).
//
// Owns: per thread, a simdjson DOM parser and a padded copy buffer (thread_local, never shrunk);
// process-wide, a cache of the str objects made for short object keys (GIL-protected, bounded,
// never freed). Documents holding integers beyond 64 bits take a slower path (a masked copy is
// validated, then an on-demand parser reads the original). Thread: any, with the GIL held. Python
// references are held by pybind11::object (or taken for the duration of a call) so an exception at
// any point leaks nothing.
#include "python/wsed/pyjson.hpp"

#include <simdjson.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <memory>

#include "proto/wse_builder.hpp"

namespace wsed::py {

namespace pyb = pybind11;
namespace dom = simdjson::dom;
namespace ondemand = simdjson::ondemand;

namespace {

constexpr char hex_digits[] = "0123456789abcdef";

// ---- to_json ----

// Py_EnterRecursiveCall / Py_LeaveRecursiveCall as a scope (the leave runs on exceptions too).
class recursion_guard {
 public:
  recursion_guard() {
    if (Py_EnterRecursiveCall(" while converting a Python object to JSON") != 0) {
      throw pyb::error_already_set();
    }
  }
  ~recursion_guard() { Py_LeaveRecursiveCall(); }
  recursion_guard(const recursion_guard&) = delete;
  recursion_guard& operator=(const recursion_guard&) = delete;
};

// The UTF-8 bytes of a str (cached inside the object), or false with the error cleared when it
// holds lone surrogates. The view lives as long as s does.
bool utf8_of(PyObject* s, std::string_view& out) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(s, &n);
  if (p == nullptr) {
    PyErr_Clear();
    return false;
  }
  out = std::string_view(p, static_cast<size_t>(n));
  return true;
}

// A str as a JSON string whatever it holds: lone surrogates go through "surrogatepass" and come
// out as U+FFFD (wse_append_json_string replaces each invalid byte), like Rust's lossy decoding.
void append_lossy_string(std::string& out, PyObject* s) {
  std::string_view text;
  if (utf8_of(s, text)) {
    proto::wse_append_json_string(out, text);
    return;
  }
  pyb::object bytes =
      pyb::reinterpret_steal<pyb::object>(PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass"));
  if (!bytes) {
    PyErr_Clear();
    out += "\"\"";
    return;
  }
  proto::wse_append_json_string(
      out, std::string_view(PyBytes_AS_STRING(bytes.ptr()),
                            static_cast<size_t>(PyBytes_GET_SIZE(bytes.ptr()))));
}

PyObject* isoformat_name() {
  static PyObject* name = PyUnicode_InternFromString("isoformat");  // kept for the process
  return name;
}

// obj.isoformat() as a JSON string; false (error cleared) when there is none, it raises, or it
// does not return a str.
bool append_isoformat(std::string& out, PyObject* obj) {
  PyObject* name = isoformat_name();
  if (name == nullptr) {
    PyErr_Clear();
    return false;
  }
  pyb::object result = pyb::reinterpret_steal<pyb::object>(PyObject_CallMethodNoArgs(obj, name));
  if (!result) {
    PyErr_Clear();
    return false;
  }
  std::string_view text;
  if (!PyUnicode_Check(result.ptr()) || !utf8_of(result.ptr(), text)) return false;
  proto::wse_append_json_string(out, text);
  return true;
}

// str(obj) as a JSON string; null when str() raises or gives lone surrogates.
void append_str_of(std::string& out, PyObject* obj) {
  pyb::object s = pyb::reinterpret_steal<pyb::object>(PyObject_Str(obj));
  std::string_view text;
  if (!s || !utf8_of(s.ptr(), text)) {
    PyErr_Clear();
    out += "null";
    return;
  }
  proto::wse_append_json_string(out, text);
}

void append_int64(std::string& out, long long value) {
  char text[24];
  const auto end = std::to_chars(text, text + sizeof text, value).ptr;
  out.append(text, end);
}

// A dict key: the str itself, anything else str(k) (pyo3's Display: "<unprintable T object>"
// when str() raises).
void append_key(std::string& out, PyObject* key) {
  if (PyUnicode_Check(key)) {
    append_lossy_string(out, key);
    return;
  }
  pyb::object s = pyb::reinterpret_steal<pyb::object>(PyObject_Str(key));
  if (s) {
    append_lossy_string(out, s.ptr());
    return;
  }
  PyErr_Clear();
  std::string text = "<unprintable ";
  text += Py_TYPE(key)->tp_name;
  text += " object>";
  proto::wse_append_json_string(out, text);
}

class json_writer {
 public:
  json_writer(std::string& out, json_style style) : out_(out), style_(style) {}

  void value(PyObject* obj) {
    if (obj == Py_None) {
      out_ += "null";
      return;
    }
    if (obj == Py_True) {
      out_ += "true";
      return;
    }
    if (obj == Py_False) {
      out_ += "false";
      return;
    }
    if (PyUnicode_Check(obj)) {
      std::string_view text;
      if (utf8_of(obj, text)) {
        proto::wse_append_json_string(out_, text);
        return;
      }
    } else if (PyLong_Check(obj)) {
      int overflow = 0;
      const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
      if (overflow == 0 && !(v == -1 && PyErr_Occurred())) {
        append_int64(out_, v);
        return;
      }
      PyErr_Clear();  // beyond int64: falls through to str()
    } else if (PyFloat_Check(obj)) {
      const double d = PyFloat_AS_DOUBLE(obj);
      if (std::isfinite(d)) {
        append_json_double(out_, d);
        return;
      }
      if (style_ == json_style::event) {
        out_ += "null";
        return;
      }
    } else if (PyDict_Check(obj)) {
      object(obj);
      return;
    } else if (PyList_Check(obj)) {
      list(obj);
      return;
    } else if (style_ == json_style::event && PyTuple_Check(obj)) {
      tuple(obj);
      return;
    } else if (style_ == json_style::event && PyBytes_Check(obj)) {
      hex(obj);
      return;
    }
    if (append_isoformat(out_, obj)) return;
    append_str_of(out_, obj);
  }

 private:
  void object(PyObject* dict) {
    recursion_guard guard;
    out_ += '{';
    Py_ssize_t pos = 0;
    PyObject* key = nullptr;
    PyObject* item = nullptr;
    bool first = true;
    while (PyDict_Next(dict, &pos, &key, &item)) {
      // Own both while converting: an isoformat()/str() below may mutate the dict.
      const pyb::object key_ref = pyb::reinterpret_borrow<pyb::object>(key);
      const pyb::object item_ref = pyb::reinterpret_borrow<pyb::object>(item);
      if (!first) out_ += ',';
      first = false;
      append_key(out_, key);
      out_ += ':';
      value(item);
    }
    out_ += '}';
  }

  void list(PyObject* list) {
    recursion_guard guard;
    out_ += '[';
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {  // size re-read: it may change
      const pyb::object item = pyb::reinterpret_borrow<pyb::object>(PyList_GET_ITEM(list, i));
      if (i != 0) out_ += ',';
      value(item.ptr());
    }
    out_ += ']';
  }

  void tuple(PyObject* tuple) {
    recursion_guard guard;
    out_ += '[';
    const Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (i != 0) out_ += ',';
      value(PyTuple_GET_ITEM(tuple, i));
    }
    out_ += ']';
  }

  void hex(PyObject* bytes) {
    const auto* p = reinterpret_cast<const unsigned char*>(PyBytes_AS_STRING(bytes));
    const size_t n = static_cast<size_t>(PyBytes_GET_SIZE(bytes));
    const size_t at = out_.size();
    out_.resize(at + 2 * n + 2);
    char* o = out_.data() + at;
    *o++ = '"';
    for (size_t i = 0; i < n; ++i) {
      *o++ = hex_digits[p[i] >> 4];
      *o++ = hex_digits[p[i] & 15];
    }
    *o = '"';
  }

  std::string& out_;
  json_style style_;
};

// ---- from_json ----

// A copy of the input followed by SIMDJSON_PADDING zero bytes, as simdjson reads past the end.
class padded_buffer {
 public:
  const char* fill(std::string_view json) {
    const size_t needed = json.size() + simdjson::SIMDJSON_PADDING;
    if (needed > capacity_) {
      capacity_ = needed < 4096 ? 4096 : needed + needed / 2;
      bytes_ = std::make_unique<char[]>(capacity_);
    }
    std::memcpy(bytes_.get(), json.data(), json.size());
    std::memset(bytes_.get() + json.size(), 0, simdjson::SIMDJSON_PADDING);
    return bytes_.get();
  }

 private:
  std::unique_ptr<char[]> bytes_;
  size_t capacity_ = 0;
};

struct thread_parsers {
  dom::parser dom_parser;
  padded_buffer buffer;
};

thread_parsers& parsers() {
  thread_local thread_parsers p;
  return p;
}

[[noreturn]] void throw_invalid(simdjson::error_code error) {
  throw pyb::value_error(std::string("Invalid JSON: ") + simdjson::error_message(error));
}

pyb::object new_str(std::string_view s) {
  PyObject* o = PyUnicode_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
  if (o == nullptr) throw pyb::error_already_set();
  return pyb::reinterpret_steal<pyb::object>(o);
}

// Object keys repeat across documents ("t", "p", "id", ...): a direct-mapped cache of the str
// objects made for short keys saves creating and hashing a new str per key. Shared by all
// threads, so only touched with the GIL held (every caller of from_json holds it); it keeps
// strong references to at most key_cache_slots small strs for the life of the process.
class key_cache {
 public:
  static constexpr size_t slots = 4096;
  static constexpr size_t key_bytes_max = 30;

  pyb::object get(std::string_view key) {
    if (key.size() > key_bytes_max) return new_str(key);
    uint32_t h = 2166136261u;  // FNV-1a
    for (const char c : key) h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
    slot& s = slots_[(h ^ static_cast<uint32_t>(key.size())) & (slots - 1)];
    if (s.str != nullptr && s.length == key.size() &&
        std::memcmp(s.bytes, key.data(), key.size()) == 0) {
      return pyb::reinterpret_borrow<pyb::object>(s.str);
    }
    pyb::object str = new_str(key);
    PyObject* old = s.str;
    s.str = pyb::object(str).release().ptr();
    s.length = static_cast<uint8_t>(key.size());
    std::memcpy(s.bytes, key.data(), key.size());
    Py_XDECREF(old);
    return str;
  }

 private:
  struct slot {
    PyObject* str = nullptr;
    uint8_t length = 0;
    char bytes[key_bytes_max];
  };
  slot slots_[slots];
};

key_cache& keys() {
  static key_cache* cache = new key_cache();  // never destroyed: it outlives the interpreter
  return *cache;
}

pyb::object steal_or_throw(PyObject* o) {
  if (o == nullptr) throw pyb::error_already_set();
  return pyb::reinterpret_steal<pyb::object>(o);
}

pyb::object convert(dom::element e) {
  switch (e.type()) {
    case dom::element_type::OBJECT: {
      pyb::object dict = steal_or_throw(PyDict_New());
      for (dom::key_value_pair field : dom::object(e)) {
        const pyb::object key = keys().get(field.key);
        const pyb::object item = convert(field.value);
        if (PyDict_SetItem(dict.ptr(), key.ptr(), item.ptr()) != 0) throw pyb::error_already_set();
      }
      return dict;
    }
    case dom::element_type::ARRAY: {
      const dom::array array(e);
      const size_t n = array.size();
      if (n < 0xFFFFFF) {  // exact (simdjson saturates the count at 0xFFFFFF)
        pyb::object list = steal_or_throw(PyList_New(static_cast<Py_ssize_t>(n)));
        Py_ssize_t i = 0;
        for (dom::element item : array) {
          PyList_SET_ITEM(list.ptr(), i++, convert(item).release().ptr());
        }
        return list;
      }
      pyb::object list = steal_or_throw(PyList_New(0));
      for (dom::element item : array) {
        if (PyList_Append(list.ptr(), convert(item).ptr()) != 0) throw pyb::error_already_set();
      }
      return list;
    }
    case dom::element_type::INT64:
      return steal_or_throw(PyLong_FromLongLong(static_cast<long long>(int64_t(e))));
    case dom::element_type::UINT64:
      return steal_or_throw(PyLong_FromUnsignedLongLong(uint64_t(e)));
    case dom::element_type::DOUBLE:
      return steal_or_throw(PyFloat_FromDouble(double(e)));
    case dom::element_type::STRING:
      return new_str(std::string_view(e));
    case dom::element_type::BOOL:
      return pyb::bool_(bool(e));
    case dom::element_type::NULL_VALUE:
      break;
  }
  return pyb::none();
}

// ---- the rare path: a document with integers beyond 64 bits ----

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// Whether text is a JSON integer literal (-?(0|[1-9][0-9]*)).
bool is_integer_literal(std::string_view text) {
  size_t i = text.empty() || text[0] != '-' ? 0 : 1;
  if (i >= text.size()) return false;
  if (text[i] == '0') return text.size() == i + 1;
  for (; i < text.size(); ++i) {
    if (!is_digit(text[i])) return false;
  }
  return true;
}

// An integer literal that neither int64 nor uint64 holds.
bool is_big_integer(std::string_view text) {
  if (!is_integer_literal(text)) return false;
  if (text[0] == '-') {
    const std::string_view digits = text.substr(1);
    return digits.size() > 19 || (digits.size() == 19 && digits > "9223372036854775808");
  }
  return text.size() > 20 || (text.size() == 20 && text > "18446744073709551615");
}

std::string_view trim_json_space(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  return s;
}

pyb::object big_integer(std::string_view literal) {
  const std::string text(literal);
  return steal_or_throw(PyLong_FromString(text.c_str(), nullptr, 10));
}

[[noreturn]] void throw_on_demand_failure() {
  throw pyb::value_error("Invalid JSON: the document could not be read");
}

template <typename T>
T take(simdjson::simdjson_result<T>&& result) {
  T out{};
  if (std::move(result).get(out) != simdjson::SUCCESS) throw_on_demand_failure();
  return out;
}

// Called only on documents the DOM parser accepted once their big integers were masked, so
// every error here is unexpected.
pyb::object convert_on_demand(ondemand::value v) {
  switch (take(v.type())) {
    case ondemand::json_type::object: {
      pyb::object dict = steal_or_throw(PyDict_New());
      for (auto field_result : take(v.get_object())) {
        ondemand::field field = take(std::move(field_result));
        const pyb::object key = new_str(take(field.unescaped_key()));
        const pyb::object item = convert_on_demand(field.value());
        if (PyDict_SetItem(dict.ptr(), key.ptr(), item.ptr()) != 0) throw pyb::error_already_set();
      }
      return dict;
    }
    case ondemand::json_type::array: {
      pyb::object list = steal_or_throw(PyList_New(0));
      for (auto item_result : take(v.get_array())) {
        const pyb::object item = convert_on_demand(take(std::move(item_result)));
        if (PyList_Append(list.ptr(), item.ptr()) != 0) throw pyb::error_already_set();
      }
      return list;
    }
    case ondemand::json_type::number: {
      const std::string_view raw = trim_json_space(v.raw_json_token());
      if (is_big_integer(raw)) return big_integer(raw);
      if (is_integer_literal(raw)) {
        if (raw[0] == '-') return steal_or_throw(PyLong_FromLongLong(take(v.get_int64())));
        return steal_or_throw(PyLong_FromUnsignedLongLong(take(v.get_uint64())));
      }
      return steal_or_throw(PyFloat_FromDouble(take(v.get_double())));
    }
    case ondemand::json_type::string:
      return new_str(take(v.get_string()));
    case ondemand::json_type::boolean:
      return pyb::bool_(take(v.get_bool()));
    case ondemand::json_type::null:
      break;
  }
  return pyb::none();
}

pyb::object from_json_with_big_integers(std::string_view json, simdjson::error_code first_error) {
  std::string masked;
  if (!mask_big_integers(json, masked)) throw_invalid(first_error);
  thread_parsers& p = parsers();
  dom::element root;
  const char* buf = p.buffer.fill(masked);
  if (auto error = p.dom_parser.parse(buf, masked.size(), false).get(root)) throw_invalid(error);
  // Valid apart from the big integers. A scalar document is then the big integer itself.
  if (!root.is_object() && !root.is_array()) return big_integer(trim_json_space(json));
  const simdjson::padded_string padded(json);
  ondemand::parser parser;
  ondemand::document doc = take(parser.iterate(padded));
  return convert_on_demand(take(doc.get_value()));
}

}  // namespace

void append_json_double(std::string& out, double value) {
  // Shortest round-trip digits from to_chars ("[-]D[.DDD]e(+|-)XX"), laid out as ryu's format64.
  char sci[40];
  const char* end = std::to_chars(sci, sci + sizeof sci, value, std::chars_format::scientific).ptr;
  const char* p = sci;
  if (*p == '-') {
    out += '-';
    ++p;
  }
  char digits[24];
  int length = 0;
  for (; p < end && *p != 'e'; ++p) {
    if (*p != '.') digits[length++] = *p;
  }
  int exponent = 0;
  if (p < end) {
    ++p;  // 'e'
    const bool negative = *p == '-';
    ++p;  // sign
    for (; p < end; ++p) exponent = exponent * 10 + (*p - '0');
    if (negative) exponent = -exponent;
  }
  const int k = exponent - (length - 1);  // value = digits * 10^k
  const int kk = length + k;              // 10^(kk-1) <= value < 10^kk
  auto append_exponent = [&](int e) {
    char text[8];
    const auto stop = std::to_chars(text, text + sizeof text, e).ptr;
    out += 'e';
    out.append(text, stop);
  };
  if (k >= 0 && kk <= 16) {  // 1234e7 -> 12340000000.0
    out.append(digits, static_cast<size_t>(length));
    out.append(static_cast<size_t>(k), '0');
    out += ".0";
  } else if (kk > 0 && kk <= 16) {  // 1234e-2 -> 12.34
    out.append(digits, static_cast<size_t>(kk));
    out += '.';
    out.append(digits + kk, static_cast<size_t>(length - kk));
  } else if (kk > -5 && kk <= 0) {  // 1234e-6 -> 0.001234
    out += "0.";
    out.append(static_cast<size_t>(-kk), '0');
    out.append(digits, static_cast<size_t>(length));
  } else if (length == 1) {  // 1e30
    out += digits[0];
    append_exponent(kk - 1);
  } else {  // 1234e30 -> 1.234e33
    out += digits[0];
    out += '.';
    out.append(digits + 1, static_cast<size_t>(length - 1));
    append_exponent(kk - 1);
  }
}

void to_json(pyb::handle obj, std::string& out, json_style style) {
  json_writer(out, style).value(obj.ptr());
}

pyb::object from_json(std::string_view json) {
  thread_parsers& p = parsers();
  const char* buf = p.buffer.fill(json);
  dom::element root;
  const simdjson::error_code error = p.dom_parser.parse(buf, json.size(), false).get(root);
  if (error == simdjson::SUCCESS) return convert(root);
  if (error == simdjson::NUMBER_ERROR) return from_json_with_big_integers(json, error);
  throw_invalid(error);
}

bool mask_big_integers(std::string_view json, std::string& out) {
  out.assign(json);
  bool replaced = false;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      continue;
    }
    if (c != '-' && !is_digit(c)) continue;
    size_t j = i + 1;
    while (j < json.size() && (is_digit(json[j]) || json[j] == '.' || json[j] == 'e' ||
                               json[j] == 'E' || json[j] == '+' || json[j] == '-')) {
      ++j;
    }
    if (is_big_integer(json.substr(i, j - i))) {
      out[i] = '0';
      for (size_t k = i + 1; k < j; ++k) out[k] = ' ';
      replaced = true;
    }
    i = j - 1;
  }
  return replaced;
}

}  // namespace wsed::py
