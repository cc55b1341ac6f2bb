// CUDA glue of gather_tokens and gather_tokens_backward: checks (shared with the CPU op), scratch,
// stream, the index-range flag; the kernels are in gather_tokens.cuh.
#include "cuda/gather_tokens.cuh"
#include "cuda/glue.h"
#include "cuda/scatter_rows.h"
#include "vtp_ext/gather_tokens.h"

namespace vtp_ext::cuda {
namespace {

Tensor new_flag(const Tensor& like) {
  const int64_t one[1] = {1};
  return torch::stable::new_zeros(like, torch::headeronly::IntHeaderOnlyArrayRef(one, 1), ScalarType::Int);
}

Tensor gather_tokens_cuda(const Tensor& x, const Tensor& indices) {
  constexpr const char* op = "vtp_ext.gather_tokens";
  check_gather_tokens(x, indices, op);
  check_device(x, op, "x");
  const DeviceScope scope(x);
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), K = indices.size(1);
  const int64_t shape[3] = {B, K, D};
  Tensor out = torch::stable::new_empty(x, torch::headeronly::IntHeaderOnlyArrayRef(shape, 3));
  if (B * K == 0) return out;
  Tensor bad = new_flag(x);
  dispatch_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(launch_gather_rows<T>(static_cast<const T*>(x.const_data_ptr()), x.stride(0), x.stride(1),
                                       x.stride(2), indices.const_data_ptr<int64_t>(), indices.stride(0),
                                       indices.stride(1), static_cast<T*>(out.mutable_data_ptr()), B, K, L, D,
                                       static_cast<int32_t*>(bad.mutable_data_ptr()), current_stream(x),
                                       max_blocks(kRowsMaxBlocks)),
                 op);
  });
  check_device_flag(bad, index_range_message(op, L));
  return out;
}

}  // namespace

// Shared with segmented_topk_backward (csrc/cuda/segmented_topk.cu): out [B, L, D] from src [B, K, D].
void scatter_rows_cuda(const Tensor& src, int64_t src_sb, int64_t src_sk, int64_t src_sd, const Tensor& indices,
                       int64_t B, int64_t K, int64_t L, int64_t D, Tensor& out, const char* op) {
  if (B == 0) return;
  const int64_t map_shape[2] = {2, B * L};
  Tensor map =
      torch::stable::new_empty(src, torch::headeronly::IntHeaderOnlyArrayRef(map_shape, 2), ScalarType::Int);
  int32_t* first = static_cast<int32_t*>(map.mutable_data_ptr());
  Tensor bad = new_flag(src);
  dispatch_types(src.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(launch_scatter_rows<T>(static_cast<const T*>(src.const_data_ptr()), src_sb, src_sk, src_sd,
                                        indices.const_data_ptr<int64_t>(), indices.stride(0), indices.stride(1),
                                        first, first + B * L, static_cast<T*>(out.mutable_data_ptr()), B, K, L, D,
                                        static_cast<int32_t*>(bad.mutable_data_ptr()), current_stream(src),
                                        max_blocks(kRowsMaxBlocks)),
                 op);
  });
  check_device_flag(bad, index_range_message(op, L));
}

namespace {

Tensor gather_tokens_backward_cuda(const Tensor& grad, const Tensor& indices, int64_t L) {
  constexpr const char* op = "vtp_ext.gather_tokens_backward";
  check_gather_tokens_backward(grad, indices, L, op);
  check_device(grad, op, "grad");
  const DeviceScope scope(grad);
  const int64_t B = grad.size(0), K = grad.size(1), D = grad.size(2);
  const int64_t shape[3] = {B, L, D};
  Tensor out = torch::stable::new_empty(grad, torch::headeronly::IntHeaderOnlyArrayRef(shape, 3));
  scatter_rows_cuda(grad, grad.stride(0), grad.stride(1), grad.stride(2), indices, B, K, L, D, out, op);
  return out;
}

}  // namespace
}  // namespace vtp_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(VTP_CUDA_NS, VTP_CUDA_KEY, m) {
  m.impl("gather_tokens", TORCH_BOX(&vtp_ext::cuda::gather_tokens_cuda));
  m.impl("gather_tokens_backward", TORCH_BOX(&vtp_ext::cuda::gather_tokens_backward_cuda));
}
