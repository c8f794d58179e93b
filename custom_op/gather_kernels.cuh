// Page-table gather and its backward (scatter-add) as plain CUDA kernels.
//
// Header-free on purpose (no ATen, no c10): nvcc can compile this alone for sm_80/sm_90 on a
// machine whose torch wheel has no CUDA headers. gather_cuda.cu wraps it with the torch glue.
//
// Layout: pages [n_rows, P] row-major; page_table [n_pages] int64 row indices; flat [n] with
// n <= n_pages * P (the last logical page may be partial). flat[j] = pages[table[j / P] * P + j % P].
//
// The dequantising gather (gather_dequant_into) reads dequant.h's DequantSource: one block per format.
#pragma once
#include <cuda_fp16.h>

#include <cassert>
#include <cstdint>

#include "dequant.h"

namespace weightsep {

constexpr int kThreads = 256;

// Grid-stride loop over the output: consecutive threads read consecutive columns of one page, so
// both the read of a page and the write of the flat vector are coalesced.
template <typename scalar_t>
__global__ void gather_pages_kernel(const scalar_t* __restrict__ pages, const int64_t* __restrict__ table,
                                    scalar_t* __restrict__ flat, int64_t n, int64_t page_size, int64_t n_rows) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = table[j / page_size];
    assert(row >= 0 && row < n_rows);
    flat[j] = pages[row * page_size + j % page_size];
  }
}

// Backward: several logical pages may map the same row, so the adds are atomic (float: sm_20+,
// double: sm_60+). grad_pages must be zeroed by the caller.
template <typename scalar_t>
__global__ void scatter_add_pages_kernel(const scalar_t* __restrict__ grad_flat, const int64_t* __restrict__ table,
                                         scalar_t* __restrict__ grad_pages, int64_t n, int64_t page_size,
                                         int64_t n_rows) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = table[j / page_size];
    assert(row >= 0 && row < n_rows);
    atomicAdd(grad_pages + row * page_size + j % page_size, grad_flat[j]);
  }
}

// One thread block per logical page (grid-stride over pages): the page's format is uniform across the
// block, so the switch never diverges; threads take consecutive weights (coalesced writes). Every
// weight is one float32 multiply q * s, as in weightsep/quant.py, so results match it bit for bit.
__global__ void gather_dequant_kernel(const DequantSource s, const int64_t* __restrict__ table,
                                      float* __restrict__ out, int64_t n) {
  const int64_t P = s.page_size;
  for (int64_t i = blockIdx.x; i * P < n; i += gridDim.x) {
    const int64_t code = table[i] >> kTableShift, row = table[i] & kRowMask;
    assert(code >= 0 && code < kFormats && row < s.rows[code]);
    const int64_t len = n - i * P < P ? n - i * P : P;  // the last page may be partial
    float* __restrict__ dst = out + i * P;
    switch (code) {
      case kFloat32:
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) dst[j] = s.float32[row * P + j];
        break;
      case kFloat16:
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
          dst[j] = __half2float(__ushort_as_half(s.float16[row * P + j]));
        }
        break;
      case kBFloat16:
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
          dst[j] = __uint_as_float(uint32_t{s.bfloat16[row * P + j]} << 16);
        }
        break;
      case kInt8: {
        const float scale = s.int8_scales[row];
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
          dst[j] = static_cast<float>(s.int8[row * P + j]) * scale;
        }
        break;
      }
      case kInt4: {
        const uint8_t* src = s.int4 + row * s.int4_width;
        const float* scales = s.int4_scales + row * s.groups;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
          const int nibble = (j & 1) ? src[j >> 1] >> 4 : src[j >> 1] & 15;
          dst[j] = static_cast<float>(nibble - 8) * scales[j / s.group];
        }
        break;
      }
    }
  }
}

inline int blocks_for(int64_t n, int max_blocks) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return (int)(b < 1 ? 1 : (b > max_blocks ? max_blocks : b));
}

// max_blocks: the caller passes a multiple of the SM count (grid-stride covers the rest).
template <typename scalar_t>
void launch_gather_pages(const scalar_t* pages, const int64_t* table, scalar_t* flat, int64_t n, int64_t page_size,
                         int64_t n_rows, int max_blocks, cudaStream_t stream) {
  if (n == 0) return;
  gather_pages_kernel<scalar_t><<<blocks_for(n, max_blocks), kThreads, 0, stream>>>(pages, table, flat, n, page_size,
                                                                                   n_rows);
}

template <typename scalar_t>
void launch_scatter_add_pages(const scalar_t* grad_flat, const int64_t* table, scalar_t* grad_pages, int64_t n,
                              int64_t page_size, int64_t n_rows, int max_blocks, cudaStream_t stream) {
  if (n == 0) return;
  scatter_add_pages_kernel<scalar_t><<<blocks_for(n, max_blocks), kThreads, 0, stream>>>(grad_flat, table, grad_pages,
                                                                                       n, page_size, n_rows);
}

// One block of kThreads per logical page, up to max_blocks (then each block takes several pages).
inline void launch_gather_dequant(const DequantSource& s, const int64_t* table, float* out, int64_t n, int max_blocks,
                                  cudaStream_t stream) {
  if (n == 0) return;
  const int64_t pages = (n + s.page_size - 1) / s.page_size;
  gather_dequant_kernel<<<(int)(pages < max_blocks ? pages : max_blocks), kThreads, 0, stream>>>(s, table, out, n);
}

}  // namespace weightsep
