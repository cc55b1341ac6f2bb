// CUDA glue of token_saliency: checks (shared with the CPU op), geometry, stream; the kernels are in
// token_saliency.cuh.
#include "cuda/glue.h"
#include "cuda/token_saliency.cuh"
#include "vtp_ext/token_saliency.h"

namespace vtp_ext::cuda {
namespace {

Tensor token_saliency_cuda(const Tensor& x, std::string method, int64_t correction) {
  constexpr const char* op = "vtp_ext.token_saliency";
  const SaliencyMethod m = check_token_saliency(x, method, correction, op);
  check_device(x, op, "x");
  const DeviceScope scope(x);
  Tensor out = empty_leading(x, 1, x.scalar_type());
  const int64_t n = num_rows(x, 1);
  if (n == 0) return out;
  const Rows xr = rows_of(x, 1);
  const int64_t D = x.size(x.dim() - 1);
  dispatch_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(launch_token_saliency_fwd<T>(static_cast<const T*>(xr.t.const_data_ptr()),
                                              static_cast<T*>(out.mutable_data_ptr()), xr.idx, n, D,
                                              correction, m, current_stream(x),
                                              max_blocks(kSaliencyMaxBlocks)),
                 op);
  });
  return out;
}

Tensor token_saliency_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& out,
                                    std::string method, int64_t correction) {
  constexpr const char* op = "vtp_ext.token_saliency_backward";
  const SaliencyMethod m = check_token_saliency_backward(grad, x, out, method, correction, op);
  check_device(x, op, "x");
  const DeviceScope scope(x);
  Tensor grad_x = torch::stable::new_empty(x, x.sizes());
  const int64_t n = num_rows(x, 1);
  const int64_t D = x.size(x.dim() - 1);
  if (n == 0 || D == 0) return grad_x;
  const Rows gr = rows_of(grad, 0), xr = rows_of(x, 1), outr = rows_of(out, 0);
  dispatch_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_launch(launch_token_saliency_bwd<T>(static_cast<const T*>(gr.t.const_data_ptr()),
                                              static_cast<const T*>(xr.t.const_data_ptr()),
                                              static_cast<const T*>(outr.t.const_data_ptr()),
                                              static_cast<T*>(grad_x.mutable_data_ptr()), gr.idx, xr.idx,
                                              outr.idx, n, D, correction, m, current_stream(x),
                                              max_blocks(kSaliencyMaxBlocks)),
                 op);
  });
  return grad_x;
}

}  // namespace
}  // namespace vtp_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(VTP_CUDA_NS, VTP_CUDA_KEY, m) {
  m.impl("token_saliency", TORCH_BOX(&vtp_ext::cuda::token_saliency_cuda));
  m.impl("token_saliency_backward", TORCH_BOX(&vtp_ext::cuda::token_saliency_backward_cuda));
}
