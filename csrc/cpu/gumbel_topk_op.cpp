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

cpu::GumbelArgs gumbel_args(const Tensor& logits, const GumbelCall& c, double tau, int64_t seed, bool training) {
  return cpu::GumbelArgs{logits.const_data_ptr(), logits.stride(0), logits.stride(1), nullptr, 0, 0,
                         c.k_host.const_data_ptr<int64_t>(), c.out.mutable_data_ptr(), c.B, c.N, tau, uint64_t(seed),
                         0, c.mode, training, cpu::kernel_dtype(logits.scalar_type()), nullptr};
}

// Work of one row in entries visited: N per pass over the row, k passes in the sequential mode and
// in the single-mode backward (the largest k stands for every row).
int64_t row_work(const GumbelCall& c, bool training, bool backward) {
  int64_t passes = 1;
  if (training && (c.mode == GumbelMode::kSequential || backward)) {
    const int64_t* k = c.k_host.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < c.B; ++b) passes = k[b] > passes ? k[b] : passes;
  }
  return c.N * passes;
}

void parallel_steps(int64_t n, void (*body)(void* ctx, int64_t begin, int64_t end), void* ctx) {
  torch::stable::parallel_for(0, n, 1, [&](int64_t b, int64_t e) { body(ctx, b, e); });
}

// Rows in parallel, ~256K entries per chunk (see segmented_topk_op.cpp: a second thread woken for
// less can cost a scheduler time slice on a busy machine; the eval-mode mask of [32, 576] measured
// 8.5 ms on two threads against 0.1 ms on one). With two threads or more per row, a sequential-mode
// row of a quarter of that work (~0.5 ms) or more splits its steps over the threads instead (the
// kernel's chunks of steps); false if a row held NaN or +inf logits.
template <typename Kernel>
bool gumbel_rows(cpu::GumbelArgs args, int64_t work_per_row, const Kernel& kernel) {
  constexpr int64_t kGrain = int64_t{1} << 18;
  if (args.training && args.mode == GumbelMode::kSequential && work_per_row >= kGrain / 4 &&
      2 * args.B <= int64_t(torch::stable::get_num_threads())) {
    args.parallel_steps = &parallel_steps;
    return kernel(args, 0, args.B);
  }
  std::atomic<bool> ok{true};
  torch::stable::parallel_for(0, args.B, 1 + kGrain / (work_per_row + 1), [&](int64_t b, int64_t e) {
    if (!kernel(args, b, e)) ok = false;
  });
  return ok.load();
}

Tensor gumbel_topk_cpu(const Tensor& logits, const Tensor& k, double tau, int64_t seed, std::string mode,
                       bool training) {
  constexpr const char* op = "vtp_ext.gumbel_topk";
  const GumbelCall c = prepare_gumbel_topk(nullptr, logits, k, tau, mode, op, cpu::check_cpu);
  if (c.B * c.N == 0) return c.out;
  STD_TORCH_CHECK(gumbel_rows(gumbel_args(logits, c, tau, seed, training), row_work(c, training, false),
                              cpu::kernels().gumbel_topk_fwd),
                  non_finite_logits_message(op));
  return c.out;
}

Tensor gumbel_topk_backward_cpu(const Tensor& grad, const Tensor& logits, const Tensor& k, double tau, int64_t seed,
                                std::string mode, bool training) {
  constexpr const char* op = "vtp_ext.gumbel_topk_backward";
  const GumbelCall c = prepare_gumbel_topk(&grad, logits, k, tau, mode, op, cpu::check_cpu);
  if (c.B * c.N == 0) return c.out;
  cpu::GumbelArgs args = gumbel_args(logits, c, tau, seed, training);
  args.grad = grad.const_data_ptr();
  args.grad_rs = grad.stride(0);
  args.grad_cs = grad.stride(1);
  STD_TORCH_CHECK(gumbel_rows(args, row_work(c, training, true), cpu::kernels().gumbel_topk_bwd),
                  non_finite_logits_message(op));
  return c.out;
}

Tensor gumbel_noise_cpu(const Tensor& logits, int64_t seed, int64_t step) {
  constexpr const char* op = "vtp_ext.gumbel_noise";
  Tensor noise = prepare_gumbel_noise(logits, step, op, cpu::check_cpu);
  if (logits.numel() == 0) return noise;
  cpu::GumbelArgs args{nullptr, 0, 0, nullptr, 0, 0, nullptr, noise.mutable_data_ptr(), logits.size(0),
                       logits.size(1), 1.0, uint64_t(seed), step, GumbelMode::kSequential, true,
                       cpu::kernel_dtype(logits.scalar_type()), nullptr};
  const auto& kt = cpu::kernels();
  // ~256K elements (about a millisecond) per chunk, as in segmented_topk_op.cpp: waking a second
  // thread for less can cost a scheduler time slice on a busy machine.
  torch::stable::parallel_for(0, args.B, 1 + (int64_t{1} << 18) / (args.N + 1), [&](int64_t b, int64_t e) {
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
