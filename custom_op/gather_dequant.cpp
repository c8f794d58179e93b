// weightsep::gather_dequant_into: the page-table gather over quantised pages (weightsep/quant.py's
// formats), dequantising as it copies. The schema and the CPU kernel; the CUDA kernel is in
// gather_cuda.cu / gather_kernels.cuh.
//
//   gather_dequant_into(pages uint8, scales float32, layout int64 [17] (host), page_table [n_pages] int64,
//                       out [n]) -> ()
//       every format's block lies in `pages` and its scales in `scales` where `layout` says (dequant.h);
//       logical page i is row (page_table[i] & kRowMask) of format (page_table[i] >> 40)'s block;
//       out[i * P + j] = its weight j dequantised (w = q * s: one float32 multiply, as in quant.py)
//
// No lists and no ints in the schema: from Python every argument is converted on every call, and the
// first schema's two tensor lists and two ints cost several times gather_pages_into's three tensors,
// a large share of a switch (docs/results.md#code-notes). `layout` carries the sizes instead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "dequant.h"
#include "message.h"

#include <bit>
#include <cstring>

// x86-64 Linux with GCC/Clang: the page loop is built twice, for AVX2 and for the baseline, and an ifunc
// picks one at load time by the CPU (function multi-versioning); elsewhere only the baseline is built.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define WEIGHTSEP_X86_VERSIONS
#define WEIGHTSEP_BASELINE __attribute__((target("default"), flatten))
#define WEIGHTSEP_AVX2 __attribute__((target("avx2")))
#else
#define WEIGHTSEP_BASELINE
#endif

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
// c10::Half's conversion ran one weight at a time, several times slower (docs/results.md#code-notes).
float float16_to_float(uint16_t bits) {
  const uint32_t w = static_cast<uint32_t>(bits) << 16, two_w = w + w;
  const float normal = std::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = std::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t is_subnormal = 0u - static_cast<uint32_t>(two_w < (1u << 27));  // all ones or zero
  return std::bit_cast<float>((w & 0x80000000u) | (std::bit_cast<uint32_t>(subnormal) & is_subnormal) |
                              (std::bit_cast<uint32_t>(normal) & ~is_subnormal));
}

float int4_weight(int nibble, float scale) { return static_cast<float>(nibble - 8) * scale; }

// Weights [j0, j1) of an int8 row.
void int8_weights(const int8_t* __restrict__ src, float scale, int64_t j0, int64_t j1, float* __restrict__ dst) {
  for (int64_t j = j0; j < j1; ++j) dst[j] = static_cast<float>(src[j]) * scale;
}

// Bytes [k0, k1) of an int4 row, weights 2 * k0 .. 2 * k1 - 1 (a loop over bytes vectorises; one over
// weights did not).
void int4_bytes(const uint8_t* __restrict__ src, float scale, int64_t k0, int64_t k1, float* __restrict__ dst) {
  for (int64_t k = k0; k < k1; ++k) {
    dst[2 * k] = int4_weight(src[k] & 15, scale);
    dst[2 * k + 1] = int4_weight(src[k] >> 4, scale);
  }
}

// The int rows as the compiler vectorises them: for the baseline build, and as the AVX2 ones' tails.
struct PlainRows {
  static void int8(const int8_t* src, float scale, int64_t len, float* dst) { int8_weights(src, scale, 0, len, dst); }
  static void int4(const uint8_t* src, float scale, int64_t k0, int64_t k1, float* dst) {
    int4_bytes(src, scale, k0, k1, dst);
  }
};

#ifdef WEIGHTSEP_X86_VERSIONS
// The int rows by hand for AVX2: 8 int8 sign-extended to int32 a load (vpmovsxbd), then converted and
// scaled as the plain loop does (the same float32 multiply, so the same bits). GCC's vectorisation of
// the plain loops (through int16 with lane shuffles, or bytes split weight by weight) ran slower
// (docs/results.md#code-notes).
struct Avx2Rows {
  WEIGHTSEP_AVX2 static void store8(__m128i q, __m256 scale, float* dst) {  // the low 8 int8 of q
    _mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), scale));
  }
  WEIGHTSEP_AVX2 static void int8(const int8_t* src, float scale, int64_t len, float* dst) {
    const __m256 s = _mm256_set1_ps(scale);
    int64_t j = 0;
    for (; j + 32 <= len; j += 32) {
      for (int64_t k = j; k < j + 32; k += 8) {  // unrolled: four independent conversions a step
        store8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + k)), s, dst + k);
      }
    }
    int8_weights(src, scale, j, len, dst);
  }
  // 16 bytes a step: nibbles split and interleaved back into weight order, less 8, as int8.
  WEIGHTSEP_AVX2 static void int4(const uint8_t* src, float scale, int64_t k0, int64_t k1, float* dst) {
    const __m256 s = _mm256_set1_ps(scale);
    const __m128i low = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
      const __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
      const __m128i q0 = _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), eight);  // weights 2k .. 2k + 15
      const __m128i q1 = _mm_sub_epi8(_mm_unpackhi_epi8(lo, hi), eight);  // weights 2k + 16 .. 2k + 31
      store8(q0, s, dst + 2 * k);
      store8(_mm_srli_si128(q0, 8), s, dst + 2 * k + 8);
      store8(q1, s, dst + 2 * k + 16);
      store8(_mm_srli_si128(q1, 8), s, dst + 2 * k + 24);
    }
    int4_bytes(src, scale, k, k1, dst);
  }
};
#endif

// Weights [j0, j1) (j0 < j1) of an int4 row, one scale: whole bytes by Rows, a lone weight at either end
// where the range starts or stops mid-byte.
template <class Rows>
void int4_weights(const uint8_t* __restrict__ src, float scale, int64_t j0, int64_t j1, float* __restrict__ dst) {
  if (j0 & 1) dst[j0] = int4_weight(src[j0 >> 1] >> 4, scale);
  Rows::int4(src, scale, (j0 + 1) >> 1, j1 >> 1, dst);
  if (j1 & 1) dst[j1 - 1] = int4_weight(src[j1 >> 1] & 15, scale);  // even, so never j0 written above
}

// The first `len` weights of row `row` of format `code`, dequantised into dst.
template <class Rows>
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
    case kInt8:
      Rows::int8(s.int8 + row * P, s.int8_scales[row], len, dst);
      break;
    case kInt4: {
      const uint8_t* src = s.int4 + row * s.int4_width;
      const float* scales = s.int4_scales + row * s.groups;
      for (int64_t g = 0; g * s.group < len; ++g) {
        int4_weights<Rows>(src, scales[g], g * s.group, std::min(len, (g + 1) * s.group), dst);
      }
      break;
    }
  }
}

// Logical pages [begin, end) of n weights into out.
template <class Rows>
void page_loop(const DequantSource& s, const int64_t* table, int64_t begin, int64_t end, int64_t n, float* out) {
  const int64_t P = s.page_size;
  for (int64_t i = begin; i < end; ++i) {  // the last page may be partial
    dequant_page<Rows>(s, table[i] >> kTableShift, table[i] & kRowMask, std::min(P, n - i * P), out + i * P);
  }
}

// Everything inlined (flatten), so the AVX2 build vectorises the float16/bfloat16 loops for AVX2 too. With
// it, int8 and bfloat16 pages cost at most what a float32 memcpy does, int4 a little more
// (bench/gather.py; docs/results.md#code-notes).
WEIGHTSEP_BASELINE void dequant_pages(const DequantSource& s, const int64_t* table, int64_t begin, int64_t end,
                                      int64_t n, float* out) {
  page_loop<PlainRows>(s, table, begin, end, n, out);
}

#ifdef WEIGHTSEP_X86_VERSIONS
WEIGHTSEP_AVX2 __attribute__((flatten)) void dequant_pages(const DequantSource& s, const int64_t* table,
                                                           int64_t begin, int64_t end, int64_t n, float* out) {
  page_loop<Avx2Rows>(s, table, begin, end, n, out);
}
#endif

}  // namespace

void gather_dequant_into_cpu(const at::Tensor& pages, const at::Tensor& scales, const at::Tensor& layout,
                             const at::Tensor& page_table, at::Tensor& out) {
  const DequantInputs in = dequant_inputs(pages, scales, layout, page_table, out);
  const DequantSource& src = in.source;
  const int64_t* table = in.table.const_data_ptr<int64_t>();
  check_entries(src, table, in.table.numel());
  const int64_t n = out.numel();
  float* dst = out.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / src.page_size);
  at::parallel_for(0, pages_used(n, src.page_size), grain,
                   [&](int64_t begin, int64_t end) { dequant_pages(src, table, begin, end, n, dst); });
}

TORCH_LIBRARY_FRAGMENT(weightsep, m) {
  m.def("gather_dequant_into(Tensor pages, Tensor scales, Tensor layout, Tensor page_table, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(weightsep, CPU, m) { m.impl("gather_dequant_into", &gather_dequant_into_cpu); }

}  // namespace weightsep
