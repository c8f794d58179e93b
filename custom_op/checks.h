// Input checks shared by the CPU ops (gather.cpp, gather_dequant.cpp) and the CUDA glue
// (gather_cuda.cu). Row bounds are not here: the CPU checks them on the host, CUDA in the kernel.
#pragma once
#include <ATen/ATen.h>

#include "dequant.h"
#include "message.h"

#include <array>
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

// gather_dequant_into's inputs, checked and made contiguous (held here, so `source` stays valid).
struct DequantInputs {
  std::array<at::Tensor, kFormats> blocks;
  at::Tensor int8_scales, int4_scales, table;
  DequantSource source;
};

inline DequantInputs dequant_inputs(at::TensorList blocks, at::TensorList scales, const at::Tensor& page_table,
                                    int64_t page_size, int64_t group, const at::Tensor& out) {
  constexpr const char* op = "gather_dequant_into";
  TORCH_CHECK(blocks.size() == kFormats && scales.size() == kFormats,
              message(op, ": blocks and scales must be 5 tensors each, one per format (float32, float16, bfloat16, "
                          "int8, int4), got ", static_cast<int64_t>(blocks.size()), " and ",
                      static_cast<int64_t>(scales.size())));
  TORCH_CHECK(page_size > 0 && group > 0,
              message(op, ": page_size and group must be > 0, got ", page_size, " and ", group));
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.dim() == 1 && out.is_contiguous(),
              message(op, ": out must be a contiguous 1-D float32 buffer, got ", dtype_name(out.scalar_type()), " ",
                      out.sizes(), out.is_contiguous() ? "" : " (not contiguous)"));
  TORCH_CHECK(page_table.device() == out.device(),
              message(op, ": page_table is on ", page_table.device(), " but out on ", out.device()));
  check_table(page_table, out.numel(), page_size, op);

  const int64_t groups = (page_size + group - 1) / group, int4_width = (page_size + 1) / 2;
  constexpr std::array<c10::ScalarType, kFormats> dtypes = {at::kFloat, at::kHalf, at::kBFloat16, at::kChar,
                                                            at::kByte};
  DequantInputs in;
  for (int64_t f = 0; f < kFormats; ++f) {
    const at::Tensor& b = blocks[f];
    const int64_t width = f == kInt4 ? int4_width : page_size;
    TORCH_CHECK(b.scalar_type() == dtypes[f], message(op, ": blocks[", f, "] (", kFormatNames[f], ") must be ",
                                                      dtype_name(dtypes[f]), ", got ", dtype_name(b.scalar_type())));
    TORCH_CHECK(b.dim() == 2 && b.size(1) == width,
                message(op, ": blocks[", f, "] (", kFormatNames[f], ") must be [rows, ", width, "] for page size ",
                        page_size, ", got ", b.sizes()));
    TORCH_CHECK(b.device() == out.device(), message(op, ": blocks[", f, "] (", kFormatNames[f], ") is on ",
                                                    b.device(), " but out on ", out.device()));
    in.blocks[f] = b.contiguous();
    in.source.rows[f] = b.size(0);
  }
  for (const int64_t f : {kInt8, kInt4}) {
    const at::Tensor& s = scales[f];
    const int64_t columns = f == kInt8 ? 1 : groups;  // int8: one scale a page; int4: one a group
    TORCH_CHECK(s.scalar_type() == at::kFloat && s.dim() == 2 && s.size(0) == blocks[f].size(0) && s.size(1) == columns,
                message(op, ": scales[", f, "] (", kFormatNames[f], ") must be float32 [", blocks[f].size(0), ", ",
                        columns, "], got ", dtype_name(s.scalar_type()), " ", s.sizes()));
    TORCH_CHECK(s.device() == out.device(), message(op, ": scales[", f, "] (", kFormatNames[f], ") is on ",
                                                    s.device(), " but out on ", out.device()));
  }
  in.int8_scales = scales[kInt8].contiguous();
  in.int4_scales = scales[kInt4].contiguous();
  in.table = page_table.contiguous();

  DequantSource& src = in.source;
  src.float32 = in.blocks[kFloat32].const_data_ptr<float>();
  src.float16 = static_cast<const uint16_t*>(in.blocks[kFloat16].const_data_ptr());
  src.bfloat16 = static_cast<const uint16_t*>(in.blocks[kBFloat16].const_data_ptr());
  src.int8 = in.blocks[kInt8].const_data_ptr<int8_t>();
  src.int4 = in.blocks[kInt4].const_data_ptr<uint8_t>();
  src.int8_scales = in.int8_scales.const_data_ptr<float>();
  src.int4_scales = in.int4_scales.const_data_ptr<float>();
  src.page_size = page_size;
  src.group = group;
  src.groups = groups;
  src.int4_width = int4_width;
  return in;
}

}  // namespace weightsep
