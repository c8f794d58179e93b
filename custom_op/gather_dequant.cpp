// weightsep::gather_dequant_into: the page-table gather over quantised pages (weightsep/quant.py's
// formats), dequantising as it copies. The schema and the CPU kernel; the CUDA kernel is in
// gather_cuda.cu / gather_kernels.cuh.
//
//   gather_dequant_into(blocks[5], scales[5], page_table [n_pages] int64, page_size, group, out [n]) -> ()
//       logical page i is row (page_table[i] & kRowMask) of format (page_table[i] >> 40)'s block;
//       out[i * P + j] = its weight j dequantised (w = q * s: one float32 multiply, as in quant.py)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "dequant.h"
#include "message.h"

#include <bit>
#include <cstring>

namespace weightsep {

namespace {

void check_entries(const DequantSource& src, const int64_t* table, int64_t n_pages) {
  for (int64_t i = 0; i < n_pages; ++i) {
    const int64_t code = table[i] >> kTableShift, row = table[i] & kRowMask;
    TORCH_CHECK(code >= 0 && code < kFormats,
                message("gather_dequant_into: page_table[", i, "] = ", table[i], " has format code ", code,
                        "; codes are 0..4 (float32, float16, bfloat16, int8, int4)"));
    TORCH_CHECK(row < src.rows[code], message("gather_dequant_into: page_table[", i, "] names ", kFormatNames[code],
                                              " row ", row, ", but the ", kFormatNames[code], " block has ",
                                              src.rows[code], " rows"));
  }
}

float bfloat16_to_float(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

// Exact, as c10::detail::fp16_ieee_to_fp32_value (the same bit trick), but with the normal/subnormal
// choice as a mask instead of a ?: on floats, which GCC will not if-convert: this loop vectorises,
// c10::Half's conversion ran one weight at a time, 3-7x slower.
float float16_to_float(uint16_t bits) {
  const uint32_t w = static_cast<uint32_t>(bits) << 16, two_w = w + w;
  const float normal = std::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = std::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t is_subnormal = 0u - static_cast<uint32_t>(two_w < (1u << 27));  // all ones or zero
  return std::bit_cast<float>((w & 0x80000000u) | (std::bit_cast<uint32_t>(subnormal) & is_subnormal) |
                              (std::bit_cast<uint32_t>(normal) & ~is_subnormal));
}

float int4_weight(int nibble, float scale) { return static_cast<float>(nibble - 8) * scale; }

// Weights [j0, j1) (j0 < j1) of an int4 row, one scale: whole bytes in a loop over bytes (it vectorises;
// one over weights did not), a lone weight at either end where the range starts or stops mid-byte.
void int4_weights(const uint8_t* __restrict__ src, float scale, int64_t j0, int64_t j1, float* __restrict__ dst) {
  if (j0 & 1) dst[j0] = int4_weight(src[j0 >> 1] >> 4, scale);
  for (int64_t k = (j0 + 1) >> 1; k < j1 >> 1; ++k) {
    dst[2 * k] = int4_weight(src[k] & 15, scale);
    dst[2 * k + 1] = int4_weight(src[k] >> 4, scale);
  }
  if (j1 & 1) dst[j1 - 1] = int4_weight(src[j1 >> 1] & 15, scale);  // even, so never j0 written above
}

// The first `len` weights of row `row` of format `code`, dequantised into dst.
void dequant_page(const DequantSource& s, int64_t code, int64_t row, int64_t len, float* __restrict__ dst) {
  const int64_t P = s.page_size;
  switch (code) {
    case kFloat32:
      std::memcpy(dst, s.float32 + row * P, len * sizeof(float));
      break;
    case kFloat16: {
      const uint16_t* __restrict__ src = s.float16 + row * P;
      for (int64_t j = 0; j < len; ++j) dst[j] = float16_to_float(src[j]);
      break;
    }
    case kBFloat16: {
      const uint16_t* __restrict__ src = s.bfloat16 + row * P;
      for (int64_t j = 0; j < len; ++j) dst[j] = bfloat16_to_float(src[j]);
      break;
    }
    case kInt8: {
      const int8_t* __restrict__ src = s.int8 + row * P;
      const float scale = s.int8_scales[row];
      for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<float>(src[j]) * scale;
      break;
    }
    case kInt4: {
      const uint8_t* src = s.int4 + row * s.int4_width;
      const float* scales = s.int4_scales + row * s.groups;
      for (int64_t g = 0; g * s.group < len; ++g) {
        int4_weights(src, scales[g], g * s.group, std::min(len, (g + 1) * s.group), dst);
      }
      break;
    }
  }
}

// An AVX2 build of the page loop next to the baseline one, picked at load time by the CPU (GCC/Clang
// function multi-versioning): int8 and bfloat16 pages then cost about what a float32 memcpy does.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define WEIGHTSEP_CPU_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#else
#define WEIGHTSEP_CPU_CLONES
#endif

// Logical pages [begin, end) of n weights into out.
WEIGHTSEP_CPU_CLONES void dequant_pages(const DequantSource& s, const int64_t* table, int64_t begin, int64_t end,
                                        int64_t n, float* out) {
  const int64_t P = s.page_size;
  for (int64_t i = begin; i < end; ++i) {  // the last page may be partial
    dequant_page(s, table[i] >> kTableShift, table[i] & kRowMask, std::min(P, n - i * P), out + i * P);
  }
}

}  // namespace

void gather_dequant_into_cpu(at::TensorList blocks, at::TensorList scales, const at::Tensor& page_table,
                             int64_t page_size, int64_t group, at::Tensor& out) {
  const DequantInputs in = dequant_inputs(blocks, scales, page_table, page_size, group, out);
  const DequantSource& src = in.source;
  const int64_t* table = in.table.const_data_ptr<int64_t>();
  check_entries(src, table, in.table.numel());
  const int64_t n = out.numel();
  float* dst = out.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / page_size);
  at::parallel_for(0, pages_used(n, page_size), grain,
                   [&](int64_t begin, int64_t end) { dequant_pages(src, table, begin, end, n, dst); });
}

TORCH_LIBRARY_FRAGMENT(weightsep, m) {
  m.def(
      "gather_dequant_into(Tensor[] blocks, Tensor[] scales, Tensor page_table, int page_size, int group, "
      "Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(weightsep, CPU, m) { m.impl("gather_dequant_into", &gather_dequant_into_cpu); }

}  // namespace weightsep
