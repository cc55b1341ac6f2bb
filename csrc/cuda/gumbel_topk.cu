// CUDA glue of gumbel_topk, gumbel_topk_backward, gumbel_noise and philox4x32_10: checks (shared with
// the CPU ops, vtp_ext/gumbel_topk.h), k on the device, shared-memory plan and scratch, the NaN/+inf
// flag; the kernels are in gumbel_topk.cuh.
#include <string>

#include "cuda/glue.h"
#include "cuda/gumbel_topk.cuh"
#include "vtp_ext/gumbel_topk.h"

namespace vtp_ext::cuda {
namespace {

Tensor new_flag(const Tensor& like) {
  const int64_t one[1] = {1};
  return torch::stable::new_zeros(like, torch::headeronly::IntHeaderOnlyArrayRef(one, 1), ScalarType::Int);
}

Tensor new_buffer(const Tensor& like, int64_t n, ScalarType dtype) {
  const int64_t size[1] = {n};
  return torch::stable::new_empty(like, torch::headeronly::IntHeaderOnlyArrayRef(size, 1), dtype);
}

int64_t smem_budget() { return cucpu_limit("VTP_CUCPU_GUMBEL_SMEM_BYTES", kGumbelSmemBytes); }

Tensor gumbel_topk_cuda(const Tensor& logits, const Tensor& k, double tau, int64_t seed, std::string mode,
                        bool training) {
  constexpr const char* op = "vtp_ext.gumbel_topk";
  const GumbelCall c = prepare_gumbel_topk(nullptr, logits, k, tau, mode, op, check_device);
  const DeviceScope scope(logits);
  const Tensor& k_host = c.k_host;
  const GumbelMode m = c.mode;
  const int64_t B = c.B, N = c.N;
  Tensor mask = c.out;
  if (B * N == 0) return mask;
  const Tensor k_dev = torch::stable::to(k_host, logits.device());
  const bool sequential = m == GumbelMode::kSequential && training;
  Tensor bad = new_flag(logits);
  dispatch_types(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_of<T>;
    const GumbelLaunchPlan lp = plan_gumbel_launch<acc_t>(N, sequential ? 2 : 1, sequential, smem_budget());
    Tensor scratch, picked;
    if (!lp.in_smem) {
      scratch = new_buffer(logits, B * N * (sequential ? 2 : 1), gumbel_acc_type(logits));
      if (sequential) picked = new_buffer(logits, B * N, ScalarType::Byte);
    }
    check_launch(launch_gumbel_topk_fwd<T>(
                     static_cast<const T*>(logits.const_data_ptr()), logits.stride(0), logits.stride(1),
                     k_dev.const_data_ptr<int64_t>(), static_cast<T*>(mask.mutable_data_ptr()), B, N, uint64_t(seed),
                     m == GumbelMode::kSequential, training, lp,
                     lp.in_smem ? nullptr : static_cast<acc_t*>(scratch.mutable_data_ptr()),
                     lp.in_smem || !sequential ? nullptr : static_cast<uint8_t*>(picked.mutable_data_ptr()),
                     static_cast<int32_t*>(bad.mutable_data_ptr()), current_stream(logits),
                     max_blocks(kGumbelMaxBlocks)),
                 op);
  });
  check_device_flag(bad, non_finite_logits_message(op));
  return mask;
}

Tensor gumbel_topk_backward_cuda(const Tensor& grad, const Tensor& logits, const Tensor& k, double tau, int64_t seed,
                                 std::string mode, bool training) {
  constexpr const char* op = "vtp_ext.gumbel_topk_backward";
  const GumbelCall c = prepare_gumbel_topk(&grad, logits, k, tau, mode, op, check_device);
  const DeviceScope scope(logits);
  const Tensor& k_host = c.k_host;
  const int64_t B = c.B, N = c.N;
  Tensor out = c.out;
  if (B * N == 0) return out;
  const GumbelMode m = c.mode;
  const Tensor k_dev = torch::stable::to(k_host, logits.device());
  const bool sequential = m == GumbelMode::kSequential;
  // single mode: checkpoints + one segment of softmaxes per row, sized for the largest k
  int64_t history_rows = 0;
  if (!sequential && training) {
    const int64_t* kh = k_host.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      if (kh[b] == 0) continue;
      const int64_t c = ceil_sqrt(kh[b]), rows = (kh[b] + c - 1) / c + c;
      history_rows = rows > history_rows ? rows : history_rows;
    }
  }
  Tensor bad = new_flag(logits);
  dispatch_types(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_of<T>;
    const GumbelLaunchPlan lp = plan_gumbel_launch<acc_t>(N, 4, sequential, smem_budget());
    Tensor scratch, picked, history;
    if (!lp.in_smem) {
      scratch = new_buffer(logits, B * N * 4, gumbel_acc_type(logits));
      if (sequential) picked = new_buffer(logits, B * N, ScalarType::Byte);
    }
    if (history_rows > 0) history = new_buffer(logits, B * history_rows * N, gumbel_acc_type(logits));
    check_launch(launch_gumbel_topk_bwd<T>(
                     static_cast<const T*>(grad.const_data_ptr()), grad.stride(0), grad.stride(1),
                     static_cast<const T*>(logits.const_data_ptr()), logits.stride(0), logits.stride(1),
                     k_dev.const_data_ptr<int64_t>(), static_cast<T*>(out.mutable_data_ptr()), B, N, tau,
                     uint64_t(seed), sequential, training, lp,
                     lp.in_smem ? nullptr : static_cast<acc_t*>(scratch.mutable_data_ptr()),
                     lp.in_smem || !sequential ? nullptr : static_cast<uint8_t*>(picked.mutable_data_ptr()),
                     history_rows > 0 ? static_cast<acc_t*>(history.mutable_data_ptr()) : nullptr, history_rows,
                     static_cast<int32_t*>(bad.mutable_data_ptr()), current_stream(logits),
                     max_blocks(kGumbelMaxBlocks)),
                 op);
  });
  check_device_flag(bad, non_finite_logits_message(op));
  return out;
}

Tensor gumbel_noise_cuda(const Tensor& logits, int64_t seed, int64_t step) {
  constexpr const char* op = "vtp_ext.gumbel_noise";
  Tensor noise = prepare_gumbel_noise(logits, step, op, check_device);
  const DeviceScope scope(logits);
  const int64_t B = logits.size(0), N = logits.size(1);
  cudaError_t err;
  if (logits.scalar_type() == ScalarType::Double) {
    err = launch_gumbel_noise<double>(static_cast<double*>(noise.mutable_data_ptr()), B, N, uint64_t(seed), step,
                                      current_stream(logits), max_blocks(kGumbelMaxBlocks));
  } else {
    err = launch_gumbel_noise<float>(static_cast<float*>(noise.mutable_data_ptr()), B, N, uint64_t(seed), step,
                                     current_stream(logits), max_blocks(kGumbelMaxBlocks));
  }
  check_launch(err, op);
  return noise;
}

Tensor philox4x32_10_cuda(const Tensor& counter, const Tensor& key) {
  constexpr const char* op = "vtp_ext.philox4x32_10";
  check_philox_inputs(counter, key, op);  // validates the words on the host
  check_device(counter, op, "counter");
  const DeviceScope scope(counter);
  const Tensor c = torch::stable::contiguous(counter), kk = torch::stable::contiguous(key);
  Tensor out = torch::stable::new_empty(counter, counter.sizes());
  check_launch(launch_philox(c.const_data_ptr<int64_t>(), kk.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(),
                             counter.size(0), current_stream(counter), max_blocks(kGumbelMaxBlocks)),
               op);
  return out;
}

}  // namespace
}  // namespace vtp_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(VTP_CUDA_NS, VTP_CUDA_KEY, m) {
  m.impl("gumbel_topk", TORCH_BOX(&vtp_ext::cuda::gumbel_topk_cuda));
  m.impl("gumbel_topk_backward", TORCH_BOX(&vtp_ext::cuda::gumbel_topk_backward_cuda));
  m.impl("gumbel_noise", TORCH_BOX(&vtp_ext::cuda::gumbel_noise_cuda));
  m.impl("philox4x32_10", TORCH_BOX(&vtp_ext::cuda::philox4x32_10_cuda));
}
