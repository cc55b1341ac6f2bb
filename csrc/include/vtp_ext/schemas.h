// Every operator schema of vtp_ext, declared once. csrc/vtp_ext.cpp registers them under
// torch.ops.vtp_ext; the CUDA-on-CPU test module registers the same list under its own namespace
// so the CUDA kernels can be run and compared on CPU tensors.
#pragma once
#include <torch/csrc/stable/library.h>

namespace vtp_ext {

inline void define_schemas(torch::stable::detail::StableLibrary& m) {
  // x [..., N, D] -> [..., N]; method "variance" (correction 0 or 1) or "l2norm".
  m.def("token_saliency(Tensor x, str method=\"variance\", int correction=1) -> Tensor");
  // grad [..., N], x [..., N, D], out = token_saliency(x) [..., N] -> grad_x [..., N, D]
  m.def("token_saliency_backward(Tensor grad, Tensor x, Tensor out, str method, int correction) -> Tensor");
  // x [B, C, H, W] -> one pyramid level, blurred and downsampled in one pass; mode "kornia" | "opencv" |
  // "gauss_avgpool" (sigma, kernel_size, border "reflect" | "zeros" apply to gauss_avgpool).
  m.def("blur_downsample(Tensor x, str mode=\"kornia\", float sigma=1.0, int kernel_size=5, str border=\"reflect\") -> Tensor");
  // grad [B, C, h, w] of a height x width input -> grad_x [B, C, height, width] (the adjoint operator)
  m.def("blur_downsample_backward(Tensor grad, int height, int width, str mode, float sigma, int kernel_size, str border) -> Tensor");
}

}  // namespace vtp_ext
