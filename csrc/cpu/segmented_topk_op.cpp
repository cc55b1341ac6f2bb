// CPU glue of segmented_topk and segmented_topk_backward: checks and plan (shared with CUDA,
// vtp_ext/segmented_topk.h), threading; the kernels are in segmented_topk_kernels.h and
// gather_tokens_kernels.h (the backward is gather_tokens' scatter-add with D = 1).
#include <torch/csrc/stable/ops.h>

#include <string>
#include <tuple>

#include "cpu/isa.h"
#include "cpu/glue.h"
#include "cpu/scatter_rows.h"
#include "vtp_ext/gather_tokens.h"
#include "vtp_ext/segmented_topk.h"

namespace vtp_ext {
namespace {

std::tuple<Tensor, Tensor, Tensor> segmented_topk_cpu(const Tensor& scores, const Tensor& offsets, const Tensor& k,
                                                      int64_t max_k, bool largest, std::string order) {
  constexpr const char* op = "vtp_ext.segmented_topk";
  check_segmented_topk_scores(scores, op);
  cpu::check_cpu(scores, op, "scores");
  const SegmentedTopkPlan p = plan_segmented_topk(scores, offsets, k, max_k, order, op);
  const int64_t shape[2] = {p.B, max_k};
  Tensor values = torch::stable::new_empty(scores, torch::headeronly::IntHeaderOnlyArrayRef(shape, 2));
  Tensor indices =
      torch::stable::new_empty(scores, torch::headeronly::IntHeaderOnlyArrayRef(shape, 2), ScalarType::Long);
  if (p.B == 0 || (p.S == 0 && max_k == 0)) return {values, indices, p.lengths};
  if (p.S == 0) {  // no segment task to pad the rows
    torch::stable::zero_(values);
    torch::stable::fill_(indices, -1.0);
    return {values, indices, p.lengths};
  }
  const cpu::SegmentedTopkArgs args{scores.const_data_ptr(), scores.stride(0), scores.stride(1), p.offsets(),
                                    p.seg_k(), p.seg_start(), p.lengths.const_data_ptr<int64_t>(),
                                    values.mutable_data_ptr(), indices.mutable_data_ptr<int64_t>(), p.B, p.S, max_k,
                                    largest, p.by_index, cpu::kernel_dtype(scores.scalar_type())};
  const auto& kt = cpu::kernels();
  // A task costs about its segment length (~3-5 ns per entry, more with order="score"). ~8K entries
  // (~30 us, torch's own grain for cheap element-wise work is 32K elements) per parallel chunk put the
  // issue's shapes ([32, 576] per-sample budgets, the [8, 5440] pyramid) on both threads: measured on
  // the idle 2-core machine, 122 -> 73 us and 221 -> 119 us. The cost: on a machine whose other cores
  // are busy, the second thread may wait for a scheduler time slice (an earlier session measured 15 ms
  // for the pyramid that way), as any parallel torch op does.
  const int64_t grain = 1 + (int64_t{1} << 13) / (p.L / p.S + 1);
  torch::stable::parallel_for(0, p.B * p.S, grain, [&](int64_t b, int64_t e) { kt.segmented_topk(args, b, e); });
  return {values, indices, p.lengths};
}

// grad_scores[b, indices[b, j]] += grad_values[b, j]: gather_tokens' scatter-add with D = 1.
Tensor segmented_topk_backward_cpu(const Tensor& grad_values, const Tensor& indices, int64_t L) {
  constexpr const char* op = "vtp_ext.segmented_topk_backward";
  check_segmented_topk_backward(grad_values, indices, L, op);
  cpu::check_cpu(grad_values, op, "grad_values");
  const int64_t B = grad_values.size(0), K = grad_values.size(1);
  const int64_t shape[2] = {B, L};
  Tensor out = torch::stable::new_empty(grad_values, torch::headeronly::IntHeaderOnlyArrayRef(shape, 2));
  cpu::scatter_rows(grad_values, grad_values.stride(0), grad_values.stride(1), 0, indices, B, K, L, 1, out, op);
  return out;
}

}  // namespace
}  // namespace vtp_ext

STABLE_TORCH_LIBRARY_IMPL(vtp_ext, CPU, m) {
  m.impl("segmented_topk", TORCH_BOX(&vtp_ext::segmented_topk_cpu));
  m.impl("segmented_topk_backward", TORCH_BOX(&vtp_ext::segmented_topk_backward_cpu));
}
