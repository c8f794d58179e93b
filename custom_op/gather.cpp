// weightsep::gather_pages and its backward weightsep::scatter_add_pages: the schema (defined once
// here) and the CPU kernels. The CUDA kernels are registered in gather_cuda.cu; Python picks the
// implementation by the device of the tensors, never by branching.
//
//   gather_pages(pages [R, P], page_table [n_pages] int64, n_weights) -> flat [n_weights]
//       flat = pages[page_table].reshape(-1)[:n_weights]
//   gather_pages_into(pages, page_table, out [n_weights]) -> ()
//       the same into a caller's buffer (no allocation: the switch path; not differentiable)
//   scatter_add_pages(grad_flat [n], page_table [n_pages] int64, n_rows, page_size) -> [n_rows, page_size]
//       zeros, then grad of logical page i added into row page_table[i] (summed where rows repeat)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "checks.h"
#include "message.h"

#include <cstring>

namespace weightsep {

namespace {

void check_rows(const int64_t* table, int64_t n_pages, int64_t n_rows, const char* op) {
  for (int64_t i = 0; i < n_pages; ++i) {
    TORCH_CHECK(table[i] >= 0 && table[i] < n_rows,
                message(op, ": page_table[", i, "] = ", table[i], " is out of range for ", n_rows, " page rows"));
  }
}

void check_gather_inputs(const at::Tensor& pages, const at::Tensor& page_table, int64_t n_weights) {
  TORCH_CHECK(pages.dim() == 2, message("gather_pages: pages must be [rows, page_size], got ", pages.dim(), "-D"));
  TORCH_CHECK(pages.scalar_type() == at::kFloat || pages.scalar_type() == at::kDouble,
              message("gather_pages: pages must be float32 or float64 (as on CUDA), got ", pages.scalar_type()));
  TORCH_CHECK(page_table.device() == pages.device(),
              message("gather_pages: page_table is on ", page_table.device(), " but pages on ", pages.device()));
  check_table(page_table, n_weights, pages.size(1), "gather_pages");
}

// flat[j] = pages[table[j / P] * P + j % P] for j < n: one memcpy per logical page, parallel over pages.
void gather_pages_kernel(const at::Tensor& pages, const at::Tensor& page_table, int64_t n_weights, at::Tensor& flat) {
  const int64_t n_rows = pages.size(0), page_size = pages.size(1);
  const at::Tensor src_t = pages.contiguous();
  const at::Tensor table_t = page_table.contiguous();
  const int64_t* table = table_t.const_data_ptr<int64_t>();
  const int64_t used = pages_used(n_weights, page_size);
  check_rows(table, table_t.numel(), n_rows, "gather_pages");
  const auto* src = static_cast<const char*>(src_t.const_data_ptr());
  auto* dst = static_cast<char*>(flat.mutable_data_ptr());
  const int64_t elem = pages.element_size();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, page_size));
  at::parallel_for(0, used, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t len = std::min(page_size, n_weights - i * page_size);  // the last page may be partial
      std::memcpy(dst + i * page_size * elem, src + table[i] * page_size * elem, len * elem);
    }
  });
}

}  // namespace

at::Tensor gather_pages_cpu(const at::Tensor& pages, const at::Tensor& page_table, int64_t n_weights) {
  check_gather_inputs(pages, page_table, n_weights);
  at::Tensor flat = at::empty({n_weights}, pages.options());
  gather_pages_kernel(pages, page_table, n_weights, flat);
  return flat;
}

void gather_pages_into_cpu(const at::Tensor& pages, const at::Tensor& page_table, at::Tensor& out) {
  TORCH_CHECK(out.dim() == 1 && out.is_contiguous(),
              message("gather_pages_into: out must be a contiguous 1-D buffer, got ", out.sizes()));
  TORCH_CHECK(out.scalar_type() == pages.scalar_type() && out.device() == pages.device(),
              message("gather_pages_into: out is ", out.scalar_type(), " on ", out.device(), " but pages ",
                      pages.scalar_type(), " on ", pages.device()));
  check_gather_inputs(pages, page_table, out.numel());
  gather_pages_kernel(pages, page_table, out.numel(), out);
}

at::Tensor scatter_add_pages_cpu(const at::Tensor& grad_flat, const at::Tensor& page_table, int64_t n_rows,
                                 int64_t page_size) {
  TORCH_CHECK(grad_flat.dim() == 1, message("scatter_add_pages: grad_flat must be 1-D, got ", grad_flat.dim(), "-D"));
  TORCH_CHECK(
      grad_flat.scalar_type() == at::kFloat || grad_flat.scalar_type() == at::kDouble,
      message("scatter_add_pages: grad_flat must be float32 or float64 (as on CUDA), got ", grad_flat.scalar_type()));
  TORCH_CHECK(
      page_table.device() == grad_flat.device(),
      message("scatter_add_pages: page_table is on ", page_table.device(), " but grad_flat on ", grad_flat.device()));
  TORCH_CHECK(n_rows >= 0 && page_size >= 0,
              message("scatter_add_pages: n_rows and page_size must be >= 0, got ", n_rows, " and ", page_size));
  const int64_t n = grad_flat.numel();
  check_table(page_table, n, page_size, "scatter_add_pages");
  const at::Tensor grad_t = grad_flat.contiguous();
  const at::Tensor table_t = page_table.contiguous();
  const int64_t* table = table_t.const_data_ptr<int64_t>();
  check_rows(table, table_t.numel(), n_rows, "scatter_add_pages");

  at::Tensor grad_pages = at::zeros({n_rows, page_size}, grad_flat.options());
  const int64_t used = pages_used(n, page_size);
  // Parallel over columns, serial over pages: two logical pages that map one row never race, and
  // every element sums its contributions in page order (deterministic).
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, used));
  AT_DISPATCH_FLOATING_TYPES(grad_flat.scalar_type(), "scatter_add_pages_cpu", [&] {
    const scalar_t* g = grad_t.const_data_ptr<scalar_t>();
    scalar_t* out = grad_pages.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, page_size, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t i = 0; i < used; ++i) {
        const int64_t hi = std::min(c1, n - i * page_size);
        scalar_t* __restrict__ row = out + table[i] * page_size;  // grad and grad_pages never alias: vectorise
        const scalar_t* __restrict__ page = g + i * page_size;
        for (int64_t c = c0; c < hi; ++c) row[c] += page[c];
      }
    });
  });
  return grad_pages;
}

// Autograd, in C++ so a training step pays no Python per call (register_autograd cost more per
// gather+backward than the two kernels, docs/results.md#code-notes). Device-agnostic: the inner calls re-dispatch
// to the CPU or CUDA kernels. Each op is the other's backward, so double backward works too.
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_gather(const at::Tensor& pages, const at::Tensor& page_table, const c10::SymInt& n_weights) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("weightsep::gather_pages", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt)>();
  return op.call(pages, page_table, n_weights);
}

at::Tensor call_scatter(const at::Tensor& grad_flat, const at::Tensor& page_table, const c10::SymInt& n_rows,
                        const c10::SymInt& page_size) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("weightsep::scatter_add_pages", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt)>();
  return op.call(grad_flat, page_table, n_rows, page_size);
}

class GatherPages : public torch::autograd::Function<GatherPages> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& pages, const at::Tensor& page_table,
                            c10::SymInt n_weights) {
    TORCH_CHECK(pages.dim() == 2, message("gather_pages: pages must be [rows, page_size], got ", pages.dim(), "-D"));
    ctx->save_for_backward({page_table});
    ctx->saved_data["n_rows"] = pages.sym_size(0);
    ctx->saved_data["page_size"] = pages.sym_size(1);
    at::AutoDispatchBelowADInplaceOrView below;
    return call_gather(pages, page_table, n_weights);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor page_table = ctx->get_saved_variables()[0];
    return {call_scatter(grads[0], page_table, ctx->saved_data["n_rows"].toSymInt(),
                         ctx->saved_data["page_size"].toSymInt()),
            at::Tensor(), at::Tensor()};
  }
};

class ScatterAddPages : public torch::autograd::Function<ScatterAddPages> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_flat, const at::Tensor& page_table,
                            c10::SymInt n_rows, c10::SymInt page_size) {
    ctx->save_for_backward({page_table});
    ctx->saved_data["n_weights"] = grad_flat.sym_size(0);
    at::AutoDispatchBelowADInplaceOrView below;
    return call_scatter(grad_flat, page_table, n_rows, page_size);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor page_table = ctx->get_saved_variables()[0];
    return {call_gather(grads[0], page_table, ctx->saved_data["n_weights"].toSymInt()), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor gather_pages_autograd(const at::Tensor& pages, const at::Tensor& page_table, c10::SymInt n_weights) {
  return GatherPages::apply(pages, page_table, std::move(n_weights));
}

at::Tensor scatter_add_pages_autograd(const at::Tensor& grad_flat, const at::Tensor& page_table, c10::SymInt n_rows,
                                      c10::SymInt page_size) {
  return ScatterAddPages::apply(grad_flat, page_table, std::move(n_rows), std::move(page_size));
}

}  // namespace

TORCH_LIBRARY(weightsep, m) {
  m.def("gather_pages(Tensor pages, Tensor page_table, SymInt n_weights) -> Tensor");
  m.def("scatter_add_pages(Tensor grad_flat, Tensor page_table, SymInt n_rows, SymInt page_size) -> Tensor");
  m.def("gather_pages_into(Tensor pages, Tensor page_table, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(weightsep, CPU, m) {
  m.impl("gather_pages", &gather_pages_cpu);
  m.impl("scatter_add_pages", &scatter_add_pages_cpu);
  m.impl("gather_pages_into", &gather_pages_into_cpu);
}

TORCH_LIBRARY_IMPL(weightsep, Autograd, m) {
  m.impl("gather_pages", &gather_pages_autograd);
  m.impl("scatter_add_pages", &scatter_add_pages_autograd);
}

}  // namespace weightsep
