// CPU glue of gather_tokens and gather_tokens_backward: checks (shared with CUDA,
// vtp_ext/gather_tokens.h), threading; the kernels are in gather_tokens_kernels.h.
#include <torch/csrc/stable/ops.h>

#include <atomic>

#include "cpu/isa.h"
#include "cpu/glue.h"
#include "cpu/scatter_rows.h"
#include "vtp_ext/gather_tokens.h"

namespace vtp_ext {
namespace {

// About 64K elements per task, as token_saliency.
int64_t grain_rows(int64_t D) { return D > 0 ? (int64_t{1} << 16) / D + 1 : int64_t{1} << 16; }

Tensor gather_tokens_cpu(const Tensor& x, const Tensor& indices) {
  constexpr const char* op = "vtp_ext.gather_tokens";
  check_gather_tokens(x, indices, op);
  cpu::check_cpu(x, op, "x");
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), K = indices.size(1);
  const int64_t shape[3] = {B, K, D};
  Tensor out = torch::stable::new_empty(x, torch::headeronly::IntHeaderOnlyArrayRef(shape, 3));
  if (B * K == 0) return out;
  const cpu::GatherRowsArgs args{x.const_data_ptr(), x.stride(0), x.stride(1), x.stride(2),
                                 indices.const_data_ptr<int64_t>(), indices.stride(0), indices.stride(1),
                                 out.mutable_data_ptr(), B, K, L, D, cpu::kernel_dtype(x.scalar_type())};
  const auto& kt = cpu::kernels();
  std::atomic<bool> ok{true};
  torch::stable::parallel_for(0, B * K, grain_rows(D), [&](int64_t b, int64_t e) {
    if (!kt.gather_rows(args, b, e)) ok = false;
  });
  STD_TORCH_CHECK(ok.load(), index_range_message(op, L));
  return out;
}

Tensor gather_tokens_backward_cpu(const Tensor& grad, const Tensor& indices, int64_t L) {
  constexpr const char* op = "vtp_ext.gather_tokens_backward";
  check_gather_tokens_backward(grad, indices, L, op);
  cpu::check_cpu(grad, op, "grad");
  const int64_t B = grad.size(0), K = grad.size(1), D = grad.size(2);
  const int64_t shape[3] = {B, L, D};
  Tensor out = torch::stable::new_empty(grad, torch::headeronly::IntHeaderOnlyArrayRef(shape, 3));
  cpu::scatter_rows(grad, grad.stride(0), grad.stride(1), grad.stride(2), indices, B, K, L, D, out, op);
  return out;
}

}  // namespace
}  // namespace vtp_ext

STABLE_TORCH_LIBRARY_IMPL(vtp_ext, CPU, m) {
  m.impl("gather_tokens", TORCH_BOX(&vtp_ext::gather_tokens_cpu));
  m.impl("gather_tokens_backward", TORCH_BOX(&vtp_ext::gather_tokens_backward_cpu));
}
