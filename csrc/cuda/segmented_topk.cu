// CUDA glue of segmented_topk and segmented_topk_backward: checks and plan (shared with the CPU op,
// vtp_ext/segmented_topk.h), shared-memory plan, scratch, stream; the kernels are in
// segmented_topk.cuh, and the backward is gather_tokens' row scatter-add with D = 1.
#include <string>
#include <tuple>

#include "cuda/glue.h"
#include "cuda/scatter_rows.h"
#include "cuda/segmented_topk.cuh"
#include "vtp_ext/segmented_topk.h"

namespace vtp_ext::cuda {
namespace {

std::tuple<Tensor, Tensor, Tensor> segmented_topk_cuda(const Tensor& scores, const Tensor& offsets, const Tensor& k,
                                                       int64_t max_k, bool largest, std::string order) {
  constexpr const char* op = "vtp_ext.segmented_topk";
  check_segmented_topk_scores(scores, op);
  check_device(scores, op, "scores");
  const DeviceScope scope(scores);
  const SegmentedTopkPlan p = plan_segmented_topk(scores, offsets, k, max_k, order, op);
  const int64_t shape[2] = {p.B, max_k};
  Tensor values = torch::stable::new_empty(scores, torch::headeronly::IntHeaderOnlyArrayRef(shape, 2));
  Tensor indices =
      torch::stable::new_empty(scores, torch::headeronly::IntHeaderOnlyArrayRef(shape, 2), ScalarType::Long);
  Tensor lengths = torch::stable::to(p.lengths, scores.device());
  if (p.B == 0) return {values, indices, lengths};
  const Tensor plan = torch::stable::to(p.plan, scores.device());
  dispatch_types(scores.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const TopkLaunchPlan lp =
        plan_topk_launch<T>(p.max_segment, p.max_select, p.by_index, cucpu_limit("VTP_CUCPU_TOPK_KEY_BYTES", kTopkKeyBytes),
                            cucpu_limit("VTP_CUCPU_TOPK_SORT_BYTES", kTopkSortBytes));
    Tensor scratch;
    if (lp.needs_scratch)
      scratch = torch::stable::new_empty(scores, torch::headeronly::IntHeaderOnlyArrayRef(shape, 2), ScalarType::Int);
    check_launch(launch_segmented_topk<T>(static_cast<const T*>(scores.const_data_ptr()), scores.stride(0),
                                          scores.stride(1), plan.const_data_ptr<int64_t>(),
                                          lengths.const_data_ptr<int64_t>(), p.B, p.S,
                                          static_cast<T*>(values.mutable_data_ptr()),
                                          indices.mutable_data_ptr<int64_t>(), max_k,
                                          lp.needs_scratch ? static_cast<int32_t*>(scratch.mutable_data_ptr()) : nullptr,
                                          largest, p.by_index, lp, current_stream(scores), max_blocks(kTopkMaxBlocks)),
                 op);
  });
  return {values, indices, lengths};
}

Tensor segmented_topk_backward_cuda(const Tensor& grad_values, const Tensor& indices, int64_t L) {
  constexpr const char* op = "vtp_ext.segmented_topk_backward";
  check_segmented_topk_backward(grad_values, indices, L, op);
  check_device(grad_values, op, "grad_values");
  const DeviceScope scope(grad_values);
  const int64_t B = grad_values.size(0), K = grad_values.size(1);
  const int64_t shape[2] = {B, L};
  Tensor out = torch::stable::new_empty(grad_values, torch::headeronly::IntHeaderOnlyArrayRef(shape, 2));
  scatter_rows_cuda(grad_values, grad_values.stride(0), grad_values.stride(1), 0, indices, B, K, L, 1, out, op);
  return out;
}

}  // namespace
}  // namespace vtp_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(VTP_CUDA_NS, VTP_CUDA_KEY, m) {
  m.impl("segmented_topk", TORCH_BOX(&vtp_ext::cuda::segmented_topk_cuda));
  m.impl("segmented_topk_backward", TORCH_BOX(&vtp_ext::cuda::segmented_topk_backward_cuda));
}
