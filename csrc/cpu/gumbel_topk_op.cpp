// CPU glue of gumbel_topk, gumbel_topk_backward, gumbel_noise and philox4x32_10: checks (shared with
// CUDA, vtp_ext/gumbel_topk.h), threading; the kernels are in gumbel_topk_kernels.h.
#include <torch/csrc/stable/ops.h>

#include <atomic>
#include <string>

#include "cpu/isa.h"
#include "cpu/glue.h"
#include "vtp_ext/gumbel_math.h"
#include "vtp_ext/gumbel_topk.h"

namespace vtp_ext {
namespace {

cpu::GumbelArgs gumbel_args(const Tensor& logits, const Tensor& k_host, double tau, int64_t seed,
                            GumbelMode mode, bool training, Tensor& out) {
  return cpu::GumbelArgs{logits.const_data_ptr(), logits.stride(0), logits.stride(1), nullptr, 0, 0,
                         k_host.const_data_ptr<int64_t>(), out.mutable_data_ptr(), logits.size(0), logits.size(1),
                         tau, uint64_t(seed), 0, mode, training, cpu::kernel_dtype(logits.scalar_type())};
}

Tensor gumbel_topk_cpu(const Tensor& logits, const Tensor& k, double tau, int64_t seed, std::string mode,
                       bool training) {
  constexpr const char* op = "vtp_ext.gumbel_topk";
  GumbelMode m;
  const Tensor k_host = check_gumbel_topk(logits, k, tau, mode, op, &m);
  cpu::check_cpu(logits, op, "logits");
  Tensor mask = torch::stable::new_empty(logits, logits.sizes());
  if (logits.numel() == 0) return mask;
  const cpu::GumbelArgs args = gumbel_args(logits, k_host, tau, seed, m, training, mask);
  const auto& kt = cpu::kernels();
  std::atomic<bool> ok{true};
  torch::stable::parallel_for(0, args.B, 1, [&](int64_t b, int64_t e) {
    if (!kt.gumbel_topk_fwd(args, b, e)) ok = false;
  });
  STD_TORCH_CHECK(ok.load(), non_finite_logits_message(op));
  return mask;
}

Tensor gumbel_topk_backward_cpu(const Tensor& grad, const Tensor& logits, const Tensor& k, double tau, int64_t seed,
                                std::string mode, bool training) {
  constexpr const char* op = "vtp_ext.gumbel_topk_backward";
  GumbelMode m;
  const Tensor k_host = check_gumbel_topk(logits, k, tau, mode, op, &m);
  check_gumbel_grad(grad, logits, op);
  cpu::check_cpu(logits, op, "logits");
  Tensor grad_logits = torch::stable::new_empty(logits, logits.sizes());
  if (logits.numel() == 0) return grad_logits;
  cpu::GumbelArgs args = gumbel_args(logits, k_host, tau, seed, m, training, grad_logits);
  args.grad = grad.const_data_ptr();
  args.grad_rs = grad.stride(0);
  args.grad_cs = grad.stride(1);
  const auto& kt = cpu::kernels();
  std::atomic<bool> ok{true};
  torch::stable::parallel_for(0, args.B, 1, [&](int64_t b, int64_t e) {
    if (!kt.gumbel_topk_bwd(args, b, e)) ok = false;
  });
  STD_TORCH_CHECK(ok.load(), non_finite_logits_message(op));
  return grad_logits;
}

Tensor gumbel_noise_cpu(const Tensor& logits, int64_t seed, int64_t step) {
  constexpr const char* op = "vtp_ext.gumbel_noise";
  check_gumbel_logits(logits, op);
  check_gumbel_step(step, op);
  cpu::check_cpu(logits, op, "logits");
  const ScalarType noise_type = logits.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  Tensor noise = torch::stable::new_empty(logits, logits.sizes(), noise_type);
  if (logits.numel() == 0) return noise;
  Tensor no_k;
  cpu::GumbelArgs args{nullptr, 0, 0, nullptr, 0, 0, nullptr, noise.mutable_data_ptr(), logits.size(0),
                       logits.size(1), 1.0, uint64_t(seed), step, GumbelMode::kSequential, true,
                       cpu::kernel_dtype(logits.scalar_type())};
  const auto& kt = cpu::kernels();
  torch::stable::parallel_for(0, args.B, 1 + 4096 / (args.N + 1), [&](int64_t b, int64_t e) {
    kt.gumbel_noise(args, b, e);
  });
  return noise;
}

// A utility, not a kernel: known-answer tests of the generator behind the noise.
Tensor philox4x32_10_cpu(const Tensor& counter, const Tensor& key) {
  constexpr const char* op = "vtp_ext.philox4x32_10";
  const PhiloxInputs in = check_philox_inputs(counter, key, op);
  cpu::check_cpu(counter, op, "counter");
  Tensor out = torch::stable::new_empty(counter, counter.sizes());
  philox_on_host(in, out.mutable_data_ptr<int64_t>());
  return out;
}

}  // namespace
}  // namespace vtp_ext

STABLE_TORCH_LIBRARY_IMPL(vtp_ext, CPU, m) {
  m.impl("gumbel_topk", TORCH_BOX(&vtp_ext::gumbel_topk_cpu));
  m.impl("gumbel_topk_backward", TORCH_BOX(&vtp_ext::gumbel_topk_backward_cpu));
  m.impl("gumbel_noise", TORCH_BOX(&vtp_ext::gumbel_noise_cpu));
  m.impl("philox4x32_10", TORCH_BOX(&vtp_ext::philox4x32_10_cpu));
}
