// Error messages for TORCH_CHECK, built from strings alone.
//
// Why not TORCH_CHECK(cond, "got ", n): that streams the int64 into a std::ostringstream inside this
// library, and under torch 2.11+cu130 with the lent GPU machines' gcc 13 the locally instantiated
// ostream::_M_insert<long> crashed (SIGSEGV) on every failing check that printed a number. A single
// std::string argument goes through c10::str untouched, so no stream is ever used here.
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace weightsep {

inline std::string text(const char* s) { return s; }
inline std::string text(const std::string& s) { return s; }
inline std::string text(int64_t v) { return std::to_string(v); }
inline std::string text(c10::ScalarType t) { return c10::toString(t); }
inline std::string text(const c10::Device& d) { return d.str(); }
inline std::string text(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

// message("page_table[", i, "] = ", row): the parts concatenated.
template <typename... Parts>
std::string message(const Parts&... parts) {
  std::string s;
  (s.append(text(parts)), ...);
  return s;
}

}  // namespace weightsep
