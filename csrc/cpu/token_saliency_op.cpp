// CPU glue of token_saliency: checks, geometry, threading; the kernels are in
// token_saliency_kernels.h (compiled per ISA).
#include <torch/csrc/stable/ops.h>

#include "cpu/glue.h"
#include "vtp_ext/token_saliency.h"

namespace vtp_ext {
namespace {

using cpu::check_cpu;
using cpu::kernel_dtype;

// About 64K elements per task: enough work to amortise a task, small enough to balance 2+ cores.
int64_t grain_rows(int64_t D) { return D > 0 ? (int64_t{1} << 16) / D + 1 : int64_t{1} << 16; }

Tensor token_saliency_cpu(const Tensor& x, std::string method, int64_t correction) {
  constexpr const char* op = "vtp_ext.token_saliency";
  const SaliencyMethod m = check_token_saliency(x, method, correction, op);
  check_cpu(x, op, "x");
  Tensor out = empty_leading(x, 1, x.scalar_type());
  const int64_t n = num_rows(x, 1);
  if (n == 0) return out;
  const Rows xr = rows_of(x, 1);
  const cpu::TokenSaliencyFwdArgs args{xr.t.const_data_ptr(), out.mutable_data_ptr(), xr.idx,
                                       x.size(x.dim() - 1), correction, m, kernel_dtype(x.scalar_type())};
  const auto& k = cpu::kernels();
  torch::stable::parallel_for(0, n, grain_rows(args.D), [&](int64_t b, int64_t e) {
    k.token_saliency_fwd(args, b, e);
  });
  return out;
}

Tensor token_saliency_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& out,
                                   std::string method, int64_t correction) {
  constexpr const char* op = "vtp_ext.token_saliency_backward";
  const SaliencyMethod m = check_token_saliency_backward(grad, x, out, method, correction, op);
  check_cpu(x, op, "x");
  Tensor grad_x = torch::stable::new_empty(x, x.sizes());
  const int64_t n = num_rows(x, 1);
  if (n == 0 || x.size(x.dim() - 1) == 0) return grad_x;
  const Rows gr = rows_of(grad, 0), xr = rows_of(x, 1), outr = rows_of(out, 0);
  const cpu::TokenSaliencyBwdArgs args{gr.t.const_data_ptr(), xr.t.const_data_ptr(),
                                       outr.t.const_data_ptr(), grad_x.mutable_data_ptr(),
                                       gr.idx, xr.idx, outr.idx, x.size(x.dim() - 1), correction, m,
                                       kernel_dtype(x.scalar_type())};
  const auto& k = cpu::kernels();
  torch::stable::parallel_for(0, n, grain_rows(args.D), [&](int64_t b, int64_t e) {
    k.token_saliency_bwd(args, b, e);
  });
  return grad_x;
}

}  // namespace
}  // namespace vtp_ext

STABLE_TORCH_LIBRARY_IMPL(vtp_ext, CPU, m) {
  m.impl("token_saliency", TORCH_BOX(&vtp_ext::token_saliency_cpu));
  m.impl("token_saliency_backward", TORCH_BOX(&vtp_ext::token_saliency_backward_cpu));
}
