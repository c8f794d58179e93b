// Input checks shared by the CPU ops (gather.cpp, gather_dequant.cpp) and the CUDA glue
// (gather_cuda.cu). Row bounds are not here: the CPU checks them on the host, CUDA in the kernel.
#pragma once
#include <ATen/ATen.h>

#include "dequant.h"
#include "message.h"

#include <string>

namespace weightsep {

constexpr int64_t kGrainElements = 32768;  // per parallel_for chunk; below it threads cost more than they save

inline void check_table(const at::Tensor& page_table, int64_t n, int64_t page_size, const char* op) {
  TORCH_CHECK(page_table.scalar_type() == at::kLong,
              message(op, ": page_table must be int64, got ", page_table.scalar_type()));
  TORCH_CHECK(page_table.dim() == 1, message(op, ": page_table must be 1-D, got ", page_table.dim(), "-D"));
  TORCH_CHECK(n >= 0, message(op, ": n_weights must be >= 0, got ", n));
  TORCH_CHECK(n <= page_table.numel() * page_size,
              message(op, ": n_weights = ", n, " does not fit in ", page_table.numel(), " pages of ", page_size));
}

inline int64_t pages_used(int64_t n, int64_t page_size) { return page_size == 0 ? 0 : (n + page_size - 1) / page_size; }

// torch's name for a dtype ("int8", not c10's "Char"): the dequant checks name several integer dtypes.
inline std::string dtype_name(c10::ScalarType t) { return std::string(c10::getDtypeNames(t).first); }

// Does [first, first + count * each) lie in [0, total)? (Without overflow, whatever the values.)
inline bool fits(int64_t first, int64_t count, int64_t each, int64_t total) {
  return first >= 0 && count >= 0 && first <= total && (each == 0 || count <= (total - first) / each);
}

inline void check_buffer(const at::Tensor& t, c10::ScalarType dtype, const char* name, const at::Tensor& out) {
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == 1 && t.is_contiguous(),
              message("gather_dequant_into: ", name, " must be a contiguous 1-D ", dtype_name(dtype), " buffer, got ",
                      dtype_name(t.scalar_type()), " ", t.sizes(), t.is_contiguous() ? "" : " (not contiguous)"));
  TORCH_CHECK(t.device() == out.device(),
              message("gather_dequant_into: ", name, " is on ", t.device(), " but out on ", out.device()));
}

// gather_dequant_into's inputs, checked, as raw pointers (`table` holds the contiguous page table).
struct DequantInputs {
  at::Tensor table;
  DequantSource source;
};

inline DequantInputs dequant_inputs(const at::Tensor& pages, const at::Tensor& scales, const at::Tensor& layout,
                                    const at::Tensor& page_table, const at::Tensor& out) {
  constexpr const char* op = "gather_dequant_into";
  TORCH_CHECK(layout.scalar_type() == at::kLong && layout.dim() == 1 && layout.numel() == kLayoutSize &&
                  layout.is_contiguous() && layout.is_cpu(),
              message(op, ": layout must be a contiguous int64 CPU tensor of ", kLayoutSize,
                      " values (page_size, group, then byte offset, rows and first scale per format), got ",
                      dtype_name(layout.scalar_type()), " ", layout.sizes(), " on ", layout.device()));
  const int64_t* l = layout.const_data_ptr<int64_t>();
  const int64_t page_size = l[kPageSize], group = l[kGroup];
  TORCH_CHECK(page_size > 0 && group > 0,
              message(op, ": page_size and group must be > 0, got ", page_size, " and ", group));
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.dim() == 1 && out.is_contiguous(),
              message(op, ": out must be a contiguous 1-D float32 buffer, got ", dtype_name(out.scalar_type()), " ",
                      out.sizes(), out.is_contiguous() ? "" : " (not contiguous)"));
  check_buffer(pages, at::kByte, "pages", out);
  check_buffer(scales, at::kFloat, "scales", out);
  TORCH_CHECK(page_table.device() == out.device(),
              message(op, ": page_table is on ", page_table.device(), " but out on ", out.device()));
  check_table(page_table, out.numel(), page_size, op);

  const int64_t groups = (page_size + group - 1) / group, int4_width = (page_size + 1) / 2;
  constexpr int64_t elements[kFormats] = {4, 2, 2, 1, 1};  // bytes an element of each block
  const auto* base = static_cast<const uint8_t*>(pages.const_data_ptr());
  const float* scale_base = scales.const_data_ptr<float>();
  const uint8_t* blocks[kFormats];
  const float* first_scales[kFormats];
  DequantInputs in;
  for (int64_t f = 0; f < kFormats; ++f) {
    const int64_t* b = l + kFirstBlock + kBlockFields * f;
    const int64_t offset = b[kOffset], rows = b[kRows], first = b[kFirstScale];
    const int64_t row_bytes = f == kInt4 ? int4_width : page_size * elements[f];
    const int64_t columns = f == kInt8 ? 1 : f == kInt4 ? groups : 0;  // scales a row
    TORCH_CHECK(fits(offset, rows, row_bytes, pages.numel()),
                message(op, ": layout's ", kFormatNames[f], " block, ", rows, " rows of ", row_bytes,
                        " bytes at byte offset ", offset, ", does not fit in pages (", pages.numel(), " bytes)"));
    TORCH_CHECK(reinterpret_cast<uintptr_t>(base + offset) % elements[f] == 0,
                message(op, ": layout's ", kFormatNames[f], " block at byte offset ", offset,
                        " is not aligned to its ", elements[f], "-byte elements"));
    TORCH_CHECK(columns == 0 || fits(first, rows, columns, scales.numel()),
                message(op, ": layout's ", kFormatNames[f], " scales, ", rows, " rows of ", columns, " from scale ",
                        first, ", do not fit in scales (", scales.numel(), " floats)"));
    blocks[f] = base + offset;
    first_scales[f] = columns ? scale_base + first : nullptr;
    in.source.rows[f] = rows;
  }
  in.table = page_table.contiguous();

  DequantSource& src = in.source;
  src.float32 = reinterpret_cast<const float*>(blocks[kFloat32]);
  src.float16 = reinterpret_cast<const uint16_t*>(blocks[kFloat16]);
  src.bfloat16 = reinterpret_cast<const uint16_t*>(blocks[kBFloat16]);
  src.int8 = reinterpret_cast<const int8_t*>(blocks[kInt8]);
  src.int4 = blocks[kInt4];
  src.int8_scales = first_scales[kInt8];
  src.int4_scales = first_scales[kInt4];
  src.page_size = page_size;
  src.group = group;
  src.groups = groups;
  src.int4_width = int4_width;
  return in;
}

}  // namespace weightsep
