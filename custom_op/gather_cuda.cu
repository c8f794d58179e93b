// CUDA implementations of weightsep::gather_pages / scatter_add_pages / gather_pages_into (schema in
// gather.cpp) and gather_dequant_into (schema in gather_dequant.cpp).
// The kernels live in gather_kernels.cuh; this file checks inputs, allocates, and launches them on
// the current CUDA stream of the tensors' device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "message.h"

#include "gather_kernels.cuh"

namespace weightsep {

namespace {

void check_cuda_inputs(const at::Tensor& data, const at::Tensor& page_table, int64_t n, int64_t page_size,
                       const char* op) {
  TORCH_CHECK(data.is_cuda() && page_table.is_cuda(),
              message(op, ": expected CUDA tensors, got ", data.device(), " and ", page_table.device()));
  TORCH_CHECK(data.device() == page_table.device(),
              message(op, ": tensors on different devices: ", data.device(), " and ", page_table.device()));
  TORCH_CHECK(data.scalar_type() == at::kFloat || data.scalar_type() == at::kDouble,
              message(op, ": must be float32 or float64 (as on CPU), got ", data.scalar_type()));
  check_table(page_table, n, page_size, op);
  // Row bounds are checked by a device assert in the kernel (a host check would synchronise).
}

// CUDAGuard has set the device; the runtime answers this attribute from a cache (no driver call).
// (ATen/cuda/CUDAContext.h would also give it, but pulls in cuBLAS/cuSPARSE headers.)
int max_blocks() {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return 8 * sms;
}

}  // namespace

namespace {

void gather_into(const at::Tensor& pages, const at::Tensor& page_table, int64_t n_weights, at::Tensor& flat) {
  const at::Tensor src = pages.contiguous();
  const at::Tensor table = page_table.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(pages.scalar_type(), "gather_pages_cuda", [&] {
    launch_gather_pages<scalar_t>(src.const_data_ptr<scalar_t>(), table.const_data_ptr<int64_t>(),
                                  flat.mutable_data_ptr<scalar_t>(), n_weights, pages.size(1), pages.size(0),
                                  max_blocks(), stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor gather_pages_cuda(const at::Tensor& pages, const at::Tensor& page_table, int64_t n_weights) {
  TORCH_CHECK(pages.dim() == 2, message("gather_pages: pages must be [rows, page_size], got ", pages.dim(), "-D"));
  check_cuda_inputs(pages, page_table, n_weights, pages.size(1), "gather_pages");
  const c10::cuda::CUDAGuard guard(pages.device());
  at::Tensor flat = at::empty({n_weights}, pages.options());
  gather_into(pages, page_table, n_weights, flat);
  return flat;
}

void gather_pages_into_cuda(const at::Tensor& pages, const at::Tensor& page_table, at::Tensor& out) {
  TORCH_CHECK(pages.dim() == 2, message("gather_pages_into: pages must be [rows, page_size], got ", pages.dim(), "-D"));
  TORCH_CHECK(out.dim() == 1 && out.is_contiguous(),
              message("gather_pages_into: out must be a contiguous 1-D buffer, got ", out.sizes()));
  TORCH_CHECK(out.scalar_type() == pages.scalar_type() && out.device() == pages.device(),
              message("gather_pages_into: out is ", out.scalar_type(), " on ", out.device(), " but pages ",
                      pages.scalar_type(), " on ", pages.device()));
  check_cuda_inputs(pages, page_table, out.numel(), pages.size(1), "gather_pages_into");
  const c10::cuda::CUDAGuard guard(pages.device());
  gather_into(pages, page_table, out.numel(), out);
}

at::Tensor scatter_add_pages_cuda(const at::Tensor& grad_flat, const at::Tensor& page_table, int64_t n_rows,
                                  int64_t page_size) {
  TORCH_CHECK(grad_flat.dim() == 1, message("scatter_add_pages: grad_flat must be 1-D, got ", grad_flat.dim(), "-D"));
  TORCH_CHECK(n_rows >= 0 && page_size >= 0,
              message("scatter_add_pages: n_rows and page_size must be >= 0, got ", n_rows, " and ", page_size));
  // atomicAdd: with three or more pages on one row the rounding depends on the order they land in
  at::globalContext().alertNotDeterministic("weightsep::scatter_add_pages (CUDA, atomicAdd)");
  const int64_t n = grad_flat.numel();
  check_cuda_inputs(grad_flat, page_table, n, page_size, "scatter_add_pages");
  const c10::cuda::CUDAGuard guard(grad_flat.device());
  const at::Tensor grad = grad_flat.contiguous();
  const at::Tensor table = page_table.contiguous();
  at::Tensor grad_pages = at::zeros({n_rows, page_size}, grad_flat.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_flat.scalar_type(), "scatter_add_pages_cuda", [&] {
    launch_scatter_add_pages<scalar_t>(grad.const_data_ptr<scalar_t>(), table.const_data_ptr<int64_t>(),
                                       grad_pages.mutable_data_ptr<scalar_t>(), n, page_size, n_rows, max_blocks(),
                                       stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_pages;
}

void gather_dequant_into_cuda(const at::Tensor& pages, const at::Tensor& scales, const at::Tensor& layout,
                              const at::Tensor& page_table, at::Tensor& out) {
  TORCH_CHECK(out.is_cuda(), message("gather_dequant_into: expected CUDA tensors, got out on ", out.device()));
  const c10::cuda::CUDAGuard guard(out.device());
  // pages, scales and the table on out's device; the layout on the host, read here (no copy, no sync)
  const DequantInputs in = dequant_inputs(pages, scales, layout, page_table, out);
  // Entries (codes, rows) are checked by a device assert in the kernel (a host check would synchronise).
  launch_gather_dequant(in.source, in.table.const_data_ptr<int64_t>(), out.mutable_data_ptr<float>(), out.numel(),
                        max_blocks(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TORCH_LIBRARY_IMPL(weightsep, CUDA, m) {
  m.impl("gather_pages", &gather_pages_cuda);
  m.impl("scatter_add_pages", &scatter_add_pages_cuda);
  m.impl("gather_pages_into", &gather_pages_into_cuda);
  m.impl("gather_dequant_into", &gather_dequant_into_cuda);
}

}  // namespace weightsep
