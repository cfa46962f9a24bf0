// python/wsed/pyjson.hpp: Python objects <-> JSON text for the wsed extension module, without
// the Python json module: to_json walks dicts/lists/scalars with the C API and appends compact
// JSON; from_json parses with simdjson (DOM) and builds dicts (in document order), lists, ints,
// floats, strs, bools and None.
//
// Owns: one simdjson parser and one padded input buffer per thread (thread_local, grown to the
// largest document seen on that thread, reused) and a process-wide cache of short key strs. Thread:
// any, but every function here needs the GIL (it creates or inspects Python objects). Never calls
// back into Python except where the conversion rules say so (isoformat(), str() of objects JSON has
// no type for).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace wsed::py {

// Which conversion rules to_json follows (both are the reference server's, see
// /tmp/ref_facts.md): they differ only for tuples, bytes and non-finite floats.
enum class json_style : uint8_t {
  // send_event / presence data: None, bool, int (int64), float (NaN/inf -> null), str, dict
  // (keys: the str itself, else str(k)), list and tuple -> array, bytes -> lower-case hex
  // string; anything else: obj.isoformat() when that returns a str, else str(obj).
  event,
  // rust_jwt_encode claims: as event, except that tuples, bytes and NaN/inf are not special:
  // they go to isoformat(), then str() ("(1, 2)", "b'..'", "nan").
  jwt_claims,
};

// Appends obj as compact JSON to out (nothing is cleared). Ints outside int64 are written as
// their decimal string (the reference converts only int64 to numbers); floats as the shortest
// text that reads back the same, "1.0" for a whole value (serde_json's / ryu's format); a str
// that cannot be UTF-8 (lone surrogates) as null; a str() that raises as null. Nesting is bounded
// by Python's recursion limit (RecursionError, raised as pybind11::error_already_set), so a
// self-referencing list raises instead of overflowing the stack.
void to_json(pybind11::handle obj, std::string& out, json_style style = json_style::event);

// Parses one JSON document: objects -> dict (document order; a repeated key keeps its first
// position and its last value), arrays -> list, integers -> int (any size: beyond uint64 through
// PyLong_FromString), other numbers -> float, strings -> str, true/false -> bool, null -> None.
// Malformed JSON (also: invalid UTF-8, lone surrogate escapes, numbers beyond double range,
// trailing content) raises ValueError ("Invalid JSON: <reason>").
pybind11::object from_json(std::string_view json);

// Copies json into out with every integer literal that fits neither int64 nor uint64 (simdjson
// refuses those) replaced by "0" and spaces (same length, so offsets keep); strings are left
// alone. Returns whether anything was replaced. For validating documents with huge integers.
bool mask_big_integers(std::string_view json, std::string& out);

// Appends a finite double the way serde_json (ryu) writes it: shortest round-trip digits,
// "1.0", "0.001", "1e16", "1.5e-7".
void append_json_double(std::string& out, double value);

}  // namespace wsed::py
