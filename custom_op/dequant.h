// The dequantising gather's page formats, its layout, and its checked inputs as raw pointers: what
// the CPU kernel (gather_dequant.cpp) and the CUDA kernel (gather_kernels.cuh) both read.
//
// Header-free (no ATen, no c10), like gather_kernels.cuh, so nvcc compiles the kernels alone.
// Must match weightsep/quant.py: FORMATS order, TABLE_SHIFT, the int4 nibble layout.
#pragma once
#include <cstdint>

namespace weightsep {

enum Format : int64_t { kFloat32, kFloat16, kBFloat16, kInt8, kInt4, kFormats };  // quant.FORMATS
constexpr const char* kFormatNames[kFormats] = {"float32", "float16", "bfloat16", "int8", "int4"};
constexpr int kTableShift = 40;  // a page-table entry is (code << kTableShift) | row (quant.TABLE_SHIFT)
constexpr int64_t kRowMask = (int64_t{1} << kTableShift) - 1;

// gather_dequant_into's `layout`, int64 on the host: page_size, group, then per format (Format order)
// the byte offset of its block in `pages`, its rows, and the index in `scales` of its first row's
// scales (int8: one a row, int4: `groups` a row; unused for the floats). As weightsep/ops.py builds it.
enum LayoutField : int64_t { kPageSize, kGroup, kFirstBlock };
enum BlockField : int64_t { kOffset, kRows, kFirstScale, kBlockFields };
constexpr int64_t kLayoutSize = kFirstBlock + kBlockFields * kFormats;

// One block per format, row-major. float16/bfloat16 as their bits; int4 two weights a byte, weight
// 2k in the low nibble of byte k, nibble = q + 8.
struct DequantSource {
  const float* float32;     // [rows[kFloat32], page_size]
  const uint16_t* float16;  // [rows[kFloat16], page_size]
  const uint16_t* bfloat16;  // [rows[kBFloat16], page_size]
  const int8_t* int8;       // [rows[kInt8], page_size]
  const uint8_t* int4;      // [rows[kInt4], int4_width]
  const float* int8_scales;  // [rows[kInt8]]: one a page
  const float* int4_scales;  // [rows[kInt4], groups]: one per `group` weights
  int64_t rows[kFormats];
  int64_t page_size, group, groups, int4_width;
};

}  // namespace weightsep
